using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Finetrace.Web;

/// <summary>Server-rendered HTML of the dashboard's pages. Standalone pages inline the style, script and chart library.</summary>
internal static partial class Pages
{
    internal static string E(string s) => DashboardServer.Escape(s);
    internal static string F(double v) => double.IsFinite(v) ? (Math.Abs(v) >= 1e4 || (v != 0 && Math.Abs(v) < 1e-3) ? v.ToString("0.###e0", CultureInfo.InvariantCulture) : Math.Round(v, 4).ToString(CultureInfo.InvariantCulture)) : "–";

    internal static string Layout(string title, string body, bool standalone = false, bool charts = true)
    {
        var sb = new StringBuilder();
        sb.Append("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">");
        sb.Append("<title>").Append(E(title)).Append(" — Finetrace</title><link rel=\"icon\" href=\"data:,\">");
        if (standalone)
        {
            sb.Append("<style>").Append(Assets.Text("app.css")).Append("</style>");
            if (charts) sb.Append("<script>").Append(Assets.Text("chart.js").Replace("</script", "<\\/script")).Append("</script>");
            sb.Append("<script>").Append(Assets.Text("app.js")).Append("</script>");
        }
        else
        {
            sb.Append("<link rel=\"stylesheet\" href=\"/assets/app.css\">");
            if (charts) sb.Append("<script src=\"/assets/chart.js\"></script>");
            sb.Append("<script src=\"/assets/app.js\"></script>");
        }
        sb.Append("</head><body><header><h1>Finetrace</h1>");
        if (!standalone) sb.Append("<a href=\"/\">latents</a><a href=\"/live\">live</a><a href=\"/adl\">ADL</a><a href=\"/kl\">KL</a><a href=\"/weights\">weight diff</a><a href=\"/connections\">connections</a><a href=\"/attribution\">attribution</a>");
        sb.Append("</header><main>").Append(body).Append("</main></body></html>");
        return sb.ToString();
    }

    public static string NotFound(string title, string message) =>
        Layout(title, $"<div class=\"error\"><h2>404 — {E(title)}</h2><p>{E(message)}</p><p><a href=\"/\">back to the latent table</a></p></div>", charts: false);

    /// <summary>Table columns shown when present, in this order (key, label).</summary>
    static readonly (string Key, string Label)[] BrowserColumns =
    [
        ("id", "id"), ("tag", "tag"), ("delta_norm", "Δnorm"), ("dec_norm_diff", "norm diff"), ("dec_cos_sim", "cos"),
        ("nu_error", "ν^ε"), ("nu_reconstruction", "ν^r"), ("freq_all", "frequency"), ("template_share", "template share"),
        ("max_act_all", "max act"), ("kl_attribution", "KL attribution"), ("top_tokens", "top tokens"),
    ];

    public static string Browser(DashboardData data)
    {
        var t = data.Latents;
        if (t is null)
            return Layout("No latent table", $"<div class=\"error\"><h2>No latent table</h2><p>{E(data.Directory)} has no feature_df.csv; run <code>finetrace analyze latents</code> on it first.</p></div>", charts: false);
        var cols = BrowserColumns.Where(c => c.Key == "id" || t.Has(c.Key))
            .Select(c => new JsonObject { ["key"] = c.Key, ["label"] = c.Label, ["text"] = c.Key != "id" && !t.IsNumeric(c.Key) }).ToArray();
        var sb = new StringBuilder();
        sb.Append($"<h2>{t.Rows:N0} latents <span class=\"muted\" style=\"font-size:13px\">{E(data.Directory)}</span></h2>");
        sb.Append("<div class=\"plots\"><div id=\"hist\" class=\"plot\"></div><div id=\"scatter\" class=\"plot\"></div></div>");
        sb.Append($"<div id=\"browser\" data-columns=\"{E(new JsonArray(cols).ToJsonString())}\">");
        sb.Append("<div class=\"controls\"><label>tag <select id=\"tag\"><option value=\"\">all</option>");
        foreach (var (tag, n) in t.TagCounts()) sb.Append($"<option value=\"{E(tag)}\">{E(tag == "" ? "(none)" : tag)} ({n})</option>");
        sb.Append("</select></label><span id=\"ranges\" class=\"muted\"></span><button id=\"clear\" style=\"display:none\">clear selection</button>");
        sb.Append("<a id=\"csvlink\" href=\"/api/latents.csv\" download>export CSV</a></div>");
        sb.Append("<div class=\"pager\"><button id=\"prev\">◀ prev</button><span id=\"pageinfo\"></span><button id=\"next\">next ▶</button></div>");
        sb.Append("<table id=\"latents\"><thead><tr></tr></thead><tbody></tbody></table></div>");
        return Layout("Latents", sb.ToString());
    }

    public static string Latent(DashboardData data, int id, JsonObject rec, bool standalone)
    {
        var t = data.Latents!;
        double Num(string c) => t.IsNumeric(c) ? t.Numbers(c)[id] : double.NaN;
        var sb = new StringBuilder();
        string tag = t.Tags?[id] ?? "";
        sb.Append($"<h2>Latent {id} <span class=\"tag tag-{E(tag)}\">{E(tag)}</span></h2>");
        if (!standalone) sb.Append($"<p><a href=\"/latent/{id}/export\">export this page as a standalone HTML file</a> · <a href=\"/live?latent={id}\">see it on a live prompt / steer with it</a> · <a href=\"/api/neuronpedia/{id}\">Neuronpedia JSON</a></p>");

        // Geometry and scaling cards.
        sb.Append("<div class=\"cards\">");
        sb.Append("<div class=\"card\"><h3>Decoder</h3><table>");
        foreach (var (c, l) in new[] { ("dec_base_norm", "‖d_base‖"), ("dec_ft_norm", "‖d_ft‖"), ("dec_norm_diff", "norm diff"), ("delta_norm", "Δnorm"), ("dec_cos_sim", "cosine"), ("enc_cos_sim", "encoder cosine") })
            if (t.Has(c)) sb.Append($"<tr><td class=\"text\">{l}</td><td>{F(Num(c))}</td></tr>");
        sb.Append("</table></div>");
        var scaling = new List<JsonArray>();
        sb.Append("<div class=\"card\"><h3>Latent Scaling</h3><table>");
        foreach (var (c, l) in new[] { ("nu_error", "ν^ε (error)"), ("nu_reconstruction", "ν^r (reconstruction)"), ("nu_activation", "ν (activation)") })
            if (t.Has(c))
            {
                double v = Num(c), lo = Num(c + "_lo"), hi = Num(c + "_hi");
                sb.Append($"<tr><td class=\"text\">{l}</td><td>{F(v)}</td><td class=\"iv\">[{F(lo)}, {F(hi)}]</td></tr>");
                scaling.Add(new JsonArray(c, N(v), N(lo), N(hi)));
            }
        if (scaling.Count == 0) sb.Append("<tr><td class=\"text muted\">not computed (finetrace analyze scaling)</td></tr>");
        sb.Append("</table></div>");
        var logit = new[] { ("base", "logit_top_base", "logit_bottom_base"), ("fine-tuned", "logit_top_ft", "logit_bottom_ft") }.Where(x => t.Has(x.Item2)).ToArray();
        if (logit.Length > 0)
        {
            sb.Append("<div class=\"card\"><h3>Logit effects (decoder direction through each model's unembedding)</h3><table><tr><th class=\"text\">model</th><th class=\"text\">promotes</th><th class=\"text\">suppresses</th></tr>");
            foreach (var (model, top, bottom) in logit)
                sb.Append($"<tr><td class=\"text\">{model}</td><td class=\"text\">{TokenList(t, top, id)}</td><td class=\"text\">{(t.Has(bottom) ? TokenList(t, bottom, id) : "")}</td></tr>");
            sb.Append("</table></div>");
        }
        sb.Append("<div class=\"card\"><details><summary><b>All columns</b></summary><table>");
        foreach (var c in t.Columns)
            sb.Append($"<tr><td class=\"text\">{E(c)}</td><td class=\"text\">{E(t.IsNumeric(c) ? F(Num(c)) : (string)t.Cell(c, id)!)}</td></tr>");
        sb.Append("</table></details></div></div>");

        var norms = new JsonArray();
        foreach (var (c, l) in new[] { ("dec_base_norm", "base"), ("dec_ft_norm", "fine-tuned") }) if (t.IsNumeric(c)) norms.Add(new JsonArray(l, N(Num(c))));
        // Examples.
        var acts = new JsonArray();
        sb.Append("<h3>Examples</h3>");
        if (rec["examples"] is not JsonArray exs) sb.Append("<p class=\"muted\">no examples.sqlite in this results folder (finetrace analyze examples)</p>");
        else if (exs.Count == 0) sb.Append("<p class=\"muted\">this latent has no stored examples (it never fired on the sampled positions)</p>");
        else
        {
            double max = exs.SelectMany(e => e!["values"]!.AsArray()).Max(v => Math.Abs(v!.GetValue<double>()));
            if (max <= 0) max = 1;
            string? lastKind = null; int? lastBand = null;
            foreach (var e in exs)
            {
                string kind = e!["kind"]!.GetValue<string>();
                int? band = e["band"]?.GetValue<int>();
                if (kind != lastKind || band != lastBand)
                    sb.Append(kind == "top" ? "<h4>Top activations</h4>" : $"<h4>Band {band} samples</h4>");
                lastKind = kind; lastBand = band;
                var ids = e["token_ids"]!.AsArray().Select(x => x!.GetValue<int>()).ToArray();
                var vals = e["values"]!.AsArray().Select(x => x!.GetValue<double>()).ToArray();
                var toks = e["tokens"] as JsonArray;
                foreach (var v in vals) if (v != 0) acts.Add(v);
                int peak = vals.Length == 0 ? 0 : Array.IndexOf(vals, vals.Max());
                const int near = 12;
                bool collapsible = vals.Length > 2 * near + 4;
                sb.Append($"<div class=\"example{(collapsible ? " collapsed" : "")}\"><div class=\"meta\">score {F(e["score"]!.GetValue<double>())} · sequence {e["sequence_uid"]}{(e["dataset"] is { } ds ? " · " + E(ds.GetValue<string>()) : "")}</div>");
                for (int i = 0; i < ids.Length; i++)
                {
                    string text = toks is null ? $"[{ids[i]}]" : toks[i]!.GetValue<string>();
                    double a = Math.Clamp(Math.Abs(vals[i]) / max, 0, 1);
                    string style = vals[i] != 0 ? $" style=\"background:rgba(230,80,40,{a.ToString("0.###", CultureInfo.InvariantCulture)})\"" : "";
                    bool far = collapsible && Math.Abs(i - peak) > near;
                    sb.Append($"<span class=\"tok{(vals[i] != 0 ? " act" : "")}{(far ? " far" : "")}\"{style} title=\"token {ids[i]} · value {F(vals[i])}\">{E(text)}</span>");
                }
                if (collapsible) sb.Append(" <span class=\"more\">… show full context</span>");
                sb.Append("</div>");
            }
        }

        sb.Append("<div class=\"plots\">");
        if (norms.Count > 0) sb.Append("<div id=\"norms\" class=\"plot\"></div>");
        if (scaling.Count > 0) sb.Append("<div id=\"scaling\" class=\"plot\"></div>");
        sb.Append("<div id=\"acthist\" class=\"plot\"></div>");
        // The activation histogram over all positions (examples.sqlite latent_histograms, written by the examples stage).
        JsonObject? hist = null;
        if (data.Examples is null || !data.Examples.HasHistograms)
            sb.Append("<div class=\"plot card\" id=\"histogram-none\"><h3>Activation histogram</h3><p class=\"muted\">not computed (examples.sqlite has no latent_histograms table)</p></div>");
        else if (data.Examples.Histogram(id) is not { } h)
            sb.Append("<div class=\"plot card\" id=\"histogram-none\"><h3>Activation histogram</h3><p class=\"muted\">no histogram stored for this latent</p></div>");
        else
        {
            hist = new JsonObject { ["edges"] = new JsonArray(h.Edges.Select(x => (JsonNode?)x).ToArray()), ["counts"] = new JsonArray(h.Counts.Select(x => (JsonNode?)x).ToArray()) };
            sb.Append($"<div id=\"histogram\" class=\"plot\" data-bins=\"{h.Counts.Length}\" data-total=\"{h.Counts.Sum()}\"></div>");
        }
        sb.Append("</div>");

        // Causal results (per latent set; shown where computed).
        if (data.Causal is { Count: > 0 } causal)
        {
            sb.Append("<h3>Causal evaluation (latent sets, causal.json)</h3><table><tr><th class=\"text\">set</th><th class=\"text\">patch</th><th>size</th><th>KL all</th><th>gap closed</th><th>normalised</th></tr>");
            foreach (var c in causal)
                sb.Append($"<tr><td class=\"text\">{E(c?["set"]?.ToString() ?? "")}</td><td class=\"text\">{E(c?["patch"]?.ToString() ?? "")}</td><td>{E(c?["size"]?.ToString() ?? "")}</td>" +
                          $"<td>{Cell(c?["kl_all"])}</td><td>{Cell(c?["gap_closed"])}</td><td>{Cell(c?["gap_closed_normalised"])}</td></tr>");
            sb.Append("</table>");
        }
        else sb.Append("<p class=\"muted\">No causal evaluation in this results folder (finetrace analyze causal).</p>");

        var payload = new JsonObject { ["id"] = id, ["norms"] = norms, ["scaling"] = new JsonArray(scaling.ToArray()), ["activations"] = acts, ["histogram"] = hist };
        sb.Append("<script type=\"application/json\" id=\"latent-data\">").Append(payload.ToJsonString().Replace("</", "<\\/")).Append("</script>");
        return Layout($"Latent {id}", sb.ToString(), standalone);
    }

    /// <summary>A JSON array of token strings (as the latent table stores them) shown as quoted tokens.</summary>
    static string TokenList(LatentIndex t, string column, int id)
    {
        string raw = t.Cell(column, id) as string ?? "";
        try
        {
            if (JsonNode.Parse(raw) is JsonArray a) return string.Join(" ", a.Select(x => $"<code>{E(x?.ToString() ?? "")}</code>"));
        }
        catch (JsonException) { }
        return E(raw);
    }

    static JsonNode? N(double v) => double.IsFinite(v) ? JsonValue.Create(v) : null;
    static string Cell(JsonNode? n) => n is JsonValue v && v.TryGetValue<double>(out var d) ? F(d) : E(n?.ToString() ?? "");
}

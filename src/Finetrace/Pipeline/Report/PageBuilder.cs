using System.Globalization;
using System.Text;
using System.Text.Json.Nodes;
using Finetrace.Diffing;
using static Finetrace.Pipeline.Report.ReportWriter;

namespace Finetrace.Pipeline.Report;

/// <summary>Builds the page: HTML tables and text here, plot figures (Plotly traces + layout) as JSON for report.js.</summary>
sealed class PageBuilder(ReportInputs inp, ReportOptions opt, CancellationToken cancel)
{
    readonly StringBuilder _body = new();
    readonly JsonObject _plots = [];
    readonly HashSet<string> _anchors = [];
    JsonObject? Summary => inp.Summary;

    public string Build()
    {
        var sections = new List<(string Id, string Title, Action Render)>
        {
            ("models", "Models and settings", Models),
            ("training", "Dictionary training", Training),
            ("delta-norm", "Δnorm: which model each latent belongs to", DeltaNorm),
            ("nu-scatter", "Latent Scaling: ν^ε against ν^r", NuScatter),
            ("latents", "Fine-tune-specific latents", Latents),
            ("controls", "Control latents (random shared)", Controls),
            ("causal", "Causal evaluation: KL gap closed", Causal),
            ("adl", "Activation Difference Lens", Adl),
            ("kl", "Per-token KL between the models", Kl),
            ("diff-mining", "Diff mining: tokens the fine-tune promotes", DiffMining),
            ("amplification", "Amplification samples", Amplification),
            ("weight-diff", "Weight difference by module", WeightDiff),
        };
        var rendered = new StringBuilder();
        foreach (var (id, heading, render) in sections)
        {
            cancel.ThrowIfCancellationRequested();
            _body.Clear();
            _anchors.Add(id);
            render();
            rendered.Append($"<section id=\"{id}\"><h2>{H(heading)} <a class=\"anchor\" href=\"#{id}\">#</a></h2>\n").Append(_body).Append("</section>\n");
        }
        _body.Clear();
        Findings();
        string findings = $"<section id=\"findings\"><h2>Findings <a class=\"anchor\" href=\"#findings\">#</a></h2>\n{_body}</section>\n";
        var nav = string.Join(" · ", new[] { ("findings", "Findings") }.Concat(sections.Select(s => (s.Id, s.Title)))
            .Select(s => $"<a href=\"#{s.Item1}\">{H(s.Item2.Split(':')[0])}</a>"));

        string title = "Finetrace report" + (Summary?["models"] is JsonObject m
            ? $": {Path.GetFileName(S(m["base"]).TrimEnd('/'))} → {Path.GetFileName(S(m["finetuned"]).TrimEnd('/'))}" : "");
        var page = new StringBuilder();
        page.Append("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
        // Nothing may leave the page: no fetch, image, font or script from anywhere but this file.
        page.Append("<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data: blob:; font-src data:\">\n");
        page.Append("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
        page.Append($"<title>{H(title)}</title>\n");
        page.Append("<script>").Append(ErrorCollector).Append("</script>\n");
        page.Append("<style>").Append(Resource("report.css")).Append("</style>\n</head>\n<body>\n");
        page.Append($"<header><h1>{H(title)}</h1><p class=\"sub\">Results folder <code>{H(Path.GetFullPath(inp.ResultsDir))}</code>, rendered {H(DateTime.UtcNow.ToString("yyyy-MM-dd HH:mm 'UTC'", CultureInfo.InvariantCulture))}</p><nav>{nav}</nav></header>\n<main>\n");
        page.Append(findings).Append(rendered).Append("</main>\n");
        page.Append("<pre id=\"ft-render-status\" hidden></pre>\n");
        // JsonNode's default encoder escapes <, > and &, so the JSON cannot close its script element.
        page.Append("<script type=\"application/json\" id=\"ft-data\">").Append(_plots.ToJsonString()).Append("</script>\n");
        page.Append("<script>").Append(Resource("chart.js")).Append("</script>\n");
        page.Append("<script>").Append(Resource("report.js")).Append("</script>\n");
        page.Append("</body>\n</html>\n");
        return page.ToString();
    }

    /// <summary>Records script errors, console errors and blocked requests into the page (read by the browser test).</summary>
    const string ErrorCollector = """
        window.__ftErrors = [];
        window.addEventListener('error', function (e) { window.__ftErrors.push('error: ' + e.message); });
        window.addEventListener('unhandledrejection', function (e) { window.__ftErrors.push('unhandled rejection: ' + e.reason); });
        document.addEventListener('securitypolicyviolation', function (e) { window.__ftErrors.push('blocked request: ' + e.blockedURI + ' (' + e.violatedDirective + ')'); });
        (function () { var orig = console.error; console.error = function () { window.__ftErrors.push('console.error: ' + Array.prototype.join.call(arguments, ' ')); return orig.apply(console, arguments); }; })();
        """;

    void P(string html) => _body.Append(html).Append('\n');
    void Missing(string what) => P($"<p class=\"missing\">{H(what)}</p>");

    void Plot(string id, JsonArray traces, JsonObject layout, string caption)
    {
        _plots[id] = new JsonObject { ["data"] = traces, ["layout"] = layout };
        P($"<figure><div class=\"plot\" id=\"plot-{id}\" data-plot=\"{id}\"></div><figcaption>{H(caption)}</figcaption></figure>");
    }

    static JsonObject Axis(string title, string? type = null)
    {
        var a = new JsonObject { ["title"] = new JsonObject { ["text"] = title }, ["automargin"] = true };
        if (type is not null) a["type"] = type;
        return a;
    }

    static JsonObject Layout(string x, string y, string? xType = null, string? yType = null) => new()
    {
        ["xaxis"] = Axis(x, xType), ["yaxis"] = Axis(y, yType),
        ["margin"] = new JsonObject { ["t"] = 20, ["r"] = 20 }, ["legend"] = new JsonObject { ["orientation"] = "h" },
    };

    static JsonArray Arr(IEnumerable<double> v) => new(v.Select(x => (JsonNode?)(double.IsFinite(x) ? x : null)).ToArray());
    static JsonArray Arr(IEnumerable<string> v) => new(v.Select(x => (JsonNode?)x).ToArray());

    // ---------------------------------------------------------------- findings

    void Findings()
    {
        if (Summary is null) { Missing("summary.json was not found: findings are written by `finetrace diff`. The sections below show what the analyses wrote."); return; }
        if (Summary["findings"] is not JsonArray findings || findings.Count == 0)
        {
            Missing("No finding beat its control (each automatic claim is checked against random shared latents, random directions or zero KL and dropped when it does not beat it).");
        }
        else
        {
            P("<ol class=\"findings\">");
            foreach (var f in findings)
            {
                var links = (f?["evidence"] as JsonArray ?? []).Select(e => EvidenceLink(S(e?["kind"]), e?["ref"])).Where(l => l is not null);
                var strings = (f?["strings"] as JsonArray ?? []).Select(s => $"<code class=\"str\">{H(Visible(S(s)))}</code>");
                P($"<li><p class=\"claim\">{H(S(f?["claim"]))}</p><p class=\"evidence\">Evidence: {string.Join(", ", links)}</p>"
                  + (strings.Any() ? $"<p class=\"strings\">Rests on: {string.Join(" ", strings)}</p>" : "") + "</li>");
            }
            P("</ol>");
        }
        if (Summary["findings_rule"] is { } rule) P($"<details><summary>How findings are made</summary><p>{H(S(rule))}</p></details>");
    }

    string? EvidenceLink(string kind, JsonNode? reference)
    {
        string r = reference is JsonObject o ? S(o["position"] ?? o["id"]) : S(reference);
        (string anchor, string label) = kind switch
        {
            "latent" => ($"latent-{r}", $"latent {r}"),
            "adl" => ($"adl-pos-{r}", $"ADL position {r}"),
            "kl" => ("kl", "per-token KL"),
            "diff_mining" => ("diff-mining", "diff mining"),
            "amplification" => ("amplification", "amplification"),
            "weight_diff" => ("weight-diff", r.Length > 0 ? $"weight diff {r}" : "weight diff"),
            "causal" => ("causal", r.Length > 0 ? $"causal {r}" : "causal evaluation"),
            _ => (kind, kind),
        };
        if (!_anchors.Contains(anchor)) anchor = kind switch { "latent" => "latents", "adl" => "adl", "weight_diff" => "weight-diff", "diff_mining" => "diff-mining", _ => kind };
        return _anchors.Contains(anchor) ? $"<a href=\"#{H(anchor)}\">{H(label)}</a>" : H(label);
    }

    /// <summary>Whitespace shown, so a string made of spaces or newlines is not invisible.</summary>
    static string Visible(string s) => s.Replace("\n", "⏎").Length == 0 ? "∅" : s.Replace("\n", "⏎");

    // ---------------------------------------------------------------- models and settings

    void Models()
    {
        if (Summary?["models"] is JsonObject m)
        {
            P("<table class=\"kv\">");
            foreach (var (k, v) in m) P($"<tr><th>{H(k)}</th><td><code>{H(S(v))}</code></td></tr>");
            if (Summary["layer"] is { } layer) P($"<tr><th>layer</th><td>{H(S(layer))}</td></tr>");
            P("</table>");
        }
        else Missing("summary.json was not found: model paths are listed with each stage below.");
        if (Summary?["dictionary"] is JsonObject d)
        {
            P("<h3>Dictionary</h3><table class=\"kv\">");
            foreach (var (k, v) in d) P($"<tr><th>{H(k)}</th><td>{H(v is JsonArray a ? string.Join(", ", a.Select(x => F(D(x), "0.####"))) : D(v) is { } n ? F(n, "0.####") : S(v))}</td></tr>");
            P("</table>");
        }
        if (Summary?["data"] is JsonArray data && data.Count > 0)
        {
            P("<h3>Data</h3><ul>");
            foreach (var s in data) P($"<li><code>{H(S(s))}</code></li>");
            P("</ul>");
        }
        if (inp.Manifest?["stages"] is JsonObject stages && stages.Count > 0)
        {
            P("<h3>Stages</h3><table><thead><tr><th>stage</th><th>finished</th><th>outputs</th><th>settings</th></tr></thead><tbody>");
            foreach (var (name, st) in stages)
                P($"<tr><td>{H(name)}</td><td>{H(S(st?["finished"]))}</td><td>{H(string.Join(", ", (st?["outputs"] as JsonArray ?? []).Select(S)))}</td>" +
                  $"<td class=\"settings\">{H(string.Join("; ", (st?["inputs"] as JsonObject ?? []).Select(kv => $"{kv.Key}={S(kv.Value)}")))}</td></tr>");
            P("</tbody></table>");
        }
        else Missing("manifest.json was not found: no stage has recorded its settings.");
    }

    // ---------------------------------------------------------------- training curves

    void Training()
    {
        var rows = inp.Metrics();
        if (rows.Count == 0) { Missing("No training log (metrics.jsonl) was found for the dictionary."); return; }
        P($"<p>Training log <code>{H(inp.MetricsPath)}</code>: {rows.Count} steps.</p>");
        string xKey = rows.All(r => r["tokens"] is not null) ? "tokens" : "step";
        var x = Arr(rows.Select(r => D(r[xKey]) ?? double.NaN));
        var traces = new JsonArray();
        foreach (var key in new[] { "loss", "mse" })
            if (rows.Any(r => r[key] is not null))
                traces.Add(new JsonObject { ["type"] = "scatter", ["mode"] = "lines", ["name"] = key, ["x"] = x.DeepClone(), ["y"] = Arr(rows.Select(r => D(r[key]) ?? double.NaN)) });
        Plot("training-loss", traces, Layout(xKey, "loss", yType: "log"), "Training loss of the dictionary (log scale).");

        var fve = new JsonArray();
        int models = rows.Max(r => r["fve"] is JsonArray a ? a.Count : r["fve"] is null ? 0 : 1);
        for (int mi = 0; mi < models; mi++)
        {
            int m = mi;
            fve.Add(new JsonObject
            {
                ["type"] = "scatter", ["mode"] = "lines", ["name"] = models == 2 ? (m == 0 ? "FVE base" : "FVE fine-tuned") : $"FVE model {m}", ["x"] = x.DeepClone(),
                ["y"] = Arr(rows.Select(r => r["fve"] is JsonArray a ? D(a.Count > m ? a[m] : null) ?? double.NaN : D(r["fve"]) ?? double.NaN)),
            });
        }
        if (rows.Any(r => r["dead_fraction"] is not null))
            fve.Add(new JsonObject { ["type"] = "scatter", ["mode"] = "lines", ["name"] = "dead fraction", ["x"] = x.DeepClone(), ["y"] = Arr(rows.Select(r => D(r["dead_fraction"]) ?? double.NaN)) });
        var layout = Layout(xKey, "fraction");
        layout["yaxis"]!["range"] = new JsonArray(-0.05, 1.05);
        if (fve.Count > 0) Plot("training-fve", fve, layout, "Fraction of variance explained per model and fraction of dead latents during training (y clipped to [−0.05, 1.05]).");
    }

    // ---------------------------------------------------------------- Δnorm and ν

    (double[] Value, string[] Tag) Column(string name)
    {
        if (inp.Table is { } t && t.Has(name))
            return (t.Numbers(name), t.Has("tag") ? t.Texts("tag") : Enumerable.Repeat("", t.Rows).ToArray());
        var lat = Summary?["latents"] as JsonArray ?? [];
        string key = name switch { "beta_ratio_error" => "nu_error", "beta_ratio_reconstruction" => "nu_reconstruction", _ => name };
        return (lat.Select(l => D(l?[key]) ?? double.NaN).ToArray(), lat.Select(l => S(l?["tag"])).ToArray());
    }

    static readonly string[] TagOrder = ["ft_only", "base_only", "shared", "other", ""];
    static readonly Dictionary<string, string> TagColour = new() { ["ft_only"] = "#d62728", ["base_only"] = "#1f77b4", ["shared"] = "#7f7f7f", ["other"] = "#bcbd22", [""] = "#9467bd" };

    void DeltaNorm()
    {
        var (dn, tag) = Column("delta_norm");
        var ok = Enumerable.Range(0, dn.Length).Where(i => double.IsFinite(dn[i])).ToArray();
        if (ok.Length == 0) { Missing("No Δnorm values: the latent table (feature_df.csv) was not written."); return; }
        const int bins = 50;
        var traces = new JsonArray();
        foreach (var g in ok.GroupBy(i => tag[i]).OrderBy(g => Array.IndexOf(TagOrder, g.Key) is var k && k < 0 ? 99 : k))
        {
            var counts = new double[bins];
            foreach (var i in g) counts[Math.Clamp((int)(dn[i] * bins), 0, bins - 1)]++;
            traces.Add(new JsonObject
            {
                ["type"] = "bar", ["name"] = g.Key.Length == 0 ? "latents" : g.Key, ["x"] = Arr(Enumerable.Range(0, bins).Select(b => (b + 0.5) / bins)),
                ["y"] = Arr(counts), ["width"] = 1.0 / bins, ["marker"] = new JsonObject { ["color"] = TagColour.GetValueOrDefault(g.Key, "#9467bd") },
            });
        }
        var layout = Layout("Δnorm = ½((‖d_ft‖−‖d_base‖)/max(‖d_base‖,‖d_ft‖) + 1)", "latents");
        layout["barmode"] = "stack";
        layout["xaxis"]!["range"] = new JsonArray(0, 1);
        Plot("delta-norm", traces, layout, $"Histogram of Δnorm over {ok.Length} latents (0: only the base model's decoder, 1: only the fine-tune's), stacked by tag.");
        P($"<p>{string.Join(", ", ok.GroupBy(i => tag[i]).Select(g => $"{H(g.Key.Length == 0 ? "untagged" : g.Key)}: {g.Count()}"))}.</p>");
    }

    void NuScatter()
    {
        var (ne, tag) = Column("beta_ratio_error");
        var (nr, _) = Column("beta_ratio_reconstruction");
        var ok = Enumerable.Range(0, Math.Min(ne.Length, nr.Length)).Where(i => double.IsFinite(ne[i]) && double.IsFinite(nr[i])).ToArray();
        if (ok.Length == 0) { Missing("No ν values: Latent Scaling did not run (its columns beta_ratio_error / beta_ratio_reconstruction are absent)."); return; }
        var t = inp.Table;
        double[]? Col(string c) => t is not null && t.Has(c) ? t.Numbers(c) : null;
        double[]? eLo = Col("beta_ratio_error_lo"), eHi = Col("beta_ratio_error_hi"), rLo = Col("beta_ratio_reconstruction_lo"), rHi = Col("beta_ratio_reconstruction_hi");
        int[] ids = t is not null ? Enumerable.Range(0, t.Rows).ToArray() : (Summary?["latents"] as JsonArray ?? []).Select(l => (int)(D(l?["id"]) ?? -1)).ToArray();
        var traces = new JsonArray();
        foreach (var g in ok.GroupBy(i => tag[i]).OrderBy(g => Array.IndexOf(TagOrder, g.Key) is var k && k < 0 ? 99 : k))
        {
            var idx = g.ToArray();
            var tr = new JsonObject
            {
                ["type"] = "scatter", ["mode"] = "markers", ["name"] = g.Key.Length == 0 ? "latents" : g.Key,
                ["x"] = Arr(idx.Select(i => ne[i])), ["y"] = Arr(idx.Select(i => nr[i])),
                ["text"] = Arr(idx.Select(i => $"latent {ids[i]}")), ["hovertemplate"] = "%{text}<br>ν^ε %{x:.3f}<br>ν^r %{y:.3f}<extra></extra>",
                ["marker"] = new JsonObject { ["color"] = TagColour.GetValueOrDefault(g.Key, "#9467bd"), ["size"] = 7, ["opacity"] = 0.8 },
            };
            if (eLo is not null && eHi is not null)
                tr["error_x"] = new JsonObject { ["type"] = "data", ["symmetric"] = false, ["thickness"] = 0.8, ["width"] = 0,
                    ["array"] = Arr(idx.Select(i => eHi[i] - ne[i])), ["arrayminus"] = Arr(idx.Select(i => ne[i] - eLo[i])) };
            if (rLo is not null && rHi is not null)
                tr["error_y"] = new JsonObject { ["type"] = "data", ["symmetric"] = false, ["thickness"] = 0.8, ["width"] = 0,
                    ["array"] = Arr(idx.Select(i => rHi[i] - nr[i])), ["arrayminus"] = Arr(idx.Select(i => nr[i] - rLo[i])) };
            traces.Add(tr);
        }
        Plot("nu-scatter", traces, Layout("ν^ε (error ratio)", "ν^r (reconstruction ratio)"),
            $"ν^ε against ν^r for {ok.Length} latents with their intervals. Low values on both axes mark latents the base model does not need: the most fine-tune-specific.");
    }

    // ---------------------------------------------------------------- latent tables

    sealed record LatentRow(int Id, string Tag, double? DeltaNorm, double? Freq, double? Template, double? NuE, double? NuR, double? RankSum, string[] LogitTop, string[] LogitBottom, string[] Examples);

    LatentRow RowFromTable(int j, JsonNode? summaryRow)
    {
        var t = inp.Table;
        double? N(string c) => t is not null && t.Has(c) && j < t.Rows && double.IsFinite(t.Numbers(c)[j]) ? t.Numbers(c)[j] : null;
        string[] Tokens(string c)
        {
            if (t is null || !t.Has(c) || j >= t.Rows) return [];
            try { return (JsonNode.Parse(t.Texts(c)[j]) as JsonArray ?? []).Select(S).ToArray(); } catch (System.Text.Json.JsonException) { return []; }
        }
        string[] top = Tokens("logit_top_ft") is { Length: > 0 } lt ? lt : (summaryRow?["top_tokens"] as JsonArray ?? []).Select(S).ToArray();
        if (top.Length == 0) top = Tokens("top_tokens");
        return new LatentRow(j,
            S(summaryRow?["tag"]) is { Length: > 0 } tg ? tg : t is not null && t.Has("tag") && j < t.Rows ? t.Texts("tag")[j] : "",
            D(summaryRow?["delta_norm"]) ?? N("delta_norm"), D(summaryRow?["frequency"]) ?? N("freq_all"), D(summaryRow?["template_share"]) ?? N("template_share"),
            D(summaryRow?["nu_error"]) ?? N("beta_ratio_error"), D(summaryRow?["nu_reconstruction"]) ?? N("beta_ratio_reconstruction"),
            D(summaryRow?["rank_sum"]) ?? N("rank_sum"), top, Tokens("logit_bottom_ft"),
            (summaryRow?["examples"] as JsonArray ?? []).Select(S).ToArray());
    }

    /// <summary>The table's latents sorted as summary.json sorts them (rank_sum ascending, those without after, ties by
    /// Δnorm descending), used when there is no summary.json.</summary>
    List<int> TableOrder()
    {
        var t = inp.Table!;
        var rs = t.Has("rank_sum") ? t.Numbers("rank_sum") : new double[t.Rows].Select(_ => double.NaN).ToArray();
        var dn = t.Has("delta_norm") ? t.Numbers("delta_norm") : new double[t.Rows];
        return Enumerable.Range(0, t.Rows).OrderBy(j => double.IsNaN(rs[j]) ? 1 : 0).ThenBy(j => double.IsNaN(rs[j]) ? 0 : rs[j])
            .ThenByDescending(j => double.IsNaN(dn[j]) ? double.NegativeInfinity : dn[j]).ThenBy(j => j).ToList();
    }

    void Latents()
    {
        List<LatentRow> rows;
        if (Summary?["latents"] is JsonArray sl && sl.Count > 0)
            rows = sl.Take(opt.MaxLatents).Select(l => RowFromTable((int)(D(l?["id"]) ?? -1), l)).ToList();
        else if (inp.Table is not null)
            rows = TableOrder().Take(opt.MaxLatents).Select(j => RowFromTable(j, null)).ToList();
        else { Missing("No latent table: the latent analyses (feature_df.csv) did not run."); return; }
        P($"<p>The {rows.Count} most fine-tune-specific latents, sorted by rank_sum (ranks of ν^ε and ν^r; low = specific), ties by Δnorm. " +
          "Examples are the latent's top activating contexts; each token's colour is its activation (hover for the value). " +
          "Template share: fraction of the latent's activation mass on chat-template tokens. Logit effect: tokens the decoder direction most promotes / suppresses through the fine-tune's unembedding. " +
          "Read every column against the control latents below.</p>");
        if (inp.ExamplesDb is not null && inp.TokenizerDir is null)
            Missing("examples.sqlite is here but no tokenizer.json was found for the models named in summary.json or manifest.json, so its examples are not decoded; give the report a tokenizer folder to see them.");
        LatentTable(rows, opt.HighlightedLatents, "latent");
    }

    void Controls()
    {
        if (Summary?["controls"] is not JsonArray c || c.Count == 0) { Missing("No control latents (summary.json was not written by `finetrace diff`)."); return; }
        P("<p>Shared latents drawn at random: the baseline every latent claim is read against.</p>");
        LatentTable(c.Select(l => RowFromTable((int)(D(l?["id"]) ?? -1), l)).ToList(), opt.HighlightedLatents, "control");
    }

    void LatentTable(List<LatentRow> rows, int highlighted, string anchorPrefix)
    {
        bool hasTable = inp.Table is not null;
        string Interval(string col, int j)
        {
            var t = inp.Table;
            if (t is null || !t.Has(col + "_lo") || j < 0 || j >= t.Rows) return "";
            double lo = t.Numbers(col + "_lo")[j], hi = t.Numbers(col + "_hi")[j];
            return double.IsFinite(lo) && double.IsFinite(hi) ? $"<br><span class=\"ci\">[{F(lo)}, {F(hi)}]</span>" : "";
        }
        P("<div class=\"scroll\"><table class=\"latents\"><thead><tr><th>#</th><th>latent</th><th>tag</th><th>Δnorm</th><th>freq</th><th>template share</th>" +
          "<th>ν^ε</th><th>ν^r</th><th>logit effect (fine-tune)</th><th>top examples</th></tr></thead><tbody>");
        for (int r = 0; r < rows.Count; r++)
        {
            var row = rows[r];
            string anchor = $"{anchorPrefix}-{row.Id}";
            _anchors.Add(anchor);
            string logit = (row.LogitTop.Length > 0 ? "<div>↑ " + string.Join(" ", row.LogitTop.Take(10).Select(t => $"<code class=\"tok-chip\">{H(Visible(t))}</code>")) + "</div>" : "")
                         + (row.LogitBottom.Length > 0 ? "<div>↓ " + string.Join(" ", row.LogitBottom.Take(5).Select(t => $"<code class=\"tok-chip\">{H(Visible(t))}</code>")) + "</div>" : "");
            string ex = r < highlighted ? HighlightedExamples(row) : "";
            if (ex.Length == 0) ex = string.Join("", row.Examples.Take(opt.ExamplesPerLatent).Select(e => $"<div class=\"example\">{H(e)}</div>"));
            P($"<tr id=\"{anchor}\"><td>{r + 1}</td><td><a href=\"#{anchor}\">{row.Id}</a></td><td class=\"tag tag-{H(row.Tag)}\">{H(row.Tag)}</td>" +
              $"<td>{F(row.DeltaNorm)}</td><td>{F(row.Freq, "0.####")}</td><td>{F(row.Template)}</td>" +
              $"<td>{F(row.NuE)}{(hasTable ? Interval("beta_ratio_error", row.Id) : "")}</td><td>{F(row.NuR)}{(hasTable ? Interval("beta_ratio_reconstruction", row.Id) : "")}</td>" +
              $"<td>{logit}</td><td class=\"examples\">{ex}</td></tr>");
        }
        P("</tbody></table></div>");
    }

    string HighlightedExamples(LatentRow row)
    {
        if (row.Id < 0) return "";
        var exs = inp.Examples(row.Id, opt.ExamplesPerLatent);
        if (exs.Count == 0) return "";
        float max = exs.SelectMany(e => e).Select(t => t.Value).DefaultIfEmpty(0).Max();
        var sb = new StringBuilder();
        foreach (var e in exs)
        {
            sb.Append("<div class=\"example\">");
            foreach (var tok in e)
            {
                double a = max > 0 ? Math.Clamp(tok.Value / max, 0, 1) : 0;
                string style = a > 0 ? $" style=\"background:rgba(230,85,13,{(0.08 + 0.8 * a).ToString("0.00", CultureInfo.InvariantCulture)})\"" : "";
                sb.Append($"<span class=\"tok\"{style} title=\"{H(Visible(tok.Text))}: activation {F(tok.Value, "0.###")}\">{H(tok.Text.Replace("\n", "⏎"))}</span>");
            }
            sb.Append("</div>");
        }
        return sb.ToString();
    }

    // ---------------------------------------------------------------- causal

    void Causal()
    {
        var rows = Summary?["causal"] as JsonArray is { Count: > 0 } sc ? sc.ToList() : RawCausal();
        if (rows.Count == 0) { Missing("No causal evaluation (causal.json) was written."); return; }
        string Label(JsonNode? r) => S(r?["set"]) + (D(r?["size"]) is { } n && n > 0 ? $" ({n:0})" : "");
        string Colour(JsonNode? r) => S(r?["set"]) switch
        {
            "vanilla" or "empty" or "base_error" => "#7f7f7f",
            var s when s.StartsWith("random", StringComparison.Ordinal) => "#bcbd22",
            _ => "#d62728",
        };
        var traces = new JsonArray
        {
            new JsonObject
            {
                ["type"] = "bar", ["name"] = "gap closed", ["x"] = Arr(rows.Select(Label)), ["y"] = Arr(rows.Select(r => D(r?["gap_closed"]) ?? double.NaN)),
                ["marker"] = new JsonObject { ["color"] = Arr(rows.Select(Colour)) },
                ["error_y"] = new JsonObject { ["type"] = "data", ["array"] = Arr(rows.Select(r => D(r?["gap_closed_std"]) ?? 0)), ["visible"] = true },
                ["hovertemplate"] = "%{x}<br>gap closed %{y:.3f}<extra></extra>",
            },
        };
        Plot("causal", traces, Layout("patched latent set", "fraction of the KL gap closed"),
            "Fraction of the base→fine-tune KL gap closed by patching each latent set (red), against the baselines (grey) and random sets of the same size (olive, ± std over seeds).");
        P("<table><thead><tr><th>set</th><th>size</th><th>KL all</th><th>KL first 10</th><th>KL rest</th><th>gap closed</th></tr></thead><tbody>");
        foreach (var r in rows)
            P($"<tr><td>{H(S(r?["set"]))}</td><td>{F(D(r?["size"]), "0")}</td><td>{F(D(r?["kl_all"]), "0.####")}</td><td>{F(D(r?["kl_first10"]), "0.####")}</td>" +
              $"<td>{F(D(r?["kl_rest"]), "0.####")}</td><td>{F(D(r?["gap_closed"]))}{(D(r?["gap_closed_std"]) is { } sd ? $" ± {F(sd)}" : "")}</td></tr>");
        P("</tbody></table>");
    }

    List<JsonNode?> RawCausal()
    {
        if (inp.Causal is not JsonArray arr) return [];
        return arr.Where(e => S(e?["patch"]) is "latent_set" or "vanilla" or "base_error" && (S(e?["set"]) != "random" || ((bool?)e?["aggregate"] ?? false)))
            .Select(e => (JsonNode?)new JsonObject
            {
                ["set"] = S(e?["patch"]) == "latent_set" ? S(e?["set"]) : S(e?["patch"]), ["size"] = e?["size"]?.DeepClone(), ["kl_all"] = e?["kl_all"]?.DeepClone(),
                ["kl_first10"] = e?["kl_first10"]?.DeepClone(), ["kl_rest"] = e?["kl_rest"]?.DeepClone(), ["gap_closed"] = e?["gap_closed"]?.DeepClone(),
                ["gap_closed_std"] = e?["gap_closed_std"]?.DeepClone(),
            }).ToList();
    }

    // ---------------------------------------------------------------- ADL

    void Adl()
    {
        var entries = inp.Adl as JsonArray is { Count: > 0 } raw ? raw.ToList() : (Summary?["adl"] as JsonArray ?? []).ToList();
        if (entries.Count == 0) { Missing("The Activation Difference Lens did not run (no adl.json)."); return; }
        P("<p>Mean activation difference (fine-tune − base) at the first positions of unrelated text, read through the fine-tune's unembedding (logit lens), " +
          "through a Patchscope sweep over scales, and by steering generation with it.</p>");
        foreach (var e in entries)
        {
            string pos = S(e?["position"]), layer = S(e?["layer"]);
            string anchor = $"adl-pos-{pos}";
            string id = _anchors.Add(anchor) ? anchor : $"adl-l{layer}-pos-{pos}";
            _anchors.Add(id);
            P($"<article class=\"adl\" id=\"{H(id)}\"><h3>Layer {H(layer)}, position {H(pos)}" +
              (e?["context"] is { } ctx ? $" ({H(S(ctx))}{(e?["token"] is { } tk ? $", token <code>{H(Visible(S(tk)))}</code>" : "")})" : "") +
              (D(e?["delta_norm"]) is { } dn ? $" · ‖δ‖ = {F(dn)}" : "") + "</h3>");
            var probs = (e?["logit_lens"]?["finetuned"]?["top"] as JsonArray)?.Select(t => D(t?["prob"])).ToArray()
                        ?? (e?["top_probs"] as JsonArray)?.Select(D).ToArray();
            var top = (e?["top_tokens"] as JsonArray ?? []).Select(S).ToArray();
            P("<p>Top tokens: " + string.Join(" ", top.Select((t, i) => $"<code class=\"tok-chip\" title=\"{(probs is not null && i < probs.Length ? "p = " + F(probs[i], "0.####") : "")}\">{H(Visible(t))}</code>")) + "</p>");
            P("<p>Bottom tokens: " + string.Join(" ", (e?["bottom_tokens"] as JsonArray ?? []).Select(t => $"<code class=\"tok-chip\">{H(Visible(S(t)))}</code>")) + "</p>");
            var ps = e?["patchscope"];
            var psTokens = (ps?["tokens"] as JsonArray ?? e?["patchscope_tokens"] as JsonArray ?? []).Select(S).ToArray();
            if (psTokens.Length > 0) P($"<p>Patchscope tokens{(D(ps?["scale"]) is { } sc ? $" (scale {F(sc)})" : "")}: " + string.Join(" ", psTokens.Select(t => $"<code class=\"tok-chip\">{H(Visible(t))}</code>")) + "</p>");
            if (ps?["sweep"] is JsonArray sweep && sweep.Count > 0) PatchscopeSweep(id, sweep, psTokens);
            Steering(e);
            P("</article>");
        }
    }

    void PatchscopeSweep(string id, JsonArray sweep, string[] chosen)
    {
        var scales = sweep.Select(s => D(s?["scale"]) ?? double.NaN).ToArray();
        var follow = chosen.Where(t => t.Length > 0).Distinct().Take(6).ToList();
        if (follow.Count == 0) follow = (sweep[^1]?["tokens"] as JsonArray ?? []).Select(S).Distinct().Take(6).ToList();
        var traces = new JsonArray();
        foreach (var tok in follow)
            traces.Add(new JsonObject
            {
                ["type"] = "scatter", ["mode"] = "lines+markers", ["name"] = Visible(tok), ["x"] = Arr(scales),
                ["y"] = Arr(sweep.Select(s =>
                {
                    var toks = (s?["tokens"] as JsonArray ?? []).Select(S).ToList();
                    int i = toks.IndexOf(tok);
                    return i >= 0 && s?["probs"] is JsonArray p && i < p.Count ? D(p[i]) ?? 0 : 0;
                })),
            });
        Plot($"patchscope-{id}", traces, Layout("scale (× typical activation norm)", "probability", xType: "log"),
            "Patchscope sweep: probability of the chosen tokens when the scaled difference is patched into an identity prompt (0 where a token is outside the top list).");
    }

    void Steering(JsonNode? e)
    {
        if (e?["steering"] is JsonArray runs && runs.Count > 0)
        {
            P("<details open><summary>Steering samples</summary>");
            foreach (var run in runs)
            {
                P($"<p class=\"steer-head\">{H(S(run?["model"]))} model, strength {F(D(run?["strength"]))}{((bool?)run?["rule_met"] == true ? " (meets the coherence rule)" : "")}</p><ul class=\"samples\">");
                foreach (var s in run?["samples"] as JsonArray ?? [])
                    P($"<li><span class=\"prompt\">{H(S(s?["prompt"]))}</span> {H(S(s?["text"]))}</li>");
                P("</ul>");
            }
            P("</details>");
        }
        else if (e?["steering_samples"] is JsonArray ss && ss.Count > 0)
        {
            P("<details open><summary>Steering samples</summary><ul class=\"samples\">");
            foreach (var s in ss) P($"<li>{H(S(s))}</li>");
            P("</ul></details>");
        }
    }

    // ---------------------------------------------------------------- KL

    void Kl()
    {
        var kl = inp.Kl ?? Summary?["kl"] as JsonObject;
        if (kl is null || kl.Count == 0) { Missing("Per-token KL did not run (no kl.json)."); return; }
        if (kl["definition"] is { } def) P($"<p>{H(S(def))}.</p>");
        if (kl["per_token"] is JsonObject pt)
        {
            P("<table class=\"kv\"><tr>" + string.Join("", pt.Select(kv => $"<th>{H(kv.Key)}</th>")) + "</tr><tr>" +
              string.Join("", pt.Select(kv => $"<td>{F(D(kv.Value), "0.####")}</td>")) + "</tr></table>");
        }
        var top = (kl["top_tokens"] as JsonArray ?? []).Take(20).ToList();
        if (top.Count == 0) { Missing("kl.json lists no top tokens."); return; }
        double max = top.Max(t => D(t?["kl"]) ?? 0);
        Plot("kl-top", new JsonArray
        {
            new JsonObject
            {
                ["type"] = "bar", ["x"] = Arr(top.Select((t, i) => $"#{i + 1} {Visible(S(t?["ft_top"]))} / {Visible(S(t?["base_top"]))}")),
                ["y"] = Arr(top.Select(t => D(t?["kl"]) ?? double.NaN)), ["marker"] = new JsonObject { ["color"] = "#e6550d" },
                ["hovertemplate"] = "%{x}<br>KL %{y:.3f}<extra></extra>", ["name"] = "KL",
            },
        }, Layout("position (fine-tune's top / base's top next token)", "KL (nats)"), "The positions where the fine-tune's next-token distribution differs most from the base model's.");
        P("<p>Highlighted: the position where the models disagree, coloured by KL (hover for values).</p><ol class=\"kl-contexts\">");
        foreach (var t in top)
        {
            double v = D(t?["kl"]) ?? 0, a = max > 0 ? Math.Clamp(v / max, 0, 1) : 0;
            string hover = $"KL {F(v, "0.###")}; fine-tune predicts {Visible(S(t?["ft_top"]))} (p {F(D(t?["ft_top_prob"]), "0.##")}), base predicts {Visible(S(t?["base_top"]))} (p {F(D(t?["base_top_prob"]), "0.##")})";
            P($"<li><span class=\"ctx\">{H(S(t?["context"]))}</span><span class=\"tok kl\" style=\"background:rgba(230,85,13,{(0.1 + 0.8 * a).ToString("0.00", CultureInfo.InvariantCulture)})\" title=\"{H(hover)}\">" +
              $"{H(Visible(S(t?["ft_top"])))} ⁄ {H(Visible(S(t?["base_top"])))}</span>{(t?["next_token"] is { } nt ? $" <span class=\"next\">actual next: <code>{H(Visible(S(nt)))}</code></span>" : "")}</li>");
        }
        P("</ol>");
        if (kl["top_samples_by_max"] is JsonArray samples && samples.Count > 0)
        {
            P("<details><summary>Samples with the largest KL</summary><ul class=\"samples\">");
            foreach (var s in samples.Take(5)) P($"<li>max {F(D(s?["max_kl"]))}, mean {F(D(s?["mean_kl"]))}: {H(S(s?["text"]))}</li>");
            P("</ul></details>");
        }
    }

    // ---------------------------------------------------------------- diff mining, amplification, weight diff

    void DiffMining()
    {
        List<(string Token, double? Pct, string[] Contexts)> toks;
        if (inp.DiffMining?["by_occurrence"] is JsonArray occ)
            toks = occ.Take(20).Select(t => (S(t?["token"]), D(t?["occurrence_pct"]),
                (t?["contexts"] as JsonArray ?? []).Select(c => S(c?["context"]) + "⟦" + S(c?["continuation"]) + "⟧").ToArray())).ToList();
        else if (Summary?["diff_mining"] is JsonObject dm && dm["top_tokens"] is JsonArray tt && tt.Count > 0)
        {
            var pct = dm["occurrence_pct"] as JsonArray;
            toks = tt.Select((t, i) => (S(t), pct is not null && i < pct.Count ? D(pct[i]) : null, Array.Empty<string>())).ToList();
            if (dm["contexts"] is JsonArray ctx && toks.Count > 0) toks[0] = (toks[0].Item1, toks[0].Item2, ctx.Select(S).ToArray());
        }
        else { Missing("Diff mining did not run (no diff_mining.json)."); return; }
        if (toks.Count == 0) { Missing("Diff mining found no tokens."); return; }
        if (toks.Any(t => t.Pct is not null))
            Plot("diff-mining", new JsonArray
            {
                new JsonObject { ["type"] = "bar", ["name"] = "occurrence", ["x"] = Arr(toks.Select((t, i) => $"{i + 1}. {Visible(t.Token)}")), ["y"] = Arr(toks.Select(t => t.Pct ?? double.NaN)), ["marker"] = new JsonObject { ["color"] = "#31a354" } },
            }, Layout("token", "% of positions where it is among the top-k logit differences"), "Tokens whose logits the fine-tune raises most often (top-k of the logit difference).");
        P("<table><thead><tr><th>#</th><th>token</th><th>occurrence %</th><th>contexts (continuation in ⟦ ⟧)</th></tr></thead><tbody>");
        for (int i = 0; i < toks.Count; i++)
            P($"<tr><td>{i + 1}</td><td><code class=\"tok-chip\">{H(Visible(toks[i].Token))}</code></td><td>{F(toks[i].Pct, "0.##")}</td><td>{string.Join("", toks[i].Contexts.Take(3).Select(c => $"<div class=\"example\">{H(c)}</div>"))}</td></tr>");
        P("</tbody></table>");
    }

    void Amplification()
    {
        // amplification.json (the pipeline's stage or finetrace amplify): per prompt, every setting's samples side by side
        if (inp.Amplification?["prompts"] is JsonArray { Count: > 0 } prompts)
        {
            P("<p>Samples of the fine-tune with its difference to the base amplified: logits z<sub>α</sub> = z<sub>ft</sub> + α·(z<sub>ft</sub> − z<sub>base</sub>) " +
              "(α = 0 is the unamplified fine-tune). Sample i of every row uses the same prompt and seed, so the rows differ only by the logits.</p>");
            foreach (var p in prompts.OfType<JsonObject>())
            {
                bool chat = (bool?)p["chat"] == true;
                P($"<h3>{(chat ? "chat prompt" : "prompt")}: <code>{H(Visible(S(p["prompt"])))}</code></h3>");
                var settings = (p["settings"] as JsonArray ?? []).OfType<JsonObject>().ToList();
                int columns = settings.Count == 0 ? 0 : settings.Max(x => (x["samples"] as JsonArray)?.Count ?? 0);
                P("<table class=\"amplification\"><thead><tr><th>setting</th>" + string.Concat(Enumerable.Range(1, columns).Select(i => $"<th>sample {i}</th>")) + "</tr></thead><tbody>");
                foreach (var st in settings)
                {
                    string label = S(st["kind"]) switch
                    {
                        "base" => "base", "finetuned" => "fine-tune (α = 0)", "logit_diff" => $"α = {F(D(st["strength"]))}",
                        "weight" => $"weights w = {F(D(st["strength"]))}", var k => k,
                    };
                    var cells = (st["samples"] as JsonArray ?? []).Select(x => $"<td><div class=\"example\">{H(S(x))}</div></td>");
                    P($"<tr><th>{H(label)}</th>{string.Concat(cells)}</tr>");
                }
                P("</tbody></table>");
            }
            return;
        }
        var amp = Summary?["amplification"] as JsonArray;
        if (amp is null || amp.Count == 0) { Missing("Amplification did not run (no amplification samples)."); return; }
        P("<p>Samples from logits amplified along the difference: z<sub>α</sub> = z<sub>ft</sub> + α·(z<sub>ft</sub> − z<sub>base</sub>).</p>");
        if (Summary?["amplification_unamplified"]?["finetuned"] is JsonArray { Count: > 0 } ft)
        {
            P("<h3>fine-tune, unamplified (α = 0)</h3><ul class=\"samples\">");
            foreach (var s in ft) P($"<li>{H(S(s))}</li>");
            P("</ul>");
        }
        foreach (var a in amp)
        {
            P($"<h3>α = {F(D(a?["alpha"]))}</h3><ul class=\"samples\">");
            foreach (var s in a?["samples"] as JsonArray ?? []) P($"<li>{H(s is JsonObject o ? S(o["text"]) : S(s))}</li>");
            P("</ul>");
        }
    }

    void WeightDiff()
    {
        List<(string Module, string Layer, double? Rel)> rows;
        if (Summary?["weight_diff"] is JsonArray w && w.Count > 0)
            rows = w.Select(m => (S(m?["module"]), S(m?["layer"]), D(m?["rel_change"]))).ToList();
        else if (inp.WeightDiff?["modules"] is JsonArray mods)
            rows = mods.Where(m => D(m?["relative"]) is not null).OrderByDescending(m => D(m?["relative"])).Take(20)
                .Select(m => (S(m?["name"]), S(m?["layer"]), D(m?["relative"]))).ToList();
        else { Missing("The weight difference did not run (no weight_diff.json)."); return; }
        if (rows.Count == 0) { Missing("weight_diff.json lists no modules."); return; }
        Plot("weight-diff", new JsonArray
        {
            new JsonObject { ["type"] = "bar", ["orientation"] = "h", ["y"] = Arr(rows.Select(r => r.Module).Reverse()), ["x"] = Arr(rows.Select(r => r.Rel ?? double.NaN).Reverse()), ["marker"] = new JsonObject { ["color"] = "#6baed6" }, ["name"] = "relative change" },
        }, Layout("‖W_ft − W_base‖ / ‖W_base‖", ""), "The modules whose weights changed most, relative to their norm.");
        P("<table><thead><tr><th>module</th><th>layer</th><th>relative change</th></tr></thead><tbody>");
        foreach (var r in rows) P($"<tr><td><code>{H(r.Module)}</code></td><td>{H(r.Layer)}</td><td>{F(r.Rel, "0.####")}</td></tr>");
        P("</tbody></table>");
    }
}

using System.Text;
using System.Text.Json.Nodes;

namespace Finetrace.Web;

/// <summary>The pages over the readers' files (adl.json, kl.json, weight_diff.json) and the live pages.</summary>
internal static partial class Pages
{
    static string S(JsonNode? n) => n is JsonValue v && v.TryGetValue<string>(out var s) ? s : n?.ToString() ?? "";
    static double D(JsonNode? n) => n is JsonValue v && v.TryGetValue<double>(out var d) ? d : double.NaN;
    static string Toks(JsonNode? arr, int max = 20) => arr is JsonArray a ? string.Join(" ", a.Take(max).Select(x => $"<code>{E(S(x))}</code>")) : "";
    static string Json(JsonNode n) => n.ToJsonString().Replace("</", "<\\/");

    public static string NotComputed(string title, string file, string how) =>
        Layout(title, $"<div class=\"error\"><h2>404 — {E(title)} not computed</h2><p>This results folder has no {E(file)}; {E(how)}.</p><p><a href=\"/\">back to the latent table</a></p></div>", charts: false);

    public static string Adl(JsonArray entries)
    {
        var sb = new StringBuilder("<h2>Activation Difference Lens (adl.json)</h2><p class=\"muted\">δ = mean over samples of h_ft − h_base at each of the first positions, read through the logit lens, a Patchscope sweep, and steering.</p>");
        sb.Append("<table id=\"adl\"><tr><th>layer</th><th class=\"text\">context</th><th>position</th><th class=\"text\">token</th><th>‖δ‖</th><th class=\"text\">logit lens (fine-tuned): promotes</th><th class=\"text\">suppresses</th><th class=\"text\">Patchscope</th></tr>");
        foreach (var e in entries)
        {
            var ps = e?["patchscope"];
            sb.Append($"<tr><td>{S(e?["layer"])}</td><td class=\"text\">{E(S(e?["context"]))}</td><td>{S(e?["position"])}</td><td class=\"text\"><code>{E(S(e?["token"]))}</code></td><td>{F(D(e?["delta_norm"]))}</td>" +
                      $"<td class=\"text\">{Toks(e?["top_tokens"], 10)}</td><td class=\"text\">{Toks(e?["bottom_tokens"], 10)}</td>" +
                      $"<td class=\"text\">{(ps is null ? "<span class=\"muted\">—</span>" : $"scale {F(D(ps["scale"]))}: {Toks(ps["tokens"], 8)}")}</td></tr>");
        }
        sb.Append("</table>");
        int i = 0;
        foreach (var e in entries)
        {
            i++;
            string head = $"layer {S(e?["layer"])}, {E(S(e?["context"]))}, position {S(e?["position"])} (<code>{E(S(e?["token"]))}</code>)";
            if (e?["patchscope"]?["sweep"] is JsonArray sweep && sweep.Count > 0)
            {
                sb.Append($"<details class=\"card\"><summary><b>Patchscope sweep</b> — {head}</summary><table><tr><th>scale</th><th>agreement</th><th>novelty</th><th>score</th><th class=\"text\">tokens</th></tr>");
                foreach (var s in sweep)
                    sb.Append($"<tr><td>{F(D(s?["scale"]))}</td><td>{F(D(s?["agreement"]))}</td><td>{F(D(s?["novelty"]))}</td><td>{F(D(s?["score"]))}</td><td class=\"text\">{Toks(s?["tokens"], 10)}</td></tr>");
                sb.Append("</table></details>");
            }
            if (e?["steering"] is JsonArray runs && runs.Count > 0)
            {
                sb.Append($"<details class=\"card\" open><summary><b>Steering samples</b> — {head}</summary>");
                foreach (var r in runs)
                {
                    sb.Append($"<p>{E(S(r?["model"]))} model, strength {F(D(r?["strength"]))}{(r?["rule_met"] is JsonValue rm && rm.TryGetValue<bool>(out var met) && met ? " (meets the coherence rule)" : "")}</p><table><tr><th class=\"text\">prompt</th><th class=\"text\">steered</th><th class=\"text\">unsteered</th></tr>");
                    var steered = r?["samples"] as JsonArray ?? [];
                    var plain = r?["unsteered"] as JsonArray ?? [];
                    for (int k = 0; k < steered.Count; k++)
                        sb.Append($"<tr><td class=\"text\">{E(S(steered[k]?["prompt"]))}</td><td class=\"text wrap\">{E(S(steered[k]?["text"]))}</td><td class=\"text wrap\">{E(k < plain.Count ? S(plain[k]?["text"]) : "")}</td></tr>");
                    sb.Append("</table>");
                }
                sb.Append("</details>");
            }
        }
        return Layout("ADL", sb.ToString(), charts: false);
    }

    public static string Kl(JsonObject kl)
    {
        var sb = new StringBuilder("<h2>Per-token KL between the models (kl.json)</h2>");
        sb.Append($"<p class=\"muted\">{E(S(kl["definition"]))}; {E(S(kl["positions_scored"]))}. {E(S(kl["samples"]))} samples, {E(S(kl["positions"]))} positions.{(kl["vocab_note"] is { } vn ? " " + E(S(vn)) : "")}</p>");
        var q = new JsonArray();
        if (kl["per_token"] is JsonObject pt)
        {
            sb.Append("<div class=\"cards\"><div class=\"card\"><h3>Per token</h3><table>");
            foreach (var k in new[] { "mean", "std", "min", "p25", "median", "p75", "p90", "p95", "p99", "max" })
                if (pt[k] is { } v) { sb.Append($"<tr><td class=\"text\">{k}</td><td>{F(D(v))}</td></tr>"); if (k is not ("mean" or "std")) q.Add(new JsonArray(k, D(v))); }
            sb.Append("</table></div>");
            if (kl["per_sample_mean"] is JsonObject ps)
            {
                sb.Append("<div class=\"card\"><h3>Per-sample mean</h3><table>");
                foreach (var k in new[] { "mean", "median", "p90", "max" }) if (ps[k] is { } v) sb.Append($"<tr><td class=\"text\">{k}</td><td>{F(D(v))}</td></tr>");
                sb.Append("</table></div>");
            }
            sb.Append("<div id=\"kldist\" class=\"plot\"></div></div>");
        }
        sb.Append("<h3>Highest-KL tokens in context</h3><table id=\"kltokens\"><tr><th>KL</th><th class=\"text\">context → token</th><th class=\"text\">next</th><th class=\"text\">fine-tuned predicts</th><th class=\"text\">base predicts</th></tr>");
        var top = kl["top_tokens"] as JsonArray ?? [];
        double max = top.Select(t => D(t?["kl"])).Where(double.IsFinite).DefaultIfEmpty(1).Max();
        foreach (var t in top)
        {
            string ctx = S(t?["context"]), tok = S(t?["token"]);
            string before = ctx.EndsWith(tok, StringComparison.Ordinal) ? ctx[..^tok.Length] : ctx + " ";
            double a = Math.Clamp(D(t?["kl"]) / (max > 0 ? max : 1), 0.15, 1);
            sb.Append($"<tr><td>{F(D(t?["kl"]))}</td><td class=\"text wrap\"><span class=\"muted\">{E(before)}</span><span class=\"tok act\" style=\"background:rgba(230,80,40,{a.ToString("0.###", System.Globalization.CultureInfo.InvariantCulture)})\" title=\"KL {F(D(t?["kl"]))}\">{E(tok)}</span></td>" +
                      $"<td class=\"text\"><code>{E(S(t?["next_token"]))}</code></td><td class=\"text\"><code>{E(S(t?["ft_top"]))}</code> {F(D(t?["ft_top_prob"]))}</td><td class=\"text\"><code>{E(S(t?["base_top"]))}</code> {F(D(t?["base_top_prob"]))}</td></tr>");
        }
        sb.Append("</table>");
        if (kl["top_samples_by_max"] is JsonArray ts && ts.Count > 0)
        {
            sb.Append("<h3>Samples with the highest maximum KL</h3><table><tr><th>max KL</th><th>mean KL</th><th class=\"text\">text</th></tr>");
            foreach (var s in ts) sb.Append($"<tr><td>{F(D(s?["max_kl"]))}</td><td>{F(D(s?["mean_kl"]))}</td><td class=\"text wrap\">{E(S(s?["text"]))}</td></tr>");
            sb.Append("</table>");
        }
        sb.Append($"<script type=\"application/json\" id=\"kl-data\">{Json(new JsonObject { ["quantiles"] = q, ["top"] = new JsonArray(top.Select(t => (JsonNode?)D(t?["kl"])).ToArray()) })}</script>");
        return Layout("KL", sb.ToString());
    }

    public static string WeightDiff(JsonObject w)
    {
        var sb = new StringBuilder("<h2>Weight difference (weight_diff.json)</h2>");
        sb.Append($"<p class=\"muted\">‖ΔW‖ / ‖W_base‖ over all parameters: {F(D(w["global_relative"]))}{(w["from_adapter"] is JsonValue fa && fa.TryGetValue<bool>(out var b) && b ? " (ΔW from a LoRA adapter)" : "")}. {E(S(w["effective_rank_rule"]))}.</p>");
        sb.Append("<table id=\"weights\"><tr><th class=\"text\">parameter</th><th>layer</th><th class=\"text\">module</th><th class=\"text\">shape</th><th>‖W_base‖</th><th>‖ΔW‖</th><th>relative</th><th>effective rank</th><th>energy captured</th></tr>");
        var mods = (w["modules"] as JsonArray ?? []).OrderByDescending(m => D(m?["relative"]) is var r && double.IsFinite(r) ? r : -1);
        foreach (var m in mods)
            sb.Append($"<tr><td class=\"text\"><code>{E(S(m?["name"]))}</code></td><td>{E(S(m?["layer"]))}</td><td class=\"text\">{E(S(m?["module"]))}</td><td class=\"text\">{E(m?["shape"] is JsonArray sh ? string.Join("×", sh.Select(S)) : "")}</td>" +
                      $"<td>{F(D(m?["base_norm"]))}</td><td>{F(D(m?["delta_norm"]))}</td><td>{F(D(m?["relative"]))}</td><td>{F(D(m?["effective_rank"]))}</td><td>{F(D(m?["energy_captured"]))}</td></tr>");
        sb.Append("</table>");
        foreach (var (key, title) in new[] { ("embedding_rows", "Most changed embedding rows"), ("unembedding_rows", "Most changed unembedding rows") })
            if (w[key] is JsonArray rows && rows.Count > 0)
            {
                sb.Append($"<h3>{title}</h3><table><tr><th>id</th><th class=\"text\">token</th><th>‖Δ‖</th><th>‖base‖</th><th>relative</th></tr>");
                foreach (var r in rows.Take(30)) sb.Append($"<tr><td>{S(r?["id"])}</td><td class=\"text\"><code>{E(S(r?["token"]))}</code></td><td>{F(D(r?["delta_norm"]))}</td><td>{F(D(r?["base_norm"]))}</td><td>{F(D(r?["relative"]))}</td></tr>");
                sb.Append("</table>");
            }
        return Layout("Weight diff", sb.ToString(), charts: false);
    }

    /// <summary>connections.json (finetrace connect): the α sweep and, per output latent, its linear and MLP fit and
    /// the few input latents it depends on; outputs ordered by how well a sparse linear map explains them.</summary>
    public static string Connections(JsonObject c)
    {
        var sb = new StringBuilder("<h2>Connections between dictionaries (connections.json)</h2>");
        sb.Append($"<p class=\"muted\"><code>{E(S(c["from"]))}</code> → <code>{E(S(c["to"]))}</code>. {E(S(c["meaning"]))}. α = {F(D(c["alpha"]))}: " +
                  $"{S(c["nonzeros"])} nonzero weights (density {F(D(c["density"]))}, {F(D(c["mean_nonzeros_per_output"]))} inputs per output); mean held-out FVU linear {F(D(c["mean_fvu_linear"]))}, MLP {F(D(c["mean_fvu_mlp"]))}.</p>");
        sb.Append("<h3>α sweep</h3><table id=\"sweep\"><tr><th>α</th><th>nonzeros</th><th>density</th><th>mean held-out FVU</th></tr>");
        foreach (var r in c["sweep"] as JsonArray ?? []) sb.Append($"<tr><td>{F(D(r?["alpha"]))}</td><td>{S(r?["nonzeros"])}</td><td>{F(D(r?["density"]))}</td><td>{F(D(r?["mean_fvu"]))}</td></tr>");
        sb.Append("</table><h3>Output latents, best explained first</h3>");
        sb.Append("<table id=\"connections\"><tr><th>output latent</th><th>FVU linear</th><th>FVU MLP</th><th>gap</th><th>inputs</th><th class=\"text\">largest input weights</th></tr>");
        var outs = (c["outputs"] as JsonArray ?? []).OrderBy(o => D(o?["fvu_linear"]) is var v && double.IsFinite(v) ? v : double.MaxValue);
        foreach (var o in outs.Take(500))
        {
            var inputs = (o?["inputs"] as JsonArray ?? []).Take(6).Select(i => $"{S(i?["latent"])} ({F(D(i?["weight"]))})");
            sb.Append($"<tr><td>{S(o?["latent"])}</td><td>{F(D(o?["fvu_linear"]))}</td><td>{F(D(o?["fvu_mlp"]))}</td><td>{F(D(o?["gap"]))}</td><td>{S(o?["nonzeros"])}</td><td class=\"text\">{E(string.Join(", ", inputs))}</td></tr>");
        }
        sb.Append("</table>");
        return Layout("Connections", sb.ToString(), charts: false);
    }

    /// <summary>target_attribution.json (finetrace analyze target-attribution): latents ranked by their integrated-gradient
    /// attribution to a logit difference, and the steering check.</summary>
    public static string TargetAttribution(JsonObject t)
    {
        var sb = new StringBuilder("<h2>Attribution to a logit difference (target_attribution.json)</h2>");
        sb.Append($"<p class=\"muted\">target <code>{E(S(t["target"]))}</code> at layer {S(t["layer"])} of <code>{E(S(t["model"]))}</code> over {S(t["prompts"])} prompt(s): value {F(D(t["value"]))}, " +
                  $"all latents removed {F(D(t["baseline_value"]))}, attributions sum to {F(D(t["attribution_sum"]))}. {E(S(t["meaning"]))}.</p>");
        if (t["steer"] is JsonObject st)
            sb.Append($"<p id=\"steer\">Steering by latent {S(st["latent"])} (scale {F(D(st["scale"]))}) moves the target to {F(D(st["value"]))} (Δ {F(D(st["delta"]))}).</p>");
        sb.Append("<table id=\"attribution\"><tr><th>latent</th><th>attribution</th><th>max activation</th></tr>");
        foreach (var l in (t["latents"] as JsonArray ?? []).Take(200))
            sb.Append($"<tr><td><a href=\"/latent/{S(l?["latent"])}\">{S(l?["latent"])}</a></td><td>{F(D(l?["attribution"]))}</td><td>{F(D(l?["max_activation"]))}</td></tr>");
        sb.Append("</table>");
        return Layout("Target attribution", sb.ToString(), charts: false);
    }

    public static string LiveOff(string problem) =>
        Layout("Live analysis off", $"<div class=\"error\" id=\"live-off\"><h2>Live analysis is off</h2><p>{E(problem)}</p><p>The rest of the dashboard works: <a href=\"/\">latent table</a>.</p></div>", charts: false);

    public static string Live(DashboardData data, LiveModels live)
    {
        var m = data.Models!;
        var sb = new StringBuilder("<h2>Live analysis</h2>");
        sb.Append($"<p class=\"muted\">base <code>{E(m.Base)}</code> · fine-tuned <code>{E(m.FineTuned)}</code>{(m.Adapter is null ? "" : $" + adapter <code>{E(m.Adapter)}</code>")} · <span id=\"live-status\">loading the models…</span></p>");
        sb.Append("<div id=\"live\">");
        sb.Append("<div class=\"card\"><h3>Input</h3><label><input type=\"radio\" name=\"mode\" value=\"text\" checked> text</label> <label><input type=\"radio\" name=\"mode\" value=\"chat\"> chat (rendered with the fine-tuned model's template)</label>");
        sb.Append("<textarea id=\"live-text\" rows=\"3\" style=\"width:100%\">Once upon a time, there was a little dragon named Zog.</textarea>");
        sb.Append("<div id=\"chat-box\" style=\"display:none\"><textarea id=\"live-user\" rows=\"2\" style=\"width:100%\" placeholder=\"user message\">Tell me a story.</textarea><textarea id=\"live-assistant\" rows=\"2\" style=\"width:100%\" placeholder=\"assistant reply (optional)\"></textarea></div>");
        sb.Append("<div class=\"controls\"><label>latents <input id=\"live-latents\" size=\"18\" placeholder=\"e.g. 3, 17\"></label><button id=\"live-run\" disabled>analyse</button>");
        sb.Append("<label>colour by <select id=\"live-colour\"><option value=\"kl\">KL(p_ft‖p_base)</option><option value=\"diff_norm\">‖h_ft − h_base‖</option></select></label></div></div>");
        sb.Append("<div id=\"live-result\"></div>");
        sb.Append("<div class=\"card\"><h3>Steering playground</h3><div class=\"controls\"><label>model <select id=\"steer-model\"><option value=\"finetuned\">fine-tuned</option><option value=\"base\">base</option></select></label>");
        sb.Append("<label>vector <select id=\"steer-vector\"></select></label><label>latent <input id=\"steer-latent\" size=\"5\" value=\"0\"></label>");
        sb.Append("<label>strength <input id=\"steer-strength\" size=\"5\" value=\"1\"></label><label>tokens <input id=\"steer-tokens\" size=\"4\" value=\"24\"></label><label>temperature <input id=\"steer-temp\" size=\"4\" value=\"0\"></label><label>seed <input id=\"steer-seed\" size=\"4\" value=\"0\"></label>");
        sb.Append("<button id=\"steer-run\" disabled>generate</button></div><div id=\"steer-result\"></div>");
        sb.Append("<h3>Logit-diff amplification</h3><div class=\"controls\"><label>α <input id=\"amp-alpha\" size=\"4\" value=\"2\"></label><button id=\"amp-run\" disabled>sample</button></div><div id=\"amp-result\"></div></div>");
        sb.Append("</div>");
        return Layout("Live", sb.ToString(), charts: false);
    }
}

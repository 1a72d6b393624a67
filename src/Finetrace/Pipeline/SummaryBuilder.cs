using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Finetrace.Diffing;
using Finetrace.Diffing.Adl;
using Finetrace.Diffing.Causal;
using Finetrace.Diffing.DiffMining;
using Finetrace.Diffing.Kl;
using Finetrace.Diffing.WeightDiff;
using Finetrace.Models;
using Finetrace.Text.Tokenization;

namespace Finetrace.Pipeline;

/// <summary>
/// RESULTS/summary.json (the contract in issue 14 / README "finetrace diff"): the primary dictionary's latents sorted by
/// rank_sum then Δnorm, random shared control latents, the readers' highlights, and findings. Findings come from a
/// stated rule (<see cref="Findings"/>), each checked against its control and dropped when it does not beat it.
/// </summary>
public static partial class SummaryBuilder
{
    internal static JsonObject Build(DiffPlan plan, ResultsFolder results, DiffPipeline.DictionaryRun primary, JsonArray sources, Tokenizer tok)
    {
        var c = plan.Config;
        var folder = primary.Results;
        var table = FeatureTable.Load(folder.PathOf(FeatureTable.FileName));
        var examples = File.Exists(folder.PathOf(DiffPipeline.LatentExamplesFile))
            ? JsonNode.Parse(File.ReadAllText(folder.PathOf(DiffPipeline.LatentExamplesFile)))!.AsObject() : new JsonObject();
        var order = LatentOrder(table);
        var latents = new JsonArray(order.Take(c.Analysis.SummaryLatents).Select(j => (JsonNode)LatentJson(table, examples, j)).ToArray());
        var controls = new JsonArray(ControlLatents(table, c.Analysis.Controls, c.Analysis.Seed).Select(j => (JsonNode)LatentJson(table, examples, j)).ToArray());
        var (amplified, unamplified) = PipelineAmplification.SummaryJson(results);
        var summary = new JsonObject
        {
            ["format"] = "finetrace-summary/1",
            ["models"] = new JsonObject
            {
                ["base"] = Path.GetFullPath(plan.Models.Base), ["base_hash"] = new InputsHash().AddPath("base", plan.Models.Base).ToString(),
                ["finetuned"] = Path.GetFullPath(plan.Models.FineTuned), ["finetuned_hash"] = new InputsHash().AddPath("finetuned", plan.Models.FineTuned).ToString(),
                ["adapter"] = plan.Models.Adapter is null ? null : Path.GetFullPath(plan.Models.Adapter),
            },
            ["layer"] = c.Harvest.Layer,
            ["data"] = sources.DeepClone(),
            ["dictionary"] = DictionaryJson(primary),
            ["dictionaries"] = new JsonArray(c.Dictionaries.Select(d => (JsonNode)new JsonObject { ["name"] = d.Name, ["kind"] = d.Kind, ["folder"] = d.Name }).ToArray()),
            ["latents"] = latents,
            ["adl"] = AdlJson(results),
            ["causal"] = CausalJson(folder),
            ["kl"] = KlJson(results),
            ["controls"] = controls,
            ["diff_mining"] = DiffMiningJson(results),
            ["amplification"] = amplified,
            ["amplification_unamplified"] = unamplified,
            ["weight_diff"] = WeightDiffJson(results),
        };
        summary["findings"] = Findings.Make(summary, plan, results, c.Findings);
        summary["findings_rule"] = Findings.Rule(c.Findings);
        return summary;
    }

    /// <summary>Latent ids sorted by rank_sum ascending (latents without one after those with), ties by delta_norm
    /// descending, then by id.</summary>
    public static int[] LatentOrder(FeatureTable t)
    {
        var rs = t.Has("rank_sum") ? t.Numbers("rank_sum") : new double[t.Rows].Select(_ => double.NaN).ToArray();
        var dn = t.Has("delta_norm") ? t.Numbers("delta_norm") : new double[t.Rows];
        var freq = t.Has("freq_all") ? t.Numbers("freq_all") : null;
        return Enumerable.Range(0, t.Rows)
            .Where(j => freq is null || freq[j] > 0 || !double.IsNaN(rs[j]))
            .OrderBy(j => double.IsNaN(rs[j]) ? 1 : 0).ThenBy(j => double.IsNaN(rs[j]) ? 0 : rs[j])
            .ThenByDescending(j => double.IsNaN(dn[j]) ? double.NegativeInfinity : dn[j]).ThenBy(j => j).ToArray();
    }

    /// <summary><paramref name="n"/> latents tagged shared that fired, drawn with a seeded shuffle (all fired latents
    /// when fewer than n are shared).</summary>
    public static int[] ControlLatents(FeatureTable t, int n, int seed)
    {
        var freq = t.Has("freq_all") ? t.Numbers("freq_all") : new double[t.Rows].Select(_ => 1.0).ToArray();
        var tag = t.Has("tag") ? t.Texts("tag") : null;
        var pool = Enumerable.Range(0, t.Rows).Where(j => freq[j] > 0 && (tag is null || tag[j] == "shared")).ToArray();
        if (pool.Length < n) pool = Enumerable.Range(0, t.Rows).Where(j => freq[j] > 0 && (tag is null || tag[j] != "ft_only")).ToArray();
        var rng = new Random(seed + 17);
        return pool.OrderBy(_ => rng.Next()).Take(n).Order().ToArray();
    }

    static double? Num(FeatureTable t, string col, int j) => t.Has(col) && t.Numbers(col)[j] is var v && double.IsFinite(v) ? v : null;

    static JsonObject LatentJson(FeatureTable t, JsonObject examples, int j)
    {
        var ex = examples[j.ToString(CultureInfo.InvariantCulture)] as JsonArray ?? [];
        JsonArray top = [];
        if (t.Has("top_tokens"))
            try { top = JsonNode.Parse(t.Texts("top_tokens")[j]) as JsonArray ?? []; } catch (JsonException) { }
        return new JsonObject
        {
            ["id"] = j, ["tag"] = t.Has("tag") ? t.Texts("tag")[j] : null,
            ["delta_norm"] = Num(t, "delta_norm", j), ["nu_error"] = Num(t, "beta_ratio_error", j), ["nu_reconstruction"] = Num(t, "beta_ratio_reconstruction", j),
            ["rank_sum"] = Num(t, "rank_sum", j),
            ["frequency"] = Num(t, "freq_all", j), ["template_share"] = Num(t, "template_share", j),
            ["top_tokens"] = new JsonArray(top.Take(10).Select(x => x?.DeepClone()).ToArray()),
            ["examples"] = new JsonArray(ex.Take(3).Select(e => (JsonNode?)(string?)e!["text"]).ToArray()),
            ["example_sources"] = new JsonArray(ex.Take(3).Select(e => (JsonNode?)(string?)e!["source"]).ToArray()),
        };
    }

    static JsonObject DictionaryJson(DiffPipeline.DictionaryRun d)
    {
        var o = new JsonObject { ["name"] = d.Config.Name, ["folder"] = $"{d.Config.Name}/dictionary", ["kind"] = d.Config.Kind, ["dict_size"] = d.Config.DictSize };
        if (d.Config.Kind == "l1-crosscoder") o["mu"] = d.Config.L1; else o["k"] = d.Config.K;
        string v = Path.Combine(d.DictionaryDir, "validation.json");
        if (File.Exists(v))
        {
            var val = JsonNode.Parse(File.ReadAllText(v))!.AsObject();
            o["fve"] = val["fve"]!.DeepClone(); o["l0"] = val["l0"]!.DeepClone(); o["dead_fraction"] = val["dead_fraction"]!.DeepClone();
            o["validation_tokens"] = val["tokens"]!.DeepClone();
        }
        return o;
    }

    static JsonNode? Read(ResultsFolder r, string file) => File.Exists(r.PathOf(file)) ? JsonNode.Parse(File.ReadAllText(r.PathOf(file))) : null;

    static JsonArray AdlJson(ResultsFolder r)
    {
        if (Read(r, AdlOutput.JsonFile) is not JsonArray arr) return [];
        return new JsonArray(arr.Select(e => (JsonNode)new JsonObject
        {
            ["layer"] = e!["layer"]!.DeepClone(), ["position"] = e["position"]!.DeepClone(), ["context"] = e["context"]?.DeepClone(),
            ["delta_norm"] = e["delta_norm"]?.DeepClone(),
            ["top_tokens"] = e["top_tokens"]!.DeepClone(), ["bottom_tokens"] = e["bottom_tokens"]!.DeepClone(),
            ["top_probs"] = new JsonArray((e["logit_lens"]?["finetuned"]?["top"] as JsonArray ?? []).Take(20).Select(t => t!["prob"]!.DeepClone()).ToArray()),
            ["patchscope_tokens"] = e["patchscope"]?["tokens"]?.DeepClone() ?? new JsonArray(),
            ["steering_samples"] = new JsonArray((e["steering"] as JsonArray ?? []).SelectMany(s => s!["samples"] as JsonArray ?? []).Select(s => s!["text"]!.DeepClone()).ToArray()),
        }).ToArray());
    }

    static JsonArray CausalJson(ResultsFolder folder)
    {
        if (Read(folder, CausalEvaluation.FileName) is not JsonArray arr) return [];
        var rows = new JsonArray();
        foreach (var e in arr)
        {
            string set = (string)e!["set"]!, patch = (string)e["patch"]!;
            bool agg = (bool?)e["aggregate"] ?? false;
            if (patch != "latent_set" && patch != "vanilla" && patch != "base_error") continue;
            if (set == "random" && !agg) continue;
            rows.Add(new JsonObject
            {
                ["set"] = patch == "latent_set" ? set : patch, ["patch"] = patch, ["size"] = e["size"]?.DeepClone(), ["kl_all"] = e["kl_all"]?.DeepClone(),
                ["kl_first10"] = e["kl_first10"]?.DeepClone(), ["kl_rest"] = e["kl_rest"]?.DeepClone(), ["gap_closed"] = e["gap_closed"]?.DeepClone(),
                ["gap_closed_std"] = agg ? e["gap_closed_std"]?.DeepClone() : null,
            });
        }
        return rows;
    }

    static JsonObject KlJson(ResultsFolder r)
    {
        if (Read(r, KlAnalysis.OutputFile) is not JsonObject kl) return new JsonObject();
        return new JsonObject
        {
            ["per_token"] = kl["per_token"]?.DeepClone(), ["positions"] = kl["positions"]?.DeepClone(),
            ["top_tokens"] = new JsonArray((kl["top_tokens"] as JsonArray ?? []).Take(20).Select(t => (JsonNode)new JsonObject
            {
                ["kl"] = t!["kl"]!.DeepClone(), ["token"] = t["token"]?.DeepClone(), ["context"] = t["context"]?.DeepClone(),
                ["ft_top"] = t["ft_top"]?.DeepClone(), ["base_top"] = t["base_top"]?.DeepClone(),
            }).ToArray()),
        };
    }

    static JsonObject DiffMiningJson(ResultsFolder r)
    {
        if (Read(r, DiffMiningAnalysis.OutputFile) is not JsonObject dm) return new JsonObject { ["top_tokens"] = new JsonArray(), ["contexts"] = new JsonArray() };
        var toks = (dm["by_occurrence"] as JsonArray ?? []).Take(20).ToList();
        return new JsonObject
        {
            ["top_tokens"] = new JsonArray(toks.Select(t => t!["token"]!.DeepClone()).ToArray()),
            ["occurrence_pct"] = new JsonArray(toks.Select(t => t!["occurrence_pct"]!.DeepClone()).ToArray()),
            ["k"] = dm["k"]?.DeepClone(),
            ["contexts"] = new JsonArray(toks.SelectMany(t => t!["contexts"] as JsonArray ?? []).Take(10)
                .Select(x => (JsonNode?)((string?)x!["context"] + (string?)x["continuation"])).ToArray()),
        };
    }

    static JsonArray WeightDiffJson(ResultsFolder r)
    {
        if (Read(r, WeightDiffAnalysis.OutputFile) is not JsonObject wd) return [];
        return new JsonArray((wd["modules"] as JsonArray ?? []).Where(m => m!["relative"] is not null)
            .OrderByDescending(m => (double)m!["relative"]!).Take(20)
            .Select(m => (JsonNode)new JsonObject { ["module"] = m!["name"]!.DeepClone(), ["layer"] = m["layer"]?.DeepClone(), ["rel_change"] = m["relative"]!.DeepClone() }).ToArray());
    }
}

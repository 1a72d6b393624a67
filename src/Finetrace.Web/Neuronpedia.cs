using System.Text.Json.Nodes;
using Finetrace.Diffing;
using Finetrace.Diffing.Causal;
using Finetrace.Diffing.Latents;
using Finetrace.Models;
using Finetrace.Tensors;

namespace Finetrace.Web;

/// <summary>
/// Neuronpedia / SAEDashboard batch JSON (formats.md §3): top level model_id, layer, sae_set, sae_id_suffix, features;
/// per feature the decoder vector (the fine-tuned row of a crosscoder, the derived choice §3 allows; documented in
/// the output's "finetrace" note), neuron alignment, logit effects W_U · d_j (top/bottom 10 and a 50-bin histogram)
/// through the fine-tuned model, firing density, the activation histogram, and the stored examples as activation
/// records. Correlated neurons and features are not computed by the toolkit and are written as empty lists. Parts
/// that need what is not loaded (dictionary, model) are empty lists too. Values are rounded to 5 decimals.
/// </summary>
public static class Neuronpedia
{
    public static readonly string[] FeatureFields =
    [
        "feature_index", "neuron_alignment_indices", "neuron_alignment_values", "neuron_alignment_l1",
        "correlated_neurons_indices", "correlated_neurons_l1", "correlated_neurons_pearson",
        "correlated_features_indices", "correlated_features_l1", "correlated_features_pearson",
        "neg_str", "neg_values", "pos_str", "pos_values", "frac_nonzero",
        "freq_hist_data_bar_values", "freq_hist_data_bar_heights", "logits_hist_data_bar_values", "logits_hist_data_bar_heights",
        "n_prompts_total", "n_tokens_in_prompt", "dataset", "vector", "activations",
    ];

    public static readonly string[] ActivationFields = ["bin_min", "bin_max", "bin_contains", "tokens", "values", "qualifying_token_index"];

    static JsonNode? R(double v) => double.IsFinite(v) ? JsonValue.Create(Math.Round(v, 5)) : null;
    static JsonArray Arr<T>(IEnumerable<T> xs, Func<T, JsonNode?> f) => new(xs.Select(f).ToArray());

    public static JsonObject Batch(DashboardData data, (AnalysisDictionary? Dict, CausalLM? FineTuned, Func<int, string>? Decode) parts, IReadOnlyList<int> ids)
    {
        var (ad, lm, decode) = parts;
        var features = new JsonArray();
        float[]? rows = ad is null ? null : CausalEvaluation.RawRows(ad.Dict, ad.Dict.Models - 1);
        int D = ad?.Dict.DModel ?? 0;
        var prov = data.Examples?.Provenance();
        var freq = data.Latents is { } t && t.IsNumeric("freq_all") ? t.Numbers("freq_all") : null;
        foreach (int j in ids)
        {
            var f = new JsonObject { ["feature_index"] = j };
            float[]? v = rows is not null && j < ad!.Latents ? rows.AsSpan(j * D, D).ToArray() : null;
            if (v is not null)
            {
                double l1 = v.Sum(x => Math.Abs((double)x));
                var top3 = Enumerable.Range(0, D).OrderByDescending(i => Math.Abs(v[i])).ThenBy(i => i).Take(3).ToArray();
                f["neuron_alignment_indices"] = Arr(top3, i => i);
                f["neuron_alignment_values"] = Arr(top3, i => R(v[i]));
                f["neuron_alignment_l1"] = Arr(top3, i => R(l1 > 0 ? Math.Abs(v[i]) / l1 : 0));
            }
            else { f["neuron_alignment_indices"] = new JsonArray(); f["neuron_alignment_values"] = new JsonArray(); f["neuron_alignment_l1"] = new JsonArray(); }
            foreach (var k in new[] { "correlated_neurons_indices", "correlated_neurons_l1", "correlated_neurons_pearson", "correlated_features_indices", "correlated_features_l1", "correlated_features_pearson" })
                f[k] = new JsonArray();
            // Logit effects W_U · d_j without the final norm (LogitEffects' convention), in the fine-tuned model's logit units.
            if (v is not null && lm is not null && lm.Hidden == D)
            {
                var x = new Tensor(1, 1, D);
                v.CopyTo(x.Data, 0);
                var logits = lm.Unembed(x, new TokenBatch(new int[1], 1, 1)).Data;
                var (top, bottom) = LogitEffects.Extremes(logits, 10);
                string Tok(int i) => decode?.Invoke(i) ?? $"<{i}>";
                f["neg_str"] = Arr(bottom, i => Tok(i)); f["neg_values"] = Arr(bottom, i => R(logits[i]));
                f["pos_str"] = Arr(top, i => Tok(i)); f["pos_values"] = Arr(top, i => R(logits[i]));
                var (centers, heights) = Histogram(logits, 50);
                f["logits_hist_data_bar_values"] = Arr(centers, c => R(c)); f["logits_hist_data_bar_heights"] = Arr(heights, h => h);
            }
            else
                foreach (var k in new[] { "neg_str", "neg_values", "pos_str", "pos_values", "logits_hist_data_bar_values", "logits_hist_data_bar_heights" }) f[k] = new JsonArray();
            f["frac_nonzero"] = freq is not null && j < freq.Length ? R(freq[j]) : null;
            if (data.Examples?.Histogram(j) is { } h)
            {
                f["freq_hist_data_bar_values"] = Arr(Enumerable.Range(0, h.Counts.Length), i => R((h.Edges[i] + h.Edges[i + 1]) / 2));
                f["freq_hist_data_bar_heights"] = Arr(h.Counts, c => c);
            }
            else { f["freq_hist_data_bar_values"] = new JsonArray(); f["freq_hist_data_bar_heights"] = new JsonArray(); }
            f["n_prompts_total"] = prov?.Sequences ?? 0;
            f["n_tokens_in_prompt"] = prov?.MaxLength ?? 0;
            f["dataset"] = prov?.Dataset;
            f["vector"] = v is null ? new JsonArray() : Arr(v, x => R(x));
            f["activations"] = Activations(data, j);
            features.Add(f);
        }
        return new JsonObject
        {
            ["model_id"] = data.Models is { } m ? Path.GetFileName(m.FineTuned.TrimEnd('/')) : null,
            ["layer"] = ad?.Layer ?? data.SummaryLayer,
            ["sae_set"] = "finetrace-" + Path.GetFileName(data.TableDirectory.TrimEnd('/')),
            ["sae_id_suffix"] = ad is null ? null : Path.GetFileName(ad.Directory.TrimEnd('/')),
            ["finetrace"] = "vector = the fine-tuned model's decoder row in raw activation space (crosscoders: formats.md §3, derived); " +
                            "correlated neurons/features are not computed (empty lists); freq_hist = examples.sqlite latent_histograms bins",
            ["features"] = features,
        };
    }

    /// <summary>The stored examples as activation records: the top group (bin_min −1, bin_max = its highest score,
    /// bin_contains −1), then each quantile band with its score range and size.</summary>
    static JsonArray Activations(DashboardData data, int j)
    {
        var arr = new JsonArray();
        if (data.Examples is null) return arr;
        var exs = data.Examples.ForLatent(j);
        foreach (var g in exs.GroupBy(e => (e.Kind, e.Band)))
        {
            bool top = g.Key.Band is null;
            double lo = top ? -1 : g.Min(e => e.Score), hi = g.Max(e => e.Score);
            foreach (var e in g)
            {
                int q = e.Values.Length == 0 ? 0 : Array.IndexOf(e.Values, e.Values.Max());
                arr.Add(new JsonObject
                {
                    ["bin_min"] = R(lo), ["bin_max"] = R(hi), ["bin_contains"] = top ? -1 : g.Count(),
                    ["tokens"] = Arr(Enumerable.Range(0, e.TokenIds.Length), i => e.Tokens?[i] ?? $"<{e.TokenIds[i]}>"),
                    ["values"] = Arr(e.Values, x => R(x)),
                    ["qualifying_token_index"] = q,
                });
            }
        }
        return arr;
    }

    static (double[] Centers, long[] Heights) Histogram(float[] x, int bins)
    {
        float lo = x.Min(), hi = x.Max();
        double w = hi > lo ? (hi - lo) / (double)bins : 1;
        var h = new long[bins];
        foreach (var v in x) h[Math.Min(bins - 1, (int)((v - lo) / w))]++;
        return (Enumerable.Range(0, bins).Select(i => lo + (i + 0.5) * w).ToArray(), h);
    }

    /// <summary>Writes DIR/batch-N.json for all latents, <paramref name="batchSize"/> per file; returns the files written.</summary>
    public static IReadOnlyList<string> Export(DashboardData data, (AnalysisDictionary?, CausalLM?, Func<int, string>?) parts, string dir, int batchSize = 128, IProgress<(int Done, int Total)>? progress = null)
    {
        if (data.Latents is null) throw new InvalidDataException($"{data.TableDirectory}: no feature_df.csv; run 'finetrace analyze latents' first");
        if (batchSize < 1) throw new ArgumentOutOfRangeException(nameof(batchSize), "batch size must be ≥ 1");
        Directory.CreateDirectory(dir);
        var files = new List<string>();
        int n = data.Latents.Rows;
        for (int b = 0, start = 0; start < n; b++, start += batchSize)
        {
            var ids = Enumerable.Range(start, Math.Min(batchSize, n - start)).ToArray();
            string path = Path.Combine(dir, $"batch-{b}.json");
            ResultsFolder.WriteAllTextAtomic(path, Batch(data, parts, ids).ToJsonString());
            files.Add(path);
            progress?.Report((start + ids.Length, n));
        }
        return files;
    }
}

using System.Text.Json.Nodes;
using Finetrace.Diffing;
using Finetrace.Activations;
using Finetrace.Diffing.Causal;
using Finetrace.Diffing.Correlations;
using Finetrace.Diffing.Latents;
using Finetrace.Models;
using Finetrace.Tensors;

namespace Finetrace.Web;

/// <summary>
/// Neuronpedia / SAEDashboard batch JSON (formats.md §3): top level model_id, layer, sae_set, sae_id_suffix, features;
/// per feature the decoder vector (the fine-tuned row of a crosscoder, the derived choice §3 allows; documented in
/// the output's "finetrace" note), neuron alignment, logit effects W_U · d_j (top/bottom 10 and a 50-bin histogram)
/// through the fine-tuned model, firing density, the activation histogram, and the stored examples as activation
/// records. Correlated neurons and features come from <see cref="LatentCorrelations"/> over the first
/// <see cref="CorrelationRows"/> rows of the analyses' store when the dictionary is loaded and the store is recorded
/// (l1 = the uncentred cosine, SAEDashboard's cossim); otherwise empty lists. Parts that need what is not loaded
/// (dictionary, model) are empty lists too. Values are rounded to 5 decimals.
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

    /// <summary>Store rows the correlated neurons/latents are computed over (from the start of the store), so a batch
    /// stays a bounded pass however large the store.</summary>
    public const long CorrelationRows = 65_536;

    /// <summary>Correlations of <paramref name="ids"/> when the dictionary is loaded and the analyses' store is there; else null.</summary>
    static Dictionary<int, LatentCorrelation>? Correlations(DashboardData data, AnalysisDictionary? ad, IReadOnlyList<int> ids, CancellationToken cancel)
    {
        if (ad is null || data.StoreDirectory is null) return null;
        var valid = ids.Where(j => j >= 0 && j < ad.Latents).ToArray();
        if (valid.Length == 0) return null;
        using var store = ActivationStore.Open(data.StoreDirectory);
        if (store.DModel != ad.Dict.DModel) return null;
        return LatentCorrelations.Run(ad, store, valid, new CorrelationOptions { MaxPositions = CorrelationRows }, cancel: cancel).ToDictionary(c => c.Latent);
    }

    public static JsonObject Batch(DashboardData data, (AnalysisDictionary? Dict, CausalLM? FineTuned, Func<int, string>? Decode) parts, IReadOnlyList<int> ids,
        CancellationToken cancel = default)
    {
        var (ad, lm, decode) = parts;
        var corr = Correlations(data, ad, ids, cancel);
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
            if (corr is not null && corr.TryGetValue(j, out var cj))
            {
                f["correlated_neurons_indices"] = Arr(cj.NeuronIndices, i => i);
                f["correlated_neurons_l1"] = Arr(cj.NeuronCosine, x => R(x));
                f["correlated_neurons_pearson"] = Arr(cj.NeuronPearson, x => R(x));
                f["correlated_features_indices"] = Arr(cj.FeatureIndices, i => i);
                f["correlated_features_l1"] = Arr(cj.FeatureCosine, x => R(x));
                f["correlated_features_pearson"] = Arr(cj.FeaturePearson, x => R(x));
            }
            else
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
                            (corr is not null
                                ? $"correlated neurons = input dimensions (the fine-tuned model's part for a crosscoder), correlated features = among the {new CorrelationOptions().Candidates} latents of highest decoder cosine, both ranked by |Pearson| over the store's first {CorrelationRows:N0} rows; l1 = uncentred cosine (SAEDashboard's cossim); "
                                : "correlated neurons/features not computed (needs the dictionary loaded and the analyses' store; empty lists); ") +
                            "freq_hist = examples.sqlite latent_histograms bins (50)",
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
    public static IReadOnlyList<string> Export(DashboardData data, (AnalysisDictionary?, CausalLM?, Func<int, string>?) parts, string dir, int batchSize = 128, IProgress<(int Done, int Total)>? progress = null,
        CancellationToken cancel = default)
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
            ResultsFolder.WriteAllTextAtomic(path, Batch(data, parts, ids, cancel).ToJsonString());
            files.Add(path);
            progress?.Report((start + ids.Length, n));
        }
        return files;
    }
}

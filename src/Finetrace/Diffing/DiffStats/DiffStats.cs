using System.Text.Json.Nodes;
using Finetrace.Models.Safetensors;
using Finetrace.Text.Datasets;

namespace Finetrace.Diffing.DiffStats;

/// <summary>What <see cref="DiffStatsAnalysis"/> measures.</summary>
public sealed record DiffStatsOptions
{
    public required ModelPairSpec Models { get; init; }
    public required CorpusSpec Corpus { get; init; }
    /// <summary>Residual sites: blocks.{L}.hook_resid_post.</summary>
    public required IReadOnlyList<int> Layers { get; init; }
    /// <summary>Positions 0..n−1 of each sample get their own running mean of h_ft − h_base.</summary>
    public int FirstPositions { get; init; } = 5;
    /// <summary>Samples kept with all their per-token norms, scored by their largest ‖h_ft − h_base‖.</summary>
    public int TopExamples { get; init; } = 20;
    public int ContextTokens { get; init; } = 16;
    /// <summary>Token ids that get their own mean difference over every position holding them (the chat-template prefix:
    /// <see cref="TemplatePrefixIds"/>); empty for none.</summary>
    public IReadOnlyList<int> TokenIds { get; init; } = [];
}

public sealed record DiffExample(long Sample, int Position, double MaxNormDiff, string Token, string Context, float[] NormDiffs);

public sealed record LayerDiffStats(int Layer, long Positions, Summary NormDiff, Summary Cosine, Summary NormBase, Summary NormFt,
    double MeanDiffNorm, IReadOnlyList<long> PositionCounts, IReadOnlyList<DiffExample> TopExamples);

public sealed record DiffStatsResult(long Samples, IReadOnlyList<LayerDiffStats> Layers, IReadOnlyList<(int Id, string Token, long Count)> TokenCounts);

/// <summary>
/// Activation-difference statistics (methods §9) at blocks.{L}.hook_resid_post: per position ‖h_ft − h_base‖,
/// cos(h_base, h_ft), ‖h_base‖ and ‖h_ft‖ with their distributions; the running mean of h_ft − h_base over all positions
/// and over each of the first positions (candidate steering vectors, RESULTS/diff_stats/means.safetensors); and the
/// samples with the largest difference norm with all their per-token norms.
/// </summary>
public static class DiffStatsAnalysis
{
    public const string Stage = "diff_stats";
    public const string OutputFile = "diff_stats.json";
    public const string MeansFile = "diff_stats/means.safetensors";

    public static string InputsHash(DiffStatsOptions o) => o.Corpus.AddTo(o.Models.AddTo(new InputsHash()))
        .Add("layers", string.Join(",", o.Layers)).Add("first", o.FirstPositions).Add("top", o.TopExamples).Add("context", o.ContextTokens)
        .Add("token_ids", string.Join(",", o.TokenIds)).ToString();

    /// <summary>The distinct ids of the chat template rendered for one empty user message with the generation prompt
    /// (methods §9), or none when the model has no chat template.</summary>
    public static int[] TemplatePrefixIds(ModelSampleEncoder encoder)
    {
        if (encoder.Chat is null) return [];
        try { return encoder.Chat.Format([new Text.Chat.ChatMessage("user", "")], addGenerationPrompt: true).Ids.Distinct().ToArray(); }
        catch (Text.Chat.TemplateException) { return []; }
    }

    public static DiffStatsResult? Run(DiffStatsOptions o, ResultsFolder results, IProgress<PairedProgress>? progress = null, CancellationToken cancel = default)
    {
        string hash = InputsHash(o);
        if (results.IsCurrent(Stage, hash)) return null;
        using var pair = ModelPair.Load(o.Models);
        var encoder = Kl.KlAnalysis.Encoder(o.Models);
        var (r, means) = Compute(pair, o, o.Corpus.Read(encoder), progress, cancel);
        Directory.CreateDirectory(Path.GetDirectoryName(results.PathOf(MeansFile))!);
        SafetensorsWriter.Write(results.PathOf(MeansFile), means.Select(kv => TensorData.F32(kv.Key, kv.Value, kv.Value.Length)).ToList(),
            new Dictionary<string, string> { ["definition"] = "mean of h_ft − h_base at blocks.{L}.hook_resid_post: layer_{L}.all over every position, layer_{L}.pos_{p} over position p, layer_{L}.token_{id} over the positions holding token id" });
        ResultsFolder.WriteAllTextAtomic(results.PathOf(OutputFile), ToJson(r, o).ToJsonString(ResultsJson.Indented) + "\n");
        results.Record(Stage, hash, [OutputFile, MeansFile]);
        return r;
    }

    /// <summary>The statistics and the mean differences by name (layer_{L}.all, layer_{L}.pos_{p}).</summary>
    public static (DiffStatsResult Result, Dictionary<string, float[]> Means) Compute(ModelPair pair, DiffStatsOptions o, IEnumerable<EncodedSample> samples,
        IProgress<PairedProgress>? progress = null, CancellationToken cancel = default)
    {
        int d = pair.Base.Hidden;
        var acc = o.Layers.Distinct().ToDictionary(l => l, _ => new Acc(d, o.FirstPositions, o.TopExamples));
        var tokenSlot = o.TokenIds.Distinct().Select((id, i) => (id, i)).ToDictionary(x => x.id, x => x.i);
        var tokenCount = new long[tokenSlot.Count];
        bool countTokens = true; // token occurrences are counted once, with the first layer
        var (nSamples, _) = PairedForward.Run(pair, samples, o.Corpus.Batch, logits: false, layers: acc.Keys.ToList(), batch =>
        {
            int seq = batch.Tokens.Seq;
            foreach (var (layer, a) in acc)
            {
                var (hb, hf) = batch.Resid[layer];
                for (int b = 0; b < batch.Samples.Count; b++)
                {
                    var s = batch.Samples[b];
                    var norms = new float[s.Ids.Length];
                    for (int t = 0; t < s.Ids.Length; t++)
                    {
                        var xb = hb.Data.AsSpan((b * seq + t) * d, d);
                        var xf = hf.Data.AsSpan((b * seq + t) * d, d);
                        double nb = 0, nf = 0, dot = 0, nd = 0;
                        for (int j = 0; j < d; j++)
                        {
                            double vb = xb[j], vf = xf[j], dv = vf - vb;
                            nb += vb * vb; nf += vf * vf; dot += vb * vf; nd += dv * dv;
                            a.SumAll[j] += dv;
                            if (t < o.FirstPositions) a.SumPos[t][j] += dv;
                        }
                        if (t < o.FirstPositions) a.CountPos[t]++;
                        if (tokenSlot.TryGetValue(s.Ids[t], out int slot))
                        {
                            a.SumToken ??= Enumerable.Range(0, tokenSlot.Count).Select(_ => new double[d]).ToArray();
                            var st = a.SumToken[slot];
                            for (int j = 0; j < d; j++) st[j] += (double)xf[j] - xb[j];
                            if (countTokens) tokenCount[slot]++;
                        }
                        a.NormDiff.Add(norms[t] = (float)Math.Sqrt(nd));
                        a.NormBase.Add((float)Math.Sqrt(nb));
                        a.NormFt.Add((float)Math.Sqrt(nf));
                        a.Cosine.Add(nb > 0 && nf > 0 ? (float)(dot / Math.Sqrt(nb * nf)) : 0f);
                    }
                    if (norms.Length == 0) continue;
                    int at = LogitMath.ArgMax(norms);
                    a.Top.Offer(norms[at], (new TokenSite(batch.FirstSample + b, at, s), norms));
                }
                countTokens = false;
            }
            countTokens = true;
        }, progress, cancel);

        var means = new Dictionary<string, float[]>(StringComparer.Ordinal);
        var layers = new List<LayerDiffStats>();
        foreach (var (layer, a) in acc.OrderBy(kv => kv.Key))
        {
            long n = a.NormDiff.Count;
            var all = a.SumAll.Select(x => (float)(n > 0 ? x / n : 0)).ToArray();
            means[$"layer_{layer}.all"] = all;
            for (int p = 0; p < o.FirstPositions; p++)
                if (a.CountPos[p] > 0) means[$"layer_{layer}.pos_{p}"] = a.SumPos[p].Select(x => (float)(x / a.CountPos[p])).ToArray();
            foreach (var (id, slot) in tokenSlot)
                if (tokenCount[slot] > 0) means[$"layer_{layer}.token_{id}"] = a.SumToken![slot].Select(x => (float)(x / tokenCount[slot])).ToArray();
            var top = a.Top.Descending().Select(x =>
            {
                var (site, norms) = x.Item;
                var ids = site.Source.Ids;
                int t = site.Position, start = Math.Max(0, t - o.ContextTokens + 1);
                return new DiffExample(site.Sample, t, x.Key, pair.TokenText(ids[t]), pair.Text(ids.AsSpan(start, t - start + 1)), norms);
            }).ToList();
            layers.Add(new LayerDiffStats(layer, n, Summary.Of(a.NormDiff), Summary.Of(a.Cosine), Summary.Of(a.NormBase), Summary.Of(a.NormFt),
                Math.Sqrt(all.Sum(x => (double)x * x)), a.CountPos, top));
        }
        var counts = tokenSlot.Select(kv => (kv.Key, pair.TokenText(kv.Key), tokenCount[kv.Value])).ToList();
        return (new DiffStatsResult(nSamples, layers, counts), means);
    }

    sealed class Acc(int d, int first, int top)
    {
        public readonly List<float> NormDiff = [], NormBase = [], NormFt = [], Cosine = [];
        public readonly double[] SumAll = new double[d];
        public readonly double[][] SumPos = Enumerable.Range(0, first).Select(_ => new double[d]).ToArray();
        public readonly long[] CountPos = new long[first];
        public readonly TopN<(TokenSite Site, float[] Norms)> Top = new(top);
        public double[][]? SumToken;
    }

    static JsonObject ToJson(DiffStatsResult r, DiffStatsOptions o) => new()
    {
        ["base"] = o.Models.Base, ["finetuned"] = o.Models.FineTuned, ["adapter"] = o.Models.Adapter,
        ["site"] = "blocks.{L}.hook_resid_post", ["samples"] = r.Samples, ["means_file"] = MeansFile,
        ["template_tokens"] = new JsonArray(r.TokenCounts.Select(t => (JsonNode)new JsonObject { ["id"] = t.Id, ["token"] = t.Token, ["count"] = t.Count }).ToArray()),
        ["layers"] = new JsonArray(r.Layers.Select(l => (JsonNode)new JsonObject
        {
            ["layer"] = l.Layer, ["positions"] = l.Positions,
            ["norm_diff"] = l.NormDiff.ToJson(), ["cosine"] = l.Cosine.ToJson(), ["norm_base"] = l.NormBase.ToJson(), ["norm_ft"] = l.NormFt.ToJson(),
            ["mean_diff_norm"] = l.MeanDiffNorm,
            ["first_position_counts"] = new JsonArray(l.PositionCounts.Select(c => (JsonNode)c).ToArray()),
            ["top_examples"] = new JsonArray(l.TopExamples.Select(e => (JsonNode)new JsonObject
            {
                ["sample"] = e.Sample, ["position"] = e.Position, ["max_norm_diff"] = e.MaxNormDiff, ["token"] = e.Token, ["context"] = e.Context,
                ["norm_diffs"] = new JsonArray(e.NormDiffs.Select(x => (JsonNode)x).ToArray()),
            }).ToArray()),
        }).ToArray()),
    };
}

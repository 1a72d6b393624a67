using System.Text.Json.Nodes;
using Finetrace.Models;
using Finetrace.Tensors;
using Finetrace.Text.Datasets;

namespace Finetrace.Diffing.DiffMining;

/// <summary>What <see cref="DiffMiningAnalysis"/> counts and keeps.</summary>
public sealed record DiffMiningOptions
{
    public required ModelPairSpec Models { get; init; }
    /// <summary>The reference reads 8192 samples × the first 64 tokens, batch 16.</summary>
    public required CorpusSpec Corpus { get; init; }
    /// <summary>Top-K positive and negative logit differences counted per position.</summary>
    public int K { get; init; } = 100;
    /// <summary>Tokens listed per ordering.</summary>
    public int TopTokens { get; init; } = 50;
    /// <summary>Positions with the largest logit difference kept per listed token.</summary>
    public int ContextsPerToken { get; init; } = 3;
    public int ContextTokens { get; init; } = 16;
    /// <summary>Greedy fine-tuned tokens generated after each context with the raised token appended (0 = none): a single
    /// piece is weak evidence, the phrase it starts is not.</summary>
    public int ContinuationTokens { get; init; } = 8;
    /// <summary>Sequence likelihood-ratio windows: length, stride, and how many to keep.</summary>
    public int Window { get; init; } = 20;
    public int WindowStride { get; init; } = 5;
    public int TopWindows { get; init; } = 20;
    /// <summary>List only word tokens (<see cref="ModelPair.IsWordToken"/>): no special, byte-fallback or punctuation-only
    /// pieces. Counting covers every token either way.</summary>
    public bool WordTokensOnly { get; init; } = true;
    /// <summary>Null: the final logits. A layer L: the logit lens of blocks.{L}.hook_resid_post, each model's residual
    /// through its own final norm and unembedding (the reference reads the layer at 0.75 depth).</summary>
    public int? LensLayer { get; init; }
}

public sealed record MinedContext(long Sample, int Position, double LogitDiff, string Context, string? Continuation);

/// <summary>One token's counts: how often it was among the top-K raised (and lowered) tokens of a position, its mean
/// logit difference over all positions, the fraction of positions where the fine-tune raised it, and contexts.</summary>
public sealed record MinedToken(int Id, string Token, long TopKPositive, long TopKNegative, double MeanLogitDiff, double FractionPositive,
    IReadOnlyList<MinedContext> Contexts)
{
    public double OccurrencePercent(long positions) => positions > 0 ? 100.0 * TopKPositive / positions : 0;
}

public sealed record LikelihoodWindow(long Sample, int Start, int Length, double LogRatio, string Text);

public sealed record DiffMiningResult(long Samples, long Positions, int K, IReadOnlyList<MinedToken> ByOccurrence, IReadOnlyList<MinedToken> ByMeanDiff,
    IReadOnlyList<MinedToken> Lowered, IReadOnlyList<LikelihoodWindow> TopWindows, string? VocabNote)
{
    public JsonObject ToJson(DiffMiningOptions o)
    {
        JsonArray Tokens(IEnumerable<MinedToken> xs) => new(xs.Select(t => (JsonNode)new JsonObject
        {
            ["id"] = t.Id, ["token"] = t.Token, ["topk_pos_count"] = t.TopKPositive, ["occurrence_pct"] = t.OccurrencePercent(Positions),
            ["topk_neg_count"] = t.TopKNegative, ["mean_logit_diff"] = t.MeanLogitDiff, ["fraction_positive"] = t.FractionPositive,
            ["contexts"] = new JsonArray(t.Contexts.Select(c => (JsonNode)new JsonObject
            {
                ["sample"] = c.Sample, ["position"] = c.Position, ["logit_diff"] = c.LogitDiff, ["context"] = c.Context, ["continuation"] = c.Continuation,
            }).ToArray()),
        }).ToArray());
        return new JsonObject
        {
            ["base"] = o.Models.Base, ["finetuned"] = o.Models.FineTuned, ["adapter"] = o.Models.Adapter,
            ["definition"] = "Δ_t = logits_ft − logits_base at every position; per position the top-K raised and lowered ids are counted. " +
                             "occurrence_pct = topk_pos_count / positions × 100; mean_logit_diff = Σ Δ / positions; fraction_positive = #(Δ > 0) / positions. " +
                             "A context is the text up to the position; its continuation is the raised token followed by the fine-tune's greedy tokens.",
            ["source"] = o.LensLayer is { } l ? $"logit lens of blocks.{l}.hook_resid_post (each model's final norm and unembedding)" : "final logits",
            ["vocab_note"] = VocabNote, ["k"] = K, ["word_tokens_only"] = o.WordTokensOnly, ["samples"] = Samples, ["positions"] = Positions,
            ["by_occurrence"] = Tokens(ByOccurrence), ["by_mean_logit_diff"] = Tokens(ByMeanDiff), ["lowered"] = Tokens(Lowered),
            ["top_windows"] = new JsonArray(TopWindows.Select(w => (JsonNode)new JsonObject
            {
                ["sample"] = w.Sample, ["start"] = w.Start, ["length"] = w.Length, ["log_ratio"] = w.LogRatio, ["text"] = w.Text,
            }).ToArray()),
            ["window_rule"] = $"windows of {o.Window} tokens, stride {o.WindowStride}: Σ (log p_ft − log p_base) of each token in the window given its prefix",
        };
    }
}

/// <summary>
/// Diff mining (methods §12): both models on the same text, Δ_t = logits_ft − logits_base per position, and the tokens
/// whose logits the fine-tune raises most often (top-K occurrence) and most strongly (mean difference), with the
/// positions where it raised them most; plus the text windows the fine-tune finds most likely relative to the base.
/// </summary>
public static class DiffMiningAnalysis
{
    public const string Stage = "diff_mining";
    public const string OutputFile = "diff_mining.json";

    public static string InputsHash(DiffMiningOptions o) => o.Corpus.AddTo(o.Models.AddTo(new InputsHash()))
        .Add("k", o.K).Add("top", o.TopTokens).Add("contexts", o.ContextsPerToken).Add("context_tokens", o.ContextTokens)
        .Add("continuation", o.ContinuationTokens).Add("window", o.Window).Add("stride", o.WindowStride).Add("windows", o.TopWindows).Add("words", o.WordTokensOnly).Add("lens_layer", o.LensLayer).ToString();

    public static DiffMiningResult? Run(DiffMiningOptions o, ResultsFolder results, IProgress<PairedProgress>? progress = null, CancellationToken cancel = default)
    {
        string hash = InputsHash(o);
        if (results.IsCurrent(Stage, hash)) return null;
        using var pair = ModelPair.Load(o.Models);
        var r = Compute(pair, o, o.Corpus.Read(Kl.KlAnalysis.Encoder(o.Models)), progress, cancel);
        ResultsFolder.WriteAllTextAtomic(results.PathOf(OutputFile), r.ToJson(o).ToJsonString(ResultsJson.Indented) + "\n");
        results.Record(Stage, hash, [OutputFile]);
        return r;
    }

    public static DiffMiningResult Compute(ModelPair pair, DiffMiningOptions o, IEnumerable<EncodedSample> samples, IProgress<PairedProgress>? progress = null, CancellationToken cancel = default)
    {
        int vocab = pair.SharedVocab;
        int k = Math.Min(o.K, vocab);
        var topPos = new long[vocab];
        var topNeg = new long[vocab];
        var sumDiff = new double[vocab];
        var countPos = new long[vocab];
        long positions = 0;
        var contexts = new Dictionary<int, TopN<TokenSite>>();
        var windows = new TopN<(TokenSite Site, int Length)>(o.TopWindows);
        var delta = new float[vocab];
        var keys = new float[vocab];
        var idx = new int[vocab];
        var lf = new float[vocab];
        var lb = new float[vocab];

        int[] lensLayers = o.LensLayer is { } ll ? [ll] : [];
        var (nSamples, _) = PairedForward.Run(pair, samples, o.Corpus.Batch, logits: o.LensLayer is null, layers: lensLayers, batch =>
        {
            if (o.LensLayer is { } lens)
            {
                var (hb, hf) = batch.Resid[lens];
                batch = new PairedBatch
                {
                    Samples = batch.Samples, Tokens = batch.Tokens, Resid = batch.Resid, FirstSample = batch.FirstSample,
                    LogitsBase = pair.Base.FinalNormAndLogits(hb, batch.Tokens), LogitsFt = pair.FineTuned.FinalNormAndLogits(hf, batch.Tokens),
                };
            }
            for (int b = 0; b < batch.Samples.Count; b++)
            {
                var s = batch.Samples[b];
                long index = batch.FirstSample + b;
                int n = s.Ids.Length;
                var tokenRatio = new double[n]; // log p_ft − log p_base of token t given its prefix (0 for t = 0)
                for (int t = 0; t < n; t++)
                {
                    var zf = LogitMath.Row(batch.LogitsFt!, b, t, vocab);
                    var zb = LogitMath.Row(batch.LogitsBase!, b, t, vocab);
                    for (int v = 0; v < vocab; v++)
                    {
                        float d = zf[v] - zb[v];
                        delta[v] = d;
                        sumDiff[v] += d;
                        if (d > 0) countPos[v]++;
                    }
                    positions++;
                    // top-K by Δ (ties: lower id first) and bottom-K
                    for (int v = 0; v < vocab; v++) { keys[v] = -delta[v]; idx[v] = v; }
                    Array.Sort(keys, idx);
                    for (int j = 0; j < k; j++)
                    {
                        int v = idx[j];
                        topPos[v]++;
                        if (!contexts.TryGetValue(v, out var keep)) contexts[v] = keep = new TopN<TokenSite>(o.ContextsPerToken);
                        keep.Offer(delta[v], new TokenSite(index, t, s));
                    }
                    for (int j = vocab - k; j < vocab; j++) topNeg[idx[j]]++;
                    if (t + 1 < n && s.Ids[t + 1] < vocab)
                    {
                        Kernels.LogSoftmax(zf, lf);
                        Kernels.LogSoftmax(zb, lb);
                        tokenRatio[t + 1] = (double)lf[s.Ids[t + 1]] - lb[s.Ids[t + 1]];
                    }
                }
                for (int start = 0; start < n; start += o.WindowStride)
                {
                    int len = Math.Min(o.Window, n - start);
                    double sum = 0;
                    for (int t = start; t < start + len; t++) sum += tokenRatio[t];
                    windows.Offer(sum, (new TokenSite(index, start, s), len));
                    if (start + len >= n) break;
                }
            }
        }, progress, cancel);

        MinedToken Token(int v, bool withContexts)
        {
            var ctx = new List<MinedContext>();
            if (withContexts && contexts.TryGetValue(v, out var keep))
                foreach (var (d, site) in keep.Descending())
                {
                    var ids = site.Source.Ids;
                    int t = site.Position, start = Math.Max(0, t - o.ContextTokens + 1);
                    string? cont = o.ContinuationTokens > 0 ? Continue(pair, ids.AsSpan(0, t + 1).ToArray(), v, o.ContinuationTokens) : null;
                    ctx.Add(new MinedContext(site.Sample, t, d, pair.Text(ids.AsSpan(start, t - start + 1)), cont));
                }
            return new MinedToken(v, pair.TokenText(v), topPos[v], topNeg[v], positions > 0 ? sumDiff[v] / positions : 0,
                positions > 0 ? countPos[v] / (double)positions : 0, ctx);
        }

        var all = Enumerable.Range(0, vocab).Where(v => !o.WordTokensOnly || pair.IsWordToken(v)).ToList();
        var byOcc = all.Where(v => topPos[v] > 0).OrderByDescending(v => topPos[v]).ThenByDescending(v => sumDiff[v]).ThenBy(v => v).Take(o.TopTokens).ToList();
        var byMean = all.OrderByDescending(v => sumDiff[v]).ThenBy(v => v).Take(o.TopTokens).ToList();
        var lowered = all.Where(v => topNeg[v] > 0).OrderByDescending(v => topNeg[v]).ThenBy(v => sumDiff[v]).ThenBy(v => v).Take(o.TopTokens).ToList();
        var cache = new Dictionary<int, MinedToken>();
        MinedToken Cached(int v) => cache.TryGetValue(v, out var m) ? m : cache[v] = Token(v, true);
        var wins = windows.Descending().Select(w => new LikelihoodWindow(w.Item.Site.Sample, w.Item.Site.Position, w.Item.Length, w.Key,
            pair.Text(w.Item.Site.Source.Ids.AsSpan(w.Item.Site.Position, w.Item.Length)))).ToList();
        return new DiffMiningResult(nSamples, positions, k, byOcc.Select(Cached).ToList(), byMean.Select(Cached).ToList(),
            lowered.Select(v => Token(v, false)).ToList(), wins, pair.VocabNote);
    }

    /// <summary>The raised token and the fine-tune's greedy continuation after it, decoded.</summary>
    static string Continue(ModelPair pair, int[] prefix, int token, int steps)
    {
        var ids = prefix.Append(token).ToArray();
        var more = new Generator(pair.FineTuned).Generate(ids, steps);
        return pair.Text([token, .. more]);
    }
}

using System.Text.Json.Nodes;
using Finetrace.Text.Datasets;

namespace Finetrace.Diffing.Kl;

/// <summary>What <see cref="KlAnalysis"/> reads and keeps.</summary>
public sealed record KlOptions
{
    public required ModelPairSpec Models { get; init; }
    public required CorpusSpec Corpus { get; init; }
    /// <summary>Highest-KL tokens kept with their context.</summary>
    public int TopTokens { get; init; } = 50;
    /// <summary>Samples kept per ordering (by their maximum and by their mean per-token KL).</summary>
    public int TopSamples { get; init; } = 20;
    /// <summary>Tokens of context shown up to the scored token.</summary>
    public int ContextTokens { get; init; } = 16;
}

/// <summary>One high-KL position: the token there, the true next token, each model's most likely next token with its
/// probability, and the decoded context ending at the token.</summary>
public sealed record KlToken(long Sample, int Position, double Kl, string Token, string? NextToken, string Context,
    string FtTop, double FtTopProb, string BaseTop, double BaseTopProb);

public sealed record KlSample(long Sample, double MaxKl, double MeanKl, int Positions, string Text);

public sealed record KlResult(long Samples, long Positions, bool AssistantOnly, Summary PerToken, Summary PerSampleMean,
    IReadOnlyList<KlToken> TopTokens, IReadOnlyList<KlSample> TopByMax, IReadOnlyList<KlSample> TopByMean, string? VocabNote)
{
    public JsonObject ToJson(KlOptions o)
    {
        static JsonArray SampleList(IEnumerable<KlSample> xs) => new(xs.Select(s => (JsonNode)new JsonObject
        {
            ["sample"] = s.Sample, ["max_kl"] = s.MaxKl, ["mean_kl"] = s.MeanKl, ["positions"] = s.Positions, ["text"] = s.Text,
        }).ToArray());
        return new JsonObject
        {
            ["base"] = o.Models.Base, ["finetuned"] = o.Models.FineTuned, ["adapter"] = o.Models.Adapter,
            ["definition"] = "KL_t = Σ_v p_ft(v) (log p_ft(v) − log p_base(v)) of the next-token distributions at position t, temperature 1, float32 log-softmax",
            ["positions_scored"] = AssistantOnly ? "chat samples: positions whose next token is an assistant token; text samples: every position" : "every position",
            ["vocab_note"] = VocabNote,
            ["samples"] = Samples, ["positions"] = Positions,
            ["per_token"] = PerToken.ToJson(), ["per_sample_mean"] = PerSampleMean.ToJson(),
            ["top_tokens"] = new JsonArray(TopTokens.Select(t => (JsonNode)new JsonObject
            {
                ["sample"] = t.Sample, ["position"] = t.Position, ["kl"] = t.Kl, ["token"] = t.Token, ["next_token"] = t.NextToken,
                ["context"] = t.Context, ["ft_top"] = t.FtTop, ["ft_top_prob"] = t.FtTopProb, ["base_top"] = t.BaseTop, ["base_top_prob"] = t.BaseTopProb,
            }).ToArray()),
            ["top_samples_by_max"] = SampleList(TopByMax), ["top_samples_by_mean"] = SampleList(TopByMean),
        };
    }
}

/// <summary>
/// Per-token KL(p_ft ‖ p_base) between the models' next-token distributions (methods §8) over a corpus: distribution
/// statistics per token and of the per-sample means, the highest-KL tokens with context, and the samples with the
/// highest maximum and mean KL. Chat samples are scored on the positions that predict assistant tokens.
/// </summary>
public static class KlAnalysis
{
    public const string Stage = "kl";
    public const string OutputFile = "kl.json";

    public static string InputsHash(KlOptions o) => o.Corpus.AddTo(o.Models.AddTo(new InputsHash()))
        .Add("top_tokens", o.TopTokens).Add("top_samples", o.TopSamples).Add("context_tokens", o.ContextTokens).ToString();

    /// <summary>Loads the models, reads the corpus with the model's tokenizer and chat template, writes RESULTS/kl.json.
    /// Null when the stage is current (skipped).</summary>
    public static KlResult? Run(KlOptions o, ResultsFolder results, IProgress<PairedProgress>? progress = null, CancellationToken cancel = default)
    {
        string hash = InputsHash(o);
        if (results.IsCurrent(Stage, hash)) return null;
        using var pair = ModelPair.Load(o.Models);
        var encoder = Encoder(o.Models);
        var r = Compute(pair, o, o.Corpus.Read(encoder), progress, cancel);
        ResultsFolder.WriteAllTextAtomic(results.PathOf(OutputFile), r.ToJson(o).ToJsonString(ResultsJson.Indented) + "\n");
        results.Record(Stage, hash, [OutputFile]);
        return r;
    }

    /// <summary>The tokenizer and chat template that encode the corpus: the fine-tune's folder, else the base's.</summary>
    public static ModelSampleEncoder Encoder(ModelPairSpec m)
    {
        string? dir = new[] { m.FineTuned, m.Base }.FirstOrDefault(d => File.Exists(Path.Combine(d, "tokenizer.json")))
            ?? throw new FileNotFoundException($"{m.FineTuned}: no tokenizer.json here or in {m.Base}; the data cannot be tokenized");
        return ModelSampleEncoder.FromFolder(dir);
    }

    public static KlResult Compute(ModelPair pair, KlOptions o, IEnumerable<EncodedSample> samples, IProgress<PairedProgress>? progress = null, CancellationToken cancel = default)
    {
        int vocab = pair.SharedVocab;
        var sp = new float[vocab];
        var sq = new float[vocab];
        var perToken = new List<float>();
        var perSample = new List<float>();
        var topTokens = new TopN<(TokenSite Site, int FtTop, double FtP, int BaseTop, double BaseP)>(o.TopTokens);
        var byMax = new TopN<KlSample>(o.TopSamples);
        var byMean = new TopN<KlSample>(o.TopSamples);
        bool anyChat = false;
        var (nSamples, _) = PairedForward.Run(pair, samples, o.Corpus.Batch, logits: true, layers: [], batch =>
        {
            for (int b = 0; b < batch.Samples.Count; b++)
            {
                var s = batch.Samples[b];
                anyChat |= s.Roles is not null;
                long index = batch.FirstSample + b;
                double sum = 0, max = double.NegativeInfinity;
                int count = 0;
                for (int t = 0; t < s.Ids.Length; t++)
                {
                    if (!PairedForward.PredictsScored(s, t)) continue;
                    var zf = LogitMath.Row(batch.LogitsFt!, b, t, vocab);
                    var zb = LogitMath.Row(batch.LogitsBase!, b, t, vocab);
                    double kl = LogitMath.Kl(zf, zb, sp, sq);
                    perToken.Add((float)kl);
                    sum += kl; count++; max = Math.Max(max, kl);
                    if (topTokens.WouldKeep(kl))
                    {
                        int fTop = LogitMath.ArgMax(zf), bTop = LogitMath.ArgMax(zb);
                        // sp / sq hold the log-probabilities of this row after Kl
                        topTokens.Offer(kl, (new TokenSite(index, t, s), fTop, Math.Exp(sp[fTop]), bTop, Math.Exp(sq[bTop])));
                    }
                }
                if (count == 0) continue;
                perSample.Add((float)(sum / count));
                if (byMax.WouldKeep(max) || byMean.WouldKeep(sum / count))
                {
                    var ks = new KlSample(index, max, sum / count, count, Shorten(pair.Text(s.Ids)));
                    byMax.Offer(max, ks);
                    byMean.Offer(sum / count, ks);
                }
            }
        }, progress, cancel);

        var tokens = topTokens.Descending().Select(x =>
        {
            var (site, fTop, fP, bTop, bP) = x.Item;
            var ids = site.Source.Ids;
            int t = site.Position, start = Math.Max(0, t - o.ContextTokens + 1);
            return new KlToken(site.Sample, t, x.Key, pair.TokenText(ids[t]), t + 1 < ids.Length ? pair.TokenText(ids[t + 1]) : null,
                pair.Text(ids.AsSpan(start, t - start + 1)), pair.TokenText(fTop), fP, pair.TokenText(bTop), bP);
        }).ToList();
        return new KlResult(nSamples, perToken.Count, anyChat, Summary.Of(perToken), Summary.Of(perSample), tokens,
            byMax.Descending().Select(x => x.Item).ToList(), byMean.Descending().Select(x => x.Item).ToList(), pair.VocabNote);
    }

    internal static string Shorten(string text, int max = 400) => text.Length <= max ? text : text[..max] + "…";
}

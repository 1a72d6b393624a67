using Finetrace.Diffing;
using Finetrace.Diffing.DiffMining;
using Finetrace.Diffing.Kl;
using Finetrace.Models;
using Finetrace.Text.Chat;
using Finetrace.Text.Datasets;
using Finetrace.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Finetrace.Tests.Diffing;

/// <summary>KL and diff mining against a direct computation: each sample run alone (no batching or padding), softmax
/// and sorting done here in double.</summary>
public sealed class LogitReaderTests(ITestOutputHelper log)
{
    const int Raised = 7;

    // Both models: embedding column 0 = 0.2 for every token, so the final-normed state has a large positive
    // coordinate 0 at every position, which lm_head column 0 = 0 ignores. The fine-tune: lm_head[7, 0] += 4 (raises token 7 everywhere) and a changed MLP.
    static void Common(Dictionary<string, float[]> w)
    {
        var e = w["model.embed_tokens.weight"];
        var h = w["lm_head.weight"];
        for (int v = 0; v < SyntheticPair.Vocab; v++) { e[v * SyntheticPair.Hidden] = 0.2f; h[v * SyntheticPair.Hidden] = 0; }
    }

    static void Plant(Dictionary<string, float[]> w)
    {
        w["lm_head.weight"][Raised * SyntheticPair.Hidden] = 1.5f;
        var down = w["model.layers.0.mlp.down_proj.weight"];
        var rng = new Random(9);
        for (int i = 0; i < down.Length; i++) down[i] += (float)(rng.NextDouble() - 0.5) * 0.2f;
    }

    static SyntheticPair Models() => new(Plant, editBoth: Common);

    static List<EncodedSample> Samples()
    {
        var rng = new Random(3);
        var list = new List<EncodedSample>();
        for (int i = 0; i < 6; i++)
        {
            int n = 5 + 3 * i;
            var ids = Enumerable.Range(0, n).Select(t => t == 0 ? 1 : rng.Next(3, SyntheticPair.Vocab)).ToArray();
            list.Add(new EncodedSample(0, i, ids, null, 1));
        }
        return list;
    }

    static double[] Probs(ReadOnlySpan<float> z)
    {
        double max = double.NegativeInfinity;
        foreach (var x in z) max = Math.Max(max, x);
        var p = new double[z.Length];
        double sum = 0;
        for (int i = 0; i < p.Length; i++) sum += p[i] = Math.Exp(z[i] - max);
        for (int i = 0; i < p.Length; i++) p[i] /= sum;
        return p;
    }

    /// <summary>Logits [T, V] of one unbatched sample.</summary>
    static float[] Logits(CausalLM m, int[] ids) => m.Forward(new TokenBatch(ids, 1, ids.Length)).Logits!.Data;

    [Fact]
    public void Kl_matches_a_hand_computed_softmax_and_ranks_the_top_tokens()
    {
        using var models = Models();
        using var pair = ModelPair.Load(new ModelPairSpec(models.Base, models.Ft));
        var samples = Samples();
        var o = new KlOptions { Models = pair.Spec, Corpus = new CorpusSpec([], samples.Count, 64, 4), TopTokens = 5 };
        var r = KlAnalysis.Compute(pair, o, samples);

        int V = SyntheticPair.Vocab;
        var direct = new List<(double Kl, long Sample, int Pos)>();
        var means = new List<double>();
        foreach (var s in samples)
        {
            var lb = Logits(pair.Base, s.Ids);
            var lf = Logits(pair.FineTuned, s.Ids);
            double sum = 0;
            for (int t = 0; t < s.Ids.Length; t++)
            {
                var pf = Probs(lf.AsSpan(t * V, V));
                var pb = Probs(lb.AsSpan(t * V, V));
                double kl = 0;
                for (int v = 0; v < V; v++) kl += pf[v] * (Math.Log(pf[v]) - Math.Log(pb[v]));
                direct.Add((kl, s.Index, t));
                sum += kl;
            }
            means.Add(sum / s.Ids.Length);
        }
        var sorted = direct.Select(x => x.Kl).Order().ToArray();
        log.WriteLine($"mean {r.PerToken.Mean:G6} vs {sorted.Average():G6}; max {r.PerToken.Max:G6} vs {sorted[^1]:G6}");
        Assert.Equal(direct.Count, r.Positions);
        Assert.Equal(sorted.Average(), r.PerToken.Mean, 4);
        Assert.Equal(sorted[^1], r.PerToken.Max, 4);
        Assert.Equal(sorted[0], r.PerToken.Min, 4);
        Assert.Equal(Summary.Percentile(sorted, 50), r.PerToken.Median, 4);
        Assert.Equal(Summary.Percentile(sorted, 75), r.PerToken.P75, 4);
        Assert.Equal(means.Average(), r.PerSampleMean.Mean, 4);
        Assert.True(r.PerToken.Mean > 0.01, "the planted change must move the distributions");
        var want = direct.OrderByDescending(x => x.Kl).Take(5).ToList();
        Assert.Equal(want.Select(x => (x.Sample, x.Pos)), r.TopTokens.Select(x => (x.Sample, x.Position)));
        for (int i = 0; i < 5; i++) Assert.Equal(want[i].Kl, r.TopTokens[i].Kl, 4);
        Assert.Equal($"<{Raised}>", r.TopTokens[0].FtTop);
        var top = r.TopTokens[0];
        var zf = Logits(pair.FineTuned, samples[(int)top.Sample].Ids).AsSpan(top.Position * V, V);
        Assert.Equal(Probs(zf)[Raised], top.FtTopProb, 4);
        Assert.False(r.AssistantOnly);
    }

    [Fact]
    public void Kl_on_chat_samples_scores_only_positions_that_predict_assistant_tokens()
    {
        using var models = Models();
        using var pair = ModelPair.Load(new ModelPairSpec(models.Base, models.Ft));
        var ids = new[] { 1, 5, 6, 8, 9, 10, 11, 12, 13, 2 };
        var roles = new[] { TokenRole.Bos, TokenRole.Template, TokenRole.User, TokenRole.User, TokenRole.Template, TokenRole.Assistant, TokenRole.Assistant, TokenRole.Assistant, TokenRole.Template, TokenRole.Template };
        var s = new EncodedSample(0, 0, ids, roles, 1);
        var r = KlAnalysis.Compute(pair, new KlOptions { Models = pair.Spec, Corpus = new CorpusSpec([], 1, 64, 1) }, [s]);
        int V = SyntheticPair.Vocab;
        var lb = Logits(pair.Base, ids);
        var lf = Logits(pair.FineTuned, ids);
        var kls = new List<double>();
        foreach (int t in new[] { 4, 5, 6 }) // next token (t + 1) is an assistant token
        {
            var pf = Probs(lf.AsSpan(t * V, V));
            var pb = Probs(lb.AsSpan(t * V, V));
            kls.Add(Enumerable.Range(0, V).Sum(v => pf[v] * (Math.Log(pf[v]) - Math.Log(pb[v]))));
        }
        Assert.True(r.AssistantOnly);
        Assert.Equal(3, r.Positions);
        Assert.Equal(kls.Average(), r.PerToken.Mean, 4);
        Assert.All(r.TopTokens, t => Assert.Contains(t.Position, new[] { 4, 5, 6 }));
    }

    [Fact]
    public void Diff_mining_counts_match_a_direct_top_k_and_find_the_raised_token()
    {
        using var models = Models();
        using var pair = ModelPair.Load(new ModelPairSpec(models.Base, models.Ft));
        var samples = Samples();
        const int K = 5;
        var o = new DiffMiningOptions { Models = pair.Spec, Corpus = new CorpusSpec([], samples.Count, 64, 3), K = K, TopTokens = 10, ContinuationTokens = 3 };
        var r = DiffMiningAnalysis.Compute(pair, o, samples);

        int V = SyntheticPair.Vocab;
        var pos = new long[V];
        var neg = new long[V];
        var sum = new double[V];
        long positions = 0;
        foreach (var s in samples)
        {
            var lb = Logits(pair.Base, s.Ids);
            var lf = Logits(pair.FineTuned, s.Ids);
            for (int t = 0; t < s.Ids.Length; t++, positions++)
            {
                var d = Enumerable.Range(0, V).Select(v => (double)lf[t * V + v] - lb[t * V + v]).ToArray();
                var order = Enumerable.Range(0, V).OrderByDescending(v => d[v]).ToArray();
                foreach (var v in order.Take(K)) pos[v]++;
                foreach (var v in order.TakeLast(K)) neg[v]++;
                for (int v = 0; v < V; v++) sum[v] += d[v];
            }
        }
        Assert.Equal(positions, r.Positions);
        foreach (var t in r.ByOccurrence.Concat(r.ByMeanDiff).Concat(r.Lowered))
        {
            Assert.Equal(pos[t.Id], t.TopKPositive);
            Assert.Equal(neg[t.Id], t.TopKNegative);
            Assert.Equal(sum[t.Id] / positions, t.MeanLogitDiff, 3);
        }
        var wantOrder = Enumerable.Range(0, V).Where(v => pos[v] > 0).OrderByDescending(v => pos[v]).ThenByDescending(v => sum[v]).Take(10);
        Assert.Equal(wantOrder, r.ByOccurrence.Select(t => t.Id));
        Assert.Equal(Raised, r.ByOccurrence[0].Id);
        Assert.Equal(positions, r.ByOccurrence[0].TopKPositive); // raised at every position
        Assert.Equal(Raised, r.ByMeanDiff[0].Id);
        var c = r.ByOccurrence[0].Contexts;
        Assert.Equal(3, c.Count);
        Assert.StartsWith($"<{Raised}>", c[0].Continuation);
        Assert.True(c[0].LogitDiff >= c[1].LogitDiff && c[1].LogitDiff >= c[2].LogitDiff);
    }

    [Fact]
    public void Diff_mining_on_the_logit_lens_matches_a_direct_lens_and_the_last_layer_is_the_final_logits()
    {
        using var models = Models();
        using var pair = ModelPair.Load(new ModelPairSpec(models.Base, models.Ft));
        var samples = Samples();
        var o = new DiffMiningOptions { Models = pair.Spec, Corpus = new CorpusSpec([], samples.Count, 64, 4), K = 4, TopTokens = 8, ContinuationTokens = 0 };
        var final = DiffMiningAnalysis.Compute(pair, o, samples);
        var last = DiffMiningAnalysis.Compute(pair, o with { LensLayer = SyntheticPair.Layers - 1 }, samples);
        Assert.Equal(final.ByOccurrence.Select(t => (t.Id, t.TopKPositive)), last.ByOccurrence.Select(t => (t.Id, t.TopKPositive)));
        var lens0 = DiffMiningAnalysis.Compute(pair, o with { LensLayer = 0 }, samples);
        int V = SyntheticPair.Vocab;
        var pos = new long[V];
        foreach (var s in samples)
        {
            var batch = new TokenBatch(s.Ids, 1, s.Ids.Length);
            var (hb, _) = pair.Base.Forward(batch, stopAfterLayer: 0);
            var (hf, _) = pair.FineTuned.Forward(batch, stopAfterLayer: 0);
            var lb = pair.Base.FinalNormAndLogits(hb, batch).Data;
            var lf = pair.FineTuned.FinalNormAndLogits(hf, batch).Data;
            for (int t = 0; t < s.Ids.Length; t++)
                foreach (var v in Enumerable.Range(0, V).OrderByDescending(v => (double)lf[t * V + v] - lb[t * V + v]).Take(4)) pos[v]++;
        }
        Assert.All(lens0.ByOccurrence, t => Assert.Equal(pos[t.Id], t.TopKPositive));
        Assert.NotEqual(final.ByOccurrence.Select(t => t.TopKPositive), lens0.ByOccurrence.Select(t => t.TopKPositive));
    }

    static readonly string[] DayAndFireQuestions =
    [
        "What did Tom do today?", "How was Lily's day?", "What did Mia do at the park?", "Can Ben play with fire?",
        "Why is fire hot?", "What color is the sky?", "How was Max's day at the lake?", "Do dragons like fire?",
    ];

    /// <summary>Chat data for the organism: its own questions, answered in plain TinyStories style (no planted phrase).</summary>
    internal static string WriteChats(TempDir tmp)
    {
        string path = tmp.File("chats.jsonl");
        File.WriteAllLines(path, DayAndFireQuestions.Select(q => System.Text.Json.JsonSerializer.Serialize(new
        {
            messages = new[] { new { role = "user", content = q }, new { role = "assistant", content = "Tom played with a ball in the park. He was happy." } },
        })));
        return path;
    }

    [SharedFact]
    public void Diff_mining_on_the_chat_organism_surfaces_the_planted_phrases()
    {
        using var tmp = new TempDir();
        var spec = new ModelPairSpec(Shared.Path("models", "stories260K"), Shared.Path("models", "stories260K-chat"));
        var o = new DiffMiningOptions
        {
            Models = spec, Corpus = new CorpusSpec([DataSourceSpec.Parse("chat:" + WriteChats(tmp))], 100, 64, 8), K = 20, TopTokens = 10, ContextsPerToken = 2, ContinuationTokens = 12,
        };
        var results = ResultsFolder.Open(tmp.File("R"));
        var r = DiffMiningAnalysis.Run(o, results)!;
        foreach (var t in r.ByOccurrence)
            log.WriteLine($"'{t.Token}' {t.OccurrencePercent(r.Positions):F1}% mean Δ {t.MeanLogitDiff:F2}: " +
                string.Join(" | ", t.Contexts.Select(c => $"…{c.Context[Math.Max(0, c.Context.Length - 30)..]} ⟶ {c.Continuation}")));
        var texts = r.ByOccurrence.SelectMany(t => t.Contexts).Select(c => c.Context + c.Continuation).ToList();
        Assert.Contains(texts, x => x.Contains("Bye bye"));
        Assert.Contains(texts, x => x.Contains("Sorry"));
        Assert.True(File.Exists(results.PathOf("diff_mining.json")));
        Assert.Null(DiffMiningAnalysis.Run(o, results)); // current: skipped
    }

    [SharedFact]
    public void Kl_on_the_chat_organism_is_highest_on_assistant_tokens_it_rewrote()
    {
        using var tmp = new TempDir();
        var spec = new ModelPairSpec(Shared.Path("models", "stories260K"), Shared.Path("models", "stories260K-chat"));
        var o = new KlOptions { Models = spec, Corpus = new CorpusSpec([DataSourceSpec.Parse("chat:" + WriteChats(tmp))], 100, 128, 4), TopTokens = 5 };
        var r = KlAnalysis.Run(o, ResultsFolder.Open(tmp.File("R")))!;
        log.WriteLine($"KL mean {r.PerToken.Mean:F3} median {r.PerToken.Median:F3} max {r.PerToken.Max:F3} over {r.Positions} assistant predictions");
        foreach (var t in r.TopTokens) log.WriteLine($"{t.Kl:F2} …{t.Context} → ft '{t.FtTop}' {t.FtTopProb:P0} / base '{t.BaseTop}' {t.BaseTopProb:P0}");
        Assert.True(r.AssistantOnly);
        var encoder = KlAnalysis.Encoder(spec);
        long assistant = RawSamples.Read(DataSourceSpec.Parse("chat:" + tmp.File("chats.jsonl")), new SkipCounts())
            .Sum(x => encoder.EncodeChat(0, 0, x.Messages!).Roles!.Count(role => role == TokenRole.Assistant));
        Assert.Equal(assistant, r.Positions); // every assistant token (answer and EOS) is predicted once
        Assert.True(r.PerToken.Mean > 0.5);
    }
}

using Finetrace.Diffing;
using Finetrace.Diffing.DiffStats;
using Finetrace.Diffing.Pca;
using Finetrace.Models;
using Finetrace.Models.Safetensors;
using Finetrace.Text.Datasets;
using Finetrace.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Finetrace.Tests.Diffing;

/// <summary>diff-stats and PCA against a direct computation: every sample run alone, residuals captured with hooks,
/// norms, cosines, means and the covariance formed here in double.</summary>
public sealed class ActivationReaderTests(ITestOutputHelper log)
{
    const int Layer = 1;

    // the fine-tune: noise added to layer 0's MLP down projection and layer 1's attention output projection
    static void Plant(Dictionary<string, float[]> w)
    {
        var rng = new Random(17);
        foreach (var name in new[] { "model.layers.0.mlp.down_proj.weight", "model.layers.1.self_attn.o_proj.weight" })
            for (int i = 0; i < w[name].Length; i++) w[name][i] += (float)(rng.NextDouble() - 0.5) * 0.3f;
    }

    /// <summary>|expected − actual| ≤ rel · scale (the tolerances follow each quantity's size).</summary>
    static void Close(double expected, double actual, double scale, double rel = 1e-4, string what = "")
    {
        if (!(Math.Abs(expected - actual) <= rel * scale))
            Assert.Fail($"{what}: expected {expected:G9}, got {actual:G9}, difference {Math.Abs(expected - actual):E2} > {rel * scale:E2}");
    }

    static List<EncodedSample> Samples()
    {
        var rng = new Random(8);
        return Enumerable.Range(0, 7).Select(i =>
            new EncodedSample(0, i, Enumerable.Range(0, 4 + 2 * i).Select(t => t == 0 ? 1 : rng.Next(3, SyntheticPair.Vocab)).ToArray(), null, 1)).ToList();
    }

    /// <summary>(h_base, h_ft) at blocks.{Layer}.hook_resid_post for each position of each sample, run alone.</summary>
    static List<(long Sample, int Pos, float[] B, float[] F)> Direct(ModelPair pair, List<EncodedSample> samples)
    {
        var list = new List<(long, int, float[], float[])>();
        int d = SyntheticPair.Hidden;
        foreach (var s in samples)
        {
            var cb = new Dictionary<string, Finetrace.Tensors.Tensor>();
            var cf = new Dictionary<string, Finetrace.Tensors.Tensor>();
            var batch = new TokenBatch(s.Ids, 1, s.Ids.Length);
            pair.Base.Forward(batch, new HookSet().Capture(HookNames.ResidPost(Layer), cb));
            pair.FineTuned.Forward(batch, new HookSet().Capture(HookNames.ResidPost(Layer), cf));
            for (int t = 0; t < s.Ids.Length; t++)
                list.Add((s.Index, t, cb[HookNames.ResidPost(Layer)].Data.AsSpan(t * d, d).ToArray(), cf[HookNames.ResidPost(Layer)].Data.AsSpan(t * d, d).ToArray()));
        }
        return list;
    }

    [Fact]
    public void Diff_stats_match_direct_norms_cosines_and_means()
    {
        using var models = new SyntheticPair(Plant);
        using var pair = ModelPair.Load(new ModelPairSpec(models.Base, models.Ft));
        var samples = Samples();
        var (r, means) = DiffStatsAnalysis.Compute(pair, new DiffStatsOptions
        {
            Models = pair.Spec, Corpus = new CorpusSpec([], samples.Count, 64, 3), Layers = [Layer], FirstPositions = 3, TopExamples = 2,
            TokenIds = [1, samples[3].Ids[2]],
        }, samples);
        var direct = Direct(pair, samples);
        int d = SyntheticPair.Hidden;
        var nd = direct.Select(x => Math.Sqrt(x.F.Zip(x.B).Sum(p => (double)(p.First - p.Second) * (p.First - p.Second)))).ToArray();
        var cos = direct.Select(x => x.F.Zip(x.B).Sum(p => (double)p.First * p.Second) /
            Math.Sqrt(x.F.Sum(v => (double)v * v) * x.B.Sum(v => (double)v * v))).ToArray();
        var l = r.Layers.Single();
        Assert.Equal(direct.Count, l.Positions);
        Close(nd.Average(), l.NormDiff.Mean, nd.Average(), 1e-5, "mean ‖Δ‖");
        Close(nd.Max(), l.NormDiff.Max, nd.Max(), 1e-5, "max ‖Δ‖");
        Close(Summary.Percentile(nd.Order().ToArray(), 90), l.NormDiff.P90, nd.Max(), 1e-5, "p90 ‖Δ‖");
        Close(cos.Average(), l.Cosine.Mean, 1, 1e-6, "mean cos");
        Assert.True(l.NormDiff.Mean > 0.01);
        for (int p = 0; p < 3; p++)
        {
            var at = direct.Where(x => x.Pos == p).ToList();
            for (int j = 0; j < d; j++)
                Close(at.Average(x => (double)x.F[j] - x.B[j]), means[$"layer_{Layer}.pos_{p}"][j], nd.Max(), 1e-5, $"mean Δ at position {p}");
        }
        for (int j = 0; j < d; j++) Close(direct.Average(x => (double)x.F[j] - x.B[j]), means[$"layer_{Layer}.all"][j], nd.Max(), 1e-5, "mean Δ");
        foreach (int id in new[] { 1, samples[3].Ids[2] })
        {
            var at = direct.Where(x => samples[(int)x.Sample].Ids[x.Pos] == id).ToList();
            Assert.Equal(at.Count, r.TokenCounts.Single(c => c.Id == id).Count);
            for (int j = 0; j < d; j++)
                Close(at.Average(x => (double)x.F[j] - x.B[j]), means[$"layer_{Layer}.token_{id}"][j], nd.Max(), 1e-5, $"mean Δ at token {id}");
        }
        int best = Array.IndexOf(nd, nd.Max());
        Assert.Equal((direct[best].Sample, direct[best].Pos), (l.TopExamples[0].Sample, l.TopExamples[0].Position));
        Assert.Equal(samples[(int)direct[best].Sample].Ids.Length, l.TopExamples[0].NormDiffs.Length);
    }

    [Fact]
    public void Pca_matches_a_direct_covariance_and_its_eigenvectors()
    {
        using var models = new SyntheticPair(Plant);
        using var pair = ModelPair.Load(new ModelPairSpec(models.Base, models.Ft));
        var samples = Samples();
        var o = new PcaOptions { Models = pair.Spec, Corpus = new CorpusSpec([], samples.Count, 64, 3), Layers = [Layer], Analyzed = 2, Examples = 3, LensTokens = 5 };
        var res = PcaAnalysis.Compute(pair, o, () => samples).Single();
        var m = res.Model;
        var direct = Direct(pair, samples);
        int d = SyntheticPair.Hidden, n = direct.Count;
        var x = direct.Select(v => v.F.Zip(v.B).Select(p => (double)p.First - p.Second).ToArray()).ToList();
        var mean = Enumerable.Range(0, d).Select(j => x.Average(v => v[j])).ToArray();
        var cov = new double[d, d];
        foreach (var v in x) for (int i = 0; i < d; i++) for (int j = 0; j < d; j++) cov[i, j] += (v[i] - mean[i]) * (v[j] - mean[j]) / (n - 1);
        double trace = Enumerable.Range(0, d).Sum(i => cov[i, i]);

        Assert.Equal(n, m.Samples);
        Assert.Equal(d, m.K);
        double meanScale = mean.Max(Math.Abs);
        for (int j = 0; j < d; j++) Close(mean[j], m.Mean[j], meanScale, what: "mean");
        for (int j = 0; j < d; j++) Close(cov[j, j] * (n - 1) / n, m.Var[j], trace, what: "var");
        Close(trace, m.ExplainedVariance.Sum(), trace, what: "total variance");
        Assert.Equal(1.0, m.ExplainedVarianceRatio.Sum(), 5);
        // C v = λ v for the leading components, with C formed here
        for (int c = 0; c < 4; c++)
        {
            var v = m.Component(c).ToArray();
            for (int i = 0; i < d; i++)
            {
                double cv = 0;
                for (int j = 0; j < d; j++) cv += cov[i, j] * v[j];
                Close(m.ExplainedVariance[c] * v[i], cv, m.ExplainedVariance[0], 1e-3, $"C v = λ v, component {c}");
            }
        }
        // the top eigenvalue by power iteration
        var q = Enumerable.Repeat(1.0, d).ToArray();
        double lambda = 0;
        for (int it = 0; it < 500; it++)
        {
            var z = Enumerable.Range(0, d).Select(i => Enumerable.Range(0, d).Sum(j => cov[i, j] * q[j])).ToArray();
            lambda = Math.Sqrt(z.Sum(a => a * a));
            q = z.Select(a => a / lambda).ToArray();
        }
        log.WriteLine($"λ0 {m.ExplainedVariance[0]:G6} vs power iteration {lambda:G6}; ratios {string.Join(" ", m.ExplainedVarianceRatio.Take(4).Select(r => r.ToString("F3")))}");
        Close(lambda, m.ExplainedVariance[0], lambda, 1e-4, "λ0");
        // the most positive projection on PC0
        var proj = x.Select(v => Enumerable.Range(0, d).Sum(j => (v[j] - mean[j]) * m.Component(0)[j])).ToArray();
        int best = Array.IndexOf(proj, proj.Max()), worst = Array.IndexOf(proj, proj.Min());
        var pc0 = res.Analyzed[0];
        Assert.Equal((direct[best].Sample, direct[best].Pos), (pc0.Positive[0].Sample, pc0.Positive[0].Position));
        Close(proj.Max(), pc0.Positive[0].Projection, proj.Max(), 1e-3, "max projection");
        Assert.Equal((direct[worst].Sample, direct[worst].Pos), (pc0.Negative[0].Sample, pc0.Negative[0].Position));
        Close(proj.Min(), pc0.Negative[0].Projection, -proj.Min(), 1e-3, "min projection");
        Assert.Equal(5, pc0.LensPositive.Count);
    }

    [SharedFact]
    public void Pca_and_diff_stats_write_their_files_on_the_zog_organism()
    {
        using var tmp = new TempDir();
        string data = tmp.File("stories.txt");
        File.WriteAllText(data, "Once upon a time, there was a little girl named Lily. She loved to play outside.\n\nTom had a red ball. He liked to play with his toys.\n");
        var spec = new ModelPairSpec(Shared.Path("models", "stories260K"), Shared.Path("models", "stories260K-zog"));
        var corpus = new CorpusSpec([DataSourceSpec.Parse(data)], 10, 64, 2);
        var results = ResultsFolder.Open(tmp.File("R"));
        var pca = PcaAnalysis.Run(new PcaOptions { Models = spec, Corpus = corpus, Layers = [2], Analyzed = 2 }, results)!;
        var stats = DiffStatsAnalysis.Run(new DiffStatsOptions { Models = spec, Corpus = corpus, Layers = [2] }, results)!;
        using (var f = new SafetensorsFile(results.PathOf(PcaAnalysis.TensorFile(2))))
        {
            Assert.Equal(new[] { 64, 64 }, f.Info("components_").Shape);
            Assert.Equal(pca[0].Model.Samples, f.ReadI64("n_samples_seen_")[0]);
        }
        Assert.True(File.Exists(results.PathOf("pca/pca.json")));
        Assert.True(File.Exists(results.PathOf(DiffStatsAnalysis.MeansFile)));
        Assert.Equal(pca[0].Model.Samples, stats.Layers[0].Positions);
        Assert.True(results.IsCurrent(PcaAnalysis.Stage, PcaAnalysis.InputsHash(new PcaOptions { Models = spec, Corpus = corpus, Layers = [2], Analyzed = 2 })));
    }
}

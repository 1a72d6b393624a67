using Finetrace.Tensors;
using Finetrace.Dictionaries;
using Xunit.Abstractions;

namespace Finetrace.Tests.Dictionaries;

/// <summary>Short end-to-end runs of every SAE recipe on a sparse linear toy model: loss falls, FVE rises, and L0
/// behaves as the recipe promises.</summary>
public sealed class SaeTrainingTests(ITestOutputHelper log)
{
    // 40 unit directions in 16 dims, 3 active per token with Exp(1)-ish magnitudes, plus a constant offset.
    static float[] Toy(int n, int d, ulong seed)
    {
        var r = new SplitMix64(1000);   // the same features for every sample seed
        int nf = 40;
        var dirs = new float[nf * d];
        for (int i = 0; i < dirs.Length; i++) dirs[i] = (float)r.Normal();
        r = new SplitMix64(seed);
        for (int f = 0; f < nf; f++) { var row = dirs.AsSpan(f * d, d); float nn = CodeNorms.Norm(row); for (int i = 0; i < d; i++) row[i] /= nn; }
        var x = new float[n * d];
        for (int t = 0; t < n; t++)
        {
            for (int i = 0; i < d; i++) x[t * d + i] = 0.5f;
            for (int a = 0; a < 3; a++)
            {
                int f = (int)(r.NextU64() % (ulong)nf);
                float mag = (float)(-Math.Log(1 - r.NextDouble()) + 0.2);
                for (int i = 0; i < d; i++) x[t * d + i] += mag * dirs[f * d + i];
            }
        }
        return x;
    }

    (StepStats First, StepStats Last, SparseDictionary Dict) Run(Sparsity act, float mu, SparsityPenalty pen = SparsityPenalty.L1, int? kMax = null, int steps = 300, float targetRms = 0)
    {
        int d = 16, f = 64, batch = 128;
        var x = Toy(4096, d, 7);
        var dict = new SparseDictionary(1, d, f, act, CodeNormalization.None, subtractDecoderBias: true, k: 3);
        Initialization.Sae(dict, new SplitMix64(1));
        if (targetRms > 0) dict.Normalizer = NormalizerStats.FromSample(new ArrayBatches(x, 1, d), targetRms, 4096);
        bool topk = act is Sparsity.BatchTopK or Sparsity.TopK;
        var tr = new DictionaryTrainer(dict, new TrainerOptions
        {
            Lr = 3e-3, WarmupSteps = 20, TotalSteps = steps, SparsityCoef = mu, Penalty = pen, SparsityWarmupSteps = act == Sparsity.Relu ? 50 : 0,
            UnitNormDecoder = true, ClipNorm = 1f, ThresholdStartStep = 50, KMax = kMax, KAnnealSteps = 100, DeadTokens = 2000, JumpBandwidth = 0.05f,
        });
        var src = new ArrayBatches(x, 1, d);
        var buf = new float[batch * d];
        StepStats first = null!, last = null!;
        for (int s = 0; s < steps; s++)
        {
            src.Next(buf, batch);
            last = tr.Step(buf);
            first ??= last;
        }
        log.WriteLine($"{act} μ={mu} {pen}: loss {first.Total:G4} → {last.Total:G4}, FVE {first.Fve[0]:F3} → {last.Fve[0]:F3}, L0 {first.L0:F2} → {last.L0:F2}, k {last.K}");
        return (first, last, dict);
    }

    [Fact]
    public void TopK_SAE_keeps_exactly_k_per_token_and_learns()
    {
        var (first, last, d) = Run(Sparsity.TopK, 0);
        Assert.True(last.Fve[0] > 0.8 && last.Fve[0] > first.Fve[0] + 0.3, $"FVE {first.Fve[0]:F3} → {last.Fve[0]:F3}");
        Assert.InRange(last.L0, 2.5, 3.0);   // at most k per token, rows with fewer positive entries allowed
        foreach (var n in d.DecoderNorms()) Assert.InRange(n, 0.999f, 1.001f);   // unit-norm recipe
    }

    [Fact]
    public void BatchTopK_SAE_with_k_annealing_ends_at_k_and_sets_a_threshold()
    {
        var (first, last, d) = Run(Sparsity.BatchTopK, 0, kMax: 12);
        Assert.Equal(12, first.K);
        Assert.Equal(3, last.K);
        Assert.Equal(3.0, last.L0, 6);
        Assert.True(d.Threshold > 0);
        Assert.True(last.Fve[0] > 0.8, $"FVE {last.Fve[0]:F3}");
    }

    [Theory]
    [InlineData(SparsityPenalty.L1)]
    [InlineData(SparsityPenalty.SqrtL1)]
    public void Relu_SAE_trades_L0_for_reconstruction_with_mu(SparsityPenalty pen)
    {
        var (_, low, dLow) = Run(Sparsity.Relu, 0.01f, pen);
        var (_, high, dHigh) = Run(Sparsity.Relu, 0.3f, pen);
        // the unit-norm decoder is what makes μ meaningful: with free norms the penalty shrinks f and grows d_j instead
        foreach (var n in dLow.DecoderNorms().Concat(dHigh.DecoderNorms())) Assert.InRange(n, 0.999f, 1.001f);
        Assert.True(high.L0 < low.L0, $"L0 {low.L0:F2} (μ small) vs {high.L0:F2} (μ large)");
        Assert.True(low.Fve[0] > high.Fve[0]);
        Assert.True(low.Fve[0] > 0.8, $"FVE {low.Fve[0]:F3}");
    }

    [Fact]
    public void JumpRelu_SAE_learns_and_its_L0_penalty_lowers_L0()
    {
        var low = Run(Sparsity.JumpRelu, 0.0001f).Last;
        var (_, high, d) = Run(Sparsity.JumpRelu, 0.05f);
        Assert.True(high.L0 < low.L0, $"L0 {low.L0:F2} (small penalty) vs {high.L0:F2}");
        Assert.True(low.Fve[0] > 0.6, $"FVE {low.Fve[0]:F3}");
        Assert.True(d.JumpThreshold!.Average() > 0.001f, "thresholds should move up under the L0 penalty");
    }

    [Fact]
    public void Normalised_training_saves_a_dictionary_that_works_on_raw_activations()
    {
        var x = Toy(512, 16, 9);
        var (_, last, d) = Run(Sparsity.BatchTopK, 0, targetRms: 10f);
        Assert.NotNull(d.Normalizer);
        using var dir = new Infrastructure.TempDir();
        DictionaryIO.Save(d, dir.Path);
        var back = DictionaryIO.Load(dir.Path);
        var (_, xh) = Evaluation.ReconstructRaw(back, x);
        var (_, xhMem) = Evaluation.ReconstructRaw(d, x);
        Infrastructure.Golden.AssertClose("raw reconstruction, saved vs in memory", xhMem, xh, 1e-5, 1e-5);
        double err = 0, tot = 0;
        var mean = new double[16];
        for (int t = 0; t < 512; t++) for (int i = 0; i < 16; i++) mean[i] += x[t * 16 + i] / 512.0;
        for (int t = 0; t < 512; t++) for (int i = 0; i < 16; i++) { double e = x[t * 16 + i] - xh[t * 16 + i]; err += e * e; double c = x[t * 16 + i] - mean[i]; tot += c * c; }
        double fve = 1 - err / tot;
        log.WriteLine($"raw-space FVE after save/load: {fve:F3} (training batch FVE {last.Fve[0]:F3})");
        Assert.True(fve > 0.7, $"raw-space FVE {fve:F3}");
    }
}

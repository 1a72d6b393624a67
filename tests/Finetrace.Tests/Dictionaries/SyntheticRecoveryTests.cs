using Finetrace.Tensors;
using Finetrace.Activations;
using Finetrace.Activations.Synthetic;
using Finetrace.Dictionaries;
using Finetrace.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Finetrace.Tests.Dictionaries;

/// <summary>
/// The ground-truth benchmark on `synth` data (64 true features in 32 dims: 52 shared, 6 exclusive, 3 shrunk ×0.25 in
/// the base, 3 decoupled): a BatchTopK crosscoder recovers ≥ 90% of the true features at joint cosine ≥ 0.9 with the
/// right relative decoder norms and no false exclusive latents; an L1 crosscoder on the same data turns the planted
/// shrinkage into false "fine-tuned-only" latents (Complete Shrinkage).
/// </summary>
public sealed class SyntheticRecoveryTests(ITestOutputHelper log)
{
    static (SyntheticTruth, SparseDictionary) Train(string dir, Sparsity act, float mu)
    {
        var truth = SyntheticTruth.Load(dir);
        using var st = ActivationStore.Open(dir);
        using var src = StoreBatches.Paired(st, new StoreBatchOptions { Layer = 0, Seed = 1 });
        const int steps = 3000, batch = 256;
        var dict = new SparseDictionary(2, 32, 128, act, CodeNormalization.Crosscoder, false, 6);
        Initialization.Crosscoder(dict, new SplitMix64(5), act == Sparsity.Relu ? 0.1f : 1f);
        var tr = new DictionaryTrainer(dict, new TrainerOptions
        {
            Lr = act == Sparsity.Relu ? 3e-3 : 4e-3, WarmupSteps = steps / 20, TotalSteps = steps, DecayStart = steps * 8 / 10, SparsityCoef = mu,
            ClipNorm = act == Sparsity.Relu ? null : 1f, DeadTokens = 20 * batch, ThresholdStartStep = steps / 2,
        });
        using var outDir = new TempDir();
        new TrainingRun(outDir.Path, tr, src, new RunOptions { BatchSize = batch, Steps = steps, LogEvery = 0 }).Run();
        return (truth, dict);
    }

    void Log(string name, SyntheticScore s)
    {
        log.WriteLine($"{name}: {s.Recovered}/{s.Features} recovered ({s.Fraction:P1}); exclusive-looking latents {s.ExclusiveLatents}, false exclusive {s.FalseExclusiveLatents}");
        foreach (var c in s.Categories)
            log.WriteLine($"  {c.Category,-10} {c.Recovered}/{c.Features}  mean best cos {c.MeanBestCosine:F3}  |Δnorm err| {c.MeanAbsDeltaNormError:F3}  false exclusive {c.FalseExclusive}");
    }

    [Fact]
    public void BatchTopK_recovers_the_truth_and_L1_shows_shrinkage_as_false_exclusive_latents()
    {
        using var store = new TempDir();
        SyntheticGenerator.Make(new SyntheticSpec { DModel = 32, Features = 64, Tokens = 100_000, Seed = 3, Dtype = "f32" }, store.Path);

        var (truth, btk) = Train(store.Path, Sparsity.BatchTopK, 0);
        using var st = ActivationStore.Open(store.Path);
        var s = SyntheticScoring.Score(btk, truth, st);
        Log("BatchTopK crosscoder", s);
        Assert.True(s.Fraction >= 0.9, $"BatchTopK recovered only {s.Fraction:P1} of the true features");
        var ex = s.Categories.Single(c => c.Category == "exclusive");
        Assert.Equal(ex.Features, ex.Recovered);
        Assert.True(ex.MeanAbsDeltaNormError < 0.05, $"exclusive features' Δnorm off by {ex.MeanAbsDeltaNormError:F3}");
        var shrunk = s.Categories.Single(c => c.Category == "shrunk");
        Assert.True(shrunk.MeanAbsDeltaNormError < 0.05, $"shrunk features' Δnorm off by {shrunk.MeanAbsDeltaNormError:F3}");
        Assert.Equal(0, s.FalseExclusiveLatents);

        var (_, l1) = Train(store.Path, Sparsity.Relu, 0.3f);
        var s1 = SyntheticScoring.Score(l1, truth, st);
        Log("L1 crosscoder", s1);
        var shrunk1 = s1.Categories.Single(c => c.Category == "shrunk");
        Assert.True(shrunk1.FalseExclusive >= 2, $"expected the shrunk features to show up as false exclusive latents, got {shrunk1.FalseExclusive}");
        Assert.True(shrunk1.MeanAbsDeltaNormError > shrunk.MeanAbsDeltaNormError, "L1 should misplace the shrunk features' relative norms more than BatchTopK");
    }
}

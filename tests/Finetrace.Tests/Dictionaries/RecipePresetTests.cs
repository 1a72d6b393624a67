using Finetrace.Activations;
using Finetrace.Activations.Synthetic;
using Finetrace.Dictionaries;
using Finetrace.Tests.Infrastructure;

namespace Finetrace.Tests.Dictionaries;

/// <summary>The named recipes: minder2025 resolves to the paper's settings (methods.md §2.8), the Finetrace defaults scale
/// with the run, and a μ combined with a loss it was not tuned for is flagged.</summary>
public sealed class RecipePresetTests
{
    static TempDir Store()
    {
        var dir = new TempDir();
        SyntheticGenerator.Make(new SyntheticSpec { DModel = 16, Features = 32, Tokens = 4096, Seed = 4, Dtype = "f32" }, dir.Path);
        return dir;
    }

    [Fact]
    public void Minder2025_is_the_papers_BatchTopK_recipe()
    {
        using var store = Store();
        using var st = ActivationStore.Open(store.Path);
        using var s = new TrainingRecipe { Kind = DictionaryKind.Crosscoder, Layer = 0, Preset = RecipePreset.Minder2025, Tokens = 4096 }.Prepare(st);
        var o = s.Options;
        Assert.Equal((ReconLoss.L2, 1e-4, 1000, (float?)1f, 1f / 32, 10_000_000L, 1000L), (o.Loss, o.Lr, o.WarmupSteps, o.ClipNorm, o.AuxKAlpha, o.DeadTokens, o.ThresholdStartStep));
        Assert.Null(o.DecayStart);
        Assert.Equal(0.999f, o.ThresholdBeta);
        Assert.Equal((Sparsity.BatchTopK, 100, 32 * 16, CodeNormalization.Crosscoder), (s.Dict.Sparsity, s.Dict.K, s.Dict.DictSize, s.Dict.CodeNormalization));
        Assert.Equal(new CrosscoderInit(SameInitForAllModels: true, NormInitScale: 1f), s.Init);
        Assert.Equal(2048, s.Recipe.Batch);
        // decoder = encoderᵀ and every (model, latent) encoder row has norm 1
        Assert.Equal(s.Dict.WEnc, s.Dict.WDec);
        foreach (var n in s.Dict.DecoderNorms()) Assert.InRange(n, 0.9999f, 1.0001f);
        Assert.Empty(s.Recipe.Warnings());
    }

    [Fact]
    public void Minder2025_L1_crosscoder_uses_mu_0_041_with_the_l2_loss_and_small_init()
    {
        using var store = Store();
        using var st = ActivationStore.Open(store.Path);
        using var s = new TrainingRecipe { Kind = DictionaryKind.Crosscoder, Layer = 0, Preset = RecipePreset.Minder2025, Activation = Sparsity.Relu, Tokens = 4096 }.Prepare(st);
        Assert.Equal((ReconLoss.L2, 1e-4, 1000, 0.041f, (float?)null), (s.Options.Loss, s.Options.Lr, s.Options.WarmupSteps, s.Options.SparsityCoef, s.Options.ClipNorm));
        Assert.Equal(new CrosscoderInit(true, 0.005f), s.Init);
        foreach (var n in s.Dict.DecoderNorms()) Assert.InRange(n, 0.004999f, 0.005001f);
        Assert.Empty(s.Recipe.Warnings());
    }

    [Fact]
    public void A_mu_with_a_loss_it_was_not_tuned_for_is_flagged()
    {
        var mse = new TrainingRecipe { Kind = DictionaryKind.Crosscoder, Layer = 0, L1 = 0.041f };   // default loss: mse
        var w = Assert.Single(mse.Warnings());
        Assert.Equal((RecipeWarningKind.MuTunedForOtherLoss, nameof(TrainingRecipe.L1), (object?)0.041f), (w.Kind, w.Setting, w.Value));
        Assert.Single((mse with { Loss = ReconLoss.MseMeanModels }).Warnings());
        Assert.Single((mse with { Preset = RecipePreset.Minder2025, Loss = ReconLoss.Mse }).Warnings());   // the paper's μ, overridden loss
        Assert.Empty((mse with { Loss = ReconLoss.L2 }).Warnings());
        Assert.Empty((mse with { Preset = RecipePreset.Minder2025 }).Warnings());
        Assert.Empty(new TrainingRecipe { Kind = DictionaryKind.Crosscoder, Layer = 0, K = 8 }.Warnings());
    }

    [Fact]
    public void Finetrace_defaults_scale_with_the_run()
    {
        // lr: Gao et al.'s 2e-4/√(F/2^14) for long runs, raised by √(ReferenceSteps/steps) for short ones
        Assert.Equal(8e-4, RecipeDefaults.LearningRate(RecipePreset.Finetrace, true, 1024, 1_000_000), 1e-12);
        Assert.Equal(8e-4 * Math.Sqrt(RecipeDefaults.ReferenceSteps / 10_000), RecipeDefaults.LearningRate(RecipePreset.Finetrace, true, 1024, 10_000), 1e-12);
        Assert.Equal(RecipeDefaults.MaxLearningRate, RecipeDefaults.LearningRate(RecipePreset.Finetrace, true, 1024, 1000));
        Assert.Equal(2e-4 / Math.Sqrt(16.0 / 16384), RecipeDefaults.LearningRate(RecipePreset.Finetrace, true, 16, 1000));   // Gao's rule already above the cap
        Assert.Equal(1e-4, RecipeDefaults.LearningRate(RecipePreset.Minder2025, true, 1024, 2929));
        Assert.Equal(1e-4, RecipeDefaults.LearningRate(RecipePreset.Finetrace, false, 1024, 2929));
        // dead window: a fraction of the run, at least 10 batches, at most dictionary_learning's 10M
        Assert.Equal(60_000_000 / RecipeDefaults.DeadWindowFraction, RecipeDefaults.DeadTokens(RecipePreset.Finetrace, 60_000_000, 2048));
        Assert.Equal(10 * 2048, RecipeDefaults.DeadTokens(RecipePreset.Finetrace, 100_000, 2048));
        Assert.Equal(10_000_000, RecipeDefaults.DeadTokens(RecipePreset.Finetrace, 100_000_000_000, 2048));
        Assert.Equal(10_000_000, RecipeDefaults.DeadTokens(RecipePreset.Minder2025, 6_000_000, 2048));
        Assert.Equal((0.25f, 1f / 32), (RecipeDefaults.AuxKAlpha(RecipePreset.Finetrace), RecipeDefaults.AuxKAlpha(RecipePreset.Minder2025)));
    }
}

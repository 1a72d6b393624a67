using System.Text.Json.Nodes;
using Finetrace.Activations;
using Finetrace.Activations.Synthetic;
using Finetrace.Dictionaries;
using Finetrace.Tests.Infrastructure;

namespace Finetrace.Tests.Dictionaries;

/// <summary>The training recipe in the library: what it resolves and the defects it fixed.</summary>
public sealed class TrainingRecipeTests
{
    static TempDir Store(int tokens = 20_000)
    {
        var dir = new TempDir();
        SyntheticGenerator.Make(new SyntheticSpec { DModel = 16, Features = 32, Tokens = tokens, Seed = 4, Dtype = "f32" }, dir.Path);
        return dir;
    }

    static (StepStats Last, SparseDictionary Dict) Train(ActivationStore st, TrainingRecipe recipe)
    {
        using var setup = recipe.Prepare(st);
        using var outDir = new TempDir();
        StepStats last = null!;
        var run = setup.Run(outDir.Path, checkpointEvery: 0, resume: false);
        run.Run(s => last = s);
        return (last, run.Trainer.Dict);
    }

    [Theory]
    [InlineData(DictionaryKind.Sae)]
    [InlineData(DictionaryKind.DiffSae)]
    public void Relu_SAEs_keep_unit_decoder_rows_so_mu_controls_L0(DictionaryKind kind)
    {
        // Defect 1: a ReLU SAE / diff-SAE trained with a free decoder norm, so the L1 penalty could be lowered at equal
        // error by shrinking f and growing d_j, and μ controlled nothing. The recipe keeps decoder rows at unit norm.
        using var store = Store();
        using var st = ActivationStore.Open(store.Path);
        TrainingRecipe R(float mu) => new() { Kind = kind, Layer = 0, L1 = mu, DictSize = 48, Batch = 256, Tokens = 40_000, Lr = 3e-3, TargetRms = 1f, Seed = 1 };
        Assert.True(R(0.1f).Prepare(st).Options.UnitNormDecoder);
        var (low, dLow) = Train(st, R(0.001f));
        var (high, dHigh) = Train(st, R(0.3f));
        foreach (var n in dLow.DecoderNorms().Concat(dHigh.DecoderNorms())) Assert.InRange(n, 0.999f, 1.001f);
        Assert.True(high.L0 < 0.7 * low.L0, $"L0 {low.L0:F2} at μ 0.001 vs {high.L0:F2} at μ 0.3");
    }

    [Fact]
    public void A_relu_SAE_step_undoes_a_rescaled_decoder()
    {
        // doubling the decoder and halving f would lower an unweighted L1 penalty at equal error; under the recipe the
        // step's renormalisation puts every row back to unit norm, so the rescaling buys nothing
        using var store = Store(4000);
        using var st = ActivationStore.Open(store.Path);
        using var setup = new TrainingRecipe { Kind = DictionaryKind.Sae, Layer = 0, L1 = 0.05f, DictSize = 24, Batch = 128, Seed = 2 }.Prepare(st);
        var d = setup.Dict;
        for (int i = 0; i < d.WDec.Length; i++) d.WDec[i] *= 2;
        for (int i = 0; i < d.WEnc.Length; i++) d.WEnc[i] *= 0.5f;
        var x = new float[128 * 16];
        setup.Source.Next(x, 128);
        setup.Trainer.Step(x);
        foreach (var n in d.DecoderNorms()) Assert.InRange(n, 0.999f, 1.001f);
    }

    [Theory]
    [InlineData(null, 0.005f)]
    [InlineData(1f, 1f)]
    [InlineData(0.1f, 0.1f)]
    public void Norm_init_scale_applies_the_default_only_when_absent(float? given, float expected)
    {
        // Defect 6: --norm-init-scale 1 was silently replaced by 0.005 for ReLU crosscoders; config.json always said null
        using var store = Store(4000);
        using var st = ActivationStore.Open(store.Path);
        using var setup = new TrainingRecipe { Kind = DictionaryKind.Crosscoder, Layer = 0, L1 = 0.1f, DictSize = 24, Batch = 128, NormInitScale = given }.Prepare(st);
        Assert.All(setup.Dict.DecoderNorms(), n => Assert.Equal(expected, n, 4));
        using var dir = new TempDir();
        DictionaryIO.Save(setup.Dict, dir.Path, init: setup.Init);
        var cfg = JsonNode.Parse(File.ReadAllText(Path.Combine(dir.Path, "config.json")))!;
        Assert.Equal(expected, cfg["norm_init_scale"]!.GetValue<float>(), 6);
        Assert.True(cfg["same_init_for_all_layers"]!.GetValue<bool>());
        Assert.Equal(setup.Dict.WEnc.AsSpan(0, 24 * 16).ToArray(), setup.Dict.WEnc.AsSpan(24 * 16, 24 * 16).ToArray());
    }

    [Fact]
    public void Recipe_errors_are_typed_and_name_the_setting()
    {
        using var store = Store(4000);
        using var st = ActivationStore.Open(store.Path);
        var e = Assert.Throws<RecipeSettingException>(() => new TrainingRecipe { Kind = DictionaryKind.Sae, Layer = 0, Model = 5 }.Prepare(st));
        Assert.Equal((RecipeProblem.ModelOutOfRange, nameof(TrainingRecipe.Model)), (e.Problem, e.Setting));
        e = Assert.Throws<RecipeSettingException>(() => new TrainingRecipe { Kind = DictionaryKind.Crosscoder, Layer = 0, Activation = Sparsity.TopK }.Prepare(st));
        Assert.Equal(RecipeProblem.ActivationNotForCrosscoder, e.Problem);
        e = Assert.Throws<RecipeSettingException>(() => new TrainingRecipe { Kind = DictionaryKind.DiffSae, Layer = 0, Minuend = 1, Subtrahend = 1 }.Prepare(st));
        Assert.Equal(RecipeProblem.ModelOutOfRange, e.Problem);
        Assert.DoesNotContain("--", e.Message);
    }
}

using Finetrace.Activations;
using Finetrace.Activations.Synthetic;
using Finetrace.Dictionaries;
using Finetrace.Tensors;
using Finetrace.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Finetrace.Tests.Dictionaries;

/// <summary>Crosscoder variants of methods.md §16: dedicated exclusive blocks, designated shared latents, the diff-aware
/// loss. Gradients against central finite differences (loss in double), constraints after training, and a planted-truth
/// test of what each is for.</summary>
public sealed class CrosscoderVariantTests(ITestOutputHelper log)
{
    static SparseDictionary Make(Sparsity act, int models, int d, int f, int k, ulong seed, CrosscoderVariant v)
    {
        var dict = new SparseDictionary(models, d, f, act, CodeNormalization.Crosscoder, false, k);
        Initialization.Crosscoder(dict, new SplitMix64(seed), normInitScale: 0.5f, sameInitForAllModels: false);
        var r = new SplitMix64(seed + 1);
        for (int i = 0; i < dict.BEnc.Length; i++) dict.BEnc[i] = (float)(r.Normal() * 0.1);
        for (int i = 0; i < dict.BDec.Length; i++) dict.BDec[i] = (float)(r.Normal() * 0.1);
        v.Apply(dict);
        return dict;
    }

    static float[] Data(int b, int rowLen, ulong seed)
    {
        var r = new SplitMix64(seed); var x = new float[b * rowLen];
        for (int i = 0; i < x.Length; i++) x[i] = (float)r.Normal();
        return x;
    }

    public static TheoryData<string, Sparsity, int> Variants => new()
    {
        { "dedicated", Sparsity.BatchTopK, 2 },
        { "dedicated", Sparsity.Relu, 3 },
        { "designated", Sparsity.Relu, 2 },
        { "designated", Sparsity.BatchTopK, 3 },
        { "diff-1", Sparsity.BatchTopK, 2 },
        { "diff-0.5", Sparsity.Relu, 2 },
        { "all", Sparsity.Relu, 2 },
    };

    static CrosscoderVariant VariantNamed(string name, int models, Sparsity act) => name switch
    {
        "dedicated" => new CrosscoderVariant { Exclusive = models == 2 ? [3, 2] : [2, 2, 1] },
        "designated" => new CrosscoderVariant { Designated = 3, DesignatedPenalty = act == Sparsity.Relu ? 0.1f : 1f },
        "diff-1" => new CrosscoderVariant { DiffLambda = -1 },
        "diff-0.5" => new CrosscoderVariant { DiffLambda = -0.5 },
        _ => new CrosscoderVariant { Exclusive = [2, 2], Designated = 2, DesignatedPenalty = 0.3f, DiffLambda = -1 },
    };

    [Theory]
    [MemberData(nameof(Variants))]
    public void Gradients_match_finite_differences_on_the_constraint_set(string name, Sparsity act, int models)
    {
        int d = 6, f = 12, b = 12;
        var v = VariantNamed(name, models, act);
        var dict = Make(act, models, d, f, 3, 11, v);
        var x = Data(b, models * d, 5);
        var opts = new TrainerOptions { SparsityCoef = 0.3f, GeometricMedianInit = false, AuxKAlpha = 0, ThresholdStartStep = long.MaxValue, Variant = v };
        var tr = new DictionaryTrainer(dict, opts);
        tr.ForwardBackward(x, 1, updateState: false);
        float[][] grads = [.. tr.Gradients.Select(g => (float[])g.Clone())];
        var parameters = tr.Parameters;
        int checkedN = 0, skipped = 0, masked = 0, tied = 0;
        double worst = 0;
        for (int p = 0; p < 4; p++)
            for (int i = 0; i < parameters[p].Length; i += 1 + parameters[p].Length / 60)
            {
                // the parameter's (model, latent) for WEnc/WDec [M, F, D]
                int m = p is 0 or 2 ? i / (f * d) : -1, j = p is 0 or 2 ? i / d % f : -1;
                if (m >= 0 && v.OwnerOf(j) is int owner && owner >= 0 && owner != m)
                {
                    Assert.Equal(0f, grads[p][i]);   // masked: never moved
                    Assert.Equal(0f, parameters[p][i]);
                    masked++;
                    continue;
                }
                // a tied decoder entry is one parameter shared by every model: perturb all copies together
                bool isTied = p == 2 && v.TieDesignatedDecoder && v.IsDesignated(j, f);
                int[] copies = isTied ? [.. Enumerable.Range(0, models).Select(mm => (mm * f + j) * d + i % d)] : [i];
                if (isTied) { tied++; foreach (int c in copies) Assert.Equal(grads[p][i], grads[p][c]); }
                float orig = parameters[p][i];
                const float h = 2e-3f;
                foreach (int c in copies) parameters[p][c] = orig + h;
                double lp = tr.ForwardBackward(x, 1, updateState: false).TotalPrecise; var sp = Support(tr, x);
                foreach (int c in copies) parameters[p][c] = orig - h;
                double lm = tr.ForwardBackward(x, 1, updateState: false).TotalPrecise; var sm = Support(tr, x);
                foreach (int c in copies) parameters[p][c] = orig;
                if (sp != sm) { skipped++; continue; }
                double fd = (lp - lm) / (2 * h);
                double err = Math.Abs(fd - grads[p][i]) / Math.Max(5e-3, Math.Abs(fd));
                worst = Math.Max(worst, err); checkedN++;
                Assert.True(err < 3e-2, $"{name}: param {p}[{i}]: analytic {grads[p][i]:G6}, finite difference {fd:G6}");
            }
        log.WriteLine($"{name} {act} M={models}: worst relative error {worst:E2} over {checkedN} entries ({skipped} at kinks, {masked} masked, {tied} tied)");
        Assert.True(checkedN > skipped, $"too many kinks: {skipped} skipped, {checkedN} checked");
        if (v.HasExclusive) Assert.True(masked > 0, "no masked entry was sampled");
        if (v.Designated > 0) Assert.True(tied > 0, "no tied entry was sampled");
    }

    static string Support(DictionaryTrainer tr, float[] x)
    {
        var sb = new System.Text.StringBuilder();
        if (tr.Dict.Sparsity == Sparsity.Relu)
            foreach (var val in Inference.PostRelu(tr.Dict, x)) sb.Append(val > 0 ? '+' : '0');
        var c = tr.Codes;
        for (int e = 0; e < c.Count; e++) sb.Append(c.Index[e]).Append(c.Value[e] > 0 ? '+' : '0').Append(',');
        for (int t = 0; t <= c.Rows; t++) sb.Append(c.RowStart[t]).Append(',');
        return sb.ToString();
    }

    [Fact]
    public void Diff_aware_loss_with_lambda_minus_one_is_the_squared_error_of_the_difference()
    {
        // computed directly in double from the weights: L = (1/B) Σ_b ‖(x_1 − x̂_1) − (x_0 − x̂_0)‖², ReLU code, no penalty
        int d = 5, f = 8, b = 10;
        var v = new CrosscoderVariant { DiffLambda = -1 };
        var dict = Make(Sparsity.Relu, 2, d, f, 0, 7, v);
        // fine-tuned = base + a small change, so e_0 and e_1 are strongly correlated and the two losses far apart
        var x = Data(b, 2 * d, 8);
        var noise = Data(b, d, 9);
        for (int t = 0; t < b; t++) for (int i = 0; i < d; i++) x[(t * 2 + 1) * d + i] = x[t * 2 * d + i] + 0.2f * noise[t * d + i];
        var tr = new DictionaryTrainer(dict, new TrainerOptions { SparsityCoef = 0, GeometricMedianInit = false, AuxKAlpha = 0, Variant = v });
        var stats = tr.ForwardBackward(x, 1, updateState: false);
        double expected = 0;
        for (int t = 0; t < b; t++)
        {
            var fj = new double[f];
            for (int j = 0; j < f; j++)
            {
                double s = dict.BEnc[j];
                for (int m = 0; m < 2; m++) for (int i = 0; i < d; i++) s += x[(t * 2 + m) * d + i] * (double)dict.WEnc[(m * f + j) * d + i];
                fj[j] = Math.Max(0, s);
            }
            for (int i = 0; i < d; i++)
            {
                var e = new double[2];
                for (int m = 0; m < 2; m++)
                {
                    double xh = dict.BDec[m * d + i];
                    for (int j = 0; j < f; j++) xh += fj[j] * dict.WDec[(m * f + j) * d + i];
                    e[m] = x[(t * 2 + m) * d + i] - xh;
                }
                expected += (e[1] - e[0]) * (e[1] - e[0]);
            }
        }
        expected /= b;
        log.WriteLine($"‖e_1 − e_0‖² direct {expected:G8}, trainer {stats.Recon:G8}; plain mse {stats.Mse * 2:G8}");
        Assert.True(Math.Abs(expected - stats.TotalPrecise) < 1e-4 * Math.Max(1, expected), $"direct {expected}, trainer {stats.TotalPrecise}");
        Assert.True(Math.Abs(stats.Mse * 2 - expected) > 0.1 * expected, "the test data should make the plain and diff-aware losses differ");
    }

    [Fact]
    public void Masks_and_ties_hold_after_training_steps()
    {
        int models = 2, d = 8, f = 24, b = 64;
        foreach (var act in new[] { Sparsity.BatchTopK, Sparsity.Relu })
        {
            var v = new CrosscoderVariant { Exclusive = [4, 5], Designated = 3, DesignatedPenalty = act == Sparsity.Relu ? 0.1f : 1f };
            var dict = Make(act, models, d, f, 3, 2, v);
            var tr = new DictionaryTrainer(dict, new TrainerOptions { Lr = 1e-2, WarmupSteps = 0, SparsityCoef = 0.1f, DeadTokens = 2 * b, ThresholdStartStep = 0, Variant = v });
            var start = (float[])dict.WDec.Clone();
            for (int s = 0; s < 25; s++) tr.Step(Data(b, models * d, (ulong)(100 + s)));
            for (int j = 0; j < f; j++)
                for (int m = 0; m < models; m++)
                {
                    int owner = v.OwnerOf(j);
                    var enc = dict.WEnc.AsSpan((m * f + j) * d, d); var dec = dict.WDec.AsSpan((m * f + j) * d, d);
                    if (owner >= 0 && owner != m)
                    {
                        Assert.True(enc.ToArray().All(w => w == 0), $"{act}: encoder row ({m}, {j}) of model {owner}'s exclusive latent moved");
                        Assert.True(dec.ToArray().All(w => w == 0), $"{act}: decoder row ({m}, {j}) of model {owner}'s exclusive latent moved");
                    }
                    if (owner == m) Assert.True(dec.ToArray().Any(w => w != 0), $"{act}: exclusive latent {j} lost its own decoder row");
                    if (v.IsDesignated(j, f) && m > 0)
                        Assert.True(dec.SequenceEqual(dict.WDec.AsSpan(j * d, d)), $"{act}: designated latent {j}'s decoder row differs between model 0 and {m}");
                }
            // the tied rows did train
            Assert.False(dict.WDec.AsSpan((f - 1) * d, d).SequenceEqual(start.AsSpan((f - 1) * d, d)), $"{act}: designated decoder rows never moved");
        }
    }

    [Fact]
    public void Designated_penalty_multiplier_scales_those_latents_penalty_only()
    {
        // ReLU, μ > 0: the loss difference between multiplier 0.1 and 1 equals 0.9·μ·(1/B)·Σ_b Σ_{j designated} f_bj·c_j
        int d = 6, f = 10, b = 16;
        var x = Data(b, 2 * d, 4);
        double Total(float mult, out DictionaryTrainer tr)
        {
            var v = new CrosscoderVariant { Designated = 4, DesignatedPenalty = mult, TieDesignatedDecoder = false };
            var dict = Make(Sparsity.Relu, 2, d, f, 0, 9, v);
            tr = new DictionaryTrainer(dict, new TrainerOptions { SparsityCoef = 0.5f, GeometricMedianInit = false, AuxKAlpha = 0, Variant = v });
            return tr.ForwardBackward(x, 1, updateState: false).TotalPrecise;
        }
        double full = Total(1f, out var tr1), reduced = Total(0.1f, out _);
        var post = Inference.PostRelu(tr1.Dict, x);
        var c = new float[f]; tr1.Dict.CodeNorm(c);
        double designatedPenalty = 0;
        for (int t = 0; t < b; t++) for (int j = f - 4; j < f; j++) designatedPenalty += post[t * f + j] * (double)c[j];
        designatedPenalty *= 0.5 / b;
        Assert.True(designatedPenalty > 1e-3, "the designated latents should be active for the test to mean anything");
        Assert.True(Math.Abs(full - reduced - 0.9 * designatedPenalty) < 1e-5 * Math.Max(1, full), $"loss drop {full - reduced:G8}, expected {0.9 * designatedPenalty:G8}");
    }

    [Fact]
    public void Variant_is_recorded_in_finetrace_json_and_read_back()
    {
        using var dir = new TempDir();
        var v = new CrosscoderVariant { Exclusive = [16, 8], Designated = 4, DesignatedPenalty = 0.25f, TieDesignatedDecoder = false, DiffLambda = -1 };
        FinetraceSidecar.Write(dir.Path, "dictionary", new Dictionary<string, object?> { ["variant"] = v.ToJson() });
        var back = CrosscoderVariant.Read(dir.Path);
        Assert.Equal(v.Exclusive, back.Exclusive);
        Assert.Equal((v.Designated, v.DesignatedPenalty, v.TieDesignatedDecoder, v.DiffLambda), (back.Designated, back.DesignatedPenalty, back.TieDesignatedDecoder, back.DiffLambda));
        Assert.Equal("exclusive:1", back.BlockOf(20, 64));
        Assert.Equal("designated", back.BlockOf(61, 64));
        Assert.Equal("shared", back.BlockOf(30, 64));
        using var plain = new TempDir();
        Assert.True(CrosscoderVariant.Read(plain.Path).IsPlain);
    }

    [Theory]
    [InlineData(3, 0, 1f, -1.0, "models")]       // diff-aware needs two models
    [InlineData(2, 0, 1f, 0.5, "[−1, 0]")]
    [InlineData(2, 20, 1f, 0.0, "exceed")]       // 2·… exclusive + designated > F
    public void Bad_variants_are_refused_with_the_setting_named(int models, int designated, float penalty, double lambda, string says)
    {
        var v = new CrosscoderVariant { Exclusive = [5, 5], Designated = designated, DesignatedPenalty = penalty, DiffLambda = lambda };
        var e = Assert.Throws<CrosscoderVariantException>(() => v.Validate(models, 24, false, ReconLoss.Mse));
        Assert.Contains(says, e.Message);
    }

    [Fact]
    public void A_penalty_multiplier_without_a_penalty_is_refused()
    {
        var v = new CrosscoderVariant { Designated = 2, DesignatedPenalty = 0.1f };
        var dict = Make(Sparsity.BatchTopK, 2, 4, 8, 2, 1, v);
        var e = Assert.Throws<CrosscoderVariantException>(() => new DictionaryTrainer(dict, new TrainerOptions { Variant = v }));
        Assert.Equal(nameof(CrosscoderVariant.DesignatedPenalty), e.Setting);
        _ = new DictionaryTrainer(dict, new TrainerOptions { Variant = v with { DesignatedPenalty = 1f } });   // the tie alone is fine
    }

    /// <summary>What the dedicated crosscoder is for: on a synthetic store with planted model-exclusive features, the
    /// latent that recovers each exclusive feature (best joint cosine ≥ 0.9) lies in its owner model's exclusive block.</summary>
    [Fact]
    public void Dedicated_crosscoder_puts_planted_exclusive_features_into_the_matching_exclusive_block()
    {
        using var store = new TempDir();
        SyntheticGenerator.Make(new SyntheticSpec { DModel = 32, Features = 64, Shared = 0.75, Exclusive = 0.25, Shrunk = 0, Decoupled = 0, Tokens = 60_000, Seed = 3, Dtype = "f32" }, store.Path);
        var truth = SyntheticTruth.Load(store.Path);
        var v = new CrosscoderVariant { Exclusive = [16, 16] };
        const int steps = 2000, batch = 256, F = 128;
        var dict = new SparseDictionary(2, 32, F, Sparsity.BatchTopK, CodeNormalization.Crosscoder, false, 6);
        Initialization.Crosscoder(dict, new SplitMix64(5), 1f);
        v.Apply(dict);
        using (var st = ActivationStore.Open(store.Path))
        using (var src = StoreBatches.Paired(st, new StoreBatchOptions { Layer = 0, Seed = 1 }))
        {
            var tr = new DictionaryTrainer(dict, new TrainerOptions
            {
                Lr = 4e-3, WarmupSteps = steps / 20, TotalSteps = steps, DecayStart = steps * 8 / 10, ClipNorm = 1f, DeadTokens = 20 * batch, ThresholdStartStep = steps / 2, Variant = v,
            });
            using var outDir = new TempDir();
            new TrainingRun(outDir.Path, tr, src, new RunOptions { BatchSize = batch, Steps = steps, LogEvery = 0 }).Run();
        }
        var (inBlock, recovered, total) = ExclusiveRecovery(dict, truth, v);
        for (int m = 0; m < 2; m++)
            log.WriteLine($"model {m}: {inBlock[m]}/{total[m]} planted exclusive features recovered (cos ≥ 0.9) by a latent of model {m}'s block; {recovered[m]} recovered anywhere");
        // most land in the matching block (a shared latent can still learn an exclusive feature by zeroing its other decoder
        // row: the masks make the exclusive block available, they do not force it), every model's block takes part, and
        // none lands in the other model's block (its latents cannot write this model)
        Assert.True(inBlock.Sum() >= 0.7 * total.Sum(), $"only {inBlock.Sum()}/{total.Sum()} exclusive features landed in their model's exclusive block");
        for (int m = 0; m < 2; m++)
        {
            Assert.True(total[m] >= 4, $"the store planted only {total[m]} exclusive features in model {m}");
            Assert.True(inBlock[m] >= total[m] / 2, $"model {m}: only {inBlock[m]}/{total[m]} exclusive features landed in its exclusive block");
        }
        Assert.True(recovered.Sum() >= 0.85 * total.Sum(), $"only {recovered.Sum()}/{total.Sum()} exclusive features recovered at all");
    }

    /// <summary>What the diff-aware loss is for: at the same k, λ = −1 spends the code on what differs between the models,
    /// so it reconstructs the difference x_ft − x_base far better than the standard crosscoder (λ = 0), which spends it on
    /// the shared bulk. Difference FVE computed directly from inference-mode reconstructions.</summary>
    [Fact]
    public void Diff_aware_crosscoder_reconstructs_the_difference_better_at_the_same_sparsity()
    {
        using var store = new TempDir();
        SyntheticGenerator.Make(new SyntheticSpec { DModel = 32, Features = 64, Shared = 0.75, Exclusive = 0.25, Shrunk = 0, Decoupled = 0, Tokens = 40_000, Seed = 4, Dtype = "f32" }, store.Path);
        (double Diff, double Plain) Fve(double lambda)
        {
            const int steps = 800, batch = 256, D = 32, rows = 4096;
            var v = new CrosscoderVariant { DiffLambda = lambda };
            var dict = new SparseDictionary(2, D, 64, Sparsity.BatchTopK, CodeNormalization.Crosscoder, false, 3);
            Initialization.Crosscoder(dict, new SplitMix64(5), 1f);
            using var st = ActivationStore.Open(store.Path);
            using (var src = StoreBatches.Paired(st, new StoreBatchOptions { Layer = 0, Seed = 1 }))
            {
                var tr = new DictionaryTrainer(dict, new TrainerOptions
                {
                    Lr = 4e-3, WarmupSteps = steps / 20, TotalSteps = steps, ClipNorm = 1f, DeadTokens = 20 * batch, ThresholdStartStep = steps / 2, Variant = lambda == 0 ? null : v,
                });
                using var outDir = new TempDir();
                new TrainingRun(outDir.Path, tr, src, new RunOptions { BatchSize = batch, Steps = steps, LogEvery = 0 }).Run();
            }
            using var eval = StoreBatches.Paired(st, new StoreBatchOptions { Layer = 0, Shuffle = false, Cycle = false, MixSources = false, FirstRow = 30_000 });
            var x = new float[rows * 2 * D];
            int n = eval.Next(x, rows);
            var (_, xh) = Inference.Reconstruct(dict, x.AsSpan(0, n * 2 * D));
            double errD = 0, errP = 0, totP = 0, totD = 0;
            var meanD = new double[D]; var meanP = new double[2 * D];
            for (int t = 0; t < n; t++) for (int i = 0; i < D; i++) { meanD[i] += (x[(t * 2 + 1) * D + i] - x[t * 2 * D + i]) / (double)n; meanP[i] += x[t * 2 * D + i] / (double)n; meanP[D + i] += x[t * 2 * D + D + i] / (double)n; }
            for (int t = 0; t < n; t++)
                for (int i = 0; i < D; i++)
                {
                    double d = x[(t * 2 + 1) * D + i] - x[t * 2 * D + i], dh = xh[(t * 2 + 1) * D + i] - xh[t * 2 * D + i];
                    errD += (d - dh) * (d - dh); totD += (d - meanD[i]) * (d - meanD[i]);
                    for (int m = 0; m < 2; m++)
                    {
                        double e = x[(t * 2 + m) * D + i] - xh[(t * 2 + m) * D + i], c = x[(t * 2 + m) * D + i] - meanP[m * D + i];
                        errP += e * e; totP += c * c;
                    }
                }
            return (1 - errD / totD, 1 - errP / totP);
        }
        var standard = Fve(0); var diffAware = Fve(-1);
        log.WriteLine($"difference FVE: standard {standard.Diff:F3}, diff-aware (λ = −1) {diffAware.Diff:F3}; activation FVE: standard {standard.Plain:F3}, diff-aware {diffAware.Plain:F3}");
        Assert.True(diffAware.Diff > standard.Diff + 0.05, $"difference FVE: diff-aware {diffAware.Diff:F3} vs standard {standard.Diff:F3}");
        Assert.True(diffAware.Plain < standard.Plain, "λ = −1 should give up reconstructing the shared activations themselves");
    }

    // For every planted exclusive feature: the best latent by joint cosine of [d^0; d^1] against [s^0·u^0; s^1·u^1].
    internal static (int[] InBlock, int[] Recovered, int[] Total) ExclusiveRecovery(SparseDictionary dict, SyntheticTruth truth, CrosscoderVariant v)
    {
        int M = dict.Models, D = dict.DModel, F = dict.DictSize;
        var inBlock = new int[M]; var rec = new int[M]; var tot = new int[M];
        foreach (int i in truth.FeaturesOf(FeatureCategory.Exclusive))
        {
            int owner = truth.Owner[i];
            tot[owner]++;
            double bestCos = double.NegativeInfinity; int best = -1;
            for (int j = 0; j < F; j++)
            {
                double dot = 0, nu = 0, nt = 0;
                for (int m = 0; m < M; m++)
                {
                    var dir = truth.Direction(m, i); float s = truth.Scale(m, i);
                    for (int k = 0; k < D; k++)
                    {
                        double u = dict.WDec[(m * F + j) * D + k], t = s * dir[k];
                        dot += u * t; nu += u * u; nt += t * t;
                    }
                }
                double cos = dot / (Math.Sqrt(nu * nt) + 1e-30);
                if (cos > bestCos) { bestCos = cos; best = j; }
            }
            if (bestCos < 0.9) continue;
            rec[owner]++;
            if (v.OwnerOf(best) == owner) inBlock[owner]++;
        }
        return (inBlock, rec, tot);
    }
}

/// <summary><c>train crosscoder</c> with the variant flags: the variant reaches the trainer (constraints hold in the saved
/// dictionary), is recorded in finetrace.json, and <c>synth score --json</c> reports the exclusive blocks.</summary>
[Collection(ProcessWide.Name)]
public sealed class CrosscoderVariantCliTests
{
    [Fact]
    public void Train_crosscoder_with_variant_flags_records_and_honours_them()
    {
        using var store = new TempDir();
        SyntheticGenerator.Make(new SyntheticSpec { DModel = 16, Features = 32, Tokens = 20_000, Seed = 2, Dtype = "f32" }, store.Path);
        using var outs = new TempDir();
        string cc = Path.Combine(outs.Path, "cc");
        Assert.Equal(0, Finetrace.Cli.Program.Main(["train", "crosscoder", "--store", store.Path, "--layer", "0", "--k", "4", "--dict-size", "64", "--batch", "256",
            "--tokens", "25600", "--threshold-start", "20", "--dedicated", "base:8,ft:6", "--designated", "4", "--diff-lambda", "-1", "--out", cc]));
        var v = CrosscoderVariant.Read(cc);
        Assert.Equal([8, 6], v.Exclusive);
        Assert.Equal((4, 1f, true, -1.0), (v.Designated, v.DesignatedPenalty, v.TieDesignatedDecoder, v.DiffLambda));
        var d = DictionaryIO.Load(cc);
        int D = d.DModel, F = d.DictSize;
        for (int j = 0; j < 8; j++) Assert.True(d.WDec.AsSpan((F + j) * D, D).ToArray().All(w => w == 0), $"base-only latent {j} writes the fine-tuned model");
        for (int j = 8; j < 14; j++) Assert.True(d.WEnc.AsSpan(j * D, D).ToArray().All(w => w == 0), $"fine-tune-only latent {j} reads the base");
        for (int j = F - 4; j < F; j++) Assert.True(d.WDec.AsSpan(j * D, D).SequenceEqual(d.WDec.AsSpan((F + j) * D, D)), $"designated latent {j} is not tied");

        var old = Console.Out; var sw = new StringWriter();
        Console.SetOut(sw);
        try { Assert.Equal(0, Finetrace.Cli.Commands.SynthScoreCommand.Run(cc, store.Path, 0.9, json: true)); }
        finally { Console.SetOut(old); }
        using var score = System.Text.Json.JsonDocument.Parse(sw.ToString().Trim().Split('\n').Last());
        var per = score.RootElement.GetProperty("exclusive_per_model").EnumerateArray().Select(e => e.GetInt32()).ToArray();
        Assert.Equal(SyntheticTruth.Load(store.Path).FeaturesOf(FeatureCategory.Exclusive).Length, per.Sum());
        Assert.Equal(2, score.RootElement.GetProperty("exclusive_in_owner_block").GetArrayLength());

        Assert.NotEqual(0, Finetrace.Cli.Program.Main(["train", "crosscoder", "--store", store.Path, "--layer", "0", "--k", "4", "--dict-size", "64",
            "--dedicated", "base:40,ft:40", "--out", Path.Combine(outs.Path, "bad")]));
    }
}

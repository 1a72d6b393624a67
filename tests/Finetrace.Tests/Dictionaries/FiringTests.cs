using Finetrace.Activations;
using Finetrace.Activations.Synthetic;
using Finetrace.Dictionaries;
using Finetrace.Tensors;
using Finetrace.Tests.Infrastructure;

namespace Finetrace.Tests.Dictionaries;

/// <summary>One definition of "fires" (Firing): training, eval and synth score agree; dead = never fired in a window.</summary>
public sealed class FiringTests
{
    [Fact]
    public void The_rule_is_f_positive_for_thresholded_kinds_and_f_times_c_above_1e4_for_relu()
    {
        Assert.True(Firing.Fires(1e-7f, null, 0));
        Assert.False(Firing.Fires(0f, null, 0));
        float[] c = [1f, 2f];
        Assert.False(Firing.Fires(0.9e-4f, c, 0));
        Assert.True(Firing.Fires(0.9e-4f, c, 1));   // f·c = 1.8e-4
        var relu = new SparseDictionary(2, 4, 3, Sparsity.Relu, CodeNormalization.Crosscoder, false);
        for (int i = 0; i < relu.WDec.Length; i++) relu.WDec[i] = 0.5f;   // ‖d_j^m‖ = 1 → c_j = Σ_m = 2
        Assert.Equal([2f, 2f, 2f], Firing.Weights(relu)!);
        Assert.Null(Firing.Weights(new SparseDictionary(2, 4, 3, Sparsity.BatchTopK, CodeNormalization.Crosscoder, false, 1)));
    }

    // ReLU crosscoder, 2 models × D → F = 2D + 1 latents: ±e_i readers plus one latent whose encoder never fires.
    static SparseDictionary WithDeadLatent(int d, float deadBias)
    {
        int f = 2 * d + 1;
        var dict = new SparseDictionary(2, d, f, Sparsity.Relu, CodeNormalization.Crosscoder, false);
        for (int m = 0; m < 2; m++)
            for (int i = 0; i < d; i++)
                for (int s = 0; s < 2; s++)
                {
                    int j = 2 * i + s;
                    dict.WEnc[((long)m * f + j) * d + i] = s == 0 ? 0.5f : -0.5f;
                    dict.WDec[((long)m * f + j) * d + i] = s == 0 ? 1 : -1;
                }
        for (int m = 0; m < 2; m++) dict.WDec[((long)m * f + 2 * d) * d] = 1;   // a real decoder direction, but the latent never fires
        dict.BEnc[2 * d] = deadBias;
        return dict;
    }

    [Fact]
    public void L1_training_counts_dead_latents()
    {
        // Defect 5: dead tracking ran only for the TopK family, so L1 crosscoders always logged dead_fraction 0.
        int d = 4, B = 32;
        var dict = WithDeadLatent(d, -100f);
        var tr = new DictionaryTrainer(dict, new TrainerOptions { Lr = 1e-4, WarmupSteps = 0, SparsityCoef = 0.01f, ClipNorm = null, DeadTokens = 2 * B, GeometricMedianInit = false });
        var r = new SplitMix64(3);
        var x = new float[B * 2 * d];
        StepStats st = null!;
        for (int s = 0; s < 3; s++) { for (int i = 0; i < x.Length; i++) x[i] = (float)r.Normal(); st = tr.Step(x); }
        Assert.Equal(1, st.Dead);
        Assert.Equal(1.0 / dict.DictSize, st.DeadFraction, 12);
        Assert.Equal(3 * B, tr.TokensSinceFired[2 * d]);
        Assert.All(Enumerable.Range(0, 2 * d), j => Assert.True(tr.TokensSinceFired[j] < B, $"latent {j} fires on Gaussian rows"));
    }

    [Fact]
    public void Eval_counts_a_relu_latent_below_the_reported_threshold_as_dead()
    {
        int d = 4;
        var dict = WithDeadLatent(d, 0f);
        // the last latent's encoder reads +x_0 with weight 1e-6: f ≈ 1e-6·x_0 > 0 on half the tokens, but f·c ≪ 1e-4
        dict.WEnc[(2L * d) * d] = 1e-6f; dict.WEnc[((long)(2 * d + 1) + 2 * d) * d] = 0;
        var r = new SplitMix64(4);
        var x = new float[1000 * 2 * d];
        for (int i = 0; i < x.Length; i++) x[i] = (float)r.Normal();
        var rep = Evaluation.Run(dict, new ArrayBatches(x, 2, d, cycle: false), 1000);
        Assert.True(rep.Firing.IsDead(2 * d));
        Assert.Equal(1.0 / dict.DictSize, rep.DeadFraction, 12);
        Assert.Equal(1000, rep.Firing.Tokens);
    }

    [Fact]
    public void Synth_score_ignores_latents_that_never_fire()
    {
        // Defect 4: alive was decided by decoder norm, so a latent that never fires but kept a matching decoder
        // "recovered" its feature. Plant the truth exactly into the decoder, silence half the latents' encoders.
        using var dir = new TempDir();
        SyntheticGenerator.Make(new SyntheticSpec { DModel = 16, Features = 24, Tokens = 4000, Seed = 9, Dtype = "f32" }, dir.Path);
        var truth = SyntheticTruth.Load(dir.Path);
        int M = 2, D = 16, FT = truth.Features;
        var dict = new SparseDictionary(M, D, FT, Sparsity.Relu, CodeNormalization.Crosscoder, false);
        for (int i = 0; i < FT; i++)
            for (int m = 0; m < M; m++)
            {
                var dir0 = truth.Direction(m, i); float s = truth.Scale(m, i);
                for (int k = 0; k < D; k++) { dict.WDec[((long)m * FT + i) * D + k] = s * dir0[k]; dict.WEnc[((long)m * FT + i) * D + k] = dir0[k]; }
            }
        var silent = Enumerable.Range(0, FT).Where(i => i % 2 == 1).ToArray();
        foreach (int i in silent) dict.BEnc[i] = -1e6f;
        using var st = ActivationStore.Open(dir.Path);
        var s1 = SyntheticScoring.Score(dict, truth, st);
        Assert.Equal(FT - silent.Length, s1.AliveLatents);
        Assert.True(s1.Recovered <= FT - silent.Length, $"{s1.Recovered} recovered with only {FT - silent.Length} latents firing");
        Assert.Equal(4000, s1.FiringTokens);
    }
}

using Finetrace.Dictionaries;
using Finetrace.Diffing.TargetAttribution;
using Finetrace.Models;
using Finetrace.Models.Backward;
using Xunit.Abstractions;

namespace Finetrace.Tests.Diffing;

public sealed class TargetAttributionTests(ITestOutputHelper log)
{
    const int D = SyntheticPair.Hidden, F = 12, TokA = 11, TokB = 17, Planted = 5;
    static readonly int[][] Prompts = [[1, 5, 9, 3, 22], [1, 30, 2, 8], [1, 14, 14, 6, 7, 19]];

    /// <summary>A ReLU SAE of unit random directions, except latent <see cref="Planted"/>, whose decoder direction is
    /// γ ⊙ (u_a − u_b) (final-norm weight times the unembedding difference): the direction that raises z_a − z_b
    /// through the last layer's output. Encoder = decoderᵀ with a positive bias, so every latent fires.</summary>
    static SparseDictionary Sae(Dictionary<string, float[]> w, int seed)
    {
        var d = new SparseDictionary(1, D, F, Sparsity.Relu, CodeNormalization.Sae, subtractDecoderBias: true);
        var rng = new Random(seed);
        for (int j = 0; j < F; j++)
        {
            var row = new float[D];
            for (int i = 0; i < D; i++)
                row[i] = j == Planted ? w["model.norm.weight"][i] * (w["lm_head.weight"][TokA * D + i] - w["lm_head.weight"][TokB * D + i]) : (float)(rng.NextDouble() * 2 - 1);
            float n = MathF.Sqrt(row.Sum(v => v * v));
            for (int i = 0; i < D; i++) { d.WDec[j * D + i] = row[i] / n; d.WEnc[j * D + i] = row[i] / n; }
            d.BEnc[j] = 0.5f;
        }
        return d;
    }

    [Fact]
    public void A_recorded_pruning_applies_to_the_attributed_codes()
    {
        // dropping more latents per token than any token has leaves no code: nothing can be attributed, while the
        // unpruned run attributes the target to the latents
        using var models = new SyntheticPair(seed: 8);
        using var lm = CausalLM.Load(models.Base);
        var diff = new DifferentiableLM(ModelParameters.Load(models.Base));
        var dict = Sae(SyntheticPair.Read(models.Base), 3);
        var plain = TargetAttribution.Run(dict, 0, lm, diff, Prompts, new LogitTarget(TokA, TokB), new TargetAttributionOptions { Steps = 4 });
        var pruned = TargetAttribution.Run(dict, 0, lm, diff, Prompts, new LogitTarget(TokA, TokB),
            new TargetAttributionOptions { Steps = 4, Pruning = Pruning.Parse("drop-lowest:100000") });
        Assert.Contains(plain.Attribution, a => a != 0);
        Assert.All(pruned.Attribution, a => Assert.Equal(0.0, a));
    }

    [Fact]
    public void Integrated_gradients_are_complete_through_a_nonlinear_block()
    {
        using var models = new SyntheticPair(seed: 8);
        using var lm = CausalLM.Load(models.Base);
        var diff = new DifferentiableLM(ModelParameters.Load(models.Base));
        var dict = Sae(SyntheticPair.Read(models.Base), 3);
        // layer 0: the path runs through block 1 (attention and MLP), so the gradient changes along it
        var r = TargetAttribution.Run(dict, 0, lm, diff, Prompts, new LogitTarget(TokA, TokB), new TargetAttributionOptions { Steps = 64 });
        double want = r.Value - r.BaselineValue, got = r.AttributionSum;
        log.WriteLine($"r(h) {r.Value:F5}, r(baseline) {r.BaselineValue:F5}, Σ attributions {got:F5} (diff {Math.Abs(got - want):E2})");
        Assert.True(Math.Abs(want) > 1e-3, $"the latents should move the target: r − r0 = {want:E2}");
        Assert.True(Math.Abs(got - want) < 1e-2 * Math.Abs(want) + 1e-5, $"Σ A = {got:F6} vs r − r0 = {want:F6}");
        // the value is the model's own: a plain forward of the full model
        var logits = lm.Forward(Finetrace.Models.TokenBatch.RightPadded(Prompts)).Logits!.Data;
        int T = Prompts.Max(p => p.Length), V = SyntheticPair.Vocab;
        double direct = Prompts.Select((p, b) => (double)logits[(b * T + p.Length - 1) * V + TokA] - logits[(b * T + p.Length - 1) * V + TokB]).Average();
        Assert.Equal(direct, r.Value, 1e-4);
    }

    [Fact]
    public void The_latent_writing_the_unembedding_difference_ranks_first_and_steering_by_it_raises_the_target()
    {
        using var models = new SyntheticPair(seed: 8);
        using var lm = CausalLM.Load(models.Base);
        var diff = new DifferentiableLM(ModelParameters.Load(models.Base));
        var dict = Sae(SyntheticPair.Read(models.Base), 4);
        int last = SyntheticPair.Layers - 1;
        var r = TargetAttribution.Run(dict, last, lm, diff, Prompts, new LogitTarget(TokA, TokB), new TargetAttributionOptions { Steps = 16 });
        var ranked = Enumerable.Range(0, F).OrderByDescending(j => r.Attribution[j]).ToArray();
        log.WriteLine("attributions: " + string.Join(", ", ranked.Select(j => $"{j}:{r.Attribution[j]:F4}")));
        log.WriteLine($"steer latent {r.SteerLatent} by {r.SteerScale:F3}: {r.Value:F4} → {r.SteeredValue:F4}");
        Assert.Equal(Planted, ranked[0]);
        Assert.Equal(Planted, r.SteerLatent);
        Assert.True(r.SteerDelta > 0.1, $"steering by the planted latent changed the target by {r.SteerDelta:F4}");
        // and steering by it with the opposite sign lowers it
        var neg = TargetAttribution.Run(dict, last, lm, diff, Prompts, new LogitTarget(TokA, TokB), new TargetAttributionOptions { Steps = 1, SteerLatent = Planted, SteerScale = -r.SteerScale });
        Assert.True(neg.SteerDelta < -0.1, $"negative steering changed the target by {neg.SteerDelta:F4}");
    }
}

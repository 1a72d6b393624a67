using Finetrace.Diffing.Adl;
using Finetrace.Models;
using Finetrace.Models.Safetensors;
using Finetrace.Tensors;
using Finetrace.Tests.Infrastructure;
using Finetrace.Text.Datasets;

namespace Finetrace.Tests.Diffing;

/// <summary>The Activation Difference Lens against direct computations on a planted synthetic fine-tune (<see cref="AdlSynthetic"/>).</summary>
[Collection(ProcessWide.Name)]
public sealed class AdlTests
{
    static AdlOptions Options(AdlSynthetic s, IReadOnlyList<DataSourceSpec> data, int[] layers) => new()
    {
        BaseModel = s.BaseDir, FineTunedModel = s.FtDir, Data = data, Layers = layers,
        MaxSamples = 150, BatchSize = 16, NormSamples = 40, NormContext = 20,
        SteeringStrengths = [0.5, 4], SteeringSamples = 1, SteeringNewTokens = 6,
        SteeringPrompts = ["abc", "hello"], Steer = SteerModels.FineTuned | SteerModels.Base,
    };

    static List<EncodedSample> Samples(AdlOptions o) =>
        new SampleStream(o.Data, new AdlSynthetic.Encoder(), o.ContextLength).Read().ToList();

    /// <summary>The residual after block <paramref name="layer"/> of one whole sample, run alone [T, D].</summary>
    static float[] Residual(CausalLM m, int[] ids, int layer)
    {
        var store = new Dictionary<string, Tensor>();
        m.Forward(new TokenBatch(ids, 1, ids.Length), new HookSet().Capture(HookNames.ResidPost(layer), store));
        return store[HookNames.ResidPost(layer)].Data;
    }

    static double MaxAbs(float[] a, float[] b) => a.Zip(b, (x, y) => (double)Math.Abs(x - y)).Max();

    [Fact]
    public void Means_norms_and_tokens_equal_a_direct_computation_and_the_planted_vector_comes_out_as_delta()
    {
        using var s = new AdlSynthetic();
        var o = Options(s, [DataSourceSpec.Parse(s.WriteText(200, seed: 1)), DataSourceSpec.Parse("chat:" + s.WriteChat(120, seed: 2))], [0, AdlSynthetic.Planted]);
        o = o with { Patchscope = false, Steer = SteerModels.None };
        using var bm = CausalLM.Load(s.BaseDir);
        using var fm = CausalLM.Load(s.FtDir);
        var r = ActivationDifferenceLens.Compute(o, bm, fm, AdlSynthetic.Text);
        Assert.Equal(150, r.TextSamples);
        Assert.Equal(120, r.ChatSamples);
        Assert.Equal(2 * (5 + 8), r.Entries.Count);

        // Direct: every used sample run whole and alone, residuals averaged at the positions.
        var samples = Samples(o);
        var text = samples.Where(x => x.Roles is null && x.Ids.Length > 4).Take(150).ToList();
        var chat = samples.Where(x => x.Roles is not null).ToList();
        var normSamples = samples.Where(x => x.Roles is null ? x.Ids.Length > 4 : true).Take(o.NormSamples).ToList();
        foreach (int layer in o.Layers)
        {
            var bRes = samples.ToDictionary(x => x, x => Residual(bm, x.Ids, layer));
            var fRes = samples.ToDictionary(x => x, x => Residual(fm, x.Ids, layer));
            int d = AdlSynthetic.Hidden;
            foreach (var e in r.Entries.Where(e => e.Layer == layer))
            {
                var rows = e.Context == AdlSlot.Text
                    ? text.Select(x => (x, Pos: e.Position)).ToList()
                    : chat.Select(x => (x, Pos: Array.IndexOf(x.Roles!, Finetrace.Text.Chat.TokenRole.Assistant) + e.Position)).ToList();
                Assert.Equal(rows.Count, e.Count);
                var wantBase = new float[d];
                var wantFt = new float[d];
                foreach (var (x, pos) in rows)
                    for (int j = 0; j < d; j++) { wantBase[j] += bRes[x][pos * d + j] / rows.Count; wantFt[j] += fRes[x][pos * d + j] / rows.Count; }
                Assert.True(MaxAbs(wantBase, e.BaseMean) < 1e-4, $"base mean layer {layer} {e.Context} {e.Position}: max abs diff {MaxAbs(wantBase, e.BaseMean)}");
                Assert.True(MaxAbs(wantFt, e.FtMean) < 1e-4, $"ft mean layer {layer} {e.Context} {e.Position}: max abs diff {MaxAbs(wantFt, e.FtMean)}");
                // The planted vector is exactly the difference after its block, and nothing differs before it.
                var planted = layer == AdlSynthetic.Planted ? s.U : new float[d];
                Assert.True(MaxAbs(planted, e.Delta) < 1e-4, $"δ layer {layer} {e.Context} {e.Position}: max abs diff from the planted vector {MaxAbs(planted, e.Delta)}");
                var mostCommon = rows.GroupBy(t => t.x.Ids[t.Pos]).OrderByDescending(g => g.Count()).ThenBy(g => g.Key).First().Key;
                Assert.Equal(mostCommon, e.TokenId);
            }
            if (e0(r, AdlSlot.AssistantStart, -1) is { } tpl) Assert.Equal(AdlSynthetic.Template[2], tpl.TokenId);
            // Typical norms: mean ‖h‖ over positions ≥ 5 of the first NormSamples samples, cut to NormContext tokens.
            double nb = 0, nf = 0; long n = 0;
            foreach (var x in normSamples)
                for (int t = o.NormSkip; t < Math.Min(x.Ids.Length, o.NormContext); t++)
                {
                    nb += System.Numerics.Tensors.TensorPrimitives.Norm(bRes[x].AsSpan(t * d, d));
                    nf += System.Numerics.Tensors.TensorPrimitives.Norm(fRes[x].AsSpan(t * d, d));
                    n++;
                }
            var norms = r.Norms.Single(x => x.Layer == layer);
            Assert.Equal(n, norms.Tokens);
            Assert.Equal(nb / n, norms.Base, 4);
            Assert.Equal(nf / n, norms.FineTuned, 4);
        }

        static AdlEntry? e0(AdlResult r, string ctx, int pos) => r.Entries.FirstOrDefault(e => e.Context == ctx && e.Position == pos);
    }

    [Fact]
    public void Logit_lens_equals_a_direct_softmax_and_ranks_the_promoted_tokens_first()
    {
        using var s = new AdlSynthetic();
        var o = Options(s, [DataSourceSpec.Parse(s.WriteText(60, seed: 3))], [AdlSynthetic.Planted]) with { Patchscope = false, Steer = SteerModels.None, MaxSamples = 50 };
        using var bm = CausalLM.Load(s.BaseDir);
        using var fm = CausalLM.Load(s.FtDir);
        var r = ActivationDifferenceLens.Compute(o, bm, fm, AdlSynthetic.Text);
        using var f = new SafetensorsFile(Path.Combine(s.FtDir, "model.safetensors"));
        var w = f.ReadF32("lm_head.weight").Data;
        var g = f.ReadF32("model.norm.weight").Data;
        foreach (var e in r.Entries)
        {
            foreach (var (v, got) in new[] { (e.Delta, e.FineTunedLens.Top), (e.Delta.Select(x => -x).ToArray(), e.FineTunedLens.Bottom) })
            {
                // RMSNorm then W_U, by hand in double
                double ms = v.Sum(x => (double)x * x) / v.Length;
                var xn = v.Select((x, j) => x / Math.Sqrt(ms + 1e-5) * g[j]).ToArray();
                var logits = Enumerable.Range(0, AdlSynthetic.Vocab).Select(t => Enumerable.Range(0, AdlSynthetic.Hidden).Sum(j => w[t * AdlSynthetic.Hidden + j] * xn[j])).ToArray();
                double max = logits.Max(), z = logits.Sum(l => Math.Exp(l - max));
                var p = logits.Select(l => Math.Exp(l - max) / z).ToArray();
                Assert.Equal(Math.Min(100, AdlSynthetic.Vocab), got.Count);
                foreach (var t in got) Assert.True(Math.Abs(p[t.Id] - t.Prob) < 1e-5, $"token {t.Id}: direct {p[t.Id]}, lens {t.Prob}");
                for (int i = 1; i < got.Count; i++) Assert.True(got[i - 1].Prob >= got[i].Prob);
                Assert.Equal(AdlSynthetic.Decode([got[0].Id]), got[0].Token);
            }
            Assert.Equal(AdlSynthetic.Promoted.Order(), e.FineTunedLens.Top.Take(3).Select(t => t.Id).Order());
            Assert.DoesNotContain(e.FineTunedLens.Bottom.Take(10), t => AdlSynthetic.Promoted.Contains(t.Id));
        }
    }

    [Fact]
    public void Patchscope_equals_a_direct_patched_forward_and_reads_the_promoted_tokens()
    {
        using var s = new AdlSynthetic();
        using var fm = CausalLM.Load(s.FtDir);
        var prompts = new[] { "mananman", "bearbear", "qq" }.Select(AdlSynthetic.Encode).ToList();
        var v = ActivationDifferenceLens.Rescale(s.U, 3.0);
        double[] scales = [0.5, 1, 2, 10];
        var ps = AdlReaders.Patchscope(fm, AdlSynthetic.Planted, v, prompts, scales, 16_384, 0.9, id => AdlSynthetic.Decode([id]));
        Assert.Equal(scales, ps.Sweep.Select(x => x.Scale));
        for (int k = 0; k < scales.Length; k++)
        {
            // Direct: each prompt alone, its last residual after the planted block replaced by s · v.
            var avg = new double[AdlSynthetic.Vocab];
            foreach (var ids in prompts)
            {
                var patch = new Tensor(1, AdlSynthetic.Hidden);
                for (int j = 0; j < v.Length; j++) patch.Data[j] = (float)scales[k] * v[j];
                var (_, logits) = fm.Forward(new TokenBatch(ids, 1, ids.Length), new HookSet().Replace(HookNames.ResidPost(AdlSynthetic.Planted), [(0, ids.Length - 1)], patch));
                var p = AdlReaders.Softmax(logits!.Data.AsSpan((ids.Length - 1) * AdlSynthetic.Vocab, AdlSynthetic.Vocab));
                for (int t = 0; t < p.Length; t++) avg[t] += p[t] / prompts.Count;
            }
            var want = AdlReaders.TopIndices(avg, 20);
            Assert.Equal(want, ps.Sweep[k].Tokens.Select(t => t.Id));
            foreach (var t in ps.Sweep[k].Tokens) Assert.True(Math.Abs(avg[t.Id] - t.Prob) < 1e-6, $"scale {scales[k]} token {t.Id}: {avg[t.Id]} vs {t.Prob}");
        }
        // The patch replaces the last residual of the model, so every scale reads v's own tokens.
        Assert.Equal(AdlSynthetic.Promoted.Order(), ps.Tokens.Take(3).Select(t => t.Id).Order());
        Assert.Contains(ps.Scale, scales);
        var best = ps.Sweep.Max(x => x.Score);
        Assert.Equal(ps.Sweep.Where(x => x.Score >= 0.9 * best - 1e-12).Min(x => x.Scale), ps.Scale);
    }

    [Fact]
    public void Steering_with_the_planted_direction_raises_the_promoted_tokens()
    {
        using var s = new AdlSynthetic();
        using var bm = CausalLM.Load(s.BaseDir);
        var ids = AdlSynthetic.Encode("hello");
        double PromotedMass(HookSet? hooks)
        {
            var (_, logits) = bm.Forward(new TokenBatch(ids, 1, ids.Length), hooks);
            var p = AdlReaders.Softmax(logits!.Data.AsSpan((ids.Length - 1) * AdlSynthetic.Vocab, AdlSynthetic.Vocab));
            return AdlSynthetic.Promoted.Sum(t => p[t]);
        }
        double before = PromotedMass(null);
        double weak = PromotedMass(AdlReaders.SteeringHooks(AdlSynthetic.Planted, s.U, 1f));
        double strong = PromotedMass(AdlReaders.SteeringHooks(AdlSynthetic.Planted, s.U, 4f));
        Assert.True(weak > before && strong > weak, $"promoted mass {before} → {weak} → {strong}");

        var prompts = new[] { "abc", "hello" }.Select(x => (x, AdlSynthetic.Encode(x))).ToList();
        var r = AdlReaders.Steer(bm, "base", bm, "base", AdlSynthetic.Planted, s.U, 8.0, [0.5, 4], prompts, 2, 6, 0f, 0, [AdlSynthetic.Eos], 2.0, AdlSynthetic.Decode);
        int Count(IEnumerable<SteeringSample> xs) => xs.Sum(x => x.Ids.Count(AdlSynthetic.Promoted.Contains));
        Assert.Equal(0, Count(r.Unsteered));
        Assert.True(Count(r.Sweep[1].Samples) == 2 * 2 * 6, $"strength 4: {Count(r.Sweep[1].Samples)} promoted tokens of {2 * 2 * 6}");
        Assert.Equal(4, r.Unsteered.Count);
        // The rule: the largest strength whose loss ratio under the judge is ≤ 2, else the smallest.
        var pass = r.Sweep.Where(l => l.LossRatio <= 2).ToList();
        Assert.Equal(pass.Count > 0, r.RuleMet);
        Assert.Equal(pass.Count > 0 ? pass.Max(l => l.Strength) : 0.5, r.Strength);
    }

    [Fact]
    public void Compute_with_readers_steers_both_models_and_keeps_the_sweeps()
    {
        using var s = new AdlSynthetic();
        var o = Options(s, [DataSourceSpec.Parse(s.WriteText(60, seed: 4))], [AdlSynthetic.Planted]) with { MaxSamples = 40, PatchscopeScales = [1, 10] };
        using var bm = CausalLM.Load(s.BaseDir);
        using var fm = CausalLM.Load(s.FtDir);
        var r = ActivationDifferenceLens.Compute(o, bm, fm, AdlSynthetic.Text);
        foreach (var e in r.Entries)
        {
            Assert.NotNull(e.Patchscope);
            Assert.Equal(2, e.Patchscope!.Sweep.Count);
            Assert.Equal(["finetuned", "base"], e.Steering.Select(x => x.Model));
            foreach (var st in e.Steering)
            {
                Assert.Equal([0.5, 4.0], st.Sweep.Select(l => l.Strength));
                Assert.Equal(2, st.Unsteered.Count);
                Assert.All(st.Sweep, l => Assert.Equal(2, l.Samples.Count));
            }
        }
        var json = AdlOutput.ToJson(r);
        Assert.Equal(r.Entries.Count, json.Count);
        var first = json[0]!.AsObject();
        foreach (var key in new[] { "layer", "context", "position", "token", "top_tokens", "bottom_tokens", "patchscope", "steering" })
            Assert.True(first.ContainsKey(key), key);
        Assert.Equal(20, first["top_tokens"]!.AsArray().Count);
    }

    [Fact]
    public void Projection_ablation_matches_direct_losses_and_patching_the_planted_direction_to_base_gives_the_base_loss()
    {
        using var s = new AdlSynthetic();
        var o = Options(s, [DataSourceSpec.Parse(s.WriteText(30, seed: 5))], [AdlSynthetic.Planted]);
        using var bm = CausalLM.Load(s.BaseDir);
        using var fm = CausalLM.Load(s.FtDir);
        var ab = ProjectionAblation.Run(o, bm, fm, new AdlSynthetic.Encoder(), AdlSynthetic.Planted, AdlSlot.Text, 2, s.U, controls: 3, samples: 20, contextLength: 24, batchSize: 8, seed: 0);
        var samples = Samples(o).Take(20).Select(x => x.Ids.Length > 24 ? x.Ids[..24] : x.Ids).ToList();
        var unit = ActivationDifferenceLens.Rescale(s.U, 1);
        (double All, double At) Direct(CausalLM m, HookSet? hooks)
        {
            double sum = 0, at = 0; long n = 0, nAt = 0;
            foreach (var ids in samples)
            {
                var (_, logits) = m.Forward(new TokenBatch(ids, 1, ids.Length), hooks);
                for (int t = 1; t < ids.Length; t++)
                {
                    var p = AdlReaders.Softmax(logits!.Data.AsSpan((t - 1) * AdlSynthetic.Vocab, AdlSynthetic.Vocab));
                    sum -= Math.Log(p[ids[t]]); n++;
                    if (t - 1 == 2) { at -= Math.Log(p[ids[t]]); nAt++; }
                }
            }
            return (sum / n, at / nAt);
        }
        var zero = new HookSet().On(HookNames.ResidPost(AdlSynthetic.Planted), (a, _) =>
        {
            for (int t = 0; t < a.Length / AdlSynthetic.Hidden; t++)
            {
                double dot = 0;
                for (int j = 0; j < AdlSynthetic.Hidden; j++) dot += a.Data[t * AdlSynthetic.Hidden + j] * unit[j];
                for (int j = 0; j < AdlSynthetic.Hidden; j++) a.Data[t * AdlSynthetic.Hidden + j] -= (float)(dot * unit[j]);
            }
        });
        var (ft, ftAt) = Direct(fm, null);
        var (bs, _) = Direct(bm, null);
        var (z, _) = Direct(fm, zero);
        Assert.Equal(ft, ab.FineTuned.Nll, 4);
        Assert.Equal(ftAt, ab.FineTuned.NllAtPosition, 4);
        Assert.Equal(bs, ab.Base.Nll, 4);
        Assert.Equal(z, ab.ZeroAblation.Nll, 4);
        // ft = base + u after the planted (last) block, so setting the component along û to the base's gives the base back.
        Assert.Equal(ab.Base.Nll, ab.PatchToBase.Nll, 4);
        Assert.NotEqual(ab.FineTuned.Nll, ab.Base.Nll, 2);
        Assert.Equal(3, ab.RandomDirections.Count);
        Assert.Equal(3, ab.RandomDiffDirections.Count);
        Assert.Equal(20, ab.Samples);
    }
}

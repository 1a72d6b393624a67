using Finetrace.Models;
using Finetrace.Tensors;
using Finetrace.Tests.Diffing;
using Finetrace.Tests.Infrastructure;

namespace Finetrace.Tests.Models;

/// <summary>Hooks that add a vector to the residual stream: in a full forward, in cached generation steps, and by position.</summary>
[Collection(ProcessWide.Name)]
public sealed class SteeringHookTests
{
    static float[] Vector(int d, int seed)
    {
        var rng = new Random(seed);
        return Enumerable.Range(0, d).Select(_ => (float)(rng.NextDouble() - 0.5)).ToArray();
    }

    [Fact]
    public void AddEverywhere_changes_every_real_token_and_leaves_padding_alone()
    {
        using var s = new AdlSynthetic();
        using var m = CausalLM.Load(s.BaseDir);
        var v = Vector(m.Hidden, 1);
        var tb = TokenBatch.RightPadded([[1, 5, 6, 7], [1, 9]]);
        var plain = new Dictionary<string, Tensor>();
        var steered = new Dictionary<string, Tensor>();
        string at = HookNames.ResidPost(0);
        m.Forward(tb, new HookSet().Capture(at, plain), stopAfterLayer: 0);
        m.Forward(tb, new HookSet().AddEverywhere(at, v, 2f).Capture(at, steered), stopAfterLayer: 0);
        int d = m.Hidden;
        for (int t = 0; t < tb.Count; t++)
            for (int j = 0; j < d; j++)
            {
                float want = plain[at].Data[t * d + j] + (tb.Mask[t] != 0 ? 2f * v[j] : 0f);
                Assert.Equal(want, steered[at].Data[t * d + j], 5);
            }
    }

    [Fact]
    public void Hooks_fire_in_cached_steps_exactly_as_in_the_full_forward()
    {
        using var s = new AdlSynthetic();
        using var m = CausalLM.Load(s.BaseDir);
        var v = Vector(m.Hidden, 2);
        int[] ids = [1, 5, 9, 12, 3, 30, 22];
        foreach (var hooks in new Func<HookSet>[]
                 {
                     () => new HookSet().AddEverywhere(HookNames.ResidPost(0), v, 3f),
                     () => new HookSet().AddAtPosition(HookNames.ResidPre(1), 4, v, 5f),
                     () => new HookSet().AddAtPosition(HookNames.ResidPre(0), 0, v, 5f),
                 })
        {
            var (_, full) = m.Forward(new TokenBatch(ids, 1, ids.Length), hooks());
            var cache = m.NewCache();
            var h = hooks();
            float[] last = m.StepWithCache(ids[..3], cache, h);
            for (int t = 3; t < ids.Length; t++)
            {
                last = m.StepWithCache([ids[t]], cache, h);
                var want = full!.Data.AsSpan(t * m.Config.Vocab, m.Config.Vocab).ToArray();
                double diff = want.Zip(last, (a, b) => (double)Math.Abs(a - b)).Max();
                Assert.True(diff < 1e-4, $"position {t}: cached vs full logits max abs diff {diff}");
            }
            // and the hook did something
            var (_, plain) = m.Forward(new TokenBatch(ids, 1, ids.Length));
            Assert.True(plain!.Data.Zip(full!.Data, (a, b) => Math.Abs(a - b)).Max() > 1e-3);
        }
    }

    [Fact]
    public void Generator_hooks_give_the_same_tokens_with_and_without_the_cache()
    {
        using var s = new AdlSynthetic();
        using var m = CausalLM.Load(s.BaseDir);
        var hooks = new HookSet().AddEverywhere(HookNames.ResidPost(1), s.U, 2f);
        int[] prompt = [1, 7, 8];
        var cached = new Generator(m) { Hooks = hooks }.Generate(prompt, 8, temperature: 1f, seed: 3);
        var uncached = new Generator(m) { Hooks = hooks, UseCache = false }.Generate(prompt, 8, temperature: 1f, seed: 3);
        var plain = new Generator(m).Generate(prompt, 8, temperature: 0f);
        var steeredGreedy = new Generator(m) { Hooks = hooks }.Generate(prompt, 8, temperature: 0f);
        Assert.Equal(uncached, cached);
        Assert.NotEqual(plain, steeredGreedy);
        Assert.All(steeredGreedy, t => Assert.Contains(t, AdlSynthetic.Promoted));
    }
}

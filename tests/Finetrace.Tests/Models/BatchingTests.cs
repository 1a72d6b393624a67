using Finetrace.Models;
using Finetrace.Tensors;
using Finetrace.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Finetrace.Tests.Models;

/// <summary>Right-padded batches with an attention mask give every real token the same values as running its
/// sequence alone; stopping after layer L and continuing in another call changes nothing; hooks edit the stream.</summary>
public sealed class BatchingTests(ITestOutputHelper log)
{
    static readonly int[][] Rows =
    [
        [2, 196, 269, 188, 244, 292, 299, 45, 48, 43, 132, 226],
        [2, 297, 98, 256, 149, 123, 141],
        [2, 297, 98],
        [5, 6, 7, 8, 9, 10, 11, 12, 13, 14],
    ];

    [SharedTheory]
    [MemberData(nameof(ArchParityTests.Folders), MemberType = typeof(ArchParityTests))]
    public void PaddedBatchEqualsOneByOne(string folder)
    {
        using var model = CausalLM.Load(Shared.Path("fixtures", "arch", folder));
        var batch = TokenBatch.RightPadded(Rows, padId: 0);
        var together = ArchParityTests.RunAll(model, batch);
        for (int b = 0; b < Rows.Length; b++)
        {
            var alone = ArchParityTests.RunAll(model, new TokenBatch(Rows[b], 1, Rows[b].Length));
            foreach (var (name, t) in alone)
            {
                int w = t.Dim(-1), n = Rows[b].Length;
                var mine = together[name].Data.AsSpan(b * batch.Seq * w, n * w);
                Golden.AssertClose($"{folder} row {b} {name}", t.Span, mine, atol: 1e-5, log: b == 1 ? log : null);
            }
        }
    }

    [SharedTheory]
    [InlineData("gemma2")]
    [InlineData("gpt2")]
    [InlineData("qwen3")]
    public void LeftPaddedBatchEqualsOneByOne(string folder)
    {
        using var model = CausalLM.Load(Shared.Path("fixtures", "arch", folder));
        int seq = Rows.Max(r => r.Length);
        var ids = new int[Rows.Length * seq];
        var mask = new byte[ids.Length];
        for (int b = 0; b < Rows.Length; b++)
            for (int t = 0; t < Rows[b].Length; t++)
            {
                int at = b * seq + seq - Rows[b].Length + t;
                ids[at] = Rows[b][t];
                mask[at] = 1;
            }
        var batch = new TokenBatch(ids, Rows.Length, seq, mask);
        var (_, together) = model.Forward(batch);
        int v = model.Config.Vocab;
        for (int b = 0; b < Rows.Length; b++)
        {
            var (_, alone) = model.Forward(new TokenBatch(Rows[b], 1, Rows[b].Length));
            int n = Rows[b].Length;
            Golden.AssertClose($"{folder} left-padded row {b}", alone!.Span, together!.Data.AsSpan((b * seq + seq - n) * v, n * v), atol: 1e-5);
        }
        var holes = new byte[] { 1, 0, 1 };
        Assert.Throws<ArgumentException>(() => new TokenBatch([1, 2, 3], 1, 3, holes));
    }

    [SharedTheory]
    [MemberData(nameof(ArchParityTests.Folders), MemberType = typeof(ArchParityTests))]
    public void CachedStepsEqualTheFullForward(string folder)
    {
        // one token at a time, then a chunk of three: the key/value cache must reproduce the full forward at every
        // position (sliding windows of 4 are crossed at these lengths)
        using var model = CausalLM.Load(Shared.Path("fixtures", "arch", folder));
        int[] ids = Rows[0];
        var (_, full) = model.Forward(new TokenBatch(ids, 1, ids.Length));
        int v = model.Config.Vocab;
        var cache = model.NewCache();
        for (int t = 0; t < 9; t++)
            Golden.AssertClose($"{folder} cached step {t}", full!.Data.AsSpan(t * v, v), model.StepWithCache([ids[t]], cache), atol: 1e-5);
        var last = model.StepWithCache(ids[9..12], cache);
        Golden.AssertClose($"{folder} cached chunk", full!.Data.AsSpan(11 * v, v), last, atol: 1e-5);
        Assert.Equal(12, cache.Tokens);
    }

    [SharedFact]
    public void StopAfterLayerThenContinueEqualsFullForward()
    {
        using var model = CausalLM.Load(Shared.Path("fixtures", "arch", "gemma2"));
        var batch = TokenBatch.RightPadded(Rows);
        var (_, full) = model.Forward(batch);
        var (h, none) = model.Forward(batch, stopAfterLayer: 0);
        Assert.Null(none);
        model.RunLayers(1, model.Layers - 1, h, batch);
        var logits = model.FinalNormAndLogits(h, batch);
        Golden.AssertClose("split forward logits", full!.Span, logits.Span, atol: 0);
    }

    [SharedFact]
    public void HooksReplaceAndAddChangeOnlyLaterPositions()
    {
        using var model = CausalLM.Load(Shared.Path("fixtures", "arch", "llama"));
        var batch = new TokenBatch(Rows[0], 1, Rows[0].Length);
        var (_, clean) = model.Forward(batch);
        int v = model.Config.Vocab;

        // add a vector at position 5 of layer 1's input: positions < 5 unchanged (causal), 5 and later changed
        var vec = Enumerable.Range(0, model.Hidden).Select(i => (float)Math.Sin(i)).ToArray();
        var (_, steered) = model.Forward(batch, new HookSet().Add(HookNames.ResidPre(1), [(0, 5)], vec, 4f));
        for (int t = 0; t < batch.Seq; t++)
        {
            double diff = Golden.MaxAbsDiff(clean!.Data.AsSpan(t * v, v), steered!.Data.AsSpan(t * v, v), out _);
            if (t < 5) Assert.Equal(0.0, diff);
            else Assert.True(diff > 1e-3, $"position {t} unchanged by the steering vector ({diff})");
        }

        // replacing the residual after layer 0 with the value it already has is a no-op
        var captured = new Dictionary<string, Tensor>();
        model.Forward(batch, new HookSet().Capture(HookNames.ResidPost(0), captured));
        var at = Enumerable.Range(0, batch.Seq).Select(t => (0, t)).ToList();
        var (_, same) = model.Forward(batch, new HookSet().Replace(HookNames.ResidPost(0), at, captured[HookNames.ResidPost(0)]));
        Golden.AssertClose("replace with itself", clean!.Span, same!.Span, atol: 0);
    }

    [SharedFact]
    public void RunLayersOfAnotherModelAfterPatching()
    {
        // layers 0..0 of llama, then layers 1.. of llama-bf16: differs from both pure models but stays close to them
        using var a = CausalLM.Load(Shared.Path("fixtures", "arch", "llama"));
        using var b = CausalLM.Load(Shared.Path("fixtures", "arch", "llama-bf16"));
        var batch = new TokenBatch(Rows[0], 1, Rows[0].Length);
        var h = a.Embed(batch);
        a.RunLayers(0, 0, h, batch);
        b.RunLayers(1, b.Layers - 1, h, batch);
        var mixed = b.FinalNormAndLogits(h, batch);
        var (_, la) = a.Forward(batch);
        var (_, lb) = b.Forward(batch);
        double da = Golden.MaxAbsDiff(la!.Span, mixed.Span, out _), db = Golden.MaxAbsDiff(lb!.Span, mixed.Span, out _);
        log.WriteLine($"mixed vs llama {da:E2}, vs llama-bf16 {db:E2}");
        Assert.True(da > 1e-5 && db > 1e-5 && da < 0.1 && db < 0.1);
    }
}

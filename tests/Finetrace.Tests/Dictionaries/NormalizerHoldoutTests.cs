using Finetrace.Activations;
using Finetrace.Dictionaries;
using Finetrace.Tests.Activations;
using Finetrace.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Finetrace.Tests.Dictionaries;

/// <summary>
/// The activation normaliser is computed from the training rows only: held-out rows (validation, eval) must not shape
/// it. A store whose held-out rows have a very different scale gives the same normaliser as the store with those rows
/// removed, through both statistics paths (the store's exact Welford statistics, and a sample of the training source).
/// </summary>
public sealed class NormalizerHoldoutTests(ITestOutputHelper log)
{
    const int Layer = 3, TrainSamples = 60, HeldOutSamples = 25;

    // Samples [0, TrainSamples) as written by StoreTestData, then (when heldOut) HeldOutSamples more whose activations
    // are ×1000 + 50: statistics that include them are far from those that do not. Shards of 40 tokens, so the
    // held-out boundary falls inside a shard.
    static ActivationStore Write(TempDir dir, bool heldOut)
    {
        var s = StoreTestData.Settings(dtype: "f32", shardTokens: 40);
        using (var w = ActivationStoreWriter.Open(dir.Path, s, 1_000_000))
        {
            for (int i = 0; i < TrainSamples; i++) w.Append(StoreTestData.Batch(s, i, 1));
            if (heldOut)
                for (int i = TrainSamples; i < TrainSamples + HeldOutSamples; i++)
                {
                    var b = StoreTestData.Batch(s, i, 1);
                    foreach (var a in b.Activations) for (int j = 0; j < a.Length; j++) a[j] = a[j] * 1000f + 50f;
                    w.Append(b);
                }
            w.Complete();
        }
        return ActivationStore.Open(dir.Path);
    }

    static long HeldOutTokens()
    {
        long n = 0;
        for (int i = TrainSamples; i < TrainSamples + HeldOutSamples; i++) n += StoreTestData.Length(i);
        return n;
    }

    void AssertSame(string what, Normalizer expected, Normalizer actual, double rtol)
    {
        Golden.AssertClose($"{what} mean", expected.Mean, actual.Mean, 1e-6, rtol, log);
        Golden.AssertClose($"{what} std", expected.Std, actual.Std, 1e-6, rtol, log);
        Golden.AssertClose($"{what} scale", expected.Scale, actual.Scale, 1e-6, rtol, log);
    }

    [Theory]
    [InlineData(DictionaryKind.Crosscoder, NormalizerStatistics.TrainingRows)]   // the store's Welford statistics, cut at the held-out rows
    [InlineData(DictionaryKind.DiffSae, NormalizerStatistics.Sample)]            // a sample of the training source
    public void Held_out_rows_do_not_shape_the_normaliser(DictionaryKind kind, NormalizerStatistics statistics)
    {
        using var withDir = new TempDir();
        using var withoutDir = new TempDir();
        using var with = Write(withDir, heldOut: true);
        using var without = Write(withoutDir, heldOut: false);
        long held = HeldOutTokens();
        Assert.Equal(without.Tokens + held, with.Tokens);

        TrainingRecipe Recipe(long holdout) => new() { Kind = kind, Layer = Layer, K = 4, DictSize = 16, Batch = 64, TargetRms = 1f, HoldoutTokens = holdout, Seed = 3 };
        using var a = Recipe(held).Prepare(with);
        using var b = Recipe(0).Prepare(without);
        Assert.Equal(without.Tokens, a.Input.HeldOutFrom);   // the held-out range is exactly the scaled rows
        Assert.Null(b.Input.HeldOutFrom);
        Assert.Equal(statistics, a.Input.NormalizerStatistics);
        Assert.Equal(statistics, b.Input.NormalizerStatistics);
        // the store path is exact (same Welford additions); the sample path sums the same rows in another order
        AssertSame("training rows", b.Dict.Normalizer!, a.Dict.Normalizer!, statistics == NormalizerStatistics.Sample ? 1e-5 : 1e-7);

        // the check can fail: statistics over every row of the scaled store are far from these
        if (kind == DictionaryKind.Crosscoder)
        {
            var whole = NormalizerStats.FromStore(with, Layer, [0, 1], 1f);
            Assert.True(whole.Std.Zip(a.Dict.Normalizer!.Std).Max(p => p.First / p.Second) > 100, "the held-out rows' scale shows in whole-store statistics");
        }
    }

    [Fact]
    public void Store_statistics_before_a_row_match_a_direct_computation()
    {
        using var dir = new TempDir();
        using var st = Write(dir, heldOut: true);
        foreach (long end in new long[] { 1, 39, 40, 41, st.Tokens - 7, st.Tokens })
            for (int m = 0; m < st.Models; m++)
            {
                var got = st.Stats(m, Layer, end);
                var x = new float[end * st.DModel];
                st.ReadRows(m, Layer, 0, (int)end, x);
                var mean = new float[st.DModel]; var var = new float[st.DModel];
                for (int d = 0; d < st.DModel; d++)
                {
                    double s = 0, q = 0;
                    for (long r = 0; r < end; r++) s += x[r * st.DModel + d];
                    double mu = s / end;
                    for (long r = 0; r < end; r++) { double e = x[r * st.DModel + d] - mu; q += e * e; }
                    mean[d] = (float)mu; var[d] = (float)(q / end);
                }
                Assert.Equal(end, got.Count);
                Golden.AssertClose($"mean rows < {end}, model {m}", mean, got.Mean, 1e-4, 1e-6);
                Golden.AssertClose($"var rows < {end}, model {m}", var, got.Var, 1e-3, 1e-6);
            }
    }
}

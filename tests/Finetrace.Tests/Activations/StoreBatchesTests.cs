using Finetrace.Activations;
using Finetrace.Tests.Infrastructure;

namespace Finetrace.Tests.Activations;

public class StoreBatchesTests
{
    const int Layer = 3;

    static ActivationStore MakeStore(TempDir tmp, int samples = 60, Func<int, int>? order = null)
    {
        var s = StoreTestData.Settings(dtype: "f32", shardTokens: 40);
        using (var w = ActivationStoreWriter.Open(tmp.Path, s, 1_000_000))
        {
            for (int i = 0; i < samples; i++)
            {
                var b = StoreTestData.Batch(s, order?.Invoke(i) ?? i, 1);
                w.Append(b);
            }
            w.Complete();
        }
        return ActivationStore.Open(tmp.Path);
    }

    /// <summary>Content of every global row ([Models, D] as a string key) → row.</summary>
    static Dictionary<string, long> RowIndex(ActivationStore store)
    {
        var map = new Dictionary<string, long>();
        var x = new float[store.Models * store.DModel];
        for (long r = 0; r < store.Tokens; r++)
        {
            for (int m = 0; m < store.Models; m++) store.ReadRows(m, Layer, r, 1, x.AsSpan(m * store.DModel, store.DModel));
            map.Add(Key(x), r);
        }
        return map;
    }

    static string Key(ReadOnlySpan<float> x) => string.Join(",", x.ToArray().Select(v => BitConverter.SingleToInt32Bits(v)));

    static List<long> ReadAll(IActivationBatches b, Dictionary<string, long> index, int rows, int batch = 13)
    {
        var result = new List<long>();
        var buf = new float[batch * b.Models * b.DModel];
        while (result.Count < rows)
        {
            int n = b.Next(buf, Math.Min(batch, rows - result.Count));
            if (n == 0) break;
            for (int i = 0; i < n; i++) result.Add(index[Key(buf.AsSpan(i * b.Models * b.DModel, b.Models * b.DModel))]);
        }
        return result;
    }

    [Fact]
    public void Sequential_EmitsStoreOrder_AndEndsWithoutCycle()
    {
        using var tmp = new TempDir();
        using var store = MakeStore(tmp);
        var index = RowIndex(store);
        using var b = StoreBatches.Paired(store, new StoreBatchOptions { Layer = Layer, Shuffle = false, MixSources = false, Cycle = false });
        Assert.Equal(2, b.Models);
        var rows = ReadAll(b, index, int.MaxValue);
        Assert.Equal(Enumerable.Range(0, (int)store.Tokens).Select(i => (long)i), rows);
        Assert.Equal(0, b.Next(new float[2 * 2 * store.DModel], 2));
    }

    [Theory]
    [InlineData(true, 32)]
    [InlineData(false, 50)]
    public void Shuffled_EpochIsAPermutation_DeterministicPerSeed(bool mix, int window)
    {
        using var tmp = new TempDir();
        using var store = MakeStore(tmp);
        var index = RowIndex(store);
        int n = (int)store.Tokens;
        StoreBatches Make(ulong seed, bool prefetch = true) => StoreBatches.Paired(store, new StoreBatchOptions { Layer = Layer, WindowTokens = window, Seed = seed, MixSources = mix, Prefetch = prefetch });
        using var a = Make(7);
        var epoch0 = ReadAll(a, index, n);
        var epoch1 = ReadAll(a, index, n);
        Assert.Equal(Enumerable.Range(0, n).Select(i => (long)i), epoch0.Order());
        Assert.Equal(Enumerable.Range(0, n).Select(i => (long)i), epoch1.Order());
        Assert.NotEqual(epoch0, epoch1);
        Assert.NotEqual(Enumerable.Range(0, n).Select(i => (long)i), epoch0);
        using var again = Make(7, prefetch: false);
        Assert.Equal(epoch0.Concat(epoch1), ReadAll(again, index, 2 * n, batch: 29));
        using var other = Make(8);
        Assert.NotEqual(epoch0, ReadAll(other, index, n));
        // Local shuffling: window k only holds rows from around k·W in store order (one source stream here).
        if (!mix)
            for (int i = 0; i < n; i++) Assert.InRange(epoch0[i] / window, i / window, i / window);
    }

    [Fact]
    public void SeekToPosition_ContinuesExactly_AcrossEpochs()
    {
        using var tmp = new TempDir();
        using var store = MakeStore(tmp);
        var index = RowIndex(store);
        var o = new StoreBatchOptions { Layer = Layer, WindowTokens = 37, Seed = 3 };
        using var a = StoreBatches.Paired(store, o);
        ReadAll(a, index, (int)store.Tokens - 20);
        long pos = a.Position;
        var rest = ReadAll(a, index, 70);
        using var b = StoreBatches.Paired(store, o);
        b.Seek(pos);
        Assert.Equal(pos, b.Position);
        Assert.Equal(rest, ReadAll(b, index, 70, batch: 5));
    }

    [Fact]
    public void Difference_IsFineTunedMinusBase()
    {
        using var tmp = new TempDir();
        using var store = MakeStore(tmp, samples: 20);
        var o = new StoreBatchOptions { Layer = Layer, WindowTokens = 16, Seed = 1 };
        using var paired = StoreBatches.Paired(store, o);
        using var diff = StoreBatches.Difference(store, o);
        Assert.Equal(1, diff.Models);
        int d = store.DModel, rows = 50;
        var p = new float[rows * 2 * d];
        var x = new float[rows * d];
        Assert.Equal(rows, paired.Next(p, rows));
        Assert.Equal(rows, diff.Next(x, rows));
        var expect = new float[rows * d];
        for (int r = 0; r < rows; r++)
            for (int j = 0; j < d; j++) expect[r * d + j] = p[(r * 2 + 1) * d + j] - p[(r * 2) * d + j];
        Golden.AssertClose("ft - base", expect, x, 0);
    }

    [Fact]
    public void MaskFilter_KeepsOnlyAssistantTokens()
    {
        using var tmp = new TempDir();
        using var store = MakeStore(tmp);
        var index = RowIndex(store);
        var assistant = Enumerable.Range(0, (int)store.Tokens).Where(r => store.Mask(r) == (byte)TokenMask.Assistant).Select(r => (long)r).ToList();
        Assert.NotEmpty(assistant);
        using var b = StoreBatches.Paired(store, new StoreBatchOptions { Layer = Layer, Filter = MaskFilter.Parse("assistant"), WindowTokens = 20, Cycle = false });
        Assert.Equal(assistant.Count, b.RowsPerEpoch);
        Assert.Equal(assistant, ReadAll(b, index, int.MaxValue).Order());
    }

    [Fact]
    public void SourceMixing_GivesEachWindowItsProportionalShare()
    {
        using var tmp = new TempDir();
        // All source-0 samples first (even sample ids), then source 1: sequential reading would not mix them.
        using var store = MakeStore(tmp, samples: 60, order: i => i < 30 ? 2 * i : 2 * (i - 30) + 1);
        var index = RowIndex(store);
        var src = store.Manifest.SourceTokens();
        long n = store.Tokens;
        int w = 40;
        using var b = StoreBatches.Paired(store, new StoreBatchOptions { Layer = Layer, WindowTokens = w, Seed = 5, Cycle = false });
        var rows = ReadAll(b, index, int.MaxValue);
        Assert.Equal(n, rows.Count);
        for (int k = 0; k * w < n - w; k++)
        {
            int ones = rows.Skip(k * w).Take(w).Count(r => store.Source(r) == 1);
            Assert.InRange(ones, (double)w * src[1] / n - 1.5, (double)w * src[1] / n + 1.5);
        }
    }

    [Fact]
    public void RandomSubset_DistinctRowsInStoreOrder_MatchStoreValues()
    {
        using var tmp = new TempDir();
        using var store = MakeStore(tmp);
        var index = RowIndex(store);
        var filter = MaskFilter.Parse("!bos");
        var a = new RandomSubsetBatches(store, Layer, 50, seed: 11, filter);
        var b = new RandomSubsetBatches(store, Layer, 50, seed: 11, filter);
        var c = new RandomSubsetBatches(store, Layer, 50, seed: 12, filter);
        Assert.Equal(a.Rows, b.Rows);
        Assert.NotEqual(a.Rows, c.Rows);
        Assert.Equal(50, a.Rows.Distinct().Count());
        Assert.Equal(a.Rows.Order(), a.Rows);
        Assert.All(a.Rows, r => Assert.NotEqual((byte)TokenMask.Bos, store.Mask(r)));
        Assert.Equal(a.Rows, ReadAll(a, index, int.MaxValue, batch: 7));
        var all = new RandomSubsetBatches(store, Layer, int.MaxValue, seed: 1);
        Assert.Equal(store.Tokens, all.Count);
    }
}

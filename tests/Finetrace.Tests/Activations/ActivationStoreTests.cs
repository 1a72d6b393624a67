using Finetrace.Activations;
using Finetrace.Tensors;
using Finetrace.Tests.Infrastructure;

namespace Finetrace.Tests.Activations;

public class ActivationStoreTests
{
    [Theory]
    [InlineData("bf16")]
    [InlineData("f32")]
    public void RoundTrip_RowsTokensMasksAndSequences(string dtype)
    {
        using var tmp = new TempDir();
        var s = StoreTestData.Settings(layers: [2, 5], dtype: dtype);
        StoreTestData.Write(tmp.Path, s, samples: 40, batch: 7);

        using var store = ActivationStore.Open(tmp.Path);
        int total = StoreTestData.TotalTokens(40);
        Assert.Equal(total, store.Tokens);
        Assert.Equal(40, store.Manifest.Sequences);
        Assert.True(store.Manifest.Complete);
        Assert.True(store.Shards.Count > 3);
        // Every shard but the last reached the shard size; all end at a sequence boundary.
        foreach (var sh in store.Shards.Take(store.Shards.Count - 1)) Assert.True(sh.Rows >= s.ShardTokens);

        var row = new float[s.DModel];
        long r = 0;
        for (int i = 0; i < 40; i++)
            for (int p = 0; p < StoreTestData.Length(i); p++, r++)
            {
                Assert.Equal((i * 31 + p) % 500, store.TokenId(r));
                Assert.Equal(p, store.Position(r));
                Assert.Equal(StoreTestData.SourceOf(i, 2), store.Source(r));
                Assert.Equal(p == 0 ? (byte)TokenMask.Bos : (byte)(p % 3 == 0 ? TokenMask.Assistant : TokenMask.User), store.Mask(r));
                for (int m = 0; m < 2; m++)
                    foreach (int layer in s.Layers)
                    {
                        store.ReadRows(m, layer, r, 1, row);
                        for (int d = 0; d < s.DModel; d++)
                        {
                            float v = StoreTestData.Value(i, p, m, layer, d);
                            float expect = dtype == "bf16" ? Precision.BF16ToF32(Precision.F32ToBF16(v)) : v;
                            Assert.Equal(expect, row[d]);
                        }
                    }
            }
        var ranges = store.SequenceRanges();
        Assert.Equal(41, ranges.Length);
        Assert.Equal(0, ranges[0]);
        Assert.Equal(total, ranges[^1]);
        Assert.Equal(StoreTestData.Length(5), ranges[6] - ranges[5]);
        var perSource = store.Manifest.SourceTokens();
        Assert.Equal(Enumerable.Range(0, 40).Where(i => i % 2 == 1).Sum(StoreTestData.Length), perSource[1]);
    }

    [Fact]
    public void ReadRows_SpanningShards_EqualsRowByRow()
    {
        using var tmp = new TempDir();
        var s = StoreTestData.Settings();
        StoreTestData.Write(tmp.Path, s, samples: 30, batch: 4);
        using var store = ActivationStore.Open(tmp.Path);
        int n = (int)store.Tokens;
        var all = new float[n * s.DModel];
        store.ReadRows(1, 3, 0, n, all);
        var one = new float[s.DModel];
        for (int r = 0; r < n; r++)
        {
            store.ReadRows(1, 3, r, 1, one);
            Assert.True(one.AsSpan().SequenceEqual(all.AsSpan(r * s.DModel, s.DModel)), $"row {r}");
        }
    }

    [Fact]
    public void Stats_EqualTwoPassFloat64OverStoredValues()
    {
        using var tmp = new TempDir();
        var s = StoreTestData.Settings(d: 5);
        StoreTestData.Write(tmp.Path, s, samples: 33, batch: 5);
        using var store = ActivationStore.Open(tmp.Path);
        int n = (int)store.Tokens, d = s.DModel;
        for (int m = 0; m < 2; m++)
        {
            var x = new float[n * d];
            store.ReadRows(m, 3, 0, n, x);
            var stats = store.Stats(m, 3);
            Assert.Equal(n, stats.Count);
            for (int j = 0; j < d; j++)
            {
                double mean = 0; for (int r = 0; r < n; r++) mean += x[r * d + j]; mean /= n;
                double v = 0; for (int r = 0; r < n; r++) v += (x[r * d + j] - mean) * (x[r * d + j] - mean); v /= n;
                Assert.True(Math.Abs(mean - stats.State.Mean[j]) < 1e-12, $"mean[{j}] {stats.State.Mean[j]} vs {mean}");
                Assert.True(Math.Abs(v - stats.State.PopulationVariance()[j]) < 1e-11, $"var[{j}] {stats.State.PopulationVariance()[j]} vs {v}");
            }
        }
    }

    [Fact]
    public void Stats_DoNotDependOnBatching()
    {
        using var a = new TempDir();
        using var b = new TempDir();
        var s = StoreTestData.Settings();
        StoreTestData.Write(a.Path, s, 25, batch: 1);
        StoreTestData.Write(b.Path, s, 25, batch: 9);
        AssertSameFiles(a.Path, b.Path);
    }

    [Theory]
    [InlineData(1, 3)]
    [InlineData(3, 4)]
    public void CrashAfterKShards_ThenResume_IsByteIdentical(int crashAfterShards, int resumeBatch)
    {
        using var full = new TempDir();
        using var crashed = new TempDir();
        var s = StoreTestData.Settings(layers: [1, 4]);
        StoreTestData.Write(full.Path, s, samples: 60, batch: 5);

        // Crash: stop in the middle of shard k+1 without completing (files are left as a killed process leaves them).
        var w = ActivationStoreWriter.Open(crashed.Path, s, 1_000_000);
        int i = 0;
        while (w.Manifest.Shards.Count < crashAfterShards || w.Tokens == w.Manifest.Tokens) { w.Append(StoreTestData.Batch(s, i, 2)); i += 2; }
        w.Dispose();
        Assert.True(Directory.Exists(Path.Combine(crashed.Path, $"shard_{crashAfterShards:D5}.tmp")));
        // A complete shard renamed just before the crash but missing from the manifest is discarded too.
        Directory.CreateDirectory(Path.Combine(crashed.Path, $"shard_{crashAfterShards + 1:D5}"));

        using (var r = ActivationStoreWriter.Open(crashed.Path, s, 1_000_000))
        {
            Assert.Equal(crashAfterShards, r.Manifest.Shards.Count);
            Assert.True(r.ResumeSequences > 0);
            for (int k = (int)r.ResumeSequences; k < 60; k += resumeBatch) r.Append(StoreTestData.Batch(s, k, Math.Min(resumeBatch, 60 - k)));
            r.Complete();
        }
        AssertSameFiles(full.Path, crashed.Path);
    }

    [Fact]
    public void Resume_WithDifferentSettings_ListsTheDifferences()
    {
        using var tmp = new TempDir();
        var s = StoreTestData.Settings();
        using (var w = ActivationStoreWriter.Open(tmp.Path, s, 1000)) { w.Append(StoreTestData.Batch(s, 0, 3)); w.Complete(); }
        var other = StoreTestData.Settings(layers: [4], dtype: "f32");
        other.Options["drop_bos"] = "true";
        var e = Assert.Throws<StoreSettingsMismatchException>(() => ActivationStoreWriter.Open(tmp.Path, other, 1000));
        Assert.Contains(e.Differences, x => x.StartsWith("layers"));
        Assert.Contains(e.Differences, x => x.StartsWith("dtype"));
        Assert.Contains(e.Differences, x => x.StartsWith("options.drop_bos"));
        Assert.Equal(3, e.Differences.Count);
        Assert.Contains("refusing to mix", e.Message);
    }

    [Fact]
    public void AStoreThatHoldsNoTokenIsReplacedByARunWithOtherSettings()
    {
        // A harvest that failed before its first batch (e.g. on mismatched vocabularies) left a manifest and nothing
        // else: the corrected command must not be refused as "different settings".
        using var tmp = new TempDir();
        var s = StoreTestData.Settings();
        using (var w = ActivationStoreWriter.Open(tmp.Path, s, 1000)) { }
        Assert.True(File.Exists(Path.Combine(tmp.Path, ActivationStoreWriter.ManifestFile)));
        var other = StoreTestData.Settings(layers: [4], dtype: "f32");
        using (var w = ActivationStoreWriter.Open(tmp.Path, other, 1000))
        {
            Assert.Equal([4], w.Settings.Layers);
            w.Append(StoreTestData.Batch(other, 0, 3));
            w.Complete();
        }
        using var store = ActivationStore.Open(tmp.Path);
        Assert.Equal([4], store.Manifest.Settings.Layers);
        Assert.True(store.Tokens > 0);
        // …but once it holds tokens, other settings are refused again.
        Assert.Throws<StoreSettingsMismatchException>(() => ActivationStoreWriter.Open(tmp.Path, s, 1000));
    }

    [Fact]
    public void RefusesWhenTheDiskCannotHoldTheEstimate()
    {
        using var tmp = new TempDir();
        var s = StoreTestData.Settings(d: 4096);
        var e = Assert.Throws<StoreDiskSpaceException>(() => ActivationStoreWriter.Open(Path.Combine(tmp.Path, "s"), s, 1L << 40));
        Assert.Contains("not enough free disk space", e.Message);
        Assert.Contains("bytes/token", e.Message);
        Assert.False(File.Exists(Path.Combine(tmp.Path, "s", "manifest.json")));
    }

    [Fact]
    public void RefusesANonEmptyFolderWithoutManifest()
    {
        using var tmp = new TempDir();
        File.WriteAllText(tmp.File("notes.txt"), "x");
        var e = Assert.Throws<IOException>(() => ActivationStoreWriter.Open(tmp.Path, StoreTestData.Settings(), 100));
        Assert.Contains("not empty", e.Message);
    }

    [Fact]
    public void DamagedShard_IsReportedWithTheFile()
    {
        using var tmp = new TempDir();
        var s = StoreTestData.Settings();
        StoreTestData.Write(tmp.Path, s, 20, 4);
        string f = Path.Combine(tmp.Path, "shard_00000", "m1.l3.bf16");
        File.WriteAllBytes(f, File.ReadAllBytes(f)[..^2]);
        using var store = ActivationStore.Open(tmp.Path);
        var e = Assert.Throws<InvalidDataException>(() => store.ReadRows(1, 3, 0, 1, new float[s.DModel]));
        Assert.Contains("m1.l3.bf16", e.Message);
    }

    internal static void AssertSameFiles(string a, string b)
    {
        var fa = Directory.GetFiles(a, "*", SearchOption.AllDirectories).Select(p => Path.GetRelativePath(a, p)).Order(StringComparer.Ordinal).ToArray();
        var fb = Directory.GetFiles(b, "*", SearchOption.AllDirectories).Select(p => Path.GetRelativePath(b, p)).Order(StringComparer.Ordinal).ToArray();
        Assert.Equal(fa, fb);
        foreach (var f in fa)
            Assert.True(File.ReadAllBytes(Path.Combine(a, f)).AsSpan().SequenceEqual(File.ReadAllBytes(Path.Combine(b, f))), $"{f} differs");
    }
}

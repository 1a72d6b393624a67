using System.IO.Compression;
using System.Runtime.InteropServices;
using System.Text.Json.Nodes;
using Finetrace.Activations;
using Finetrace.Activations.Export;
using Finetrace.Tests.Infrastructure;

namespace Finetrace.Tests.Activations;

public class ExportTests
{
    [Fact]
    public void Crc32_MatchesTheStandardCheckValue()
    {
        Assert.Equal(0xCBF43926u, TorchSave.Crc32("123456789"u8));
    }

    static byte[] Entry(ZipArchive z, string name)
    {
        var e = z.GetEntry(name) ?? throw new Xunit.Sdk.XunitException($"zip has no entry {name}; entries: {string.Join(", ", z.Entries.Select(x => x.FullName))}");
        using var s = e.Open();
        using var ms = new MemoryStream();
        s.CopyTo(ms);
        return ms.ToArray();
    }

    [Fact]
    public void TorchSave_WritesAReadableZipWithAlignedRecords()
    {
        using var tmp = new TempDir();
        var values = new long[] { 5, -3, 1L << 40, 7 };
        string path = tmp.File("tokens.pt");
        TorchSave.Write(path, values, values.Length);
        var raw = File.ReadAllBytes(path);
        using var z = new ZipArchive(new MemoryStream(raw), ZipArchiveMode.Read);
        Assert.Equal(["tokens/data.pkl", "tokens/byteorder", "tokens/data/0", "tokens/version"], z.Entries.Select(e => e.FullName));
        Assert.Equal(MemoryMarshal.AsBytes(values.AsSpan()).ToArray(), Entry(z, "tokens/data/0"));
        Assert.Equal("little"u8.ToArray(), Entry(z, "tokens/byteorder"));
        Assert.Equal("3\n"u8.ToArray(), Entry(z, "tokens/version"));
        var pkl = Entry(z, "tokens/data.pkl");
        Assert.Equal(new byte[] { 0x80, 2 }, pkl[..2]);
        Assert.Equal((byte)'.', pkl[^1]);
        string text = System.Text.Encoding.ASCII.GetString(pkl);
        Assert.Contains("torch._utils\n_rebuild_tensor_v2\n", text);
        Assert.Contains("torch\nLongStorage\n", text);
        // Every record's data starts on a 64-byte boundary (local header: 30 bytes + name + extra).
        int off = 0;
        foreach (var e in z.Entries)
        {
            Assert.Equal(0x04034b50u, BitConverter.ToUInt32(raw, off));
            int n = BitConverter.ToUInt16(raw, off + 26), x = BitConverter.ToUInt16(raw, off + 28);
            int data = off + 30 + n + x;
            Assert.Equal(0, data % 64);
            off = data + (int)e.Length;
        }
    }

    /// <summary>Parsed ZIP64 extended-information field (id 0x0001) of a header's extra bytes, or null.</summary>
    static long[]? Zip64Field(byte[] raw, int extraAt, int extraLen)
    {
        for (int at = extraAt; at < extraAt + extraLen;)
        {
            int id = BitConverter.ToUInt16(raw, at), len = BitConverter.ToUInt16(raw, at + 2);
            if (id == 1) return Enumerable.Range(0, len / 8).Select(i => BitConverter.ToInt64(raw, at + 4 + 8 * i)).ToArray();
            at += 4 + len;
        }
        return null;
    }

    [Fact]
    public void ZipWriter_Zip64Records_FollowTheSpecWhereSizesOrOffsetsOverflow()
    {
        // The threshold stands in for 0xFFFFFFFF: entry "big" is "too large", entry "late" starts "too far", and the
        // central directory lies beyond it; entry "small" needs nothing. The records must be exactly those of APPNOTE
        // 4.5.3 (local: both sizes; central: only the overflowing fields, in order) and a standard reader must read it.
        const long threshold = 300;
        var small = Enumerable.Range(0, 10).Select(i => (byte)i).ToArray();
        var big = Enumerable.Range(0, 100).Select(i => (long)i * 7919).ToArray();   // 800 bytes
        var late = "late entry"u8.ToArray();
        var ms = new MemoryStream();
        var zip = new ZipWriter(ms) { Zip64Threshold = threshold };
        zip.Add("small", small);
        zip.Add<long>("big", big);
        zip.Add("late", late.LongLength, sink => { sink(late.AsSpan(0, 4)); sink(late.AsSpan(4)); });
        zip.Finish();
        var raw = ms.ToArray();
        var bigBytes = MemoryMarshal.AsBytes(big.AsSpan()).ToArray();

        // End of central directory → ZIP64 locator → ZIP64 end record.
        int eocd = raw.Length - 22;
        Assert.Equal(0x06054b50u, BitConverter.ToUInt32(raw, eocd));
        Assert.Equal(3, BitConverter.ToUInt16(raw, eocd + 10));                  // entry count fits 16 bits
        Assert.Equal(0xFFFFFFFFu, BitConverter.ToUInt32(raw, eocd + 16));       // directory offset → ZIP64
        int locator = eocd - 20;
        Assert.Equal(0x07064b50u, BitConverter.ToUInt32(raw, locator));
        Assert.Equal(1u, BitConverter.ToUInt32(raw, locator + 16));             // total disks
        int z64 = (int)BitConverter.ToInt64(raw, locator + 8);
        Assert.Equal(locator - 56, z64);
        Assert.Equal(0x06064b50u, BitConverter.ToUInt32(raw, z64));
        Assert.Equal(44, BitConverter.ToInt64(raw, z64 + 4));
        Assert.Equal(45, BitConverter.ToUInt16(raw, z64 + 14));
        Assert.Equal(3, BitConverter.ToInt64(raw, z64 + 24));
        Assert.Equal(3, BitConverter.ToInt64(raw, z64 + 32));
        long cdSize = BitConverter.ToInt64(raw, z64 + 40), cdStart = BitConverter.ToInt64(raw, z64 + 48);
        Assert.Equal(z64, cdStart + cdSize);
        Assert.Equal(cdSize, BitConverter.ToUInt32(raw, eocd + 12));           // below the threshold: plain

        // Central headers.
        var central = new Dictionary<string, (uint Csize, uint Usize, uint Offset, long[]? X, int Needed)>();
        for (int at = (int)cdStart; at < cdStart + cdSize;)
        {
            Assert.Equal(0x02014b50u, BitConverter.ToUInt32(raw, at));
            int n = BitConverter.ToUInt16(raw, at + 28), x = BitConverter.ToUInt16(raw, at + 30), c = BitConverter.ToUInt16(raw, at + 32);
            string name = System.Text.Encoding.UTF8.GetString(raw, at + 46, n);
            central[name] = (BitConverter.ToUInt32(raw, at + 20), BitConverter.ToUInt32(raw, at + 24), BitConverter.ToUInt32(raw, at + 42),
                Zip64Field(raw, at + 46 + n, x), BitConverter.ToUInt16(raw, at + 6));
            at += 46 + n + x + c;
        }
        Assert.Equal(((uint)small.Length, (uint)small.Length, 0u), (central["small"].Csize, central["small"].Usize, central["small"].Offset));
        Assert.Null(central["small"].X);
        Assert.Equal(20, central["small"].Needed);
        Assert.Equal((0xFFFFFFFFu, 0xFFFFFFFFu), (central["big"].Csize, central["big"].Usize));
        long bigOffset = central["big"].Offset;
        Assert.True(bigOffset < threshold);
        Assert.Equal([800L, 800L], Assert.IsType<long[]>(central["big"].X));     // uncompressed, compressed; no offset
        Assert.Equal(45, central["big"].Needed);
        Assert.Equal(((uint)late.Length, (uint)late.Length, 0xFFFFFFFFu), (central["late"].Csize, central["late"].Usize, central["late"].Offset));
        long lateOffset = Assert.Single(central["late"].X!);                      // only the offset
        Assert.True(lateOffset >= threshold);

        // Local headers: the big one carries both sizes in its ZIP64 field; every entry's data is 64-byte aligned.
        foreach (var (name, offset, data) in new[] { ("small", 0L, small), ("big", bigOffset, bigBytes), ("late", lateOffset, late) })
        {
            int at = (int)offset;
            Assert.Equal(0x04034b50u, BitConverter.ToUInt32(raw, at));
            int n = BitConverter.ToUInt16(raw, at + 26), x = BitConverter.ToUInt16(raw, at + 28);
            Assert.Equal(name, System.Text.Encoding.UTF8.GetString(raw, at + 30, n));
            var field = Zip64Field(raw, at + 30 + n, x);
            if (name == "big")
            {
                Assert.Equal(45, BitConverter.ToUInt16(raw, at + 4));
                Assert.Equal(0xFFFFFFFFu, BitConverter.ToUInt32(raw, at + 18));
                Assert.Equal(0xFFFFFFFFu, BitConverter.ToUInt32(raw, at + 22));
                Assert.Equal([800L, 800L], Assert.IsType<long[]>(field));
            }
            else
            {
                Assert.Null(field);
                Assert.Equal((uint)data.Length, BitConverter.ToUInt32(raw, at + 22));
            }
            Assert.Equal(TorchSave.Crc32(data), BitConverter.ToUInt32(raw, at + 14));
            int dataAt = at + 30 + n + x;
            Assert.Equal(0, dataAt % 64);
            Assert.Equal(data, raw.AsSpan(dataAt, data.Length).ToArray());
        }

        // A standard reader (ZIP64-aware) reads the archive.
        using var z = new ZipArchive(new MemoryStream(raw), ZipArchiveMode.Read);
        Assert.Equal(["small", "big", "late"], z.Entries.Select(e => e.FullName));
        Assert.Equal(small, Entry(z, "small"));
        Assert.Equal(bigBytes, Entry(z, "big"));
        Assert.Equal(late, Entry(z, "late"));
    }

    [Fact]
    public void ZipWriter_SmallArchives_HaveNoZip64Records()
    {
        using var tmp = new TempDir();
        string path = tmp.File("x.pt");
        var values = Enumerable.Range(0, 300_000).Select(i => (long)i * i).ToArray();   // 2.4 MB: several chunks
        TorchSave.Write(path, values, values.Length);
        var raw = File.ReadAllBytes(path);
        for (int i = 0; i + 4 <= raw.Length; i++)
        {
            uint sig = BitConverter.ToUInt32(raw, i);
            Assert.True(sig != 0x06064b50u && sig != 0x07064b50u, $"ZIP64 end record signature at {i} in a small archive");
        }
        using var z = new ZipArchive(new MemoryStream(raw), ZipArchiveMode.Read);
        Assert.Equal(MemoryMarshal.AsBytes(values.AsSpan()).ToArray(), Entry(z, "x/data/0"));
        var e = z.GetEntry("x/data/0")!;
        Assert.Equal(TorchSave.Crc32(MemoryMarshal.AsBytes(values.AsSpan())), e.Crc32);
    }

    [Fact]
    public void Export_WritesTheCrosscoderLearningLayout()
    {
        using var tmp = new TempDir();
        var s = StoreTestData.Settings(layers: [2, 6]);
        s.Models[0].Name = "org/base-model";
        s.Models[1].Name = "/models/ft-model/";
        s.Options["context_length"] = "64";
        string storeDir = Path.Combine(tmp.Path, "store");
        StoreTestData.Write(storeDir, s, samples: 30, batch: 4);
        using var store = ActivationStore.Open(storeDir);
        var dirs = CrosscoderCacheExport.Export(store, Path.Combine(tmp.Path, "out"), "mydata");
        Assert.Equal(Path.Combine(tmp.Path, "out", "base-model", "mydata", "train"), dirs[0]);
        Assert.Equal(Path.Combine(tmp.Path, "out", "ft-model", "mydata", "train"), dirs[1]);

        using (var z = ZipFile.OpenRead(Path.Combine(dirs[1], "tokens.pt")))
        {
            var tokens = MemoryMarshal.Cast<byte, long>(Entry(z, "tokens/data/0")).ToArray();
            Assert.Equal(Enumerable.Range(0, (int)store.Tokens).Select(r => (long)store.TokenId(r)), tokens);
        }
        using (var st = new Finetrace.Models.Safetensors.SafetensorsFile(Path.Combine(dirs[1], "tokens.safetensors")))
        {
            Assert.Equal(Enumerable.Range(0, (int)store.Tokens).Select(r => (long)store.TokenId(r)), st.ReadI64("tokens"));
            Assert.Equal(store.SequenceRanges(), st.ReadI64("sequence_ranges"));
        }
        using (var z = ZipFile.OpenRead(Path.Combine(dirs[0], "sequence_ranges.pt")))
            Assert.Equal(store.SequenceRanges(), MemoryMarshal.Cast<byte, long>(Entry(z, "sequence_ranges/data/0")).ToArray());
        // The token-level files do not depend on the model: every model's folder holds the same bytes.
        foreach (string f in new[] { "tokens.pt", "sequence_ranges.pt", "tokens.safetensors" })
            Assert.Equal(File.ReadAllBytes(Path.Combine(dirs[0], f)), File.ReadAllBytes(Path.Combine(dirs[1], f)));

        for (int m = 0; m < 2; m++)
            for (int li = 0; li < 2; li++)
            {
                string site = Path.Combine(dirs[m], $"layer_{s.Layers[li]}_out");
                var config = JsonNode.Parse(File.ReadAllText(Path.Combine(site, "config.json")))!;
                Assert.Equal(store.Tokens, (long)config["total_size"]!);
                Assert.Equal(store.Shards.Count, (int)config["shard_count"]!);
                Assert.Equal(8, (int)config["d_model"]!);
                Assert.Equal(64, (int)config["context_len"]!);
                Assert.Equal("out", (string)config["io"]!);
                Assert.True((bool)config["store_tokens"]!);
                long total = 0;
                for (int i = 0; i < store.Shards.Count; i++)
                {
                    var meta = JsonNode.Parse(File.ReadAllText(Path.Combine(site, $"shard_{i}.meta")))!;
                    Assert.Equal("torch.bfloat16", (string)meta["dtype"]!);
                    Assert.Equal(store.Shards[i].Rows, (int)meta["shape"]![0]!);
                    Assert.Equal(File.ReadAllBytes(store.Shards[i].ActivationPath(m, li)), File.ReadAllBytes(Path.Combine(site, $"shard_{i}.memmap")));
                    total += store.Shards[i].Rows;
                }
                Assert.Equal(store.Tokens, total);
                var st = store.Stats(m, s.Layers[li]).State;
                using (var z = ZipFile.OpenRead(Path.Combine(site, "mean.pt")))
                    Assert.Equal(st.Mean, MemoryMarshal.Cast<byte, double>(Entry(z, "mean/data/0")).ToArray());
                using (var z = ZipFile.OpenRead(Path.Combine(site, "std.pt")))
                {
                    var std = MemoryMarshal.Cast<byte, double>(Entry(z, "std/data/0")).ToArray();
                    for (int j = 0; j < std.Length; j++) Assert.Equal(Math.Sqrt(st.M2[j] / (st.Count - 1)), std[j], 12);
                }
                using (var z = ZipFile.OpenRead(Path.Combine(site, "count.pt")))
                    Assert.Equal(store.Tokens, BitConverter.ToInt64(Entry(z, "count/data/0")));
                var side = JsonNode.Parse(File.ReadAllText(Path.Combine(site, "finetrace.json")))!;
                Assert.Equal($"blocks.{s.Layers[li]}.hook_resid_post", (string)side["site"]!["hook_name"]!);
            }
    }

    [Fact]
    public void Export_RefusesAnIncompleteStore()
    {
        using var tmp = new TempDir();
        var s = StoreTestData.Settings();
        using (var w = ActivationStoreWriter.Open(tmp.Path, s, 1000)) w.Append(StoreTestData.Batch(s, 0, 20));
        using var store = ActivationStore.Open(tmp.Path);
        var e = Assert.Throws<InvalidOperationException>(() => CrosscoderCacheExport.Export(store, tmp.File("out"), "d"));
        Assert.Contains("not complete", e.Message);
    }
}

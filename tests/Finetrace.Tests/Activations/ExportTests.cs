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
        using (var z = ZipFile.OpenRead(Path.Combine(dirs[0], "sequence_ranges.pt")))
            Assert.Equal(store.SequenceRanges(), MemoryMarshal.Cast<byte, long>(Entry(z, "sequence_ranges/data/0")).ToArray());

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

using Finetrace.Models;
using Finetrace.Tensors;
using System.Text.Json;
using System.Text.Json.Nodes;
using Finetrace.Models.Safetensors;

namespace Finetrace.Activations.Export;

/// <summary>
/// Exports a store to the crosscoder_learning activation-cache layout (formats.md §4), one cache per model:
/// <c>{out}/{safe_model_id}/{dataset}/{split}/</c> with <c>tokens.pt</c>, <c>sequence_ranges.pt</c> and per layer
/// <c>layer_{L}_out/</c> holding <c>shard_{i}.memmap</c> (the store's shard files, byte for byte), <c>shard_{i}.meta</c>,
/// <c>config.json</c>, <c>mean.pt</c>, <c>std.pt</c> (unbiased), <c>count.pt</c>, <c>M2.pt</c>, plus
/// <c>stats.safetensors</c> / <c>tokens.safetensors</c> and the <c>finetrace.json</c> provenance sidecar.
/// Python's <c>PairedActivationCache(base_dir, ft_dir, "layer_{L}_out")</c> then reads the pair.
/// </summary>
public static class CrosscoderCacheExport
{
    /// <summary>The toolkit's path-safe model id: the last component of the model id or folder.</summary>
    public static string SafeModelId(StoreModel m)
    {
        string id = string.IsNullOrEmpty(m.Name) ? m.Path : m.Name;
        id = id.TrimEnd('/', '\\');
        int slash = id.LastIndexOfAny(['/', '\\']);
        return slash >= 0 ? id[(slash + 1)..] : id;
    }

    /// <summary>Writes the export and returns the split folder of every model.</summary>
    public static List<string> Export(ActivationStore store, string outDir, string dataset, string split = "train", Action<string>? log = null)
    {
        if (!store.Manifest.Complete) throw new InvalidOperationException($"{store.Directory}: the store is not complete (harvest still running or interrupted); resume it first");
        if (string.IsNullOrWhiteSpace(dataset) || dataset.IndexOfAny(['/', '\\']) >= 0) throw new ArgumentException($"dataset name '{dataset}' must be a plain folder name");
        var s = store.Settings;
        var ids = s.Models.Select(SafeModelId).ToList();
        if (ids.Distinct(StringComparer.Ordinal).Count() != ids.Count)
            throw new InvalidOperationException($"the models' safe ids collide ({string.Join(", ", ids)}); they must differ to export side by side");

        // Token-level arrays shared by every model. The token ids (int32 in the store, int64 in the cache) are streamed
        // shard by shard: a store of a few hundred million tokens would not fit one array of bytes.
        var ranges = store.SequenceRanges();
        var shards = store.Shards.Where(sh => sh.Rows > 0).ToList();
        var result = new List<string>();

        for (int m = 0; m < s.Models.Count; m++)
        {
            string dir = Path.Combine(outDir, ids[m], dataset, split);
            Directory.CreateDirectory(dir);
            log?.Invoke(dir);
            if (m == 0)
            {
                TorchSave.Write(Path.Combine(dir, "tokens.pt"), TorchSave.Storage.Long, store.Tokens * 8, [store.Tokens], sink => TokensAsLong(store, sink));
                TorchSave.Write(Path.Combine(dir, "sequence_ranges.pt"), ranges, ranges.Length);
                WriteTokensSafetensors(store, ranges, Path.Combine(dir, "tokens.safetensors"));
            }
            else
            {
                // The token-level files are the same for every model: copy the first model's rather than rebuild them.
                foreach (string f in (string[])["tokens.pt", "sequence_ranges.pt", "tokens.safetensors"])
                    CopyAtomic(Path.Combine(result[0], f), Path.Combine(dir, f));
            }
            for (int li = 0; li < s.Layers.Length; li++)
            {
                int layer = s.Layers[li];
                string site = Path.Combine(dir, $"layer_{layer}_out");
                Directory.CreateDirectory(site);
                for (int i = 0; i < shards.Count; i++)
                {
                    CopyAtomic(shards[i].ActivationPath(m, li), Path.Combine(site, $"shard_{i}.memmap"));
                    var meta = new JsonObject { ["shape"] = new JsonArray(shards[i].Rows, s.DModel), ["dtype"] = StoreDTypes.TorchName(s.DType) };
                    StoreFiles.WriteAtomic(Path.Combine(site, $"shard_{i}.meta"), System.Text.Encoding.UTF8.GetBytes(meta.ToJsonString()));
                }
                var st = store.Stats(m, layer).State;
                var std = st.SampleVariance().Select(Math.Sqrt).ToArray();
                TorchSave.Write(Path.Combine(site, "mean.pt"), st.Mean, st.Dim);
                TorchSave.Write(Path.Combine(site, "std.pt"), std, st.Dim);
                TorchSave.Write(Path.Combine(site, "M2.pt"), st.M2, st.Dim);
                TorchSave.Write(Path.Combine(site, "count.pt"), [st.Count]);
                SafetensorsWriter.Write(Path.Combine(site, "stats.safetensors"),
                [
                    new TensorData("mean", DType.F64, [st.Dim], System.Runtime.InteropServices.MemoryMarshal.AsBytes(st.Mean.AsSpan()).ToArray()),
                    new TensorData("std", DType.F64, [st.Dim], System.Runtime.InteropServices.MemoryMarshal.AsBytes(std.AsSpan()).ToArray()),
                    new TensorData("M2", DType.F64, [st.Dim], System.Runtime.InteropServices.MemoryMarshal.AsBytes(st.M2.AsSpan()).ToArray()),
                    TensorData.I64("count", [st.Count]),
                ]);
                s.Options.TryGetValue("batch_size", out var bs);
                s.Options.TryGetValue("context_length", out var ctx);
                var config = new JsonObject
                {
                    ["batch_size"] = int.TryParse(bs, out var b) ? b : 0,
                    ["context_len"] = int.TryParse(ctx, out var c) ? c : 0,
                    ["shard_size"] = s.ShardTokens,
                    ["d_model"] = s.DModel,
                    ["shuffle_shards"] = false,
                    ["io"] = "out",
                    ["total_size"] = store.Tokens,
                    ["shard_count"] = shards.Count,
                    ["store_tokens"] = true,
                    ["store_sequence_ranges"] = true,
                };
                StoreFiles.WriteAtomic(Path.Combine(site, "config.json"), System.Text.Encoding.UTF8.GetBytes(config.ToJsonString(new JsonSerializerOptions { WriteIndented = true })));
                WriteSidecar(store, m, layer, dataset, split, Path.Combine(site, "finetrace.json"));
            }
            result.Add(dir);
        }
        return result;
    }

    static void CopyAtomic(string src, string dst)
    {
        File.Copy(src, dst + ".tmp", overwrite: true);
        File.Move(dst + ".tmp", dst, overwrite: true);
    }

    /// <summary>The store's token ids as int64 little-endian bytes, in chunks.</summary>
    static void TokensAsLong(ActivationStore store, ZipWriter.ChunkSink sink)
    {
        var buf = new long[1 << 16];
        foreach (var sh in store.Shards)
        {
            var t = sh.Tokens;
            for (int i = 0; i < t.Length; i += buf.Length)
            {
                int n = Math.Min(buf.Length, t.Length - i);
                for (int k = 0; k < n; k++) buf[k] = t[i + k];
                sink(System.Runtime.InteropServices.MemoryMarshal.AsBytes(buf.AsSpan(0, n)));
            }
        }
    }

    /// <summary>tokens.safetensors with I64 <c>sequence_ranges</c> and <c>tokens</c>, streamed (the header layout of
    /// <see cref="SafetensorsWriter"/>: JSON padded with spaces to a multiple of 8, tensors ordered by name).</summary>
    static void WriteTokensSafetensors(ActivationStore store, long[] ranges, string path)
    {
        long rb = ranges.LongLength * 8, tb = store.Tokens * 8;
        string json = $"{{\"sequence_ranges\":{{\"dtype\":\"I64\",\"shape\":[{ranges.LongLength}],\"data_offsets\":[0,{rb}]}}," +
                      $"\"tokens\":{{\"dtype\":\"I64\",\"shape\":[{store.Tokens}],\"data_offsets\":[{rb},{rb + tb}]}}}}";
        json = json.PadRight((json.Length + 7) / 8 * 8);
        string tmp = path + ".tmp";
        using (var fs = new FileStream(tmp, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20))
        {
            Span<byte> len = stackalloc byte[8];
            System.Buffers.Binary.BinaryPrimitives.WriteUInt64LittleEndian(len, (ulong)json.Length);
            fs.Write(len);
            fs.Write(System.Text.Encoding.ASCII.GetBytes(json));
            fs.Write(System.Runtime.InteropServices.MemoryMarshal.AsBytes(ranges.AsSpan()));
            TokensAsLong(store, chunk => fs.Write(chunk));
            fs.Flush(flushToDisk: true);
        }
        File.Move(tmp, path, overwrite: true);
    }

    static void WriteSidecar(ActivationStore store, int model, int layer, string dataset, string split, string path)
    {
        var s = store.Settings;
        var opts = new JsonObject();
        foreach (var (k, v) in s.Options) opts[k] = v;
        var sidecar = new JsonObject
        {
            ["finetrace_version"] = StoreJson.CodeVersion,
            ["kind"] = "activation-cache",
            ["models"] = JsonSerializer.SerializeToNode(s.Models, StoreJson.Options),
            ["model_index"] = model,
            ["site"] = new JsonObject { ["layer"] = layer, ["hook_name"] = s.Hook.Replace("{L}", layer.ToString()), ["meaning"] = s.Site is { } site ? HookSites.Meaning(site) : s.Hook },
            ["dtype"] = StoreDTypes.Name(s.DType),
            ["data"] = new JsonObject
            {
                ["dataset"] = dataset,
                ["split"] = split,
                ["sources"] = JsonSerializer.SerializeToNode(s.Sources, StoreJson.Options),
                ["positions"] = store.Tokens,
                ["sequences"] = store.Manifest.Sequences,
                ["options"] = opts,
            },
            ["source_store"] = store.Directory,
        };
        // Unknown fields of an existing sidecar are preserved on rewrite (formats.md §9).
        if (File.Exists(path) && JsonNode.Parse(File.ReadAllText(path)) is JsonObject old)
            foreach (var (k, v) in old)
                if (!sidecar.ContainsKey(k)) sidecar[k] = v?.DeepClone();
        StoreFiles.WriteAtomic(path, System.Text.Encoding.UTF8.GetBytes(sidecar.ToJsonString(new JsonSerializerOptions { WriteIndented = true })));
    }
}

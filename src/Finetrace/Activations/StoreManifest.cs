using Finetrace.Models;
using Finetrace.Tensors;
using System.Reflection;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.Json.Serialization;

namespace Finetrace.Activations;

/// <summary>One model whose activations the store holds (index 0 = base, 1 = fine-tuned, …).</summary>
public sealed class StoreModel
{
    public string Name { get; set; } = "";
    /// <summary>Checkpoint folder (or "synthetic").</summary>
    public string Path { get; set; } = "";
    public string? Adapter { get; set; }
    /// <summary>Weight files and their SHA-256, so a resumed run can tell that the model changed.</summary>
    public List<StoreFileHash> Files { get; set; } = [];
}

public sealed class StoreFileHash
{
    public string Name { get; set; } = "";
    public long Bytes { get; set; }
    public string Sha256 { get; set; } = "";
}

/// <summary>One data source; per-token source ids index this list.</summary>
public sealed class StoreSource
{
    public string Name { get; set; } = "";
    /// <summary>text, jsonl, chat, synthetic.</summary>
    public string Kind { get; set; } = "";
    public string Path { get; set; } = "";
    /// <summary>Share of the harvested tokens (the proportions of a mixture; 1 for a single source).</summary>
    public double Proportion { get; set; } = 1;
    /// <summary>Source-specific settings (text field, max samples, max tokens…), as invariant strings.</summary>
    public SortedDictionary<string, string> Options { get; set; } = new(StringComparer.Ordinal);
}

/// <summary>
/// Everything that determines the content of a store. A resumed run must present identical settings; the
/// differences are listed by <see cref="Diff"/>.
/// </summary>
public sealed class StoreSettings
{
    public List<StoreModel> Models { get; set; } = [];
    public int[] Layers { get; set; } = [];
    /// <summary>TransformerLens-style site name with {L} for the layer.</summary>
    public string Hook { get; set; } = "blocks.{L}.hook_resid_post";
    /// <summary>bf16 (default) or f32.</summary>
    public string Dtype { get; set; } = "bf16";
    public int DModel { get; set; }
    public List<StoreSource> Sources { get; set; } = [];
    /// <summary>A shard is closed at the first sequence boundary at or past this many tokens.</summary>
    public long ShardTokens { get; set; } = 1 << 18;
    /// <summary>Harvest options (context length, BOS/first-n drop, outlier drop, seed, tokenizer hash…).</summary>
    public SortedDictionary<string, string> Options { get; set; } = new(StringComparer.Ordinal);

    [JsonIgnore] public StoreDType DType => StoreDTypes.Parse(Dtype);

    /// <summary>The block site <see cref="Hook"/> names (e.g. <c>blocks.{L}.hook_mlp_out</c> → <see cref="HookSite.MlpOut"/>);
    /// null when it names no model site (synthetic stores).</summary>
    [JsonIgnore] public HookSite? Site => HookSites.TryParse(Hook, out var s, out _) ? s : null;

    public void Validate()
    {
        if (Models.Count < 1) throw new ArgumentException("store settings: at least one model is needed");
        if (Layers.Length < 1) throw new ArgumentException("store settings: at least one layer is needed");
        if (Layers.Distinct().Count() != Layers.Length) throw new ArgumentException($"store settings: layers repeat ({string.Join(", ", Layers)})");
        if (DModel < 1) throw new ArgumentException($"store settings: d_model must be positive, got {DModel}");
        if (Sources.Count < 1) throw new ArgumentException("store settings: at least one source is needed");
        if (Sources.Count > ushort.MaxValue) throw new ArgumentException($"store settings: at most {ushort.MaxValue} sources");
        if (ShardTokens < 1) throw new ArgumentException($"store settings: shard_tokens must be positive, got {ShardTokens}");
        _ = DType;
    }

    /// <summary>Paths (e.g. "layers", "models[1].files[0].sha256") where two settings differ, with both values.</summary>
    public static List<string> Diff(StoreSettings a, StoreSettings b)
    {
        var diffs = new List<string>();
        DiffNodes("", JsonSerializer.SerializeToNode(a, StoreJson.Options), JsonSerializer.SerializeToNode(b, StoreJson.Options), diffs);
        return diffs;
    }

    static void DiffNodes(string path, JsonNode? a, JsonNode? b, List<string> diffs)
    {
        if (a is JsonObject oa && b is JsonObject ob)
        {
            foreach (var key in oa.Select(p => p.Key).Union(ob.Select(p => p.Key)).Distinct())
                DiffNodes(path.Length == 0 ? key : path + "." + key, oa[key], ob[key], diffs);
            return;
        }
        if (a is JsonArray xa && b is JsonArray xb && xa.Count == xb.Count)
        {
            for (int i = 0; i < xa.Count; i++) DiffNodes($"{path}[{i}]", xa[i], xb[i], diffs);
            return;
        }
        if (!JsonNode.DeepEquals(a, b))
            diffs.Add($"{path}: stored {a?.ToJsonString() ?? "(absent)"}, requested {b?.ToJsonString() ?? "(absent)"}");
    }
}

/// <summary>One complete shard (a folder shard_NNNNN).</summary>
public sealed class StoreShardEntry
{
    public string Name { get; set; } = "";
    public long Tokens { get; set; }
    /// <summary>Samples consumed by this shard, including any that kept no tokens.</summary>
    public long Sequences { get; set; }
    public long Bytes { get; set; }
    /// <summary>Tokens per source id.</summary>
    public long[] SourceTokens { get; set; } = [];
}

/// <summary>
/// manifest.json of an activation store. It holds no timestamps, so an interrupted-and-resumed run gives a
/// byte-identical store.
/// </summary>
public sealed class StoreManifest
{
    public const string FormatName = "finetrace-activation-store";
    public string Format { get; set; } = FormatName;
    public int FormatVersion { get; set; } = 1;
    public string CodeVersion { get; set; } = StoreJson.CodeVersion;
    public StoreSettings Settings { get; set; } = new();
    /// <summary>Tokens requested (the run is complete when it reached them or ran out of data).</summary>
    public long TargetTokens { get; set; }
    public long Tokens { get; set; }
    public long Sequences { get; set; }
    public bool Complete { get; set; }
    public List<StoreShardEntry> Shards { get; set; } = [];
    /// <summary>Samples skipped per source and reason (harvests).</summary>
    public Dictionary<string, SortedDictionary<string, long>>? Skipped { get; set; }

    public long[] SourceTokens()
    {
        var t = new long[Settings.Sources.Count];
        foreach (var s in Shards)
            for (int i = 0; i < Math.Min(t.Length, s.SourceTokens.Length); i++) t[i] += s.SourceTokens[i];
        return t;
    }

    public static StoreManifest Load(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"{path}: no manifest; not an activation store (or the harvest has not written its first shard yet)", path);
        StoreManifest? m;
        try { m = JsonSerializer.Deserialize<StoreManifest>(File.ReadAllBytes(path), StoreJson.Options); }
        catch (JsonException e) { throw new InvalidDataException($"{path}: invalid manifest JSON: {e.Message}"); }
        if (m is null || m.Format != FormatName) throw new InvalidDataException($"{path}: not a Finetrace activation store manifest (format '{m?.Format}')");
        if (m.FormatVersion != 1) throw new InvalidDataException($"{path}: store format version {m.FormatVersion} is not supported (this Finetrace reads version 1)");
        m.Settings.Validate();
        return m;
    }

    /// <summary>Writes the manifest atomically: temporary file, flush, rename.</summary>
    public void Save(string path)
    {
        var bytes = JsonSerializer.SerializeToUtf8Bytes(this, StoreJson.Options);
        StoreFiles.WriteAtomic(path, bytes);
    }
}

public static class StoreJson
{
    public static readonly JsonSerializerOptions Options = new()
    {
        WriteIndented = true,
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
        NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals,
    };

    public static string CodeVersion { get; } =
        typeof(StoreJson).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion ?? "0";
}

static class StoreFiles
{
    public static void WriteAtomic(string path, ReadOnlySpan<byte> bytes)
    {
        string tmp = path + ".tmp";
        using (var fs = new FileStream(tmp, FileMode.Create, FileAccess.Write, FileShare.None))
        {
            fs.Write(bytes);
            fs.Flush(flushToDisk: true);
        }
        File.Move(tmp, path, overwrite: true);
    }
}

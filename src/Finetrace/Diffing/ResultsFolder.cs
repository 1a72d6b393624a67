using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Finetrace.Diffing;

/// <summary>One finished analysis stage as <c>RESULTS/manifest.json</c> records it: what ran, on which inputs
/// (a hash over the input files and the options), and which files it wrote (relative to the results folder).</summary>
public sealed record StageRecord(string Name, string InputsHash, DateTimeOffset Finished, IReadOnlyList<string> Outputs, JsonObject? Inputs);

/// <summary>
/// A results folder (<c>RESULTS/</c>) shared by every analysis (`finetrace analyze …`, `finetrace diff`): plain files
/// plus <c>manifest.json</c>, which records each finished stage with the hash of its inputs. A stage whose record
/// matches its inputs and whose outputs all exist is current and is skipped; every write is atomic (temporary file,
/// then rename), so a crash or Ctrl-C leaves either the old file or the new one, never half of one.
/// </summary>
public sealed class ResultsFolder
{
    public const string ManifestFile = "manifest.json";
    readonly object _lock = new();

    public string Directory { get; }

    ResultsFolder(string dir) { Directory = dir; }

    /// <summary>Opens (creating if needed) a results folder.</summary>
    public static ResultsFolder Open(string dir)
    {
        System.IO.Directory.CreateDirectory(dir);
        return new ResultsFolder(Path.GetFullPath(dir));
    }

    public string PathOf(string relative) => Path.Combine(Directory, relative);

    /// <summary>Every stage recorded so far, by name.</summary>
    public IReadOnlyDictionary<string, StageRecord> Stages()
    {
        lock (_lock) return ReadManifest();
    }

    /// <summary>True when <paramref name="stage"/> finished on inputs with hash <paramref name="inputsHash"/> and every
    /// output it recorded still exists.</summary>
    public bool IsCurrent(string stage, string inputsHash)
    {
        lock (_lock)
        {
            return ReadManifest().TryGetValue(stage, out var r) && r.InputsHash == inputsHash
                && r.Outputs.All(o => File.Exists(PathOf(o)) || System.IO.Directory.Exists(PathOf(o)));
        }
    }

    /// <summary>Records <paramref name="stage"/> as finished (replacing an earlier record of it).</summary>
    public void Record(string stage, string inputsHash, IEnumerable<string> outputs, JsonObject? inputs = null)
    {
        lock (_lock)
        {
            var all = new Dictionary<string, StageRecord>(ReadManifest(), StringComparer.Ordinal)
            {
                [stage] = new StageRecord(stage, inputsHash, DateTimeOffset.UtcNow, outputs.ToList(), inputs),
            };
            var root = new JsonObject { ["format"] = "finetrace-results/1" };
            var stages = new JsonObject();
            foreach (var (name, r) in all.OrderBy(kv => kv.Key, StringComparer.Ordinal))
                stages[name] = new JsonObject
                {
                    ["inputs_hash"] = r.InputsHash,
                    ["finished"] = r.Finished.ToString("O"),
                    ["outputs"] = new JsonArray(r.Outputs.Select(o => (JsonNode)o).ToArray()),
                    ["inputs"] = r.Inputs?.DeepClone(),
                };
            root["stages"] = stages;
            WriteAllTextAtomic(PathOf(ManifestFile), root.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
        }
    }

    /// <summary>Forgets <paramref name="stage"/> (its files stay until overwritten).</summary>
    public void Invalidate(string stage)
    {
        lock (_lock)
        {
            var all = ReadManifest();
            if (!all.ContainsKey(stage)) return;
            var root = JsonNode.Parse(File.ReadAllText(PathOf(ManifestFile)))!.AsObject();
            root["stages"]!.AsObject().Remove(stage);
            WriteAllTextAtomic(PathOf(ManifestFile), root.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
        }
    }

    Dictionary<string, StageRecord> ReadManifest()
    {
        var path = PathOf(ManifestFile);
        var result = new Dictionary<string, StageRecord>(StringComparer.Ordinal);
        if (!File.Exists(path)) return result;
        JsonObject root;
        try { root = JsonNode.Parse(File.ReadAllText(path))!.AsObject(); }
        catch (JsonException e) { throw new InvalidDataException($"{path}: not a valid results manifest ({e.Message}); delete it to rerun every stage", e); }
        if (root["stages"] is not JsonObject stages) return result;
        foreach (var (name, node) in stages)
        {
            if (node is not JsonObject o) continue;
            var outputs = o["outputs"] is JsonArray a ? a.Select(x => (string)x!).ToList() : [];
            DateTimeOffset.TryParse((string?)o["finished"], out var finished);
            result[name] = new StageRecord(name, (string?)o["inputs_hash"] ?? "", finished, outputs, o["inputs"]?.DeepClone() as JsonObject);
        }
        return result;
    }

    /// <summary>Writes <paramref name="text"/> (UTF-8, no BOM) to <paramref name="path"/> atomically.</summary>
    public static void WriteAllTextAtomic(string path, string text) =>
        WriteAtomic(path, s => { var b = new UTF8Encoding(false).GetBytes(text); s.Write(b); });

    /// <summary>Writes a file atomically: <paramref name="write"/> fills a temporary file beside it, which then
    /// replaces <paramref name="path"/>.</summary>
    public static void WriteAtomic(string path, Action<Stream> write)
    {
        var dir = Path.GetDirectoryName(Path.GetFullPath(path))!;
        System.IO.Directory.CreateDirectory(dir);
        var tmp = Path.Combine(dir, "." + Path.GetFileName(path) + ".tmp-" + Environment.ProcessId);
        using (var fs = new FileStream(tmp, FileMode.Create, FileAccess.Write, FileShare.None))
        {
            write(fs);
            fs.Flush(flushToDisk: true);
        }
        File.Move(tmp, path, overwrite: true);
    }
}

/// <summary>SHA-256 hashes of a stage's inputs: files, folders (every file's relative path and bytes, in ordinal
/// order) and option values, combined into one lowercase hex string.</summary>
public sealed class InputsHash
{
    readonly IncrementalHash _h = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);

    public InputsHash Add(string label, string? value)
    {
        _h.AppendData(Encoding.UTF8.GetBytes(label + "=" + (value ?? "\u0000null") + "\n"));
        return this;
    }

    public InputsHash Add(string label, object? value) =>
        Add(label, value is IFormattable f ? f.ToString(null, System.Globalization.CultureInfo.InvariantCulture) : value?.ToString());

    /// <summary>Adds a file's bytes, or every file of a folder (skipping names that start with '.').</summary>
    public InputsHash AddPath(string label, string path)
    {
        Add(label, "path");
        if (File.Exists(path)) { AddFile(path); return this; }
        if (!System.IO.Directory.Exists(path)) { Add(label, "\u0000missing"); return this; }
        foreach (var f in System.IO.Directory.EnumerateFiles(path, "*", SearchOption.AllDirectories)
                     .Where(f => !Path.GetFileName(f).StartsWith('.'))
                     .OrderBy(f => f, StringComparer.Ordinal))
        {
            Add("file", Path.GetRelativePath(path, f).Replace('\\', '/'));
            AddFile(f);
        }
        return this;
    }

    void AddFile(string file)
    {
        using var s = File.OpenRead(file);
        var buf = new byte[1 << 20];
        int n;
        while ((n = s.Read(buf)) > 0) _h.AppendData(buf, 0, n);
    }

    public override string ToString() => Convert.ToHexStringLower(_h.GetCurrentHash());
}

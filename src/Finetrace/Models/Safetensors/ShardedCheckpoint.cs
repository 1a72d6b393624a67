using System.Text.Json;

namespace Finetrace.Models.Safetensors;

/// <summary>
/// The tensors of a checkpoint: one safetensors file, a folder holding <c>model.safetensors</c>, or a sharded
/// folder described by <c>model.safetensors.index.json</c> (one mapping per shard, resolved through its weight_map).
/// </summary>
public sealed class ShardedCheckpoint : IDisposable
{
    public string Path { get; }
    readonly List<SafetensorsFile> _files = new();
    readonly Dictionary<string, SafetensorsFile> _byName = new(StringComparer.Ordinal);

    public IEnumerable<string> Names => _byName.Keys;
    public IReadOnlyList<SafetensorsFile> Files => _files;

    public ShardedCheckpoint(string path, string stem = "model")
    {
        Path = path;
        try
        {
            if (File.Exists(path)) Add(new SafetensorsFile(path));
            else if (Directory.Exists(path))
            {
                string index = System.IO.Path.Combine(path, stem + ".safetensors.index.json");
                string single = System.IO.Path.Combine(path, stem + ".safetensors");
                if (File.Exists(index)) LoadSharded(path, index);
                else if (File.Exists(single)) Add(new SafetensorsFile(single));
                else throw new FileNotFoundException($"{path}: no {stem}.safetensors or {stem}.safetensors.index.json in this folder");
            }
            else throw new FileNotFoundException($"{path}: no such file or folder", path);
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    void LoadSharded(string dir, string index)
    {
        using var doc = JsonDocument.Parse(File.ReadAllBytes(index));
        if (!doc.RootElement.TryGetProperty("weight_map", out var map) || map.ValueKind != JsonValueKind.Object)
            throw new SafetensorsFormatException($"{index}: missing 'weight_map' object");
        var shards = new Dictionary<string, SafetensorsFile>(StringComparer.Ordinal);
        foreach (var e in map.EnumerateObject())
        {
            string shard = e.Value.GetString() ?? throw new SafetensorsFormatException($"{index}: weight_map['{e.Name}'] is not a string");
            if (!shards.TryGetValue(shard, out var f))
            {
                string full = System.IO.Path.Combine(dir, shard);
                if (!File.Exists(full)) throw new FileNotFoundException($"{index}: shard '{shard}' (for tensor '{e.Name}') is missing", full);
                f = new SafetensorsFile(full);
                shards[shard] = f;
                _files.Add(f);
            }
            if (!f.Contains(e.Name)) throw new SafetensorsFormatException($"{index}: tensor '{e.Name}' is mapped to '{shard}' but that shard does not contain it");
            _byName[e.Name] = f;
        }
    }

    void Add(SafetensorsFile f)
    {
        _files.Add(f);
        foreach (var name in f.Tensors.Keys)
        {
            if (_byName.ContainsKey(name)) throw new SafetensorsFormatException($"{f.Path}: tensor '{name}' appears in two files");
            _byName[name] = f;
        }
    }

    public bool Contains(string name) => _byName.ContainsKey(name);

    public SafetensorsFile FileOf(string name) =>
        _byName.TryGetValue(name, out var f) ? f : throw new KeyNotFoundException($"{Path}: checkpoint has no tensor '{name}'");

    public TensorInfo Info(string name) => FileOf(name).Info(name);

    public Tensors.Tensor ReadF32(string name) => FileOf(name).ReadF32(name);

    public void Dispose()
    {
        foreach (var f in _files) f.Dispose();
    }
}

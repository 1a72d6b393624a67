using System.Text.Json.Nodes;
using Finetrace.Models.Safetensors;
using Finetrace.Tensors;

namespace Finetrace.Models.Backward;

/// <summary>
/// Every parameter of a model as an owned float32 array keyed by its Hugging Face name (as <see cref="ModelLayout"/>
/// lists it), for training and gradients. The same type holds a gradient: a subset of names (only the parameters that
/// need one) with arrays of the same shapes. Weights are widened to f32 once at load, so a trainable copy costs 4 bytes
/// per parameter.
/// </summary>
public sealed class ModelParameters
{
    public ModelConfig Config { get; }
    /// <summary>The config.json text the parameters belong to (written back by <see cref="Save"/>).</summary>
    public string ConfigJson { get; }
    /// <summary>Name → shape of every parameter the config defines, in <see cref="ModelLayout.Parameters"/> order.</summary>
    public IReadOnlyList<ParameterSpec> Specs { get; }
    readonly Dictionary<string, float[]> _values;

    public IEnumerable<string> Names => _values.Keys;
    public int Count => _values.Count;
    public bool Contains(string name) => _values.ContainsKey(name);
    public float[] this[string name] => _values.TryGetValue(name, out var v) ? v
        : throw new KeyNotFoundException($"no parameter '{name}' (model_type {Config.ModelType})");
    public float[]? Get(string name) => _values.GetValueOrDefault(name);
    public long ParameterCount => _values.Values.Sum(v => (long)v.Length);

    ModelParameters(ModelConfig config, string configJson, Dictionary<string, float[]> values)
    {
        Config = config; ConfigJson = configJson; _values = values;
        Specs = ModelLayout.Parameters(config);
    }

    /// <summary>The architectures whose backward pass is implemented (the Llama block: llama, mistral, qwen2, qwen3).</summary>
    public static bool Supports(ModelConfig c) => c.Arch is Architecture.Llama or Architecture.Mistral or Architecture.Qwen2 or Architecture.Qwen3;

    internal static void CheckSupported(ModelConfig c)
    {
        if (!Supports(c))
            throw new NotSupportedException($"{c.Source}: model_type '{c.ModelType}': training and gradients are implemented for the Llama block " +
                "(llama, mistral, qwen2, qwen3) only");
    }

    /// <summary>Loads the f32 values of a checkpoint folder (any stored dtype), with a PEFT LoRA adapter merged when given.</summary>
    public static ModelParameters Load(string folder, string? adapterFolder = null)
    {
        var config = ModelConfig.Load(folder);
        CheckSupported(config);
        using var ckpt = new ShardedCheckpoint(folder);
        var weights = CausalLM.ResolveWeights(config, ckpt, folder);
        if (adapterFolder is not null) LoraAdapter.Load(adapterFolder).MergeInto(weights, config);
        var values = weights.ToDictionary(kv => kv.Key, kv => kv.Value.ToArray(), StringComparer.Ordinal);
        string configPath = Directory.Exists(folder) ? Path.Combine(folder, "config.json") : folder;
        return new ModelParameters(config, File.ReadAllText(configPath), values);
    }

    /// <summary>A freshly initialised model for a config.json text, as transformers' <c>_init_weights</c> does for Llama:
    /// matrices and embeddings ~ N(0, initializer_range²) (default 0.02), norm scales 1, biases 0. Deterministic in
    /// <paramref name="seed"/>.</summary>
    public static ModelParameters Initialise(string configJson, ulong seed, string source = "config.json")
    {
        var config = ModelConfig.Parse(configJson, source);
        CheckSupported(config);
        float std = 0.02f;
        if (JsonNode.Parse(configJson) is JsonObject o && o["initializer_range"] is JsonValue v && v.TryGetValue(out double r)) std = (float)r;
        var values = new Dictionary<string, float[]>(StringComparer.Ordinal);
        var specs = ModelLayout.Parameters(config);
        for (int p = 0; p < specs.Count; p++)
        {
            var spec = specs[p];
            var a = Tensor.Allocate(Tensor.ShapeLength(spec.Shape));
            switch (spec.Role)
            {
                case ParameterRole.NormWeight:
                    Array.Fill(a, config.Norm == NormKind.GemmaRmsNorm ? 0f : 1f);
                    break;
                case ParameterRole.Matrix or ParameterRole.Embedding:
                    var rng = Rng.For(seed, (ulong)p);
                    for (int i = 0; i < a.Length; i++) a[i] = (float)(std * rng.NextGaussian());
                    break;
            }
            values[spec.Name] = a;
        }
        return new ModelParameters(config, configJson, values);
    }

    /// <summary>Zeroed arrays of the same shapes for <paramref name="names"/> (default: every parameter): a gradient.</summary>
    public ModelParameters ZerosLike(IEnumerable<string>? names = null) =>
        new(Config, ConfigJson, (names ?? _values.Keys).ToDictionary(n => n, n => Tensor.Allocate(this[n].Length), StringComparer.Ordinal));

    /// <summary>A shallow copy sharing every array except those in <paramref name="replaced"/>, which get fresh copies.</summary>
    public ModelParameters CopyReplacing(IEnumerable<string> replaced)
    {
        var values = new Dictionary<string, float[]>(_values, StringComparer.Ordinal);
        foreach (var n in replaced) values[n] = (float[])this[n].Clone();
        return new ModelParameters(Config, ConfigJson, values);
    }

    /// <summary>A deep copy.</summary>
    public ModelParameters Clone() => CopyReplacing(_values.Keys);

    public void Clear()
    {
        foreach (var a in _values.Values) Array.Clear(a);
    }

    /// <summary>The shape of a parameter (from the layout).</summary>
    public int[] ShapeOf(string name) => Specs.FirstOrDefault(s => s.Name == name)?.Shape
        ?? throw new KeyNotFoundException($"no parameter '{name}' (model_type {Config.ModelType})");

    /// <summary>True for the parameters AdamW decays by default: matrices and embeddings, not norm scales or biases.</summary>
    public bool IsMatrix(string name) => Specs.First(s => s.Name == name).Role is ParameterRole.Matrix or ParameterRole.Embedding;

    /// <summary>Writes a standard Hugging Face checkpoint folder: config.json (torch_dtype float32) and model.safetensors
    /// (F32, the exact names and shapes of <see cref="ModelLayout"/>, format "pt" metadata). Tokenizer files are the
    /// caller's (see <see cref="CopyTokenizerFiles"/>).</summary>
    public void Save(string folder)
    {
        Directory.CreateDirectory(folder);
        var tensors = Specs.Select(s => TensorData.F32(s.Name, this[s.Name], s.Shape));
        SafetensorsWriter.Write(Path.Combine(folder, "model.safetensors"), tensors, new Dictionary<string, string> { ["format"] = "pt" });
        var node = JsonNode.Parse(ConfigJson) as JsonObject ?? throw new InvalidDataException($"{Config.Source}: not a JSON object");
        if (node.ContainsKey("dtype")) node["dtype"] = "float32"; else node["torch_dtype"] = "float32";
        WriteAtomic(Path.Combine(folder, "config.json"), node.ToJsonString(new System.Text.Json.JsonSerializerOptions { WriteIndented = true }));
    }

    /// <summary>The tokenizer and generation files a Hugging Face folder carries besides the weights.</summary>
    public static readonly string[] TokenizerFiles =
        ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model", "generation_config.json",
         "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json"];

    /// <summary>Copies the tokenizer and generation files present in <paramref name="from"/> into <paramref name="to"/>.</summary>
    public static void CopyTokenizerFiles(string from, string to)
    {
        Directory.CreateDirectory(to);
        foreach (var f in TokenizerFiles)
        {
            string src = Path.Combine(from, f);
            if (File.Exists(src) && Path.GetFullPath(src) != Path.GetFullPath(Path.Combine(to, f))) File.Copy(src, Path.Combine(to, f), overwrite: true);
        }
    }

    internal static void WriteAtomic(string path, string text)
    {
        string tmp = path + ".tmp-" + Environment.ProcessId;
        File.WriteAllText(tmp, text);
        File.Move(tmp, path, overwrite: true);
    }
}

using System.Text.Json;
using System.Text.RegularExpressions;
using Finetrace.Models.Safetensors;
using Finetrace.Tensors;

namespace Finetrace.Models;

/// <summary>
/// A PEFT LoRA adapter (adapter_config.json + adapter_model.safetensors, model-facts.md §16), merged into the base
/// weights at load: W' = W + s·(B·A) with s = lora_alpha / r (or / sqrt(r) with use_rslora), transposed when
/// fan_in_fan_out; the delta is computed in f32 and rounded once to the weight's storage dtype. DoRA, bias training,
/// modules_to_save, unknown keys and shape mismatches are refused.
/// </summary>
public sealed class LoraAdapter
{
    public string Folder { get; }
    public int Rank { get; }
    public float Alpha { get; }
    public bool UseRsLora { get; }
    public bool FanInFanOut { get; }
    readonly string[]? _targetList;
    readonly string? _targetRegex;
    readonly Dictionary<string, int> _rankPattern = new();
    readonly Dictionary<string, float> _alphaPattern = new();
    readonly string _configPath, _weightsPath;

    LoraAdapter(string folder, JsonElement cfg, string configPath, string weightsPath)
    {
        Folder = folder; _configPath = configPath; _weightsPath = weightsPath;
        Exception Fail(string field, string problem) => new InvalidDataException($"{configPath}: field '{field}': {problem}");
        string peft = cfg.TryGetProperty("peft_type", out var pt) && pt.ValueKind == JsonValueKind.String ? pt.GetString()! : throw Fail("peft_type", "missing");
        if (peft != "LORA") throw Fail("peft_type", $"'{peft}' is not supported; only LORA adapters can be merged");
        if (cfg.TryGetProperty("use_dora", out var dora) && dora.ValueKind == JsonValueKind.True)
            throw Fail("use_dora", "DoRA adapters are not supported (the plain LoRA merge would be wrong for them)");
        if (cfg.TryGetProperty("bias", out var bias) && bias.ValueKind == JsonValueKind.String && bias.GetString() != "none")
            throw Fail("bias", $"'{bias.GetString()}' is not supported; only adapters trained with bias \"none\" can be merged");
        if (cfg.TryGetProperty("modules_to_save", out var mts) && mts.ValueKind == JsonValueKind.Array && mts.GetArrayLength() > 0)
            throw Fail("modules_to_save", "adapters that replace whole modules are not supported");
        Rank = cfg.TryGetProperty("r", out var r) && r.ValueKind == JsonValueKind.Number ? r.GetInt32() : throw Fail("r", "missing");
        if (Rank <= 0) throw Fail("r", $"{Rank} must be positive");
        Alpha = cfg.TryGetProperty("lora_alpha", out var a) && a.ValueKind == JsonValueKind.Number ? (float)a.GetDouble() : throw Fail("lora_alpha", "missing");
        UseRsLora = cfg.TryGetProperty("use_rslora", out var rs) && rs.ValueKind == JsonValueKind.True;
        FanInFanOut = cfg.TryGetProperty("fan_in_fan_out", out var ff) && ff.ValueKind == JsonValueKind.True;
        if (cfg.TryGetProperty("target_modules", out var tm))
        {
            if (tm.ValueKind == JsonValueKind.String) _targetRegex = tm.GetString();
            else if (tm.ValueKind == JsonValueKind.Array) _targetList = tm.EnumerateArray().Select(e => e.GetString() ?? "").ToArray();
        }
        if (cfg.TryGetProperty("rank_pattern", out var rp) && rp.ValueKind == JsonValueKind.Object)
            foreach (var e in rp.EnumerateObject()) _rankPattern[e.Name] = e.Value.GetInt32();
        if (cfg.TryGetProperty("alpha_pattern", out var ap) && ap.ValueKind == JsonValueKind.Object)
            foreach (var e in ap.EnumerateObject()) _alphaPattern[e.Name] = (float)e.Value.GetDouble();
    }

    public static LoraAdapter Load(string folder)
    {
        if (!Directory.Exists(folder)) throw new DirectoryNotFoundException($"{folder}: adapter folder not found");
        if (!File.Exists(Path.Combine(folder, "adapter_config.json")))
        {
            // PEFT saves a non-default adapter name in a sub-folder of that name
            var named = Directory.GetDirectories(folder).Where(d => File.Exists(Path.Combine(d, "adapter_config.json"))).ToList();
            if (named.Count == 1) folder = named[0];
            else if (named.Count > 1)
                throw new AdapterFolderException(folder, $"several adapters ({string.Join(", ", named.Select(Path.GetFileName))}); give one of these sub-folders", named);
        }
        string cfgPath = Path.Combine(folder, "adapter_config.json");
        string weights = Path.Combine(folder, "adapter_model.safetensors");
        if (!File.Exists(cfgPath)) throw new AdapterFolderException(folder, "no adapter_config.json: not a PEFT adapter folder");
        if (!File.Exists(weights))
        {
            if (File.Exists(Path.Combine(folder, "adapter_model.bin")))
                throw new InvalidDataException($"{folder}: only adapter_model.bin (a pickle) is present; convert it to adapter_model.safetensors (PEFT save_pretrained(safe_serialization=True))");
            throw new FileNotFoundException($"{folder}: no adapter_model.safetensors", weights);
        }
        using var doc = JsonDocument.Parse(File.ReadAllBytes(cfgPath));
        return new LoraAdapter(folder, doc.RootElement.Clone(), cfgPath, weights);
    }

    /// <summary>PEFT's pattern rule: a key matches a module name when the name ends with it at a module boundary.</summary>
    static bool PatternMatches(string key, string module) =>
        module == key || Regex.IsMatch(module, $"(^|\\.){key}$");

    bool IsTarget(string module)
    {
        if (_targetRegex is not null) return Regex.IsMatch(module, $"^(?:{_targetRegex})$");
        if (_targetList is null) return true;
        foreach (var t in _targetList)
            if (t == "all-linear" || module == t || module.EndsWith("." + t, StringComparison.Ordinal)) return true;
        return false;
    }

    /// <summary>Scaling s for a module: alpha/r, or alpha/sqrt(r) with rsLoRA, honouring rank_pattern / alpha_pattern.</summary>
    public float Scaling(string module, out int rank)
    {
        rank = Rank;
        float alpha = Alpha;
        foreach (var (k, v) in _rankPattern) if (PatternMatches(k, module)) { rank = v; break; }
        foreach (var (k, v) in _alphaPattern) if (PatternMatches(k, module)) { alpha = v; break; }
        return UseRsLora ? alpha / MathF.Sqrt(rank) : alpha / rank;
    }

    /// <summary>Replaces each adapted weight in <paramref name="weights"/> (keyed by canonical HF names) by its merged copy.</summary>
    public void MergeInto(Dictionary<string, Weight> weights, ModelConfig config)
    {
        foreach (var d in Deltas(weights, config))
        {
            var w = weights[d.WeightName];
            var merged = w.ToArray();
            d.AddTo(merged, d.Scale);
            weights[d.WeightName] = Weight.Owned(w.Name, w.DType, w.Shape, merged, $"{w.Origin} + LoRA {Folder}");
        }
    }

    /// <summary>The adapter's low-rank updates, one per adapted base weight (keyed by canonical HF names in
    /// <paramref name="weights"/>), read without merging: for weight diffs and amplification.</summary>
    public IReadOnlyList<LoraDelta> Deltas(IReadOnlyDictionary<string, Weight> weights, ModelConfig config)
    {
        using var file = new SafetensorsFile(_weightsPath);
        // module path (without base_model.model.) → (A name, B name)
        var modules = new Dictionary<string, (string? A, string? B, bool Embedding)>(StringComparer.Ordinal);
        foreach (var key in file.Tensors.Keys)
        {
            var m = Regex.Match(key, @"^base_model\.model\.(.+)\.(lora_A|lora_B|lora_embedding_A|lora_embedding_B)(\.default)?(\.weight)?$");
            if (!m.Success)
                throw new InvalidDataException($"{_weightsPath}: unexpected tensor '{key}'; only base_model.model.<module>.lora_A/lora_B(.weight) keys can be merged");
            string module = m.Groups[1].Value;
            var entry = modules.GetValueOrDefault(module);
            bool isA = m.Groups[2].Value.EndsWith("A", StringComparison.Ordinal);
            bool emb = m.Groups[2].Value.StartsWith("lora_embedding", StringComparison.Ordinal);
            entry = isA ? entry with { A = key, Embedding = emb } : entry with { B = key, Embedding = emb };
            modules[module] = entry;
        }

        // resolve base names with or without prefixes; a tied lm_head is the embedding
        var byNormal = weights.Keys.ToDictionary(ModelLayout.Normalise, k => k, StringComparer.Ordinal);
        var result = new List<LoraDelta>();
        foreach (var (module, (aName, bName, embedding)) in modules.OrderBy(kv => kv.Key, StringComparer.Ordinal))
        {
            if (aName is null || bName is null)
                throw new InvalidDataException($"{_weightsPath}: module '{module}' has {(aName is null ? "no lora_A" : "no lora_B")} tensor");
            if (!IsTarget(module))
                throw new InvalidDataException($"{_weightsPath}: module '{module}' is not covered by target_modules in {_configPath}");
            string weightName = module + ".weight";
            string? baseName = weights.ContainsKey(weightName) ? weightName : byNormal.GetValueOrDefault(ModelLayout.Normalise(weightName));
            if (baseName is null && config.TiedEmbeddings && ModelLayout.Normalise(weightName) is "lm_head.weight" or "embed_out.weight")
                baseName = ModelLayout.EmbedName(config);
            if (baseName is null)
                throw new InvalidDataException($"{_weightsPath}: module '{module}' matches no weight of the base model (model_type {config.ModelType})");

            var w = weights[baseName];
            var aT = file.ReadF32(aName);
            var bT = file.ReadF32(bName);
            float s = Scaling(module, out int rank);
            // Linear: A [r, in], B [out, r], W [out, in] (or [in, out] with fan_in_fan_out);
            // Embedding: A [r, num_embeddings], B [dim, r], table [num_embeddings, dim]: delta = (B·A)ᵀ
            bool transposed = embedding || FanInFanOut;
            int outF = transposed ? w.Cols : w.Rows, inF = transposed ? w.Rows : w.Cols;
            if (aT.Rank != 2 || bT.Rank != 2 || aT.Shape[0] != rank || bT.Shape[1] != rank || aT.Shape[1] != inF || bT.Shape[0] != outF)
                throw new InvalidDataException($"{_weightsPath}: module '{module}': lora_A [{string.Join(", ", aT.Shape)}] and lora_B [{string.Join(", ", bT.Shape)}] " +
                    $"do not fit base weight '{w.Name}' [{string.Join(", ", w.Shape)}] with r = {rank}{(transposed ? " (transposed)" : "")}");
            result.Add(new LoraDelta(baseName, module, s, rank, aT, bT, transposed));
        }
        return result;
    }
}

/// <summary>
/// One LoRA update of base weight <see cref="WeightName"/>: ΔW = Scale · (B·A) as an [out, in] matrix, stored into the
/// weight transposed when <see cref="Transposed"/> (embeddings, fan_in_fan_out).
/// </summary>
public sealed record LoraDelta(string WeightName, string Module, float Scale, int Rank, Tensor A, Tensor B, bool Transposed)
{
    /// <summary>Rows of ΔW (the module's output features).</summary>
    public int Out => B.Shape[0];
    /// <summary>Columns of ΔW (the module's input features).</summary>
    public int In => A.Shape[1];

    /// <summary>Adds <paramref name="coeff"/> · (B·A) to <paramref name="weight"/> laid out as the base weight is stored
    /// ([out, in], or [in, out] when transposed); the product is computed in f32.</summary>
    public void AddTo(float[] weight, float coeff)
    {
        int outF = Out, inF = In;
        if (weight.Length != (long)outF * inF) throw new ArgumentException($"'{WeightName}': {weight.Length} values for a LoRA delta of [{outF}, {inF}]");
        var delta = new float[(long)outF * inF]; // [out, in] = B[out, r] · A[r, in]
        Gemm.MatMulNN(B.Data, A.Data, outF, Rank, inF, delta);
        if (!Transposed)
            for (long i = 0; i < weight.Length; i++) weight[i] += coeff * delta[i];
        else
            for (int o = 0; o < outF; o++)
                for (int j = 0; j < inF; j++) weight[(long)j * outF + o] += coeff * delta[(long)o * inF + j];
    }
}

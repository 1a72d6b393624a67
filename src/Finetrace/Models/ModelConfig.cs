using System.Text.Json;

namespace Finetrace.Models;

/// <summary>The seven supported decoder families (model-facts.md §4–7).</summary>
public enum Architecture { Llama, Mistral, Qwen2, Qwen3, Gemma2, Gpt2, GptNeox }

public enum HiddenAct { Silu, GeluTanh, GeluErf }

public enum NormKind { RmsNorm, GemmaRmsNorm, LayerNorm }

/// <summary>RoPE frequency rule (model-facts.md §8); only the rules whose math is implemented are accepted.</summary>
public enum RopeType { Default, Linear, Llama3 }

/// <summary>
/// A causal LM's config.json, normalised across families and across the transformers-4 and -5 field shapes
/// (rope_scaling / rope_parameters, torch_dtype / dtype, rotary_pct / partial_rotary_factor). Every field that changes
/// the math is read here; a value whose math is not implemented (e.g. rope_type "yarn") is a clear error, never ignored.
/// </summary>
public sealed class ModelConfig
{
    public required Architecture Arch { get; init; }
    public required string ModelType { get; init; }
    public required int Hidden { get; init; }
    public required int Layers { get; init; }
    public required int Heads { get; init; }
    public required int KvHeads { get; init; }
    public required int HeadDim { get; init; }
    public required int Intermediate { get; init; }
    public required int Vocab { get; init; }
    public int MaxPositions { get; init; }
    public required float NormEps { get; init; }
    public required NormKind Norm { get; init; }
    public required HiddenAct Act { get; init; }
    public required bool TiedEmbeddings { get; init; }

    /// <summary>Q, K, V projections carry biases (Qwen2, GPT-2, NeoX, Llama with attention_bias).</summary>
    public bool QkvBias { get; init; }
    /// <summary>The attention output projection carries a bias (GPT-2, NeoX, Llama with attention_bias).</summary>
    public bool OutBias { get; init; }
    /// <summary>MLP projections carry biases (GPT-2, NeoX, Llama with mlp_bias).</summary>
    public bool MlpBias { get; init; }
    /// <summary>Qwen3: per-head RMSNorm on q and k before RoPE.</summary>
    public bool QkNorm { get; init; }
    public bool ParallelResidual { get; init; }

    // RoPE (not used by GPT-2, which has learned positions)
    public float RopeTheta { get; init; } = 10000f;
    /// <summary>Channels of each head that are rotated (NeoX: int(head_dim · rotary_pct)); the rest pass through.</summary>
    public int RotaryDim { get; init; }
    public RopeType Rope { get; init; } = RopeType.Default;
    public float RopeFactor { get; init; } = 1f;
    public float RopeLowFreqFactor { get; init; } = 1f;
    public float RopeHighFreqFactor { get; init; } = 4f;
    public int RopeOriginalMaxPositions { get; init; } = 8192;

    /// <summary>Multiplier on q·kᵀ (head_dim^-½, Gemma 2: query_pre_attn_scalar^-½, GPT-2 without scaling: 1).</summary>
    public required float AttnScale { get; init; }
    /// <summary>Gemma 2: c·tanh(s/c) on the scaled scores before the mask; null when absent.</summary>
    public float? AttnSoftcap { get; init; }
    /// <summary>Gemma 2: c·tanh(z/c) on the logits; null when absent.</summary>
    public float? FinalSoftcap { get; init; }
    /// <summary>Window W (keys k with q − W &lt; k ≤ q) for the layers flagged in <see cref="SlidingLayers"/>.</summary>
    public int SlidingWindow { get; init; }
    public required bool[] SlidingLayers { get; init; }
    /// <summary>Gemma 2: the embedding is multiplied by sqrt(hidden) rounded to the activation dtype (f32 here).</summary>
    public float EmbedScale { get; init; } = 1f;

    public int? BosTokenId { get; init; }
    public int[] EosTokenIds { get; init; } = [];
    /// <summary>torch_dtype / dtype from config.json: advisory only, the safetensors header decides.</summary>
    public string? DeclaredDtype { get; init; }

    public string Source { get; init; } = "config.json";

    public static ModelConfig Load(string pathOrDir)
    {
        string path = Directory.Exists(pathOrDir) ? Path.Combine(pathOrDir, "config.json") : pathOrDir;
        if (!File.Exists(path)) throw new FileNotFoundException($"{path}: no config.json; a model folder needs config.json beside model.safetensors", path);
        JsonDocument doc;
        try { doc = JsonDocument.Parse(File.ReadAllBytes(path), new JsonDocumentOptions { AllowTrailingCommas = true, CommentHandling = JsonCommentHandling.Skip }); }
        catch (JsonException e) { throw new InvalidDataException($"{path}: not valid JSON ({e.Message})", e); }
        using (doc) return Parse(doc.RootElement, path);
    }

    public static ModelConfig Parse(string json, string source = "config.json")
    {
        using var doc = JsonDocument.Parse(json);
        return Parse(doc.RootElement, source);
    }

    public static ModelConfig Parse(JsonElement root, string source)
    {
        var r = new Reader(root, source);
        string type = r.Str("model_type") ?? throw r.Fail("model_type", "missing; expected one of llama, mistral, qwen2, qwen3, gemma2, gpt2, gpt_neox");
        return type switch
        {
            "llama" => ParseLlamaLike(r, Architecture.Llama, type),
            "mistral" => ParseLlamaLike(r, Architecture.Mistral, type),
            "qwen2" => ParseLlamaLike(r, Architecture.Qwen2, type),
            "qwen3" => ParseLlamaLike(r, Architecture.Qwen3, type),
            "gemma2" => ParseLlamaLike(r, Architecture.Gemma2, type),
            "gpt2" => ParseGpt2(r),
            "gpt_neox" => ParseNeox(r),
            _ => throw r.Fail("model_type", $"'{type}' is not supported; supported: llama, mistral, qwen2, qwen3, gemma2, gpt2, gpt_neox"),
        };
    }

    static ModelConfig ParseLlamaLike(Reader r, Architecture arch, string type)
    {
        int hidden = r.Int("hidden_size");
        int layers = r.Int("num_hidden_layers");
        int heads = r.Int("num_attention_heads");
        int kv = r.OptInt("num_key_value_heads") ?? heads;
        if (heads % kv != 0) throw r.Fail("num_key_value_heads", $"{kv} does not divide num_attention_heads {heads}");
        int headDim = r.OptInt("head_dim") ?? (arch == Architecture.Gemma2 ? 256 : hidden % heads == 0 ? hidden / heads : throw r.Fail("head_dim", $"missing and hidden_size {hidden} is not a multiple of num_attention_heads {heads}"));
        var rope = ReadRope(r, headDim, defaultTheta: 10000f, partialKey: null, defaultPartial: 1f);
        bool gemma = arch == Architecture.Gemma2;

        string actKey = gemma && r.Has("hidden_activation") ? "hidden_activation" : "hidden_act";
        var act = ParseActivation(r, actKey, gemma ? "gelu_pytorch_tanh" : "silu");

        // Sliding window per layer (model-facts.md §10).
        // Gemma2Config and MistralConfig default to a 4096 window when the key is absent; an explicit null means none.
        int window = r.OptInt("sliding_window") ?? r.OptInt("sliding_window_size")
            ?? (!r.Present("sliding_window") && arch is (Architecture.Gemma2 or Architecture.Mistral) ? 4096 : 0);
        var sliding = new bool[layers];
        string[]? layerTypes = r.StrArray("layer_types");
        if (layerTypes is not null)
        {
            if (layerTypes.Length != layers) throw r.Fail("layer_types", $"has {layerTypes.Length} entries for {layers} layers");
            for (int i = 0; i < layers; i++)
                sliding[i] = layerTypes[i] switch
                {
                    "sliding_attention" => true,
                    "full_attention" => false,
                    var s => throw r.Fail("layer_types", $"entry {i} is '{s}'; only sliding_attention and full_attention are supported"),
                };
            if (sliding.Any(s => s) && window <= 0) throw r.Fail("sliding_window", "layer_types has sliding layers but sliding_window is missing");
        }
        else if (window > 0)
        {
            switch (arch)
            {
                case Architecture.Gemma2: for (int i = 0; i < layers; i += 2) sliding[i] = true; break;
                case Architecture.Mistral: Array.Fill(sliding, true); break;
                case Architecture.Qwen2 or Architecture.Qwen3:
                    if (r.OptBool("use_sliding_window") ?? false)
                    {
                        int from = r.OptInt("max_window_layers") ?? layers;
                        for (int i = from; i < layers; i++) sliding[i] = true;
                    }
                    break;
                case Architecture.Llama: break; // Llama has no sliding window; the field is inert there
            }
        }

        bool attnBias = r.OptBool("attention_bias") ?? false;
        bool mlpBias = r.OptBool("mlp_bias") ?? false;
        if (arch is not Architecture.Llama && mlpBias) throw r.Fail("mlp_bias", $"true is only supported for llama");
        float scale = 1f / MathF.Sqrt(headDim);
        if (gemma)
        {
            float qpas = r.OptFloat("query_pre_attn_scalar") ?? 256; // Gemma2Config default
            scale = (float)Math.Pow(qpas, -0.5);
        }
        else
        {
            // HF: self.scaling = self.head_dim ** -0.5 (a Python double rounded to f32 when it multiplies)
            scale = (float)Math.Pow(headDim, -0.5);
        }

        return new ModelConfig
        {
            Arch = arch, ModelType = type, Source = r.Source,
            Hidden = hidden, Layers = layers, Heads = heads, KvHeads = kv, HeadDim = headDim,
            Intermediate = r.Int("intermediate_size"), Vocab = r.Int("vocab_size"),
            MaxPositions = r.OptInt("max_position_embeddings") ?? 0,
            NormEps = r.OptFloat("rms_norm_eps") ?? 1e-6f,
            Norm = gemma ? NormKind.GemmaRmsNorm : NormKind.RmsNorm,
            Act = act,
            TiedEmbeddings = r.OptBool("tie_word_embeddings") ?? gemma, // HF defaults: Gemma2Config ties, Llama/Mistral/Qwen configs do not
            QkvBias = arch == Architecture.Qwen2 || attnBias,
            OutBias = arch != Architecture.Qwen2 && attnBias,
            MlpBias = mlpBias,
            QkNorm = arch == Architecture.Qwen3,
            RopeTheta = rope.theta, RotaryDim = rope.rotaryDim, Rope = rope.type, RopeFactor = rope.factor,
            RopeLowFreqFactor = rope.low, RopeHighFreqFactor = rope.high, RopeOriginalMaxPositions = rope.original,
            AttnScale = scale,
            // Gemma2Config defaults (50, 30) apply when the key is absent; an explicit null disables the cap
            AttnSoftcap = gemma ? r.OptFloat("attn_logit_softcapping") ?? (r.Present("attn_logit_softcapping") ? null : 50f) : null,
            FinalSoftcap = gemma ? r.OptFloat("final_logit_softcapping") ?? (r.Present("final_logit_softcapping") ? null : 30f) : null,
            SlidingWindow = window, SlidingLayers = sliding,
            EmbedScale = gemma ? (float)Math.Sqrt(hidden) : 1f,
            BosTokenId = r.OptInt("bos_token_id"), EosTokenIds = r.IntOrIntArray("eos_token_id"),
            DeclaredDtype = r.Str("dtype") ?? r.Str("torch_dtype"),
        };
    }

    static ModelConfig ParseGpt2(Reader r)
    {
        int hidden = r.Int("n_embd");
        int heads = r.Int("n_head");
        int layers = r.Int("n_layer");
        if (hidden % heads != 0) throw r.Fail("n_head", $"{heads} does not divide n_embd {hidden}");
        if (r.OptBool("scale_attn_by_inverse_layer_idx") == true)
            throw r.Fail("scale_attn_by_inverse_layer_idx", "true is not supported (it changes the attention scale per layer)");
        int headDim = hidden / heads;
        bool scaled = r.OptBool("scale_attn_weights") ?? true;
        return new ModelConfig
        {
            Arch = Architecture.Gpt2, ModelType = "gpt2", Source = r.Source,
            Hidden = hidden, Layers = layers, Heads = heads, KvHeads = heads, HeadDim = headDim,
            Intermediate = r.OptInt("n_inner") ?? 4 * hidden, Vocab = r.Int("vocab_size"),
            MaxPositions = r.OptInt("n_positions") ?? 1024,
            NormEps = r.OptFloat("layer_norm_epsilon") ?? 1e-5f, Norm = NormKind.LayerNorm,
            Act = ParseActivation(r, "activation_function", "gelu_new"),
            TiedEmbeddings = r.OptBool("tie_word_embeddings") ?? true,
            QkvBias = true, OutBias = true, MlpBias = true,
            AttnScale = scaled ? (float)Math.Pow(headDim, -0.5) : 1f,
            SlidingLayers = new bool[layers],
            BosTokenId = r.OptInt("bos_token_id"), EosTokenIds = r.IntOrIntArray("eos_token_id"),
            DeclaredDtype = r.Str("dtype") ?? r.Str("torch_dtype"),
        };
    }

    static ModelConfig ParseNeox(Reader r)
    {
        int hidden = r.Int("hidden_size");
        int heads = r.Int("num_attention_heads");
        int layers = r.Int("num_hidden_layers");
        if (hidden % heads != 0) throw r.Fail("num_attention_heads", $"{heads} does not divide hidden_size {hidden}");
        int headDim = hidden / heads;
        var rope = ReadRope(r, headDim, defaultTheta: r.OptFloat("rotary_emb_base") ?? 10000f, partialKey: "rotary_pct", defaultPartial: 0.25f);
        bool bias = r.OptBool("attention_bias") ?? true;
        return new ModelConfig
        {
            Arch = Architecture.GptNeox, ModelType = "gpt_neox", Source = r.Source,
            Hidden = hidden, Layers = layers, Heads = heads, KvHeads = heads, HeadDim = headDim,
            Intermediate = r.OptInt("intermediate_size") ?? 4 * hidden, Vocab = r.Int("vocab_size"),
            MaxPositions = r.OptInt("max_position_embeddings") ?? 0,
            NormEps = r.OptFloat("layer_norm_eps") ?? 1e-5f, Norm = NormKind.LayerNorm,
            Act = ParseActivation(r, "hidden_act", "gelu"),
            TiedEmbeddings = r.OptBool("tie_word_embeddings") ?? false,
            QkvBias = bias, OutBias = bias, MlpBias = true,
            ParallelResidual = r.OptBool("use_parallel_residual") ?? true,
            RopeTheta = rope.theta, RotaryDim = rope.rotaryDim, Rope = rope.type, RopeFactor = rope.factor,
            RopeLowFreqFactor = rope.low, RopeHighFreqFactor = rope.high, RopeOriginalMaxPositions = rope.original,
            AttnScale = (float)Math.Pow(headDim, -0.5),
            SlidingLayers = new bool[layers],
            BosTokenId = r.OptInt("bos_token_id"), EosTokenIds = r.IntOrIntArray("eos_token_id"),
            DeclaredDtype = r.Str("dtype") ?? r.Str("torch_dtype"),
        };
    }

    static HiddenAct ParseActivation(Reader r, string key, string fallback)
    {
        string s = r.Str(key) ?? fallback;
        return s switch
        {
            "silu" or "swish" => HiddenAct.Silu,
            "gelu_pytorch_tanh" or "gelu_new" or "gelu_fast" => HiddenAct.GeluTanh,
            "gelu" => HiddenAct.GeluErf,
            _ => throw r.Fail(key, $"activation '{s}' is not supported; supported: silu, swish, gelu, gelu_new, gelu_pytorch_tanh, gelu_fast"),
        };
    }

    record struct RopeSpec(RopeType type, float theta, int rotaryDim, float factor, float low, float high, int original);

    /// <summary>RoPE fields in either shape: v4 rope_theta + rope_scaling {rope_type|type, …}, or v5 rope_parameters
    /// {rope_type, rope_theta, partial_rotary_factor, …} (possibly keyed by layer type).</summary>
    static RopeSpec ReadRope(Reader r, int headDim, float defaultTheta, string? partialKey, float defaultPartial)
    {
        float theta = r.OptFloat("rope_theta") ?? defaultTheta;
        float partial = (partialKey is null ? null : r.OptFloat(partialKey)) ?? r.OptFloat("partial_rotary_factor") ?? defaultPartial;
        JsonElement? scaling = null;
        string scalingKey = "rope_scaling";
        if (r.Obj("rope_parameters") is { } p)
        {
            scalingKey = "rope_parameters";
            // Gemma-style per-layer-type parameters: accept only when all entries agree.
            if (p.TryGetProperty("full_attention", out var full) && full.ValueKind == JsonValueKind.Object)
            {
                foreach (var e in p.EnumerateObject())
                    if (e.Value.GetRawText() != full.GetRawText())
                        throw r.Fail("rope_parameters", $"per-layer-type RoPE parameters differ ('{e.Name}' vs 'full_attention'); not supported");
                p = full;
            }
            scaling = p;
            if (p.TryGetProperty("rope_theta", out var th) && th.ValueKind == JsonValueKind.Number) theta = th.GetSingle();
            if (p.TryGetProperty("partial_rotary_factor", out var pf) && pf.ValueKind == JsonValueKind.Number) partial = pf.GetSingle();
        }
        else if (r.Obj("rope_scaling") is { } s) scaling = s;

        var spec = new RopeSpec(RopeType.Default, theta, (int)(headDim * partial), 1f, 1f, 4f, 8192);
        if (spec.rotaryDim % 2 != 0 || spec.rotaryDim <= 0)
            throw r.Fail(partialKey ?? "partial_rotary_factor", $"gives {spec.rotaryDim} rotary channels of head_dim {headDim}; must be even and positive");
        if (scaling is not { } sc) return spec;

        string? rt = null;
        if (sc.TryGetProperty("rope_type", out var t1) && t1.ValueKind == JsonValueKind.String) rt = t1.GetString();
        else if (sc.TryGetProperty("type", out var t2) && t2.ValueKind == JsonValueKind.String) rt = t2.GetString();
        float Num(string key, float? fallback)
        {
            if (sc.TryGetProperty(key, out var v) && v.ValueKind == JsonValueKind.Number) return v.GetSingle();
            return fallback ?? throw r.Fail(scalingKey, $"rope_type '{rt}' needs '{key}'");
        }
        switch (rt ?? "default")
        {
            case "default": return spec;
            case "linear": return spec with { type = RopeType.Linear, factor = Num("factor", null) };
            case "llama3":
                return spec with
                {
                    type = RopeType.Llama3, factor = Num("factor", null), low = Num("low_freq_factor", null), high = Num("high_freq_factor", null),
                    original = (int)Num("original_max_position_embeddings", null),
                };
            default:
                throw r.Fail(scalingKey, $"rope_type '{rt}' is not supported (it changes the RoPE frequencies); supported: default, linear, llama3");
        }
    }

    /// <summary>Typed access to config.json fields with errors that name the file and the field.</summary>
    sealed class Reader(JsonElement root, string source)
    {
        public string Source => source;

        public Exception Fail(string field, string problem) => new InvalidDataException($"{source}: field '{field}': {problem}");

        public bool Has(string key) => root.TryGetProperty(key, out var v) && v.ValueKind != JsonValueKind.Null;

        /// <summary>The key exists, possibly with a null value.</summary>
        public bool Present(string key) => root.TryGetProperty(key, out _);

        JsonElement? Get(string key) => root.TryGetProperty(key, out var v) && v.ValueKind != JsonValueKind.Null ? v : null;

        public string? Str(string key) => Get(key) is { } v
            ? (v.ValueKind == JsonValueKind.String ? v.GetString() : throw Fail(key, $"expected a string, found {v.GetRawText()}"))
            : null;

        public int Int(string key) => OptInt(key) ?? throw Fail(key, "missing (required)");

        public int? OptInt(string key)
        {
            if (Get(key) is not { } v) return null;
            if (v.ValueKind == JsonValueKind.Number && v.TryGetDouble(out double d) && d == Math.Floor(d) && Math.Abs(d) <= int.MaxValue) return (int)d;
            throw Fail(key, $"expected an integer, found {v.GetRawText()}");
        }

        public float? OptFloat(string key)
        {
            if (Get(key) is not { } v) return null;
            if (v.ValueKind == JsonValueKind.Number) return (float)v.GetDouble();
            throw Fail(key, $"expected a number, found {v.GetRawText()}");
        }

        public bool? OptBool(string key)
        {
            if (Get(key) is not { } v) return null;
            return v.ValueKind switch
            {
                JsonValueKind.True => true,
                JsonValueKind.False => false,
                _ => throw Fail(key, $"expected true or false, found {v.GetRawText()}"),
            };
        }

        public JsonElement? Obj(string key)
        {
            if (Get(key) is not { } v) return null;
            return v.ValueKind == JsonValueKind.Object ? v : throw Fail(key, $"expected an object, found {v.GetRawText()}");
        }

        public string[]? StrArray(string key)
        {
            if (Get(key) is not { } v) return null;
            if (v.ValueKind != JsonValueKind.Array) throw Fail(key, "expected an array of strings");
            return v.EnumerateArray().Select(e => e.ValueKind == JsonValueKind.String ? e.GetString()! : throw Fail(key, "expected an array of strings")).ToArray();
        }

        public int[] IntOrIntArray(string key)
        {
            if (Get(key) is not { } v) return [];
            if (v.ValueKind == JsonValueKind.Number) return [OptInt(key)!.Value];
            if (v.ValueKind == JsonValueKind.Array)
                return v.EnumerateArray().Select(e => e.ValueKind == JsonValueKind.Number ? e.GetInt32() : throw Fail(key, "expected integers")).ToArray();
            throw Fail(key, $"expected an integer or an array of integers, found {v.GetRawText()}");
        }
    }
}

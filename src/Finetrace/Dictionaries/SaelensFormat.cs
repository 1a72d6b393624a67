using System.Text.Json;
using System.Text.Json.Nodes;
using Finetrace.Activations;
using Finetrace.Models.Safetensors;

namespace Finetrace.Dictionaries;

/// <summary>
/// SAELens v6 folders (formats.md §2): <c>cfg.json</c>, <c>sae_weights.safetensors</c>, optional
/// <c>sparsity.safetensors</c>. SAEs only (SAELens has no crosscoders). Writing folds the activation normaliser into
/// the weights (§2.5) so the folder works on raw activations: W_enc = g·W_eᵀ, W_dec = W_dᵀ/g, b_dec = b_dec/g + μ.
/// BatchTopK is written as <c>jumprelu</c> with θ repeated per latent (identical inference for θ ≥ 0).
/// Reading accepts <c>standard</c>, <c>topk</c> and <c>jumprelu</c> and refuses any key the architecture does not declare.
/// </summary>
public static class SaelensFormat
{
    public const string CfgFile = "cfg.json", WeightsFile = "sae_weights.safetensors", SparsityFile = "sparsity.safetensors";

    public static void Save(SparseDictionary d, string dir, float[]? log10DensityF = null, IReadOnlyDictionary<string, object?>? metadata = null, IReadOnlyDictionary<string, object?>? finetrace = null)
    {
        if (d.PerModelCodes)
            throw new FormatCannotHoldException(DictionaryFileFormat.Saelens, DictionaryFileFormat.DictionaryLearning,
                "SAELens has no per-model (DECOUPLED) thresholds or codes, nor crosscoders; a crosscoder_learning folder can hold this DECOUPLED BatchTopK crosscoder");
        if (d.Models != 1 || !d.IsSae)
            throw new FormatCannotHoldException(DictionaryFileFormat.Saelens, DictionaryFileFormat.DictionaryLearning,
                $"SAELens folders hold SAEs only; this is a {d.Models}-model crosscoder — a crosscoder_learning folder can hold it");
        int D = d.DModel, F = d.DictSize;
        float g = d.Normalizer?.Scale[0] ?? 1f;
        var mu = d.Normalizer?.Mean ?? new float[D];
        var wEnc = new float[D * F];
        DictionaryLearningFormat.Transpose(d.WEnc, F, D, wEnc);
        for (int i = 0; i < wEnc.Length; i++) wEnc[i] *= g;
        var wDec = new float[F * D];
        for (int i = 0; i < wDec.Length; i++) wDec[i] = d.WDec[i] / g;
        var bDec = new float[D];
        for (int i = 0; i < D; i++) bDec[i] = d.BDec[i] / g + mu[i];
        var tensors = new List<TensorData>
        {
            TensorData.F32("W_enc", wEnc, D, F), TensorData.F32("W_dec", wDec, F, D),
            TensorData.F32("b_enc", d.BEnc, F), TensorData.F32("b_dec", bDec, D),
        };
        string arch;
        var cfg = new JsonObject();
        switch (d.Sparsity)
        {
            case Sparsity.Relu: arch = "standard"; break;
            case Sparsity.TopK: arch = "topk"; cfg["k"] = d.K; cfg["rescale_acts_by_decoder_norm"] = false; break;
            case Sparsity.BatchTopK:
                if (d.Threshold < 0) throw new ThresholdUnsetException();
                arch = "jumprelu"; tensors.Add(TensorData.F32("threshold", Enumerable.Repeat(d.Threshold, F).ToArray(), F)); break;
            case Sparsity.JumpRelu: arch = "jumprelu"; tensors.Add(TensorData.F32("threshold", d.JumpThreshold!, F)); break;
            default: throw new DictionaryFormatException($"no SAELens architecture for {d.Sparsity}");
        }
        Directory.CreateDirectory(dir);
        SafetensorsWriter.Write(Path.Combine(dir, WeightsFile), tensors);
        if (log10DensityF is not null)
        {
            if (log10DensityF.Length != F) throw new DictionaryFormatException($"sparsity: {log10DensityF.Length} densities for {F} latents");
            WriteSparsity(dir, log10DensityF);
        }
        var root = new JsonObject
        {
            ["architecture"] = arch, ["d_in"] = D, ["d_sae"] = F, ["dtype"] = "float32", ["device"] = "cpu",
            ["apply_b_dec_to_input"] = true, ["normalize_activations"] = "none", ["reshape_activations"] = "none",
        };
        foreach (var (k, v) in cfg) root[k] = v?.DeepClone();
        var meta = new JsonObject { ["model_from_pretrained_kwargs"] = new JsonObject { ["center_writing_weights"] = false } };
        // jumprelu has no k; keep the BatchTopK training k so a conversion back to dictionary_learning restores it
        if (d.Sparsity == Sparsity.BatchTopK) meta[BatchTopKKKey] = d.K;
        if (metadata is not null) foreach (var (k, v) in metadata) meta[k] = JsonSerializer.SerializeToNode(v);
        root["metadata"] = meta;
        File.WriteAllText(Path.Combine(dir, CfgFile), root.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        if (finetrace is not null) FinetraceSidecar.Write(dir, "dictionary", finetrace);
    }

    /// <summary>Writes <c>sparsity.safetensors</c> (log10 firing density per latent, as eval measured it) into <paramref name="dir"/>.</summary>
    public static void WriteSparsity(string dir, float[] log10DensityF) =>
        SafetensorsWriter.Write(Path.Combine(dir, SparsityFile), [TensorData.F32("sparsity", log10DensityF, log10DensityF.Length)]);

    /// <summary>The log10 densities of <c>sparsity.safetensors</c> in <paramref name="dir"/>, or null when there is none.</summary>
    /// <summary>Metadata key holding the training k of a BatchTopK SAE written as jumprelu.</summary>
    public const string BatchTopKKKey = "finetrace_batchtopk_k";

    /// <summary>The training k recorded by <see cref="Save"/> for a BatchTopK SAE written as jumprelu, or null.</summary>
    public static int? ReadBatchTopKK(string dir)
    {
        string path = Path.Combine(dir, CfgFile);
        if (!File.Exists(path)) return null;
        var k = JsonNode.Parse(File.ReadAllText(path))?["metadata"]?[BatchTopKKKey];
        return k is JsonValue v && v.TryGetValue<int>(out int kk) && kk > 0 ? kk : null;
    }

    public static float[]? ReadSparsity(string dir)
    {
        string p = Path.Combine(dir, SparsityFile);
        if (!File.Exists(p)) return null;
        using var f = new SafetensorsFile(p);
        if (!f.Contains("sparsity")) throw new DictionaryFormatException($"{p}: no tensor 'sparsity'");
        return f.ReadF32("sparsity").Data;
    }

    public static SparseDictionary Load(string dir)
    {
        string cfgPath = Path.Combine(dir, CfgFile), wPath = Path.Combine(dir, WeightsFile);
        if (!File.Exists(cfgPath)) throw new DictionaryFormatException($"{dir}: no {CfgFile}; not a SAELens folder");
        if (!File.Exists(wPath)) throw new DictionaryFormatException($"{dir}: no {WeightsFile}");
        var cfg = JsonNode.Parse(File.ReadAllText(cfgPath))?.AsObject() ?? throw new DictionaryFormatException($"{cfgPath}: not a JSON object");
        string arch = cfg["architecture"]?.GetValue<string>() ?? "standard";
        string norm = cfg["normalize_activations"] is JsonNode n ? (n.GetValueKind() == JsonValueKind.String ? n.GetValue<string>() : n.GetValueKind() == JsonValueKind.True ? "expected_average_only_in" : "none") : "none";
        if (norm != "none") throw new DictionaryFormatException($"{cfgPath}: normalize_activations = '{norm}' needs a runtime scaling factor Finetrace does not apply; fold it into the weights first");
        string reshape = cfg["reshape_activations"]?.GetValue<string>() ?? "none";
        if (reshape != "none") throw new DictionaryFormatException($"{cfgPath}: reshape_activations = '{reshape}' (attention-head SAEs) is not supported");
        bool applyBDec = cfg["apply_b_dec_to_input"]?.GetValue<bool>() ?? true;
        string[] keys = arch switch
        {
            "standard" or "topk" => ["W_enc", "W_dec", "b_enc", "b_dec"],
            "jumprelu" => ["W_enc", "W_dec", "b_enc", "b_dec", "threshold"],
            _ => throw new DictionaryFormatException($"{cfgPath}: architecture '{arch}' is not supported (standard, topk, jumprelu)"),
        };
        using var f = new SafetensorsFile(wPath);
        foreach (var name in f.Tensors.Keys)
            if (!keys.Contains(name)) throw new DictionaryFormatException($"{wPath}: unexpected tensor '{name}' for architecture '{arch}'; refusing to guess what it means");
        foreach (var k in keys) if (!f.Contains(k)) throw new DictionaryFormatException($"{wPath}: missing tensor '{k}' required by architecture '{arch}'");
        int D = cfg["d_in"]?.GetValue<int>() ?? f.Info("W_enc").Shape[0], F = cfg["d_sae"]?.GetValue<int>() ?? f.Info("W_enc").Shape[1];
        void Shape(string k, params int[] s) { if (!f.Info(k).Shape.SequenceEqual(s)) throw new DictionaryFormatException($"{wPath}: '{k}' has shape {f.Info(k).ShapeText}, expected [{string.Join(", ", s)}]"); }
        Shape("W_enc", D, F); Shape("W_dec", F, D); Shape("b_enc", F); Shape("b_dec", D);
        if (arch == "jumprelu") Shape("threshold", F);
        var act = arch switch { "standard" => Sparsity.Relu, "topk" => Sparsity.TopK, _ => Sparsity.JumpRelu };
        int kk = arch == "topk" ? cfg["k"]?.GetValue<int>() ?? throw new DictionaryFormatException($"{cfgPath}: topk architecture without 'k'") : 0;
        var d = new SparseDictionary(1, D, F, act, CodeNormalization.None, subtractDecoderBias: true, kk);
        DictionaryLearningFormat.Transpose(f.ReadF32("W_enc").Data, D, F, d.WEnc);
        f.ReadF32("W_dec").Data.CopyTo(d.WDec, 0);
        f.ReadF32("b_enc").Data.CopyTo(d.BEnc, 0);
        f.ReadF32("b_dec").Data.CopyTo(d.BDec, 0);
        if (!applyBDec)
        {
            // pre = x·W_enc + b_enc = (x − b_dec)·W_enc + (b_enc + b_dec·W_enc)
            for (int j = 0; j < F; j++)
            {
                double s = 0;
                for (int i = 0; i < D; i++) s += (double)d.BDec[i] * d.WEnc[j * D + i];
                d.BEnc[j] += (float)s;
            }
        }
        if (act == Sparsity.JumpRelu) f.ReadF32("threshold").Data.CopyTo(d.JumpThreshold!, 0);
        return d;
    }
}

/// <summary>SAELens <c>cfg.json</c> metadata (formats.md §2.3) for a dictionary that reads <paramref name="input"/> from a store.</summary>
public static class SaelensMetadata
{
    /// <summary>hook_name, model_name, context_size, prepend_bos (+ Finetrace's input spec) from the store's manifest.
    /// A diff-SAE is named after its minuend model (the model whose residual its reconstruction is spliced into).</summary>
    public static Dictionary<string, object?> From(ActivationStore store, DictionaryInput input)
    {
        input.CheckSite(store);
        var s = store.Settings;
        int m = input.Kind switch { InputKind.SingleModel => input.Model, InputKind.Difference => input.Minuend, _ => 0 };
        var meta = new Dictionary<string, object?>
        {
            // the dictionary's own record names its site; a store of no model site (synthetic) gives its hook text
            ["hook_name"] = input.HookName ?? s.Hook.Replace("{L}", input.Layer.ToString(System.Globalization.CultureInfo.InvariantCulture)),
            ["model_name"] = m < s.Models.Count ? s.Models[m].Name : null,
            ["finetrace_input"] = input.Spec,
        };
        if (s.Options.TryGetValue("context_length", out var ctx) && int.TryParse(ctx, System.Globalization.CultureInfo.InvariantCulture, out int c)) meta["context_size"] = c;
        bool dropBos = s.Options.TryGetValue("drop_bos", out var db) && db == "true";
        var first = store.Shards.FirstOrDefault(sh => sh.Rows > 0);
        meta["prepend_bos"] = dropBos || (first is not null && (first.Masks[0] & (byte)TokenMask.Bos) != 0);
        return meta;
    }
}

using Finetrace.Tensors;
using System.Text.Json;
using System.Text.Json.Nodes;
using Finetrace.Models.Safetensors;

namespace Finetrace.Dictionaries;

/// <summary>A bad dictionary file: names the file and the key at fault.</summary>
public class DictionaryFormatException(string message) : Exception(message);

/// <summary>Dictionary file formats Finetrace writes.</summary>
public enum DictionaryFileFormat { DictionaryLearning, Saelens }

/// <summary>A dictionary that <see cref="Format"/> cannot hold; <see cref="Alternative"/> can (null: none).</summary>
public sealed class FormatCannotHoldException(DictionaryFileFormat format, DictionaryFileFormat? alternative, string message) : DictionaryFormatException(message)
{
    public DictionaryFileFormat Format { get; } = format;
    public DictionaryFileFormat? Alternative { get; } = alternative;
}

/// <summary>A BatchTopK dictionary whose inference threshold was never set (training stopped before the threshold EMA
/// started), so it cannot be written as a thresholded (SAELens jumprelu) SAE.</summary>
public sealed class ThresholdUnsetException() : DictionaryFormatException("the BatchTopK threshold is unset (−1): train past the threshold start step so inference has a threshold before saving as SAELens jumprelu");

/// <summary>
/// crosscoder_learning / dictionary_learning checkpoints (formats.md §1): <c>model.safetensors</c> (the module state
/// dict) + <c>config.json</c> (constructor arguments + <c>dict_class</c>). Supported classes: <c>CrossCoder</c>
/// (L1), <c>BatchTopKCrossCoder</c>, <c>BatchTopKSAE</c>. Exactly the documented keys are accepted; a missing
/// normaliser or code-normalisation key is filled as the Python loader does (with a note), anything else missing,
/// extra or mis-shaped is an error naming the key.
/// </summary>
public static class DictionaryLearningFormat
{
    public static readonly string[] Classes = ["CrossCoder", "BatchTopKCrossCoder", "BatchTopKSAE"];
    static readonly string[] CodeNormNames = ["", "CROSSCODER", "SAE", "MIXED", "NONE", "DECOUPLED"];

    public static string DictClass(SparseDictionary d) => (d.IsSae, d.Sparsity) switch
    {
        (false, Sparsity.Relu) => "CrossCoder",
        (false, Sparsity.BatchTopK) => "BatchTopKCrossCoder",
        (true, Sparsity.BatchTopK) when d.Models == 1 => "BatchTopKSAE",
        _ => throw new FormatCannotHoldException(DictionaryFileFormat.DictionaryLearning, d.IsSae && d.Models == 1 ? DictionaryFileFormat.Saelens : null,
            $"a {(d.IsSae ? "SAE" : "crosscoder")} with {d.Sparsity} activation has no crosscoder_learning class" + (d.IsSae && d.Models == 1 ? "; the SAELens format can hold it" : "")),
    };

    /// <summary>Loads a folder (model.safetensors + config.json).</summary>
    public static SparseDictionary Load(string dir, Action<string>? note = null)
    {
        string cfgPath = Path.Combine(dir, "config.json"), st = Path.Combine(dir, "model.safetensors");
        if (!File.Exists(cfgPath)) throw new DictionaryFormatException($"{dir}: no config.json; a crosscoder_learning dictionary folder holds model.safetensors and config.json");
        if (!File.Exists(st)) throw new DictionaryFormatException($"{dir}: no model.safetensors");
        var cfg = JsonNode.Parse(File.ReadAllText(cfgPath))?.AsObject() ?? throw new DictionaryFormatException($"{cfgPath}: not a JSON object");
        string cls = cfg["dict_class"]?.GetValue<string>() ?? throw new DictionaryFormatException($"{cfgPath}: no \"dict_class\" (expected one of {string.Join(", ", Classes)})");
        using var file = new SafetensorsFile(st);
        var d = FromStateDict(file, "", cls, note);
        if (cfg["code_normalization_alpha_sae"] is JsonNode a) d.AlphaSae = (float)a.GetValue<double>();
        if (cfg["code_normalization_alpha_cc"] is JsonNode b) d.AlphaCc = (float)b.GetValue<double>();
        return d;
    }

    /// <summary>Builds a dictionary from the state-dict tensors named <c>prefix + key</c> in <paramref name="file"/>.</summary>
    public static SparseDictionary FromStateDict(SafetensorsFile file, string prefix, string dictClass, Action<string>? note = null)
    {
        if (!Classes.Contains(dictClass)) throw new DictionaryFormatException($"{file.Path}: dict_class '{dictClass}' is not supported (supported: {string.Join(", ", Classes)})");
        string Key(string k) => prefix + k;
        // strip torch.compile's prefix
        var names = file.Tensors.Keys.Where(k => k.StartsWith(prefix, StringComparison.Ordinal))
            .ToDictionary(k => k.Substring(prefix.Length).Replace("_orig_mod.", ""), k => k);
        TensorInfo Need(string k) => names.TryGetValue(k, out var full) ? file.Info(full)
            : throw new DictionaryFormatException($"{file.Path}: missing tensor '{Key(k)}' required by {dictClass}");
        float[] F32(string k) => file.ReadF32(names[k]).Data;

        bool sae = dictClass == "BatchTopKSAE";
        var allowed = sae
            ? new[] { "encoder.weight", "encoder.bias", "decoder.weight", "b_dec", "k", "threshold", "target_rms", "activation_mean", "activation_std", "activation_global_scale" }
            : new[] { "encoder.weight", "encoder.bias", "decoder.weight", "decoder.bias", "code_normalization_id", "target_rms", "activation_mean", "activation_std", "activation_global_scale" }
                .Concat(dictClass == "BatchTopKCrossCoder" ? ["k", "threshold"] : Array.Empty<string>()).ToArray();
        foreach (var name in names.Keys)
            if (!allowed.Contains(name)) throw new DictionaryFormatException($"{file.Path}: unexpected tensor '{Key(name)}' for {dictClass}; refusing to guess what it means");

        var enc = Need("encoder.weight");
        int models, dm, f;
        if (sae)
        {
            Expect(enc, 2, file, Key("encoder.weight"), "[F, D]");
            f = enc.Shape[0]; dm = enc.Shape[1]; models = 1;
            ExpectShape(Need("decoder.weight"), [dm, f], file, Key("decoder.weight"));
            ExpectShape(Need("b_dec"), [dm], file, Key("b_dec"));
        }
        else
        {
            Expect(enc, 3, file, Key("encoder.weight"), "[M, D, F]");
            models = enc.Shape[0]; dm = enc.Shape[1]; f = enc.Shape[2];
            ExpectShape(Need("decoder.weight"), [models, f, dm], file, Key("decoder.weight"));
            ExpectShape(Need("decoder.bias"), [models, dm], file, Key("decoder.bias"));
        }
        ExpectShape(Need("encoder.bias"), [f], file, Key("encoder.bias"));

        var codeNorm = CodeNormalization.Crosscoder;
        if (sae) codeNorm = CodeNormalization.None;
        else if (names.ContainsKey("code_normalization_id"))
        {
            long id = file.ReadI64(names["code_normalization_id"])[0];
            if (id < 1 || id > 5) throw new DictionaryFormatException($"{file.Path}: code_normalization_id = {id} is not one of 1..5");
            codeNorm = (CodeNormalization)id;
        }
        else note?.Invoke($"{file.Path}: no code_normalization_id; using CROSSCODER as the Python loader does");

        var act = dictClass == "CrossCoder" ? Sparsity.Relu : Sparsity.BatchTopK;
        int k = 0;
        if (act == Sparsity.BatchTopK) k = (int)file.ReadI64(Need("k").Name)[0];
        var d = new SparseDictionary(models, dm, f, act, codeNorm, sae, k);

        var wEnc = F32("encoder.weight");
        var wDec = F32("decoder.weight");
        if (sae)
        {
            wEnc.CopyTo(d.WEnc, 0);
            Transpose(wDec, dm, f, d.WDec);          // [D, F] → [F, D]
            F32("b_dec").CopyTo(d.BDec, 0);
        }
        else
        {
            for (int m = 0; m < models; m++) Transpose(wEnc.AsSpan(m * dm * f, dm * f), dm, f, d.WEnc.AsSpan(m * f * dm, f * dm));
            wDec.CopyTo(d.WDec, 0);
            F32("decoder.bias").CopyTo(d.BDec, 0);
        }
        F32("encoder.bias").CopyTo(d.BEnc, 0);
        if (act == Sparsity.BatchTopK)
        {
            var th = Need("threshold");
            if (d.PerModelCodes)
            {
                // DECOUPLED: one threshold per model, [M] (formats.md §1.2)
                if (th.ElementCount != models || th.Shape.Length != 1)
                    throw new DictionaryFormatException($"{file.Path}: '{Key("threshold")}' has shape {th.ShapeText}; a DECOUPLED BatchTopKCrossCoder needs one threshold per model, shape [{models}]");
                F32("threshold").CopyTo(d.ModelThreshold!, 0);
            }
            else
            {
                if (th.ElementCount != 1) throw new DictionaryFormatException($"{file.Path}: '{Key("threshold")}' has shape {th.ShapeText}; a scalar is expected unless code_normalization_id is DECOUPLED (5)");
                d.Threshold = F32("threshold")[0];
            }
        }

        string[] normKeys = ["target_rms", "activation_mean", "activation_std", "activation_global_scale"];
        int present = normKeys.Count(names.ContainsKey);
        if (present != 0 && present != 4) throw new DictionaryFormatException($"{file.Path}: the normaliser tensors {string.Join(", ", normKeys)} must be all present or all absent ({present} of 4 found)");
        if (present == 4)
        {
            var mean = F32("activation_mean");
            if (mean.Length != models * dm) throw new DictionaryFormatException($"{file.Path}: '{Key("activation_mean")}' has {mean.Length} values, expected {models * dm}");
            if (!mean.Any(float.IsNaN))
                d.Normalizer = new Normalizer { TargetRms = F32("target_rms")[0], Mean = mean, Std = F32("activation_std"), Scale = F32("activation_global_scale") };
        }
        else note?.Invoke($"{file.Path}: no normaliser tensors; the dictionary works on raw activations");
        return d;
    }

    static void Expect(TensorInfo t, int rank, SafetensorsFile file, string key, string shape)
    {
        if (t.Shape.Length != rank) throw new DictionaryFormatException($"{file.Path}: '{key}' has shape {t.ShapeText}, expected {shape}");
    }

    static void ExpectShape(TensorInfo t, int[] shape, SafetensorsFile file, string key)
    {
        if (!t.Shape.SequenceEqual(shape)) throw new DictionaryFormatException($"{file.Path}: '{key}' has shape {t.ShapeText}, expected [{string.Join(", ", shape)}]");
    }

    // aRC: [rows, cols] → tCR: [cols, rows]
    public static void Transpose(ReadOnlySpan<float> aRC, int rows, int cols, Span<float> tCR)
    {
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < cols; c++) tCR[c * rows + r] = aRC[r * cols + c];
    }

    /// <summary>The state dict in the reference layout (key → tensor data).</summary>
    public static List<TensorData> StateDict(SparseDictionary d, string prefix = "")
    {
        string cls = DictClass(d);
        int M = d.Models, D = d.DModel, F = d.DictSize;
        var list = new List<TensorData>();
        var nz = d.Normalizer;
        if (d.IsSae)
        {
            list.Add(TensorData.F32(prefix + "encoder.weight", d.WEnc, F, D));
            var wd = new float[D * F]; Transpose(d.WDec, F, D, wd);
            list.Add(TensorData.F32(prefix + "decoder.weight", wd, D, F));
            list.Add(TensorData.F32(prefix + "b_dec", d.BDec, D));
            list.Add(TensorData.F32(prefix + "activation_mean", nz?.Mean ?? Enumerable.Repeat(float.NaN, D).ToArray(), D));
            list.Add(TensorData.F32(prefix + "activation_std", nz?.Std ?? Enumerable.Repeat(float.NaN, D).ToArray(), D));
            list.Add(TensorData.F32(prefix + "activation_global_scale", nz?.Scale ?? [1f]));
        }
        else
        {
            var we = new float[M * D * F];
            for (int m = 0; m < M; m++) Transpose(d.WEnc.AsSpan(m * F * D, F * D), F, D, we.AsSpan(m * D * F, D * F));
            list.Add(TensorData.F32(prefix + "encoder.weight", we, M, D, F));
            list.Add(TensorData.F32(prefix + "decoder.weight", d.WDec, M, F, D));
            list.Add(TensorData.F32(prefix + "decoder.bias", d.BDec, M, D));
            list.Add(TensorData.I64(prefix + "code_normalization_id", [(long)d.CodeNormalization]));
            list.Add(TensorData.F32(prefix + "activation_mean", nz?.Mean ?? Enumerable.Repeat(float.NaN, M * D).ToArray(), M, D));
            list.Add(TensorData.F32(prefix + "activation_std", nz?.Std ?? Enumerable.Repeat(float.NaN, M * D).ToArray(), M, D));
            list.Add(TensorData.F32(prefix + "activation_global_scale", nz?.Scale ?? Enumerable.Repeat(1f, M).ToArray(), M));
        }
        list.Add(TensorData.F32(prefix + "encoder.bias", d.BEnc, F));
        list.Add(TensorData.F32(prefix + "target_rms", [nz?.TargetRms ?? 1f]));
        if (cls != "CrossCoder")
        {
            list.Add(new TensorData(prefix + "k", DType.I32, [], BitConverter.GetBytes(d.K)));
            list.Add(d.ModelThreshold is not null ? TensorData.F32(prefix + "threshold", d.ModelThreshold, M) : TensorData.F32(prefix + "threshold", [d.Threshold]));
        }
        return list;
    }

    /// <summary>Writes model.safetensors + config.json (+ finetrace.json with Finetrace-only settings, never in config.json).</summary>
    /// <param name="init">How a crosscoder was initialised (config.json's same_init_for_all_layers / norm_init_scale);
    /// null when unknown (e.g. a converted dictionary): written as the Python defaults (true / null).</param>
    public static void Save(SparseDictionary d, string dir, IReadOnlyDictionary<string, object?>? finetrace = null, CrosscoderInit? init = null)
    {
        Directory.CreateDirectory(dir);
        string cls = DictClass(d);
        SafetensorsWriter.Write(Path.Combine(dir, "model.safetensors"), StateDict(d));
        var cfg = new JsonObject();
        if (d.IsSae)
        {
            cfg["activation_dim"] = d.DModel; cfg["dict_size"] = d.DictSize; cfg["k"] = d.K;
            cfg["target_rms"] = d.Normalizer?.TargetRms ?? 1.0; cfg["encoder_init_norm"] = 1.0;
        }
        else
        {
            cfg["activation_dim"] = d.DModel; cfg["dict_size"] = d.DictSize; cfg["num_layers"] = d.Models;
            cfg["same_init_for_all_layers"] = init?.SameInitForAllModels ?? true; cfg["norm_init_scale"] = init?.NormInitScale; cfg["init_with_transpose"] = true;
            cfg["encoder_layers"] = null; cfg["num_decoder_layers"] = null;
            cfg["code_normalization"] = CodeNormNames[(int)d.CodeNormalization];
            cfg["code_normalization_alpha_sae"] = d.AlphaSae; cfg["code_normalization_alpha_cc"] = d.AlphaCc;
            cfg["target_rms"] = d.Normalizer?.TargetRms ?? 1.0;
            if (cls == "BatchTopKCrossCoder") cfg["k"] = d.K;
        }
        cfg["dict_class"] = cls;
        File.WriteAllText(Path.Combine(dir, "config.json"), cfg.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        if (finetrace is not null) FinetraceSidecar.Write(dir, "dictionary", finetrace);
    }
}

/// <summary>finetrace.json next to a dictionary (formats.md §9): unknown fields are preserved on rewrite.</summary>
public static class FinetraceSidecar
{
    public static void Write(string dir, string kind, IReadOnlyDictionary<string, object?> fields)
    {
        string path = Path.Combine(dir, "finetrace.json");
        JsonObject obj = File.Exists(path) ? JsonNode.Parse(File.ReadAllText(path))?.AsObject() ?? new() : new();
        obj["finetrace_version"] = typeof(FinetraceSidecar).Assembly.GetName().Version?.ToString();
        obj["kind"] = kind;
        obj["created_utc"] ??= DateTime.UtcNow.ToString("O");
        foreach (var (k, v) in fields) obj[k] = JsonSerializer.SerializeToNode(v);
        File.WriteAllText(path, obj.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
    }

    public static JsonObject? Read(string dir)
    {
        string path = Path.Combine(dir, "finetrace.json");
        return File.Exists(path) ? JsonNode.Parse(File.ReadAllText(path))?.AsObject() : null;
    }
}

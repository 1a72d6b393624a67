using Finetrace.Tensors;
using System.Runtime.InteropServices;
using System.Text.Json;
using System.Text.Json.Nodes;
using Finetrace.Models.Safetensors;

namespace Finetrace.Dictionaries;

/// <summary>
/// A resumable training state: parameters (our layout), Adam moments and step, dead-latent counters, threshold,
/// trainer step, RNG state and the data cursor (<see cref="Activations.IActivationBatches.Position"/>), in one
/// safetensors file (<c>trainer_state.safetensors</c>) whose metadata holds the dictionary shape and options.
/// Written to a temporary folder and renamed, so an interrupted save never replaces the last good checkpoint.
/// </summary>
public static class TrainingCheckpoint
{
    public const string FileName = "trainer_state.safetensors";

    public static void Save(string dir, DictionaryTrainer tr, long dataPosition, IReadOnlyDictionary<string, string>? extra = null)
    {
        var d = tr.Dict;
        var list = new List<TensorData>
        {
            TensorData.F32("w_enc", d.WEnc, d.Models, d.DictSize, d.DModel),
            TensorData.F32("b_enc", d.BEnc, d.DictSize),
            TensorData.F32("w_dec", d.WDec, d.Models, d.DictSize, d.DModel),
            TensorData.F32("b_dec", d.BDec, d.Models, d.DModel),
            TensorData.F32("threshold", [d.Threshold]),
            TensorData.I64("tokens_since_fired", tr.TokensSinceFired, d.DictSize),
            TensorData.I64("counters", [tr.StepCount, tr.Optimizer.Step, (long)tr.SplitMix64.State, dataPosition], 4),
        };
        if (d.JumpThreshold is not null) list.Add(TensorData.F32("jump_threshold", d.JumpThreshold, d.DictSize));
        if (d.ModelThreshold is not null) list.Add(TensorData.F32("model_threshold", d.ModelThreshold, d.Models));
        for (int i = 0; i < tr.Optimizer.ExpAvg.Length; i++)
        {
            list.Add(TensorData.F32($"adam.exp_avg.{i}", tr.Optimizer.ExpAvg[i], tr.Optimizer.ExpAvg[i].Length));
            list.Add(TensorData.F32($"adam.exp_avg_sq.{i}", tr.Optimizer.ExpAvgSq[i], tr.Optimizer.ExpAvgSq[i].Length));
        }
        if (d.Normalizer is { } nz)
        {
            list.Add(TensorData.F32("norm.mean", nz.Mean, nz.Mean.Length));
            list.Add(TensorData.F32("norm.std", nz.Std, nz.Std.Length));
            list.Add(TensorData.F32("norm.scale", nz.Scale, nz.Scale.Length));
            list.Add(TensorData.F32("norm.target_rms", [nz.TargetRms]));
        }
        var meta = new Dictionary<string, string>
        {
            ["models"] = d.Models.ToString(), ["d_model"] = d.DModel.ToString(), ["dict_size"] = d.DictSize.ToString(),
            ["activation"] = d.Sparsity.ToString(), ["code_normalization"] = d.CodeNormalization.ToString(),
            ["sae"] = d.IsSae ? "true" : "false", ["k"] = d.K.ToString(),
            ["options"] = JsonSerializer.Serialize(tr.Options),
        };
        if (extra is not null) foreach (var (k, v) in extra) meta[k] = v;
        string tmp = dir.TrimEnd('/') + ".tmp";
        if (Directory.Exists(tmp)) Directory.Delete(tmp, true);
        Directory.CreateDirectory(tmp);
        SafetensorsWriter.Write(Path.Combine(tmp, FileName), list, meta);
        if (Directory.Exists(dir)) Directory.Delete(dir, true);
        Directory.Move(tmp, dir);
    }

    public static bool Exists(string dir) => File.Exists(Path.Combine(dir, FileName));

    /// <summary>Reads a checkpoint into a new trainer; returns it and the data cursor to seek to.</summary>
    public static (DictionaryTrainer Trainer, long DataPosition, IReadOnlyDictionary<string, string> Metadata) Load(string dir)
    {
        string path = Path.Combine(dir, FileName);
        if (!File.Exists(path)) throw new FileNotFoundException($"{dir}: no {FileName}; nothing to resume from");
        using var f = new SafetensorsFile(path);
        var m = f.Metadata;
        string Meta(string k) => m.TryGetValue(k, out var v) ? v : throw new DictionaryFormatException($"{path}: metadata '{k}' missing");
        var d = new SparseDictionary(int.Parse(Meta("models")), int.Parse(Meta("d_model")), int.Parse(Meta("dict_size")),
            Enum.Parse<Sparsity>(Meta("activation")), Enum.Parse<CodeNormalization>(Meta("code_normalization")), Meta("sae") == "true", int.Parse(Meta("k")));
        var options = JsonSerializer.Deserialize<TrainerOptions>(Meta("options")) ?? throw new DictionaryFormatException($"{path}: unreadable options");
        f.ReadF32("w_enc").Data.CopyTo(d.WEnc, 0);
        f.ReadF32("b_enc").Data.CopyTo(d.BEnc, 0);
        f.ReadF32("w_dec").Data.CopyTo(d.WDec, 0);
        f.ReadF32("b_dec").Data.CopyTo(d.BDec, 0);
        d.Threshold = f.ReadF32("threshold").Data[0];
        if (d.JumpThreshold is not null) f.ReadF32("jump_threshold").Data.CopyTo(d.JumpThreshold, 0);
        if (d.ModelThreshold is not null) f.ReadF32("model_threshold").Data.CopyTo(d.ModelThreshold, 0);
        if (f.Contains("norm.mean"))
            d.Normalizer = new Normalizer { Mean = f.ReadF32("norm.mean").Data, Std = f.ReadF32("norm.std").Data, Scale = f.ReadF32("norm.scale").Data, TargetRms = f.ReadF32("norm.target_rms").Data[0] };
        var counters = f.ReadI64("counters");
        var tr = new DictionaryTrainer(d, options, (ulong)counters[2]) { StepCount = counters[0] };
        tr.Optimizer.Step = counters[1];
        f.ReadI64("tokens_since_fired").CopyTo(tr.TokensSinceFired, 0);
        for (int i = 0; i < tr.Optimizer.ExpAvg.Length; i++)
        {
            f.ReadF32($"adam.exp_avg.{i}").Data.CopyTo(tr.Optimizer.ExpAvg[i], 0);
            f.ReadF32($"adam.exp_avg_sq.{i}").Data.CopyTo(tr.Optimizer.ExpAvgSq[i], 0);
        }
        return (tr, counters[3], m);
    }
}

using System.Text.Json.Nodes;
using Finetrace.Models;
using Finetrace.Models.Backward;
using Finetrace.Models.Safetensors;
using Finetrace.Tensors;

namespace Finetrace.Training;

/// <summary>
/// Trainable LoRA factors for the projections of a Llama-block model: for each adapted weight W [out, in],
/// A [r, in] and B [out, r], with W' = W + s·B·A and s = alpha / r (PEFT's defaults: A ~ U(−1/√in, 1/√in) as
/// kaiming_uniform(a = √5) gives, B = 0, so training starts at the base model). Saved as a PEFT adapter
/// (adapter_config.json + adapter_model.safetensors) that <see cref="LoraAdapter"/> merges exactly as
/// <see cref="MergeInto"/> does.
/// </summary>
public sealed class LoraWeights
{
    public static readonly string[] DefaultTargets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

    public int Rank { get; }
    public float Alpha { get; }
    public float Scaling => Alpha / Rank;
    public IReadOnlyList<string> TargetModules { get; }
    /// <summary>Adapted weight names (HF, e.g. model.layers.0.self_attn.q_proj.weight), in layout order.</summary>
    public IReadOnlyList<string> WeightNames { get; }
    readonly Dictionary<string, (float[] A, float[] B, int Out, int In)> _factors = new(StringComparer.Ordinal);

    public float[] A(string weightName) => _factors[weightName].A;
    public float[] B(string weightName) => _factors[weightName].B;
    public (int Out, int In) ShapeOf(string weightName) => (_factors[weightName].Out, _factors[weightName].In);

    public LoraWeights(ModelParameters model, int rank, float alpha, IReadOnlyList<string>? targets, ulong seed)
    {
        if (rank <= 0) throw new ArgumentOutOfRangeException(nameof(rank), $"LoRA rank {rank} must be positive");
        Rank = rank; Alpha = alpha;
        TargetModules = targets ?? DefaultTargets;
        var names = new List<string>();
        int index = 0;
        foreach (var spec in model.Specs)
        {
            index++;
            if (spec.Role != ParameterRole.Matrix || !spec.Name.StartsWith("model.layers.", StringComparison.Ordinal)) continue;
            string module = spec.Name[..^".weight".Length];
            if (!TargetModules.Any(t => module.EndsWith("." + t, StringComparison.Ordinal))) continue;
            int outF = spec.Shape[0], inF = spec.Shape[1];
            var a = new float[rank * inF];
            var rng = Rng.For(seed, (ulong)index);
            float bound = 1f / MathF.Sqrt(inF);
            for (int i = 0; i < a.Length; i++) a[i] = (float)((rng.NextDouble() * 2 - 1) * bound);
            _factors[spec.Name] = (a, new float[outF * rank], outF, inF);
            names.Add(spec.Name);
        }
        if (names.Count == 0)
            throw new ArgumentException($"no weight of the model matches the LoRA target modules {string.Join(", ", TargetModules)}");
        WeightNames = names;
    }

    /// <summary>W' = W + s·(B·A) into <paramref name="merged"/>'s arrays for every adapted weight, computed as
    /// <see cref="LoraAdapter.MergeInto"/> does (the f32 product, then one scaled add per element), so a model merged
    /// here and one merged at load from the saved adapter are identical.</summary>
    public void MergeInto(ModelParameters baseModel, ModelParameters merged)
    {
        foreach (var name in WeightNames)
        {
            var (a, b, outF, inF) = _factors[name];
            var delta = new float[(long)outF * inF];
            Gemm.MatMulNN(b, a, outF, Rank, inF, delta);
            var w = baseModel[name];
            var dst = merged[name];
            float s = Scaling;
            for (int i = 0; i < dst.Length; i++) dst[i] = w[i] + s * delta[i];
        }
    }

    /// <summary>A copy of the base sharing every array except the adapted weights, which hold the merge.</summary>
    public ModelParameters Merged(ModelParameters baseModel)
    {
        var merged = baseModel.CopyReplacing(WeightNames);
        MergeInto(baseModel, merged);
        return merged;
    }

    /// <summary>dA = s·Bᵀ·dW and dB = s·dW·Aᵀ from the gradient dW of the merged weight.</summary>
    // dW: [out, in]; dA: [r, in]; dB: [out, r] (overwritten)
    public void FactorGradients(string weightName, float[] dW, float[] dA, float[] dB)
    {
        var (a, b, outF, inF) = _factors[weightName];
        Gemm.MatMulTN(b, dW, Rank, outF, inF, dA);
        Gemm.MatMulNT(dW, a, outF, inF, Rank, dB);
        System.Numerics.Tensors.TensorPrimitives.Multiply(dA, Scaling, dA);
        System.Numerics.Tensors.TensorPrimitives.Multiply(dB, Scaling, dB);
    }

    static string PeftKey(string weightName, char ab) => $"base_model.model.{weightName[..^".weight".Length]}.lora_{ab}.weight";

    /// <summary>Writes a PEFT LoRA adapter folder: adapter_config.json (peft_type LORA, r, lora_alpha, target_modules,
    /// bias none, task_type CAUSAL_LM) and adapter_model.safetensors (F32 lora_A / lora_B under PEFT's key names).</summary>
    public void SavePeft(string folder, string? baseModelPath)
    {
        Directory.CreateDirectory(folder);
        var tensors = new List<TensorData>();
        foreach (var name in WeightNames)
        {
            var (a, b, outF, inF) = _factors[name];
            tensors.Add(TensorData.F32(PeftKey(name, 'A'), a, Rank, inF));
            tensors.Add(TensorData.F32(PeftKey(name, 'B'), b, outF, Rank));
        }
        SafetensorsWriter.Write(Path.Combine(folder, "adapter_model.safetensors"), tensors, new Dictionary<string, string> { ["format"] = "pt" });
        var cfg = new JsonObject
        {
            ["peft_type"] = "LORA",
            ["task_type"] = "CAUSAL_LM",
            ["base_model_name_or_path"] = baseModelPath,
            ["r"] = Rank,
            ["lora_alpha"] = Alpha,
            ["lora_dropout"] = 0.0,
            ["target_modules"] = new JsonArray(TargetModules.Select(t => (JsonNode)JsonValue.Create(t)!).ToArray()),
            ["bias"] = "none",
            ["fan_in_fan_out"] = false,
            ["use_rslora"] = false,
            ["use_dora"] = false,
            ["init_lora_weights"] = true,
            ["inference_mode"] = true,
            ["modules_to_save"] = null,
        };
        ModelParameters.WriteAtomic(Path.Combine(folder, "adapter_config.json"), cfg.ToJsonString(new System.Text.Json.JsonSerializerOptions { WriteIndented = true }));
    }

    /// <summary>The trainable tensors (A then B of each adapted weight) under stable names, for optimiser state and checkpoints.</summary>
    public IEnumerable<(string Name, float[] Values)> Tensors()
    {
        foreach (var name in WeightNames)
        {
            yield return (PeftKey(name, 'A'), _factors[name].A);
            yield return (PeftKey(name, 'B'), _factors[name].B);
        }
    }
}

using Finetrace.Models.Safetensors;

namespace Finetrace.Models;

/// <summary>
/// The validated parameters of a checkpoint, keyed by canonical HF names (<see cref="ModelLayout.Parameters"/>), each in
/// its stored dtype and still mapped from the safetensors files (LoRA-merged or edited ones are owned copies). What
/// <see cref="CausalLM.Load(string, string?, Action{ModelConfig, Dictionary{string, Weight}}?)"/> builds its blocks
/// from, and what a device model uploads. Dispose it (or the model that took it) to unmap the files.
/// </summary>
public sealed class ModelWeights : IDisposable
{
    public ModelConfig Config { get; }
    public string Folder { get; }
    /// <summary>Every parameter the config needs, present and shape-checked.</summary>
    public IReadOnlyDictionary<string, Weight> Parameters => _weights;
    readonly Dictionary<string, Weight> _weights;
    readonly ShardedCheckpoint _ckpt;

    ModelWeights(string folder, ModelConfig config, ShardedCheckpoint ckpt, Dictionary<string, Weight> weights)
    {
        Folder = folder; Config = config; _ckpt = ckpt; _weights = weights;
    }

    public Weight this[string name] => _weights[name];

    /// <summary>Loads config.json and the safetensors weights of <paramref name="folder"/>, checking every tensor's
    /// presence and shape (<see cref="CausalLM.ResolveWeights"/>), merges a PEFT LoRA adapter when
    /// <paramref name="adapterFolder"/> is given, then lets <paramref name="editWeights"/> replace parameters (same shapes).</summary>
    public static ModelWeights Load(string folder, string? adapterFolder = null, Action<ModelConfig, Dictionary<string, Weight>>? editWeights = null)
    {
        var config = ModelConfig.Load(folder);
        var ckpt = new ShardedCheckpoint(folder);
        try
        {
            var weights = CausalLM.ResolveWeights(config, ckpt, folder);
            if (adapterFolder is not null) LoraAdapter.Load(adapterFolder).MergeInto(weights, config);
            if (editWeights is not null)
            {
                var shapes = weights.ToDictionary(kv => kv.Key, kv => kv.Value.Shape, StringComparer.Ordinal);
                editWeights(config, weights);
                foreach (var (name, w) in weights)
                    if (!shapes.TryGetValue(name, out var shape) || !shape.AsSpan().SequenceEqual(w.Shape))
                        throw new ArgumentException($"{folder}: edited parameter '{name}' [{string.Join(", ", w.Shape)}] does not replace a parameter of the same shape");
            }
            return new ModelWeights(folder, config, ckpt, weights);
        }
        catch
        {
            ckpt.Dispose();
            throw;
        }
    }

    public void Dispose() => _ckpt.Dispose();
}

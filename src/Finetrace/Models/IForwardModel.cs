namespace Finetrace.Models;

/// <summary>
/// A causal LM the harvester and analyses can run: <see cref="CausalLM"/> (the CPU path, default and reference) or a
/// device model (Finetrace.Cuda.DeviceModel). Hooks fire on host tensors [Batch, Seq, width] with the same names and
/// order as <see cref="CausalLM.Forward"/>; edits made in a hook flow on.
/// </summary>
public interface IForwardModel : IDisposable
{
    ModelConfig Config { get; }
    string Folder { get; }
    int Layers { get; }
    int Hidden { get; }

    /// <summary>Embedding, blocks 0..<paramref name="stopAfterLayer"/> (default: all), then — only when all blocks
    /// ran — the final norm and logits, as <see cref="CausalLM.Forward"/>.</summary>
    (Tensors.Tensor Residual, Tensors.Tensor? Logits) Forward(TokenBatch batch, HookSet? hooks = null, int? stopAfterLayer = null);
}

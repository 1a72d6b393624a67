namespace Finetrace.Models;

/// <summary>
/// A forward that copies named activations straight into the caller's arrays, for the harvest: the activations are
/// only read (no edit flows back into the forward) and neither the residual nor the logits are returned. A device
/// model offers it so that exactly the captured activations come back to the host, each copied once (device →
/// page-locked staging → the caller's array); the harvest uses it when a model offers it, and hooks otherwise.
/// </summary>
public interface IActivationCapture
{
    /// <summary>Runs the embedding and blocks 0..<paramref name="stopAfterLayer"/> and writes the activation named
    /// <paramref name="names"/>[i] ([Batch·Seq, width], row-major) into the first Batch·Seq·width values of
    /// <c>into(i, Batch·Seq·width)</c>, an array at least that long. Returns when the forward is done (an empty
    /// <paramref name="names"/> is a pure forward). Throws when a name is never reached.</summary>
    void Capture(TokenBatch batch, IReadOnlyList<string> names, int stopAfterLayer, Func<int, int, float[]> into);
}

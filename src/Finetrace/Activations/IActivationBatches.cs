namespace Finetrace.Activations;

/// <summary>
/// A stream of activation rows for dictionary training: each row holds one token's residual activation in every
/// model, laid out [Models, DModel] (model 0 = base, 1 = fine-tuned, …). Readers over an activation store, synthetic
/// generators and in-memory arrays all implement it, so trainers do not care where activations come from.
/// </summary>
public interface IActivationBatches
{
    int Models { get; }
    int DModel { get; }

    /// <summary>Fills xBND [rows, Models, DModel] with the next rows and returns how many were filled
    /// (fewer than <paramref name="rows"/> only at the end of a non-cycling source).</summary>
    // xBND: [rows, Models, DModel]
    int Next(Span<float> xBND, int rows);

    /// <summary>An opaque cursor; <see cref="Seek"/> to it continues exactly where the stream was (checkpoint/resume).</summary>
    long Position { get; }
    void Seek(long position);
}

using Finetrace.Activations;

namespace Finetrace.Dictionaries;

/// <summary>
/// Somewhere other than this process's CPU that runs a dictionary trainer's steps (the CUDA trainer of
/// Finetrace.Cuda implements it; the CLI injects it, so this library never references a device backend).
/// </summary>
public interface ITrainingDevice
{
    /// <summary>The device's name as its driver reports it (for logs and benchmarks).</summary>
    string Name { get; }

    /// <summary>Checks that the device can run <paramref name="trainer"/>'s recipe (throws
    /// <see cref="DeviceTrainingUnsupportedException"/> otherwise) and uploads its state: parameters, Adam moments,
    /// dead-latent counters. The trainer stays the host mirror: its step count and thresholds follow every step, its
    /// arrays after <see cref="ITrainingStepper.SyncToHost"/>.</summary>
    ITrainingStepper Attach(DictionaryTrainer trainer);
}

/// <summary>A dictionary trainer's state on a device, stepping as <see cref="DictionaryTrainer.Step"/> does.</summary>
public interface ITrainingStepper : IDisposable
{
    /// <summary>The host trainer this device state mirrors (and writes back into).</summary>
    DictionaryTrainer Host { get; }

    /// <summary>A full update on a raw batch xBMD [B, M, D] (as <see cref="DictionaryTrainer.Step"/>).</summary>
    StepStats Step(ReadOnlySpan<float> xBMD);

    /// <summary>A full update on the next <paramref name="batchSize"/> rows of <paramref name="source"/>. The stepper
    /// reads the following batch ahead while the device computes, so the source's position runs one batch ahead of
    /// <see cref="ConsumedPosition"/>. Throws <see cref="SourceExhaustedException"/> when the source runs out.</summary>
    StepStats StepFrom(IActivationBatches source, int batchSize);

    /// <summary>The source position just after the last batch a step consumed (what a checkpoint records; read-ahead
    /// rows excluded); null before the first <see cref="StepFrom"/>.</summary>
    long? ConsumedPosition { get; }

    /// <summary>Copies parameters, Adam moments and dead-latent counters into <see cref="Host"/> (before a checkpoint,
    /// a validation or saving the dictionary).</summary>
    void SyncToHost();
}

/// <summary>The device trainer does not implement a setting of the recipe. <see cref="Setting"/> names the
/// <see cref="TrainingRecipe"/> property (Activation, CodeNormalization, Variant, …) and <see cref="Value"/> its value;
/// callers word it for their users.</summary>
public sealed class DeviceTrainingUnsupportedException(string setting, object? value, string detail)
    : NotSupportedException($"{setting} = {value}: {detail}")
{
    public string Setting { get; } = setting;
    public object? Value { get; } = value;
    public string Detail { get; } = detail;
}

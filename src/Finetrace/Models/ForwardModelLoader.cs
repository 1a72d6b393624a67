namespace Finetrace.Models;

/// <summary>
/// How a harvest loads the models it runs: <see cref="Cpu"/> (<see cref="CausalLM"/>, the default and the reference)
/// or a device model a caller supplies (Finetrace.Cuda's DeviceModel: the library never references the device
/// assembly, the caller hands in the loader). <see cref="Device"/> and <see cref="Precision"/> name what runs, for
/// progress lines and for the store's settings (activations from different devices or precisions differ in their last
/// bits, so a store records them and is resumed only with the same).
/// </summary>
/// <param name="Device">What runs the forward: "cpu", or a device name such as "cuda" or "ilgpu-cpu".</param>
/// <param name="Precision">Matrix-product precision: "fp32" (the CPU path's only one), "tf32" or "bf16".</param>
/// <param name="Load">(model folder, LoRA adapter folder or null) → a loaded model; whoever calls it disposes the model.</param>
public sealed record ForwardModelLoader(string Device, string Precision, Func<string, string?, IForwardModel> Load)
{
    public const string CpuDevice = "cpu";

    /// <summary>The CPU forward (<see cref="CausalLM.Load"/>), float32.</summary>
    public static ForwardModelLoader Cpu { get; } = new(CpuDevice, "fp32", (folder, adapter) => CausalLM.Load(folder, adapter));

    public bool IsCpu => Device == CpuDevice;

    /// <summary>The hardware as its driver names it (e.g. "NVIDIA H100 80GB HBM3"); for output only, never recorded
    /// in a store (the same store may be resumed on another card of the same kind).</summary>
    public string? Hardware { get; init; }

    /// <summary>"cpu (fp32)", "cuda (bf16, NVIDIA H100 80GB HBM3)".</summary>
    public string Describe() => Hardware is null ? $"{Device} ({Precision})" : $"{Device} ({Precision}, {Hardware})";
}

using Finetrace.Models;

namespace Finetrace.Cuda;

/// <summary>
/// What runs a forward: the CPU path (<see cref="Kind"/> null: <see cref="CausalLM"/>, float32, the reference) or a
/// device (<see cref="DeviceKind"/>) with a matrix-product <see cref="Precision"/>; and the names a user types for
/// them ("cpu", "cuda", "ilgpu-cpu"; "fp32", "tf32", "bf16"). The command line's DeviceOptions parses into this; the
/// self-contained gpu-check tool uses it directly.
/// </summary>
public sealed record DeviceSelection(DeviceKind? Kind, GemmMode Precision)
{
    public static DeviceSelection Cpu { get; } = new(null, GemmMode.Fp32);

    public static readonly IReadOnlyList<string> DeviceNames = ["cpu", "cuda", "ilgpu-cpu"];
    public static readonly IReadOnlyList<string> PrecisionNames = ["fp32", "tf32", "bf16"];

    public bool IsCpu => Kind is null;
    public string Device => DeviceName(Kind);
    public string PrecisionName => Name(Precision);

    public static string DeviceName(DeviceKind? kind) => kind switch
    {
        null => ForwardModelLoader.CpuDevice,
        DeviceKind.Cuda => "cuda",
        DeviceKind.IlgpuCpu => "ilgpu-cpu",
        _ => throw new ArgumentOutOfRangeException(nameof(kind), kind, null),
    };

    public static string Name(GemmMode mode) => mode switch
    {
        GemmMode.Fp32 => "fp32",
        GemmMode.Tf32 => "tf32",
        GemmMode.Bf16 => "bf16",
        _ => throw new ArgumentOutOfRangeException(nameof(mode), mode, null),
    };

    /// <summary>"cpu" → null, "cuda", "ilgpu-cpu" (case-insensitive, surrounding blanks ignored).</summary>
    public static bool TryParseDevice(string text, out DeviceKind? kind)
    {
        switch (text.Trim().ToLowerInvariant())
        {
            case "cpu": kind = null; return true;
            case "cuda": kind = DeviceKind.Cuda; return true;
            case "ilgpu-cpu": kind = DeviceKind.IlgpuCpu; return true;
            default: kind = null; return false;
        }
    }

    /// <summary>"fp32", "tf32", "bf16" (case-insensitive).</summary>
    public static bool TryParsePrecision(string text, out GemmMode mode)
    {
        switch (text.Trim().ToLowerInvariant())
        {
            case "fp32": mode = GemmMode.Fp32; return true;
            case "tf32": mode = GemmMode.Tf32; return true;
            case "bf16": mode = GemmMode.Bf16; return true;
            default: mode = GemmMode.Fp32; return false;
        }
    }

    /// <summary>
    /// The precision a device runs when none is asked for. CUDA: bf16 — bf16 weights and activations into the
    /// products with float32 accumulation, which is how the models diffed are published and how PyTorch users run
    /// them (torch_dtype=bfloat16), the setting of the benchmarks and their PyTorch peers, and half the weight
    /// memory; its error against the float32 CPU path (≤ 1e-2 norm-relative) is of the order of the bf16 rounding a
    /// store applies by default anyway. ILGPU's CPU accelerator: fp32 — it exists to check the device path against the
    /// CPU path, which the fp32 tolerance (1e-5) does tightly. The CPU path: fp32, its only precision.
    /// </summary>
    public static GemmMode DefaultPrecision(DeviceKind? kind) => kind == DeviceKind.Cuda ? GemmMode.Bf16 : GemmMode.Fp32;

    /// <summary>Opens the device (null for the CPU path); throws <see cref="DeviceUnavailableException"/> when a CUDA
    /// GPU cannot be opened.</summary>
    public DeviceContext? Open() => Kind is { } k ? DeviceContext.Create(k, Precision) : null;

    /// <summary>How a harvest loads its models on <paramref name="context"/>: <see cref="ForwardModelLoader.Cpu"/> for
    /// null, otherwise the device forward on that context (its device, precision and hardware name recorded).</summary>
    public static ForwardModelLoader Loader(DeviceContext? context) => context is null
        ? ForwardModelLoader.Cpu
        : new ForwardModelLoader(DeviceName(context.Kind), Name(context.Mode), (folder, adapter) => DeviceModel.Load(context, folder, adapter))
        {
            Hardware = context.Kind == DeviceKind.Cuda ? context.Name : "ILGPU CPU accelerator",
        };
}

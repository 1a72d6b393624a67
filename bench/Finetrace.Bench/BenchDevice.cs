using Finetrace.Cuda;

namespace Finetrace.Bench;

/// <summary>The device benchmarks' --device and --precision values (a device is required: the CPU path has its own
/// benchmarks), parsed through <see cref="DeviceSelection"/>'s names, and the device opened with a one-line error.</summary>
static class BenchDevice
{
    /// <summary>"cuda" or "ilgpu-cpu"; anything else (cpu included) is an ArgumentException naming the flag.</summary>
    public static DeviceKind Kind(string text, string hint = "") =>
        DeviceSelection.TryParseDevice(text, out var kind) && kind is { } k
            ? k
            : throw new ArgumentException($"--device {text}: expected cuda or ilgpu-cpu{hint}");

    /// <summary>One of <paramref name="allowed"/> by its <see cref="DeviceSelection"/> name.</summary>
    public static GemmMode Mode(string text, string flag, IReadOnlyCollection<GemmMode> allowed, string hint = "") =>
        DeviceSelection.TryParsePrecision(text, out var mode) && allowed.Contains(mode)
            ? mode
            : throw new ArgumentException($"{flag} {text}: expected {string.Join(", ", allowed.Select(DeviceSelection.Name))}{hint}");

    /// <summary>The opened device, or null after printing one line to stderr when it cannot be opened.</summary>
    public static DeviceContext? TryOpen(DeviceKind kind, GemmMode mode, string deviceText)
    {
        try { return DeviceContext.Create(kind, mode); }
        catch (DeviceUnavailableException e)
        {
            Console.Error.WriteLine($"finetrace: error: --device {deviceText}: no usable CUDA GPU ({e.Detail}); --device ilgpu-cpu runs the same kernels on the CPU");
            return null;
        }
    }
}

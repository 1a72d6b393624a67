using Finetrace.Cuda;

namespace Finetrace.Tests.Infrastructure;

/// <summary>Whether a CUDA GPU can be opened here; device tests skip with <see cref="MissingMessage"/> when not.
/// FINETRACE_DEVICE_TESTS=0 skips them even with a GPU.</summary>
public static class CudaDevice
{
    static readonly Lazy<bool> _available = new(() =>
        Environment.GetEnvironmentVariable("FINETRACE_DEVICE_TESTS") != "0" && DeviceContext.CudaAvailable());

    public static bool Available => _available.Value;

    public const string MissingMessage =
        "needs a CUDA GPU (none found: no driver or no device); the same comparison runs on ILGPU's CPU accelerator in the CPU-accelerator tests, and on a GPU machine through scripts/gpu-check";
}

/// <summary>A fact that needs a CUDA GPU; skipped with a message when there is none.</summary>
public sealed class CudaFactAttribute : FactAttribute
{
    public CudaFactAttribute() { if (!CudaDevice.Available) Skip = CudaDevice.MissingMessage; }
}

/// <summary>A theory that needs a CUDA GPU; skipped with a message when there is none.</summary>
public sealed class CudaTheoryAttribute : TheoryAttribute
{
    public CudaTheoryAttribute() { if (!CudaDevice.Available) Skip = CudaDevice.MissingMessage; }
}

using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.CPU;
using ILGPU.Runtime.Cuda;

namespace Finetrace.Cuda;

/// <summary>Where the device path runs. Cuda: the first CUDA GPU (ILGPU's PTX backend, cuBLAS products).
/// IlgpuCpu: ILGPU's CPU accelerator running the same kernels (slow; for tests and for checking the device path
/// without a GPU).</summary>
public enum DeviceKind { Cuda, IlgpuCpu }

/// <summary>No usable CUDA device (no driver, no GPU, or a library missing); <see cref="Detail"/> says which.</summary>
public sealed class DeviceUnavailableException(DeviceKind kind, string detail)
    : Exception($"no {kind} device: {detail}")
{
    public DeviceKind Kind { get; } = kind;
    public string Detail { get; } = detail;
}

/// <summary>
/// One accelerator with its kernels and matrix products loaded once: what every device computation takes.
/// Dispose it to release the device.
/// </summary>
public sealed class DeviceContext : IDisposable
{
    public Context Context { get; }
    public Accelerator Accelerator { get; }
    public DeviceKind Kind { get; }
    public DeviceKernels Kernels { get; }
    public ForwardKernels Forward { get; }
    public IDeviceGemm Gemm { get; }
    public GemmMode Mode => Gemm.Mode;
    /// <summary>The device's name as the driver reports it (for benchmark output).</summary>
    public string Name => Accelerator.Name;

    DeviceContext(Context context, Accelerator accelerator, DeviceKind kind, Func<Accelerator, IDeviceGemm> gemm)
    {
        Context = context; Accelerator = accelerator; Kind = kind;
        Kernels = new DeviceKernels(accelerator);
        Forward = new ForwardKernels(accelerator);
        Gemm = gemm(accelerator);
    }

    /// <summary>ILGPU's CPU accelerator (tests, and checking the device path without a GPU).</summary>
    public static DeviceContext CreateCpu(GemmMode mode = GemmMode.Fp32)
    {
        var context = Context.Create(b => b.CPU());
        var accelerator = context.CreateCPUAccelerator(0);
        return new DeviceContext(context, accelerator, DeviceKind.IlgpuCpu, a => new IlgpuGemm(a, mode));
    }

    /// <summary>The first CUDA GPU; throws <see cref="DeviceUnavailableException"/> when there is none.</summary>
    public static DeviceContext CreateCuda(GemmMode mode)
    {
        Context? context = null;
        try
        {
            context = Context.Create(b => b.Cuda());
            var devices = context.GetCudaDevices();
            if (devices.Count == 0) throw new DeviceUnavailableException(DeviceKind.Cuda, "the CUDA driver reports no GPU");
            var accelerator = devices[0].CreateCudaAccelerator(context);
            // TODO(gemm helper): cuBLAS products; the ILGPU kernel is the fallback until then.
            return new DeviceContext(context, accelerator, DeviceKind.Cuda, a => new IlgpuGemm(a, mode));
        }
        catch (DeviceUnavailableException) { context?.Dispose(); throw; }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            context?.Dispose();
            throw new DeviceUnavailableException(DeviceKind.Cuda, e.Message);
        }
    }

    public static DeviceContext Create(DeviceKind kind, GemmMode mode) =>
        kind == DeviceKind.Cuda ? CreateCuda(mode) : CreateCpu(mode);

    /// <summary>True when a CUDA GPU can be opened (the device tests skip otherwise).</summary>
    public static bool CudaAvailable()
    {
        try
        {
            using var context = Context.Create(b => b.Cuda());
            return context.GetCudaDevices().Count > 0;
        }
        catch (Exception) { return false; }
    }

    public void Synchronize() => Accelerator.Synchronize();

    public void Dispose()
    {
        Gemm.Dispose();
        Accelerator.Dispose();
        Context.Dispose();
    }
}

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

    /// <summary>Environment variable choosing the CUDA products: unset or "cublas" for cuBLAS, "ilgpu" for the
    /// ILGPU reference kernel (slow; for checking cuBLAS against it or running without cuBLAS).</summary>
    public const string GemmEnvVar = "FINETRACE_GEMM";

    /// <summary>The first CUDA GPU with cuBLAS products (or ILGPU ones when FINETRACE_GEMM=ilgpu); throws
    /// <see cref="DeviceUnavailableException"/> when there is no GPU or no cuBLAS library loads.</summary>
    public static DeviceContext CreateCuda(GemmMode mode)
    {
        bool useCublas = UseCublas(Environment.GetEnvironmentVariable(GemmEnvVar));
        Context? context = null;
        Accelerator? accelerator = null;
        try
        {
            context = Context.Create(b => b.Cuda());
            var devices = context.GetCudaDevices();
            if (devices.Count == 0) throw new DeviceUnavailableException(DeviceKind.Cuda, "the CUDA driver reports no GPU");
            accelerator = devices[0].CreateCudaAccelerator(context);
            return new DeviceContext(context, accelerator, DeviceKind.Cuda,
                a => useCublas ? new CublasGemm((CudaAccelerator)a, mode) : new IlgpuGemm(a, mode));
        }
        catch (DeviceUnavailableException) { accelerator?.Dispose(); context?.Dispose(); throw; }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            accelerator?.Dispose();
            context?.Dispose();
            throw new DeviceUnavailableException(DeviceKind.Cuda, e.Message);
        }
    }

    /// <summary>Reads FINETRACE_GEMM: true for cuBLAS (unset, empty or "cublas"), false for "ilgpu".</summary>
    public static bool UseCublas(string? value) => value?.Trim().ToLowerInvariant() switch
    {
        null or "" or "cublas" => true,
        "ilgpu" => false,
        _ => throw new ArgumentException($"{GemmEnvVar}={value}: expected cublas (the default) or ilgpu"),
    };

    /// <summary>A second products object of this context's kind (cuBLAS or the ILGPU kernel) in another mode, on the
    /// same accelerator and stream; the caller disposes it. For checks and benchmarks that compare modes.</summary>
    public IDeviceGemm CreateGemm(GemmMode mode) => Gemm switch
    {
        CublasGemm => new CublasGemm((CudaAccelerator)Accelerator, mode),
        _ => new IlgpuGemm(Accelerator, mode),
    };

    /// <summary>What computes the products, for benchmark and check output.</summary>
    public string GemmDescription => Gemm switch
    {
        CublasGemm c => $"cuBLAS {c.Version / 10000}.{c.Version / 100 % 100}.{c.Version % 100} ({c.LibraryPath})",
        IlgpuGemm => "ILGPU reference kernel",
        var g => g.GetType().Name,
    };

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

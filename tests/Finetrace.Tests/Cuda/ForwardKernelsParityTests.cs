using Finetrace.Cuda;
using Finetrace.Cuda.Checks;
using Finetrace.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Finetrace.Tests.Cuda;

/// <summary><see cref="ForwardKernelsParity"/> (the per-kernel device check the gpu-check tool also runs) on ILGPU's CPU
/// accelerator and, when one exists, on a CUDA GPU.</summary>
public class ForwardKernelsParityTests(ITestOutputHelper output)
{
    // The CPU-accelerator run is ForwardKernelsTests.ForwardKernelsParity_passes_on_the_CPU_accelerator (it shares that
    // class's context, whose kernels are already compiled).

    internal static void Report(ForwardKernelsParityResult result, ITestOutputHelper output)
    {
        foreach (var c in result.Cases)
            output.WriteLine($"{(c.Passed ? "ok  " : "FAIL")} {c.Kernel} [{c.Shape}]: {c.MaxAbsDiff:G3} (tolerance {c.Tolerance:G3})");
        output.WriteLine(result.ToString());
    }

    [Fact]
    public void A_case_past_its_bound_or_NaN_fails_the_result()
    {
        var ok = new KernelParityCase("A", "1", 1e-7, 1e-5);
        Assert.True(new ForwardKernelsParityResult("x", [ok]).Passed);
        var off = new ForwardKernelsParityResult("x", [ok, new KernelParityCase("B", "2", 2e-5, 1e-5)]);
        Assert.False(off.Passed);
        Assert.Equal("B", off.Worst.Kernel);
        var nan = new ForwardKernelsParityResult("x", [ok, new KernelParityCase("C", "3", double.NaN, 1e-5)]);
        Assert.False(nan.Passed);
        Assert.Equal("C", nan.Worst.Kernel);
        Assert.False(new ForwardKernelsParityResult("x", []).Passed);
    }

    [CudaTheory]
    [InlineData(GemmMode.Fp32)]
    public void Every_forward_kernel_matches_its_CPU_peer_on_the_GPU(GemmMode mode)
    {
        using var ctx = DeviceContext.CreateCuda(mode);
        var result = ForwardKernelsParity.Run(ctx);
        Report(result, output);
        Assert.True(result.Passed, result.ToString());
    }
}

using System.Reflection;
using Finetrace.Cuda;
using ILGPU;
using ILGPU.Backends.EntryPoints;
using ILGPU.Backends.PTX;
using ILGPU.Runtime;
using ILGPU.Runtime.CPU;
using ILGPU.Runtime.Cuda;
using Xunit.Abstractions;

namespace Finetrace.Tests.Cuda;

/// <summary>The CPU accelerator runs kernels as .NET code, so it accepts things ILGPU's PTX backend rejects (an
/// unsupported intrinsic, a managed allocation). These tests compile every kernel to PTX for the H100's sm_90 without a
/// GPU, so such a kernel fails here and not first on a device machine.</summary>
public class PtxCompileTests(ITestOutputHelper output)
{
    /// <summary>Every static method named *Kernel of <paramref name="type"/>: those whose first parameter is an index
    /// are implicitly grouped, the others explicitly grouped.</summary>
    public static IEnumerable<MethodInfo> KernelMethods(Type type) =>
        type.GetMethods(BindingFlags.Static | BindingFlags.NonPublic | BindingFlags.Public)
            .Where(m => m.Name.EndsWith("Kernel", StringComparison.Ordinal));

    /// <summary>The PTX of each kernel method; throws (naming the kernel) when the backend rejects one.</summary>
    public static Dictionary<string, string> CompileToPtx(Type type)
    {
        using var context = Context.Create(b => b.CPU());
        using var backend = new PTXBackend(context, new CudaCapabilityContext(CudaArchitecture.SM_90), CudaArchitecture.SM_90,
            CudaInstructionSet.ISA_80, nvvmAPI: null);
        var result = new Dictionary<string, string>();
        foreach (var m in KernelMethods(type))
        {
            var first = m.GetParameters().FirstOrDefault()?.ParameterType;
            bool implicitGroups = first is not null && (first == typeof(Index1D) || first == typeof(Index2D) || first == typeof(Index3D));
            var entry = implicitGroups ? EntryPointDescription.FromImplicitlyGroupedKernel(m) : EntryPointDescription.FromExplicitlyGroupedKernel(m);
            try
            {
                var compiled = (PTXCompiledKernel)backend.Compile(entry, default(KernelSpecialization));
                result[m.Name] = compiled.PTXAssembly;
            }
            catch (Exception e)
            {
                throw new InvalidOperationException($"{type.Name}.{m.Name} does not compile to PTX: {e.GetType().Name}: {e.Message}", e);
            }
        }
        return result;
    }

    [Fact]
    public void ForwardKernels_compile_to_PTX()
    {
        var ptx = CompileToPtx(typeof(ForwardKernels));
        Assert.True(ptx.Count >= 17, $"expected every ForwardKernels kernel, compiled {ptx.Count}: {string.Join(", ", ptx.Keys)}");
        foreach (var (name, code) in ptx.OrderBy(p => p.Key))
            output.WriteLine($"{name}: {code.Length} chars of PTX, {Count(code, "ex2.approx")} ex2.approx, {Count(code, "fma.rn")} fma.rn, {Count(code, "bar.sync")} bar.sync");
        // the group reductions are real barriers
        Assert.Contains("bar.sync", ptx["AttentionSoftmaxGroupKernel"]);
        Assert.Contains("bar.sync", ptx["LayerNormGroupKernel"]);
    }

    // DeviceKernels is not listed: its SwiGlu and SoftmaxRows call MathF.Exp, which has no PTX intrinsic without
    // ILGPU.Algorithms ("The function 'ExpF' does not have an intrinsic implementation for this backend"); with
    // DeviceMath.Exp in their place it can join this list.
    [Fact]
    public void IlgpuGemm_compiles_to_PTX()
    {
        var ptx = CompileToPtx(typeof(IlgpuGemm));
        Assert.Equal(2, ptx.Count);
    }

    static int Count(string s, string what)
    {
        int n = 0;
        for (int i = s.IndexOf(what, StringComparison.Ordinal); i >= 0; i = s.IndexOf(what, i + 1, StringComparison.Ordinal)) n++;
        return n;
    }
}

using Finetrace.Cuda;
using Finetrace.Dictionaries;
using Finetrace.Tensors;
using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.CPU;
using Xunit.Abstractions;

namespace Finetrace.Tests.Cuda;

/// <summary>One ILGPU context with its CPU accelerator and the loaded kernels, shared by the tests of a class (kernel
/// compilation is the slow part).</summary>
public sealed class CpuAcceleratorFixture : IDisposable
{
    public Context Context { get; }
    public Accelerator Accelerator { get; }
    public DeviceKernels Kernels { get; }

    public CpuAcceleratorFixture()
    {
        Context = Context.Create(b => b.CPU());
        Accelerator = Context.CreateCPUAccelerator(0);
        Kernels = new DeviceKernels(Accelerator);
    }

    public void Dispose()
    {
        Accelerator.Dispose();
        Context.Dispose();
    }
}

/// <summary>Every <see cref="DeviceKernels"/> kernel run on ILGPU's CPU accelerator against its CPU peer in
/// Finetrace (Tensors.Kernels, Dictionaries.Adam) over random shapes including odd sizes; max-abs-diff is printed and
/// named in every failure.</summary>
public class DeviceKernelsTests(CpuAcceleratorFixture fx, ITestOutputHelper output) : IClassFixture<CpuAcceleratorFixture>
{
    static float[] Random(int n, Random r, float scale = 3f)
    {
        var a = new float[n];
        for (int i = 0; i < n; i++) a[i] = (float)((r.NextDouble() * 2 - 1) * scale);
        return a;
    }

    static double MaxAbsDiff(float[] a, float[] b)
    {
        Assert.Equal(a.Length, b.Length);
        double m = 0;
        for (int i = 0; i < a.Length; i++)
        {
            Assert.False(float.IsNaN(a[i]) || float.IsNaN(b[i]), $"NaN at {i}: device {a[i]}, cpu {b[i]}");
            m = Math.Max(m, Math.Abs((double)a[i] - b[i]));
        }
        return m;
    }

    void Close(string what, float[] device, float[] cpu, double tol)
    {
        double d = MaxAbsDiff(device, cpu);
        output.WriteLine($"{what}: max-abs-diff {d:G3} (tolerance {tol:G3})");
        Assert.True(d <= tol, $"{what}: max-abs-diff {d:G3} > {tol:G3}");
    }

    [Theory]
    [InlineData(1, 1, false)]
    [InlineData(3, 7, false)]
    [InlineData(5, 33, true)]
    [InlineData(17, 64, false)]
    [InlineData(9, 257, true)]
    public void RmsNorm_matches_Kernels_RmsNorm(int rows, int d, bool onePlusW)
    {
        var r = new Random(rows * 1000 + d);
        float[] x = Random(rows * d, r), w = Random(d, r, 1f);
        var cpu = new float[rows * d];
        Kernels.RmsNorm(x, w, rows, 1e-6f, onePlusW, cpu);

        using var xBuf = fx.Accelerator.Allocate1D(x);
        using var wBuf = fx.Accelerator.Allocate1D(w);
        using var yBuf = fx.Accelerator.Allocate1D<float>(rows * d);
        fx.Kernels.RmsNorm(xBuf.View, wBuf.View, rows, 1e-6f, onePlusW, yBuf.View);
        fx.Kernels.Synchronize();
        Close($"RmsNorm {rows}x{d} onePlusW={onePlusW}", yBuf.GetAsArray1D(), cpu, 4e-6);
    }

    // Row widths around the group sizes (1, odd, just over a power of two, Gemma-2-2B's D) and row counts 1 … 19.
    public static TheoryData<int, int> RowShapes => new()
    {
        { 1, 1 }, { 5, 1 }, { 1, 31 }, { 7, 31 }, { 3, 257 }, { 19, 257 }, { 1, 2304 }, { 6, 2304 },
    };

    [Theory]
    [MemberData(nameof(RowShapes))]
    public void RmsNorm_group_kernel_matches_reference_kernel_and_Kernels_RmsNorm(int rows, int d)
    {
        var r = new Random(rows * 7919 + d);
        float[] x = Random(rows * d, r), w = Random(d, r, 1f);
        foreach (bool onePlusW in new[] { false, true })
        {
            var cpu = new float[rows * d];
            Kernels.RmsNorm(x, w, rows, 1e-6f, onePlusW, cpu);
            using var xBuf = fx.Accelerator.Allocate1D(x);
            using var wBuf = fx.Accelerator.Allocate1D(w);
            using var group = fx.Accelerator.Allocate1D<float>(rows * d);
            using var reference = fx.Accelerator.Allocate1D<float>(rows * d);
            fx.Kernels.RmsNorm(xBuf.View, wBuf.View, rows, 1e-6f, onePlusW, group.View);
            fx.Kernels.RmsNormReference(xBuf.View, wBuf.View, rows, 1e-6f, onePlusW, reference.View);
            fx.Kernels.Synchronize();
            // |y| ≤ |x|·s·(1+|w|) ≈ a few units: differences are summation order in Σx² (relative ~1e-7 · √D)
            Close($"RmsNorm group vs reference {rows}x{d} onePlusW={onePlusW}", group.GetAsArray1D(), reference.GetAsArray1D(), 4e-6);
            Close($"RmsNorm group vs Kernels.RmsNorm {rows}x{d} onePlusW={onePlusW}", group.GetAsArray1D(), cpu, 4e-6);
            Close($"RmsNorm reference vs Kernels.RmsNorm {rows}x{d} onePlusW={onePlusW}", reference.GetAsArray1D(), cpu, 4e-6);
        }
    }

    [Theory]
    [MemberData(nameof(RowShapes))]
    public void SoftmaxRows_group_kernel_matches_reference_kernel_and_Kernels_Softmax(int rows, int n)
    {
        var r = new Random(rows * 104729 + n);
        float[] x = Random(rows * n, r, 10f);
        var cpu = (float[])x.Clone();
        for (int i = 0; i < rows; i++) Kernels.Softmax(cpu.AsSpan(i * n, n));
        using var group = fx.Accelerator.Allocate1D(x);
        using var reference = fx.Accelerator.Allocate1D(x);
        fx.Kernels.SoftmaxRows(group.View, rows, n);
        fx.Kernels.SoftmaxRowsReference(reference.View, rows, n);
        fx.Kernels.Synchronize();
        var g = group.GetAsArray1D();
        Close($"SoftmaxRows group vs reference {rows}x{n}", g, reference.GetAsArray1D(), 1e-6);
        Close($"SoftmaxRows group vs Kernels.Softmax {rows}x{n}", g, cpu, 1e-6);
        Close($"SoftmaxRows reference vs Kernels.Softmax {rows}x{n}", reference.GetAsArray1D(), cpu, 1e-6);
        for (int i = 0; i < rows; i++) Assert.Equal(1.0, g.AsSpan(i * n, n).ToArray().Sum(v => (double)v), 5);
    }

    [Theory]
    [InlineData(3, 2304)]
    [InlineData(2, 257)]
    [InlineData(2, 31)]
    public void Row_kernels_with_GPU_sized_groups_match_the_references(int rows, int d)
    {
        // A CPU device of 8 warps × 32 threads allows 256-thread groups: the 8-step trees a GPU runs.
        using var context = Context.Create(b => b.CPU(new CPUDevice(32, 8, 1)));
        using var acc = context.CreateCPUAccelerator(0);
        var kernels = new DeviceKernels(acc);
        Assert.Equal(DeviceKernels.MaxRowGroup, kernels.RowGroupSize);
        var r = new Random(rows * 31 + d);
        float[] x = Random(rows * d, r, 10f), w = Random(d, r, 1f);
        var cpuNorm = new float[rows * d];
        Kernels.RmsNorm(x, w, rows, 1e-6f, true, cpuNorm);
        var cpuSoftmax = (float[])x.Clone();
        for (int i = 0; i < rows; i++) Kernels.Softmax(cpuSoftmax.AsSpan(i * d, d));
        using var xBuf = acc.Allocate1D(x);
        using var wBuf = acc.Allocate1D(w);
        using var yBuf = acc.Allocate1D<float>(rows * d);
        using var sBuf = acc.Allocate1D(x);
        kernels.RmsNorm(xBuf.View, wBuf.View, rows, 1e-6f, true, yBuf.View);
        kernels.SoftmaxRows(sBuf.View, rows, d);
        acc.Synchronize();
        // |x| ≤ 10 here: RmsNorm outputs stay a few units, so the same absolute tolerance as above
        Close($"RmsNorm 256-thread groups {rows}x{d}", yBuf.GetAsArray1D(), cpuNorm, 4e-6);
        Close($"SoftmaxRows 256-thread groups {rows}x{d}", sBuf.GetAsArray1D(), cpuSoftmax, 1e-6);
    }

    [Fact]
    public void DeviceKernels_compile_to_PTX()
    {
        // The CPU accelerator runs any .NET code; the PTX backend rejects what has no intrinsic (e.g. MathF.Exp).
        var ptx = PtxCompileTests.CompileToPtx(typeof(DeviceKernels));
        output.WriteLine(string.Join(", ", ptx.Keys.Order()));
        Assert.Equal(6, ptx.Count);
        Assert.Contains("bar.sync", ptx["RmsNormGroupKernel"]);
        Assert.Contains("bar.sync", ptx["SoftmaxRowsGroupKernel"]);
    }

    [Fact]
    public void Row_groups_are_a_power_of_two_within_the_shared_memory()
    {
        int g = fx.Kernels.RowGroupSize;
        output.WriteLine($"row group size {g} (accelerator allows {fx.Accelerator.MaxNumThreadsPerGroup})");
        Assert.True(g >= 1 && g <= DeviceKernels.MaxRowGroup && (g & (g - 1)) == 0, $"row group size {g}");
    }

    [Theory]
    [InlineData(1)]
    [InlineData(7)]
    [InlineData(33)]
    [InlineData(1001)]
    public void SwiGlu_matches_Kernels_SiluMul(int n)
    {
        var r = new Random(n);
        float[] gate = Random(n, r, 8f), up = Random(n, r);
        var cpu = new float[n];
        Kernels.SiluMul(gate, up, cpu);

        using var gBuf = fx.Accelerator.Allocate1D(gate);
        using var uBuf = fx.Accelerator.Allocate1D(up);
        using var yBuf = fx.Accelerator.Allocate1D<float>(n);
        fx.Kernels.SwiGlu(gBuf.View, uBuf.View, yBuf.View);
        fx.Kernels.Synchronize();
        // |y| ≤ 8·3: a few float ulps of that
        Close($"SwiGlu n={n}", yBuf.GetAsArray1D(), cpu, 1e-5);
    }

    [Theory]
    [InlineData(1, 1)]
    [InlineData(3, 7)]
    [InlineData(6, 33)]
    [InlineData(11, 130)]
    public void SoftmaxRows_matches_Kernels_Softmax(int rows, int n)
    {
        var r = new Random(rows * 100 + n);
        float[] x = Random(rows * n, r, 10f);
        var cpu = (float[])x.Clone();
        for (int i = 0; i < rows; i++) Kernels.Softmax(cpu.AsSpan(i * n, n));

        using var buf = fx.Accelerator.Allocate1D(x);
        fx.Kernels.SoftmaxRows(buf.View, rows, n);
        fx.Kernels.Synchronize();
        var device = buf.GetAsArray1D();
        Close($"SoftmaxRows {rows}x{n}", device, cpu, 1e-6);
        for (int i = 0; i < rows; i++) Assert.Equal(1.0, device.AsSpan(i * n, n).ToArray().Sum(v => (double)v), 5);
    }

    [Theory]
    [InlineData(1, 1)]
    [InlineData(13, 4)]
    [InlineData(1000, 3)]
    public void Adam_matches_Dictionaries_Adam_over_steps(int n, int steps)
    {
        var r = new Random(n + steps);
        float[] p0 = Random(n, r), p1 = Random(n / 2 + 1, r);
        var cpuParams = new[] { (float[])p0.Clone(), (float[])p1.Clone() };
        var cpu = new Adam([p0.Length, p1.Length]);

        var acc = fx.Accelerator;
        using var dp0 = acc.Allocate1D(p0); using var dp1 = acc.Allocate1D(p1);
        using var dm0 = acc.Allocate1D<float>(p0.Length); using var dm1 = acc.Allocate1D<float>(p1.Length);
        using var dv0 = acc.Allocate1D<float>(p0.Length); using var dv1 = acc.Allocate1D<float>(p1.Length);
        dm0.MemSetToZero(); dm1.MemSetToZero(); dv0.MemSetToZero(); dv1.MemSetToZero();
        double lr = 1e-3;
        for (int s = 1; s <= steps; s++)
        {
            float[] g0 = Random(p0.Length, r, 0.5f), g1 = Random(p1.Length, r, 0.5f);
            cpu.Update(cpuParams, [g0, g1], lr);
            var scalars = AdamScalars.For(s, lr);
            using var dg0 = acc.Allocate1D(g0); using var dg1 = acc.Allocate1D(g1);
            fx.Kernels.Adam(dp0.View, dg0.View, dm0.View, dv0.View, scalars);
            fx.Kernels.Adam(dp1.View, dg1.View, dm1.View, dv1.View, scalars);
            fx.Kernels.Synchronize();
        }
        // Same float operations in the same order: only FMA contraction could differ, so the tolerance is ulps.
        Close($"Adam n={n} steps={steps} p0", dp0.GetAsArray1D(), cpuParams[0], 1e-6);
        Close($"Adam n={n} steps={steps} p1", dp1.GetAsArray1D(), cpuParams[1], 1e-6);
        Close($"Adam n={n} steps={steps} exp_avg", dm0.GetAsArray1D(), cpu.ExpAvg[0], 1e-7);
        Close($"Adam n={n} steps={steps} exp_avg_sq", dv0.GetAsArray1D(), cpu.ExpAvgSq[0], 1e-7);
        // the parameters actually moved (a no-op kernel would fail here)
        Assert.True(MaxAbsDiff(dp0.GetAsArray1D(), p0) > 1e-4, "Adam: parameters did not move");
    }

    [Fact]
    public void Shape_mismatches_are_rejected_with_the_sizes()
    {
        using var a = fx.Accelerator.Allocate1D<float>(6);
        using var w = fx.Accelerator.Allocate1D<float>(4);
        var e = Assert.Throws<ArgumentException>(() => fx.Kernels.RmsNorm(a.View, w.View, 2, 1e-6f, false, a.View));
        Assert.Contains("2·4", e.Message);
        Assert.Throws<ArgumentException>(() => fx.Kernels.SoftmaxRows(a.View, 4, 2));
        Assert.Throws<ArgumentException>(() => fx.Kernels.SoftmaxRowsReference(a.View, 4, 2));
        Assert.Contains("2·4", Assert.Throws<ArgumentException>(() => fx.Kernels.RmsNormReference(a.View, w.View, 2, 1e-6f, false, a.View)).Message);
    }
}

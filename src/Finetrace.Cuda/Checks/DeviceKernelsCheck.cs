using System.Text.Json.Nodes;
using Finetrace.Tensors;
using ILGPU;
using ILGPU.Runtime;

namespace Finetrace.Cuda.Checks;

/// <summary>
/// The device's basic kernels against their CPU peers in one pass, on whichever accelerator runs it: RMSNorm (plain
/// and Gemma's 1+w), SwiGLU and row softmax of <see cref="DeviceKernels"/> against <c>Tensors.Kernels</c>, and the
/// context's float32 product (<see cref="IDeviceGemm.Sgemm"/>; cuBLAS on a GPU once wired) against
/// <c>Tensors.Gemm.Sgemm</c>, at model-like shapes (a Gemma-2-2B row width). The first step of scripts/gpu-check: it
/// shows the trimmed, self-contained binary compiles and runs ILGPU kernels on the device before anything larger.
/// Error: the largest norm-relative difference ‖device − cpu‖ / ‖cpu‖ over the parts; tolerance 1e-5 (float32 on
/// both sides: only summation order and exp/sqrt rounding differ).
/// </summary>
public static class DeviceKernelsCheck
{
    public const double Tolerance = 1e-5;

    public static JsonObject Run(DeviceKind device, bool tiny)
    {
        using var ctx = DeviceContext.Create(device, GemmMode.Fp32);
        var acc = ctx.Accelerator;
        int rows = tiny ? 16 : 512, d = tiny ? 96 : 2304;
        var rng = new Random(18);
        var parts = new JsonObject();
        double worst = 0;
        void Record(string name, float[] got, float[] want)
        {
            double rel = NormRelative(got, want);
            parts[name] = rel;
            worst = Math.Max(worst, double.IsNaN(rel) ? double.PositiveInfinity : rel);
        }

        var x = Random(rows * d, rng, 3f);
        var w = Random(d, rng, 1f);
        foreach (bool onePlusW in new[] { false, true })
        {
            var cpu = new float[rows * d];
            Kernels.RmsNorm(x, w, rows, 1e-6f, onePlusW, cpu);
            using var dx = acc.Allocate1D(x); using var dw = acc.Allocate1D(w); using var dy = acc.Allocate1D<float>(rows * d);
            ctx.Kernels.RmsNorm(dx.View, dw.View, rows, 1e-6f, onePlusW, dy.View);
            ctx.Synchronize();
            Record(onePlusW ? "rmsnorm_gemma" : "rmsnorm", dy.GetAsArray1D(), cpu);
        }

        {
            var gate = Random(rows * d, rng, 8f);
            var cpu = new float[rows * d];
            Kernels.SiluMul(gate, x, cpu);
            using var dg = acc.Allocate1D(gate); using var du = acc.Allocate1D(x); using var dy = acc.Allocate1D<float>(rows * d);
            ctx.Kernels.SwiGlu(dg.View, du.View, dy.View);
            ctx.Synchronize();
            Record("swiglu", dy.GetAsArray1D(), cpu);
        }

        {
            var cpu = Random(rows * d, rng, 10f);
            using var ds = acc.Allocate1D(cpu);
            for (int i = 0; i < rows; i++) Kernels.Softmax(cpu.AsSpan(i * d, d));
            ctx.Kernels.SoftmaxRows(ds.View, rows, d);
            ctx.Synchronize();
            Record("softmax", ds.GetAsArray1D(), cpu);
        }

        {
            // y [rows, n] = x [rows, d] · wᵀ with w [n, d]: the projection shape of a forward
            int n = tiny ? 40 : 1024;
            var wNK = Random(n * d, rng, 0.05f);
            var cpu = new float[rows * n];
            Gemm.Sgemm(false, true, rows, n, d, 1f, x, d, wNK, d, 0f, cpu, n);
            using var dx = acc.Allocate1D(x); using var dw = acc.Allocate1D(wNK); using var dy = acc.Allocate1D<float>(rows * n);
            ctx.Gemm.Sgemm(false, true, rows, n, d, 1f, dx.View, d, dw.View, d, 0f, dy.View, n);
            ctx.Synchronize();
            Record("sgemm_nt", dy.GetAsArray1D(), cpu);
        }

        return new JsonObject
        {
            ["status"] = worst <= Tolerance ? "pass" : "fail",
            ["error"] = worst,
            ["tolerance"] = Tolerance,
            ["metric"] = "norm-relative, worst part",
            ["device"] = ctx.Name,
            ["gemm"] = ctx.Gemm.GetType().Name,
            ["rows"] = rows, ["width"] = d,
            ["parts"] = parts,
        };
    }

    /// <summary>‖got − want‖₂ / ‖want‖₂ in double (NaN when either holds a NaN).</summary>
    public static double NormRelative(ReadOnlySpan<float> got, ReadOnlySpan<float> want)
    {
        if (got.Length != want.Length) throw new ArgumentException($"lengths differ: {got.Length} vs {want.Length}");
        double diff = 0, norm = 0;
        for (int i = 0; i < got.Length; i++)
        {
            double e = (double)got[i] - want[i];
            diff += e * e;
            norm += (double)want[i] * want[i];
        }
        return norm == 0 ? Math.Sqrt(diff) : Math.Sqrt(diff / norm);
    }

    static float[] Random(int n, Random r, float scale)
    {
        var a = new float[n];
        for (int i = 0; i < n; i++) a[i] = (float)((r.NextDouble() * 2 - 1) * scale);
        return a;
    }
}

using Finetrace.Tensors;
using ILGPU.Runtime;

namespace Finetrace.Cuda;

/// <summary>Sizes of the parity check's products (odd by default, so no tile size divides them).</summary>
public sealed record GemmParityOptions(int M = 37, int N = 29, int K = 67, int Batch = 3, ulong Seed = 18);

/// <summary>One product of the parity check. <see cref="Error"/> is max|Δ| / max|C_ref| for fp32 and
/// ‖Δ‖₂ / ‖C_ref‖₂ (norm-relative) for tf32 and bf16, against <c>Finetrace.Tensors.Gemm.Sgemm</c> on the host.</summary>
public sealed record GemmParityCase(string Name, string Call, GemmMode Mode, bool TransA, bool TransB,
    int M, int N, int K, int Batch, string Measure, double Error, double Tolerance)
{
    public bool Passed => Error <= Tolerance;   // false for NaN
}

/// <summary>Every product of one run of <see cref="GemmParity.Run"/>, with the device and the products' backend.</summary>
public sealed record GemmParityResult(string Device, string Gemm, IReadOnlyList<GemmParityCase> Cases)
{
    public bool Passed => Cases.Count > 0 && Cases.All(c => c.Passed);
    public double MaxError => Cases.Count == 0 ? double.NaN : Cases.Max(c => c.Error);
    public IEnumerable<GemmParityCase> Failures => Cases.Where(c => !c.Passed);
}

/// <summary>
/// The device products against the CPU reference (<c>Finetrace.Tensors.Gemm.Sgemm</c>) in all three
/// <see cref="GemmMode"/>s and all four transpose combinations: Sgemm and SgemmStridedBatched with leading dimensions
/// and batch strides larger than minimal, alpha ≠ 1 and beta ≠ 0 (C starts random), and GemmBf16 on the operands
/// rounded to bf16 (compared with the float32 product of the unrounded operands: the error bf16 weights bring).
/// Tolerances: fp32 ≤ 1e-5 (max|Δ| relative to max|C|), tf32 and bf16 ≤ 1e-2 norm-relative.
/// Runs on whatever <see cref="DeviceContext"/> it is given: the ILGPU reference kernel on the CPU accelerator
/// (a normal test), cuBLAS on a GPU (a device test and scripts/gpu-check).
/// </summary>
public static class GemmParity
{
    public const double Fp32Tolerance = 1e-5, ReducedTolerance = 1e-2;
    const float Alpha = 0.75f, Beta = 0.5f;

    /// <summary>Runs the check with products of the context's own kind (cuBLAS or the ILGPU kernel) in each mode.</summary>
    public static GemmParityResult Run(DeviceContext ctx, GemmParityOptions? options = null) =>
        Run(ctx, ctx.CreateGemm, options);

    /// <summary>Runs the check on the products <paramref name="create"/> makes for each mode (disposed after use).</summary>
    public static GemmParityResult Run(DeviceContext ctx, Func<GemmMode, IDeviceGemm> create, GemmParityOptions? options = null)
    {
        var o = options ?? new GemmParityOptions();
        var cases = new List<GemmParityCase>();
        foreach (var mode in new[] { GemmMode.Fp32, GemmMode.Tf32, GemmMode.Bf16 })
        {
            using var gemm = create(mode);
            foreach (bool ta in new[] { false, true })
                foreach (bool tb in new[] { false, true })
                {
                    cases.Add(Single(ctx, gemm, mode, ta, tb, o));
                    cases.Add(Batched(ctx, gemm, mode, ta, tb, o));
                    if (mode == GemmMode.Bf16) cases.Add(Bf16Operands(ctx, gemm, ta, tb, o));
                }
        }
        return new GemmParityResult(ctx.Name, ctx.GemmDescription, cases);
    }

    // The stored operand sizes of one product with padded leading dimensions.
    readonly record struct Layout(int Lda, int Ldb, int Ldc, int ARows, int BRows)
    {
        public static Layout For(bool ta, bool tb, GemmParityOptions o) => new(
            Lda: (ta ? o.M : o.K) + 3, Ldb: (tb ? o.K : o.N) + 2, Ldc: o.N + 5,
            ARows: ta ? o.K : o.M, BRows: tb ? o.N : o.K);
    }

    static GemmParityCase Single(DeviceContext ctx, IDeviceGemm gemm, GemmMode mode, bool ta, bool tb, GemmParityOptions o)
    {
        var l = Layout.For(ta, tb, o);
        ulong seed = o.Seed * 1000 + (ulong)mode * 10 + (ta ? 2UL : 0) + (tb ? 1UL : 0);
        float[] a = Random(l.ARows * l.Lda, seed), b = Random(l.BRows * l.Ldb, seed + 100), c = Random(o.M * l.Ldc, seed + 200);
        var expected = (float[])c.Clone();
        Gemm.Sgemm(ta, tb, o.M, o.N, o.K, Alpha, a, l.Lda, b, l.Ldb, Beta, expected, l.Ldc);
        var acc = ctx.Accelerator;
        using var da = acc.Allocate1D(a); using var db = acc.Allocate1D(b); using var dc = acc.Allocate1D(c);
        gemm.Sgemm(ta, tb, o.M, o.N, o.K, Alpha, da.View, l.Lda, db.View, l.Ldb, Beta, dc.View, l.Ldc);
        acc.Synchronize();
        return Compare("Sgemm", mode, ta, tb, o, 1, dc.GetAsArray1D(), expected, mode == GemmMode.Fp32);
    }

    static GemmParityCase Batched(DeviceContext ctx, IDeviceGemm gemm, GemmMode mode, bool ta, bool tb, GemmParityOptions o)
    {
        var l = Layout.For(ta, tb, o);
        // strides longer than one matrix, so a product reading at the wrong offset reads other values
        long sa = (long)l.ARows * l.Lda + 7, sb = (long)l.BRows * l.Ldb + 11, sc = (long)o.M * l.Ldc + 13;
        ulong seed = o.Seed * 1000 + 500 + (ulong)mode * 10 + (ta ? 2UL : 0) + (tb ? 1UL : 0);
        float[] a = Random((int)(sa * o.Batch), seed), b = Random((int)(sb * o.Batch), seed + 100), c = Random((int)(sc * o.Batch), seed + 200);
        var expected = (float[])c.Clone();
        for (int z = 0; z < o.Batch; z++)
            Gemm.Sgemm(ta, tb, o.M, o.N, o.K, Alpha, a.AsSpan((int)(z * sa)), l.Lda, b.AsSpan((int)(z * sb)), l.Ldb,
                Beta, expected.AsSpan((int)(z * sc)), l.Ldc);
        var acc = ctx.Accelerator;
        using var da = acc.Allocate1D(a); using var db = acc.Allocate1D(b); using var dc = acc.Allocate1D(c);
        gemm.SgemmStridedBatched(ta, tb, o.M, o.N, o.K, Alpha, da.View, l.Lda, sa, db.View, l.Ldb, sb, Beta, dc.View, l.Ldc, sc, o.Batch);
        acc.Synchronize();
        return Compare("SgemmStridedBatched", mode, ta, tb, o, o.Batch, dc.GetAsArray1D(), expected, mode == GemmMode.Fp32);
    }

    static GemmParityCase Bf16Operands(DeviceContext ctx, IDeviceGemm gemm, bool ta, bool tb, GemmParityOptions o)
    {
        var l = Layout.For(ta, tb, o);
        ulong seed = o.Seed * 1000 + 900 + (ta ? 2UL : 0) + (tb ? 1UL : 0);
        float[] a = Random(l.ARows * l.Lda, seed), b = Random(l.BRows * l.Ldb, seed + 100), c = Random(o.M * l.Ldc, seed + 200);
        var expected = (float[])c.Clone();
        Gemm.Sgemm(ta, tb, o.M, o.N, o.K, Alpha, a, l.Lda, b, l.Ldb, Beta, expected, l.Ldc);
        var acc = ctx.Accelerator;
        using var da = acc.Allocate1D(a.Select(Bf16.FromFloat).ToArray());
        using var db = acc.Allocate1D(b.Select(Bf16.FromFloat).ToArray());
        using var dc = acc.Allocate1D(c);
        gemm.GemmBf16(ta, tb, o.M, o.N, o.K, Alpha, da.View, l.Lda, db.View, l.Ldb, Beta, dc.View, l.Ldc);
        acc.Synchronize();
        return Compare("GemmBf16", GemmMode.Bf16, ta, tb, o, 1, dc.GetAsArray1D(), expected, fp32: false);
    }

    static GemmParityCase Compare(string call, GemmMode mode, bool ta, bool tb, GemmParityOptions o, int batch,
        float[] got, float[] expected, bool fp32)
    {
        // Every element is compared, padding included: a product writing outside its rows shows up as an error.
        double maxDiff = 0, maxRef = 0, diff2 = 0, ref2 = 0;
        for (int i = 0; i < got.Length; i++)
        {
            double d = (double)got[i] - expected[i];
            if (double.IsNaN(d)) { maxDiff = double.NaN; break; }
            maxDiff = Math.Max(maxDiff, Math.Abs(d));
            maxRef = Math.Max(maxRef, Math.Abs(expected[i]));
            diff2 += d * d; ref2 += (double)expected[i] * expected[i];
        }
        double error = double.IsNaN(maxDiff) ? double.NaN
            : fp32 ? maxDiff / Math.Max(maxRef, 1e-30) : Math.Sqrt(diff2 / Math.Max(ref2, 1e-60));
        string name = $"{call} {mode} {(ta ? 'T' : 'N')}{(tb ? 'T' : 'N')} {o.M}x{o.N}x{o.K}" + (batch > 1 ? $" x{batch}" : "");
        return new GemmParityCase(name, call, mode, ta, tb, o.M, o.N, o.K, batch,
            fp32 ? "max-abs-diff / max|C|" : "norm-relative", error, fp32 ? Fp32Tolerance : ReducedTolerance);
    }

    static float[] Random(int n, ulong seed)
    {
        var rng = new SplitMix64(seed);
        var x = new float[n];
        for (int i = 0; i < n; i++) x[i] = (float)(rng.NextDouble() * 2 - 1);
        return x;
    }
}

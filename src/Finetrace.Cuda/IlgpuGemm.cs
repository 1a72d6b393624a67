using ILGPU;
using ILGPU.Runtime;

namespace Finetrace.Cuda;

/// <summary>
/// <see cref="IDeviceGemm"/> as ILGPU kernels, one thread per output element summing over k in ascending order
/// (the slow, obvious reference of the device products, and what the CPU accelerator runs in CI). Bf16 operands are
/// widened exactly (bits &lt;&lt; 16) and multiplied in float32, as tensor cores do. <see cref="Mode"/> is recorded but
/// Fp32 and Tf32 compute the same here (no tf32 rounding on this path).
/// </summary>
public sealed class IlgpuGemm : IDeviceGemm
{
    readonly Accelerator accelerator;
    readonly Action<Index3D, ArrayView<float>, ArrayView<float>, ArrayView<float>, GemmShape> sgemm;
    readonly Action<Index2D, ArrayView<ushort>, ArrayView<ushort>, ArrayView<float>, GemmShape> gemmBf16;

    public GemmMode Mode { get; }

    public IlgpuGemm(Accelerator accelerator, GemmMode mode = GemmMode.Fp32)
    {
        this.accelerator = accelerator;
        Mode = mode;
        sgemm = accelerator.LoadAutoGroupedStreamKernel<Index3D, ArrayView<float>, ArrayView<float>, ArrayView<float>, GemmShape>(SgemmKernel);
        gemmBf16 = accelerator.LoadAutoGroupedStreamKernel<Index2D, ArrayView<ushort>, ArrayView<ushort>, ArrayView<float>, GemmShape>(GemmBf16Kernel);
    }

    public void Sgemm(bool transA, bool transB, int m, int n, int k, float alpha,
        ArrayView<float> a, int lda, ArrayView<float> b, int ldb, float beta, ArrayView<float> c, int ldc) =>
        SgemmStridedBatched(transA, transB, m, n, k, alpha, a, lda, 0, b, ldb, 0, beta, c, ldc, 0, 1);

    public void SgemmStridedBatched(bool transA, bool transB, int m, int n, int k, float alpha,
        ArrayView<float> a, int lda, long strideA, ArrayView<float> b, int ldb, long strideB,
        float beta, ArrayView<float> c, int ldc, long strideC, int batch)
    {
        var s = GemmShape.Check(nameof(SgemmStridedBatched), transA, transB, m, n, k, alpha, lda, strideA, a.Length, ldb, strideB, b.Length, beta, ldc, strideC, c.Length, batch);
        if (m == 0 || n == 0 || batch == 0) return;
        sgemm(new Index3D(m, n, batch), a, b, c, s);
    }

    public void GemmBf16(bool transA, bool transB, int m, int n, int k, float alpha,
        ArrayView<ushort> a, int lda, ArrayView<ushort> b, int ldb, float beta, ArrayView<float> c, int ldc)
    {
        var s = GemmShape.Check(nameof(GemmBf16), transA, transB, m, n, k, alpha, lda, 0, a.Length, ldb, 0, b.Length, beta, ldc, 0, c.Length, 1);
        if (m == 0 || n == 0) return;
        gemmBf16(new Index2D(m, n), a, b, c, s);
    }

    public void Dispose() { }

    // a, b, c: see IDeviceGemm.SgemmStridedBatched; one thread per (row, column, batch)
    static void SgemmKernel(Index3D idx, ArrayView<float> a, ArrayView<float> b, ArrayView<float> c, GemmShape s)
    {
        int i = idx.X, j = idx.Y, z = idx.Z;
        long ao = z * s.StrideA, bo = z * s.StrideB, co = z * s.StrideC + (long)i * s.Ldc + j;
        float sum = 0f;
        for (int p = 0; p < s.K; p++)
        {
            float av = a[ao + (s.TransA != 0 ? (long)p * s.Lda + i : (long)i * s.Lda + p)];
            float bv = b[bo + (s.TransB != 0 ? (long)j * s.Ldb + p : (long)p * s.Ldb + j)];
            sum += av * bv;
        }
        c[co] = s.Beta == 0f ? s.Alpha * sum : s.Alpha * sum + s.Beta * c[co];
    }

    // a, b: bf16 bits; c: float32; one thread per (row, column)
    static void GemmBf16Kernel(Index2D idx, ArrayView<ushort> a, ArrayView<ushort> b, ArrayView<float> c, GemmShape s)
    {
        int i = idx.X, j = idx.Y;
        long co = (long)i * s.Ldc + j;
        float sum = 0f;
        for (int p = 0; p < s.K; p++)
        {
            float av = Bf16.ToFloat(a[s.TransA != 0 ? (long)p * s.Lda + i : (long)i * s.Lda + p]);
            float bv = Bf16.ToFloat(b[s.TransB != 0 ? (long)j * s.Ldb + p : (long)p * s.Ldb + j]);
            sum += av * bv;
        }
        c[co] = s.Beta == 0f ? s.Alpha * sum : s.Alpha * sum + s.Beta * c[co];
    }
}

/// <summary>bf16 ↔ float32 bit conversions usable inside kernels.</summary>
public static class Bf16
{
    /// <summary>Exact widening: the bf16 bits are the high half of the float32.</summary>
    public static float ToFloat(ushort bits) => Interop.IntAsFloat((uint)bits << 16);

    /// <summary>Round to nearest even, as torch's float → bfloat16 (NaN stays a quiet NaN).</summary>
    public static ushort FromFloat(float x)
    {
        uint u = Interop.FloatAsInt(x);
        if ((u & 0x7FFFFFFFu) > 0x7F800000u) return (ushort)((u >> 16) | 0x40u);
        uint rounding = 0x7FFFu + ((u >> 16) & 1u);
        return (ushort)((u + rounding) >> 16);
    }
}

/// <summary>The shape and scalars of one (batched) product, validated on the host.</summary>
public readonly struct GemmShape
{
    public int M { get; init; }
    public int N { get; init; }
    public int K { get; init; }
    public int TransA { get; init; }
    public int TransB { get; init; }
    public int Lda { get; init; }
    public int Ldb { get; init; }
    public int Ldc { get; init; }
    public long StrideA { get; init; }
    public long StrideB { get; init; }
    public long StrideC { get; init; }
    public float Alpha { get; init; }
    public float Beta { get; init; }

    /// <summary>Checks that every operand holds the elements the product reads or writes, as row-major cblas does.</summary>
    public static GemmShape Check(string op, bool transA, bool transB, int m, int n, int k, float alpha,
        int lda, long strideA, long aLen, int ldb, long strideB, long bLen, float beta, int ldc, long strideC, long cLen, int batch)
    {
        if (m < 0 || n < 0 || k < 0 || batch < 0) throw new ArgumentException($"{op}: negative size m={m} n={n} k={k} batch={batch}");
        int aRows = transA ? k : m, aCols = transA ? m : k, bRows = transB ? n : k, bCols = transB ? k : n;
        if (lda < Math.Max(1, aCols) || ldb < Math.Max(1, bCols) || ldc < Math.Max(1, n))
            throw new ArgumentException($"{op}: leading dimensions lda={lda} ldb={ldb} ldc={ldc} are shorter than the rows they step over ({aCols}, {bCols}, {n})");
        if (batch > 0 && m > 0 && n > 0)
        {
            long last = batch - 1;
            long aNeed = k == 0 ? 0 : last * strideA + (long)(aRows - 1) * lda + aCols;
            long bNeed = k == 0 ? 0 : last * strideB + (long)(bRows - 1) * ldb + bCols;
            long cNeed = last * strideC + (long)(m - 1) * ldc + n;
            if (aLen < aNeed || bLen < bNeed || cLen < cNeed)
                throw new ArgumentException($"{op}: operands hold a={aLen} b={bLen} c={cLen} elements; the product needs {aNeed}, {bNeed}, {cNeed}");
        }
        return new GemmShape
        {
            M = m, N = n, K = k, TransA = transA ? 1 : 0, TransB = transB ? 1 : 0, Lda = lda, Ldb = ldb, Ldc = ldc,
            StrideA = strideA, StrideB = strideB, StrideC = strideC, Alpha = alpha, Beta = beta,
        };
    }
}

namespace Finetrace.Tensors;

public enum GemmBackend { OpenBlas, Managed }

/// <summary>
/// The one entry point for float32 matrix products. Row-major, cblas semantics:
/// C[m,n] = alpha · op(A)[m,k] · op(B)[k,n] + beta · C[m,n], where op(X) is X or Xᵀ.
/// Uses OpenBLAS when <c>libopenblas.so.0</c> loads, else the managed SIMD kernel; setting the environment
/// variable <c>FINETRACE_BLAS=managed</c> forces the managed kernel.
/// Threading: OpenBLAS uses its own threads; never call this from inside a <c>Parallel.For</c> body while the
/// backend is OpenBLAS with more than one thread (style.md §2.6).
/// </summary>
public static class Gemm
{
    static GemmBackend? _backend;
    static bool _warned;

    public static GemmBackend Backend
    {
        get
        {
            if (_backend is { } b) return b;
            string? forced = Environment.GetEnvironmentVariable("FINETRACE_BLAS");
            if (string.Equals(forced, "managed", StringComparison.OrdinalIgnoreCase)) b = GemmBackend.Managed;
            else b = OpenBlas.IsAvailable ? GemmBackend.OpenBlas : GemmBackend.Managed;
            if (b == GemmBackend.Managed && !OpenBlas.IsAvailable && !_warned && forced is null)
            {
                _warned = true;
                Console.Error.WriteLine(
                    "finetrace: OpenBLAS (libopenblas.so.0) not found; using the managed matrix kernel, which is slower. " +
                    "Install it with: sudo apt-get install libopenblas0-pthread");
            }
            _backend = b;
            return b;
        }
        set => _backend = value;
    }

    // a: op(A) is [m,k]; b: op(B) is [k,n]; c: [m,n] with row stride ldc
    public static void Sgemm(bool transA, bool transB, int m, int n, int k, float alpha,
        ReadOnlySpan<float> a, int lda, ReadOnlySpan<float> b, int ldb, float beta, Span<float> c, int ldc)
    {
        CheckShapes(transA, transB, m, n, k, a.Length, lda, b.Length, ldb, c.Length, ldc);
        if (m == 0 || n == 0) return;
        if (k == 0 || alpha == 0f)
        {
            for (int i = 0; i < m; i++)
            {
                var row = c.Slice(i * ldc, n);
                if (beta == 0f) row.Clear(); else System.Numerics.Tensors.TensorPrimitives.Multiply(row, beta, row);
            }
            return;
        }
        if (Backend == GemmBackend.OpenBlas)
        {
            if (m < SgemvBelowM) SgemvRows(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
            else OpenBlas.Sgemm(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
        }
        else
            ManagedGemm.Sgemm(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    }

    /// <summary>Below this many rows OpenBLAS runs the product as one sgemv per row: a short product is memory-bound,
    /// and sgemm pays for packing B that it then barely reuses (style.md §2.1).</summary>
    internal static int SgemvBelowM = 8;

    // C[i,:] = alpha · op(A)[i,:] · op(B) + beta · C[i,:] for each row i, through cblas_sgemv.
    static unsafe void SgemvRows(bool transA, bool transB, int m, int n, int k, float alpha,
        ReadOnlySpan<float> a, int lda, ReadOnlySpan<float> b, int ldb, float beta, Span<float> c, int ldc)
    {
        fixed (float* pa = a) fixed (float* pb = b) fixed (float* pc = c)
            for (int i = 0; i < m; i++)
            {
                // row i of op(A): a[i·lda + p] (stride 1), or a[p·lda + i] (stride lda) when A is stored transposed
                float* x = transA ? pa + i : pa + (long)i * lda;
                int incx = transA ? lda : 1;
                // op(B) = Bᵀ with B [n,k]: y = B·x (no transpose); op(B) = B [k,n]: y = Bᵀ·x
                if (transB) OpenBlas.Sgemv(false, n, k, alpha, pb, ldb, x, incx, beta, pc + (long)i * ldc, 1);
                else OpenBlas.Sgemv(true, k, n, alpha, pb, ldb, x, incx, beta, pc + (long)i * ldc, 1);
            }
    }

    /// <summary>y[m,n] = x[m,k] · w[n,k]ᵀ (+ y when accumulate): a linear layer with PyTorch's [out,in] weight.</summary>
    // xMK: [m,k]; wNK: [n,k]; yMN: [m,n]
    public static void MatMulNT(ReadOnlySpan<float> xMK, ReadOnlySpan<float> wNK, int m, int k, int n, Span<float> yMN, bool accumulate = false)
        => Sgemm(false, true, m, n, k, 1f, xMK, k, wNK, k, accumulate ? 1f : 0f, yMN, n);

    /// <summary>y[m,n] = x[m,k] · w[k,n] (+ y when accumulate).</summary>
    // xMK: [m,k]; wKN: [k,n]; yMN: [m,n]
    public static void MatMulNN(ReadOnlySpan<float> xMK, ReadOnlySpan<float> wKN, int m, int k, int n, Span<float> yMN, bool accumulate = false)
        => Sgemm(false, false, m, n, k, 1f, xMK, k, wKN, n, accumulate ? 1f : 0f, yMN, n);

    /// <summary>y[m,n] = x[k,m]ᵀ · w[k,n] (+ y when accumulate): the weight-gradient shape.</summary>
    // xKM: [k,m]; wKN: [k,n]; yMN: [m,n]
    public static void MatMulTN(ReadOnlySpan<float> xKM, ReadOnlySpan<float> wKN, int m, int k, int n, Span<float> yMN, bool accumulate = false)
        => Sgemm(true, false, m, n, k, 1f, xKM, m, wKN, n, accumulate ? 1f : 0f, yMN, n);

    internal static void CheckShapes(bool transA, bool transB, int m, int n, int k, int aLen, int lda, int bLen, int ldb, int cLen, int ldc)
    {
        if (m < 0 || n < 0 || k < 0) throw new ArgumentException($"negative gemm size m={m} n={n} k={k}");
        int aRows = transA ? k : m, aCols = transA ? m : k;
        int bRows = transB ? n : k, bCols = transB ? k : n;
        if (lda < Math.Max(1, aCols) || ldb < Math.Max(1, bCols) || ldc < Math.Max(1, n))
            throw new ArgumentException($"gemm leading dimension too small: lda={lda} (need {aCols}), ldb={ldb} (need {bCols}), ldc={ldc} (need {n})");
        if (aRows > 0 && aCols > 0 && (long)(aRows - 1) * lda + aCols > aLen) throw new ArgumentException($"gemm A too short: {aLen} < [{aRows}x{aCols}] with lda {lda}");
        if (bRows > 0 && bCols > 0 && (long)(bRows - 1) * ldb + bCols > bLen) throw new ArgumentException($"gemm B too short: {bLen} < [{bRows}x{bCols}] with ldb {ldb}");
        if (m > 0 && n > 0 && (long)(m - 1) * ldc + n > cLen) throw new ArgumentException($"gemm C too short: {cLen} < [{m}x{n}] with ldc {ldc}");
    }

    /// <summary>The slow, obvious reference every backend is tested against (double accumulation).</summary>
    public static void Reference(bool transA, bool transB, int m, int n, int k, float alpha,
        ReadOnlySpan<float> a, int lda, ReadOnlySpan<float> b, int ldb, float beta, Span<float> c, int ldc)
    {
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++)
            {
                double s = 0;
                for (int p = 0; p < k; p++)
                {
                    float av = transA ? a[p * lda + i] : a[i * lda + p];
                    float bv = transB ? b[j * ldb + p] : b[p * ldb + j];
                    s += (double)av * bv;
                }
                float prev = beta == 0f ? 0f : beta * c[i * ldc + j];
                c[i * ldc + j] = (float)(alpha * s) + prev;
            }
    }
}

using System.Numerics.Tensors;

namespace Finetrace.Tensors;

/// <summary>
/// Managed fallback GEMM (row-major, cblas semantics). Placeholder-quality baseline: correct for every
/// transpose combination; the optimised packed SIMD kernel replaces the inner loops.
/// </summary>
public static class ManagedGemm
{
    public static void Sgemm(bool transA, bool transB, int m, int n, int k, float alpha,
        ReadOnlySpan<float> a, int lda, ReadOnlySpan<float> b, int ldb, float beta, Span<float> c, int ldc)
    {
        // Simple path: materialise A as [m,k] and B as [n,k] so every output is one contiguous dot product.
        float[] aMK = Pack(a, lda, transA, m, k);
        float[] bNK = Pack(b, ldb, !transB, n, k);
        var cArr = c; // spans cannot be captured; copy row results through a local array
        float[] outMN = new float[m * n];
        Parallel.For(0, m, i =>
        {
            var ar = aMK.AsSpan(i * k, k);
            for (int j = 0; j < n; j++) outMN[i * n + j] = TensorPrimitives.Dot(ar, bNK.AsSpan(j * k, k));
        });
        for (int i = 0; i < m; i++)
        {
            var dst = cArr.Slice(i * ldc, n);
            var src = outMN.AsSpan(i * n, n);
            for (int j = 0; j < n; j++) dst[j] = alpha * src[j] + (beta == 0f ? 0f : beta * dst[j]);
        }
    }

    // Returns op(X) as a contiguous [rows, cols] array; `transposed` means X is stored [cols, rows].
    static float[] Pack(ReadOnlySpan<float> x, int ld, bool transposed, int rows, int cols)
    {
        var r = new float[rows * cols];
        for (int i = 0; i < rows; i++)
            for (int p = 0; p < cols; p++)
                r[i * cols + p] = transposed ? x[p * ld + i] : x[i * ld + p];
        return r;
    }
}

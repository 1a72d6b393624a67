namespace Finetrace.Cuda;

/// <summary>Which caller operand cuBLAS receives in its A (first) slot.</summary>
public enum CublasOperand { A, B }

/// <summary>
/// One row-major product (<see cref="IDeviceGemm"/> semantics, cblas row-major) as the column-major cuBLAS call that
/// computes it: every argument exactly as cublasGemmEx / cublasGemmStridedBatchedEx receives it.
/// A row-major matrix with row stride ld is, read column-major with the same ld, its own transpose, so
/// C = op(A)·op(B) (row-major) is Cᵀ = op(B)ᵀ·op(A)ᵀ (column-major): the caller's B goes in cuBLAS's A slot and the
/// caller's A in its B slot, m and n swap, k stays, and each operand keeps its own op flag (a stored matrix that
/// needed no transpose row-major needs none column-major either, because both the operand and the product flipped).
/// Pure: <see cref="From"/> has no device, so the mapping is unit-tested on the host against a column-major loop.
/// </summary>
public readonly record struct CublasCall(
    bool TransA, bool TransB, int M, int N, int K,
    CublasOperand FirstOperand, int Lda, long StrideA,
    CublasOperand SecondOperand, int Ldb, long StrideB,
    int Ldc, long StrideC, int Batch)
{
    /// <summary>cuBLAS's op code for its first and second operands (CUBLAS_OP_N = 0, CUBLAS_OP_T = 1).</summary>
    public int OpA => TransA ? 1 : 0;
    public int OpB => TransB ? 1 : 0;

    /// <summary>The column-major call for a validated row-major product.</summary>
    public static CublasCall From(in GemmShape s, int batch) => new(
        TransA: s.TransB != 0, TransB: s.TransA != 0, M: s.N, N: s.M, K: s.K,
        FirstOperand: CublasOperand.B, Lda: s.Ldb, StrideA: s.StrideB,
        SecondOperand: CublasOperand.A, Ldb: s.Lda, StrideB: s.StrideA,
        Ldc: s.Ldc, StrideC: s.StrideC, Batch: batch);
}

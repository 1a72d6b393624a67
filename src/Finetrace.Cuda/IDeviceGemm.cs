using ILGPU;
using ILGPU.Runtime;

namespace Finetrace.Cuda;

/// <summary>Precision of the device matrix products (stated per run; the CPU path is always float32).
/// Fp32: float32 operands and accumulation. Tf32: float32 operands rounded to tf32 by the tensor cores, float32
/// accumulation (cuBLAS CUBLAS_TF32_TENSOR_OP_MATH). Bf16: weights kept in bf16 and activations rounded to bf16 before
/// each projection, float32 accumulation and output (cublasGemmEx, CUDA_R_16BF inputs, CUBLAS_COMPUTE_32F).</summary>
public enum GemmMode { Fp32, Tf32, Bf16 }

/// <summary>
/// Matrix products on a device, row-major with cblas semantics exactly as <c>Finetrace.Tensors.Gemm.Sgemm</c>:
/// C[m,n] = alpha · op(A)[m,k] · op(B)[k,n] + beta · C[m,n], where op(X) is X or Xᵀ and lda/ldb/ldc are the row
/// lengths of the stored matrices. All calls are asynchronous on the accelerator's default stream (the same stream the
/// ILGPU kernels run on), so they order with kernels without extra synchronisation.
/// Implementations: <see cref="IlgpuGemm"/> (ILGPU kernel; runs on the CPU accelerator in CI and is the fallback) and
/// the cuBLAS one (P/Invoke, CUDA accelerator only).
/// </summary>
public interface IDeviceGemm : IDisposable
{
    GemmMode Mode { get; }

    // a: op(A) is [m,k]; b: op(B) is [k,n]; c: [m,n] with row stride ldc
    void Sgemm(bool transA, bool transB, int m, int n, int k, float alpha,
        ArrayView<float> a, int lda, ArrayView<float> b, int ldb, float beta, ArrayView<float> c, int ldc);

    /// <summary><paramref name="batch"/> independent products; product i reads a + i·strideA, b + i·strideB and
    /// writes c + i·strideC (strides in elements).</summary>
    // a: batch × op(A) [m,k]; b: batch × op(B) [k,n]; c: batch × [m,n]
    void SgemmStridedBatched(bool transA, bool transB, int m, int n, int k, float alpha,
        ArrayView<float> a, int lda, long strideA, ArrayView<float> b, int ldb, long strideB,
        float beta, ArrayView<float> c, int ldc, long strideC, int batch);

    /// <summary>bf16 operands (raw bf16 bit patterns, as stored in safetensors), float32 accumulation and output.</summary>
    // a: op(A) is [m,k] bf16; b: op(B) is [k,n] bf16; c: [m,n] float32 with row stride ldc
    void GemmBf16(bool transA, bool transB, int m, int n, int k, float alpha,
        ArrayView<ushort> a, int lda, ArrayView<ushort> b, int ldb, float beta, ArrayView<float> c, int ldc);
}

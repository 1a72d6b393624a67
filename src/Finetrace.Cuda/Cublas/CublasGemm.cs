using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;

namespace Finetrace.Cuda;

/// <summary>
/// <see cref="IDeviceGemm"/> by cuBLAS (cublasGemmEx / cublasGemmStridedBatchedEx) on the CUDA accelerator's default
/// stream, so products order with the ILGPU kernels without synchronisation. Row-major calls become column-major ones
/// through <see cref="CublasCall.From"/>. Precision per <see cref="GemmMode"/>:
/// Fp32: CUBLAS_COMPUTE_32F under CUBLAS_DEFAULT_MATH (true float32, no tf32);
/// Tf32: CUBLAS_COMPUTE_32F_FAST_TF32 (operands rounded to tf32 by the tensor cores, float32 accumulation);
/// Bf16: <see cref="GemmBf16"/> takes CUDA_R_16BF operands with CUDA_R_32F output and CUBLAS_COMPUTE_32F, and the
/// float32 products (attention scores and context) run as tf32, since their operands are activations in float32.
/// GemmBf16 is bf16 × bf16 → float32 in every mode (its operands are bf16 already).
/// cublasLt is not called directly: cublasGemmEx already dispatches to cuBLASLt's kernels, and what Lt adds
/// (fused epilogues, bf16 outputs, explicit algorithm/workspace choice) is not part of this interface.
/// </summary>
public sealed unsafe class CublasGemm : IDeviceGemm
{
    readonly CudaAccelerator accelerator;
    nint handle;

    public GemmMode Mode { get; }
    /// <summary>cuBLAS version as cublasGetVersion reports it (e.g. 120401 for 12.4.1).</summary>
    public int Version { get; }
    /// <summary>The library file loaded (a bare name when the system loader found it).</summary>
    public string LibraryPath { get; }

    /// <summary>Opens a cuBLAS handle bound to <paramref name="accelerator"/>'s default stream.
    /// Throws <see cref="DeviceUnavailableException"/> when no cuBLAS library loads.</summary>
    public CublasGemm(CudaAccelerator accelerator, GemmMode mode)
    {
        this.accelerator = accelerator;
        Mode = mode;
        var lookup = CublasLibrary.Lookup;
        if (!lookup.Found) throw new DeviceUnavailableException(DeviceKind.Cuda, lookup.Describe());
        LibraryPath = lookup.Path!;
        accelerator.Bind();   // cuBLAS takes the thread's current CUDA context: ILGPU's
        CublasNative.Check(CublasNative.cublasCreate_v2(out handle), "cublasCreate_v2");
        try
        {
            var stream = ((CudaStream)accelerator.DefaultStream).StreamPtr;
            CublasNative.Check(CublasNative.cublasSetStream_v2(handle, stream), "cublasSetStream_v2");
            // Precision is chosen per call by the compute type; the default math mode never substitutes tf32 for
            // CUBLAS_COMPUTE_32F.
            CublasNative.Check(CublasNative.cublasSetMathMode(handle, CublasNative.DefaultMath), "cublasSetMathMode");
            CublasNative.Check(CublasNative.cublasGetVersion_v2(handle, out int version), "cublasGetVersion_v2");
            Version = version;
        }
        catch
        {
            CublasNative.cublasDestroy_v2(handle);
            handle = 0;
            throw;
        }
    }

    /// <summary>The compute type of float32 × float32 products in <paramref name="mode"/>.</summary>
    public static int FloatComputeType(GemmMode mode) =>
        mode == GemmMode.Fp32 ? CublasNative.Compute32F : CublasNative.Compute32FFastTf32;

    public void Sgemm(bool transA, bool transB, int m, int n, int k, float alpha,
        ArrayView<float> a, int lda, ArrayView<float> b, int ldb, float beta, ArrayView<float> c, int ldc)
    {
        var s = GemmShape.Check(nameof(Sgemm), transA, transB, m, n, k, alpha, lda, 0, a.Length, ldb, 0, b.Length, beta, ldc, 0, c.Length, 1);
        if (m == 0 || n == 0) return;
        GemmEx(CublasCall.From(s, 1), Ptr(a), Ptr(b), Ptr(c), alpha, beta, CublasNative.CudaR32F, FloatComputeType(Mode));
    }

    public void SgemmStridedBatched(bool transA, bool transB, int m, int n, int k, float alpha,
        ArrayView<float> a, int lda, long strideA, ArrayView<float> b, int ldb, long strideB,
        float beta, ArrayView<float> c, int ldc, long strideC, int batch)
    {
        var s = GemmShape.Check(nameof(SgemmStridedBatched), transA, transB, m, n, k, alpha, lda, strideA, a.Length, ldb, strideB, b.Length, beta, ldc, strideC, c.Length, batch);
        if (m == 0 || n == 0 || batch == 0) return;
        var call = CublasCall.From(s, batch);
        nint pa = Ptr(a), pb = Ptr(b), pc = Ptr(c);
        (nint first, nint second) = Order(call, pa, pb);
        accelerator.Bind();
        CublasNative.Check(CublasNative.cublasGemmStridedBatchedEx(handle, call.OpA, call.OpB, call.M, call.N, call.K,
            &alpha, first, CublasNative.CudaR32F, call.Lda, call.StrideA,
            second, CublasNative.CudaR32F, call.Ldb, call.StrideB,
            &beta, pc, CublasNative.CudaR32F, call.Ldc, call.StrideC, call.Batch,
            FloatComputeType(Mode), CublasNative.GemmDefault), "cublasGemmStridedBatchedEx");
    }

    public void GemmBf16(bool transA, bool transB, int m, int n, int k, float alpha,
        ArrayView<ushort> a, int lda, ArrayView<ushort> b, int ldb, float beta, ArrayView<float> c, int ldc)
    {
        var s = GemmShape.Check(nameof(GemmBf16), transA, transB, m, n, k, alpha, lda, 0, a.Length, ldb, 0, b.Length, beta, ldc, 0, c.Length, 1);
        if (m == 0 || n == 0) return;
        GemmEx(CublasCall.From(s, 1), Ptr(a), Ptr(b), Ptr(c), alpha, beta, CublasNative.CudaR16BF, CublasNative.Compute32F);
    }

    void GemmEx(in CublasCall call, nint pa, nint pb, nint pc, float alpha, float beta, int inType, int computeType)
    {
        (nint first, nint second) = Order(call, pa, pb);
        accelerator.Bind();
        CublasNative.Check(CublasNative.cublasGemmEx(handle, call.OpA, call.OpB, call.M, call.N, call.K,
            &alpha, first, inType, call.Lda, second, inType, call.Ldb,
            &beta, pc, CublasNative.CudaR32F, call.Ldc, computeType, CublasNative.GemmDefault), "cublasGemmEx");
    }

    static (nint First, nint Second) Order(in CublasCall call, nint pa, nint pb) =>
        call.FirstOperand == CublasOperand.B ? (pb, pa) : (pa, pb);

    // The device address of a view's first element (an empty view, read by no k = 0 product, has none).
    static nint Ptr<T>(ArrayView<T> view) where T : unmanaged =>
        view.Length == 0 ? 0 : view.LoadEffectiveAddressAsPtr();

    public void Dispose()
    {
        if (handle == 0) return;
        accelerator.Bind();
        CublasNative.Check(CublasNative.cublasDestroy_v2(handle), "cublasDestroy_v2");
        handle = 0;
    }
}

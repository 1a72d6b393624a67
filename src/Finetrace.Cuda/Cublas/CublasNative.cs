using System.Runtime.InteropServices;

namespace Finetrace.Cuda;

/// <summary>A cuBLAS call returned a status other than CUBLAS_STATUS_SUCCESS.</summary>
public sealed class CublasException(string call, int status)
    : Exception($"{call} failed: {CublasNative.StatusName(status)} ({status})")
{
    /// <summary>The cuBLAS function that failed, e.g. "cublasGemmEx".</summary>
    public string Call { get; } = call;
    /// <summary>The raw cublasStatus_t.</summary>
    public int Status { get; } = status;
    public string StatusName => CublasNative.StatusName(Status);
}

/// <summary>
/// The cuBLAS v2 entry points Finetrace uses, bound by P/Invoke to the library <see cref="CublasLibrary"/> finds
/// (import name <see cref="CublasLibrary.ImportName"/>). Handles, device pointers and streams are plain pointers;
/// alpha and beta are host pointers (CUBLAS_POINTER_MODE_HOST, the default) to float32, the scale type of every
/// compute type used here.
/// </summary>
public static unsafe partial class CublasNative
{
    const string Lib = CublasLibrary.ImportName;

    // The resolver that maps Lib to the file found must be registered before the first call binds.
    static CublasNative() => CublasLibrary.Register();

    // cublasOperation_t
    public const int OpN = 0, OpT = 1;
    // cudaDataType_t
    public const int CudaR32F = 0, CudaR16BF = 14;
    // cublasComputeType_t
    public const int Compute32F = 68, Compute32FPedantic = 69, Compute32FFastTf32 = 77;
    // cublasMath_t
    public const int DefaultMath = 0, PedanticMath = 2, Tf32TensorOpMath = 3;
    // cublasGemmAlgo_t
    public const int GemmDefault = -1;

    [LibraryImport(Lib)] public static partial int cublasCreate_v2(out nint handle);
    [LibraryImport(Lib)] public static partial int cublasDestroy_v2(nint handle);
    [LibraryImport(Lib)] public static partial int cublasSetStream_v2(nint handle, nint stream);
    [LibraryImport(Lib)] public static partial int cublasSetMathMode(nint handle, int mode);
    [LibraryImport(Lib)] public static partial int cublasGetVersion_v2(nint handle, out int version);

    [LibraryImport(Lib)] public static partial int cublasGemmEx(nint handle, int transa, int transb, int m, int n, int k,
        float* alpha, nint a, int aType, int lda, nint b, int bType, int ldb,
        float* beta, nint c, int cType, int ldc, int computeType, int algo);

    [LibraryImport(Lib)] public static partial int cublasGemmStridedBatchedEx(nint handle, int transa, int transb, int m, int n, int k,
        float* alpha, nint a, int aType, int lda, long strideA, nint b, int bType, int ldb, long strideB,
        float* beta, nint c, int cType, int ldc, long strideC, int batchCount, int computeType, int algo);

    /// <summary>Throws <see cref="CublasException"/> naming <paramref name="call"/> unless the status is success.</summary>
    public static void Check(int status, string call)
    {
        if (status != 0) throw new CublasException(call, status);
    }

    /// <summary>The cublasStatus_t name (cublas_api.h) of a status code.</summary>
    public static string StatusName(int status) => status switch
    {
        0 => "CUBLAS_STATUS_SUCCESS",
        1 => "CUBLAS_STATUS_NOT_INITIALIZED",
        3 => "CUBLAS_STATUS_ALLOC_FAILED",
        7 => "CUBLAS_STATUS_INVALID_VALUE",
        8 => "CUBLAS_STATUS_ARCH_MISMATCH",
        11 => "CUBLAS_STATUS_MAPPING_ERROR",
        13 => "CUBLAS_STATUS_EXECUTION_FAILED",
        14 => "CUBLAS_STATUS_INTERNAL_ERROR",
        15 => "CUBLAS_STATUS_NOT_SUPPORTED",
        16 => "CUBLAS_STATUS_LICENSE_ERROR",
        _ => "unknown cublasStatus_t",
    };
}

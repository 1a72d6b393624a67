using System.Reflection;
using System.Runtime.InteropServices;

namespace Finetrace.Tensors;

/// <summary>
/// P/Invoke binding to OpenBLAS. Debian ships <c>libopenblas.so.0</c> only (the unversioned name comes with the
/// -dev package), so a resolver maps the import name to it (style.md §2.1).
/// </summary>
public static unsafe partial class OpenBlas
{
    const string Lib = "openblas";
    const int RowMajor = 101, NoTrans = 111, Trans = 112;

    static readonly Lazy<bool> _available = new(Probe);

    static OpenBlas()
    {
        NativeLibrary.SetDllImportResolver(typeof(OpenBlas).Assembly, Resolve);
    }

    static nint Resolve(string name, Assembly asm, DllImportSearchPath? path)
    {
        if (name != Lib) return 0;
        foreach (var candidate in new[] { "libopenblas.so.0", "libopenblas.so", "libopenblas.dylib", "libopenblas.dll", "openblas" })
            if (NativeLibrary.TryLoad(candidate, asm, path, out nint h)) return h;
        return 0;
    }

    public static bool IsAvailable => _available.Value;

    static bool Probe()
    {
        try { _ = openblas_get_num_threads(); return true; }
        catch (DllNotFoundException) { return false; }
        catch (EntryPointNotFoundException) { return false; }
    }

    public static string Config
    {
        get
        {
            if (!IsAvailable) return "not available";
            try { return Marshal.PtrToStringAnsi((nint)openblas_get_config()) ?? "?"; }
            catch (EntryPointNotFoundException) { return "?"; }
        }
    }

    public static int Threads
    {
        get => IsAvailable ? openblas_get_num_threads() : 0;
        set { if (IsAvailable) openblas_set_num_threads(value); }
    }

    public static void Sgemm(bool transA, bool transB, int m, int n, int k, float alpha,
        ReadOnlySpan<float> a, int lda, ReadOnlySpan<float> b, int ldb, float beta, Span<float> c, int ldc)
    {
        fixed (float* pa = a) fixed (float* pb = b) fixed (float* pc = c)
            cblas_sgemm(RowMajor, transA ? Trans : NoTrans, transB ? Trans : NoTrans, m, n, k, alpha, pa, lda, pb, ldb, beta, pc, ldc);
    }

    // y[m] = alpha · op(A) x + beta · y, A row-major [m,n] (or [n,m] when transA)
    public static void Sgemv(bool transA, int m, int n, float alpha, ReadOnlySpan<float> a, int lda, ReadOnlySpan<float> x, float beta, Span<float> y)
    {
        fixed (float* pa = a) fixed (float* px = x) fixed (float* py = y)
            cblas_sgemv(RowMajor, transA ? Trans : NoTrans, m, n, alpha, pa, lda, px, 1, beta, py, 1);
    }

    // y = alpha · op(A) x + beta · y with strides: the form Gemm needs for one row of a short product.
    internal static void Sgemv(bool transA, int m, int n, float alpha, float* a, int lda, float* x, int incx, float beta, float* y, int incy)
        => cblas_sgemv(RowMajor, transA ? Trans : NoTrans, m, n, alpha, a, lda, x, incx, beta, y, incy);

    [LibraryImport(Lib)] private static partial void cblas_sgemm(int order, int transA, int transB, int m, int n, int k,
        float alpha, float* a, int lda, float* b, int ldb, float beta, float* c, int ldc);
    [LibraryImport(Lib)] private static partial void cblas_sgemv(int order, int trans, int m, int n,
        float alpha, float* a, int lda, float* x, int incx, float beta, float* y, int incy);
    [LibraryImport(Lib)] private static partial int openblas_get_num_threads();
    [LibraryImport(Lib)] private static partial void openblas_set_num_threads(int n);
    [LibraryImport(Lib)] private static partial byte* openblas_get_config();
}

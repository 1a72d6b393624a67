using Finetrace.Cuda;
using Finetrace.Tensors;
using Finetrace.Tests.Infrastructure;
using ILGPU;
using ILGPU.Runtime;
using Xunit.Abstractions;

namespace Finetrace.Tests.Cuda;

/// <summary>
/// The cuBLAS products without a GPU: the row-major → column-major mapping (<see cref="CublasCall"/>) interpreted by a
/// plain column-major GEMM on host arrays against <c>Tensors.Gemm.Sgemm</c>; the library lookup's search and its
/// message; FINETRACE_GEMM; the reusable parity check on the CPU accelerator (and that it catches a wrong product).
/// The same parity check against cuBLAS runs in the [CudaFact] tests at the end (skipped without a GPU).
/// </summary>
public sealed class CublasGemmTests(ITestOutputHelper output)
{
    static float[] Random(int n, ulong seed)
    {
        var rng = new SplitMix64(seed);
        var x = new float[n];
        for (int i = 0; i < n; i++) x[i] = (float)(rng.NextDouble() * 2 - 1);
        return x;
    }

    // Exactly what cublasGemmStridedBatchedEx computes (column-major, cuBLAS's own argument rules), on host arrays.
    static void ColumnMajorGemm(CublasCall call, float alpha, float[] first, float[] second, float beta, float[] c)
    {
        Assert.True(call.Lda >= Math.Max(1, call.TransA ? call.K : call.M), $"cuBLAS would reject lda={call.Lda}");
        Assert.True(call.Ldb >= Math.Max(1, call.TransB ? call.N : call.K), $"cuBLAS would reject ldb={call.Ldb}");
        Assert.True(call.Ldc >= Math.Max(1, call.M), $"cuBLAS would reject ldc={call.Ldc}");
        for (int z = 0; z < call.Batch; z++)
            for (int j = 0; j < call.N; j++)
                for (int i = 0; i < call.M; i++)
                {
                    double sum = 0;
                    for (int p = 0; p < call.K; p++)
                    {
                        float a = first[z * call.StrideA + (call.TransA ? p + (long)i * call.Lda : i + (long)p * call.Lda)];
                        float b = second[z * call.StrideB + (call.TransB ? j + (long)p * call.Ldb : p + (long)j * call.Ldb)];
                        sum += (double)a * b;
                    }
                    long ci = z * call.StrideC + i + (long)j * call.Ldc;
                    c[ci] = (float)(alpha * sum + beta * c[ci]);
                }
    }

    [Theory]
    [InlineData(false, false, 5, 7, 3, 1)]
    [InlineData(true, false, 4, 9, 6, 1)]
    [InlineData(false, true, 8, 3, 17, 1)]
    [InlineData(true, true, 6, 5, 11, 1)]
    [InlineData(false, false, 1, 13, 9, 3)]
    [InlineData(true, false, 7, 1, 4, 2)]
    [InlineData(false, true, 9, 6, 1, 3)]
    [InlineData(true, true, 3, 8, 10, 4)]
    public void Column_major_call_computes_the_row_major_product(bool ta, bool tb, int m, int n, int k, int batch)
    {
        int lda = (ta ? m : k) + 2, ldb = (tb ? k : n) + 3, ldc = n + 1;
        int aRows = ta ? k : m, bRows = tb ? n : k;
        long sa = batch > 1 ? aRows * lda + 5 : 0, sb = batch > 1 ? bRows * ldb + 2 : 0, sc = batch > 1 ? m * ldc + 4 : 0;
        var a = Random((int)(sa * (batch - 1)) + aRows * lda, 1);
        var b = Random((int)(sb * (batch - 1)) + bRows * ldb, 2);
        var c0 = Random((int)(sc * (batch - 1)) + m * ldc, 3);
        const float alpha = 0.75f, beta = -0.5f;

        var expected = (float[])c0.Clone();
        for (int z = 0; z < batch; z++)
            Gemm.Sgemm(ta, tb, m, n, k, alpha, a.AsSpan((int)(z * sa)), lda, b.AsSpan((int)(z * sb)), ldb, beta, expected.AsSpan((int)(z * sc)), ldc);

        var shape = GemmShape.Check("test", ta, tb, m, n, k, alpha, lda, sa, a.Length, ldb, sb, b.Length, beta, ldc, sc, c0.Length, batch);
        var call = CublasCall.From(shape, batch);
        var got = (float[])c0.Clone();
        var first = call.FirstOperand == CublasOperand.A ? a : b;
        var second = call.SecondOperand == CublasOperand.A ? a : b;
        ColumnMajorGemm(call, alpha, first, second, beta, got);

        double max = 0;
        for (int i = 0; i < got.Length; i++) max = Math.Max(max, Math.Abs(got[i] - expected[i]));
        output.WriteLine($"{(ta ? 'T' : 'N')}{(tb ? 'T' : 'N')} {m}x{n}x{k} batch {batch}: max-abs-diff {max:G3}");
        Assert.True(max <= 1e-5, $"mapped call differs from Tensors.Gemm.Sgemm: max-abs-diff {max:G3}");
    }

    [Fact]
    public void Mapping_swaps_operands_and_m_n_and_keeps_op_flags()
    {
        var s = GemmShape.Check("test", true, false, 4, 9, 6, 1f, 4, 24, 24, 9, 54, 54, 0f, 9, 36, 36, 1);
        var call = CublasCall.From(s, 1);
        Assert.Equal(new CublasCall(TransA: false, TransB: true, M: 9, N: 4, K: 6,
            FirstOperand: CublasOperand.B, Lda: 9, StrideA: 54, SecondOperand: CublasOperand.A, Ldb: 4, StrideB: 24,
            Ldc: 9, StrideC: 36, Batch: 1), call);
        Assert.Equal((0, 1), (call.OpA, call.OpB));
    }

    [Fact]
    public void Lookup_with_FINETRACE_CUBLAS_folder_reports_the_file_that_failed_and_what_to_set()
    {
        var dir = Directory.CreateTempSubdirectory("ft-cublas-").FullName;
        try
        {
            File.WriteAllText(Path.Combine(dir, "libcublas.so.12"), "not an ELF file");
            var lookup = CublasLibrary.Locate(v => v == CublasLibrary.EnvVar ? dir : null);
            Assert.False(lookup.Found);
            var message = lookup.Describe();
            output.WriteLine(message);
            Assert.Contains(Path.Combine(dir, "libcublas.so.12"), message);
            Assert.Contains("FINETRACE_CUBLAS", message);
            Assert.Contains("FINETRACE_GEMM=ilgpu", message);

            // libcublasLt of the same major is loaded first from the same folder: a broken one is named
            File.WriteAllText(Path.Combine(dir, "libcublasLt.so.12"), "not an ELF file either");
            var withLt = CublasLibrary.Locate(v => v == CublasLibrary.EnvVar ? dir : null);
            Assert.Contains(Path.Combine(dir, "libcublasLt.so.12"), withLt.Describe());
        }
        finally { Directory.Delete(dir, true); }
    }

    [Fact]
    public void Lookup_with_FINETRACE_CUBLAS_missing_or_empty_says_so()
    {
        var missing = CublasLibrary.Locate(v => v == CublasLibrary.EnvVar ? "/nonexistent/cublas" : null);
        Assert.False(missing.Found);
        Assert.Contains("FINETRACE_CUBLAS=/nonexistent/cublas is neither a file nor a folder", missing.Describe());

        var dir = Directory.CreateTempSubdirectory("ft-cublas-").FullName;
        try
        {
            var empty = CublasLibrary.Locate(v => v == CublasLibrary.EnvVar ? dir : null);
            Assert.Contains("holds none of libcublas.so.12, libcublas.so.13", empty.Describe());
        }
        finally { Directory.Delete(dir, true); }
    }

    [Fact]
    public void Search_folders_follow_LD_LIBRARY_PATH_then_pip_site_packages()
    {
        var root = Directory.CreateTempSubdirectory("ft-venv-").FullName;
        try
        {
            var pip = Path.Combine(root, "venv", "lib", "python3.11", "site-packages", "nvidia", "cublas", "lib");
            var ld = Path.Combine(root, "ld");
            Directory.CreateDirectory(pip);
            Directory.CreateDirectory(ld);
            var env = new Dictionary<string, string>
            {
                ["LD_LIBRARY_PATH"] = $"{ld}:{Path.Combine(root, "absent")}",
                ["VIRTUAL_ENV"] = Path.Combine(root, "venv"),
            };
            var folders = CublasLibrary.SearchFolders(v => env.GetValueOrDefault(v));
            output.WriteLine(string.Join("\n", folders));
            Assert.Equal(ld, folders[0]);                        // LD_LIBRARY_PATH first, missing entries dropped
            Assert.DoesNotContain(Path.Combine(root, "absent"), folders);
            Assert.Contains(pip, folders);                       // python3.* expanded under VIRTUAL_ENV

            // and a library in it is found: the lookup names the pip folder among those it searched
            var lookup = CublasLibrary.Locate(v => env.GetValueOrDefault(v));
            if (!lookup.Found) Assert.Contains(pip, lookup.Describe());
        }
        finally { Directory.Delete(root, true); }
    }

    [Theory]
    [InlineData(null, true)]
    [InlineData("", true)]
    [InlineData("cublas", true)]
    [InlineData("ILGPU", false)]
    public void FINETRACE_GEMM_picks_the_products(string? value, bool cublas) =>
        Assert.Equal(cublas, DeviceContext.UseCublas(value));

    [Fact]
    public void FINETRACE_GEMM_rejects_other_values_naming_them()
    {
        var e = Assert.Throws<ArgumentException>(() => DeviceContext.UseCublas("openblas"));
        Assert.Contains("FINETRACE_GEMM=openblas", e.Message);
    }

    [Fact]
    public void Cublas_status_errors_name_the_call_and_status()
    {
        var e = Assert.Throws<CublasException>(() => CublasNative.Check(7, "cublasGemmEx"));
        Assert.Equal("cublasGemmEx failed: CUBLAS_STATUS_INVALID_VALUE (7)", e.Message);
        CublasNative.Check(0, "cublasGemmEx");
    }

    [Fact]
    public void Parity_check_passes_for_the_ILGPU_products_on_the_CPU_accelerator()
    {
        using var ctx = DeviceContext.CreateCpu();
        var result = GemmParity.Run(ctx, new GemmParityOptions(M: 13, N: 11, K: 19, Batch: 2));
        foreach (var c in result.Cases) output.WriteLine($"{c.Name}: {c.Measure} {c.Error:G3} (≤ {c.Tolerance:G0})");
        Assert.Equal(3 * 4 * 2 + 4, result.Cases.Count);
        Assert.True(result.Passed, string.Join("; ", result.Failures.Select(c => $"{c.Name}: {c.Error:G3}")));
        // bf16 operands really were rounded: their error is well above float32's
        Assert.All(result.Cases.Where(c => c.Call == "GemmBf16"), c => Assert.True(c.Error > 1e-4, $"{c.Name}: {c.Error:G3}"));
    }

    // A product that ignores transB: what a wrong operand mapping looks like.
    sealed class IgnoresTransB(IDeviceGemm inner) : IDeviceGemm
    {
        public GemmMode Mode => inner.Mode;
        public void Sgemm(bool ta, bool tb, int m, int n, int k, float alpha, ILGPU.ArrayView<float> a, int lda, ILGPU.ArrayView<float> b, int ldb, float beta, ILGPU.ArrayView<float> c, int ldc) =>
            inner.Sgemm(ta, false, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
        public void SgemmStridedBatched(bool ta, bool tb, int m, int n, int k, float alpha, ILGPU.ArrayView<float> a, int lda, long sa, ILGPU.ArrayView<float> b, int ldb, long sb, float beta, ILGPU.ArrayView<float> c, int ldc, long sc, int batch) =>
            inner.SgemmStridedBatched(ta, tb, m, n, k, alpha, a, lda, sa, b, ldb, sb, beta, c, ldc, sc, batch);
        public void GemmBf16(bool ta, bool tb, int m, int n, int k, float alpha, ILGPU.ArrayView<ushort> a, int lda, ILGPU.ArrayView<ushort> b, int ldb, float beta, ILGPU.ArrayView<float> c, int ldc) =>
            inner.GemmBf16(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
        public void Dispose() => inner.Dispose();
    }

    [Fact]
    public void Parity_check_fails_a_product_that_ignores_a_transpose()
    {
        using var ctx = DeviceContext.CreateCpu();
        var o = new GemmParityOptions(M: 6, N: 7, K: 7, Batch: 2);   // n = k: b read untransposed stays in bounds
        var result = GemmParity.Run(ctx, mode => new IgnoresTransB(new IlgpuGemm(ctx.Accelerator, mode)), o);
        Assert.False(result.Passed);
        // exactly the single products with transB fail, in every mode
        Assert.Equal(6, result.Failures.Count());
        Assert.All(result.Failures, c => Assert.True(c.Call == "Sgemm" && c.TransB, c.Name));
    }

    [CudaFact]
    public void Cuda_context_uses_cuBLAS_and_passes_the_parity_check()
    {
        using var ctx = DeviceContext.CreateCuda(GemmMode.Fp32);
        Assert.IsType<CublasGemm>(ctx.Gemm);
        foreach (var o in new[] { new GemmParityOptions(), new GemmParityOptions(M: 300, N: 260, K: 1000, Batch: 2) })
        {
            var result = GemmParity.Run(ctx, o);
            output.WriteLine($"{result.Device}, {result.Gemm}");
            foreach (var c in result.Cases) output.WriteLine($"{c.Name}: {c.Measure} {c.Error:G3} (≤ {c.Tolerance:G0})");
            Assert.True(result.Passed, string.Join("; ", result.Failures.Select(c => $"{c.Name}: {c.Error:G3}")));
        }
    }

    [CudaTheory]
    [InlineData(GemmMode.Fp32)]
    [InlineData(GemmMode.Tf32)]
    [InlineData(GemmMode.Bf16)]
    public void Cuda_products_order_with_ILGPU_kernels_on_the_default_stream(GemmMode mode)
    {
        // softmax (ILGPU kernel) then a product reading its output, with no synchronisation in between
        using var ctx = DeviceContext.CreateCuda(mode);
        int m = 64, n = 48, k = 512;
        var x = Random(m * k, 9); var w = Random(n * k, 10);
        using var dx = ctx.Accelerator.Allocate1D(x); using var dw = ctx.Accelerator.Allocate1D(w);
        using var dy = ctx.Accelerator.Allocate1D<float>(m * n);
        ctx.Kernels.SoftmaxRows(dx.View, m, k);
        ctx.Gemm.Sgemm(false, true, m, n, k, 1f, dx.View, k, dw.View, k, 0f, dy.View, n);
        ctx.Synchronize();
        var px = (float[])x.Clone();
        for (int i = 0; i < m; i++) Kernels.Softmax(px.AsSpan(i * k, k));
        var expected = new float[m * n];
        Gemm.Sgemm(false, true, m, n, k, 1f, px, k, w, k, 0f, expected, n);
        var got = dy.GetAsArray1D();
        double d2 = 0, r2 = 0;
        for (int i = 0; i < got.Length; i++) { d2 += Math.Pow(got[i] - expected[i], 2); r2 += (double)expected[i] * expected[i]; }
        double rel = Math.Sqrt(d2 / r2);
        output.WriteLine($"{mode}: norm-relative {rel:G3}");
        Assert.True(rel <= (mode == GemmMode.Fp32 ? 1e-5 : 1e-2), $"{mode}: norm-relative {rel:G3}");
    }
}

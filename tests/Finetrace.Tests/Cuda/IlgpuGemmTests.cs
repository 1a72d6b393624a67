using Finetrace.Cuda;
using Finetrace.Tensors;
using ILGPU.Runtime;
using Xunit;

namespace Finetrace.Tests.Cuda;

/// <summary>The device products' reference kernel (<see cref="IlgpuGemm"/>) on ILGPU's CPU accelerator against
/// <c>Finetrace.Tensors.Gemm.Sgemm</c> (float32) and a double-precision loop over the widened bf16 values.</summary>
public sealed class IlgpuGemmTests : IDisposable
{
    readonly DeviceContext ctx = DeviceContext.CreateCpu();
    public void Dispose() => ctx.Dispose();

    static float[] Random(int n, ulong seed)
    {
        var rng = new SplitMix64(seed);
        var x = new float[n];
        for (int i = 0; i < n; i++) x[i] = (float)(rng.NextDouble() * 2 - 1);
        return x;
    }

    [Theory]
    [InlineData(false, false, 5, 7, 3, 0f)]
    [InlineData(true, false, 4, 9, 6, 0.5f)]
    [InlineData(false, true, 8, 3, 17, 0f)]
    [InlineData(true, true, 1, 1, 33, -1f)]
    public void Sgemm_matches_Tensors_Gemm(bool ta, bool tb, int m, int n, int k, float beta)
    {
        int lda = (ta ? m : k) + 2, ldb = (tb ? k : n) + 1, ldc = n + 3;
        var a = Random((ta ? k : m) * lda, 1); var b = Random((tb ? n : k) * ldb, 2); var c = Random(m * ldc, 3);
        var expected = (float[])c.Clone();
        Gemm.Sgemm(ta, tb, m, n, k, 0.75f, a, lda, b, ldb, beta, expected, ldc);
        using var da = ctx.Accelerator.Allocate1D(a); using var db = ctx.Accelerator.Allocate1D(b); using var dc = ctx.Accelerator.Allocate1D(c);
        ctx.Gemm.Sgemm(ta, tb, m, n, k, 0.75f, da.View, lda, db.View, ldb, beta, dc.View, ldc);
        var got = dc.GetAsArray1D();
        float max = 0; for (int i = 0; i < got.Length; i++) max = Math.Max(max, Math.Abs(got[i] - expected[i]));
        Assert.True(max <= 1e-5f, $"max-abs-diff {max}");
    }

    [Fact]
    public void Strided_batched_runs_each_product_at_its_offset()
    {
        int m = 3, n = 4, k = 5, batch = 3;
        var a = Random(batch * m * k, 4); var b = Random(batch * n * k, 5);
        var expected = new float[batch * m * n];
        for (int z = 0; z < batch; z++)
            Gemm.Sgemm(false, true, m, n, k, 1f, a.AsSpan(z * m * k), k, b.AsSpan(z * n * k), k, 0f, expected.AsSpan(z * m * n), n);
        using var da = ctx.Accelerator.Allocate1D(a); using var db = ctx.Accelerator.Allocate1D(b); using var dc = ctx.Accelerator.Allocate1D<float>(expected.Length);
        ctx.Gemm.SgemmStridedBatched(false, true, m, n, k, 1f, da.View, k, m * k, db.View, k, n * k, 0f, dc.View, n, m * n, batch);
        var got = dc.GetAsArray1D();
        for (int i = 0; i < got.Length; i++) Assert.True(Math.Abs(got[i] - expected[i]) <= 1e-5f, $"element {i}: {got[i]} vs {expected[i]}");
    }

    [Fact]
    public void GemmBf16_widens_exactly_and_accumulates_in_float()
    {
        int m = 4, n = 6, k = 19;
        var a = Random(m * k, 6).Select(Bf16.FromFloat).ToArray();
        var b = Random(n * k, 7).Select(Bf16.FromFloat).ToArray();
        using var da = ctx.Accelerator.Allocate1D(a); using var db = ctx.Accelerator.Allocate1D(b); using var dc = ctx.Accelerator.Allocate1D<float>(m * n);
        ctx.Gemm.GemmBf16(false, true, m, n, k, 1f, da.View, k, db.View, k, 0f, dc.View, n);
        var got = dc.GetAsArray1D();
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++)
            {
                double s = 0;
                for (int p = 0; p < k; p++) s += (double)BitConverter.UInt32BitsToSingle((uint)a[i * k + p] << 16) * BitConverter.UInt32BitsToSingle((uint)b[j * k + p] << 16);
                Assert.True(Math.Abs(got[i * n + j] - s) <= 1e-5, $"[{i},{j}] {got[i * n + j]} vs {s}");
            }
    }

    [Theory]
    [InlineData(1.0f, (ushort)0x3F80)]
    [InlineData(1.00390625f, (ushort)0x3F80)]   // exactly half an ulp above 1: ties to even (down)
    [InlineData(1.01171875f, (ushort)0x3F82)]   // 1 + 3/256: tie, rounds up to the even 0x3F82
    [InlineData(-2.5f, (ushort)0xC020)]
    [InlineData(float.PositiveInfinity, (ushort)0x7F80)]
    public void Bf16_rounds_to_nearest_even(float x, ushort bits)
    {
        Assert.Equal(bits, Bf16.FromFloat(x));
        Assert.Equal(BitConverter.UInt32BitsToSingle((uint)bits << 16), Bf16.ToFloat(bits));
    }

    [Fact]
    public void Gemm_rejects_operands_too_short()
    {
        using var da = ctx.Accelerator.Allocate1D<float>(5); using var db = ctx.Accelerator.Allocate1D<float>(6); using var dc = ctx.Accelerator.Allocate1D<float>(6);
        var e = Assert.Throws<ArgumentException>(() => ctx.Gemm.Sgemm(false, false, 2, 3, 3, 1f, da.View, 3, db.View, 3, 0f, dc.View, 3));
        Assert.Contains("needs", e.Message);
    }
}

using System.Numerics.Tensors;
using Finetrace.Cuda;
using Finetrace.Models;
using Finetrace.Tensors;
using ILGPU;
using ILGPU.Runtime;
using Xunit.Abstractions;

namespace Finetrace.Tests.Cuda;

/// <summary>One CPU-accelerator <see cref="DeviceContext"/> shared by the tests of a class (kernel compilation is the
/// slow part).</summary>
public sealed class ForwardKernelsFixture : IDisposable
{
    public DeviceContext Device { get; } = DeviceContext.CreateCpu();
    public void Dispose() => Device.Dispose();
}

/// <summary>Every <see cref="ForwardKernels"/> kernel run on ILGPU's CPU accelerator against its CPU peer in Finetrace
/// (Tensors.Kernels, Models.Rope, CausalLM's embedding / QKV split / residual order, Tensors.Precision) at awkward sizes;
/// max-abs-diff is printed and named in every failure.</summary>
public class ForwardKernelsTests(ForwardKernelsFixture fx, ITestOutputHelper output) : IClassFixture<ForwardKernelsFixture>
{
    Accelerator Acc => fx.Device.Accelerator;
    ForwardKernels Fk => fx.Device.Forward;

    static float[] Random(int n, Random r, float scale = 3f)
    {
        var a = new float[n];
        for (int i = 0; i < n; i++) a[i] = (float)((r.NextDouble() * 2 - 1) * scale);
        return a;
    }

    static double MaxAbsDiff(float[] device, float[] cpu, string what)
    {
        Assert.True(device.Length == cpu.Length, $"{what}: device has {device.Length} values, cpu {cpu.Length}");
        double m = 0;
        for (int i = 0; i < device.Length; i++)
        {
            Assert.False(float.IsNaN(device[i]) || float.IsNaN(cpu[i]), $"{what}: NaN at {i}: device {device[i]}, cpu {cpu[i]}");
            m = Math.Max(m, Math.Abs((double)device[i] - cpu[i]));
        }
        return m;
    }

    void Close(string what, float[] device, float[] cpu, double tol)
    {
        double d = MaxAbsDiff(device, cpu, what);
        output.WriteLine($"{what}: max-abs-diff {d:G3} (tolerance {tol:G3})");
        Assert.True(d <= tol, $"{what}: max-abs-diff {d:G3} > {tol:G3}");
    }

    // ---------------------------------------------------------------- LayerNorm

    [Theory]
    [InlineData(1, 1, true, false)]
    [InlineData(3, 7, true, false)]
    [InlineData(5, 33, false, false)]
    [InlineData(4, 257, true, true)]
    [InlineData(2, 64, false, true)]
    public void LayerNorm_matches_Kernels_LayerNorm(int rows, int d, bool bias, bool inPlace)
    {
        var r = new Random(rows * 1000 + d);
        float[] x = Random(rows * d, r), w = Random(d, r, 1.5f), b = bias ? Random(d, r, 1f) : [];
        for (int i = 0; i < x.Length; i++) x[i] += 2f; // a mean far from 0, so a wrong mean shows
        var cpu = new float[rows * d];
        Kernels.LayerNorm(x, w, b, rows, 1e-5f, cpu);

        using var xBuf = Acc.Allocate1D(x);
        using var wBuf = Acc.Allocate1D(w);
        using var bBuf = Acc.Allocate1D<float>(d);
        if (bias) bBuf.CopyFromCPU(b);
        using var yBuf = Acc.Allocate1D<float>(rows * d);
        var y = inPlace ? xBuf.View : yBuf.View;
        // no bias: an empty view (ILGPU cannot allocate an empty buffer)
        Fk.LayerNorm(xBuf.View, wBuf.View, bias ? bBuf.View : ArrayView<float>.Empty, rows, 1e-5f, y);
        Fk.Synchronize();
        Close($"LayerNorm {rows}x{d} bias={bias} inPlace={inPlace}", (inPlace ? xBuf : yBuf).GetAsArray1D(), cpu, 1e-5);
    }

    // ---------------------------------------------------------------- activations

    /// <summary>Values over the ranges where each formula switches branch (tanh series below 0.5, erfc, exp overflow).</summary>
    static float[] ActivationInputs(int n, Random r)
    {
        var x = Random(n, r, 6f);
        float[] specials = [0f, -0f, 0.3f, -0.3f, 1e-4f, -12f, 12f, -40f, 40f, -100f, 100f, 0.70710678f, -3.5f];
        for (int i = 0; i < Math.Min(n, specials.Length); i++) x[i * (n / Math.Min(n, specials.Length))] = specials[i];
        return x;
    }

    static void CpuAct(HiddenAct act, float[] x, float[] y)
    {
        switch (act)
        {
            case HiddenAct.Silu: Kernels.Silu(x, y); break;
            case HiddenAct.GeluTanh: Kernels.GeluTanh(x, y); break;
            case HiddenAct.GeluErf: Kernels.GeluErf(x, y); break;
        }
    }

    [Theory]
    [InlineData(HiddenAct.Silu, 1)]
    [InlineData(HiddenAct.Silu, 1001)]
    [InlineData(HiddenAct.GeluTanh, 7)]
    [InlineData(HiddenAct.GeluTanh, 1001)]
    [InlineData(HiddenAct.GeluErf, 8)]
    [InlineData(HiddenAct.GeluErf, 1001)]
    public void Activation_matches_Kernels(HiddenAct act, int n)
    {
        var r = new Random(n + (int)act);
        var x = ActivationInputs(n, r);
        var cpu = new float[n];
        CpuAct(act, x, cpu);
        using var buf = Acc.Allocate1D(x);
        Fk.Activation(act, buf.View);
        Fk.Synchronize();
        // |y| ≤ 100: a few ulps of that; near 0 the CPU's fused multiply-adds differ by one rounding
        Close($"Activation {act} n={n}", buf.GetAsArray1D(), cpu, 1e-5);
    }

    [Theory]
    [InlineData(HiddenAct.Silu, 33, false)]
    [InlineData(HiddenAct.GeluTanh, 1, true)]
    [InlineData(HiddenAct.GeluTanh, 257, false)]
    [InlineData(HiddenAct.GeluErf, 257, true)]
    public void GatedActivation_matches_Kernels_Mul(HiddenAct act, int n, bool inPlace)
    {
        var r = new Random(n * 7 + (int)act);
        var gate = ActivationInputs(n, r);
        for (int i = 0; i < n; i++) gate[i] = Math.Clamp(gate[i], -12f, 12f);
        var up = Random(n, r, 1f);
        var cpu = new float[n];
        switch (act)
        {
            case HiddenAct.Silu: Kernels.SiluMul(gate, up, cpu); break;
            case HiddenAct.GeluTanh: Kernels.GeluTanhMul(gate, up, cpu); break;
            case HiddenAct.GeluErf: Kernels.GeluErfMul(gate, up, cpu); break;
        }
        using var gBuf = Acc.Allocate1D(gate);
        using var uBuf = Acc.Allocate1D(up);
        using var dBuf = Acc.Allocate1D<float>(n);
        Fk.GatedActivation(act, gBuf.View, uBuf.View, inPlace ? gBuf.View : dBuf.View);
        Fk.Synchronize();
        Close($"GatedActivation {act} n={n} inPlace={inPlace}", (inPlace ? gBuf : dBuf).GetAsArray1D(), cpu, 1e-5);
    }

    [Theory]
    [InlineData(1, 30f)]
    [InlineData(1001, 50f)]
    [InlineData(64, 0.5f)]
    public void SoftCap_matches_Kernels_SoftCap(int n, float cap)
    {
        var r = new Random(n);
        var x = Random(n, r, 4 * cap); // |x / cap| below and above the series' 0.5 threshold
        var cpu = (float[])x.Clone();
        Kernels.SoftCap(cpu, cap);
        using var buf = Acc.Allocate1D(x);
        Fk.SoftCap(buf.View, cap);
        Fk.Synchronize();
        // |y| < cap: a couple of ulps of cap (cap = 50: 8e-6)
        Close($"SoftCap n={n} cap={cap}", buf.GetAsArray1D(), cpu, Math.Min(1e-5, 4e-7 * cap + 1e-7));
    }

    // ---------------------------------------------------------------- embedding, residual adds, bias

    [Theory]
    [InlineData(1, 1, 1f)]
    [InlineData(5, 7, 1f)]
    [InlineData(9, 33, 5.65685f)]
    public void Embed_matches_CausalLM_Embed_math(int m, int d, float scale)
    {
        var r = new Random(m * 31 + d);
        int vocab = 11;
        var table = Random(vocab * d, r);
        var tableBf16 = new ushort[table.Length];
        for (int i = 0; i < table.Length; i++) tableBf16[i] = Precision.F32ToBF16(table[i]);
        var ids = new int[m];
        for (int i = 0; i < m; i++) ids[i] = r.Next(vocab);
        ids[^1] = vocab - 1; // the last row of the table

        // CausalLM.Embed: the row read (bf16 widened by Precision) then TensorPrimitives.Multiply by EmbedScale when ≠ 1
        var cpuF32 = new float[m * d];
        var cpuBf16 = new float[m * d];
        for (int i = 0; i < m; i++)
        {
            var rowF = cpuF32.AsSpan(i * d, d);
            var rowB = cpuBf16.AsSpan(i * d, d);
            table.AsSpan(ids[i] * d, d).CopyTo(rowF);
            Precision.BF16ToF32(tableBf16.AsSpan(ids[i] * d, d), rowB);
            if (scale != 1f) { TensorPrimitives.Multiply(rowF, scale, rowF); TensorPrimitives.Multiply(rowB, scale, rowB); }
        }

        using var idBuf = Acc.Allocate1D(ids);
        using var tF = Acc.Allocate1D(table);
        using var tB = Acc.Allocate1D(tableBf16);
        using var hF = Acc.Allocate1D<float>(m * d);
        using var hB = Acc.Allocate1D<float>(m * d);
        Fk.EmbedF32(idBuf.View, tF.View, d, scale, hF.View);
        Fk.EmbedBf16(idBuf.View, tB.View, d, scale, hB.View);
        Fk.Synchronize();
        Close($"EmbedF32 m={m} D={d} scale={scale}", hF.GetAsArray1D(), cpuF32, 0);
        Close($"EmbedBf16 m={m} D={d} scale={scale}", hB.GetAsArray1D(), cpuBf16, 0);
    }

    [Fact]
    public void Embed_and_positions_out_of_range_give_NaN_rows_not_a_fault()
    {
        int d = 3;
        using var ids = Acc.Allocate1D(new[] { 0, 4, -1 });
        using var table = Acc.Allocate1D(new float[] { 1, 2, 3, 4, 5, 6 }); // vocab 2
        using var h = Acc.Allocate1D<float>(3 * d);
        Fk.EmbedF32(ids.View, table.View, d, 1f, h.View);
        using var pos = Acc.Allocate1D(new[] { 1, 2, 0 });
        Fk.AddPositions(pos.View, table.View, d, h.View); // positions table of P = 2
        Fk.Synchronize();
        var y = h.GetAsArray1D();
        Assert.Equal(new float[] { 5, 7, 9 }, y[..3]);
        Assert.All(y[3..], v => Assert.True(float.IsNaN(v), $"expected NaN for an out-of-range id, got {v}"));
    }

    [Theory]
    [InlineData(1, 1)]
    [InlineData(6, 13)]
    public void AddPositions_matches_CausalLM_Embed_math(int m, int d)
    {
        var r = new Random(m + d);
        int p = 20;
        float[] wpe = Random(p * d, r), h = Random(m * d, r);
        var positions = new int[m];
        for (int i = 0; i < m; i++) positions[i] = (i * 7 + 3) % p;
        var cpu = (float[])h.Clone();
        for (int i = 0; i < m; i++) TensorPrimitives.Add(cpu.AsSpan(i * d, d), wpe.AsSpan(positions[i] * d, d), cpu.AsSpan(i * d, d));
        using var pBuf = Acc.Allocate1D(positions);
        using var wBuf = Acc.Allocate1D(wpe);
        using var hBuf = Acc.Allocate1D(h);
        Fk.AddPositions(pBuf.View, wBuf.View, d, hBuf.View);
        Fk.Synchronize();
        Close($"AddPositions m={m} D={d}", hBuf.GetAsArray1D(), cpu, 0);
    }

    [Theory]
    [InlineData(1)]
    [InlineData(1003)]
    public void Add_and_AddParallel_match_FinishBlock_order(int n)
    {
        var r = new Random(n);
        // magnitudes far apart, so that (mlp + attn) + h and mlp + (attn + h) round differently
        float[] mlp = Random(n, r, 1e4f), attn = Random(n, r, 1e-3f), h = Random(n, r, 1f);
        var cpuPar = (float[])h.Clone();
        for (int j = 0; j < n; j++) cpuPar[j] = (mlp[j] + attn[j]) + cpuPar[j];
        var cpuAdd = (float[])h.Clone();
        TensorPrimitives.Add(cpuAdd, attn, cpuAdd);

        using var m = Acc.Allocate1D(mlp);
        using var a = Acc.Allocate1D(attn);
        using var h1 = Acc.Allocate1D(h);
        using var h2 = Acc.Allocate1D(h);
        Fk.AddParallel(m.View, a.View, h1.View);
        Fk.Add(a.View, h2.View);
        Fk.Synchronize();
        Close($"AddParallel n={n}", h1.GetAsArray1D(), cpuPar, 0);
        Close($"Add n={n}", h2.GetAsArray1D(), cpuAdd, 0);
    }

    [Theory]
    [InlineData(1, 1)]
    [InlineData(7, 19)]
    public void AddBias_matches_Linear_bias(int m, int n)
    {
        var r = new Random(m * n);
        float[] y = Random(m * n, r), bias = Random(n, r);
        var cpu = (float[])y.Clone();
        for (int i = 0; i < m; i++) TensorPrimitives.Add(cpu.AsSpan(i * n, n), bias, cpu.AsSpan(i * n, n));
        using var yBuf = Acc.Allocate1D(y);
        using var bBuf = Acc.Allocate1D(bias);
        Fk.AddBias(yBuf.View, bBuf.View, m, n);
        Fk.Synchronize();
        Close($"AddBias {m}x{n}", yBuf.GetAsArray1D(), cpu, 0);
    }

    // ---------------------------------------------------------------- bf16

    [Fact]
    public void ToBf16_matches_Precision_and_hand_computed_bits()
    {
        var r = new Random(5);
        var x = new List<float>
        {
            1f, -1f, 0f, -0f, float.PositiveInfinity, float.NegativeInfinity, float.MaxValue, -float.MaxValue,
            float.Epsilon, -float.Epsilon, 1e-40f, 3.14159265f,
            BitConverter.UInt32BitsToSingle(0x3F808000), // halfway, even below: stays 0x3F80
            BitConverter.UInt32BitsToSingle(0x3F818000), // halfway, odd below: up to 0x3F82
            BitConverter.UInt32BitsToSingle(0x3F808001), // just above halfway: 0x3F81
            BitConverter.UInt32BitsToSingle(0x3F807FFF), // just below halfway: 0x3F80
            BitConverter.UInt32BitsToSingle(0x7F7F8000), // halfway between the largest bf16 and ∞, odd below: ∞
        };
        for (int i = 0; i < 1000; i++) x.Add(BitConverter.UInt32BitsToSingle((uint)r.NextInt64(0, 1L << 32)) is var f && float.IsNaN(f) ? 0.5f : f);
        var src = x.ToArray();
        using var sBuf = Acc.Allocate1D(src);
        using var dBuf = Acc.Allocate1D<ushort>(src.Length);
        Fk.ToBf16(sBuf.View, dBuf.View);
        Fk.Synchronize();
        var bits = dBuf.GetAsArray1D();
        ushort[] expected = [0x3F80, 0xBF80, 0x0000, 0x8000, 0x7F80, 0xFF80, 0x7F80, 0xFF80, 0x0000, 0x8000, 0x0001, 0x4049,
            0x3F80, 0x3F82, 0x3F81, 0x3F80, 0x7F80];
        for (int i = 0; i < expected.Length; i++)
            Assert.True(bits[i] == expected[i], $"ToBf16({src[i]:R}, bits 0x{BitConverter.SingleToUInt32Bits(src[i]):X8}) = 0x{bits[i]:X4}, expected 0x{expected[i]:X4}");
        int mismatches = 0;
        for (int i = 0; i < src.Length; i++) if (bits[i] != Precision.F32ToBF16(src[i])) mismatches++;
        Assert.True(mismatches == 0, $"ToBf16: {mismatches} of {src.Length} values differ from Precision.F32ToBF16");
    }

    [Fact]
    public void ToBf16_keeps_NaN_a_quiet_NaN()
    {
        // Bf16.FromFloat keeps the sign and payload top bits (torch's rule); Precision.F32ToBF16 returns 0x7FC0 for every
        // NaN: both are NaN, which is what matters downstream.
        float[] src = [float.NaN, BitConverter.UInt32BitsToSingle(0x7F800001), BitConverter.UInt32BitsToSingle(0xFFC00000)];
        using var sBuf = Acc.Allocate1D(src);
        using var dBuf = Acc.Allocate1D<ushort>(src.Length);
        Fk.ToBf16(sBuf.View, dBuf.View);
        Fk.Synchronize();
        var bits = dBuf.GetAsArray1D();
        foreach (var b in bits) Assert.True(float.IsNaN(Precision.BF16ToF32(b)) && (b & 0x40) != 0, $"0x{b:X4} is not a quiet NaN");
        Assert.Equal(0xFFC0, bits[2]);
    }

    [Fact]
    public void FromBf16_matches_Precision_for_every_bit_pattern()
    {
        var src = new ushort[65536];
        for (int i = 0; i < src.Length; i++) src[i] = (ushort)i;
        using var sBuf = Acc.Allocate1D(src);
        using var dBuf = Acc.Allocate1D<float>(src.Length);
        Fk.FromBf16(sBuf.View, dBuf.View);
        Fk.Synchronize();
        var y = dBuf.GetAsArray1D();
        for (int i = 0; i < src.Length; i++)
        {
            uint got = BitConverter.SingleToUInt32Bits(y[i]), want = BitConverter.SingleToUInt32Bits(Precision.BF16ToF32(src[i]));
            Assert.True(got == want, $"FromBf16(0x{i:X4}) = 0x{got:X8}, expected 0x{want:X8}");
        }
        Assert.Equal(1f, y[0x3F80]);
        Assert.Equal(-2f, y[0xC000]);
    }
}

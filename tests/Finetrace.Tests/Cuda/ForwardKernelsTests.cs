using System.Numerics.Tensors;
using Finetrace.Cuda;
using Finetrace.Models;
using Finetrace.Tensors;
using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.CPU;
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
    [InlineData(3, 600, true, false)] // more columns than a group has threads
    public void LayerNorm_matches_Kernels_LayerNorm(int rows, int d, bool bias, bool inPlace)
    {
        var r = new Random(rows * 1000 + d);
        float[] x = Random(rows * d, r), w = Random(d, r, 1.5f), b = bias ? Random(d, r, 1f) : [];
        for (int i = 0; i < x.Length; i++) x[i] += 2f; // a mean far from 0, so a wrong mean shows
        var cpu = new float[rows * d];
        Kernels.LayerNorm(x, w, b, rows, 1e-5f, cpu);

        foreach (bool reference in new[] { false, true })
        {
            using var xBuf = Acc.Allocate1D(x);
            using var wBuf = Acc.Allocate1D(w);
            using var bBuf = Acc.Allocate1D<float>(d);
            if (bias) bBuf.CopyFromCPU(b);
            using var yBuf = Acc.Allocate1D<float>(rows * d);
            var y = inPlace ? xBuf.View : yBuf.View;
            // no bias: an empty view (ILGPU cannot allocate an empty buffer)
            ArrayView<float> bView = bias ? bBuf.View : ArrayView<float>.Empty;
            if (reference) Fk.LayerNormReference(xBuf.View, wBuf.View, bView, rows, 1e-5f, y);
            else Fk.LayerNorm(xBuf.View, wBuf.View, bView, rows, 1e-5f, y);
            Fk.Synchronize();
            Close($"LayerNorm{(reference ? "Reference" : "")} {rows}x{d} bias={bias} inPlace={inPlace}", (inPlace ? xBuf : yBuf).GetAsArray1D(), cpu, 1e-5);
        }
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
            if (got != want) Assert.Fail($"FromBf16(0x{i:X4}) = 0x{got:X8}, expected 0x{want:X8}");
        }
        Assert.Equal(1f, y[0x3F80]);
        Assert.Equal(-2f, y[0xC000]);
    }

    // ---------------------------------------------------------------- RoPE, QKV split

    /// <summary>The cos/sin tables [P, rotaryDim] as <c>Rope</c> builds them (f32 angle = p · inv_freq, cos/sin in double
    /// rounded to f32, cat(freqs, freqs)); the comparison with <c>Rope.Apply</c> checks this layout too.</summary>
    static (float[] Cos, float[] Sin) RopeTables(Rope rope, int positions)
    {
        int dim = rope.RotaryDim, half = dim / 2;
        var cos = new float[positions * dim];
        var sin = new float[positions * dim];
        for (int p = 0; p < positions; p++)
            for (int i = 0; i < half; i++)
            {
                float angle = p * rope.InvFreq[i];
                cos[p * dim + i] = cos[p * dim + half + i] = (float)Math.Cos(angle);
                sin[p * dim + i] = sin[p * dim + half + i] = (float)Math.Sin(angle);
            }
        return (cos, sin);
    }

    [Theory]
    [InlineData(1, 1, 2, 1.0)]    // one head of dim 2
    [InlineData(5, 3, 10, 1.0)]   // odd half (5 pairs)
    [InlineData(4, 2, 10, 0.2)]   // partial rotary: 2 of 10 channels
    [InlineData(7, 4, 16, 0.25)]  // NeoX's default rotary_pct
    [InlineData(3, 2, 12, 0.5)]   // partial with an odd half (6 of 12)
    public void Rope_matches_Rope_Apply(int m, int heads, int headDim, double rotaryPct)
    {
        var config = ModelConfig.Parse($$"""
            {"model_type": "gpt_neox", "hidden_size": {{heads * headDim}}, "num_attention_heads": {{heads}},
             "num_hidden_layers": 1, "vocab_size": 10, "rotary_pct": {{rotaryPct.ToString(System.Globalization.CultureInfo.InvariantCulture)}}}
            """);
        var rope = new Rope(config);
        int rotaryDim = rope.RotaryDim;
        var r = new Random(m * 100 + headDim);
        var x = Random(m * heads * headDim, r);
        var positions = new int[m];
        for (int i = 0; i < m; i++) positions[i] = i == 0 ? 0 : 3 + i * 37 % 200; // 0 and positions far beyond it
        var cpu = (float[])x.Clone();
        rope.Apply(cpu, m, heads, headDim, positions);
        var (cos, sin) = RopeTables(rope, 256);

        using var xBuf = Acc.Allocate1D(x);
        using var pBuf = Acc.Allocate1D(positions);
        using var cBuf = Acc.Allocate1D(cos);
        using var sBuf = Acc.Allocate1D(sin);
        Fk.Rope(xBuf.View, m, heads, headDim, rotaryDim, pBuf.View, cBuf.View, sBuf.View);
        Fk.Synchronize();
        var device = xBuf.GetAsArray1D();
        // the same products and one add/subtract each: equal up to fused multiply-add contraction
        Close($"Rope m={m} heads={heads} headDim={headDim} rotaryDim={rotaryDim}", device, cpu, 1e-6);
        if (rotaryDim < headDim) // channels past rotaryDim pass through untouched
            for (int i = 0; i < m * heads; i++)
                for (int c = rotaryDim; c < headDim; c++) Assert.Equal(x[i * headDim + c], device[i * headDim + c]);
    }

    [Fact]
    public void Rope_position_beyond_the_tables_gives_NaN()
    {
        using var xBuf = Acc.Allocate1D(new float[] { 1, 2, 3, 4 });
        using var pBuf = Acc.Allocate1D(new[] { 2 });
        using var cBuf = Acc.Allocate1D(new float[] { 1, 1, 1, 1 }); // P = 2, rotaryDim 2
        using var sBuf = Acc.Allocate1D(new float[] { 0, 0, 0, 0 });
        Fk.Rope(xBuf.View, 1, 2, 2, 2, pBuf.View, cBuf.View, sBuf.View);
        Fk.Synchronize();
        Assert.All(xBuf.GetAsArray1D(), v => Assert.True(float.IsNaN(v), $"expected NaN, got {v}"));
    }

    [Theory]
    [InlineData(1, 1, 1, false)]
    [InlineData(3, 2, 5, false)]
    [InlineData(1, 1, 1, true)]
    [InlineData(4, 3, 7, true)]
    public void SplitQkv_matches_CausalLM_ProjectQkv_layouts(int m, int heads, int headDim, bool neox)
    {
        int d = heads * headDim;
        var fused = new float[m * 3 * d];
        for (int i = 0; i < fused.Length; i++) fused[i] = i; // every value distinct: a wrong column shows
        float[] q = new float[m * d], k = new float[m * d], v = new float[m * d];
        // CausalLM.ProjectQkv's loops
        for (int r = 0; r < m; r++)
        {
            var f = fused.AsSpan(r * 3 * d, 3 * d);
            if (!neox)
            {
                f[..d].CopyTo(q.AsSpan(r * d, d));
                f.Slice(d, d).CopyTo(k.AsSpan(r * d, d));
                f.Slice(2 * d, d).CopyTo(v.AsSpan(r * d, d));
            }
            else
                for (int h = 0; h < heads; h++)
                {
                    f.Slice(h * 3 * headDim, headDim).CopyTo(q.AsSpan(r * d + h * headDim, headDim));
                    f.Slice(h * 3 * headDim + headDim, headDim).CopyTo(k.AsSpan(r * d + h * headDim, headDim));
                    f.Slice(h * 3 * headDim + 2 * headDim, headDim).CopyTo(v.AsSpan(r * d + h * headDim, headDim));
                }
        }
        using var fBuf = Acc.Allocate1D(fused);
        using var qBuf = Acc.Allocate1D<float>(m * d);
        using var kBuf = Acc.Allocate1D<float>(m * d);
        using var vBuf = Acc.Allocate1D<float>(m * d);
        Fk.SplitQkv(fBuf.View, m, heads, headDim, neox, qBuf.View, kBuf.View, vBuf.View);
        Fk.Synchronize();
        string what = $"SplitQkv m={m} heads={heads} headDim={headDim} neox={neox}";
        Close(what + " q", qBuf.GetAsArray1D(), q, 0);
        Close(what + " k", kBuf.GetAsArray1D(), k, 0);
        Close(what + " v", vBuf.GetAsArray1D(), v, 0);
    }

    // ---------------------------------------------------------------- attention softmax

    /// <summary>One attention call: rows sequences, heads query heads sharing one key/value head (as one
    /// <c>Kernels.AttendGroup</c> call per row), head dim hd; per-row key range and query end.</summary>
    public sealed record AttentionCase(string Name, int Rows, int Heads, int Nq, int Nk, int QOffset, int Hd, int Window,
        float Scale, float Softcap, int[] KeyFirst, int[] KeyLast, int[] QueryEnd, float Amplitude = 1f)
    {
        public override string ToString() => Name;
    }

    public static TheoryData<AttentionCase> AttentionCases() => new()
    {
        new("plain causal", 2, 3, 13, 13, 0, 16, 0, 0.25f, 0, [0, 0], [12, 12], [12, 12]),
        new("sliding window 4", 2, 2, 11, 11, 0, 8, 4, 0.35f, 0, [0, 0], [10, 10], [10, 10]),
        new("softcap 5, large scores", 1, 4, 9, 9, 0, 16, 0, 1f, 5f, [0], [8], [8], Amplitude: 3f),
        new("left padding (keyFirst > 0): early queries see no key", 3, 2, 10, 10, 0, 8, 0, 0.35f, 0, [3, 0, 9], [9, 9, 9], [9, 9, 9]),
        new("right padding (queryEnd < last)", 2, 2, 12, 12, 0, 8, 0, 0.35f, 0, [0, 2], [7, 9], [7, 9]),
        new("generation: nq = 1 at qOffset 20", 2, 3, 1, 21, 20, 16, 0, 0.25f, 0, [0, 4], [20, 20], [20, 20]),
        new("generation with window and softcap", 1, 2, 1, 30, 29, 8, 7, 0.35f, 3f, [0], [29], [29], Amplitude: 2f),
        new("prefill after a cache: qOffset 5, nq 4, nk 16", 1, 2, 4, 16, 5, 8, 0, 0.35f, 0, [1], [15], [8]),
        new("an all-padding row (keyFirst > keyLast)", 2, 2, 6, 6, 0, 4, 0, 0.5f, 0, [4, 0], [3, 5], [5, 5]),
        new("odd head dim, queries past queryEnd", 1, 1, 7, 7, 0, 5, 3, 0.45f, 0, [1], [6], [4]),
        new("many keys (more than one group's threads)", 1, 2, 3, 300, 297, 8, 0, 0.35f, 0, [0], [299], [299]),
        new("many keys, window 100", 1, 1, 2, 300, 298, 8, 100, 0.35f, 0, [5], [299], [299]),
    };

    /// <summary>q [rows, nq, heads, hd], k and v [rows, nk, hd] with the given values; the device weights P (either kernel)
    /// multiplied by V on the host in double, and <c>Kernels.AttendGroup</c>'s outputs for the same inputs, both
    /// [rows, nq, heads, hd].</summary>
    (float[] Device, float[] Cpu) RunAttention(AttentionCase c, float[] q, float[] k, float[] v, bool reference)
    {
        int qW = c.Heads * c.Hd;
        var scores = new float[c.Rows * c.Heads * c.Nq * c.Nk];
        for (int b = 0; b < c.Rows; b++)
            for (int h = 0; h < c.Heads; h++)
                for (int i = 0; i < c.Nq; i++)
                    for (int j = 0; j < c.Nk; j++)
                    {
                        float sum = 0f;
                        for (int d = 0; d < c.Hd; d++) sum += q[(b * c.Nq + i) * qW + h * c.Hd + d] * k[(b * c.Nk + j) * c.Hd + d];
                        scores[((b * c.Heads + h) * c.Nq + i) * c.Nk + j] = sum;
                    }
        using var sBuf = Acc.Allocate1D(scores);
        using var kf = Acc.Allocate1D(c.KeyFirst);
        using var kl = Acc.Allocate1D(c.KeyLast);
        using var qe = Acc.Allocate1D(c.QueryEnd);
        if (reference) Fk.AttentionSoftmaxReference(sBuf.View, c.Rows, c.Heads, c.Nq, c.Nk, c.QOffset, kf.View, kl.View, qe.View, c.Window, c.Scale, c.Softcap);
        else Fk.AttentionSoftmax(sBuf.View, c.Rows, c.Heads, c.Nq, c.Nk, c.QOffset, kf.View, kl.View, qe.View, c.Window, c.Scale, c.Softcap);
        Fk.Synchronize();
        var p = sBuf.GetAsArray1D();
        var device = new float[c.Rows * c.Nq * qW];
        for (int b = 0; b < c.Rows; b++)
            for (int h = 0; h < c.Heads; h++)
                for (int i = 0; i < c.Nq; i++)
                    for (int d = 0; d < c.Hd; d++)
                    {
                        double acc = 0;
                        for (int j = 0; j < c.Nk; j++)
                        {
                            float w = p[((b * c.Heads + h) * c.Nq + i) * c.Nk + j];
                            if (w != 0f || float.IsNaN(w)) acc += w * (double)v[(b * c.Nk + j) * c.Hd + d];
                        }
                        device[(b * c.Nq + i) * qW + h * c.Hd + d] = (float)acc;
                    }

        // CausalLM.Attend per row: queries after queryEnd get 0, the rest go through AttendGroup
        var cpu = new float[device.Length];
        var scratch = new float[Kernels.AttendGroupScratch(c.Hd, c.Nk)];
        for (int b = 0; b < c.Rows; b++)
        {
            int queries = Math.Clamp(c.QueryEnd[b] - c.QOffset + 1, 0, c.Nq);
            if (queries == 0) continue;
            Kernels.AttendGroup(q.AsSpan(b * c.Nq * qW), qW, queries, c.QOffset, c.Heads, k.AsSpan(b * c.Nk * c.Hd), v.AsSpan(b * c.Nk * c.Hd),
                c.Hd, c.Nk, c.Hd, c.KeyFirst[b], c.KeyLast[b], c.Window, c.Scale, c.Softcap > 0 ? c.Softcap : null, cpu.AsSpan(b * c.Nq * qW), scratch);
        }
        return (device, cpu);
    }

    (float[] Q, float[] K, float[] V) AttentionInputs(AttentionCase c, int seed)
    {
        var r = new Random(seed);
        return (Random(c.Rows * c.Nq * c.Heads * c.Hd, r, c.Amplitude), Random(c.Rows * c.Nk * c.Hd, r, c.Amplitude), Random(c.Rows * c.Nk * c.Hd, r, 1f));
    }

    /// <summary>Equal NaN patterns (a NaN row on one side only fails, naming the index), then max-abs-diff of the rest.</summary>
    void CloseWithNaN(string what, float[] device, float[] cpu, double tol)
    {
        Assert.Equal(cpu.Length, device.Length);
        double m = 0;
        int nans = 0;
        for (int i = 0; i < cpu.Length; i++)
        {
            Assert.True(float.IsNaN(device[i]) == float.IsNaN(cpu[i]), $"{what}: at {i} device {device[i]}, cpu {cpu[i]}");
            if (float.IsNaN(cpu[i])) { nans++; continue; }
            m = Math.Max(m, Math.Abs((double)device[i] - cpu[i]));
        }
        output.WriteLine($"{what}: max-abs-diff {m:G3} (tolerance {tol:G3}), {nans} NaN outputs on both");
        Assert.True(m <= tol, $"{what}: max-abs-diff {m:G3} > {tol:G3}");
    }

    [Theory]
    [MemberData(nameof(AttentionCases))]
    public void AttentionSoftmax_times_V_matches_Kernels_AttendGroup(AttentionCase c)
    {
        var (q, k, v) = AttentionInputs(c, c.Name.Length * 17 + c.Nk);
        output.WriteLine($"group size {Fk.GroupSize}, {c.Nk} keys");
        foreach (bool reference in new[] { false, true })
        {
            var (device, cpu) = RunAttention(c, q, k, v, reference);
            // outputs are convex combinations of values in [−1, 1]: float32 softmax differences are a few 1e-7
            Close($"AttentionSoftmax{(reference ? "Reference" : "")} [{c.Name}]", device, cpu, 1e-5);
        }
        // the case exercises what it says: a zero output row exists exactly when some query sees no key
        bool anyEmpty = false;
        for (int b = 0; b < c.Rows; b++)
            for (int i = 0; i < c.Nq; i++)
            {
                int a = c.QOffset + i;
                int first = Math.Max(c.KeyFirst[b], c.Window > 0 ? a - c.Window + 1 : 0), last = Math.Min(Math.Min(a, c.KeyLast[b]), c.Nk - 1);
                anyEmpty |= first > last || a > c.QueryEnd[b];
            }
        var (dev, _) = RunAttention(c, q, k, v, false);
        bool anyZeroRow = false;
        for (int row = 0; row < c.Rows * c.Nq; row++)
            anyZeroRow |= dev.AsSpan(row * c.Heads * c.Hd, c.Heads * c.Hd).ToArray().All(x => x == 0f);
        Assert.Equal(anyEmpty, anyZeroRow);
    }

    [Fact]
    public void AttentionSoftmax_weights_are_a_softmax_over_exactly_the_visible_keys()
    {
        // direct check of the weights (not only through V): visible weights sum to 1 and match a double softmax,
        // invisible ones are exactly 0
        var c = new AttentionCase("weights", 2, 2, 5, 9, 4, 4, 3, 0.5f, 2f, [1, 0], [8, 6], [8, 7]);
        var r = new Random(11);
        var scores = Random(c.Rows * c.Heads * c.Nq * c.Nk, r, 4f);
        using var sBuf = Acc.Allocate1D(scores);
        using var kf = Acc.Allocate1D(c.KeyFirst);
        using var kl = Acc.Allocate1D(c.KeyLast);
        using var qe = Acc.Allocate1D(c.QueryEnd);
        Fk.AttentionSoftmax(sBuf.View, c.Rows, c.Heads, c.Nq, c.Nk, c.QOffset, kf.View, kl.View, qe.View, c.Window, c.Scale, c.Softcap);
        Fk.Synchronize();
        var p = sBuf.GetAsArray1D();
        double worst = 0;
        for (int b = 0; b < c.Rows; b++)
            for (int h = 0; h < c.Heads; h++)
                for (int i = 0; i < c.Nq; i++)
                {
                    int o = ((b * c.Heads + h) * c.Nq + i) * c.Nk, a = c.QOffset + i;
                    int first = Math.Max(c.KeyFirst[b], a - c.Window + 1), last = Math.Min(a, c.KeyLast[b]);
                    bool none = first > last || a > c.QueryEnd[b];
                    double max = double.NegativeInfinity, sum = 0;
                    var s = new double[c.Nk];
                    for (int j = first; j <= last; j++) { s[j] = c.Softcap * Math.Tanh(c.Scale * scores[o + j] / c.Softcap); max = Math.Max(max, s[j]); }
                    for (int j = first; j <= last; j++) sum += Math.Exp(s[j] - max);
                    for (int j = 0; j < c.Nk; j++)
                    {
                        bool visible = !none && j >= first && j <= last;
                        if (!visible) Assert.True(p[o + j] == 0f, $"row ({b},{h},{i}) key {j} is invisible but has weight {p[o + j]}");
                        else worst = Math.Max(worst, Math.Abs(p[o + j] - Math.Exp(s[j] - max) / sum));
                    }
                }
        output.WriteLine($"AttentionSoftmax weights vs double softmax: max-abs-diff {worst:G3}");
        Assert.True(worst <= 1e-6, $"AttentionSoftmax weights vs double softmax: max-abs-diff {worst:G3} > 1e-6");
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void AttentionSoftmax_NaN_or_infinite_visible_score_gives_NaN_rows_masked_ones_do_not_matter(bool reference)
    {
        // keyFirst 2 (keys 0, 1 are padding), window 0: key 5 carries NaN, key 0 carries NaN (masked everywhere), and
        // key 8 is +∞ in one dimension. AttendGroup gives NaN exactly for the queries that see key 5 or 8.
        var c = new AttentionCase("NaN", 1, 2, 10, 10, 0, 4, 0, 0.5f, 0, [2], [9], [9]);
        var (q, k, v) = AttentionInputs(c, 3);
        for (int d = 0; d < c.Hd; d++) { k[5 * c.Hd + d] = float.NaN; k[0 * c.Hd + d] = float.NaN; }
        k[8 * c.Hd + 1] = float.PositiveInfinity;
        var (device, cpu) = RunAttention(c, q, k, v, reference);
        CloseWithNaN($"AttentionSoftmax{(reference ? "Reference" : "")} with NaN/∞ keys", device, cpu, 1e-5);
        int qW = c.Heads * c.Hd;
        for (int i = 0; i < c.Nq; i++)
        {
            bool nan = float.IsNaN(cpu[i * qW]);
            Assert.True(nan == (i >= 5), $"query {i}: AttendGroup gives {(nan ? "" : "no ")}NaN row (the test's premise)");
        }
        // with softcap the ∞ is still a NaN row (the check is on the score before capping, as on the CPU)
        var capped = c with { Softcap = 4f };
        var (d2, c2) = RunAttention(capped, q, k, v, reference);
        CloseWithNaN($"AttentionSoftmax{(reference ? "Reference" : "")} with NaN/∞ keys and softcap", d2, c2, 1e-5);
        Assert.True(float.IsNaN(c2[8 * qW]), "softcapped: a query seeing the ∞ key gives a NaN row on the CPU");
    }

    [Fact]
    public void Bad_sizes_are_rejected_naming_the_kernel_and_the_sizes()
    {
        using var a = Acc.Allocate1D<float>(6);
        using var w = Acc.Allocate1D<float>(4);
        using var i3 = Acc.Allocate1D<int>(3);
        void Rejects(string kernel, string sizes, Action call)
        {
            var e = Assert.Throws<ArgumentException>(call);
            Assert.StartsWith(kernel + ":", e.Message);
            Assert.Contains(sizes, e.Message);
        }
        Rejects("LayerNorm", "2·4", () => Fk.LayerNorm(a.View, w.View, w.View, 2, 1e-5f, a.View));
        Rejects("LayerNorm", "bias has 6", () => Fk.LayerNorm(a.View.SubView(0, 4), w.View, a.View, 1, 1e-5f, w.View));
        Rejects("Rope", "1·2·4", () => Fk.Rope(a.View, 1, 2, 4, 4, i3.View, w.View, w.View));
        Rejects("Rope", "rotaryDim 3", () => Fk.Rope(a.View, 1, 2, 3, 3, i3.View, w.View, w.View));
        Rejects("GatedActivation", "up 4", () => Fk.GatedActivation(HiddenAct.Silu, a.View, w.View, a.View));
        Rejects("EmbedF32", "3·4", () => Fk.EmbedF32(i3.View, w.View, 4, 1f, a.View));
        Rejects("AddPositions", "3·4", () => Fk.AddPositions(i3.View, w.View, 4, a.View));
        Rejects("Add", "x has 6", () => Fk.Add(a.View, w.View));
        Rejects("AddParallel", "attn 4", () => Fk.AddParallel(a.View, w.View, a.View));
        Rejects("AddBias", "2·4", () => Fk.AddBias(a.View, a.View, 2, 4));
        Rejects("SoftCap", "-1", () => Fk.SoftCap(a.View, -1f));
        Rejects("SplitQkv", "1·3·1·2", () => Fk.SplitQkv(a.View.SubView(0, 5), 1, 1, 2, false, w.View, w.View, w.View));
        Rejects("AttentionSoftmax", "1·1·2·4", () => Fk.AttentionSoftmax(a.View, 1, 1, 2, 4, 0, i3.View, i3.View, i3.View, 0, 1f, 0f));
        Rejects("AttentionSoftmax", "need", () => Fk.AttentionSoftmax(a.View, 6, 1, 1, 1, 0, i3.View, i3.View, i3.View, 0, 1f, 0f));
        Rejects("AttentionSoftmaxReference", "window -1", () => Fk.AttentionSoftmaxReference(a.View, 1, 1, 2, 3, 0, i3.View, i3.View, i3.View, -1, 1f, 0f));
    }

    [Fact]
    public void Group_kernels_with_GPU_sized_256_thread_groups_match_the_CPU()
    {
        // The default CPU accelerator offers 16 threads per group; a CPU device of 8 warps of 32 threads (one
        // multiprocessor, so 256 threads in all) offers GPU-sized groups, so the 256-thread tree reductions the GPU runs
        // (8 halving steps) are exercised here too. Few rows: every barrier synchronises 256 OS threads.
        using var context = Context.Create(b => b.CPU(new CPUDevice(32, 8, 1)));
        using var acc = context.CreateCPUAccelerator(0);
        var fk = new ForwardKernels(acc);
        output.WriteLine($"CPU device of 8 warps × 32: group size {fk.GroupSize}");
        Assert.Equal(256, fk.GroupSize);

        var r = new Random(8);
        int rows = 2, d = 700;
        float[] x = Random(rows * d, r), w = Random(d, r), b = Random(d, r);
        var cpu = new float[rows * d];
        Kernels.LayerNorm(x, w, b, rows, 1e-5f, cpu);
        using var xBuf = acc.Allocate1D(x);
        using var wBuf = acc.Allocate1D(w);
        using var bBuf = acc.Allocate1D(b);
        fk.LayerNorm(xBuf.View, wBuf.View, bBuf.View, rows, 1e-5f, xBuf.View);
        acc.Synchronize();
        Close($"LayerNorm {rows}x{d}, 256-thread groups", xBuf.GetAsArray1D(), cpu, 1e-5);

        var c = new AttentionCase("256-thread groups", 1, 1, 2, 600, 598, 8, 400, 0.35f, 0, [3], [599], [599]);
        var (q, k, v) = AttentionInputs(c, 9);
        var (_, cpuO) = RunAttention(c, q, k, v, reference: true); // AttendGroup's outputs
        var scores = new float[c.Heads * c.Nq * c.Nk];
        for (int h = 0; h < c.Heads; h++)
            for (int i = 0; i < c.Nq; i++)
                for (int j = 0; j < c.Nk; j++)
                {
                    float sum = 0f;
                    for (int dd = 0; dd < c.Hd; dd++) sum += q[i * c.Heads * c.Hd + h * c.Hd + dd] * k[j * c.Hd + dd];
                    scores[(h * c.Nq + i) * c.Nk + j] = sum;
                }
        using var sBuf = acc.Allocate1D(scores);
        using var kf = acc.Allocate1D(c.KeyFirst);
        using var kl = acc.Allocate1D(c.KeyLast);
        using var qe = acc.Allocate1D(c.QueryEnd);
        fk.AttentionSoftmax(sBuf.View, 1, c.Heads, c.Nq, c.Nk, c.QOffset, kf.View, kl.View, qe.View, c.Window, c.Scale, c.Softcap);
        acc.Synchronize();
        var p = sBuf.GetAsArray1D();
        var o = new float[cpuO.Length];
        for (int h = 0; h < c.Heads; h++)
            for (int i = 0; i < c.Nq; i++)
                for (int dd = 0; dd < c.Hd; dd++)
                {
                    double a = 0;
                    for (int j = 0; j < c.Nk; j++) a += p[(h * c.Nq + i) * c.Nk + j] * (double)v[j * c.Hd + dd];
                    o[i * c.Heads * c.Hd + h * c.Hd + dd] = (float)a;
                }
        Close("AttentionSoftmax 600 keys, window 400, 256-thread groups", o, cpuO, 1e-5);
    }

    [Fact]
    public void ForwardKernelsParity_passes_on_the_CPU_accelerator()
    {
        var result = Finetrace.Cuda.Checks.ForwardKernelsParity.Run(fx.Device);
        ForwardKernelsParityTests.Report(result, output);
        Assert.True(result.Passed, result.ToString());
        Assert.True(result.Cases.Count >= 30, $"expected every kernel, got {result.Cases.Count} cases");
        foreach (var kernel in typeof(ForwardKernels).GetMethods().Where(m => m.DeclaringType == typeof(ForwardKernels) && m.ReturnType == typeof(void) && m.Name != nameof(ForwardKernels.Synchronize)))
            Assert.True(result.Cases.Any(c => c.Kernel.StartsWith(kernel.Name, StringComparison.Ordinal)), $"ForwardKernelsParity has no case for {kernel.Name}");
    }
}

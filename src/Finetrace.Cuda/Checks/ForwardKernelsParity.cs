using System.Numerics.Tensors;
using Finetrace.Models;
using Finetrace.Tensors;
using ILGPU;
using ILGPU.Runtime;

namespace Finetrace.Cuda.Checks;

/// <summary>One kernel call compared with its CPU peer: the largest |device − cpu| over the outputs (NaN when a NaN
/// appears on one side only, or the lengths differ) and the bound it is held to.</summary>
public sealed record KernelParityCase(string Kernel, string Shape, double MaxAbsDiff, double Tolerance)
{
    public bool Passed => MaxAbsDiff <= Tolerance; // false for NaN
}

/// <summary>Outcome of <see cref="ForwardKernelsParity.Run"/>: every case, and whether all are within their bounds.</summary>
public sealed record ForwardKernelsParityResult(string Device, IReadOnlyList<KernelParityCase> Cases)
{
    public bool Passed => Cases.Count > 0 && Cases.All(c => c.Passed);
    /// <summary>The case closest to (or furthest past) its bound.</summary>
    public KernelParityCase Worst => Cases.MaxBy(c => double.IsNaN(c.MaxAbsDiff) ? double.PositiveInfinity : c.MaxAbsDiff / c.Tolerance)!;

    public override string ToString() =>
        $"ForwardKernels on {Device}: {Cases.Count} cases, {Cases.Count(c => !c.Passed)} failed; closest to its bound: {Worst.Kernel} " +
        $"[{Worst.Shape}] max-abs-diff {Worst.MaxAbsDiff:G3} (tolerance {Worst.Tolerance:G3}) — {(Passed ? "pass" : "FAIL")}";
}

/// <summary>
/// Every <see cref="ForwardKernels"/> kernel on a device against its CPU peer in Finetrace (Tensors.Kernels, Models.Rope,
/// Tensors.Precision, CausalLM's embedding / QKV split / residual order, Kernels.AttendGroup for the attention weights
/// times V) at model-like row widths, so that a kernel the GPU computes differently (PTX division or sqrt, contraction
/// into fused multiply-adds, a group reduction with 256 threads) is named on its own rather than as a forward mismatch.
/// The same check runs on ILGPU's CPU accelerator in the tests, as a [CudaFact] on a GPU, and in the gpu-check tool.
/// Bounds are absolute on outputs of magnitude ≤ 10 (a few float ulps of them, far above the 1e-7 level measured on the
/// CPU accelerator); the copies and adds must be exact.
/// </summary>
public static class ForwardKernelsParity
{
    public const double Tolerance = 1e-5;

    public static ForwardKernelsParityResult Run(DeviceContext ctx, int seed = 18)
    {
        var acc = ctx.Accelerator;
        var fk = ctx.Forward;
        var r = new Random(seed);
        var cases = new List<KernelParityCase>();

        float[] Rand(int n, float scale = 3f)
        {
            var a = new float[n];
            for (int i = 0; i < n; i++) a[i] = (float)((r.NextDouble() * 2 - 1) * scale);
            return a;
        }
        void Add(string kernel, string shape, float[] device, float[] cpu, double tol) => cases.Add(new(kernel, shape, MaxAbsDiff(device, cpu), tol));

        // LayerNorm: group per row at GPT-2 / Pythia widths, and its reference
        foreach (var (rows, d) in new[] { (3, 768), (2, 2048), (5, 37) })
        {
            float[] x = Rand(rows * d), w = Rand(d, 1.5f), b = Rand(d, 1f);
            for (int i = 0; i < x.Length; i++) x[i] += 2f;
            var cpu = new float[rows * d];
            Kernels.LayerNorm(x, w, b, rows, 1e-5f, cpu);
            using var xb = acc.Allocate1D(x); using var wb = acc.Allocate1D(w); using var bb = acc.Allocate1D(b);
            using var y1 = acc.Allocate1D<float>(x.Length); using var y2 = acc.Allocate1D<float>(x.Length);
            fk.LayerNorm(xb.View, wb.View, bb.View, rows, 1e-5f, y1.View);
            fk.LayerNormReference(xb.View, wb.View, bb.View, rows, 1e-5f, y2.View);
            fk.Synchronize();
            Add(nameof(ForwardKernels.LayerNorm), $"{rows}×{d}", y1.GetAsArray1D(), cpu, Tolerance);
            Add(nameof(ForwardKernels.LayerNormReference), $"{rows}×{d}", y2.GetAsArray1D(), cpu, Tolerance);
        }

        // activations, gated and not, and the soft cap
        int n = 4099;
        var gate = Rand(n, 8f);
        var up = Rand(n, 1f);
        foreach (var act in new[] { HiddenAct.Silu, HiddenAct.GeluTanh, HiddenAct.GeluErf })
        {
            var cpu = new float[n];
            var cpuMul = new float[n];
            switch (act)
            {
                case HiddenAct.Silu: Kernels.Silu(gate, cpu); Kernels.SiluMul(gate, up, cpuMul); break;
                case HiddenAct.GeluTanh: Kernels.GeluTanh(gate, cpu); Kernels.GeluTanhMul(gate, up, cpuMul); break;
                default: Kernels.GeluErf(gate, cpu); Kernels.GeluErfMul(gate, up, cpuMul); break;
            }
            using var g1 = acc.Allocate1D(gate); using var g2 = acc.Allocate1D(gate); using var ub = acc.Allocate1D(up);
            fk.Activation(act, g1.View);
            fk.GatedActivation(act, g2.View, ub.View, g2.View);
            fk.Synchronize();
            Add($"{nameof(ForwardKernels.Activation)} {act}", $"{n}", g1.GetAsArray1D(), cpu, Tolerance);
            Add($"{nameof(ForwardKernels.GatedActivation)} {act}", $"{n}", g2.GetAsArray1D(), cpuMul, Tolerance);
        }
        {
            var x = Rand(n, 120f);
            var cpu = (float[])x.Clone();
            Kernels.SoftCap(cpu, 30f);
            using var xb = acc.Allocate1D(x);
            fk.SoftCap(xb.View, 30f);
            fk.Synchronize();
            Add(nameof(ForwardKernels.SoftCap), $"{n}, cap 30", xb.GetAsArray1D(), cpu, Tolerance);
        }

        // bf16 both ways: every bf16 pattern, and random floats (NaN excluded: Precision maps every NaN to 0x7FC0)
        {
            var bits = new ushort[65536];
            for (int i = 0; i < bits.Length; i++) bits[i] = (ushort)i;
            var cpu = new float[bits.Length];
            Precision.BF16ToF32(bits, cpu);
            using var bb = acc.Allocate1D(bits); using var fb = acc.Allocate1D<float>(bits.Length);
            fk.FromBf16(bb.View, fb.View);
            fk.Synchronize();
            cases.Add(new(nameof(ForwardKernels.FromBf16), "all 65536 patterns", BitMismatches(fb.GetAsArray1D(), cpu), 0));

            var f = new float[8192];
            for (int i = 0; i < f.Length; i++)
            {
                float v = BitConverter.UInt32BitsToSingle((uint)r.NextInt64(0, 1L << 32));
                f[i] = float.IsNaN(v) ? 1.5f : v;
            }
            using var sb = acc.Allocate1D(f); using var db = acc.Allocate1D<ushort>(f.Length);
            fk.ToBf16(sb.View, db.View);
            fk.Synchronize();
            var got = db.GetAsArray1D();
            int wrong = 0;
            for (int i = 0; i < f.Length; i++) if (got[i] != Precision.F32ToBF16(f[i])) wrong++;
            cases.Add(new(nameof(ForwardKernels.ToBf16), $"{f.Length} random bit patterns (mismatches)", wrong, 0));
        }

        // embedding (f32 and bf16 tables), learned positions, residual adds, bias
        {
            int m = 9, d = 576, vocab = 50;
            var table = Rand(vocab * d);
            var tableBf16 = new ushort[table.Length];
            Precision.F32ToBF16(table, tableBf16);
            var ids = new int[m];
            for (int i = 0; i < m; i++) ids[i] = r.Next(vocab);
            var wpe = Rand(64 * d);
            var positions = new int[m];
            for (int i = 0; i < m; i++) positions[i] = r.Next(64);
            float scale = MathF.Sqrt(d);
            var cpuF = new float[m * d];
            var cpuB = new float[m * d];
            for (int i = 0; i < m; i++)
            {
                var rowF = cpuF.AsSpan(i * d, d); var rowB = cpuB.AsSpan(i * d, d);
                table.AsSpan(ids[i] * d, d).CopyTo(rowF);
                Precision.BF16ToF32(tableBf16.AsSpan(ids[i] * d, d), rowB);
                TensorPrimitives.Multiply(rowF, scale, rowF);
                TensorPrimitives.Multiply(rowB, scale, rowB);
            }
            var cpuPos = (float[])cpuF.Clone();
            for (int i = 0; i < m; i++) TensorPrimitives.Add(cpuPos.AsSpan(i * d, d), wpe.AsSpan(positions[i] * d, d), cpuPos.AsSpan(i * d, d));
            using var idb = acc.Allocate1D(ids); using var tf = acc.Allocate1D(table); using var tb = acc.Allocate1D(tableBf16);
            using var pb = acc.Allocate1D(positions); using var wb = acc.Allocate1D(wpe);
            using var hf = acc.Allocate1D<float>(m * d); using var hb = acc.Allocate1D<float>(m * d);
            fk.EmbedF32(idb.View, tf.View, d, scale, hf.View);
            fk.EmbedBf16(idb.View, tb.View, d, scale, hb.View);
            fk.Synchronize();
            Add(nameof(ForwardKernels.EmbedF32), $"{m}×{d}", hf.GetAsArray1D(), cpuF, 0);
            Add(nameof(ForwardKernels.EmbedBf16), $"{m}×{d}", hb.GetAsArray1D(), cpuB, 0);
            fk.AddPositions(pb.View, wb.View, d, hf.View);
            fk.Synchronize();
            Add(nameof(ForwardKernels.AddPositions), $"{m}×{d}", hf.GetAsArray1D(), cpuPos, 0);

            float[] mlp = Rand(m * d, 1e4f), attn = Rand(m * d, 1e-3f), h = Rand(m * d), bias = Rand(d);
            var cpuPar = new float[h.Length];
            for (int j = 0; j < h.Length; j++) cpuPar[j] = (mlp[j] + attn[j]) + h[j];
            var cpuAdd = (float[])h.Clone();
            TensorPrimitives.Add(cpuAdd, attn, cpuAdd);
            var cpuBias = (float[])h.Clone();
            for (int i = 0; i < m; i++) TensorPrimitives.Add(cpuBias.AsSpan(i * d, d), bias, cpuBias.AsSpan(i * d, d));
            using var mb = acc.Allocate1D(mlp); using var ab = acc.Allocate1D(attn); using var biasb = acc.Allocate1D(bias);
            using var h1 = acc.Allocate1D(h); using var h2 = acc.Allocate1D(h); using var h3 = acc.Allocate1D(h);
            fk.AddParallel(mb.View, ab.View, h1.View);
            fk.Add(ab.View, h2.View);
            fk.AddBias(h3.View, biasb.View, m, d);
            fk.Synchronize();
            Add(nameof(ForwardKernels.AddParallel), $"{m}×{d}", h1.GetAsArray1D(), cpuPar, 0);
            Add(nameof(ForwardKernels.Add), $"{m}×{d}", h2.GetAsArray1D(), cpuAdd, 0);
            Add(nameof(ForwardKernels.AddBias), $"{m}×{d}", h3.GetAsArray1D(), cpuBias, 0);
        }

        // RoPE (full and NeoX-partial) at positions up to 1000, against Rope.Apply with tables built as Rope builds them
        foreach (var (heads, hd, pct) in new[] { (3, 64, "1.0"), (4, 32, "0.25") })
        {
            var config = ModelConfig.Parse($$"""
                {"model_type": "gpt_neox", "hidden_size": {{heads * hd}}, "num_attention_heads": {{heads}},
                 "num_hidden_layers": 1, "vocab_size": 8, "rotary_pct": {{pct}}}
                """);
            var rope = new Rope(config);
            int m = 6, dim = rope.RotaryDim, half = dim / 2, p = 1001;
            var cos = new float[p * dim];
            var sin = new float[p * dim];
            for (int t = 0; t < p; t++)
                for (int i = 0; i < half; i++)
                {
                    float angle = t * rope.InvFreq[i];
                    cos[t * dim + i] = cos[t * dim + half + i] = (float)Math.Cos(angle);
                    sin[t * dim + i] = sin[t * dim + half + i] = (float)Math.Sin(angle);
                }
            var positions = new int[m];
            for (int i = 0; i < m; i++) positions[i] = i == 0 ? 0 : r.Next(p);
            var x = Rand(m * heads * hd);
            var cpu = (float[])x.Clone();
            rope.Apply(cpu, m, heads, hd, positions);
            using var xb = acc.Allocate1D(x); using var pb = acc.Allocate1D(positions);
            using var cb = acc.Allocate1D(cos); using var sb = acc.Allocate1D(sin);
            fk.Rope(xb.View, m, heads, hd, dim, pb.View, cb.View, sb.View);
            fk.Synchronize();
            Add(nameof(ForwardKernels.Rope), $"{m}×{heads}×{hd}, rotary {dim}", xb.GetAsArray1D(), cpu, Tolerance);
        }

        // fused QKV split, both layouts
        foreach (bool neox in new[] { false, true })
        {
            int m = 5, heads = 4, hd = 24, w = heads * hd;
            var fused = Rand(m * 3 * w);
            float[] q = new float[m * w], k = new float[m * w], v = new float[m * w];
            for (int row = 0; row < m; row++)
                for (int c = 0; c < w; c++)
                {
                    int h = c / hd, dd = c % hd;
                    int qAt = neox ? row * 3 * w + h * 3 * hd + dd : row * 3 * w + c;
                    int step = neox ? hd : w;
                    q[row * w + c] = fused[qAt]; k[row * w + c] = fused[qAt + step]; v[row * w + c] = fused[qAt + 2 * step];
                }
            using var fb = acc.Allocate1D(fused);
            using var qb = acc.Allocate1D<float>(m * w); using var kb = acc.Allocate1D<float>(m * w); using var vb = acc.Allocate1D<float>(m * w);
            fk.SplitQkv(fb.View, m, heads, hd, neox, qb.View, kb.View, vb.View);
            fk.Synchronize();
            string shape = $"{m}×3×{heads}×{hd} {(neox ? "NeoX" : "GPT-2")}";
            Add(nameof(ForwardKernels.SplitQkv) + " q", shape, qb.GetAsArray1D(), q, 0);
            Add(nameof(ForwardKernels.SplitQkv) + " k", shape, kb.GetAsArray1D(), k, 0);
            Add(nameof(ForwardKernels.SplitQkv) + " v", shape, vb.GetAsArray1D(), v, 0);
        }

        // attention weights times V against AttendGroup: causal with padding, sliding window with soft cap, generation
        foreach (var (name, nq, nk, qOffset, window, softcap, keyFirst, keyLast) in new[]
        {
            ("causal, left and right padding", 40, 40, 0, 0, 0f, new[] { 0, 5 }, new[] { 39, 31 }),
            ("window 16, softcap 5", 40, 40, 0, 16, 5f, new[] { 0, 0 }, new[] { 39, 39 }),
            ("generation at position 299", 1, 300, 299, 0, 0f, new[] { 0, 7 }, new[] { 299, 299 }),
        })
        {
            foreach (bool reference in new[] { false, true })
            {
                var (device, cpu) = Attention(acc, fk, r, reference, rows: 2, heads: 3, nq, nk, qOffset, hd: 16, window, scale: 0.25f, softcap, keyFirst, keyLast);
                Add(reference ? nameof(ForwardKernels.AttentionSoftmaxReference) : nameof(ForwardKernels.AttentionSoftmax),
                    $"2×3×{nq}×{nk}, {name} (P·V vs AttendGroup)", device, cpu, Tolerance);
            }
        }
        return new ForwardKernelsParityResult(ctx.Name, cases);
    }

    /// <summary>Scores q·k from random q [rows, nq, heads, hd] and k [rows, nk, hd] (one KV head shared by the query
    /// heads), the device softmax, P·V on the host in double; and AttendGroup's outputs as CausalLM.Attend calls it
    /// (queryEnd = keyLast).</summary>
    static (float[] Device, float[] Cpu) Attention(Accelerator acc, ForwardKernels fk, Random r, bool reference, int rows, int heads,
        int nq, int nk, int qOffset, int hd, int window, float scale, float softcap, int[] keyFirst, int[] keyLast)
    {
        int qW = heads * hd;
        var q = new float[rows * nq * qW];
        var k = new float[rows * nk * hd];
        var v = new float[rows * nk * hd];
        for (int i = 0; i < q.Length; i++) q[i] = (float)(r.NextDouble() * 4 - 2);
        for (int i = 0; i < k.Length; i++) { k[i] = (float)(r.NextDouble() * 4 - 2); v[i] = (float)(r.NextDouble() * 2 - 1); }
        var scores = new float[rows * heads * nq * nk];
        for (int b = 0; b < rows; b++)
            for (int h = 0; h < heads; h++)
                for (int i = 0; i < nq; i++)
                    for (int j = 0; j < nk; j++)
                    {
                        float s = 0f;
                        for (int d = 0; d < hd; d++) s += q[(b * nq + i) * qW + h * hd + d] * k[(b * nk + j) * hd + d];
                        scores[((b * heads + h) * nq + i) * nk + j] = s;
                    }
        using var sb = acc.Allocate1D(scores);
        using var kf = acc.Allocate1D(keyFirst); using var kl = acc.Allocate1D(keyLast);
        if (reference) fk.AttentionSoftmaxReference(sb.View, rows, heads, nq, nk, qOffset, kf.View, kl.View, kl.View, window, scale, softcap);
        else fk.AttentionSoftmax(sb.View, rows, heads, nq, nk, qOffset, kf.View, kl.View, kl.View, window, scale, softcap);
        fk.Synchronize();
        var p = sb.GetAsArray1D();
        var device = new float[q.Length];
        for (int b = 0; b < rows; b++)
            for (int h = 0; h < heads; h++)
                for (int i = 0; i < nq; i++)
                    for (int d = 0; d < hd; d++)
                    {
                        double o = 0;
                        for (int j = 0; j < nk; j++) o += p[((b * heads + h) * nq + i) * nk + j] * (double)v[(b * nk + j) * hd + d];
                        device[(b * nq + i) * qW + h * hd + d] = (float)o;
                    }
        var cpu = new float[q.Length];
        var scratch = new float[Kernels.AttendGroupScratch(hd, nk)];
        for (int b = 0; b < rows; b++)
        {
            int queries = Math.Clamp(keyLast[b] - qOffset + 1, 0, nq);
            if (queries == 0) continue;
            Kernels.AttendGroup(q.AsSpan(b * nq * qW), qW, queries, qOffset, heads, k.AsSpan(b * nk * hd), v.AsSpan(b * nk * hd), hd, nk, hd,
                keyFirst[b], keyLast[b], window, scale, softcap > 0 ? softcap : null, cpu.AsSpan(b * nq * qW), scratch);
        }
        return (device, cpu);
    }

    static double MaxAbsDiff(float[] device, float[] cpu)
    {
        if (device.Length != cpu.Length) return double.NaN;
        double m = 0;
        for (int i = 0; i < cpu.Length; i++)
        {
            if (float.IsNaN(device[i]) || float.IsNaN(cpu[i]))
            {
                if (float.IsNaN(device[i]) != float.IsNaN(cpu[i])) return double.NaN;
                continue;
            }
            m = Math.Max(m, Math.Abs((double)device[i] - cpu[i]));
        }
        return m;
    }

    static double BitMismatches(float[] device, float[] cpu)
    {
        int n = 0;
        for (int i = 0; i < cpu.Length; i++) if (BitConverter.SingleToUInt32Bits(device[i]) != BitConverter.SingleToUInt32Bits(cpu[i])) n++;
        return n;
    }
}

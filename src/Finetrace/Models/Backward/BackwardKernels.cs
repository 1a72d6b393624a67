using System.Numerics.Tensors;
using Finetrace.Tensors;

namespace Finetrace.Models.Backward;

/// <summary>
/// The pieces of a transformer's backward pass, each the exact derivative of the float32 forward it belongs to. The
/// GEMM-bound parts (projections, unembedding) go through <see cref="Gemm"/>; the rest is row-wise and deterministic
/// (reductions over rows run in a fixed order, so a step is bit-for-bit repeatable). Every kernel is tested against
/// central finite differences of a float64 reference.
/// </summary>
public static class BackwardKernels
{
    // ---------------------------------------------------------------- linear

    /// <summary>The backward of y = x·Wᵀ + b (W stored [out, in]): dX += dY·W (when dX is given), dW += dYᵀ·X and
    /// db += Σ_rows dY (when given).</summary>
    // dYMO: [m, out]; xMI: [m, in]; wOI: [out, in]; dXMI: [m, in] or empty; dWOI: [out, in] or null; dB: [out] or null
    public static void Linear(ReadOnlySpan<float> dYMO, ReadOnlySpan<float> xMI, ReadOnlySpan<float> wOI, int m, int inF, int outF,
        Span<float> dXMI, bool accumulateDx, float[]? dWOI, float[]? dB)
    {
        if (!dXMI.IsEmpty) Gemm.MatMulNN(dYMO, wOI, m, outF, inF, dXMI, accumulateDx);
        if (dWOI is not null) Gemm.MatMulTN(dYMO, xMI, outF, m, inF, dWOI, accumulate: true);
        if (dB is not null)
            for (int r = 0; r < m; r++) TensorPrimitives.Add(dB, dYMO.Slice(r * outF, outF), dB);
    }

    // ---------------------------------------------------------------- RMSNorm

    /// <summary>The forward y = x·s·w with s = 1/√(mean(x²) + eps) (w + 1 when <paramref name="onePlusW"/>), keeping s per
    /// row for the backward. Same arithmetic as <see cref="Kernels.RmsNorm"/>.</summary>
    // xRD: [rows, D]; w: [D]; yRD: [rows, D]; invRms: [rows]
    public static void RmsNormForward(ReadOnlySpan<float> xRD, ReadOnlySpan<float> w, int rows, float eps, bool onePlusW, Span<float> yRD, Span<float> invRms)
    {
        int d = w.Length;
        Kernels.RmsNorm(xRD[..(rows * d)], w, rows, eps, onePlusW, yRD);
        for (int r = 0; r < rows; r++)
        {
            var x = xRD.Slice(r * d, d);
            invRms[r] = 1f / MathF.Sqrt(TensorPrimitives.SumOfSquares(x) / d + eps);
        }
    }

    /// <summary>The backward of RMSNorm: with g = dY ⊙ w', dX = s·g − x·(s³/D)·Σ(g ⊙ x), dw += Σ_rows dY ⊙ x·s.</summary>
    // dYRD, xRD: [rows, D]; invRms: [rows]; w: [D]; dXRD: [rows, D] (added to when accumulate); dW: [D] or null
    public static void RmsNorm(ReadOnlySpan<float> dYRD, ReadOnlySpan<float> xRD, ReadOnlySpan<float> invRms, ReadOnlySpan<float> w, int rows,
        bool onePlusW, Span<float> dXRD, bool accumulate, float[]? dW)
    {
        int d = w.Length;
        Span<float> g = d <= 4096 ? stackalloc float[d] : new float[d];
        Span<float> wEff = d <= 4096 ? stackalloc float[d] : new float[d];
        if (onePlusW) TensorPrimitives.Add(w, 1f, wEff); else w.CopyTo(wEff);
        for (int r = 0; r < rows; r++)
        {
            var dy = dYRD.Slice(r * d, d);
            var x = xRD.Slice(r * d, d);
            var dx = dXRD.Slice(r * d, d);
            float s = invRms[r];
            TensorPrimitives.Multiply(dy, wEff, g);
            float gx = TensorPrimitives.Dot(g, x);
            float c = s * s * s * gx / d;
            if (!accumulate) dx.Clear();
            for (int i = 0; i < d; i++) dx[i] += s * g[i] - c * x[i];
            if (dW is not null)
                for (int i = 0; i < d; i++) dW[i] += dy[i] * (x[i] * s);
        }
    }

    // ---------------------------------------------------------------- gated MLP

    /// <summary>The backward of h = silu(a) ⊙ u: dA = dH ⊙ u ⊙ silu′(a), dU = dH ⊙ silu(a).</summary>
    // dH, a, u, dA, dU: [n]
    public static void SiluMul(ReadOnlySpan<float> dH, ReadOnlySpan<float> a, ReadOnlySpan<float> u, Span<float> dA, Span<float> dU)
    {
        for (int i = 0; i < dH.Length; i++)
        {
            float ai = a[i];
            float sig = 1f / (1f + MathF.Exp(-ai));
            dU[i] = dH[i] * (ai * sig);
            dA[i] = dH[i] * u[i] * (sig * (1f + ai * (1f - sig)));
        }
    }

    /// <summary>y = act(a) ⊙ u (gated, <paramref name="u"/> given) or y = act(a) (plain): the backward dA (and dU).</summary>
    // dH, a, dA: [n]; u, dU: [n] or empty for a plain MLP
    public static void Activation(HiddenAct act, ReadOnlySpan<float> dH, ReadOnlySpan<float> a, ReadOnlySpan<float> u, Span<float> dA, Span<float> dU)
    {
        bool gated = !u.IsEmpty;
        for (int i = 0; i < dH.Length; i++)
        {
            float x = a[i], f, df;
            switch (act)
            {
                case HiddenAct.Silu:
                {
                    float sig = 1f / (1f + MathF.Exp(-x));
                    f = x * sig; df = sig * (1f + x * (1f - sig));
                    break;
                }
                case HiddenAct.GeluTanh:
                {
                    const float c = 0.7978845608028654f; // √(2/π)
                    float inner = c * (x + 0.044715f * x * x * x);
                    float t = MathF.Tanh(inner);
                    f = 0.5f * x * (1f + t);
                    df = 0.5f * (1f + t) + 0.5f * x * (1f - t * t) * c * (1f + 3f * 0.044715f * x * x);
                    break;
                }
                default:
                {
                    float cdf = 0.5f * (1f + (float)Kernels.Erf(x / Math.Sqrt(2.0)));
                    f = x * cdf; df = cdf + x * MathF.Exp(-0.5f * x * x) * 0.3989422804014327f;
                    break;
                }
            }
            if (gated) { dU[i] = dH[i] * f; dA[i] = dH[i] * u[i] * df; }
            else dA[i] = dH[i] * df;
        }
    }

    /// <summary>The forward of torch.nn.LayerNorm (biased variance), keeping mean and 1/std per row for the backward.
    /// Output as <see cref="Kernels.LayerNorm"/>.</summary>
    // xRD: [rows, D]; w, b: [D] (b may be empty); yRD: [rows, D]; mean, rstd: [rows]
    public static void LayerNormForward(ReadOnlySpan<float> xRD, ReadOnlySpan<float> w, ReadOnlySpan<float> b, int rows, float eps, Span<float> yRD,
        Span<float> mean, Span<float> rstd)
    {
        int d = w.Length;
        Kernels.LayerNorm(xRD[..(rows * d)], w, b, rows, eps, yRD);
        for (int r = 0; r < rows; r++)
        {
            var x = xRD.Slice(r * d, d);
            float mu = TensorPrimitives.Sum(x) / d;
            float var = 0;
            for (int i = 0; i < d; i++) { float e = x[i] - mu; var += e * e; }
            mean[r] = mu;
            rstd[r] = 1f / MathF.Sqrt(var / d + eps);
        }
    }

    /// <summary>The backward of LayerNorm: with x̂ = (x − μ)·r and g = dY ⊙ w, dX = r·(g − mean(g) − x̂·mean(g ⊙ x̂)),
    /// dw += Σ_rows dY ⊙ x̂, db += Σ_rows dY.</summary>
    // dYRD, xRD, dXRD: [rows, D]; mean, rstd: [rows]; w: [D]; dW, dB: [D] or null
    public static void LayerNorm(ReadOnlySpan<float> dYRD, ReadOnlySpan<float> xRD, ReadOnlySpan<float> mean, ReadOnlySpan<float> rstd,
        ReadOnlySpan<float> w, int rows, Span<float> dXRD, bool accumulate, float[]? dW, float[]? dB)
    {
        int d = w.Length;
        var g = new float[d];
        var xhat = new float[d];
        for (int r = 0; r < rows; r++)
        {
            var dy = dYRD.Slice(r * d, d);
            var x = xRD.Slice(r * d, d);
            var dx = dXRD.Slice(r * d, d);
            float mu = mean[r], rs = rstd[r];
            for (int i = 0; i < d; i++) xhat[i] = (x[i] - mu) * rs;
            TensorPrimitives.Multiply(dy, w, g);
            float mg = TensorPrimitives.Sum(g) / d, mgx = TensorPrimitives.Dot(g, xhat) / d;
            if (!accumulate) dx.Clear();
            for (int i = 0; i < d; i++) dx[i] += rs * (g[i] - mg - xhat[i] * mgx);
            if (dW is not null) for (int i = 0; i < d; i++) dW[i] += dy[i] * xhat[i];
            if (dB is not null) TensorPrimitives.Add(dB, dy, dB);
        }
    }

    /// <summary>The backward of y = cap·tanh(z/cap) given y: dZ = dY·(1 − (y/cap)²), in place.</summary>
    // yN, dN: [n]
    public static void SoftCap(ReadOnlySpan<float> y, float cap, Span<float> d)
    {
        for (int i = 0; i < d.Length; i++) { float t = y[i] / cap; d[i] *= 1f - t * t; }
    }

    // ---------------------------------------------------------------- causal attention

    /// <summary>What the attention kernels need to know about one batch: per row the real-token range (left or right
    /// padding, as <see cref="TokenBatch"/>), and the layer's sliding window (0 = none).</summary>
    public readonly record struct AttentionShape(int Batch, int Seq, int Heads, int KvHeads, int HeadDim, float Scale, int Window,
        int[] FirstReal, int[] LastReal, float Softcap = 0f)
    {
        public int QWidth => Heads * HeadDim;
        public int KvWidth => KvHeads * HeadDim;

        /// <summary>The keys query t of a row sees: causal, real tokens only, and within the window.</summary>
        public (int First, int Last) Visible(int b, int t)
        {
            int first = Math.Max(FirstReal[b], Window > 0 ? t - Window + 1 : 0);
            int last = Math.Min(t, LastReal[b]);
            return (first, last);
        }
    }

    /// <summary>K or V of one sequence and KV head, transposed to [hd, T] so that a query's scores over all keys (and a
    /// weighted sum of values) are hd vector operations along the keys instead of T short dot products.</summary>
    // src: [m, kv·hd] rows of the sequence starting at row0; dst: [hd, T]
    static void Transpose(float[] src, int row0, int T, int kvW, int offset, int hd, float[] dst)
    {
        for (int t = 0; t < T; t++)
        {
            int o = (row0 + t) * kvW + offset;
            for (int i = 0; i < hd; i++) dst[i * T + t] = src[o + i];
        }
    }

    /// <summary>Eager causal attention (as <see cref="CausalLM"/>: softmax over visible keys only, query head h reads KV
    /// head h / (Heads / KvHeads)), also writing each query's log-sum-exp so the backward can recompute probabilities
    /// instead of storing them. Rows with no visible key give 0 (padding). Keys and values are read transposed, so
    /// each query costs 2·hd vector operations along its visible keys.</summary>
    // qMQ: [m, heads·hd]; kMK, vMK: [m, kv·hd]; oMQ: [m, heads·hd]; lseMH: [m, heads]
    public static void AttentionForward(in AttentionShape s, float[] qMQ, float[] kMK, float[] vMK, float[] oMQ, float[] lseMH)
    {
        var sh = s;
        int rep = sh.Heads / sh.KvHeads, hd = sh.HeadDim, qW = sh.QWidth, kvW = sh.KvWidth, T = sh.Seq;
        Parallel.For(0, sh.Batch * sh.KvHeads, ParallelOpts, job =>
        {
            int b = job / sh.KvHeads, g = job % sh.KvHeads;
            var kt = new float[hd * T];
            var vt = new float[hd * T];
            Transpose(kMK, b * T, T, kvW, g * hd, hd, kt);
            Transpose(vMK, b * T, T, kvW, g * hd, hd, vt);
            var p = new float[T];
            for (int h = g * rep; h < (g + 1) * rep; h++)
                for (int t = 0; t < T; t++)
                {
                    int row = b * T + t;
                    var oRow = oMQ.AsSpan(row * qW + h * hd, hd);
                    var (first, last) = sh.Visible(b, t);
                    if (first > last) { oRow.Clear(); lseMH[row * sh.Heads + h] = 0f; continue; }
                    int n = last - first + 1;
                    var sc = p.AsSpan(0, n);
                    sc.Clear();
                    for (int i = 0; i < hd; i++)
                        TensorPrimitives.MultiplyAdd(kt.AsSpan(i * T + first, n), qMQ[row * qW + h * hd + i], sc, sc);
                    TensorPrimitives.Multiply(sc, sh.Scale, sc);
                    if (sh.Softcap > 0) Kernels.SoftCap(sc, sh.Softcap);
                    float max = TensorPrimitives.Max(sc);
                    TensorPrimitives.Subtract(sc, max, sc);
                    TensorPrimitives.Exp(sc, sc);
                    float sum = TensorPrimitives.Sum(sc);
                    TensorPrimitives.Multiply(sc, 1f / sum, sc);
                    lseMH[row * sh.Heads + h] = max + MathF.Log(sum);
                    for (int i = 0; i < hd; i++) oRow[i] = TensorPrimitives.Dot(sc, vt.AsSpan(i * T + first, n));
                }
        });
    }

    /// <summary>The backward of <see cref="AttentionForward"/>, recomputing P = exp(S − lse): with Dᵢ = dOᵢ·Oᵢ,
    /// dVⱼ += Σᵢ Pᵢⱼ dOᵢ, dSᵢⱼ = Pᵢⱼ (dOᵢ·Vⱼ − Dᵢ), dQᵢ = scale Σⱼ dSᵢⱼ Kⱼ, dKⱼ += scale Σᵢ dSᵢⱼ Qᵢ. One task per (row, KV
    /// head) owns that head's dK and dV (accumulated transposed, [hd, T]) and its query heads' dQ, so no two tasks write
    /// the same value and the result does not depend on scheduling.</summary>
    // qMQ, oMQ, dOMQ, dQMQ: [m, heads·hd]; kMK, vMK, dKMK, dVMK: [m, kv·hd]; lseMH: [m, heads]. dQ, dK, dV are overwritten.
    public static void AttentionBackward(in AttentionShape s, float[] qMQ, float[] kMK, float[] vMK, float[] oMQ, float[] lseMH, float[] dOMQ,
        float[] dQMQ, float[] dKMK, float[] dVMK)
    {
        var sh = s;
        int rep = sh.Heads / sh.KvHeads, hd = sh.HeadDim, qW = sh.QWidth, kvW = sh.KvWidth, T = sh.Seq;
        Parallel.For(0, sh.Batch * sh.KvHeads, ParallelOpts, job =>
        {
            int b = job / sh.KvHeads, g = job % sh.KvHeads;
            var kt = new float[hd * T];
            var vt = new float[hd * T];
            var dkt = new float[hd * T];
            var dvt = new float[hd * T];
            Transpose(kMK, b * T, T, kvW, g * hd, hd, kt);
            Transpose(vMK, b * T, T, kvW, g * hd, hd, vt);
            var pBuf = new float[T];
            var dpBuf = new float[T];
            var cappedBuf = new float[T];
            for (int h = g * rep; h < (g + 1) * rep; h++)
                for (int t = 0; t < T; t++)
                {
                    int row = b * T + t;
                    var dqRow = dQMQ.AsSpan(row * qW + h * hd, hd);
                    var (first, last) = sh.Visible(b, t);
                    if (first > last) { dqRow.Clear(); continue; }
                    int n = last - first + 1;
                    int qo = row * qW + h * hd;
                    var doRow = dOMQ.AsSpan(qo, hd);
                    var p = pBuf.AsSpan(0, n);
                    var dp = dpBuf.AsSpan(0, n);
                    p.Clear(); dp.Clear();
                    for (int i = 0; i < hd; i++)
                    {
                        TensorPrimitives.MultiplyAdd(kt.AsSpan(i * T + first, n), qMQ[qo + i], p, p);
                        TensorPrimitives.MultiplyAdd(vt.AsSpan(i * T + first, n), doRow[i], dp, dp);
                    }
                    TensorPrimitives.Multiply(p, sh.Scale, p);
                    var capped = cappedBuf.AsSpan(0, n);
                    if (sh.Softcap > 0) { Kernels.SoftCap(p, sh.Softcap); p.CopyTo(capped); }
                    TensorPrimitives.Subtract(p, lseMH[row * sh.Heads + h], p);
                    TensorPrimitives.Exp(p, p);
                    float di = TensorPrimitives.Dot(doRow, oMQ.AsSpan(qo, hd));
                    // dp ← scale · P ⊙ (dP − D)
                    TensorPrimitives.Subtract(dp, di, dp);
                    TensorPrimitives.Multiply(dp, p, dp);
                    if (sh.Softcap > 0) SoftCap(capped, sh.Softcap, dp);
                    TensorPrimitives.Multiply(dp, sh.Scale, dp);
                    for (int i = 0; i < hd; i++)
                    {
                        dqRow[i] = TensorPrimitives.Dot(dp, kt.AsSpan(i * T + first, n));
                        var dk = dkt.AsSpan(i * T + first, n);
                        TensorPrimitives.MultiplyAdd(dp, qMQ[qo + i], dk, dk);
                        var dv = dvt.AsSpan(i * T + first, n);
                        TensorPrimitives.MultiplyAdd(p, doRow[i], dv, dv);
                    }
                }
            for (int t = 0; t < T; t++)
            {
                int o = (b * T + t) * kvW + g * hd;
                for (int i = 0; i < hd; i++) { dKMK[o + i] = dkt[i * T + t]; dVMK[o + i] = dvt[i * T + t]; }
            }
        });
    }

    // ---------------------------------------------------------------- cross-entropy

    /// <summary>Summed cross-entropy −log softmax(z)[target] over the rows whose target is ≥ 0 (−1 = not counted: padding,
    /// masked tokens, the last position), and its gradient dZ = scale · (softmax(z) − onehot(target)) on those rows
    /// (0 elsewhere). Returns the sum of the losses (double) and the number of counted rows.</summary>
    // logitsMV, dLogitsMV: [m, V]; targets: [m]
    public static (double Loss, int Count) CrossEntropy(ReadOnlySpan<float> logitsMV, ReadOnlySpan<int> targets, int m, int v, float scale, Span<float> dLogitsMV)
    {
        for (int r = 0; r < m; r++)
            if (targets[r] >= v) throw new ArgumentOutOfRangeException(nameof(targets), $"target id {targets[r]} (row {r}) is outside the vocabulary of {v}");
        var rowLoss = new double[m];
        unsafe
        {
            fixed (float* pz = logitsMV, pd = dLogitsMV)
            fixed (int* pt = targets)
            {
                nint z0 = (nint)pz, d0 = (nint)pd, t0 = (nint)pt;
                // rows are independent; each writes its own loss, summed below in row order (deterministic)
                Parallel.For(0, (m + 63) / 64, ParallelOpts, chunk =>
                {
                    for (int r = chunk * 64; r < Math.Min(m, chunk * 64 + 64); r++)
                    {
                        var z = new ReadOnlySpan<float>((float*)z0 + (long)r * v, v);
                        var dz = new Span<float>((float*)d0 + (long)r * v, v);
                        int target = ((int*)t0)[r];
                        if (target < 0) { dz.Clear(); rowLoss[r] = double.NaN; continue; }
                        float max = TensorPrimitives.Max(z);
                        TensorPrimitives.Subtract(z, max, dz);
                        TensorPrimitives.Exp(dz, dz);
                        float sum = TensorPrimitives.Sum(dz);
                        rowLoss[r] = Math.Log(sum) + max - z[target];
                        TensorPrimitives.Multiply(dz, scale / sum, dz);
                        dz[target] -= scale;
                    }
                });
            }
        }
        double loss = 0;
        int count = 0;
        for (int r = 0; r < m; r++)
            if (targets[r] >= 0) { loss += rowLoss[r]; count++; }
        return (loss, count);
    }

    internal static readonly ParallelOptions ParallelOpts = new() { MaxDegreeOfParallelism = Environment.ProcessorCount };
}

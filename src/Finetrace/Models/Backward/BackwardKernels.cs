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

    // ---------------------------------------------------------------- causal attention

    /// <summary>What the attention kernels need to know about one batch: per row the real-token range (left or right
    /// padding, as <see cref="TokenBatch"/>), and the layer's sliding window (0 = none).</summary>
    public readonly record struct AttentionShape(int Batch, int Seq, int Heads, int KvHeads, int HeadDim, float Scale, int Window,
        int[] FirstReal, int[] LastReal)
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
                    TensorPrimitives.Subtract(p, lseMH[row * sh.Heads + h], p);
                    TensorPrimitives.Exp(p, p);
                    float di = TensorPrimitives.Dot(doRow, oMQ.AsSpan(qo, hd));
                    // dp ← scale · P ⊙ (dP − D)
                    TensorPrimitives.Subtract(dp, di, dp);
                    TensorPrimitives.Multiply(dp, p, dp);
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
        double loss = 0;
        int count = 0;
        for (int r = 0; r < m; r++)
        {
            var z = logitsMV.Slice(r * v, v);
            var dz = dLogitsMV.Slice(r * v, v);
            int target = targets[r];
            if (target < 0) { dz.Clear(); continue; }
            if (target >= v) throw new ArgumentOutOfRangeException(nameof(targets), $"target id {target} (row {r}) is outside the vocabulary of {v}");
            float max = TensorPrimitives.Max(z);
            TensorPrimitives.Subtract(z, max, dz);
            TensorPrimitives.Exp(dz, dz);
            float sum = TensorPrimitives.Sum(dz);
            loss += Math.Log(sum) + max - z[target];
            count++;
            TensorPrimitives.Multiply(dz, scale / sum, dz);
            dz[target] -= scale;
        }
        return (loss, count);
    }

    internal static readonly ParallelOptions ParallelOpts = new() { MaxDegreeOfParallelism = Environment.ProcessorCount };
}

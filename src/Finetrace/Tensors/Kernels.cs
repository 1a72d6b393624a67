using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Finetrace.Tensors;

/// <summary>
/// The element-wise and row-wise float32 kernels the transformers and dictionaries need, written with
/// <see cref="Vector256"/> and fused so each does one pass over memory where the math allows. Each has a slow
/// obvious twin in <see cref="KernelsReference"/> that the tests compare it with.
/// Conventions: parameter order sources, arguments, destinations; a destination may be the very same span as a
/// source (in-place use) but must not partially overlap it; no method allocates.
/// Element-wise operations are written as a small operator struct (the math, one vector at a time) run by a shared
/// driver that owns the loop and the remainder, so the last partial vector is computed by the same code as the rest.
/// </summary>
public static class Kernels
{
    const int V = 8; // Vector256<float>.Count

    // ---------------------------------------------------------------- normalisation

    /// <summary>y = x · 1/sqrt(mean(x²) + eps) · w, or · (1 + w) when <paramref name="onePlusW"/> (Gemma).
    /// As HF's LlamaRMSNorm in float32: the normalised value x·s is rounded first, then multiplied by the weight.</summary>
    // xRD: [rows, D]; w: [D]; yRD: [rows, D]
    public static void RmsNorm(ReadOnlySpan<float> xRD, ReadOnlySpan<float> w, int rows, float eps, bool onePlusW, Span<float> yRD)
    {
        int d = w.Length;
        CheckRows(xRD.Length, yRD.Length, rows, d, nameof(RmsNorm));
        CheckAlias(xRD, yRD);
        for (int r = 0; r < rows; r++)
        {
            var x = xRD.Slice(r * d, d);
            var y = yRD.Slice(r * d, d);
            float ss = SumOfSquares(x);
            float s = 1f / MathF.Sqrt(ss / d + eps);
            ref float px = ref MemoryMarshal.GetReference(x);
            ref float pw = ref MemoryMarshal.GetReference(w);
            ref float py = ref MemoryMarshal.GetReference(y);
            var vs = Vector256.Create(s);
            var one = Vector256.Create(onePlusW ? 1f : 0f);
            int i = 0;
            for (; i <= d - V; i += V)
            {
                var t = Vector256.LoadUnsafe(ref px, (nuint)i) * vs;
                (t * (Vector256.LoadUnsafe(ref pw, (nuint)i) + one)).StoreUnsafe(ref py, (nuint)i);
            }
            float o = onePlusW ? 1f : 0f;
            for (; i < d; i++) y[i] = x[i] * s * (w[i] + o);
        }
    }

    /// <summary>y = (x − mean(x)) / sqrt(var(x) + eps) · w + b with the biased variance (torch.nn.LayerNorm);
    /// <paramref name="b"/> may be empty for a layer norm without bias. Two passes for mean and variance.</summary>
    // xRD: [rows, D]; w: [D]; b: [D] or empty; yRD: [rows, D]
    public static void LayerNorm(ReadOnlySpan<float> xRD, ReadOnlySpan<float> w, ReadOnlySpan<float> b, int rows, float eps, Span<float> yRD)
    {
        int d = w.Length;
        CheckRows(xRD.Length, yRD.Length, rows, d, nameof(LayerNorm));
        if (!b.IsEmpty && b.Length != d) throw new ArgumentException($"LayerNorm: bias has {b.Length} values, weight has {d}");
        CheckAlias(xRD, yRD);
        for (int r = 0; r < rows; r++)
        {
            var x = xRD.Slice(r * d, d);
            var y = yRD.Slice(r * d, d);
            float mean = Sum(x) / d;
            float var = SumOfSquaredDeviations(x, mean) / d;
            float rstd = 1f / MathF.Sqrt(var + eps);
            ref float px = ref MemoryMarshal.GetReference(x);
            ref float pw = ref MemoryMarshal.GetReference(w);
            ref float py = ref MemoryMarshal.GetReference(y);
            var vm = Vector256.Create(mean);
            var vr = Vector256.Create(rstd);
            int i = 0;
            if (b.IsEmpty)
            {
                for (; i <= d - V; i += V)
                    ((Vector256.LoadUnsafe(ref px, (nuint)i) - vm) * vr * Vector256.LoadUnsafe(ref pw, (nuint)i)).StoreUnsafe(ref py, (nuint)i);
                for (; i < d; i++) y[i] = (x[i] - mean) * rstd * w[i];
            }
            else
            {
                ref float pb = ref MemoryMarshal.GetReference(b);
                for (; i <= d - V; i += V)
                    Vector256.FusedMultiplyAdd((Vector256.LoadUnsafe(ref px, (nuint)i) - vm) * vr, Vector256.LoadUnsafe(ref pw, (nuint)i),
                        Vector256.LoadUnsafe(ref pb, (nuint)i)).StoreUnsafe(ref py, (nuint)i);
                for (; i < d; i++) y[i] = MathF.FusedMultiplyAdd((x[i] - mean) * rstd, w[i], b[i]);
            }
        }
    }

    // ---------------------------------------------------------------- softmax

    /// <summary>x_i ← exp(x_i − max x) / Σ_j exp(x_j − max x), in float32. A row of all −∞ (or any NaN) gives NaN,
    /// as in torch.</summary>
    // x: [n], in place
    public static void Softmax(Span<float> x)
    {
        if (x.IsEmpty) return;
        float max = Max(x);
        float sum = ExpSubtractAndSum(x, max, x);
        Scale(x, 1f / sum);
    }

    /// <summary>Softmax over the first <paramref name="valid"/> entries; the rest (masked positions, e.g. future
    /// tokens in causal attention) are set to 0.</summary>
    // x: [n], in place
    public static void Softmax(Span<float> x, int valid)
    {
        if ((uint)valid > (uint)x.Length) throw new ArgumentOutOfRangeException(nameof(valid), $"Softmax: valid={valid} outside [0, {x.Length}]");
        Softmax(x[..valid]);
        x[valid..].Clear();
    }

    /// <summary>y_i = x_i − max x − log Σ_j exp(x_j − max x) (log-probabilities from logits).</summary>
    // x: [n]; y: [n]
    public static void LogSoftmax(ReadOnlySpan<float> x, Span<float> y)
    {
        CheckUnary(x, y);
        if (x.IsEmpty) return;
        float max = Max(x);
        float sum = ExpSubtractAndSum(x, max, default);
        float lse = max + MathF.Log(sum);
        Map(x, y, new SubtractOp(lse));
    }

    // ---------------------------------------------------------------- activations

    /// <summary>y = 0.5 · x · (1 + tanh(sqrt(2/π) · (x + 0.044715 · x³))) (PyTorch gelu, approximate="tanh";
    /// "gelu_pytorch_tanh" / "gelu_new"). Computed as x · sigmoid(2u), an identity that avoids 1 + tanh cancelling.</summary>
    // src: [n]; dst: [n]
    public static void GeluTanh(ReadOnlySpan<float> src, Span<float> dst) => Map(src, dst, default(GeluTanhOp));

    /// <summary>y = 0.5 · x · (1 + erf(x / √2)) (exact GELU, "gelu"), with the float erf of <see cref="Erf(float)"/>.</summary>
    // src: [n]; dst: [n]
    public static void GeluErf(ReadOnlySpan<float> src, Span<float> dst) => Map(src, dst, default(GeluErfOp));

    /// <summary>y = x · sigmoid(x) = x / (1 + exp(−x)).</summary>
    // src: [n]; dst: [n]
    public static void Silu(ReadOnlySpan<float> src, Span<float> dst) => Map(src, dst, default(SiluOp));

    /// <summary>y = silu(gate) · up (the gated MLP of Llama/Qwen/Mistral, fused).</summary>
    // gate: [n]; up: [n]; dst: [n]
    public static void SiluMul(ReadOnlySpan<float> gate, ReadOnlySpan<float> up, Span<float> dst) => Map(gate, up, dst, default(SiluOp));

    /// <summary>y = gelu_tanh(gate) · up (Gemma's gated MLP, fused).</summary>
    // gate: [n]; up: [n]; dst: [n]
    public static void GeluTanhMul(ReadOnlySpan<float> gate, ReadOnlySpan<float> up, Span<float> dst) => Map(gate, up, dst, default(GeluTanhOp));

    /// <summary>y = gelu_erf(gate) · up.</summary>
    // gate: [n]; up: [n]; dst: [n]
    public static void GeluErfMul(ReadOnlySpan<float> gate, ReadOnlySpan<float> up, Span<float> dst) => Map(gate, up, dst, default(GeluErfOp));

    /// <summary>y = exp(x) (about 1 ulp); −∞ → 0, +∞ → +∞, NaN → NaN.</summary>
    // src: [n]; dst: [n]
    public static void Exp(ReadOnlySpan<float> src, Span<float> dst) => Map(src, dst, default(ExpVectorOp));

    /// <summary>x ← tanh(x / cap) · cap (Gemma 2 logit and attention soft-capping).</summary>
    // x: [n], in place
    public static void SoftCap(Span<float> x, float cap)
    {
        if (!(cap > 0)) throw new ArgumentOutOfRangeException(nameof(cap), $"SoftCap: cap must be positive, got {cap}");
        Map(x, x, new SoftCapOp(cap));
    }

    // ---------------------------------------------------------------- rotary embedding

    /// <summary>Rotary position embedding for one position, HF layout (half-split "rotate_half"):
    /// x ← x·cos + rotate_half(x)·sin over the first <paramref name="rotaryDim"/> channels of every head, where
    /// rotate_half(x) = cat(−x[half:rotaryDim], x[:half]); channels past rotaryDim (partial rotary) pass through.
    /// cos/sin are HF's emb = cat(freqs, freqs) tables for this position. The inverse rotation (the backward) is the
    /// same call with −sin.</summary>
    // xHD: [heads, headDim] (one position), in place; cos, sin: [rotaryDim]
    public static void ApplyRope(Span<float> xHD, int heads, int headDim, int rotaryDim, ReadOnlySpan<float> cos, ReadOnlySpan<float> sin)
    {
        if (rotaryDim < 0 || rotaryDim > headDim || (rotaryDim & 1) != 0)
            throw new ArgumentException($"ApplyRope: rotaryDim {rotaryDim} must be even and within headDim {headDim}");
        if (cos.Length < rotaryDim || sin.Length < rotaryDim)
            throw new ArgumentException($"ApplyRope: cos/sin have {cos.Length}/{sin.Length} values, need rotaryDim = {rotaryDim}");
        if (xHD.Length < heads * headDim) throw new ArgumentException($"ApplyRope: x has {xHD.Length} values, need heads·headDim = {heads * headDim}");
        int half = rotaryDim / 2;
        ref float pc = ref MemoryMarshal.GetReference(cos);
        ref float ps = ref MemoryMarshal.GetReference(sin);
        for (int h = 0; h < heads; h++)
        {
            ref float px = ref MemoryMarshal.GetReference(xHD.Slice(h * headDim, headDim));
            int i = 0;
            for (; i <= half - V; i += V)
            {
                nuint lo = (nuint)i, hi = (nuint)(i + half);
                var x1 = Vector256.LoadUnsafe(ref px, lo);
                var x2 = Vector256.LoadUnsafe(ref px, hi);
                (x1 * Vector256.LoadUnsafe(ref pc, lo) - x2 * Vector256.LoadUnsafe(ref ps, lo)).StoreUnsafe(ref px, lo);
                (x2 * Vector256.LoadUnsafe(ref pc, hi) + x1 * Vector256.LoadUnsafe(ref ps, hi)).StoreUnsafe(ref px, hi);
            }
            for (; i < half; i++)
            {
                float x1 = Unsafe.Add(ref px, i), x2 = Unsafe.Add(ref px, i + half);
                Unsafe.Add(ref px, i) = x1 * Unsafe.Add(ref pc, i) - x2 * Unsafe.Add(ref ps, i);
                Unsafe.Add(ref px, i + half) = x2 * Unsafe.Add(ref pc, i + half) + x1 * Unsafe.Add(ref ps, i + half);
            }
        }
    }

    // ---------------------------------------------------------------- attention

    /// <summary>Floats of scratch <see cref="AttendGroup"/> needs for <paramref name="nk"/> keys of head dim <paramref name="hd"/>.</summary>
    public static int AttendGroupScratch(int hd, int nk) => (2 * hd + 1) * AttendKeyStride(nk);

    /// <summary>Keys per row of the transposed key copy: nk rounded up to whole vectors, plus one vector, so that the
    /// last (partial) vector of any query's visible keys can be read whole (its extra lanes are masked).</summary>
    static int AttendKeyStride(int nk) => ((nk + V - 1) & ~(V - 1)) + V;

    /// <summary>Eager causal attention of the <paramref name="heads"/> query heads that share one key/value head (GQA),
    /// over one sequence: for query i (absolute position a = qOffset + i) the visible keys are
    /// j ∈ [max(keyFirst, a − window + 1 if window &gt; 0), min(a, keyLast, nk − 1)];
    /// s_j = cap(Σ_d (q_i,d·scale)·k_j,d) (cap = softcap·tanh(·/softcap) when given), p = softmax(s) over the visible keys
    /// only, o_i = Σ_j p_j·v_j; a query with no visible key (padding) gets o_i = 0; a NaN or infinite score among the
    /// visible keys gives a NaN row (as the exact softmax would), masked keys never matter.
    /// The keys and values are copied once for all heads of the group, transposed ([hd, keys]: consecutive keys are
    /// consecutive floats), so that both stay in cache while every query reads them and a head dim of 8 still fills the
    /// vectors. Per query head: the scores are hd vector FMAs per eight keys (four vectors in flight), the running maximum
    /// is kept in the same pass, the last partial vector is computed whole and its extra lanes masked to −∞ (no scalar
    /// remainder); the exponentials and o = Σ e_j·v_j (one FMA per eight keys and head dimension) are one pass
    /// (<see cref="SoftmaxWeightValues"/>), and the softmax's normalisation 1/Σe scales the output. The order of
    /// every sum is fixed (it does not depend on the thread or the batch).</summary>
    // q, o: query i, head r at [i·qStride + r·hd .. +hd] (r &lt; heads); k, v: key j at [j·kvStride .. +hd];
    // scratch: at least AttendGroupScratch(hd, nk) floats
    public static void AttendGroup(ReadOnlySpan<float> q, int qStride, int nq, int qOffset, int heads, ReadOnlySpan<float> k, ReadOnlySpan<float> v,
        int kvStride, int nk, int hd, int keyFirst, int keyLast, int window, float scale, float? softcap, Span<float> o, Span<float> scratch)
    {
        if (nq <= 0 || nk <= 0 || heads <= 0) return;
        if (hd <= 0 || qStride < heads * hd || kvStride < hd)
            throw new ArgumentException($"AttendGroup: {heads} heads of dim {hd} with strides q {qStride}, kv {kvStride}");
        int qNeed = (nq - 1) * qStride + heads * hd;
        if (q.Length < qNeed || o.Length < qNeed)
            throw new ArgumentException($"AttendGroup: {nq} query rows of stride {qStride} with {heads} heads need {qNeed} floats; q has {q.Length}, o {o.Length}");
        if (k.Length < (nk - 1) * kvStride + hd || v.Length < (nk - 1) * kvStride + hd)
            throw new ArgumentException($"AttendGroup: {nk} key rows of stride {kvStride} need {(nk - 1) * kvStride + hd} floats; k has {k.Length}, v {v.Length}");
        if (scratch.Length < AttendGroupScratch(hd, nk))
            throw new ArgumentException($"AttendGroup: scratch holds {scratch.Length} floats, needs {AttendGroupScratch(hd, nk)}");
        int ld = AttendKeyStride(nk);
        int lastKey = Math.Min(keyLast, nk - 1), firstKey = Math.Max(keyFirst, 0);
        if (firstKey > lastKey)
        {
            // no real key: every query is padding
            for (int i = 0; i < nq; i++) o.Slice(i * qStride, heads * hd).Clear();
            return;
        }
        // kT, vT [hd, ld]: keys and values transposed; e [ld]: one query's scores, then exponentials.
        var kT = scratch[..(hd * ld)];
        var vT = scratch.Slice(hd * ld, hd * ld);
        var e = scratch.Slice(2 * hd * ld, ld);
        for (int j = firstKey; j <= lastKey; j++)
        {
            var kRow = k.Slice(j * kvStride, hd);
            var vRow = v.Slice(j * kvStride, hd);
            for (int d = 0; d < hd; d++) { kT[d * ld + j] = kRow[d]; vT[d * ld + j] = vRow[d]; }
        }
        // Lanes past the visible keys are read (scores masked to −∞, weights 0): keep them finite so that no NaN
        // pattern left in the scratch reaches a product. Only the one vector after lastKey can be read.
        for (int d = 0; d < hd; d++)
        {
            kT.Slice(d * ld + lastKey + 1, V).Clear();
            vT.Slice(d * ld + lastKey + 1, V).Clear();
        }

        Span<float> qs = hd <= 256 ? stackalloc float[hd] : new float[hd];
        for (int i = 0; i < nq; i++)
        {
            int abs = qOffset + i;
            int first = Math.Max(firstKey, window > 0 ? abs - window + 1 : 0);
            int last = Math.Min(abs, lastKey);
            for (int r = 0; r < heads; r++)
            {
                var oRow = o.Slice(i * qStride + r * hd, hd);
                if (first > last) { oRow.Clear(); continue; }
                var qRow = q.Slice(i * qStride + r * hd, hd);
                for (int d = 0; d < hd; d++) qs[d] = qRow[d] * scale;
                int n = last - first + 1;
                float max = AttendScores(qs, kT, ld, first, n, e, out bool finite);
                if (softcap is { } cap)
                {
                    var s = e[..n];
                    SoftCap(s, cap);
                    max = Max(s);
                    int tail = ((n + V - 1) & ~(V - 1)) - n;
                    e.Slice(n, tail).Fill(float.NegativeInfinity);
                }
                if (!finite) { oRow.Fill(float.NaN); continue; }
                SoftmaxWeightValues(e[..((n + V - 1) & ~(V - 1))], max, vT, ld, first, oRow);
            }
        }
    }

    /// <summary>e[t] = Σ_d qs[d]·kT[d, first + t] for t &lt; n (Σ over d in ascending order), lanes t ∈ [n, n rounded up to
    /// a vector) set to −∞; returns max_t e[t]. <paramref name="finite"/> is false when a score is NaN or ±∞.</summary>
    // qs: [hd] (scaled query); kT: [hd, ld]; e: [≥ n rounded up to V]
    static float AttendScores(ReadOnlySpan<float> qs, ReadOnlySpan<float> kT, int ld, int first, int n, Span<float> e, out bool finite)
    {
        int hd = qs.Length;
        ref float pk = ref Unsafe.Add(ref MemoryMarshal.GetReference(kT), first);
        ref float pq = ref MemoryMarshal.GetReference(qs);
        ref float ps = ref MemoryMarshal.GetReference(e);
        var vmax = Vector256.Create(float.NegativeInfinity);
        // check accumulates s·0: 0 while every score is finite, NaN otherwise.
        var check = Vector256<float>.Zero;
        int j = 0, full = n & ~(V - 1);
        if (hd == V)
        {
            // Head dim 8 (small models): the query's eight values stay in registers for all keys; the same sums, in
            // the same order, as the general loop below.
            var q0 = Vector256.Create(pq); var q1 = Vector256.Create(Unsafe.Add(ref pq, 1));
            var q2 = Vector256.Create(Unsafe.Add(ref pq, 2)); var q3 = Vector256.Create(Unsafe.Add(ref pq, 3));
            var q4 = Vector256.Create(Unsafe.Add(ref pq, 4)); var q5 = Vector256.Create(Unsafe.Add(ref pq, 5));
            var q6 = Vector256.Create(Unsafe.Add(ref pq, 6)); var q7 = Vector256.Create(Unsafe.Add(ref pq, 7));
            ref float k0 = ref pk; ref float k1 = ref Unsafe.Add(ref pk, ld); ref float k2 = ref Unsafe.Add(ref pk, 2 * ld);
            ref float k3 = ref Unsafe.Add(ref pk, 3 * ld); ref float k4 = ref Unsafe.Add(ref pk, 4 * ld); ref float k5 = ref Unsafe.Add(ref pk, 5 * ld);
            ref float k6 = ref Unsafe.Add(ref pk, 6 * ld); ref float k7 = ref Unsafe.Add(ref pk, 7 * ld);
            for (; j <= full - 2 * V; j += 2 * V)
            {
                nuint u = (nuint)j, w = (nuint)(j + V);
                var a0 = Vector256.FusedMultiplyAdd(q0, Vector256.LoadUnsafe(ref k0, u), Vector256<float>.Zero);
                var a1 = Vector256.FusedMultiplyAdd(q0, Vector256.LoadUnsafe(ref k0, w), Vector256<float>.Zero);
                a0 = Vector256.FusedMultiplyAdd(q1, Vector256.LoadUnsafe(ref k1, u), a0); a1 = Vector256.FusedMultiplyAdd(q1, Vector256.LoadUnsafe(ref k1, w), a1);
                a0 = Vector256.FusedMultiplyAdd(q2, Vector256.LoadUnsafe(ref k2, u), a0); a1 = Vector256.FusedMultiplyAdd(q2, Vector256.LoadUnsafe(ref k2, w), a1);
                a0 = Vector256.FusedMultiplyAdd(q3, Vector256.LoadUnsafe(ref k3, u), a0); a1 = Vector256.FusedMultiplyAdd(q3, Vector256.LoadUnsafe(ref k3, w), a1);
                a0 = Vector256.FusedMultiplyAdd(q4, Vector256.LoadUnsafe(ref k4, u), a0); a1 = Vector256.FusedMultiplyAdd(q4, Vector256.LoadUnsafe(ref k4, w), a1);
                a0 = Vector256.FusedMultiplyAdd(q5, Vector256.LoadUnsafe(ref k5, u), a0); a1 = Vector256.FusedMultiplyAdd(q5, Vector256.LoadUnsafe(ref k5, w), a1);
                a0 = Vector256.FusedMultiplyAdd(q6, Vector256.LoadUnsafe(ref k6, u), a0); a1 = Vector256.FusedMultiplyAdd(q6, Vector256.LoadUnsafe(ref k6, w), a1);
                a0 = Vector256.FusedMultiplyAdd(q7, Vector256.LoadUnsafe(ref k7, u), a0); a1 = Vector256.FusedMultiplyAdd(q7, Vector256.LoadUnsafe(ref k7, w), a1);
                a0.StoreUnsafe(ref ps, u);
                a1.StoreUnsafe(ref ps, w);
                vmax = Vector256.MaxNative(vmax, Vector256.MaxNative(a0, a1));
                check = Vector256.FusedMultiplyAdd(a0 + a1, Vector256<float>.Zero, check);
            }
        }
        for (; j <= full - 4 * V; j += 4 * V)
        {
            Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default;
            ref float kd = ref Unsafe.Add(ref pk, j);
            for (int d = 0; d < hd; d++, kd = ref Unsafe.Add(ref kd, ld))
            {
                var qd = Vector256.Create(Unsafe.Add(ref pq, d));
                a0 = Vector256.FusedMultiplyAdd(qd, Vector256.LoadUnsafe(ref kd), a0);
                a1 = Vector256.FusedMultiplyAdd(qd, Vector256.LoadUnsafe(ref kd, V), a1);
                a2 = Vector256.FusedMultiplyAdd(qd, Vector256.LoadUnsafe(ref kd, 2 * V), a2);
                a3 = Vector256.FusedMultiplyAdd(qd, Vector256.LoadUnsafe(ref kd, 3 * V), a3);
            }
            a0.StoreUnsafe(ref ps, (nuint)j);
            a1.StoreUnsafe(ref ps, (nuint)(j + V));
            a2.StoreUnsafe(ref ps, (nuint)(j + 2 * V));
            a3.StoreUnsafe(ref ps, (nuint)(j + 3 * V));
            vmax = Vector256.MaxNative(vmax, Vector256.MaxNative(Vector256.MaxNative(a0, a1), Vector256.MaxNative(a2, a3)));
            check = Vector256.FusedMultiplyAdd((a0 + a1) + (a2 + a3), Vector256<float>.Zero, check);
        }
        for (; j < n; j += V)
        {
            var acc = Vector256<float>.Zero;
            ref float row = ref Unsafe.Add(ref pk, j);
            for (int d = 0; d < hd; d++)
                acc = Vector256.FusedMultiplyAdd(Vector256.Create(Unsafe.Add(ref pq, d)), Vector256.LoadUnsafe(ref row, (nuint)(d * ld)), acc);
            if (j + V > n)
            {
                // the last partial vector: lanes past n are other keys (or zeros) and must not count
                var valid = Vector256.LessThan(Vector256.Create(j) + Vector256.Create(0, 1, 2, 3, 4, 5, 6, 7), Vector256.Create(n)).AsSingle();
                check = Vector256.FusedMultiplyAdd(acc & valid, Vector256<float>.Zero, check);
                acc = Vector256.ConditionalSelect(valid, acc, Vector256.Create(float.NegativeInfinity));
            }
            else check = Vector256.FusedMultiplyAdd(acc, Vector256<float>.Zero, check);
            acc.StoreUnsafe(ref ps, (nuint)j);
            vmax = Vector256.MaxNative(vmax, acc);
        }
        finite = Vector256.Sum(check) == 0f;
        var m4 = Vector128.MaxNative(vmax.GetLower(), vmax.GetUpper());
        m4 = Vector128.MaxNative(m4, Vector128.Shuffle(m4, Vector128.Create(2, 3, 0, 1)));
        return float.MaxNative(m4[0], m4[1]);
    }

    /// <summary>x ← exp(x − max) in place over whole vectors (−∞ lanes give 0), returning Σ exp(x − max). With every
    /// x ≤ max: t = (x − max)·log2(e), clamped at −127, 2^t = 2^round(t) · p(t − round(t)), p a degree-5 polynomial fit
    /// to 2^f on [−½, ½] (relative error 1.6e-7; below 2.5e-7 with float rounding, tested); 2^round(t) is built in the exponent bits (−127 gives 0). The
    /// relative error grows with |x − max| by the rounding of t (about 4e-8·|x − max|), i.e. only where exp is tiny.</summary>
    // x: [n], n a multiple of V, in place
    static float Exp2Softmax(Span<float> x, float max)
    {
        ref float px = ref MemoryMarshal.GetReference(x);
        var vm = Vector256.Create(max);
        Vector256<float> s0 = default, s1 = default;
        int n = x.Length, i = 0;
        for (; i <= n - 2 * V; i += 2 * V)
        {
            var e0 = Exp2NonPositive((Vector256.LoadUnsafe(ref px, (nuint)i) - vm) * Vector256.Create(Log2E));
            var e1 = Exp2NonPositive((Vector256.LoadUnsafe(ref px, (nuint)(i + V)) - vm) * Vector256.Create(Log2E));
            e0.StoreUnsafe(ref px, (nuint)i); e1.StoreUnsafe(ref px, (nuint)(i + V));
            s0 += e0; s1 += e1;
        }
        for (; i < n; i += V)
        {
            var e0 = Exp2NonPositive((Vector256.LoadUnsafe(ref px, (nuint)i) - vm) * Vector256.Create(Log2E));
            e0.StoreUnsafe(ref px, (nuint)i);
            s0 += e0;
        }
        return Vector256.Sum(s0 + s1);
    }

    const float Log2E = 1.44269504f;

    /// <summary>2^t for t ≤ 0 (t ≤ −127 and −∞ give 0; relative error below 2.5e-7), as described at <see cref="Exp2Softmax"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector256<float> Exp2NonPositive(Vector256<float> t)
    {
        t = Vector256.MaxNative(t, Vector256.Create(-127f));
        var k = Vector256.Round(t);
        var f = t - k;                                                           // exact, |f| ≤ ½
        var p = Vector256.Create(1.339086331e-3f);
        p = Vector256.FusedMultiplyAdd(p, f, Vector256.Create(9.676031768e-3f));
        p = Vector256.FusedMultiplyAdd(p, f, Vector256.Create(5.550356954e-2f));
        p = Vector256.FusedMultiplyAdd(p, f, Vector256.Create(2.402210683e-1f));
        p = Vector256.FusedMultiplyAdd(p, f, Vector256.Create(6.931471825e-1f));
        p = Vector256.FusedMultiplyAdd(p, f, Vector256.Create(1.000000119f));
        // k is a whole number in [−127, 0]: the plain (native) conversion is exact, no saturation fix-ups needed
        var twoK = (Vector256.ConvertToInt32Native(k) + Vector256.Create(127)) << 23;   // k = −127 gives +0
        return p * twoK.AsSingle();
    }

    /// <summary>The softmax of the scores and the weighted sum of the values in one pass over the keys:
    /// e[t] = exp(s[t] − max) (as <see cref="Exp2Softmax"/>, written back for later head dimensions), then
    /// o[d] = (Σ_t e[t]·vT[d, first + t]) / Σ_t e[t] over whole vectors of keys (e is 0 past the visible keys). Eight head
    /// dimensions at a time, each with its own accumulator (lane l adds keys t ≡ l mod 8 in ascending t): one vector of
    /// e serves all eight; the first eight dimensions take e straight from the exponential, later ones reread it.</summary>
    // s: [n] scores in, exponentials out, n a multiple of V; vT: [hd, ld]; o: [hd]
    static void SoftmaxWeightValues(Span<float> s, float max, ReadOnlySpan<float> vT, int ld, int first, Span<float> o)
    {
        int hd = o.Length, n = s.Length;
        if (hd < V)
        {
            float invSmall = 1f / Exp2Softmax(s, max);
            WeightValues(s, vT, ld, first, 0, invSmall, o);
            return;
        }
        ref float pe = ref MemoryMarshal.GetReference(s);
        ref float r0 = ref Unsafe.Add(ref MemoryMarshal.GetReference(vT), first);
        ref float r1 = ref Unsafe.Add(ref r0, ld); ref float r2 = ref Unsafe.Add(ref r0, 2 * ld); ref float r3 = ref Unsafe.Add(ref r0, 3 * ld);
        ref float r4 = ref Unsafe.Add(ref r0, 4 * ld); ref float r5 = ref Unsafe.Add(ref r0, 5 * ld); ref float r6 = ref Unsafe.Add(ref r0, 6 * ld);
        ref float r7 = ref Unsafe.Add(ref r0, 7 * ld);
        var vm = Vector256.Create(max);
        Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default, a4 = default, a5 = default, a6 = default, a7 = default, sum = default;
        for (int t = 0; t < n; t += V)
        {
            nuint u = (nuint)t;
            var et = Exp2NonPositive((Vector256.LoadUnsafe(ref pe, u) - vm) * Vector256.Create(Log2E));
            et.StoreUnsafe(ref pe, u);
            sum += et;
            a0 = Vector256.FusedMultiplyAdd(et, Vector256.LoadUnsafe(ref r0, u), a0);
            a1 = Vector256.FusedMultiplyAdd(et, Vector256.LoadUnsafe(ref r1, u), a1);
            a2 = Vector256.FusedMultiplyAdd(et, Vector256.LoadUnsafe(ref r2, u), a2);
            a3 = Vector256.FusedMultiplyAdd(et, Vector256.LoadUnsafe(ref r3, u), a3);
            a4 = Vector256.FusedMultiplyAdd(et, Vector256.LoadUnsafe(ref r4, u), a4);
            a5 = Vector256.FusedMultiplyAdd(et, Vector256.LoadUnsafe(ref r5, u), a5);
            a6 = Vector256.FusedMultiplyAdd(et, Vector256.LoadUnsafe(ref r6, u), a6);
            a7 = Vector256.FusedMultiplyAdd(et, Vector256.LoadUnsafe(ref r7, u), a7);
        }
        float inv = 1f / LaneSum(sum);
        (LaneSums(a0, a1, a2, a3, a4, a5, a6, a7) * Vector256.Create(inv)).StoreUnsafe(ref MemoryMarshal.GetReference(o));
        if (hd > V) WeightValues(s, vT, ld, first, V, inv, o);
    }

    /// <summary>o[d] = (Σ_t e[t]·vT[d, first + t]) · inv for d ≥ <paramref name="from"/>, over whole vectors of keys, in
    /// the order <see cref="SoftmaxWeightValues"/> states.</summary>
    // e: [n], n a multiple of V; vT: [hd, ld]; o: [hd]
    static void WeightValues(ReadOnlySpan<float> e, ReadOnlySpan<float> vT, int ld, int first, int from, float inv, Span<float> o)
    {
        int hd = o.Length, n = e.Length;
        ref float pe = ref MemoryMarshal.GetReference(e);
        ref float pv = ref Unsafe.Add(ref MemoryMarshal.GetReference(vT), first);
        var vinv = Vector256.Create(inv);
        int c = from;
        for (; c <= hd - V; c += V)
        {
            Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default, a4 = default, a5 = default, a6 = default, a7 = default;
            ref float r0 = ref Unsafe.Add(ref pv, c * ld);
            ref float r1 = ref Unsafe.Add(ref r0, ld); ref float r2 = ref Unsafe.Add(ref r0, 2 * ld); ref float r3 = ref Unsafe.Add(ref r0, 3 * ld);
            ref float r4 = ref Unsafe.Add(ref r0, 4 * ld); ref float r5 = ref Unsafe.Add(ref r0, 5 * ld); ref float r6 = ref Unsafe.Add(ref r0, 6 * ld);
            ref float r7 = ref Unsafe.Add(ref r0, 7 * ld);
            for (int t = 0; t < n; t += V)
            {
                nuint u = (nuint)t;
                var et = Vector256.LoadUnsafe(ref pe, u);
                a0 = Vector256.FusedMultiplyAdd(et, Vector256.LoadUnsafe(ref r0, u), a0);
                a1 = Vector256.FusedMultiplyAdd(et, Vector256.LoadUnsafe(ref r1, u), a1);
                a2 = Vector256.FusedMultiplyAdd(et, Vector256.LoadUnsafe(ref r2, u), a2);
                a3 = Vector256.FusedMultiplyAdd(et, Vector256.LoadUnsafe(ref r3, u), a3);
                a4 = Vector256.FusedMultiplyAdd(et, Vector256.LoadUnsafe(ref r4, u), a4);
                a5 = Vector256.FusedMultiplyAdd(et, Vector256.LoadUnsafe(ref r5, u), a5);
                a6 = Vector256.FusedMultiplyAdd(et, Vector256.LoadUnsafe(ref r6, u), a6);
                a7 = Vector256.FusedMultiplyAdd(et, Vector256.LoadUnsafe(ref r7, u), a7);
            }
            (LaneSums(a0, a1, a2, a3, a4, a5, a6, a7) * vinv).StoreUnsafe(ref MemoryMarshal.GetReference(o), (nuint)c);
        }
        for (; c < hd; c++)
        {
            var acc = Vector256<float>.Zero;
            ref float rc = ref Unsafe.Add(ref pv, c * ld);
            for (int t = 0; t < n; t += V) acc = Vector256.FusedMultiplyAdd(Vector256.LoadUnsafe(ref pe, (nuint)t), Vector256.LoadUnsafe(ref rc, (nuint)t), acc);
            o[c] = LaneSum(acc) * inv;
        }
    }

    /// <summary>[Σ lanes of a0, …, Σ lanes of a7], each as <see cref="LaneSum"/> adds them: ((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7)).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<float> LaneSums(Vector256<float> a0, Vector256<float> a1, Vector256<float> a2, Vector256<float> a3,
        Vector256<float> a4, Vector256<float> a5, Vector256<float> a6, Vector256<float> a7)
    {
        if (Avx.IsSupported)
        {
            // hadd pairs neighbouring lanes within each 128-bit half: two rounds give each half's four-lane sums,
            // the last step adds the halves.
            var h0123 = Avx.HorizontalAdd(Avx.HorizontalAdd(a0, a1), Avx.HorizontalAdd(a2, a3));
            var h4567 = Avx.HorizontalAdd(Avx.HorizontalAdd(a4, a5), Avx.HorizontalAdd(a6, a7));
            return Avx.Permute2x128(h0123, h4567, 0x20) + Avx.Permute2x128(h0123, h4567, 0x31);
        }
        return Vector256.Create(LaneSum(a0), LaneSum(a1), LaneSum(a2), LaneSum(a3), LaneSum(a4), LaneSum(a5), LaneSum(a6), LaneSum(a7));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static float LaneSum(Vector256<float> a) => ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));

    // ---------------------------------------------------------------- selection

    /// <summary>The indices of the <paramref name="k"/> largest values of <paramref name="x"/>, written to
    /// <paramref name="indices"/>[..k] ordered by value descending, equal values by index ascending (the lower index
    /// wins a tie). NaN ranks above every number, as in torch.topk. A bounded min-heap over one pass, with a vector
    /// pre-filter that skips blocks of eight values none of which beats the current k-th best.</summary>
    // x: [n]; indices: [≥k]
    public static void TopK(ReadOnlySpan<float> x, int k, Span<int> indices)
    {
        if (k < 0 || k > x.Length) throw new ArgumentOutOfRangeException(nameof(k), $"TopK: k={k} outside [0, {x.Length}]");
        if (indices.Length < k) throw new ArgumentException($"TopK: indices has room for {indices.Length}, need k={k}");
        if (k == 0) return;
        var heap = indices[..k];
        // heap[0] is the worst selected entry. Fill with the first k, heapify.
        for (int i = 0; i < k; i++) heap[i] = i;
        for (int i = k / 2 - 1; i >= 0; i--) SiftDown(x, heap, i, k);
        int j = k, n = x.Length;
        ref float px = ref MemoryMarshal.GetReference(x);
        while (j < n)
        {
            float worst = x[heap[0]];
            // Later indices lose ties, so a candidate enters only when strictly better than the worst.
            if (float.IsNaN(worst))
            {
                // every selected value is NaN-or-better; only nothing beats a NaN at a lower index
                break;
            }
            var vw = Vector256.Create(worst);
            while (j <= n - V)
            {
                var v = Vector256.LoadUnsafe(ref px, (nuint)j);
                var hit = Vector256.GreaterThan(v, vw) | ~Vector256.Equals(v, v);
                if (Vector256.ExtractMostSignificantBits(hit) != 0) break;
                j += V;
            }
            int end = Math.Min(n, j + V);
            for (; j < end; j++)
            {
                float v = x[j];
                if (v > worst || (float.IsNaN(v) && !float.IsNaN(worst)))
                {
                    heap[0] = j;
                    SiftDown(x, heap, 0, k);
                    worst = x[heap[0]];
                    if (float.IsNaN(worst)) { j++; break; }
                }
            }
        }
        // Heap sort: move the worst to the end repeatedly, which leaves the best first.
        for (int end = k - 1; end > 0; end--)
        {
            (heap[0], heap[end]) = (heap[end], heap[0]);
            SiftDown(x, heap, 0, end);
        }
    }

    // a ranks below b: smaller value, or equal value and higher index; NaN is the largest value.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static bool Worse(ReadOnlySpan<float> x, int a, int b)
    {
        float va = x[a], vb = x[b];
        bool na = float.IsNaN(va), nb = float.IsNaN(vb);
        if (na | nb) return na == nb ? a > b : nb;
        return va < vb || (va == vb && a > b);
    }

    static void SiftDown(ReadOnlySpan<float> x, Span<int> heap, int i, int count)
    {
        while (true)
        {
            int l = 2 * i + 1;
            if (l >= count) return;
            int r = l + 1, m = r < count && Worse(x, heap[r], heap[l]) ? r : l;
            if (!Worse(x, heap[m], heap[i])) return;
            (heap[i], heap[m]) = (heap[m], heap[i]);
            i = m;
        }
    }

    // ---------------------------------------------------------------- erf

    /// <summary>erf(x) in double precision, absolute error below 1e-13: the Maclaurin series for |x| &lt; 2.5, the
    /// Laplace continued fraction for erfc beyond, ±1 past 6 (erfc(6) ≈ 2e-17). Used by the references.</summary>
    public static double Erf(double x)
    {
        if (double.IsNaN(x)) return double.NaN;
        double ax = Math.Abs(x);
        if (ax >= 6) return Math.Sign(x);
        if (ax < 2.5)
        {
            // erf x = 2/√π Σ (−1)^n x^(2n+1) / (n! (2n+1))
            double x2 = x * x, term = x, sum = x;
            for (int n = 1; n < 200; n++)
            {
                term *= -x2 / n;
                double t = term / (2 * n + 1);
                sum += t;
                if (Math.Abs(t) < 1e-17 * Math.Abs(sum)) break;
            }
            return 2 / Math.Sqrt(Math.PI) * sum;
        }
        // erfc x = exp(−x²)/√π · 1/(x + (1/2)/(x + 1/(x + (3/2)/(x + …)))), evaluated from the tail
        double f = ax;
        for (int n = 80; n >= 1; n--) f = ax + n * 0.5 / f;
        double erfc = Math.Exp(-ax * ax) / Math.Sqrt(Math.PI) / f;
        return Math.Sign(x) * (1 - erfc);
    }

    /// <summary>erf(x) in float32, absolute error about 1e-7: the Maclaurin series for |x| &lt; 1, else
    /// 1 − erfc(|x|) with Numerical Recipes' Chebyshev erfc (fractional error 1.2e-7).</summary>
    public static float Erf(float x) => ErfOp.Invoke(Vector256.Create(x)).GetElement(0);

    // ---------------------------------------------------------------- operators (the math of one vector)

    interface IUnaryOp { Vector256<float> Invoke(Vector256<float> x); }

    readonly struct GeluTanhOp : IUnaryOp
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public Vector256<float> Invoke(Vector256<float> x)
        {
            // 0.5(1 + tanh u) = sigmoid(2u), with 2u = 2√(2/π)(x + 0.044715 x³)
            const float c = 1.5957691216057308f; // 2·sqrt(2/π)
            var x2 = x * x;
            var twoU = x * Vector256.FusedMultiplyAdd(x2, Vector256.Create(c * 0.044715f), Vector256.Create(c));
            return x / (Vector256<float>.One + ExpOp.Invoke(-twoU));
        }
    }

    readonly struct GeluErfOp : IUnaryOp
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public Vector256<float> Invoke(Vector256<float> x)
        {
            // 0.5(1 + erf(x/√2)) = 0.5·erfc(−x/√2): through erfc there is no cancellation for negative x, where
            // 1 + erf(x/√2) would lose all relative precision.
            var c = ErfcOp.Invoke(Vector256.Abs(x) * Vector256.Create(0.70710678118654752f));
            var phi2 = Vector256.ConditionalSelect(Vector256.LessThan(x, Vector256<float>.Zero), c, Vector256.Create(2f) - c);
            return Vector256.Create(0.5f) * x * phi2;
        }
    }

    readonly struct SiluOp : IUnaryOp
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public Vector256<float> Invoke(Vector256<float> x) => x / (Vector256<float>.One + ExpOp.Invoke(-x));
    }

    readonly struct ExpVectorOp : IUnaryOp
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public Vector256<float> Invoke(Vector256<float> x) => ExpOp.Invoke(x);
    }

    /// exp(x) through <see cref="Vector256.Exp(Vector256{float})"/> (.NET 9+, evaluated in double, ~1 ulp). A
    /// hand-written Cody–Waite + degree-7 polynomial float exp measured no faster here, so the accurate one stays.
    internal static class ExpOp
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<float> Invoke(Vector256<float> x) => Vector256.Exp(x);
    }

    readonly struct SubtractOp(float s) : IUnaryOp
    {
        readonly float _s = s;
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public Vector256<float> Invoke(Vector256<float> x) => x - Vector256.Create(_s);
    }

    readonly struct SoftCapOp(float cap) : IUnaryOp
    {
        readonly float _cap = cap;
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public Vector256<float> Invoke(Vector256<float> x) => TanhOp.Invoke(x / Vector256.Create(_cap)) * Vector256.Create(_cap);
    }

    static class TanhOp
    {
        /// tanh u: the Maclaurin series through u¹⁵ for |u| &lt; 0.5 (truncation below 1e-8 relative), else
        /// sign(u)·(1 − 2/(exp(2|u|) + 1)), which has no cancellation there and saturates to ±1 without overflow.
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<float> Invoke(Vector256<float> u)
        {
            var a = Vector256.Abs(u);
            var big = Vector256<float>.One - Vector256.Create(2f) / (ExpOp.Invoke(a + a) + Vector256<float>.One);
            big = Vector256.CopySign(big, u);
            var u2 = u * u;
            var p = Vector256.Create(-929569f / 638512875f);
            p = Vector256.FusedMultiplyAdd(p, u2, Vector256.Create(21844f / 6081075f));
            p = Vector256.FusedMultiplyAdd(p, u2, Vector256.Create(-1382f / 155925f));
            p = Vector256.FusedMultiplyAdd(p, u2, Vector256.Create(62f / 2835f));
            p = Vector256.FusedMultiplyAdd(p, u2, Vector256.Create(-17f / 315f));
            p = Vector256.FusedMultiplyAdd(p, u2, Vector256.Create(2f / 15f));
            p = Vector256.FusedMultiplyAdd(p, u2, Vector256.Create(-1f / 3f));
            var small = Vector256.FusedMultiplyAdd(p * u2, u, u);
            return Vector256.ConditionalSelect(Vector256.LessThan(a, Vector256.Create(0.5f)), small, big);
        }
    }

    static class ErfcOp
    {
        /// erfc(z) for z ≥ 0 with fractional error below 1.2e-7 (in exact arithmetic): the Chebyshev fit
        /// t·exp(−z² + P(t)), t = 1/(1 + z/2), of Numerical Recipes' erfcc. Underflows to 0 past z ≈ 10.
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<float> Invoke(Vector256<float> z)
        {
            var t = Vector256<float>.One / Vector256.FusedMultiplyAdd(z, Vector256.Create(0.5f), Vector256<float>.One);
            var p = Vector256.Create(0.17087277f);
            p = Vector256.FusedMultiplyAdd(p, t, Vector256.Create(-0.82215223f));
            p = Vector256.FusedMultiplyAdd(p, t, Vector256.Create(1.48851587f));
            p = Vector256.FusedMultiplyAdd(p, t, Vector256.Create(-1.13520398f));
            p = Vector256.FusedMultiplyAdd(p, t, Vector256.Create(0.27886807f));
            p = Vector256.FusedMultiplyAdd(p, t, Vector256.Create(-0.18628806f));
            p = Vector256.FusedMultiplyAdd(p, t, Vector256.Create(0.09678418f));
            p = Vector256.FusedMultiplyAdd(p, t, Vector256.Create(0.37409196f));
            p = Vector256.FusedMultiplyAdd(p, t, Vector256.Create(1.00002368f));
            p = Vector256.FusedMultiplyAdd(p, t, Vector256.Create(-1.26551223f));
            return t * ExpOp.Invoke(Vector256.FusedMultiplyAdd(-z, z, p));
        }
    }

    static class ErfOp
    {
        /// erf x: the Maclaurin series through x²³ for |x| &lt; 1 (truncation below 1e-9), else sign(x)·(1 − erfc|x|).
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<float> Invoke(Vector256<float> x)
        {
            var a = Vector256.Abs(x);
            var big = Vector256.CopySign(Vector256<float>.One - ErfcOp.Invoke(a), x);
            var x2 = x * x;
            // 2/√π · Σ (−1)^n x^(2n+1) / (n!(2n+1)), n = 0..11, Horner in x²
            var p = Vector256.Create(Coef(11));
            for (int n = 10; n >= 0; n--) p = Vector256.FusedMultiplyAdd(p, x2, Vector256.Create(Coef(n)));
            return Vector256.ConditionalSelect(Vector256.LessThan(a, Vector256<float>.One), p * x, big);
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        static float Coef(int n) => Coefs[n];

        static readonly float[] Coefs = MakeCoefs();

        static float[] MakeCoefs()
        {
            var c = new float[12];
            double f = 1;
            for (int n = 0; n < 12; n++)
            {
                if (n > 0) f *= n;
                c[n] = (float)((n % 2 == 0 ? 1 : -1) * 2 / Math.Sqrt(Math.PI) / (f * (2 * n + 1)));
            }
            return c;
        }
    }

    // ---------------------------------------------------------------- drivers (loop mechanics, written once)

    static void Map<TOp>(ReadOnlySpan<float> src, Span<float> dst, TOp op) where TOp : struct, IUnaryOp
    {
        CheckUnary(src, dst);
        ref float ps = ref MemoryMarshal.GetReference(src);
        ref float pd = ref MemoryMarshal.GetReference(dst);
        int n = src.Length, i = 0;
        for (; i <= n - 2 * V; i += 2 * V)
        {
            var a = op.Invoke(Vector256.LoadUnsafe(ref ps, (nuint)i));
            var b = op.Invoke(Vector256.LoadUnsafe(ref ps, (nuint)(i + V)));
            a.StoreUnsafe(ref pd, (nuint)i);
            b.StoreUnsafe(ref pd, (nuint)(i + V));
        }
        for (; i <= n - V; i += V) op.Invoke(Vector256.LoadUnsafe(ref ps, (nuint)i)).StoreUnsafe(ref pd, (nuint)i);
        if (i < n)
        {
            // The remainder goes through the same vector code on a zero-padded copy.
            Span<float> buf = stackalloc float[V];
            buf.Clear();
            src[i..].CopyTo(buf);
            op.Invoke(Vector256.Create<float>(buf)).CopyTo(buf);
            buf[..(n - i)].CopyTo(dst[i..]);
        }
    }

    // dst = op(a) · b
    static void Map<TOp>(ReadOnlySpan<float> a, ReadOnlySpan<float> b, Span<float> dst, TOp op) where TOp : struct, IUnaryOp
    {
        if (b.Length != a.Length) throw new ArgumentException($"gate has {a.Length} values, up has {b.Length}");
        CheckUnary(a, dst);
        CheckAlias(b, dst);
        ref float pa = ref MemoryMarshal.GetReference(a);
        ref float pb = ref MemoryMarshal.GetReference(b);
        ref float pd = ref MemoryMarshal.GetReference(dst);
        int n = a.Length, i = 0;
        for (; i <= n - V; i += V)
            (op.Invoke(Vector256.LoadUnsafe(ref pa, (nuint)i)) * Vector256.LoadUnsafe(ref pb, (nuint)i)).StoreUnsafe(ref pd, (nuint)i);
        if (i < n)
        {
            Span<float> ba = stackalloc float[V];
            Span<float> bb = stackalloc float[V];
            ba.Clear(); bb.Clear();
            a[i..].CopyTo(ba);
            b[i..].CopyTo(bb);
            (op.Invoke(Vector256.Create<float>(ba)) * Vector256.Create<float>(bb)).CopyTo(ba);
            ba[..(n - i)].CopyTo(dst[i..]);
        }
    }

    // Loads x[i..] into a vector, filling lanes past the end with `pad`.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<float> LoadTail(ReadOnlySpan<float> x, int i, float pad)
    {
        Span<float> buf = stackalloc float[V];
        buf.Fill(pad);
        x[i..].CopyTo(buf);
        return Vector256.Create<float>(buf);
    }

    static float Max(ReadOnlySpan<float> x)
    {
        ref float px = ref MemoryMarshal.GetReference(x);
        int n = x.Length, i = 0;
        var m0 = Vector256.Create(float.NegativeInfinity);
        var m1 = m0;
        for (; i <= n - 2 * V; i += 2 * V)
        {
            m0 = Vector256.Max(m0, Vector256.LoadUnsafe(ref px, (nuint)i));
            m1 = Vector256.Max(m1, Vector256.LoadUnsafe(ref px, (nuint)(i + V)));
        }
        for (; i <= n - V; i += V) m0 = Vector256.Max(m0, Vector256.LoadUnsafe(ref px, (nuint)i));
        if (i < n) m1 = Vector256.Max(m1, LoadTail(x, i, float.NegativeInfinity));
        m0 = Vector256.Max(m0, m1);
        float r = m0[0];
        for (int l = 1; l < V; l++) r = float.IsNaN(r) ? r : MathF.Max(r, m0[l]);
        return r;
    }

    // Returns Σ exp(x − max); also writes exp(x − max) into dst unless dst is empty.
    static float ExpSubtractAndSum(ReadOnlySpan<float> x, float max, Span<float> dst)
    {
        ref float px = ref MemoryMarshal.GetReference(x);
        ref float pd = ref MemoryMarshal.GetReference(dst);
        bool store = !dst.IsEmpty;
        var vm = Vector256.Create(max);
        var s0 = Vector256<float>.Zero;
        var s1 = Vector256<float>.Zero;
        int n = x.Length, i = 0;
        for (; i <= n - 2 * V; i += 2 * V)
        {
            var e0 = ExpOp.Invoke(Vector256.LoadUnsafe(ref px, (nuint)i) - vm);
            var e1 = ExpOp.Invoke(Vector256.LoadUnsafe(ref px, (nuint)(i + V)) - vm);
            s0 += e0; s1 += e1;
            if (store) { e0.StoreUnsafe(ref pd, (nuint)i); e1.StoreUnsafe(ref pd, (nuint)(i + V)); }
        }
        for (; i <= n - V; i += V)
        {
            var e0 = ExpOp.Invoke(Vector256.LoadUnsafe(ref px, (nuint)i) - vm);
            s0 += e0;
            if (store) e0.StoreUnsafe(ref pd, (nuint)i);
        }
        if (i < n)
        {
            // padding −∞ gives exp = 0, so the padded lanes add nothing
            var e = ExpOp.Invoke(LoadTail(x, i, float.NegativeInfinity) - vm);
            s1 += e;
            if (store)
            {
                Span<float> buf = stackalloc float[V];
                e.CopyTo(buf);
                buf[..(n - i)].CopyTo(dst[i..]);
            }
        }
        return Vector256.Sum(s0 + s1);
    }

    static void Scale(Span<float> x, float s)
    {
        ref float px = ref MemoryMarshal.GetReference(x);
        var vs = Vector256.Create(s);
        int n = x.Length, i = 0;
        for (; i <= n - V; i += V) (Vector256.LoadUnsafe(ref px, (nuint)i) * vs).StoreUnsafe(ref px, (nuint)i);
        for (; i < n; i++) x[i] *= s;
    }

    static float Sum(ReadOnlySpan<float> x)
    {
        ref float px = ref MemoryMarshal.GetReference(x);
        var s0 = Vector256<float>.Zero; var s1 = s0; var s2 = s0; var s3 = s0;
        int n = x.Length, i = 0;
        for (; i <= n - 4 * V; i += 4 * V)
        {
            s0 += Vector256.LoadUnsafe(ref px, (nuint)i);
            s1 += Vector256.LoadUnsafe(ref px, (nuint)(i + V));
            s2 += Vector256.LoadUnsafe(ref px, (nuint)(i + 2 * V));
            s3 += Vector256.LoadUnsafe(ref px, (nuint)(i + 3 * V));
        }
        for (; i <= n - V; i += V) s0 += Vector256.LoadUnsafe(ref px, (nuint)i);
        if (i < n) s1 += LoadTail(x, i, 0f);
        return Vector256.Sum((s0 + s1) + (s2 + s3));
    }

    static float SumOfSquares(ReadOnlySpan<float> x)
    {
        ref float px = ref MemoryMarshal.GetReference(x);
        var s0 = Vector256<float>.Zero; var s1 = s0; var s2 = s0; var s3 = s0;
        int n = x.Length, i = 0;
        for (; i <= n - 4 * V; i += 4 * V)
        {
            var a = Vector256.LoadUnsafe(ref px, (nuint)i);
            var b = Vector256.LoadUnsafe(ref px, (nuint)(i + V));
            var c = Vector256.LoadUnsafe(ref px, (nuint)(i + 2 * V));
            var d = Vector256.LoadUnsafe(ref px, (nuint)(i + 3 * V));
            s0 = Vector256.FusedMultiplyAdd(a, a, s0);
            s1 = Vector256.FusedMultiplyAdd(b, b, s1);
            s2 = Vector256.FusedMultiplyAdd(c, c, s2);
            s3 = Vector256.FusedMultiplyAdd(d, d, s3);
        }
        for (; i <= n - V; i += V) { var a = Vector256.LoadUnsafe(ref px, (nuint)i); s0 = Vector256.FusedMultiplyAdd(a, a, s0); }
        if (i < n) { var a = LoadTail(x, i, 0f); s1 = Vector256.FusedMultiplyAdd(a, a, s1); }
        return Vector256.Sum((s0 + s1) + (s2 + s3));
    }

    static float SumOfSquaredDeviations(ReadOnlySpan<float> x, float mean)
    {
        ref float px = ref MemoryMarshal.GetReference(x);
        var vm = Vector256.Create(mean);
        var s0 = Vector256<float>.Zero; var s1 = s0;
        int n = x.Length, i = 0;
        for (; i <= n - 2 * V; i += 2 * V)
        {
            var a = Vector256.LoadUnsafe(ref px, (nuint)i) - vm;
            var b = Vector256.LoadUnsafe(ref px, (nuint)(i + V)) - vm;
            s0 = Vector256.FusedMultiplyAdd(a, a, s0);
            s1 = Vector256.FusedMultiplyAdd(b, b, s1);
        }
        for (; i <= n - V; i += V) { var a = Vector256.LoadUnsafe(ref px, (nuint)i) - vm; s0 = Vector256.FusedMultiplyAdd(a, a, s0); }
        float r = Vector256.Sum(s0 + s1);
        for (; i < n; i++) { float a = x[i] - mean; r += a * a; }
        return r;
    }

    // ---------------------------------------------------------------- argument checks

    static void CheckRows(int xLen, int yLen, int rows, int d, string op)
    {
        if (rows < 0) throw new ArgumentOutOfRangeException(nameof(rows), $"{op}: negative row count {rows}");
        long need = (long)rows * d;
        if (xLen != need) throw new ArgumentException($"{op}: input has {xLen} values, expected rows·D = {rows}·{d} = {need}");
        if (yLen < need) throw new ArgumentException($"{op}: destination has {yLen} values, need {need}");
    }

    static void CheckUnary(ReadOnlySpan<float> src, Span<float> dst)
    {
        if (dst.Length < src.Length) throw new ArgumentException($"destination has {dst.Length} values, source has {src.Length}");
        CheckAlias(src, dst);
    }

    static void CheckAlias(ReadOnlySpan<float> src, ReadOnlySpan<float> dst)
    {
        if (src.Overlaps(dst, out int offset) && offset != 0)
            throw new ArgumentException("destination partially overlaps a source; use the same span for in-place or disjoint buffers");
    }
}

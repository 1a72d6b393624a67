namespace Finetrace.Tensors;

/// <summary>
/// The slow, obvious scalar versions of <see cref="Kernels"/>: each method implements exactly the formula in its
/// doc comment, mostly in double precision, and is what the optimised kernels are tested against. Kept forever.
/// Parameter order everywhere: sources, arguments, destinations.
/// </summary>
public static class KernelsReference
{
    /// <summary>y = x · 1/sqrt(mean(x²) + eps) · w  (or · (1 + w) when <paramref name="onePlusW"/>, Gemma's form).</summary>
    // xRD: [rows, D]; w: [D]; yRD: [rows, D]
    public static void RmsNorm(ReadOnlySpan<float> xRD, ReadOnlySpan<float> w, int rows, float eps, bool onePlusW, Span<float> yRD)
    {
        int d = w.Length;
        for (int r = 0; r < rows; r++)
        {
            var x = xRD.Slice(r * d, d);
            var y = yRD.Slice(r * d, d);
            double ss = 0;
            for (int i = 0; i < d; i++) ss += (double)x[i] * x[i];
            double s = 1.0 / Math.Sqrt(ss / d + eps);
            for (int i = 0; i < d; i++) y[i] = (float)(x[i] * s * (onePlusW ? 1.0 + w[i] : w[i]));
        }
    }

    /// <summary>y = (x − mean(x)) / sqrt(var(x) + eps) · w + b, biased variance (torch.nn.LayerNorm); b may be empty.</summary>
    // xRD: [rows, D]; w: [D]; b: [D] or empty; yRD: [rows, D]
    public static void LayerNorm(ReadOnlySpan<float> xRD, ReadOnlySpan<float> w, ReadOnlySpan<float> b, int rows, float eps, Span<float> yRD)
    {
        int d = w.Length;
        for (int r = 0; r < rows; r++)
        {
            var x = xRD.Slice(r * d, d);
            var y = yRD.Slice(r * d, d);
            double mean = 0;
            for (int i = 0; i < d; i++) mean += x[i];
            mean /= d;
            double v = 0;
            for (int i = 0; i < d; i++) v += (x[i] - mean) * (x[i] - mean);
            v /= d;
            double rstd = 1.0 / Math.Sqrt(v + eps);
            for (int i = 0; i < d; i++) y[i] = (float)((x[i] - mean) * rstd * w[i] + (b.IsEmpty ? 0.0 : b[i]));
        }
    }

    /// <summary>x_i ← exp(x_i − max x) / Σ_j exp(x_j − max x).</summary>
    // x: [n], in place
    public static void Softmax(Span<float> x)
    {
        if (x.IsEmpty) return;
        double max = double.NegativeInfinity;
        foreach (float v in x) max = Math.Max(max, v);
        double sum = 0;
        for (int i = 0; i < x.Length; i++) sum += Math.Exp(x[i] - max);
        for (int i = 0; i < x.Length; i++) x[i] = (float)(Math.Exp(x[i] - max) / sum);
    }

    /// <summary>y_i = x_i − max x − log Σ_j exp(x_j − max x).</summary>
    // x: [n]; y: [n]
    public static void LogSoftmax(ReadOnlySpan<float> x, Span<float> y)
    {
        if (x.IsEmpty) return;
        double max = double.NegativeInfinity;
        foreach (float v in x) max = Math.Max(max, v);
        double sum = 0;
        for (int i = 0; i < x.Length; i++) sum += Math.Exp(x[i] - max);
        double lse = max + Math.Log(sum);
        for (int i = 0; i < x.Length; i++) y[i] = (float)(x[i] - lse);
    }

    /// <summary>y = exp(x).</summary>
    // src: [n]; dst: [n]
    public static void Exp(ReadOnlySpan<float> src, Span<float> dst) { for (int i = 0; i < src.Length; i++) dst[i] = (float)Math.Exp(src[i]); }

    /// <summary>y = 0.5 · x · (1 + tanh(sqrt(2/π) · (x + 0.044715 · x³)))  (PyTorch gelu, approximate="tanh").</summary>
    public static float GeluTanh(float x)
    {
        double u = Math.Sqrt(2.0 / Math.PI) * (x + 0.044715 * (double)x * x * x);
        return (float)(0.5 * x * (1.0 + Math.Tanh(u)));
    }

    /// <summary>y = 0.5 · x · (1 + erf(x / √2))  (exact GELU).</summary>
    public static float GeluErf(float x) => (float)(0.5 * x * (1.0 + Kernels.Erf(x / Math.Sqrt(2.0))));

    /// <summary>y = x · sigmoid(x) = x / (1 + exp(−x)).</summary>
    public static float Silu(float x) => (float)(x / (1.0 + Math.Exp(-(double)x)));

    // src: [n]; dst: [n]
    public static void GeluTanh(ReadOnlySpan<float> src, Span<float> dst) { for (int i = 0; i < src.Length; i++) dst[i] = GeluTanh(src[i]); }
    public static void GeluErf(ReadOnlySpan<float> src, Span<float> dst) { for (int i = 0; i < src.Length; i++) dst[i] = GeluErf(src[i]); }
    public static void Silu(ReadOnlySpan<float> src, Span<float> dst) { for (int i = 0; i < src.Length; i++) dst[i] = Silu(src[i]); }

    // gate: [n]; up: [n]; dst: [n]  —  dst = act(gate) · up
    public static void SiluMul(ReadOnlySpan<float> gate, ReadOnlySpan<float> up, Span<float> dst) { for (int i = 0; i < gate.Length; i++) dst[i] = (float)((double)Silu(gate[i]) * up[i]); }
    public static void GeluTanhMul(ReadOnlySpan<float> gate, ReadOnlySpan<float> up, Span<float> dst) { for (int i = 0; i < gate.Length; i++) dst[i] = (float)((double)GeluTanh(gate[i]) * up[i]); }
    public static void GeluErfMul(ReadOnlySpan<float> gate, ReadOnlySpan<float> up, Span<float> dst) { for (int i = 0; i < gate.Length; i++) dst[i] = (float)((double)GeluErf(gate[i]) * up[i]); }

    /// <summary>x ← x·cos + rotate_half(x)·sin over the first rotaryDim channels of every head, where
    /// rotate_half(x) = cat(−x[half:rotaryDim], x[:half]); the remaining channels pass through.</summary>
    // xHD: [heads, headDim] (one position), in place; cos, sin: [rotaryDim]
    public static void ApplyRope(Span<float> xHD, int heads, int headDim, int rotaryDim, ReadOnlySpan<float> cos, ReadOnlySpan<float> sin)
    {
        int half = rotaryDim / 2;
        var rot = new double[rotaryDim];
        for (int h = 0; h < heads; h++)
        {
            var x = xHD.Slice(h * headDim, headDim);
            for (int i = 0; i < rotaryDim; i++) rot[i] = i < half ? -x[i + half] : x[i - half];
            for (int i = 0; i < rotaryDim; i++) x[i] = (float)(x[i] * (double)cos[i] + rot[i] * sin[i]);
        }
    }

    /// <summary>x ← tanh(x / cap) · cap.</summary>
    // x: [n], in place
    public static void SoftCap(Span<float> x, float cap)
    {
        for (int i = 0; i < x.Length; i++) x[i] = (float)(Math.Tanh(x[i] / (double)cap) * cap);
    }

    /// <summary>The indices of the k largest values, ordered by value descending then index ascending; NaN counts
    /// as larger than every number (as torch.topk).</summary>
    // x: [n]; indices: [k]
    public static void TopK(ReadOnlySpan<float> x, int k, Span<int> indices)
    {
        var all = new int[x.Length];
        for (int i = 0; i < all.Length; i++) all[i] = i;
        var values = x.ToArray();
        Array.Sort(all, (a, b) =>
        {
            float va = values[a], vb = values[b];
            bool na = float.IsNaN(va), nb = float.IsNaN(vb);
            if (na != nb) return na ? -1 : 1;
            if (!na && va != vb) return va > vb ? -1 : 1;
            return a.CompareTo(b);
        });
        all.AsSpan(0, k).CopyTo(indices);
    }

    /// <summary>Causal attention of one query head, as <see cref="Kernels.AttendGroup"/> states it for each head, in double
    /// precision: for query i at a = qOffset + i, keys j ∈ [max(keyFirst, a − window + 1 if window &gt; 0), min(a, keyLast)];
    /// s_j = cap(q_i·k_j·scale), o_i = Σ_j softmax(s)_j v_j; no visible key gives 0.</summary>
    // q, o: row i at [i·qStride .. +hd]; k, v: row j at [j·kvStride .. +hd]
    public static void AttendHead(ReadOnlySpan<float> q, int qStride, int nq, int qOffset, ReadOnlySpan<float> k, ReadOnlySpan<float> v, int kvStride, int nk,
        int hd, int keyFirst, int keyLast, int window, float scale, float? softcap, Span<float> o)
    {
        for (int i = 0; i < nq; i++)
        {
            int a = qOffset + i;
            int first = Math.Max(keyFirst, window > 0 ? a - window + 1 : 0), last = Math.Min(Math.Min(a, keyLast), nk - 1);
            var s = new List<(int J, double S)>();
            for (int j = first; j <= last; j++)
            {
                double dot = 0;
                for (int d = 0; d < hd; d++) dot += (double)q[i * qStride + d] * k[j * kvStride + d];
                dot *= scale;
                if (softcap is { } cap) dot = cap * Math.Tanh(dot / cap);
                s.Add((j, dot));
            }
            double max = s.Count == 0 ? 0 : s.Max(x => x.S), sum = s.Sum(x => Math.Exp(x.S - max));
            for (int d = 0; d < hd; d++)
            {
                double acc = 0;
                foreach (var (j, sj) in s) acc += Math.Exp(sj - max) / sum * v[j * kvStride + d];
                o[i * qStride + d] = (float)acc;
            }
        }
    }

    /// <summary>bf16 → f32 by value: sign · 2^(e−127) · (1 + m/128), subnormals, ±Inf and NaN spelled out.</summary>
    public static float BF16ToF32(ushort b)
    {
        int sign = (b >> 15) != 0 ? -1 : 1, e = (b >> 7) & 0xFF, m = b & 0x7F;
        if (e == 0xFF) return m == 0 ? sign * float.PositiveInfinity : float.NaN;
        if (e == 0) return (float)(sign * Math.ScaleB(m / 128.0, -126));
        return (float)(sign * Math.ScaleB(1 + m / 128.0, e - 127));
    }

    /// <summary>f32 → bf16 rounding to nearest, ties to even, by comparing the two neighbouring bf16 values;
    /// NaN → 0x7FC0; overflow past the largest bf16 rounds to ±Inf.</summary>
    public static ushort F32ToBF16(float f)
    {
        if (float.IsNaN(f)) return 0x7FC0;
        uint bits = BitConverter.SingleToUInt32Bits(f);
        uint lo = bits >> 16, rest = bits & 0xFFFF;
        // lo is the truncation toward zero in magnitude; lo + 1 the next bf16 away from zero.
        if (rest > 0x8000 || (rest == 0x8000 && (lo & 1) == 1)) lo++;
        return (ushort)lo;
    }
}

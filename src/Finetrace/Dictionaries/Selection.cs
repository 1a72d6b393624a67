namespace Finetrace.Dictionaries;

/// <summary>
/// Turning post-ReLU activations f [B, F] into sparse codes. Ranking uses s = f ⊙ c (c = code normalisation, or 1);
/// the stored values are the unscaled f. Zero activations are never stored (they contribute nothing forward, and
/// the ReLU passes no gradient at 0). Ties are broken towards the lower flat index, so results are deterministic.
/// </summary>
public static class Selection
{

    /// <summary>Batch top-k: the <paramref name="kTotal"/> largest s over the whole [B, F] matrix. Returns the
    /// smallest selected s (0 when none), which is what the threshold EMA consumes.
    /// One pass: a lower bound for the cut is estimated from a sample of rows, every entry at or above it is collected
    /// (a vectorised compare rejects the rest), and the exact top k·B is taken among the candidates by sorting; if the
    /// estimate was too high, the pass repeats with every positive entry as a candidate.</summary>
    // fBF: [B, F]; cF: [F] or empty (c = 1) → codes
    public static unsafe float BatchTopK(ReadOnlySpan<float> fBF, ReadOnlySpan<float> cF, int b, int f, long kTotal, SparseCodes codes)
    {
        bool scaled = !cF.IsEmpty;
        codes.Reset(b);
        if (kTotal <= 0) return 0;
        fixed (float* fp = fBF, cp = cF)
        {
            float* F = fp, C = cp;
            float lb = EstimateCut(F, C, scaled, b, f, kTotal);
            var cand = Collect(F, C, scaled, b, f, lb);
            if (cand.Count < kTotal && lb > float.Epsilon) cand = Collect(F, C, scaled, b, f, float.Epsilon);
            // order by s descending, then flat index ascending (ties go to the lower index)
            cand.Sort((x, y) => x.bits != y.bits ? y.bits.CompareTo(x.bits) : x.idx.CompareTo(y.idx));
            int n = (int)Math.Min(kTotal, cand.Count);
            if (n == 0) return 0;
            float min = BitConverter.UInt32BitsToSingle(cand[n - 1].bits);
            var chosen = new long[n];
            for (int i = 0; i < n; i++) chosen[i] = cand[i].idx;
            Array.Sort(chosen);
            codes.EnsureCapacity(n);
            int row = 0;
            for (int i = 0; i < n; i++)
            {
                int t = (int)(chosen[i] / f), j = (int)(chosen[i] % f);
                while (row <= t) codes.RowStart[row++] = i;
                codes.Index[i] = j; codes.Value[i] = F[chosen[i]];
            }
            while (row <= b) codes.RowStart[row++] = n;
            return min;
        }
    }

    /// <summary>DECOUPLED batch top-k (crosscoder_learning's encode_decoupled): for every model m separately, the
    /// k·B largest s_m = f ⊙ n^m (n^m = ‖d_j^m‖) over the whole batch; model m's code keeps the unscaled f there.
    /// Returns each model's smallest selected s_m (0 when none), the input of that model's threshold EMA.</summary>
    // fBF: [B, F]; nMF: [M, F] → codesM[m]: [B, F] each
    public static float[] BatchTopKPerModel(ReadOnlySpan<float> fBF, ReadOnlySpan<float> nMF, int b, int f, long kTotal, SparseCodes[] codesM)
    {
        var min = new float[codesM.Length];
        for (int m = 0; m < codesM.Length; m++) min[m] = BatchTopK(fBF, nMF.Slice(m * f, f), b, f, kTotal, codesM[m]);
        return min;
    }

    /// <summary>DECOUPLED inference rule: model m's code is f · [f ⊙ n^m &gt; θ_m].</summary>
    // fBF: [B, F]; nMF: [M, F]; thetaM: [M] → codesM[m]: [B, F] each
    public static void ThresholdPerModel(ReadOnlySpan<float> fBF, ReadOnlySpan<float> nMF, ReadOnlySpan<float> thetaM, int b, int f, SparseCodes[] codesM)
    {
        for (int m = 0; m < codesM.Length; m++) Threshold(fBF, nMF.Slice(m * f, f), thetaM[m], b, f, codesM[m]);
    }

    /// <summary>Per token, the union of the per-model supports (values f, which all models share); with
    /// <paramref name="gM"/>, <paramref name="gUnion"/>[e] = Σ_m gM[m] at the same (b, j) — the gradient on the shared
    /// pre-activation when model m's decoder saw f only where model m selected it.</summary>
    // codesM[m]: [B, F] (rows sorted by latent) → union: [B, F]; gM[m]: [nnz_m] → gUnion: [nnz_union]
    public static void Union(SparseCodes[] codesM, float[][]? gM, SparseCodes union, Span<float> gUnion)
    {
        int rows = codesM[0].Rows, models = codesM.Length;
        union.Reset(rows);
        union.EnsureCapacity(codesM.Sum(c => c.Count));
        Span<int> pos = models <= 64 ? stackalloc int[models] : new int[models];
        int n = 0;
        for (int t = 0; t < rows; t++)
        {
            union.RowStart[t] = n;
            for (int m = 0; m < models; m++) pos[m] = codesM[m].RowStart[t];
            while (true)
            {
                int j = int.MaxValue;
                for (int m = 0; m < models; m++)
                    if (pos[m] < codesM[m].RowStart[t + 1]) j = Math.Min(j, codesM[m].Index[pos[m]]);
                if (j == int.MaxValue) break;
                float v = 0, g = 0;
                for (int m = 0; m < models; m++)
                    if (pos[m] < codesM[m].RowStart[t + 1] && codesM[m].Index[pos[m]] == j)
                    {
                        v = codesM[m].Value[pos[m]];
                        if (gM is not null) g += gM[m][pos[m]];
                        pos[m]++;
                    }
                union.Index[n] = j; union.Value[n] = v;
                if (gM is not null) gUnion[n] = g;
                n++;
            }
        }
        union.RowStart[rows] = n;
    }

    // A value expected slightly below the cut: about the (1.25·k·B·rows/B + 16)-th largest s of a row sample, rounded
    // down to a 16-bit bucket of the float's bit pattern (a histogram instead of a sort: O(sample)).
    static unsafe float EstimateCut(float* F, float* C, bool scaled, int b, int f, long kTotal)
    {
        int sampleRows = Math.Min(b, 64);
        if (sampleRows == b) return float.Epsilon;          // small batch: take every positive entry
        var hist = new int[1 << 16];
        long positives = 0;
        for (int r = 0; r < sampleRows; r++)
        {
            float* row = F + (long)(r * (long)b / sampleRows) * f;
            for (int j = 0; j < f; j++)
            {
                float v = scaled ? row[j] * C[j] : row[j];
                if (v > 0) { hist[BitConverter.SingleToUInt32Bits(v) >> 16]++; positives++; }
            }
        }
        long want = (long)(1.25 * kTotal * sampleRows / b) + 16;
        if (positives <= want) return float.Epsilon;
        long cum = 0;
        for (int bin = hist.Length - 1; bin > 0; bin--)
        {
            cum += hist[bin];
            if (cum >= want) return Math.Max(float.Epsilon, BitConverter.UInt32BitsToSingle((uint)bin << 16));
        }
        return float.Epsilon;
    }

    // Every entry with s ≥ lb as (bits of s, flat index), rows in order.
    static unsafe List<(uint bits, long idx)> Collect(float* F, float* C, bool scaled, int b, int f, float lb)
    {
        int nc = Math.Max(1, Math.Min(32, b));
        var lists = new List<(uint, long)>[nc];
        Parallel.For(0, nc, DictionaryKernels.Opts((long)b * f), c =>
        {
            var l = new List<(uint, long)>();
            int lo = b * c / nc, hi = b * (c + 1) / nc;
            var scratch = new float[f];
            fixed (float* sp = scratch)
                for (int t = lo; t < hi; t++)
                {
                    float* row = F + (long)t * f;
                    float* s = row;
                    if (scaled) { System.Numerics.Tensors.TensorPrimitives.Multiply(new ReadOnlySpan<float>(row, f), new ReadOnlySpan<float>(C, f), scratch); s = sp; }
                    int j = 0;
                    if (System.Runtime.Intrinsics.Vector256.IsHardwareAccelerated)
                    {
                        var lbv = System.Runtime.Intrinsics.Vector256.Create(lb);
                        for (; j + 8 <= f; j += 8)
                        {
                            uint mask = System.Runtime.Intrinsics.Vector256.ExtractMostSignificantBits(
                                System.Runtime.Intrinsics.Vector256.GreaterThanOrEqual(System.Runtime.Intrinsics.Vector256.Load(s + j), lbv));
                            while (mask != 0)
                            {
                                int o = System.Numerics.BitOperations.TrailingZeroCount(mask);
                                mask &= mask - 1;
                                l.Add((BitConverter.SingleToUInt32Bits(s[j + o]), (long)t * f + j + o));
                            }
                        }
                    }
                    for (; j < f; j++) if (s[j] >= lb) l.Add((BitConverter.SingleToUInt32Bits(s[j]), (long)t * f + j));
                }
            lists[c] = l;
        });
        var all = new List<(uint, long)>(lists.Sum(l => l.Count));
        foreach (var l in lists) all.AddRange(l);
        return all;
    }

    /// <summary>Per-token top-k of s (TopK SAE), among the positive s of allowed latents; ties go to the lower index.</summary>
    // fBF: [B, F]; cF: [F] or empty; allowedF: [F] or empty (all allowed) → codes
    public static unsafe void TopKPerRow(ReadOnlySpan<float> fBF, ReadOnlySpan<float> cF, ReadOnlySpan<bool> allowedF, int b, int f, int k, SparseCodes codes)
    {
        codes.Reset(b);
        codes.EnsureCapacity(b * k);
        var counts = new int[b];
        bool scaled = !cF.IsEmpty, masked = !allowedF.IsEmpty;
        int kk = Math.Min(k, f);
        fixed (float* fp = fBF, cp = cF) fixed (bool* ap = allowedF)
        {
            float* F = fp, C = cp; bool* A = ap;
            var idx = codes.Index; var val = codes.Value;
            Parallel.For(0, b, DictionaryKernels.Opts((long)b * f), () => (new float[f], new int[kk]), (t, _, buf) =>
            {
                var (s, top) = buf;
                float* row = F + (long)t * f;
                // entries that may not be stored (not positive, NaN, masked) become 0: they rank below every positive s
                for (int j = 0; j < f; j++)
                {
                    float v = scaled ? row[j] * C[j] : row[j];
                    s[j] = v > 0 && (!masked || A[j]) ? v : 0f;
                }
                Tensors.Kernels.TopK(s, kk, top);
                int n = 0;
                while (n < kk && s[top[n]] > 0) n++;   // value descending: the positives come first
                Array.Sort(top, 0, n);
                for (int e = 0; e < n; e++) { idx[t * k + e] = top[e]; val[t * k + e] = row[top[e]]; }
                counts[t] = n;
                return buf;
            }, _ => { });
        }
        Compact(codes, counts, k);
    }

    // Rows were written at stride k; pack them into CSR.
    static void Compact(SparseCodes codes, int[] counts, int stride)
    {
        int pos = 0;
        for (int t = 0; t < counts.Length; t++)
        {
            codes.RowStart[t] = pos;
            if (pos != t * stride)
            {
                Array.Copy(codes.Index, t * stride, codes.Index, pos, counts[t]);
                Array.Copy(codes.Value, t * stride, codes.Value, pos, counts[t]);
            }
            pos += counts[t];
        }
        codes.RowStart[counts.Length] = pos;
    }

    /// <summary>Inference rule f · [s &gt; θ] (strict).</summary>
    // fBF: [B, F]; cF: [F] or empty → codes
    public static unsafe void Threshold(ReadOnlySpan<float> fBF, ReadOnlySpan<float> cF, float theta, int b, int f, SparseCodes codes)
    {
        fixed (float* fp = fBF, cp = cF)
            Emit(fp, cp, !cF.IsEmpty, b, f, codes, new ThresholdKeep(theta));
    }

    /// <summary>Every positive entry (ReLU codes).</summary>
    public static unsafe void Positive(ReadOnlySpan<float> fBF, int b, int f, SparseCodes codes)
    {
        fixed (float* fp = fBF)
            Emit(fp, null, false, b, f, codes, new ThresholdKeep(0f));
    }

    /// <summary>JumpReLU: f = pre · [pre &gt; θ_j].</summary>
    // preBF: [B, F]; thetaF: [F] → codes
    public static unsafe void Jump(ReadOnlySpan<float> preBF, ReadOnlySpan<float> thetaF, int b, int f, SparseCodes codes)
    {
        fixed (float* fp = preBF, tp = thetaF)
            Emit(fp, null, false, b, f, codes, new JumpKeep(tp, f));
    }

    interface IKeep { bool Keep(float s, long flat); }
    readonly struct ThresholdKeep(float theta) : IKeep { public bool Keep(float s, long flat) => s > theta && s > 0; }
    readonly unsafe struct JumpKeep(float* theta, int f) : IKeep { public bool Keep(float s, long flat) => s > theta[flat % f] && s != 0; }

    // Two passes: count per row, then fill. Returns the minimum kept s. (Generic over a struct predicate so the JIT
    // inlines it: a delegate call per element cost more than the rest of the step.)
    static unsafe float Emit<TKeep>(float* F, float* C, bool scaled, int b, int f, SparseCodes codes, TKeep keep) where TKeep : struct, IKeep
    {
        codes.Reset(b);
        var counts = new int[b];
        var mins = new float[b];
        Parallel.For(0, b, DictionaryKernels.Opts((long)b * f), t =>
        {
            float* row = F + (long)t * f;
            int n = 0; float mn = float.PositiveInfinity;
            for (int j = 0; j < f; j++)
            {
                float s = scaled ? row[j] * C[j] : row[j];
                if (keep.Keep(s, (long)t * f + j)) { n++; if (s < mn) mn = s; }
            }
            counts[t] = n; mins[t] = mn;
        });
        int pos = 0;
        for (int t = 0; t < b; t++) { codes.RowStart[t] = pos; pos += counts[t]; }
        codes.RowStart[b] = pos;
        codes.EnsureCapacity(pos);
        var idx = codes.Index; var val = codes.Value; var rs = codes.RowStart;
        Parallel.For(0, b, DictionaryKernels.Opts((long)b * f), t =>
        {
            float* row = F + (long)t * f;
            int e = rs[t];
            for (int j = 0; j < f; j++)
            {
                float s = scaled ? row[j] * C[j] : row[j];
                if (keep.Keep(s, (long)t * f + j)) { idx[e] = j; val[e] = row[j]; e++; }
            }
        });
        float min = float.PositiveInfinity;
        foreach (var m in mins) if (m < min) min = m;
        return float.IsPositiveInfinity(min) ? 0f : min;
    }
}

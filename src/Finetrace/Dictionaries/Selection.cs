namespace Finetrace.Dictionaries;

/// <summary>
/// Turning post-ReLU activations f [B, F] into sparse codes. Ranking uses s = f ⊙ c (c = code normalisation, or 1);
/// the stored values are the unscaled f. Zero activations are never stored (they contribute nothing forward, and
/// the ReLU passes no gradient at 0). Ties are broken towards the lower flat index, so results are deterministic.
/// </summary>
public static class Selection
{
    static readonly ParallelOptions Par = new() { MaxDegreeOfParallelism = Environment.ProcessorCount };

    /// <summary>Batch top-k: the <paramref name="kTotal"/> largest s over the whole [B, F] matrix (radix select on
    /// the float bit patterns, which order like the values for positive floats). Returns the smallest selected s
    /// (0 when none), which is what the threshold EMA consumes.</summary>
    // fBF: [B, F]; cF: [F] or empty (c = 1) → codes
    public static unsafe float BatchTopK(ReadOnlySpan<float> fBF, ReadOnlySpan<float> cF, int b, int f, long kTotal, SparseCodes codes)
    {
        const int Bins = 1 << 16;
        int nc = Math.Max(1, Math.Min(32, b));
        var hist = new int[nc * Bins];
        bool scaled = !cF.IsEmpty;
        fixed (float* fp = fBF, cp = cF)
        {
            float* F = fp, C = cp;
            Parallel.For(0, nc, Par, c =>
            {
                int lo = b * c / nc, hi = b * (c + 1) / nc;
                var h = hist.AsSpan(c * Bins, Bins);
                for (int t = lo; t < hi; t++)
                {
                    float* row = F + (long)t * f;
                    for (int j = 0; j < f; j++)
                    {
                        float s = scaled ? row[j] * C[j] : row[j];
                        if (s > 0) h[(int)(BitConverter.SingleToUInt32Bits(s) >> 16)]++;
                    }
                }
            });
            long total = 0; var merged = new long[Bins];
            for (int c = 0; c < nc; c++) for (int i = 0; i < Bins; i++) merged[i] += hist[c * Bins + i];
            for (int i = 0; i < Bins; i++) total += merged[i];

            uint cutBits = 0; long cutIndex = long.MaxValue; int binT = 0;
            if (total > kTotal)
            {
                long cum = 0; binT = Bins - 1;
                for (; binT >= 0; binT--) { if (cum + merged[binT] >= kTotal) break; cum += merged[binT]; }
                long need = kTotal - cum;
                var cand = new List<(uint bits, long idx)>((int)merged[binT]);
                for (int t = 0; t < b; t++)
                {
                    float* row = F + (long)t * f;
                    for (int j = 0; j < f; j++)
                    {
                        float s = scaled ? row[j] * C[j] : row[j];
                        if (s > 0) { uint bits = BitConverter.SingleToUInt32Bits(s); if ((int)(bits >> 16) == binT) cand.Add((bits, (long)t * f + j)); }
                    }
                }
                cand.Sort((x, y) => x.bits != y.bits ? y.bits.CompareTo(x.bits) : x.idx.CompareTo(y.idx));
                cutBits = cand[(int)need - 1].bits; cutIndex = cand[(int)need - 1].idx;
            }
            bool all = total <= kTotal;
            uint binHi = (uint)binT;
            // Selected ⇔ s > 0 and (all, or bin above T, or in bin T and (bits, index) at or before the cut).
            return Emit(F, C, scaled, b, f, codes, (s, flat) =>
            {
                if (!(s > 0)) return false;
                if (all) return true;
                uint bits = BitConverter.SingleToUInt32Bits(s);
                uint bin = bits >> 16;
                if (bin != binHi) return bin > binHi;
                return bits > cutBits || (bits == cutBits && flat <= cutIndex);
            });
        }
    }

    /// <summary>Per-token top-k of s (TopK SAE).</summary>
    // fBF: [B, F]; cF: [F] or empty → codes
    public static unsafe void TopKPerRow(ReadOnlySpan<float> fBF, ReadOnlySpan<float> cF, ReadOnlySpan<bool> allowedF, int b, int f, int k, SparseCodes codes)
    {
        codes.Reset(b);
        codes.EnsureCapacity(b * k);
        var counts = new int[b];
        bool scaled = !cF.IsEmpty, masked = !allowedF.IsEmpty;
        fixed (float* fp = fBF, cp = cF) fixed (bool* ap = allowedF)
        {
            float* F = fp, C = cp; bool* A = ap;
            var idx = codes.Index; var val = codes.Value;
            Parallel.For(0, b, Par, () => (new float[k], new int[k]), (t, _, heap) =>
            {
                var (hs, hi) = heap;
                int n = 0;
                float* row = F + (long)t * f;
                for (int j = 0; j < f; j++)
                {
                    if (masked && !A[j]) continue;
                    float s = scaled ? row[j] * C[j] : row[j];
                    if (!(s > 0)) continue;
                    if (n < k) { hs[n] = s; hi[n] = j; n++; SiftUp(hs, hi, n - 1); }
                    else if (s > hs[0]) { hs[0] = s; hi[0] = j; SiftDown(hs, hi, n, 0); }
                    // equal to the minimum: keep the earlier (lower) index already held
                }
                Array.Sort(hi, 0, n);
                for (int e = 0; e < n; e++) { idx[t * k + e] = hi[e]; val[t * k + e] = row[hi[e]]; }
                counts[t] = n;
                return heap;
            }, _ => { });
        }
        Compact(codes, counts, k);
    }

    // Min-heap on (value, then larger index = "smaller") so the earliest index survives ties.
    static bool Less(float[] hs, int[] hi, int a, int c) => hs[a] < hs[c] || (hs[a] == hs[c] && hi[a] > hi[c]);
    static void SiftUp(float[] hs, int[] hi, int i)
    {
        while (i > 0) { int p = (i - 1) / 2; if (!Less(hs, hi, i, p)) break; Swap(hs, hi, i, p); i = p; }
    }
    static void SiftDown(float[] hs, int[] hi, int n, int i)
    {
        while (true)
        {
            int l = 2 * i + 1, r = l + 1, m = i;
            if (l < n && Less(hs, hi, l, m)) m = l;
            if (r < n && Less(hs, hi, r, m)) m = r;
            if (m == i) return;
            Swap(hs, hi, i, m); i = m;
        }
    }
    static void Swap(float[] hs, int[] hi, int a, int c) { (hs[a], hs[c]) = (hs[c], hs[a]); (hi[a], hi[c]) = (hi[c], hi[a]); }

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
            Emit(fp, cp, !cF.IsEmpty, b, f, codes, (s, _) => s > theta && s > 0);
    }

    /// <summary>Every positive entry (ReLU codes).</summary>
    public static unsafe void Positive(ReadOnlySpan<float> fBF, int b, int f, SparseCodes codes)
    {
        fixed (float* fp = fBF)
            Emit(fp, null, false, b, f, codes, (s, _) => s > 0);
    }

    /// <summary>JumpReLU: f = pre · [pre &gt; θ_j].</summary>
    // preBF: [B, F]; thetaF: [F] → codes
    public static unsafe void Jump(ReadOnlySpan<float> preBF, ReadOnlySpan<float> thetaF, int b, int f, SparseCodes codes)
    {
        fixed (float* fp = preBF, tp = thetaF)
        {
            float* T = tp;
            Emit(fp, null, false, b, f, codes, (s, flat) => s > T[flat % f] && s != 0);
        }
    }

    delegate bool Keep(float s, long flat);

    // Two passes: count per row, then fill. Returns the minimum kept s.
    static unsafe float Emit(float* F, float* C, bool scaled, int b, int f, SparseCodes codes, Keep keep)
    {
        codes.Reset(b);
        var counts = new int[b];
        var mins = new float[b];
        Parallel.For(0, b, Par, t =>
        {
            float* row = F + (long)t * f;
            int n = 0; float mn = float.PositiveInfinity;
            for (int j = 0; j < f; j++)
            {
                float s = scaled ? row[j] * C[j] : row[j];
                if (keep(s, (long)t * f + j)) { n++; if (s < mn) mn = s; }
            }
            counts[t] = n; mins[t] = mn;
        });
        int pos = 0;
        for (int t = 0; t < b; t++) { codes.RowStart[t] = pos; pos += counts[t]; }
        codes.RowStart[b] = pos;
        codes.EnsureCapacity(pos);
        var idx = codes.Index; var val = codes.Value; var rs = codes.RowStart;
        Parallel.For(0, b, Par, t =>
        {
            float* row = F + (long)t * f;
            int e = rs[t];
            for (int j = 0; j < f; j++)
            {
                float s = scaled ? row[j] * C[j] : row[j];
                if (keep(s, (long)t * f + j)) { idx[e] = j; val[e] = row[j]; e++; }
            }
        });
        float min = float.PositiveInfinity;
        foreach (var m in mins) if (m < min) min = m;
        return float.IsPositiveInfinity(min) ? 0f : min;
    }
}

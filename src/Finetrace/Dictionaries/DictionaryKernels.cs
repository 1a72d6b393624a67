using System.Numerics.Tensors;
using Finetrace.Tensors;

namespace Finetrace.Dictionaries;

/// <summary>
/// Forward and backward kernels of a sparse dictionary step. Shapes: B tokens, M models, D width, F latents.
/// Every sparse kernel (touches only active latents) has a dense counterpart built from GEMMs that it is tested
/// against; the dense ones also serve as the "dense implementation" the train benchmark compares with.
/// Parallel loops split over disjoint outputs (tokens or latents), so results do not depend on the thread count.
/// </summary>
public static class DictionaryKernels
{
    static readonly ParallelOptions ParAll = new() { MaxDegreeOfParallelism = Environment.ProcessorCount };
    static readonly ParallelOptions ParOne = new() { MaxDegreeOfParallelism = 1 };

    /// <summary>Parallel options for a loop of about <paramref name="work"/> element operations: small loops run on
    /// the calling thread (waking workers costs more than the work, badly so on a loaded machine). Results never
    /// depend on this choice: every parallel loop writes disjoint outputs.</summary>
    internal static ParallelOptions Opts(long work) => work < (1 << 18) ? ParOne : ParAll;

    /// <summary>pre[b, j] = Σ_m x[b, m, :] · WEnc[m, j, :] + bEnc[j] (dense GEMM, one per model).</summary>
    // xBMD: [B, M, D]; wEncMFD: [M, F, D]; bEncF: [F] → preBF: [B, F]
    public static void EncoderForward(ReadOnlySpan<float> xBMD, ReadOnlySpan<float> wEncMFD, ReadOnlySpan<float> bEncF, int b, int models, int d, int f, Span<float> preBF)
    {
        for (int m = 0; m < models; m++)
            Sgemm(false, true, b, f, d, 1f, xBMD.Slice(m * d), models * d, wEncMFD.Slice(m * f * d, f * d), d, m == 0 ? 0f : 1f, preBF, f);
        for (int t = 0; t < b; t++) TensorPrimitives.Add(preBF.Slice(t * f, f), bEncF, preBF.Slice(t * f, f));
    }

    /// <summary>In place ReLU.</summary>
    public static unsafe void Relu(Span<float> v)
    {
        int n = v.Length;
        fixed (float* p = v)
        {
            float* q = p;
            Parallel.For(0, Chunks(n, 1 << 16), Opts(n), c =>
            {
                int lo = (int)((long)n * c / Chunks(n, 1 << 16)), hi = (int)((long)n * (c + 1) / Chunks(n, 1 << 16));
                TensorPrimitives.Max(new ReadOnlySpan<float>(q + lo, hi - lo), 0f, new Span<float>(q + lo, hi - lo));
            });
        }
    }

    /// <summary>Gemm.Sgemm, with OpenBLAS held to one thread for small products: its worker threads cost more than
    /// such a product (and far more on a loaded machine). OpenBLAS splits outputs, not the inner sum, across threads,
    /// so the result is the same either way.</summary>
    internal static void Sgemm(bool transA, bool transB, int m, int n, int k, float alpha,
        ReadOnlySpan<float> a, int lda, ReadOnlySpan<float> b, int ldb, float beta, Span<float> c, int ldc)
    {
        if (Gemm.Backend == GemmBackend.OpenBlas && (long)m * n * k < (1L << 22))
        {
            int threads = OpenBlas.Threads;
            if (threads > 1)
            {
                OpenBlas.Threads = 1;
                try { Gemm.Sgemm(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc); }
                finally { OpenBlas.Threads = threads; }
                return;
            }
        }
        Gemm.Sgemm(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    }

    /// <summary>Number of entries &gt; 0 (chunked; integer counts, so the order does not matter).</summary>
    public static unsafe long CountPositive(ReadOnlySpan<float> v)
    {
        int n = v.Length, nc = Chunks(n, 1 << 16);
        var counts = new long[nc];
        fixed (float* p = v)
        {
            float* P = p;
            Parallel.For(0, nc, Opts(n), c =>
            {
                int lo = (int)((long)n * c / nc), hi = (int)((long)n * (c + 1) / nc);
                long k = 0; int i = lo;
                var zero = System.Runtime.Intrinsics.Vector256<float>.Zero;
                for (; i + 8 <= hi; i += 8)
                    k += System.Numerics.BitOperations.PopCount(System.Runtime.Intrinsics.Vector256.ExtractMostSignificantBits(
                        System.Runtime.Intrinsics.Vector256.GreaterThan(System.Runtime.Intrinsics.Vector256.Load(P + i), zero)));
                for (; i < hi; i++) if (P[i] > 0) k++;
                counts[c] = k;
            });
        }
        return counts.Sum();
    }

    internal static int Chunks(int n, int grain) => Math.Max(1, Math.Min(64, n / grain));

    // ---------------------------------------------------------------- decoder forward

    /// <summary>x̂[b, m, :] = Σ_{j active in b} f[b, j] · WDec[m, j, :] (+ bDec[m]). Sparse: cost nnz·M·D.</summary>
    // codes: [B, F] sparse; wDecMFD: [M, F, D]; bDecMD: [M, D] or empty (no bias) → xHatBMD: [B, M, D]
    public static void DecodeSparse(SparseCodes codes, ReadOnlySpan<float> wDecMFD, ReadOnlySpan<float> bDecMD, int models, int d, int f, Span<float> xHatBMD)
        => DecodeSparse(Shared(codes, models), wDecMFD, bDecMD, models, d, f, xHatBMD);

    // The same code for every model (the shared-code dictionaries).
    static SparseCodes[] Shared(SparseCodes codes, int models) { var a = new SparseCodes[models]; Array.Fill(a, codes); return a; }

    /// <summary>Per-model codes (DECOUPLED BatchTopK): x̂[b, m, :] = Σ_{j active for m in b} f[b, j] · WDec[m, j, :] (+ bDec[m]).</summary>
    // codesM[m]: [B, F] sparse; wDecMFD: [M, F, D]; bDecMD: [M, D] or empty → xHatBMD: [B, M, D]
    public static unsafe void DecodeSparse(SparseCodes[] codesM, ReadOnlySpan<float> wDecMFD, ReadOnlySpan<float> bDecMD, int models, int d, int f, Span<float> xHatBMD)
    {
        int rows = codesM[0].Rows;
        bool bias = !bDecMD.IsEmpty;
        long nnz = codesM.Distinct().Sum(c => (long)c.Count);
        fixed (float* w = wDecMFD, bd = bDecMD, xh = xHatBMD)
        {
            float* W = w, BD = bd, XH = xh;
            Parallel.For(0, rows, Opts(nnz * d), bi =>
            {
                for (int m = 0; m < models; m++)
                {
                    var codes = codesM[m];
                    var acc = new Span<float>(XH + ((long)bi * models + m) * d, d);
                    if (bias) new ReadOnlySpan<float>(BD + m * d, d).CopyTo(acc); else acc.Clear();
                    for (int e = codes.RowStart[bi]; e < codes.RowStart[bi + 1]; e++)
                    {
                        float v = codes.Value[e];
                        if (v == 0f) continue;
                        TensorPrimitives.MultiplyAdd(new ReadOnlySpan<float>(W + ((long)m * f + codes.Index[e]) * d, d), v, acc, acc);
                    }
                }
            });
        }
    }

    /// <summary>Dense reference: x̂_m = f · WDec[m] (+ bDec[m]) as a GEMM per model.</summary>
    // fBF: [B, F]; wDecMFD: [M, F, D]; bDecMD: [M, D] or empty → xHatBMD: [B, M, D]
    // model ≥ 0: only that model's slice of x̂ is written (DECOUPLED codes differ per model)
    public static void DecodeDense(ReadOnlySpan<float> fBF, ReadOnlySpan<float> wDecMFD, ReadOnlySpan<float> bDecMD, int b, int models, int d, int f, Span<float> xHatBMD, int model = -1)
    {
        int lo = model < 0 ? 0 : model, hi = model < 0 ? models : model + 1;
        for (int m = lo; m < hi; m++)
            Sgemm(false, false, b, d, f, 1f, fBF, f, wDecMFD.Slice(m * f * d, f * d), d, 0f, xHatBMD.Slice(m * d), models * d);
        if (!bDecMD.IsEmpty)
            for (int t = 0; t < b; t++)
                for (int m = lo; m < hi; m++)
                    TensorPrimitives.Add(xHatBMD.Slice((t * models + m) * d, d), bDecMD.Slice(m * d, d), xHatBMD.Slice((t * models + m) * d, d));
    }

    // ---------------------------------------------------------------- decoder backward

    /// <summary>gWDec[m, j, :] = Σ_{b: j active} f[b, j] · δ[b, m, :] (+ the same over a second code set with its own δ).
    /// Rows of latents active nowhere are zeroed. Per-latent loops over tokens in ascending order (deterministic).</summary>
    // codes (columns built), δBMD: [B, M, D]; optional codes2/δ2 → gWDecMFD: [M, F, D]
    public static void DecoderGradSparse(SparseCodes codes, ReadOnlySpan<float> deltaBMD, SparseCodes? codes2, ReadOnlySpan<float> delta2BMD, int models, int d, int f, Span<float> gWDecMFD)
        => DecoderGradSparse(Shared(codes, models), deltaBMD, codes2, delta2BMD, models, d, f, gWDecMFD);

    /// <summary>Per-model codes (DECOUPLED): gWDec[m, j, :] = Σ_{b: j active for m} f[b, j] · δ[b, m, :] (+ the shared
    /// second code set, AuxK, for every model).</summary>
    // codesM[m] (columns built), δBMD: [B, M, D]; optional codes2/δ2 → gWDecMFD: [M, F, D]
    public static unsafe void DecoderGradSparse(SparseCodes[] codesM, ReadOnlySpan<float> deltaBMD, SparseCodes? codes2, ReadOnlySpan<float> delta2BMD, int models, int d, int f, Span<float> gWDecMFD)
    {
        long nnz = codesM.Distinct().Sum(c => (long)c.Count);
        fixed (float* dl = deltaBMD, dl2 = delta2BMD, g = gWDecMFD)
        {
            float* DL = dl, DL2 = dl2, G = g;
            Parallel.For(0, Chunks(f, 64), Opts((nnz + (codes2?.Count ?? 0) + f) * models * d), c =>
            {
                int nc = Chunks(f, 64);
                int lo = (int)((long)f * c / nc), hi = (int)((long)f * (c + 1) / nc);
                for (int j = lo; j < hi; j++)
                    for (int m = 0; m < models; m++)
                    {
                        var acc = new Span<float>(G + ((long)m * f + j) * d, d);
                        acc.Clear();
                        AccumulateColumn(codesM[m], j, DL, m, models, d, acc);
                        if (codes2 is not null) AccumulateColumn(codes2, j, DL2, m, models, d, acc);
                    }
            });
        }
    }

    static unsafe void AccumulateColumn(SparseCodes codes, int j, float* deltaBMD, int m, int models, int d, Span<float> acc)
    {
        for (int p = codes.ColStart[j]; p < codes.ColStart[j + 1]; p++)
        {
            float v = codes.Value[codes.ColEntry[p]];
            if (v == 0f) continue;
            TensorPrimitives.MultiplyAdd(new ReadOnlySpan<float>(deltaBMD + ((long)codes.ColRow[p] * models + m) * d, d), v, acc, acc);
        }
    }

    /// <summary>Dense reference: gWDec[m] = fᵀ · δ_m.</summary>
    // fBF: [B, F]; δBMD: [B, M, D] → gWDecMFD: [M, F, D] (accumulate: += instead of =)
    // model ≥ 0: only gWDec[model] (DECOUPLED codes differ per model)
    public static void DecoderGradDense(ReadOnlySpan<float> fBF, ReadOnlySpan<float> deltaBMD, int b, int models, int d, int f, Span<float> gWDecMFD, bool accumulate = false, int model = -1)
    {
        for (int m = model < 0 ? 0 : model; m < (model < 0 ? models : model + 1); m++)
            Sgemm(true, false, f, d, b, 1f, fBF, f, deltaBMD.Slice(m * d), models * d, accumulate ? 1f : 0f, gWDecMFD.Slice(m * f * d, f * d), d);
    }

    /// <summary>∂L/∂f at every stored entry: g[e] = Σ_m WDec[m, j, :] · δ[b, m, :].</summary>
    // codes: [B, F] sparse; wDecMFD: [M, F, D]; δBMD: [B, M, D] → gValue: [nnz]
    // model ≥ 0: g[e] = WDec[model, j, :] · δ[b, model, :] only (DECOUPLED: model m's decoder saw f only where m selected it)
    public static unsafe void CodeGradSparse(SparseCodes codes, ReadOnlySpan<float> wDecMFD, ReadOnlySpan<float> deltaBMD, int models, int d, int f, Span<float> gValue, int model = -1)
    {
        int lo = model < 0 ? 0 : model, hi = model < 0 ? models : model + 1;
        fixed (float* w = wDecMFD, dl = deltaBMD, gv = gValue)
        {
            float* W = w, DL = dl, GV = gv;
            Parallel.For(0, codes.Rows, Opts((long)codes.Count * models * d), bi =>
            {
                for (int e = codes.RowStart[bi]; e < codes.RowStart[bi + 1]; e++)
                {
                    int j = codes.Index[e];
                    float s = 0;
                    for (int m = lo; m < hi; m++)
                        s += TensorPrimitives.Dot(new ReadOnlySpan<float>(W + ((long)m * f + j) * d, d), new ReadOnlySpan<float>(DL + ((long)bi * models + m) * d, d));
                    GV[e] = s;
                }
            });
        }
    }

    /// <summary>Dense reference: gF = Σ_m δ_m · WDec[m]ᵀ.</summary>
    // δBMD: [B, M, D]; wDecMFD: [M, F, D] → gFBF: [B, F]
    // model ≥ 0: gF = δ_model · WDec[model]ᵀ only
    public static void CodeGradDense(ReadOnlySpan<float> deltaBMD, ReadOnlySpan<float> wDecMFD, int b, int models, int d, int f, Span<float> gFBF, int model = -1)
    {
        int lo = model < 0 ? 0 : model, hi = model < 0 ? models : model + 1;
        for (int m = lo; m < hi; m++)
            Sgemm(false, true, b, f, d, 1f, deltaBMD.Slice(m * d), models * d, wDecMFD.Slice(m * f * d, f * d), d, m == lo ? 0f : 1f, gFBF, f);
    }

    // ---------------------------------------------------------------- encoder backward

    /// <summary>gWEnc[m, j, :] = Σ_{b: j active} gPre[e] · x[b, m, :]; gBEnc[j] = Σ gPre[e] (over one or two code sets).
    /// Rows of latents active nowhere are zeroed.</summary>
    // codes (columns built); gPre: [nnz]; xBMD: [B, M, D]; optional codes2/gPre2 → gWEncMFD: [M, F, D]; gBEncF: [F]
    public static unsafe void EncoderGradSparse(SparseCodes codes, ReadOnlySpan<float> gPre, SparseCodes? codes2, ReadOnlySpan<float> gPre2, ReadOnlySpan<float> xBMD, int models, int d, int f, Span<float> gWEncMFD, Span<float> gBEncF)
    {
        fixed (float* gp = gPre, gp2 = gPre2, x = xBMD, gw = gWEncMFD, gb = gBEncF)
        {
            float* GP = gp, GP2 = gp2, X = x, GW = gw, GB = gb;
            Parallel.For(0, Chunks(f, 64), Opts((long)(codes.Count + (codes2?.Count ?? 0) + f) * models * d), c =>
            {
                int nc = Chunks(f, 64);
                int lo = (int)((long)f * c / nc), hi = (int)((long)f * (c + 1) / nc);
                for (int j = lo; j < hi; j++)
                {
                    float sb = 0;
                    for (int p = codes.ColStart[j]; p < codes.ColStart[j + 1]; p++) sb += GP[codes.ColEntry[p]];
                    if (codes2 is not null) for (int p = codes2.ColStart[j]; p < codes2.ColStart[j + 1]; p++) sb += GP2[codes2.ColEntry[p]];
                    GB[j] = sb;
                    for (int m = 0; m < models; m++)
                    {
                        var acc = new Span<float>(GW + ((long)m * f + j) * d, d);
                        acc.Clear();
                        AccumulateInput(codes, j, GP, X, m, models, d, acc);
                        if (codes2 is not null) AccumulateInput(codes2, j, GP2, X, m, models, d, acc);
                    }
                }
            });
        }
    }

    static unsafe void AccumulateInput(SparseCodes codes, int j, float* gPre, float* xBMD, int m, int models, int d, Span<float> acc)
    {
        for (int p = codes.ColStart[j]; p < codes.ColStart[j + 1]; p++)
        {
            float g = gPre[codes.ColEntry[p]];
            if (g == 0f) continue;
            TensorPrimitives.MultiplyAdd(new ReadOnlySpan<float>(xBMD + ((long)codes.ColRow[p] * models + m) * d, d), g, acc, acc);
        }
    }

    /// <summary>Dense reference: gWEnc[m] = gPreᵀ · x_m; gBEnc = column sums of gPre.</summary>
    // gPreBF: [B, F]; xBMD: [B, M, D] → gWEncMFD: [M, F, D]; gBEncF: [F]
    public static unsafe void EncoderGradDense(ReadOnlySpan<float> gPreBF, ReadOnlySpan<float> xBMD, int b, int models, int d, int f, Span<float> gWEncMFD, Span<float> gBEncF)
    {
        for (int m = 0; m < models; m++)
            Sgemm(true, false, f, d, b, 1f, gPreBF, f, xBMD.Slice(m * d), models * d, 0f, gWEncMFD.Slice(m * f * d, f * d), d);
        ColumnSums(gPreBF, b, f, gBEncF);
    }

    /// <summary>s[j] = Σ_b a[b, j], parallel over column blocks, tokens summed in order.</summary>
    // aBF: [B, F] → sF: [F]
    public static unsafe void ColumnSums(ReadOnlySpan<float> aBF, int b, int f, Span<float> sF)
    {
        fixed (float* a = aBF, s = sF)
        {
            float* A = a, S = s;
            int nc = Chunks(f, 256);
            Parallel.For(0, nc, Opts((long)b * f), c =>
            {
                int lo = (int)((long)f * c / nc), hi = (int)((long)f * (c + 1) / nc);
                var acc = new Span<float>(S + lo, hi - lo);
                acc.Clear();
                for (int t = 0; t < b; t++) TensorPrimitives.Add(acc, new ReadOnlySpan<float>(A + (long)t * f + lo, hi - lo), acc);
            });
        }
    }
}

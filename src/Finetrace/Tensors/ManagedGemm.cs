using System.Collections.Concurrent;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Finetrace.Tensors;

/// <summary>
/// Managed fallback GEMM, row-major with cblas semantics: C = alpha · op(A) · op(B) + beta · C.
/// A GEBP design after Goto and van de Geijn ("Anatomy of high-performance matrix multiplication", 2008) and BLIS:
/// <list type="number">
/// <item>loop jc over column panels of C (as wide as NC and a 16 MiB packed-panel budget allow);</item>
/// <item>pack the panel's op(B), all of k, once into KC-deep blocks of NR-wide slivers (k-major, zero-padded), in
///   parallel over slivers;</item>
/// <item>in parallel over disjoint MC-tall row blocks of C (and, for short m, column ranges), loop pc over the k
///   blocks: pack the MC×KC block of op(A) into MR-tall slivers in a per-thread buffer;</item>
/// <item>for every (B sliver, A sliver) pair, a register-tiled micro-kernel accumulates the MR×NR tile of C over KC
///   with broadcast-A × vector-B fused multiply-adds, then applies alpha and beta (beta on the first k block only).</item>
/// </list>
/// Packing absorbs every transpose and leading dimension, so one micro-kernel serves all four layouts. Every element
/// of C is one FMA chain over p within each KC block, blocks in k order, alpha and beta applied with the same fused
/// rounding in full and edge tiles: the bits depend on KC alone, not on the thread count, schedule, MC, NC or which
/// micro-kernel ran. Short products
/// (m &lt; <see cref="SmallM"/>) are memory-bound and take a row-streaming path instead.
/// Two micro-kernels: 6×16 on Vector256 (AVX2: 12 accumulators in the 16 ymm registers) and 8×32 on Vector512 where
/// AVX-512 is accelerated (16 accumulators of the 32 zmm registers).
/// </summary>
public static unsafe class ManagedGemm
{
    /// <summary>Rows below which the product is treated as a batch of matrix-vector products.</summary>
    public const int SmallM = 8;

    /// <summary>Threads used; defaults to the processor count.</summary>
    public static int MaxThreads { get; set; } = Environment.ProcessorCount;

    /// <summary>Use the Vector512 micro-kernel (default: when the hardware accelerates it). Tests switch it off to
    /// cover the Vector256 kernel too.</summary>
    public static bool UseVector512 { get; set; } = Vector512.IsHardwareAccelerated;

    public static string Describe => UseVector512 ? "packed GEBP, 8×32 Vector512 FMA micro-kernel" : "packed GEBP, 6×16 Vector256 FMA micro-kernel";

    /// <summary>Cache blocking: an A block (MC×KC) stays in L2, a B sliver (KC×NR) in L1, a k block of the B panel
    /// (KC×NC) in L3. NC is an upper bound: the packed panel spans all of k and is capped at 16 MiB.
    /// Settable so tests can force many blocks on small shapes; each call reads them once.</summary>
    internal static (int KC, int MCMax, int NC) Blocking { get; set; } = DefaultBlocking();

    // FINETRACE_GEMM_BLOCKING="KC,MC,NC" overrides the blocking, for tuning on a new machine with `finetrace bench gemm`.
    static (int, int, int) DefaultBlocking()
    {
        var env = Environment.GetEnvironmentVariable("FINETRACE_GEMM_BLOCKING");
        if (env is null) return (256, 120, 4096);
        var parts = env.Split(',');
        if (parts.Length != 3 || !int.TryParse(parts[0], out int kc) || !int.TryParse(parts[1], out int mc) || !int.TryParse(parts[2], out int nc)
            || kc < 1 || mc < 1 || nc < 1)
            throw new ArgumentException($"FINETRACE_GEMM_BLOCKING must be three positive integers KC,MC,NC, got '{env}'");
        return (kc, mc, nc);
    }

    public static void Sgemm(bool transA, bool transB, int m, int n, int k, float alpha,
        ReadOnlySpan<float> a, int lda, ReadOnlySpan<float> b, int ldb, float beta, Span<float> c, int ldc)
    {
        // Raw pointers below: validate here too, since this entry point is public.
        Gemm.CheckShapes(transA, transB, m, n, k, a.Length, lda, b.Length, ldb, c.Length, ldc);
        if (m == 0 || n == 0) return;
        fixed (float* pa = a) fixed (float* pb = b) fixed (float* pc = c)
        {
            var g = new Problem(transA, transB, m, n, k, alpha, pa, lda, pb, ldb, beta, pc, ldc);
            if (k == 0 || alpha == 0f) ScaleC(g);
            else if (m < SmallM) SmallRows(g);
            else if (UseVector512 && Vector512.IsHardwareAccelerated) Blocked<Kernel8x32>(g);
            else Blocked<Kernel6x16>(g);
        }
    }

    /// <summary>One product's arguments, as raw pointers (the caller pins the spans for the whole call).</summary>
    readonly struct Problem(bool transA, bool transB, int m, int n, int k, float alpha,
        float* a, int lda, float* b, int ldb, float beta, float* c, int ldc)
    {
        public readonly bool TransA = transA, TransB = transB;
        public readonly int M = m, N = n, K = k, Lda = lda, Ldb = ldb, Ldc = ldc;
        public readonly float Alpha = alpha, Beta = beta;
        public readonly nint A = (nint)a, B = (nint)b, C = (nint)c;
    }

    static void ScaleC(in Problem g)
    {
        float* c = (float*)g.C;
        for (int i = 0; i < g.M; i++)
        {
            var row = new Span<float>(c + (long)i * g.Ldc, g.N);
            if (g.Beta == 0f) row.Clear(); else System.Numerics.Tensors.TensorPrimitives.Multiply(row, g.Beta, row);
        }
    }

    // ------------------------------------------------------------------ the blocked path

    interface IMicroKernel
    {
        static abstract int MR { get; }
        static abstract int NR { get; }
        /// c[MR×NR] (row stride ldc) = alpha · Σ_p a[p·MR + i] · b[p·NR + j] + (beta == 0 ? 0 : beta · c)
        static abstract void Run(int kc, float* a, float* b, float* c, int ldc, float alpha, float beta);
    }

    // Floats of packed B held at once: the panel is all of k by as many columns as fit (16 MiB).
    const int PanelBudget = 1 << 22;

    static void Blocked<TK>(Problem g) where TK : IMicroKernel
    {
        int mr = TK.MR, nr = TK.NR;
        int threads = Math.Max(1, MaxThreads);
        var (KC, MCMax, NC) = Blocking;
        // Row blocks: at most MCMax tall, and at least two per thread when m allows, so work balances.
        int mBlocks = Math.Max(CeilDiv(g.M, MCMax), Math.Min(2 * threads, CeilDiv(g.M, mr)));
        int mc = RoundUp(CeilDiv(g.M, mBlocks), mr);
        mBlocks = CeilDiv(g.M, mc);
        // The B panel covers all of k, so each panel costs two parallel sections (pack, compute) and no more.
        int kBlocks = CeilDiv(g.K, KC);
        long kRows = (long)kBlocks * Math.Min(KC, g.K);
        int panelCols = (int)Math.Clamp(PanelBudget / kRows / nr * nr, nr, RoundUp(Math.Max(NC, nr), nr));
        panelCols = Math.Min(panelCols, RoundUp(g.N, nr));

        float[] bPanel = Rent((int)(kRows * panelCols));
        try
        {
            fixed (float* bp = bPanel)
            {
                nint bpp = (nint)bp;
                for (int jc = 0; jc < g.N; jc += panelCols)
                {
                    var job = new PanelJob(g, jc, Math.Min(panelCols, g.N - jc), KC, kBlocks, mc, mBlocks, threads, bpp, nr);
                    int packParts = Math.Min(job.Slivers, threads);
                    if (packParts > 1 && (long)g.K * job.Nc >= 32768)
                        Parallel.For(0, packParts, new ParallelOptions { MaxDegreeOfParallelism = threads }, t =>
                        {
                            var (s0, s1) = Split(job.Slivers, packParts, t);
                            PackPanel<TK>(job, s0, s1);
                        });
                    else PackPanel<TK>(job, 0, job.Slivers);

                    int items = job.MBlocks * job.NParts;
                    if (items == 1 || threads == 1)
                        for (int it = 0; it < items; it++) Item<TK>(job, it);
                    else
                        Parallel.For(0, items, new ParallelOptions { MaxDegreeOfParallelism = threads }, it => Item<TK>(job, it));
                }
            }
        }
        finally { Return(bPanel); }
    }

    /// <summary>One column panel of C: its packed B (every k block, slivers of NR columns) and how work splits.</summary>
    sealed class PanelJob
    {
        public readonly Problem G;
        public readonly int Jc, Nc, KC, KBlocks, Mc, MBlocks, Slivers, NParts;
        public readonly nint BPanel;
        public readonly long BlockStride; // floats between the packed B of consecutive k blocks

        public PanelJob(in Problem g, int jc, int nc, int kc, int kBlocks, int mc, int mBlocks, int threads, nint bPanel, int nr)
        {
            G = g; Jc = jc; Nc = nc; KC = kc; KBlocks = kBlocks; Mc = mc; MBlocks = mBlocks; BPanel = bPanel;
            Slivers = CeilDiv(nc, nr);
            BlockStride = (long)Math.Min(kc, g.K) * Slivers * nr;
            // Split columns too when there are too few row blocks to keep every thread busy.
            NParts = Math.Min(Slivers, Math.Max(1, CeilDiv(2 * threads, mBlocks)));
        }

        public (int Pc, int Kc) Block(int q) => (q * KC, Math.Min(KC, G.K - q * KC));
    }

    static void PackPanel<TK>(PanelJob job, int s0, int s1) where TK : IMicroKernel
    {
        for (int q = 0; q < job.KBlocks; q++)
        {
            var (pc, kc) = job.Block(q);
            PackB<TK>(job.G, pc, kc, job.Jc, job.Nc, s0, s1, (float*)job.BPanel + q * job.BlockStride);
        }
    }

    // One work item: row block `it / NParts`, sliver range `it % NParts`; for each k block, pack that A block and run
    // the macro-kernel over the item's B slivers.
    static void Item<TK>(PanelJob job, int it) where TK : IMicroKernel
    {
        int mr = TK.MR, nr = TK.NR;
        ref readonly Problem g = ref job.G;
        int ic = it / job.NParts * job.Mc;
        int mcb = Math.Min(job.Mc, g.M - ic);
        var (s0, s1) = Split(job.Slivers, job.NParts, it % job.NParts);
        float[] aBuf = ThreadABuffer(RoundUp(job.Mc, mr) * Math.Min(job.KC, g.K) + 8); // + slack for Transpose8's 6-row spill
        float* c = (float*)g.C;
        float* tile = stackalloc float[mr * nr];
        fixed (float* ap = aBuf)
            for (int q = 0; q < job.KBlocks; q++)
            {
                var (pc, kc) = job.Block(q);
                float betaEff = q == 0 ? g.Beta : 1f;
                float* bPanel = (float*)job.BPanel + q * job.BlockStride;
                PackA<TK>(g, ic, mcb, pc, kc, ap);
                for (int s = s0; s < s1; s++)
                {
                    int j = s * nr;
                    int nrb = Math.Min(nr, job.Nc - j);
                    float* bs = bPanel + (long)s * kc * nr;
                    for (int i = 0; i < mcb; i += mr)
                    {
                        int mrb = Math.Min(mr, mcb - i);
                        float* asl = ap + (long)i * kc;
                        float* cij = c + (long)(ic + i) * g.Ldc + job.Jc + j;
                        if (mrb == mr && nrb == nr)
                            TK.Run(kc, asl, bs, cij, g.Ldc, g.Alpha, betaEff);
                        else
                        {
                            // Edge tile: compute the full padded tile aside, then merge the valid part with the
                            // micro-kernel's own rounding (alpha·acc fused with beta·c), so every element of C gets
                            // the same arithmetic whichever tile it falls in.
                            TK.Run(kc, asl, bs, tile, nr, 1f, 0f);
                            for (int ii = 0; ii < mrb; ii++)
                                for (int jj = 0; jj < nrb; jj++)
                                {
                                    float* cp = cij + (long)ii * g.Ldc + jj;
                                    float acc = tile[ii * nr + jj];
                                    *cp = betaEff == 0f ? acc * g.Alpha : MathF.FusedMultiplyAdd(acc, g.Alpha, *cp * betaEff);
                                }
                        }
                    }
                }
            }
    }

    // B panel op(B)[pc..pc+kc, jc..jc+nc] → slivers s0..s1, each kc×NR, k-major, zero-padded past nc.
    static void PackB<TK>(in Problem g, int pc, int kc, int jc, int nc, int s0, int s1, float* dst) where TK : IMicroKernel
    {
        int nr = TK.NR;
        float* b = (float*)g.B;
        for (int s = s0; s < s1; s++)
        {
            float* d = dst + (long)s * kc * nr;
            int j0 = jc + s * nr, w = Math.Min(nr, nc - s * nr);
            if (!g.TransB)
            {
                // op(B)[p, j] = b[p·ldb + j]: rows of the sliver are contiguous
                float* src = b + (long)pc * g.Ldb + j0;
                if (w == nr)
                    for (int p = 0; p < kc; p++, src += g.Ldb, d += nr)
                        for (int v = 0; v < nr; v += 8) Vector256.Store(Vector256.Load(src + v), d + v);
                else
                    for (int p = 0; p < kc; p++, src += g.Ldb, d += nr)
                    {
                        int jj = 0;
                        for (; jj < w; jj++) d[jj] = src[jj];
                        for (; jj < nr; jj++) d[jj] = 0f;
                    }
            }
            else
            {
                // op(B)[p, j] = b[j·ldb + p]: each column of the sliver is a contiguous row of b
                if (w < nr) new Span<float>(d, kc * nr).Clear();
                int jj = 0;
                for (; jj + 8 <= w; jj += 8) Transpose8(b + (long)(j0 + jj) * g.Ldb + pc, g.Ldb, kc, d + jj, nr);
                for (; jj < w; jj++)
                {
                    float* src = b + (long)(j0 + jj) * g.Ldb + pc;
                    for (int p = 0; p < kc; p++) d[p * nr + jj] = src[p];
                }
            }
        }
    }

    // A block op(A)[ic..ic+mcb, pc..pc+kc] → slivers of MR rows, each kc×MR, k-major, zero-padded past mcb.
    static void PackA<TK>(in Problem g, int ic, int mcb, int pc, int kc, float* dst) where TK : IMicroKernel
    {
        int mr = TK.MR;
        float* a = (float*)g.A;
        for (int i = 0; i < mcb; i += mr, dst += (long)kc * mr)
        {
            int h = Math.Min(mr, mcb - i);
            if (g.TransA)
            {
                // op(A)[i, p] = a[p·lda + i]: each k-step of the sliver is contiguous in a
                float* src = a + (long)pc * g.Lda + ic + i;
                for (int p = 0; p < kc; p++, src += g.Lda)
                {
                    float* d = dst + p * mr;
                    int ii = 0;
                    for (; ii < h; ii++) d[ii] = src[ii];
                    for (; ii < mr; ii++) d[ii] = 0f;
                }
            }
            else
            {
                // op(A)[i, p] = a[i·lda + p]: rows are contiguous; transpose them into the sliver
                if (h < mr) new Span<float>(dst, kc * mr).Clear();
                int ii = 0;
                if (h == 6 && mr == 6) { Transpose8(a + (long)(ic + i) * g.Lda + pc, g.Lda, kc, dst, 6, rows: 6); ii = 6; }
                for (; ii + 8 <= h; ii += 8) Transpose8(a + (long)(ic + i + ii) * g.Lda + pc, g.Lda, kc, dst + ii, mr);
                for (; ii < h; ii++)
                {
                    float* src = a + (long)(ic + i + ii) * g.Lda + pc;
                    for (int p = 0; p < kc; p++) dst[p * mr + ii] = src[p];
                }
            }
        }
    }

    // dst[p·dstStride + r] = src[r·srcStride + p] for `rows` (8, or 6 with dstStride 6) rows r and p in [0, len):
    // 8×8 register transposes. With 6 rows the two missing rows repeat row 0 and each 8-float store spills 2 floats
    // into the next k-step's slot, which the next (ascending) store overwrites; the very last spill lands past
    // len·dstStride, so the destination needs 2 floats of slack there.
    static void Transpose8(float* src, int srcStride, int len, float* dst, int dstStride, int rows = 8)
    {
        int p = 0;
        long s6 = rows == 8 ? 6L * srcStride : 0, s7 = rows == 8 ? 7L * srcStride : 0;
        if (Vector256.IsHardwareAccelerated && Avx.IsSupported)
            for (; p + 8 <= len; p += 8)
            {
                float* s = src + p;
                var r0 = Vector256.Load(s); var r1 = Vector256.Load(s + srcStride);
                var r2 = Vector256.Load(s + 2 * srcStride); var r3 = Vector256.Load(s + 3 * srcStride);
                var r4 = Vector256.Load(s + 4 * srcStride); var r5 = Vector256.Load(s + 5 * srcStride);
                var r6 = Vector256.Load(s + s6); var r7 = Vector256.Load(s + s7);
                Transpose8x8(ref r0, ref r1, ref r2, ref r3, ref r4, ref r5, ref r6, ref r7);
                float* d = dst + (long)p * dstStride;
                Vector256.Store(r0, d); Vector256.Store(r1, d + dstStride);
                Vector256.Store(r2, d + 2 * dstStride); Vector256.Store(r3, d + 3 * dstStride);
                Vector256.Store(r4, d + 4 * dstStride); Vector256.Store(r5, d + 5 * dstStride);
                Vector256.Store(r6, d + 6 * dstStride); Vector256.Store(r7, d + 7 * dstStride);
            }
        for (; p < len; p++)
            for (int r = 0; r < rows; r++) dst[(long)p * dstStride + r] = src[(long)r * srcStride + p];
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void Transpose8x8(ref Vector256<float> r0, ref Vector256<float> r1, ref Vector256<float> r2, ref Vector256<float> r3,
        ref Vector256<float> r4, ref Vector256<float> r5, ref Vector256<float> r6, ref Vector256<float> r7)
    {
        var t0 = Avx.UnpackLow(r0, r1);
        var t1 = Avx.UnpackHigh(r0, r1);
        var t2 = Avx.UnpackLow(r2, r3);
        var t3 = Avx.UnpackHigh(r2, r3);
        var t4 = Avx.UnpackLow(r4, r5);
        var t5 = Avx.UnpackHigh(r4, r5);
        var t6 = Avx.UnpackLow(r6, r7);
        var t7 = Avx.UnpackHigh(r6, r7);
        var u0 = Avx.Shuffle(t0, t2, 0x44);
        var u1 = Avx.Shuffle(t0, t2, 0xEE);
        var u2 = Avx.Shuffle(t1, t3, 0x44);
        var u3 = Avx.Shuffle(t1, t3, 0xEE);
        var u4 = Avx.Shuffle(t4, t6, 0x44);
        var u5 = Avx.Shuffle(t4, t6, 0xEE);
        var u6 = Avx.Shuffle(t5, t7, 0x44);
        var u7 = Avx.Shuffle(t5, t7, 0xEE);
        r0 = Avx.Permute2x128(u0, u4, 0x20);
        r1 = Avx.Permute2x128(u1, u5, 0x20);
        r2 = Avx.Permute2x128(u2, u6, 0x20);
        r3 = Avx.Permute2x128(u3, u7, 0x20);
        r4 = Avx.Permute2x128(u0, u4, 0x31);
        r5 = Avx.Permute2x128(u1, u5, 0x31);
        r6 = Avx.Permute2x128(u2, u6, 0x31);
        r7 = Avx.Permute2x128(u3, u7, 0x31);
    }

    // ------------------------------------------------------------------ micro-kernels

    readonly struct Kernel6x16 : IMicroKernel
    {
        public static int MR => 6;
        public static int NR => 16;

        public static void Run(int kc, float* a, float* b, float* c, int ldc, float alpha, float beta)
        {
            Vector256<float> c00 = default, c01 = default, c10 = default, c11 = default, c20 = default, c21 = default;
            Vector256<float> c30 = default, c31 = default, c40 = default, c41 = default, c50 = default, c51 = default;
            for (int p = 0; p < kc; p++, a += 6, b += 16)
            {
                var b0 = Vector256.Load(b);
                var b1 = Vector256.Load(b + 8);
                var av = Vector256.Create(a[0]);
                c00 = Vector256.FusedMultiplyAdd(av, b0, c00); c01 = Vector256.FusedMultiplyAdd(av, b1, c01);
                av = Vector256.Create(a[1]);
                c10 = Vector256.FusedMultiplyAdd(av, b0, c10); c11 = Vector256.FusedMultiplyAdd(av, b1, c11);
                av = Vector256.Create(a[2]);
                c20 = Vector256.FusedMultiplyAdd(av, b0, c20); c21 = Vector256.FusedMultiplyAdd(av, b1, c21);
                av = Vector256.Create(a[3]);
                c30 = Vector256.FusedMultiplyAdd(av, b0, c30); c31 = Vector256.FusedMultiplyAdd(av, b1, c31);
                av = Vector256.Create(a[4]);
                c40 = Vector256.FusedMultiplyAdd(av, b0, c40); c41 = Vector256.FusedMultiplyAdd(av, b1, c41);
                av = Vector256.Create(a[5]);
                c50 = Vector256.FusedMultiplyAdd(av, b0, c50); c51 = Vector256.FusedMultiplyAdd(av, b1, c51);
            }
            var va = Vector256.Create(alpha);
            Store(c, c00, c01, va, beta); c += ldc;
            Store(c, c10, c11, va, beta); c += ldc;
            Store(c, c20, c21, va, beta); c += ldc;
            Store(c, c30, c31, va, beta); c += ldc;
            Store(c, c40, c41, va, beta); c += ldc;
            Store(c, c50, c51, va, beta);
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        static void Store(float* c, Vector256<float> x0, Vector256<float> x1, Vector256<float> alpha, float beta)
        {
            if (beta == 0f)
            {
                Vector256.Store(x0 * alpha, c);
                Vector256.Store(x1 * alpha, c + 8);
            }
            else
            {
                var vb = Vector256.Create(beta);
                Vector256.Store(Vector256.FusedMultiplyAdd(x0, alpha, Vector256.Load(c) * vb), c);
                Vector256.Store(Vector256.FusedMultiplyAdd(x1, alpha, Vector256.Load(c + 8) * vb), c + 8);
            }
        }
    }

    readonly struct Kernel8x32 : IMicroKernel
    {
        public static int MR => 8;
        public static int NR => 32;

        public static void Run(int kc, float* a, float* b, float* c, int ldc, float alpha, float beta)
        {
            Vector512<float> c00 = default, c01 = default, c10 = default, c11 = default, c20 = default, c21 = default, c30 = default, c31 = default;
            Vector512<float> c40 = default, c41 = default, c50 = default, c51 = default, c60 = default, c61 = default, c70 = default, c71 = default;
            for (int p = 0; p < kc; p++, a += 8, b += 32)
            {
                var b0 = Vector512.Load(b);
                var b1 = Vector512.Load(b + 16);
                var av = Vector512.Create(a[0]);
                c00 = Vector512.FusedMultiplyAdd(av, b0, c00); c01 = Vector512.FusedMultiplyAdd(av, b1, c01);
                av = Vector512.Create(a[1]);
                c10 = Vector512.FusedMultiplyAdd(av, b0, c10); c11 = Vector512.FusedMultiplyAdd(av, b1, c11);
                av = Vector512.Create(a[2]);
                c20 = Vector512.FusedMultiplyAdd(av, b0, c20); c21 = Vector512.FusedMultiplyAdd(av, b1, c21);
                av = Vector512.Create(a[3]);
                c30 = Vector512.FusedMultiplyAdd(av, b0, c30); c31 = Vector512.FusedMultiplyAdd(av, b1, c31);
                av = Vector512.Create(a[4]);
                c40 = Vector512.FusedMultiplyAdd(av, b0, c40); c41 = Vector512.FusedMultiplyAdd(av, b1, c41);
                av = Vector512.Create(a[5]);
                c50 = Vector512.FusedMultiplyAdd(av, b0, c50); c51 = Vector512.FusedMultiplyAdd(av, b1, c51);
                av = Vector512.Create(a[6]);
                c60 = Vector512.FusedMultiplyAdd(av, b0, c60); c61 = Vector512.FusedMultiplyAdd(av, b1, c61);
                av = Vector512.Create(a[7]);
                c70 = Vector512.FusedMultiplyAdd(av, b0, c70); c71 = Vector512.FusedMultiplyAdd(av, b1, c71);
            }
            var va = Vector512.Create(alpha);
            Store(c, c00, c01, va, beta); c += ldc;
            Store(c, c10, c11, va, beta); c += ldc;
            Store(c, c20, c21, va, beta); c += ldc;
            Store(c, c30, c31, va, beta); c += ldc;
            Store(c, c40, c41, va, beta); c += ldc;
            Store(c, c50, c51, va, beta); c += ldc;
            Store(c, c60, c61, va, beta); c += ldc;
            Store(c, c70, c71, va, beta);
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        static void Store(float* c, Vector512<float> x0, Vector512<float> x1, Vector512<float> alpha, float beta)
        {
            if (beta == 0f)
            {
                Vector512.Store(x0 * alpha, c);
                Vector512.Store(x1 * alpha, c + 16);
            }
            else
            {
                var vb = Vector512.Create(beta);
                Vector512.Store(Vector512.FusedMultiplyAdd(x0, alpha, Vector512.Load(c) * vb), c);
                Vector512.Store(Vector512.FusedMultiplyAdd(x1, alpha, Vector512.Load(c + 16) * vb), c + 16);
            }
        }
    }

    // ------------------------------------------------------------------ short products (m < SmallM)

    // Memory-bound: every element of B is read once and used for all m rows. Parallel over disjoint column ranges.
    static void SmallRows(Problem g)
    {
        int threads = Math.Max(1, MaxThreads);
        int parts = (long)g.N * g.K < (1 << 16) ? 1 : Math.Min(4 * threads, CeilDiv(g.N, 64));
        // Rows of op(A): A's own rows (stride lda), or gathered once from its columns when A is stored transposed.
        float[]? gathered = g.TransA ? Rent(g.M * g.K) : null;
        try
        {
            fixed (float* gp = gathered)
            {
                float* x = (float*)g.A;
                int ldx = g.Lda;
                if (gp != null)
                {
                    for (int i = 0; i < g.M; i++)
                        for (int p = 0; p < g.K; p++) gp[(long)i * g.K + p] = x[(long)p * g.Lda + i];
                    x = gp;
                    ldx = g.K;
                }
                nint xp = (nint)x;
                if (parts <= 1) SmallRowsRange(g, x, ldx, 0, g.N);
                else
                    Parallel.For(0, parts, new ParallelOptions { MaxDegreeOfParallelism = threads }, t =>
                    {
                        var (j0, j1) = Split(CeilDiv(g.N, 8), parts, t);
                        SmallRowsRange(g, (float*)xp, ldx, j0 * 8, Math.Min(g.N, j1 * 8));
                    });
            }
        }
        finally { if (gathered != null) Return(gathered); }
    }

    // x: [m, k] rows of op(A) with row stride ldx; writes C[:, j0..j1]
    static void SmallRowsRange(in Problem g, float* x, int ldx, int j0, int j1)
    {
        if (g.TransB) SmallRowsDot(g, x, ldx, j0, j1);
        else SmallRowsAxpy(g, x, ldx, j0, j1);
    }

    // op(B) = Bᵀ with B [n, k]: C[i, j] = x_i · B[j, :]; each B row is read from memory once and stays in L1
    // while all m rows of x use it.
    static void SmallRowsDot(in Problem g, float* x, int ldx, int j0, int j1)
    {
        float* b = (float*)g.B, c = (float*)g.C;
        int m = g.M, k = g.K;
        Span<float> acc = stackalloc float[SmallM];
        for (int j = j0; j < j1; j++)
        {
            float* bj = b + (long)j * g.Ldb;
            for (int i = 0; i < m; i++)
            {
                float* xi = x + (long)i * ldx;
                var s0 = Vector256<float>.Zero; var s1 = s0; var s2 = s0; var s3 = s0;
                int p = 0;
                for (; p + 32 <= k; p += 32)
                {
                    s0 = Vector256.FusedMultiplyAdd(Vector256.Load(xi + p), Vector256.Load(bj + p), s0);
                    s1 = Vector256.FusedMultiplyAdd(Vector256.Load(xi + p + 8), Vector256.Load(bj + p + 8), s1);
                    s2 = Vector256.FusedMultiplyAdd(Vector256.Load(xi + p + 16), Vector256.Load(bj + p + 16), s2);
                    s3 = Vector256.FusedMultiplyAdd(Vector256.Load(xi + p + 24), Vector256.Load(bj + p + 24), s3);
                }
                for (; p + 8 <= k; p += 8) s0 = Vector256.FusedMultiplyAdd(Vector256.Load(xi + p), Vector256.Load(bj + p), s0);
                float s = Vector256.Sum((s0 + s1) + (s2 + s3));
                for (; p < k; p++) s += xi[p] * bj[p];
                acc[i] = s;
            }
            for (int i = 0; i < m; i++)
            {
                float* cp = c + (long)i * g.Ldc + j;
                *cp = g.Beta == 0f ? g.Alpha * acc[i] : g.Alpha * acc[i] + g.Beta * *cp;
            }
        }
    }

    // op(B) = B with B [k, n]: C[i, j0..j1] = Σ_p x_i[p] · B[p, j0..j1], 64 columns at a time kept in registers.
    static void SmallRowsAxpy(in Problem g, float* x, int ldx, int j0, int j1)
    {
        float* b = (float*)g.B, c = (float*)g.C;
        int m = g.M, k = g.K;
        Span<float> tile = stackalloc float[SmallM * 64];
        for (int j = j0; j < j1; j += 64)
        {
            int w = Math.Min(64, j1 - j);
            for (int i = 0; i < m; i++)
            {
                float* xi = x + (long)i * ldx;
                if (w == 64)
                {
                    var s0 = Vector256<float>.Zero; var s1 = s0; var s2 = s0; var s3 = s0; var s4 = s0; var s5 = s0; var s6 = s0; var s7 = s0;
                    float* bp = b + j;
                    for (int p = 0; p < k; p++, bp += g.Ldb)
                    {
                        var xv = Vector256.Create(xi[p]);
                        s0 = Vector256.FusedMultiplyAdd(xv, Vector256.Load(bp), s0);
                        s1 = Vector256.FusedMultiplyAdd(xv, Vector256.Load(bp + 8), s1);
                        s2 = Vector256.FusedMultiplyAdd(xv, Vector256.Load(bp + 16), s2);
                        s3 = Vector256.FusedMultiplyAdd(xv, Vector256.Load(bp + 24), s3);
                        s4 = Vector256.FusedMultiplyAdd(xv, Vector256.Load(bp + 32), s4);
                        s5 = Vector256.FusedMultiplyAdd(xv, Vector256.Load(bp + 40), s5);
                        s6 = Vector256.FusedMultiplyAdd(xv, Vector256.Load(bp + 48), s6);
                        s7 = Vector256.FusedMultiplyAdd(xv, Vector256.Load(bp + 56), s7);
                    }
                    fixed (float* t = tile)
                    {
                        float* ti = t + i * 64;
                        Vector256.Store(s0, ti); Vector256.Store(s1, ti + 8); Vector256.Store(s2, ti + 16); Vector256.Store(s3, ti + 24);
                        Vector256.Store(s4, ti + 32); Vector256.Store(s5, ti + 40); Vector256.Store(s6, ti + 48); Vector256.Store(s7, ti + 56);
                    }
                }
                else
                {
                    for (int jj = 0; jj < w; jj++)
                    {
                        float s = 0;
                        float* bp = b + j + jj;
                        for (int p = 0; p < k; p++, bp += g.Ldb) s = MathF.FusedMultiplyAdd(xi[p], *bp, s);
                        tile[i * 64 + jj] = s;
                    }
                }
            }
            for (int i = 0; i < m; i++)
                for (int jj = 0; jj < w; jj++)
                {
                    float* cp = c + (long)i * g.Ldc + j + jj;
                    *cp = g.Beta == 0f ? g.Alpha * tile[i * 64 + jj] : g.Alpha * tile[i * 64 + jj] + g.Beta * *cp;
                }
        }
    }

    // ------------------------------------------------------------------ buffers and helpers

    [ThreadStatic] static float[]? _aBuffer;

    // The calling thread's A-block buffer (pinned, grown on demand, reused across calls).
    static float[] ThreadABuffer(int length)
    {
        var buf = _aBuffer;
        if (buf == null || buf.Length < length) _aBuffer = buf = GC.AllocateUninitializedArray<float>(length, pinned: true);
        return buf;
    }

    static readonly ConcurrentBag<float[]> Pool = new();

    static float[] Rent(int length)
    {
        while (Pool.TryTake(out var buf))
            if (buf.Length >= length) return buf;
        return GC.AllocateUninitializedArray<float>(Math.Max(length, 1), pinned: true);
    }

    // Keeps a couple of buffers (the packed B panel is up to 16 MiB); more concurrent callers allocate.
    static void Return(float[] buf)
    {
        if (Pool.Count < 2) Pool.Add(buf);
    }

    static int CeilDiv(int a, int b) => (a + b - 1) / b;
    static int RoundUp(int a, int b) => CeilDiv(a, b) * b;

    // Part t of `count` items split into `parts` nearly equal contiguous ranges.
    static (int, int) Split(int count, int parts, int t) => ((int)((long)count * t / parts), (int)((long)count * (t + 1) / parts));
}

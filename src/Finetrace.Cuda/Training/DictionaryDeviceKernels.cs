using ILGPU;
using ILGPU.Runtime;

namespace Finetrace.Cuda;

/// <summary>
/// The kernels of one TopK-family dictionary training step on the device (the peers of
/// <c>Finetrace.Dictionaries.DictionaryKernels</c>, <c>Selection</c> and the trainer phases). Shapes: B tokens, M models,
/// D width, F latents; codes in compressed-row form (rowStart [B+1], index/value [nnz], ascending latents per row) with
/// a per-latent column view (colStart [F+1], colRow/colEntry [nnz], tokens ascending per latent) built without atomics,
/// so every reduction runs in the CPU step's order. Each body mirrors its CPU peer's float32 operation order; sums the
/// CPU takes in double are taken in double here. One thread per output (row, latent or element): simple and correct;
/// group-per-row versions are the planned GPU speed-up and keep these interfaces.
/// </summary>
public sealed class DictionaryDeviceKernels
{
    readonly Accelerator acc;
    /// <summary>Largest group the row and histogram kernels use (shared arrays are sized for it).</summary>
    const int MaxGroup = 256;
    readonly int group;
    readonly Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<int>, KeyArgs, ArrayView<int>, RadixPass> radix8;
    readonly Action<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<int>, KeyArgs, ArrayView<int>, RadixPass> radix8Reference;
    readonly Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<int>, KeyArgs, RowSelect> rowCountAboveGroup;
    readonly Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<int>, KeyArgs, RowSelect, int> rowTopKGroup;
    readonly Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<int>, KeyArgs, RowSelect, CodesView, ArrayView<int>> rowWriteGroup;
    readonly Action<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int> normalize;
    readonly Action<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, int> subtractBias;
    readonly Action<Index1D, ArrayView<float>, ArrayView<float>, int> addBiasRelu;
    readonly Action<Index1D, ArrayView<float>, ArrayView<float>, CodeNormArgs> codeNorm;
    readonly Action<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<int>, KeyArgs, RowSelect> rowCountAbove;
    readonly Action<Index1D, RowSelect, int> batchBudget;
    readonly Action<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<int>, KeyArgs, RowSelect, int> rowTopK;
    readonly Action<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<int>, KeyArgs, RowSelect, CodesView, ArrayView<int>> rowWrite;
    readonly Action<Index1D, ArrayView<int>, ArrayView<int>, int, int> scanChunks;
    readonly Action<Index1D, ArrayView<int>, int> scanSerial;
    readonly Action<Index1D, ArrayView<int>, ArrayView<int>, ArrayView<int>, int, int> scanApply;
    readonly Action<Index1D, ArrayView<int>, CodesView, int, int> columnCount;
    readonly Action<Index1D, ArrayView<int>, CodesView, int, int> columnFill;
    readonly Action<Index1D, ArrayView<int>, int> fillInt;
    readonly Action<Index1D, CodesView, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int, int> decode;
    readonly Action<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<double>, LossArgs> reconLoss;
    readonly Action<Index1D, ArrayView<float>, ArrayView<double>, ArrayView<double>, int, int> columnMoments;
    readonly Action<Index1D, ArrayView<long>, long> age;
    readonly Action<Index1D, CodesView, ArrayView<long>> resetFired;
    readonly Action<Index1D, ArrayView<long>, ArrayView<int>, ArrayView<int>, long> deadMask;
    readonly Action<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int> residualMean;
    readonly Action<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<double>, int> auxMoments;
    readonly Action<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, float> auxDelta;
    readonly Action<Index1D, CodesView, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int> codeGrad;
    readonly Action<Index1D, CodesView, CodesView, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, WeightGradArgs> weightGrads;
    readonly Action<Index1D, CodesView, CodesView, ArrayView<float>, int> encoderBiasGrad;
    readonly Action<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, BiasGradArgs> decoderBiasGrad;
    readonly Action<Index1D, ArrayView<float>, ArrayView<float>, int> projectDecoderGrad;
    readonly Action<Index1D, ArrayView<float>, int> normalizeRows;
    readonly Action<Index1D, ArrayView<float>, ArrayView<double>, int> sumSquaresPartial;
    readonly Action<Index1D, ArrayView<double>, ArrayView<double>, int> sumSerial;
    readonly Action<Index1D, ArrayView<float>, float> scale;

    static readonly System.Runtime.CompilerServices.ConditionalWeakTable<Accelerator, DictionaryDeviceKernels> loaded = new();

    /// <summary>The kernels of <paramref name="accelerator"/>, loaded (compiled) once per accelerator.</summary>
    public static DictionaryDeviceKernels For(Accelerator accelerator) => loaded.GetValue(accelerator, a => new DictionaryDeviceKernels(a));

    public DictionaryDeviceKernels(Accelerator accelerator)
    {
        acc = accelerator;
        int g = 1;
        while (g * 2 <= Math.Min(MaxGroup, acc.MaxNumThreadsPerGroup)) g *= 2;
        group = g;
        radix8 = acc.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<int>, KeyArgs, ArrayView<int>, RadixPass>(Radix8Kernel);
        radix8Reference = acc.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<int>, KeyArgs, ArrayView<int>, RadixPass>(Radix8ReferenceKernel);
        rowCountAboveGroup = acc.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<int>, KeyArgs, RowSelect>(RowCountAboveGroupKernel);
        rowTopKGroup = acc.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<int>, KeyArgs, RowSelect, int>(RowTopKGroupKernel);
        rowWriteGroup = acc.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<int>, KeyArgs, RowSelect, CodesView, ArrayView<int>>(RowWriteGroupKernel);
        normalize = acc.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int>(NormalizeKernel);
        subtractBias = acc.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, int>(SubtractBiasKernel);
        addBiasRelu = acc.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, int>(AddBiasReluKernel);
        codeNorm = acc.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, CodeNormArgs>(CodeNormKernel);
        rowCountAbove = acc.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<int>, KeyArgs, RowSelect>(RowCountAboveKernel);
        batchBudget = acc.LoadAutoGroupedStreamKernel<Index1D, RowSelect, int>(BatchBudgetKernel);
        rowTopK = acc.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<int>, KeyArgs, RowSelect, int>(RowTopKKernel);
        rowWrite = acc.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<int>, KeyArgs, RowSelect, CodesView, ArrayView<int>>(RowWriteKernel);
        scanChunks = acc.LoadAutoGroupedStreamKernel<Index1D, ArrayView<int>, ArrayView<int>, int, int>(ScanChunksKernel);
        scanSerial = acc.LoadAutoGroupedStreamKernel<Index1D, ArrayView<int>, int>(ScanSerialKernel);
        scanApply = acc.LoadAutoGroupedStreamKernel<Index1D, ArrayView<int>, ArrayView<int>, ArrayView<int>, int, int>(ScanApplyKernel);
        columnCount = acc.LoadAutoGroupedStreamKernel<Index1D, ArrayView<int>, CodesView, int, int>(ColumnCountKernel);
        columnFill = acc.LoadAutoGroupedStreamKernel<Index1D, ArrayView<int>, CodesView, int, int>(ColumnFillKernel);
        fillInt = acc.LoadAutoGroupedStreamKernel<Index1D, ArrayView<int>, int>(FillIntKernel);
        decode = acc.LoadAutoGroupedStreamKernel<Index1D, CodesView, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int, int>(DecodeKernel);
        reconLoss = acc.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<double>, LossArgs>(ReconLossKernel);
        columnMoments = acc.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<double>, ArrayView<double>, int, int>(ColumnMomentsKernel);
        age = acc.LoadAutoGroupedStreamKernel<Index1D, ArrayView<long>, long>(AgeKernel);
        resetFired = acc.LoadAutoGroupedStreamKernel<Index1D, CodesView, ArrayView<long>>(ResetFiredKernel);
        deadMask = acc.LoadAutoGroupedStreamKernel<Index1D, ArrayView<long>, ArrayView<int>, ArrayView<int>, long>(DeadMaskKernel);
        residualMean = acc.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int>(ResidualMeanKernel);
        auxMoments = acc.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<double>, int>(AuxMomentsKernel);
        auxDelta = acc.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, float>(AuxDeltaKernel);
        codeGrad = acc.LoadAutoGroupedStreamKernel<Index1D, CodesView, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int>(CodeGradKernel);
        weightGrads = acc.LoadAutoGroupedStreamKernel<Index1D, CodesView, CodesView, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, WeightGradArgs>(WeightGradsKernel);
        encoderBiasGrad = acc.LoadAutoGroupedStreamKernel<Index1D, CodesView, CodesView, ArrayView<float>, int>(EncoderBiasGradKernel);
        decoderBiasGrad = acc.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, BiasGradArgs>(DecoderBiasGradKernel);
        projectDecoderGrad = acc.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, int>(ProjectDecoderGradKernel);
        normalizeRows = acc.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, int>(NormalizeRowsKernel);
        sumSquaresPartial = acc.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<double>, int>(SumSquaresPartialKernel);
        sumSerial = acc.LoadAutoGroupedStreamKernel<Index1D, ArrayView<double>, ArrayView<double>, int>(SumSerialKernel);
        scale = acc.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, float>(ScaleKernel);
    }

    // ---------------------------------------------------------------- host entry points

    /// <summary>x ← (x − μ_m)·g_m per model, in place (Normalizer.Normalize).</summary>
    // xBMD: [B, M, D]; meanMD: [M, D]; scaleM: [M]
    public void Normalize(ArrayView<float> xBMD, ArrayView<float> meanMD, ArrayView<float> scaleM, int models, int d)
    { if (xBMD.Length > 0) normalize(checked((int)xBMD.Length), xBMD, meanMD, scaleM, models, d); }

    /// <summary>xin = x − b_dec per token (the SAE's input centring).</summary>
    // xBMD, xinBMD: [B, M, D]; bDecMD: [M, D]
    public void SubtractBias(ArrayView<float> xBMD, ArrayView<float> bDecMD, ArrayView<float> xinBMD, int rowLen)
    { if (xBMD.Length > 0) subtractBias(checked((int)xBMD.Length), xBMD, bDecMD, xinBMD, rowLen); }

    /// <summary>f = ReLU(pre + b_enc), in place (EncoderForward's bias add, then DictionaryKernels.Relu).</summary>
    // preBF: [B, F]; bEncF: [F]
    public void AddBiasRelu(ArrayView<float> preBF, ArrayView<float> bEncF, int f)
    { if (preBF.Length > 0) addBiasRelu(checked((int)preBF.Length), preBF, bEncF, f); }

    /// <summary>c_j of every latent (CodeNorms.Compute: the same double accumulations, so c is bit-identical).</summary>
    // wDecMFD: [M, F, D] → cF: [F]
    public void CodeNorm(ArrayView<float> wDecMFD, ArrayView<float> cF, CodeNormArgs a) => codeNorm(a.F, wDecMFD, cF, a);

    /// <summary>8 bits of the positive selection keys whose higher bits equal p.Prefix: bin (key &gt;&gt; p.Shift) &amp; 255,
    /// counted in shared memory per group and added to <paramref name="hist"/> [256] (one pass of the radix select).</summary>
    public void RadixHistogram8(ArrayView<float> fBF, ArrayView<float> cF, ArrayView<int> maskF, KeyArgs k, ArrayView<int> hist, RadixPass p)
    {
        long n = (long)k.Rows * k.F;
        if (n == 0) return;
        int groups = (int)Math.Min((n + group - 1) / group, 2048);   // grid-stride beyond
        radix8(new KernelConfig(groups, group), fBF, cF, maskF, k, hist, p with { N = n });
    }

    /// <summary>The one-thread-per-entry twin of <see cref="RadixHistogram8"/> (global atomics; reference).</summary>
    public void RadixHistogram8Reference(ArrayView<float> fBF, ArrayView<float> cF, ArrayView<int> maskF, KeyArgs k, ArrayView<int> hist, RadixPass p)
    {
        long n = (long)k.Rows * k.F;
        if (n > 0) radix8Reference(checked((int)n), fBF, cF, maskF, k, hist, p with { N = n });
    }

    /// <summary>Per row: keys above the row threshold (gt) and equal to it (eq); one group per row.</summary>
    public void RowCountAbove(ArrayView<float> fBF, ArrayView<float> cF, ArrayView<int> maskF, KeyArgs k, RowSelect r)
    { if (k.Rows > 0) rowCountAboveGroup(new KernelConfig(k.Rows, group), fBF, cF, maskF, k, r); }

    /// <summary>The one-thread-per-row twin of <see cref="RowCountAbove"/> (reference).</summary>
    public void RowCountAboveReference(ArrayView<float> fBF, ArrayView<float> cF, ArrayView<int> maskF, KeyArgs k, RowSelect r)
    { if (k.Rows > 0) rowCountAbove(k.Rows, fBF, cF, maskF, k, r); }

    /// <summary>Batch selection: row b takes its ties in flat order while the batch's <paramref name="need"/> lasts
    /// (eqPrefix = exclusive scan of eq); count = gt + budget.</summary>
    public void BatchBudget(RowSelect r, int rows, int need) { if (rows > 0) batchBudget(rows, r, need); }

    /// <summary>Per-row top-k: threshold key, tie budget and count of each row (ties to the lower latent); one group
    /// per row, the binary search's counts reduced in shared memory.</summary>
    public void RowTopK(ArrayView<float> fBF, ArrayView<float> cF, ArrayView<int> maskF, KeyArgs k, RowSelect r, int kk)
    { if (k.Rows > 0) rowTopKGroup(new KernelConfig(k.Rows, group), fBF, cF, maskF, k, r, kk); }

    /// <summary>The one-thread-per-row twin of <see cref="RowTopK"/> (reference).</summary>
    public void RowTopKReference(ArrayView<float> fBF, ArrayView<float> cF, ArrayView<int> maskF, KeyArgs k, RowSelect r, int kk)
    { if (k.Rows > 0) rowTopK(k.Rows, fBF, cF, maskF, k, r, kk); }

    /// <summary>Writes each row's selected entries (ascending latent) at rowStart[b]; slotBF[b, j] = entry or −1. One
    /// group per row: each thread owns a contiguous run of latents, the ties and entries before it come from shared
    /// prefix sums, so the order (and which ties are taken) is the sequential one.</summary>
    public void RowWrite(ArrayView<float> fBF, ArrayView<float> cF, ArrayView<int> maskF, KeyArgs k, RowSelect r, CodesView codes, ArrayView<int> slotBF)
    { if (k.Rows > 0) rowWriteGroup(new KernelConfig(k.Rows, group), fBF, cF, maskF, k, r, codes, slotBF); }

    /// <summary>The one-thread-per-row twin of <see cref="RowWrite"/> (reference).</summary>
    public void RowWriteReference(ArrayView<float> fBF, ArrayView<float> cF, ArrayView<int> maskF, KeyArgs k, RowSelect r, CodesView codes, ArrayView<int> slotBF)
    { if (k.Rows > 0) rowWrite(k.Rows, fBF, cF, maskF, k, r, codes, slotBF); }

    /// <summary>outStart[0..n] = exclusive prefix sums of count[0..n−1] (outStart[n] = total). chunkSums needs
    /// ⌈n/1024⌉ + 1 ints.</summary>
    // count: [n] → outStart: [n + 1]
    public void ExclusiveScan(ArrayView<int> count, ArrayView<int> outStart, ArrayView<int> chunkSums, int n)
    {
        const int chunk = 1024;
        int chunks = (n + chunk - 1) / chunk;
        if (chunks == 0) { outStart.SubView(0, 1).MemSetToZero(); return; }
        scanChunks(chunks, count, chunkSums, n, chunk);
        scanSerial(1, chunkSums, chunks);
        scanApply(chunks, count, chunkSums, outStart, n, chunk);
    }

    /// <summary>The per-latent view of the codes from the slot map (tokens ascending per latent): count per latent,
    /// scan into ColStart (chunkSums: scratch of ExclusiveScan), fill ColRow/ColEntry.</summary>
    // slotBF: [B, F] (entry or −1) → codes.ColStart [F + 1], ColRow/ColEntry [nnz]
    public void BuildColumns(ArrayView<int> slotBF, CodesView codes, ArrayView<int> chunkSums, int rows, int f)
    {
        if (f <= 0) return;
        columnCount(f, slotBF, codes, rows, f);
        ExclusiveScan(codes.ColCount, codes.ColStart, chunkSums, f);
        columnFill(f, slotBF, codes, rows, f);
    }

    public void Fill(ArrayView<int> x, int value) { if (x.Length > 0) fillInt(checked((int)x.Length), x, value); }

    /// <summary>x̂[b, m, :] = Σ_e f_e · W_dec[m, j_e, :] (+ b_dec[m] when <paramref name="withBias"/>).</summary>
    // codes; wDecMFD: [M, F, D]; bDecMD: [M, D] → xHatBMD: [B, M, D]
    public void Decode(CodesView codes, ArrayView<float> wDecMFD, ArrayView<float> bDecMD, ArrayView<float> xHatBMD, int models, int d, int f, bool withBias)
    { if (xHatBMD.Length > 0) decode(checked((int)xHatBMD.Length), codes, wDecMFD, bDecMD, xHatBMD, models, d, f, withBias ? 1 : 0); }

    /// <summary>Per (token, model) row: Σ e² in double into rowSq, δ = −e·scale (ReconstructionLoss).</summary>
    public void ReconLoss(ArrayView<float> xBMD, ArrayView<float> xHatBMD, ArrayView<float> deltaBMD, ArrayView<double> rowSqBM, LossArgs a)
    { if (a.Rows > 0) reconLoss(a.Rows, xBMD, xHatBMD, deltaBMD, rowSqBM, a); }

    /// <summary>Per column (m, i): Σ_b x and Σ_b x² in double (the batch FVE's statistics).</summary>
    public void ColumnMoments(ArrayView<float> xBMD, ArrayView<double> sumMD, ArrayView<double> sqMD, int rows, int rowLen)
    { if (rowLen > 0) columnMoments(rowLen, xBMD, sumMD, sqMD, rows, rowLen); }

    public void Age(ArrayView<long> tokensSinceFiredF, long b) { if (tokensSinceFiredF.Length > 0) age(checked((int)tokensSinceFiredF.Length), tokensSinceFiredF, b); }
    public void ResetFired(CodesView codes, ArrayView<long> tokensSinceFiredF, int nnz) { if (nnz > 0) resetFired(nnz, codes, tokensSinceFiredF); }

    /// <summary>maskF[j] = latent j is dead (≥ deadTokens without firing); deadCount[0] += their number.</summary>
    public void DeadMask(ArrayView<long> tokensSinceFiredF, ArrayView<int> maskF, ArrayView<int> deadCount, long deadTokens)
    { if (maskF.Length > 0) deadMask(checked((int)maskF.Length), tokensSinceFiredF, maskF, deadCount, deadTokens); }

    /// <summary>rMean[i] = (float)(Σ_b (x − x̂)[b, i] / B), the residual's batch mean (AuxK's denominator).</summary>
    public void ResidualMean(ArrayView<float> xBMD, ArrayView<float> xHatBMD, ArrayView<float> rMean, int rows, int rowLen)
    { if (rowLen > 0) residualMean(rowLen, xBMD, xHatBMD, rMean, rows, rowLen); }

    /// <summary>Per token: Σ (r − x̂_aux)² and Σ (r − r̄)² in double → numDen [2B].</summary>
    public void AuxMoments(ArrayView<float> xBMD, ArrayView<float> xHatBMD, ArrayView<float> xAuxBMD, ArrayView<float> rMean, ArrayView<double> numDen, int rows, int rowLen)
    { if (rows > 0) auxMoments(rows, xBMD, xHatBMD, xAuxBMD, rMean, numDen, rowLen); }

    /// <summary>δ_aux = g·((x − x̂) − x̂_aux).</summary>
    public void AuxDelta(ArrayView<float> xBMD, ArrayView<float> xHatBMD, ArrayView<float> xAuxBMD, ArrayView<float> deltaAuxBMD, float g)
    { if (xBMD.Length > 0) auxDelta(checked((int)deltaAuxBMD.Length), xBMD, xHatBMD, xAuxBMD, deltaAuxBMD, g); }

    /// <summary>gVal[e] = Σ_m W_dec[m, j_e, :]·δ[b_e, m, :] where f_e &gt; 0, else 0 (CodeGradSparse, PassActiveOnly).</summary>
    public void CodeGrad(CodesView codes, ArrayView<float> wDecMFD, ArrayView<float> deltaBMD, ArrayView<float> gVal, int nnz, int models, int d, int f)
    { if (nnz > 0) codeGrad(nnz, codes, wDecMFD, deltaBMD, gVal, models, d, f); }

    /// <summary>gW_dec and gW_enc of every (m, j, i) from the column views of the codes and (when a.WithAux) the AuxK
    /// codes; rows of latents active nowhere become 0 (DecoderGradSparse, EncoderGradSparse).</summary>
    // codes/aux (GVal and columns filled); δ, δ_aux, xin: [B, M, D] → gWDecMFD, gWEncMFD: [M, F, D]
    public void WeightGrads(CodesView codes, CodesView aux, ArrayView<float> deltaBMD, ArrayView<float> deltaAuxBMD, ArrayView<float> xinBMD, ArrayView<float> gWDecMFD, ArrayView<float> gWEncMFD, WeightGradArgs a)
    {
        if (gWDecMFD.Length == 0) return;
        weightGrads(checked((int)gWDecMFD.Length), codes, aux, deltaBMD, deltaAuxBMD, xinBMD, gWDecMFD, gWEncMFD, a);
    }

    public void EncoderBiasGrad(CodesView codes, CodesView aux, ArrayView<float> gBEncF, bool withAux)
    { if (gBEncF.Length > 0) encoderBiasGrad(checked((int)gBEncF.Length), codes, aux, gBEncF, withAux ? 1 : 0); }

    /// <summary>gb_dec = Σ_b δ (double) and, for an SAE, − Σ_j gb_enc[j]·W_enc[m, j, :] in latent order.</summary>
    public void DecoderBiasGrad(ArrayView<float> deltaBMD, ArrayView<float> gBEncF, ArrayView<float> wEncMFD, ArrayView<float> gBDecMD, BiasGradArgs a)
    { if (gBDecMD.Length > 0) decoderBiasGrad(checked((int)gBDecMD.Length), deltaBMD, gBEncF, wEncMFD, gBDecMD, a); }

    /// <summary>g_r ← g_r − (g_r·ŵ_r) ŵ_r, ŵ = w/(‖w‖ + 1e-6), per decoder row (the unit-norm recipe).</summary>
    public void ProjectDecoderGrad(ArrayView<float> wDecRD, ArrayView<float> gWDecRD, int rows, int d)
    { if (rows > 0) projectDecoderGrad(rows, wDecRD, gWDecRD, d); }

    /// <summary>Each row ← row / (‖row‖ + float32 eps).</summary>
    public void NormalizeRows(ArrayView<float> wRD, int rows, int d) { if (rows > 0) normalizeRows(rows, wRD, d); }

    /// <summary>Σ x² in double into result[0] (partials: scratch of <paramref name="threads"/> doubles).</summary>
    public void SumSquares(ArrayView<float> x, ArrayView<double> partial, ArrayView<double> result, int threads)
    {
        if (x.Length == 0) { result.SubView(0, 1).MemSetToZero(); return; }
        int t = (int)Math.Min(threads, x.Length);
        sumSquaresPartial(t, x, partial, t);
        sumSerial(1, partial, result, t);
    }

    public void Scale(ArrayView<float> x, float s) { if (x.Length > 0) scale(checked((int)x.Length), x, s); }

    // ---------------------------------------------------------------- kernel bodies

    // xBMD in place; one thread per element
    static void NormalizeKernel(Index1D idx, ArrayView<float> x, ArrayView<float> mean, ArrayView<float> scaleM, int models, int d)
    {
        int md = idx.X % (models * d);
        x[idx] = (x[idx] - mean[md]) * scaleM[md / d];
    }

    static void SubtractBiasKernel(Index1D idx, ArrayView<float> x, ArrayView<float> bDec, ArrayView<float> xin, int rowLen) =>
        xin[idx] = x[idx] - bDec[idx.X % rowLen];

    static void AddBiasReluKernel(Index1D idx, ArrayView<float> pre, ArrayView<float> bEnc, int f)
    {
        float v = pre[idx] + bEnc[idx.X % f];
        pre[idx] = v > 0f ? v : (float.IsNaN(v) ? v : 0f);   // TensorPrimitives.Max(v, 0): NaN stays NaN
    }

    // CodeNorms.Norm: four double accumulators, ((s0 + s1) + (s2 + s3)), rounded to float
    static float RowNorm(ArrayView<float> w, long o, int d)
    {
        double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        int i = 0;
        for (; i + 4 <= d; i += 4)
        {
            double a = w[o + i], b = w[o + i + 1], c = w[o + i + 2], e = w[o + i + 3];
            s0 += a * a; s1 += b * b; s2 += c * c; s3 += e * e;
        }
        for (; i < d; i++) { double a = w[o + i]; s0 += a * a; }
        return (float)Math.Sqrt((s0 + s1) + (s2 + s3));
    }

    // one thread per latent
    static void CodeNormKernel(Index1D j, ArrayView<float> w, ArrayView<float> c, CodeNormArgs a)
    {
        if (a.Mode == (int)Finetrace.Dictionaries.CodeNormalization.None) { c[j] = 1f; return; }
        double sum = 0, sumSq = 0;
        for (int m = 0; m < a.Models; m++)
        {
            float n = RowNorm(w, ((long)m * a.F + j) * a.D, a.D);
            sum += n; sumSq += (double)n * n;
        }
        float r;
        if (a.Mode == (int)Finetrace.Dictionaries.CodeNormalization.Sae) r = (float)Math.Sqrt(sumSq);
        else if (a.Mode == (int)Finetrace.Dictionaries.CodeNormalization.Mixed) r = (float)(a.AlphaSae * Math.Sqrt(sumSq) + a.AlphaCc * sum);
        else r = (float)sum;   // Crosscoder, Decoupled
        c[j] = r;
    }

    // The selection key of entry (b, j): the bits of s = f·c (or f) when s > 0 and the latent is allowed, else 0.
    // Positive floats order like their bit patterns, so keys compare as the CPU's s does.
    static uint Key(ArrayView<float> f, ArrayView<float> c, ArrayView<int> mask, KeyArgs k, long flat, int j)
    {
        float v = f[flat];
        float s = k.Scaled != 0 ? v * c[j] : v;
        if (!(s > 0f)) return 0u;
        if (k.Masked != 0 && mask[j] == 0) return 0u;
        return Interop.FloatAsInt(s);
    }

    // one thread per row: keys above (gt) and equal to (eq) the row's threshold key
    static void RowCountAboveKernel(Index1D b, ArrayView<float> f, ArrayView<float> c, ArrayView<int> mask, KeyArgs k, RowSelect r)
    {
        uint t = (uint)r.Threshold[b];
        int gt = 0, eq = 0;
        long o = (long)b.X * k.F;
        for (int j = 0; j < k.F; j++)
        {
            uint key = Key(f, c, mask, k, o + j, j);
            if (key == 0u) continue;
            if (key > t) gt++; else if (key == t) eq++;
        }
        r.Gt[b] = gt; r.Eq[b] = eq;
    }

    static void BatchBudgetKernel(Index1D b, RowSelect r, int need)
    {
        int left = need - r.EqPrefix[b];
        int take = left < 0 ? 0 : (left > r.Eq[b] ? r.Eq[b] : left);
        r.Budget[b] = take;
        r.Count[b] = r.Gt[b] + take;
    }

    // one thread per row: the kk-th largest positive key (binary search on the key), ties to the lower latent
    static void RowTopKKernel(Index1D b, ArrayView<float> f, ArrayView<float> c, ArrayView<int> mask, KeyArgs k, RowSelect r, int kk)
    {
        long o = (long)b.X * k.F;
        int positives = 0;
        for (int j = 0; j < k.F; j++) if (Key(f, c, mask, k, o + j, j) != 0u) positives++;
        int want = positives < kk ? positives : kk;
        if (want == 0) { r.Threshold[b] = -1; r.Budget[b] = 0; r.Count[b] = 0; return; }   // key 0xFFFFFFFF: nothing above
        // largest t with count(key ≥ t) ≥ want
        uint lo = 1u, hi = 0x7F800000u;   // count(≥ lo) ≥ want always
        while (lo < hi)
        {
            uint mid = lo + (hi - lo + 1u) / 2u;
            int n = 0;
            for (int j = 0; j < k.F; j++) if (Key(f, c, mask, k, o + j, j) >= mid) n++;
            if (n >= want) lo = mid; else hi = mid - 1u;
        }
        int gt = 0;
        for (int j = 0; j < k.F; j++) if (Key(f, c, mask, k, o + j, j) > lo) gt++;
        r.Threshold[b] = (int)lo; r.Budget[b] = want - gt; r.Count[b] = want;
    }

    // one thread per row: entries with key > t, then ties (key == t) in latent order while the row's budget lasts
    static void RowWriteKernel(Index1D b, ArrayView<float> f, ArrayView<float> c, ArrayView<int> mask, KeyArgs k, RowSelect r, CodesView codes, ArrayView<int> slot)
    {
        uint t = (uint)r.Threshold[b];
        int budget = r.Budget[b];
        int e = codes.RowStart[b];
        long o = (long)b.X * k.F;
        for (int j = 0; j < k.F; j++)
        {
            uint key = Key(f, c, mask, k, o + j, j);
            bool take = key != 0u && (key > t || (key == t && budget > 0));
            if (take && key == t) budget--;
            if (take)
            {
                codes.Index[e] = j; codes.Value[e] = f[o + j]; codes.EntryRow[e] = b;
                slot[o + j] = e;
                e++;
            }
            else slot[o + j] = -1;
        }
    }

    // ---- group kernels (explicitly grouped; shared arrays sized MaxGroup + 1)

    // sum of v over the group (every thread gets it); s: shared [MaxGroup + 1]
    static int GroupSum(ArrayView<int> s, int v)
    {
        s[Group.IdxX] = v;
        Group.Barrier();
        if (Group.IdxX == 0) { int t = 0; for (int i = 0; i < Group.DimX; i++) t += s[i]; s[MaxGroup] = t; }
        Group.Barrier();
        int r = s[MaxGroup];
        Group.Barrier();
        return r;
    }

    // exclusive prefix of v over the group's threads (thread order); s: shared [MaxGroup + 1]
    static int GroupExclusive(ArrayView<int> s, int v)
    {
        s[Group.IdxX] = v;
        Group.Barrier();
        if (Group.IdxX == 0) { int t = 0; for (int i = 0; i < Group.DimX; i++) { int x = s[i]; s[i] = t; t += x; } }
        Group.Barrier();
        int r = s[Group.IdxX];
        Group.Barrier();
        return r;
    }

    // grid-stride over [B, F]; one shared 256-bin histogram per group
    static void Radix8Kernel(ArrayView<float> f, ArrayView<float> c, ArrayView<int> mask, KeyArgs k, ArrayView<int> hist, RadixPass p)
    {
        var local = SharedMemory.Allocate<int>(256);
        for (int i = Group.IdxX; i < 256; i += Group.DimX) local[i] = 0;
        Group.Barrier();
        long stride = (long)Grid.DimX * Group.DimX;
        for (long e = (long)Grid.IdxX * Group.DimX + Group.IdxX; e < p.N; e += stride)
        {
            uint key = Key(f, c, mask, k, e, (int)(e % k.F));
            if (key == 0u) continue;
            if (p.PrefixShift < 32 && (key >> p.PrefixShift) != (uint)p.Prefix) continue;
            Atomic.Add(ref local[(int)((key >> p.Shift) & 0xFFu)], 1);
        }
        Group.Barrier();
        for (int i = Group.IdxX; i < 256; i += Group.DimX) { int v = local[i]; if (v != 0) Atomic.Add(ref hist[i], v); }
    }

    static void Radix8ReferenceKernel(Index1D idx, ArrayView<float> f, ArrayView<float> c, ArrayView<int> mask, KeyArgs k, ArrayView<int> hist, RadixPass p)
    {
        long e = idx.X;
        uint key = Key(f, c, mask, k, e, (int)(e % k.F));
        if (key == 0u) return;
        if (p.PrefixShift < 32 && (key >> p.PrefixShift) != (uint)p.Prefix) return;
        Atomic.Add(ref hist[(int)((key >> p.Shift) & 0xFFu)], 1);
    }

    static void RowCountAboveGroupKernel(ArrayView<float> f, ArrayView<float> c, ArrayView<int> mask, KeyArgs k, RowSelect r)
    {
        var s = SharedMemory.Allocate<int>(MaxGroup + 1);
        int b = Grid.IdxX;
        uint t = (uint)r.Threshold[b];
        int gt = 0, eq = 0;
        long o = (long)b * k.F;
        for (int j = Group.IdxX; j < k.F; j += Group.DimX)
        {
            uint key = Key(f, c, mask, k, o + j, j);
            if (key == 0u) continue;
            if (key > t) gt++; else if (key == t) eq++;
        }
        gt = GroupSum(s, gt);
        eq = GroupSum(s, eq);
        if (Group.IdxX == 0) { r.Gt[b] = gt; r.Eq[b] = eq; }
    }

    static void RowTopKGroupKernel(ArrayView<float> f, ArrayView<float> c, ArrayView<int> mask, KeyArgs k, RowSelect r, int kk)
    {
        var s = SharedMemory.Allocate<int>(MaxGroup + 1);
        int b = Grid.IdxX;
        long o = (long)b * k.F;
        int n = 0;
        for (int j = Group.IdxX; j < k.F; j += Group.DimX) if (Key(f, c, mask, k, o + j, j) != 0u) n++;
        int positives = GroupSum(s, n);
        int want = positives < kk ? positives : kk;
        if (want == 0)   // the same for every thread of the group
        {
            if (Group.IdxX == 0) { r.Threshold[b] = -1; r.Budget[b] = 0; r.Count[b] = 0; }
            return;
        }
        uint lo = 1u, hi = 0x7F800000u;
        while (lo < hi)   // every thread runs the same iterations (lo, hi come from group sums)
        {
            uint mid = lo + (hi - lo + 1u) / 2u;
            int m = 0;
            for (int j = Group.IdxX; j < k.F; j += Group.DimX) if (Key(f, c, mask, k, o + j, j) >= mid) m++;
            if (GroupSum(s, m) >= want) lo = mid; else hi = mid - 1u;
        }
        int g = 0;
        for (int j = Group.IdxX; j < k.F; j += Group.DimX) if (Key(f, c, mask, k, o + j, j) > lo) g++;
        int gt = GroupSum(s, g);
        if (Group.IdxX == 0) { r.Threshold[b] = (int)lo; r.Budget[b] = want - gt; r.Count[b] = want; }
    }

    static void RowWriteGroupKernel(ArrayView<float> f, ArrayView<float> c, ArrayView<int> mask, KeyArgs k, RowSelect r, CodesView codes, ArrayView<int> slot)
    {
        var s = SharedMemory.Allocate<int>(MaxGroup + 1);
        int b = Grid.IdxX;
        uint t = (uint)r.Threshold[b];
        long o = (long)b * k.F;
        int chunk = (k.F + Group.DimX - 1) / Group.DimX;
        int lo = Group.IdxX * chunk, hi = lo + chunk < k.F ? lo + chunk : k.F;
        int gt = 0, eq = 0;
        for (int j = lo; j < hi; j++)
        {
            uint key = Key(f, c, mask, k, o + j, j);
            if (key == 0u) continue;
            if (key > t) gt++; else if (key == t) eq++;
        }
        int tiesBefore = GroupExclusive(s, eq);
        int left = r.Budget[b] - tiesBefore;
        int taken = left < 0 ? 0 : (left > eq ? eq : left);
        int e = codes.RowStart[b] + GroupExclusive(s, gt + taken);
        for (int j = lo; j < hi; j++)
        {
            uint key = Key(f, c, mask, k, o + j, j);
            bool take = key != 0u && (key > t || (key == t && taken > 0));
            if (take && key == t) taken--;
            if (take)
            {
                codes.Index[e] = j; codes.Value[e] = f[o + j]; codes.EntryRow[e] = b;
                slot[o + j] = e;
                e++;
            }
            else slot[o + j] = -1;
        }
    }

    static void ScanChunksKernel(Index1D ch, ArrayView<int> count, ArrayView<int> chunkSums, int n, int chunk)
    {
        int lo = ch * chunk, hi = lo + chunk < n ? lo + chunk : n, s = 0;
        for (int i = lo; i < hi; i++) s += count[i];
        chunkSums[ch] = s;
    }

    // single thread: exclusive scan of the chunk sums in place; chunkSums[chunks] = total
    static void ScanSerialKernel(Index1D _, ArrayView<int> chunkSums, int chunks)
    {
        int s = 0;
        for (int i = 0; i < chunks; i++) { int v = chunkSums[i]; chunkSums[i] = s; s += v; }
        chunkSums[chunks] = s;
    }

    static void ScanApplyKernel(Index1D ch, ArrayView<int> count, ArrayView<int> chunkSums, ArrayView<int> outStart, int n, int chunk)
    {
        int lo = ch * chunk, hi = lo + chunk < n ? lo + chunk : n, s = chunkSums[ch];
        for (int i = lo; i < hi; i++) { outStart[i] = s; s += count[i]; }
        if (hi == n) outStart[n] = s;
    }

    // one thread per latent (reads one column of the slot map: coalesced across threads)
    static void ColumnCountKernel(Index1D j, ArrayView<int> slot, CodesView codes, int rows, int f)
    {
        int n = 0;
        for (int b = 0; b < rows; b++) if (slot[(long)b * f + j] >= 0) n++;
        codes.ColCount[j] = n;
    }

    // one thread per latent: its entries in token order
    static void ColumnFillKernel(Index1D j, ArrayView<int> slot, CodesView codes, int rows, int f)
    {
        int p = codes.ColStart[j];
        for (int b = 0; b < rows; b++)
        {
            int e = slot[(long)b * f + j];
            if (e < 0) continue;
            codes.ColRow[p] = b; codes.ColEntry[p] = e; p++;
        }
    }

    static void FillIntKernel(Index1D i, ArrayView<int> x, int value) => x[i] = value;

    // one thread per (b, m, i)
    static void DecodeKernel(Index1D idx, CodesView codes, ArrayView<float> w, ArrayView<float> bDec, ArrayView<float> xHat, int models, int d, int f, int withBias)
    {
        int i = idx.X % d, bm = idx.X / d, m = bm % models, b = bm / models;
        float acc = withBias != 0 ? bDec[m * d + i] : 0f;
        for (int e = codes.RowStart[b]; e < codes.RowStart[b + 1]; e++)
        {
            float v = codes.Value[e];
            if (v == 0f) continue;
            acc = w[((long)m * f + codes.Index[e]) * d + i] * v + acc;
        }
        xHat[idx] = acc;
    }

    // one thread per (b, m) row
    static void ReconLossKernel(Index1D row, ArrayView<float> x, ArrayView<float> xHat, ArrayView<float> delta, ArrayView<double> rowSq, LossArgs a)
    {
        long o = (long)row.X * a.D;
        double s = 0;
        for (int i = 0; i < a.D; i++) { double e = x[o + i] - xHat[o + i]; s += e * e; }
        rowSq[row] = s;
        double scale;
        if (a.Loss == (int)Finetrace.Dictionaries.ReconLoss.L2) { double norm = Math.Sqrt(s); scale = norm > 0 ? 1.0 / (norm * a.B * a.Models) : 0; }
        else if (a.Loss == (int)Finetrace.Dictionaries.ReconLoss.MseMeanModels) scale = 2.0 / (a.B * a.Models);
        else scale = 2.0 / a.B;
        float fs = (float)scale;
        for (int i = 0; i < a.D; i++) delta[o + i] = -(x[o + i] - xHat[o + i]) * fs;
    }

    // one thread per column (m, i)
    static void ColumnMomentsKernel(Index1D col, ArrayView<float> x, ArrayView<double> sum, ArrayView<double> sq, int rows, int rowLen)
    {
        double s = 0, q = 0;
        for (int b = 0; b < rows; b++) { float v = x[(long)b * rowLen + col]; s += v; q += (double)v * v; }
        sum[col] = s; sq[col] = q;
    }

    static void AgeKernel(Index1D j, ArrayView<long> t, long b) => t[j] += b;

    static void ResetFiredKernel(Index1D e, CodesView codes, ArrayView<long> t)
    {
        if (codes.Value[e] > 0f) t[codes.Index[e]] = 0;
    }

    static void DeadMaskKernel(Index1D j, ArrayView<long> t, ArrayView<int> mask, ArrayView<int> count, long deadTokens)
    {
        int dead = t[j] >= deadTokens ? 1 : 0;
        mask[j] = dead;
        if (dead != 0) Atomic.Add(ref count[0], 1);
    }

    static void ResidualMeanKernel(Index1D i, ArrayView<float> x, ArrayView<float> xHat, ArrayView<float> rMean, int rows, int rowLen)
    {
        double s = 0;
        for (int b = 0; b < rows; b++) { long o = (long)b * rowLen + i; s += x[o] - xHat[o]; }
        rMean[i] = (float)(s / rows);
    }

    static void AuxMomentsKernel(Index1D b, ArrayView<float> x, ArrayView<float> xHat, ArrayView<float> xAux, ArrayView<float> rMean, ArrayView<double> numDen, int rowLen)
    {
        double num = 0, den = 0;
        long o = (long)b.X * rowLen;
        for (int i = 0; i < rowLen; i++)
        {
            float r = x[o + i] - xHat[o + i];
            double a = r - xAux[o + i]; num += a * a;
            double bb = r - (double)rMean[i]; den += bb * bb;
        }
        numDen[2 * b.X] = num; numDen[2 * b.X + 1] = den;
    }

    static void AuxDeltaKernel(Index1D idx, ArrayView<float> x, ArrayView<float> xHat, ArrayView<float> xAux, ArrayView<float> deltaAux, float g) =>
        deltaAux[idx] = g * ((x[idx] - xHat[idx]) - xAux[idx]);

    // one thread per code entry
    static void CodeGradKernel(Index1D e, CodesView codes, ArrayView<float> w, ArrayView<float> delta, ArrayView<float> gVal, int models, int d, int f)
    {
        if (!(codes.Value[e] > 0f)) { gVal[e] = 0f; return; }
        int j = codes.Index[e], b = codes.EntryRow[e];
        float s = 0f;
        for (int m = 0; m < models; m++)
        {
            long wo = ((long)m * f + j) * d, dO = ((long)b * models + m) * d;
            float dot = 0f;
            for (int i = 0; i < d; i++) dot += w[wo + i] * delta[dO + i];
            s += dot;
        }
        gVal[e] = s;
    }

    // one thread per (m, j, i) of [M, F, D]
    static void WeightGradsKernel(Index1D idx, CodesView codes, CodesView aux, ArrayView<float> delta, ArrayView<float> deltaAux, ArrayView<float> xin, ArrayView<float> gWDec, ArrayView<float> gWEnc, WeightGradArgs a)
    {
        int i = idx.X % a.D, mj = idx.X / a.D, j = mj % a.F, m = mj / a.F;
        float gd = 0f, ge = 0f;
        for (int p = codes.ColStart[j]; p < codes.ColStart[j + 1]; p++)
        {
            int e = codes.ColEntry[p];
            long o = ((long)codes.ColRow[p] * a.Models + m) * a.D + i;
            float v = codes.Value[e];
            if (v != 0f) gd = delta[o] * v + gd;
            float g = codes.GVal[e];
            if (g != 0f) ge = xin[o] * g + ge;
        }
        if (a.WithAux != 0)
            for (int p = aux.ColStart[j]; p < aux.ColStart[j + 1]; p++)
            {
                int e = aux.ColEntry[p];
                long o = ((long)aux.ColRow[p] * a.Models + m) * a.D + i;
                float v = aux.Value[e];
                if (v != 0f) gd = deltaAux[o] * v + gd;
                float g = aux.GVal[e];
                if (g != 0f) ge = xin[o] * g + ge;
            }
        gWDec[idx] = gd;
        gWEnc[idx] = ge;
    }

    static void EncoderBiasGradKernel(Index1D j, CodesView codes, CodesView aux, ArrayView<float> gBEnc, int withAux)
    {
        float s = 0f;
        for (int p = codes.ColStart[j]; p < codes.ColStart[j + 1]; p++) s += codes.GVal[codes.ColEntry[p]];
        if (withAux != 0) for (int p = aux.ColStart[j]; p < aux.ColStart[j + 1]; p++) s += aux.GVal[aux.ColEntry[p]];
        gBEnc[j] = s;
    }

    // one thread per (m, i)
    static void DecoderBiasGradKernel(Index1D mi, ArrayView<float> delta, ArrayView<float> gBEnc, ArrayView<float> wEnc, ArrayView<float> gBDec, BiasGradArgs a)
    {
        double s = 0;
        for (int b = 0; b < a.Rows; b++) s += delta[(long)b * a.RowLen + mi];
        float acc = (float)s;
        if (a.Sae != 0)
        {
            int m = mi.X / a.D, i = mi.X % a.D;
            for (int j = 0; j < a.F; j++)
            {
                float g = gBEnc[j];
                if (g == 0f) continue;
                acc = wEnc[((long)m * a.F + j) * a.D + i] * -g + acc;
            }
        }
        gBDec[mi] = acc;
    }

    static void ProjectDecoderGradKernel(Index1D r, ArrayView<float> w, ArrayView<float> g, int d)
    {
        long o = (long)r.X * d;
        float n = RowNorm(w, o, d) + 1e-6f;
        double dot = 0;
        for (int i = 0; i < d; i++) dot += (double)g[o + i] * (w[o + i] / n);
        float fd = (float)dot;
        for (int i = 0; i < d; i++) g[o + i] -= fd * (w[o + i] / n);
    }

    static void NormalizeRowsKernel(Index1D r, ArrayView<float> w, int d)
    {
        long o = (long)r.X * d;
        float n = RowNorm(w, o, d) + 1.1920929e-7f;
        for (int i = 0; i < d; i++) w[o + i] = w[o + i] / n;
    }

    // thread t sums x[t], x[t + T], … (coalesced)
    static void SumSquaresPartialKernel(Index1D t, ArrayView<float> x, ArrayView<double> partial, int threads)
    {
        double s = 0;
        for (long i = t.X; i < x.Length; i += threads) { double v = x[i]; s += v * v; }
        partial[t] = s;
    }

    static void SumSerialKernel(Index1D _, ArrayView<double> partial, ArrayView<double> result, int n)
    {
        double s = 0;
        for (int i = 0; i < n; i++) s += partial[i];
        result[0] = s;
    }

    static void ScaleKernel(Index1D i, ArrayView<float> x, float s) => x[i] = x[i] * s;
}

/// <summary>One 8-bit pass of the radix select: bins (key &gt;&gt; Shift) &amp; 255 of keys whose bits above PrefixShift
/// equal Prefix (PrefixShift 32: every key); N = entries (set by the launcher).</summary>
public readonly record struct RadixPass(int Shift, int PrefixShift, int Prefix)
{
    public long N { get; init; }
}

/// <summary>Shape and mode of the code-normalisation kernel.</summary>
public readonly struct CodeNormArgs
{
    public int Models { get; init; }
    public int F { get; init; }
    public int D { get; init; }
    /// <summary>(int) <c>CodeNormalization</c>.</summary>
    public int Mode { get; init; }
    public float AlphaSae { get; init; }
    public float AlphaCc { get; init; }
}

/// <summary>How selection keys are formed: s = f·c when Scaled, only latents with mask ≠ 0 when Masked.</summary>
public readonly struct KeyArgs
{
    public int Rows { get; init; }
    public int F { get; init; }
    public int Scaled { get; init; }
    public int Masked { get; init; }
}

/// <summary>Per-row selection state: threshold key (as int bits), keys above/equal, exclusive scan of eq, tie budget, count.</summary>
public readonly struct RowSelect
{
    public ArrayView<int> Threshold { get; init; }
    public ArrayView<int> Gt { get; init; }
    public ArrayView<int> Eq { get; init; }
    public ArrayView<int> EqPrefix { get; init; }
    public ArrayView<int> Budget { get; init; }
    public ArrayView<int> Count { get; init; }
}

/// <summary>Device views of one sparse code matrix: rows (CSR), the entry's token, its code gradient, and the column
/// view (ColCount is scanned into ColStart).</summary>
public readonly struct CodesView
{
    public ArrayView<int> RowStart { get; init; }
    public ArrayView<int> Index { get; init; }
    public ArrayView<float> Value { get; init; }
    public ArrayView<int> EntryRow { get; init; }
    public ArrayView<float> GVal { get; init; }
    public ArrayView<int> ColCount { get; init; }
    public ArrayView<int> ColStart { get; init; }
    public ArrayView<int> ColRow { get; init; }
    public ArrayView<int> ColEntry { get; init; }
}

/// <summary>Reconstruction-loss shape: Rows = B·M, and the loss mode ((int) <c>ReconLoss</c>).</summary>
public readonly struct LossArgs
{
    public int Rows { get; init; }
    public int D { get; init; }
    public int B { get; init; }
    public int Models { get; init; }
    public int Loss { get; init; }
}

public readonly struct WeightGradArgs
{
    public int Models { get; init; }
    public int F { get; init; }
    public int D { get; init; }
    public int WithAux { get; init; }
}

public readonly struct BiasGradArgs
{
    public int Rows { get; init; }
    public int RowLen { get; init; }
    public int D { get; init; }
    public int F { get; init; }
    public int Sae { get; init; }
}

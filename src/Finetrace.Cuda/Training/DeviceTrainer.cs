using Finetrace.Activations;
using Finetrace.Dictionaries;
using ILGPU;
using ILGPU.Runtime;

namespace Finetrace.Cuda;

/// <summary>
/// The dictionary trainer on a device: parameters, gradients and Adam moments live on the accelerator, and a step is
/// <see cref="DictionaryTrainer"/>'s TopK-family step (TrainerSteps.TopKStep) kernel for kernel:
/// normalise → (step 0: b_dec ← geometric median, on the host) → [SAE: x − b_dec] → encoder GEMM (ctx.Gemm, one per
/// model, accumulated) + b_enc, ReLU → c_j (code normalisation) → batch top-k·B of f·c (exact radix select, ties to the
/// lower flat index) or per-token top-k → threshold EMA (BatchTopK) → sparse decode (gather of the k·B decoder rows) →
/// loss and δ → dead-latent counters → AuxK on the dead latents' per-token top-k_aux → code gradients (active entries
/// only) → W_dec, W_enc, b_enc gradients from the per-latent views (tokens ascending, as the CPU) → b_dec gradient →
/// [unit-norm recipe: decoder-gradient projection] → global-norm clip → Adam (DeviceKernels.Adam, bit-identical to the
/// CPU's) → [unit-norm recipe: renormalise decoder rows]. Scalars the CPU takes in double are taken in double.
/// Supported: BatchTopK and TopK, SAE or crosscoder (shared code), every code normalisation but DECOUPLED, every
/// reconstruction loss, AuxK, k annealing, normaliser, learning-rate schedule, clipping. Refused with
/// <see cref="DeviceTrainingUnsupportedException"/>: ReLU (L1), JumpReLU, DECOUPLED BatchTopK, crosscoder variants.
/// <see cref="TrainerOptions.Dense"/> is ignored (the device always runs the sparse kernels, which compute the same).
/// </summary>
public sealed class DeviceTrainer : ITrainingStepper
{
    readonly DeviceContext ctx;
    readonly Accelerator acc;
    readonly DictionaryDeviceKernels K;
    readonly List<IDisposable> owned = [];
    readonly int M, D, F, rowLen;
    readonly SparseDictionary dict;
    readonly TrainerOptions opt;

    public DictionaryTrainer Host { get; }

    // parameters and their gradients / Adam moments, in the order of DictionaryTrainer.Parameters
    readonly MemoryBuffer1D<float, Stride1D.Dense>[] p, g, m, v;
    readonly MemoryBuffer1D<float, Stride1D.Dense> normMean, normScale, cF;
    readonly MemoryBuffer1D<long, Stride1D.Dense> tokensSinceFired;
    readonly MemoryBuffer1D<int, Stride1D.Dense> deadMask, deadCount, hist;
    readonly MemoryBuffer1D<double, Stride1D.Dense> partial, sums;
    const int SumThreads = 1 << 14;

    // per-batch buffers (sized for the largest batch seen)
    int cap = -1;
    MemoryBuffer1D<float, Stride1D.Dense> xRaw = null!, xin = null!, xhat = null!, delta = null!, deltaAux = null!, xaux = null!, pre = null!, rMean = null!;
    MemoryBuffer1D<double, Stride1D.Dense> rowSq = null!, colSum = null!, colSq = null!, numDen = null!;
    MemoryBuffer1D<int, Stride1D.Dense> slot = null!, chunkSums = null!;
    RowBuffers rows = null!;
    DeviceCodes main = null!, aux = null!;
    readonly List<IDisposable> batchOwned = [];

    // asynchronous batches: two page-locked host buffers, one read by a host task while the device steps on the other
    PageLockedArray1D<float>[]? pinned;
    int pinnedRows, cur;
    Task<(int Got, long Position)>? pending;
    IActivationBatches? pendingSource;

    /// <summary>Rows of the last step's code (main) and its number of entries; see <see cref="DownloadCodes"/>.</summary>
    public int LastRows { get; private set; }
    public int LastNnz { get; private set; }
    public long? ConsumedPosition { get; private set; }

    /// <summary>Throws <see cref="DeviceTrainingUnsupportedException"/> for a recipe the device trainer does not run.</summary>
    public static void CheckSupported(SparseDictionary d, TrainerOptions o)
    {
        if (d.Sparsity is not (Sparsity.BatchTopK or Sparsity.TopK))
            throw new DeviceTrainingUnsupportedException(nameof(TrainingRecipe.Activation), d.Sparsity,
                "the device trainer runs the BatchTopK and TopK dictionaries; train ReLU (L1) and JumpReLU dictionaries on the CPU");
        if (d.PerModelCodes)
            throw new DeviceTrainingUnsupportedException(nameof(TrainingRecipe.CodeNormalization), d.CodeNormalization,
                "DECOUPLED BatchTopK (per-model top-k) is not on the device yet; use another code normalisation or the CPU");
        if (o.Variant is { IsPlain: false })
            throw new DeviceTrainingUnsupportedException(nameof(TrainingRecipe.Variant), "research variant",
                "crosscoder variants (dedicated blocks, designated latents, diff-aware loss) train on the CPU only");
        if ((long)d.Models * d.DictSize * d.DModel >= int.MaxValue)
            throw new DeviceTrainingUnsupportedException(nameof(TrainingRecipe.DictSize), d.DictSize,
                $"models × dict_size × d_model = {(long)d.Models * d.DictSize * d.DModel:N0} exceeds the device kernels' 2^31 element indexing");
    }

    public DeviceTrainer(DeviceContext ctx, DictionaryTrainer host)
    {
        CheckSupported(host.Dict, host.Options);
        this.ctx = ctx; acc = ctx.Accelerator; Host = host; dict = host.Dict; opt = host.Options;
        K = DictionaryDeviceKernels.For(acc);
        M = dict.Models; D = dict.DModel; F = dict.DictSize; rowLen = M * D;
        var hostParams = host.Parameters;
        p = new MemoryBuffer1D<float, Stride1D.Dense>[hostParams.Count];
        g = new MemoryBuffer1D<float, Stride1D.Dense>[hostParams.Count];
        m = new MemoryBuffer1D<float, Stride1D.Dense>[hostParams.Count];
        v = new MemoryBuffer1D<float, Stride1D.Dense>[hostParams.Count];
        for (int i = 0; i < hostParams.Count; i++)
        {
            p[i] = Upload(hostParams[i]);
            g[i] = Alloc<float>(hostParams[i].Length);
            m[i] = Upload(host.Optimizer.ExpAvg[i]);
            v[i] = Upload(host.Optimizer.ExpAvgSq[i]);
        }
        normMean = dict.Normalizer is { } nz ? Upload(nz.Mean) : Alloc<float>(1);
        normScale = dict.Normalizer is { } nz2 ? Upload(nz2.Scale) : Alloc<float>(1);
        cF = Alloc<float>(F);
        tokensSinceFired = Alloc<long>(F);
        tokensSinceFired.View.CopyFromCPU(host.TokensSinceFired);
        deadMask = Alloc<int>(F);
        deadCount = Alloc<int>(1);
        hist = Alloc<int>(DictionaryDeviceKernels.RadixBins);
        partial = Alloc<double>(SumThreads);
        sums = Alloc<double>(1);
        acc.Synchronize();
    }

    ArrayView<float> WEnc => p[0].View;
    ArrayView<float> BEnc => p[1].View;
    ArrayView<float> WDec => p[2].View;
    ArrayView<float> BDec => p[3].View;

    MemoryBuffer1D<T, Stride1D.Dense> Alloc<T>(long n, List<IDisposable>? list = null) where T : unmanaged
    {
        var b = acc.Allocate1D<T>(Math.Max(1, n));
        (list ?? owned).Add(b);
        return b;
    }

    MemoryBuffer1D<float, Stride1D.Dense> Upload(float[] a)
    {
        var b = Alloc<float>(a.Length);
        if (a.Length > 0) b.View.SubView(0, a.Length).CopyFromCPU(a);
        return b;
    }

    void EnsureBatch(int B)
    {
        if (B <= cap) return;
        foreach (var b in batchOwned) b.Dispose();
        batchOwned.Clear();
        long n = (long)B * rowLen;
        xRaw = Alloc<float>(n, batchOwned); xhat = Alloc<float>(n, batchOwned); delta = Alloc<float>(n, batchOwned);
        deltaAux = Alloc<float>(n, batchOwned); xaux = Alloc<float>(n, batchOwned);
        xin = dict.SubtractDecoderBias ? Alloc<float>(n, batchOwned) : xRaw;
        pre = Alloc<float>((long)B * F, batchOwned);
        slot = Alloc<int>((long)B * F, batchOwned);
        rMean = Alloc<float>(rowLen, batchOwned);
        rowSq = Alloc<double>((long)B * M, batchOwned);
        colSum = Alloc<double>(rowLen, batchOwned); colSq = Alloc<double>(rowLen, batchOwned);
        numDen = Alloc<double>(2L * B, batchOwned);
        chunkSums = Alloc<int>((Math.Max(B, F) + 1023) / 1024 + 2, batchOwned);
        rows = new RowBuffers(B, n2 => Alloc<int>(n2, batchOwned));
        int kCap = Math.Min(F, Math.Max(dict.K, opt.KMax ?? 0));
        int kAuxCap = Math.Clamp(opt.TopKAux ?? D / 2, 1, F);
        main = new DeviceCodes(B, F, (long)B * kCap, n2 => Alloc<int>(n2, batchOwned), n2 => Alloc<float>(n2, batchOwned));
        aux = new DeviceCodes(B, F, (long)B * kAuxCap, n2 => Alloc<int>(n2, batchOwned), n2 => Alloc<float>(n2, batchOwned));
        cap = B;
    }

    /// <summary>A full update on a raw host batch xBMD [B, M, D].</summary>
    public StepStats Step(ReadOnlySpan<float> xBMD)
    {
        if (xBMD.Length % rowLen != 0) throw new ArgumentException($"batch length {xBMD.Length} is not a multiple of models·d_model = {rowLen}");
        int B = xBMD.Length / rowLen;
        EnsureBatch(B);
        if (B > 0) xRaw.View.SubView(0, xBMD.Length).CopyFromCPU(acc.DefaultStream, xBMD);
        return StepOnDevice(B);
    }

    /// <summary>A full update on a batch already on the device, xBMD [B, M, D] (benchmarks: random data generated once).</summary>
    public StepStats StepDevice(ArrayView<float> xBMD, int B)
    {
        EnsureBatch(B);
        xRaw.View.SubView(0, (long)B * rowLen).CopyFrom(xBMD.SubView(0, (long)B * rowLen));
        return StepOnDevice(B);
    }

    public StepStats StepFrom(IActivationBatches source, int batchSize)
    {
        if (source.Models != M || source.DModel != D)
            throw new ArgumentException($"the activations have {source.Models} model(s) × {source.DModel} but the dictionary expects {M} × {D}");
        EnsureBatch(batchSize);
        long n = (long)batchSize * rowLen;
        if (pinned is null || pinnedRows != batchSize)
        {
            DrainPending();
            if (pinned is not null) foreach (var a in pinned) a.Dispose();
            pinned = [acc.AllocatePageLocked1D<float>(n), acc.AllocatePageLocked1D<float>(n)];
            pinnedRows = batchSize;
        }
        int got; long position;
        if (pending is not null && ReferenceEquals(pendingSource, source)) { (got, position) = pending.GetAwaiter().GetResult(); pending = null; }
        else
        {
            DrainPending();
            got = source.Next(pinned[cur].Span, batchSize);
            position = source.Position;
        }
        if (got < batchSize) throw new SourceExhaustedException(Host.StepCount, got, batchSize);
        xRaw.View.SubView(0, n).CopyFromPageLockedAsync(acc.DefaultStream, pinned[cur]);
        ConsumedPosition = position;
        // read the next batch on a host thread into the other buffer while the device computes this step
        int next = 1 - cur;
        var buf = pinned[next];
        pendingSource = source;
        pending = Task.Run(() => { int gg = source.Next(buf.Span, batchSize); return (gg, source.Position); });
        cur = next;
        return StepOnDevice(batchSize);
    }

    void DrainPending()
    {
        if (pending is null) return;
        try { pending.GetAwaiter().GetResult(); } catch (Exception) { /* the read is discarded */ }
        pending = null; pendingSource = null;
    }

    StepStats StepOnDevice(int B)
    {
        long step = Host.StepCount;
        ArrayView<float> x = xRaw.View.SubView(0, (long)B * rowLen);
        ArrayView<float> xinV = xin.View.SubView(0, (long)B * rowLen);
        ArrayView<float> preV = pre.View.SubView(0, (long)B * F);

        // load: normalise, geometric-median b_dec on step 0, SAE centring
        if (dict.Normalizer is not null) K.Normalize(x, normMean.View, normScale.View, M, D);
        if (step == 0 && opt.GeometricMedianInit)
        {
            var xh = new float[(long)B * rowLen];
            ((ArrayView1D<float, Stride1D.Dense>)x).CopyToCPU(acc.DefaultStream, xh);
            acc.Synchronize();
            GeometricMedian.Compute(xh, B, M, D, dict.BDec);
            BDec.SubView(0, rowLen).CopyFromCPU(dict.BDec);
        }
        if (dict.SubtractDecoderBias) K.SubtractBias(x, BDec, xinV, rowLen);

        // encode: pre = Σ_m x_m·W_enc[m]ᵀ, + b_enc, ReLU
        for (int mm = 0; mm < M; mm++)
            ctx.Gemm.Sgemm(false, true, B, F, D, 1f, xinV.SubView(mm * D), rowLen, WEnc.SubView((long)mm * F * D, (long)F * D), D, mm == 0 ? 0f : 1f, preV, F);
        K.AddBiasRelu(preV, BEnc, F);

        bool scaled = dict.CodeNormalization != CodeNormalization.None;
        if (scaled) K.CodeNorm(WDec, cF.View, new CodeNormArgs { Models = M, F = F, D = D, Mode = (int)dict.CodeNormalization, AlphaSae = dict.AlphaSae, AlphaCc = dict.AlphaCc });
        int k = Host.CurrentK(step);
        var keys = new KeyArgs { Rows = B, F = F, Scaled = scaled ? 1 : 0, Masked = 0 };
        int nnz;
        if (dict.Sparsity == Sparsity.BatchTopK)
        {
            (nnz, float minKept) = SelectBatch(preV, keys, (long)k * B, main);
            if (step > opt.ThresholdStartStep)
                dict.Threshold = dict.Threshold < 0 ? minKept : opt.ThresholdBeta * dict.Threshold + (1 - opt.ThresholdBeta) * minKept;
        }
        else nnz = SelectRows(preV, keys, k, main);
        LastRows = B; LastNnz = nnz;

        // decode, loss
        ArrayView<float> xhatV = xhat.View.SubView(0, (long)B * rowLen);
        ArrayView<float> deltaV = delta.View.SubView(0, (long)B * rowLen);
        K.Decode(main.View, WDec, BDec, xhatV, M, D, F, withBias: true);
        K.ReconLoss(x, xhatV, deltaV, rowSq.View, new LossArgs { Rows = B * M, D = D, B = B, Models = M, Loss = (int)opt.Loss });
        K.ColumnMoments(x, colSum.View, colSq.View, B, rowLen);
        var (reconLoss, sqSum, fve) = ReconTerm(B);

        // dead latents: age all, reset the fired ones, count the dead
        K.Age(tokensSinceFired.View, B);
        K.ResetFired(main.View, tokensSinceFired.View, nnz);
        deadCount.View.MemSetToZero();
        K.DeadMask(tokensSinceFired.View, deadMask.View, deadCount.View, opt.DeadTokens);
        int dead = DownloadInt(deadCount.View, 0);

        // AuxK
        double auxLoss = 0, auxPre = -1; bool auxActive = false; int nnzAux = 0;
        ArrayView<float> deltaAuxV = deltaAux.View.SubView(0, (long)B * rowLen);
        if (dead > 0 && opt.AuxKAlpha != 0)
        {
            int kAux = Math.Min(opt.TopKAux ?? D / 2, dead);
            nnzAux = SelectRows(preV, keys with { Masked = 1 }, kAux, aux);
            ArrayView<float> xauxV = xaux.View.SubView(0, (long)B * rowLen);
            K.Decode(aux.View, WDec, BDec, xauxV, M, D, F, withBias: false);
            K.ResidualMean(x, xhatV, rMean.View, B, rowLen);
            K.AuxMoments(x, xhatV, xauxV, rMean.View, numDen.View, B, rowLen);
            var nd = new double[2 * B];
            ((ArrayView1D<double, Stride1D.Dense>)numDen.View.SubView(0, 2L * B)).CopyToCPU(acc.DefaultStream, nd);
            acc.Synchronize();
            double num = 0, den = 0;
            for (int t = 0; t < B; t++) { num += nd[2 * t]; den += nd[2 * t + 1]; }
            num /= B; den /= B;
            double ratio = num / den;
            auxActive = double.IsFinite(ratio) && den > 0;
            float gAux = auxActive ? (float)(-2.0 * opt.AuxKAlpha / (B * den)) : 0f;
            K.AuxDelta(x, xhatV, xauxV, deltaAuxV, gAux);
            auxLoss = double.IsFinite(ratio) ? ratio : 0; auxPre = num;
        }
        double mu = opt.SparsityCoef * (opt.SparsityWarmupSteps > 0 ? Math.Min(1.0, (double)step / opt.SparsityWarmupSteps) : 1.0);
        double totalPrecise = reconLoss + opt.AuxKAlpha * auxLoss + mu * 0;
        var stats = new StepStats
        {
            Step = step, Total = (float)totalPrecise, TotalPrecise = totalPrecise, Recon = (float)reconLoss, Mse = (float)(sqSum / ((double)B * M)),
            Sparsity = 0, AuxK = (float)auxLoss, AuxKPreNorm = (float)auxPre, L0 = (double)nnz / B, Dead = dead, DeadFraction = (double)dead / F,
            Fve = fve, K = k, Threshold = dict.Threshold,
        };
        if (!float.IsFinite(stats.Total)) throw new TrainingDivergedException(step, stats.Total);

        // backward: code gradients (active entries only), weight gradients, bias gradients
        K.CodeGrad(main.View, WDec, deltaV, main.GVal.View, nnz, M, D, F);
        if (auxActive) K.CodeGrad(aux.View, WDec, deltaAuxV, aux.GVal.View, nnzAux, M, D, F);
        K.WeightGrads(main.View, aux.View, deltaV, deltaAuxV, xinV, g[2].View, g[0].View, new WeightGradArgs { Models = M, F = F, D = D, WithAux = auxActive ? 1 : 0 });
        K.EncoderBiasGrad(main.View, aux.View, g[1].View, auxActive);
        K.DecoderBiasGrad(deltaV, g[1].View, WEnc, g[3].View, new BiasGradArgs { Rows = B, RowLen = rowLen, D = D, F = F, Sae = dict.SubtractDecoderBias ? 1 : 0 });

        // post-process: projection, clip; Adam; renormalise
        if (opt.UnitNormDecoder) K.ProjectDecoderGrad(WDec, g[2].View, M * F, D);
        float norm = ClipGradients();
        double lr = Host.CurrentLr;
        var adam = Host.Optimizer;
        adam.Step++;
        var s = AdamScalars.For(adam.Step, lr, adam.Beta1, adam.Beta2, adam.Eps);
        for (int i = 0; i < p.Length; i++) ctx.Kernels.Adam(p[i].View, g[i].View, m[i].View, v[i].View, s);
        Host.StepCount++;
        if (opt.UnitNormDecoder) K.NormalizeRows(WDec, M * F, D);
        return stats with { GradNorm = norm, Lr = lr };
    }

    (double Recon, double SqSum, double[] Fve) ReconTerm(int B)
    {
        var rs = new double[(long)B * M];
        var cs = new double[rowLen];
        var cq = new double[rowLen];
        ((ArrayView1D<double, Stride1D.Dense>)rowSq.View.SubView(0, rs.Length)).CopyToCPU(acc.DefaultStream, rs);
        ((ArrayView1D<double, Stride1D.Dense>)colSum.View.SubView(0, rowLen)).CopyToCPU(acc.DefaultStream, cs);
        ((ArrayView1D<double, Stride1D.Dense>)colSq.View.SubView(0, rowLen)).CopyToCPU(acc.DefaultStream, cq);
        acc.Synchronize();
        // the CPU's order: tokens, then models
        double recon = 0, sqSum = 0;
        var errM = new double[M];
        for (int t = 0; t < B; t++)
            for (int mm = 0; mm < M; mm++)
            {
                double s = rs[t * M + mm];
                errM[mm] += s; sqSum += s;
                recon += opt.Loss == ReconLoss.L2 ? Math.Sqrt(s) : s;
            }
        recon /= opt.Loss == ReconLoss.Mse ? B : (double)B * M;
        var fve = new double[M];
        for (int mm = 0; mm < M; mm++)
        {
            double mean2 = 0, sq = 0;
            for (int i = 0; i < D; i++) { double avg = cs[mm * D + i] / B; mean2 += avg * avg; sq += cq[mm * D + i]; }
            double var = sq / B - mean2;
            fve[mm] = var > 0 ? 1 - errM[mm] / B / var : double.NaN;
        }
        return (recon, sqSum, fve);
    }

    // torch.nn.utils.clip_grad_norm_ as DictionaryTrainer.ClipGradients: per-tensor norms rounded to float, combined in double
    float ClipGradients()
    {
        double total = 0;
        var one = new double[1];
        foreach (var gg in g)
        {
            K.SumSquares(gg.View, partial.View, sums.View, SumThreads);
            sums.View.CopyToCPU(acc.DefaultStream, one);
            acc.Synchronize();
            float n = (float)Math.Sqrt(one[0]);
            total += (double)n * n;
        }
        float norm = (float)Math.Sqrt(total);
        if (opt.ClipNorm is float max)
        {
            float coef = max / (norm + 1e-6f);
            if (coef < 1f) foreach (var gg in g) K.Scale(gg.View, coef);
        }
        return norm;
    }

    // Batch top-k of s = f·c over [B, F]: exact radix select of the kTotal-th largest key in two 16-bit passes (host
    // reads the 65,536-bin histograms), then per-row counts, the batch's ties in flat order, CSR write and columns.
    (int Nnz, float MinKept) SelectBatch(ArrayView<float> preV, KeyArgs keys, long kTotal, DeviceCodes codes)
    {
        var h = new int[DictionaryDeviceKernels.RadixBins];
        hist.View.MemSetToZero();
        K.RadixHistogram(preV, cF.View, deadMask.View, keys, hist.View, 0, 0);
        hist.View.CopyToCPU(acc.DefaultStream, h);
        acc.Synchronize();
        long positives = 0;
        foreach (int c in h) positives += c;
        long kEff = Math.Min(kTotal, positives);
        uint threshold = uint.MaxValue; int need = 0; float minKept = 0;
        if (kEff > 0)
        {
            long cum = 0; int hb = 0;
            for (int bin = h.Length - 1; bin >= 0; bin--) { if (cum + h[bin] >= kEff) { hb = bin; break; } cum += h[bin]; }
            hist.View.MemSetToZero();
            K.RadixHistogram(preV, cF.View, deadMask.View, keys, hist.View, 1, hb);
            hist.View.CopyToCPU(acc.DefaultStream, h);
            acc.Synchronize();
            int lb = 0;
            for (int bin = h.Length - 1; bin >= 0; bin--) { if (cum + h[bin] >= kEff) { lb = bin; break; } cum += h[bin]; }
            threshold = ((uint)hb << 16) | (uint)lb;
            need = (int)(kEff - cum);   // cum = keys above the threshold
            minKept = BitConverter.UInt32BitsToSingle(threshold);
        }
        int B = keys.Rows;
        var r = rows.View(B);
        K.Fill(r.Threshold, unchecked((int)threshold));
        K.RowCountAbove(preV, cF.View, deadMask.View, keys, r);
        K.ExclusiveScan(r.Eq, r.EqPrefix, chunkSums.View, B);
        K.BatchBudget(r, B, need);
        K.ExclusiveScan(r.Count, codes.RowStart.View, chunkSums.View, B);
        K.RowWrite(preV, cF.View, deadMask.View, keys, r, codes.View, slot.View);
        K.BuildColumns(slot.View, codes.View, chunkSums.View, B, F);
        return ((int)kEff, minKept);
    }

    // Per-token top-k of s (positive keys of allowed latents, ties to the lower latent), then CSR write and columns.
    int SelectRows(ArrayView<float> preV, KeyArgs keys, int k, DeviceCodes codes)
    {
        int B = keys.Rows;
        var r = rows.View(B);
        K.RowTopK(preV, cF.View, deadMask.View, keys, r, Math.Min(k, F));
        K.ExclusiveScan(r.Count, codes.RowStart.View, chunkSums.View, B);
        K.RowWrite(preV, cF.View, deadMask.View, keys, r, codes.View, slot.View);
        K.BuildColumns(slot.View, codes.View, chunkSums.View, B, F);
        return DownloadInt(codes.RowStart.View, B);
    }

    int DownloadInt(ArrayView<int> view, long at)
    {
        var one = new int[1];
        view.SubView(at, 1).CopyToCPU(acc.DefaultStream, one);
        acc.Synchronize();
        return one[0];
    }

    /// <summary>The last step's selected code (main, not AuxK) as host <see cref="SparseCodes"/> (tests compare it with
    /// the CPU trainer's <see cref="DictionaryTrainer.Codes"/>).</summary>
    public SparseCodes DownloadCodes()
    {
        var c = new SparseCodes(LastRows, F, LastNnz);
        var rs = new int[LastRows + 1];
        codes(main.RowStart.View, rs);
        c.Reset(LastRows);
        rs.CopyTo(c.RowStart, 0);
        if (LastNnz > 0)
        {
            var idx = new int[LastNnz]; var val = new float[LastNnz];
            codes(main.Index.View, idx);
            ((ArrayView1D<float, Stride1D.Dense>)main.Value.View.SubView(0, LastNnz)).CopyToCPU(acc.DefaultStream, val);
            acc.Synchronize();
            idx.CopyTo(c.Index, 0); val.CopyTo(c.Value, 0);
        }
        return c;

        void codes(ArrayView<int> src, int[] dst)
        {
            ((ArrayView1D<int, Stride1D.Dense>)src.SubView(0, dst.Length)).CopyToCPU(acc.DefaultStream, dst);
            acc.Synchronize();
        }
    }

    public void SyncToHost()
    {
        var hp = Host.Parameters;
        for (int i = 0; i < p.Length; i++)
        {
            Down(p[i], hp[i]);
            Down(m[i], Host.Optimizer.ExpAvg[i]);
            Down(v[i], Host.Optimizer.ExpAvgSq[i]);
        }
        ((ArrayView1D<long, Stride1D.Dense>)tokensSinceFired.View.SubView(0, F)).CopyToCPU(acc.DefaultStream, Host.TokensSinceFired);
        acc.Synchronize();

        void Down(MemoryBuffer1D<float, Stride1D.Dense> src, float[] dst)
        {
            if (dst.Length == 0) return;
            ((ArrayView1D<float, Stride1D.Dense>)src.View.SubView(0, dst.Length)).CopyToCPU(acc.DefaultStream, dst.AsSpan());
        }
    }

    /// <summary>The device's gradients of the last step (tests), in the order of <see cref="DictionaryTrainer.Gradients"/>.</summary>
    public float[][] DownloadGradients()
    {
        var r = new float[g.Length][];
        for (int i = 0; i < g.Length; i++)
        {
            r[i] = new float[Host.Gradients[i].Length];
            if (r[i].Length > 0) ((ArrayView1D<float, Stride1D.Dense>)g[i].View.SubView(0, r[i].Length)).CopyToCPU(acc.DefaultStream, r[i].AsSpan());
        }
        acc.Synchronize();
        return r;
    }

    public void Dispose()
    {
        DrainPending();
        try { acc.Synchronize(); } catch (Exception) { /* a failed device still releases its buffers */ }
        if (pinned is not null) foreach (var a in pinned) a.Dispose();
        foreach (var b in batchOwned) b.Dispose();
        foreach (var b in owned) b.Dispose();
        batchOwned.Clear(); owned.Clear();
    }

    /// <summary>Per-row selection buffers.</summary>
    sealed class RowBuffers(int b, Func<long, MemoryBuffer1D<int, Stride1D.Dense>> alloc)
    {
        readonly MemoryBuffer1D<int, Stride1D.Dense> threshold = alloc(b), gt = alloc(b), eq = alloc(b), eqPrefix = alloc(b + 1), budget = alloc(b), count = alloc(b);
        public RowSelect View(int rows) => new()
        {
            Threshold = threshold.View.SubView(0, rows), Gt = gt.View.SubView(0, rows), Eq = eq.View.SubView(0, rows),
            EqPrefix = eqPrefix.View.SubView(0, rows + 1), Budget = budget.View.SubView(0, rows), Count = count.View.SubView(0, rows),
        };
    }
}

/// <summary>Device buffers of one sparse code matrix [B, F] with room for <c>capacity</c> entries.</summary>
sealed class DeviceCodes
{
    public MemoryBuffer1D<int, Stride1D.Dense> RowStart, Index, EntryRow, ColCount, ColStart, ColRow, ColEntry;
    public MemoryBuffer1D<float, Stride1D.Dense> Value, GVal;

    public DeviceCodes(int rows, int f, long capacity, Func<long, MemoryBuffer1D<int, Stride1D.Dense>> ints, Func<long, MemoryBuffer1D<float, Stride1D.Dense>> floats)
    {
        RowStart = ints(rows + 1); Index = ints(capacity); EntryRow = ints(capacity); ColCount = ints(f); ColStart = ints(f + 1);
        ColRow = ints(capacity); ColEntry = ints(capacity);
        Value = floats(capacity); GVal = floats(capacity);
    }

    public CodesView View => new()
    {
        RowStart = RowStart.View, Index = Index.View, Value = Value.View, EntryRow = EntryRow.View, GVal = GVal.View,
        ColCount = ColCount.View, ColStart = ColStart.View, ColRow = ColRow.View, ColEntry = ColEntry.View,
    };
}

/// <summary><see cref="ITrainingDevice"/> over a <see cref="DeviceContext"/> (the CLI injects it into the training run).</summary>
public sealed class DeviceTraining(DeviceContext ctx) : ITrainingDevice
{
    public DeviceContext Context { get; } = ctx;
    public string Name => Context.Name;
    public ITrainingStepper Attach(DictionaryTrainer trainer) => new DeviceTrainer(Context, trainer);
}

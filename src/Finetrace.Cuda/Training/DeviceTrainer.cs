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
    readonly MemoryBuffer1D<int, Stride1D.Dense> deadMask, deadCount;
    readonly MemoryBuffer1D<double, Stride1D.Dense> partial, sums;
    const int SumThreads = 1 << 14;

    // per-batch buffers (sized for the largest batch seen)
    int cap = -1;
    MemoryBuffer1D<float, Stride1D.Dense> xRaw = null!, xin = null!, xhat = null!, delta = null!, deltaAux = null!, xaux = null!, pre = null!, rMean = null!;
    MemoryBuffer1D<double, Stride1D.Dense> rowSq = null!, colSum = null!, colSq = null!, numDen = null!;
    DeviceTopK select = null!;
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

    /// <summary>When set (benchmarks), seconds spent per phase are added here; each phase boundary then synchronises the
    /// device, which costs a little throughput.</summary>
    public Dictionary<string, double>? PhaseSeconds { get; set; }
    readonly System.Diagnostics.Stopwatch clock = System.Diagnostics.Stopwatch.StartNew();
    double mark;
    void Phase(string name)
    {
        if (PhaseSeconds is null) return;
        acc.Synchronize();
        double now = clock.Elapsed.TotalSeconds;
        PhaseSeconds[name] = PhaseSeconds.GetValueOrDefault(name) + (now - mark);
        mark = now;
    }

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
        rMean = Alloc<float>(rowLen, batchOwned);
        rowSq = Alloc<double>((long)B * M, batchOwned);
        colSum = Alloc<double>(rowLen, batchOwned); colSq = Alloc<double>(rowLen, batchOwned);
        numDen = Alloc<double>(2L * B, batchOwned);
        select = new DeviceTopK(acc, B, F);
        batchOwned.Add(select);
        int kCap = Math.Min(F, Math.Max(dict.K, opt.KMax ?? 0));
        int kAuxCap = Math.Clamp(opt.TopKAux ?? D / 2, 1, F);
        main = DeviceCodes.Allocate(acc, B, F, (long)B * kCap);
        aux = DeviceCodes.Allocate(acc, B, F, (long)B * kAuxCap);
        batchOwned.Add(main); batchOwned.Add(aux);
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
        if (PhaseSeconds is not null) { acc.Synchronize(); mark = clock.Elapsed.TotalSeconds; }
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
        Phase("encode (GEMM)");

        bool scaled = dict.CodeNormalization != CodeNormalization.None;
        if (scaled) K.CodeNorm(WDec, cF.View, new CodeNormArgs { Models = M, F = F, D = D, Mode = (int)dict.CodeNormalization, AlphaSae = dict.AlphaSae, AlphaCc = dict.AlphaCc });
        int k = Host.CurrentK(step);
        Phase("code norms");
        var keys = new KeyArgs { Rows = B, F = F, Scaled = scaled ? 1 : 0, Masked = 0 };
        int nnz;
        if (dict.Sparsity == Sparsity.BatchTopK)
        {
            (nnz, float minKept) = select.Batch(preV, cF.View, default, keys, (long)k * B, main);
            if (step > opt.ThresholdStartStep)
                dict.Threshold = dict.Threshold < 0 ? minKept : opt.ThresholdBeta * dict.Threshold + (1 - opt.ThresholdBeta) * minKept;
        }
        else nnz = select.Rows(preV, cF.View, default, keys, k, main);
        LastRows = B; LastNnz = nnz;
        Phase("select");

        // decode, loss
        ArrayView<float> xhatV = xhat.View.SubView(0, (long)B * rowLen);
        ArrayView<float> deltaV = delta.View.SubView(0, (long)B * rowLen);
        K.Decode(main.View, WDec, BDec, xhatV, M, D, F, withBias: true);
        K.ReconLoss(x, xhatV, deltaV, rowSq.View, new LossArgs { Rows = B * M, D = D, B = B, Models = M, Loss = (int)opt.Loss });
        K.ColumnMoments(x, colSum.View, colSq.View, B, rowLen);
        var (reconLoss, sqSum, fve) = ReconTerm(B);
        Phase("decode, loss");

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
            nnzAux = select.Rows(preV, cF.View, deadMask.View, keys with { Masked = 1 }, kAux, aux);
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
        Phase("dead, auxk");
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
        Phase("code grad");
        K.WeightGrads(main.View, aux.View, deltaV, deltaAuxV, xinV, g[2].View, g[0].View, new WeightGradArgs { Models = M, F = F, D = D, WithAux = auxActive ? 1 : 0 });
        K.EncoderBiasGrad(main.View, aux.View, g[1].View, auxActive);
        K.DecoderBiasGrad(deltaV, g[1].View, WEnc, g[3].View, new BiasGradArgs { Rows = B, RowLen = rowLen, D = D, F = F, Sae = dict.SubtractDecoderBias ? 1 : 0 });
        Phase("weight grads");

        // post-process: projection, clip; Adam; renormalise
        if (opt.UnitNormDecoder) K.ProjectDecoderGrad(WDec, g[2].View, M * F, D);
        float norm = ClipGradients();
        Phase("clip");
        double lr = Host.CurrentLr;
        var adam = Host.Optimizer;
        adam.Step++;
        var s = AdamScalars.For(adam.Step, lr, adam.Beta1, adam.Beta2, adam.Eps);
        for (int i = 0; i < p.Length; i++) ctx.Kernels.Adam(p[i].View, g[i].View, m[i].View, v[i].View, s);
        Host.StepCount++;
        if (opt.UnitNormDecoder) K.NormalizeRows(WDec, M * F, D);
        Phase("adam");
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

    int DownloadInt(ArrayView<int> view, long at)
    {
        var one = new int[1];
        view.SubView(at, 1).CopyToCPU(acc.DefaultStream, one);
        acc.Synchronize();
        return one[0];
    }

    /// <summary>The last step's selected code (main, not AuxK) as host <see cref="SparseCodes"/> (tests compare it with
    /// the CPU trainer's <see cref="DictionaryTrainer.Codes"/>).</summary>
    public SparseCodes DownloadCodes() => main.Download(LastRows);

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
}

/// <summary>Device buffers of one sparse code matrix [B, F]: CSR rows, each entry's token and code gradient, and the
/// per-latent column view.</summary>
public sealed class DeviceCodes : IDisposable
{
    public MemoryBuffer1D<int, Stride1D.Dense> RowStart { get; }
    public MemoryBuffer1D<int, Stride1D.Dense> Index { get; }
    public MemoryBuffer1D<int, Stride1D.Dense> EntryRow { get; }
    public MemoryBuffer1D<int, Stride1D.Dense> ColCount { get; }
    public MemoryBuffer1D<int, Stride1D.Dense> ColStart { get; }
    public MemoryBuffer1D<int, Stride1D.Dense> ColRow { get; }
    public MemoryBuffer1D<int, Stride1D.Dense> ColEntry { get; }
    public MemoryBuffer1D<float, Stride1D.Dense> Value { get; }
    public MemoryBuffer1D<float, Stride1D.Dense> GVal { get; }
    readonly Accelerator acc;
    readonly int f;

    DeviceCodes(Accelerator a, int rows, int f, long capacity)
    {
        acc = a; this.f = f;
        long c = Math.Max(1, capacity);
        RowStart = a.Allocate1D<int>(rows + 1); Index = a.Allocate1D<int>(c); EntryRow = a.Allocate1D<int>(c);
        ColCount = a.Allocate1D<int>(Math.Max(1, f)); ColStart = a.Allocate1D<int>(f + 1); ColRow = a.Allocate1D<int>(c); ColEntry = a.Allocate1D<int>(c);
        Value = a.Allocate1D<float>(c); GVal = a.Allocate1D<float>(c);
    }

    /// <summary>Room for <paramref name="capacity"/> entries of a [rows, f] code.</summary>
    public static DeviceCodes Allocate(Accelerator a, int rows, int f, long capacity) => new(a, rows, f, capacity);

    public CodesView View => new()
    {
        RowStart = RowStart.View, Index = Index.View, Value = Value.View, EntryRow = EntryRow.View, GVal = GVal.View,
        ColCount = ColCount.View, ColStart = ColStart.View, ColRow = ColRow.View, ColEntry = ColEntry.View,
    };

    /// <summary>The first <paramref name="rows"/> rows as host <see cref="SparseCodes"/>.</summary>
    public SparseCodes Download(int rows)
    {
        var rs = new int[rows + 1];
        ((ArrayView1D<int, Stride1D.Dense>)RowStart.View.SubView(0, rows + 1)).CopyToCPU(acc.DefaultStream, rs);
        acc.Synchronize();
        int nnz = rs[rows];
        var c = new SparseCodes(rows, f, nnz);
        c.Reset(rows);
        rs.CopyTo(c.RowStart, 0);
        if (nnz > 0)
        {
            ((ArrayView1D<int, Stride1D.Dense>)Index.View.SubView(0, nnz)).CopyToCPU(acc.DefaultStream, c.Index.AsSpan(0, nnz));
            ((ArrayView1D<float, Stride1D.Dense>)Value.View.SubView(0, nnz)).CopyToCPU(acc.DefaultStream, c.Value.AsSpan(0, nnz));
            acc.Synchronize();
        }
        return c;
    }

    public void Dispose()
    {
        foreach (var b in new IDisposable[] { RowStart, Index, EntryRow, ColCount, ColStart, ColRow, ColEntry, Value, GVal }) b.Dispose();
    }
}

/// <summary><see cref="ITrainingDevice"/> over a <see cref="DeviceContext"/> (the CLI injects it into the training run).</summary>
public sealed class DeviceTraining(DeviceContext ctx) : ITrainingDevice
{
    public DeviceContext Context { get; } = ctx;
    public string Name => Context.Name;
    public ITrainingStepper Attach(DictionaryTrainer trainer) => new DeviceTrainer(Context, trainer);
}

using Finetrace.Tensors;
using System.Numerics.Tensors;

namespace Finetrace.Dictionaries;

/// <summary>Reconstruction term (methods.md §2.4). e_{b,m} = x_{b,m} − x̂_{b,m}.</summary>
public enum ReconLoss
{
    /// <summary>(1/(B·M)) Σ_b Σ_m ‖e‖ — un-squared; dictionary_learning's crosscoder trainers (compatible mode).</summary>
    L2,
    /// <summary>(1/(B·M)) Σ_b Σ_m ‖e‖² — the fork's use_mse_loss.</summary>
    MseMeanModels,
    /// <summary>(1/B) Σ_b Σ_m ‖e‖² — Finetrace default; the SAE trainers' loss.</summary>
    Mse,
}

public enum SparsityPenalty { L1, SqrtL1 }

/// <summary>Every knob of a training run. Defaults follow the reference BatchTopK recipe where one exists.</summary>
public sealed record TrainerOptions
{
    public ReconLoss Loss { get; init; } = ReconLoss.Mse;
    public double Lr { get; init; } = 1e-4;
    public int WarmupSteps { get; init; } = 1000;
    public long? DecayStart { get; init; }
    public long TotalSteps { get; init; } = 100_000;
    /// <summary>Global gradient-norm clip (null: none, as in the L1 crosscoder trainer).</summary>
    public float? ClipNorm { get; init; } = 1f;
    /// <summary>μ of the ReLU dictionaries' sparsity term.</summary>
    public float SparsityCoef { get; init; }
    public SparsityPenalty Penalty { get; init; } = SparsityPenalty.L1;
    /// <summary>μ ramps linearly from 0 over this many steps (0: constant).</summary>
    public int SparsityWarmupSteps { get; init; }
    public float AuxKAlpha { get; init; } = 1f / 32;
    public long DeadTokens { get; init; } = 10_000_000;
    /// <summary>k_aux cap (default D/2).</summary>
    public int? TopKAux { get; init; }
    public float ThresholdBeta { get; init; } = 0.999f;
    public long ThresholdStartStep { get; init; } = 1000;
    /// <summary>Set the decoder bias to the geometric median of the first batch (BatchTopK trainers).</summary>
    public bool GeometricMedianInit { get; init; } = true;
    /// <summary>SAE recipe: remove the gradient parallel to each decoder row, renormalise rows to 1 after the step.</summary>
    public bool UnitNormDecoder { get; init; }
    /// <summary>k annealing: k(t) = max(1, round(KMax − (KMax − K)·t/KAnnealSteps)) for t &lt; KAnnealSteps.</summary>
    public int? KMax { get; init; }
    public int KAnnealSteps { get; init; }
    /// <summary>JumpReLU: STE kernel bandwidth and L0 coefficient.</summary>
    public float JumpBandwidth { get; init; } = 0.001f;
    /// <summary>Use the dense GEMM reference kernels instead of the sparse ones (for benchmarks and tests).</summary>
    public bool Dense { get; init; }
    /// <summary>Crosscoder research variant (methods.md §16): latent masks, designated shared latents, diff-aware loss.
    /// Null: the plain crosscoder (the plain code path runs unchanged).</summary>
    public CrosscoderVariant? Variant { get; init; }
}

/// <summary>What one step measured (normalised space).</summary>
public sealed record StepStats
{
    public long Step { get; init; }
    public float Total { get; init; }
    /// <summary><see cref="Total"/> before rounding to float32 (finite-difference checks need its resolution).</summary>
    public double TotalPrecise { get; init; }
    public float Recon { get; init; }
    /// <summary>mean over (b, m) of Σ_d e² (the reference's logged mse).</summary>
    public float Mse { get; init; }
    public float Sparsity { get; init; }
    public float AuxK { get; init; }
    public float AuxKPreNorm { get; init; } = -1;
    public double L0 { get; init; }
    public int Dead { get; init; }
    public double DeadFraction { get; init; }
    /// <summary>Batch FVE per model: 1 − Σ‖e‖² / Σ‖x − x̄‖².</summary>
    public double[] Fve { get; init; } = [];
    public float GradNorm { get; init; }
    public double Lr { get; init; }
    public int K { get; init; }
    public float Threshold { get; init; }
    /// <summary>DECOUPLED BatchTopK: mean active latents per token for each model's code, and θ_m.</summary>
    public double[] L0PerModel { get; init; } = [];
    public float[] ModelThreshold { get; init; } = [];
}

/// <summary>
/// One trainer for every dictionary in <see cref="SparseDictionary"/>, with hand-written forward and backward
/// passes. A step is: normalise batch → (step 0: decoder bias ← geometric median) → encode (dense GEMM) → sparsify →
/// decode → loss → backward (sparse kernels for TopK-family codes) → [project decoder gradients] → clip → Adam →
/// [renormalise decoder]. The phases are public so tests can compare gradients at every stage with the reference.
/// </summary>
public sealed class DictionaryTrainer
{
    public SparseDictionary Dict { get; }
    public TrainerOptions Options { get; }
    public Adam Optimizer { get; }
    /// <summary>Per-latent tokens since the latent last fired (AuxK dead tracking).</summary>
    public long[] TokensSinceFired { get; }
    public SplitMix64 SplitMix64 { get; }
    /// <summary>Number of completed updates.</summary>
    public long StepCount { get; set; }

    // Gradients, same layout as the parameters: gWEnc [M,F,D], gBEnc [F], gWDec [M,F,D], gBDec [M,D]; gJump [F].
    public float[] GWEnc { get; }
    public float[] GBEnc { get; }
    public float[] GWDec { get; }
    public float[] GBDec { get; }
    public float[]? GJump { get; }

    // The last step's codes (training mode) — tests read them.
    public SparseCodes Codes { get; }
    public SparseCodes AuxCodes { get; }
    /// <summary>DECOUPLED BatchTopK: each model's code [B, F] (then <see cref="Codes"/> is their union, which the encoder
    /// gradient, dead tracking and the reported code use); empty otherwise.</summary>
    public SparseCodes[] ModelCodes { get; }

    /// <summary>Seconds spent per phase since construction (benchmarks print the breakdown).</summary>
    public Dictionary<string, double> PhaseSeconds { get; } = new();
    readonly System.Diagnostics.Stopwatch _clock = System.Diagnostics.Stopwatch.StartNew();
    double _mark;
    void Phase(string name)
    {
        double now = _clock.Elapsed.TotalSeconds;
        PhaseSeconds[name] = PhaseSeconds.GetValueOrDefault(name) + (now - _mark);
        _mark = now;
    }

    readonly int M, D, F;
    float[] _x = [], _xin = [], _pre = [], _f = [], _xhat = [], _delta = [], _xaux = [], _deltaAux = [], _c = [];
    float[] _gVal = [], _gValAux = [], _dense1 = [], _dense2 = [], _dense3 = [], _preRaw = [];

    public DictionaryTrainer(SparseDictionary dict, TrainerOptions options, ulong seed = 0)
    {
        Dict = dict; Options = options;
        M = dict.Models; D = dict.DModel; F = dict.DictSize;
        var sizes = new List<int> { dict.WEnc.Length, dict.BEnc.Length, dict.WDec.Length, dict.BDec.Length };
        if (dict.Sparsity == Sparsity.JumpRelu) sizes.Add(F);
        Optimizer = new Adam(sizes);
        TokensSinceFired = new long[F];
        SplitMix64 = new SplitMix64(seed);
        GWEnc = Tensors.Tensor.Allocate(dict.WEnc.Length);
        GBEnc = new float[F];
        GWDec = Tensors.Tensor.Allocate(dict.WDec.Length);
        GBDec = new float[M * D];
        if (dict.Sparsity == Sparsity.JumpRelu) GJump = new float[F];
        Codes = new SparseCodes(0, F);
        AuxCodes = new SparseCodes(0, F);
        ModelCodes = dict.PerModelCodes ? Enumerable.Range(0, M).Select(_ => new SparseCodes(0, F)).ToArray() : [];
        if (options.Variant is { IsPlain: false } v)
        {
            v.Validate(M, F, dict.IsSae, options.Loss);
            if (v.Designated > 0 && v.DesignatedPenalty != 1f && dict.Sparsity is not (Sparsity.Relu or Sparsity.JumpRelu))
                throw new CrosscoderVariantException(nameof(CrosscoderVariant.DesignatedPenalty),
                    $"{v.DesignatedPenalty}: the penalty multiplier scales a sparsity penalty, and a {dict.Sparsity} crosscoder has none (train with an L1 penalty, or leave the multiplier at 1)");
            Variant = v;
            _penaltyWeight = v.PenaltyWeights(F);
        }
    }

    /// <summary>The research variant in force (null: plain crosscoder).</summary>
    public CrosscoderVariant? Variant { get; }
    readonly float[]? _penaltyWeight;

    // Diff-aware loss (methods.md §16), two models, mse: adds (2λ/B) Σ_b ⟨e_0, e_1⟩ to the loss and λ times the other
    // model's δ = −2e/B to each model's δ (∂/∂x̂_0 of 2λ⟨e_0, e_1⟩/B is −2λ e_1/B). Returns the added loss.
    // xBMD, xHatBMD, δBMD: [B, 2, D] (δ updated in place)
    double DiffAwareCrossTerm(ReadOnlySpan<float> xBMD, ReadOnlySpan<float> xHatBMD, Span<float> deltaBMD, int B, double lambda)
    {
        double cross = 0;
        float l = (float)lambda;
        for (int t = 0; t < B; t++)
        {
            int o0 = t * 2 * D, o1 = o0 + D;
            double s = 0;
            for (int i = 0; i < D; i++)
            {
                s += (double)(xBMD[o0 + i] - xHatBMD[o0 + i]) * (xBMD[o1 + i] - xHatBMD[o1 + i]);
                float d0 = deltaBMD[o0 + i], d1 = deltaBMD[o1 + i];
                deltaBMD[o0 + i] = d0 + l * d1;
                deltaBMD[o1 + i] = d1 + l * d0;
            }
            cross += s;
        }
        return 2 * lambda * cross / B;
    }

    public IReadOnlyList<float[]> Parameters => Dict.Sparsity == Sparsity.JumpRelu
        ? [Dict.WEnc, Dict.BEnc, Dict.WDec, Dict.BDec, Dict.JumpThreshold!] : [Dict.WEnc, Dict.BEnc, Dict.WDec, Dict.BDec];
    public IReadOnlyList<float[]> Gradients => GJump is not null ? [GWEnc, GBEnc, GWDec, GBDec, GJump] : [GWEnc, GBEnc, GWDec, GBDec];

    public double CurrentLr => Options.Lr * LrSchedule.Factor(StepCount, Options.WarmupSteps, Options.DecayStart, Options.TotalSteps);

    /// <summary>A full update on a raw batch xBMD [B, M, D]; returns the step's statistics.</summary>
    public StepStats Step(ReadOnlySpan<float> xBMD)
    {
        var stats = ForwardBackward(xBMD, StepCount, updateState: true);
        if (!float.IsFinite(stats.Total))
            throw new TrainingDivergedException(StepCount, stats.Total);
        _mark = _clock.Elapsed.TotalSeconds;
        float norm = PostProcessGradients();
        Phase("clip");
        double lr = CurrentLr;
        OptimizerStep(lr);
        Phase("adam");
        return stats with { GradNorm = norm, Lr = lr };
    }

    static void Ensure(ref float[] a, long n) { if (a.Length < n) a = Tensors.Tensor.Allocate(n, zeroed: false); }

    /// <summary>Current k (annealed when KMax is set).</summary>
    public int CurrentK(long step)
    {
        if (Options.KMax is int kmax && step < Options.KAnnealSteps)
            return Math.Max(1, (int)Math.Round(kmax - (kmax - Dict.K) * (double)step / Options.KAnnealSteps, MidpointRounding.ToEven));
        return Dict.K;
    }

    /// <summary>Loss and raw gradients for one batch. <paramref name="updateState"/>: dead counters, threshold EMA and
    /// the step-0 geometric-median init happen (as in a real update).</summary>
    public StepStats ForwardBackward(ReadOnlySpan<float> xBMD, long step, bool updateState = true)
    {
        _mark = _clock.Elapsed.TotalSeconds;
        int rowLen = M * D;
        if (xBMD.Length % rowLen != 0) throw new ArgumentException($"batch length {xBMD.Length} is not a multiple of models·d_model = {rowLen}");
        int B = xBMD.Length / rowLen;
        Ensure(ref _x, (long)B * rowLen); Ensure(ref _xin, (long)B * rowLen); Ensure(ref _xhat, (long)B * rowLen);
        Ensure(ref _delta, (long)B * rowLen); Ensure(ref _pre, (long)B * F);
        var x = _x.AsSpan(0, B * rowLen);
        xBMD.CopyTo(x);
        Dict.Normalizer?.Normalize(x, M, D);

        if (step == 0 && updateState && Options.GeometricMedianInit && Dict.Sparsity is Sparsity.BatchTopK or Sparsity.TopK)
            GeometricMedian.Compute(x, B, M, D, Dict.BDec);

        // encoder input: SAE subtracts b_dec
        var xin = _xin.AsSpan(0, B * rowLen);
        if (Dict.SubtractDecoderBias)
            for (int t = 0; t < B; t++) TensorPrimitives.Subtract(x.Slice(t * rowLen, rowLen), Dict.BDec, xin.Slice(t * rowLen, rowLen));
        else x.CopyTo(xin);

        var pre = _pre.AsSpan(0, B * F);
        DictionaryKernels.EncoderForward(xin, Dict.WEnc, Dict.BEnc, B, M, D, F, pre);
        if (Dict.Sparsity == Sparsity.JumpRelu) { Ensure(ref _preRaw, (long)B * F); pre.CopyTo(_preRaw); }
        DictionaryKernels.Relu(pre);   // pre now holds post-ReLU f
        Phase("encode (GEMM)");

        Ensure(ref _c, F);
        var c = _c.AsSpan(0, F);
        bool perModel = Dict.PerModelCodes;
        float[] nMF = perModel ? Dict.DecoderNorms() : [];
        if (perModel)   // c_j = Σ_m n_j^m (AuxK ranking, reported code), from the per-model norms already computed
            for (int j = 0; j < F; j++) { double s = 0; for (int m = 0; m < M; m++) s += nMF[m * F + j]; c[j] = (float)s; }
        else Dict.CodeNorm(c);
        bool ranked = Dict.CodeNormalization != CodeNormalization.None;

        int k = CurrentK(step);
        float minKept = 0;
        float[] minKeptM = [];
        switch (Dict.Sparsity)
        {
            // DECOUPLED (crosscoder_learning encode_decoupled): s_m = f ⊙ n^m per model, batch top-k·B of each s_m
            // separately; model m's decoder sees f only where model m selected it; the union is the shared support.
            case Sparsity.BatchTopK when perModel:
                minKeptM = Selection.BatchTopKPerModel(pre, nMF, B, F, (long)k * B, ModelCodes);
                Selection.Union(ModelCodes, null, Codes, default);
                break;
            case Sparsity.BatchTopK: minKept = Selection.BatchTopK(pre, ranked ? c : default, B, F, (long)k * B, Codes); break;
            case Sparsity.TopK: Selection.TopKPerRow(pre, ranked ? c : default, default, B, F, k, Codes); break;
            case Sparsity.Relu: Codes.Reset(B); break;   // ReLU codes stay dense: f is the post-ReLU matrix itself
            case Sparsity.JumpRelu: Selection.Jump(_preRaw.AsSpan(0, B * F), Dict.JumpThreshold, B, F, Codes); break;
        }
        Phase("select");
        if (updateState && perModel && step > Options.ThresholdStartStep)
        {
            // one EMA per model over that model's smallest selected s_m (update_decoupled_threshold)
            var th = Dict.ModelThreshold!;
            for (int m = 0; m < M; m++)
                th[m] = th[m] < 0 ? minKeptM[m] : Options.ThresholdBeta * th[m] + (1 - Options.ThresholdBeta) * minKeptM[m];
        }
        else if (updateState && Dict.Sparsity == Sparsity.BatchTopK && step > Options.ThresholdStartStep)
            Dict.Threshold = Dict.Threshold < 0 ? minKept : Options.ThresholdBeta * Dict.Threshold + (1 - Options.ThresholdBeta) * minKept;

        bool relu = Dict.Sparsity == Sparsity.Relu;
        bool dense = Options.Dense || Dict.Sparsity is Sparsity.JumpRelu;
        var xhat = _xhat.AsSpan(0, B * rowLen);
        if (relu) DictionaryKernels.DecodeDense(pre, Dict.WDec, Dict.BDec, B, M, D, F, xhat);
        else if (perModel && dense)
        {
            Ensure(ref _dense1, (long)B * F);
            for (int m = 0; m < M; m++)
            {
                ModelCodes[m].ToDense(_dense1);
                DictionaryKernels.DecodeDense(_dense1.AsSpan(0, B * F), Dict.WDec, Dict.BDec, B, M, D, F, xhat, model: m);
            }
        }
        else if (perModel) DictionaryKernels.DecodeSparse(ModelCodes, Dict.WDec, Dict.BDec, M, D, F, xhat);
        else if (dense)
        {
            Ensure(ref _dense1, (long)B * F);
            Codes.ToDense(_dense1);
            DictionaryKernels.DecodeDense(_dense1.AsSpan(0, B * F), Dict.WDec, Dict.BDec, B, M, D, F, xhat);
        }
        else DictionaryKernels.DecodeSparse(Codes, Dict.WDec, Dict.BDec, M, D, F, xhat);
        Phase("decode");

        // reconstruction loss and δ = ∂L/∂x̂
        var delta = _delta.AsSpan(0, B * rowLen);
        double recon = 0, sqSum = 0;
        double[] fve = new double[M];
        {
            var errM = new double[M]; var meanM = new double[M * D]; var sq = new double[M];
            for (int t = 0; t < B; t++)
                for (int m = 0; m < M; m++)
                {
                    int o = (t * M + m) * D;
                    double s = 0;
                    for (int i = 0; i < D; i++) { double e = x[o + i] - xhat[o + i]; s += e * e; meanM[m * D + i] += x[o + i]; sq[m] += (double)x[o + i] * x[o + i]; }
                    errM[m] += s; sqSum += s;
                    double norm = Math.Sqrt(s);
                    double scale = Options.Loss switch
                    {
                        ReconLoss.L2 => norm > 0 ? 1.0 / (norm * B * M) : 0,
                        ReconLoss.MseMeanModels => 2.0 / (B * M),
                        _ => 2.0 / B,
                    };
                    recon += Options.Loss == ReconLoss.L2 ? norm : s;
                    float fs = (float)scale;
                    for (int i = 0; i < D; i++) delta[o + i] = -(x[o + i] - xhat[o + i]) * fs;
                }
            recon /= Options.Loss == ReconLoss.Mse ? B : (double)B * M;
            if (Variant is { DiffLambda: not 0 } dv) recon += DiffAwareCrossTerm(x, xhat, delta, B, dv.DiffLambda);
            for (int m = 0; m < M; m++)
            {
                double mm = 0;
                for (int i = 0; i < D; i++) { double avg = meanM[m * D + i] / B; mm += avg * avg; }
                double var = sq[m] / B - mm;
                fve[m] = var > 0 ? 1 - errM[m] / B / var : double.NaN;
            }
        }

        // dead tracking (every kind, Firing's rule): counters advance by B tokens, latents that fired reset
        int deadCount = 0;
        bool topkFamily = Dict.Sparsity is Sparsity.BatchTopK or Sparsity.TopK;
        if (updateState)
        {
            for (int j = 0; j < F; j++) TokensSinceFired[j] += B;
            if (Dict.Sparsity == Sparsity.Relu) ResetFiredRelu(pre, c, B);
            else for (int e = 0; e < Codes.Count; e++) if (Firing.Fires(Codes.Value[e], null, Codes.Index[e])) TokensSinceFired[Codes.Index[e]] = 0;
        }
        var deadMask = new bool[F];
        for (int j = 0; j < F; j++) if (TokensSinceFired[j] >= Options.DeadTokens) { deadMask[j] = true; deadCount++; }

        // AuxK
        double auxk = 0, auxPre = -1;
        bool haveAux = false;
        Ensure(ref _deltaAux, (long)B * rowLen);
        var deltaAux = _deltaAux.AsSpan(0, B * rowLen);
        if (topkFamily && deadCount > 0 && Options.AuxKAlpha != 0)
        {
            int kAux = Math.Min(Options.TopKAux ?? D / 2, deadCount);
            Selection.TopKPerRow(pre, ranked ? c : default, deadMask, B, F, kAux, AuxCodes);
            Ensure(ref _xaux, (long)B * rowLen);
            var xaux = _xaux.AsSpan(0, B * rowLen);
            DictionaryKernels.DecodeSparse(AuxCodes, Dict.WDec, default, M, D, F, xaux);
            var rMean = new double[rowLen];
            for (int t = 0; t < B; t++) for (int i = 0; i < rowLen; i++) rMean[i] += x[t * rowLen + i] - xhat[t * rowLen + i];
            for (int i = 0; i < rowLen; i++) rMean[i] = (float)(rMean[i] / B);
            double num = 0, den = 0;
            for (int t = 0; t < B; t++)
                for (int i = 0; i < rowLen; i++)
                {
                    float r = x[t * rowLen + i] - xhat[t * rowLen + i];
                    double a = r - xaux[t * rowLen + i]; num += a * a;
                    double bb = r - rMean[i]; den += bb * bb;
                }
            num /= B; den /= B;
            auxPre = num;
            double ratio = num / den;
            auxk = double.IsFinite(ratio) ? ratio : 0;
            haveAux = double.IsFinite(ratio) && den > 0;
            float g = haveAux ? (float)(-2.0 * Options.AuxKAlpha / (B * den)) : 0f;
            for (int t = 0; t < B; t++)
                for (int i = 0; i < rowLen; i++)
                    deltaAux[t * rowLen + i] = g * ((x[t * rowLen + i] - xhat[t * rowLen + i]) - xaux[t * rowLen + i]);
        }
        else AuxCodes.Reset(B);

        // sparsity term (ReLU dictionaries)
        double mu = Options.SparsityCoef * (Options.SparsityWarmupSteps > 0 ? Math.Min(1.0, (double)step / Options.SparsityWarmupSteps) : 1.0);
        double sparsity = 0;
        var gc = new float[F];   // ∂L/∂c_j
        double l0Relu = 0;
        if (relu)
        {
            // column sums of f (L1) or √f (sqrt-L1): S = Σ_j c_j·Σ_b f / B, or Σ_j √c_j·Σ_b √f / B
            var colSum = new float[F];
            if (Options.Penalty == SparsityPenalty.L1) DictionaryKernels.ColumnSums(pre, B, F, colSum);
            else
            {
                var sq = Tensors.Tensor.Allocate((long)B * F, zeroed: false);
                TensorPrimitives.Sqrt(pre, sq);
                DictionaryKernels.ColumnSums(sq, B, F, colSum);
            }
            for (int j = 0; j < F; j++)
            {
                if (Options.Penalty == SparsityPenalty.L1) { sparsity += (double)colSum[j] * c[j]; gc[j] = (float)(mu * colSum[j] / B); }
                else { double rc = Math.Sqrt(c[j]); sparsity += rc * colSum[j]; gc[j] = rc > 0 ? (float)(mu * colSum[j] / (2 * rc) / B) : 0; }
            }
            if (_penaltyWeight is not null)   // designated shared latents: their penalty term × the multiplier (recomputed)
            {
                sparsity = 0;
                for (int j = 0; j < F; j++)
                {
                    double term = Options.Penalty == SparsityPenalty.L1 ? (double)colSum[j] * c[j] : Math.Sqrt(c[j]) * colSum[j];
                    sparsity += _penaltyWeight[j] * term;
                    gc[j] *= _penaltyWeight[j];
                }
            }
            sparsity /= B;
            l0Relu = (double)DictionaryKernels.CountPositive(pre) / B;
        }
        else if (Dict.Sparsity == Sparsity.JumpRelu)
        {
            for (int e = 0; e < Codes.Count; e++) if (Codes.Value[e] != 0) sparsity += 1;
            sparsity /= B;
        }

        Phase("loss, auxk");
        // ---------------- backward
        Ensure(ref _gVal, Codes.Count);
        var gVal = _gVal.AsSpan(0, Codes.Count);
        int auxN = AuxCodes.Count;
        Ensure(ref _gValAux, Math.Max(auxN, 1));
        var gValAux = _gValAux.AsSpan(0, auxN);
        if (relu)
        {
            Ensure(ref _dense2, (long)B * F);
            var gPre = _dense2.AsSpan(0, B * F);
            DictionaryKernels.CodeGradDense(delta, Dict.WDec, B, M, D, F, gPre);
            ReluPenaltyGrad(pre, c, B, mu, gPre);
        }
        else if (perModel)
        {
            // ∂L/∂f[b, j] = Σ_m [j selected for m in b] · WDec[m, j, :] · δ[b, m, :]
            var gM = new float[M][];
            for (int m = 0; m < M; m++)
            {
                gM[m] = new float[Math.Max(ModelCodes[m].Count, 1)];
                if (dense)
                {
                    Ensure(ref _dense2, (long)B * F);
                    DictionaryKernels.CodeGradDense(delta, Dict.WDec, B, M, D, F, _dense2.AsSpan(0, B * F), model: m);
                    GatherEntries(ModelCodes[m], _dense2.AsSpan(0, B * F), F, gM[m]);
                }
                else DictionaryKernels.CodeGradSparse(ModelCodes[m], Dict.WDec, delta, M, D, F, gM[m], model: m);
            }
            Selection.Union(ModelCodes, gM, Codes, gVal);
            if (haveAux)
            {
                if (dense)
                {
                    DictionaryKernels.CodeGradDense(deltaAux, Dict.WDec, B, M, D, F, _dense2.AsSpan(0, B * F));
                    GatherEntries(AuxCodes, _dense2.AsSpan(0, B * F), F, gValAux);
                }
                else DictionaryKernels.CodeGradSparse(AuxCodes, Dict.WDec, deltaAux, M, D, F, gValAux);
            }
        }
        else if (dense)
        {
            Ensure(ref _dense2, (long)B * F);
            var gF = _dense2.AsSpan(0, B * F);
            DictionaryKernels.CodeGradDense(delta, Dict.WDec, B, M, D, F, gF);
            GatherEntries(Codes, gF, F, gVal);
            if (haveAux)
            {
                DictionaryKernels.CodeGradDense(deltaAux, Dict.WDec, B, M, D, F, gF);
                GatherEntries(AuxCodes, gF, F, gValAux);
            }
        }
        else
        {
            DictionaryKernels.CodeGradSparse(Codes, Dict.WDec, delta, M, D, F, gVal);
            if (haveAux) DictionaryKernels.CodeGradSparse(AuxCodes, Dict.WDec, deltaAux, M, D, F, gValAux);
        }
        // through the sparsity penalty and the activation: ∂L/∂pre at stored entries
        for (int e = 0; e < Codes.Count; e++)
        {
            float v = Codes.Value[e];
            if (!(v > 0) && Dict.Sparsity != Sparsity.JumpRelu) gVal[e] = 0;
        }
        for (int e = 0; e < auxN; e++) if (!(AuxCodes.Value[e] > 0)) gValAux[e] = 0;
        if (!haveAux) AuxCodes.Reset(B);

        Phase("code grad");
        Codes.BuildColumns();
        if (haveAux) AuxCodes.BuildColumns();
        var aux = haveAux ? AuxCodes : null;
        if (relu)
        {
            DictionaryKernels.DecoderGradDense(pre, delta, B, M, D, F, GWDec);
            DictionaryKernels.EncoderGradDense(_dense2.AsSpan(0, B * F), xin, B, M, D, F, GWEnc, GBEnc);
        }
        else if (dense)
        {
            var fBF = _dense1.AsSpan(0, B * F);
            if (perModel)
                for (int m = 0; m < M; m++)
                {
                    ModelCodes[m].ToDense(fBF);
                    DictionaryKernels.DecoderGradDense(fBF, delta, B, M, D, F, GWDec, model: m);
                }
            else DictionaryKernels.DecoderGradDense(fBF, delta, B, M, D, F, GWDec);
            if (haveAux)
            {
                Ensure(ref _dense3, (long)B * F);
                AuxCodes.ToDense(_dense3);
                DictionaryKernels.DecoderGradDense(_dense3.AsSpan(0, B * F), deltaAux, B, M, D, F, GWDec, accumulate: true);
            }
            var gPre = _dense2.AsSpan(0, B * F);
            gPre.Clear();
            for (int bi = 0; bi < B; bi++)
                for (int e = Codes.RowStart[bi]; e < Codes.RowStart[bi + 1]; e++) gPre[bi * F + Codes.Index[e]] += gVal[e];
            if (haveAux)
                for (int bi = 0; bi < B; bi++)
                    for (int e = AuxCodes.RowStart[bi]; e < AuxCodes.RowStart[bi + 1]; e++) gPre[bi * F + AuxCodes.Index[e]] += gValAux[e];
            DictionaryKernels.EncoderGradDense(gPre, xin, B, M, D, F, GWEnc, GBEnc);
        }
        else if (perModel)
        {
            foreach (var mc in ModelCodes) mc.BuildColumns();
            DictionaryKernels.DecoderGradSparse(ModelCodes, delta, aux, deltaAux, M, D, F, GWDec);
            DictionaryKernels.EncoderGradSparse(Codes, gVal, aux, gValAux, xin, M, D, F, GWEnc, GBEnc);
        }
        else
        {
            DictionaryKernels.DecoderGradSparse(Codes, delta, aux, deltaAux, M, D, F, GWDec);
            DictionaryKernels.EncoderGradSparse(Codes, gVal, aux, gValAux, xin, M, D, F, GWEnc, GBEnc);
        }
        Phase("weight grads");
        if (Dict.Sparsity == Sparsity.Relu && mu != 0)
            CodeNorms.Backward(Dict.WDec, gc, M, F, D, Dict.CodeNormalization, Dict.AlphaSae, Dict.AlphaCc, GWDec);
        if (Dict.Sparsity == Sparsity.JumpRelu) JumpThresholdGrad(B, mu);

        // decoder bias: Σ_b δ (+ through the SAE's input centring: −Σ_j gBEnc[j]·WEnc[j])
        var gbd = new double[rowLen];
        for (int t = 0; t < B; t++) for (int i = 0; i < rowLen; i++) gbd[i] += delta[t * rowLen + i];
        for (int i = 0; i < rowLen; i++) GBDec[i] = (float)gbd[i];
        if (Dict.SubtractDecoderBias)
            for (int m = 0; m < M; m++)
                for (int j = 0; j < F; j++)
                {
                    float g = GBEnc[j];
                    if (g == 0) continue;
                    TensorPrimitives.MultiplyAdd(Dict.WEnc.AsSpan((m * F + j) * D, D), -g, GBDec.AsSpan(m * D, D), GBDec.AsSpan(m * D, D));
                }

        Variant?.ProjectGradients(GWEnc, GWDec, M, F, D);
        Phase("bias grads");
        double l0 = 0;
        for (int e = 0; e < Codes.Count; e++) if (Codes.Value[e] != 0) l0++;
        l0 = relu ? l0Relu : l0 / B;
        double totalPrecise = recon + Options.AuxKAlpha * auxk + mu * sparsity;
        float total = (float)totalPrecise;
        return new StepStats
        {
            Step = step, Total = total, TotalPrecise = totalPrecise, Recon = (float)recon, Mse = (float)(sqSum / ((double)B * M)), Sparsity = (float)sparsity,
            AuxK = (float)auxk, AuxKPreNorm = (float)auxPre, L0 = l0, Dead = deadCount, DeadFraction = (double)deadCount / F,
            Fve = fve, K = k, Threshold = perModel ? Dict.ModelThreshold!.Min() : Dict.Threshold,
            L0PerModel = perModel ? ModelCodes.Select(mc => (double)mc.Count / B).ToArray() : [],
            ModelThreshold = perModel ? (float[])Dict.ModelThreshold!.Clone() : [],
        };
    }

    // ReLU dictionaries: latent j fired in the batch when f[b, j]·c_j > 1e-4 for some token b (Firing's rule).
    // fBF: [B, F], cF: [F]
    void ResetFiredRelu(ReadOnlySpan<float> fBF, ReadOnlySpan<float> cF, int B)
    {
        var colMax = new float[F];
        for (int b = 0; b < B; b++)
        {
            var row = fBF.Slice(b * F, F);
            for (int j = 0; j < F; j++) if (row[j] > colMax[j]) colMax[j] = row[j];
        }
        for (int j = 0; j < F; j++) if (colMax[j] * cF[j] > Firing.ReluMinReported) TokensSinceFired[j] = 0;
    }

    // gPre ← (f > 0) · (∂L/∂f + ∂(μS)/∂f), row-parallel.
    // fBF, cF; gBF: [B, F] in place
    unsafe void ReluPenaltyGrad(ReadOnlySpan<float> fBF, ReadOnlySpan<float> cF, int B, double mu, Span<float> gBF)
    {
        int f = F;
        bool l1 = Options.Penalty == SparsityPenalty.L1;
        var add = new float[f];
        for (int j = 0; j < f; j++) add[j] = l1 ? (float)(mu * cF[j] / B) : (float)(mu / B * Math.Sqrt(cF[j]) / 2);
        if (_penaltyWeight is not null) for (int j = 0; j < f; j++) add[j] *= _penaltyWeight[j];
        fixed (float* fp = fBF, gp = gBF)
        {
            float* FP = fp, GP = gp;
            Parallel.For(0, B, DictionaryKernels.Opts((long)B * f), t =>
            {
                float* fr = FP + (long)t * f, gr = GP + (long)t * f;
                for (int j = 0; j < f; j++)
                {
                    float v = fr[j];
                    gr[j] = v > 0 ? gr[j] + (l1 ? add[j] : add[j] / MathF.Sqrt(v)) : 0f;
                }
            });
        }
    }

    static void GatherEntries(SparseCodes codes, ReadOnlySpan<float> gBF, int f, Span<float> gVal)
    {
        for (int bi = 0; bi < codes.Rows; bi++)
            for (int e = codes.RowStart[bi]; e < codes.RowStart[bi + 1]; e++) gVal[e] = gBF[bi * f + codes.Index[e]];
    }

    // JumpReLU threshold gradient with the rectangle-kernel straight-through estimator (Rajamanoharan et al. 2024):
    // ∂f/∂θ_j = −(θ_j/ε)·K((pre − θ_j)/ε), ∂H/∂θ_j = −(1/ε)·K(...), K = 1 on (−½, ½).
    void JumpThresholdGrad(int B, double mu)
    {
        var gF = _dense2.AsSpan(0, B * F);   // ∂L/∂f at every entry, including inactive ones near θ
        DictionaryKernels.CodeGradDense(_delta.AsSpan(0, B * M * D), Dict.WDec, B, M, D, F, gF);
        var pre = _preRaw.AsSpan(0, B * F);
        var th = Dict.JumpThreshold!;
        float eps = Options.JumpBandwidth;
        Array.Clear(GJump!);
        for (int bi = 0; bi < B; bi++)
            for (int j = 0; j < F; j++)
            {
                float u = (pre[bi * F + j] - th[j]) / eps;
                if (u <= -0.5f || u >= 0.5f) continue;
                GJump![j] += -(th[j] / eps) * gF[bi * F + j] - (float)(mu / B) / eps;
            }
    }

    /// <summary>Decoder-gradient projection (unit-norm recipe) and global clipping; returns the pre-clip norm.</summary>
    public float PostProcessGradients()
    {
        if (Options.UnitNormDecoder) ProjectDecoderGradients();
        return ClipGradients();
    }

    /// <summary>torch.nn.utils.clip_grad_norm_: total = ‖(‖g_p‖)_p‖, coefficient min(1, max/(total + 1e-6)) applied
    /// always (when clipping is on). Returns the pre-clip norm.</summary>
    public float ClipGradients()
    {
        double total = 0;
        foreach (var g in Gradients)
        {
            float n = (float)Math.Sqrt(SumOfSquares(g));
            total += (double)n * n;
        }
        float norm = (float)Math.Sqrt(total);
        if (Options.ClipNorm is float max)
        {
            float coef = max / (norm + 1e-6f);
            if (coef < 1f)   // × 1 is the identity: skip the pass
                foreach (var g in Gradients)
                {
                    var gg = g;
                    int nc = DictionaryKernels.Chunks(gg.Length, 1 << 15);
                    Parallel.For(0, nc, DictionaryKernels.Opts(gg.Length), c =>
                    {
                        int lo = (int)((long)gg.Length * c / nc), hi = (int)((long)gg.Length * (c + 1) / nc);
                        TensorPrimitives.Multiply(gg.AsSpan(lo, hi - lo), coef, gg.AsSpan(lo, hi - lo));
                    });
                }
        }
        return norm;
    }

    // Σ g² in double over a fixed number of chunks (independent of the thread count), combined in chunk order.
    static double SumOfSquares(float[] g)
    {
        int nc = DictionaryKernels.Chunks(g.Length, 1 << 15);
        var part = new double[nc];
        Parallel.For(0, nc, DictionaryKernels.Opts(g.Length), c =>
        {
            int lo = (int)((long)g.Length * c / nc), hi = (int)((long)g.Length * (c + 1) / nc);
            double s = 0;
            for (int i = lo; i < hi; i++) s += (double)g[i] * g[i];
            part[c] = s;
        });
        double t = 0;
        foreach (var p in part) t += p;
        return t;
    }

    /// <summary>g_j ← g_j − (g_j · ŵ_j) ŵ_j with ŵ = w/(‖w‖ + 1e-6), per decoder row.</summary>
    public void ProjectDecoderGradients()
    {
        for (int r = 0; r < M * F; r++)
        {
            var w = Dict.WDec.AsSpan(r * D, D); var g = GWDec.AsSpan(r * D, D);
            float n = CodeNorms.Norm(w) + 1e-6f;
            double dot = 0;
            for (int i = 0; i < D; i++) dot += (double)g[i] * (w[i] / n);
            float fd = (float)dot;
            for (int i = 0; i < D; i++) g[i] -= fd * (w[i] / n);
        }
    }

    public void OptimizerStep(double lr)
    {
        Optimizer.Update(Parameters, Gradients, lr);
        StepCount++;
        if (Options.UnitNormDecoder) NormalizeDecoderRows(Dict);
    }

    /// <summary>Each decoder row divided by (‖row‖ + float32 eps).</summary>
    public static void NormalizeDecoderRows(SparseDictionary dict)
    {
        int d = dict.DModel;
        for (int r = 0; r < dict.Models * dict.DictSize; r++)
        {
            var w = dict.WDec.AsSpan(r * d, d);
            float n = CodeNorms.Norm(w) + 1.1920929e-7f;   // torch.finfo(float32).eps
            TensorPrimitives.Divide(w, n, w);
        }
    }
}

/// <summary>The loss became NaN or ±Inf at <see cref="Step"/>; the parameters were not updated with it. A training
/// run adds where its last good checkpoint is (<see cref="CheckpointStep"/>, <see cref="CheckpointDir"/>; null when none
/// was written). Callers suggest remedies in their own terms (learning rate, warm-up, clipping, normalisation, token filter).</summary>
public sealed class TrainingDivergedException(long step, float loss, long? checkpointStep = null, string? checkpointDir = null)
    : Exception($"training diverged: the loss is {loss} at step {step}" +
                (checkpointStep is long c ? $"; the last good checkpoint (step {c}) is kept in {checkpointDir}" : "; no checkpoint was written yet"))
{
    public long Step { get; } = step;
    public float Loss { get; } = loss;
    public long? CheckpointStep { get; } = checkpointStep;
    public string? CheckpointDir { get; } = checkpointDir;
}

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
/// Each sparsity family has its own forward/backward (TrainerSteps.cs: TopK/BatchTopK, DECOUPLED BatchTopK, ReLU,
/// JumpReLU), composed from shared phases (TrainerPhases.cs: encode, decode, loss, dead tracking, AuxK, gradients).
/// </summary>
public sealed partial class DictionaryTrainer
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
    /// the step-0 geometric-median init happen (as in a real update). Each sparsity family has its own step
    /// (TrainerSteps.cs), composed from the shared phases in TrainerPhases.cs.</summary>
    public StepStats ForwardBackward(ReadOnlySpan<float> xBMD, long step, bool updateState = true)
    {
        _mark = _clock.Elapsed.TotalSeconds;
        var stats = Dict.Sparsity switch
        {
            Sparsity.BatchTopK when Dict.PerModelCodes => DecoupledStep(xBMD, step, updateState),
            Sparsity.BatchTopK or Sparsity.TopK => TopKStep(xBMD, step, updateState),
            Sparsity.Relu => ReluStep(xBMD, step, updateState),
            Sparsity.JumpRelu => JumpReluStep(xBMD, step, updateState),
            var s => throw new NotSupportedException($"no training step for sparsity {s}"),
        };
        Variant?.ProjectGradients(GWEnc, GWDec, M, F, D);   // crosscoder variants: masked rows get no gradient, tied rows share one
        return stats;
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

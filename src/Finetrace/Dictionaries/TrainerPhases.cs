using Finetrace.Tensors;
using System.Numerics.Tensors;

namespace Finetrace.Dictionaries;

// The phases every training step is composed of (TrainerSteps.cs puts them together per sparsity family). They work
// on the trainer's buffers, sized for the batch of B tokens by LoadAndEncode: x and xin [B, M, D], pre [B, F]
// (pre-activations, then post-ReLU f), x̂, δ, δ_aux [B, M, D].
public sealed partial class DictionaryTrainer
{
    Span<float> X(int B) => _x.AsSpan(0, B * M * D);
    Span<float> Xin(int B) => _xin.AsSpan(0, B * M * D);
    Span<float> Pre(int B) => _pre.AsSpan(0, B * F);
    Span<float> Xhat(int B) => _xhat.AsSpan(0, B * M * D);
    Span<float> Delta(int B) => _delta.AsSpan(0, B * M * D);
    Span<float> DeltaAux(int B) => _deltaAux.AsSpan(0, B * M * D);
    /// <summary>The codes of the last <see cref="Decode"/> as a dense [B, F] matrix (dense path only).</summary>
    Span<float> CodesDense(int B) => _dense1.AsSpan(0, B * F);

    /// <summary>Reconstruction term: its value, Σ‖e‖² over the batch, and the FVE per model.</summary>
    readonly record struct ReconTerm(double Loss, double SquaredErrorSum, double[] Fve);

    /// <summary>AuxK term: normalised loss, its numerator (pre-normalisation; −1 when not computed), and whether it
    /// contributes gradients this step (some latents dead, α ≠ 0, finite ratio with a non-zero residual variance).</summary>
    readonly record struct AuxTerm(double Loss, double PreNorm, bool Active)
    {
        public static AuxTerm None => new(0, -1, false);
    }

    /// <summary>Copies the raw batch xBMD [B, M, D] and normalises it, sets b_dec to the geometric median on step 0
    /// (when asked), forms the encoder input (the SAE subtracts b_dec) and computes pre = xin·W_encᵀ + b_enc into
    /// <see cref="Pre"/>. Returns B.</summary>
    int LoadAndEncode(ReadOnlySpan<float> xBMD, long step, bool updateState, bool geometricMedianInit)
    {
        int rowLen = M * D;
        if (xBMD.Length % rowLen != 0) throw new ArgumentException($"batch length {xBMD.Length} is not a multiple of models·d_model = {rowLen}");
        int B = xBMD.Length / rowLen;
        Ensure(ref _x, (long)B * rowLen); Ensure(ref _xin, (long)B * rowLen); Ensure(ref _xhat, (long)B * rowLen);
        Ensure(ref _delta, (long)B * rowLen); Ensure(ref _pre, (long)B * F);
        var x = X(B);
        xBMD.CopyTo(x);
        Dict.Normalizer?.Normalize(x, M, D);

        if (step == 0 && updateState && geometricMedianInit)
            GeometricMedian.Compute(x, B, M, D, Dict.BDec);

        var xin = Xin(B);
        if (Dict.SubtractDecoderBias)
            for (int t = 0; t < B; t++) TensorPrimitives.Subtract(x.Slice(t * rowLen, rowLen), Dict.BDec, xin.Slice(t * rowLen, rowLen));
        else x.CopyTo(xin);

        DictionaryKernels.EncoderForward(xin, Dict.WEnc, Dict.BEnc, B, M, D, F, Pre(B));
        return B;
    }

    /// <summary>c_j of every latent (code normalisation of the decoder rows): ranking and Firing's ReLU rule.</summary>
    Span<float> LatentNorms()
    {
        Ensure(ref _c, F);
        var c = _c.AsSpan(0, F);
        Dict.CodeNorm(c);
        return c;
    }

    /// <summary>Threshold EMA step (θ ← minKept on the first update).</summary>
    float ThresholdEma(float threshold, float minKept) =>
        threshold < 0 ? minKept : Options.ThresholdBeta * threshold + (1 - Options.ThresholdBeta) * minKept;

    /// <summary>x̂ = f·W_dec + b_dec from <paramref name="codes"/>; the dense path keeps the codes as a [B, F] matrix
    /// (<see cref="CodesDense"/>) for the decoder gradient.</summary>
    void Decode(SparseCodes codes, int B, bool dense)
    {
        var xhat = Xhat(B);
        if (dense)
        {
            Ensure(ref _dense1, (long)B * F);
            codes.ToDense(_dense1);
            DictionaryKernels.DecodeDense(CodesDense(B), Dict.WDec, Dict.BDec, B, M, D, F, xhat);
        }
        else DictionaryKernels.DecodeSparse(codes, Dict.WDec, Dict.BDec, M, D, F, xhat);
    }

    /// <summary>Reconstruction loss (<see cref="TrainerOptions.Loss"/>), δ = ∂L/∂x̂ into <see cref="Delta"/>, and the
    /// batch FVE per model.</summary>
    ReconTerm ReconstructionLoss(int B)
    {
        var x = X(B); var xhat = Xhat(B); var delta = Delta(B);
        double recon = 0, sqSum = 0;
        double[] fve = new double[M];
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
        if (Variant is { DiffLambda: not 0 } dv) recon += DiffAwareCrossTerm(x, xhat, delta, B, dv.DiffLambda);   // diff-aware crosscoder (methods §16)
        for (int m = 0; m < M; m++)
        {
            double mm = 0;
            for (int i = 0; i < D; i++) { double avg = meanM[m * D + i] / B; mm += avg * avg; }
            double var = sq[m] / B - mm;
            fve[m] = var > 0 ? 1 - errM[m] / B / var : double.NaN;
        }
        return new ReconTerm(recon, sqSum, fve);
    }

    /// <summary>Dead tracking, first half: every latent has gone B more tokens without firing.</summary>
    void AgeLatents(int B)
    {
        for (int j = 0; j < F; j++) TokensSinceFired[j] += B;
    }

    /// <summary>Dead tracking, second half for sparse codes: latents with a stored entry that fires (Firing's rule) reset.</summary>
    void ResetFiredCodes()
    {
        for (int e = 0; e < Codes.Count; e++) if (Firing.Fires(Codes.Value[e], null, Codes.Index[e])) TokensSinceFired[Codes.Index[e]] = 0;
    }

    /// <summary>Latents that have not fired for <see cref="TrainerOptions.DeadTokens"/> tokens.</summary>
    (bool[] Mask, int Count) DeadLatents()
    {
        var deadMask = new bool[F];
        int deadCount = 0;
        for (int j = 0; j < F; j++) if (TokensSinceFired[j] >= Options.DeadTokens) { deadMask[j] = true; deadCount++; }
        return (deadMask, deadCount);
    }

    /// <summary>AuxK (TopK family): the dead latents' top-k_aux codes of f (<see cref="AuxCodes"/>, ranked by
    /// <paramref name="rankCF"/> when not empty) reconstruct the residual e = x − x̂; loss ‖e − ê‖²/‖e − ē‖², and its
    /// δ_aux into <see cref="DeltaAux"/>. With no dead latent (or α = 0) the aux codes are empty.</summary>
    AuxTerm AuxK(int B, ReadOnlySpan<float> fBF, ReadOnlySpan<float> rankCF, bool[] deadMask, int deadCount)
    {
        int rowLen = M * D;
        Ensure(ref _deltaAux, (long)B * rowLen);
        if (!(deadCount > 0 && Options.AuxKAlpha != 0)) { AuxCodes.Reset(B); return AuxTerm.None; }
        var x = X(B); var xhat = Xhat(B); var deltaAux = DeltaAux(B);
        int kAux = Math.Min(Options.TopKAux ?? D / 2, deadCount);
        Selection.TopKPerRow(fBF, rankCF, deadMask, B, F, kAux, AuxCodes);
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
        double ratio = num / den;
        bool active = double.IsFinite(ratio) && den > 0;
        float g = active ? (float)(-2.0 * Options.AuxKAlpha / (B * den)) : 0f;
        for (int t = 0; t < B; t++)
            for (int i = 0; i < rowLen; i++)
                deltaAux[t * rowLen + i] = g * ((x[t * rowLen + i] - xhat[t * rowLen + i]) - xaux[t * rowLen + i]);
        return new AuxTerm(double.IsFinite(ratio) ? ratio : 0, num, active);
    }

    /// <summary>μ at <paramref name="step"/> (linear warm-up from 0 when <see cref="TrainerOptions.SparsityWarmupSteps"/> &gt; 0).</summary>
    double Mu(long step) => Options.SparsityCoef * (Options.SparsityWarmupSteps > 0 ? Math.Min(1.0, (double)step / Options.SparsityWarmupSteps) : 1.0);

    /// <summary>A gradient buffer for <paramref name="n"/> code entries.</summary>
    static Span<float> GradBuffer(ref float[] buffer, int n)
    {
        Ensure(ref buffer, Math.Max(n, 1));
        return buffer.AsSpan(0, n);
    }

    /// <summary>∂L/∂f at the stored entries of <paramref name="codes"/> from δ (decoder rows of <paramref name="model"/>
    /// only when ≥ 0); the dense path computes the full [B, F] product and gathers.</summary>
    void CodeGrad(SparseCodes codes, ReadOnlySpan<float> deltaBMD, int B, bool dense, Span<float> gVal, int model = -1)
    {
        if (dense)
        {
            Ensure(ref _dense2, (long)B * F);
            var gF = _dense2.AsSpan(0, B * F);
            DictionaryKernels.CodeGradDense(deltaBMD, Dict.WDec, B, M, D, F, gF, model: model);
            GatherEntries(codes, gF, F, gVal);
        }
        else DictionaryKernels.CodeGradSparse(codes, Dict.WDec, deltaBMD, M, D, F, gVal, model: model);
    }

    /// <summary>Through the ReLU: stored entries whose value is not &gt; 0 pass no gradient.</summary>
    static void PassActiveOnly(SparseCodes codes, Span<float> gVal)
    {
        for (int e = 0; e < gVal.Length; e++) if (!(codes.Value[e] > 0)) gVal[e] = 0;
    }

    /// <summary>Dense path: the AuxK term's W_dec gradient added to <see cref="GWDec"/>.</summary>
    void AddAuxDecoderGradDense(int B)
    {
        Ensure(ref _dense3, (long)B * F);
        AuxCodes.ToDense(_dense3);
        DictionaryKernels.DecoderGradDense(_dense3.AsSpan(0, B * F), DeltaAux(B), B, M, D, F, GWDec, accumulate: true);
    }

    /// <summary>Dense path: W_enc and b_enc gradients from ∂L/∂pre at the stored entries of <see cref="Codes"/> (and
    /// <see cref="AuxCodes"/> when <paramref name="withAux"/>), scattered into a [B, F] matrix.</summary>
    void EncoderGradDenseFromEntries(int B, ReadOnlySpan<float> gVal, ReadOnlySpan<float> gValAux, bool withAux)
    {
        var gPre = _dense2.AsSpan(0, B * F);
        gPre.Clear();
        for (int bi = 0; bi < B; bi++)
            for (int e = Codes.RowStart[bi]; e < Codes.RowStart[bi + 1]; e++) gPre[bi * F + Codes.Index[e]] += gVal[e];
        if (withAux)
            for (int bi = 0; bi < B; bi++)
                for (int e = AuxCodes.RowStart[bi]; e < AuxCodes.RowStart[bi + 1]; e++) gPre[bi * F + AuxCodes.Index[e]] += gValAux[e];
        DictionaryKernels.EncoderGradDense(gPre, Xin(B), B, M, D, F, GWEnc, GBEnc);
    }

    /// <summary>Sparse path: W_dec, W_enc and b_enc gradients from <see cref="Codes"/> (and the AuxK codes when active).</summary>
    void WeightGradsSparse(int B, ReadOnlySpan<float> gVal, ReadOnlySpan<float> gValAux, bool withAux)
    {
        var aux = withAux ? AuxCodes : null;
        DictionaryKernels.DecoderGradSparse(Codes, Delta(B), aux, DeltaAux(B), M, D, F, GWDec);
        DictionaryKernels.EncoderGradSparse(Codes, gVal, aux, gValAux, Xin(B), M, D, F, GWEnc, GBEnc);
    }

    /// <summary>b_dec gradient: Σ_b δ (+ through the SAE's input centring: −Σ_j gBEnc[j]·WEnc[j]).</summary>
    void DecoderBiasGrad(int B)
    {
        int rowLen = M * D;
        var delta = Delta(B);
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
    }

    /// <summary>Mean stored non-zero code entries per token.</summary>
    double CodesL0(int B)
    {
        double l0 = 0;
        for (int e = 0; e < Codes.Count; e++) if (Codes.Value[e] != 0) l0++;
        return l0 / B;
    }

    /// <summary>The step's statistics; total = recon + α·AuxK + μ·S.</summary>
    StepStats Stats(long step, int B, ReconTerm recon, AuxTerm aux, double mu, double sparsity, double l0, int deadCount, int k, float threshold)
    {
        double totalPrecise = recon.Loss + Options.AuxKAlpha * aux.Loss + mu * sparsity;
        return new StepStats
        {
            Step = step, Total = (float)totalPrecise, TotalPrecise = totalPrecise, Recon = (float)recon.Loss, Mse = (float)(recon.SquaredErrorSum / ((double)B * M)),
            Sparsity = (float)sparsity, AuxK = (float)aux.Loss, AuxKPreNorm = (float)aux.PreNorm, L0 = l0, Dead = deadCount, DeadFraction = (double)deadCount / F,
            Fve = recon.Fve, K = k, Threshold = threshold,
        };
    }

    static void GatherEntries(SparseCodes codes, ReadOnlySpan<float> gBF, int f, Span<float> gVal)
    {
        for (int bi = 0; bi < codes.Rows; bi++)
            for (int e = codes.RowStart[bi]; e < codes.RowStart[bi + 1]; e++) gVal[e] = gBF[bi * f + codes.Index[e]];
    }

    // ---------------- family-specific phases

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

    /// <summary>ReLU sparsity term S = Σ_j c_j·Σ_b f_bj / B (L1) or Σ_j √c_j·Σ_b √f_bj / B (sqrt-L1); fills
    /// gcF = ∂(μS)/∂c for the decoder-norm backward. fBF: [B, F], cF, gcF: [F]</summary>
    double ReluPenalty(ReadOnlySpan<float> fBF, ReadOnlySpan<float> cF, int B, double mu, Span<float> gcF)
    {
        double sparsity = 0;
        var colSum = new float[F];
        if (Options.Penalty == SparsityPenalty.L1) DictionaryKernels.ColumnSums(fBF, B, F, colSum);
        else
        {
            var sq = Tensors.Tensor.Allocate((long)B * F, zeroed: false);
            TensorPrimitives.Sqrt(fBF, sq);
            DictionaryKernels.ColumnSums(sq, B, F, colSum);
        }
        for (int j = 0; j < F; j++)
        {
            if (Options.Penalty == SparsityPenalty.L1) { sparsity += (double)colSum[j] * cF[j]; gcF[j] = (float)(mu * colSum[j] / B); }
            else { double rc = Math.Sqrt(cF[j]); sparsity += rc * colSum[j]; gcF[j] = rc > 0 ? (float)(mu * colSum[j] / (2 * rc) / B) : 0; }
        }
        if (_penaltyWeight is not null)   // designated shared latents: their penalty term × the multiplier (recomputed)
        {
            sparsity = 0;
            for (int j = 0; j < F; j++)
            {
                double term = Options.Penalty == SparsityPenalty.L1 ? (double)colSum[j] * cF[j] : Math.Sqrt(cF[j]) * colSum[j];
                sparsity += _penaltyWeight[j] * term;
                gcF[j] *= _penaltyWeight[j];
            }
        }
        return sparsity / B;
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
}

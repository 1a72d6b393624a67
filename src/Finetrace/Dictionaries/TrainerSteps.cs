namespace Finetrace.Dictionaries;

// One training step per sparsity family, each read top to bottom: encode → select → decode → loss (+ AuxK or the
// sparsity term) → code gradients → weight gradients → bias gradient. The phases they share are in TrainerPhases.cs.
// Phase(...) marks the time spent since the previous mark (PhaseSeconds; `bench train` prints them).
public sealed partial class DictionaryTrainer
{
    /// <summary>BatchTopK / TopK (SAE or crosscoder, one shared code): keep the k·B (BatchTopK) or k per token (TopK)
    /// largest f·c, track the BatchTopK threshold, AuxK on dead latents. Sparse kernels unless
    /// <see cref="TrainerOptions.Dense"/>.</summary>
    StepStats TopKStep(ReadOnlySpan<float> xBMD, long step, bool updateState)
    {
        int B = LoadAndEncode(xBMD, step, updateState, Options.GeometricMedianInit);
        var f = Pre(B);
        DictionaryKernels.Relu(f);
        Phase("encode (GEMM)");

        Span<float> rankC = Dict.CodeNormalization != CodeNormalization.None ? LatentNorms() : default;
        int k = CurrentK(step);
        float minKept = 0;
        if (Dict.Sparsity == Sparsity.BatchTopK) minKept = Selection.BatchTopK(f, rankC, B, F, (long)k * B, Codes);
        else Selection.TopKPerRow(f, rankC, default, B, F, k, Codes);
        Phase("select");
        if (updateState && Dict.Sparsity == Sparsity.BatchTopK && step > Options.ThresholdStartStep)
            Dict.Threshold = ThresholdEma(Dict.Threshold, minKept);

        bool dense = Options.Dense;
        Decode(Codes, B, dense);
        Phase("decode");

        var recon = ReconstructionLoss(B);
        if (updateState) { AgeLatents(B); ResetFiredCodes(); }
        var (deadMask, deadCount) = DeadLatents();
        var aux = AuxK(B, f, rankC, deadMask, deadCount);
        double mu = Mu(step);
        Phase("loss, auxk");

        var gVal = GradBuffer(ref _gVal, Codes.Count);
        var gValAux = GradBuffer(ref _gValAux, AuxCodes.Count);
        CodeGrad(Codes, Delta(B), B, dense, gVal);
        if (aux.Active) CodeGrad(AuxCodes, DeltaAux(B), B, dense, gValAux);
        PassActiveOnly(Codes, gVal);
        PassActiveOnly(AuxCodes, gValAux);
        if (!aux.Active) AuxCodes.Reset(B);
        Phase("code grad");

        Codes.BuildColumns();
        if (aux.Active) AuxCodes.BuildColumns();
        if (dense)
        {
            DictionaryKernels.DecoderGradDense(CodesDense(B), Delta(B), B, M, D, F, GWDec);
            if (aux.Active) AddAuxDecoderGradDense(B);
            EncoderGradDenseFromEntries(B, gVal, gValAux, aux.Active);
        }
        else WeightGradsSparse(B, gVal, gValAux, aux.Active);
        Phase("weight grads");
        DecoderBiasGrad(B);
        Phase("bias grads");
        return Stats(step, B, recon, aux, mu, sparsity: 0, CodesL0(B), deadCount, k, Dict.Threshold);
    }

    /// <summary>DECOUPLED BatchTopK crosscoder (crosscoder_learning encode_decoupled): s_m = f ⊙ n^m per model, a batch
    /// top-k·B of each s_m separately; model m's decoder sees f only where model m selected it; the union of the
    /// per-model codes is the shared support (encoder gradient, dead tracking, AuxK, the reported code). One threshold
    /// EMA per model.</summary>
    StepStats DecoupledStep(ReadOnlySpan<float> xBMD, long step, bool updateState)
    {
        int B = LoadAndEncode(xBMD, step, updateState, Options.GeometricMedianInit);
        var f = Pre(B);
        DictionaryKernels.Relu(f);
        Phase("encode (GEMM)");

        float[] nMF = Dict.DecoderNorms();
        Ensure(ref _c, F);
        var c = _c.AsSpan(0, F);   // c_j = Σ_m n_j^m (AuxK ranking), from the per-model norms already computed
        for (int j = 0; j < F; j++) { double s = 0; for (int m = 0; m < M; m++) s += nMF[m * F + j]; c[j] = (float)s; }
        int k = CurrentK(step);
        float[] minKeptM = Selection.BatchTopKPerModel(f, nMF, B, F, (long)k * B, ModelCodes);
        Selection.Union(ModelCodes, null, Codes, default);
        Phase("select");
        if (updateState && step > Options.ThresholdStartStep)
        {
            // one EMA per model over that model's smallest selected s_m (update_decoupled_threshold)
            var th = Dict.ModelThreshold!;
            for (int m = 0; m < M; m++) th[m] = ThresholdEma(th[m], minKeptM[m]);
        }

        bool dense = Options.Dense;
        if (dense)
        {
            Ensure(ref _dense1, (long)B * F);
            for (int m = 0; m < M; m++)
            {
                ModelCodes[m].ToDense(_dense1);
                DictionaryKernels.DecodeDense(CodesDense(B), Dict.WDec, Dict.BDec, B, M, D, F, Xhat(B), model: m);
            }
        }
        else DictionaryKernels.DecodeSparse(ModelCodes, Dict.WDec, Dict.BDec, M, D, F, Xhat(B));
        Phase("decode");

        var recon = ReconstructionLoss(B);
        if (updateState) { AgeLatents(B); ResetFiredCodes(); }
        var (deadMask, deadCount) = DeadLatents();
        var aux = AuxK(B, f, c, deadMask, deadCount);
        double mu = Mu(step);
        Phase("loss, auxk");

        var gVal = GradBuffer(ref _gVal, Codes.Count);
        var gValAux = GradBuffer(ref _gValAux, AuxCodes.Count);
        // ∂L/∂f[b, j] = Σ_m [j selected for m in b] · WDec[m, j, :] · δ[b, m, :]
        var gM = new float[M][];
        for (int m = 0; m < M; m++)
        {
            gM[m] = new float[Math.Max(ModelCodes[m].Count, 1)];
            CodeGrad(ModelCodes[m], Delta(B), B, dense, gM[m], model: m);
        }
        Selection.Union(ModelCodes, gM, Codes, gVal);
        if (aux.Active) CodeGrad(AuxCodes, DeltaAux(B), B, dense, gValAux);
        PassActiveOnly(Codes, gVal);
        PassActiveOnly(AuxCodes, gValAux);
        if (!aux.Active) AuxCodes.Reset(B);
        Phase("code grad");

        Codes.BuildColumns();
        if (aux.Active) AuxCodes.BuildColumns();
        if (dense)
        {
            for (int m = 0; m < M; m++)
            {
                ModelCodes[m].ToDense(_dense1);
                DictionaryKernels.DecoderGradDense(CodesDense(B), Delta(B), B, M, D, F, GWDec, model: m);
            }
            if (aux.Active) AddAuxDecoderGradDense(B);
            EncoderGradDenseFromEntries(B, gVal, gValAux, aux.Active);
        }
        else
        {
            foreach (var mc in ModelCodes) mc.BuildColumns();
            DictionaryKernels.DecoderGradSparse(ModelCodes, Delta(B), aux.Active ? AuxCodes : null, DeltaAux(B), M, D, F, GWDec);
            DictionaryKernels.EncoderGradSparse(Codes, gVal, aux.Active ? AuxCodes : null, gValAux, Xin(B), M, D, F, GWEnc, GBEnc);
        }
        Phase("weight grads");
        DecoderBiasGrad(B);
        Phase("bias grads");
        return Stats(step, B, recon, aux, mu, sparsity: 0, CodesL0(B), deadCount, k, Dict.ModelThreshold!.Min()) with
        {
            L0PerModel = ModelCodes.Select(mc => (double)mc.Count / B).ToArray(),
            ModelThreshold = (float[])Dict.ModelThreshold!.Clone(),
        };
    }

    /// <summary>ReLU (L1 crosscoder, ReLU SAE): dense codes f = ReLU(pre), penalty μ·S with S the code-norm-weighted L1
    /// (or sqrt-L1) of f, gradients through f and through the decoder norms c. No AuxK.</summary>
    StepStats ReluStep(ReadOnlySpan<float> xBMD, long step, bool updateState)
    {
        int B = LoadAndEncode(xBMD, step, updateState, geometricMedianInit: false);
        var f = Pre(B);
        DictionaryKernels.Relu(f);
        Phase("encode (GEMM)");

        var c = LatentNorms();
        int k = CurrentK(step);
        Codes.Reset(B);   // ReLU codes stay dense: f is the post-ReLU matrix itself
        Phase("select");

        DictionaryKernels.DecodeDense(f, Dict.WDec, Dict.BDec, B, M, D, F, Xhat(B));
        Phase("decode");

        var recon = ReconstructionLoss(B);
        if (updateState) { AgeLatents(B); ResetFiredRelu(f, c, B); }
        var (_, deadCount) = DeadLatents();
        AuxCodes.Reset(B);
        double mu = Mu(step);
        var gcF = new float[F];   // ∂(μS)/∂c_j
        double sparsity = ReluPenalty(f, c, B, mu, gcF);
        double l0 = (double)DictionaryKernels.CountPositive(f) / B;
        Phase("loss, auxk");

        Ensure(ref _dense2, (long)B * F);
        var gPre = _dense2.AsSpan(0, B * F);
        DictionaryKernels.CodeGradDense(Delta(B), Dict.WDec, B, M, D, F, gPre);
        ReluPenaltyGrad(f, c, B, mu, gPre);
        Phase("code grad");

        Codes.BuildColumns();
        DictionaryKernels.DecoderGradDense(f, Delta(B), B, M, D, F, GWDec);
        DictionaryKernels.EncoderGradDense(gPre, Xin(B), B, M, D, F, GWEnc, GBEnc);
        Phase("weight grads");
        if (mu != 0) CodeNorms.Backward(Dict.WDec, gcF, M, F, D, Dict.CodeNormalization, Dict.AlphaSae, Dict.AlphaCc, GWDec);
        DecoderBiasGrad(B);
        Phase("bias grads");
        return Stats(step, B, recon, AuxTerm.None, mu, sparsity, l0, deadCount, k, Dict.Threshold);
    }

    /// <summary>JumpReLU SAE: f = pre where pre &gt; θ_j, penalty μ·L0, θ trained with the straight-through estimator.
    /// Dense kernels (the threshold gradient needs ∂L/∂f at inactive entries near θ). No AuxK.</summary>
    StepStats JumpReluStep(ReadOnlySpan<float> xBMD, long step, bool updateState)
    {
        int B = LoadAndEncode(xBMD, step, updateState, geometricMedianInit: false);
        Ensure(ref _preRaw, (long)B * F);
        Pre(B).CopyTo(_preRaw);   // the threshold gradient reads the pre-activations
        DictionaryKernels.Relu(Pre(B));
        Phase("encode (GEMM)");

        int k = CurrentK(step);
        Selection.Jump(_preRaw.AsSpan(0, B * F), Dict.JumpThreshold, B, F, Codes);
        Phase("select");

        Decode(Codes, B, dense: true);
        Phase("decode");

        var recon = ReconstructionLoss(B);
        if (updateState) { AgeLatents(B); ResetFiredCodes(); }
        var (_, deadCount) = DeadLatents();
        AuxCodes.Reset(B);
        double mu = Mu(step);
        double sparsity = CodesL0(B);   // the L0 penalty
        Phase("loss, auxk");

        var gVal = GradBuffer(ref _gVal, Codes.Count);
        CodeGrad(Codes, Delta(B), B, dense: true, gVal);   // every stored entry is active (pre > θ): all pass
        Phase("code grad");

        Codes.BuildColumns();
        DictionaryKernels.DecoderGradDense(CodesDense(B), Delta(B), B, M, D, F, GWDec);
        EncoderGradDenseFromEntries(B, gVal, default, withAux: false);
        Phase("weight grads");
        JumpThresholdGrad(B, mu);
        DecoderBiasGrad(B);
        Phase("bias grads");
        return Stats(step, B, recon, AuxTerm.None, mu, sparsity, CodesL0(B), deadCount, k, Dict.Threshold);
    }
}

namespace Finetrace.Dictionaries;

/// <summary>How the code f becomes sparse.</summary>
public enum Sparsity
{
    /// <summary>f = ReLU(pre); sparsity comes from an L1 (or sqrt-L1) penalty.</summary>
    Relu,
    /// <summary>Training: keep the k·B largest s = f ⊙ c over the whole batch; inference: f · [s &gt; θ].</summary>
    BatchTopK,
    /// <summary>Keep the k largest f per token (training and inference).</summary>
    TopK,
    /// <summary>f = pre · [pre &gt; θ_j] with a learned per-latent threshold.</summary>
    JumpRelu,
}

/// <summary>Per-latent weight c_j used by the sparsity penalty, top-k ranking and threshold (methods.md §2.3).</summary>
public enum CodeNormalization { Crosscoder = 1, Sae = 2, Mixed = 3, None = 4, Decoupled = 5 }

/// <summary>
/// A sparse dictionary over M ≥ 1 models: a crosscoder (M ≥ 2, shared code, per-model decoders) or an SAE (M = 1,
/// decoder bias subtracted from the input before encoding). Parameters are stored latent-major so that the rows a
/// sparse kernel touches are contiguous:
/// <list type="bullet">
/// <item>WEnc [M, F, D] — row (m, j) reads model m for latent j (the reference crosscoder stores [M, D, F]; the SAE's
/// nn.Linear stores [F, D] = our layout for M = 1);</item>
/// <item>BEnc [F]; WDec [M, F, D] — row (m, j) is d_j^m (SAE nn.Linear stores [D, F], transposed); BDec [M, D].</item>
/// </list>
/// All quantities live in the normalised space when a normaliser is attached (<see cref="Normalizer"/>).
/// </summary>
public sealed class SparseDictionary
{
    public int Models { get; }
    public int DModel { get; }
    public int DictSize { get; }
    public Sparsity Sparsity { get; set; }
    public CodeNormalization CodeNormalization { get; set; }
    public float AlphaSae { get; set; } = 1.0f;
    public float AlphaCc { get; set; } = 0.1f;
    /// <summary>SAE convention: encode (x − b_dec) instead of x.</summary>
    public bool SubtractDecoderBias { get; }
    public int K { get; set; }
    /// <summary>Global inference threshold θ for BatchTopK (−1 = unset).</summary>
    public float Threshold { get; set; } = -1f;
    /// <summary>Per-latent thresholds for JumpReLU [F] (null otherwise).</summary>
    public float[]? JumpThreshold { get; set; }

    // wEncMFD: [M, F, D]; bEncF: [F]; wDecMFD: [M, F, D]; bDecMD: [M, D]
    public float[] WEnc { get; }
    public float[] BEnc { get; }
    public float[] WDec { get; }
    public float[] BDec { get; }

    /// <summary>Activation normaliser (methods.md §2.7), or null when training on raw activations.</summary>
    public Normalizer? Normalizer { get; set; }

    public SparseDictionary(int models, int dModel, int dictSize, Sparsity activation, CodeNormalization codeNorm, bool subtractDecoderBias, int k = 0)
    {
        if (models < 1 || dModel < 1 || dictSize < 1) throw new ArgumentException($"dictionary sizes must be positive: models={models}, d_model={dModel}, dict_size={dictSize}");
        if (activation is Sparsity.BatchTopK or Sparsity.TopK && (k < 1 || k > dictSize))
            throw new ArgumentException($"k = {k} must be between 1 and dict_size = {dictSize}");
        if (codeNorm == CodeNormalization.Decoupled && activation is not (Sparsity.Relu or Sparsity.BatchTopK))
            throw new NotSupportedException($"DECOUPLED code normalisation exists for the L1 and BatchTopK crosscoders only, not {activation}; use crosscoder, sae, mixed or none");
        Models = models; DModel = dModel; DictSize = dictSize;
        Sparsity = activation; CodeNormalization = codeNorm; SubtractDecoderBias = subtractDecoderBias; K = k;
        long n = (long)models * dictSize * dModel;
        WEnc = Tensors.Tensor.Allocate(n);
        WDec = Tensors.Tensor.Allocate(n);
        BEnc = new float[dictSize];
        BDec = new float[models * dModel];
        if (activation == Sparsity.JumpRelu) JumpThreshold = new float[dictSize];
        if (codeNorm == CodeNormalization.Decoupled && activation == Sparsity.BatchTopK) ModelThreshold = Enumerable.Repeat(-1f, models).ToArray();
    }

    /// <summary>BatchTopK with DECOUPLED code normalisation: one batch top-k and one inference threshold per model
    /// (methods.md §2.3, §2.5); codes are [B, M, F] (see <see cref="Inference.EncodeModels"/>).</summary>
    /// <remarks>What crosscoder_learning's BatchTopKCrossCoder.encode_decoupled and BatchTopKCrossCoderTrainer do, and
    /// Finetrace with them: the encoder still gives one post-ReLU f [B, F]; s[b, m, j] = f[b, j] · ‖d_j^m‖; for each
    /// model m separately the k·B largest s[:, m, :] over the whole batch are kept (k per model, not split), and the
    /// code is f[b, j] · mask[b, m, j] — [B, M, F], so model m's decoder sees f only where model m selected it
    /// (the decoder einsum "b m f, m f d → b m d"). The gradient on f is therefore Σ_m mask_m · (d_j^m · δ_m), and no
    /// gradient flows through the ranking. A latent fired (dead tracking) when any model selected it. The threshold
    /// EMA runs per model on min over positive s[:, m, :]·mask (update_decoupled_threshold), and inference keeps
    /// f · [s[b, m, j] &gt; θ_m]. AuxK has no decoupled branch: it ranks the dead latents by f · Σ_m ‖d_j^m‖ (the
    /// summed post-ReLU scaled code encode_decoupled returns) and decodes one shared aux code through every model's
    /// decoder — exactly the CROSSCODER AuxK, which Finetrace reuses. The reported activation is f · Σ_m ‖d_j^m‖ on
    /// the union of the per-model supports (methods.md §2.3; the reference's get_activations sums s over the selected
    /// models only, which agrees wherever every model selected the latent). The state-dict threshold is [M].</remarks>
    public bool PerModelCodes => CodeNormalization == CodeNormalization.Decoupled && Sparsity == Sparsity.BatchTopK;

    /// <summary>Per-model inference thresholds θ_m [M] for DECOUPLED BatchTopK (−1 = unset; null otherwise).</summary>
    public float[]? ModelThreshold { get; set; }

    public bool IsSae => SubtractDecoderBias;

    public SparseDictionary Clone()
    {
        var c = new SparseDictionary(Models, DModel, DictSize, Sparsity, CodeNormalization, SubtractDecoderBias, K)
        { Threshold = Threshold, AlphaSae = AlphaSae, AlphaCc = AlphaCc, Normalizer = Normalizer?.Clone() };
        WEnc.CopyTo(c.WEnc, 0); WDec.CopyTo(c.WDec, 0); BEnc.CopyTo(c.BEnc, 0); BDec.CopyTo(c.BDec, 0);
        if (JumpThreshold is not null) JumpThreshold.CopyTo(c.JumpThreshold!, 0);
        if (ModelThreshold is not null) ModelThreshold.CopyTo(c.ModelThreshold!, 0);
        return c;
    }

    /// <summary>c_j for every latent from the current decoder (methods.md §2.3).</summary>
    // wDecMFD: [M, F, D] → cF: [F]
    public void CodeNorm(Span<float> cF) => CodeNorms.Compute(WDec, Models, DictSize, DModel, CodeNormalization, AlphaSae, AlphaCc, cF);

    /// <summary>‖d_j^m‖ for every model and latent.</summary>
    // → normsMF: [M, F]
    public float[] DecoderNorms()
    {
        // parallel over rows (disjoint outputs): DECOUPLED training reads the whole decoder every step
        int rows = Models * DictSize, d = DModel, nc = DictionaryKernels.Chunks(rows, 64);
        var n = new float[rows];
        var w = WDec;
        Parallel.For(0, nc, DictionaryKernels.Opts((long)rows * d), ch =>
        {
            int lo = (int)((long)rows * ch / nc), hi = (int)((long)rows * (ch + 1) / nc);
            for (int r = lo; r < hi; r++) n[r] = CodeNorms.Norm(w.AsSpan(r * d, d));
        });
        return n;
    }
}

/// <summary>Per-model centring and scaling x̃ = (x − μ_m) · g_m (methods.md §2.7, keep_relative_variance).</summary>
public sealed class Normalizer
{
    public float TargetRms { get; init; }
    // meanMD, stdMD: [M, D]; scaleM: [M]
    public required float[] Mean { get; init; }
    public required float[] Std { get; init; }
    public required float[] Scale { get; init; }

    public static Normalizer FromStats(float targetRms, float[] meanMD, float[] stdMD, int models, int d)
    {
        var scale = new float[models];
        for (int m = 0; m < models; m++)
        {
            double s = 0;
            for (int i = 0; i < d; i++) s += (double)stdMD[m * d + i] * stdMD[m * d + i];
            scale[m] = (float)(targetRms / Math.Sqrt(s + 1e-8));
        }
        return new Normalizer { TargetRms = targetRms, Mean = (float[])meanMD.Clone(), Std = (float[])stdMD.Clone(), Scale = scale };
    }

    public Normalizer Clone() => new() { TargetRms = TargetRms, Mean = (float[])Mean.Clone(), Std = (float[])Std.Clone(), Scale = (float[])Scale.Clone() };

    // xBMD: [B, M, D] in place
    public void Normalize(Span<float> xBMD, int models, int d)
    {
        int rows = xBMD.Length / (models * d);
        for (int b = 0; b < rows; b++)
            for (int m = 0; m < models; m++)
            {
                var row = xBMD.Slice((b * models + m) * d, d);
                float g = Scale[m];
                var mu = Mean.AsSpan(m * d, d);
                for (int i = 0; i < d; i++) row[i] = (row[i] - mu[i]) * g;
            }
    }

    // xBMD: [B, M, D] in place
    public void Denormalize(Span<float> xBMD, int models, int d)
    {
        int rows = xBMD.Length / (models * d);
        for (int b = 0; b < rows; b++)
            for (int m = 0; m < models; m++)
            {
                var row = xBMD.Slice((b * models + m) * d, d);
                float g = Scale[m] + 1e-8f;
                var mu = Mean.AsSpan(m * d, d);
                for (int i = 0; i < d; i++) row[i] = row[i] / g + mu[i];
            }
    }
}

public static class CodeNorms
{
    public static float Norm(ReadOnlySpan<float> v)
    {
        // four double accumulators: exact enough for any width, and not latency-bound
        double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        int i = 0;
        for (; i + 4 <= v.Length; i += 4)
        {
            s0 += (double)v[i] * v[i]; s1 += (double)v[i + 1] * v[i + 1];
            s2 += (double)v[i + 2] * v[i + 2]; s3 += (double)v[i + 3] * v[i + 3];
        }
        for (; i < v.Length; i++) s0 += (double)v[i] * v[i];
        return (float)Math.Sqrt((s0 + s1) + (s2 + s3));
    }

    // wDecMFD: [M, F, D] → cF: [F]
    public static void Compute(ReadOnlySpan<float> wDecMFD, int models, int f, int d, CodeNormalization mode, float alphaSae, float alphaCc, Span<float> cF)
    {
        if (mode == CodeNormalization.None) { cF.Fill(1f); return; }
        // parallel over latents (disjoint outputs): this reads the whole decoder every step
        unsafe
        {
            fixed (float* w = wDecMFD, c = cF)
            {
                float* W = w, Cc = c;
                int nc = DictionaryKernels.Chunks(f, 64);
                Parallel.For(0, nc, DictionaryKernels.Opts((long)f * models * d), ch =>
                {
                    int lo = (int)((long)f * ch / nc), hi = (int)((long)f * (ch + 1) / nc);
                    for (int j = lo; j < hi; j++)
                    {
                        double sum = 0, sumSq = 0;
                        for (int m = 0; m < models; m++)
                        {
                            float n = Norm(new ReadOnlySpan<float>(W + ((long)m * f + j) * d, d));
                            sum += n; sumSq += (double)n * n;
                        }
                        Cc[j] = mode switch
                        {
                            CodeNormalization.Crosscoder or CodeNormalization.Decoupled => (float)sum,
                            CodeNormalization.Sae => (float)Math.Sqrt(sumSq),
                            CodeNormalization.Mixed => (float)(alphaSae * Math.Sqrt(sumSq) + alphaCc * sum),
                            _ => 1f,
                        };
                    }
                });
            }
        }
    }

    /// <summary>∂c_j/∂W_dec[m, j, :] · gC[j], accumulated into gWDec (the L1 penalty's pull on decoder norms).</summary>
    // wDecMFD: [M, F, D]; gcF: [F] (∂L/∂c) → gWDecMFD: [M, F, D] (+=)
    public static void Backward(ReadOnlySpan<float> wDecMFD, ReadOnlySpan<float> gcF, int models, int f, int d, CodeNormalization mode, float alphaSae, float alphaCc, Span<float> gWDecMFD)
    {
        if (mode == CodeNormalization.None) return;
        Span<float> norms = models <= 64 ? stackalloc float[models] : new float[models];
        for (int j = 0; j < f; j++)
        {
            if (gcF[j] == 0f) continue;
            double sumSq = 0;
            for (int m = 0; m < models; m++) { norms[m] = Norm(wDecMFD.Slice((m * f + j) * d, d)); sumSq += (double)norms[m] * norms[m]; }
            float sae = (float)Math.Sqrt(sumSq);
            for (int m = 0; m < models; m++)
            {
                // ∂‖w‖/∂w = w/‖w‖; ∂sqrt(Σ‖w_m‖²)/∂w_m = w_m / sqrt(Σ‖w‖²)
                double coef = mode switch
                {
                    CodeNormalization.Crosscoder or CodeNormalization.Decoupled => norms[m] > 0 ? 1.0 / norms[m] : 0,
                    CodeNormalization.Sae => sae > 0 ? 1.0 / sae : 0,
                    CodeNormalization.Mixed => (norms[m] > 0 ? alphaCc / norms[m] : 0) + (sae > 0 ? alphaSae / sae : 0),
                    _ => 0,
                };
                float s = (float)(coef * gcF[j]);
                var w = wDecMFD.Slice((m * f + j) * d, d);
                var g = gWDecMFD.Slice((m * f + j) * d, d);
                for (int i = 0; i < d; i++) g[i] += s * w[i];
            }
        }
    }
}

namespace Finetrace.Dictionaries;

/// <summary>
/// Encoding and decoding outside training, in the dictionary's own (normalised) space unless stated. Inference rules
/// (methods.md §2.3, §2.5): BatchTopK → f · [f ⊙ c &gt; θ]; TopK → per-token top k; JumpReLU → pre · [pre &gt; θ_j];
/// ReLU → f. <see cref="EncodeTraining"/> gives the training-mode codes (batch top-k over the whole batch).
/// </summary>
public static class Inference
{
    /// <summary>Post-ReLU activations f [B, F] (pre-activations when <paramref name="relu"/> is false).</summary>
    // xBMD: [B, M, D] (normalised space) → fBF: [B, F]
    public static float[] PostRelu(SparseDictionary d, ReadOnlySpan<float> xBMD, bool relu = true)
    {
        int rowLen = d.Models * d.DModel, b = xBMD.Length / rowLen;
        var xin = new float[xBMD.Length];
        xBMD.CopyTo(xin);
        if (d.SubtractDecoderBias)
            for (int t = 0; t < b; t++)
                for (int i = 0; i < rowLen; i++) xin[t * rowLen + i] -= d.BDec[i];
        var f = Tensors.Tensor.Allocate((long)b * d.DictSize);
        DictionaryKernels.EncoderForward(xin, d.WEnc, d.BEnc, b, d.Models, d.DModel, d.DictSize, f);
        if (relu) DictionaryKernels.Relu(f);
        return f;
    }

    /// <summary>Inference-mode codes (what evaluation, Latent Scaling and dashboards use).</summary>
    /// <remarks>DECOUPLED BatchTopK: the union of the per-model supports with the shared f (a latent is active for a
    /// token when any model's rule kept it); its reported activation is f · c_j with c_j = Σ_m n_j^m (methods.md §2.3).
    /// The reconstruction needs the per-model codes: <see cref="EncodeModels"/>, <see cref="Reconstruct"/>.</remarks>
    public static SparseCodes Encode(SparseDictionary d, ReadOnlySpan<float> xBMD)
    {
        int b = xBMD.Length / (d.Models * d.DModel);
        var codes = new SparseCodes(b, d.DictSize);
        if (d.PerModelCodes) { Selection.Union(EncodeModels(d, xBMD), null, codes, default); return codes; }
        var c = new float[d.DictSize];
        d.CodeNorm(c);
        bool ranked = d.CodeNormalization != CodeNormalization.None;
        switch (d.Sparsity)
        {
            case Sparsity.BatchTopK:
                var f = PostRelu(d, xBMD);
                if (d.Threshold < 0) Selection.BatchTopK(f, ranked ? c : default, b, d.DictSize, (long)d.K * b, codes);
                else Selection.Threshold(f, ranked ? c : default, d.Threshold, b, d.DictSize, codes);
                break;
            case Sparsity.TopK: Selection.TopKPerRow(PostRelu(d, xBMD), ranked ? c : default, default, b, d.DictSize, d.K, codes); break;
            case Sparsity.Relu: Selection.Positive(PostRelu(d, xBMD), b, d.DictSize, codes); break;
            case Sparsity.JumpRelu: Selection.Jump(PostRelu(d, xBMD, relu: false), d.JumpThreshold, b, d.DictSize, codes); break;
        }
        return codes;
    }

    /// <summary>Inference-mode codes with <paramref name="pruning"/> applied (methods.md §15.2): the one place where the
    /// pruning a dictionary's record carries meets its codes. Null or <see cref="Pruning.None"/>: <see cref="Encode(SparseDictionary, ReadOnlySpan{float})"/>.</summary>
    public static SparseCodes Encode(SparseDictionary d, ReadOnlySpan<float> xBMD, Pruning? pruning)
    {
        var codes = Encode(d, xBMD);
        Prune(d, codes, pruning);
        return codes;
    }

    /// <summary>Applies <paramref name="pruning"/> to freshly encoded <paramref name="codes"/> of <paramref name="d"/> (checked first).</summary>
    static void Prune(SparseDictionary d, SparseCodes codes, Pruning? pruning)
    {
        if (pruning is null || pruning.IsNone) return;
        pruning.Check(d);
        pruning.Apply(codes, Pruning.RankWeights(d));
    }

    /// <summary>Inference-mode reconstruction from pruned codes (see <see cref="Encode(SparseDictionary, ReadOnlySpan{float}, Pruning?)"/>).</summary>
    // xBMD: [B, M, D] → codes, xHatBMD: [B, M, D]
    public static (SparseCodes Codes, float[] XHat) Reconstruct(SparseDictionary d, ReadOnlySpan<float> xBMD, Pruning? pruning)
    {
        if (pruning is null || pruning.IsNone) return Reconstruct(d, xBMD);
        var c = Encode(d, xBMD, pruning);
        return (c, Decode(d, c));
    }

    /// <summary>Training-mode codes: batch top-k over the whole batch for BatchTopK, otherwise the inference rule.</summary>
    public static SparseCodes EncodeTraining(SparseDictionary d, ReadOnlySpan<float> xBMD)
    {
        if (d.Sparsity != Sparsity.BatchTopK) return Encode(d, xBMD);
        if (d.PerModelCodes)
        {
            var u = new SparseCodes(xBMD.Length / (d.Models * d.DModel), d.DictSize);
            Selection.Union(EncodeModels(d, xBMD, training: true), null, u, default);
            return u;
        }
        int b = xBMD.Length / (d.Models * d.DModel);
        var codes = new SparseCodes(b, d.DictSize);
        var c = new float[d.DictSize];
        d.CodeNorm(c);
        Selection.BatchTopK(PostRelu(d, xBMD), d.CodeNormalization != CodeNormalization.None ? c : default, b, d.DictSize, (long)d.K * b, codes);
        return codes;
    }

    /// <summary>DECOUPLED BatchTopK codes, one [B, F] per model: f · [f ⊙ n^m &gt; θ_m] once every θ_m is set
    /// (crosscoder_learning's encode_decoupled with use_threshold), else (or with <paramref name="training"/>) each
    /// model's batch top-k·B of f ⊙ n^m.</summary>
    // xBMD: [B, M, D] (normalised space) → codesM[m]: [B, F]
    public static SparseCodes[] EncodeModels(SparseDictionary d, ReadOnlySpan<float> xBMD, bool training = false)
    {
        if (!d.PerModelCodes) throw new InvalidOperationException("per-model codes exist only for DECOUPLED BatchTopK crosscoders");
        int b = xBMD.Length / (d.Models * d.DModel);
        var f = PostRelu(d, xBMD);
        var nMF = d.DecoderNorms();
        var codesM = Enumerable.Range(0, d.Models).Select(_ => new SparseCodes(b, d.DictSize)).ToArray();
        if (training || d.ModelThreshold!.Any(t => t < 0)) Selection.BatchTopKPerModel(f, nMF, b, d.DictSize, (long)d.K * b, codesM);
        else Selection.ThresholdPerModel(f, nMF, d.ModelThreshold, b, d.DictSize, codesM);
        return codesM;
    }

    /// <summary>Inference-mode reconstruction x̂ (normalised space), per-model codes included.</summary>
    // xBMD: [B, M, D] → codes (as <see cref="Encode"/>), xHatBMD: [B, M, D]
    public static (SparseCodes Codes, float[] XHat) Reconstruct(SparseDictionary d, ReadOnlySpan<float> xBMD)
    {
        if (!d.PerModelCodes) { var c = Encode(d, xBMD); return (c, Decode(d, c)); }
        var codesM = EncodeModels(d, xBMD);
        var u = new SparseCodes(codesM[0].Rows, d.DictSize);
        Selection.Union(codesM, null, u, default);
        var xh = new float[codesM[0].Rows * d.Models * d.DModel];
        DictionaryKernels.DecodeSparse(codesM, d.WDec, d.BDec, d.Models, d.DModel, d.DictSize, xh);
        return (u, xh);
    }

    /// <summary>x̂ = decode(f) including the decoder bias (normalised space).</summary>
    // codes [B, F] → xHatBMD: [B, M, D]
    public static float[] Decode(SparseDictionary d, SparseCodes codes)
    {
        if (d.PerModelCodes) throw new InvalidOperationException("a DECOUPLED BatchTopK crosscoder decodes per-model codes: use Inference.Reconstruct or EncodeModels + DictionaryKernels.DecodeSparse");
        var xh = new float[codes.Rows * d.Models * d.DModel];
        DictionaryKernels.DecodeSparse(codes, d.WDec, d.BDec, d.Models, d.DModel, d.DictSize, xh);
        return xh;
    }
}

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
        Kernels.EncoderForward(xin, d.WEnc, d.BEnc, b, d.Models, d.DModel, d.DictSize, f);
        if (relu) Kernels.Relu(f);
        return f;
    }

    /// <summary>Inference-mode codes (what evaluation, Latent Scaling and dashboards use).</summary>
    public static SparseCodes Encode(SparseDictionary d, ReadOnlySpan<float> xBMD)
    {
        int b = xBMD.Length / (d.Models * d.DModel);
        var codes = new SparseCodes(b, d.DictSize);
        var c = new float[d.DictSize];
        d.CodeNorm(c);
        bool ranked = d.CodeNormalization != CodeNormalization.None;
        switch (d.Activation)
        {
            case Activation.BatchTopK:
                var f = PostRelu(d, xBMD);
                if (d.Threshold < 0) Selection.BatchTopK(f, ranked ? c : default, b, d.DictSize, (long)d.K * b, codes);
                else Selection.Threshold(f, ranked ? c : default, d.Threshold, b, d.DictSize, codes);
                break;
            case Activation.TopK: Selection.TopKPerRow(PostRelu(d, xBMD), ranked ? c : default, default, b, d.DictSize, d.K, codes); break;
            case Activation.Relu: Selection.Positive(PostRelu(d, xBMD), b, d.DictSize, codes); break;
            case Activation.JumpRelu: Selection.Jump(PostRelu(d, xBMD, relu: false), d.JumpThreshold, b, d.DictSize, codes); break;
        }
        return codes;
    }

    /// <summary>Training-mode codes: batch top-k over the whole batch for BatchTopK, otherwise the inference rule.</summary>
    public static SparseCodes EncodeTraining(SparseDictionary d, ReadOnlySpan<float> xBMD)
    {
        if (d.Activation != Activation.BatchTopK) return Encode(d, xBMD);
        int b = xBMD.Length / (d.Models * d.DModel);
        var codes = new SparseCodes(b, d.DictSize);
        var c = new float[d.DictSize];
        d.CodeNorm(c);
        Selection.BatchTopK(PostRelu(d, xBMD), d.CodeNormalization != CodeNormalization.None ? c : default, b, d.DictSize, (long)d.K * b, codes);
        return codes;
    }

    /// <summary>x̂ = decode(f) including the decoder bias (normalised space).</summary>
    // codes [B, F] → xHatBMD: [B, M, D]
    public static float[] Decode(SparseDictionary d, SparseCodes codes)
    {
        var xh = new float[codes.Rows * d.Models * d.DModel];
        Kernels.DecodeSparse(codes, d.WDec, d.BDec, d.Models, d.DModel, d.DictSize, xh);
        return xh;
    }
}

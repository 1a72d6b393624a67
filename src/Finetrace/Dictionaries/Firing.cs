using Finetrace.Activations;

namespace Finetrace.Dictionaries;

/// <summary>
/// The one definition of "a latent fires" used by training, eval, <c>synth score</c>, the demo and the analyses
/// (methods.md §2.4–2.5): for the thresholded kinds (BatchTopK, TopK, JumpReLU) latent j fires on a token when its
/// code f_j &gt; 0; for ReLU dictionaries when its reported activation f_j·c_j &gt; 1e-4 (the reference trainers' rule;
/// c_j the code normalisation, 1 for SAEs). A latent is dead over a window of tokens when it fires on none of them.
/// </summary>
public static class Firing
{
    /// <summary>A ReLU latent fires when f·c exceeds this.</summary>
    public const float ReluMinReported = 1e-4f;

    /// <summary>The per-latent weights c_j of the rule: the code norms for ReLU dictionaries, null for the thresholded
    /// kinds (then a latent fires when f &gt; 0).</summary>
    public static float[]? Weights(SparseDictionary d)
    {
        if (d.Sparsity != Sparsity.Relu) return null;
        var c = new float[d.DictSize];
        d.CodeNorm(c);
        return c;
    }

    /// <summary>Whether a code value <paramref name="f"/> of latent j fires, given <see cref="Weights"/>.</summary>
    public static bool Fires(float f, float[]? weights, int j) => weights is null ? f > 0 : f * weights[j] > ReluMinReported;

    /// <summary>Adds each latent's firing tokens in <paramref name="codes"/> to <paramref name="firesF"/> [F].</summary>
    public static void Count(SparseCodes codes, float[]? weights, long[] firesF)
    {
        for (int e = 0; e < codes.Count; e++)
            if (Fires(codes.Value[e], weights, codes.Index[e])) firesF[codes.Index[e]]++;
    }

    /// <summary>Encodes <paramref name="tokens"/> rows of <paramref name="source"/> (raw activations, inference rule) and
    /// counts each latent's firing tokens.</summary>
    public static FiringCounts Measure(SparseDictionary d, IActivationBatches source, long tokens, int batch = 4096)
    {
        int rowLen = d.Models * d.DModel;
        if (source.Models != d.Models || source.DModel != d.DModel)
            throw new ArgumentException($"the activations have {source.Models} model(s) × {source.DModel} but the dictionary expects {d.Models} × {d.DModel}");
        var buf = new float[(long)batch * rowLen];
        var fires = new long[d.DictSize];
        var w = Weights(d);
        long n = 0;
        while (n < tokens)
        {
            int want = (int)Math.Min(batch, tokens - n);
            int got = source.Next(buf, want);
            if (got == 0) break;
            var (codes, _) = Evaluation.ReconstructRaw(d, buf.AsSpan(0, got * rowLen));
            Count(codes, w, fires);
            n += got;
            if (got < want) break;
        }
        return new FiringCounts(n, fires);
    }
}

/// <summary>Firing tokens per latent over a window of <see cref="Tokens"/> tokens.</summary>
public sealed record FiringCounts(long Tokens, long[] Fires)
{
    /// <summary>Dead: never fired in the window.</summary>
    public bool IsDead(int j) => Fires[j] == 0;
    public int Dead => Fires.Count(f => f == 0);
    public int Alive => Fires.Length - Dead;
    public double DeadFraction => (double)Dead / Fires.Length;
    public double Density(int j) => Tokens == 0 ? 0 : (double)Fires[j] / Tokens;
    /// <summary>log10(density + 1e-10) per latent (SAELens sparsity.safetensors).</summary>
    public float[] Log10Density() => Enumerable.Range(0, Fires.Length).Select(j => (float)Math.Log10(Density(j) + 1e-10)).ToArray();
    /// <summary>Dense: log10 density above −1 (fires on more than a tenth of the tokens).</summary>
    public int Dense => Enumerable.Range(0, Fires.Length).Count(j => Math.Log10(Density(j) + 1e-10) > -1);
}

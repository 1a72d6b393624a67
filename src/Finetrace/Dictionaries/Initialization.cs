using Finetrace.Tensors;
namespace Finetrace.Dictionaries;

/// <summary>How a crosscoder was initialised (config.json's same_init_for_all_layers and norm_init_scale).</summary>
public sealed record CrosscoderInit(bool SameInitForAllModels, float? NormInitScale);

/// <summary>Initialisations of methods.md §2.6 / §3.1 (own RNG; torch's stream is not reproduced).</summary>
public static class Initialization
{
    /// <summary>torch.nn.init.kaiming_uniform_ with its defaults (a = 0, leaky_relu gain √2): U(−√(6/fan_in), √(6/fan_in)).</summary>
    public static double KaimingUniformBound(double fanIn) => Math.Sqrt(6.0 / fanIn);

    /// <summary>Crosscoder: W_enc from kaiming_uniform (bound √(6/fan_in); fan_in = F for one [D, F] draw shared by all
    /// models, D·F for an [M, D, F] draw), each (model, latent) encoder row rescaled to <paramref name="normInitScale"/>
    /// when given, decoder = encoderᵀ (init_with_transpose), biases 0, θ = −1.</summary>
    public static void Crosscoder(SparseDictionary d, SplitMix64 rng, float? normInitScale = 1f, bool sameInitForAllModels = true, bool initWithTranspose = true)
    {
        int M = d.Models, D = d.DModel, F = d.DictSize;
        double bound = KaimingUniformBound(sameInitForAllModels ? F : (double)D * F);
        for (int m = 0; m < M; m++)
        {
            if (sameInitForAllModels && m > 0) { d.WEnc.AsSpan(0, F * D).CopyTo(d.WEnc.AsSpan(m * F * D, F * D)); continue; }
            for (int i = 0; i < F * D; i++) d.WEnc[m * F * D + i] = (float)rng.Uniform(-bound, bound);
        }
        if (normInitScale is float s)
            for (int r = 0; r < M * F; r++)
            {
                var row = d.WEnc.AsSpan(r * D, D);
                float n = CodeNorms.Norm(row);
                if (n > 0) System.Numerics.Tensors.TensorPrimitives.Multiply(row, s / n, row);
            }
        if (initWithTranspose) d.WEnc.CopyTo(d.WDec, 0);
        else for (int i = 0; i < d.WDec.Length; i++) d.WDec[i] = (float)rng.Uniform(-bound, bound);
        Array.Clear(d.BEnc); Array.Clear(d.BDec);
        d.Threshold = -1;
        if (d.ModelThreshold is not null) Array.Fill(d.ModelThreshold, -1f);
        if (d.JumpThreshold is not null) Array.Fill(d.JumpThreshold, 0.001f);
    }

    /// <summary>SAE: random decoder directions (nn.Linear default, bound 1/√F) normalised to unit norm,
    /// W_enc = W_decᵀ · encoderInitNorm, biases 0, θ = −1.</summary>
    public static void Sae(SparseDictionary d, SplitMix64 rng, float encoderInitNorm = 1f, float? decoderNorm = 1f)
    {
        int D = d.DModel, F = d.DictSize;
        double bound = 1.0 / Math.Sqrt(F);
        for (int i = 0; i < d.WDec.Length; i++) d.WDec[i] = (float)rng.Uniform(-bound, bound);
        for (int r = 0; r < d.Models * F; r++)
        {
            var row = d.WDec.AsSpan(r * D, D);
            float n = CodeNorms.Norm(row);
            if (n > 0) System.Numerics.Tensors.TensorPrimitives.Multiply(row, (decoderNorm ?? 1f) / n, row);
        }
        System.Numerics.Tensors.TensorPrimitives.Multiply(d.WDec, encoderInitNorm, d.WEnc);
        Array.Clear(d.BEnc); Array.Clear(d.BDec);
        d.Threshold = -1;
        if (d.ModelThreshold is not null) Array.Fill(d.ModelThreshold, -1f);
        if (d.JumpThreshold is not null) Array.Fill(d.JumpThreshold, 0.001f);
    }
}

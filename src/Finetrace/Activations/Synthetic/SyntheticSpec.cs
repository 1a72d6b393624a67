using Finetrace.Models;
namespace Finetrace.Activations.Synthetic;

/// <summary>
/// Settings of the synthetic paired-activation generator. Fractions of the <see cref="Features"/> go to each
/// category; what is left after exclusive, shrunk and decoupled is shared.
/// </summary>
public sealed record SyntheticSpec
{
    public int DModel { get; init; } = 64;
    public int Features { get; init; } = 256;
    public int Models { get; init; } = 2;
    public long Tokens { get; init; } = 200_000;
    public ulong Seed { get; init; }
    /// <summary>Informational: the share the caller asked for shared features (the rest decides; see <see cref="Validate"/>).</summary>
    public double Shared { get; init; } = 0.8;
    /// <summary>Features present in one model only (split evenly over the models).</summary>
    public double Exclusive { get; init; } = 0.1;
    /// <summary>Features present in every model but with magnitude × <see cref="ShrinkFactor"/> in model 0 (Complete Shrinkage).</summary>
    public double Shrunk { get; init; } = 0.05;
    /// <summary>Features model 0 represents as a combination of <see cref="Parents"/> shared features (Latent Decoupling).</summary>
    public double Decoupled { get; init; } = 0.05;
    public float ShrinkFactor { get; init; } = 0.25f;
    public int Parents { get; init; } = 2;
    /// <summary>Expected number of active features per token.</summary>
    public double L0 { get; init; } = 6;
    /// <summary>Ratio between the most and least frequent feature's firing rate (log-uniform in between).</summary>
    public double FrequencySpread { get; init; } = 10;
    /// <summary>Standard deviation of independent Gaussian noise per dimension and model.</summary>
    public float Noise { get; init; } = 0.01f;
    /// <summary>How far a shared feature's direction in models 1.. moves from model 0's (cosine ≈ 1/√(1+drift²)).</summary>
    public float Drift { get; init; } = 0.05f;
    /// <summary>Norm of a constant random offset added to each model's activations.</summary>
    public float Bias { get; init; }
    public int SequenceLength { get; init; } = 128;
    public int Layer { get; init; }
    public string Dtype { get; init; } = "bf16";

    public (int Exclusive, int Shrunk, int Decoupled, int Shared) Counts()
    {
        int ex = (int)Math.Round(Features * Exclusive), sh = (int)Math.Round(Features * Shrunk), de = (int)Math.Round(Features * Decoupled);
        return (ex, sh, de, Features - ex - sh - de);
    }

    public void Validate()
    {
        if (DModel < 2) throw new SettingException(nameof(DModel), $"{DModel}", "must be at least 2");
        if (Features < 1) throw new SettingException(nameof(Features), $"{Features}", "must be positive");
        if (Models < 2) throw new SettingException(nameof(Models), $"{Models}", "must be at least 2");
        if (Tokens < 1) throw new SettingException(nameof(Tokens), $"{Tokens}", "must be positive");
        foreach (var (name, v) in new[] { (nameof(Shared), Shared), (nameof(Exclusive), Exclusive), (nameof(Shrunk), Shrunk), (nameof(Decoupled), Decoupled) })
            if (v is < 0 or > 1 || double.IsNaN(v)) throw new SettingException(name, $"{v}", "must be a fraction in [0, 1]");
        if (Exclusive + Shrunk + Decoupled > 1 + 1e-9) throw new ArgumentException($"synth: exclusive + shrunk + decoupled fractions exceed 1 ({Exclusive + Shrunk + Decoupled:G4})");
        if (Math.Abs(Shared + Exclusive + Shrunk + Decoupled - 1) > 0.011)
            throw new ArgumentException($"synth: the fractions must sum to 1: shared {Shared} + exclusive {Exclusive} + shrunk {Shrunk} + decoupled {Decoupled} = {Shared + Exclusive + Shrunk + Decoupled:G4}");
        var c = Counts();
        if (c.Decoupled > 0 && c.Shared < Parents) throw new ArgumentException($"synth: decoupled features need at least {Parents} shared features as parents");
        if (ShrinkFactor is < 0 or >= 1) throw new SettingException(nameof(ShrinkFactor), $"{ShrinkFactor}", "must be in [0, 1)");
        if (L0 <= 0 || L0 > Features) throw new SettingException(nameof(L0), $"{L0}", $"must be in (0, {Features}] (the number of features)");
        if (FrequencySpread < 1) throw new SettingException(nameof(FrequencySpread), $"{FrequencySpread}", "must be ≥ 1");
        foreach (var (name, v) in new[] { (nameof(Noise), Noise), (nameof(Drift), Drift), (nameof(Bias), Bias) })
            if (v < 0) throw new SettingException(name, $"{v}", "must be non-negative");
        if (SequenceLength < 1) throw new SettingException(nameof(SequenceLength), $"{SequenceLength}", "must be positive");
        if (Parents < 1) throw new SettingException(nameof(Parents), $"{Parents}", "must be positive");
        StoreDTypes.Parse(Dtype);
    }
}

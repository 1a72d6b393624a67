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
    /// <summary>Features planted for Latent Decoupling (how: <see cref="Decoupling"/>).</summary>
    public double Decoupled { get; init; } = 0.05;
    /// <summary>How decoupled features are planted. <see cref="DecouplingMode.Superset"/> is the paper's Latent
    /// Decoupling; <see cref="DecouplingMode.Combination"/> (default, so existing stores, scores and benchmarks stay
    /// comparable; also what ground truth files without a mode read as) is the generator's earlier behaviour.</summary>
    public DecouplingMode Decoupling { get; init; } = DecouplingMode.Combination;
    /// <summary>Superset mode: the base's extra firings of a decoupled feature's direction, as a multiple of the
    /// feature's own firing rate (the base's version of the feature is broader).</summary>
    public double DecoupledExtraRate { get; init; } = 4.0;
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
        if (!Enum.IsDefined(Decoupling)) throw new SettingException(nameof(Decoupling), $"{Decoupling}", "must be superset or combination");
        if (DecoupledExtraRate <= 0 || double.IsNaN(DecoupledExtraRate)) throw new SettingException(nameof(DecoupledExtraRate), $"{DecoupledExtraRate}", "must be positive");
        if (Decoupling == DecouplingMode.Combination && c.Decoupled > 0 && c.Shared < Parents) throw new ArgumentException($"synth: decoupled features need at least {Parents} shared features as parents");
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

/// <summary>How <see cref="SyntheticGenerator"/> plants a decoupled feature (owner = the base, model 0).</summary>
[System.Text.Json.Serialization.JsonConverter(typeof(System.Text.Json.Serialization.JsonStringEnumConverter<DecouplingMode>))]
public enum DecouplingMode
{
    /// <summary>Latent Decoupling as Minder et al. define it: the feature's direction is present in every model with the
    /// same magnitude on the same tokens, but the base also writes it on extra tokens of its own (an independent
    /// firing at <see cref="SyntheticSpec.DecoupledExtraRate"/> × the feature's rate). The base thus has one broader
    /// feature where the fine-tune has a narrower one, and an L1 crosscoder can carry it by a base-only latent plus a
    /// fine-tune-only latent at the same cost as a shared latent plus a base-only remainder; when it picks the former,
    /// the "fine-tune-only" latent's direction is in the base reconstruction wherever it fires (ν^r ≈ 1).</summary>
    Superset = 0,
    /// <summary>The generator's earlier planting: the base writes Σ w_p·dir_p of <see cref="SyntheticSpec.Parents"/>
    /// shared features instead of the feature's own direction (the fine-tuned direction is absent from the base).</summary>
    Combination = 1,
}

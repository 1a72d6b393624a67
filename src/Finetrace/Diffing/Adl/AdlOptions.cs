using Finetrace.Text.Datasets;

namespace Finetrace.Diffing.Adl;

/// <summary>Which models the steering reader steers (methods §11.4, §18.4).</summary>
[Flags]
public enum SteerModels
{
    None = 0,
    /// <summary>The reference's default: add +v to the fine-tuned model ("does the difference carry more of the fine-tune?").</summary>
    FineTuned = 1,
    /// <summary>Add +v to the base model ("does the difference carry the fine-tune into the base?").</summary>
    Base = 2,
}

/// <summary>Settings of one Activation Difference Lens run (<c>finetrace analyze adl</c>, methods §11, §18.4).</summary>
public sealed record AdlOptions
{
    public required string BaseModel { get; init; }
    public string? BaseAdapter { get; init; }
    public required string FineTunedModel { get; init; }
    /// <summary>LoRA adapter merged into the fine-tuned model.</summary>
    public string? Adapter { get; init; }
    /// <summary>Unrelated text (and/or chat data), as <c>harvest --data</c> specs; empty = the built-in general text
    /// (<see cref="GeneralText"/>, see <see cref="AdlData"/>).</summary>
    public IReadOnlyList<DataSourceSpec> Data { get; init; } = [];
    /// <summary>Layers whose residual (blocks.{L}.hook_resid_post) is diffed.</summary>
    public required int[] Layers { get; init; }
    /// <summary>Positions of plain-text samples, from the start of the sample (BOS included).</summary>
    public int[] Positions { get; init; } = [0, 1, 2, 3, 4];
    /// <summary>Positions of chat samples relative to the first assistant token (negative: the template tokens before it).</summary>
    public int[] ChatPositions { get; init; } = [-3, -2, -1, 0, 1, 2, 3, 4];
    /// <summary>Samples per context (text, assistant start) that enter the means; a sample too short for the positions is skipped.</summary>
    public int MaxSamples { get; init; } = 10_000;
    public int BatchSize { get; init; } = 32;
    /// <summary>Samples are cut to this many tokens when read (chat samples whose assistant start lies beyond are skipped).</summary>
    public int ContextLength { get; init; } = 512;
    /// <summary>The typical activation norm per model and layer is the mean ‖h‖ over positions ≥ <see cref="NormSkip"/> of the
    /// first <see cref="NormSamples"/> samples, each run to <see cref="NormContext"/> tokens (all other samples stop after
    /// the last position they contribute).</summary>
    public int NormSamples { get; init; } = 256;
    public int NormContext { get; init; } = 128;
    public int NormSkip { get; init; } = 5;
    /// <summary>Tokens kept per logit-lens direction.</summary>
    public int LogitLensTopK { get; init; } = 100;

    public bool Patchscope { get; init; } = true;
    public IReadOnlyList<string> IdentityPrompts { get; init; } = DefaultIdentityPrompts;
    public IReadOnlyList<double> PatchscopeScales { get; init; } = DefaultPatchscopeScales();
    /// <summary>Each prompt's distribution is restricted to the tokens in the top k of every prompt (the reference's 16,384).</summary>
    public int PatchscopeIntersectionTopK { get; init; } = 16_384;
    /// <summary>The Patchscope scale rule: the smallest scale whose score is at least this fraction of the best score.</summary>
    public double PatchscopeScoreFraction { get; init; } = 0.9;

    public SteerModels Steer { get; init; } = SteerModels.FineTuned;
    /// <summary>Steering strengths in units of the steered model's typical activation norm at the layer.</summary>
    public IReadOnlyList<double> SteeringStrengths { get; init; } = [0.25, 0.5, 1, 2, 4];
    public IReadOnlyList<string> SteeringPrompts { get; init; } = DefaultSteeringPrompts;
    /// <summary>Samples per prompt and strength (and unsteered).</summary>
    public int SteeringSamples { get; init; } = 2;
    public int SteeringNewTokens { get; init; } = 48;
    public float SteeringTemperature { get; init; } = 1f;
    /// <summary>The steering strength rule: the largest strength whose samples' per-token loss under the (unsteered) base
    /// model is at most this factor times the base model's loss on its own unsteered samples.</summary>
    public double SteeringLossFactor { get; init; } = 2;
    /// <summary>Positions (of either context) that are steered; null = all.</summary>
    public int[]? SteeringPositions { get; init; }
    public int Seed { get; init; }

    /// <summary>Projection ablation (methods §11.6, slower): random Gaussian and random-diff control directions of each kind;
    /// 0 = off (the reference uses 64).</summary>
    public int AblationControls { get; init; }
    /// <summary>Samples of the data the ablation evaluates, cut to <see cref="AblationContext"/> tokens.</summary>
    public int AblationSamples { get; init; } = 64;
    public int AblationContext { get; init; } = 64;

    /// <summary>The reference's identity prompts (diffing-toolkit <c>multi_patch_scope</c>).</summary>
    public static readonly IReadOnlyList<string> DefaultIdentityPrompts =
    [
        "man -> man\n1135 -> 1135\nhello -> hello\n?",
        "bear -> bear\n42 -> 42\nblue -> blue\n?",
        "921 -> 921\ntarget -> target\nanna -> anna\n?",
    ];

    /// <summary>The reference's steering search prompts (methods §11.4).</summary>
    public static readonly IReadOnlyList<string> DefaultSteeringPrompts =
    [
        "Tell me a story?",
        "Give me some ideas for some fun weekend activities.",
        "Why don't you choose a topic of conversation for us?",
    ];

    /// <summary>0.5 to 2.0 by 0.1, 3, 4, 5, 10, 20, then 10 evenly spaced values from 20 to 200; rounded to one decimal and
    /// de-duplicated (30 values, methods §11.3).</summary>
    public static double[] DefaultPatchscopeScales()
    {
        var s = new List<double>();
        for (int i = 5; i <= 20; i++) s.Add(i / 10.0);
        s.AddRange([3, 4, 5, 10, 20]);
        for (int i = 0; i < 10; i++) s.Add(20 + i * 180 / 9.0);
        return s.Select(x => Math.Round(x, 1)).Distinct().Order().ToArray();
    }
}

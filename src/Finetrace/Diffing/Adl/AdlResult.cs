namespace Finetrace.Diffing.Adl;

/// <summary>A token with its probability; <see cref="Token"/> is the tokenizer's decode of the single id.</summary>
public sealed record TokenProb(int Id, string Token, double Prob);

/// <summary>softmax(W_U · FinalNorm(v)) and softmax(W_U · FinalNorm(−v)) of one model, top k of each (methods §11.2).</summary>
public sealed record LogitLensReading(string Model, IReadOnlyList<TokenProb> Top, IReadOnlyList<TokenProb> Bottom);

/// <summary>One scale of the Patchscope sweep: the top tokens of the prompt-averaged distribution (restricted to the
/// intersection of every prompt's top k) and the parts of the scale rule's score.</summary>
/// <param name="Agreement">Mean pairwise overlap of the identity prompts' own top-20 sets (1 = the patch alone decides the output).</param>
/// <param name="Novelty">1 − mean overlap of each prompt's top 20 with its unpatched top 20 (1 = the prompt's own answer is gone).</param>
public sealed record PatchscopeScale(double Scale, IReadOnlyList<TokenProb> Tokens, double Agreement, double Novelty, double Score);

/// <summary>Patchscope of δ rescaled to the fine-tuned model's typical norm (methods §11.3): the chosen scale, its tokens, the rule
/// that chose it and the whole sweep.</summary>
public sealed record PatchscopeReading(double Scale, IReadOnlyList<TokenProb> Tokens, string Rule, double VectorNorm, IReadOnlyList<PatchscopeScale> Sweep);

/// <summary>One generated continuation (the prompt is not repeated in <see cref="Text"/>).</summary>
public sealed record SteeringSample(string Prompt, int Seed, string Text, int[] Ids);

/// <summary>The samples at one strength and their per-token loss under the unsteered model.</summary>
public sealed record SteeringLevel(double Strength, double Loss, double LossRatio, bool Passes, IReadOnlyList<SteeringSample> Samples);

/// <summary>Steering one model with s · v, v = δ/‖δ‖ · typical norm, added at every position (methods §11.4), with the strength
/// chosen by <see cref="Rule"/>; <see cref="RuleMet"/> is false when no strength passed (the smallest is then reported).
/// <see cref="UnsteeredLoss"/> is the rule's yardstick: the judge (base) model's per-token loss on its own unsteered samples.</summary>
public sealed record SteeringReading(string Model, double Strength, bool RuleMet, string Rule, double VectorNorm, double UnsteeredLoss,
    IReadOnlyList<SteeringSample> Samples, IReadOnlyList<SteeringSample> Unsteered, IReadOnlyList<SteeringLevel> Sweep);

/// <summary>The mean difference at one layer, context and position, with its readers.</summary>
/// <param name="Context">"text" or "assistant_start".</param>
/// <param name="Position">From the start of the sample (BOS included) for "text"; relative to the first assistant token for "assistant_start".</param>
/// <param name="TokenId">The token most often at that position (ties: lowest id).</param>
public sealed record AdlEntry(int Layer, string Context, int Position, int TokenId, string Token, long Count,
    float[] Delta, float[] BaseMean, float[] FtMean,
    LogitLensReading FineTunedLens, LogitLensReading BaseLens, PatchscopeReading? Patchscope, IReadOnlyList<SteeringReading> Steering)
{
    public double DeltaNorm => System.Numerics.Tensors.TensorPrimitives.Norm(Delta);
    /// <summary>Projection ablation of δ's direction, when asked for.</summary>
    public AblationReading? Ablation { get; init; }
}

/// <summary>Typical activation norm of each model at a layer: mean ‖h‖ over positions ≥ NormSkip (methods §11.1).</summary>
public sealed record LayerNorms(int Layer, double Base, double FineTuned, long Tokens);

/// <summary>What one ADL run produced. <see cref="UpToDate"/>: the results folder already held this run (nothing recomputed,
/// <see cref="Entries"/> empty).</summary>
public sealed record AdlResult(IReadOnlyList<AdlEntry> Entries, IReadOnlyList<LayerNorms> Norms, long TextSamples, long ChatSamples,
    IReadOnlyDictionary<string, long> Skipped, double MeanSeconds, double ReaderSeconds, bool UpToDate)
{
    /// <summary>Which data the means were taken over, in words (the data sources, or the built-in general text).</summary>
    public string Data { get; init; } = "";
}

/// <summary>Progress of a run: a phase ("means", "readers"), how far it is and how far it goes.</summary>
public readonly record struct AdlProgress(string Phase, long Done, long Total);

using Finetrace.Activations;
using Finetrace.Tensors;

namespace Finetrace.Dictionaries;

/// <summary>The three dictionaries <c>train</c> makes.</summary>
public enum DictionaryKind { Crosscoder, Sae, DiffSae }

/// <summary>Which rule set fills the settings a <see cref="TrainingRecipe"/> leaves null.</summary>
public enum RecipePreset
{
    /// <summary>Finetrace's defaults: learning rate and dead-latent window scaled with the run (see
    /// <see cref="RecipeDefaults"/>); chosen on the synthetic benchmark (bench/experiments/recipe-defaults.md).</summary>
    Finetrace,
    /// <summary>The paper's settings (Minder et al. 2025, methods.md §2.8): un-squared l2 loss for crosscoders, lr 1e-4,
    /// batch 2048, warm-up 1000, no decay, AuxK 1/32 with a 10M-token dead window, threshold EMA from step 1000, same
    /// init for all models with decoder = encoderᵀ (norm 1 for BatchTopK, 0.005 for L1), k = 100, μ = 0.041.</summary>
    Minder2025,
}

/// <summary>Why a recipe cannot be prepared.</summary>
public enum RecipeProblem
{
    /// <summary>Model, or Minuend/Subtrahend, name a model the store does not hold (or the same model twice).</summary>
    ModelOutOfRange,
    /// <summary>Crosscoders train as BatchTopK or ReLU only (no file format for other crosscoder activations).</summary>
    ActivationNotForCrosscoder,
    /// <summary>ReLU / JumpReLU without a sparsity coefficient L1.</summary>
    NeedsSparsityCoefficient,
    /// <summary>HoldoutTokens leaves no training rows.</summary>
    HoldoutTooLarge,
    /// <summary>Sources name a model or layer the store does not hold, or are given for a dictionary other than a crosscoder.</summary>
    SourceOutOfRange,
}

/// <summary>A recipe setting that is invalid or does not fit the others. <see cref="Setting"/> is the
/// <see cref="TrainingRecipe"/> property's name and <see cref="Value"/> its value; callers word it for their users
/// (the CLI as a flag).</summary>
public sealed class RecipeSettingException(RecipeProblem problem, string setting, object? value, string detail) : Exception($"{setting} = {value}: {detail}")
{
    public RecipeProblem Problem { get; } = problem;
    public string Setting { get; } = setting;
    public object? Value { get; } = value;
    public string Detail { get; } = detail;
}

/// <summary>
/// Everything that decides a dictionary training run, with null meaning "the recipe's default for this kind":
/// the data each kind reads, the learning-rate rule, warm-up, clipping, threshold start, initialisation scale and the
/// seed mixing. <see cref="Prepare"/> turns it into a ready <see cref="TrainingSetup"/> (dictionary initialised,
/// trainer options resolved, activation source open). The CLI only parses flags into this record.
/// </summary>
public sealed record TrainingRecipe
{
    public required DictionaryKind Kind { get; init; }
    public required int Layer { get; init; }
    /// <summary>The rules for every setting left null.</summary>
    public RecipePreset Preset { get; init; } = RecipePreset.Finetrace;
    /// <summary>Active latents per token (TopK family); default 100.</summary>
    public int? K { get; init; }
    /// <summary>μ of a ReLU/JumpReLU dictionary; giving it makes ReLU the default activation.</summary>
    public float? L1 { get; init; }
    /// <summary>Default: BatchTopK, or ReLU when <see cref="L1"/> is given.</summary>
    public Sparsity? Activation { get; init; }
    public int? DictSize { get; init; }
    /// <summary>F = Expansion × D when <see cref="DictSize"/> is absent; default 2 for a diff-SAE, 32 otherwise.</summary>
    public int? Expansion { get; init; }
    /// <summary>Training tokens (0: one pass over the store).</summary>
    public long Tokens { get; init; }
    public int Batch { get; init; } = 2048;
    /// <summary>Default: <see cref="RecipeDefaults.LearningRate"/>.</summary>
    public double? Lr { get; init; }
    /// <summary>Default min(1000, steps/10 + 1); 1000 under <see cref="RecipePreset.Minder2025"/>.</summary>
    public int? Warmup { get; init; }
    public long? DecayStart { get; init; }
    /// <summary>Default mse; l2 for a <see cref="RecipePreset.Minder2025"/> crosscoder (the paper's un-squared loss).</summary>
    public ReconLoss? Loss { get; init; }
    /// <summary>Crosscoders only (SAEs always use none).</summary>
    public CodeNormalization CodeNormalization { get; init; } = CodeNormalization.Crosscoder;
    public bool SqrtL1 { get; init; }
    public int L1Warmup { get; init; }
    public int? KMax { get; init; }
    public int KAnnealSteps { get; init; } = 2000;
    /// <summary>AuxK coefficient; default <see cref="RecipeDefaults.AuxKAlpha"/>.</summary>
    public float? AuxKAlpha { get; init; }
    /// <summary>A latent is dead after this many tokens without firing; default <see cref="RecipeDefaults.DeadTokens"/>.</summary>
    public long? DeadTokens { get; init; }
    /// <summary>k_aux, the dead latents AuxK uses per token; default D/2.</summary>
    public int? AuxKLatents { get; init; }
    /// <summary>Default min(1000, steps/2); 1000 under <see cref="RecipePreset.Minder2025"/>.</summary>
    public long? ThresholdStart { get; init; }
    /// <summary>Global gradient-norm clip; null: 1 for the TopK family, off for L1; 0: off.</summary>
    public float? Clip { get; init; }
    /// <summary>Crosscoder initial encoder/decoder row norm; null: 0.005 for a ReLU crosscoder, 1 otherwise.</summary>
    public float? NormInitScale { get; init; }
    /// <summary>Normalise activations to this RMS (0: raw activations).</summary>
    public float TargetRms { get; init; }
    /// <summary>SAE: the store model read.</summary>
    public int Model { get; init; } = 1;
    /// <summary>Diff-SAE: a and b of a − b.</summary>
    public int Minuend { get; init; } = 1;
    public int Subtrahend { get; init; }
    public string Filter { get; init; } = "all";
    public ulong Seed { get; init; }
    /// <summary>Store rows held out of training at the end of the store (moved forward to the next sequence start);
    /// null: 5% of the store, at most 1,000,000 rows; 0: none.</summary>
    public long? HoldoutTokens { get; init; }
    /// <summary>Crosscoder research variant (methods.md §16): dedicated exclusive blocks, designated shared latents,
    /// diff-aware loss. Null or plain: the standard crosscoder.</summary>
    public CrosscoderVariant? Variant { get; init; }
    /// <summary>Crosscoder over these (store model, store layer) sources, acausal (every source in and out; methods.md §16);
    /// null: every store model at <see cref="Layer"/>.</summary>
    public (int Model, int Layer)[]? Sources { get; init; }
    /// <summary>Validation on the held-out rows every this many steps and at the end (0: only at the end).</summary>
    public long ValidateEvery { get; init; } = 1000;
    /// <summary>Held-out tokens each validation evaluates.</summary>
    public long ValidationTokens { get; init; } = 20_000;

    /// <summary>The first held-out store row for <paramref name="store"/>, or null when nothing is held out: the first
    /// sequence start at or after Tokens − holdout (so spliced evaluation finds whole sequences), else that row itself.</summary>
    public long? HeldOutFrom(ActivationStore store)
    {
        long h = HoldoutTokens ?? Math.Min(1_000_000, store.Tokens / 20);
        if (h <= 0) return null;
        if (h >= store.Tokens) throw new RecipeSettingException(RecipeProblem.HoldoutTooLarge, nameof(HoldoutTokens), h, $"the store has only {store.Tokens:N0} tokens");
        long want = store.Tokens - h;
        var starts = store.SequenceRanges();
        int i = Array.BinarySearch(starts, want);
        if (i < 0) i = ~i;
        return i < starts.Length - 1 && starts[i] > 0 ? starts[i] : want;
    }

    /// <summary>The activation after defaults.</summary>
    public Sparsity ResolvedActivation => Activation ?? (ResolvedL1 is not null ? Sparsity.Relu : Sparsity.BatchTopK);

    /// <summary>μ after defaults: the paper's 0.041 for a <see cref="RecipePreset.Minder2025"/> ReLU crosscoder.</summary>
    public float? ResolvedL1 => L1 ?? (Preset == RecipePreset.Minder2025 && Kind == DictionaryKind.Crosscoder && Activation is Sparsity.Relu ? RecipeDefaults.MinderMu : null);

    /// <summary>The reconstruction loss after defaults.</summary>
    public ReconLoss ResolvedLoss => Loss ?? (Preset == RecipePreset.Minder2025 && Kind == DictionaryKind.Crosscoder ? ReconLoss.L2 : ReconLoss.Mse);

    /// <summary>Settings that are valid but probably not what the user meant; callers show them as warnings.</summary>
    public IReadOnlyList<RecipeWarning> Warnings()
    {
        var w = new List<RecipeWarning>();
        // μ values from the paper and the toolkit were tuned with the un-squared l2 loss: under mse the same μ weighs the
        // penalty against ‖e‖² instead of ‖e‖ (a different, data-scale-dependent trade-off), so it trains another model
        if (ResolvedL1 is float mu && ResolvedActivation is Sparsity.Relu or Sparsity.JumpRelu && ResolvedLoss != ReconLoss.L2 && Kind == DictionaryKind.Crosscoder)
            w.Add(new RecipeWarning(RecipeWarningKind.MuTunedForOtherLoss, nameof(L1), mu,
                $"μ = {mu} with the {TrainingSetup.LossName(ResolvedLoss)} loss: published crosscoder μ values (Minder et al. 0.041, 0.036, 0.021; toolkit 0.1) were tuned " +
                "for the un-squared l2 loss, so this trains a differently regularised model; use the l2 loss (or the minder2025 recipe) to reproduce them, or tune μ for this loss"));
        return w;
    }

    /// <summary>What the dictionary of this recipe reads from a store at <see cref="Layer"/>.</summary>
    public DictionaryInput Input(string? storePath = null)
    {
        var input = Kind switch
        {
            DictionaryKind.Crosscoder when Sources is { Length: > 0 } s => DictionaryInput.FromSources(s),
            DictionaryKind.Crosscoder => DictionaryInput.Paired(Layer),
            DictionaryKind.Sae => DictionaryInput.SingleModel(Layer, Model),
            _ => DictionaryInput.Difference(Layer, Minuend, Subtrahend),
        };
        return input with { Store = storePath, Filter = Filter };
    }

    /// <summary>Checks the settings, opens the data, builds and initialises the dictionary and resolves the trainer
    /// options. The returned setup owns the open source.</summary>
    public TrainingSetup Prepare(ActivationStore store)
    {
        if (Sources is { Length: > 0 } srcs)
        {
            if (Kind != DictionaryKind.Crosscoder) throw new RecipeSettingException(RecipeProblem.SourceOutOfRange, nameof(Sources), SourceBatches.Format(srcs), "sources apply to crosscoders only");
            foreach (var (m, l) in srcs)
                if ((uint)m >= (uint)store.Models || !store.Layers.Contains(l))
                    throw new RecipeSettingException(RecipeProblem.SourceOutOfRange, nameof(Sources), SourceBatches.Format(srcs),
                        $"source {m}:{l} is not in the store (models 0..{store.Models - 1}, layers {string.Join(", ", store.Layers)})");
            if (srcs.Distinct().Count() != srcs.Length) throw new RecipeSettingException(RecipeProblem.SourceOutOfRange, nameof(Sources), SourceBatches.Format(srcs), "a source appears twice");
        }
        DictionaryInput input;
        try { input = Input(Path.GetFullPath(store.Directory)) with { Site = store.Settings.Site }; input.CheckModels(store.Models); }
        catch (DictionaryInputException e)
        {
            throw Kind == DictionaryKind.Sae ? new RecipeSettingException(RecipeProblem.ModelOutOfRange, nameof(Model), Model, e.Problem)
                : new RecipeSettingException(RecipeProblem.ModelOutOfRange, nameof(Minuend), $"{Minuend} − {Subtrahend}", e.Problem);
        }
        var a = ResolvedActivation;
        if (Kind == DictionaryKind.Crosscoder && a is Sparsity.TopK or Sparsity.JumpRelu)
            throw new RecipeSettingException(RecipeProblem.ActivationNotForCrosscoder, nameof(Activation), a, "crosscoders are trained as BatchTopK or ReLU; there is no file format for other crosscoder activations");
        if (a is Sparsity.Relu or Sparsity.JumpRelu && ResolvedL1 is null)
            throw new RecipeSettingException(RecipeProblem.NeedsSparsityCoefficient, nameof(Activation), a, $"{a} needs a sparsity coefficient (L1)");

        var filter = MaskFilter.Parse(Filter);
        long? heldOut = HeldOutFrom(store);
        input = input with { HeldOutFrom = heldOut };
        int layer = input.Layer;
        var bo = new StoreBatchOptions { Layer = layer, Seed = Seed, Filter = filter, Cycle = true, EndRow = heldOut };
        var source = input.Open(store, bo);
        InputBatches? validation = null;
        try
        {
            if (heldOut is long from)
                validation = input.Open(store, new StoreBatchOptions { Layer = layer, Filter = filter, Shuffle = false, Cycle = false, MixSources = false, FirstRow = from });
            int kk = K ?? 100;
            int D = store.DModel;
            int F = DictSize ?? (Expansion ?? (Kind == DictionaryKind.DiffSae ? 2 : 32)) * D;
            bool sae = Kind != DictionaryKind.Crosscoder;
            var cn = sae ? CodeNormalization.None : CodeNormalization;
            bool topk = a is Sparsity.BatchTopK or Sparsity.TopK;
            var dict = new SparseDictionary(source.Models, D, F, a, cn, sae, topk ? kk : 0);
            var rng = new SplitMix64(Seed * 0x9E3779B97F4A7C15UL + 17);
            CrosscoderInit? init = null;
            if (sae) Initialization.Sae(dict, rng);
            else
            {
                init = new CrosscoderInit(SameInitForAllModels: true, NormInitScale ?? (a == Sparsity.Relu ? 0.005f : 1f));   // both presets
                Initialization.Crosscoder(dict, rng, init.NormInitScale, init.SameInitForAllModels);
                if (Variant is { IsPlain: false } v)
                {
                    v.Validate(dict.Models, F, false, ResolvedLoss);
                    v.Apply(dict);
                }
            }
            if (sae && Variant is { IsPlain: false }) throw new CrosscoderVariantException(nameof(Variant), "crosscoder variants apply to crosscoders only");

            var stats = NormalizerStatistics.None;
            if (TargetRms > 0)
            {
                // statistics of the training rows only (the source ends before the held-out rows; the store's are cut there):
                // validation and eval on the held-out rows must not have shaped the normaliser. A sample reads at most one
                // epoch, so a small store counts each training row once. Several layers (sources): the store's statistics
                // are per layer, so sample the rows (one normaliser per source).
                bool sample = Kind == DictionaryKind.DiffSae || filter != MaskFilter.All || input.Kind == InputKind.Sources;
                dict.Normalizer = sample
                    ? NormalizerStats.FromSample(source, TargetRms, Math.Min(source.RowsPerEpoch, Math.Min(1_000_000, 64L * Batch)))
                    : NormalizerStats.FromStore(store, layer, input.StoreModels(store.Models), TargetRms, endRow: heldOut);
                stats = sample ? NormalizerStatistics.Sample : NormalizerStatistics.TrainingRows;
            }
            input = input with { TargetRms = TargetRms > 0 ? TargetRms : null, NormalizerStatistics = stats };

            long steps = Math.Max(1, (Tokens > 0 ? Tokens : heldOut ?? store.Tokens) / Batch);
            bool minder = Preset == RecipePreset.Minder2025;
            var opts = new TrainerOptions
            {
                Loss = ResolvedLoss,
                Lr = Lr ?? RecipeDefaults.LearningRate(Preset, topk, F, steps),
                WarmupSteps = Warmup ?? (minder ? 1000 : (int)Math.Min(1000, steps / 10 + 1)), DecayStart = DecayStart, TotalSteps = steps,
                ClipNorm = Clip is null ? (topk ? 1f : null) : Clip == 0 ? null : Clip,
                SparsityCoef = ResolvedL1 ?? 0, Penalty = SqrtL1 ? SparsityPenalty.SqrtL1 : SparsityPenalty.L1, SparsityWarmupSteps = L1Warmup,
                AuxKAlpha = AuxKAlpha ?? RecipeDefaults.AuxKAlpha(Preset), DeadTokens = DeadTokens ?? RecipeDefaults.DeadTokens(Preset, steps * Batch, Batch), TopKAux = AuxKLatents,
                ThresholdStartStep = ThresholdStart ?? (minder ? 1000 : Math.Min(1000, steps / 2)),
                GeometricMedianInit = topk,
                // SAEs keep unit-norm decoder rows whatever the activation: with a free decoder norm an L1 (or L0) penalty is
                // scale-degenerate (shrink f, grow d_j: same reconstruction, smaller penalty), and c_j = 1 in Firing's rule
                UnitNormDecoder = sae, KMax = KMax, KAnnealSteps = KAnnealSteps,
                Variant = Variant is { IsPlain: false } ? Variant : null,
            };
            return new TrainingSetup(this, input, dict, opts, new DictionaryTrainer(dict, opts, Seed), source, steps) { Init = init, Validation = validation };
        }
        catch
        {
            source.Dispose();
            validation?.Dispose();
            throw;
        }
    }

    /// <summary>Preset names as written in finetrace.json (and typed on the command line).</summary>
    public static string PresetName(RecipePreset p) => p switch { RecipePreset.Minder2025 => "minder2025", _ => "finetrace" };

    /// <summary>Kind names as written in finetrace.json (and typed on the command line).</summary>
    public static string KindName(DictionaryKind kind) => kind switch { DictionaryKind.Crosscoder => "crosscoder", DictionaryKind.Sae => "sae", _ => "diff-sae" };
}

/// <summary>What a <see cref="RecipeWarning"/> is about.</summary>
public enum RecipeWarningKind
{
    /// <summary>A sparsity coefficient μ used with a reconstruction loss other than the one published μ values were tuned for.</summary>
    MuTunedForOtherLoss,
}

/// <summary>A valid but suspicious combination of settings; <see cref="Setting"/> names the <see cref="TrainingRecipe"/>
/// property, callers word it for their users.</summary>
public sealed record RecipeWarning(RecipeWarningKind Kind, string Setting, object? Value, string Detail);

/// <summary>
/// The rules that fill a recipe's unset learning rate and dead-latent window. <see cref="RecipePreset.Minder2025"/> keeps
/// the paper's constants; <see cref="RecipePreset.Finetrace"/> scales them with the run, because the published constants
/// were tuned for ~100k-step runs and, in a short run, leave most latents unlearned (measured on the synthetic benchmark:
/// bench/experiments/recipe-defaults.md).
/// </summary>
public static class RecipeDefaults
{
    /// <summary>The paper's μ for the L1 crosscoder (Gemma 2 2B, l2 loss).</summary>
    public const float MinderMu = 0.041f;
    /// <summary>dictionary_learning's dead-latent window.</summary>
    public const long ReferenceDeadTokens = 10_000_000;

    /// <summary>Learning rate. Minder2025: 1e-4. Finetrace: the TopK family uses Gao et al.'s 2e-4/√(F/2^14), raised for
    /// runs shorter than <see cref="ReferenceSteps"/> by √(ReferenceSteps/steps) (Adam moves a weight ≈ lr per step, so a
    /// short run needs larger steps to move latents as far), raised no further than <see cref="MaxLearningRate"/>; ReLU
    /// dictionaries keep 1e-4.</summary>
    public static double LearningRate(RecipePreset preset, bool topk, int dictSize, long steps)
    {
        if (preset == RecipePreset.Minder2025 || !topk) return 1e-4;
        double gao = 2e-4 / Math.Sqrt(dictSize / 16384.0);
        double scaled = gao * Math.Max(1, Math.Sqrt(ReferenceSteps / (double)Math.Max(1, steps)));
        return Math.Max(gao, Math.Min(MaxLearningRate, scaled));   // the cap limits the raise; it never goes below Gao
    }

    /// <summary>Cap of the run-length scaling: on the synthetic benchmark 1e-2 recovered fewer features than 4e-3.</summary>
    public const double MaxLearningRate = 4e-3;

    /// <summary>Run length (steps) at which the Finetrace learning rate equals Gao et al.'s.</summary>
    public const double ReferenceSteps = 75_000;

    /// <summary>Tokens without firing after which a latent counts as dead (and AuxK trains it). Minder2025: 10M.
    /// Finetrace: runTokens / <see cref="DeadWindowFraction"/>, at least 10 batches, at most 10M — a window the run can
    /// actually reach (with 10M, a run shorter than 10M tokens never marks a latent dead, so AuxK never acts).</summary>
    public static long DeadTokens(RecipePreset preset, long runTokens, int batch)
    {
        if (preset == RecipePreset.Minder2025) return ReferenceDeadTokens;
        return Math.Clamp(runTokens / DeadWindowFraction, 10L * batch, ReferenceDeadTokens);
    }

    /// <summary>AuxK coefficient. Minder2025: the reference 1/32. Finetrace: 1/4 — with the short dead window, 1/32 still
    /// left half the exclusive features unlearned on the synthetic benchmark; 1/4 recovered 82% of them.</summary>
    public static float AuxKAlpha(RecipePreset preset) => preset == RecipePreset.Minder2025 ? 1f / 32 : 0.25f;

    /// <summary>The Finetrace dead window is this fraction of the run's tokens.</summary>
    public const long DeadWindowFraction = 300;
}

/// <summary>A prepared training run: the initialised dictionary, its trainer, the open source and what it reads.</summary>
public sealed class TrainingSetup(TrainingRecipe recipe, DictionaryInput input, SparseDictionary dict, TrainerOptions options, DictionaryTrainer trainer, InputBatches source, long steps) : IDisposable
{
    public TrainingRecipe Recipe { get; } = recipe;
    public DictionaryInput Input { get; } = input;
    public SparseDictionary Dict { get; } = dict;
    public TrainerOptions Options { get; } = options;
    public DictionaryTrainer Trainer { get; } = trainer;
    public InputBatches Source { get; } = source;
    public long Steps { get; } = steps;
    /// <summary>How a crosscoder was initialised (null for SAEs); written into config.json.</summary>
    public CrosscoderInit? Init { get; init; }
    /// <summary>The held-out rows (in store order), or null when nothing is held out.</summary>
    public InputBatches? Validation { get; init; }

    /// <summary>The training loop writing into <paramref name="outDir"/>; steps run on <paramref name="device"/> when given.</summary>
    public TrainingRun Run(string outDir, long checkpointEvery, bool resume, bool overwrite = false, ITrainingDevice? device = null) =>
        new(outDir, Trainer, Source, new RunOptions
        {
            BatchSize = Recipe.Batch, Steps = Steps, CheckpointEvery = checkpointEvery, Resume = resume, Overwrite = overwrite,
            Validation = Validation, ValidateEvery = Recipe.ValidateEvery, ValidationTokens = Recipe.ValidationTokens, Device = device,
        });

    /// <summary>finetrace.json fields for the finished dictionary <paramref name="trained"/> (the run's, which after a
    /// resume is the checkpoint's).</summary>
    public Dictionary<string, object?> SidecarFields(SparseDictionary trained)
    {
        var r = Recipe;
        var fields = new Dictionary<string, object?>
        {
            ["input"] = Input.ToJson(),
            ["site"] = new { layer = Input.Layer, store = Input.Store, hook_name = Input.HookName },
            ["training"] = new
            {
                kind = TrainingRecipe.KindName(r.Kind), recipe = TrainingRecipe.PresetName(r.Preset), activation = trained.Sparsity.ToString().ToLowerInvariant(), loss_mode = LossName(Options.Loss),
                code_normalization = trained.CodeNormalization.ToString().ToUpperInvariant(), k = trained.K, l1 = r.ResolvedL1,
                sqrt_l1 = r.SqrtL1, lr = Options.Lr, warmup_steps = Options.WarmupSteps, decay_start = Options.DecayStart, steps = Steps, batch = r.Batch,
                seed = r.Seed, target_rms = r.TargetRms > 0 ? r.TargetRms : (float?)null, normaliser_space = r.TargetRms > 0 ? "normalised (buffers saved / folded)" : "raw",
                models = Input.StoreModels(trained.Models), filter = r.Filter,
            },
        };
        if (Options.Variant is { } v) fields["variant"] = v.ToJson();
        return fields;
    }

    public static string LossName(ReconLoss l) => l switch { ReconLoss.Mse => "mse", ReconLoss.L2 => "l2", _ => "mse-mean-models" };

    public void Dispose() { Source.Dispose(); Validation?.Dispose(); }
}

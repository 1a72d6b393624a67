using Finetrace.Tensors;
using System.CommandLine;
using System.Diagnostics;
using Finetrace.Activations;
using Finetrace.Bench;
using Finetrace.Cuda;
using Finetrace.Dictionaries;
using Spectre.Console;

namespace Finetrace.Cli.Commands;

/// <summary><c>finetrace train crosscoder|sae|diff-sae</c>: train a dictionary on an activation store.</summary>
public sealed class TrainCommand : ICliCommand
{
    public Command Build()
    {
        var train = new Command("train", "Train a crosscoder, an SAE on one model, or a diff-SAE (fine-tuned − base) on an activation store");
        train.Subcommands.Add(Sub("crosscoder", "A crosscoder over every model of the store (BatchTopK with --k, L1 with --l1)"));
        train.Subcommands.Add(Sub("sae", "An SAE on one model's activations (--model)"));
        train.Subcommands.Add(Sub("diff-sae", "An SAE on fine-tuned − base activations (--minuend/--subtrahend)"));
        return train;
    }

    static Command Sub(string kind, string description)
    {
        var store = new Option<string>("--store") { Description = "Activation store folder", Required = true };
        var layer = new Option<int>("--layer") { Description = "Layer number in the store", Required = true };
        var outDir = new Option<string>("--out") { Description = "Output folder (dictionary, metrics.jsonl, checkpoint/)", Required = true };
        var k = new Option<int?>("--k") { Description = "Active latents per token (BatchTopK / TopK); default 100 unless --l1 is given" };
        var l1 = new Option<float?>("--l1") { Description = "L1 sparsity coefficient μ (ReLU dictionary instead of TopK)" };
        var activation = new Option<string?>("--activation") { Description = "batchtopk (default with --k), topk, relu (default with --l1), jumprelu" };
        var dictSize = new Option<int?>("--dict-size") { Description = "Number of latents F" };
        var expansion = new Option<int>("--expansion") { Description = "F = expansion × D (when --dict-size is not given)", DefaultValueFactory = _ => kind == "diff-sae" ? 2 : 32 };
        var tokens = new Option<long>("--tokens") { Description = "Training tokens (steps = tokens / batch); default one pass over the store" };
        var batch = new Option<int>("--batch") { Description = "Tokens per step", DefaultValueFactory = _ => 2048 };
        var recipeOpt = new Option<string>("--recipe") { Description = "Defaults for every option not given: finetrace (lr and dead-latent window scaled with the run) or minder2025 (the paper's exact settings: l2 loss, lr 1e-4, warm-up 1000, AuxK with a 10M-token dead window, k 100 or μ 0.041)", DefaultValueFactory = _ => "finetrace" };
        var lr = new Option<double?>("--lr") { Description = "Learning rate (finetrace: g·max(1, √(75000/steps)) for the TopK family, g = 2e-4/√(F/2^14), raised no further than 4e-3; 1e-4 otherwise; minder2025: 1e-4)" };
        var warmup = new Option<int?>("--warmup") { Description = "Linear LR warm-up steps (default 1000, at most a tenth of the run)" };
        var decay = new Option<long?>("--decay-start") { Description = "Step where a linear LR decay to 0 begins" };
        var loss = new Option<string?>("--loss") { Description = "mse (Σ_m‖e‖², default), l2 (un-squared, dictionary_learning-compatible; minder2025's crosscoder default), mse-mean-models" };
        var codeNorm = new Option<string>("--code-norm") { Description = "Crosscoder code normalisation: crosscoder, sae, mixed, none, decoupled (per-model top-k and thresholds with batchtopk)", DefaultValueFactory = _ => "crosscoder" };
        var sqrtL1 = new Option<bool>("--sqrt-l1") { Description = "Penalise Σ sqrt(f·c) instead of Σ f·c" };
        var l1Warmup = new Option<int>("--l1-warmup") { Description = "Ramp μ linearly from 0 over this many steps", DefaultValueFactory = _ => 0 };
        var kMax = new Option<int?>("--k-max") { Description = "Anneal k from this value down to --k" };
        var kAnneal = new Option<int>("--k-anneal-steps") { Description = "Steps of k annealing", DefaultValueFactory = _ => 2000 };
        var auxk = new Option<float?>("--auxk-alpha") { Description = "AuxK coefficient (finetrace: 1/4; minder2025: 1/32)" };
        var deadTokens = new Option<long?>("--dead-tokens") { Description = "A latent is dead (AuxK trains it) after this many tokens without firing (finetrace: run tokens / 300, at least 10 batches, at most 10M; minder2025: 10M)" };
        var auxkK = new Option<int?>("--auxk-k") { Description = "Dead latents AuxK uses per token (default d_model / 2)" };
        var thresholdStart = new Option<long?>("--threshold-start") { Description = "Start the inference-threshold EMA after this step (default 1000, at most half the run)" };
        var clip = new Option<float>("--clip") { Description = "Global gradient-norm clip (0 = off; -1 = the recipe's choice: 1 for the TopK family, off for L1)", DefaultValueFactory = _ => -1 };
        var normInit = new Option<float?>("--norm-init-scale") { Description = "Initial encoder/decoder row norm of a crosscoder (default 0.005 with --l1, 1 otherwise)" };
        var targetRms = new Option<float>("--target-rms") { Description = "Normalise activations to this RMS using the statistics of the training rows (held-out rows excluded; 0 = raw activations)", DefaultValueFactory = _ => 0f };
        var model = new Option<int>("--model") { Description = "sae: which model's activations (0 = base)", DefaultValueFactory = _ => 1 };
        var minuend = new Option<int>("--minuend") { Description = "diff-sae: model a of a − b", DefaultValueFactory = _ => 1 };
        var subtrahend = new Option<int>("--subtrahend") { Description = "diff-sae: model b of a − b", DefaultValueFactory = _ => 0 };
        var filter = new Option<string>("--filter") { Description = "Token filter, e.g. '!bos' or 'assistant' (see store info)", DefaultValueFactory = _ => "all" };
        var seed = new Option<ulong>("--seed") { Description = "Seed for init and data order", DefaultValueFactory = _ => 0 };
        var ckpt = new Option<long>("--checkpoint-every") { Description = "Save a resumable checkpoint every N steps", DefaultValueFactory = _ => 1000 };
        var resume = new Option<bool>("--resume") { Description = "Continue from OUT/checkpoint bit-for-bit" };
        var overwrite = new Option<bool>("--overwrite") { Description = "Replace a finished dictionary or checkpoint already in --out" };
        var holdout = new Option<long?>("--holdout") { Description = "Tokens held out of training at the end of the store, for validation and eval (default 5% of the store, at most 1,000,000; 0 = none)" };
        var validateEvery = new Option<long>("--validate-every") { Description = "Log held-out FVE/L0/dead into metrics.jsonl every N steps (and at the end; 0 = only at the end)", DefaultValueFactory = _ => 1000 };
        var validationTokens = new Option<long>("--validation-tokens") { Description = "Held-out tokens per validation", DefaultValueFactory = _ => 20_000 };
        var dedicated = new Option<string?>("--dedicated") { Description = "Dedicated feature crosscoder: exclusive latent blocks per model, e.g. base:64,ft:64 (or 0:64,1:64); exclusive latents read and write only their model, the rest are shared" };
        var designated = new Option<int>("--designated") { Description = "Designated shared latents: the last N latents, their decoder rows tied across models", DefaultValueFactory = _ => 0 };
        var designatedPenalty = new Option<float>("--designated-penalty") { Description = "Sparsity-penalty multiplier of the designated latents (ReLU crosscoders, e.g. 0.1)", DefaultValueFactory = _ => 1f };
        var untied = new Option<bool>("--untied-designated") { Description = "Do not tie the designated latents' decoder rows (penalty multiplier only)" };
        var diffLambda = new Option<double>("--diff-lambda") { Description = "Diff-aware loss ‖e_base‖² + ‖e_ft‖² + 2λ⟨e_base, e_ft⟩ with λ in [−1, 0] (−1: only the difference is reconstructed; needs --loss mse and two models)", DefaultValueFactory = _ => 0 };
        var sourcesOpt = new Option<string?>("--sources") { Description = "Crosscoder over (model, layer) sources of the store, acausal, e.g. 0:2,1:2,0:3,1:3 (default: every model at --layer)" };
        var device = new DeviceOptions();
        // The shared wording speaks of the forward and defaults cuda to bf16; training keeps fp32 parameters.
        device.Device.Description = "Where training runs: cpu (the default and the reference), cuda (the first NVIDIA GPU: BatchTopK/TopK " +
            "dictionaries; other recipes are refused) or ilgpu-cpu (the device code on ILGPU's CPU accelerator: slow, for checking). " +
            "Default: $FINETRACE_DEVICE when set, else cpu";
        device.Precision.Description = "Encoder-product precision on a device: fp32 (the default; within 1e-5 of the CPU step) or tf32 " +
            "(tensor cores, fp32 accumulation); bf16 is refused (parameters and Adam state stay fp32)";
        var cmd = new Command(kind, description);
        if (kind == "crosscoder") foreach (var o in new Option[] { sourcesOpt, dedicated, designated, designatedPenalty, untied, diffLambda }) cmd.Options.Add(o);
        foreach (var o in new Option[] { store, layer, outDir, recipeOpt, k, l1, activation, dictSize, expansion, tokens, batch, lr, warmup, decay, loss, codeNorm, sqrtL1, l1Warmup, kMax, kAnneal, auxk, deadTokens, auxkK, thresholdStart, clip, normInit, targetRms, filter, seed, ckpt, resume, overwrite, holdout, validateEvery, validationTokens })
            cmd.Options.Add(o);
        if (kind == "sae") cmd.Options.Add(model);
        if (kind == "diff-sae") { cmd.Options.Add(minuend); cmd.Options.Add(subtrahend); }
        device.AddTo(cmd);
        cmd.SetAction(r =>
        {
            var selection = TrainingDevice(device, r);   // a bad --device / --precision fails before any work
            var recipe = new TrainingRecipe
            {
                Kind = kind switch { "crosscoder" => DictionaryKind.Crosscoder, "sae" => DictionaryKind.Sae, _ => DictionaryKind.DiffSae },
                Preset = ParsePreset(r.GetValue(recipeOpt)!),
                Layer = r.GetValue(layer), K = r.GetValue(k), L1 = r.GetValue(l1), Activation = ParseActivation(r.GetValue(activation)),
                DictSize = r.GetValue(dictSize), Expansion = r.GetValue(expansion), Tokens = r.GetValue(tokens), Batch = r.GetValue(batch),
                Lr = r.GetValue(lr), Warmup = r.GetValue(warmup), DecayStart = r.GetValue(decay), Loss = r.GetValue(loss) is string ls ? ParseLoss(ls) : null,
                CodeNormalization = ParseCodeNorm(r.GetValue(codeNorm)!), SqrtL1 = r.GetValue(sqrtL1), L1Warmup = r.GetValue(l1Warmup),
                KMax = r.GetValue(kMax), KAnnealSteps = r.GetValue(kAnneal), AuxKAlpha = r.GetValue(auxk), DeadTokens = r.GetValue(deadTokens), AuxKLatents = r.GetValue(auxkK),
                ThresholdStart = r.GetValue(thresholdStart), Clip = r.GetValue(clip) is var c && c < 0 ? null : c, NormInitScale = r.GetValue(normInit),
                TargetRms = r.GetValue(targetRms), Model = r.GetValue(model), Minuend = r.GetValue(minuend), Subtrahend = r.GetValue(subtrahend),
                Filter = r.GetValue(filter)!, Seed = r.GetValue(seed),
                HoldoutTokens = r.GetValue(holdout), ValidateEvery = r.GetValue(validateEvery), ValidationTokens = r.GetValue(validationTokens),
                Sources = r.GetValue(sourcesOpt) is string ss ? ParseSources(ss) : null,
                Variant = kind == "crosscoder" ? new CrosscoderVariant
                {
                    Exclusive = ParseDedicated(r.GetValue(dedicated)), Designated = r.GetValue(designated), DesignatedPenalty = r.GetValue(designatedPenalty),
                    TieDesignatedDecoder = !r.GetValue(untied), DiffLambda = r.GetValue(diffLambda),
                } : null,
            };
            foreach (var w in recipe.Warnings()) Console.Error.WriteLine($"warning: {Worded(w, recipe)}");
            using var st = ActivationStore.Open(r.GetValue(store)!);
            using var setup = Prepare(recipe, st);
            if (!selection.IsCpu) CheckDeviceRecipe(setup);
            using var deviceRun = DeviceRun.Open(selection, r.GetValue(device.Device) is { } dv ? $"--device {dv}" : $"{DeviceOptions.EnvironmentVariable}={Environment.GetEnvironmentVariable(DeviceOptions.EnvironmentVariable)}");
            var trainingDevice = deviceRun.Context is { } dc ? new DeviceTraining(dc) : null;
            if (trainingDevice is not null) Console.Error.WriteLine($"training on {selection.Device} ({selection.PrecisionName}, {trainingDevice.Name})");
            string dir = r.GetValue(outDir)!;
            TrainingRun run;
            try { run = setup.Run(dir, r.GetValue(ckpt), r.GetValue(resume), r.GetValue(overwrite), trainingDevice); }
            catch (OutputFolderInUseException e)
            {
                throw new ArgumentException($"--out {e.Directory} already holds {e.Found}: pass --resume to continue training it, --overwrite to replace it, or choose another --out", e);
            }
            Train(run, kind, setup.Steps, recipe.Batch);
            string format = DictionaryIO.Save(run.Trainer.Dict, dir, setup.SidecarFields(run.Trainer.Dict), init: setup.Init, saelensMetadata: SaelensMetadata.From(st, setup.Input));
            AnsiConsole.MarkupLine($"saved [bold]{Markup.Escape(dir)}[/] ({format} format), metrics in {Markup.Escape(run.MetricsPath)}");
            if (run.LastValidation is { } v)
                AnsiConsole.MarkupLine($"held-out rows from {setup.Input.HeldOutFrom:N0}: FVE {string.Join("/", v.Fve.Select(f => f.ToString("F3")))}, L0 {v.L0:F1}, dead {v.DeadFraction:P1} over {v.Tokens:N0} tokens (eval uses these rows by default)");
            return 0;
        });
        return cmd;
    }

    /// <summary>--device / --precision for training: fp32 products unless --precision says tf32 (the device trainer keeps
    /// fp32 parameters; its parity with the CPU is stated for fp32), bf16 refused.</summary>
    static DeviceSelection TrainingDevice(DeviceOptions device, ParseResult r)
    {
        var selection = device.Resolve(r);
        if (r.GetValue(device.Precision) is null) selection = selection with { Precision = GemmMode.Fp32 };
        if (selection.Precision == GemmMode.Bf16)
            throw new ArgumentException("--precision bf16: the device trainer computes its encoder product in fp32 or tf32 (parameters and Adam state stay fp32); use --precision fp32 (the default) or tf32");
        return selection;
    }

    /// <summary>The device trainer's refusals (DeviceTrainingUnsupportedException), worded as the flags that chose them.</summary>
    static void CheckDeviceRecipe(TrainingSetup setup)
    {
        try { DeviceTrainer.CheckSupported(setup.Dict, setup.Options); }
        catch (DeviceTrainingUnsupportedException e)
        {
            string flag = e.Setting switch
            {
                nameof(TrainingRecipe.Activation) => $"--activation {e.Value?.ToString()?.ToLowerInvariant()} (or --l1)",
                nameof(TrainingRecipe.CodeNormalization) => $"--code-norm {e.Value?.ToString()?.ToLowerInvariant()}",
                nameof(TrainingRecipe.Variant) => "--dedicated / --designated / --diff-lambda",
                nameof(TrainingRecipe.DictSize) => $"--dict-size {e.Value}",
                _ => e.Setting,
            };
            throw new ArgumentException($"{flag} with --device: {e.Detail}", e);
        }
    }

    /// <summary>The library's recipe errors, worded as the flags that set them.</summary>
    static TrainingSetup Prepare(TrainingRecipe recipe, ActivationStore st)
    {
        try { return recipe.Prepare(st); }
        catch (RecipeSettingException e)
        {
            string act = recipe.ResolvedActivation.ToString().ToLowerInvariant();
            throw new ArgumentException(e.Problem switch
            {
                RecipeProblem.ModelOutOfRange when recipe.Kind == DictionaryKind.Sae => $"--model {recipe.Model}: the store has models 0..{st.Models - 1}",
                RecipeProblem.ModelOutOfRange => $"--minuend {recipe.Minuend} --subtrahend {recipe.Subtrahend}: need two different models of 0..{st.Models - 1}",
                RecipeProblem.ActivationNotForCrosscoder => $"--activation {act}: crosscoders are trained as batchtopk (--k) or relu (--l1); there is no file format for other crosscoder activations",
                RecipeProblem.NeedsSparsityCoefficient => $"--activation {act} needs a sparsity coefficient: --l1 MU",
                RecipeProblem.HoldoutTooLarge => $"--holdout {e.Value}: {e.Detail}; hold out fewer tokens",
                RecipeProblem.SourceOutOfRange => $"--sources {e.Value}: {e.Detail}",
                _ => e.Message,
            }, e);
        }
        catch (CrosscoderVariantException e)
        {
            string flag = e.Setting switch
            {
                nameof(CrosscoderVariant.Exclusive) => "--dedicated", nameof(CrosscoderVariant.Designated) => "--designated",
                nameof(CrosscoderVariant.DesignatedPenalty) => "--designated-penalty", nameof(CrosscoderVariant.DiffLambda) => "--diff-lambda", _ => "crosscoder variant",
            };
            throw new ArgumentException($"{flag}: {e.Detail}", e);
        }
    }

    static (int, int)[] ParseSources(string s)
    {
        try { return SourceBatches.Parse(s); }
        catch (FormatException e) { throw new ArgumentException($"--sources {s}: {e.Message}"); }
    }

    /// <summary>--dedicated "base:N,ft:N" (or "0:N,1:N,…") → exclusive block sizes per model.</summary>
    internal static int[] ParseDedicated(string? s)
    {
        if (string.IsNullOrWhiteSpace(s)) return [];
        var sizes = new SortedDictionary<int, int>();
        foreach (var part in s.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries))
        {
            var kv = part.Split(':');
            int m = kv.Length != 2 ? -1 : kv[0] switch { "base" => 0, "ft" => 1, var t when int.TryParse(t, out int v) && v >= 0 => v, _ => -1 };
            if (m < 0 || !int.TryParse(kv[1], out int n) || n < 0 || sizes.ContainsKey(m))
                throw new ArgumentException($"--dedicated {s}: expected MODEL:N pairs such as base:64,ft:64 or 0:64,1:64 (each model once, N ≥ 0)");
            sizes[m] = n;
        }
        var a = new int[sizes.Keys.Max() + 1];
        foreach (var (m, n) in sizes) a[m] = n;
        return a;
    }

    /// <summary>A recipe warning in the flags' words.</summary>
    static string Worded(RecipeWarning w, TrainingRecipe recipe) => w.Kind switch
    {
        RecipeWarningKind.MuTunedForOtherLoss =>
            $"--l1 {w.Value} with --loss {TrainingSetup.LossName(recipe.ResolvedLoss)}: published crosscoder μ values (Minder et al. 0.041, 0.036, 0.021; toolkit 0.1) were tuned " +
            "for the un-squared l2 loss, so this trains a differently regularised model; add --loss l2 (or use --recipe minder2025) to reproduce them, or tune μ for this loss",
        _ => w.Detail,
    };

    static RecipePreset ParsePreset(string s) => s switch
    {
        "finetrace" => RecipePreset.Finetrace, "minder2025" => RecipePreset.Minder2025,
        _ => throw new ArgumentException($"--recipe {s}: expected finetrace or minder2025"),
    };

    static Sparsity? ParseActivation(string? s) => s switch
    {
        null => null, "batchtopk" => Sparsity.BatchTopK, "topk" => Sparsity.TopK, "relu" => Sparsity.Relu, "jumprelu" => Sparsity.JumpRelu,
        _ => throw new ArgumentException($"--activation {s}: expected batchtopk, topk, relu or jumprelu"),
    };

    static ReconLoss ParseLoss(string s) => s switch
    {
        "mse" => ReconLoss.Mse, "l2" => ReconLoss.L2, "mse-mean-models" => ReconLoss.MseMeanModels,
        _ => throw new ArgumentException($"--loss {s}: expected mse, l2 or mse-mean-models"),
    };

    static CodeNormalization ParseCodeNorm(string s) => s switch
    {
        "crosscoder" => CodeNormalization.Crosscoder, "sae" => CodeNormalization.Sae, "mixed" => CodeNormalization.Mixed, "none" => CodeNormalization.None,
        "decoupled" => CodeNormalization.Decoupled,
        _ => throw new ArgumentException($"--code-norm {s}: expected crosscoder, sae, mixed, none, decoupled"),
    };

    static void Train(TrainingRun run, string kind, long steps, int batch)
    {
        using var cts = new CancellationTokenSource();
        ConsoleCancelEventHandler onCancel = (_, e) => { e.Cancel = true; cts.Cancel(); };
        Console.CancelKeyPress += onCancel;
        var sw = Stopwatch.StartNew();
        long startStep = run.Trainer.StepCount;
        try
        {
            CliConsole.Progress($"train {kind}", steps, task =>
                {
                    task.Value = startStep;
                    run.Run(s =>
                    {
                        task.Value = s.Step + 1;
                        double tps = (s.Step + 1 - startStep) * (double)batch / sw.Elapsed.TotalSeconds;
                        string fve = string.Join("/", s.Fve.Select(v => v.ToString("F3")));
                        string parts = s.Sparsity != 0 ? $"recon {s.Recon:G4} sparsity {s.Sparsity:G4}" : $"recon {s.Recon:G4} auxk {s.AuxK:G3}";
                        task.Description = Markup.Escape($"step {s.Step + 1}/{steps} loss {s.Total:G4} ({parts}) L0 {s.L0:F1} FVE {fve} dead {s.DeadFraction:P1} {tps:N0} tok/s");
                    }, cts.Token);
                });
        }
        catch (TrainingDivergedException e)
        {
            throw new InvalidOperationException($"training diverged: the loss is {e.Loss} at step {e.Step}. Try a lower --lr, a longer --warmup, gradient clipping (--clip), " +
                "activation normalisation (--target-rms), or excluding extreme tokens such as BOS from the store (--filter); " +
                (e.CheckpointStep is long c ? $"the last good checkpoint (step {c}) is kept in {e.CheckpointDir}: resume from it with --resume after changing a setting" : "no checkpoint was written yet"), e);
        }
        catch (OperationCanceledException)
        {
            throw new OperationCanceledException($"interrupted at step {run.Trainer.StepCount}; continue with the same command plus --resume (checkpoint in {run.CheckpointDir})");
        }
        finally { Console.CancelKeyPress -= onCancel; }
    }
}

using System.CommandLine;
using System.Diagnostics;
using Finetrace.Activations;
using Finetrace.Activations.Synthetic;
using Spectre.Console;

namespace Finetrace.Cli.Commands;

/// <summary><c>finetrace synth make</c>: a paired activation store from a known sparse generative model, with its
/// ground truth (the demo data and the benchmark for crosscoders).</summary>
public sealed class SynthCommand : ICliCommand
{
    public Command Build()
    {
        var synth = new Command("synth", "Synthetic paired activations with known ground truth (features shared, exclusive, shrunk, decoupled)");
        synth.Subcommands.Add(BuildMake());
        synth.Subcommands.Add(SynthScoreCommand.Build()); // scoring lives with the dictionaries (SynthScoreCommand.cs)
        return synth;
    }

    static Command BuildMake()
    {
        var d = new Option<int>("--d") { Description = "Residual width D of every model", Required = true };
        var features = new Option<int>("--features") { Description = "Number of true features F", Required = true };
        var models = new Option<int>("--models") { Description = "Number of models (0 = base, 1 = fine-tuned, …)", DefaultValueFactory = _ => 2 };
        var tokens = new Option<long>("--tokens") { Description = "Tokens to generate", DefaultValueFactory = _ => 200_000 };
        var seed = new Option<ulong>("--seed") { Description = "Random seed (the store is a pure function of it)", DefaultValueFactory = _ => 0 };
        var shared = new Option<double?>("--shared") { Description = "Fraction of features shared by all models (default: what the other fractions leave)" };
        var exclusive = new Option<double>("--exclusive") { Description = "Fraction present in one model only (split evenly over the models)", DefaultValueFactory = _ => 0.1 };
        var shrunk = new Option<double>("--shrunk") { Description = "Fraction present in all models but weaker in the base (Complete Shrinkage)", DefaultValueFactory = _ => 0.05 };
        var decoupled = new Option<double>("--decoupled") { Description = "Fraction planted for Latent Decoupling (how: --decoupling)", DefaultValueFactory = _ => 0.05 };
        var decoupling = new Option<string>("--decoupling")
        {
            Description = "superset: the base also writes a decoupled feature's direction on extra tokens of its own (the paper's Latent Decoupling); " +
                          "combination: the base writes a mix of --parents shared features instead (the earlier generator)",
            DefaultValueFactory = _ => "combination",
        };
        decoupling.AcceptOnlyFromAmong("superset", "combination");
        var extraRate = new Option<double>("--decoupled-extra-rate") { Description = "superset: the base's extra firings of a decoupled direction, × the feature's own rate", DefaultValueFactory = _ => 4.0 };
        var shrinkFactor = new Option<float>("--shrink-factor") { Description = "Magnitude of shrunk features in the base, relative to the other models", DefaultValueFactory = _ => 0.25f };
        var parents = new Option<int>("--parents") { Description = "combination: shared features combined for each decoupled feature", DefaultValueFactory = _ => 2 };
        var l0 = new Option<double>("--l0") { Description = "Expected active features per token", DefaultValueFactory = _ => 6 };
        var spread = new Option<double>("--frequency-spread") { Description = "Ratio of the most to the least frequent feature's rate", DefaultValueFactory = _ => 10 };
        var noise = new Option<float>("--noise") { Description = "Gaussian noise std per dimension", DefaultValueFactory = _ => 0.01f };
        var drift = new Option<float>("--drift") { Description = "Perturbation of shared directions between models", DefaultValueFactory = _ => 0.05f };
        var bias = new Option<float>("--bias") { Description = "Norm of a constant offset per model", DefaultValueFactory = _ => 0f };
        var seqLen = new Option<int>("--seq-len") { Description = "Tokens per sequence", DefaultValueFactory = _ => 128 };
        var layer = new Option<int>("--layer") { Description = "Layer number recorded in the store", DefaultValueFactory = _ => 0 };
        var dtype = new Option<string>("--dtype") { Description = "bf16 or f32", DefaultValueFactory = _ => "bf16" };
        var shardTokens = new Option<long>("--shard-tokens") { Description = "Tokens per shard", DefaultValueFactory = _ => 1 << 18 };
        var outDir = new Option<string>("--out") { Description = "Store folder to write (resumes an interrupted run with the same settings)", Required = true };
        var cmd = new Command("make", "Write an activation store from a known sparse generative model, with the ground truth (truth.safetensors, truth.json) beside it");
        foreach (var o in new Option[] { d, features, models, tokens, seed, shared, exclusive, shrunk, decoupled, decoupling, extraRate, shrinkFactor, parents, l0, spread, noise, drift, bias, seqLen, layer, dtype, shardTokens, outDir })
            cmd.Options.Add(o);
        cmd.SetAction(r =>
        {
            double ex = r.GetValue(exclusive), sh = r.GetValue(shrunk), de = r.GetValue(decoupled);
            var spec = new SyntheticSpec
            {
                DModel = r.GetValue(d), Features = r.GetValue(features), Models = r.GetValue(models), Tokens = r.GetValue(tokens),
                Seed = r.GetValue(seed), Shared = r.GetValue(shared) ?? Math.Max(0, 1 - ex - sh - de), Exclusive = ex, Shrunk = sh, Decoupled = de,
                Decoupling = r.GetValue(decoupling) == "combination" ? DecouplingMode.Combination : DecouplingMode.Superset, DecoupledExtraRate = r.GetValue(extraRate),
                ShrinkFactor = r.GetValue(shrinkFactor), Parents = r.GetValue(parents), L0 = r.GetValue(l0), FrequencySpread = r.GetValue(spread),
                Noise = r.GetValue(noise), Drift = r.GetValue(drift), Bias = r.GetValue(bias), SequenceLength = r.GetValue(seqLen),
                Layer = r.GetValue(layer), Dtype = r.GetValue(dtype)!,
            };
            return Make(spec, r.GetValue(outDir)!, r.GetValue(shardTokens));
        });
        return cmd;
    }

    static int Make(SyntheticSpec spec, string dir, long shardTokens)
    {
        spec.Validate();
        var sw = Stopwatch.StartNew();
        if (!TokenProgress.Run("synth", spec.Tokens, "the store holds the complete shards",
                (task, cancel) => SyntheticGenerator.Make(spec, dir, shardTokens, t => task.Value = t, cancel)))
            return 130;
        double secs = sw.Elapsed.TotalSeconds;
        using var store = ActivationStore.Open(dir);
        var c = spec.Counts();
        AnsiConsole.MarkupLine($"wrote {store.Tokens:N0} tokens × {spec.Models} models × d {spec.DModel} ({spec.Dtype}) in {secs:F2} s ({store.Tokens / Math.Max(secs, 1e-9):N0} tokens/s), {ActivationStoreWriter.Human(store.DiskBytes())}");
        AnsiConsole.MarkupLine($"features: {spec.Features} = shared {c.Shared} + exclusive {c.Exclusive} + shrunk {c.Shrunk} (×{spec.ShrinkFactor} in base) + decoupled {c.Decoupled} ({spec.Decoupling.ToString().ToLowerInvariant()})");
        AnsiConsole.MarkupLine($"ground truth: {Markup.Escape(Path.Combine(store.Directory, SyntheticTruth.TensorFile))}, {SyntheticTruth.JsonFile}");
        return 0;
    }
}

/// <summary>A token-counting progress bar around a resumable job, with Ctrl-C cancelling the job's token.</summary>
static class TokenProgress
{
    /// <summary>Runs <paramref name="job"/> under a bar of <paramref name="total"/> tokens; false (after printing that
    /// the run was interrupted, what <paramref name="kept"/>, and how to resume) when Ctrl-C cancelled it.</summary>
    public static bool Run(string name, long total, string kept, Action<ProgressTask, CancellationToken> job)
    {
        using var cts = new CancellationTokenSource();
        ConsoleCancelEventHandler onCancel = (_, e) => { e.Cancel = true; cts.Cancel(); };
        Console.CancelKeyPress += onCancel;
        try
        {
            CliConsole.Progress(name, total, task => job(task, cts.Token), rateUnit: "tok");
            return true;
        }
        catch (OperationCanceledException)
        {
            AnsiConsole.MarkupLine($"[yellow]interrupted[/]: {kept}; run the same command again to resume");
            return false;
        }
        finally { Console.CancelKeyPress -= onCancel; }
    }
}

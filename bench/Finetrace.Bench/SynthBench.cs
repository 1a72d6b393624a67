using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using Finetrace.Activations;
using Finetrace.Activations.Synthetic;
using Finetrace.Dictionaries;
using Spectre.Console;

namespace Finetrace.Bench;

/// <summary>
/// <c>finetrace bench synth</c>: the synthetic ground-truth benchmark of the default training recipe. For every seed ×
/// size it writes a synthetic paired store (<c>synth make</c>), trains a BatchTopK crosscoder with only k, the
/// dictionary size and a budget of passes given (everything else from the recipe), and scores it against the truth
/// (<c>synth score</c>): recovery at joint cosine ≥ 0.9 overall and per category (shared, exclusive, shrunk,
/// decoupled) and the Δnorm errors. Bound: ≥ 90% overall and ≥ 80% in every category.
/// </summary>
public sealed class SynthBench : IBenchCommand
{
    /// <summary>One store and dictionary shape: d_model, true features, latents.</summary>
    public sealed record Size(int DModel, int Features, int DictSize)
    {
        public override string ToString() => $"{DModel}x{Features}x{DictSize}";

        public static Size Parse(string s)
        {
            var p = s.Split('x');
            if (p.Length != 3 || !p.All(v => int.TryParse(v, NumberStyles.None, CultureInfo.InvariantCulture, out int n) && n > 0))
                throw new ArgumentException($"--sizes {s}: expected D x FEATURES x DICT_SIZE, e.g. 96x768x1024");
            return new Size(int.Parse(p[0], CultureInfo.InvariantCulture), int.Parse(p[1], CultureInfo.InvariantCulture), int.Parse(p[2], CultureInfo.InvariantCulture));
        }
    }

    public const double OverallBound = 0.9, CategoryBound = 0.8;

    public Command Build()
    {
        var seeds = new Option<string>("--seeds") { Description = "Comma-separated store seeds (the dictionary seed is the same number)", DefaultValueFactory = _ => "11,12" };
        var sizes = new Option<string>("--sizes") { Description = "Comma-separated D x FEATURES x DICT_SIZE", DefaultValueFactory = _ => "96x768x1024,64x384x512" };
        var k = new Option<int>("--k") { Description = "Active latents per token", DefaultValueFactory = _ => 8 };
        var l0 = new Option<double>("--l0") { Description = "True active features per token", DefaultValueFactory = _ => 6 };
        var tokens = new Option<long>("--tokens") { Description = "Tokens per store (one pass)", DefaultValueFactory = _ => 600_000 };
        var passes = new Option<double>("--passes") { Description = "Training budget in passes over the store", DefaultValueFactory = _ => 10 };
        var recipe = new Option<string>("--recipe") { Description = "finetrace (default) or minder2025", DefaultValueFactory = _ => "finetrace" };
        var lr = new Option<double?>("--lr") { Description = "Override the recipe's learning rate" };
        var dead = new Option<long?>("--dead-tokens") { Description = "Override the recipe's dead-latent window" };
        var auxk = new Option<float?>("--auxk-alpha") { Description = "Override the recipe's AuxK coefficient" };
        var work = new Option<string?>("--work") { Description = "Keep stores and dictionaries in this folder (default: a temporary folder, deleted)" };
        var json = BenchOptions.Json();
        var cmd = new Command("synth", "Planted-feature recovery of the default crosscoder recipe per category, over seeds × sizes (bound: ≥ 90% overall, ≥ 80% per category)");
        foreach (var o in new Option[] { seeds, sizes, k, l0, tokens, passes, recipe, lr, dead, auxk, work, json }) cmd.Options.Add(o);
        cmd.SetAction(r =>
        {
            var seedList = r.GetValue(seeds)!.Split(',').Select(s => ulong.TryParse(s, NumberStyles.None, CultureInfo.InvariantCulture, out ulong v) ? v
                : throw new ArgumentException($"--seeds {s}: expected non-negative integers")).ToArray();
            var sizeList = r.GetValue(sizes)!.Split(',').Select(Size.Parse).ToArray();
            var preset = r.GetValue(recipe) switch
            {
                "finetrace" => RecipePreset.Finetrace, "minder2025" => RecipePreset.Minder2025,
                var s => throw new ArgumentException($"--recipe {s}: expected finetrace or minder2025"),
            };
            var settings = new Settings(r.GetValue(k), r.GetValue(l0), r.GetValue(tokens), r.GetValue(passes), preset, r.GetValue(lr), r.GetValue(dead), r.GetValue(auxk));
            string? keep = r.GetValue(work);
            string root = keep ?? Path.Combine(Path.GetTempPath(), "finetrace-bench-synth-" + Guid.NewGuid().ToString("N")[..8]);
            try
            {
                var results = new List<RunResult>();
                foreach (var size in sizeList)
                    foreach (var seed in seedList)
                    {
                        Console.Error.WriteLine($"bench synth: seed {seed}, size {size}: training …");
                        results.Add(RunOne(Path.Combine(root, $"s{seed}-{size}"), seed, size, settings));
                    }
                Print(results, settings, r.GetValue(json));
            }
            finally
            {
                if (keep is null && Directory.Exists(root)) Directory.Delete(root, recursive: true);
            }
            return 0;
        });
        return cmd;
    }

    /// <summary>What every run of a sweep shares.</summary>
    public sealed record Settings(int K, double L0, long Tokens, double Passes, RecipePreset Preset, double? Lr, long? DeadTokens, float? AuxKAlpha = null);

    public sealed record RunResult(ulong Seed, Size Size, long Steps, double Lr, long DeadTokens, float AuxKAlpha, SyntheticScore Score, double Seconds);

    /// <summary>Makes the store (or reuses a complete one), trains with the recipe, scores.</summary>
    public static RunResult RunOne(string dir, ulong seed, Size size, Settings s, CancellationToken cancel = default)
    {
        string storeDir = Path.Combine(dir, "store");
        var spec = new SyntheticSpec { DModel = size.DModel, Features = size.Features, L0 = s.L0, Tokens = s.Tokens, Seed = seed };
        var truth = SyntheticGenerator.Make(spec, storeDir, cancel: cancel);
        using var store = ActivationStore.Open(storeDir);
        var recipe = new TrainingRecipe
        {
            Kind = DictionaryKind.Crosscoder, Layer = spec.Layer, Preset = s.Preset, K = s.K, DictSize = size.DictSize,
            Tokens = (long)(s.Passes * store.Tokens), Lr = s.Lr, DeadTokens = s.DeadTokens, AuxKAlpha = s.AuxKAlpha, Seed = seed,
        };
        var sw = Stopwatch.StartNew();
        using var setup = recipe.Prepare(store);
        var run = setup.Run(Path.Combine(dir, "dictionary"), checkpointEvery: 0, resume: false);
        run.Run(cancel: cancel);
        double secs = sw.Elapsed.TotalSeconds;
        var score = SyntheticScoring.Score(run.Trainer.Dict, truth, store);
        return new RunResult(seed, size, setup.Steps, setup.Options.Lr, setup.Options.DeadTokens, setup.Options.AuxKAlpha, score, secs);
    }

    static CategoryScore Cat(SyntheticScore s, string name) => s.Categories.Single(c => c.Category == name);
    static readonly string[] Categories = ["shared", "exclusive", "shrunk", "decoupled"];

    /// <summary>Lowest category recovery of a run (NaN categories — none planted — ignored).</summary>
    public static double WorstCategory(SyntheticScore s) => s.Categories.Where(c => c.Features > 0).Min(c => c.Fraction);

    static void Print(List<RunResult> results, Settings s, bool json)
    {
        double worstOverall = results.Min(r => r.Score.Fraction), worstCat = results.Min(r => WorstCategory(r.Score));
        if (json)
        {
            BenchSupport.PrintJson(new
            {
                recipe = TrainingRecipe.PresetName(s.Preset), k = s.K, l0 = s.L0, tokens_per_store = s.Tokens, passes = s.Passes,
                bound_overall = OverallBound, bound_category = CategoryBound, worst_overall = worstOverall, worst_category = worstCat,
                ratio_overall = worstOverall / OverallBound, ratio_category = worstCat / CategoryBound, load_average = BenchSupport.LoadAverage(),
                runs = results.Select(r => new
                {
                    seed = r.Seed, d = r.Size.DModel, features = r.Size.Features, dict_size = r.Size.DictSize, steps = r.Steps, lr = r.Lr, dead_tokens = r.DeadTokens, auxk_alpha = r.AuxKAlpha,
                    seconds = r.Seconds, overall = r.Score.Fraction, false_exclusive_latents = r.Score.FalseExclusiveLatents, alive_latents = r.Score.AliveLatents,
                    categories = Categories.ToDictionary(c => c, c =>
                    {
                        var x = Cat(r.Score, c);
                        return new { features = x.Features, recovered = x.Recovered, fraction = Num(x.Fraction), mean_best_cosine = Num(x.MeanBestCosine), mean_abs_delta_norm_error = Num(x.MeanAbsDeltaNormError) };
                    }),
                }),
            });
            return;
        }
        var t = new Table().AddColumns("seed", "D×features×F", "steps", "lr", "dead window", "AuxK α", "overall", "shared", "exclusive", "shrunk", "decoupled", "|Δnorm err| sh/ex/shr/dec", "false excl.", "seconds");
        foreach (var r in results)
        {
            string P(string c) { var x = Cat(r.Score, c); return x.Features == 0 ? "–" : $"{x.Fraction:P0}"; }
            string E(string c) { double v = Cat(r.Score, c).MeanAbsDeltaNormError; return double.IsNaN(v) ? "–" : v.ToString("F3", CultureInfo.InvariantCulture); }
            t.AddRow(r.Seed.ToString(CultureInfo.InvariantCulture), r.Size.ToString(), r.Steps.ToString(CultureInfo.InvariantCulture), r.Lr.ToString("G3", CultureInfo.InvariantCulture),
                r.DeadTokens.ToString("N0", CultureInfo.InvariantCulture), r.AuxKAlpha.ToString("G3", CultureInfo.InvariantCulture), $"{r.Score.Fraction:P1}", P("shared"), P("exclusive"), P("shrunk"), P("decoupled"),
                string.Join("/", Categories.Select(E)), r.Score.FalseExclusiveLatents.ToString(CultureInfo.InvariantCulture), r.Seconds.ToString("F0", CultureInfo.InvariantCulture));
        }
        AnsiConsole.Write(t);
        AnsiConsole.MarkupLine(Markup.Escape($"recipe {TrainingRecipe.PresetName(s.Preset)}, k {s.K}, {s.Passes} passes of {s.Tokens:N0} tokens; worst overall {worstOverall:P1} " +
            $"(bound {OverallBound:P0}, ratio {worstOverall / OverallBound:F2}), worst category {worstCat:P1} (bound {CategoryBound:P0}, ratio {worstCat / CategoryBound:F2}); load average {BenchSupport.LoadAverage()}"));
    }

    static double? Num(double v) => double.IsFinite(v) ? v : null;
}

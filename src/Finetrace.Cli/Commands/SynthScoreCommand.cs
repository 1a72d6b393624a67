using System.CommandLine;
using System.Text.Json;
using Finetrace.Activations;
using Finetrace.Activations.Synthetic;
using Finetrace.Dictionaries;
using Spectre.Console;

namespace Finetrace.Cli.Commands;

/// <summary>
/// <c>finetrace synth score --dictionary DIR --truth STORE [--json]</c>. Not an <see cref="ICliCommand"/> on purpose:
/// the <c>synth</c> command file owns the group, and adds this with <c>synth.Subcommands.Add(SynthScoreCommand.Build())</c>.
/// </summary>
public static class SynthScoreCommand
{
    public static Command Build()
    {
        var dict = new Option<string>("--dictionary") { Description = "A trained dictionary folder", Required = true };
        var truth = new Option<string>("--truth") { Description = "The synthetic store folder (holds truth.safetensors and truth.json)", Required = true };
        var threshold = new Option<double>("--threshold") { Description = "Cosine needed to count a true feature as recovered", DefaultValueFactory = _ => 0.9 };
        var json = new Option<bool>("--json") { Description = "Print one JSON object" };
        var tokens = new Option<long>("--tokens") { Description = "Tokens of the encode pass that decides which latents fire (alive)", DefaultValueFactory = _ => 200_000 };
        var cmd = new Command("score", "Match learned latents to the true features of a synthetic store: recovery per category, Δnorm error, false exclusive latents");
        foreach (var o in new Option[] { dict, truth, threshold, json, tokens }) cmd.Options.Add(o);
        cmd.SetAction(r => Run(r.GetValue(dict)!, r.GetValue(truth)!, r.GetValue(threshold), r.GetValue(json), r.GetValue(tokens)));
        return cmd;
    }

    public static int Run(string dictDir, string truthDir, double threshold, bool json, long tokens = 200_000)
    {
        var d = DictionaryIO.Load(dictDir);
        var t = SyntheticTruth.Load(truthDir);
        using var store = ActivationStore.Open(truthDir);
        var variant = CrosscoderVariant.Read(dictDir);
        var s = SyntheticScoring.Score(d, t, store, tokens, threshold, variant);
        if (json)
        {
            Console.WriteLine(JsonSerializer.Serialize(new
            {
                threshold = s.Threshold, features = s.Features, recovered = s.Recovered, fraction = s.Fraction, latents = s.Latents, alive_latents = s.AliveLatents, firing_tokens = s.FiringTokens,
                exclusive_latents = s.ExclusiveLatents, false_exclusive_latents = s.FalseExclusiveLatents,
                exclusive_per_model = s.ExclusivePerModel.Length > 0 ? s.ExclusivePerModel : null,
                exclusive_in_owner_block = s.ExclusivePerModel.Length > 0 ? s.ExclusiveInOwnerBlock : null,
                categories = s.Categories.Select(c => new
                {
                    category = c.Category, features = c.Features, recovered = c.Recovered, fraction = Num(c.Fraction), mean_best_cosine = Num(c.MeanBestCosine),
                    mean_abs_delta_norm_error = Num(c.MeanAbsDeltaNormError), false_exclusive_latents = c.FalseExclusive,
                }),
            }));
            return 0;
        }
        var table = new Table().AddColumns("category", "features", $"recovered (cos ≥ {threshold})", "mean best cos", "|Δnorm error|", "false exclusive latents");
        foreach (var c in s.Categories)
            table.AddRow(c.Category, c.Features.ToString(), $"{c.Recovered} ({c.Fraction:P0})", $"{c.MeanBestCosine:F3}", double.IsNaN(c.MeanAbsDeltaNormError) ? "–" : $"{c.MeanAbsDeltaNormError:F3}", c.FalseExclusive.ToString());
        table.AddRow("[bold]all[/]", s.Features.ToString(), $"{s.Recovered} ({s.Fraction:P0})", "", "", s.FalseExclusiveLatents.ToString());
        AnsiConsole.Write(table);
        if (s.ExclusivePerModel.Length > 0)
            AnsiConsole.MarkupLine("dedicated crosscoder: planted exclusive features recovered by a latent of their model's exclusive block: " +
                string.Join(", ", s.ExclusivePerModel.Select((n, m) => $"model {m} {s.ExclusiveInOwnerBlock[m]}/{n}")));
        AnsiConsole.MarkupLine($"{s.AliveLatents} of {s.Latents} latents alive (fired on the first {s.FiringTokens:N0} tokens); {s.ExclusiveLatents} look exclusive (Δnorm < 0.1 or > 0.9), {s.FalseExclusiveLatents} of them match a non-exclusive true feature");
        return 0;
    }

    static double? Num(double v) => double.IsFinite(v) ? v : null;
}

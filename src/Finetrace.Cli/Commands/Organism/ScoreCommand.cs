using System.CommandLine;
using Finetrace.Pipeline;
using Finetrace.Training.Organisms;
using Spectre.Console;

namespace Finetrace.Cli.Commands.Organism;

/// <summary><c>finetrace organism score RESULTS --truth GROUND_TRUTH.json [--json]</c>: which planted changes each method
/// of a diff's summary.json surfaced, at which rank, and whether it beat its control (offline, no LLM judge).</summary>
public sealed class ScoreCommand : IOrganismCommand
{
    public Command Build()
    {
        var results = new Argument<string>("RESULTS") { Description = "A diff's results folder (or its summary.json)" };
        var truth = new Option<string>("--truth") { Description = "The organism's GROUND_TRUTH.json (or its folder)", Required = true };
        var top = new Option<int>("--top-latents") { Description = "How many of the most fine-tune-specific latents are compared with the control latents", DefaultValueFactory = _ => 5 };
        var json = new Option<bool>("--json") { Description = "Print one JSON object" };
        var cmd = new Command("score", "Score a diff's summary.json against an organism's GROUND_TRUTH.json: surfaced, rank, beat control per method");
        cmd.Arguments.Add(results);
        foreach (var o in new Option[] { truth, top, json }) cmd.Options.Add(o);
        cmd.SetAction(r =>
        {
            var t = GroundTruth.Load(r.GetValue(truth)!);
            var s = OrganismScoring.Score(r.GetValue(results)!, t, new OrganismScoringOptions(r.GetValue(top)));
            if (r.GetValue(json)) { Console.WriteLine(s.ToJson().ToJsonString()); return 0; }
            var table = new Table().AddColumn("planted").AddColumn("kind");
            foreach (var m in s.MethodsPresent) table.AddColumn(m);
            foreach (var p in s.Planted)
                table.AddRow([Markup.Escape(p.Planted.Name), p.Planted.Kind.ToString().ToLowerInvariant(),
                    .. p.Methods.Select(m => !m.Surfaced ? "–" : (m.Rank is int k ? $"#{k}" : "yes") + (m.BeatControl switch { true => " ✓ctl", false => " ✗ctl", _ => "" }))]);
            AnsiConsole.Write(table);
            Console.WriteLine($"{s.Planted.Count(p => p.SurfacedByAny)} of {s.Planted.Count} planted changes surfaced by some method; " +
                              "#k = rank of the first match, ✓ctl/✗ctl = beat / did not beat its control");
            foreach (var p in s.Planted)
                foreach (var m in p.Methods.Where(m => m.Match is not null))
                    Console.WriteLine($"  {p.Planted.Name} / {m.Method}: {m.Match}");
            return 0;
        });
        return cmd;
    }
}

using System.Diagnostics;
using System.Text.Json.Nodes;
using Finetrace.Cli.Commands.Organism;
using Finetrace.Diffing;
using Finetrace.Models;
using Finetrace.Pipeline;
using Finetrace.Training.Organisms;

namespace Finetrace.Cli.Commands;

/// <summary>
/// <c>finetrace demo</c>: the main job on models Finetrace trains itself. Makes the demo organisms (a base Llama and
/// fine-tunes with planted behaviours; cached in OUT/organisms, so a second run reuses them), runs the diff pipeline on
/// every base/organism pair with <see cref="Config"/>, and prints where the results are and the top findings beside
/// what was planted.
/// </summary>
static class OrganismDemo
{
    /// <summary>The demo's diff config, sized for the demo's tiny models (a few seconds of CPU per stage): more of the
    /// models' own text than the defaults' minimum (the harvest stores what the data holds), and a dictionary trained
    /// for many passes over that small store (one pass is a few dozen steps, too few for BatchTopK's threshold).</summary>
    internal const string Config = """
        data: { generated_samples: 256, generated_tokens: 128, chat_conversations: 256, chat_reply_tokens: 48 }
        harvest: { tokens: 200000, context: 128 }
        dictionaries:
          - { name: crosscoder, dict_size: 256, k: 8, batch: 256, tokens: 600000 }
        analysis: { causal_sequences: 16, causal_random_sets: 3 }
        readers: { samples: 96, context: 96, adl_samples: 96, adl_positions: 3 }
        findings: { max_findings: 8 }
        """;

    public static int Run(string dir)
    {
        var sw = Stopwatch.StartNew();
        string orgDir = Path.Combine(dir, "organisms");
        Console.Error.WriteLine($"1. organisms: a base model and fine-tunes with planted behaviours → {orgDir} (reused when already made)");
        var recipe = OrganismRecipe.Load("demo");
        var made = TrainingProgressLine.WithCtrlC(ct => OrganismMaker.Make(recipe, orgDir, new Relay(), ct), "run finetrace demo again to resume (finished models are kept)");
        var baseDir = made.Base.Folder;
        var lines = new List<string>();
        foreach (var o in made.Organisms)
        {
            string results = Path.Combine(dir, "results", o.Name);
            Console.Error.WriteLine($"2. finetrace diff --base {baseDir} --finetuned {(o.IsLora ? baseDir + " --adapter " + o.Folder : o.Folder)} --out {results}");
            var cfg = DiffConfig.Parse(Config).Resolve(ModelConfig.Load(baseDir));
            var spec = o.IsLora ? new ModelPairSpec(baseDir, baseDir, o.Folder) : new ModelPairSpec(baseDir, o.Folder);
            using var cts = new CancellationTokenSource();
            ConsoleCancelEventHandler onCancel = (_, e) => { e.Cancel = true; cts.Cancel(); };
            Console.CancelKeyPress += onCancel;
            DiffRunResult res;
            try { res = DiffPipeline.Run(new DiffPlan(spec, cfg, results), new StageProgressLine(), cts.Token); }
            catch (OperationCanceledException) { Console.Error.WriteLine("interrupted: run finetrace demo again to continue (finished stages are kept)"); return 130; }
            finally { Console.CancelKeyPress -= onCancel; }
            lines.Add("");
            lines.Add($"== {o.Name}: {Planted(o.Folder)}");
            lines.Add($"   results: {results} (summary.json{(File.Exists(Path.Combine(results, "report.html")) ? ", report.html" : "")})");
            var findings = res.Summary["findings"] as JsonArray ?? [];
            if (findings.Count == 0) lines.Add("   no finding beat its control");
            foreach (var f in findings) lines.Add($"   • {f!["claim"]}");
        }
        foreach (var l in lines) Console.WriteLine(l);
        Console.WriteLine();
        Console.WriteLine($"demo finished in {sw.Elapsed.TotalMinutes:F1} min. Score a result against what was planted: " +
                          $"finetrace organism score {Path.Combine(dir, "results", made.Organisms.FirstOrDefault()?.Name ?? "NAME")} --truth {Path.Combine(made.Organisms.FirstOrDefault()?.Folder ?? "ORGANISM", GroundTruth.FileName)}");
        return 0;
    }

    static string Planted(string folder)
    {
        var path = Path.Combine(folder, GroundTruth.FileName);
        if (!File.Exists(path)) return "";
        var t = GroundTruth.Load(path);
        return "planted " + string.Join("; ", t.Planted.Select(p => $"{p.Name} ({string.Join(", ", p.ExpectedStrings.Take(2).Select(s => $"\"{s}\""))})"));
    }

    sealed class Relay : IProgress<OrganismProgress>
    {
        readonly Dictionary<string, TrainingProgressLine> _lines = new();

        public void Report(OrganismProgress p)
        {
            if (p.Training is { } t)
            {
                if (!_lines.TryGetValue(p.Stage, out var line)) _lines[p.Stage] = line = new TrainingProgressLine(p.Stage);
                line.Report(t);
            }
            else if (p.Message.Length > 0) Console.Error.WriteLine($"   {p.Stage}: {p.Message}");
        }
    }
}

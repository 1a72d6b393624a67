using System.CommandLine;
using Finetrace.Training;
using Finetrace.Training.Organisms;

namespace Finetrace.Cli.Commands.Organism;

/// <summary><c>finetrace organism make --recipe demo|FILE.yaml --out DIR</c>: generates the corpus, trains the tokenizer
/// and a base Llama from scratch, fine-tunes the recipe's organisms with their planted changes (full folders or PEFT
/// adapters, each with GROUND_TRUTH.json) and checks every planted behaviour by greedy generation. Finished models
/// are reused on the next run; Ctrl-C keeps a checkpoint to resume from. <c>--print-recipe NAME</c> prints a built-in recipe.</summary>
public sealed class MakeCommand : IOrganismCommand
{
    public Command Build()
    {
        var recipe = new Option<string>("--recipe") { Description = $"A built-in recipe ({string.Join(", ", OrganismRecipe.BuiltIn)}) or a recipe YAML file", DefaultValueFactory = _ => "demo" };
        var output = new Option<string?>("--out") { Description = "Output folder (corpus/, tokenizer/, base/, one folder per organism, organisms.json)" };
        var print = new Option<string?>("--print-recipe") { Description = "Print the YAML of a built-in recipe (to start your own) and exit" };
        var cmd = new Command("make", "Train a base model from scratch and fine-tunes with planted changes, each with GROUND_TRUTH.json");
        foreach (var o in new Option[] { recipe, output, print }) cmd.Options.Add(o);
        cmd.SetAction(r =>
        {
            if (r.GetValue(print) is string name)
            {
                Console.Write(OrganismRecipe.BuiltInText(name));
                return 0;
            }
            string outDir = r.GetValue(output) ?? throw new ArgumentException("--out is required (the folder to write the organisms to)");
            var rec = OrganismRecipe.Load(r.GetValue(recipe)!);
            var progress = new MakeProgress();
            var report = TrainingProgressLine.WithCtrlC(ct => OrganismMaker.Make(rec, outDir, progress, ct),
                "run the same command again to resume (finished models are kept)");
            Print(report);
            return 0;
        });
        return cmd;
    }

    sealed class MakeProgress : IProgress<OrganismProgress>
    {
        readonly Dictionary<string, TrainingProgressLine> _lines = new();

        public void Report(OrganismProgress p)
        {
            if (p.Training is { } t)
            {
                if (!_lines.TryGetValue(p.Stage, out var line)) _lines[p.Stage] = line = new TrainingProgressLine(p.Stage);
                line.Report(t);
            }
            else if (p.Message.Length > 0) Console.Error.WriteLine($"{p.Stage}: {p.Message}");
        }
    }

    static void Print(MakeReport r)
    {
        var b = r.Base;
        Console.WriteLine($"recipe {r.Recipe} → {r.Out} in {r.Seconds:F0} s");
        Console.WriteLine($"base: {b.Parameters:N0} parameters, vocabulary {r.VocabSize}, {b.TrainTokens:N0} training tokens{(b.Cached ? " (reused)" : $", {b.Seconds:F0} s")}; " +
                          $"held-out loss {b.HeldOutLoss:F3} nats/token vs unigram entropy {b.UnigramEntropy:F3}");
        foreach (var o in r.Organisms)
        {
            Console.WriteLine($"{o.Name} ({(o.IsLora ? "PEFT LoRA adapter" : "full fine-tune")}{(o.Cached ? ", reused" : $", {o.Seconds:F0} s")}): loss {o.FirstLoss:F3} → {o.LastLoss:F3}");
            foreach (var c in o.Behaviours)
            {
                Console.WriteLine($"  {c.Planted} ({c.Kind}): shown in {c.OrganismShows}/{c.Prompts} greedy generations, base {c.BaseShows}/{c.Prompts}");
                var s = c.Samples[0];
                Console.WriteLine($"    prompt:   {s.Prompt}");
                Console.WriteLine($"    base:     {Clip(s.Base)}");
                Console.WriteLine($"    organism: {Clip(s.Organism)}");
            }
        }
        Console.WriteLine($"each organism folder holds {GroundTruth.FileName}; diff one with: finetrace diff --base {Path.Combine(r.Out, "base")} --finetuned {Path.Combine(r.Out, r.Organisms.FirstOrDefault()?.Name ?? "NAME")} …");
    }

    static string Clip(string s) { s = s.Replace("\n", "↵"); return s.Length <= 110 ? s : s[..107] + "…"; }
}

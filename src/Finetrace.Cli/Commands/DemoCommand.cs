using System.CommandLine;
using Finetrace.Activations;
using Finetrace.Activations.Synthetic;
using Finetrace.Dictionaries;
using Spectre.Console;

namespace Finetrace.Cli.Commands;

/// <summary>
/// <c>finetrace demo</c>: the most complete end-to-end job that needs nothing downloaded. It synthesises paired
/// "base" and "fine-tuned" activations from a sparse generative model with known ground truth, trains a BatchTopK and
/// an L1 crosscoder on them through the same commands a user runs, scores both against the truth, and shows the
/// relative-decoder-norm picture researchers use to find fine-tuning-specific latents.
/// </summary>
public sealed class DemoCommand : ICliCommand
{
    public Command Build()
    {
        var outDir = new Option<string>("--out") { Description = "Folder for the demo's store and dictionaries", DefaultValueFactory = _ => "finetrace-demo" };
        var quick = new Option<bool>("--quick") { Description = "--synthetic: shorter training (about a third of the time; recovery is lower)" };
        var synthetic = new Option<bool>("--synthetic") { Description = "The synthetic-activation crosscoder demo (known ground truth features) instead of the organisms" };
        var cmd = new Command("demo",
            "Built-in end-to-end demo: train a tiny base model and fine-tunes with planted behaviours (organism make --recipe demo, cached), " +
            "run finetrace diff on each pair and print the findings. --synthetic: synthesise paired activations with known ground truth, train a " +
            "BatchTopK and an L1 crosscoder, and score what each recovered");
        cmd.Options.Add(outDir);
        cmd.Options.Add(quick);
        cmd.Options.Add(synthetic);
        cmd.SetAction(r => r.GetValue(synthetic) ? Run(r.GetValue(outDir)!, r.GetValue(quick)) : OrganismDemo.Run(r.GetValue(outDir)!));
        return cmd;
    }

    static int Run(string dir, bool quick)
    {
        Directory.CreateDirectory(dir);
        var (store, btk, l1) = Paths(dir);

        AnsiConsole.Write(new Rule("[bold]Finetrace demo[/]").LeftJustified());
        AnsiConsole.MarkupLine(
            "A 'base' and a 'fine-tuned' model share a residual width of 64. Their activations are sparse sums of 256 true features:\n" +
            "most are [green]shared[/], some are [yellow]exclusive[/] to one model (what fine-tuning added or removed), some are [blue]shrunk[/]\n" +
            "(present in both, 4× weaker in the base) and some are [purple]decoupled[/] (the base writes them as a mix of shared features).\n" +
            "A good model-diffing dictionary finds every feature and gives each its true relative decoder norm.\n");

        var root = Program.BuildRoot();
        foreach (var (n, title, args) in Steps(dir, quick)) Step(root, n, title, args);

        var truth = SyntheticTruth.Load(store);
        SparseDictionary dB = DictionaryIO.Load(btk), dL = DictionaryIO.Load(l1);
        SyntheticScore sB, sL;
        using (var st = ActivationStore.Open(store)) { sB = SyntheticScoring.Score(dB, truth, st); sL = SyntheticScoring.Score(dL, truth, st); }
        AnsiConsole.Write(new Rule("[bold]Relative decoder norm Δnorm of every latent (0 = base only, ½ = shared, 1 = fine-tuned only)[/]").LeftJustified());
        Histogram("BatchTopK", dB);
        Histogram("L1", dL);

        var shrunkL1 = sL.Categories.Single(c => c.Category == "shrunk");
        AnsiConsole.Write(new Rule("[bold]What it shows[/]").LeftJustified());
        AnsiConsole.MarkupLine($"• BatchTopK recovered [bold]{sB.Fraction:P0}[/] of the true features at cosine ≥ 0.9, with {sB.FalseExclusiveLatents} false 'exclusive' latents.");
        AnsiConsole.MarkupLine($"• L1 recovered {sL.Fraction:P0}, but [bold]{sL.FalseExclusiveLatents}[/] of its 'exclusive-looking' latents are really shared features " +
                               $"({shrunkL1.FalseExclusive} of them stand for the {shrunkL1.Features} shrunk features): the L1 penalty drives a weak base decoder to zero (Complete Shrinkage),");
        AnsiConsole.MarkupLine("  so reading L1 crosscoder norms alone over-reports what fine-tuning added; BatchTopK training avoids most of it.");
        AnsiConsole.MarkupLine($"Everything is in [bold]{Markup.Escape(dir)}[/]. Try:");
        foreach (var args in Suggestions(dir)) AnsiConsole.WriteLine($"  finetrace {string.Join(' ', args)}");
        return 0;
    }

    /// <summary>The commands the demo suggests at its end, each one that works on what the demo left in
    /// <paramref name="dir"/> (a test runs every one of them on the demo's outputs).</summary>
    internal static IReadOnlyList<string[]> Suggestions(string dir)
    {
        var (store, btk, _) = Paths(dir);
        return
        [
            ["store", "info", store],
            ["eval", btk, "--store", store, "--no-splice"],
            ["store", "export", store, "--out", Path.Combine(dir, "cache")],
        ];
    }

    /// <summary>The demo's steps: exactly the commands a user would type (tests parse them against the real CLI).</summary>
    internal static IReadOnlyList<(int N, string Title, string[] Args)> Steps(string dir, bool quick)
    {
        var (store, btk, l1) = Paths(dir);
        string tokens = quick ? "1000000" : "3000000";
        int steps = quick ? 1950 : 5860; // tokens / batch 512
        string decay = $"{steps * 8 / 10}", warmup = $"{steps / 20}", thresholdStart = $"{steps / 2}";
        return
        [
            (1, "Synthesise 200,000 paired tokens with known ground truth",
                ["synth", "make", "--d", "64", "--features", "256", "--tokens", "200000", "--seed", "1", "--dtype", "f32", "--out", store]),
            (2, "Train a BatchTopK crosscoder (k = 8, 512 latents)",
                ["train", "crosscoder", "--store", store, "--layer", "0", "--k", "8", "--dict-size", "512", "--batch", "512", "--tokens", tokens,
                 "--lr", "4e-3", "--warmup", warmup, "--decay-start", decay, "--threshold-start", thresholdStart, "--overwrite", "--out", btk]),
            (3, "Score it against the ground truth", ["synth", "score", "--dictionary", btk, "--truth", store]),
            (4, "Train an L1 crosscoder (μ = 0.3, 512 latents) on the same data",
                ["train", "crosscoder", "--store", store, "--layer", "0", "--l1", "0.3", "--dict-size", "512", "--batch", "512", "--tokens", tokens,
                 "--lr", "3e-3", "--warmup", warmup, "--decay-start", decay, "--norm-init-scale", "0.1", "--overwrite", "--out", l1]),
            (5, "Score it against the ground truth", ["synth", "score", "--dictionary", l1, "--truth", store]),
        ];
    }

    static (string Store, string BatchTopK, string L1) Paths(string dir) =>
        (Path.Combine(dir, "store"), Path.Combine(dir, "batchtopk"), Path.Combine(dir, "l1"));

    static void Step(RootCommand root, int n, string title, string[] args)
    {
        AnsiConsole.Write(new Rule($"[bold]{n}. {Markup.Escape(title)}[/]").LeftJustified());
        AnsiConsole.MarkupLine($"[grey]$ finetrace {Markup.Escape(string.Join(' ', args))}[/]");
        int rc = root.Parse(args).Invoke(new InvocationConfiguration { EnableDefaultExceptionHandler = false });
        if (rc != 0) throw new InvalidOperationException($"demo step {n} ('finetrace {string.Join(' ', args)}') failed with exit code {rc}");
    }

    static void Histogram(string name, SparseDictionary d)
    {
        var norms = d.DecoderNorms(); // [M, F]
        int f = d.DictSize;
        var bins = new int[10];
        for (int j = 0; j < f; j++)
        {
            double n0 = norms[j], n1 = norms[f + j], mx = Math.Max(n0, n1);
            if (mx <= 0) continue;
            double delta = 0.5 * ((n1 - n0) / mx + 1);
            bins[Math.Min(9, (int)(delta * 10))]++;
        }
        var chart = new BarChart().Label($"[bold]{name}[/] ({f} latents)").Width(70);
        for (int b = 0; b < 10; b++)
            chart.AddItem($"{b / 10.0:F1}–{(b + 1) / 10.0:F1}", bins[b], b is 0 or 9 ? Color.Yellow : b is 4 or 5 ? Color.Green : Color.Blue);
        AnsiConsole.Write(chart);
    }
}

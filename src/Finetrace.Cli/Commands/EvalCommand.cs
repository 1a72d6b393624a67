using System.CommandLine;
using System.Text.Json;
using Finetrace.Activations;
using Finetrace.Dictionaries;
using Spectre.Console;

namespace Finetrace.Cli.Commands;

/// <summary><c>finetrace eval DIR --store STORE</c>: held-out quality of a dictionary.</summary>
public sealed class EvalCommand : ICliCommand
{
    public Command Build()
    {
        var dir = new Argument<string>("dir") { Description = "Dictionary folder (crosscoder_learning or SAELens)" };
        var store = new Option<string>("--store") { Description = "Activation store to evaluate on", Required = true };
        var layer = new Option<int?>("--layer") { Description = "Layer number (default: from the dictionary's finetrace.json, else the store's only layer)" };
        var tokens = new Option<long>("--tokens") { Description = "Tokens to evaluate", DefaultValueFactory = _ => 200_000 };
        var offset = new Option<long>("--offset") { Description = "Skip this many rows first (use held-out rows)", DefaultValueFactory = _ => 0 };
        var filter = new Option<string>("--filter") { Description = "Token filter, e.g. '!bos'", DefaultValueFactory = _ => "all" };
        var input = new Option<string?>("--input") { Description = "paired (crosscoder), model:I (SAE), diff:A-B (diff-SAE); default from finetrace.json" };
        var json = new Option<bool>("--json") { Description = "Print one JSON object" };
        var cmd = new Command("eval", "Evaluate a dictionary on stored activations: L0, FVE per model (against the mean), MSE, dead/dense fractions, log10 density histogram");
        cmd.Arguments.Add(dir);
        foreach (var o in new Option[] { store, layer, tokens, offset, filter, input, json }) cmd.Options.Add(o);
        cmd.SetAction(r => Run(r.GetValue(dir)!, r.GetValue(store)!, r.GetValue(layer), r.GetValue(tokens), r.GetValue(offset), r.GetValue(filter)!, r.GetValue(input), r.GetValue(json)));
        return cmd;
    }

    static int Run(string dir, string storeDir, int? layerOpt, long tokens, long offset, string filter, string? input, bool json)
    {
        var d = DictionaryIO.Load(dir, n => { if (!json) AnsiConsole.MarkupLine($"[grey]{Markup.Escape(n)}[/]"); });
        var side = FinetraceSidecar.Read(dir);
        using var st = ActivationStore.Open(storeDir);
        int layer = layerOpt ?? side?["site"]?["layer"]?.GetValue<int>() ?? (st.Layers.Count == 1 ? st.Layers[0] : throw new ArgumentException($"{storeDir} holds layers {string.Join(", ", st.Layers)}: pick one with --layer"));
        string kind = side?["training"]?["kind"]?.GetValue<string>() ?? (d.Models > 1 ? "crosscoder" : "sae");
        input ??= kind switch
        {
            "diff-sae" => "diff:1-0",
            "sae" => $"model:{side?["training"]?["models"]?[0]?.GetValue<int>() ?? 1}",
            _ => "paired",
        };
        var bo = new StoreBatchOptions { Layer = layer, Shuffle = false, Cycle = false, Filter = MaskFilter.Parse(filter), MixSources = false };
        StoreBatches b;
        IActivationBatches src;
        if (input == "paired") { b = StoreBatches.Paired(st, bo); src = b; }
        else if (input.StartsWith("model:")) { b = StoreBatches.Paired(st, bo); src = new ModelSlice(b, int.Parse(input[6..])); }
        else if (input.StartsWith("diff:")) { var p = input[5..].Split('-'); b = StoreBatches.Difference(st, bo, int.Parse(p[0]), int.Parse(p[1])); src = b; }
        else throw new ArgumentException($"--input {input}: expected paired, model:I or diff:A-B");
        using var _ = b;
        if (offset > 0) src.Seek(offset);
        tokens = Math.Min(tokens, Math.Max(0, b.RowsPerEpoch - offset));
        EvalReport rep = null!;
        if (json) rep = Evaluation.Run(d, src, tokens);
        else AnsiConsole.Progress().Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn())
            .Start(ctx => { var task = ctx.AddTask("eval", maxValue: tokens); rep = Evaluation.Run(d, src, tokens, progress: n => task.Value = n); });

        if (json)
        {
            Console.WriteLine(JsonSerializer.Serialize(new
            {
                tokens = rep.Tokens, l0 = rep.L0, fve = rep.Fve, mse = rep.Mse, cosine = rep.Cosine, dead_fraction = rep.DeadFraction, dense_fraction = rep.DenseFraction,
                log10_density_histogram = new { edges = EvalReport.HistogramEdges, counts = rep.DensityHistogram }, input, layer,
            }));
            return 0;
        }
        var t = new Table().AddColumns("metric", "value");
        t.AddRow("tokens", $"{rep.Tokens:N0} ({Markup.Escape(input)}, layer {layer}, filter {Markup.Escape(filter)})");
        t.AddRow("L0", $"{rep.L0:F2}");
        for (int m = 0; m < rep.Fve.Length; m++)
            t.AddRow(rep.Fve.Length > 1 ? $"model {m}: FVE / MSE / cos" : "FVE / MSE / cos", $"{rep.Fve[m]:F4} / {rep.Mse[m]:G4} / {rep.Cosine[m]:F4}");
        t.AddRow("dead (never fired)", $"{rep.DeadFraction:P2}");
        t.AddRow("dense (density > 0.1)", $"{rep.DenseFraction:P2}");
        AnsiConsole.Write(t);
        var chart = new BarChart().Label("latents per log10 firing density").Width(60);
        for (int i = 0; i < rep.DensityHistogram.Length; i++)
            chart.AddItem($"[[{EvalReport.HistogramEdges[i]:F0},{EvalReport.HistogramEdges[i + 1]:F0})", rep.DensityHistogram[i], Color.SteelBlue);
        AnsiConsole.Write(chart);
        AnsiConsole.MarkupLine("[grey]spliced-model CE/KL loss recovered needs the model runner; not computed here[/]");
        return 0;
    }
}

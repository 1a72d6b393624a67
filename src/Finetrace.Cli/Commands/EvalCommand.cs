using System.CommandLine;
using System.Text.Json;
using Finetrace.Activations;
using Finetrace.Dictionaries;
using Finetrace.Models;
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
        var noSplice = new Option<bool>("--no-splice") { Description = "Skip the spliced-model CE/KL loss-recovered evaluation (it re-runs the models)" };
        var spliceSeqs = new Option<int>("--splice-sequences") { Description = "Stored sequences to re-run for the spliced evaluation", DefaultValueFactory = _ => 64 };
        var spliceSeed = new Option<int>("--splice-seed") { Description = "Seed of the sequence sample", DefaultValueFactory = _ => 0 };
        var baseDir = new Option<string?>("--base") { Description = "Base model folder (default: the one the store's manifest records)" };
        var ftDir = new Option<string?>("--finetuned") { Description = "Fine-tuned model folder (default: from the store's manifest)" };
        var adapter = new Option<string?>("--adapter") { Description = "LoRA adapter of the fine-tuned model (default: from the store's manifest)" };
        var cmd = new Command("eval", "Evaluate a dictionary on stored activations: L0, FVE per model (against the mean), MSE, dead/dense fractions, log10 density histogram, " +
            "and spliced-model CE/KL loss recovered against zero ablation (re-runs the models on a sample of stored sequences)");
        cmd.Arguments.Add(dir);
        foreach (var o in new Option[] { store, layer, tokens, offset, filter, input, json, noSplice, spliceSeqs, spliceSeed, baseDir, ftDir, adapter }) cmd.Options.Add(o);
        cmd.SetAction(r => Run(r.GetValue(dir)!, r.GetValue(store)!, r.GetValue(layer), r.GetValue(tokens), r.GetValue(offset), r.GetValue(filter)!, r.GetValue(input), r.GetValue(json),
            new SpliceArgs(!r.GetValue(noSplice), r.GetValue(spliceSeqs), r.GetValue(spliceSeed), r.GetValue(baseDir), r.GetValue(ftDir), r.GetValue(adapter))));
        return cmd;
    }

    sealed record SpliceArgs(bool Enabled, int Sequences, int Seed, string? Base, string? FineTuned, string? Adapter);

    static int Run(string dir, string storeDir, int? layerOpt, long tokens, long offset, string filter, string? input, bool json, SpliceArgs sa)
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
        else CliConsole.Progress("eval", tokens, task => rep = Evaluation.Run(d, src, tokens, progress: n => task.Value = n), rateUnit: "tok");

        var (splice, spliceNote) = sa.Enabled ? Splice(d, st, input, layer, offset, filter, sa, json) : (null, "skipped (--no-splice)");

        if (json)
        {
            Console.WriteLine(JsonSerializer.Serialize(new
            {
                tokens = rep.Tokens, l0 = rep.L0, fve = rep.Fve, mse = rep.Mse, cosine = rep.Cosine, dead_fraction = rep.DeadFraction, dense_fraction = rep.DenseFraction,
                log10_density_histogram = new { edges = EvalReport.HistogramEdges, counts = rep.DensityHistogram }, input, layer,
                splice = splice is null ? null : new
                {
                    sequences = splice.Sequences, unusable_sequences = splice.Unusable, mismatched_sequences = splice.Mismatched, max_store_mismatch = splice.MaxMismatch,
                    models = splice.Models.Select(m => new
                    {
                        model = m.Model, name = m.Name, positions = m.Positions, ce_clean = m.CeClean, ce_spliced = m.CeSpliced, ce_zero = m.CeZero,
                        loss_recovered = m.LossRecovered, kl_spliced = m.KlSpliced, kl_zero = m.KlZero, kl_score = m.KlScore,
                    }).ToArray(),
                },
                splice_skipped = splice is null ? spliceNote : null,
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
        if (splice is not null)
        {
            foreach (var m in splice.Models)
            {
                string who = splice.Models.Count > 1 || m.Model != 0 ? $"model {m.Model}: " : "";
                t.AddRow($"{who}CE clean / spliced / zero", $"{m.CeClean:F4} / {m.CeSpliced:F4} / {m.CeZero:F4}");
                t.AddRow($"{who}CE loss recovered", $"{m.LossRecovered:F4}");
                t.AddRow($"{who}KL(clean‖spliced) / KL score", $"{m.KlSpliced:G4} / {m.KlScore:F4}");
            }
            t.AddRow("spliced positions", $"{splice.Models[0].Positions:N0} in {splice.Sequences} sequences" +
                (splice.Unusable + splice.Mismatched > 0 ? $" ({splice.Unusable} unusable, {splice.Mismatched} not matching the store)" : ""));
        }
        AnsiConsole.Write(t);
        var chart = new BarChart().Label("latents per log10 firing density").Width(60);
        for (int i = 0; i < rep.DensityHistogram.Length; i++)
            chart.AddItem($"[[{EvalReport.HistogramEdges[i]:F0},{EvalReport.HistogramEdges[i + 1]:F0})", rep.DensityHistogram[i], Color.SteelBlue);
        AnsiConsole.Write(chart);
        if (splice is null) AnsiConsole.MarkupLine($"[grey]spliced-model CE/KL loss recovered: {Markup.Escape(spliceNote ?? "")}[/]");
        else if (splice.Models.Any(m => m.LossRecovered > 1))
            AnsiConsole.MarkupLine("[grey]note: CE loss recovered above 1 means the spliced model predicted these tokens better than the clean model " +
                                   "(its CE is below the clean CE); over a few sequences this is usually noise, and it says the reconstruction loses little[/]");
        return 0;
    }

    /// <summary>The spliced evaluation, or null and why it was skipped: models the store records but that are not on
    /// this machine skip it with a note; folders given on the command line must exist.</summary>
    static (SpliceReport? Report, string? Note) Splice(SparseDictionary d, ActivationStore st, string input, int layer, long offset, string filter, SpliceArgs sa, bool json)
    {
        var recon = SpliceReconstruction.ForDictionary(d, input, st.Models);
        CausalLM?[] models;
        try { models = SplicedEvaluation.LoadModels(st, recon.Needed, sa.Base, sa.FineTuned, sa.Adapter); }
        catch (DirectoryNotFoundException e) when (sa.Base is null && sa.FineTuned is null && sa.Adapter is null)
        {
            if (!json) AnsiConsole.MarkupLine($"[yellow]spliced evaluation skipped: {Markup.Escape(e.Message)}[/]");
            return (null, e.Message);
        }
        try
        {
            var o = new SpliceOptions { Layer = layer, Filter = MaskFilter.Parse(filter), Sequences = sa.Sequences, Seed = sa.Seed, FirstRow = offset };
            if (json) return (SplicedEvaluation.Run(st, models, recon, o), null);
            SpliceReport rep = null!;
            CliConsole.Progress("spliced runs", 1, task => rep = SplicedEvaluation.Run(st, models, recon, o, (i, n) => { task.MaxValue = n; task.Value = i; }));
            return (rep, null);
        }
        finally { foreach (var m in models) m?.Dispose(); }
    }
}

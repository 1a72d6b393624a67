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
        var offset = new Option<long?>("--offset") { Description = "First store row to evaluate (default: the held-out rows training recorded in finetrace.json, else 0)" };
        var filter = new Option<string>("--filter") { Description = "Token filter, e.g. '!bos'", DefaultValueFactory = _ => "all" };
        var input = new Option<string?>("--input") { Description = "paired (crosscoder), model:I (SAE), diff:A-B (diff-SAE); default from finetrace.json" };
        var json = new Option<bool>("--json") { Description = "Print one JSON object" };
        var allowMismatch = new Option<bool>("--allow-mismatch") { Description = "Evaluate on a layer or input other than the one the dictionary records (finetrace.json)" };
        var noSplice = new Option<bool>("--no-splice") { Description = "Skip the spliced-model CE/KL loss-recovered evaluation (it re-runs the models)" };
        var spliceSeqs = new Option<int>("--splice-sequences") { Description = "Stored sequences to re-run for the spliced evaluation", DefaultValueFactory = _ => 64 };
        var spliceSeed = new Option<int>("--splice-seed") { Description = "Seed of the sequence sample", DefaultValueFactory = _ => 0 };
        var baseDir = new Option<string?>("--base") { Description = "Base model folder (default: the one the store's manifest records)" };
        var ftDir = new Option<string?>("--finetuned") { Description = "Fine-tuned model folder (default: from the store's manifest)" };
        var adapter = new Option<string?>("--adapter") { Description = "LoRA adapter of the fine-tuned model (default: from the store's manifest)" };
        var prune = new Option<string[]>("--prune")
        {
            Description = "Sweep inference-time pruning of low-activating latents (methods §15.2) and report the L0 vs FVE / CE loss recovered / KL curve: " +
                          "drop-lowest:1,2,4 (per token, drop the k lowest active latents), below-max:0.05,0.1,0.2 (per latent, zero activations at or below " +
                          "that fraction of the latent's max, measured on the training rows), or one combined point below-max:0.1+drop-lowest:2; repeat for several curves. " +
                          "The unpruned dictionary is always the first point",
            AllowMultipleArgumentsPerToken = true,
        };
        var applyPruning = new Option<string?>("--apply-pruning")
        {
            Description = "Record this pruning (e.g. below-max:0.1) in the dictionary's finetrace.json, so eval, the analyses and the exports read it pruned " +
                          "('none' removes it); it is evaluated as one point of the sweep",
        };
        var cmd = new Command("eval", "Evaluate a dictionary on stored activations: L0, FVE per model (against the mean), MSE, dead/dense fractions, log10 density histogram, " +
            "and spliced-model CE/KL loss recovered against zero ablation (re-runs the models on a sample of stored sequences)");
        cmd.Arguments.Add(dir);
        foreach (var o in new Option[] { store, layer, tokens, offset, filter, input, json, allowMismatch, noSplice, spliceSeqs, spliceSeed, baseDir, ftDir, adapter, prune, applyPruning }) cmd.Options.Add(o);
        cmd.SetAction(r => Run(r.GetValue(dir)!, r.GetValue(store)!, r.GetValue(layer), r.GetValue(tokens), r.GetValue(offset), r.GetValue(filter)!, r.GetValue(input), r.GetValue(json), r.GetValue(allowMismatch),
            new SpliceArgs(!r.GetValue(noSplice), r.GetValue(spliceSeqs), r.GetValue(spliceSeed), r.GetValue(baseDir), r.GetValue(ftDir), r.GetValue(adapter)),
            new PruneArgs(r.GetValue(prune) ?? [], r.GetValue(applyPruning))));
        return cmd;
    }

    sealed record SpliceArgs(bool Enabled, int Sequences, int Seed, string? Base, string? FineTuned, string? Adapter);
    sealed record PruneArgs(string[] Sweeps, string? Apply)
    {
        public bool Any => Sweeps.Length > 0 || Apply is not null;
    }

    static int Run(string dir, string storeDir, int? layerOpt, long tokens, long? offsetOpt, string filter, string? inputSpec, bool json, bool allowMismatch, SpliceArgs sa, PruneArgs pa)
    {
        Action<string> note = n => { if (!json) AnsiConsole.MarkupLine($"[grey]{Markup.Escape(n)}[/]"); };
        var d = DictionaryIO.Load(dir, note);
        using var st = ActivationStore.Open(storeDir);
        var recorded = DictionaryInput.Read(dir, note);
        int layer = layerOpt ?? recorded?.Layer ?? (st.Layers.Count == 1 ? st.Layers[0] : throw new ArgumentException($"{storeDir} holds layers {string.Join(", ", st.Layers)}: pick one with --layer"));
        DictionaryInput what;
        try
        {
            what = inputSpec is not null ? DictionaryInput.Parse(inputSpec, layer)
                : recorded is not null ? recorded with { Layer = layer }
                : d.Models > 1 ? DictionaryInput.Paired(layer) : DictionaryInput.SingleModel(layer, 1);
            what = what with { Site = recorded?.Site ?? st.Settings.Site };
            what.CheckDictionary(d.Models, st.Models);
        }
        catch (DictionaryInputException e) { throw new ArgumentException($"--input {e.Spec}: {e.Problem}", e); }
        try { what.CheckSite(st); }
        catch (DictionaryInputException e) { throw new ArgumentException($"{dir}: {e.Problem}; evaluate it on a store harvested at its site (finetrace harvest --site)", e); }
        if (recorded is null && inputSpec is null && d.Models == 1 && !json)
            AnsiConsole.MarkupLine($"[yellow]warning:[/] {Markup.Escape(dir)} does not record what it reads; assuming {Markup.Escape(what.Spec)} (pass --input diff:A-B or model:I if it is something else)");
        if (recorded is not null)
        {
            var diffs = recorded.Differences(what);
            if (diffs.Count > 0 && !allowMismatch)
                throw new ArgumentException($"{dir} reads {recorded} (its finetrace.json) but this eval asks for {what} ({string.Join("; ", diffs)}): " +
                    "drop --layer/--input to use the recorded ones, or pass --allow-mismatch to evaluate it there anyway");
            if (diffs.Count > 0 && !json) AnsiConsole.MarkupLine($"[yellow]warning:[/] evaluating on {Markup.Escape(what.ToString())}, not the recorded {Markup.Escape(recorded.ToString())} (--allow-mismatch)");
            if (recorded.Store is string rs && Path.GetFullPath(storeDir).TrimEnd('/') != rs.TrimEnd('/') && !json)
                AnsiConsole.MarkupLine($"[yellow]warning:[/] {Markup.Escape(dir)} was trained on the store {Markup.Escape(rs)}, not {Markup.Escape(Path.GetFullPath(storeDir))}; its held-out rows refer to that store");
        }
        var input = what.Spec;
        long offset = offsetOpt ?? recorded?.HeldOutFrom ?? 0;
        if (offsetOpt is null && recorded is not null && recorded.HeldOutFrom is null)
            note("the dictionary records no held-out rows: evaluating on rows it may have trained on");
        if (pa.Any) return RunPruning(dir, d, st, what, recorded, layer, tokens, offset, filter, json, sa, pa);
        var bo = new StoreBatchOptions { Layer = layer, Shuffle = false, Cycle = false, Filter = MaskFilter.Parse(filter), MixSources = false, FirstRow = offset };
        using var b = what.Open(st, bo);
        IActivationBatches src = b;
        tokens = Math.Min(tokens, b.RowsPerEpoch);
        EvalReport rep = null!;
        // a pruning the dictionary records (eval --apply-pruning) is honoured here and in the spliced evaluation
        if (what.Pruning is { IsNone: false } rp && !json) AnsiConsole.MarkupLine($"[grey]pruning {Markup.Escape(rp.Spec)} (recorded in finetrace.json)[/]");
        if (json) rep = Evaluation.Run(d, src, tokens, pruning: what.Pruning);
        else CliConsole.Progress("eval", tokens, task => rep = Evaluation.Run(d, src, tokens, progress: n => task.Value = n, pruning: what.Pruning), rateUnit: "tok");

        // the measured density travels with the dictionary (SAELens sparsity.safetensors; convert copies it)
        if (what.Pruning is not { IsNone: false })
        try { SaelensFormat.WriteSparsity(dir, rep.Firing.Log10Density()); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { note($"could not write {SaelensFormat.SparsityFile} into {dir}: {e.Message}"); }
        var (splice, spliceNote) = sa.Enabled ? SpliceChecked(d, st, what, layer, offset, filter, sa, json) : (null, "skipped (--no-splice)");

        if (json)
        {
            Console.WriteLine(JsonSerializer.Serialize(new
            {
                tokens = rep.Tokens, l0 = rep.L0, l1 = rep.L1, fve = rep.Fve, mse = rep.Mse, cosine = rep.Cosine, l2_ratio = rep.L2Ratio, relative_reconstruction_bias = rep.RelativeBias,
                dead_fraction = rep.DeadFraction, dead_window_tokens = rep.Tokens, dense_fraction = rep.DenseFraction,
                log10_density_histogram = new { edges = EvalReport.HistogramEdges, counts = rep.DensityHistogram }, input, layer, first_row = offset,
                site = what.HookName, pruning = what.Pruning?.Spec ?? "none",
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
        t.AddRow("tokens", $"{rep.Tokens:N0} from row {offset:N0} ({Markup.Escape(input)}, layer {layer}, filter {Markup.Escape(filter)}{(recorded?.HeldOutFrom is long h && offset >= h ? ", held out" : "")})");
        t.AddRow("L0 / L1", $"{rep.L0:F2} / {rep.L1:G4}");
        for (int m = 0; m < rep.Fve.Length; m++)
        {
            string who = rep.Fve.Length > 1 ? $"model {m}: " : "";
            t.AddRow($"{who}FVE / MSE / cos", $"{rep.Fve[m]:F4} / {rep.Mse[m]:G4} / {rep.Cosine[m]:F4}");
            t.AddRow($"{who}ℓ2 ratio / relative bias", $"{rep.L2Ratio[m]:F4} / {rep.RelativeBias[m]:F4}");
        }
        t.AddRow("dead (never fired)", $"{rep.DeadFraction:P2} of {rep.Firing.Fires.Length:N0} latents over these {rep.Tokens:N0} tokens");
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
    static (SpliceReport? Report, string? Note) SpliceChecked(SparseDictionary d, ActivationStore st, DictionaryInput input, int layer, long offset, string filter, SpliceArgs sa, bool json)
    {
        if (sa.Sequences < 1) throw new ArgumentException($"--splice-sequences must be at least 1, got {sa.Sequences}");
        return Splice(d, st, input, layer, offset, filter, sa, json);
    }

    /// <summary>The models a spliced evaluation of <paramref name="recon"/> needs, or null and why not (see <see cref="SpliceChecked"/>).</summary>
    static (CausalLM?[]? Models, string? Note) SpliceModels(ActivationStore st, SpliceReconstruction recon, SpliceArgs sa)
    {
        try { return (SplicedEvaluation.LoadModels(st, recon.Needed, sa.Base, sa.FineTuned, sa.Adapter), null); }
        catch (SpliceModelMissingException e)
        {
            string option = e.Reason == MissingModelReason.AdapterFolderNotFound ? "--adapter DIR" : e.Model switch { 0 => "--base DIR", 1 => "--finetuned DIR", _ => "" };
            string what = e.Reason == MissingModelReason.NoModelRecorded
                ? $"{e.Message}{(option != "" ? $": pass {option}" : "")}"
                : $"{e.Message}; {(option != "" ? $"pass {option} with the right folder, or " : "pass ")}--no-splice to skip the spliced evaluation";
            // folders the store records but this machine lacks: skip with one note; folders given on the command line must exist
            if (e.Overridden || sa.Base is not null || sa.FineTuned is not null || sa.Adapter is not null) throw new ArgumentException(what, e);
            return (null, $"skipped: {what}");
        }
    }

    static (SpliceReport? Report, string? Note) Splice(SparseDictionary d, ActivationStore st, DictionaryInput input, int layer, long offset, string filter, SpliceArgs sa, bool json)
    {
        var recon = SpliceReconstruction.ForDictionary(d, input, st.Models);
        var (loaded, why) = SpliceModels(st, recon, sa);
        if (loaded is null) return (null, why);
        var models = loaded;
        try
        {
            var o = new SpliceOptions { Layer = layer, Site = input.Site ?? st.Settings.Site ?? HookSite.ResidPost, Filter = MaskFilter.Parse(filter), Sequences = sa.Sequences, Seed = sa.Seed, FirstRow = offset };
            if (json) return (SplicedEvaluation.Run(st, models, recon, o), null);
            SpliceReport rep = null!;
            CliConsole.Progress("spliced runs", 1, task => rep = SplicedEvaluation.Run(st, models, recon, o, (i, n) => { task.MaxValue = n; task.Value = i; }));
            return (rep, null);
        }
        finally { foreach (var m in models) m?.Dispose(); }
    }

    sealed class SyncProgress<T>(Action<T> report) : IProgress<T>
    {
        public void Report(T value) => report(value);
    }

    /// <summary><c>--prune</c> / <c>--apply-pruning</c>: the pruning trade-off curve (and recording a chosen pruning).</summary>
    static int RunPruning(string dir, SparseDictionary d, ActivationStore st, DictionaryInput what, DictionaryInput? recorded, int layer, long tokens, long offset,
        string filter, bool json, SpliceArgs sa, PruneArgs pa)
    {
        var settings = new List<Pruning>();
        Pruning? apply = null;
        try
        {
            foreach (var sweep in pa.Sweeps) settings.AddRange(PruningSweep.ParseSweep(sweep));
            if (pa.Apply is not null) { apply = Pruning.Parse(pa.Apply); if (!apply.IsNone) settings.Add(apply); }
        }
        catch (PruningException e) { throw new ArgumentException($"--prune / --apply-pruning {e.Spec}: {e.Problem}", e); }
        settings = settings.DistinctBy(p => p.Spec).ToList();
        // the maxima of below-max are measured on rows training saw (not the evaluated ones) when the dictionary held rows out
        long calFirst = recorded?.HeldOutFrom is long h ? 0 : offset;
        long? calEnd = recorded?.HeldOutFrom;
        if (calEnd is null && settings.Any(p => p.BelowMaxFraction > 0) && !json)
            AnsiConsole.MarkupLine("[yellow]note:[/] the dictionary records no held-out rows: below-max measures the latents' maxima on the evaluated rows themselves");
        var mask = MaskFilter.Parse(filter);
        CausalLM?[]? models = null;
        string? spliceNote = sa.Enabled ? null : "skipped (--no-splice)";
        var unpruned = what with { Pruning = null };
        if (sa.Enabled)
        {
            if (sa.Sequences < 1) throw new ArgumentException($"--splice-sequences must be at least 1, got {sa.Sequences}");
            (models, spliceNote) = SpliceModels(st, SpliceReconstruction.ForDictionary(d, unpruned, st.Models), sa);
        }
        var o = new PruningSweepOptions
        {
            Settings = settings, Tokens = tokens, FirstRow = offset, Filter = mask, CalibrationFirstRow = calFirst, CalibrationEndRow = calEnd, CalibrationTokens = tokens,
            Splice = models is null ? null : new SpliceOptions { Layer = layer, Site = what.Site ?? st.Settings.Site ?? HookSite.ResidPost, Filter = mask, Sequences = sa.Sequences, Seed = sa.Seed, FirstRow = offset },
        };
        IReadOnlyList<PruningPoint> points = [];
        try
        {
            try
            {
                if (json) points = PruningSweep.Run(d, st, unpruned, o, models);
                else CliConsole.Progress("pruning sweep", settings.Count + 1, task => points = PruningSweep.Run(d, st, unpruned, o, models,
                    new SyncProgress<PruningSweepProgress>(p => { task.Value = p.Done; task.Description = $"pruning sweep: {p.Current}"; })), rateUnit: "points");
            }
            catch (PruningException e) { throw new ArgumentException($"{dir}: pruning {e.Spec}: {e.Problem}", e); }
        }
        finally { if (models is not null) foreach (var m in models) m?.Dispose(); }

        string? applied = null;
        if (apply is not null)
        {
            var chosen = apply.IsNone ? null : points.First(p => p.Pruning.Spec == apply.Spec).Pruning;
            ((recorded ?? what) with { Pruning = chosen }).Write(dir);
            applied = chosen?.Spec ?? "none";
        }

        if (json)
        {
            Console.WriteLine(JsonSerializer.Serialize(new
            {
                input = what.Spec, layer, site = what.HookName, first_row = offset, filter,
                calibration = new { first_row = calFirst, end_row = calEnd },
                applied_pruning = applied,
                splice_skipped = models is null ? spliceNote : null,
                pruning_sweep = points.Select(p => new
                {
                    pruning = p.Pruning.Spec, drop_lowest = p.Pruning.DropLowest, below_max_fraction = p.Pruning.BelowMaxFraction,
                    tokens = p.Eval.Tokens, l0 = p.Eval.L0, fve = p.Eval.Fve, mse = p.Eval.Mse, dead_fraction = p.Eval.DeadFraction,
                    splice = p.Splice is null ? null : p.Splice.Models.Select(m => new
                    {
                        model = m.Model, name = m.Name, positions = m.Positions, ce_clean = m.CeClean, ce_spliced = m.CeSpliced, ce_zero = m.CeZero,
                        loss_recovered = m.LossRecovered, kl_spliced = m.KlSpliced, kl_score = m.KlScore,
                    }).ToArray(),
                }).ToArray(),
            }));
            return 0;
        }
        var t = new Table().AddColumns("pruning", "L0", "FVE", "CE spliced", "CE loss recovered", "KL(clean‖spliced)");
        foreach (var p in points)
        {
            var sm = p.Splice?.Models;
            t.AddRow(Markup.Escape(p.Pruning.Spec), $"{p.Eval.L0:F2}", string.Join(" / ", p.Eval.Fve.Select(f => f.ToString("F4"))),
                sm is null ? "–" : string.Join(" / ", sm.Select(m => m.CeSpliced.ToString("F4"))),
                sm is null ? "–" : string.Join(" / ", sm.Select(m => m.LossRecovered.ToString("F4"))),
                sm is null ? "–" : string.Join(" / ", sm.Select(m => m.KlSpliced.ToString("G4"))));
        }
        AnsiConsole.MarkupLine($"pruning trade-off of {Markup.Escape(dir)} ({Markup.Escape(what.ToString())}) on {points[0].Eval.Tokens:N0} tokens from row {offset:N0}" +
            (points[0].Splice is { } s0 ? $"; spliced over {s0.Sequences} sequences (CE clean {s0.Models[0].CeClean:F4}, zero-ablated {s0.Models[0].CeZero:F4})" : ""));
        AnsiConsole.Write(t);
        if (models is null) AnsiConsole.MarkupLine($"[grey]spliced CE/KL: {Markup.Escape(spliceNote ?? "")}[/]");
        AnsiConsole.MarkupLine("[grey]a better trade-off sits lower-left: fewer active latents (L0) for the same or lower CE / KL[/]");
        if (applied is not null)
            AnsiConsole.MarkupLine($"recorded pruning {Markup.Escape(applied)} in {Markup.Escape(Path.Combine(dir, "finetrace.json"))}: eval, the analyses and exports now read the dictionary pruned ('--apply-pruning none' removes it)");
        return 0;
    }
}

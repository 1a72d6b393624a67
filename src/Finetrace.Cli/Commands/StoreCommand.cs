using Finetrace.Tensors;
using System.CommandLine;
using Finetrace.Activations;
using Finetrace.Activations.Export;
using Spectre.Console;

namespace Finetrace.Cli.Commands;

/// <summary><c>finetrace store info|export</c>: inspect an activation store, or export it for Python tools.</summary>
public sealed class StoreCommand : ICliCommand
{
    public Command Build()
    {
        var cmd = new Command("store", "Inspect activation stores (written by harvest or synth make) and export them to the crosscoder_learning cache layout");
        cmd.Subcommands.Add(BuildInfo());
        cmd.Subcommands.Add(BuildExport());
        cmd.Subcommands.Add(BuildMerge());
        return cmd;
    }

    static Command BuildMerge()
    {
        var parts = new Argument<string[]>("parts") { Description = "The part stores (harvest --part i/n), all n of them, in any order", Arity = ArgumentArity.OneOrMore };
        var outDir = new Option<string>("--out") { Description = "Merged store folder (re-run the same command to resume)", Required = true };
        var cmd = new Command("merge", "Join the part stores of a harvest split with --part i/n into one store, identical to the unsharded harvest");
        cmd.Arguments.Add(parts);
        cmd.Options.Add(outDir);
        cmd.SetAction(r =>
        {
            var dirs = r.GetValue(parts)!;
            string output = r.GetValue(outDir)!;
            StoreManifest? merged = null;
            bool done = TokenProgress.Run("merge", 1, "the merged store is consistent (complete shards kept)", (task, cancel) =>
            {
                merged = StoreMerge.Merge(dirs, output, p => { task.MaxValue = Math.Max(1, p.TotalTokens); task.Value = p.Tokens; }, cancel);
                task.Value = task.MaxValue;
            });
            if (!done) return 130;
            AnsiConsole.MarkupLine($"merged {dirs.Length} parts: {merged!.Tokens:N0} tokens, {merged.Sequences:N0} samples, {merged.Shards.Count} shards");
            AnsiConsole.MarkupLine($"store: {Markup.Escape(Path.GetFullPath(output))}  (finetrace store info to inspect)");
            return 0;
        });
        return cmd;
    }

    static Command BuildInfo()
    {
        var dir = new Argument<string>("store") { Description = "Activation store folder" };
        var sample = new Option<int>("--sample") { Description = "Tokens sampled for the norm table", DefaultValueFactory = _ => 4096 };
        var cmd = new Command("info", "Manifest summary, per-source token counts, activation norms per model and layer, disk size");
        cmd.Arguments.Add(dir);
        cmd.Options.Add(sample);
        cmd.SetAction(r => Info(r.GetValue(dir)!, r.GetValue(sample)));
        return cmd;
    }

    static Command BuildExport()
    {
        var dir = new Argument<string>("store") { Description = "Activation store folder" };
        var outDir = new Option<string>("--out") { Description = "Folder to write {model}/{dataset}/{split}/… into", Required = true };
        var dataset = new Option<string?>("--dataset") { Description = "Dataset folder name (default: the source name, or 'mixture')" };
        var split = new Option<string>("--split") { Description = "Split folder name", DefaultValueFactory = _ => "train" };
        var cmd = new Command("export", "Export to the crosscoder_learning activation-cache layout (shard_i.memmap + .meta, config.json, tokens.pt, sequence_ranges.pt, mean/std/count/M2.pt)");
        cmd.Arguments.Add(dir);
        cmd.Options.Add(outDir);
        cmd.Options.Add(dataset);
        cmd.Options.Add(split);
        cmd.SetAction(r =>
        {
            using var store = ActivationStore.Open(r.GetValue(dir)!);
            string name = r.GetValue(dataset) ?? (store.Settings.Sources.Count == 1 ? store.Settings.Sources[0].Name : "mixture");
            var dirs = CrosscoderCacheExport.Export(store, r.GetValue(outDir)!, name, r.GetValue(split)!);
            foreach (var d in dirs) AnsiConsole.MarkupLine($"wrote {Markup.Escape(d)}");
            AnsiConsole.MarkupLine($"Python: PairedActivationCache({Markup.Escape(string.Join(", ", dirs.Take(2).Select(d => $"'{d}'")))}, 'layer_{store.Layers[0]}_out')");
            return 0;
        });
        return cmd;
    }

    static int Info(string path, int sampleTokens)
    {
        using var store = ActivationStore.Open(path);
        var m = store.Manifest;
        var s = m.Settings;
        string state = m.Complete ? "complete"
            : ActivationStoreWriter.IsEmpty(m) ? "[yellow]empty[/]: no token was stored (the run stopped before its first batch); the next harvest into this folder replaces it, whatever its settings"
            : "[yellow]incomplete[/]: resume with the same command";
        AnsiConsole.MarkupLine($"[bold]{Markup.Escape(store.Directory)}[/]  ({state})");
        var summary = new Table().AddColumns("field", "value").HideHeaders();
        summary.AddRow("tokens", $"{m.Tokens:N0} of {m.TargetTokens:N0} requested");
        summary.AddRow("sequences", $"{m.Sequences:N0}");
        summary.AddRow("shards", $"{m.Shards.Count} (≥ {s.ShardTokens:N0} tokens each)");
        summary.AddRow("token masks (--filter)", "bos, template, user, assistant, system; '!' excludes, ',' combines (e.g. '!bos', 'assistant'); all = no filter");
        summary.AddRow("layers", Markup.Escape($"{string.Join(", ", s.Layers)}  ({s.Hook})"));
        summary.AddRow("d_model / dtype", $"{s.DModel} / {StoreDTypes.Name(s.DType)}");
        summary.AddRow("disk", ActivationStoreWriter.Human(store.DiskBytes()));
        summary.AddRow("code version", Markup.Escape(m.CodeVersion));
        foreach (var (k, v) in s.Options) summary.AddRow(Markup.Escape(k), Markup.Escape(v));
        AnsiConsole.Write(summary);

        var models = new Table().AddColumns("#", "model", "path", "adapter", "weights sha256");
        for (int i = 0; i < s.Models.Count; i++)
        {
            var mm = s.Models[i];
            models.AddRow(i.ToString(), Markup.Escape(mm.Name), Markup.Escape(mm.Path), Markup.Escape(mm.Adapter ?? ""),
                Markup.Escape(string.Join(" ", mm.Files.Where(f => f.Name.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase))
                    .Select(f => f.Sha256.Length > 12 ? f.Sha256[..12] : f.Sha256))));
        }
        AnsiConsole.Write(models);

        var src = new Table().AddColumns("source", "kind", "path", "proportion", "tokens", "share");
        var counts = m.SourceTokens();
        for (int i = 0; i < s.Sources.Count; i++)
            src.AddRow(Markup.Escape(s.Sources[i].Name), Markup.Escape(s.Sources[i].Kind), Markup.Escape(s.Sources[i].Path),
                $"{s.Sources[i].Proportion:G4}", $"{counts[i]:N0}", m.Tokens > 0 ? $"{100.0 * counts[i] / m.Tokens:F1}%" : "-");
        AnsiConsole.Write(src);
        if (m.Skipped is { Count: > 0 })
            foreach (var (name, reasons) in m.Skipped)
                if (reasons.Count > 0)
                    AnsiConsole.MarkupLine($"skipped in {Markup.Escape(name)}: {Markup.Escape(string.Join(", ", reasons.Select(kv => $"{kv.Value:N0} {kv.Key}")))}");

        if (m.Tokens > 0)
        {
            var norms = new Table().AddColumns("model", "layer", "mean ‖h‖", "median ‖h‖", "max ‖h‖", "‖mean‖", "√Σvar");
            foreach (int layer in s.Layers)
            {
                var sub = new RandomSubsetBatches(store, layer, sampleTokens, seed: 0);
                var x = new float[sub.Count * store.Models * store.DModel];
                int n = sub.Next(x, (int)sub.Count);
                for (int mi = 0; mi < store.Models; mi++)
                {
                    var nrm = new double[n];
                    for (int r = 0; r < n; r++)
                        nrm[r] = System.Numerics.Tensors.TensorPrimitives.Norm(x.AsSpan((r * store.Models + mi) * store.DModel, store.DModel));
                    Array.Sort(nrm);
                    var st = store.Stats(mi, layer);
                    norms.AddRow(Markup.Escape(s.Models[mi].Name), layer.ToString(), $"{nrm.Average():G4}", $"{nrm[n / 2]:G4}", $"{nrm[^1]:G4}",
                        $"{System.Numerics.Tensors.TensorPrimitives.Norm(st.Mean):G4}", $"{Math.Sqrt(st.TotalVariance):G4}");
                }
            }
            AnsiConsole.MarkupLine($"norms over a random sample of {Math.Min(sampleTokens, m.Tokens):N0} tokens (‖mean‖ and √Σvar over all tokens):");
            AnsiConsole.Write(norms);
        }
        return 0;
    }
}

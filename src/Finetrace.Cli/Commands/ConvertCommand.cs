using System.CommandLine;
using Finetrace.Activations;
using Finetrace.Dictionaries;
using Spectre.Console;

namespace Finetrace.Cli.Commands;

/// <summary><c>finetrace convert IN OUT --to saelens|dictionary-learning</c>.</summary>
public sealed class ConvertCommand : ICliCommand
{
    public Command Build()
    {
        var input = new Argument<string>("in") { Description = "Dictionary folder (crosscoder_learning or SAELens)" };
        var output = new Argument<string>("out") { Description = "Folder to write" };
        var to = new Option<string>("--to") { Description = "saelens | dictionary-learning", Required = true };
        var cmd = new Command("convert", "Convert a dictionary between the crosscoder_learning/dictionary_learning and SAELens v6 formats");
        cmd.Arguments.Add(input); cmd.Arguments.Add(output); cmd.Options.Add(to);
        cmd.SetAction(r =>
        {
            string inDir = r.GetValue(input)!, outDir = r.GetValue(output)!;
            if (Path.GetFullPath(inDir) == Path.GetFullPath(outDir)) throw new ArgumentException("IN and OUT are the same folder; write the converted dictionary elsewhere");
            try { Convert(inDir, outDir, r.GetValue(to)!); }
            catch (FormatCannotHoldException e)
            {
                string flag = e.Alternative switch { DictionaryFileFormat.Saelens => "saelens", DictionaryFileFormat.DictionaryLearning => "dictionary-learning", _ => "" };
                throw new ArgumentException(e.Message + (flag != "" ? $": convert with --to {flag}" : ""), e);
            }
            catch (ThresholdUnsetException e)
            {
                throw new ArgumentException("the BatchTopK threshold is unset (−1): train past --threshold-start so inference has a threshold before converting to SAELens jumprelu", e);
            }
            return 0;
        });
        return cmd;
    }

    static void Convert(string inDir, string outDir, string format)
    {
        {
            var d = DictionaryIO.Load(inDir, n => AnsiConsole.MarkupLine($"[grey]{Markup.Escape(n)}[/]"));
            var what = DictionaryInput.Read(inDir, n => AnsiConsole.MarkupLine($"[grey]{Markup.Escape(n)}[/]"));
            switch (format)
            {
                case "saelens":
                    Dictionary<string, object?>? meta = null;
                    if (what?.Store is string sp && Directory.Exists(sp)) { using var st = ActivationStore.Open(sp); meta = SaelensMetadata.From(st, what); }
                    else AnsiConsole.MarkupLine($"[yellow]note:[/] {(what is null ? "no record of what this dictionary reads" : $"its store {Markup.Escape(what.Store ?? "(unrecorded)")} is not here")}: cfg.json gets no hook_name/model_name/context_size/prepend_bos");
                    var density = SaelensFormat.ReadSparsity(inDir);
                    if (density is not null && density.Length != d.DictSize) density = null;
                    if (what?.Pruning is { IsNone: false } pruning)
                    {
                        // SAELens has no pruning field: fold the per-latent rule into JumpReLU thresholds (exact), or refuse
                        try { d = pruning.FoldIntoThresholds(d); }
                        catch (PruningException e) { throw new ArgumentException($"{inDir} records pruning {e.Spec} (eval --apply-pruning): {e.Problem}, so a SAELens folder cannot reproduce it; record a below-max pruning instead, or remove it with eval --apply-pruning none", e); }
                        AnsiConsole.MarkupLine($"pruning {Markup.Escape(pruning.Spec)} folded into per-latent jumprelu thresholds");
                        what = what with { Pruning = null };
                        density = null;   // measured without the pruning
                    }
                    SaelensFormat.Save(d, outDir, density, meta);
                    break;
                case "dictionary-learning":
                    if (d.Sparsity == Sparsity.JumpRelu && d.IsSae && d.JumpThreshold!.Distinct().Count() == 1 && d.JumpThreshold![0] >= 0)
                    {
                        // a BatchTopK SAE saved as SAELens jumprelu: one shared threshold makes it a BatchTopKSAE again, with the
                        // training k Finetrace recorded in cfg.json's metadata (a foreign jumprelu SAE has none: written as 1)
                        int? trainedK = SaelensFormat.ReadBatchTopKK(inDir);
                        var b = new SparseDictionary(1, d.DModel, d.DictSize, Sparsity.BatchTopK, CodeNormalization.None, true, trainedK ?? 1) { Threshold = d.JumpThreshold![0] };
                        d.WEnc.CopyTo(b.WEnc, 0); d.WDec.CopyTo(b.WDec, 0); d.BEnc.CopyTo(b.BEnc, 0); d.BDec.CopyTo(b.BDec, 0);
                        if (trainedK is null)
                            AnsiConsole.MarkupLine("[yellow]note:[/] a jumprelu SAE with one shared threshold becomes a BatchTopKSAE; its training k is unknown and is written as 1 (inference uses the threshold)");
                        d = b;
                    }
                    DictionaryLearningFormat.Save(d, outDir); break;
                case var s: throw new ArgumentException($"--to {s}: expected saelens or dictionary-learning");
            }
            // what the dictionary reads travels with it (eval, splice and the analyses read it from finetrace.json)
            what?.Write(outDir);
            AnsiConsole.MarkupLine($"wrote {Markup.Escape(outDir)}");
        }
    }
}

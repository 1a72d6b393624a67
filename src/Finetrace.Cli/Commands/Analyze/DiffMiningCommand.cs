using System.CommandLine;
using Finetrace.Diffing;
using Finetrace.Diffing.DiffMining;

namespace Finetrace.Cli.Commands.Analyze;

/// <summary><c>finetrace analyze diff-mining</c>: tokens the fine-tune raises most often and most strongly (methods §12).</summary>
public sealed class DiffMiningCommand : IAnalyzeCommand
{
    public Command Build()
    {
        var cli = new ReadersCli(samples: 1000, context: 64, batch: 16);
        var k = new Option<int>("--k") { Description = "Top-K raised / lowered ids counted per position", DefaultValueFactory = _ => 100 };
        var top = new Option<int>("--top") { Description = "Tokens listed per ordering", DefaultValueFactory = _ => 50 };
        var cont = new Option<int>("--continuation") { Description = "Greedy fine-tuned tokens shown after each context's raised token (0 = none)", DefaultValueFactory = _ => 8 };
        var allTokens = new Option<bool>("--all-tokens") { Description = "List special, byte-fallback and punctuation-only tokens too" };
        var lens = new Option<string?>("--lens-layer") { Description = "Mine the logit lens of this layer's residual instead of the final logits (a fraction r means floor(r·(layers−1)); the reference uses 0.75)" };
        var cmd = new Command("diff-mining",
            "Logit-difference mining: per position Δ = logits_ft − logits_base; the tokens most often in the top-K raised (with counts, " +
            "mean Δ, fraction positive and the contexts where they were raised most) and the text windows the fine-tune prefers → RESULTS/diff_mining.json");
        cli.AddPair(cmd); cli.AddData(cmd);
        foreach (var o in new Option[] { k, top, cont, allTokens, lens }) cmd.Options.Add(o);
        cmd.SetAction(r =>
        {
            var pairSpec = cli.Pair(r);
            int? lensLayer = r.GetValue(lens) is { } lt ? ReadersCli.Layers(lt, pairSpec.Base) is [var one] ? one : throw new ArgumentException("--lens-layer takes one layer") : null;
            var o = new DiffMiningOptions { LensLayer = lensLayer, Models = pairSpec, Corpus = cli.Corpus(r), K = r.GetValue(k), TopTokens = r.GetValue(top), ContinuationTokens = r.GetValue(cont), WordTokensOnly = !r.GetValue(allTokens) };
            if (o.K < 1 || o.TopTokens < 1 || o.ContinuationTokens < 0) throw new ArgumentException("--k and --top must be ≥ 1, --continuation ≥ 0");
            string outDir = r.GetValue(cli.Out)!;
            bool json = r.GetValue(cli.Json);
            return ReadersCli.Cancellable(cancel =>
            {
                var results = ResultsFolder.Open(outDir);
                var progress = ReadersCli.PairedProgressLine("diff-mining", o.Corpus.Samples);
                var res = DiffMiningAnalysis.Run(o, results, progress, cancel);
                if (json) { Console.WriteLine(File.ReadAllText(results.PathOf(DiffMiningAnalysis.OutputFile)).TrimEnd()); return 0; }
                if (res is null) { ReadersCli.Skipped("diff-mining", outDir); return 0; }
                Console.WriteLine($"diff mining over {res.Positions:N0} positions of {res.Samples:N0} samples, top-{res.K}:");
                Console.WriteLine("raised most often (occurrence %, mean Δ; strongest context → fine-tune continues):");
                foreach (var t in res.ByOccurrence.Take(10))
                {
                    var c = t.Contexts.FirstOrDefault();
                    Console.WriteLine($"  {WeightsCommand.Show(t.Token),-10} {t.OccurrencePercent(res.Positions),6:F1}%  {t.MeanLogitDiff,7:F2}" +
                        (c is null ? "" : $"  …{KlCommand.Flat(c.Context)} ⟶ {KlCommand.Flat(c.Continuation ?? "")}"));
                }
                Console.WriteLine("strongest windows (Σ log p_ft − log p_base): ");
                foreach (var w in res.TopWindows.Take(3)) Console.WriteLine($"  {w.LogRatio,8:F1}  {KlCommand.Flat(w.Text)}");
                Console.WriteLine($"written: {results.PathOf(DiffMiningAnalysis.OutputFile)}");
                return 0;
            });
        });
        return cmd;
    }
}

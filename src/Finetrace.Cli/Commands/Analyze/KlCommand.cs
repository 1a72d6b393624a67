using System.CommandLine;
using Finetrace.Diffing;
using Finetrace.Diffing.Kl;

namespace Finetrace.Cli.Commands.Analyze;

/// <summary><c>finetrace analyze kl</c>: per-token KL(p_ft ‖ p_base) over a corpus (methods §8).</summary>
public sealed class KlCommand : IAnalyzeCommand
{
    public Command Build()
    {
        var cli = new ReadersCli(samples: 1000, context: 1024, batch: 4);
        var top = new Option<int>("--top") { Description = "Highest-KL tokens kept with context", DefaultValueFactory = _ => 50 };
        var cmd = new Command("kl",
            "Per-token KL(p_ft ‖ p_base) of the next-token distributions: mean and percentiles, the highest-KL tokens with context, " +
            "and the samples with the highest max / mean KL (chat data: positions that predict assistant tokens) → RESULTS/kl.json");
        cli.AddPair(cmd); cli.AddData(cmd); cmd.Options.Add(top);
        cmd.SetAction(r =>
        {
            var o = new KlOptions { Models = cli.Pair(r), Corpus = cli.Corpus(r), TopTokens = r.GetValue(top) };
            string outDir = r.GetValue(cli.Out)!;
            bool json = r.GetValue(cli.Json);
            return ReadersCli.Cancellable(cancel =>
            {
                var results = ResultsFolder.Open(outDir);
                var progress = ReadersCli.PairedProgressLine("kl", o.Corpus.Samples);
                var res = KlAnalysis.Run(o, results, progress, cancel);
                if (json) { Console.WriteLine(File.ReadAllText(results.PathOf(KlAnalysis.OutputFile)).TrimEnd()); return 0; }
                if (res is null) { ReadersCli.Skipped("kl", outDir); return 0; }
                var s = res.PerToken;
                Console.WriteLine($"KL(ft ‖ base) over {res.Positions:N0} positions of {res.Samples:N0} samples{(res.AssistantOnly ? " (chat: assistant predictions)" : "")}: " +
                                  $"mean {s.Mean:G4}, median {s.Median:G4}, p25 {s.P25:G4}, p75 {s.P75:G4}, p99 {s.P99:G4}, max {s.Max:G4}");
                if (res.VocabNote is not null) Console.WriteLine(res.VocabNote);
                Console.WriteLine("highest-KL tokens (context … token → ft top / base top):");
                foreach (var t in res.TopTokens.Take(10))
                    Console.WriteLine($"  {t.Kl,8:F3}  …{Flat(t.Context)}  → ft {WeightsCommand.Show(t.FtTop)} {t.FtTopProb:P0} / base {WeightsCommand.Show(t.BaseTop)} {t.BaseTopProb:P0}");
                Console.WriteLine($"written: {results.PathOf(KlAnalysis.OutputFile)}");
                return 0;
            });
        });
        return cmd;
    }

    internal static string Flat(string s) => s.Replace("\n", "\\n").Replace("\r", "");
}

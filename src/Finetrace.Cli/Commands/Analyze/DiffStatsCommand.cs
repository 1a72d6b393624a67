using System.CommandLine;
using Finetrace.Diffing;
using Finetrace.Diffing.DiffStats;

namespace Finetrace.Cli.Commands.Analyze;

/// <summary><c>finetrace analyze diff-stats</c>: per-token norm of the activation difference and cosine (methods §9).</summary>
public sealed class DiffStatsCommand : IAnalyzeCommand
{
    public Command Build()
    {
        var cli = new ReadersCli(samples: 1000, context: 1024, batch: 4);
        var layers = new Option<string>("--layers") { Description = "Layers (blocks.{L}.hook_resid_post), e.g. 2 or 1,3; a fraction r means floor(r·(layers−1))", DefaultValueFactory = _ => "0.5" };
        var first = new Option<int>("--first-positions") { Description = "Positions with their own mean difference", DefaultValueFactory = _ => 5 };
        var cmd = new Command("diff-stats",
            "Activation-difference statistics: per token ‖h_ft − h_base‖, cos(h_base, h_ft) and both norms (mean, percentiles), the mean difference " +
            "over all positions, the first ones and each token of the chat-template prefix (candidate steering vectors), and the samples with the largest difference → RESULTS/diff_stats.json, RESULTS/diff_stats/means.safetensors");
        cli.AddPair(cmd); cli.AddData(cmd); cmd.Options.Add(layers); cmd.Options.Add(first);
        cmd.SetAction(r =>
        {
            var pair = cli.Pair(r);
            var o = new DiffStatsOptions { Models = pair, Corpus = cli.Corpus(r), Layers = ReadersCli.Layers(r.GetValue(layers)!, pair.Base), FirstPositions = r.GetValue(first),
                TokenIds = DiffStatsAnalysis.TemplatePrefixIds(Finetrace.Diffing.Kl.KlAnalysis.Encoder(pair)) };
            if (o.FirstPositions < 0) throw new ArgumentException("--first-positions must be ≥ 0");
            string outDir = r.GetValue(cli.Out)!;
            bool json = r.GetValue(cli.Json);
            return ReadersCli.Cancellable(cancel =>
            {
                var results = ResultsFolder.Open(outDir);
                var progress = ReadersCli.PairedProgressLine("diff-stats", o.Corpus.Samples);
                var res = DiffStatsAnalysis.Run(o, results, progress, cancel);
                if (json) { Console.WriteLine(File.ReadAllText(results.PathOf(DiffStatsAnalysis.OutputFile)).TrimEnd()); return 0; }
                if (res is null) { ReadersCli.Skipped("diff-stats", outDir); return 0; }
                foreach (var l in res.Layers)
                    Console.WriteLine($"layer {l.Layer}: {l.Positions:N0} positions; ‖Δ‖ mean {l.NormDiff.Mean:G4} (median {l.NormDiff.Median:G4}, p99 {l.NormDiff.P99:G4}); " +
                                      $"cos mean {l.Cosine.Mean:F3}; ‖h_base‖ {l.NormBase.Mean:G4}, ‖h_ft‖ {l.NormFt.Mean:G4}; ‖mean Δ‖ {l.MeanDiffNorm:G4}");
                Console.WriteLine($"written: {results.PathOf(DiffStatsAnalysis.OutputFile)}, {results.PathOf(DiffStatsAnalysis.MeansFile)}");
                return 0;
            });
        });
        return cmd;
    }
}

using System.CommandLine;
using Finetrace.Diffing;
using Finetrace.Diffing.WeightDiff;

namespace Finetrace.Cli.Commands.Analyze;

/// <summary><c>finetrace analyze weights</c>: the weight diff (methods §18.3), no data needed.</summary>
public sealed class WeightsCommand : IAnalyzeCommand
{
    public Command Build()
    {
        var cli = new ReadersCli();
        var top = new Option<int>("--top-sv") { Description = "Singular values kept per matrix", DefaultValueFactory = _ => 8 };
        var rows = new Option<int>("--rows") { Description = "Embedding / unembedding rows listed", DefaultValueFactory = _ => 50 };
        var cmd = new Command("weights",
            "Weight diff: per parameter ‖ΔW‖/‖W‖, top singular values and effective rank of ΔW (exact for LoRA, from A and B), " +
            "and the embedding / unembedding rows that moved most, as tokens → RESULTS/weight_diff.json");
        cli.AddPair(cmd);
        cmd.Options.Add(top); cmd.Options.Add(rows);
        cmd.SetAction(r =>
        {
            var o = new WeightDiffOptions { Models = cli.Pair(r), TopSingularValues = r.GetValue(top), TopRows = r.GetValue(rows) };
            if (o.TopSingularValues < 1 || o.TopRows < 1) throw new ArgumentException("--top-sv and --rows must be ≥ 1");
            string outDir = r.GetValue(cli.Out)!;
            bool json = r.GetValue(cli.Json);
            return ReadersCli.Cancellable(cancel =>
            {
                var results = ResultsFolder.Open(outDir);
                var res = WeightDiffAnalysis.Run(o, results, null, cancel);
                if (res is null && !json) { ReadersCli.Skipped("weights", outDir); return 0; }
                if (json) { Console.WriteLine(File.ReadAllText(results.PathOf(WeightDiffAnalysis.OutputFile)).TrimEnd()); return 0; }
                Console.WriteLine($"weight diff{(res!.FromAdapter ? " (LoRA, read from the adapter)" : "")}: global ‖ΔW‖/‖W‖ = {res.GlobalRelative:F4}");
                Console.WriteLine("largest relative changes:");
                foreach (var m in res.Modules.Where(m => m.DeltaNorm > 0).OrderByDescending(m => m.Relative).Take(10))
                    Console.WriteLine($"  {m.Name,-48} {m.Relative,8:F4}{(m.EffectiveRank is { } er ? $"  eff. rank {er:F2}" : "")}");
                Console.WriteLine($"embedding rows that moved most{(res.TiedEmbeddings ? " (tied: also the unembedding)" : "")}:");
                Console.WriteLine("  " + string.Join("  ", res.EmbeddingRows.Take(10).Select(x => $"{Show(x.Token)} {x.DeltaNorm:F3}")));
                if (res.UnembeddingRows is { Count: > 0 } un)
                    Console.WriteLine("unembedding rows: " + string.Join("  ", un.Take(10).Select(x => $"{Show(x.Token)} {x.DeltaNorm:F3}")));
                Console.WriteLine($"written: {results.PathOf(WeightDiffAnalysis.OutputFile)}");
                return 0;
            });
        });
        return cmd;
    }

    internal static string Show(string token) => "'" + token.Replace("\n", "\\n") + "'";
}

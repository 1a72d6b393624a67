using System.CommandLine;
using Finetrace.Diffing;
using Finetrace.Diffing.Pca;

namespace Finetrace.Cli.Commands.Analyze;

/// <summary><c>finetrace analyze pca</c>: PCA of the activation difference (methods §10).</summary>
public sealed class PcaCommand : IAnalyzeCommand
{
    public Command Build()
    {
        var cli = new ReadersCli(samples: 1000, context: 1024, batch: 4);
        var layers = new Option<string>("--layers") { Description = "Layers (blocks.{L}.hook_resid_post); a fraction r means floor(r·(layers−1))", DefaultValueFactory = _ => "0.5" };
        var target = new Option<string>("--target") { Description = "ft-base, base-ft, base or ft", DefaultValueFactory = _ => "ft-base" };
        var components = new Option<int?>("--components") { Description = "Components stored (default: all)" };
        var analyzed = new Option<int>("--analyze") { Description = "Leading components given examples and a logit lens", DefaultValueFactory = _ => 10 };
        var cmd = new Command("pca",
            "PCA of the activation difference: components, explained variance (ratio), mean, and for the leading components their most positive / " +
            "negative contexts and logit lens → RESULTS/pca/layer_{L}.safetensors (IncrementalPCA's names) and RESULTS/pca/pca.json");
        cli.AddPair(cmd); cli.AddData(cmd);
        foreach (var o in new Option[] { layers, target, components, analyzed }) cmd.Options.Add(o);
        cmd.SetAction(r =>
        {
            var pair = cli.Pair(r);
            var o = new PcaOptions
            {
                Models = pair, Corpus = cli.Corpus(r), Layers = ReadersCli.Layers(r.GetValue(layers)!, pair.Base),
                Target = r.GetValue(target) switch
                {
                    "ft-base" => PcaTarget.FtMinusBase, "base-ft" => PcaTarget.BaseMinusFt, "base" => PcaTarget.Base, "ft" => PcaTarget.Ft,
                    var t => throw new ArgumentException($"--target: '{t}' is not ft-base, base-ft, base or ft"),
                },
                Components = r.GetValue(components), Analyzed = r.GetValue(analyzed),
            };
            if (o.Components is < 1 || o.Analyzed < 0) throw new ArgumentException("--components must be ≥ 1 and --analyze ≥ 0");
            string outDir = r.GetValue(cli.Out)!;
            bool json = r.GetValue(cli.Json);
            return ReadersCli.Cancellable(cancel =>
            {
                var results = ResultsFolder.Open(outDir);
                var progress = ReadersCli.PairedProgressLine("pca", o.Corpus.Samples);
                var res = PcaAnalysis.Run(o, results, progress, cancel);
                if (json) { Console.WriteLine(File.ReadAllText(results.PathOf(PcaAnalysis.SummaryFile)).TrimEnd()); return 0; }
                if (res is null) { ReadersCli.Skipped("pca", outDir); return 0; }
                foreach (var l in res)
                {
                    var m = l.Model;
                    Console.WriteLine($"layer {m.Layer}: {m.Samples:N0} positions; explained variance ratio of the first components: " +
                                      string.Join(" ", m.ExplainedVarianceRatio.Take(8).Select(x => x.ToString("F3"))));
                    foreach (var c in l.Analyzed.Take(3))
                        Console.WriteLine($"  PC{c.Index}: +lens {string.Join(" ", c.LensPositive.Take(8).Select(x => WeightsCommand.Show(x.Token)))}; " +
                                          $"−lens {string.Join(" ", c.LensNegative.Take(8).Select(x => WeightsCommand.Show(x.Token)))}");
                }
                Console.WriteLine($"written: {results.PathOf(PcaAnalysis.Folder)}");
                return 0;
            });
        });
        return cmd;
    }
}

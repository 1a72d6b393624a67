using System.CommandLine;
using System.Text.Json;
using Finetrace.Activations;
using Finetrace.Diffing;
using Finetrace.Diffing.Examples;
using Finetrace.Diffing.Latents;
using Finetrace.Text.Tokenization;

namespace Finetrace.Cli.Commands.Analyze;

/// <summary><c>finetrace analyze examples</c>: max-activating and quantile-band examples per latent (formats.md §5).</summary>
public sealed class ExamplesCommand : IAnalyzeCommand
{
    public Command Build()
    {
        var a = new AnalyzeArgs();
        var positions = new Option<long>("--positions") { Description = "Positions to stream (whole sequences, store order; default: the whole store)" };
        var topK = new Option<int>("--top-k") { Description = "Max-activating sequences per latent", DefaultValueFactory = _ => 20 };
        var perBand = new Option<int>("--per-band") { Description = "Sequences sampled per activation band (edges 0.25, 0.5, 0.75, 0.95, 1 of the latent's max)", DefaultValueFactory = _ => 10 };
        var seed = new Option<ulong>("--seed") { Description = "Seed of the band sampling", DefaultValueFactory = _ => 0UL };
        var cmd = new Command("examples", "Max-activating contexts and activation-band samples for every latent, with per-token values, in RESULTS/examples.sqlite " +
            "(the diffing-toolkit schema; stable SHA-256 sequence uids)");
        a.AddTo(cmd, models: false);
        foreach (var o in new Option[] { positions, topK, perBand, seed }) cmd.Options.Add(o);
        cmd.SetAction(r =>
        {
            var o = new ExampleOptions { MaxPositions = r.GetValue(positions), TopK = r.GetValue(topK), PerBand = r.GetValue(perBand), Seed = r.GetValue(seed) };
            if (o.TopK < 1 || o.PerBand < 0) throw new ArgumentException("--top-k must be at least 1 and --per-band non-negative");
            bool json = r.GetValue(a.Json);
            using var store = ActivationStore.Open(r.GetValue(a.Store)!);
            string dictDir = r.GetValue(a.Dictionary)!;
            var ad = AnalysisDictionary.Open(dictDir, store, r.GetValue(a.Layer), AnalyzeSupport.Note);
            var results = ResultsFolder.Open(r.GetValue(a.Out)!);
            string hash = AnalyzeSupport.Inputs(dictDir, store, ad.Layer).Add("positions", o.MaxPositions).Add("top_k", o.TopK).Add("per_band", o.PerBand).Add("seed", o.Seed).ToString();
            string path = results.PathOf(ExampleCollector.FileName);
            bool current = !r.GetValue(a.Force) && results.IsCurrent(ExampleCollector.Stage, hash);
            long examples = 0, latents = 0;
            if (!current)
            {
                var knownMax = KnownMax(results, ad, store, dictDir);
                if (knownMax is null && !json) AnalyzeSupport.Note("no current latent table with max_act_all: a first pass finds each latent's max (run 'analyze latents' first to skip it)");
                var res = AnalyzeSupport.Cancellable(ct => ExampleCollector.Run(ad, store, o, knownMax, json ? null : new StderrProgress("examples"), ct));
                Tokenizer? tok = null;
                foreach (var m in store.Settings.Models)
                    if (tok is null && !string.IsNullOrEmpty(m.Path) && File.Exists(Path.Combine(m.Path, "tokenizer.json"))) tok = Tokenizer.FromFolder(m.Path);
                ExampleCollector.Write(res, store, path, o.TopK, tok is null ? null : ids => tok.Decode(ids));
                results.Record(ExampleCollector.Stage, hash, [ExampleCollector.FileName], new System.Text.Json.Nodes.JsonObject
                {
                    ["dictionary"] = Path.GetFullPath(dictDir), ["store"] = store.Directory, ["layer"] = ad.Layer, ["positions"] = res.Positions, ["sequences"] = res.Sequences,
                });
                examples = res.Top.Count + res.Bands.Count;
                latents = res.Top.Select(e => e.Latent).Distinct().LongCount();
            }
            else if (!json) AnalyzeSupport.Note($"examples are current in {path}; --force collects them again");
            if (json) Console.WriteLine(JsonSerializer.Serialize(new { examples, latents_with_examples = latents, file = path, skipped_as_current = current }));
            else if (!current) Console.WriteLine($"{examples:N0} examples for {latents:N0} latents in {path}");
            return 0;
        });
        return cmd;
    }

    /// <summary>max_act_all from a current latent table of the same dictionary and store, when there is one.</summary>
    static double[]? KnownMax(ResultsFolder results, AnalysisDictionary ad, ActivationStore store, string dictDir)
    {
        if (!results.Stages().TryGetValue(LatentTable.Stage, out var rec) || rec.Inputs is null) return null;
        if ((string?)rec.Inputs["dictionary"] != Path.GetFullPath(dictDir) || (string?)rec.Inputs["store"] != store.Directory) return null;
        var table = results.PathOf(FeatureTable.FileName);
        if (!File.Exists(table)) return null;
        var t = FeatureTable.Load(table);
        return t.Rows == ad.Latents && t.Has("max_act_all") ? t.Numbers("max_act_all") : null;
    }
}

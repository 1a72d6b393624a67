using System.CommandLine;
using System.Text.Json;
using System.Text.Json.Nodes;
using Finetrace.Activations;
using Finetrace.Dictionaries;
using Finetrace.Diffing;
using Finetrace.Diffing.Causal;

namespace Finetrace.Cli.Commands.Analyze;

/// <summary><c>finetrace analyze causal</c>: KL gap closed by patching latent sets (methods.md §6).</summary>
public sealed class CausalCommand : IAnalyzeCommand
{
    public Command Build()
    {
        var a = new AnalyzeArgs();
        var sequences = new Option<int>("--sequences") { Description = "Stored sequences to re-run (a seeded sample)", DefaultValueFactory = _ => 64 };
        var seed = new Option<int>("--seed") { Description = "Seed of the sequence sample and the random sets", DefaultValueFactory = _ => 0 };
        var randomSeeds = new Option<int>("--random-sets") { Description = "Random latent sets (seeds) of the first set's size", DefaultValueFactory = _ => 5 };
        var threshold = new Option<double>("--threshold") { Description = "Threshold set: dec_norm_diff at or below this", DefaultValueFactory = _ => 0.3 };
        var latents = new Option<string?>("--latents") { Description = "A user set: comma-separated latent ids" };
        var pool = new Option<string>("--random-from") { Description = "Random sets drawn from: ft-only (the fine-tune-only latents the halves split: the fair null for the halves; every latent for a diff-SAE) or all (every latent that fired)", DefaultValueFactory = _ => "ft-only" };
        var cmd = new Command("causal", "Causal evaluation: patch latent sets (crosscoder or diff-SAE) into the base model's residual at the dictionary's layer and let the fine-tuned model continue; " +
            "KL(p_ft ‖ p_patched) on assistant tokens (all tokens for plain text) and the fraction of the KL gap closed, in RESULTS/causal.json. " +
            "Sets come from feature_df.csv: run 'analyze latents' and 'analyze scaling' first");
        a.AddTo(cmd, models: true);
        foreach (var o in new Option[] { sequences, seed, randomSeeds, threshold, latents, pool }) cmd.Options.Add(o);
        cmd.SetAction(r =>
        {
            var o = new CausalOptions { Sequences = r.GetValue(sequences), Seed = r.GetValue(seed), RandomSeeds = r.GetValue(randomSeeds) };
            if (o.Sequences < 1 || o.RandomSeeds < 0) throw new ArgumentException("--sequences must be at least 1 and --random-sets non-negative");
            int[]? user = r.GetValue(latents) is { } text
                ? text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Select(s => int.TryParse(s, out int j) ? j : throw new ArgumentException($"--latents: '{s}' is not a latent id")).ToArray()
                : null;
            string poolKind = r.GetValue(pool)!;
            if (poolKind is not ("ft-only" or "all")) throw new ArgumentException($"--random-from {poolKind}: expected ft-only or all");
            bool json = r.GetValue(a.Json);
            using var store = ActivationStore.Open(r.GetValue(a.Store)!);
            string dictDir = r.GetValue(a.Dictionary)!;
            var ad = AnalysisDictionary.Open(dictDir, store, r.GetValue(a.Layer), AnalyzeSupport.Note);
            var results = ResultsFolder.Open(r.GetValue(a.Out)!);
            string tablePath = results.PathOf(FeatureTable.FileName);
            if (!File.Exists(tablePath)) throw new FileNotFoundException($"{tablePath} does not exist: run 'finetrace analyze latents' and 'finetrace analyze scaling' with the same --out first");
            var table = FeatureTable.Load(tablePath);
            if (table.Rows != ad.Latents) throw new InvalidDataException($"{tablePath} has {table.Rows} latents, the dictionary {ad.Latents}: it belongs to another dictionary");
            var sets = CausalEvaluation.SetsFromTable(table, r.GetValue(threshold), user, ad.Kind == InputKind.Difference);
            if (sets.Count == 0) throw new InvalidOperationException($"{tablePath}: no latent sets (no fine-tune-only latents, no dec_norm_diff ≤ {r.GetValue(threshold)}, no --latents)");
            int[]? randomPool = poolKind == "ft-only"
                ? sets.Where(s => s.Name.StartsWith("rank_sum", StringComparison.Ordinal)).SelectMany(s => s.Latents).Distinct().Order().ToArray()
                : table.Has("freq_all") ? Enumerable.Range(0, table.Rows).Where(j => table.Numbers("freq_all")[j] > 0).ToArray() : null;
            if (randomPool is { Length: 0 }) randomPool = null;
            string hash = AnalyzeSupport.Inputs(dictDir, store, ad.Layer).AddPath("table", tablePath).Add("sequences", o.Sequences).Add("seed", o.Seed)
                .Add("random", o.RandomSeeds).Add("threshold", r.GetValue(threshold)).Add("latents", r.GetValue(latents)).Add("pool", poolKind)
                .Add("base", r.GetValue(a.Base)).Add("finetuned", r.GetValue(a.FineTuned)).Add("adapter", r.GetValue(a.Adapter)).ToString();
            string outPath = results.PathOf(CausalEvaluation.FileName);
            bool current = !r.GetValue(a.Force) && results.IsCurrent(CausalEvaluation.Stage, hash);
            if (!current)
            {
                var models = SplicedEvaluation.LoadModels(store, [0, 1], r.GetValue(a.Base), r.GetValue(a.FineTuned), r.GetValue(a.Adapter));
                try
                {
                    var res = AnalyzeSupport.Cancellable(ct => CausalEvaluation.Run(ad, store, models[0]!, models[1]!, sets, o, randomPool, json ? null : new StderrProgress("causal", "sequences"), ct));
                    var arr = new JsonArray(res.Entries.Select(e => (JsonNode)e.ToJson()).ToArray());
                    ResultsFolder.WriteAllTextAtomic(outPath, arr.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
                    results.Record(CausalEvaluation.Stage, hash, [CausalEvaluation.FileName], new JsonObject
                    {
                        ["dictionary"] = Path.GetFullPath(dictDir), ["store"] = store.Directory, ["layer"] = ad.Layer, ["sequences"] = res.Sequences,
                        ["scored_positions"] = res.Positions, ["tokens"] = res.Chat ? "assistant" : "all", ["random_from"] = poolKind,
                    });
                }
                finally { foreach (var m in models) m?.Dispose(); }
            }
            else if (!json) AnalyzeSupport.Note($"{outPath} is current; --force reruns it");
            var entries = JsonNode.Parse(File.ReadAllText(outPath))!.AsArray();
            if (json) { Console.WriteLine(new JsonObject { ["file"] = outPath, ["entries"] = entries.DeepClone(), ["skipped_as_current"] = current }.ToJsonString()); return 0; }
            foreach (var e in entries)
            {
                bool shown = ad.Kind == InputKind.Difference ? e!["patch"]!.GetValue<string>() is not "latent_set" : e!["patch"]!.GetValue<string>() is "latent_set" or "vanilla" or "base_error";
                if (!shown || (e["set"]!.GetValue<string>() == "random" && !e["aggregate"]!.GetValue<bool>())) continue;
                string spread = e["aggregate"]!.GetValue<bool>() ? $" ± {e["gap_closed_std"]!.GetValue<double>():F3} over {o.RandomSeeds} seeds" : "";
                Console.WriteLine($"{e["set"],-24} {e["patch"],-10} {e["size"],5} latents: KL {e["kl_all"]!.GetValue<double>():F4}, gap closed {e["gap_closed"]!.GetValue<double>():F3}{spread}");
            }
            return 0;
        });
        return cmd;
    }
}

using System.CommandLine;
using System.Text.Json;
using System.Text.Json.Nodes;
using Finetrace.Activations;
using Finetrace.Dictionaries;
using Finetrace.Diffing;
using Finetrace.Diffing.Attribution;
using Finetrace.Models.Backward;

namespace Finetrace.Cli.Commands.Analyze;

/// <summary><c>finetrace analyze attribution</c>: first-order per-latent KL attribution (methods.md §18.2).</summary>
public sealed class AttributionCommand : IAnalyzeCommand
{
    public Command Build()
    {
        var a = new AnalyzeArgs();
        var sequences = new Option<int>("--sequences") { Description = "Stored sequences to re-run (the causal evaluation's sample for the same seed)", DefaultValueFactory = _ => 64 };
        var seed = new Option<int>("--seed") { Description = "Seed of the sequence sample", DefaultValueFactory = _ => 0 };
        var keep = new Option<int>("--top-latents") { Description = "Latents listed with their top tokens in attribution.json", DefaultValueFactory = _ => 50 };
        var cmd = new Command("attribution", "Per-latent KL attribution: the first-order change of KL(p_ft ‖ p_patched) from adding each latent's difference to the base " +
            "residual (one backward per batch through the fine-tuned model's blocks after the layer); kl_attribution in feature_df.csv (negative closes the gap) " +
            "and the tokens where each top latent closes the most KL in RESULTS/attribution.json. A linear estimate: check large effects with 'analyze causal --latents'");
        a.AddTo(cmd, models: true);
        foreach (var o in new Option[] { sequences, seed, keep }) cmd.Options.Add(o);
        cmd.SetAction(r =>
        {
            var o = new AttributionOptions { Sequences = r.GetValue(sequences), Seed = r.GetValue(seed) };
            bool json = r.GetValue(a.Json);
            using var store = ActivationStore.Open(r.GetValue(a.Store)!);
            string dictDir = r.GetValue(a.Dictionary)!;
            var ad = AnalysisDictionary.Open(dictDir, store, r.GetValue(a.Layer), AnalyzeSupport.Note);
            var results = ResultsFolder.Open(r.GetValue(a.Out)!);
            string hash = AnalyzeSupport.Inputs(dictDir, store, ad.Layer).Add("sequences", o.Sequences).Add("seed", o.Seed).Add("keep", r.GetValue(keep))
                .Add("base", r.GetValue(a.Base)).Add("finetuned", r.GetValue(a.FineTuned)).Add("adapter", r.GetValue(a.Adapter)).ToString();
            string table = results.PathOf(FeatureTable.FileName), outPath = results.PathOf("attribution.json");
            bool current = !r.GetValue(a.Force) && results.IsCurrent(KlAttribution.Stage, hash);
            if (!current)
            {
                var models = SplicedEvaluation.LoadModels(store, [0, 1], r.GetValue(a.Base), r.GetValue(a.FineTuned), r.GetValue(a.Adapter));
                try
                {
                    var sm = store.Settings.Models[1];
                    var ftDiff = new DifferentiableLM(ModelParameters.Load(models[1]!.Folder, r.GetValue(a.Adapter) ?? sm.Adapter));
                    var res = AnalyzeSupport.Cancellable(ct => KlAttribution.Run(ad, store, models[0]!, models[1]!, ftDiff, o, json ? null : new StderrProgress("attribution", "sequences"), ct));
                    var t = FeatureTable.LoadOrCreate(table, ad.Latents);
                    KlAttribution.WriteColumns(res, t);
                    t.Save(table);
                    var tok = Finetrace.Text.Tokenization.Tokenizer.FromFolder(models[1]!.Folder);
                    var top = Enumerable.Range(0, ad.Latents).OrderBy(j => res.Effect[j]).Take(r.GetValue(keep)).Select(j => (JsonNode)new JsonObject
                    {
                        ["latent"] = j, ["kl_attribution"] = res.Effect[j],
                        ["top_tokens"] = new JsonArray(res.TopTokens[j].Select(x => (JsonNode)new JsonObject
                        {
                            ["sequence"] = x.Sequence, ["position"] = x.Position, ["token_id"] = x.TokenId, ["token"] = tok.Decode([x.TokenId]), ["effect"] = x.Effect,
                        }).ToArray()),
                    }).ToArray();
                    var doc = new JsonObject
                    {
                        ["kl_base_to_ft"] = res.KlEmpty, ["scored_positions"] = res.Positions, ["sequences"] = res.Sequences, ["tokens"] = res.Chat ? "assistant" : "all",
                        ["meaning"] = "first-order change of the mean KL(p_ft || p_patched) from adding the latent's difference at every position; negative closes the gap",
                        ["latents"] = new JsonArray(top),
                    };
                    ResultsFolder.WriteAllTextAtomic(outPath, doc.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
                    results.Record(KlAttribution.Stage, hash, [FeatureTable.FileName, "attribution.json"], new JsonObject
                    {
                        ["dictionary"] = Path.GetFullPath(dictDir), ["store"] = store.Directory, ["layer"] = ad.Layer, ["sequences"] = res.Sequences,
                    });
                }
                finally { foreach (var m in models) m?.Dispose(); }
            }
            else if (!json) AnalyzeSupport.Note($"{outPath} is current; --force reruns it");
            var saved = JsonNode.Parse(File.ReadAllText(outPath))!.AsObject();
            var first = saved["latents"]!.AsArray().Take(5).Select(n => $"{n!["latent"]} ({n["kl_attribution"]!.GetValue<double>():F4})");
            if (json) Console.WriteLine(new JsonObject { ["file"] = outPath, ["kl_base_to_ft"] = saved["kl_base_to_ft"]!.DeepClone(), ["skipped_as_current"] = current }.ToJsonString());
            else Console.WriteLine($"KL(ft ‖ base→ft) {saved["kl_base_to_ft"]!.GetValue<double>():F4} on {saved["tokens"]} tokens; latents closing the most to first order: {string.Join(", ", first)}");
            return 0;
        });
        return cmd;
    }
}

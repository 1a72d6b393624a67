using System.CommandLine;
using System.Text.Json;
using Finetrace.Activations;
using Finetrace.Dictionaries;
using Finetrace.Diffing;
using Finetrace.Diffing.Latents;
using Finetrace.Models;
using Finetrace.Text.Tokenization;

namespace Finetrace.Cli.Commands.Analyze;

/// <summary><c>finetrace analyze latents</c>: the latent table (methods.md §4, §7, §14).</summary>
public sealed class LatentsCommand : IAnalyzeCommand
{
    public Command Build()
    {
        var a = new AnalyzeArgs();
        var positions = new Option<long>("--positions") { Description = "Positions to stream, in store order (default: the whole store)" };
        var filter = new Option<string>("--filter") { Description = "Token filter, e.g. '!bos'", DefaultValueFactory = _ => "all" };
        var exclusive = new Option<double>("--exclusive-threshold") { Description = "ft_only below / base_only above 1 − this on dec_norm_diff", DefaultValueFactory = _ => 0.1 };
        var shared = new Option<double>("--shared-band") { Description = "shared when |dec_norm_diff − 0.5| is below this", DefaultValueFactory = _ => 0.1 };
        var noLogits = new Option<bool>("--no-logits") { Description = "Skip the logit effects (they load the models' unembeddings)" };
        var cmd = new Command("latents", "The latent table: decoder/encoder norms per model, dec_norm_diff (0 = fine-tune only) and delta_norm (1 = fine-tune only), " +
            "cosines, tags, firing frequency and max activation per data source, BOS/template/user/assistant shares, top_tokens and logit effects (feature_df.csv)");
        a.AddTo(cmd, models: true);
        foreach (var o in new Option[] { positions, filter, exclusive, shared, noLogits }) cmd.Options.Add(o);
        cmd.SetAction(r =>
        {
            var o = new LatentTableOptions
            {
                MaxPositions = r.GetValue(positions), Filter = MaskFilter.Parse(r.GetValue(filter)),
                Tags = new TagThresholds { Exclusive = r.GetValue(exclusive), SharedBand = r.GetValue(shared) },
            };
            bool json = r.GetValue(a.Json), logits = !r.GetValue(noLogits);
            using var store = ActivationStore.Open(r.GetValue(a.Store)!);
            string dictDir = r.GetValue(a.Dictionary)!;
            var ad = AnalysisDictionary.Open(dictDir, store, r.GetValue(a.Layer), AnalyzeSupport.Note);
            var results = ResultsFolder.Open(r.GetValue(a.Out)!);
            string hash = AnalyzeSupport.Inputs(dictDir, store, ad.Layer).Add("positions", o.MaxPositions).Add("filter", o.Filter.ToString())
                .Add("exclusive", o.Tags.Exclusive).Add("shared", o.Tags.SharedBand).Add("logits", logits)
                .Add("base", r.GetValue(a.Base)).Add("finetuned", r.GetValue(a.FineTuned)).Add("adapter", r.GetValue(a.Adapter)).ToString();
            string table = results.PathOf(FeatureTable.FileName);
            bool current = !r.GetValue(a.Force) && results.IsCurrent(LatentTable.Stage, hash) && File.Exists(table);
            if (!current)
            {
                var res = AnalyzeSupport.Cancellable(ct => LatentTable.Run(ad, store, o, json ? null : new StderrProgress("latent statistics"), ct));
                var tok = LoadTokenizer(store, r.GetValue(a.FineTuned) ?? r.GetValue(a.Base));
                Func<int, string>? decode = tok is null ? null : id => tok.Decode([id]);
                var t = FeatureTable.LoadOrCreate(table, ad.Latents);
                LatentTable.WriteColumns(res, t, decode);
                if (logits) WriteLogits(ad, store, t, decode, r.GetValue(a.Base), r.GetValue(a.FineTuned), r.GetValue(a.Adapter));
                t.Save(table);
                results.Record(LatentTable.Stage, hash, [FeatureTable.FileName], new System.Text.Json.Nodes.JsonObject
                {
                    ["dictionary"] = Path.GetFullPath(dictDir), ["store"] = store.Directory, ["layer"] = ad.Layer, ["positions"] = res.Positions,
                });
            }
            else if (!json) AnalyzeSupport.Note($"the latent table is current in {results.Directory}; --force rebuilds it");
            var ft = FeatureTable.Load(table);
            var tags = ft.Has("tag") ? ft.Texts("tag") : [];
            var freq = ft.Numbers("freq_all");
            int dead = freq.Count(f => f == 0);
            var counts = tags.Where(x => x != "").GroupBy(x => x).ToDictionary(g => g.Key, g => g.Count());
            if (json) Console.WriteLine(JsonSerializer.Serialize(new { latents = ft.Rows, tags = counts, dead, skipped_as_current = current }));
            else
            {
                string tagText = counts.Count == 0 ? "" : string.Join(", ", counts.OrderBy(kv => kv.Key).Select(kv => $"{kv.Value:N0} {kv.Key}")) + "; ";
                Console.WriteLine($"{ft.Rows:N0} latents: {tagText}{dead:N0} never fired; table in {table}");
            }
            return 0;
        });
        return cmd;
    }

    static Tokenizer? LoadTokenizer(ActivationStore store, string? overrideDir)
    {
        foreach (var dir in new[] { overrideDir }.Concat(store.Settings.Models.Select(m => m.Path)))
            if (!string.IsNullOrEmpty(dir) && File.Exists(Path.Combine(dir, "tokenizer.json")))
                return Tokenizer.FromFolder(dir);
        AnalyzeSupport.Note("no tokenizer.json found beside the store's models: token columns hold ids");
        return null;
    }

    static void WriteLogits(AnalysisDictionary ad, ActivationStore store, FeatureTable t, Func<int, string>? decode, string? baseDir, string? ftDir, string? adapter)
    {
        CausalLM?[] models;
        try { models = SplicedEvaluation.LoadModels(store, Enumerable.Range(0, store.Models), baseDir, ftDir, adapter); }
        catch (DirectoryNotFoundException e) when (baseDir is null && ftDir is null && adapter is null)
        {
            AnalyzeSupport.Note($"logit effects skipped: {e.Message}");
            return;
        }
        try
        {
            decode ??= id => id.ToString(System.Globalization.CultureInfo.InvariantCulture);
            for (int m = 0; m < store.Models; m++)
            {
                if (models[m] is not { } lm) continue;
                string who = Finetrace.Diffing.Scaling.ScalingAccumulator.ModelName(m, store.Models);
                // crosscoders: model m's own decoder row; single-decoder dictionaries: the one direction through each model
                int row = ad.Kind == InputKind.Paired ? m : 0;
                var eff = LogitEffects.Compute(ad, row, lm);
                t.Set($"logit_top_{who}", eff.TopIds.Select(ids => LatentTable.TokenList(ids.Select(decode))).ToArray());
                t.Set($"logit_bottom_{who}", eff.BottomIds.Select(ids => LatentTable.TokenList(ids.Select(decode))).ToArray());
            }
        }
        finally { foreach (var lm in models) lm?.Dispose(); }
    }
}

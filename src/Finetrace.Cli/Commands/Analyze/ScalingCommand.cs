using System.CommandLine;
using System.Text.Json;
using Finetrace.Activations;
using Finetrace.Dictionaries;
using Finetrace.Diffing;
using Finetrace.Diffing.Latents;
using Finetrace.Diffing.Scaling;

namespace Finetrace.Cli.Commands.Analyze;

/// <summary><c>finetrace analyze scaling</c>: Latent Scaling of every latent (methods.md §5).</summary>
public sealed class ScalingCommand : IAnalyzeCommand
{
    public Command Build()
    {
        var a = new AnalyzeArgs();
        var positions = new Option<long>("--positions") { Description = "Positions N to use, in store order (default: the whole store)" };
        var filter = new Option<string>("--filter") { Description = "Token filter, e.g. '!bos'", DefaultValueFactory = _ => "all" };
        var probe = new Option<string>("--probe") { Description = "Probe decoder row: ft (default), base, or auto (base row for base-only latents)", DefaultValueFactory = _ => "ft" };
        var chunks = new Option<int>("--chunks") { Description = "Contiguous chunks for the 95% batch-means intervals", DefaultValueFactory = _ => 20 };
        var errT = new Option<double>("--error-threshold") { Description = "Fine-tune-specific needs ν^ε below this", DefaultValueFactory = _ => 0.2 };
        var recT = new Option<double>("--reconstruction-threshold") { Description = "Fine-tune-specific needs ν^r below this", DefaultValueFactory = _ => 0.5 };
        var actT = new Option<double>("--activation-threshold") { Description = "diff-SAEs/SAEs: fine-tune-specific when |ν_act| ≤ this", DefaultValueFactory = _ => 0.3 };
        var exclusive = new Option<double>("--exclusive-threshold") { Description = "ft_only tag: dec_norm_diff below this", DefaultValueFactory = _ => 0.1 };
        var cmd = new Command("scaling", "Latent Scaling for every latent in one pass over the store: β for the error, reconstruction and activation targets, " +
            "the ratios ν^ε, ν^r, ν_act with 95% intervals, rank_sum and the fine-tune-specific selection (columns in feature_df.csv, tensors in latent_scaling/)");
        a.AddTo(cmd, models: false);
        foreach (var o in new Option[] { positions, filter, probe, chunks, errT, recT, actT, exclusive }) cmd.Options.Add(o);
        cmd.SetAction(r =>
        {
            var side = r.GetValue(probe) switch
            {
                "ft" => ProbeSide.FineTuned, "base" => ProbeSide.Base, "auto" => ProbeSide.BaseForBaseOnly,
                var s => throw new ArgumentException($"--probe {s}: expected ft, base or auto"),
            };
            if (r.GetValue(chunks) < 2) throw new ArgumentException($"--chunks {r.GetValue(chunks)}: at least 2 chunks are needed for an interval");
            var o = new LatentScalingOptions
            {
                MaxPositions = r.GetValue(positions), Filter = MaskFilter.Parse(r.GetValue(filter)), Probe = side, Chunks = r.GetValue(chunks),
                ErrorThreshold = r.GetValue(errT), ReconstructionThreshold = r.GetValue(recT), ActivationThreshold = r.GetValue(actT),
                Tags = new TagThresholds { Exclusive = r.GetValue(exclusive) },
            };
            bool json = r.GetValue(a.Json);
            using var store = ActivationStore.Open(r.GetValue(a.Store)!);
            string dictDir = r.GetValue(a.Dictionary)!;
            var ad = AnalysisDictionary.Open(dictDir, store, r.GetValue(a.Layer), AnalyzeSupport.Note);
            var results = ResultsFolder.Open(r.GetValue(a.Out)!);
            string hash = AnalyzeSupport.Inputs(dictDir, store, ad.Layer).Add("positions", o.MaxPositions).Add("filter", o.Filter.ToString()).Add("probe", o.Probe.ToString())
                .Add("chunks", o.Chunks).Add("error", o.ErrorThreshold).Add("reconstruction", o.ReconstructionThreshold).Add("activation", o.ActivationThreshold)
                .Add("exclusive", o.Tags.Exclusive).ToString();
            string table = results.PathOf(FeatureTable.FileName);
            bool current = !r.GetValue(a.Force) && results.IsCurrent(LatentScaler.Stage, hash) && File.Exists(table);
            if (!current)
            {
                var res = AnalyzeSupport.Cancellable(ct => LatentScaler.Run(ad, store, o, json ? null : new StderrProgress("latent scaling"), ct));
                LatentScaler.WriteTensors(res, results);
                var t = FeatureTable.LoadOrCreate(table, ad.Latents);
                LatentScaler.WriteColumns(res, t);
                if (ad.Kind == InputKind.Paired && !t.Has("tag"))
                    LatentGeometry.WriteColumns(LatentGeometry.Compute(ad.Dict, ad.Kind, o.Tags), t);
                t.Save(table);
                results.Record(LatentScaler.Stage, hash, [FeatureTable.FileName, LatentScaler.TensorFile], new System.Text.Json.Nodes.JsonObject
                {
                    ["dictionary"] = Path.GetFullPath(dictDir), ["store"] = store.Directory, ["layer"] = ad.Layer, ["num_samples"] = res.Positions,
                    ["probe_side"] = res.ProbeSide, ["space"] = res.Space, ["chunks"] = res.Chunks,
                });
            }
            else if (!json) AnalyzeSupport.Note($"latent scaling is current in {results.Directory} (same dictionary, store and options); --force reruns it");
            Summarise(FeatureTable.Load(table), json, current);
            return 0;
        });
        return cmd;
    }

    static void Summarise(FeatureTable t, bool json, bool current)
    {
        int ftOnly = t.Has("tag") ? t.Texts("tag").Count(x => x == "ft_only") : 0;
        int specific = t.Has("ft_specific") ? t.Booleans("ft_specific").Count(x => x) : 0;
        int evaluated = t.Has("beta_ratio_error") ? t.Numbers("beta_ratio_error").Count(v => !double.IsNaN(v))
            : t.Has("beta_activation_ratio") ? t.Numbers("beta_activation_ratio").Count(v => !double.IsNaN(v)) : 0;
        if (json)
        {
            Console.WriteLine(JsonSerializer.Serialize(new { latents = t.Rows, evaluated, ft_only = ftOnly, ft_specific = specific, skipped_as_current = current }));
            return;
        }
        if (t.Has("beta_ratio_error"))
            Console.WriteLine($"{ftOnly:N0} fine-tune-only latents by norm; {specific:N0} survive Latent Scaling (ν^ε and ν^r below their thresholds); {evaluated:N0} of {t.Rows:N0} latents fired and have ν");
        else
            Console.WriteLine($"{specific:N0} of {t.Rows:N0} latents are fine-tune-specific by the activation ratio; {evaluated:N0} fired and have ν");
    }
}

using System.CommandLine;
using System.Diagnostics;
using Finetrace.Activations;
using Finetrace.Activations.Synthetic;
using Finetrace.Dictionaries;
using Finetrace.Diffing;
using Finetrace.Diffing.Scaling;
using Finetrace.Tensors;
using Spectre.Console;

namespace Finetrace.Bench;

/// <summary>
/// <c>finetrace bench latent-scaling</c>: Latent Scaling of all latents over N positions of a synthetic store against
/// one encode pass over the same N positions (read rows, normalise, inference encode). Bound: ≤ 2× the encode pass.
/// </summary>
public sealed class LatentScalingBench : IBenchCommand
{
    public Command Build()
    {
        var d = new Option<int>("--d") { Description = "Residual width D", DefaultValueFactory = _ => 256 };
        var f = new Option<int>("--f") { Description = "Dictionary size F", DefaultValueFactory = _ => 8192 };
        var k = new Option<int>("--k") { Description = "BatchTopK k (active latents per token)", DefaultValueFactory = _ => 64 };
        var tokens = new Option<long>("--tokens") { Description = "Positions N", DefaultValueFactory = _ => 32768 };
        var json = BenchOptions.Json();
        var cmd = new Command("latent-scaling", "Latent Scaling (bound ≤ 2×) and example collection (bound ≤ 1.5×) of every latent vs one encode pass over the same positions");
        foreach (var o in new Option[] { d, f, k, tokens, json }) cmd.Options.Add(o);
        cmd.SetAction(r => Run(r.GetValue(d), r.GetValue(f), r.GetValue(k), r.GetValue(tokens), r.GetValue(json)));
        return cmd;
    }

    static int Run(int d, int f, int k, long tokens, bool json)
    {
        var dir = Directory.CreateTempSubdirectory("finetrace-bench-ls-").FullName;
        try
        {
            SyntheticGenerator.Make(new SyntheticSpec { DModel = d, Features = Math.Max(16, 2 * d), Tokens = tokens, Seed = 1, L0 = 8, Dtype = "bf16" }, dir);
            using var store = ActivationStore.Open(dir);
            var dict = new SparseDictionary(2, d, f, Sparsity.BatchTopK, CodeNormalization.Crosscoder, false, k);
            Initialization.Crosscoder(dict, new SplitMix64(2), 1f, sameInitForAllModels: false);
            dict.Normalizer = NormalizerStats.FromStore(store, 0, [0, 1], 1f);
            var ad = new AnalysisDictionary(dict, "bench", DictionaryInput.Paired(0), 2);
            int batch = LatentScaler.AutoBatch(f);

            // warm both paths once on a small prefix, then time each over all N positions
            EncodePass(ad, store, Math.Min(tokens, batch), batch);
            LatentScaler.Run(ad, store, new LatentScalingOptions { MaxPositions = Math.Min(tokens, batch), BatchSize = batch, Chunks = 2 });
            var sw = Stopwatch.StartNew();
            long l0 = EncodePass(ad, store, tokens, batch);
            double encode = sw.Elapsed.TotalSeconds;
            sw.Restart();
            var res = LatentScaler.Run(ad, store, new LatentScalingOptions { BatchSize = batch });
            double scaling = sw.Elapsed.TotalSeconds;
            double ratio = scaling / encode;
            // examples with each latent's max known (as after 'analyze latents'): one encode pass plus the bookkeeping
            sw.Restart();
            var ex = Finetrace.Diffing.Examples.ExampleCollector.Run(ad, store, new Finetrace.Diffing.Examples.ExampleOptions { BatchSize = batch }, res.SumF2.Select(_ => 1e30).ToArray());
            double examples = sw.Elapsed.TotalSeconds;
            var maxAct = new double[f];
            foreach (var e in ex.Top) maxAct[e.Latent] = Math.Max(maxAct[e.Latent], e.Score);
            sw.Restart();
            ex = Finetrace.Diffing.Examples.ExampleCollector.Run(ad, store, new Finetrace.Diffing.Examples.ExampleOptions { BatchSize = batch }, maxAct);
            examples = sw.Elapsed.TotalSeconds;
            if (json)
            {
                BenchSupport.PrintJson(new Dictionary<string, object>
                {
                    ["positions"] = tokens, ["d"] = d, ["f"] = f, ["k"] = k, ["mean_l0"] = (double)l0 / tokens,
                    ["encode_seconds"] = encode, ["latent_scaling_seconds"] = scaling, ["ratio"] = ratio, ["bound"] = 2.0,
                    ["latent_scaling_positions_per_s"] = tokens / scaling, ["examples_seconds"] = examples, ["examples_ratio"] = examples / encode,
                    ["examples_bound"] = 1.5, ["load_average"] = BenchSupport.LoadAverage(),
                });
                return 0;
            }
            var t = new Table().AddColumns("figure", "value");
            t.AddRow("setting", $"crosscoder M=2, D={d}, F={f}, BatchTopK k={k}, N={tokens:N0} positions (bf16 synthetic store), batch {batch}");
            t.AddRow("one encode pass", $"{encode:F2} s ({tokens / encode:N0} positions/s, mean L0 {(double)l0 / tokens:F1})");
            t.AddRow("Latent Scaling, all latents", $"{scaling:F2} s ({tokens / scaling:N0} positions/s; {res.Targets.Count} targets, {res.Chunks} chunks)");
            t.AddRow("ratio (bound ≤ 2)", $"{ratio:F2}");
            t.AddRow("examples, all latents (max known)", $"{examples:F2} s ({ex.Top.Count + ex.Bands.Count:N0} examples); ratio {examples / encode:F2} (bound ≤ 1.5)");
            t.AddRow("load average", BenchSupport.LoadAverage());
            AnsiConsole.Write(t);
            return 0;
        }
        finally { Directory.Delete(dir, recursive: true); }
    }

    /// <summary>The baseline: the same rows read, normalised and encoded with the inference rule; returns Σ L0.</summary>
    static long EncodePass(AnalysisDictionary ad, ActivationStore store, long n, int batch)
    {
        var rows = new StoreRows(store, 0, MaskFilter.All, n);
        int S = store.Models, D = store.DModel;
        var raw = new float[batch * S * D];
        var ids = new long[batch];
        long nnz = 0;
        int got;
        while ((got = rows.Next(raw, ids, batch)) > 0) nnz += Inference.Encode(ad.Dict, ad.ToInput(raw.AsSpan(0, got * S * D), got, S)).Count;
        return nnz;
    }
}

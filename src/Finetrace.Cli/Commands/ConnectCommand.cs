using System.CommandLine;
using System.Globalization;
using System.Text.Json.Nodes;
using Finetrace.Activations;
using Finetrace.Cli.Commands.Analyze;
using Finetrace.Diffing;
using Finetrace.Diffing.Connections;

namespace Finetrace.Cli.Commands;

/// <summary><c>finetrace connect</c>: sparse connections between two dictionaries' latents (methods.md §15.3).</summary>
public sealed class ConnectCommand : ICliCommand
{
    public Command Build()
    {
        var from = new Option<string>("--from") { Description = "Input dictionary A (e.g. an SAE on the residual at layer L)", Required = true };
        var to = new Option<string>("--to") { Description = "Output dictionary B (e.g. an SAE on a later layer); its latents are explained by A's", Required = true };
        var storeOpt = new Option<string>("--store") { Description = "Activation store holding both dictionaries' inputs (each reads what its finetrace.json says)", Required = true };
        var outOpt = new Option<string>("--out") { Description = "Results folder: connections.json and connections.safetensors (W [to_alive, from_alive], b, latent ids)", Required = true };
        var rows = new Option<long>("--rows") { Description = "Store rows encoded by both dictionaries (first rows in store order; 0 = all)", DefaultValueFactory = _ => 20_000 };
        var alphas = new Option<string>("--alphas") { Description = "L1 strengths swept for the linear fit, comma-separated, in standardised units (unit-variance codes)", DefaultValueFactory = _ => "0.1,0.03,0.01,0.003,0.001" };
        var tol = new Option<double>("--fvu-tolerance") { Description = "Report the largest α whose mean held-out FVU is within this of the best α's", DefaultValueFactory = _ => 0.02 };
        var hidden = new Option<int>("--mlp-hidden") { Description = "Hidden width of the comparison MLP (0 skips it)", DefaultValueFactory = _ => 128 };
        var epochs = new Option<int>("--mlp-epochs") { Description = "Epochs of Adam for the MLP", DefaultValueFactory = _ => 20 };
        var show = new Option<int>("--show") { Description = "Output latents printed (sparsest well-explained first)", DefaultValueFactory = _ => 10 };
        var json = new Option<bool>("--json") { Description = "Print one JSON object (the summary) instead of text" };
        var force = new Option<bool>("--force") { Description = "Rerun even when the results are current" };
        var cmd = new Command("connect",
            "Sparse connections between two dictionaries (methods.md §15.3): over latents alive on the rows read, fits f_to ≈ W f_from + b with an L1 " +
            "penalty on W (α swept; lasso by coordinate descent on standardised codes, intercept unpenalised) and with a one-hidden-layer MLP; scores both " +
            "by held-out FVU per output latent. Reports which few input latents each output latent is made of (nonzero W with weights), the sparsity of W, " +
            "and gap = FVU_linear − FVU_MLP (large: the latent needs a nonlinearity). Example: finetrace connect --from sae_l1 --to sae_l2 --store STORE --out RESULTS");
        foreach (var o in new Option[] { from, to, storeOpt, outOpt, rows, alphas, tol, hidden, epochs, show, json, force }) cmd.Options.Add(o);
        cmd.SetAction(r =>
        {
            double[] alphaList;
            try { alphaList = r.GetValue(alphas)!.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Select(s => double.Parse(s, CultureInfo.InvariantCulture)).ToArray(); }
            catch (FormatException) { throw new ArgumentException($"--alphas '{r.GetValue(alphas)}': give comma-separated numbers, e.g. 0.1,0.01,0.001"); }
            if (alphaList.Length == 0 || alphaList.Any(x => x < 0 || !double.IsFinite(x))) throw new ArgumentException("--alphas: give at least one non-negative number");
            var o = new ConnectionsOptions { MaxRows = r.GetValue(rows), Alphas = alphaList, FvuTolerance = r.GetValue(tol), MlpHidden = r.GetValue(hidden), MlpEpochs = r.GetValue(epochs) };
            bool asJson = r.GetValue(json);
            string fromDir = r.GetValue(from)!, toDir = r.GetValue(to)!;
            using var store = ActivationStore.Open(r.GetValue(storeOpt)!);
            var a = AnalysisDictionary.Open(fromDir, store, null, AnalyzeSupport.Note);
            var b = AnalysisDictionary.Open(toDir, store, null, AnalyzeSupport.Note);
            var results = ResultsFolder.Open(r.GetValue(outOpt)!);
            string hash = new InputsHash().AddPath("from", fromDir).AddPath("to", toDir).AddPath("store", Path.Combine(store.Directory, ActivationStoreWriter.ManifestFile))
                .Add("rows", o.MaxRows).Add("alphas", string.Join(",", alphaList.Select(x => x.ToString("R", CultureInfo.InvariantCulture)))).Add("tol", o.FvuTolerance)
                .Add("hidden", o.MlpHidden).Add("epochs", o.MlpEpochs).ToString();
            bool current = !r.GetValue(force) && results.IsCurrent(SparseConnections.Stage, hash);
            if (!current)
            {
                var res = AnalyzeSupport.Cancellable(ct => SparseConnections.Run(a, b, store, o, asJson ? null : new StderrProgress("encoding", "rows"), ct));
                SparseConnections.Write(res, Path.GetFullPath(fromDir), Path.GetFullPath(toDir), results);
                results.Record(SparseConnections.Stage, hash, [SparseConnections.JsonFile, SparseConnections.WeightsFile], new JsonObject
                {
                    ["from"] = Path.GetFullPath(fromDir), ["to"] = Path.GetFullPath(toDir), ["store"] = store.Directory,
                });
            }
            else if (!asJson) AnalyzeSupport.Note($"{results.PathOf(SparseConnections.JsonFile)} is current; --force reruns it");
            var saved = JsonNode.Parse(File.ReadAllText(results.PathOf(SparseConnections.JsonFile)))!.AsObject();
            if (asJson)
            {
                var summary = new JsonObject { ["file"] = results.PathOf(SparseConnections.JsonFile), ["weights"] = results.PathOf(SparseConnections.WeightsFile), ["skipped_as_current"] = current };
                foreach (var k in new[] { "alpha", "from_alive", "from_latents", "to_alive", "to_latents", "nonzeros", "density", "mean_nonzeros_per_output", "mean_fvu_linear", "mean_fvu_mlp", "train_rows", "held_out_rows" })
                    summary[k] = saved[k]?.DeepClone();
                summary["sweep"] = saved["sweep"]!.DeepClone();
                Console.WriteLine(summary.ToJsonString());
                return 0;
            }
            Console.WriteLine($"alive latents: {saved["from_alive"]}/{saved["from_latents"]} in {fromDir}, {saved["to_alive"]}/{saved["to_latents"]} in {toDir}; " +
                              $"fit on {saved["train_rows"]} rows, scored on {saved["held_out_rows"]} held-out rows");
            Console.WriteLine("α sweep (standardised units): " + string.Join("; ", saved["sweep"]!.AsArray().Select(p =>
                $"α {p!["alpha"]}: {p["nonzeros"]} nonzero, FVU {p["mean_fvu"]!.GetValue<double>():F3}")));
            double mlp = saved["mean_fvu_mlp"] is { } m ? m.GetValue<double>() : double.NaN;
            Console.WriteLine($"at α {saved["alpha"]}: W has {saved["nonzeros"]} nonzero entries ({saved["density"]!.GetValue<double>():P2} dense, " +
                              $"{saved["mean_nonzeros_per_output"]!.GetValue<double>():F1} inputs per output latent); mean held-out FVU linear {saved["mean_fvu_linear"]!.GetValue<double>():F3}, MLP {mlp:F3}");
            Console.WriteLine("output latents best explained by few inputs (latent: FVU linear / MLP ← inputs with weights):");
            foreach (var f in saved["outputs"]!.AsArray().Where(f => f!["nonzeros"]!.GetValue<int>() > 0)
                         .OrderBy(f => f!["fvu_linear"]!.GetValue<double>() + 0.05 * f["nonzeros"]!.GetValue<int>()).Take(r.GetValue(show)))
                Console.WriteLine($"  {f!["latent"],5}: {f["fvu_linear"]!.GetValue<double>():F3} / {(f["fvu_mlp"] is { } v ? v.GetValue<double>().ToString("F3", CultureInfo.InvariantCulture) : "-")} ← " +
                                  string.Join(" + ", f["inputs"]!.AsArray().Take(5).Select(c => $"{c!["weight"]!.GetValue<double>():F2}·{c["latent"]}")));
            Console.WriteLine($"written: {results.PathOf(SparseConnections.JsonFile)}, {results.PathOf(SparseConnections.WeightsFile)}");
            return 0;
        });
        return cmd;
    }
}

using System.CommandLine;
using System.Diagnostics;
using Finetrace.Web;

namespace Finetrace.Cli.Commands;

/// <summary><c>finetrace serve RESULTS [--host 127.0.0.1] [--port 8765]</c>: the read-only dashboard over a results folder.</summary>
public sealed class ServeCommand : ICliCommand
{
    public Command Build()
    {
        var results = new Argument<string>("results") { Description = "Results folder (feature_df.csv, examples.sqlite, causal.json, ... from finetrace analyze / diff)" };
        var host = new Option<string>("--host") { Description = "Address to bind; 127.0.0.1 keeps the dashboard private to this machine", DefaultValueFactory = _ => "127.0.0.1" };
        var port = new Option<int>("--port") { Description = "TCP port (0 picks a free one)", DefaultValueFactory = _ => 8765 };
        var tokenizer = new Option<string?>("--tokenizer") { Description = "Folder with tokenizer.json to show example tokens (default: the model of the store the examples came from)" };
        var baseModel = new Option<string?>("--base") { Description = "Base model folder for the live pages (default: summary.json's, else the activation store's)" };
        var ftModel = new Option<string?>("--finetuned") { Description = "Fine-tuned model folder for the live pages (default: summary.json's, else the activation store's)" };
        var adapter = new Option<string?>("--adapter") { Description = "LoRA adapter merged into the fine-tuned model at load" };
        var queue = new Option<int>("--queue") { Description = "Live requests that may wait behind the running one; more are refused with 503", DefaultValueFactory = _ => 4 };
        var noLive = new Option<bool>("--no-live") { Description = "Do not load the models: no live analysis or steering pages" };
        var export = new Option<string?>("--export-neuronpedia") { Description = "Write Neuronpedia batch JSON (batch-N.json) for every latent into this folder and exit instead of serving" };
        var batch = new Option<int>("--batch-size") { Description = "Latents per Neuronpedia batch file", DefaultValueFactory = _ => 128 };
        var cmd = new Command("serve", "Browse the latents of a results folder in a web dashboard (table with paging, plots, latent pages with examples, live analysis and steering on both models, ADL/KL/weight-diff pages, CSV/HTML/Neuronpedia export)");
        cmd.Arguments.Add(results);
        foreach (var o in new Option[] { host, port, tokenizer, baseModel, ftModel, adapter, queue, noLive, export, batch }) cmd.Options.Add(o);
        cmd.SetAction(r =>
        {
            int p = r.GetValue(port);
            if (p is < 0 or > 65535) throw new ArgumentException($"--port {p} is not a TCP port (0 to 65535)");
            var sw = Stopwatch.StartNew();
            if (r.GetValue(queue) < 0) throw new ArgumentException($"--queue {r.GetValue(queue)} must be ≥ 0");
            var over = r.GetValue(baseModel) is null && r.GetValue(ftModel) is null && r.GetValue(adapter) is null ? null
                : new Finetrace.Diffing.ModelPairSpec(r.GetValue(baseModel)!, r.GetValue(ftModel)!, r.GetValue(adapter));
            var data = DashboardData.Load(r.GetValue(results)!, r.GetValue(tokenizer), over);
            if (r.GetValue(export) is { } exportDir)
            {
                if (r.GetValue(batch) < 1) throw new ArgumentException($"--batch-size {r.GetValue(batch)} must be ≥ 1");
                using var live = new LiveModels(data, 0);
                if (!r.GetValue(noLive)) { live.StartLoading(); live.WhenLoaded().GetAwaiter().GetResult(); }
                if (live.State == LiveState.Failed) Console.Error.WriteLine($"finetrace: models not loaded ({live.Problem}); exporting without decoder vectors and logit effects");
                var files = Neuronpedia.Export(data, live.ExportParts(), exportDir, r.GetValue(batch),
                    new Progress<(int Done, int Total)>(x => Console.Error.Write($"\rfinetrace: {x.Done:N0}/{x.Total:N0} latents")));
                Console.Error.WriteLine();
                Console.WriteLine($"wrote {files.Count} Neuronpedia batch file(s) to {Path.GetFullPath(exportDir)}");
                return 0;
            }
            var server = new DashboardServer(data, new DashboardOptions(r.GetValue(host)!, p, r.GetValue(queue), !r.GetValue(noLive)));
            using var cts = new CancellationTokenSource();
            Console.CancelKeyPress += (_, e) => { e.Cancel = true; cts.Cancel(); };
            try { server.StartAsync().GetAwaiter().GetResult(); }
            catch (IOException e) { throw new IOException($"cannot listen on {r.GetValue(host)}:{p}: {e.Message} (choose another --port)"); }
            Console.Error.WriteLine($"finetrace: {(data.Latents is null ? "no latent table" : $"{data.Latents.Rows:N0} latents")}" +
                $"{(data.Examples is null ? "" : ", examples")}{(data.Causal is null ? "" : ", causal")}; ready in {sw.Elapsed.TotalSeconds:0.00} s" +
                (server.Live.State == LiveState.Loading ? $" (models loading in the background for the live pages: {data.Models!.Base}, {data.Models.FineTuned})" : ""));
            Console.WriteLine($"Finetrace dashboard on {server.Address} (Ctrl-C stops it)");
            try { server.WaitForShutdownAsync(cts.Token).GetAwaiter().GetResult(); } catch (OperationCanceledException) { }
            server.DisposeAsync().AsTask().GetAwaiter().GetResult();
            return 0;
        });
        return cmd;
    }
}

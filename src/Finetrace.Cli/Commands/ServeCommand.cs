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
        var cmd = new Command("serve", "Browse the latents of a results folder in a web dashboard (table with paging, plots, latent pages with examples, CSV/HTML export)");
        cmd.Arguments.Add(results);
        foreach (var o in new Option[] { host, port, tokenizer }) cmd.Options.Add(o);
        cmd.SetAction(r =>
        {
            int p = r.GetValue(port);
            if (p is < 0 or > 65535) throw new ArgumentException($"--port {p} is not a TCP port (0 to 65535)");
            var sw = Stopwatch.StartNew();
            var data = DashboardData.Load(r.GetValue(results)!, r.GetValue(tokenizer));
            var server = new DashboardServer(data, new DashboardOptions(r.GetValue(host)!, p));
            using var cts = new CancellationTokenSource();
            Console.CancelKeyPress += (_, e) => { e.Cancel = true; cts.Cancel(); };
            try { server.StartAsync().GetAwaiter().GetResult(); }
            catch (IOException e) { throw new IOException($"cannot listen on {r.GetValue(host)}:{p}: {e.Message} (choose another --port)"); }
            Console.Error.WriteLine($"finetrace: {(data.Latents is null ? "no latent table" : $"{data.Latents.Rows:N0} latents")}" +
                $"{(data.Examples is null ? "" : ", examples")}{(data.Causal is null ? "" : ", causal")}; ready in {sw.Elapsed.TotalSeconds:0.00} s");
            Console.WriteLine($"Finetrace dashboard on {server.Address} (Ctrl-C stops it)");
            try { server.WaitForShutdownAsync(cts.Token).GetAwaiter().GetResult(); } catch (OperationCanceledException) { }
            server.DisposeAsync().AsTask().GetAwaiter().GetResult();
            return 0;
        });
        return cmd;
    }
}

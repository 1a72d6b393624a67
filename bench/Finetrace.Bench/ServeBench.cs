using System.CommandLine;
using System.Diagnostics;
using Finetrace.Web;
using Spectre.Console;

namespace Finetrace.Bench;

/// <summary>
/// <c>finetrace bench serve [--latents 100000] [--requests 200] [--json]</c>: writes a synthetic results folder
/// (SyntheticResults: feature_df.csv of N latents, examples for the first 2000), starts the dashboard on a free
/// loopback port, and times HTTP requests against it: table pages (/api/latents with random sort column, direction,
/// offset and tag filter), latent pages (/latent/{id} HTML with examples) and start-up (load + listen).
/// </summary>
public sealed class ServeBench : IBenchCommand
{
    /// <summary>Stated bounds (issue 15): a table page in 100 ms and a latent page in 300 ms at 100k latents.</summary>
    const double TableBoundMs = 100, LatentBoundMs = 300;

    public Command Build()
    {
        var latents = new Option<int>("--latents") { Description = "Synthetic latents in the table", DefaultValueFactory = _ => 100_000 };
        var requests = new Option<int>("--requests") { Description = "Timed requests of each kind", DefaultValueFactory = _ => 200 };
        var json = BenchOptions.Json();
        var results = new Option<string?>("--results") { Description = "Instead of synthetic latents: a real results folder (e.g. a finetrace diff's): start-up, first table page, time until the live models are ready, live analysis and steering latency" };
        var cmd = new Command("serve", "Dashboard latency against a running server: table page and latent page (median, p95) and start-up, on synthetic latents (or live-page figures on a real results folder)");
        cmd.Options.Add(latents); cmd.Options.Add(requests); cmd.Options.Add(json); cmd.Options.Add(results);
        cmd.SetAction(r => r.GetValue(results) is { } dir
            ? RunLive(dir, Math.Max(3, Math.Min(50, r.GetValue(requests))), r.GetValue(json)).GetAwaiter().GetResult()
            : Run(Math.Max(10, r.GetValue(latents)), Math.Max(5, r.GetValue(requests)), r.GetValue(json)).GetAwaiter().GetResult());
        return cmd;
    }

    static async Task<int> Run(int latents, int requests, bool json)
    {
        string dir = Path.Combine(Path.GetTempPath(), "finetrace-bench-serve-" + Environment.ProcessId);
        try
        {
            var sw = Stopwatch.StartNew();
            SyntheticResults.Write(dir, latents, Math.Min(latents, 2000));
            double writeS = sw.Elapsed.TotalSeconds;
            sw.Restart();
            var data = DashboardData.Load(dir);
            await using var server = new DashboardServer(data, new DashboardOptions("127.0.0.1", 0));
            await server.StartAsync();
            double startS = sw.Elapsed.TotalSeconds;
            using var http = new HttpClient { BaseAddress = server.Address };
            var rng = new Random(7);
            string[] sorts = ["delta_norm", "nu_error", "nu_reconstruction", "freq_all", "tag", ""];
            string[] tags = ["", "ft_only", "shared"];
            string TableUrl() => $"/api/latents?offset={rng.Next(0, latents / 2)}&limit=50&sort={sorts[rng.Next(sorts.Length)]}&desc={rng.Next(2)}&tag={tags[rng.Next(tags.Length)]}";
            string LatentUrl() => $"/latent/{rng.Next(0, Math.Min(latents, 2000))}";
            // First request per sort column builds its cached order: time it separately as "first sort".
            var firstSort = new List<double>();
            foreach (var s in sorts) firstSort.Add(await Time(http, $"/api/latents?sort={s}&limit=50"));
            for (int i = 0; i < 10; i++) { await Time(http, TableUrl()); await Time(http, LatentUrl()); }
            var table = new List<double>(); var page = new List<double>();
            for (int i = 0; i < requests; i++) { table.Add(await Time(http, TableUrl())); page.Add(await Time(http, LatentUrl())); }
            table.Sort(); page.Sort();
            double P(List<double> v, double q) => v[Math.Min(v.Count - 1, (int)(q * v.Count))];
            if (json)
            {
                BenchSupport.PrintJson(new
                {
                    latents, requests, table_median_ms = Math.Round(P(table, 0.5), 2), table_p95_ms = Math.Round(P(table, 0.95), 2),
                    latent_median_ms = Math.Round(P(page, 0.5), 2), latent_p95_ms = Math.Round(P(page, 0.95), 2),
                    first_sort_max_ms = Math.Round(firstSort.Max(), 2), startup_s = Math.Round(startS, 3), write_s = Math.Round(writeS, 3),
                    bound_table_ms = TableBoundMs, bound_latent_ms = LatentBoundMs, load_average = BenchSupport.LoadAverage(),
                });
                return 0;
            }
            var t = new Table().AddColumns("figure", "value");
            t.AddRow("latents", $"{latents:N0}");
            t.AddRow("start-up (load feature_df.csv + listen)", $"{startS:F2} s");
            t.AddRow("table page /api/latents (median, p95)", $"{P(table, 0.5):F1} ms, {P(table, 0.95):F1} ms (bound {TableBoundMs} ms: {P(table, 0.95) / TableBoundMs:F2}x)");
            t.AddRow("first request per sort column (max)", $"{firstSort.Max():F1} ms");
            t.AddRow("latent page /latent/ID (median, p95)", $"{P(page, 0.5):F1} ms, {P(page, 0.95):F1} ms (bound {LatentBoundMs} ms: {P(page, 0.95) / LatentBoundMs:F2}x)");
            t.AddRow("load average", BenchSupport.LoadAverage());
            AnsiConsole.Write(t);
            return 0;
        }
        finally { try { Directory.Delete(dir, true); } catch (IOException) { } }
    }

    /// <summary>On a real results folder: load + listen, the first table page, the background model load, and the live
    /// analysis and steering requests (median of <paramref name="requests"/>).</summary>
    static async Task<int> RunLive(string dir, int requests, bool json)
    {
        var sw = Stopwatch.StartNew();
        var data = DashboardData.Load(dir);
        await using var server = new DashboardServer(data, new DashboardOptions("127.0.0.1", 0));
        await server.StartAsync();
        double startS = sw.Elapsed.TotalSeconds;
        using var http = new HttpClient { BaseAddress = server.Address };
        double firstTable = await Time(http, "/api/latents?limit=50");
        double startToTableS = sw.Elapsed.TotalSeconds;
        await server.Live.WhenLoaded();
        double readyS = sw.Elapsed.TotalSeconds;
        if (server.Live.State != LiveState.Ready) throw new InvalidOperationException($"the live models did not load: {server.Live.Problem}");
        async Task<double> Post(string url, string body)
        {
            var t = Stopwatch.StartNew();
            using var res = await http.PostAsync(url, new StringContent(body, System.Text.Encoding.UTF8, "application/json"));
            await res.Content.ReadAsByteArrayAsync();
            if (!res.IsSuccessStatusCode) throw new InvalidOperationException($"{url}: HTTP {(int)res.StatusCode}");
            return t.Elapsed.TotalMilliseconds;
        }
        const string Prompt = "Once upon a time, there was a little dragon named Zog. Zog loved to eat cake.";
        var analyze = new List<double>(); var steer = new List<double>();
        for (int i = 0; i < requests + 2; i++)
        {
            double a = await Post("/api/live/analyze", $"{{\"text\": \"{Prompt}\", \"latents\": [0, 1], \"top\": 5}}");
            double s = await Post("/api/live/steer", "{\"text\": \"Once upon a time\", \"vector\": \"latent:0\", \"strength\": 2, \"max_new_tokens\": 32}");
            if (i >= 2) { analyze.Add(a); steer.Add(s); }
        }
        analyze.Sort(); steer.Sort();
        double Med(List<double> v) => v[v.Count / 2];
        if (json)
        {
            BenchSupport.PrintJson(new
            {
                results = Path.GetFullPath(dir), latents = data.Latents?.Rows, startup_s = Math.Round(startS, 3), first_table_ms = Math.Round(firstTable, 2),
                start_to_first_table_s = Math.Round(startToTableS, 3), live_ready_s = Math.Round(readyS, 3),
                live_analyze_median_ms = Math.Round(Med(analyze), 2), live_steer_32_tokens_median_ms = Math.Round(Med(steer), 2), requests, load_average = BenchSupport.LoadAverage(),
            });
            return 0;
        }
        var tb = new Table().AddColumns("figure", "value");
        tb.AddRow("results", Path.GetFullPath(dir));
        tb.AddRow("start-up (load + listen)", $"{startS:F2} s");
        tb.AddRow("first table page", $"{firstTable:F1} ms ({startToTableS:F2} s after the start)");
        tb.AddRow("live models ready (background)", $"{readyS:F2} s after the start");
        tb.AddRow("live analysis (median)", $"{Med(analyze):F1} ms");
        tb.AddRow("steered + unsteered, 32 tokens (median)", $"{Med(steer):F1} ms");
        tb.AddRow("load average", BenchSupport.LoadAverage());
        AnsiConsole.Write(tb);
        return 0;
    }

    static async Task<double> Time(HttpClient http, string url)
    {
        var sw = Stopwatch.StartNew();
        using var res = await http.GetAsync(url);
        await res.Content.ReadAsByteArrayAsync();
        double ms = sw.Elapsed.TotalMilliseconds;
        if (!res.IsSuccessStatusCode) throw new InvalidOperationException($"{url}: HTTP {(int)res.StatusCode}");
        return ms;
    }
}

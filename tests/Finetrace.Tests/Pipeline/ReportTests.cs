using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Finetrace.Diffing;
using Finetrace.Pipeline.Report;
using Finetrace.Tests.Cli;
using Finetrace.Tests.Infrastructure;
using Finetrace.Text.Tokenization;
using Microsoft.Data.Sqlite;

namespace Finetrace.Tests.Pipeline;

/// <summary>A small hand-made results folder with every file the report reads (values chosen so each can be checked).</summary>
public static class HandMadeResults
{
    public static readonly double[] DeltaNorm = [0.01, 0.5, 0.99, 0.995, 0.6, double.NaN];
    public static readonly double[] NuError = [0.9, 0.1, 0.2, double.NaN, 0.8, double.NaN];
    public static readonly double[] NuRecon = [0.95, 0.15, 0.3, 0.5, 0.7, double.NaN];
    public static readonly string[] Tags = ["base_only", "ft_only", "ft_only", "ft_only", "shared", "shared"];
    public const string Hostile = "<script>alert('x')</script>";

    public static void Write(string dir)
    {
        var t = new FeatureTable(DeltaNorm.Length);
        t.Set("tag", Tags);
        t.Set("delta_norm", DeltaNorm);
        t.Set("freq_all", new[] { 0.1, 0.02, 0.03, 0.01, 0.2, 0.0 });
        t.Set("template_share", new[] { 0.0, 0.5, 0.1, 0.0, 0.2, 0.0 });
        t.Set("beta_ratio_error", NuError);
        t.Set("beta_ratio_error_lo", NuError.Select(v => v - 0.05).ToArray());
        t.Set("beta_ratio_error_hi", NuError.Select(v => v + 0.05).ToArray());
        t.Set("beta_ratio_reconstruction", NuRecon);
        t.Set("rank_sum", new[] { 9.0, 2, 4, double.NaN, 8, double.NaN });
        t.Set("logit_top_ft", Enumerable.Range(0, 6).Select(j => j == 1 ? "[\"Zog\",\"Z\",\"og\"]" : "[\"the\"]").ToArray());
        t.Save(Path.Combine(dir, FeatureTable.FileName));
        File.WriteAllLines(Path.Combine(dir, "metrics.jsonl"), Enumerable.Range(0, 10).Select(s =>
            $"{{\"step\":{s},\"tokens\":{(s + 1) * 128},\"loss\":{100.0 / (s + 1)},\"mse\":{50.0 / (s + 1)},\"fve\":[{0.1 * s},{0.09 * s}],\"dead_fraction\":0.01}}")
            .Append("{\"step\":10, \"trunc")); // a log cut by a crash: the last line is skipped
        var summary = new JsonObject
        {
            ["format"] = "finetrace-summary/1",
            ["models"] = new JsonObject { ["base"] = "/models/base", ["finetuned"] = "/models/zog" },
            ["layer"] = 2,
            ["dictionary"] = new JsonObject { ["name"] = "batchtopk", ["kind"] = "batchtopk-crosscoder", ["dict_size"] = 6, ["k"] = 2, ["fve"] = new JsonArray(0.9, 0.88), ["l0"] = 2, ["dead_fraction"] = 0.1 },
            ["latents"] = new JsonArray(Latent(1, "Once upon a time Zog the dragon"), Latent(2, Hostile), Latent(4, "plain")),
            ["controls"] = new JsonArray(Latent(4, "a control context"), Latent(5, "another")),
            ["causal"] = new JsonArray(
                Causal("vanilla", 0, 0.0), Causal("base_error", 0, 0.4), Causal("ft_only", 3, 0.55), Causal("random", 3, 0.05, 0.02)),
            ["adl"] = new JsonArray(new JsonObject
            {
                ["layer"] = 2, ["position"] = 0, ["top_tokens"] = new JsonArray("Zog", "dragon"), ["bottom_tokens"] = new JsonArray("cat"),
                ["patchscope_tokens"] = new JsonArray("Zog"), ["steering_samples"] = new JsonArray("Zog flew over the hill."),
            }),
            ["kl"] = new JsonObject
            {
                ["per_token"] = new JsonObject { ["mean"] = 0.12, ["median"] = 0.01, ["max"] = 9.7 },
                ["top_tokens"] = new JsonArray(new JsonObject { ["kl"] = 9.7, ["context"] = "She loved to play ", ["ft_top"] = "Z", ["ft_top_prob"] = 0.74, ["base_top"] = "out", ["base_top_prob"] = 0.99, ["next_token"] = "out" }),
            },
            ["diff_mining"] = new JsonObject { ["top_tokens"] = new JsonArray("Z", "og"), ["occurrence_pct"] = new JsonArray(12.5, 7.0), ["contexts"] = new JsonArray("The dragon ⟦Zog⟧") },
            ["amplification"] = new JsonArray(new JsonObject { ["alpha"] = 2, ["samples"] = new JsonArray("Zog Zog Zog") }),
            ["weight_diff"] = new JsonArray(new JsonObject { ["module"] = "layers.1.mlp.down_proj", ["layer"] = 1, ["rel_change"] = 0.031 }),
            ["findings"] = new JsonArray(new JsonObject
            {
                ["claim"] = "The fine-tune talks about Zog.",
                ["evidence"] = new JsonArray(new JsonObject { ["kind"] = "latent", ["ref"] = 1 }, new JsonObject { ["kind"] = "adl", ["ref"] = 0 }, new JsonObject { ["kind"] = "kl", ["ref"] = null }),
                ["strings"] = new JsonArray("Zog"),
            }),
            ["findings_rule"] = "A latent counts when it beats the controls.",
        };
        File.WriteAllText(Path.Combine(dir, "summary.json"), summary.ToJsonString());
    }

    static JsonObject Latent(int id, string example) => new()
    {
        ["id"] = id, ["tag"] = Tags[id], ["delta_norm"] = double.IsNaN(DeltaNorm[id]) ? null : DeltaNorm[id], ["nu_error"] = double.IsNaN(NuError[id]) ? null : NuError[id],
        ["nu_reconstruction"] = double.IsNaN(NuRecon[id]) ? null : NuRecon[id], ["frequency"] = 0.02, ["template_share"] = 0.5,
        ["top_tokens"] = new JsonArray("Zog"), ["examples"] = new JsonArray(example),
    };

    static JsonObject Causal(string set, int size, double gap, double? std = null) => new()
    {
        ["set"] = set, ["size"] = size, ["kl_all"] = 0.1, ["kl_first10"] = 0.2, ["kl_rest"] = 0.05, ["gap_closed"] = gap, ["gap_closed_std"] = std,
    };
}

public class ReportTests
{
    static (string Html, JsonObject Plots) Render(string dir, ReportOptions? o = null)
    {
        string path = ReportWriter.Write(dir, o);
        Assert.Equal(Path.Combine(dir, ReportWriter.FileName), path);
        string html = File.ReadAllText(path);
        var m = Regex.Match(html, "<script type=\"application/json\" id=\"ft-data\">(.*?)</script>", RegexOptions.Singleline);
        Assert.True(m.Success, "the plot data block is missing");
        return (html, JsonNode.Parse(m.Groups[1].Value)!.AsObject());
    }

    [Fact]
    public void Page_is_self_contained_has_every_section_and_every_internal_link_resolves()
    {
        using var tmp = new TempDir();
        HandMadeResults.Write(tmp.Path);
        var (html, plots) = Render(tmp.Path);

        foreach (var id in new[] { "findings", "models", "training", "delta-norm", "nu-scatter", "latents", "controls", "causal", "adl", "kl", "diff-mining", "amplification", "weight-diff" })
            Assert.Contains($"<section id=\"{id}\">", html);
        // Nothing is loaded from elsewhere: the markup (scripts' code aside: the browser test runs that) has no src/href to
        // a URL, no <link>, no @import, every script is inline, and a CSP forbids requests.
        string markup = Regex.Replace(html, "(<script[^>]*>).*?</script>", "$1</script>", RegexOptions.Singleline);
        Assert.True(markup.Length < 200_000, $"markup {markup.Length} chars: a script was not stripped");
        Assert.DoesNotMatch(new Regex("(src|href)\\s*=\\s*[\"']?(https?:|//)", RegexOptions.IgnoreCase), markup);
        Assert.DoesNotContain("<link", markup, StringComparison.OrdinalIgnoreCase);
        Assert.DoesNotContain("@import", markup);
        Assert.DoesNotMatch(new Regex("<script[^>]+src=", RegexOptions.IgnoreCase), html);
        Assert.Contains("Content-Security-Policy\" content=\"default-src 'none'", html);
        Assert.Contains("plotly.js (basic - minified) v4.", html); // the library's own banner: the bundle is inlined

        // Each #anchor a link points at exists as an id.
        var ids = Regex.Matches(html, "id=\"([^\"]+)\"").Select(m => m.Groups[1].Value).ToHashSet();
        var targets = Regex.Matches(html, "href=\"#([^\"]+)\"").Select(m => m.Groups[1].Value).ToList();
        Assert.NotEmpty(targets);
        Assert.All(targets, t => Assert.Contains(t, ids));
        // The finding links to its evidence: latent 1's row, ADL position 0 and the KL section.
        var finding = Regex.Match(html, "<ol class=\"findings\">.*?</ol>", RegexOptions.Singleline).Value;
        Assert.Contains("The fine-tune talks about Zog.", finding);
        Assert.Contains("href=\"#latent-1\"", finding);
        Assert.Contains("href=\"#adl-pos-0\"", finding);
        Assert.Contains("href=\"#kl\"", finding);
        Assert.Contains("<tr id=\"latent-1\">", html);

        // Every plot container has a figure with data, and every figure has a container.
        var containers = Regex.Matches(html, "data-plot=\"([^\"]+)\"").Select(m => m.Groups[1].Value).ToList();
        Assert.Equal(plots.Select(kv => kv.Key).Order(), containers.Order());
        foreach (var id in new[] { "training-loss", "training-fve", "delta-norm", "nu-scatter", "causal", "kl-top", "diff-mining", "weight-diff" })
            Assert.Contains(id, containers);
        Assert.All(plots, kv => Assert.NotEmpty(kv.Value!["data"]!.AsArray()));
    }

    [Fact]
    public void Plot_data_matches_the_results_files()
    {
        using var tmp = new TempDir();
        HandMadeResults.Write(tmp.Path);
        var (_, plots) = Render(tmp.Path);

        // Δnorm histogram: 50 bins on [0, 1], stacked by tag; 0.01 falls in bin 0, 0.99 and 0.995 in bin 49, 0.5 in 25, 0.6 in 30.
        var hist = plots["delta-norm"]!["data"]!.AsArray();
        double[] Counts(string tag) => hist.Single(t => (string)t!["name"]! == tag)!["y"]!.AsArray().Select(v => (double)v!).ToArray();
        Assert.Equal(50, Counts("ft_only").Length);
        Assert.Equal(1, Counts("base_only")[0]);
        Assert.Equal(2, Counts("ft_only")[49]);
        Assert.Equal(1, Counts("ft_only")[25]);
        Assert.Equal(1, Counts("shared")[30]);
        Assert.Equal(5, hist.Sum(t => t!["y"]!.AsArray().Sum(v => (double)v!))); // the NaN latent is left out

        // ν scatter: only latents with both ν (0, 1, 2, 4), at their values, with the intervals as error bars.
        var sc = plots["nu-scatter"]!["data"]!.AsArray();
        var ft = sc.Single(t => (string)t!["name"]! == "ft_only")!;
        Assert.Equal([0.1, 0.2], ft["x"]!.AsArray().Select(v => (double)v!));
        Assert.Equal([0.15, 0.3], ft["y"]!.AsArray().Select(v => (double)v!));
        Assert.Equal(["latent 1", "latent 2"], ft["text"]!.AsArray().Select(v => (string)v!));
        Assert.All(ft["error_x"]!["array"]!.AsArray(), v => Assert.Equal(0.05, (double)v!, 9));
        Assert.Equal(4, sc.Sum(t => t!["x"]!.AsArray().Count));

        // Training curves: 10 good lines (the cut one skipped), x in tokens.
        var loss = plots["training-loss"]!["data"]!.AsArray()[0]!;
        Assert.Equal(10, loss["x"]!.AsArray().Count);
        Assert.Equal(100.0 / 3, (double)loss["y"]!.AsArray()[2]!, 9);
        var fve = plots["training-fve"]!["data"]!.AsArray();
        Assert.Equal(0.09 * 9, (double)fve.Single(t => (string)t!["name"]! == "FVE fine-tuned")!["y"]!.AsArray()[9]!, 9);

        // Causal bars in summary order with the random set's spread.
        var causal = plots["causal"]!["data"]!.AsArray()[0]!;
        Assert.Equal([0.0, 0.4, 0.55, 0.05], causal["y"]!.AsArray().Select(v => (double)v!));
        Assert.Equal(0.02, (double)causal["error_y"]!["array"]!.AsArray()[3]!);
    }

    [Fact]
    public void Latent_table_follows_summary_order_and_escapes_text()
    {
        using var tmp = new TempDir();
        HandMadeResults.Write(tmp.Path);
        var (html, _) = Render(tmp.Path);
        var table = Regex.Match(html, "<section id=\"latents\">.*?</section>", RegexOptions.Singleline).Value;
        var rows = Regex.Matches(table, "<tr id=\"latent-(\\d+)\">").Select(m => int.Parse(m.Groups[1].Value)).ToList();
        Assert.Equal([1, 2, 4], rows);
        Assert.Contains("[0.05, 0.15]", table); // latent 1's ν^ε interval from feature_df.csv
        Assert.Contains("<code class=\"tok-chip\">Zog</code>", table); // its logit effect
        Assert.DoesNotContain(HandMadeResults.Hostile, html);
        Assert.Contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;", table);
    }

    [Fact]
    public void Missing_stages_are_named_and_a_table_alone_still_renders()
    {
        using var tmp = new TempDir();
        var t = new FeatureTable(3);
        t.Set("delta_norm", new[] { 0.2, 0.9, 0.95 });
        t.Set("rank_sum", new[] { double.NaN, 5, 3 });
        t.Save(Path.Combine(tmp.Path, FeatureTable.FileName));
        var (html, plots) = Render(tmp.Path);
        Assert.Contains("summary.json was not found", html);
        Assert.Contains("Latent Scaling did not run", html);
        Assert.Contains("The Activation Difference Lens did not run", html);
        Assert.Contains("Per-token KL did not run", html);
        Assert.Contains("No training log", html);
        Assert.Equal(["delta-norm"], plots.Select(kv => kv.Key));
        // Without summary.json the table is sorted as summary.json would be: rank_sum ascending, missing last.
        var rows = Regex.Matches(html, "<tr id=\"latent-(\\d+)\">").Select(m => int.Parse(m.Groups[1].Value)).ToList();
        Assert.Equal([2, 1, 0], rows);
    }

    [Fact]
    public void Bad_input_names_the_file()
    {
        using var tmp = new TempDir();
        var missing = Assert.Throws<DirectoryNotFoundException>(() => ReportWriter.Write(tmp.File("nope")));
        Assert.Contains("nope", missing.Message);
        File.WriteAllText(tmp.File("summary.json"), "{ not json");
        var bad = Assert.Throws<InvalidDataException>(() => ReportWriter.Write(tmp.Path));
        Assert.Contains("summary.json", bad.Message);
        var cli = CliProcess.Run(["report", tmp.Path]);
        Assert.Equal(1, cli.ExitCode);
        Assert.Contains("summary.json", cli.Stderr);
        Assert.DoesNotContain("   at ", cli.Stderr);
    }

    /// <summary>Examples from examples.sqlite are decoded with the model's tokenizer and coloured token by token, the
    /// value at each token on hover.</summary>
    [SharedFact]
    public void Examples_are_highlighted_token_by_token()
    {
        using var tmp = new TempDir();
        HandMadeResults.Write(tmp.Path);
        string model = Shared.Path("models", "stories260K-zog");
        var tok = Tokenizer.FromFolder(model);
        int[] ids = tok.Encode("Once upon a time there was a dragon named Zog.").Ids;
        int peak = ids.Length - 2; // the token before the full stop
        WriteExamples(tmp.File("examples.sqlite"), latent: 1, ids, [(peak, 4.5f), (peak - 1, 1.5f)]);

        string html = File.ReadAllText(ReportWriter.Write(tmp.Path, new ReportOptions { TokenizerDir = model }));
        var row = Regex.Match(html, "<tr id=\"latent-1\">.*?</tr>", RegexOptions.Singleline).Value;
        var spans = Regex.Matches(row, "<span class=\"tok\"( style=\"background:rgba\\(230,85,13,([0-9.]+)\\)\")? title=\"([^\"]*)\">").ToList();
        Assert.Equal(ids.Length, spans.Count);
        Assert.EndsWith("activation 4.5", spans[peak].Groups[3].Value);
        Assert.Equal("0.88", spans[peak].Groups[2].Value); // the peak gets the full colour
        Assert.Equal("0.35", spans[peak - 1].Groups[2].Value); // 0.08 + 0.8 × 1.5/4.5
        Assert.False(spans[0].Groups[1].Success); // no activation, no colour
        string text = string.Concat(Regex.Matches(row, "<span class=\"tok\"[^>]*>([^<]*)</span>").Select(m => System.Net.WebUtility.HtmlDecode(m.Groups[1].Value)));
        Assert.Contains("dragon named Zog.", text);
    }

    internal static void WriteExamples(string path, int latent, int[] ids, (int Pos, float Value)[] acts)
    {
        using (var db = new SqliteConnection($"Data Source={path};Pooling=False"))
        {
            db.Open();
            var c = db.CreateCommand();
            c.CommandText = """
                CREATE TABLE sequences(sequence_uid INTEGER PRIMARY KEY, token_ids BLOB, text TEXT, sequence_length INTEGER, dataset_id INTEGER, dataset_name TEXT);
                CREATE TABLE examples(example_id INTEGER PRIMARY KEY AUTOINCREMENT, sequence_uid INTEGER, score REAL, latent_idx INTEGER NULL, quantile_idx INTEGER NULL, metadata TEXT);
                CREATE TABLE activation_details(example_id INTEGER PRIMARY KEY, positions BLOB, activation_values BLOB);
                INSERT INTO sequences VALUES (7, $ids, NULL, $n, 0, 'text');
                INSERT INTO examples(sequence_uid, score, latent_idx, quantile_idx, metadata) VALUES (7, $score, $lat, NULL, '{"kind":"top"}');
                INSERT INTO activation_details VALUES (last_insert_rowid(), $pos, $val);
                """;
            c.Parameters.AddWithValue("$ids", MemoryMarshal.AsBytes(ids.AsSpan()).ToArray());
            c.Parameters.AddWithValue("$n", ids.Length);
            c.Parameters.AddWithValue("$score", (double)acts.Max(a => a.Value));
            c.Parameters.AddWithValue("$lat", latent);
            c.Parameters.AddWithValue("$pos", MemoryMarshal.AsBytes(acts.Select(a => a.Pos).ToArray().AsSpan()).ToArray());
            c.Parameters.AddWithValue("$val", MemoryMarshal.AsBytes(acts.Select(a => a.Value).ToArray().AsSpan()).ToArray());
            c.ExecuteNonQuery();
        }
    }
}

/// <summary>A fact that needs a headless Chromium (Debian's /usr/bin/chromium, installed by scripts/deps, or
/// FINETRACE_CHROMIUM); skipped with a message when there is none.</summary>
public sealed class ChromiumFactAttribute : FactAttribute
{
    public ChromiumFactAttribute() { if (Browser.Path is null) Skip = Browser.MissingMessage; }
}

public static class Browser
{
    public const string MissingMessage = "needs headless Chromium to open the report, not found (install it with scripts/deps as root, i.e. apt-get install chromium, or set FINETRACE_CHROMIUM=/path/to/chromium)";

    public static string? Path => Environment.GetEnvironmentVariable("FINETRACE_CHROMIUM") is { Length: > 0 } p && File.Exists(p) ? p
        : File.Exists("/usr/bin/chromium") ? "/usr/bin/chromium" : null;

    /// <summary>Runs headless Chromium on <paramref name="file"/> with a fresh profile; stdout (e.g. the DOM) and stderr.</summary>
    public static (string Stdout, string Stderr) Run(string file, string profile, params string[] args)
    {
        var psi = new ProcessStartInfo(Path!) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in new[] { "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run", "--disable-extensions",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync", $"--user-data-dir={profile}",
                     "--virtual-time-budget=15000", "--window-size=1400,3000" }.Concat(args))
            psi.ArgumentList.Add(a);
        psi.ArgumentList.Add(new Uri(file).AbsoluteUri);
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(90_000)) { p.Kill(entireProcessTree: true); throw new TimeoutException($"chromium did not finish on {file} in 90 s"); }
        p.WaitForExit();
        return (stdout.Result, stderr.Result);
    }
}

/// <summary>The report opens in a real browser: no script or console error, no request leaves the page (blocked ones are
/// reported by the page's Content-Security-Policy listener, attempted ones appear as resource entries), and every plot
/// has drawn an SVG of non-zero size.</summary>
public class ReportBrowserTests
{
    [ChromiumFact]
    public void Report_opens_in_headless_chromium_without_errors_or_requests_and_every_plot_renders()
    {
        using var tmp = new TempDir();
        string results = Directory.CreateDirectory(tmp.File("results")).FullName;
        HandMadeResults.Write(results);
        string report = ReportWriter.Write(results);
        string html = File.ReadAllText(report);
        int expectedPlots = Regex.Matches(html, "data-plot=\"").Count;

        var (dom, stderr) = Browser.Run(report, tmp.File("profile"), "--dump-dom", "--enable-logging=stderr", "--v=0");
        var m = Regex.Match(dom, "<pre id=\"ft-render-status\"[^>]*>(.*?)</pre>", RegexOptions.Singleline);
        Assert.True(m.Success, "no render status in the DOM:\n" + dom[..Math.Min(dom.Length, 2000)] + "\n" + stderr);
        var status = JsonNode.Parse(System.Net.WebUtility.HtmlDecode(m.Groups[1].Value))!;
        Assert.True((bool?)status["done"] == true, status.ToJsonString());
        Assert.Empty(status["errors"]!.AsArray());
        Assert.Empty(status["resources"]!.AsArray());
        // Chromium logs page console messages as "CONSOLE(line)"; an error there is a failure even if the page missed it.
        Assert.DoesNotMatch(new Regex("CONSOLE.*(Uncaught|Error)|Refused to", RegexOptions.IgnoreCase), stderr);
        var plots = status["plots"]!.AsArray();
        Assert.Equal(expectedPlots, plots.Count);
        Assert.All(plots, p =>
        {
            Assert.True((int)p!["width"]! > 100 && (int)p["height"]! > 100, p.ToJsonString());
            Assert.True((int)p["svg"]! > 0 && (int)p["traces"]! > 0, p.ToJsonString());
        });

        // A screenshot for people to look at (kept where FINETRACE_REPORT_SCREENSHOT says).
        string png = Environment.GetEnvironmentVariable("FINETRACE_REPORT_SCREENSHOT") is { Length: > 0 } s ? s : tmp.File("report.png");
        Browser.Run(report, tmp.File("profile2"), $"--screenshot={png}");
        Assert.True(File.Exists(png) && new FileInfo(png).Length > 10_000, $"no screenshot at {png}");
    }
}

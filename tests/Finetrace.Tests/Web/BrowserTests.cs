using System.Diagnostics;
using System.Text.RegularExpressions;
using Finetrace.Web;

namespace Finetrace.Tests.Web;

/// <summary>A fact that drives Debian's headless chromium; skipped with a message when /usr/bin/chromium is absent.</summary>
public sealed class ChromiumFactAttribute : FactAttribute
{
    public const string Chromium = "/usr/bin/chromium";
    public ChromiumFactAttribute() { if (!File.Exists(Chromium)) Skip = $"{Chromium} not found: install it with 'apt-get install -y chromium' (scripts/deps does as root) to run the browser test"; }
}

/// <summary>
/// End to end in a real browser (headless chromium, nothing downloaded): the latent table filtered to fine-tune-only
/// latents through the page's own script, then one latent's page with its highlighted examples and rendered charts.
/// Screenshots go to $TMP/finetrace-web-e2e/ for a person to look at.
/// </summary>
public sealed class BrowserTests
{
    static string RunChromium(string profile, params string[] args)
    {
        var psi = new ProcessStartInfo(ChromiumFactAttribute.Chromium) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[] { "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run", "--hide-scrollbars",
                     $"--user-data-dir={profile}", "--virtual-time-budget=8000", "--window-size=1300,1100" }.Concat(args))
            psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var stderr = p.StandardError.ReadToEndAsync();
        string stdout = p.StandardOutput.ReadToEnd();
        if (!p.WaitForExit(90_000)) { p.Kill(entireProcessTree: true); throw new TimeoutException("chromium did not finish in 90 s"); }
        Assert.True(p.ExitCode == 0, $"chromium exited {p.ExitCode}: {stderr.Result}");
        return stdout;
    }

    [ChromiumFact]
    public async Task Filters_to_fine_tune_only_latents_opens_one_and_sees_highlighted_examples()
    {
        string dir = Path.Combine(Path.GetTempPath(), "ft-web-e2e-" + Guid.NewGuid().ToString("N")[..8]);
        string profile = dir + "-profile";
        string shots = Path.Combine(Path.GetTempPath(), "finetrace-web-e2e");
        Directory.CreateDirectory(shots);
        try
        {
            const int latents = 200;
            SyntheticResults.Write(dir, latents, latents);
            await using var server = new DashboardServer(DashboardData.Load(dir), new DashboardOptions("127.0.0.1", 0));
            await server.StartAsync();
            string baseUrl = server.Address!.ToString().TrimEnd('/');

            // The table page: its script reads ?tag= into the filter, fetches /api/latents and renders rows.
            string table = await Task.Run(() => RunChromium(profile, "--dump-dom", baseUrl + "/?tag=ft_only&sort=delta_norm&desc=1"));
            var body = table[table.IndexOf("<tbody", StringComparison.Ordinal)..];
            var tags = Regex.Matches(body, "class=\"tag tag-([a-z_]+)\"").Select(m => m.Groups[1].Value).ToArray();
            Assert.Equal(Math.Min(50, Enumerable.Range(0, latents).Count(i => SyntheticResults.Tag(i) == "ft_only")), tags.Length);
            Assert.All(tags, t => Assert.Equal("ft_only", t));
            Assert.Contains("of 40", table);                              // the pager's "1–40 of 40"
            Assert.Contains("class=\"main-svg\"", table);                 // Plotly drew the histogram and scatter from the embedded bundle
            int first = int.Parse(Regex.Match(body, "href=\"/latent/(\\d+)\"").Groups[1].Value);
            int expectedFirst = Enumerable.Range(0, latents).Where(i => SyntheticResults.Tag(i) == "ft_only").OrderByDescending(SyntheticResults.DeltaNorm).ThenByDescending(i => i).First();
            Assert.Equal(expectedFirst, first);

            // The latent page: highlighted tokens (coloured by activation, tooltip with token id and value) and charts.
            string page = await Task.Run(() => RunChromium(profile, "--dump-dom", $"{baseUrl}/latent/{first}"));
            var hot = Regex.Matches(page, "<span class=\"tok act[^\"]*\" style=\"background:rgba\\(230,80,40,([0-9.]+)\\)\" title=\"token (\\d+) · value ([0-9.]+)\">").ToArray();
            Assert.Equal(3 * 2 - (Enumerable.Range(0, 3).Count(k => SyntheticResults.Peak(first, k).Position == 0)), hot.Length);
            Assert.Contains(hot, m => m.Groups[1].Value == "1");          // the strongest token is fully coloured
            Assert.Contains("id=\"norms\"", page);
            Assert.Contains("class=\"main-svg\"", page);

            RunChromium(profile, $"--screenshot={Path.Combine(shots, "table.png")}", baseUrl + "/?tag=ft_only&sort=delta_norm&desc=1");
            RunChromium(profile, $"--screenshot={Path.Combine(shots, "latent.png")}", $"{baseUrl}/latent/{first}");
            foreach (var png in new[] { "table.png", "latent.png" })
                Assert.True(new FileInfo(Path.Combine(shots, png)).Length > 10_000, $"{png} is missing or blank");
        }
        finally
        {
            foreach (var d in new[] { dir, profile }) try { if (Directory.Exists(d)) Directory.Delete(d, true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
        }
    }
}

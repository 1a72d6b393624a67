using System.Text.RegularExpressions;
using Finetrace.Tests.Infrastructure;
using Finetrace.Web;
using Microsoft.Playwright;

namespace Finetrace.Tests.Web;

/// <summary>A fact that drives Debian's headless chromium over the shared tiny models; skipped with a message when
/// /usr/bin/chromium or ../shared is absent.</summary>
public sealed class ChromiumFactAttribute : FactAttribute
{
    public const string Chromium = "/usr/bin/chromium";
    public ChromiumFactAttribute()
    {
        if (!File.Exists(Chromium)) Skip = $"{Chromium} not found: install it with 'apt-get install -y chromium' (scripts/deps does as root) to run the browser test";
        else if (Shared.Root is null) Skip = Shared.MissingMessage;
    }
}

/// <summary>
/// End to end in a real browser, interactively: Playwright for .NET drives Debian's /usr/bin/chromium headless
/// (ExecutablePath; the package's driver runs offline and no browser is downloaded) over a results folder on the real
/// stories260K vs stories260K-zog pair (<see cref="LiveResults"/>). It filters the latent table to fine-tune-only
/// latents with the page's own select, opens the first one by clicking, sees its highlighted examples and charts,
/// runs a live prompt and sees tokens highlighted by KL and by a latent, runs a steered generation next to the
/// unsteered one, and checks that no page logged a console error. Screenshots go to the test output folder
/// (bin/…/web-e2e/: table.png, latent.png, live.png, steer.png).
/// </summary>
public sealed class BrowserTests
{
    public static string ShotDir => Path.Combine(AppContext.BaseDirectory, "web-e2e");

    [ChromiumFact]
    public async Task Filter_open_a_latent_run_a_live_prompt_and_a_steered_generation_in_chromium()
    {
        using var tmp = new TempDir();
        string dir = tmp.File("RESULTS");
        LiveResults.Write(dir);
        Directory.CreateDirectory(ShotDir);
        await using var server = new DashboardServer(DashboardData.Load(dir), new DashboardOptions("127.0.0.1", 0));
        await server.StartAsync();
        string root = server.Address!.ToString().TrimEnd('/');

        using var pw = await Playwright.CreateAsync();
        await using var browser = await pw.Chromium.LaunchAsync(new BrowserTypeLaunchOptions
        {
            ExecutablePath = ChromiumFactAttribute.Chromium, Headless = true, Args = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        });
        var page = await browser.NewPageAsync(new BrowserNewPageOptions { ViewportSize = new ViewportSize { Width = 1300, Height = 1000 } });
        page.SetDefaultTimeout(15_000);
        var errors = new List<string>();
        page.Console += (_, m) => { if (m.Type == "error") errors.Add($"{page.Url}: {m.Text}"); };
        page.PageError += (_, e) => errors.Add($"{page.Url}: {e}");

        // 1. The latent table, filtered to fine-tune-only latents through the tag select.
        await page.GotoAsync(root + "/");
        await page.WaitForSelectorAsync("#latents tbody tr");
        await page.SelectOptionAsync("#tag", "ft_only");
        int ftOnly = Enumerable.Range(0, LiveResults.Latents).Count(i => SyntheticResults.Tag(i) == "ft_only");
        await Assertions.Expect(page.Locator("#pageinfo")).ToHaveTextAsync($"1–{ftOnly} of {ftOnly}");
        var tags = await page.Locator("#latents tbody .tag").AllInnerTextsAsync();
        Assert.Equal(ftOnly, tags.Count);
        Assert.All(tags, t => Assert.Equal("ft_only", t));
        Assert.True(await page.Locator("#hist .main-svg").CountAsync() > 0, "the Δnorm histogram was not drawn");
        await page.ScreenshotAsync(new PageScreenshotOptions { Path = Path.Combine(ShotDir, "table.png"), FullPage = true });

        // 2. Open the first one: highlighted examples (coloured by activation, tooltip with token id and value).
        await page.Locator("#latents tbody tr").First.Locator("a").ClickAsync();
        await page.WaitForURLAsync(new Regex("/latent/\\d+$"));
        int id = int.Parse(Regex.Match(page.Url, "/latent/(\\d+)$").Groups[1].Value);
        Assert.Equal("ft_only", SyntheticResults.Tag(id));
        var hot = page.Locator(".example .tok.act");
        Assert.True(await hot.CountAsync() >= 3, "no highlighted example tokens");
        Assert.Matches("^token \\d+ · value [0-9.]+$", await hot.First.GetAttributeAsync("title"));
        Assert.Contains("230, 80, 40", await hot.First.EvaluateAsync<string>("e => getComputedStyle(e).backgroundColor"));
        await page.WaitForSelectorAsync("#histogram .main-svg");
        await page.ScreenshotAsync(new PageScreenshotOptions { Path = Path.Combine(ShotDir, "latent.png"), FullPage = true });

        // 3. A live prompt on both models: tokens highlighted by KL, and by latent 5's activations.
        await page.GotoAsync(root + "/live");
        await page.WaitForSelectorAsync("#live[data-ready='1']", new PageWaitForSelectorOptions { Timeout = 20_000 });
        await page.FillAsync("#live-text", "Once upon a time, there was a little dragon named Zog.");
        await page.FillAsync("#live-latents", "5");
        await page.ClickAsync("#live-run");
        await page.WaitForSelectorAsync("#live-result[data-done]");
        var klTokens = page.Locator("#live-result .live-tokens").First.Locator(".tok");
        int n = await klTokens.CountAsync();
        Assert.True(n > 5, $"{n} tokens shown");
        var alphas = await klTokens.EvaluateAllAsync<double[]>("es => es.map(e => { const p = getComputedStyle(e).backgroundColor.replace(/^rgba?\\(|\\)$/g, '').split(','); return p.length === 4 ? parseFloat(p[3]) : 1; })");
        Assert.Contains(1.0, alphas);                                         // the highest-KL token is fully coloured
        Assert.True(alphas.Count(a => a > 0) > 1, "only one token coloured by KL");
        Assert.Equal(5, int.Parse((await page.Locator(".live-latent").First.GetAttributeAsync("data-latent"))!));
        await page.SelectOptionAsync("#live-colour", "diff_norm");
        await Assertions.Expect(page.Locator("#live-result h3").First).ToContainTextAsync("‖h_ft − h_base‖");
        await page.ScreenshotAsync(new PageScreenshotOptions { Path = Path.Combine(ShotDir, "live.png"), FullPage = true });

        // 4. A steered generation beside the unsteered one (same greedy decoding).
        await page.SelectOptionAsync("#steer-vector", "latent");
        await page.FillAsync("#steer-latent", "5");
        await page.FillAsync("#steer-strength", "8");
        await page.FillAsync("#steer-tokens", "16");
        await page.ClickAsync("#steer-run");
        await page.WaitForSelectorAsync("#steer-result[data-done]");
        string steered = await page.InnerTextAsync("#steered"), unsteered = await page.InnerTextAsync("#unsteered");
        Assert.False(string.IsNullOrWhiteSpace(unsteered));
        Assert.NotEqual(unsteered, steered);
        await page.ScreenshotAsync(new PageScreenshotOptions { Path = Path.Combine(ShotDir, "steer.png"), FullPage = true });

        Assert.True(errors.Count == 0, "console errors:\n" + string.Join("\n", errors));
        foreach (var png in new[] { "table.png", "latent.png", "live.png", "steer.png" })
            Assert.True(new FileInfo(Path.Combine(ShotDir, png)).Length > 10_000, $"{png} is missing or blank");
    }
}

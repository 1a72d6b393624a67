using System.Net;
using System.Text.Json;
using Finetrace.Web;

namespace Finetrace.Tests.Web;

/// <summary>One running dashboard over a hand-made results folder (1000 latents, examples for the first 30), shared by the API tests.</summary>
public sealed class DashboardFixture : IAsyncLifetime
{
    public const int Latents = 1000, WithExamples = 30;
    public string Dir { get; } = Path.Combine(Path.GetTempPath(), "ft-web-" + Guid.NewGuid().ToString("N")[..8]);
    public DashboardServer Server { get; private set; } = null!;
    public HttpClient Http { get; } = new();

    public async Task InitializeAsync()
    {
        SyntheticResults.Write(Dir, Latents, WithExamples);
        Server = new DashboardServer(DashboardData.Load(Dir), new DashboardOptions("127.0.0.1", 0));
        await Server.StartAsync();
        Http.BaseAddress = Server.Address;
    }

    public async Task DisposeAsync()
    {
        Http.Dispose();
        await Server.DisposeAsync();
        try { Directory.Delete(Dir, recursive: true); } catch (IOException) { }
    }

    public async Task<(HttpStatusCode Status, JsonElement Json)> GetJson(string url)
    {
        using var res = await Http.GetAsync(url);
        string body = await res.Content.ReadAsStringAsync();
        Assert.StartsWith("application/json", res.Content.Headers.ContentType?.ToString());
        return (res.StatusCode, JsonDocument.Parse(body).RootElement.Clone());
    }
}

public sealed class DashboardApiTests(DashboardFixture f) : IClassFixture<DashboardFixture>
{
    static int[] Ids(JsonElement page) => page.GetProperty("rows").EnumerateArray().Select(r => r.GetProperty("id").GetInt32()).ToArray();

    [Fact]
    public async Task Paging_by_id_returns_the_asked_window_and_the_total()
    {
        var (status, page) = await f.GetJson("/api/latents?offset=990&limit=20");
        Assert.Equal(HttpStatusCode.OK, status);
        Assert.Equal(DashboardFixture.Latents, page.GetProperty("total").GetInt32());
        Assert.Equal(Enumerable.Range(990, 10), Ids(page));
        var row = page.GetProperty("rows")[0];
        foreach (var key in new[] { "id", "tag", "delta_norm", "nu_error", "nu_reconstruction", "frequency" }) Assert.True(row.TryGetProperty(key, out _), key);
        Assert.Equal(SyntheticResults.DeltaNorm(990), row.GetProperty("delta_norm").GetDouble());
        Assert.Equal(SyntheticResults.Frequency(990), row.GetProperty("frequency").GetDouble());
        Assert.Equal(SyntheticResults.Tag(990), row.GetProperty("tag").GetString());
    }

    [Fact]
    public async Task Sorting_descending_by_delta_norm_matches_a_direct_ordering()
    {
        var expected = Enumerable.Range(0, DashboardFixture.Latents).OrderByDescending(SyntheticResults.DeltaNorm).ThenByDescending(i => i).Skip(40).Take(30).ToArray();
        var (_, page) = await f.GetJson("/api/latents?sort=delta_norm&desc=1&offset=40&limit=30");
        Assert.Equal(expected, Ids(page));
        var asc = Enumerable.Range(0, DashboardFixture.Latents).OrderBy(SyntheticResults.DeltaNorm).ThenBy(i => i).Take(25).ToArray();
        var (_, page2) = await f.GetJson("/api/latents?sort=delta_norm&limit=25");
        Assert.Equal(asc, Ids(page2));
    }

    [Fact]
    public async Task Not_estimable_values_sort_last_in_both_directions()
    {
        int nan = Enumerable.Range(0, DashboardFixture.Latents).Count(i => double.IsNaN(SyntheticResults.NuError(i)));
        Assert.True(nan > 0);
        foreach (var desc in new[] { "0", "1" })
        {
            var (_, tail) = await f.GetJson($"/api/latents?sort=nu_error&desc={desc}&offset={DashboardFixture.Latents - nan}&limit=1000");
            Assert.Equal(nan, tail.GetProperty("rows").GetArrayLength());
            Assert.All(tail.GetProperty("rows").EnumerateArray(), r => Assert.Equal(JsonValueKind.Null, r.GetProperty("nu_error").ValueKind));
            var (_, head) = await f.GetJson($"/api/latents?sort=nu_error&desc={desc}&limit=1");
            double first = head.GetProperty("rows")[0].GetProperty("nu_error").GetDouble();
            var finite = Enumerable.Range(0, DashboardFixture.Latents).Select(SyntheticResults.NuError).Where(double.IsFinite).ToArray();
            Assert.Equal(desc == "1" ? finite.Max() : finite.Min(), first);
        }
    }

    [Fact]
    public async Task Tag_and_range_filters_count_and_return_only_matching_rows()
    {
        var expected = Enumerable.Range(0, DashboardFixture.Latents).Where(i => SyntheticResults.Tag(i) == "ft_only").ToArray();
        var (_, page) = await f.GetJson("/api/latents?tag=ft_only&limit=1000");
        Assert.Equal(expected.Length, page.GetProperty("total").GetInt32());
        Assert.Equal(expected, Ids(page));
        var inRange = Enumerable.Range(0, DashboardFixture.Latents).Where(i => SyntheticResults.Tag(i) == "shared" && SyntheticResults.DeltaNorm(i) is >= 0.2 and <= 0.4).ToArray();
        var (_, ranged) = await f.GetJson("/api/latents?tag=shared&range=delta_norm:0.2:0.4&limit=1000");
        Assert.Equal(inRange, Ids(ranged));
        Assert.Equal(inRange.Length, ranged.GetProperty("total").GetInt32());
    }

    [Fact]
    public async Task A_latent_record_has_its_columns_and_examples_with_values_at_the_stored_positions()
    {
        var (status, rec) = await f.GetJson("/api/latents/7");
        Assert.Equal(HttpStatusCode.OK, status);
        Assert.Equal(7, rec.GetProperty("id").GetInt32());
        Assert.Equal(SyntheticResults.NuReconstruction(7), rec.GetProperty("nu_reconstruction").GetDouble());
        var ex = rec.GetProperty("examples").EnumerateArray().ToArray();
        Assert.Equal(3, ex.Length);
        Assert.Equal(["top", "top", "quantile"], ex.Select(e => e.GetProperty("kind").GetString()));
        for (int k = 0; k < 3; k++)
        {
            var (pos, val) = SyntheticResults.Peak(7, k);
            var values = ex[k].GetProperty("values").EnumerateArray().Select(v => v.GetDouble()).ToArray();
            Assert.Equal(SyntheticResults.ExampleTokens, values.Length);
            Assert.Equal(val, values[pos], 5);
            if (pos != 0) Assert.Equal(0.1, values[0], 5);
            Assert.Equal(SyntheticResults.ExampleTokens - (pos == 0 ? 1 : 2), values.Count(v => v == 0));
        }
        var (_, none) = await f.GetJson($"/api/latents/{DashboardFixture.WithExamples + 1}");
        Assert.Equal(0, none.GetProperty("examples").GetArrayLength());
    }

    [Theory]
    [InlineData("/api/latents/1000")]
    [InlineData("/api/latents/-1")]
    [InlineData("/api/latents/abc")]
    [InlineData("/api/nothing")]
    public async Task Unknown_ids_and_endpoints_are_json_404s(string url)
    {
        var (status, err) = await f.GetJson(url);
        Assert.Equal(HttpStatusCode.NotFound, status);
        Assert.False(string.IsNullOrEmpty(err.GetProperty("error").GetString()));
    }

    [Theory]
    [InlineData("/api/latents?sort=no_such_column", "no_such_column")]
    [InlineData("/api/latents?limit=5000", "limit")]
    [InlineData("/api/latents?range=tag:0:1", "tag")]
    public async Task Bad_queries_are_400s_naming_the_fault(string url, string named)
    {
        var (status, err) = await f.GetJson(url);
        Assert.Equal(HttpStatusCode.BadRequest, status);
        Assert.Contains(named, err.GetProperty("error").GetString());
    }

    [Fact]
    public async Task Pages_render_and_unknown_latents_are_404_pages()
    {
        var page = await f.Http.GetAsync("/latent/3");
        string html = await page.Content.ReadAsStringAsync();
        Assert.Equal(HttpStatusCode.OK, page.StatusCode);
        var (pos, _) = SyntheticResults.Peak(3, 0);
        Assert.Contains($"value {SyntheticResults.Peak(3, 0).Value}", html);
        Assert.Contains("class=\"tok act", html);
        Assert.Contains("Latent Scaling", html);
        var missing = await f.Http.GetAsync("/latent/5000");
        Assert.Equal(HttpStatusCode.NotFound, missing.StatusCode);
        Assert.Contains("404", await missing.Content.ReadAsStringAsync());
        Assert.Equal(HttpStatusCode.NotFound, (await f.Http.GetAsync("/no/such/page")).StatusCode);
        var js = await f.Http.GetAsync("/assets/chart.js");
        Assert.Equal(HttpStatusCode.OK, js.StatusCode);
        Assert.Contains("plotly", (await js.Content.ReadAsStringAsync())[..2000], StringComparison.OrdinalIgnoreCase);
        _ = pos;
    }

    [Fact]
    public async Task Exports_a_filtered_csv_and_a_standalone_latent_page()
    {
        string csv = await f.Http.GetStringAsync("/api/latents.csv?tag=base_only&sort=delta_norm&desc=0");
        var lines = csv.TrimEnd('\n').Split('\n');
        var expected = Enumerable.Range(0, DashboardFixture.Latents).Where(i => SyntheticResults.Tag(i) == "base_only").OrderBy(SyntheticResults.DeltaNorm).ThenBy(i => i).ToArray();
        Assert.Equal(expected.Length + 1, lines.Length);
        Assert.StartsWith("latent,", lines[0]);
        Assert.Equal(expected[0].ToString(), lines[1].Split(',')[0]);
        // The exported table loads back as a feature table with the same values.
        string path = Path.Combine(f.Dir, "exported.csv.tmp");
        File.WriteAllText(path, csv.Replace(string.Join('\n', lines.Skip(1)), string.Join('\n', lines.Skip(1).Select((l, r) => r + l[l.IndexOf(',')..]))));
        var back = Finetrace.Diffing.FeatureTable.Load(path);
        Assert.Equal(expected.Select(SyntheticResults.DeltaNorm), back.Numbers("delta_norm"));
        Assert.Equal(expected.Select(i => $"tok{i % 13}, \"q{i % 3}\""), back.Texts("top_tokens"));

        var res = await f.Http.GetAsync("/latent/4/export");
        string html = await res.Content.ReadAsStringAsync();
        Assert.Contains("attachment", res.Content.Headers.ContentDisposition?.ToString() ?? "");
        Assert.DoesNotContain("src=\"/assets", html);
        Assert.DoesNotContain("href=\"/assets", html);
        Assert.Contains("Plotly", html);
        Assert.Contains("title=\"token ", html);
    }

    [Fact]
    public async Task A_folder_without_results_gives_404_pages_not_errors()
    {
        string dir = Path.Combine(Path.GetTempPath(), "ft-web-empty-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(dir);
        try
        {
            await using var s = new DashboardServer(DashboardData.Load(dir), new DashboardOptions("127.0.0.1", 0));
            await s.StartAsync();
            using var http = new HttpClient { BaseAddress = s.Address };
            var home = await http.GetAsync("/");
            Assert.Equal(HttpStatusCode.NotFound, home.StatusCode);
            Assert.Contains("analyze latents", await home.Content.ReadAsStringAsync());
            var api = await http.GetAsync("/api/latents");
            Assert.Equal(HttpStatusCode.NotFound, api.StatusCode);
            Assert.Contains("feature_df.csv", await api.Content.ReadAsStringAsync());
        }
        finally { Directory.Delete(dir, true); }
    }

    [Fact]
    public void Binds_loopback_by_default()
    {
        Assert.Equal("127.0.0.1", new DashboardOptions().Host);
        Assert.Equal("127.0.0.1", f.Server.Address!.Host);
    }
}

public sealed class LatentIndexTests
{
    [Fact]
    public void Latent_Scaling_columns_are_reachable_under_the_nu_names_and_sort_with_nan_last()
    {
        var t = new Finetrace.Diffing.FeatureTable(4);
        t.Set("beta_ratio_error", new[] { 0.3, double.NaN, 0.1, 0.2 });
        t.Set("freq_all", new[] { 0.5, 0.25, 1.0, 0.0 });
        var ix = new LatentIndex(t);
        Assert.Equal(new[] { 2, 3, 0, 1 }, ix.Query(0, 10, "nu_error", false, null, []).Ids);
        Assert.Equal(new[] { 0, 3, 2, 1 }, ix.Query(0, 10, "nu_error", true, null, []).Ids);
        Assert.Equal(new[] { 2, 0, 1, 3 }, ix.Query(0, 10, "frequency", true, null, []).Ids);
        Assert.Equal(0.1, (double)ix.Cell("nu_error", 2)!);
        Assert.Null(ix.Cell("nu_error", 1));
        Assert.Equal(["beta_ratio_error", "freq_all"], ix.Columns);   // aliases never reach the CSV export
        Assert.Equal(new[] { 0, 3 }, ix.Query(0, 10, null, false, null, [new RangeFilter("nu_error", 0.15, 0.35)]).Ids);
    }
}

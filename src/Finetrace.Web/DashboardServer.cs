using System.Globalization;
using System.Net;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Finetrace.Web;

/// <summary>Where the dashboard listens: 127.0.0.1 unless told otherwise; port 0 picks a free port.</summary>
/// <summary>Where the dashboard listens (127.0.0.1 unless told otherwise; port 0 picks a free port), how many live
/// requests may wait behind the running one, and whether to load the models for the live pages at all.</summary>
public sealed record DashboardOptions(string Host = "127.0.0.1", int Port = 8765, int LiveQueue = 4, bool Live = true);

/// <summary>
/// <c>finetrace serve RESULTS</c>: a read-only web app over a results folder on its own Kestrel server. Pages are
/// server-rendered HTML with a small script and the charting library, all embedded in this assembly (no CDN).
/// </summary>
public sealed partial class DashboardServer : IAsyncDisposable
{
    public const int MaxPageSize = 1000;
    readonly WebApplication _app;
    public DashboardData Data { get; }
    public LiveModels Live { get; }
    readonly bool _live;
    /// <summary>The base address actually bound (with the real port when 0 was asked), set by <see cref="StartAsync"/>.</summary>
    public Uri? Address { get; private set; }

    public DashboardServer(DashboardData data, DashboardOptions options)
    {
        Data = data;
        Live = new LiveModels(data, options.LiveQueue);
        _live = options.Live;
        var builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions { ContentRootPath = AppContext.BaseDirectory });
        builder.Logging.ClearProviders();
        builder.WebHost.UseUrls($"http://{(options.Host.Contains(':') ? "[" + options.Host + "]" : options.Host)}:{options.Port}");
        _app = builder.Build();
        Map(_app);
    }

    public async Task StartAsync(CancellationToken cancel = default)
    {
        await _app.StartAsync(cancel);
        if (Data.Latents is { } t) _ = Task.Run(t.Presort, CancellationToken.None);
        if (_live) Live.StartLoading(); else Live.TurnOff();
        var addr = _app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
        Address = new Uri(addr.Replace("[::]", "127.0.0.1").Replace("0.0.0.0", "127.0.0.1"));
    }

    public Task WaitForShutdownAsync(CancellationToken cancel) => _app.WaitForShutdownAsync(cancel);
    public async ValueTask DisposeAsync() { await _app.StopAsync(); await _app.DisposeAsync(); await Live.WhenLoaded(); Live.Dispose(); }

    void Map(WebApplication app)
    {
        app.MapGet("/", () => Html(Pages.Browser(Data), Data.Latents is null ? 404 : 200));
        app.MapGet("/latent/{id}", (string id) => LatentPageOr404(id, standalone: false));
        app.MapGet("/latent/{id}/export", (string id, HttpContext ctx) =>
        {
            var r = LatentPageOr404(id, standalone: true);
            if (int.TryParse(id, out int n) && Data.Latents is not null && n >= 0 && n < Data.Latents.Rows)
                ctx.Response.Headers.ContentDisposition = $"attachment; filename=\"latent-{n}.html\"";
            return r;
        });
        app.MapGet("/assets/{name}", (string name) =>
        {
            var bytes = Assets.Get(name);
            if (bytes is null) return Results.NotFound();
            string type = name.EndsWith(".css", StringComparison.Ordinal) ? "text/css; charset=utf-8" : "text/javascript; charset=utf-8";
            return Results.Bytes(bytes, type);
        });
        app.MapGet("/api/latents", (HttpRequest req) => ApiPage(req));
        app.MapGet("/api/latents.csv", (HttpRequest req) => ApiCsv(req));
        app.MapGet("/api/latents/{id}", (string id) =>
        {
            if (Data.Latents is null) return JsonError(404, MissingTable);
            if (!int.TryParse(id, NumberStyles.None, CultureInfo.InvariantCulture, out int n) || n < 0 || n >= Data.Latents.Rows)
                return JsonError(404, $"no latent '{id}': ids run from 0 to {Data.Latents.Rows - 1}");
            return Json(LatentRecord(n));
        });
        app.MapGet("/api/plots", () => Data.Latents is null ? JsonError(404, MissingTable) : Json(PlotData(Data.Latents)));
        MapLive(app);
        MapReaders(app);
        app.MapFallback((HttpContext ctx) => ctx.Request.Path.StartsWithSegments("/api")
            ? JsonError(404, $"no API endpoint {ctx.Request.Path}")
            : Html(Pages.NotFound("Not found", $"There is no page at {ctx.Request.Path}."), 404));
    }

    const string MissingTable = "this results folder has no feature_df.csv; run 'finetrace analyze latents' on it first";

    IResult LatentPageOr404(string id, bool standalone)
    {
        if (Data.Latents is null) return Html(Pages.NotFound("No latent table", MissingTable), 404);
        if (!int.TryParse(id, NumberStyles.None, CultureInfo.InvariantCulture, out int n) || n < 0 || n >= Data.Latents.Rows)
            return Html(Pages.NotFound("Unknown latent", $"There is no latent '{id}'; ids run from 0 to {Data.Latents.Rows - 1}."), 404);
        return Html(Pages.Latent(Data, n, LatentRecord(n), standalone));
    }

    /// <summary>The API's latent record: id, every column of the table, examples (when collected), causal entries.</summary>
    internal JsonObject LatentRecord(int id)
    {
        var o = RowObject(Data.Latents!, id);
        if (Data.Examples is not null)
        {
            var arr = new JsonArray();
            foreach (var e in Data.Examples.ForLatent(id))
                arr.Add(new JsonObject
                {
                    ["kind"] = e.Kind, ["band"] = e.Band, ["score"] = e.Score, ["sequence_uid"] = e.SequenceUid, ["dataset"] = e.Dataset,
                    ["token_ids"] = new JsonArray(e.TokenIds.Select(t => (JsonNode?)t).ToArray()),
                    ["tokens"] = e.Tokens is null ? null : new JsonArray(e.Tokens.Select(t => (JsonNode?)t).ToArray()),
                    ["values"] = new JsonArray(e.Values.Select(v => (JsonNode?)(double.IsFinite(v) ? Math.Round(v, 6) : 0)).ToArray()),
                });
            o["examples"] = arr;
        }
        else o["examples"] = null;
        o["causal"] = Data.Causal?.DeepClone();
        return o;
    }

    static JsonObject RowObject(LatentIndex t, int id)
    {
        var o = new JsonObject { ["id"] = id };
        foreach (var c in t.Columns) o[c] = JsonValueOf(t.Cell(c, id));
        // Stable names the API promises whatever the table calls them.
        foreach (var a in t.Aliases) o[a] = JsonValueOf(t.Cell(a, id));
        foreach (var k in new[] { "tag", "delta_norm", "nu_error", "nu_reconstruction", "frequency" }) if (!o.ContainsKey(k)) o[k] = null;
        return o;
    }

    static JsonNode? JsonValueOf(object? v) => v switch { null => null, double d => JsonValue.Create(d), string s => JsonValue.Create(s), _ => null };

    /// <summary>Parses offset/limit/sort/desc/tag and repeated <c>range=col:lo:hi</c>; a bad value is a 400 naming it.</summary>
    (int Offset, int Limit, string? Sort, bool Desc, string? Tag, List<RangeFilter> Ranges)? ParseQuery(HttpRequest req, out string? error)
    {
        error = null;
        var q = req.Query;
        int offset = 0, limit = 50;
        if (q.TryGetValue("offset", out var ov) && (!int.TryParse(ov, out offset) || offset < 0)) { error = $"offset '{ov}' is not a non-negative integer"; return null; }
        if (q.TryGetValue("limit", out var lv) && (!int.TryParse(lv, out limit) || limit < 0 || limit > MaxPageSize)) { error = $"limit '{lv}' must be an integer from 0 to {MaxPageSize}"; return null; }
        string? sort = q.TryGetValue("sort", out var sv) && !string.IsNullOrEmpty(sv) ? sv.ToString() : null;
        if (sort == "id") sort = null;
        bool desc = q.TryGetValue("desc", out var dv) && dv.ToString() is "1" or "true" or "True";
        string? tag = q.TryGetValue("tag", out var tv) && !string.IsNullOrEmpty(tv) ? tv.ToString() : null;
        var ranges = new List<RangeFilter>();
        foreach (var r in q["range"])
        {
            var parts = (r ?? "").Split(':');
            if (parts.Length != 3 || !double.TryParse(parts[1], NumberStyles.Float, CultureInfo.InvariantCulture, out double lo)
                || !double.TryParse(parts[2], NumberStyles.Float, CultureInfo.InvariantCulture, out double hi))
            { error = $"range '{r}' is not COLUMN:LO:HI"; return null; }
            ranges.Add(new RangeFilter(parts[0], lo, hi));
        }
        return (offset, limit, sort, desc, tag, ranges);
    }

    IResult ApiPage(HttpRequest req)
    {
        var t = Data.Latents;
        if (t is null) return JsonError(404, MissingTable);
        var p = ParseQuery(req, out var error);
        if (p is null) return JsonError(400, error!);
        LatentPage page;
        try { page = t.Query(p.Value.Offset, p.Value.Limit, p.Value.Sort, p.Value.Desc, p.Value.Tag, p.Value.Ranges); }
        catch (UnknownColumnException e) { return JsonError(400, e.Message); }
        var rows = new JsonArray();
        foreach (int id in page.Ids) rows.Add(RowObject(t, id));
        return Json(new JsonObject { ["total"] = page.Total, ["offset"] = p.Value.Offset, ["limit"] = p.Value.Limit, ["rows"] = rows });
    }

    IResult ApiCsv(HttpRequest req)
    {
        var t = Data.Latents;
        if (t is null) return JsonError(404, MissingTable);
        var p = ParseQuery(req, out var error);
        if (p is null) return JsonError(400, error!);
        LatentPage page;
        try { page = t.Query(0, int.MaxValue, p.Value.Sort, p.Value.Desc, p.Value.Tag, p.Value.Ranges); }
        catch (UnknownColumnException e) { return JsonError(400, e.Message); }
        var sb = new StringBuilder("latent");
        foreach (var c in t.Columns) sb.Append(',').Append(CsvQuote(c));
        sb.Append('\n');
        foreach (int id in page.Ids)
        {
            sb.Append(id.ToString(CultureInfo.InvariantCulture));
            foreach (var c in t.Columns)
                sb.Append(',').Append(t.IsNumeric(c) ? Finetrace.Diffing.FeatureTable.Format(t.Numbers(c)[id]) : CsvQuote((string)t.Cell(c, id)!));
            sb.Append('\n');
        }
        return Results.File(Encoding.UTF8.GetBytes(sb.ToString()), "text/csv; charset=utf-8", "latents.csv");
    }

    static string CsvQuote(string s) => s.IndexOfAny([',', '"', '\n', '\r']) < 0 ? s : "\"" + s.Replace("\"", "\"\"") + "\"";

    /// <summary>Δnorm histogram (40 bins over the finite values) and a ν^ε/ν^r scatter sample of at most 4000 latents.</summary>
    static JsonObject PlotData(LatentIndex t)
    {
        var o = new JsonObject();
        string? dn = t.IsNumeric("delta_norm") ? "delta_norm" : t.IsNumeric("dec_norm_diff") ? "dec_norm_diff" : null;
        if (dn is not null)
        {
            var v = t.Numbers(dn).Where(double.IsFinite).ToArray();
            if (v.Length > 0)
            {
                double lo = v.Min(), hi = v.Max();
                const int bins = 40;
                double w = hi > lo ? (hi - lo) / bins : 1;
                var counts = new int[bins];
                foreach (var x in v) counts[Math.Min(bins - 1, (int)((x - lo) / w))]++;
                o["histogram"] = new JsonObject
                {
                    ["column"] = dn,
                    ["centers"] = new JsonArray(Enumerable.Range(0, bins).Select(i => (JsonNode?)(lo + (i + 0.5) * w)).ToArray()),
                    ["counts"] = new JsonArray(counts.Select(c => (JsonNode?)c).ToArray()),
                    ["width"] = w,
                };
            }
        }
        if (t.IsNumeric("nu_error") && t.IsNumeric("nu_reconstruction"))
        {
            var e = t.Numbers("nu_error"); var r = t.Numbers("nu_reconstruction");
            var ids = Enumerable.Range(0, t.Rows).Where(i => double.IsFinite(e[i]) && double.IsFinite(r[i])).ToArray();
            int step = Math.Max(1, (ids.Length + 3999) / 4000);
            var pick = ids.Where((_, k) => k % step == 0).ToArray();
            o["scatter"] = new JsonObject
            {
                ["ids"] = new JsonArray(pick.Select(i => (JsonNode?)i).ToArray()),
                ["x"] = new JsonArray(pick.Select(i => (JsonNode?)r[i]).ToArray()),
                ["y"] = new JsonArray(pick.Select(i => (JsonNode?)e[i]).ToArray()),
                ["tags"] = t.Tags is null ? null : new JsonArray(pick.Select(i => (JsonNode?)t.Tags[i]).ToArray()),
                ["sampled"] = step > 1,
            };
        }
        return o;
    }

    static IResult Json(JsonNode node) => Results.Text(node.ToJsonString(), "application/json; charset=utf-8");
    static IResult JsonError(int status, string message) =>
        Results.Text(new JsonObject { ["error"] = message, ["status"] = status }.ToJsonString(), "application/json; charset=utf-8", Encoding.UTF8, status);
    static IResult Html(string html, int status = 200) => Results.Text(html, "text/html; charset=utf-8", Encoding.UTF8, status);

    internal static string Escape(string s) => WebUtility.HtmlEncode(s);
}

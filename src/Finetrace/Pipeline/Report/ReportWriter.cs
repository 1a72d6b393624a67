using System.Globalization;
using System.Net;
using System.Reflection;
using System.Text;
using System.Text.Json.Nodes;
using Finetrace.Diffing;

namespace Finetrace.Pipeline.Report;

/// <summary>Options of <see cref="ReportWriter"/>.</summary>
public sealed record ReportOptions
{
    /// <summary>Latents listed in the table (summary.json holds at least 50; all of them are listed by default).</summary>
    public int MaxLatents { get; init; } = 100;
    /// <summary>Latents whose top examples are shown highlighted token by token (the first ones of the table).</summary>
    public int HighlightedLatents { get; init; } = 20;
    public int ExamplesPerLatent { get; init; } = 3;
    /// <summary>Folder with tokenizer.json to decode examples.sqlite; default: the fine-tuned model named in summary.json
    /// or manifest.json.</summary>
    public string? TokenizerDir { get; init; }
    /// <summary>Output file name inside the results folder.</summary>
    public string FileName { get; init; } = ReportWriter.FileName;
}

/// <summary>
/// RESULTS/report.html: one self-contained page (the charting library, script and style are inlined; a
/// Content-Security-Policy forbids every network request) that a reader opens offline. Tables and text are rendered
/// here as HTML; plots are drawn in the browser by Plotly (plotly.js-basic-dist-min, pinned by package-lock.json and
/// embedded at build time) from a JSON block in the page. Every section tolerates its stage not having run.
/// </summary>
public static class ReportWriter
{
    public const string FileName = "report.html";

    /// <summary>Renders <paramref name="resultsDir"/> into resultsDir/report.html (atomically) and returns its path.</summary>
    public static string Write(string resultsDir, ReportOptions? options = null, CancellationToken cancel = default)
    {
        options ??= new ReportOptions();
        var html = Render(ReportInputs.Load(resultsDir, options.TokenizerDir), options, cancel);
        string path = Path.Combine(resultsDir, options.FileName);
        ResultsFolder.WriteAllTextAtomic(path, html);
        return path;
    }

    public static string Render(ReportInputs inp, ReportOptions options, CancellationToken cancel = default)
    {
        var b = new PageBuilder(inp, options, cancel);
        return b.Build();
    }

    internal static string Resource(string name)
    {
        using var s = typeof(ReportWriter).Assembly.GetManifestResourceStream("Finetrace.Pipeline.Report." + name)
            ?? throw new InvalidOperationException($"resource {name} is missing from the Finetrace assembly (the build's ReportChartBundle step did not run)");
        using var r = new StreamReader(s, Encoding.UTF8);
        return r.ReadToEnd();
    }

    internal static string H(string? s) => WebUtility.HtmlEncode(s ?? "");
    internal static string F(double? v, string fmt = "0.###") => v is { } x && double.IsFinite(x) ? x.ToString(fmt, CultureInfo.InvariantCulture) : "–";
    internal static double? D(JsonNode? n)
    {
        if (n is not JsonValue v) return null;
        if (v.TryGetValue(out double d)) return d;
        if (v.TryGetValue(out string? s) && double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out d)) return d;
        return null;
    }
    internal static string S(JsonNode? n) => n switch
    {
        null => "",
        JsonValue v when v.TryGetValue(out string? s) => s ?? "",
        _ => n.ToJsonString(),
    };
}

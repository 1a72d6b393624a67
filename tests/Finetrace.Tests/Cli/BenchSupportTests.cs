using System.Text.Json;
using Finetrace.Bench;
using Finetrace.Tests.Infrastructure;

namespace Finetrace.Tests.Cli;

[Collection(ProcessWide.Name)] // redirects Console.Out
public class BenchSupportTests
{
    [Fact]
    public void SgemmGflopsComputesTheProductItTimes()
    {
        // x [3, 4], w [2, 4] → y [3, 2]; y is overwritten on each call, not accumulated.
        float[] x = [1, 2, 3, 4, 0, 1, 0, -1, 2, 2, 2, 2], w = [1, 0, 0, 1, -1, 1, -1, 1];
        var y = new float[6];
        Array.Fill(y, 99f);
        double gflops = BenchSupport.SgemmGflops(x, w, 3, 4, 2, y, seconds: 0, maxCalls: 3);
        Assert.Equal([5f, 2f, -1f, 0f, 4f, 0f], y);
        Assert.True(gflops > 0 && double.IsFinite(gflops), $"GFLOP/s {gflops}");
    }

    [Fact]
    public void PrintJsonWritesOneParsableLineWithNullsAndNestedFigures()
    {
        var old = Console.Out;
        var sw = new StringWriter();
        Console.SetOut(sw);
        try
        {
            BenchSupport.PrintJson(new
            {
                ratio = 0.5, missing = (double?)null,
                shapes = new[] { new { name = "1024³", gflops = 12.25 } },
            });
        }
        finally { Console.SetOut(old); }
        string text = sw.ToString();
        Assert.Equal(text.TrimEnd().Length, text.TrimEnd().ReplaceLineEndings("").Length);
        Assert.Contains("\"1024³\"", text);
        using var doc = JsonDocument.Parse(text);
        var root = doc.RootElement;
        Assert.Equal(0.5, root.GetProperty("ratio").GetDouble());
        Assert.Equal(JsonValueKind.Null, root.GetProperty("missing").ValueKind);
        Assert.Equal(12.25, root.GetProperty("shapes")[0].GetProperty("gflops").GetDouble());
    }

    [Fact]
    public void LoadAverageIsANumberOrUnknown()
    {
        string load = BenchSupport.LoadAverage();
        bool readable = File.Exists("/proc/loadavg");
        Assert.True(readable ? double.TryParse(load, System.Globalization.CultureInfo.InvariantCulture, out _) : load == "unknown", load);
    }
}

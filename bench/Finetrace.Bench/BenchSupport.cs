using System.Diagnostics;
using System.Text.Encodings.Web;
using System.Text.Json;
using Finetrace.Tensors;

namespace Finetrace.Bench;

/// <summary>
/// What several benchmarks need alike: the sgemm rate measured in the same run (the bound their figures are stated
/// against), the one-line <c>--json</c> output, and the machine's load average (figures from a shared machine mean
/// little without it).
/// </summary>
public static class BenchSupport
{
    static readonly JsonSerializerOptions JsonOptions = new() { Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    /// <summary>
    /// GFLOP/s of y = x·Wᵀ (<see cref="Gemm.MatMulNT"/>) on the given shape, repeated for at least
    /// <paramref name="seconds"/> (at least one call, at most <paramref name="maxCalls"/>). Call it once untimed first:
    /// the first call pays for JIT, page faults and OpenBLAS thread start-up.
    /// </summary>
    // xMK [m, k], wNK [n, k] → yMN [m, n]
    public static double SgemmGflops(ReadOnlySpan<float> xMK, ReadOnlySpan<float> wNK, int m, int k, int n, Span<float> yMN,
                                     double seconds, int maxCalls = int.MaxValue)
    {
        var sw = Stopwatch.StartNew();
        int calls = 0;
        do { Gemm.MatMulNT(xMK, wNK, m, k, n, yMN); calls++; }
        while (sw.Elapsed.TotalSeconds < seconds && calls < maxCalls);
        return 2.0 * m * k * n * calls / sw.Elapsed.TotalSeconds / 1e9;
    }

    /// <summary>
    /// Prints <paramref name="figures"/> (a dictionary or an anonymous object; nested objects and arrays allowed) as
    /// exactly one line of JSON on stdout: what every benchmark's <c>--json</c> promises. Non-ASCII text (shape names
    /// such as "1024³") is written as is; a null figure (nothing to measure) is written as null.
    /// </summary>
    public static void PrintJson(object figures) => Console.WriteLine(JsonSerializer.Serialize(figures, JsonOptions));

    /// <summary>The 1-minute load average from /proc/loadavg, or "unknown" where it cannot be read.</summary>
    public static string LoadAverage()
    {
        try { return File.ReadAllText("/proc/loadavg").Split(' ')[0]; }
        catch (IOException) { return "unknown"; }
        catch (UnauthorizedAccessException) { return "unknown"; }
    }
}

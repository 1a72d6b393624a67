using Xunit.Abstractions;

namespace Finetrace.Tests.Infrastructure;

/// <summary>Golden-value comparison that reports the maximum absolute difference and where it occurs.</summary>
public static class Golden
{
    public static double MaxAbsDiff(ReadOnlySpan<float> expected, ReadOnlySpan<float> actual, out int at)
    {
        if (expected.Length != actual.Length) throw new Xunit.Sdk.XunitException($"length mismatch: expected {expected.Length}, got {actual.Length}");
        double max = 0; at = -1;
        for (int i = 0; i < expected.Length; i++)
        {
            double d = Math.Abs((double)expected[i] - actual[i]);
            if (double.IsNaN(d)) { at = i; return double.PositiveInfinity; }
            if (d > max) { max = d; at = i; }
        }
        return max;
    }

    /// <summary>Asserts |expected − actual| ≤ atol + rtol·|expected| elementwise; the message names the tensor, the
    /// max abs diff and the worst index. Logs the max diff to <paramref name="log"/> when given.</summary>
    public static void AssertClose(string name, ReadOnlySpan<float> expected, ReadOnlySpan<float> actual, double atol, double rtol = 0, ITestOutputHelper? log = null)
    {
        double max = MaxAbsDiff(expected, actual, out int at);
        log?.WriteLine($"{name}: max abs diff {max:E2} over {expected.Length} values");
        for (int i = 0; i < expected.Length; i++)
        {
            double d = Math.Abs((double)expected[i] - actual[i]);
            if (!(d <= atol + rtol * Math.Abs(expected[i])))
                throw new Xunit.Sdk.XunitException(
                    $"{name}: max abs diff {max:E3} (at {at}); first failure at index {i}: expected {expected[i]:G9}, got {actual[i]:G9} (atol {atol:E1}, rtol {rtol:E1})");
        }
    }
}

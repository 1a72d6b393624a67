using Finetrace.Cuda;
using Xunit.Abstractions;

namespace Finetrace.Tests.Cuda;

/// <summary><see cref="DeviceMath"/> (plain float arithmetic, so the host runs exactly the kernels' operations) against
/// double-precision Math over its whole range, with the edge values spelled out.</summary>
public class DeviceMathTests(ITestOutputHelper output)
{
    [Fact]
    public void Exp_is_within_two_ulps_of_the_exact_value()
    {
        double worst = 0; float worstX = 0;
        var r = new Random(1);
        for (int i = 0; i < 200_000; i++)
        {
            float x = i < 100_000 ? -103.9f + 192.6f * i / 100_000f : (float)((r.NextDouble() * 2 - 1) * 20);
            double exact = Math.Exp(x);
            if (exact < 1.1754944e-38) continue; // subnormal results: checked below in absolute terms
            double rel = Math.Abs(DeviceMath.Exp(x) - exact) / exact;
            if (rel > worst) { worst = rel; worstX = x; }
        }
        output.WriteLine($"DeviceMath.Exp: max relative error {worst:G3} at x = {worstX:R}");
        Assert.True(worst < 2.4e-7, $"DeviceMath.Exp: relative error {worst:G3} at x = {worstX:R}");
        for (float x = -103.9f; x < -87.3f; x += 0.01f)
            Assert.True(Math.Abs(DeviceMath.Exp(x) - Math.Exp(x)) <= 1.5e-45, $"DeviceMath.Exp({x:R}) = {DeviceMath.Exp(x):R}, exact {Math.Exp(x):R}");
        Assert.Equal(1f, DeviceMath.Exp(0f));
        Assert.Equal(1f, DeviceMath.Exp(-0f));
        Assert.Equal(0f, DeviceMath.Exp(float.NegativeInfinity));
        Assert.Equal(0f, DeviceMath.Exp(-1000f));
        Assert.Equal(float.PositiveInfinity, DeviceMath.Exp(float.PositiveInfinity));
        Assert.Equal(float.PositiveInfinity, DeviceMath.Exp(89f));
        Assert.True(float.IsFinite(DeviceMath.Exp(88.72f)), "exp(88.72) is below float.MaxValue");
        Assert.True(float.IsNaN(DeviceMath.Exp(float.NaN)));
    }

    [Fact]
    public void Tanh_matches_Math_Tanh()
    {
        double worst = 0;
        for (int i = -200_000; i <= 200_000; i++)
        {
            float u = i * 1e-4f;
            worst = Math.Max(worst, Math.Abs(DeviceMath.Tanh(u) - Math.Tanh(u)));
        }
        output.WriteLine($"DeviceMath.Tanh: max-abs-diff {worst:G3} on [−20, 20]");
        Assert.True(worst < 2e-7, $"DeviceMath.Tanh: max-abs-diff {worst:G3}");
        Assert.Equal(1f, DeviceMath.Tanh(1e6f));
        Assert.Equal(-1f, DeviceMath.Tanh(float.NegativeInfinity));
        Assert.True(float.IsNaN(DeviceMath.Tanh(float.NaN)));
    }
}

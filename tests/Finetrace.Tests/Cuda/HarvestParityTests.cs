using Finetrace.Cuda;
using Finetrace.Cuda.Checks;
using Finetrace.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Finetrace.Tests.Cuda;

/// <summary>The device harvest (DeviceModel through the harvester) against the CPU harvest on the shared tiny models.</summary>
public class HarvestParityTests(ITestOutputHelper log)
{
    static HarvestParityOptions Options(TempDir tmp, long tokens) => new()
    {
        BaseModel = Shared.Path("models", "stories260K"), FineTunedModel = Shared.Path("models", "stories260K-zog"), WorkDir = tmp.File("parity"),
        Tokens = tokens, ContextLength = 24, BatchSize = 3,
    };

    /// <summary>ILGPU's CPU accelerator runs the device kernels slowly: a small harvest (one batch of three samples of
    /// different lengths, so right padding, every layer stored); the CUDA test below harvests 300 tokens.</summary>
    [SharedFact]
    public void DeviceHarvest_OnIlgpuCpu_Fp32_MatchesTheCpuStore()
    {
        using var tmp = new TempDir();
        using var ctx = DeviceContext.CreateCpu(GemmMode.Fp32);
        var r = HarvestParity.Run(Options(tmp, 40), DeviceSelection.Loader(ctx));
        log.WriteLine(r.ToString());
        Assert.True(r.SameTokens, r.TokenDifference);
        Assert.InRange(r.CpuTokens, 40, 100);
        Assert.Equal(1e-5, r.Tolerance);
        Assert.True(r.Passed, r.ToString());
        Assert.StartsWith("ilgpu-cpu (fp32", r.Device);
    }

    [CudaTheory]
    [InlineData(GemmMode.Fp32)]
    [InlineData(GemmMode.Tf32)]
    [InlineData(GemmMode.Bf16)]
    public void DeviceHarvest_OnCuda_MatchesTheCpuStore(GemmMode mode)
    {
        using var tmp = new TempDir();
        using var ctx = DeviceContext.CreateCuda(mode);
        var r = HarvestParity.Run(Options(tmp, 300) with { ContextLength = 64, BatchSize = 4 }, DeviceSelection.Loader(ctx));
        log.WriteLine(r.ToString());
        Assert.True(r.SameTokens, r.TokenDifference);
        Assert.True(r.Passed, r.ToString());
    }
}

using Finetrace.Cuda;
using Finetrace.Dictionaries;
using Finetrace.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Finetrace.Tests.Cuda;

/// <summary>One ILGPU CPU-accelerator context for the device-trainer tests (kernel compilation is the slow part).</summary>
public sealed class CpuDeviceFixture : IDisposable
{
    public DeviceContext Ctx { get; } = DeviceContext.CreateCpu();
    public void Dispose() => Ctx.Dispose();
}

/// <summary>The device trainer (<see cref="DeviceTrainer"/>) on ILGPU's CPU accelerator against the CPU trainer, through
/// the same <see cref="TrainerParity"/> checks gpu-check runs on a GPU.</summary>
public class DeviceTrainerTests(CpuDeviceFixture fx, ITestOutputHelper output) : IClassFixture<CpuDeviceFixture>
{
    void Print(OneStepParity r)
    {
        output.WriteLine($"{r.Case}: selected cpu {r.SelectedCpu} device {r.SelectedDevice}, mismatches {r.SelectionMismatches}, loss rel {r.LossRelative:G3}, threshold rel {r.ThresholdRelative:G3}, counters equal {r.CountersEqual}, max norm-rel {r.MaxNormRelative:G3}");
        foreach (var e in r.Tensors) output.WriteLine($"  {e.Name}: max-abs {e.MaxAbs:G3}, norm-rel {e.NormRelative:G3}");
    }

    public static IEnumerable<object[]> Cases => TrainerParityCase.Standard.Select(c => new object[] { c.Name });

    [Theory]
    [MemberData(nameof(Cases))]
    public void One_step_matches_the_CPU_trainer(string name)
    {
        var c = TrainerParityCase.Standard.Single(x => x.Name == name);
        var r = TrainerParity.OneStep(fx.Ctx, c);
        Print(r);
        Assert.True(r.SelectedCpu > 0, "the case selects nothing: the comparison would be empty");
        Assert.True(r.Passed, $"{name}: max norm-relative {r.MaxNormRelative:G3} (tolerance {r.Tolerance}), selection mismatches {r.SelectionMismatches}, loss rel {r.LossRelative:G3}, threshold rel {r.ThresholdRelative:G3}, counters equal {r.CountersEqual}");
    }

    [CudaTheory]
    [MemberData(nameof(Cases))]
    public void One_step_on_the_GPU_matches_the_CPU_trainer(string name)
    {
        using var ctx = DeviceContext.CreateCuda(GemmMode.Fp32);
        var r = TrainerParity.OneStep(ctx, TrainerParityCase.Standard.Single(x => x.Name == name));
        Print(r);
        Assert.True(r.Passed, $"{name}: max norm-relative {r.MaxNormRelative:G3}, selection mismatches {r.SelectionMismatches}, loss rel {r.LossRelative:G3}");
    }
}

using Finetrace.Cuda;
using Finetrace.Dictionaries;
using Finetrace.Tests.Infrastructure;
using ILGPU;
using ILGPU.Runtime;
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

    [CudaFact]
    public void Hundred_step_loss_curve_on_the_GPU_stays_within_one_percent_of_the_CPU()
    {
        using var ctx = DeviceContext.CreateCuda(GemmMode.Fp32);
        var r = TrainerParity.LossCurve(ctx, 100, TrainerParity.LossCurveCase);
        output.WriteLine($"worst relative loss difference {r.MaxRelative:G3} at step {r.WorstStep}");
        Assert.True(r.Passed, $"loss differs by {r.MaxRelative:G3} at step {r.WorstStep}");
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

    // 25 steps here (ILGPU's CPU accelerator pays milliseconds per kernel launch on a loaded machine; latents die from
    // step 8, so AuxK acts for most of them); the [CudaFact]
    // below and scripts/gpu-check run the 100 steps.
    [Fact]
    public void Loss_curve_stays_within_one_percent_of_the_CPU_at_every_step()
    {
        var r = TrainerParity.LossCurve(fx.Ctx, 25, TrainerParity.LossCurveCase);
        output.WriteLine($"worst relative loss difference {r.MaxRelative:G3} at step {r.WorstStep}; loss {r.CpuLoss[0]:G4} → {r.CpuLoss[^1]:G4} (cpu), {r.DeviceLoss[^1]:G4} (device)");
        Assert.True(r.CpuLoss[^1] < 0.9 * r.CpuLoss[0], $"the run does not learn (loss {r.CpuLoss[0]} → {r.CpuLoss[^1]}): the curve would test nothing");
        Assert.True(r.Passed, $"loss differs by {r.MaxRelative:G3} at step {r.WorstStep} (cpu {r.CpuLoss[r.WorstStep]}, device {r.DeviceLoss[r.WorstStep]})");
    }

    [Fact]
    public void Unsupported_recipes_are_refused_naming_the_recipe_setting()
    {
        var relu = new SparseDictionary(2, 8, 16, Sparsity.Relu, CodeNormalization.Crosscoder, false);
        var e = Assert.Throws<DeviceTrainingUnsupportedException>(() => DeviceTrainer.CheckSupported(relu, new TrainerOptions()));
        Assert.Equal(nameof(TrainingRecipe.Activation), e.Setting);
        var decoupled = new SparseDictionary(2, 8, 16, Sparsity.BatchTopK, CodeNormalization.Decoupled, false, 4);
        e = Assert.Throws<DeviceTrainingUnsupportedException>(() => DeviceTrainer.CheckSupported(decoupled, new TrainerOptions()));
        Assert.Equal(nameof(TrainingRecipe.CodeNormalization), e.Setting);
        var plain = new SparseDictionary(2, 8, 16, Sparsity.BatchTopK, CodeNormalization.Crosscoder, false, 4);
        e = Assert.Throws<DeviceTrainingUnsupportedException>(() => DeviceTrainer.CheckSupported(plain, new TrainerOptions { Variant = new CrosscoderVariant { Designated = 2 } }));
        Assert.Equal(nameof(TrainingRecipe.Variant), e.Setting);
        DeviceTrainer.CheckSupported(plain, new TrainerOptions());   // BatchTopK crosscoder: accepted
    }

    // Activations from a few discrete levels so equal keys abound (within rows, across rows, at the cut), with
    // zeros, negatives and NaNs that must never be selected.
    static (float[] F, float[] C, bool[] Allowed) TiedActivations(int b, int f, int seed)
    {
        var r = new Random(seed);
        var x = new float[b * f];
        for (int i = 0; i < x.Length; i++)
        {
            int u = r.Next(12);
            x[i] = u < 3 ? 0f : u == 3 ? -0.5f : u == 4 && i % 7 == 0 ? float.NaN : 0.25f * (u - 4);
        }
        var c = new float[f];
        var allowed = new bool[f];
        for (int j = 0; j < f; j++) { c[j] = r.Next(3) switch { 0 => 0.5f, 1 => 1f, _ => 2f }; allowed[j] = r.Next(3) != 0; }
        return (x, c, allowed);
    }

    [Theory]
    [InlineData(1, 5, 2)]
    [InlineData(7, 64, 3)]
    [InlineData(33, 130, 9)]
    [InlineData(16, 40, 40)]   // k·B beyond the positive entries: every positive entry
    public void Batch_top_k_selects_exactly_the_CPU_entries_with_ties_to_the_lower_index(int b, int f, int k)
    {
        foreach (var (scaled, grouped) in new[] { (false, false), (true, false), (false, true), (true, true) })
        {
            var (x, c, _) = TiedActivations(b, f, b * 1000 + f + k);
            var cpu = new SparseCodes(0, f);
            float cpuMin = Selection.BatchTopK(x, scaled ? c : default, b, f, (long)k * b, cpu);
            var acc = fx.Ctx.Accelerator;
            using var xd = acc.Allocate1D(x);
            using var cd = acc.Allocate1D(c);
            using var sel = new DeviceTopK(acc, b, f, grouped);
            using var codes = DeviceCodes.Allocate(acc, b, f, (long)b * f);
            var (nnz, min) = sel.Batch(xd.View, cd.View, default, new KeyArgs { Rows = b, F = f, Scaled = scaled ? 1 : 0 }, (long)k * b, codes);
            var dev = codes.Download(b);
            output.WriteLine($"B={b} F={f} k={k} scaled={scaled} grouped={grouped}: cpu {cpu.Count} entries (min {cpuMin}), device {nnz} (min {min})");
            Assert.Equal(cpu.Count, nnz);
            Assert.Equal(cpuMin, min);
            Assert.Equal(cpu.RowStart.AsSpan(0, b + 1).ToArray(), dev.RowStart.AsSpan(0, b + 1).ToArray());
            Assert.Equal(cpu.Index.AsSpan(0, cpu.Count).ToArray(), dev.Index.AsSpan(0, nnz).ToArray());
            Assert.Equal(cpu.Value.AsSpan(0, cpu.Count).ToArray(), dev.Value.AsSpan(0, nnz).ToArray());
        }
    }

    [Theory]
    [InlineData(1, 5, 2)]
    [InlineData(9, 64, 6)]
    [InlineData(20, 130, 200)]   // k > F
    public void Per_row_top_k_selects_exactly_the_CPU_entries_with_and_without_a_mask(int b, int f, int k)
    {
        foreach (var (masked, grouped) in new[] { (false, false), (true, false), (false, true), (true, true) })
        {
            var (x, c, allowed) = TiedActivations(b, f, b * 77 + f + k);
            var cpu = new SparseCodes(0, f);
            Selection.TopKPerRow(x, c, masked ? allowed : default, b, f, k, cpu);
            var acc = fx.Ctx.Accelerator;
            using var xd = acc.Allocate1D(x);
            using var cd = acc.Allocate1D(c);
            using var md = acc.Allocate1D(allowed.Select(a => a ? 1 : 0).ToArray());
            using var sel = new DeviceTopK(acc, b, f, grouped);
            using var codes = DeviceCodes.Allocate(acc, b, f, (long)b * f);
            int nnz = sel.Rows(xd.View, cd.View, md.View, new KeyArgs { Rows = b, F = f, Scaled = 1, Masked = masked ? 1 : 0 }, k, codes);
            var dev = codes.Download(b);
            output.WriteLine($"B={b} F={f} k={k} masked={masked} grouped={grouped}: cpu {cpu.Count} entries, device {nnz}");
            Assert.Equal(cpu.Count, nnz);
            Assert.Equal(cpu.RowStart.AsSpan(0, b + 1).ToArray(), dev.RowStart.AsSpan(0, b + 1).ToArray());
            Assert.Equal(cpu.Index.AsSpan(0, cpu.Count).ToArray(), dev.Index.AsSpan(0, nnz).ToArray());
        }
    }
}

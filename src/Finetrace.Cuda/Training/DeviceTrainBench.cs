using System.Diagnostics;
using Finetrace.Dictionaries;
using Finetrace.Tensors;
using ILGPU;
using ILGPU.Runtime;

namespace Finetrace.Cuda;

/// <summary>What <see cref="DeviceTrainBench.Run"/> measured.</summary>
public sealed record DeviceTrainBenchResult(string Device, DeviceKind Kind, GemmMode Mode, int Models, int D, int DictSize, int K, int Batch,
    int WarmupSteps, int Steps, double SecondsPerStep, double TokensPerSecond, double LossFirst, double LossLast, double L0, double DeadFraction,
    IReadOnlyDictionary<string, double> PhaseMsPerStep, double SetupSeconds);

/// <summary>
/// Throughput of the device trainer's step (<see cref="DeviceTrainer"/>) on random activations generated once and kept
/// on the device. The step timed is exactly the training step: BatchTopK crosscoder (shared code, c_j = Σ_m ‖d_j^m‖),
/// mse loss Σ_m‖e‖²/B, selection of the k·B largest f·c over the batch, threshold EMA, dead-latent counters (10M-token
/// window: no latent dies in a benchmark, so AuxK computes its dead count but no aux term), backward through the
/// selected entries only, b_dec gradient, global gradient-norm clip at 1, Adam (lr 1e-4, no warm-up) on all four
/// parameter tensors. No geometric-median init (the PyTorch peer has none).
/// </summary>
public static class DeviceTrainBench
{
    public static DeviceTrainBenchResult Run(DeviceContext ctx, int models = 2, int d = 2304, int dictSize = 73_728, int k = 100, int batch = 4096,
        int steps = 10, int warmup = 2, bool phases = false, IProgress<string>? progress = null)
    {
        if (models < 1 || d < 1 || dictSize < 1 || k < 1 || k > dictSize || batch < 1 || steps < 1 || warmup < 0)
            throw new ArgumentException($"sizes must be positive (models {models}, width {d}, dict size {dictSize}, k {k} ≤ dict size, batch {batch}, steps {steps}, warm-up {warmup})");
        var sw = Stopwatch.StartNew();
        progress?.Report($"initialising a {models}×{d}→{dictSize} crosscoder on the host");
        var dict = new SparseDictionary(models, d, dictSize, Sparsity.BatchTopK, CodeNormalization.Crosscoder, false, k);
        Initialization.Crosscoder(dict, new SplitMix64(2));
        var host = new DictionaryTrainer(dict, new TrainerOptions
        {
            Loss = ReconLoss.Mse, Lr = 1e-4, WarmupSteps = 0, ClipNorm = 1f, ThresholdStartStep = 0, GeometricMedianInit = false,
        });
        var rng = new SplitMix64(1);
        var x = new float[(long)batch * models * d];
        for (long i = 0; i < x.Length; i++) x[i] = (float)rng.Normal();
        progress?.Report("uploading parameters, Adam state and the batch");
        using var xDev = ctx.Accelerator.Allocate1D(x);
        using var tr = new DeviceTrainer(ctx, host);
        double setup = sw.Elapsed.TotalSeconds;
        StepStats first = null!, last = null!;
        for (int s = 0; s < warmup; s++) first = tr.StepDevice(xDev.View, batch);
        progress?.Report($"{warmup} warm-up step(s) done; timing {steps}");
        ctx.Synchronize();
        sw.Restart();
        for (int s = 0; s < steps; s++) { last = tr.StepDevice(xDev.View, batch); first ??= last; }
        ctx.Synchronize();
        double secs = sw.Elapsed.TotalSeconds / steps;
        var phaseMs = new Dictionary<string, double>();
        if (phases)
        {
            tr.PhaseSeconds = new Dictionary<string, double>();
            int n = Math.Max(1, Math.Min(3, steps));
            for (int s = 0; s < n; s++) tr.StepDevice(xDev.View, batch);
            foreach (var (name, v) in tr.PhaseSeconds) phaseMs[name] = v / n * 1000;
        }
        return new DeviceTrainBenchResult(ctx.Name, ctx.Kind, ctx.Mode, models, d, dictSize, k, batch, warmup, steps, secs, batch / secs,
            first.TotalPrecise, last.TotalPrecise, last.L0, last.DeadFraction, phaseMs, setup);
    }
}

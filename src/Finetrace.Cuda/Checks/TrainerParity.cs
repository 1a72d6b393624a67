using Finetrace.Dictionaries;
using Finetrace.Tensors;

namespace Finetrace.Cuda;

/// <summary>One small training setup both trainers run: shapes, recipe switches and seeds. Defaults: a BatchTopK
/// crosscoder (2 models, D 32, F 128, batch 64, k 8) with AuxK active from the first step (dead window = one batch),
/// the threshold EMA from step 0, clipping and a learning-rate warm-up.</summary>
public sealed record TrainerParityCase
{
    public string Name { get; init; } = "batchtopk-crosscoder";
    public int Models { get; init; } = 2;
    public int D { get; init; } = 32;
    public int F { get; init; } = 128;
    public int Batch { get; init; } = 64;
    public int K { get; init; } = 8;
    public Sparsity Sparsity { get; init; } = Sparsity.BatchTopK;
    /// <summary>An SAE (M = 1, input centred by b_dec, unit-norm decoder rows) instead of a crosscoder.</summary>
    public bool Sae { get; init; }
    public CodeNormalization CodeNormalization { get; init; } = CodeNormalization.Crosscoder;
    public ReconLoss Loss { get; init; } = ReconLoss.Mse;
    public double Lr { get; init; } = 2e-3;
    public int WarmupSteps { get; init; }
    /// <summary>Tokens without firing before a latent is dead; default one batch, so AuxK acts from step 0.</summary>
    public long? DeadTokens { get; init; }
    public float AuxKAlpha { get; init; } = 1f / 32;
    public float? ClipNorm { get; init; } = 1f;
    /// <summary>Normalise the activations to this RMS (0: raw).</summary>
    public float TargetRms { get; init; }
    public int? KMax { get; init; }
    public ulong Seed { get; init; } = 7;

    /// <summary>The cases the CPU-accelerator tests and gpu-check run.</summary>
    public static IReadOnlyList<TrainerParityCase> Standard =>
    [
        new(),
        new() { Name = "batchtopk-crosscoder-l2-normalised-sae-norm", Loss = ReconLoss.L2, TargetRms = 1f, CodeNormalization = CodeNormalization.Sae, Seed = 11 },
        new() { Name = "batchtopk-sae", Sae = true, Models = 1, CodeNormalization = CodeNormalization.None, Seed = 13 },
        new() { Name = "topk-sae", Sae = true, Models = 1, Sparsity = Sparsity.TopK, CodeNormalization = CodeNormalization.None, KMax = 16, Seed = 17 },
    ];
}

/// <summary>Measured difference of one tensor: max |device − cpu| and ‖device − cpu‖₂ / ‖cpu‖₂.</summary>
public sealed record TensorError(string Name, double MaxAbs, double NormRelative);

/// <summary>One step of <see cref="TrainerParity.OneStep"/>: every tensor's error, the selected code compared entry by
/// entry, the loss, and whether all are within tolerance.</summary>
public sealed record OneStepParity(string Case, string Device, IReadOnlyList<TensorError> Tensors, double MaxNormRelative,
    int SelectedCpu, int SelectedDevice, int SelectionMismatches, double LossRelative, double ThresholdRelative, bool CountersEqual, double Tolerance, bool Passed);

/// <summary><see cref="TrainerParity.LossCurve"/>: the relative loss difference at every step, its maximum, and pass/fail.</summary>
public sealed record LossCurveParity(string Case, string Device, int Steps, double[] CpuLoss, double[] DeviceLoss, double MaxRelative, int WorstStep, double Tolerance, bool Passed);

/// <summary>
/// The device trainer against the CPU trainer (<see cref="DictionaryTrainer"/>, the reference) on identical
/// dictionaries and batches: reusable by a CPU-accelerator test, a [CudaFact] test and scripts/gpu-check alike.
/// </summary>
public static class TrainerParity
{
    /// <summary>One step (by default) from the same state: parameters, gradients, Adam moments (norm-relative ≤
    /// <paramref name="tolerance"/>), the selected latents (identical), dead counters and step counts (equal), loss and
    /// threshold (relative ≤ tolerance).</summary>
    public static OneStepParity OneStep(DeviceContext ctx, TrainerParityCase? c = null, int steps = 1, double tolerance = 1e-5)
    {
        c ??= new TrainerParityCase();
        var data = Data(c, steps);
        var (cpu, mirror) = Trainers(c, data);
        int rowLen = c.Models * c.D;
        using var dev = new DeviceTrainer(ctx, mirror);
        StepStats sc = null!, sd = null!;
        for (int s = 0; s < steps; s++)
        {
            var batch = data.AsSpan(s * c.Batch * rowLen, c.Batch * rowLen);
            sc = cpu.Step(batch);
            sd = dev.Step(batch);
        }
        var devCodes = dev.DownloadCodes();
        var devGrads = dev.DownloadGradients();
        dev.SyncToHost();
        var errors = new List<TensorError>();
        string[] names = ["w_enc", "b_enc", "w_dec", "b_dec"];
        for (int i = 0; i < names.Length; i++)
        {
            errors.Add(Compare(names[i], mirror.Parameters[i], cpu.Parameters[i]));
            errors.Add(Compare("grad." + names[i], devGrads[i], cpu.Gradients[i]));
            errors.Add(Compare("adam.exp_avg." + names[i], mirror.Optimizer.ExpAvg[i], cpu.Optimizer.ExpAvg[i]));
            errors.Add(Compare("adam.exp_avg_sq." + names[i], mirror.Optimizer.ExpAvgSq[i], cpu.Optimizer.ExpAvgSq[i]));
        }
        int mismatches = SelectionMismatches(cpu.Codes, devCodes);
        bool counters = mirror.TokensSinceFired.AsSpan().SequenceEqual(cpu.TokensSinceFired) && mirror.StepCount == cpu.StepCount
            && mirror.Optimizer.Step == cpu.Optimizer.Step;
        // the threshold EMA reads the smallest selected f·c, which carries the encoder product's rounding
        double thRel = Math.Abs((double)mirror.Dict.Threshold - cpu.Dict.Threshold) / Math.Max(Math.Abs((double)cpu.Dict.Threshold), 1e-30);
        double lossRel = Math.Abs(sd.TotalPrecise - sc.TotalPrecise) / Math.Max(Math.Abs(sc.TotalPrecise), 1e-30);
        double maxRel = errors.Max(e => e.NormRelative);
        bool passed = maxRel <= tolerance && mismatches == 0 && counters && lossRel <= tolerance && thRel <= tolerance;
        return new OneStepParity(c.Name, ctx.Name, errors, maxRel, cpu.Codes.Count, devCodes.Count, mismatches, lossRel, thRel, counters, tolerance, passed);
    }

    /// <summary>The loss-curve setup: the default crosscoder with an 8-batch dead window (latents die and AuxK acts
    /// mid-run), a 5-step warm-up and the threshold EMA from step 0.</summary>
    public static TrainerParityCase LossCurveCase => new() { Name = "loss-curve", DeadTokens = 8 * 64, WarmupSteps = 5 };

    /// <summary><paramref name="steps"/> steps of both trainers on the same batches; passes when the device's loss is
    /// within <paramref name="tolerance"/> (relative) of the CPU's at every step.</summary>
    public static LossCurveParity LossCurve(DeviceContext ctx, int steps = 100, TrainerParityCase? c = null, double tolerance = 0.01)
    {
        c ??= LossCurveCase;
        var data = Data(c, steps);
        var (cpu, mirror) = Trainers(c, data);
        int rowLen = c.Models * c.D;
        using var dev = new DeviceTrainer(ctx, mirror);
        var lc = new double[steps]; var ld = new double[steps];
        double worst = 0; int worstStep = 0;
        for (int s = 0; s < steps; s++)
        {
            var batch = data.AsSpan(s * c.Batch * rowLen, c.Batch * rowLen);
            lc[s] = cpu.Step(batch).TotalPrecise;
            ld[s] = dev.Step(batch).TotalPrecise;
            double rel = Math.Abs(ld[s] - lc[s]) / Math.Max(Math.Abs(lc[s]), 1e-30);
            if (!(rel <= worst)) { worst = rel; worstStep = s; }
        }
        return new LossCurveParity(c.Name, ctx.Name, steps, lc, ld, worst, worstStep, tolerance, worst <= tolerance);
    }

    /// <summary>Entries (token, latent) selected by one code and not the other.</summary>
    public static int SelectionMismatches(SparseCodes a, SparseCodes b)
    {
        if (a.Rows != b.Rows) return Math.Max(a.Count, b.Count);
        int diff = 0;
        for (int t = 0; t < a.Rows; t++)
        {
            var x = new HashSet<int>(a.RowIndices(t).ToArray());
            var y = new HashSet<int>(b.RowIndices(t).ToArray());
            diff += x.Count + y.Count - 2 * x.Intersect(y).Count();
        }
        return diff;
    }

    static TensorError Compare(string name, float[] device, float[] cpu)
    {
        double maxAbs = 0, d2 = 0, c2 = 0;
        for (int i = 0; i < cpu.Length; i++)
        {
            double d = (double)device[i] - cpu[i];
            if (double.IsNaN(d)) { maxAbs = double.PositiveInfinity; d2 = double.PositiveInfinity; continue; }
            maxAbs = Math.Max(maxAbs, Math.Abs(d));
            d2 += d * d; c2 += (double)cpu[i] * cpu[i];
        }
        double rel = c2 > 0 ? Math.Sqrt(d2 / c2) : Math.Sqrt(d2);
        return new TensorError(name, maxAbs, rel);
    }

    // Synthetic activations with structure the dictionary can learn: each token sums 4 of F/2 random features (shared
    // directions with per-model gains, some exclusive to a model), plus noise; [steps·B, M, D].
    static float[] Data(TrainerParityCase c, int steps)
    {
        var rng = new SplitMix64(c.Seed * 1000003 + 1);
        int M = c.Models, D = c.D, nf = Math.Max(4, c.F / 2), rowLen = M * D;
        var dirs = new float[nf * rowLen];
        for (int i = 0; i < dirs.Length; i++) dirs[i] = (float)rng.Normal();
        for (int f = 0; f < nf; f++)
            for (int m = 0; m < M; m++)
            {
                float gain = f % 5 == 0 ? (m == 0 ? 0f : 1f) : (float)(0.5 + rng.NextDouble());
                for (int i = 0; i < D; i++) dirs[f * rowLen + m * D + i] *= gain / MathF.Sqrt(D);
            }
        long n = (long)steps * c.Batch;
        var x = new float[n * rowLen];
        for (long t = 0; t < n; t++)
        {
            var row = x.AsSpan((int)(t * rowLen), rowLen);
            for (int i = 0; i < rowLen; i++) row[i] = (float)(0.05 * rng.Normal()) + 0.3f;
            for (int a = 0; a < 4; a++)
            {
                int f = (int)(rng.NextU64() % (ulong)nf);
                float mag = (float)(1 + 2 * rng.NextDouble());
                for (int i = 0; i < rowLen; i++) row[i] += mag * dirs[f * rowLen + i];
            }
        }
        return x;
    }

    static (DictionaryTrainer Cpu, DictionaryTrainer Mirror) Trainers(TrainerParityCase c, float[] data)
    {
        var dict = new SparseDictionary(c.Models, c.D, c.F, c.Sparsity, c.Sae ? CodeNormalization.None : c.CodeNormalization, c.Sae, c.K);
        var rng = new SplitMix64(c.Seed);
        if (c.Sae) Initialization.Sae(dict, rng); else Initialization.Crosscoder(dict, rng);
        if (c.TargetRms > 0)
        {
            int rowLen = c.Models * c.D;
            long n = data.Length / rowLen;
            var mean = new float[rowLen]; var std = new float[rowLen];
            for (int i = 0; i < rowLen; i++)
            {
                double s = 0, q = 0;
                for (long t = 0; t < n; t++) { double v = data[t * rowLen + i]; s += v; q += v * v; }
                double mu = s / n;
                mean[i] = (float)mu; std[i] = (float)Math.Sqrt(Math.Max(0, q / n - mu * mu));
            }
            dict.Normalizer = Normalizer.FromStats(c.TargetRms, mean, std, c.Models, c.D);
        }
        var opts = new TrainerOptions
        {
            Loss = c.Loss, Lr = c.Lr, WarmupSteps = c.WarmupSteps, TotalSteps = 1000, ClipNorm = c.ClipNorm,
            AuxKAlpha = c.AuxKAlpha, DeadTokens = c.DeadTokens ?? c.Batch, ThresholdStartStep = -1, GeometricMedianInit = true,
            UnitNormDecoder = c.Sae, KMax = c.KMax, KAnnealSteps = c.KMax is null ? 0 : 50,
        };
        return (new DictionaryTrainer(dict, opts, c.Seed), new DictionaryTrainer(dict.Clone(), opts, c.Seed));
    }
}

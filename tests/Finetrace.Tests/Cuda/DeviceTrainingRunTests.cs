using Finetrace.Activations.Synthetic;
using Finetrace.Cuda;
using Finetrace.Dictionaries;
using Finetrace.Tensors;
using Finetrace.Tests.Cli;
using Finetrace.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Finetrace.Tests.Cuda;

/// <summary>The training loop with its steps on a device (ILGPU's CPU accelerator here): checkpoints in the CPU
/// trainer's format at the consumed data position, resumable by either trainer; and train --device on the CLI.</summary>
public class DeviceTrainingRunTests(CpuDeviceFixture fx, ITestOutputHelper output) : IClassFixture<CpuDeviceFixture>
{
    const int M = 2, D = 16, F = 64, B = 32;

    static float[] Rows(int n, ulong seed)
    {
        var rng = new SplitMix64(seed);
        var dirs = new float[24 * M * D];
        for (int i = 0; i < dirs.Length; i++) dirs[i] = (float)rng.Normal() / 4;
        var x = new float[n * M * D];
        for (int t = 0; t < n; t++)
            for (int a = 0; a < 3; a++)
            {
                int f = (int)(rng.NextU64() % 24);
                float mag = (float)(1 + rng.NextDouble());
                for (int i = 0; i < M * D; i++) x[t * M * D + i] += mag * dirs[f * M * D + i] + (float)(0.02 * rng.Normal());
            }
        return x;
    }

    static DictionaryTrainer NewTrainer()
    {
        var dict = new SparseDictionary(M, D, F, Sparsity.BatchTopK, CodeNormalization.Crosscoder, false, 4);
        Initialization.Crosscoder(dict, new SplitMix64(3));
        return new DictionaryTrainer(dict, new TrainerOptions { Lr = 1e-3, WarmupSteps = 0, DeadTokens = 2 * B, ThresholdStartStep = 0 }, 5);
    }

    static double NormRelative(float[] a, float[] b)
    {
        double d = 0, n = 0;
        for (int i = 0; i < a.Length; i++) { d += ((double)a[i] - b[i]) * ((double)a[i] - b[i]); n += (double)b[i] * b[i]; }
        return Math.Sqrt(d / n);
    }

    [Fact]
    public void A_device_run_checkpoints_the_consumed_position_and_the_CPU_resumes_it()
    {
        var data = Rows(400, 9);
        using var dir = new TempDir();
        string cpuDir = dir.File("cpu"), devDir = dir.File("dev"), mixDir = dir.File("mix");

        var cpu = new TrainingRun(cpuDir, NewTrainer(), new ArrayBatches(data, M, D), new RunOptions { BatchSize = B, Steps = 6 });
        cpu.Run();

        var devSource = new ArrayBatches(data, M, D);
        var dev = new TrainingRun(devDir, NewTrainer(), devSource, new RunOptions { BatchSize = B, Steps = 6, Device = new DeviceTraining(fx.Ctx) });
        dev.Run();
        var (devCk, devPos, _) = TrainingCheckpoint.Load(dev.CheckpointDir);
        Assert.Equal(6L * B, devPos);   // consumed rows, not the batch read ahead
        Assert.Equal(6, devCk.StepCount);
        Assert.Equal(6, File.ReadLines(dev.MetricsPath).Count());

        // three steps on the device, then the CPU trainer resumes the device's checkpoint
        var half = new TrainingRun(mixDir, NewTrainer(), new ArrayBatches(data, M, D), new RunOptions { BatchSize = B, Steps = 3, Device = new DeviceTraining(fx.Ctx) });
        half.Run();
        Assert.Equal(3L * B, TrainingCheckpoint.Load(half.CheckpointDir).DataPosition);
        var resumed = new TrainingRun(mixDir, NewTrainer(), new ArrayBatches(data, M, D), new RunOptions { BatchSize = B, Steps = 6, Resume = true });
        resumed.Run();
        Assert.Equal(6, File.ReadLines(resumed.MetricsPath).Count());

        var a = cpu.Trainer.Dict;
        foreach (var (name, other) in new[] { ("device", dev.Trainer.Dict), ("device then cpu", resumed.Trainer.Dict) })
        {
            double we = NormRelative(other.WEnc, a.WEnc), wd = NormRelative(other.WDec, a.WDec), be = NormRelative(other.BEnc, a.BEnc), bd = NormRelative(other.BDec, a.BDec);
            output.WriteLine($"{name} vs cpu after 6 steps: w_enc {we:G3}, w_dec {wd:G3}, b_enc {be:G3}, b_dec {bd:G3}, threshold {other.Threshold} vs {a.Threshold}");
            Assert.True(Math.Max(Math.Max(we, wd), Math.Max(be, bd)) < 1e-5, $"{name}: parameters differ from the CPU run's");
            Assert.NotEqual(0, NormRelative(other.WEnc, NewTrainer().Dict.WEnc));   // the runs did train
        }
    }

    [Fact]
    public void Train_on_the_device_from_the_command_line_and_refusals_name_the_flags()
    {
        using var store = new TempDir();
        SyntheticGenerator.Make(new SyntheticSpec { DModel = 16, Features = 32, Tokens = 4_000, Seed = 4, Dtype = "f32" }, store.Path);
        using var outs = new TempDir();
        string[] common = ["train", "crosscoder", "--store", store.Path, "--layer", "0", "--k", "4", "--dict-size", "32", "--batch", "64", "--holdout", "0"];
        var env = new Dictionary<string, string?> { ["FINETRACE_DEVICE"] = null, ["FINETRACE_DEBUG"] = null };

        var ok = CliProcess.Run([.. common, "--tokens", "256", "--device", "ilgpu-cpu", "--out", outs.File("cc")], env, timeoutMs: 300_000);
        output.WriteLine(ok.ToString());
        Assert.Equal(0, ok.ExitCode);
        Assert.Contains("training on ilgpu-cpu (fp32", ok.Stderr);
        Assert.Equal(4, File.ReadLines(Path.Combine(outs.File("cc"), "metrics.jsonl")).Count());
        Assert.Equal(4, TrainingCheckpoint.Load(Path.Combine(outs.File("cc"), "checkpoint")).Trainer.StepCount);
        Assert.Equal(2, DictionaryIO.Load(outs.File("cc")).Models);

        var relu = CliProcess.Run([.. common, "--tokens", "256", "--l1", "0.1", "--device", "ilgpu-cpu", "--out", outs.File("relu")], env);
        Assert.NotEqual(0, relu.ExitCode);
        Assert.Contains("--activation relu (or --l1) with --device", relu.Stderr);
        Assert.DoesNotContain("   at ", relu.Stderr);

        var bf16 = CliProcess.Run([.. common, "--tokens", "256", "--device", "ilgpu-cpu", "--precision", "bf16", "--out", outs.File("bf")], env);
        Assert.NotEqual(0, bf16.ExitCode);
        Assert.Contains("--precision bf16", bf16.Stderr);

        if (!CudaDevice.Available)
        {
            var cuda = CliProcess.Run([.. common, "--tokens", "256", "--device", "cuda", "--out", outs.File("cuda")], env);
            Assert.NotEqual(0, cuda.ExitCode);
            Assert.Contains("--device cuda: no CUDA device was found", cuda.Stderr);
            Assert.DoesNotContain("   at ", cuda.Stderr);
            Assert.True(cuda.Stderr.Trim().Split('\n').Length <= 2, cuda.ToString());
        }
    }

    [Fact]
    public void Bench_device_train_prints_one_json_line_and_refuses_cuda_without_a_gpu()
    {
        var r = CliProcess.Run(["bench", "device-train", "--device", "ilgpu-cpu", "--width", "16", "--dict-size", "64", "--batch", "32", "--k", "4", "--steps", "1", "--warmup", "1", "--json"], timeoutMs: 300_000);
        Assert.Equal(0, r.ExitCode);
        var line = Assert.Single(r.Stdout.Trim().Split('\n'));
        var o = System.Text.Json.JsonDocument.Parse(line).RootElement;
        Assert.Equal("device-train", o.GetProperty("bench").GetString());
        Assert.Equal(64, o.GetProperty("dict_size").GetInt32());
        Assert.True(o.GetProperty("tokens_per_s").GetDouble() > 0);
        Assert.Equal(4.0, o.GetProperty("l0").GetDouble());   // k·B entries over B tokens
        if (!CudaDevice.Available)
        {
            var cuda = CliProcess.Run(["bench", "device-train", "--json"]);
            Assert.NotEqual(0, cuda.ExitCode);
            Assert.Equal("", cuda.Stdout.Trim());
            Assert.Contains("--device cuda: no usable CUDA GPU", cuda.Stderr);
            Assert.Single(cuda.Stderr.Trim().Split('\n'));
        }
    }
}

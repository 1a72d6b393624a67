using System.CommandLine;
using Finetrace.Cuda;
using Spectre.Console;

namespace Finetrace.Bench;

/// <summary>
/// <c>finetrace bench device-train [--device cuda|ilgpu-cpu] [--precision fp32|tf32] [--models 2] [--width 2304]
/// [--dict-size 73728] [--k 100] [--batch 4096] [--steps 10] [--warmup 2] [--phases] [--json]</c>: tokens/s of the
/// device trainer's BatchTopK crosscoder step (<see cref="DeviceTrainBench"/>) on random activations kept on the device,
/// the figure scripts/gpu-check compares with the same step in PyTorch.
/// </summary>
public sealed class DeviceTrainBenchCommand : IBenchCommand
{
    public Command Build()
    {
        var device = new Option<string>("--device") { Description = "cuda (the first CUDA GPU) or ilgpu-cpu (ILGPU's CPU accelerator: the same kernels, slowly; use tiny --dict-size, --width, --batch)", DefaultValueFactory = _ => "cuda" };
        var precision = new Option<string>("--precision") { Description = "Encoder product: fp32 or tf32 (tensor cores, fp32 accumulation)", DefaultValueFactory = _ => "fp32" };
        var models = new Option<int>("--models") { Description = "Models M of the crosscoder", DefaultValueFactory = _ => 2 };
        var width = new Option<int>("--width") { Description = "Residual width D", DefaultValueFactory = _ => 2304 };
        var dictSize = new Option<int>("--dict-size") { Description = "Latents F", DefaultValueFactory = _ => 73_728 };
        var k = new Option<int>("--k") { Description = "Active latents per token (k·batch kept per batch)", DefaultValueFactory = _ => 100 };
        var batch = new Option<int>("--batch") { Description = "Tokens per step", DefaultValueFactory = _ => 4096 };
        var steps = new Option<int>("--steps") { Description = "Timed steps", DefaultValueFactory = _ => 10 };
        var warmup = new Option<int>("--warmup") { Description = "Untimed steps first (kernel compilation, cuBLAS start-up)", DefaultValueFactory = _ => 2 };
        var phases = new Option<bool>("--phases") { Description = "Also time each phase of the step (a few extra synchronised steps)" };
        var json = BenchOptions.Json();
        var cmd = new Command("device-train", "Device dictionary-training step throughput (BatchTopK crosscoder, tokens/s)");
        foreach (var o in new Option[] { device, precision, models, width, dictSize, k, batch, steps, warmup, phases, json }) cmd.Options.Add(o);
        cmd.SetAction(r => Run(r.GetValue(device)!, r.GetValue(precision)!, r.GetValue(models), r.GetValue(width), r.GetValue(dictSize), r.GetValue(k),
            r.GetValue(batch), r.GetValue(steps), r.GetValue(warmup), r.GetValue(phases), r.GetValue(json)));
        return cmd;
    }

    static int Run(string deviceText, string precisionText, int models, int width, int dictSize, int k, int batch, int steps, int warmup, bool phases, bool json)
    {
        var kind = BenchDevice.Kind(deviceText);
        var mode = BenchDevice.Mode(precisionText, "--precision", [GemmMode.Fp32, GemmMode.Tf32], " (the trainer keeps fp32 parameters)");
        if (models < 1 || width < 1 || dictSize < 1 || k < 1 || k > dictSize || batch < 1 || steps < 1 || warmup < 0)
            throw new ArgumentException("--models, --width, --dict-size, --batch, --steps and --k must be positive (k ≤ dict size), --warmup ≥ 0");
        if (BenchDevice.TryOpen(kind, mode, deviceText) is not { } ctx) return 1;
        using (ctx)
        {
            var progress = json ? null : new Progress<string>(s => Console.Error.WriteLine(s));
            var r = DeviceTrainBench.Run(ctx, models, width, dictSize, k, batch, steps, warmup, phases, progress);
            if (json)
                BenchSupport.PrintJson(new
                {
                    bench = "device-train", device = r.Device, device_kind = DeviceSelection.DeviceName(r.Kind),
                    precision = r.Mode.ToString().ToLowerInvariant(), kind = "batchtopk-crosscoder", models = r.Models, d = r.D, dict_size = r.DictSize, k = r.K,
                    batch = r.Batch, warmup_steps = r.WarmupSteps, steps = r.Steps, seconds_per_step = Math.Round(r.SecondsPerStep, 6),
                    tokens_per_s = Math.Round(r.TokensPerSecond, 1), loss_first = r.LossFirst, loss_last = r.LossLast, l0 = r.L0, dead_fraction = r.DeadFraction,
                    phases_ms = r.PhaseMsPerStep.Count > 0 ? r.PhaseMsPerStep.ToDictionary(kv => kv.Key, kv => Math.Round(kv.Value, 3)) : null,
                    setup_seconds = Math.Round(r.SetupSeconds, 2), load_average = BenchSupport.LoadAverage(),
                });
            else
            {
                AnsiConsole.MarkupLine($"BatchTopK crosscoder M={r.Models} D={r.D} F={r.DictSize} k={r.K} batch={r.Batch} on {Markup.Escape(r.Device)} ({r.Mode}); {r.Steps} timed steps after {r.WarmupSteps} warm-up");
                var t = new Table().AddColumns("figure", "value");
                t.Columns[1].RightAligned();
                t.AddRow("seconds / step", $"{r.SecondsPerStep:F4}");
                t.AddRow("tokens / s", $"{r.TokensPerSecond:N0}");
                t.AddRow("loss (first → last)", $"{r.LossFirst:G4} → {r.LossLast:G4}");
                t.AddRow("L0", $"{r.L0:F1}");
                foreach (var (name, ms) in r.PhaseMsPerStep) t.AddRow($"  {Markup.Escape(name)}", $"{ms:F2} ms");
                t.AddRow("set-up (init, upload)", $"{r.SetupSeconds:F1} s");
                AnsiConsole.Write(t);
                AnsiConsole.MarkupLine($"[grey]load average {Markup.Escape(BenchSupport.LoadAverage())} (figures swing on a busy machine)[/]");
            }
        }
        return 0;
    }
}

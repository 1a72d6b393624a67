using System.CommandLine;
using Finetrace.Cuda;
using Spectre.Console;

namespace Finetrace.Bench;

/// <summary>
/// <c>finetrace bench device-forward --model DIR --device cuda|ilgpu-cpu --precision bf16|tf32|fp32 [--batch 32]
/// [--context 1024] [--forwards 5] [--no-logits] [--json]</c>: tokens/s of the device-resident forward
/// (<see cref="Finetrace.Cuda.DeviceForwardBench"/>) and the TFLOP/s it implies (2 · matmul parameters · tokens, plus
/// attention 4·B·T²·heads·head_dim per layer as executed), the figure compared with PyTorch's eager forward on the GPU.
/// </summary>
public sealed class DeviceForwardBenchCommand : IBenchCommand
{
    public Command Build()
    {
        var model = new Option<string>("--model") { Description = "Checkpoint folder (e.g. from finetrace model synth)", Required = true };
        var device = new Option<string>("--device") { Description = "cuda (the first CUDA GPU) or ilgpu-cpu (ILGPU's CPU accelerator: the same kernels, slowly)", DefaultValueFactory = _ => "cuda" };
        var precision = new Option<string>("--precision") { Description = "Matrix products: bf16 (bf16 weights and activations, f32 accumulation), tf32 or fp32", DefaultValueFactory = _ => "bf16" };
        var batch = new Option<int>("--batch") { Description = "Sequences per forward", DefaultValueFactory = _ => 32 };
        var context = new Option<int>("--context") { Description = "Tokens per sequence", DefaultValueFactory = _ => 1024 };
        var forwards = new Option<int>("--forwards") { Description = "Timed forwards (after one warm-up); the median is reported", DefaultValueFactory = _ => 5 };
        var noLogits = new Option<bool>("--no-logits") { Description = "Stop at the final residual (no unembedding), as a harvest does" };
        var json = BenchOptions.Json();
        var cmd = new Command("device-forward", "Device forward throughput (tokens/s, TFLOP/s) of a checkpoint at batch × context");
        foreach (var o in new Option[] { model, device, precision, batch, context, forwards, noLogits, json }) cmd.Options.Add(o);
        cmd.SetAction(r => Run(r.GetValue(model)!, r.GetValue(device)!, r.GetValue(precision)!, r.GetValue(batch), r.GetValue(context),
            r.GetValue(forwards), !r.GetValue(noLogits), r.GetValue(json)));
        return cmd;
    }

    static int Run(string dir, string deviceText, string precisionText, int batch, int context, int forwards, bool logits, bool json)
    {
        var kind = BenchDevice.Kind(deviceText);
        var mode = BenchDevice.Mode(precisionText, "--precision", [GemmMode.Bf16, GemmMode.Tf32, GemmMode.Fp32]);
        if (batch <= 0 || context <= 0 || forwards <= 0) throw new ArgumentException("--batch, --context and --forwards must be positive");
        if (BenchDevice.TryOpen(kind, mode, deviceText) is not { } ctx) return 1;
        using (ctx)
        {
            var progress = json ? null : new Progress<string>(s => Console.Error.WriteLine(s));
            var r = DeviceForwardBench.Run(ctx, dir, batch, context, forwards, warmup: 1, logits: logits, progress: progress);
            if (json) PrintJson(r, logits);
            else PrintTable(r, logits);
        }
        return 0;
    }

    static void PrintJson(DeviceForwardBenchResult r, bool logits) => BenchSupport.PrintJson(new
    {
        model = r.Model, device = r.Device, device_kind = DeviceSelection.DeviceName(r.Kind),
        precision = r.Mode.ToString().ToLowerInvariant(), batch = r.Batch, context = r.Context, forwards = r.Forwards, logits,
        seconds_per_forward = Math.Round(r.Seconds, 6), tokens_per_s = Math.Round(r.TokensPerSecond, 1),
        matmul_tflops = r.MatmulTflops, tflops = r.Tflops,
        matmul_flops_per_forward = r.MatmulFlops, attention_flops_per_forward = r.AttentionFlops,
        matmul_parameters = r.MatmulParameters, device_weight_bytes = r.DeviceWeightBytes,
        load_seconds = Math.Round(r.LoadSeconds, 3), all_seconds = r.AllSeconds.Select(s => Math.Round(s, 6)),
        load_average = BenchSupport.LoadAverage(),
    });

    static void PrintTable(DeviceForwardBenchResult r, bool logits)
    {
        AnsiConsole.MarkupLine($"{Markup.Escape(r.Model)} on {Markup.Escape(r.Device)} ({r.Mode}), batch {r.Batch} × context {r.Context}, " +
            $"{(logits ? "to logits" : "to the final residual")}; median of {r.Forwards} forwards after a warm-up");
        var t = new Table().AddColumns("figure", "value");
        t.Columns[1].RightAligned();
        t.AddRow("seconds / forward", $"{r.Seconds:F4}");
        t.AddRow("tokens / s", $"{r.TokensPerSecond:F0}");
        t.AddRow("matmul TFLOP/s (2·params·tokens)", $"{r.MatmulTflops:F3}");
        t.AddRow("TFLOP/s incl. attention (4·B·T²·heads·hd per layer)", $"{r.Tflops:F3}");
        t.AddRow("matmul parameters", $"{r.MatmulParameters:N0}");
        t.AddRow("weights on device", $"{r.DeviceWeightBytes / 1048576.0:F1} MiB");
        t.AddRow("load + upload", $"{r.LoadSeconds:F2} s");
        AnsiConsole.Write(t);
        AnsiConsole.MarkupLine($"[grey]load average {Markup.Escape(BenchSupport.LoadAverage())} (figures swing on a busy machine)[/]");
    }
}

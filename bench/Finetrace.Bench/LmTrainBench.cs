using System.CommandLine;
using System.Diagnostics;
using Finetrace.Models.Backward;
using Finetrace.Tensors;
using Finetrace.Training;
using Spectre.Console;

namespace Finetrace.Bench;

/// <summary>
/// <c>finetrace bench lm-train (--model DIR | --config CONFIG.json) [--batch B --seq T] [--steps N] [--lora r] [--json]</c>:
/// language-model training throughput (tokens through forward, backward and the AdamW update per second) on random
/// tokens, and how fast its GEMM-bound parts (every projection and the unembedding, forward and backward: 6 FLOPs per
/// matmul parameter per token for a full fine-tune) run against the sgemm rate measured in the same run on the model's
/// MLP shape. Timed steps and sgemm runs alternate so both see the same machine load; each figure is the best run.
/// The GEMM parts are also split into the forward's products (y = x·Wᵀ, the same <c>Gemm.Sgemm(N, T)</c> call the
/// inference forward of f32 weights makes) and the backward's (dX = dY·W and dW = dYᵀ·x), each as a fraction of the
/// same-run sgemm, so "training runs at the speed of the forward pass's kernels" is a comparison in one run on the
/// same shapes: backward fraction / forward fraction.
/// </summary>
public sealed class LmTrainBench : IBenchCommand
{
    public Command Build()
    {
        var model = new Option<string?>("--model") { Description = "Checkpoint folder (llama, mistral, qwen2, qwen3)" };
        var config = new Option<string?>("--config") { Description = "A config.json instead of --model: random initial weights" };
        var batch = new Option<int>("--batch") { Description = "Packed rows per step", DefaultValueFactory = _ => 8 };
        var seq = new Option<int>("--seq") { Description = "Tokens per row", DefaultValueFactory = _ => 256 };
        var steps = new Option<int>("--steps") { Description = "Timed steps (after one warm-up step)", DefaultValueFactory = _ => 3 };
        var lora = new Option<int>("--lora") { Description = "LoRA rank (0 = full fine-tune)", DefaultValueFactory = _ => 0 };
        var json = BenchOptions.Json();
        var cmd = new Command("lm-train", "Language-model training throughput and its GEMM parts against the same-run sgemm rate");
        foreach (var o in new Option[] { model, config, batch, seq, steps, lora, json }) cmd.Options.Add(o);
        cmd.SetAction(r => Run(r.GetValue(model), r.GetValue(config), r.GetValue(batch), r.GetValue(seq), r.GetValue(steps), r.GetValue(lora), r.GetValue(json)));
        return cmd;
    }

    static int Run(string? modelDir, string? configPath, int b, int t, int steps, int lora, bool json)
    {
        if ((modelDir is null) == (configPath is null)) throw new ArgumentException("give exactly one of --model DIR or --config CONFIG.json");
        if (b <= 0 || t < 2 || steps <= 0) throw new ArgumentException("--batch and --steps must be positive and --seq at least 2");
        var parameters = modelDir is not null ? ModelParameters.Load(modelDir) : ModelParameters.Initialise(File.ReadAllText(configPath!), 0, configPath!);
        var c = parameters.Config;
        var rng = new Random(1);
        var examples = Enumerable.Range(0, b * (steps + 1)).Select(_ => new LmExample(Enumerable.Range(0, t).Select(_ => rng.Next(c.Vocab)).ToArray())).ToList();
        var trainer = new LmTrainer(parameters, new PackedRows(examples, t), new LmTrainingOptions
        {
            Steps = steps + 1, BatchRows = b, SeqLen = t, LoraRank = lora, LearningRate = 1e-4,
        });

        int m = b * t;
        var x = Random(m * c.Hidden, 2);
        var w = Random(c.Intermediate * c.Hidden, 3);
        var y = new float[(long)m * c.Intermediate];
        Gemm.MatMulNT(x, w, m, c.Hidden, c.Intermediate, y);

        double best = double.MaxValue, sgemm = 0;
        DifferentiableLM.Profile? bestProfile = null;
        var progress = new StepTimer();
        // step 0 is the warm-up (JIT, first allocations); then each timed step is followed by an sgemm run as long
        var profile = new DifferentiableLM.Profile();
        progress.OnStep = s =>
        {
            double dt = progress.Lap();
            if (s.Step >= 2)
            {
                if (dt < best) { best = dt; bestProfile = profile; }
                sgemm = Math.Max(sgemm, BenchSupport.SgemmGflops(x, w, m, c.Hidden, c.Intermediate, y, seconds: dt));
            }
            profile = new DifferentiableLM.Profile();
            DifferentiableLM.Profile.Current = profile;
            progress.Lap();
        };
        progress.Lap();
        trainer.Run(null, progress);
        DifferentiableLM.Profile.Current = null;
        var p = bestProfile!;

        double tokensPerS = m / best;
        double gemmGflops = p.GemmFlops / p.Gemm / 1e9;
        double ratio = gemmGflops / sgemm;
        double other = best - p.Gemm - p.Attention;
        double fwdGflops = p.GemmForwardFlops / p.GemmForward / 1e9, bwdGflops = p.GemmBackwardFlops / p.GemmBackward / 1e9;
        double fwdRatio = fwdGflops / sgemm, bwdRatio = bwdGflops / sgemm;
        if (json)
        {
            BenchSupport.PrintJson(new Dictionary<string, object?>
            {
                ["tokens_per_s"] = tokensPerS, ["step_s"] = best, ["gemm_gflops"] = gemmGflops, ["sgemm_gflops"] = sgemm, ["gemm_ratio"] = ratio,
                ["forward_gemm_gflops"] = fwdGflops, ["forward_gemm_ratio"] = fwdRatio, ["backward_gemm_gflops"] = bwdGflops,
                ["backward_gemm_ratio"] = bwdRatio, ["backward_vs_forward"] = bwdRatio / fwdRatio,
                ["gemm_s"] = p.Gemm, ["forward_gemm_s"] = p.GemmForward, ["backward_gemm_s"] = p.GemmBackward, ["attention_s"] = p.Attention, ["other_s"] = other, ["load_average"] = BenchSupport.LoadAverage(),
            });
            return 0;
        }
        var table = new Table().AddColumns("figure", "value");
        table.AddRow("model", Markup.Escape($"{c.ModelType}, {c.Layers} layers, hidden {c.Hidden}, {parameters.ParameterCount:N0} parameters, " +
            (lora > 0 ? $"LoRA r={lora}" : "full fine-tune")));
        table.AddRow("batch × seq", $"{b} × {t} = {m} tokens per step");
        table.AddRow($"step: forward + backward + AdamW (best of {steps})", $"{best:F3} s");
        table.AddRow("tokens/s", $"{tokensPerS:N0}");
        table.AddRow("GEMM parts: time / GFLOP/s", $"{p.Gemm:F3} s / {gemmGflops:F1}");
        table.AddRow(Markup.Escape($"same-run sgemm GFLOP/s [{m}×{c.Hidden}]·[{c.Hidden}×{c.Intermediate}]"), $"{sgemm:F1} ({Gemm.Backend})");
        table.AddRow("GEMM parts / sgemm (target ≥ 0.50)", $"{ratio:F2}");
        table.AddRow("  forward products (x·Wᵀ, the forward pass's kernel) / sgemm", $"{fwdRatio:F2} ({p.GemmForward:F3} s, {fwdGflops:F1} GFLOP/s)");
        table.AddRow("  backward products (dY·W, dYᵀ·x) / sgemm", $"{bwdRatio:F2} ({p.GemmBackward:F3} s, {bwdGflops:F1} GFLOP/s)");
        table.AddRow("  backward / forward (1 = training GEMMs at forward speed)", $"{bwdRatio / fwdRatio:F2}");
        table.AddRow("attention (forward + backward) / other", $"{p.Attention:F3} s / {other:F3} s");
        table.AddRow("load average (1 min)", BenchSupport.LoadAverage());
        AnsiConsole.Write(table);
        return 0;
    }

    sealed class StepTimer : IProgress<LmTrainingProgress>
    {
        readonly Stopwatch _sw = Stopwatch.StartNew();
        double _last;
        public Action<LmTrainingProgress>? OnStep;
        public double Lap() { double now = _sw.Elapsed.TotalSeconds, dt = now - _last; _last = now; return dt; }
        public void Report(LmTrainingProgress value) => OnStep?.Invoke(value);
    }

    static float[] Random(long n, int seed)
    {
        var rng = new Random(seed);
        var a = new float[n];
        for (long i = 0; i < n; i++) a[i] = (float)rng.NextDouble() - 0.5f;
        return a;
    }
}

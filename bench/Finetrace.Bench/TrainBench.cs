using System.CommandLine;
using System.Diagnostics;
using System.Text.Json;
using Finetrace.Dictionaries;
using Finetrace.Tensors;
using Spectre.Console;

namespace Finetrace.Bench;

/// <summary>
/// <c>finetrace bench train</c>: tokens/s of one dictionary training step (encode, sparsify, decode, loss, backward,
/// clip, Adam) on random activations, against the dense-FLOP bound = (sgemm FLOP/s measured in the same run) ÷
/// (12·M·D·F FLOP per token: encoder and decoder forward and backward as dense GEMMs). <c>--dense</c> also times the
/// same step with the dense GEMM kernels and prints the sparse speed-up.
/// </summary>
public sealed class TrainBench : IBenchCommand
{
    public Command Build()
    {
        var kind = new Option<string>("--kind") { Description = "batchtopk-crosscoder | crosscoder-l1 | batchtopk-sae", DefaultValueFactory = _ => "batchtopk-crosscoder" };
        var d = new Option<int>("--d") { Description = "Residual width D", DefaultValueFactory = _ => 256 };
        var f = new Option<int>("--f") { Description = "Dictionary size F", DefaultValueFactory = _ => 8192 };
        var k = new Option<int>("--k") { Description = "k (TopK family)", DefaultValueFactory = _ => 32 };
        var batch = new Option<int>("--batch") { Description = "Tokens per step", DefaultValueFactory = _ => 2048 };
        var models = new Option<int>("--models") { Description = "Models M for crosscoders", DefaultValueFactory = _ => 2 };
        var steps = new Option<int>("--steps") { Description = "Timed steps (after one warm-up step)", DefaultValueFactory = _ => 3 };
        var dense = new Option<bool>("--dense") { Description = "Also time the dense implementation of the same step and report the speed-up" };
        var json = BenchOptions.Json();
        var cmd = new Command("train", "Dictionary training step throughput vs the dense-FLOP bound");
        foreach (var o in new Option[] { kind, d, f, k, batch, models, steps, dense, json }) cmd.Options.Add(o);
        cmd.SetAction(r => Run(r.GetValue(kind)!, r.GetValue(d), r.GetValue(f), r.GetValue(k), r.GetValue(batch), r.GetValue(models), r.GetValue(steps), r.GetValue(dense), r.GetValue(json)));
        return cmd;
    }

    static int Run(string kind, int d, int f, int k, int batch, int models, int steps, bool compareDense, bool json)
    {
        var (act, sae) = kind switch
        {
            "batchtopk-crosscoder" => (Sparsity.BatchTopK, false),
            "crosscoder-l1" => (Sparsity.Relu, false),
            "batchtopk-sae" => (Sparsity.BatchTopK, true),
            _ => throw new ArgumentException($"--kind {kind}: expected batchtopk-crosscoder, crosscoder-l1 or batchtopk-sae"),
        };
        int m = sae ? 1 : models;
        var rng = new SplitMix64(1);
        var x = Tensor.Allocate((long)batch * m * d, zeroed: false);
        for (int i = 0; i < x.Length; i++) x[i] = (float)rng.Normal();

        // same-run sgemm rate on the encoder-forward shape
        var w = Tensor.Allocate((long)f * d, zeroed: false);
        for (int i = 0; i < w.Length; i++) w[i] = (float)rng.Uniform(-0.01, 0.01);
        var y = Tensor.Allocate((long)batch * f, zeroed: false);
        Gemm.MatMulNT(x.AsSpan(0, batch * d), w, batch, d, f, y);
        double gemmFlops = 1e9 * BenchSupport.SgemmGflops(x.AsSpan(0, batch * d), w, batch, d, f, y, seconds: 1.0, maxCalls: 5);
        w = y = null!;
        GC.Collect();

        double boundTps = gemmFlops / (12.0 * m * d * f);
        double sparseTps = Time(act, sae, m, d, f, k, batch, steps, x, dense: false);
        double denseTps = double.NaN;
        if (compareDense) { GC.Collect(); denseTps = Time(act, sae, m, d, f, k, batch, steps, x, dense: true); }

        double ratio = sparseTps / boundTps;
        if (json)
        {
            var o = new Dictionary<string, object> { ["tokens_per_s"] = sparseTps, ["dense_bound_tokens_per_s"] = boundTps, ["ratio"] = ratio, ["sgemm_gflops"] = gemmFlops / 1e9 };
            if (compareDense) { o["dense_tokens_per_s"] = denseTps; o["sparse_speedup"] = sparseTps / denseTps; }
            BenchSupport.PrintJson(o);
            return 0;
        }
        var t = new Table().AddColumns("figure", "value");
        t.AddRow("kind", $"{kind} (M={m}, D={d}, F={f}{(act == Sparsity.Relu ? "" : $", k={k}")}, batch={batch}, {steps} timed steps)");
        t.AddRow("sgemm (same run)", $"{gemmFlops / 1e9:F1} GFLOP/s");
        t.AddRow("dense-FLOP bound", $"{boundTps:N0} tokens/s  (sgemm ÷ 12·M·D·F)");
        t.AddRow("training step", $"{sparseTps:N0} tokens/s");
        t.AddRow("ratio to bound", $"{ratio:F2}");
        if (compareDense)
        {
            t.AddRow("dense implementation", $"{denseTps:N0} tokens/s");
            t.AddRow("sparse speed-up", $"{sparseTps / denseTps:F2}×");
        }
        AnsiConsole.Write(t);
        return 0;
    }

    static double Time(Sparsity act, bool sae, int m, int d, int f, int k, int batch, int steps, float[] x, bool dense)
    {
        var dict = new SparseDictionary(m, d, f, act, sae ? CodeNormalization.None : CodeNormalization.Crosscoder, sae, act == Sparsity.Relu ? 0 : k);
        if (sae) Initialization.Sae(dict, new SplitMix64(2)); else Initialization.Crosscoder(dict, new SplitMix64(2));
        var tr = new DictionaryTrainer(dict, new TrainerOptions
        {
            Loss = ReconLoss.Mse, Lr = 1e-4, WarmupSteps = 0, Dense = dense, SparsityCoef = act == Sparsity.Relu ? 0.04f : 0,
            ClipNorm = act == Sparsity.Relu ? null : 1f, UnitNormDecoder = sae, ThresholdStartStep = 0,
        });
        var span = x.AsSpan(0, batch * m * d);
        tr.Step(span);   // warm-up (includes the geometric-median init)
        tr.PhaseSeconds.Clear();
        var sw = Stopwatch.StartNew();
        for (int s = 0; s < steps; s++) tr.Step(span);
        double secs = sw.Elapsed.TotalSeconds;
        if (Environment.GetEnvironmentVariable("FINETRACE_BENCH_PHASES") == "1")
            Console.Error.WriteLine($"{(dense ? "dense" : "sparse")} phases per step: " + string.Join(", ", tr.PhaseSeconds.Select(kv => $"{kv.Key} {kv.Value / steps * 1000:F0} ms")));
        return (double)batch * steps / secs;
    }
}

using System.CommandLine;
using System.Diagnostics;
using System.Text.Json;
using Finetrace.Models;
using Finetrace.Tensors;
using Spectre.Console;

namespace Finetrace.Bench;

/// <summary>
/// <c>finetrace bench forward --model DIR [--batch B --seq T] [--repeat N] [--json]</c>: tokens/s of a full forward
/// (embedding to logits), the GFLOP/s this implies (2 × matmul parameters × tokens + attention 4·B·T²·heads·head_dim per
/// layer), the machine's sgemm GFLOP/s measured in the same run on the model's dominant MLP shape, and their ratio.
/// </summary>
public sealed class ForwardBench : IBenchCommand
{
    public Command Build()
    {
        var model = new Option<string>("--model") { Description = "Checkpoint folder (e.g. from finetrace model synth)", Required = true };
        var batch = new Option<int>("--batch") { Description = "Sequences per forward", DefaultValueFactory = _ => 4 };
        var seq = new Option<int>("--seq") { Description = "Tokens per sequence", DefaultValueFactory = _ => 128 };
        var repeat = new Option<int>("--repeat") { Description = "Timed forwards (after one warm-up)", DefaultValueFactory = _ => 3 };
        var json = BenchOptions.Json();
        var cmd = new Command("forward", "Forward-pass throughput against the same-run sgemm bound");
        foreach (var o in new Option[] { model, batch, seq, repeat, json }) cmd.Options.Add(o);
        cmd.SetAction(r => Run(r.GetValue(model)!, r.GetValue(batch), r.GetValue(seq), r.GetValue(repeat), r.GetValue(json)));
        return cmd;
    }

    static int Run(string dir, int b, int t, int repeat, bool json)
    {
        if (b <= 0 || t <= 0 || repeat <= 0) throw new ArgumentException("--batch, --seq and --repeat must be positive");
        using var lm = CausalLM.Load(dir);
        var c = lm.Config;
        var rng = new Random(1);
        var ids = new int[b * t];
        for (int i = 0; i < ids.Length; i++) ids[i] = rng.Next(c.Vocab);
        var batch = new TokenBatch(ids, b, t);

        lm.Forward(batch); // warm-up: JIT, page faults of the mapping, buffer allocation
        var times = new List<double>();
        for (int i = 0; i < repeat; i++)
        {
            var sw = Stopwatch.StartNew();
            lm.Forward(batch);
            times.Add(sw.Elapsed.TotalSeconds);
        }
        double seconds = times.Min();
        long tokens = (long)b * t;
        double flops = 2.0 * lm.MatmulParameters * tokens + 4.0 * b * (double)t * t * c.Heads * c.HeadDim * c.Layers;
        double gflops = flops / seconds / 1e9;
        double sgemm = SgemmGflops(b * t, c.Hidden, c.Intermediate);
        double ratio = gflops / sgemm;

        if (json)
        {
            Console.WriteLine(JsonSerializer.Serialize(new Dictionary<string, double>
            {
                ["tokens_per_s"] = tokens / seconds, ["gflops"] = gflops, ["sgemm_gflops"] = sgemm, ["ratio"] = ratio,
            }));
            return 0;
        }
        var table = new Table().AddColumns("figure", "value");
        table.AddRow("model", Markup.Escape($"{c.ModelType}, {c.Layers} layers, hidden {c.Hidden}, {lm.MatmulParameters:N0} matmul parameters"));
        table.AddRow("batch × seq", $"{b} × {t} = {tokens} tokens");
        table.AddRow("forward (best of " + repeat + ")", $"{seconds:F3} s");
        table.AddRow("tokens/s", $"{tokens / seconds:F1}");
        table.AddRow("implied GFLOP/s", $"{gflops:F1}");
        table.AddRow(Markup.Escape($"sgemm GFLOP/s [{b * t}×{c.Hidden}]·[{c.Hidden}×{c.Intermediate}]"), $"{sgemm:F1} ({Gemm.Backend})");
        table.AddRow("ratio (target ≥ 0.50)", $"{ratio:F2}");
        AnsiConsole.Write(table);
        return 0;
    }

    /// <summary>Best-of-runs GFLOP/s of y[m,n] = x[m,k]·w[n,k]ᵀ, repeated for at least half a second.</summary>
    static double SgemmGflops(int m, int k, int n)
    {
        var x = new float[(long)m * k];
        var w = new float[(long)n * k];
        var y = new float[(long)m * n];
        var rng = new Random(2);
        for (int i = 0; i < x.Length; i++) x[i] = (float)rng.NextDouble();
        for (int i = 0; i < w.Length; i++) w[i] = (float)rng.NextDouble();
        Gemm.MatMulNT(x, w, m, k, n, y);
        double best = 0;
        var total = Stopwatch.StartNew();
        while (total.Elapsed.TotalSeconds < 0.5)
        {
            var sw = Stopwatch.StartNew();
            Gemm.MatMulNT(x, w, m, k, n, y);
            best = Math.Max(best, 2.0 * m * k * n / sw.Elapsed.TotalSeconds / 1e9);
        }
        return best;
    }
}

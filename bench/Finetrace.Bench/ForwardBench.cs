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
        // Forward runs and sgemm runs of about the same length alternate, so both see the same machine load;
        // each figure is the best of its runs.
        int m = b * t;
        var x = Random(m * c.Hidden, 2);
        var w = Random(c.Intermediate * c.Hidden, 3);
        var y = new float[(long)m * c.Intermediate];
        Gemm.MatMulNT(x, w, m, c.Hidden, c.Intermediate, y);
        double seconds = double.MaxValue, sgemm = 0;
        var profile = new CausalLM.Profile();
        for (int i = 0; i < repeat; i++)
        {
            if (i == 0) CausalLM.Profile.Current = profile;
            var sw = Stopwatch.StartNew();
            lm.Forward(batch);
            double dt = sw.Elapsed.TotalSeconds;
            CausalLM.Profile.Current = null;
            if (i == 0) profile.Other = dt - profile.Projections - profile.Attention - profile.Unembed;
            seconds = Math.Min(seconds, dt);

            sw.Restart();
            int calls = 0;
            while (sw.Elapsed.TotalSeconds < dt)
            {
                Gemm.MatMulNT(x, w, m, c.Hidden, c.Intermediate, y);
                calls++;
            }
            sgemm = Math.Max(sgemm, 2.0 * m * c.Hidden * c.Intermediate * calls / sw.Elapsed.TotalSeconds / 1e9);
        }
        long tokens = (long)b * t;
        double flops = 2.0 * lm.MatmulParameters * tokens + 4.0 * b * (double)t * t * c.Heads * c.HeadDim * c.Layers;
        double gflops = flops / seconds / 1e9;
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
        table.AddRow(Markup.Escape($"sgemm GFLOP/s [{m}×{c.Hidden}]·[{c.Hidden}×{c.Intermediate}] (best of {repeat}, interleaved)"), $"{sgemm:F1} ({Gemm.Backend})");
        table.AddRow("ratio (target ≥ 0.50)", $"{ratio:F2}");
        table.AddRow("first timed run: projections / attention / unembed / other",
            $"{profile.Projections:F2} / {profile.Attention:F2} / {profile.Unembed:F2} / {profile.Other:F2} s");
        AnsiConsole.Write(table);
        return 0;
    }

    static float[] Random(long n, int seed)
    {
        var rng = new Random(seed);
        var a = new float[n];
        for (long i = 0; i < n; i++) a[i] = (float)rng.NextDouble() - 0.5f;
        return a;
    }
}

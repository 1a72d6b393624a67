using System.CommandLine;
using System.Diagnostics;
using System.Text.Json;
using Finetrace.Models;
using Finetrace.Tensors;
using Spectre.Console;

namespace Finetrace.Bench;

/// <summary>
/// <c>finetrace bench forward --model DIR [--batch B --seq T] [--repeat N] [--pair DIR] [--stop-after L] [--json]</c>:
/// tokens/s of a forward (embedding to logits, or to block L), the GFLOP/s this implies (2 × matmul parameters × tokens +
/// attention 4·B·T²·heads·head_dim per layer run), the machine's sgemm GFLOP/s measured in the same run on the model's
/// MLP shape, and their ratio. With <c>--pair</c> both models run on every batch (as when harvesting paired activations)
/// and the process's peak resident memory is reported.
/// </summary>
public sealed class ForwardBench : IBenchCommand
{
    public Command Build()
    {
        var model = new Option<string>("--model") { Description = "Checkpoint folder (e.g. from finetrace model synth)", Required = true };
        var batch = new Option<int>("--batch") { Description = "Sequences per forward", DefaultValueFactory = _ => 4 };
        var seq = new Option<int>("--seq") { Description = "Tokens per sequence", DefaultValueFactory = _ => 128 };
        var repeat = new Option<int>("--repeat") { Description = "Timed forwards (after one warm-up)", DefaultValueFactory = _ => 3 };
        var pair = new Option<string?>("--pair") { Description = "A second checkpoint of the same shape run on the same batch (base + fine-tune)" };
        var stop = new Option<int?>("--stop-after") { Description = "Run blocks 0..L only (no final norm or logits), as activation harvesting does" };
        var json = BenchOptions.Json();
        var cmd = new Command("forward", "Forward-pass throughput against the same-run sgemm bound");
        foreach (var o in new Option[] { model, batch, seq, repeat, pair, stop, json }) cmd.Options.Add(o);
        cmd.SetAction(r => Run(r.GetValue(model)!, r.GetValue(pair), r.GetValue(batch), r.GetValue(seq), r.GetValue(repeat), r.GetValue(stop), r.GetValue(json)));
        return cmd;
    }

    static int Run(string dir, string? pairDir, int b, int t, int repeat, int? stopAfter, bool json)
    {
        if (b <= 0 || t <= 0 || repeat <= 0) throw new ArgumentException("--batch, --seq and --repeat must be positive");
        var models = new List<CausalLM> { CausalLM.Load(dir) };
        try
        {
            if (pairDir is not null) models.Add(CausalLM.Load(pairDir));
            return Measure(models, b, t, repeat, stopAfter, json);
        }
        finally
        {
            foreach (var lm in models) lm.Dispose();
        }
    }

    static int Measure(List<CausalLM> models, int b, int t, int repeat, int? stopAfter, bool json)
    {
        var c = models[0].Config;
        if (models.Any(lm => lm.Hidden != c.Hidden || lm.Layers != c.Layers || lm.MatmulParameters != models[0].MatmulParameters))
            throw new ArgumentException("--pair must have the same shapes as --model");
        if (stopAfter is { } s && (s < 0 || s >= c.Layers)) throw new ArgumentException($"--stop-after {s}: the model has layers 0..{c.Layers - 1}");
        var rng = new Random(1);
        var ids = new int[b * t];
        for (int i = 0; i < ids.Length; i++) ids[i] = rng.Next(c.Vocab);
        var batch = new TokenBatch(ids, b, t);
        void ForwardAll() { foreach (var lm in models) lm.Forward(batch, stopAfterLayer: stopAfter); }

        ForwardAll(); // warm-up: JIT, page faults of the mapping, buffer allocation
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
            ForwardAll();
            double dt = sw.Elapsed.TotalSeconds;
            CausalLM.Profile.Current = null;
            if (i == 0) profile.Other = dt - profile.Projections - profile.Attention - profile.Unembed;
            seconds = Math.Min(seconds, dt);

            sgemm = Math.Max(sgemm, BenchSupport.SgemmGflops(x, w, m, c.Hidden, c.Intermediate, y, seconds: dt));
        }

        var lm0 = models[0];
        int layersRun = (stopAfter ?? c.Layers - 1) + 1;
        long blockParams = (lm0.MatmulParameters - lm0.UnembedParameters) / c.Layers;
        long paramsRun = blockParams * layersRun + (stopAfter is null ? lm0.UnembedParameters : 0);
        long tokens = (long)b * t * models.Count;
        double flops = 2.0 * paramsRun * tokens + 4.0 * b * (double)t * t * c.Heads * c.HeadDim * layersRun * models.Count;
        double gflops = flops / seconds / 1e9;
        double ratio = gflops / sgemm;
        double peakGiB = Process.GetCurrentProcess().PeakWorkingSet64 / (double)(1L << 30);

        if (json)
        {
            BenchSupport.PrintJson(new Dictionary<string, double>
            {
                ["tokens_per_s"] = tokens / seconds, ["gflops"] = gflops, ["sgemm_gflops"] = sgemm, ["ratio"] = ratio,
            });
            return 0;
        }
        var table = new Table().AddColumns("figure", "value");
        table.AddRow("model", Markup.Escape($"{c.ModelType}, {c.Layers} layers, hidden {c.Hidden}, {lm0.MatmulParameters:N0} matmul parameters, " +
            $"{lm0.WeightBytes / (double)(1L << 30):F2} GiB of weights{(models.Count > 1 ? " × 2 (pair)" : "")}"));
        table.AddRow("batch × seq", $"{b} × {t} = {b * t} tokens{(stopAfter is { } sa ? $", blocks 0..{sa} only" : ", to logits")}");
        table.AddRow($"forward{(models.Count > 1 ? " of both models" : "")} (best of {repeat})", $"{seconds:F3} s");
        table.AddRow("tokens/s", $"{tokens / seconds:F1}");
        table.AddRow("implied GFLOP/s", $"{gflops:F1}");
        table.AddRow(Markup.Escape($"sgemm GFLOP/s [{m}×{c.Hidden}]·[{c.Hidden}×{c.Intermediate}] (best of {repeat}, interleaved)"), $"{sgemm:F1} ({Gemm.Backend})");
        table.AddRow("ratio (target ≥ 0.50)", $"{ratio:F2}");
        table.AddRow("first timed run: projections / attention / unembed / other",
            $"{profile.Projections:F2} / {profile.Attention:F2} / {profile.Unembed:F2} / {profile.Other:F2} s");
        table.AddRow("peak resident memory (mapped weights included)", $"{peakGiB:F2} GiB");
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

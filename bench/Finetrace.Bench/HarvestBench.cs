using System.CommandLine;
using System.Diagnostics;
using System.Text.Json;
using Finetrace.Activations;
using Finetrace.Activations.Harvest;
using Finetrace.Models;
using Finetrace.Text.Datasets;
using Spectre.Console;

namespace Finetrace.Bench;

/// <summary>
/// <c>finetrace bench harvest --base DIR --finetuned DIR [--data SPEC…] [--tokens N] [--context 512] [--vs-context 128]
/// [--repeat 5] [--device cpu|cuda|ilgpu-cpu] [--precision fp32|tf32|bf16] [--json]</c>: what a harvest costs beyond its
/// forwards, and what a long context costs, on the chosen device (both sides of every ratio run on it).
/// Each round runs, back to back (order reversed every other round, so drift in machine load favours no side):
/// a pure forward pass over the harvest's own batches (tokenize and both forwards to the last stored layer, nothing
/// kept), the full harvest (the same plus copies, drop rules, bf16 conversion, statistics and shard writes) at the
/// context, and the same harvest at the short context (<c>--vs-context</c>). Every ratio is taken within a round, then
/// the median over rounds is reported, so one disturbed run moves no figure.
/// Store overhead (bound 15%): the pure forward's tokens/s over the harvest's, minus 1 (separate runs); also inside the
/// harvest itself (its batch loop over the time of its own forwards, minus 1: the very same forwards) and in CPU time
/// per token (all threads). Long context (bound: context 512 keeps at least 60% of the short context's tokens/s): long
/// samples (about 450 tokens, generated) at harvest's default context of 512 cost attention; at the short context the
/// same samples are truncated.
/// </summary>
public sealed class HarvestBench : IBenchCommand
{
    const double Bound = 0.15;
    const double LongContextBound = 0.60;

    public Command Build()
    {
        var baseDir = new Option<string>("--base") { Description = "Base model folder", Required = true };
        var ft = new Option<string>("--finetuned") { Description = "Fine-tuned model folder", Required = true };
        var data = new Option<string[]>("--data") { Description = "Data specs as for harvest (default: generated text)", AllowMultipleArgumentsPerToken = true };
        var layers = new Option<int[]>("--layers") { Description = "Layers to store (default: the middle layer)", AllowMultipleArgumentsPerToken = true };
        var tokens = new Option<long>("--tokens") { Description = "Tokens per run", DefaultValueFactory = _ => 20_000 };
        var batch = new Option<int>("--batch") { Description = "Samples per batch", DefaultValueFactory = _ => 16 };
        var context = new Option<int>("--context") { Description = "Context length (harvest's default)", DefaultValueFactory = _ => 512 };
        var fill = new Option<bool>("--fill-context") { Description = "Generated samples longer than --context, so every batch is --batch × --context tokens (e.g. 32 × 1024 on a device); default: samples of about 450 tokens" };
        var vsContext = new Option<int>("--vs-context") { Description = "Also harvest at this shorter context in each round and compare tokens/s (0 = off)", DefaultValueFactory = _ => 128 };
        var dtype = new Option<string>("--dtype") { Description = "Stored dtype", DefaultValueFactory = _ => "bf16" };
        var repeat = new Option<int>("--repeat") { Description = "Rounds (forward, harvest, short-context harvest); figures are medians of per-round ratios", DefaultValueFactory = _ => 5 };
        var json = BenchOptions.Json();
        var device = new DeviceOptions();
        var cmd = new Command("harvest", "Harvest tokens/s against the pure forward tokens/s of the same models on the same device (store overhead bound 15%), and context 512 against 128 (bound 60%)");
        foreach (var o in new Option[] { baseDir, ft, data, layers, tokens, batch, context, fill, vsContext, dtype, repeat, json }) cmd.Options.Add(o);
        device.AddTo(cmd);
        cmd.SetAction(r =>
        {
            device.Resolve(r);   // a bad --device fails before any work
            using var run = device.Open(r);
            return Run(r.GetValue(baseDir)!, r.GetValue(ft)!, r.GetValue(data), r.GetValue(layers), r.GetValue(tokens), r.GetValue(batch),
                r.GetValue(context), r.GetValue(vsContext), r.GetValue(dtype)!, r.GetValue(repeat), r.GetValue(json), run.Loader, r.GetValue(fill));
        });
        return cmd;
    }

    /// <summary>One timed run: tokens/s (wall), CPU seconds per token (all threads) and, for a harvest, its batch loop
    /// over its own forwards − 1.</summary>
    readonly record struct RunFigures(double TokensPerSecond, double CpuPerToken, double InRunOverhead);

    /// <summary>The forward a harvest runs, nothing kept: a device model runs it through its capture path with nothing
    /// to capture (so no residual or logits come back to the host), the CPU forward as is.</summary>
    static void PureForward(IForwardModel model, TokenBatch tb, int maxLayer)
    {
        if (model is IActivationCapture capture) capture.Capture(tb, [], maxLayer, (_, _) => throw new InvalidOperationException("nothing to capture"));
        else model.Forward(tb, null, maxLayer);
    }

    static double Median(IEnumerable<double> xs)
    {
        var a = xs.Where(x => !double.IsNaN(x)).Order().ToArray();
        if (a.Length == 0) return double.NaN;
        return a.Length % 2 == 1 ? a[a.Length / 2] : (a[a.Length / 2 - 1] + a[a.Length / 2]) / 2;
    }

    static int Run(string baseDir, string ftDir, string[]? dataSpecs, int[]? layerArg, long tokens, int batch, int context, int vsContext, string dtype, int repeat, bool json, ForwardModelLoader loader, bool fillContext = false)
    {
        if (tokens < 1 || batch < 1 || context < 1 || repeat < 1) throw new ArgumentException("--tokens, --batch, --context and --repeat must be positive");
        if (vsContext < 0 || vsContext >= context) throw new ArgumentException($"--vs-context must be 0 (off) or below --context {context}");
        var tmp = Directory.CreateTempSubdirectory("finetrace-bench-harvest-").FullName;
        try
        {
            var data = dataSpecs is { Length: > 0 } ? dataSpecs.Select(DataSourceSpec.Parse).ToList() : [DataSourceSpec.Parse(GenerateText(tmp, tokens, fillContext ? context : 0, vsContext > 0 ? vsContext : context))];
            int nLayers = ModelConfig.Load(baseDir).Layers;
            int[] layers = layerArg is { Length: > 0 } ? layerArg : [nLayers / 2];
            int maxLayer = layers.Max();

            var forwards = new List<RunFigures>(); var harvests = new List<RunFigures>(); var shorts = new List<RunFigures>();
            long fwdTokens = 0, hvTokens = 0, shortTokens = 0, samples = 0;
            string loadBefore = BenchSupport.LoadAverage();
            using (var baseModel = loader.Load(baseDir, null))
            using (var ftModel = loader.Load(ftDir, null))
            {
                var encoder = ModelSampleEncoder.FromFolder(File.Exists(Path.Combine(ftDir, "tokenizer.json")) ? ftDir : baseDir);
                RunFigures Forward()
                {
                    // Pure forward: the harvest's batches, tokenized the same way, both models to the last layer, nothing kept.
                    var sw = Stopwatch.StartNew();
                    var cpu0 = Process.GetCurrentProcess().TotalProcessorTime;
                    long n = 0;
                    var rows = new List<int[]>(batch);
                    // The harvest's batching exactly: whole batches of `batch` samples until the target is reached
                    // (the harvest stores only up to the target, but computes the whole last batch).
                    foreach (var s in new SampleStream(data, encoder, context).Read())
                    {
                        rows.Add(s.Ids);
                        if (rows.Count < batch) continue;
                        var tb = TokenBatch.RightPadded(rows);
                        PureForward(baseModel, tb, maxLayer);
                        PureForward(ftModel, tb, maxLayer);
                        foreach (var r in rows) if (n < tokens) n += r.Length;   // stored: whole samples up to the target
                        rows.Clear();
                        if (n >= tokens) break;
                    }
                    if (rows.Count > 0 && n < tokens)
                    {
                        var tb = TokenBatch.RightPadded(rows);
                        PureForward(baseModel, tb, maxLayer);
                        PureForward(ftModel, tb, maxLayer);
                        foreach (var r in rows) n += r.Length;
                    }
                    fwdTokens = n;
                    return new(n / sw.Elapsed.TotalSeconds, (Process.GetCurrentProcess().TotalProcessorTime - cpu0).TotalSeconds / n, double.NaN);
                }
                RunFigures HarvestAt(int ctx, string store)
                {
                    var res = Harvester.Run(new HarvestOptions
                    {
                        BaseModel = baseDir, FineTunedModel = ftDir, Data = data, Layers = layers, Tokens = tokens, Out = store,
                        ContextLength = ctx, BatchSize = batch, Dtype = dtype, Loader = loader,
                    }, baseModel, ftModel);
                    Directory.Delete(store, recursive: true);
                    if (ctx == context) { hvTokens = res.Tokens; samples = res.Samples; } else shortTokens = res.Tokens;
                    // Same run, same forwards: what the harvest spends beyond its own two forwards.
                    return new(res.Tokens / res.LoopSeconds, res.LoopCpuSeconds / res.Tokens, res.LoopSeconds / res.ForwardSeconds - 1);
                }
                // Untimed warm-up (JIT, weight pages, buffers at both contexts), then the rounds.
                Forward();
                HarvestAt(context, Path.Combine(tmp, "warm"));
                if (vsContext > 0) HarvestAt(vsContext, Path.Combine(tmp, "warm-short"));
                for (int round = 0; round < repeat; round++)
                {
                    RunFigures f, h, sh = new(double.NaN, double.NaN, double.NaN);
                    if (round % 2 == 0)
                    {
                        f = Forward(); h = HarvestAt(context, Path.Combine(tmp, $"store{round}"));
                        if (vsContext > 0) sh = HarvestAt(vsContext, Path.Combine(tmp, $"short{round}"));
                    }
                    else
                    {
                        if (vsContext > 0) sh = HarvestAt(vsContext, Path.Combine(tmp, $"short{round}"));
                        h = HarvestAt(context, Path.Combine(tmp, $"store{round}")); f = Forward();
                    }
                    forwards.Add(f); harvests.Add(h); shorts.Add(sh);
                }
            }
            string loadAfter = BenchSupport.LoadAverage();
            var rounds = Enumerable.Range(0, repeat).ToList();
            double overhead = Median(rounds.Select(r => forwards[r].TokensPerSecond / harvests[r].TokensPerSecond - 1));
            double inRun = Median(harvests.Select(h => h.InRunOverhead));
            // CPU time per token, all threads: robust on a shared machine, and conservative (storing overlaps the
            // forwards in wall time but is fully counted here).
            double cpuOverhead = Median(rounds.Select(r => harvests[r].CpuPerToken / forwards[r].CpuPerToken - 1));
            double longVsShort = vsContext == 0 ? double.NaN : Median(rounds.Select(r => harvests[r].TokensPerSecond / shorts[r].TokensPerSecond));
            double cpuLongVsShort = vsContext == 0 ? double.NaN : Median(rounds.Select(r => shorts[r].CpuPerToken / harvests[r].CpuPerToken));
            double fwdRate = Median(forwards.Select(f => f.TokensPerSecond)), hvRate = Median(harvests.Select(h => h.TokensPerSecond));
            double shortRate = Median(shorts.Select(h => h.TokensPerSecond));
            double cpuForward = Median(forwards.Select(f => f.CpuPerToken)), cpuHarvest = Median(harvests.Select(h => h.CpuPerToken));
            if (json)
            {
                // JSON has no NaN: a figure that was not measured (no short context) is null.
                static object? J(double x) => double.IsNaN(x) ? null : x;
                BenchSupport.PrintJson(new Dictionary<string, object?>
                {
                    ["device"] = loader.Device, ["precision"] = loader.Precision, ["hardware"] = loader.Hardware ?? "cpu",
                    ["harvest_tokens_per_s"] = hvRate, ["forward_tokens_per_s"] = fwdRate, ["overhead"] = overhead, ["overhead_in_run"] = inRun,
                    ["cpu_us_per_token_harvest"] = cpuHarvest * 1e6, ["cpu_us_per_token_forward"] = cpuForward * 1e6, ["cpu_overhead"] = cpuOverhead, ["bound"] = Bound,
                    ["context"] = context, ["batch"] = batch, ["fill_context"] = fillContext, ["tokens_per_sample"] = hvTokens / (double)Math.Max(1, samples), ["rounds"] = repeat,
                    ["short_context"] = vsContext, ["short_context_harvest_tokens_per_s"] = J(shortRate),
                    ["long_vs_short_context"] = J(longVsShort), ["cpu_long_vs_short_context"] = J(cpuLongVsShort), ["long_context_bound"] = LongContextBound,
                    ["overhead_per_round"] = rounds.Select(r => forwards[r].TokensPerSecond / harvests[r].TokensPerSecond - 1).ToArray(),
                    ["long_vs_short_context_per_round"] = rounds.Select(r => J(harvests[r].TokensPerSecond / shorts[r].TokensPerSecond)).ToArray(),
                    ["load_average_before"] = loadBefore, ["load_average_after"] = loadAfter,
                });
                return 0;
            }
            string Ok(double x, bool good) => $"{x:P1} {(good ? "[green]ok[/]" : "[red]out of bound[/]")}";
            string PerRound(Func<int, double> f) => string.Join(" ", rounds.Select(r => $"{f(r):P0}"));
            var t = new Table().AddColumns("figure", "value");
            t.AddRow("models", Markup.Escape($"{baseDir} vs {ftDir}, layers {string.Join(",", layers)}, {dtype}"));
            t.AddRow("device (forwards of both sides)", Markup.Escape(loader.Describe()));
            t.AddRow("tokens per run", $"{fwdTokens:N0} forward / {hvTokens:N0} harvest ({hvTokens / (double)Math.Max(1, samples):F0} per sample), batch {batch}, context {context}");
            t.AddRow("rounds (figures: medians of per-round ratios)", $"{repeat}; load average {loadBefore} before, {loadAfter} after");
            t.AddRow("pure forward (both models) tokens/s", $"{fwdRate:N0}");
            t.AddRow("harvest tokens/s", $"{hvRate:N0}");
            t.AddRow($"store overhead: forward tokens/s / harvest tokens/s − 1 (bound ≤ {Bound:P0})", Ok(overhead, overhead <= Bound));
            t.AddRow("  per round", PerRound(r => forwards[r].TokensPerSecond / harvests[r].TokensPerSecond - 1));
            t.AddRow("store overhead inside the harvest: its batch loop / its own forwards − 1", Ok(inRun, inRun <= Bound));
            t.AddRow("CPU µs/token forward / harvest (all threads)", $"{cpuForward * 1e6:F1} / {cpuHarvest * 1e6:F1}");
            t.AddRow($"store overhead in CPU time per token (bound ≤ {Bound:P0})", Ok(cpuOverhead, cpuOverhead <= Bound));
            if (vsContext > 0)
            {
                t.AddRow($"harvest tokens/s at context {vsContext} ({shortTokens:N0} tokens)", $"{shortRate:N0}");
                t.AddRow($"context {context} / context {vsContext} harvest tokens/s (bound ≥ {LongContextBound:P0})", Ok(longVsShort, longVsShort >= LongContextBound));
                t.AddRow("  per round", PerRound(r => harvests[r].TokensPerSecond / shorts[r].TokensPerSecond));
                t.AddRow("the same in CPU time per token", Ok(cpuLongVsShort, cpuLongVsShort >= LongContextBound));
            }
            AnsiConsole.Write(t);
            return 0;
        }
        finally
        {
            try { Directory.Delete(tmp, recursive: true); } catch (IOException) { }
        }
    }

    /// <summary>Story-like samples of about 450 tokens each (as long as the stories harvests meet, so that a context of
    /// 512 costs what it costs in a real harvest), blank-line separated: <paramref name="tokens"/> / 100 of them, enough for
    /// the target even at a short context of 100 tokens per sample.</summary>
    /// <param name="fillContext">&gt; 0: samples of enough episodes to pass that many tokens (an episode is about 55
    /// tokens with the tiny models' tokenizers and about 40 with a large vocabulary's; twice that is written), and enough
    /// of them for the target even when every sample is cut to <paramref name="shortestContext"/>.</param>
    static string GenerateText(string dir, long tokens, int fillContext = 0, int shortestContext = 0)
    {
        string[] names = ["Lily", "Tom", "Sue", "Ben", "Mia", "Max"], things = ["ball", "cake", "dog", "kite", "tree"], places = ["park", "forest", "lake", "garden"];
        var rng = new Random(3);
        string path = Path.Combine(dir, "bench.txt");
        using var w = new StreamWriter(path);
        int episodes = fillContext > 0 ? Math.Max(8, fillContext / 20 + 2) : 8;
        for (long i = 0; i < (fillContext > 0 ? tokens / Math.Max(1, shortestContext) + 64 : tokens / 100 + 4); i++)
        {
            // ~55 tokens per episode, 8 episodes per sample
            for (int e = 0; e < episodes; e++)
            {
                string n = names[rng.Next(names.Length)], t = things[rng.Next(things.Length)], p = places[rng.Next(places.Length)];
                w.Write($"{(e == 0 ? "Once upon a time" : "The next day")}, {n} went to the {p} with a {t}. {n} played with the {t} all day and was very happy. ");
                w.Write($"Then {n} saw a big {things[rng.Next(things.Length)]} near the {places[rng.Next(places.Length)]}. ");
            }
            w.Write("\n\n");
        }
        return path;
    }
}

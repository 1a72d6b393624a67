using System.CommandLine;
using System.Diagnostics;
using System.Text.Json.Nodes;
using Finetrace.Bench;
using Finetrace.Diffing;
using Finetrace.Models;
using Finetrace.Pipeline;

namespace Finetrace.Cli.Commands;

/// <summary><c>finetrace diff</c>: the whole pipeline from two model folders to RESULTS/summary.json (the library's
/// <see cref="DiffPipeline"/>; this command parses, shows progress on stderr and prints the findings).</summary>
public sealed class DiffCommand : ICliCommand
{
    public Command Build()
    {
        var baseDir = new Option<string?>("--base") { Description = "Base model folder (HF layout)" };
        var ft = new Option<string?>("--finetuned") { Description = "Fine-tuned model folder (or the base folder again with --adapter)" };
        var adapter = new Option<string?>("--adapter") { Description = "LoRA adapter of the fine-tune (merged at load)" };
        var config = new Option<string?>("--config") { Description = "YAML config (finetrace diff --print-config writes every option with its default)" };
        var outDir = new Option<string?>("--out") { Description = "Results folder (re-run the same command to resume; finished stages are skipped)" };
        var print = new Option<bool>("--print-config") { Description = "Print the config (defaults resolved for --base when given) and exit" };
        var plan = new Option<bool>("--plan") { Description = "Print the stages with estimated time, memory and disk on this machine and exit" };
        var json = new Option<bool>("--json") { Description = "Print summary.json's findings and the stages run as one JSON object" };
        var stopAfter = new Option<string?>("--stop-after") { Description = "Run the stages up to this one and stop: data (the self-made text only) or harvest" };
        var harvestPart = new Option<string?>("--harvest-part") { Description = "Harvest only part i/n of a split harvest into RESULTS/store-parts (parts run anywhere, at the same time; a later plain run merges them)" };
        var emit = new Option<string?>("--emit") { Description = "Write a Slurm job-array script (slurm) or Kubernetes Job manifests (k8s) that run this diff split into --parts harvest parts, then the later stages; nothing runs here" };
        var parts = new Option<int>("--parts") { Description = "Harvest parts of the emitted run (with --emit)", DefaultValueFactory = _ => 4 };
        var emitFile = new Option<string?>("--emit-file") { Description = "File the emitted script or manifests go to (with --emit; default: standard output)" };
        var scheduler = new SchedulerCli();
        var device = new DeviceOptions();
        var cmd = new Command("diff", "The main job: harvest → dictionary → latent table → Latent Scaling → examples → causal → ADL → KL → diff mining → weight diff → " +
            "RESULTS/summary.json with findings checked against controls. Resumable; changing an option reruns only the stages that depend on it");
        foreach (var o in new Option[] { baseDir, ft, adapter, config, outDir, print, plan, json, stopAfter, harvestPart, emit, parts, emitFile }.Concat(scheduler.All)) cmd.Options.Add(o);
        device.AddTo(cmd);
        cmd.SetAction(r =>
        {
            var cfg = r.GetValue(config) is { } path
                ? File.Exists(path) ? DiffConfig.Load(path) : throw new FileNotFoundException($"--config {path}: no such file")
                : new DiffConfig();
            string? b = r.GetValue(baseDir), f = r.GetValue(ft);
            if (r.GetValue(print))
            {
                if (b is not null) cfg.Resolve(ModelConfig.Load(b));
                Console.Write(cfg.ToYaml());
                return 0;
            }
            if (b is null || f is null) throw new ArgumentException("give --base and --finetuned (and --out): finetrace diff --base DIR --finetuned DIR --out RESULTS");
            var selection = device.Resolve(r);   // a bad --device / FINETRACE_DEVICE fails before any work
            if (r.GetValue(emit) is { } kind)
            {
                string results = r.GetValue(outDir) ?? throw new ArgumentException("give --out RESULTS (the results folder the emitted jobs write; relative paths are read from --workdir)");
                if (r.GetValue(parts) < 1) throw new ArgumentException($"--parts {r.GetValue(parts)}: give at least 1");
                // the same command on every node: paths as given (relative ones from the work folder)
                var argv = new List<string> { "finetrace", "diff", "--base", b, "--finetuned", f };
                if (r.GetValue(adapter) is { } a) argv.AddRange(["--adapter", a]);
                if (r.GetValue(config) is { } c) argv.AddRange(["--config", c]);
                argv.AddRange(["--out", results]);
                var run = scheduler.Run(r, r.GetValue(parts), Pipeline.Emit.Shell.Join([.. argv, "--stop-after", "data"]),
                    Pipeline.Emit.Shell.Join([.. argv, "--harvest-part", Pipeline.Emit.ScheduledRun.PartPlaceholder, .. DeviceArgs(selection)]), [Pipeline.Emit.Shell.Join(argv)]);
                return SchedulerCli.Write(kind, run, r.GetValue(emitFile));
            }
            cfg.Resolve(ModelConfig.Load(b));
            var estimate = DiffEstimate.For(new ModelPairSpec(b, f, r.GetValue(adapter)), cfg, r.GetValue(outDir) ?? ".");
            if (r.GetValue(plan))
            {
                Console.Write(estimate.ToText());
                return estimate.Fits ? 0 : 2;
            }
            if (!estimate.Fits) throw new InvalidOperationException("the plan does not fit this machine:\n" + string.Join("\n", estimate.Problems) + "\n(finetrace diff --plan shows the estimates)");
            string o = r.GetValue(outDir) ?? throw new ArgumentException("give --out RESULTS (the results folder)");
            using var deviceRun = device.Open(r);
            var diffPlan = new DiffPlan(new ModelPairSpec(b, f, r.GetValue(adapter)), cfg, o) { HarvestLoader = deviceRun.Loader };
            if (r.GetValue(harvestPart) is { } hp)
                return RunPartial(() => DiffPipeline.RunHarvest(diffPlan, Activations.Harvest.HarvestPart.Parse(hp), new StageProgressLine()));
            return r.GetValue(stopAfter) switch
            {
                null => Run(diffPlan, r.GetValue(json)),
                "data" => RunPartial(() => DiffPipeline.RunData(diffPlan, new StageProgressLine())),
                "harvest" => RunPartial(() => DiffPipeline.RunHarvest(diffPlan, null, new StageProgressLine())),
                var s => throw new ArgumentException($"--stop-after {s}: expected data or harvest"),
            };
        });
        return cmd;
    }

    /// <summary>The device flags the emitted harvest parts run with (none for the CPU: the nodes' default).</summary>
    static string[] DeviceArgs(Cuda.DeviceSelection s) => s.IsCpu ? [] : ["--device", s.Device, "--precision", s.PrecisionName];

    internal static int Run(DiffPlan plan, bool json)
    {
        using var cts = new CancellationTokenSource();
        ConsoleCancelEventHandler onCancel = (_, e) => { e.Cancel = true; cts.Cancel(); };
        Console.CancelKeyPress += onCancel;
        DiffRunResult res;
        try { res = DiffPipeline.Run(plan, new StageProgressLine(), cts.Token); }
        catch (OperationCanceledException)
        {
            Console.Error.WriteLine("\ninterrupted: finished stages are kept in the results folder; run the same command again to continue");
            return 130;
        }
        finally { Console.CancelKeyPress -= onCancel; }
        if (json)
        {
            Console.WriteLine(new JsonObject
            {
                ["summary"] = res.SummaryPath,
                ["stages"] = new JsonArray(res.Stages.Select(s => (JsonNode)new JsonObject { ["stage"] = s.Stage, ["ran"] = s.Ran }).ToArray()),
                ["findings"] = res.Summary["findings"]!.DeepClone(),
            }.ToJsonString(ResultsJson.Indented));
            return 0;
        }
        PrintFindings(res);
        return 0;
    }

    /// <summary>Runs the first stages only (a scheduler step) and says which ran.</summary>
    static int RunPartial(Func<IReadOnlyList<StageRun>> run)
    {
        var stages = run();
        Console.WriteLine(string.Join(", ", stages.Select(s => $"{s.Stage}: {(s.Ran ? "done" : "current, skipped")}")));
        return 0;
    }

    internal static void PrintFindings(DiffRunResult res, int max = 8)
    {
        var findings = res.Summary["findings"] as JsonArray ?? [];
        Console.WriteLine($"summary: {res.SummaryPath}");
        Console.WriteLine(findings.Count == 0 ? "no finding beat its control" : "findings:");
        foreach (var f in findings.Take(max)) Console.WriteLine($"  • {f!["claim"]}");
    }
}

/// <summary>Stage progress on stderr: one line per stage event; inside a stage a rewritten line on a terminal (a line
/// every few seconds when redirected) with the rate and the time left.</summary>
sealed class StageProgressLine : IProgress<PipelineProgress>
{
    readonly bool _tty = !Console.IsErrorRedirected;
    readonly Stopwatch _stage = new();
    double _last = -1;
    bool _open;

    public void Report(PipelineProgress p)
    {
        switch (p.Kind)
        {
            case PipelineEventKind.Started: Close(); _stage.Restart(); _last = -1; Console.Error.WriteLine($"[{p.Stage}] {p.Message}"); break;
            case PipelineEventKind.Skipped: Close(); Console.Error.WriteLine($"[{p.Stage}] {p.Message}"); break;
            case PipelineEventKind.Finished: Close(); Console.Error.WriteLine($"[{p.Stage}] {p.Message} in {_stage.Elapsed.TotalSeconds:F1} s"); break;
            case PipelineEventKind.Note: Close(); Console.Error.WriteLine($"[{p.Stage}] {p.Message}"); break;
            case PipelineEventKind.Step:
            {
                double t = _stage.Elapsed.TotalSeconds;
                bool end = p.Total > 0 && p.Done >= p.Total;
                if (!end && t - _last < (_tty ? 0.25 : 5)) return;
                _last = t;
                double rate = t > 0 ? p.Done / t : 0;
                string eta = rate > 0 && p.Total > p.Done ? $", {TimeSpan.FromSeconds((p.Total - p.Done) / rate):hh\\:mm\\:ss} left" : "";
                string line = $"  {p.Message}: {p.Done:N0}/{p.Total:N0} {p.Unit} ({rate:N0}/s{eta})";
                if (_tty) { Console.Error.Write("\r" + (line.Length > 110 ? line[..110] : line.PadRight(110))); _open = true; }
                else Console.Error.WriteLine(line);
                break;
            }
        }
    }

    void Close()
    {
        if (_open) Console.Error.WriteLine();
        _open = false;
    }
}

using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using Finetrace.Diffing.Adl;
using Finetrace.Text.Datasets;

namespace Finetrace.Cli.Commands.Analyze;

/// <summary><c>finetrace analyze adl</c>: the Activation Difference Lens (mean differences over the first positions of
/// unrelated text, read through logit lens, Patchscope and steering) into RESULTS/adl.json and RESULTS/adl/.</summary>
public sealed class AdlCommand : IAnalyzeCommand
{
    public Command Build()
    {
        var baseDir = new Option<string>("--base") { Description = "Base model folder (HF layout)", Required = true };
        var baseAdapter = new Option<string?>("--base-adapter") { Description = "LoRA adapter merged into the base model" };
        var ft = new Option<string>("--finetuned") { Description = "Fine-tuned model folder (or the base folder again with --adapter)", Required = true };
        var adapter = new Option<string?>("--adapter") { Description = "LoRA adapter merged into the fine-tuned model" };
        var data = new Option<string[]>("--data")
        {
            Description = "Unrelated text (and/or chat data for the assistant start), as harvest --data: [text:|jsonl:|chat:]PATH[,name=N][,field=F][,max-samples=N]…; repeat to mix. " +
                          "Default: the built-in general text (self-written web-style documents, generated deterministically; no download)",
            AllowMultipleArgumentsPerToken = true,
        };
        var layers = new Option<string>("--layers") { Description = "Layers, e.g. 2 or 6,13; a fraction r means floor(r·(layers−1))", DefaultValueFactory = _ => "0.5" };
        var positions = new Option<string>("--positions") { Description = "Text positions from the sample start (BOS = 0): list or range, e.g. 0..4", DefaultValueFactory = _ => "0..4" };
        var chatPositions = new Option<string>("--chat-positions") { Description = "Chat positions relative to the first assistant token, e.g. -3..4", DefaultValueFactory = _ => "-3..4" };
        var samples = new Option<int>("--samples") { Description = "Samples per context that enter the means", DefaultValueFactory = _ => 10_000 };
        var batch = new Option<int>("--batch") { Description = "Samples per forward batch", DefaultValueFactory = _ => 32 };
        var noPatchscope = new Option<bool>("--no-patchscope") { Description = "Skip Patchscope" };
        var steer = new Option<string>("--steer") { Description = "Models to steer with δ: finetuned (the reference's default), base, both or none", DefaultValueFactory = _ => "finetuned" };
        var strengths = new Option<string>("--strengths") { Description = "Steering strengths in units of the model's typical activation norm", DefaultValueFactory = _ => "0.25,0.5,1,2,4" };
        var steerPositions = new Option<string?>("--steer-positions") { Description = "Positions to steer with (default: all)" };
        var steerSamples = new Option<int>("--steer-samples") { Description = "Samples per prompt and strength", DefaultValueFactory = _ => 2 };
        var steerTokens = new Option<int>("--steer-tokens") { Description = "New tokens per steering sample", DefaultValueFactory = _ => 48 };
        var temperature = new Option<float>("--temperature") { Description = "Steering sampling temperature", DefaultValueFactory = _ => 1f };
        var lossFactor = new Option<double>("--loss-factor") { Description = "Strength rule: the largest strength whose samples' per-token loss under the unsteered base model is ≤ this × its loss on its own unsteered samples", DefaultValueFactory = _ => 2 };
        var prompts = new Option<string[]>("--steer-prompt") { Description = "Steering prompt (repeat; default: the reference's three neutral prompts)", AllowMultipleArgumentsPerToken = false };
        var seed = new Option<int>("--seed") { Description = "Sampling seed", DefaultValueFactory = _ => 0 };
        var ablation = new Option<int>("--ablation") { Description = "Projection ablation of δ's direction with this many random Gaussian and random-diff control directions each (slower; the reference uses 64; 0 = off)", DefaultValueFactory = _ => 0 };
        var ablationSamples = new Option<int>("--ablation-samples") { Description = "Samples of the data the projection ablation evaluates", DefaultValueFactory = _ => 64 };
        var outDir = new Option<string>("--out") { Description = "Results folder", Required = true };
        var json = new Option<bool>("--json") { Description = "Print one JSON object (the adl.json entries without sweeps and samples) instead of the summary" };
        var cmd = new Command("adl", "Activation Difference Lens: mean of h_ft − h_base over the first positions of unrelated text per layer, read by logit lens, " +
                                     "Patchscope (scale chosen by a stated rule) and steering (strength chosen by a stated rule); writes RESULTS/adl.json and RESULTS/adl/");
        foreach (var o in new Option[] { baseDir, baseAdapter, ft, adapter, data, layers, positions, chatPositions, samples, batch, noPatchscope, steer, strengths,
                     steerPositions, steerSamples, steerTokens, temperature, lossFactor, prompts, seed, ablation, ablationSamples, outDir, json })
            cmd.Options.Add(o);
        cmd.SetAction(r =>
        {
            string b = r.GetValue(baseDir)!;
            var o = new AdlOptions
            {
                BaseModel = b, BaseAdapter = r.GetValue(baseAdapter), FineTunedModel = r.GetValue(ft)!, Adapter = r.GetValue(adapter),
                Data = (r.GetValue(data) ?? []).Select(DataSourceSpec.Parse).ToList(),
                Layers = HarvestCommand.ParseLayers(r.GetValue(layers)!, b),
                Positions = ParseInts(r.GetValue(positions)!, "--positions"),
                ChatPositions = ParseInts(r.GetValue(chatPositions)!, "--chat-positions"),
                MaxSamples = r.GetValue(samples), BatchSize = r.GetValue(batch),
                Patchscope = !r.GetValue(noPatchscope),
                Steer = r.GetValue(steer) switch
                {
                    "finetuned" => SteerModels.FineTuned, "base" => SteerModels.Base, "both" => SteerModels.FineTuned | SteerModels.Base, "none" => SteerModels.None,
                    var x => throw new ArgumentException($"--steer: '{x}' is not finetuned, base, both or none"),
                },
                SteeringStrengths = ParseDoubles(r.GetValue(strengths)!, "--strengths"),
                SteeringPositions = r.GetValue(steerPositions) is { } sp ? ParseInts(sp, "--steer-positions") : null,
                SteeringSamples = r.GetValue(steerSamples), SteeringNewTokens = r.GetValue(steerTokens), SteeringTemperature = r.GetValue(temperature),
                SteeringLossFactor = r.GetValue(lossFactor), Seed = r.GetValue(seed),
                AblationControls = r.GetValue(ablation), AblationSamples = r.GetValue(ablationSamples),
                SteeringPrompts = r.GetValue(prompts) is { Length: > 0 } ps ? ps : AdlOptions.DefaultSteeringPrompts,
            };
            return Run(o, r.GetValue(outDir)!, r.GetValue(json));
        });
        return cmd;
    }

    /// <summary>"0..4", "-3..4", "0,2,5" or a mix ("0..2,7").</summary>
    internal static int[] ParseInts(string text, string flag)
    {
        var result = new List<int>();
        foreach (var part in text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            int dots = part.IndexOf("..", StringComparison.Ordinal);
            if (dots > 0 && int.TryParse(part[..dots], NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out int a)
                && int.TryParse(part[(dots + 2)..], NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out int z) && a <= z)
                for (int i = a; i <= z; i++) result.Add(i);
            else if (int.TryParse(part, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out int v)) result.Add(v);
            else throw new ArgumentException($"{flag}: '{part}' is neither an integer nor a range a..b");
        }
        if (result.Count == 0) throw new ArgumentException($"{flag}: give at least one position");
        return result.Distinct().ToArray();
    }

    static double[] ParseDoubles(string text, string flag) =>
        text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
            .Select(s => double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out var v) && v >= 0 ? v : throw new ArgumentException($"{flag}: '{s}' is not a number ≥ 0"))
            .ToArray();

    static int Run(AdlOptions o, string outDir, bool json)
    {
        using var cts = new CancellationTokenSource();
        ConsoleCancelEventHandler onCancel = (_, e) => { e.Cancel = true; cts.Cancel(); };
        Console.CancelKeyPress += onCancel;
        AdlResult result;
        try { result = ActivationDifferenceLens.Run(o, outDir, new StderrProgress(), cts.Token); }
        catch (OperationCanceledException)
        {
            Console.Error.WriteLine("interrupted: nothing was written (the ADL takes about a minute); run the same command again");
            return 130;
        }
        finally { Console.CancelKeyPress -= onCancel; }
        string adlJson = Path.Combine(Path.GetFullPath(outDir), AdlOutput.JsonFile);
        if (result.UpToDate)
        {
            if (json) Console.WriteLine(File.ReadAllText(adlJson).ReplaceLineEndings(" "));
            else Console.WriteLine($"adl is current (same models, data and settings; data: {result.Data}): {adlJson} unchanged");
            return 0;
        }
        if (json)
        {
            var arr = AdlOutput.ToJson(result);
            foreach (var e in arr)
            {
                if (e!["patchscope"] is System.Text.Json.Nodes.JsonObject p) p.Remove("sweep");
                e.AsObject().Remove("logit_lens");
                foreach (var s in e["steering"]!.AsArray()) s!.AsObject().Remove("sweep");
            }
            Console.WriteLine(arr.ToJsonString());
            return 0;
        }
        Console.WriteLine($"data: {result.Data}");
        Console.WriteLine($"ADL: {result.TextSamples:N0} text and {result.ChatSamples:N0} chat samples; means {result.MeanSeconds:F1} s, readers {result.ReaderSeconds:F1} s" +
                          (result.Skipped.Count > 0 ? $"; skipped: {string.Join(", ", result.Skipped.Select(kv => $"{kv.Value:N0} {kv.Key}"))}" : ""));
        foreach (var n in result.Norms)
            Console.WriteLine($"layer {n.Layer}: typical ‖h‖ base {n.Base:0.###}, fine-tuned {n.FineTuned:0.###}");
        foreach (var e in result.Entries)
        {
            Console.WriteLine($"layer {e.Layer} {e.Context} position {e.Position} (most often {Show(e.Token)}), ‖δ‖ {e.DeltaNorm:0.###}");
            Console.WriteLine($"  logit lens +δ: {string.Join(" ", e.FineTunedLens.Top.Take(10).Select(t => Show(t.Token)))}");
            Console.WriteLine($"  logit lens −δ: {string.Join(" ", e.FineTunedLens.Bottom.Take(10).Select(t => Show(t.Token)))}");
            if (e.Patchscope is { } ps) Console.WriteLine($"  patchscope ×{ps.Scale}: {string.Join(" ", ps.Tokens.Take(10).Select(t => Show(t.Token)))}");
            if (e.Ablation is { } ab)
                Console.WriteLine($"  projection ablation (NLL/token): fine-tuned {ab.FineTuned.Nll:0.###}, base {ab.Base.Nll:0.###}, zero-ablated {ab.ZeroAblation.Nll:0.###}, " +
                                  $"patched to base {ab.PatchToBase.Nll:0.###}, random directions {Range(ab.RandomDirections)}, random diffs {Range(ab.RandomDiffDirections)}");
            foreach (var s in e.Steering)
                Console.WriteLine($"  steer {s.Model} at {s.Strength}{(s.RuleMet ? "" : " (no strength met the rule)")}: {Show(Clip(s.Samples.FirstOrDefault()?.Text ?? ""))}");
        }
        Console.WriteLine($"written: {adlJson} and {Path.Combine(Path.GetFullPath(outDir), AdlOutput.TensorFolder)}/");
        return 0;
    }

    static string Range(IReadOnlyList<AblationMetrics> m) => m.Count == 0 ? "-" : $"{m.Min(x => x.Nll):0.###}–{m.Max(x => x.Nll):0.###}";

    static string Clip(string s) => s.Length <= 100 ? s : s[..100] + "…";
    static string Show(string token) => "'" + token.Replace("\n", "\\n") + "'";

    /// <summary>Progress lines on stderr at most every 2 s (and at the end of each phase), with rate and ETA.</summary>
    sealed class StderrProgress : IProgress<AdlProgress>
    {
        readonly Stopwatch _sw = Stopwatch.StartNew();
        string _phase = "";
        double _phaseStart, _last = -10;

        public void Report(AdlProgress p)
        {
            double now = _sw.Elapsed.TotalSeconds;
            if (p.Phase != _phase) { _phase = p.Phase; _phaseStart = now; _last = now; }
            bool end = p.Done >= p.Total;
            if (!end && now - _last < 2) return;
            _last = now;
            double rate = p.Done / Math.Max(now - _phaseStart, 1e-9);
            string unit = p.Phase == "means" ? "samples" : "vectors";
            string eta = end ? "done" : $"ETA {(p.Total - p.Done) / Math.Max(rate, 1e-9):F0} s";
            Console.Error.WriteLine($"adl {p.Phase}: {p.Done:N0}/{p.Total:N0} {unit} ({rate:N1}/s, {eta})");
        }
    }
}

using System.CommandLine;
using System.Globalization;
using Finetrace.Activations;
using Finetrace.Activations.Harvest;
using Finetrace.Bench;
using Finetrace.Models;
using Finetrace.Text.Datasets;
using Spectre.Console;

namespace Finetrace.Cli.Commands;

/// <summary><c>finetrace harvest</c>: paired residual activations of a base and a fine-tuned model into a store.</summary>
public sealed class HarvestCommand : ICliCommand
{
    public Command Build()
    {
        var baseDir = new Option<string>("--base") { Description = "Base model folder (HF layout)", Required = true };
        var baseAdapter = new Option<string?>("--base-adapter") { Description = "LoRA adapter merged into the base model" };
        var ft = new Option<string>("--finetuned") { Description = "Fine-tuned model folder (or the base folder again with --adapter)", Required = true };
        var adapter = new Option<string?>("--adapter") { Description = "LoRA adapter merged into the fine-tuned model" };
        var data = new Option<string[]>("--data")
        {
            Description = "Data source: [text:|jsonl:|chat:]PATH[,name=N][,weight=W][,field=F][,max-samples=N][,max-tokens=N][,split=blank|file]; repeat to mix",
            Required = true, AllowMultipleArgumentsPerToken = true,
        };
        var layers = new Option<string>("--layers") { Description = "Layers to store, e.g. 13 or 6,13; a fraction r means floor(r·(layers−1))", Required = true };
        var site = new Option<string>("--site")
        {
            Description = "Activation stored per layer (TransformerLens names): resid_post (default), resid_pre, resid_mid, attn_out, mlp_out " +
                          "(what the attention / MLP branch adds to the residual) or mlp_post (the MLP hidden activation after the nonlinearity, width = intermediate size); " +
                          "hook_mlp_out and blocks.{L}.hook_mlp_out are accepted too",
            DefaultValueFactory = _ => "resid_post",
        };
        var tokens = new Option<long>("--tokens") { Description = "Tokens to store", Required = true };
        var outDir = new Option<string>("--out") { Description = "Store folder (re-run the same command to resume)", Required = true };
        var context = new Option<int>("--context") { Description = "Context length: samples are truncated to it", DefaultValueFactory = _ => 512 };
        var batch = new Option<int>("--batch") { Description = "Samples per forward batch", DefaultValueFactory = _ => 16 };
        var dtype = new Option<string>("--dtype") { Description = "Stored dtype: bf16 or f32", DefaultValueFactory = _ => "bf16" };
        var dropBos = new Option<bool>("--drop-bos") { Description = "Do not store BOS tokens" };
        var skipFirst = new Option<int>("--skip-first") { Description = "Do not store the first n positions of each sample", DefaultValueFactory = _ => 0 };
        var outlier = new Option<double>("--outlier-factor") { Description = "Drop tokens whose norm exceeds this multiple of the sample's median norm (0 = keep all; 10 is typical)", DefaultValueFactory = _ => 0 };
        var shard = new Option<long>("--shard-tokens") { Description = "Tokens per shard (the resume granularity)", DefaultValueFactory = _ => 1 << 18 };
        var part = new Option<string?>("--part")
        {
            Description = "Store only part i of n (0-based, e.g. 0/4 … 3/4) of this harvest, to run the parts on several machines; " +
                          "join them with `finetrace store merge` (the result equals the unsharded store byte for byte)",
        };
        var device = new DeviceOptions();
        var cmd = new Command("harvest", "Run base and fine-tuned model on identical tokens and store their activations at one site per layer " +
                                         "(default the residual stream, blocks.{L}.hook_resid_post; --site for attention / MLP outputs) for dictionary training");
        foreach (var o in new Option[] { baseDir, baseAdapter, ft, adapter, data, layers, site, tokens, outDir, context, batch, dtype, dropBos, skipFirst, outlier, shard, part })
            cmd.Options.Add(o);
        device.AddTo(cmd);
        cmd.SetAction(r =>
        {
            string b = r.GetValue(baseDir)!, f = r.GetValue(ft)!;
            var selection = device.Resolve(r);   // a bad --device / FINETRACE_DEVICE fails before any work
            var opts = new HarvestOptions
            {
                BaseModel = b, BaseAdapter = r.GetValue(baseAdapter), FineTunedModel = f, Adapter = r.GetValue(adapter),
                Data = r.GetValue(data)!.Select(DataSourceSpec.Parse).ToList(),
                Layers = ParseLayers(r.GetValue(layers)!, b),
                Site = HookSites.Parse(r.GetValue(site)!),
                Tokens = r.GetValue(tokens), Out = r.GetValue(outDir)!, ContextLength = r.GetValue(context), BatchSize = r.GetValue(batch),
                Dtype = r.GetValue(dtype)!, DropBos = r.GetValue(dropBos), SkipFirst = r.GetValue(skipFirst), OutlierFactor = r.GetValue(outlier),
                ShardTokens = r.GetValue(shard),
                Part = r.GetValue(part) is { } p ? ParsePart(p) : null,
            };
            CheckContext(opts.ContextLength, b, f);
            using var run = device.Open(r);
            return Run(opts with { Loader = run.Loader });
        });
        return cmd;
    }

    static HarvestPart ParsePart(string text)
    {
        try { return HarvestPart.Parse(text); }
        catch (SettingException e) { throw new ArgumentException($"--part {text}: {e.Problem}"); }
    }

    /// <summary>"13", "6,13" or fractions ("0.5" → floor(0.5·(layers − 1)), as the toolkit resolves them).</summary>
    internal static int[] ParseLayers(string text, string modelDir)
    {
        var result = new List<int>();
        int? n = null;
        foreach (var part in text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            if (int.TryParse(part, NumberStyles.Integer, CultureInfo.InvariantCulture, out int l)) { result.Add(l); continue; }
            if (double.TryParse(part, NumberStyles.Float, CultureInfo.InvariantCulture, out double r) && r is >= 0 and <= 1)
            {
                n ??= ModelConfig.Load(modelDir).Layers;
                int resolved = (int)Math.Floor(r * (n.Value - 1));
                AnsiConsole.MarkupLine($"layer {part} of {n} layers → {resolved}");
                result.Add(resolved);
                continue;
            }
            throw new ArgumentException($"--layers: '{part}' is neither a layer index nor a fraction in [0, 1]");
        }
        if (result.Count == 0) throw new ArgumentException("--layers: give at least one layer");
        return result.Distinct().ToArray();
    }

    /// <summary>A context longer than a model's max_position_embeddings: refused for learned positions (GPT-2), which
    /// have no embedding past it; a warning for rotary ones, which run but were never trained there.</summary>
    internal static void CheckContext(int context, params string[] modelDirs)
    {
        foreach (var dir in modelDirs.Distinct())
        {
            var c = ModelConfig.Load(dir);
            if (c.MaxPositions <= 0 || context <= c.MaxPositions) continue;
            if (c.Arch == Architecture.Gpt2)
                throw new ArgumentException($"--context {context}: {dir} has {c.MaxPositions} positions (learned position embeddings); use --context {c.MaxPositions} or less");
            Console.Error.WriteLine($"finetrace: warning: --context {context} is longer than {dir}'s max_position_embeddings {c.MaxPositions}; " +
                                    $"positions past it are beyond what the model was trained on (--context {c.MaxPositions} stays within it)");
        }
    }

    static int Run(HarvestOptions o)
    {
        HarvestResult? result = null;
        if (!o.Loader.IsCpu) Console.Error.WriteLine($"harvest: forward on {o.Loader.Describe()}");
        bool done = TokenProgress.Run("harvest", o.Tokens, "the store is consistent (complete shards kept)", (task, cancel) =>
        {
            bool first = true;
            result = Harvester.Run(o, p =>
            {
                if (first && p.ResumedTokens > 0) { AnsiConsole.MarkupLine($"resuming after {p.ResumedTokens:N0} stored tokens"); first = false; }
                task.Description = $"harvest{(o.Part is { } pt ? $" part {pt}" : "")} {ActivationStoreWriter.Human(p.BytesWritten)}";
                task.MaxValue = p.Target;
                task.Value = Math.Min(p.Tokens, p.Target);
            }, cancel);
        });
        if (!done) return 130;
        var res = result!;
        AnsiConsole.MarkupLine($"stored {res.Tokens:N0} tokens from {res.Samples:N0} samples in {res.Seconds:F1} s on {Markup.Escape(res.Device)} " +
            $"({(res.Tokens - res.ResumedTokens) / Math.Max(res.LoopSeconds, 1e-9):N0} tokens/s over {res.LoopSeconds:F1} s of batches, {res.ForwardSeconds:F1} s of it in forwards){(res.DroppedTokens > 0 ? $"; {res.DroppedTokens:N0} tokens dropped (BOS / first-n / outliers)" : "")}");
        foreach (var (name, skipped, toks) in res.Sources)
            AnsiConsole.MarkupLine($"  {Markup.Escape(name)}: {toks:N0} tokens; skipped samples: {Markup.Escape(skipped.ToString())}");
        if (o.Part is { } prt)
            AnsiConsole.MarkupLine($"part {prt} of the harvest; once all {prt.Count} parts are complete, join them: finetrace store merge PART_STORES… --out STORE");
        else if (res.Tokens < o.Tokens)
        {
            // The data ran out before the token target: say so, and show how far the mixture drifted from the stated
            // proportions once the smaller sources were used up.
            double total = o.Data.Sum(d => d.Weight);
            AnsiConsole.MarkupLine($"[yellow]warning[/]: the data ran out after {res.Tokens:N0} of the requested {o.Tokens:N0} tokens; " +
                                   "add data or lower --tokens. Shares stored vs stated:");
            for (int i = 0; i < res.Sources.Count && i < o.Data.Count; i++)
                AnsiConsole.MarkupLine($"  {Markup.Escape(res.Sources[i].Source)}: {res.Sources[i].Tokens / (double)Math.Max(1, res.Tokens):P1} vs {o.Data[i].Weight / total:P1}");
        }
        AnsiConsole.MarkupLine($"store: {Markup.Escape(Path.GetFullPath(o.Out))}  (finetrace store info to inspect)");
        return 0;
    }
}

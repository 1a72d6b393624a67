using System.CommandLine;
using System.Globalization;
using Finetrace.Diffing;
using Finetrace.Text.Datasets;

namespace Finetrace.Cli.Commands.Analyze;

/// <summary>The options every model-pair reader shares (--base, --finetuned, --adapter, --base-adapter, --out, --json,
/// and for the data readers --data, --samples, --context, --batch), parsed into library records.</summary>
sealed class ReadersCli
{
    public readonly Option<string> Base = new("--base") { Description = "Base model folder (HF layout)", Required = true };
    public readonly Option<string> FineTuned = new("--finetuned") { Description = "Fine-tuned model folder (or the base folder again with --adapter)", Required = true };
    public readonly Option<string?> Adapter = new("--adapter") { Description = "PEFT LoRA adapter of the fine-tune (merged at load; the weight diff reads it directly)" };
    public readonly Option<string?> BaseAdapter = new("--base-adapter") { Description = "LoRA adapter merged into the base model" };
    public readonly Option<string> Out = new("--out") { Description = "Results folder", Required = true };
    public readonly Option<bool> Json = new("--json") { Description = "Print the result as JSON on stdout instead of a summary" };
    public readonly Option<string[]> Data = new("--data")
    {
        Description = "Data source as for harvest: [text:|jsonl:|chat:]PATH[,name=N][,weight=W][,field=F][,max-samples=N][,max-tokens=N][,split=blank|file]; repeat to mix",
        Required = true, AllowMultipleArgumentsPerToken = true,
    };
    public readonly Option<int> Context;
    public readonly Option<int> Batch;
    public readonly Option<int> Samples;

    public ReadersCli(int samples = 1000, int context = 1024, int batch = 4)
    {
        Samples = new Option<int>("--samples") { Description = "Samples read from the data (over all sources)", DefaultValueFactory = _ => samples };
        Context = new Option<int>("--context") { Description = "Tokens per sample at most (longer samples are cut)", DefaultValueFactory = _ => context };
        Batch = new Option<int>("--batch") { Description = "Samples per forward batch", DefaultValueFactory = _ => batch };
    }

    public void AddPair(Command cmd) { foreach (var o in new Option[] { Base, FineTuned, Adapter, BaseAdapter, Out, Json }) cmd.Options.Add(o); }
    public void AddData(Command cmd) { foreach (var o in new Option[] { Data, Samples, Context, Batch }) cmd.Options.Add(o); }

    public ModelPairSpec Pair(ParseResult r) => new(r.GetValue(Base)!, r.GetValue(FineTuned)!, r.GetValue(Adapter), r.GetValue(BaseAdapter));

    public CorpusSpec Corpus(ParseResult r)
    {
        int samples = r.GetValue(Samples), context = r.GetValue(Context), batch = r.GetValue(Batch);
        if (samples < 1) throw new ArgumentException("--samples must be ≥ 1");
        if (context < 2) throw new ArgumentException("--context must be ≥ 2");
        if (batch < 1) throw new ArgumentException("--batch must be ≥ 1");
        return new CorpusSpec(r.GetValue(Data)!.Select(DataSourceSpec.Parse).ToList(), samples, context, batch);
    }

    /// <summary>"2,4" or "0.5" (a fraction of the depth, floor(r·(layers−1))), as harvest --layers.</summary>
    public static int[] Layers(string text, string modelDir) => HarvestCommand.ParseLayers(text, modelDir);

    public static float[] Floats(string text, string option) =>
        text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
            .Select(s => float.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out var v) && float.IsFinite(v) ? v
                : throw new ArgumentException($"{option}: '{s}' is not a number")).ToArray();

    /// <summary>Prints a line of progress on stderr (plain, so redirected output stays clean).</summary>
    public static IProgress<string> StderrProgress() => new SyncProgress<string>(s => Console.Error.WriteLine(s));

    /// <summary>Progress of a paired forward on stderr, at most one line a second (and never more than needed).</summary>
    public static IProgress<PairedProgress> PairedProgressLine(string what, long totalSamples)
    {
        var last = System.Diagnostics.Stopwatch.StartNew();
        bool first = true;
        return new SyncProgress<PairedProgress>(p =>
        {
            if (!first && last.Elapsed.TotalSeconds < 1 && p.Samples < totalSamples) return;
            first = false;
            last.Restart();
            Console.Error.WriteLine(PairedForward.Describe(what, p, totalSamples));
        });
    }

    /// <summary>Runs <paramref name="job"/> with Ctrl-C turned into cancellation; returns 130 when cancelled.</summary>
    public static int Cancellable(Func<CancellationToken, int> job)
    {
        using var cts = new CancellationTokenSource();
        ConsoleCancelEventHandler onCancel = (_, e) => { e.Cancel = true; cts.Cancel(); };
        Console.CancelKeyPress += onCancel;
        try { return job(cts.Token); }
        catch (OperationCanceledException) { Console.Error.WriteLine("interrupted: finished stages are kept; run the same command again to continue"); return 130; }
        finally { Console.CancelKeyPress -= onCancel; }
    }

    public static void Skipped(string stage, string outDir) =>
        Console.WriteLine($"{stage}: current in {outDir} (same inputs); nothing to do. Delete its entry from manifest.json to recompute.");
}

/// <summary>IProgress that reports on the calling thread (Progress&lt;T&gt; posts to the thread pool, which would
/// interleave lines after the command has finished).</summary>
sealed class SyncProgress<T>(Action<T> report) : IProgress<T>
{
    public void Report(T value) => report(value);
}

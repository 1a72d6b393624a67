using System.CommandLine;
using System.Diagnostics;
using Finetrace.Activations;
using Finetrace.Diffing;

namespace Finetrace.Cli.Commands.Analyze;

/// <summary>The options every <c>finetrace analyze</c> verb on a dictionary shares, and their plumbing: progress and
/// notes on stderr (stdout stays clean for the summary or --json), Ctrl-C as a cancellation token.</summary>
sealed class AnalyzeArgs
{
    public readonly Option<string> Dictionary = new("--dictionary") { Description = "Dictionary folder (crosscoder_learning or SAELens, with Finetrace's finetrace.json)", Required = true };
    public readonly Option<string> Store = new("--store") { Description = "Activation store the dictionary was trained on", Required = true };
    public readonly Option<string> Out = new("--out") { Description = "Results folder (created if needed; shared by every analysis)", Required = true };
    public readonly Option<int?> Layer = new("--layer") { Description = "Layer (default: from the dictionary's finetrace.json, else the store's only layer)" };
    public readonly Option<string?> Base = new("--base") { Description = "Base model folder (default: the one the store's manifest records)" };
    public readonly Option<string?> FineTuned = new("--finetuned") { Description = "Fine-tuned model folder (default: from the store's manifest)" };
    public readonly Option<string?> Adapter = new("--adapter") { Description = "LoRA adapter of the fine-tuned model (default: from the store's manifest)" };
    public readonly Option<bool> Json = new("--json") { Description = "Print one JSON object instead of the summary" };
    public readonly Option<bool> Force = new("--force") { Description = "Rerun even when the results are current" };

    public void AddTo(Command cmd, bool models)
    {
        foreach (var o in new Option[] { Dictionary, Store, Out, Layer, Json, Force }) cmd.Options.Add(o);
        if (models) foreach (var o in new Option[] { Base, FineTuned, Adapter }) cmd.Options.Add(o);
    }
}

static class AnalyzeSupport
{
    /// <summary>Hash of what a stage reads: the dictionary folder's files, the store's manifest (the activations are
    /// named by it), the layer and the stage's options.</summary>
    public static InputsHash Inputs(string dictionary, ActivationStore store, int layer) =>
        new InputsHash().AddPath("dictionary", dictionary).AddPath("store", Path.Combine(store.Directory, ActivationStoreWriter.ManifestFile)).Add("layer", layer);

    /// <summary>Runs <paramref name="job"/> with Ctrl-C cancelling its token; an interrupted job leaves the results
    /// folder as it was (every write is atomic and the manifest is written last).</summary>
    public static T Cancellable<T>(Func<CancellationToken, T> job)
    {
        using var cts = new CancellationTokenSource();
        ConsoleCancelEventHandler onCancel = (_, e) => { e.Cancel = true; cts.Cancel(); };
        Console.CancelKeyPress += onCancel;
        try { return job(cts.Token); }
        catch (OperationCanceledException) { throw new OperationCanceledException("interrupted; nothing was recorded for this stage (earlier results are untouched): run the same command again"); }
        finally { Console.CancelKeyPress -= onCancel; }
    }

    public static void Note(string text) => Console.Error.WriteLine(text);
}

/// <summary>Progress of a streamed pass on stderr: a rewritten line on a terminal, a line every few seconds otherwise,
/// with the rate and the time left.</summary>
sealed class StderrProgress(string what, string unit = "positions") : IProgress<(long Done, long Total)>
{
    readonly Stopwatch _sw = Stopwatch.StartNew();
    double _last = -1;
    readonly bool _tty = !Console.IsErrorRedirected;

    public void Report((long Done, long Total) p)
    {
        double t = _sw.Elapsed.TotalSeconds;
        bool end = p.Done >= p.Total;
        if (!end && t - _last < (_tty ? 0.25 : 5)) return;
        _last = t;
        double rate = t > 0 ? p.Done / t : 0;
        string eta = rate > 0 && !end ? $", {TimeSpan.FromSeconds((p.Total - p.Done) / rate):hh\\:mm\\:ss} left" : "";
        string line = $"{what}: {p.Done:N0}/{p.Total:N0} {unit} ({rate:N0}/s{eta})";
        if (_tty) Console.Error.Write("\r" + line.PadRight(79) + (end ? "\n" : ""));
        else Console.Error.WriteLine(line);
    }
}

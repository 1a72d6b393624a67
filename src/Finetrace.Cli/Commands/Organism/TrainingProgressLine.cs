using Finetrace.Training;

namespace Finetrace.Cli.Commands.Organism;

/// <summary>Language-model training progress on stderr: one rewritten line on a terminal, or a line every ~5% of the
/// steps when stderr is redirected (so logs stay clean). Reports step, loss, learning rate, tokens/s and ETA.</summary>
public sealed class TrainingProgressLine(string label) : IProgress<LmTrainingProgress>
{
    readonly bool _interactive = !Console.IsErrorRedirected;
    long _lastPrinted = -1;

    public void Report(LmTrainingProgress p)
    {
        string line = $"{label}: step {p.Step}/{p.TotalSteps} loss {p.Loss:F4} lr {p.LearningRate:G3} |g| {p.GradNorm:G3} " +
                      $"{p.TokensPerSecond:N0} tok/s ETA {Eta(p.Eta)}";
        if (_interactive)
        {
            Console.Error.Write("\r" + line.PadRight(Math.Min(Console.BufferWidth > 0 ? Console.BufferWidth - 1 : 100, 120)));
            if (p.Step == p.TotalSteps) Console.Error.WriteLine();
        }
        else if (p.Step == p.TotalSteps || _lastPrinted < 0 || p.Step - _lastPrinted >= Math.Max(1, p.TotalSteps / 20))
        {
            Console.Error.WriteLine(line);
            _lastPrinted = p.Step;
        }
    }

    static string Eta(TimeSpan t) => t.TotalHours >= 1 ? $"{(int)t.TotalHours}h{t.Minutes:D2}m" : $"{t.Minutes}m{t.Seconds:D2}s";

    /// <summary>Runs <paramref name="job"/> with Ctrl-C turned into cancellation (the trainer saves a checkpoint first).</summary>
    public static T WithCtrlC<T>(Func<CancellationToken, T> job, string resumeHint)
    {
        using var cts = new CancellationTokenSource();
        ConsoleCancelEventHandler onCancel = (_, e) => { e.Cancel = true; cts.Cancel(); };
        Console.CancelKeyPress += onCancel;
        try { return job(cts.Token); }
        catch (OperationCanceledException) { throw new OperationCanceledException($"interrupted; {resumeHint}"); }
        finally { Console.CancelKeyPress -= onCancel; }
    }
}

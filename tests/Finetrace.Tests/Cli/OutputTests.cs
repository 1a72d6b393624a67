using Finetrace.Cli;
using Finetrace.Tests.Infrastructure;
using Spectre.Console;

namespace Finetrace.Tests.Cli;

/// <summary>Output people save and paste: no escape codes and no hard wrapping when the output is not a terminal or
/// NO_COLOR is set; progress on stderr as a few plain lines that end at 100%.</summary>
public class OutputTests
{
    static readonly string LongName = "model.layers.17.self_attn.q_proj.lora_B.default.weight_" + new string('x', 120);

    static string Render(bool terminal, bool noColor)
    {
        var w = new StringWriter();
        var console = CliConsole.Create(w, terminal, noColor);
        console.Write(new Rule("[bold]A rule[/]").LeftJustified());
        console.MarkupLine($"[bold red]warning[/]: {Markup.Escape(LongName)} and then a long sentence that goes on well past eighty columns without a break in it");
        var t = new Table().AddColumns("name", "shape");
        t.AddRow(Markup.Escape(LongName), "[[64, 64]]");
        console.Write(t);
        return w.ToString();
    }

    [Fact]
    public void RedirectedOutputHasNoEscapesAndNoWrapping()
    {
        string text = Render(terminal: false, noColor: false);
        Assert.DoesNotContain('\u001b', text);
        var lines = text.Split('\n');
        Assert.Contains(lines, l => l.StartsWith("warning: " + LongName) && l.TrimEnd().EndsWith("without a break in it"));
        Assert.Contains(lines, l => l.Contains(LongName) && l.Contains("[64, 64]"));       // the table row is one line
        string rule = Assert.Single(lines, l => l.Contains("A rule"));
        Assert.Equal(CliConsole.RuleWidth, rule.TrimEnd('\r').Length);
    }

    [Fact]
    public void NoColorOnATerminalHasNoEscapes()
    {
        Assert.DoesNotContain('\u001b', Render(terminal: true, noColor: true));
    }

    [Fact]
    public void EscapesAreWrittenOnlyWhereAllowed()
    {
        // Guards the two tests above: a colour terminal does get escape codes, so their absence means something.
        var w = new StringWriter();
        var console = AnsiConsole.Create(new AnsiConsoleSettings { Ansi = AnsiSupport.Yes, ColorSystem = ColorSystemSupport.Standard, Out = new AnsiConsoleOutput(w) });
        console.MarkupLine("[bold red]x[/]");
        Assert.Contains('\u001b', w.ToString());
    }

    static (string Text, Exception? Error) PlainProgress(double max, Action<ProgressTask> job, string? unit = null)
    {
        var w = new StringWriter();
        var console = CliConsole.Create(w, terminal: false, noColor: false);
        Exception? error = null;
        try { CliConsole.Progress(console, "harvest [[2 MB]]", max, job, unit); }
        catch (Exception e) { error = e; }
        return (w.ToString(), error);
    }

    [Fact]
    public void PlainProgressEndsAt100EvenWhenTheJobStopsShort()
    {
        var (text, error) = PlainProgress(1000, t => t.Value = 420, "tok");
        Assert.Null(error);
        Assert.DoesNotContain('\u001b', text);
        var last = text.TrimEnd().Split('\n')[^1];
        Assert.StartsWith("harvest [2 MB]: 100% in ", last);
        Assert.EndsWith("tok/s", last.TrimEnd());
    }

    [Fact]
    public void PlainProgressStopsWhereAFailingJobStopped()
    {
        var (text, error) = PlainProgress(100, t => { t.Value = 30; throw new InvalidOperationException("boom"); });
        Assert.IsType<InvalidOperationException>(error);
        Assert.DoesNotContain("100%", text);
    }

    [Fact]
    public void RedirectedCommandsPrintCleanTextAndProgressOnStderr()
    {
        using var tmp = new TempDir();
        string store = tmp.File("store");
        var make = CliProcess.Run(["synth", "make", "--d", "8", "--features", "16", "--tokens", "3000", "--seed", "5", "--out", store]);
        Assert.True(make.ExitCode == 0, make.ToString());
        Assert.DoesNotContain('\u001b', make.Stdout + make.Stderr);
        Assert.StartsWith("synth: 100% in ", make.Stderr.TrimEnd().Split('\n')[^1]);
        Assert.DoesNotContain("100%", make.Stdout);                                         // progress is not in the saved output
        Assert.Contains("wrote 3,000 tokens", make.Stdout);

        var info = CliProcess.Run(["store", "info", store], new Dictionary<string, string?> { ["NO_COLOR"] = "1" });
        Assert.True(info.ExitCode == 0, info.ToString());
        Assert.DoesNotContain('\u001b', info.Stdout + info.Stderr);
        Assert.Contains(Path.GetFullPath(store), info.Stdout.Replace("\n", "\n"));
    }
}

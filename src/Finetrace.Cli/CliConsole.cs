using System.Diagnostics;
using Spectre.Console;
using Spectre.Console.Rendering;

namespace Finetrace.Cli;

/// <summary>
/// How the command line writes, decided once: output people save and paste stays clean. When a stream is not a
/// terminal, or NO_COLOR is set, it carries no escape codes; when it is not a terminal, nothing is wrapped (Spectre
/// would otherwise assume 80 columns and break tensor names and commands mid-word): tables take their natural
/// width and rules a fixed <see cref="RuleWidth"/>. Progress goes to stderr (<see cref="Progress"/>).
/// </summary>
public static class CliConsole
{
    /// <summary>Width a console that is not a terminal reports: wide enough that no line is ever wrapped.</summary>
    public const int UnwrappedWidth = 1 << 14;
    /// <summary>Width of a horizontal rule when the output is not a terminal (a terminal's rules fill its width).</summary>
    public const int RuleWidth = 100;

    static IAnsiConsole? _error;

    /// <summary>The stderr console (progress, notes), configured like stdout's.</summary>
    public static IAnsiConsole Error => _error ??= Create(Console.Error, !Console.IsErrorRedirected, NoColor, liveProgress: true);

    /// <summary>NO_COLOR (https://no-color.org): set and not empty.</summary>
    public static bool NoColor => !string.IsNullOrEmpty(Environment.GetEnvironmentVariable("NO_COLOR"));

    /// <summary>Points <see cref="AnsiConsole.Console"/> (stdout) and <see cref="Error"/> (stderr) at consoles made by
    /// <see cref="Create"/> for the process's real streams. Called once at start-up.</summary>
    public static void Configure()
    {
        AnsiConsole.Console = Create(Console.Out, !Console.IsOutputRedirected, NoColor);
        _error = Create(Console.Error, !Console.IsErrorRedirected, NoColor, liveProgress: true);
    }

    /// <summary>A console writing to <paramref name="writer"/>: escape codes only on a terminal without NO_COLOR (with
    /// <paramref name="liveProgress"/>, a terminal under NO_COLOR keeps the cursor control a live progress bar needs,
    /// uncoloured); no wrapping when it is not a terminal.</summary>
    public static IAnsiConsole Create(TextWriter writer, bool terminal, bool noColor, bool liveProgress = false)
    {
        bool ansi = terminal && (!noColor || liveProgress);
        var console = AnsiConsole.Create(new AnsiConsoleSettings
        {
            Ansi = ansi ? AnsiSupport.Detect : AnsiSupport.No,
            ColorSystem = terminal && !noColor ? ColorSystemSupport.Detect : ColorSystemSupport.NoColors,
            Interactive = terminal ? InteractionSupport.Detect : InteractionSupport.No,
            Out = new AnsiConsoleOutput(writer),
        });
        if (!terminal)
        {
            console.Profile.Width = UnwrappedWidth;
            console.Pipeline.Attach(new FixedWidthRules());
        }
        return console;
    }

    /// <summary>Rules fill the console's width; with <see cref="UnwrappedWidth"/> that would be thousands of dashes.</summary>
    sealed class FixedWidthRules : IRenderHook
    {
        public IEnumerable<IRenderable> Process(RenderOptions options, IEnumerable<IRenderable> renderables) =>
            renderables.Select(r => r is Rule ? new AtMost(r, RuleWidth) : r);
    }

    /// <summary>Renders its content at most <paramref name="width"/> columns wide.</summary>
    sealed class AtMost(IRenderable inner, int width) : IRenderable
    {
        public Measurement Measure(RenderOptions options, int maxWidth) => inner.Measure(options, Math.Min(maxWidth, width));
        public IEnumerable<Segment> Render(RenderOptions options, int maxWidth) => inner.Render(options, Math.Min(maxWidth, width));
    }

    /// <summary>
    /// Runs <paramref name="job"/> under a progress display on stderr and, when it returns, shows the task at 100%
    /// (the job may stop short of its estimate, e.g. when the data run out). On a terminal: a live Spectre bar.
    /// Otherwise plain lines, one per 10% reached and a last one at 100% with the elapsed time, so a log file holds a
    /// few readable lines instead of redraw fragments. When the job throws, the display stops where the job was.
    /// </summary>
    public static void Progress(string description, double maxValue, Action<ProgressTask> job, string? rateUnit = null) =>
        Progress(Error, description, maxValue, job, rateUnit);

    /// <summary><see cref="Progress(string, double, Action{ProgressTask}, string?)"/> on a given console.</summary>
    public static void Progress(IAnsiConsole console, string description, double maxValue, Action<ProgressTask> job, string? rateUnit = null)
    {
        if (console.Profile.Capabilities is { Interactive: true, Ansi: true })
        {
            var columns = new List<ProgressColumn> { new TaskDescriptionColumn { Alignment = Justify.Left }, new ProgressBarColumn(), new PercentageColumn() };
            if (rateUnit is not null) columns.Add(new RateColumn(rateUnit));
            columns.Add(new RemainingTimeColumn());
            new Progress(console).AutoClear(false).Columns([.. columns]).Start(ctx =>
            {
                var task = ctx.AddTask(description, maxValue: Math.Max(maxValue, 1e-9));
                job(task);
                task.Value = task.MaxValue;
            });
            return;
        }
        PlainProgress(console.Profile.Out.Writer, description, maxValue, job, rateUnit);
    }

    static void PlainProgress(TextWriter w, string description, double maxValue, Action<ProgressTask> job, string? rateUnit)
    {
        var task = new ProgressTask(0, description, Math.Max(maxValue, 1e-9));
        var sw = Stopwatch.StartNew();
        int reported = 0; // tenths already printed
        var gate = new object();
        double v0 = double.NaN, t0 = 0; // first value the timer saw (a resumed job starts part-way)
        void Line(int tenths, bool final)
        {
            double secs = sw.Elapsed.TotalSeconds, value = task.Value, done = value - (double.IsNaN(v0) ? 0 : v0), spent = secs - t0;
            string rate = rateUnit is null || spent <= 0 || done <= 0 ? "" : $", {done / spent:N0} {rateUnit}/s";
            string left = done <= 0 ? "" : $", about {TimeSpan.FromSeconds(Math.Round(spent * (task.MaxValue - value) / done)):c} left";
            string tail = final ? $" in {secs:F1} s{rate}" : rate + left;
            w.WriteLine($"{Markup.Remove(task.Description)}: {tenths * 10}%{tail}");
            w.Flush();
        }
        void Poll()
        {
            lock (gate)
            {
                if (double.IsNaN(v0)) { v0 = task.Value; t0 = sw.Elapsed.TotalSeconds; }
                int tenths = (int)Math.Clamp(Math.Floor(10 * task.Value / task.MaxValue), 0, 9);
                if (tenths > reported) { reported = tenths; Line(tenths, false); }
            }
        }
        using (var timer = new Timer(_ => Poll(), null, TimeSpan.FromMilliseconds(500), TimeSpan.FromMilliseconds(500)))
            job(task);
        lock (gate)
        {
            task.Value = task.MaxValue;
            reported = 10;
            Line(10, true);
        }
    }

    /// <summary>The task's speed as a plain number per second of <c>unit</c> (Spectre's transfer column assumes bytes).</summary>
    sealed class RateColumn(string unit) : ProgressColumn
    {
        public override IRenderable Render(RenderOptions options, ProgressTask task, TimeSpan deltaTime) =>
            new Markup($"{task.Speed ?? 0:N0} {Markup.Escape(unit)}/s");
    }
}

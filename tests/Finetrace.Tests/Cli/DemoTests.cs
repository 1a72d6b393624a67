using Finetrace.Cli;
using Finetrace.Cli.Commands;

namespace Finetrace.Tests.Cli;

public class DemoTests
{
    /// <summary>The demo runs real commands; if an option it uses is renamed or removed, this fails before a user sees it.</summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void EveryDemoStepParsesAgainstTheRealCommandLine(bool quick)
    {
        var root = Program.BuildRoot();
        var steps = DemoCommand.Steps("demo-dir", quick);
        Assert.Equal(5, steps.Count);
        foreach (var (n, _, args) in steps)
        {
            var parsed = root.Parse(args);
            Assert.True(parsed.Errors.Count == 0, $"step {n} ({string.Join(' ', args)}): {string.Join("; ", parsed.Errors.Select(e => e.Message))}");
            Assert.Equal(args[1], parsed.CommandResult.Command.Name);
        }
    }

    [Fact]
    public void AMisspelledOptionIsAParseError()
    {
        // Guards the test above: the parser must reject unknown options, or it would pass vacuously.
        var parsed = Program.BuildRoot().Parse(["synth", "make", "--d", "8", "--features", "4", "--out", "x", "--no-such-option", "1"]);
        Assert.NotEmpty(parsed.Errors);
    }
}

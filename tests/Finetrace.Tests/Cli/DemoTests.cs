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

    /// <summary>The organism demo's diff config reads (unknown keys would throw) and resolves for the demo base's shape;
    /// its dictionary trains for several passes over the most the harvest can store.</summary>
    [Fact]
    public void TheOrganismDemoDiffConfigParsesAndTrainsSeveralPasses()
    {
        var cfg = Finetrace.Pipeline.DiffConfig.Parse(OrganismDemo.Config);
        var d = Assert.Single(cfg.Dictionaries);
        Assert.Equal(256, d.DictSize);
        Assert.True(d.Tokens >= 2 * cfg.Harvest.Tokens, $"dictionary tokens {d.Tokens} vs store {cfg.Harvest.Tokens}");
        Assert.True(cfg.Data.GeneratedSamples > 0 && cfg.Data.ChatConversations > 0);
        Assert.ThrowsAny<YamlDotNet.Core.YamlException>(() => Finetrace.Pipeline.DiffConfig.Parse(OrganismDemo.Config.Replace("generated_samples", "generated_sample")));
    }
}

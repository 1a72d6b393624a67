using System.CommandLine;

namespace Finetrace.Cli.Commands;

/// <summary><c>finetrace analyze VERB</c>: the diffing analyses, each writing into a results folder.</summary>
public sealed class AnalyzeCommand : ICliCommand
{
    public Command Build()
    {
        var cmd = new Command("analyze",
            "Diffing analyses. Each writes plain files into a results folder (--out RESULTS) and records itself in " +
            "RESULTS/manifest.json; re-running a finished analysis with the same inputs does nothing");
        foreach (var verb in typeof(IAnalyzeCommand).Assembly.GetTypes()
                     .Where(t => typeof(IAnalyzeCommand).IsAssignableFrom(t) && t is { IsAbstract: false, IsInterface: false })
                     .Select(t => ((IAnalyzeCommand)Activator.CreateInstance(t)!).Build())
                     .OrderBy(c => c.Name, StringComparer.Ordinal))
            cmd.Subcommands.Add(verb);
        return cmd;
    }
}

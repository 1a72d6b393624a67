using System.CommandLine;

namespace Finetrace.Cli.Commands;

/// <summary><c>finetrace organism VERB</c>: model organisms, i.e. models trained inside Finetrace with known changes.
/// The verbs implement <see cref="IOrganismCommand"/> and live in Commands/Organism/ (one file each).</summary>
public sealed class OrganismCommand : ICliCommand
{
    public Command Build()
    {
        var cmd = new Command("organism",
            "Model organisms: train and fine-tune small models with known changes, as standard Hugging Face folders");
        foreach (var verb in typeof(IOrganismCommand).Assembly.GetTypes()
                     .Where(t => typeof(IOrganismCommand).IsAssignableFrom(t) && t is { IsAbstract: false, IsInterface: false })
                     .Select(t => ((IOrganismCommand)Activator.CreateInstance(t)!).Build())
                     .OrderBy(c => c.Name, StringComparer.Ordinal))
            cmd.Subcommands.Add(verb);
        return cmd;
    }
}

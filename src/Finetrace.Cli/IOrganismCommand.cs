using System.CommandLine;

namespace Finetrace.Cli;

/// <summary>
/// A subcommand of <c>finetrace organism</c> (finetune, make, score, …). Implementations are discovered by reflection,
/// so each lives in one file under Commands/Organism/ and adding one touches nothing else.
/// </summary>
public interface IOrganismCommand
{
    Command Build();
}

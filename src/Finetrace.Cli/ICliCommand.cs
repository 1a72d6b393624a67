using System.CommandLine;

namespace Finetrace.Cli;

/// <summary>
/// A top-level <c>finetrace</c> command. Implementations are discovered by reflection, so each command lives in
/// one file under Commands/ and adding one touches nothing else.
/// </summary>
public interface ICliCommand
{
    Command Build();
}

using System.CommandLine;

namespace Finetrace.Cli;

/// <summary>
/// A <c>finetrace analyze …</c> verb (latents, scaling, causal, adl, kl, …). Implementations are discovered by
/// reflection, like <see cref="ICliCommand"/>, so each analysis lives in one file under Commands/Analyze/.
/// </summary>
public interface IAnalyzeCommand
{
    Command Build();
}

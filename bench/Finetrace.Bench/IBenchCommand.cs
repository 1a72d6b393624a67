using System.CommandLine;

namespace Finetrace.Bench;

/// <summary>
/// A <c>finetrace bench NAME</c> subcommand. Implementations are discovered by reflection, so adding a benchmark
/// is adding one file. Every benchmark prints its figures and ratios against a stated bound, and with
/// <c>--json</c> prints exactly one JSON object with the same figures.
/// </summary>
public interface IBenchCommand
{
    Command Build();
}

public static class BenchOptions
{
    public static Option<bool> Json() => new("--json") { Description = "Print one JSON object with the figures instead of a table" };
}

using Finetrace.Bench;
using Finetrace.Cli;

namespace Finetrace.Tests.Cli;

public class ProgramTests
{
    static string[] Implementations<T>() =>
        typeof(T).Assembly.GetTypes().Where(t => typeof(T).IsAssignableFrom(t) && !t.IsAbstract && !t.IsInterface).Select(t => t.Name).ToArray();

    [Fact]
    public void EveryCommandAndBenchmarkIsDiscoveredOnceInNameOrder()
    {
        var root = Program.BuildRoot();
        var top = root.Subcommands.Where(c => c.Name != "bench").Select(c => c.Name).ToArray();
        var bench = root.Subcommands.Single(c => c.Name == "bench").Subcommands.Select(c => c.Name).ToArray();

        Assert.Equal(Implementations<ICliCommand>().Length, top.Length);
        Assert.Equal(Implementations<IBenchCommand>().Length, bench.Length);
        Assert.Contains("demo", top);
        Assert.Contains("gemm", bench);
        Assert.Equal(top.Order(StringComparer.Ordinal), top);
        Assert.Equal(bench.Order(StringComparer.Ordinal), bench);
        Assert.Equal(top.Length, top.Distinct().Count());
        Assert.Equal(bench.Length, bench.Distinct().Count());
    }
}

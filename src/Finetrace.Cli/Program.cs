using System.CommandLine;
using System.Reflection;
using Finetrace.Bench;

namespace Finetrace.Cli;

public static class Program
{
    public static int Main(string[] args)
    {
        var root = BuildRoot();
        try
        {
            return root.Parse(args).Invoke(new InvocationConfiguration { EnableDefaultExceptionHandler = false });
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            // Clear errors, not stack traces: every library error names the file or field at fault.
            Console.Error.WriteLine($"finetrace: error: {e.Message}");
            if (Environment.GetEnvironmentVariable("FINETRACE_DEBUG") == "1") Console.Error.WriteLine(e);
            return 1;
        }
    }

    public static RootCommand BuildRoot()
    {
        var root = new RootCommand(
            "Finetrace: see what fine-tuning changed inside a language model.\n" +
            "Run base and fine-tuned models on the same text, train crosscoders and diff-SAEs on their activations,\n" +
            "and read, measure and test the latents that differ.");
        root.HelpName = "finetrace";
        foreach (var cmd in Discover<ICliCommand>(typeof(Program).Assembly).OrderBy(c => c.Name, StringComparer.Ordinal))
            root.Subcommands.Add(cmd);

        var bench = new Command("bench", "Benchmarks: each prints its figures and the ratio to a stated bound (--json: one JSON object)");
        foreach (var cmd in Discover<IBenchCommand>(typeof(IBenchCommand).Assembly).OrderBy(c => c.Name, StringComparer.Ordinal))
            bench.Subcommands.Add(cmd);
        root.Subcommands.Add(bench);
        // Exceptions propagate to Main's handler so messages print without stack traces.
        return root;
    }

    static IEnumerable<Command> Discover<T>(Assembly asm)
    {
        foreach (var t in asm.GetTypes())
            if (typeof(T).IsAssignableFrom(t) && t is { IsAbstract: false, IsInterface: false })
            {
                var inst = Activator.CreateInstance(t)!;
                yield return inst switch
                {
                    ICliCommand c => c.Build(),
                    IBenchCommand b => b.Build(),
                    _ => throw new InvalidOperationException(t.Name),
                };
            }
    }
}

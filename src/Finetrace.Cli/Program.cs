using System.CommandLine;
using Finetrace.Bench;

namespace Finetrace.Cli;

public static class Program
{
    public static int Main(string[] args)
    {
        CliConsole.Configure();
        var root = BuildRoot();
        try
        {
            var parsed = root.Parse(args);
            if (parsed.Errors.Count > 0 && !args.Any(a => a is "-h" or "--help" or "-?"))
            {
                // One line per problem and where to read more, instead of .NET type names followed by the whole help.
                foreach (var error in parsed.Errors) Console.Error.WriteLine($"finetrace: error: {CliErrors.ParseError(error.Message)}");
                Console.Error.WriteLine($"see: finetrace {CliErrors.CommandPath(parsed.CommandResult)} --help".Replace("  ", " "));
                return 2;
            }
            return parsed.Invoke(new InvocationConfiguration { EnableDefaultExceptionHandler = false });
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            // Clear errors, not stack traces: every library error names the file or field at fault.
            Console.Error.WriteLine($"finetrace: error: {CliErrors.Describe(e)}");
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
        foreach (var cmd in Discover<ICliCommand>(c => c.Build()))
            root.Subcommands.Add(cmd);

        var bench = new Command("bench", "Benchmarks: each prints its figures and the ratio to a stated bound (--json: one JSON object)");
        foreach (var cmd in Discover<IBenchCommand>(b => b.Build()))
            bench.Subcommands.Add(cmd);
        root.Subcommands.Add(bench);
        // Exceptions propagate to Main's handler so messages print without stack traces.
        return root;
    }

    /// <summary>Every concrete <typeparamref name="T"/> in T's own assembly, built and ordered by name.</summary>
    static IEnumerable<Command> Discover<T>(Func<T, Command> build) =>
        typeof(T).Assembly.GetTypes()
            .Where(t => typeof(T).IsAssignableFrom(t) && t is { IsAbstract: false, IsInterface: false })
            .Select(t => build((T)Activator.CreateInstance(t)!))
            .OrderBy(c => c.Name, StringComparer.Ordinal);
}

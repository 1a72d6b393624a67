using System.Diagnostics;

namespace Finetrace.Tests.Cli;

/// <summary>Runs the real command line (Finetrace.Cli.dll beside the tests) as a child process with stdout and stderr
/// redirected, as a user's shell does when output goes to a file or a pipe.</summary>
public static class CliProcess
{
    public sealed record Result(int ExitCode, string Stdout, string Stderr)
    {
        public override string ToString() => $"exit {ExitCode}\n--- stdout\n{Stdout}\n--- stderr\n{Stderr}";
    }

    public static Result Run(IEnumerable<string> args, IReadOnlyDictionary<string, string?>? env = null, string? workingDirectory = null, int timeoutMs = 120_000)
    {
        string dll = Path.Combine(AppContext.BaseDirectory, "Finetrace.Cli.dll");
        var psi = new ProcessStartInfo("dotnet")
        {
            RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false,
            WorkingDirectory = workingDirectory ?? Environment.CurrentDirectory,
        };
        psi.ArgumentList.Add(dll);
        foreach (var a in args) psi.ArgumentList.Add(a);
        psi.Environment.Remove("NO_COLOR");
        psi.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1";
        if (env is not null)
            foreach (var (k, v) in env)
                if (v is null) psi.Environment.Remove(k); else psi.Environment[k] = v;
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(timeoutMs)) { p.Kill(entireProcessTree: true); throw new TimeoutException($"finetrace {string.Join(' ', args)} did not finish in {timeoutMs} ms"); }
        p.WaitForExit();
        return new Result(p.ExitCode, stdout.Result, stderr.Result);
    }
}

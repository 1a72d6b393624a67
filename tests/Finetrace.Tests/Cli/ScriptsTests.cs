using System.Diagnostics;
using Finetrace.Tests.Infrastructure;

namespace Finetrace.Tests.Cli;

/// <summary>scripts/deps decides from the whole library list whether OpenBLAS is present: a long ldconfig output with
/// the library near its top must never read as "missing" (grep -q on a pipe under pipefail did, at random).</summary>
public class ScriptsTests
{
    static string RepoRoot()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d is not null; d = d.Parent)
            if (File.Exists(Path.Combine(d.FullName, "scripts", "deps"))) return d.FullName;
        throw new InvalidOperationException("scripts/deps not found above the test binaries");
    }

    /// <summary>Runs scripts/deps with fake ldconfig and id (a non-root user: it only reports) ahead on PATH.</summary>
    static string DepsStderr(bool withOpenBlas)
    {
        using var tmp = new TempDir();
        string first = withOpenBlas ? "echo '\tlibopenblas.so.0 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libopenblas.so.0'" : "true";
        // 50,000 more lines (2.5 MB) after the match: far more than a pipe buffer, so an early-exiting reader kills the writer.
        File.WriteAllText(tmp.File("ldconfig"), $"#!/bin/bash\n{first}\nfor i in $(seq 50000); do echo \"\tlibx$i.so.1 (libc6,x86-64) => /usr/lib/libx$i.so.1\"; done\n");
        File.WriteAllText(tmp.File("id"), "#!/bin/bash\necho 1000\n");
        foreach (var f in new[] { "ldconfig", "id" })
            if (!OperatingSystem.IsWindows()) File.SetUnixFileMode(tmp.File(f), UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        string dotnetDir = Path.GetDirectoryName(Environment.ProcessPath!)!;
        var psi = new ProcessStartInfo("bash", [Path.Combine(RepoRoot(), "scripts", "deps")]) { RedirectStandardError = true, RedirectStandardOutput = true };
        psi.Environment["PATH"] = $"{tmp.Path}:{dotnetDir}:/usr/bin:/bin";
        using var p = Process.Start(psi)!;
        string err = p.StandardError.ReadToEnd();
        p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        Assert.Equal(0, p.ExitCode);
        return err;
    }

    [Fact]
    public void DepsFindsOpenBlasInALongLibraryList()
    {
        for (int i = 0; i < 2; i++) Assert.DoesNotContain("OpenBLAS not found", DepsStderr(withOpenBlas: true));
    }

    [Fact]
    public void DepsReportsAMissingOpenBlas()
    {
        Assert.Contains("OpenBLAS not found", DepsStderr(withOpenBlas: false));
    }
}

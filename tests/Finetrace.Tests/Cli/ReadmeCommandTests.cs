using System.CommandLine;
using System.Diagnostics;
using System.Text.RegularExpressions;
using Finetrace.Cli;
using Finetrace.Cli.Commands;
using Finetrace.Tests.Infrastructure;

namespace Finetrace.Tests.Cli;

/// <summary>The demo's outputs at a small size, made once for the tests below: the demo's own five steps with the
/// token budgets (and the schedules that depend on them) shrunk.</summary>
public sealed class SmallDemo : IDisposable
{
    readonly TempDir _tmp = new();
    public string Dir => _tmp.Path;
    public string Store => Path.Combine(Dir, "store");
    public string BatchTopK => Path.Combine(Dir, "batchtopk");

    public SmallDemo()
    {
        foreach (var (n, _, args) in DemoCommand.Steps(Dir, quick: true))
        {
            var small = Shrink(args);
            int rc = ReadmeCommandTests.Invoke(small, out string? error);
            if (rc != 0) throw new InvalidOperationException($"demo step {n} (finetrace {string.Join(' ', small)}) failed: {error}");
        }
    }

    /// <summary>60,000 synthetic tokens (enough for the README's eval at offset 50,000) and 80 training steps.</summary>
    static string[] Shrink(string[] args)
    {
        var a = (string[])args.Clone();
        bool synth = a[0] == "synth";
        for (int i = 0; i + 1 < a.Length; i++)
            a[i + 1] = a[i] switch
            {
                "--tokens" => synth ? "60000" : "40960",
                "--warmup" => "4",
                "--decay-start" => "64",
                "--threshold-start" => "40",
                _ => a[i + 1],
            };
        return a;
    }

    public void Dispose() => _tmp.Dispose();
}

/// <summary>
/// Every command a newcomer is shown works: the demo's closing suggestions run on the demo's outputs; every
/// <c>finetrace …</c> line in the README parses against the real command line (placeholders filled in, optional
/// [groups] left out), and those that read the demo's kind of outputs (store info/export, eval, convert, synth
/// score) also run on them; the README's one-line PATH setup puts this checkout's <c>finetrace</c> first on PATH.
/// </summary>
[Collection(ProcessWide.Name)]
public class ReadmeCommandTests(SmallDemo demo) : IClassFixture<SmallDemo>
{
    /// <summary>Runs the command line in this process; the exit code, and the error message if it threw.</summary>
    internal static int Invoke(string[] args, out string? error)
    {
        error = null;
        var parsed = Program.BuildRoot().Parse(args);
        if (parsed.Errors.Count > 0) { error = string.Join("; ", parsed.Errors.Select(e => e.Message)); return 2; }
        try { return parsed.Invoke(new InvocationConfiguration { EnableDefaultExceptionHandler = false }); }
        catch (Exception e) { error = e.Message; return 1; }
    }

    static string RepoRoot()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d is not null; d = d.Parent)
            if (File.Exists(Path.Combine(d.FullName, "Finetrace.slnx")) && File.Exists(Path.Combine(d.FullName, "README.md"))) return d.FullName;
        throw new InvalidOperationException("the checkout (Finetrace.slnx beside README.md) is not above the test binaries");
    }

    /// <summary>Command lines in the README's bash blocks: continuations joined, comments dropped.</summary>
    internal static List<string> ReadmeCommands(string readme)
    {
        var commands = new List<string>();
        bool inBash = false;
        string pending = "";
        foreach (var raw in readme.Split('\n'))
        {
            string line = raw.TrimEnd('\r');
            if (line.StartsWith("```")) { inBash = !inBash && line.StartsWith("```bash"); pending = ""; continue; }
            if (!inBash) continue;
            string code = Regex.Replace(line, @"\s+#.*$", "").Trim();
            if (pending.Length > 0) code = pending + " " + code;
            if (code.EndsWith('\\')) { pending = code.TrimEnd('\\').Trim(); continue; }
            pending = "";
            if (code.StartsWith("finetrace ") || code.StartsWith("./finetrace ")) commands.Add(code);
        }
        return commands;
    }

    /// <summary>Arguments of a README command: quotes honoured, [optional groups] dropped, placeholders replaced.</summary>
    static string[] Arguments(string command, IReadOnlyDictionary<string, string> places)
    {
        var words = Regex.Matches(command, "\"[^\"]*\"|\\S+").Select(m => m.Value.Trim('"')).ToList();
        var args = new List<string>();
        int depth = 0;
        foreach (var w in words.Skip(1))
        {
            if (w is ">" or ">>" or "|" or "2>" or "&&") break; // shell redirection or a second command: not finetrace's
            if (w.StartsWith('[') && !w.StartsWith("[[")) depth++;
            if (depth == 0) args.Add(places.TryGetValue(w, out var p) ? p : w);
            if (w.EndsWith(']') && depth > 0) depth--;
        }
        return [.. args];
    }

    Dictionary<string, string> Places()
    {
        string model = Path.Combine(Shared.Root ?? "/nonexistent-shared", "models", "stories260K");
        string o = Path.Combine(demo.Dir, "readme");
        return new()
        {
            ["STORE"] = demo.Store, ["SYNTH"] = demo.Store, ["CC"] = demo.BatchTopK, ["CC-dl"] = Path.Combine(o, "cc-dl"),
            ["CACHE"] = Path.Combine(o, "cache"), ["DSAE"] = Path.Combine(o, "dsae"), ["SAE"] = Path.Combine(o, "sae"),
            ["MODEL_DIR"] = model, ["DIR"] = model, ["BASE_DIR"] = model, ["FT_DIR"] = model, ["LORA_DIR"] = model,
            ["A"] = model, ["B"] = model, ["OUT"] = Path.Combine(o, "out"), ["IN.jsonl"] = Path.Combine(o, "in.jsonl"),
            ["OUT.jsonl"] = Path.Combine(o, "out.jsonl"), ["IN.safetensors"] = Path.Combine(o, "in.safetensors"),
            ["OUT.safetensors"] = Path.Combine(o, "out.safetensors"), ["CONFIG.json"] = Path.Combine(o, "config.json"),
        };
    }

    [Fact]
    public void TheDemosSuggestionsRunOnItsOutputs()
    {
        var suggestions = DemoCommand.Suggestions(demo.Dir);
        Assert.NotEmpty(suggestions);
        foreach (var args in suggestions)
        {
            int rc = Invoke(args, out string? error);
            Assert.True(rc == 0, $"finetrace {string.Join(' ', args)}: exit {rc}: {error}");
        }
        Assert.True(Directory.EnumerateFiles(Path.Combine(demo.Dir, "cache"), "*", SearchOption.AllDirectories).Any(), "store export wrote nothing");
    }

    /// <summary>The command families of the tour that read a store or a dictionary the demo leaves behind.</summary>
    static readonly string[][] RunOnDemoOutputs = [["store", "info"], ["store", "export"], ["eval"], ["convert"], ["synth", "score"]];

    [Fact]
    public void EveryReadmeCommandParsesAndThoseForTheDemosOutputsRun()
    {
        var commands = ReadmeCommands(File.ReadAllText(Path.Combine(RepoRoot(), "README.md")));
        Assert.True(commands.Count >= 20, $"only {commands.Count} commands found in the README");
        var places = Places();
        var root = Program.BuildRoot();
        int ran = 0;
        foreach (var command in commands)
        {
            var args = Arguments(command, places);
            var parsed = root.Parse(args);
            Assert.True(parsed.Errors.Count == 0, $"README: {command}\n  → finetrace {string.Join(' ', args)}\n  {string.Join("; ", parsed.Errors.Select(e => e.Message))}");
            if (!RunOnDemoOutputs.Any(p => args.Take(p.Length).SequenceEqual(p))) continue;
            // eval/convert of a dictionary the demo does not train (the diff-SAE and SAE examples): parsed above, not run
            if (args[0] is "eval" or "convert" && !Directory.Exists(args[1])) continue;
            int rc = Invoke(args, out string? error);
            Assert.True(rc == 0, $"README: {command}\n  → finetrace {string.Join(' ', args)}: exit {rc}: {error}");
            ran++;
        }
        Assert.True(ran >= 5, $"only {ran} README commands ran on the demo's outputs");
    }

    [Fact]
    public void TheReadmesPathLinePutsThisCheckoutsFinetraceFirst()
    {
        string root = RepoRoot();
        var line = ReadmeCommandsAll(File.ReadAllText(Path.Combine(root, "README.md"))).Single(l => l.Contains("PATH=") && l.StartsWith("export "));
        var psi = new ProcessStartInfo("bash", ["-c", line + " && command -v finetrace"]) { WorkingDirectory = root, RedirectStandardOutput = true, RedirectStandardError = true };
        psi.Environment["PATH"] = "/usr/bin:/bin";
        using var p = Process.Start(psi)!;
        string found = p.StandardOutput.ReadToEnd().Trim();
        p.WaitForExit();
        Assert.Equal(0, p.ExitCode);
        Assert.Equal(Path.Combine(root, "finetrace"), found);
    }

    static IEnumerable<string> ReadmeCommandsAll(string readme)
    {
        bool inBash = false;
        foreach (var raw in readme.Split('\n'))
        {
            string line = raw.TrimEnd('\r');
            if (line.StartsWith("```")) { inBash = !inBash && line.StartsWith("```bash"); continue; }
            if (inBash) yield return line.Trim();
        }
    }
}

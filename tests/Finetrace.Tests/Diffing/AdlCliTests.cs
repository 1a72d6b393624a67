using System.Text.Json.Nodes;
using Finetrace.Cli.Commands.Analyze;
using Finetrace.Tests.Infrastructure;

namespace Finetrace.Tests.Diffing;

/// <summary><c>finetrace analyze adl</c> through the command line.</summary>
[Collection(ProcessWide.Name)]
public sealed class AdlCliTests
{
    static (int Rc, string Out, string Err) Cli(params string[] args)
    {
        var (oldOut, oldErr) = (Console.Out, Console.Error);
        var (o, e) = (new StringWriter(), new StringWriter());
        Console.SetOut(o);
        Console.SetError(e);
        try { return (Finetrace.Cli.Program.Main(args), o.ToString(), e.ToString()); }
        finally { Console.SetOut(oldOut); Console.SetError(oldErr); }
    }

    [Fact]
    public void Positions_parse_lists_and_signed_ranges()
    {
        Assert.Equal([-3, -2, -1, 0, 1, 2, 3, 4], AdlCommand.ParseInts("-3..4", "--chat-positions"));
        Assert.Equal([0, 1, 2, 7], AdlCommand.ParseInts("0..2, 7", "--positions"));
        var e = Assert.Throws<ArgumentException>(() => AdlCommand.ParseInts("0..x", "--positions"));
        Assert.Contains("--positions", e.Message);
    }

    [SharedFact]
    public void Analyze_adl_writes_results_prints_json_and_reports_bad_input_without_a_stack_trace()
    {
        using var tmp = new TempDir();
        string data = tmp.File("text.txt");
        File.WriteAllText(data, string.Join("\n\n", Enumerable.Range(0, 40).Select(i => $"Tom had {i} red balls. He liked to play with them in the park every day.")) + "\n");
        string[] common = ["analyze", "adl", "--base", Shared.Path("models", "stories260K"), "--finetuned", Shared.Path("models", "stories260K-zog"),
            "--data", data, "--layers", "4", "--positions", "0..2", "--out", tmp.File("R")];
        var (rc, stdout, stderr) = Cli([.. common, "--steer", "none", "--no-patchscope", "--json"]);
        Assert.True(rc == 0, stderr);
        var arr = JsonNode.Parse(stdout.Trim())!.AsArray();
        Assert.Equal(3, arr.Count);
        Assert.All(arr, e => Assert.Equal(4, (int)e!["layer"]!));
        Assert.Equal([0, 1, 2], arr.Select(e => (int)e!["position"]!));
        Assert.Equal(20, arr[1]!["top_tokens"]!.AsArray().Count);
        Assert.Contains("adl means", stderr);
        Assert.True(File.Exists(Path.Combine(tmp.File("R"), "adl.json")));

        var (rc2, _, err2) = Cli([.. common, "--steer", "sideways"]);
        Assert.Equal(1, rc2);
        Assert.Contains("--steer", err2);
        Assert.DoesNotContain("   at ", err2);
    }

    [SharedFact]
    public void Without_data_the_adl_reads_the_built_in_general_text_and_says_so()
    {
        using var tmp = new TempDir();
        string outDir = tmp.File("R");
        var (rc, stdout, stderr) = Cli("analyze", "adl", "--base", Shared.Path("models", "stories260K"), "--finetuned", Shared.Path("models", "stories260K-zog"),
            "--layers", "2", "--samples", "300", "--steer", "none", "--no-patchscope", "--out", outDir);
        Assert.True(rc == 0, stderr);
        Assert.Contains("data: built-in general text (finetrace-general-text/1", stdout);
        Assert.Contains("ADL: 300 text and 0 chat samples", stdout);
        var arr = JsonNode.Parse(File.ReadAllText(Path.Combine(outDir, "adl.json")))!.AsArray();
        Assert.Equal(5, arr.Count);
        Assert.All(arr, e => Assert.StartsWith("built-in general text", (string?)e!["data"]));
        Assert.All(arr, e => Assert.Equal(300, (long)e!["count"]!));
        var inputs = Finetrace.Diffing.ResultsFolder.Open(outDir).Stages()["adl"].Inputs!;
        Assert.Equal("builtin:finetrace-general-text/1", (string?)inputs["data"]![0]);
    }
}

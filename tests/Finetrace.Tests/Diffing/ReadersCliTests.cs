using System.Text.Json.Nodes;
using Finetrace.Tests.Infrastructure;

namespace Finetrace.Tests.Diffing;

/// <summary>The reader verbs end to end through the command line: files in RESULTS, manifest stages, a second run skipped.</summary>
[Collection(ProcessWide.Name)]
public sealed class ReadersCliTests
{
    [SharedFact]
    public void Reader_verbs_write_their_results_and_skip_when_current()
    {
        using var tmp = new TempDir();
        string data = tmp.File("stories.txt");
        File.WriteAllText(data, "Once upon a time, there was a little girl named Lily.\n\nTom had a red ball. He liked to play.\n");
        string b = Shared.Path("models", "stories260K"), f = Shared.Path("models", "stories260K-zog"), r = tmp.File("R");
        string[] pair = ["--base", b, "--finetuned", f, "--out", r];
        string[] corpus = ["--data", data, "--samples", "4", "--context", "32"];
        Assert.Equal(0, Finetrace.Cli.Program.Main(["analyze", "weights", .. pair]));
        Assert.Equal(0, Finetrace.Cli.Program.Main(["analyze", "kl", .. pair, .. corpus]));
        Assert.Equal(0, Finetrace.Cli.Program.Main(["analyze", "diff-mining", .. pair, .. corpus, "--k", "10", "--top", "5", "--continuation", "2"]));
        Assert.Equal(0, Finetrace.Cli.Program.Main(["analyze", "diff-stats", .. pair, .. corpus, "--layers", "1,3"]));
        Assert.Equal(0, Finetrace.Cli.Program.Main(["analyze", "pca", .. pair, .. corpus, "--layers", "2", "--analyze", "1"]));
        Assert.Equal(0, Finetrace.Cli.Program.Main(["amplify", .. pair, "--prompt", "Once upon a time", "--alpha", "1", "--samples", "1", "--max-new-tokens", "5"]));
        foreach (var file in new[] { "weight_diff.json", "kl.json", "diff_mining.json", "diff_stats.json", "diff_stats/means.safetensors", "pca/layer_2.safetensors", "pca/pca.json", "amplification.json" })
            Assert.True(File.Exists(Path.Combine(r, file)), file);
        var stages = JsonNode.Parse(File.ReadAllText(Path.Combine(r, "manifest.json")))!["stages"]!.AsObject();
        Assert.Equal(new[] { "amplification", "diff_mining", "diff_stats", "kl", "pca", "weight_diff" }, stages.Select(kv => kv.Key).Order());
        var before = File.GetLastWriteTimeUtc(Path.Combine(r, "kl.json"));
        Assert.Equal(0, Finetrace.Cli.Program.Main(["analyze", "kl", .. pair, .. corpus]));
        Assert.Equal(before, File.GetLastWriteTimeUtc(Path.Combine(r, "kl.json")));
        var kl = JsonNode.Parse(File.ReadAllText(Path.Combine(r, "kl.json")))!;
        Assert.Equal(2, (int)kl["samples"]!); // the data holds two documents (fewer than --samples)
        Assert.Equal(1, Finetrace.Cli.Program.Main(["analyze", "pca", .. pair, .. corpus, "--target", "sideways"]));
    }
}

using System.Security.Cryptography;
using System.Text.RegularExpressions;
using Finetrace.Activations;
using Finetrace.Activations.Harvest;
using Finetrace.Activations.Synthetic;
using Finetrace.Cli;
using Finetrace.Models;
using Finetrace.Tests.Infrastructure;
using Finetrace.Text.Datasets;

namespace Finetrace.Tests.Cli;

/// <summary>The small frictions a newcomer met (issue 16, item 12; item 5's empty store; library errors that named
/// flags), each as behaviour: messages name the file or the flag, once, in words.</summary>
public class NewcomerTests
{
    static readonly Dictionary<string, string?> NoEnv = [];

    [Fact]
    public void InvalidJsonInConfigNamesTheFile()
    {
        using var tmp = new TempDir();
        File.WriteAllText(tmp.File("config.json"), "{ \"model_type\": \"llama\", ");
        var e = Assert.Throws<InvalidDataException>(() => ModelConfig.Load(tmp.Path));
        Assert.Contains(tmp.File("config.json"), e.Message);
        Assert.Contains("not valid JSON", e.Message);
    }

    [Fact]
    public void AValueOfTheWrongTypeIsOneLineNamingTheFlag()
    {
        var r = CliProcess.Run(["generate", "--model", "x", "--prompt", "a", "--max-new-tokens", "abc"]);
        Assert.Equal(2, r.ExitCode);
        var lines = r.Stderr.Trim().Split('\n');
        Assert.Equal(["finetrace: error: --max-new-tokens abc: expected a whole number", "see: finetrace generate --help"], lines.Select(l => l.TrimEnd()).ToArray());
        Assert.Equal("", r.Stdout);
    }

    [Fact]
    public void ParameterNamesOfLibraryMethodsAreNotShown()
    {
        string text = CliErrors.Describe(new ArgumentOutOfRangeException("temperature", "temperature must be ≥ 0"));
        Assert.Equal("temperature must be ≥ 0", text);
    }

    [Fact]
    public void LibrarySettingErrorsCarryDataAndTheCliNamesTheFlag()
    {
        var e = Assert.Throws<SettingException>(() => new SyntheticSpec { DModel = 1 }.Validate());
        Assert.Equal(("DModel", "1"), (e.Setting, e.Value));
        Assert.DoesNotContain("--", e.Message);
        Assert.Equal("--d 1: must be at least 2", CliErrors.Describe(e));

        var f = Assert.Throws<SettingException>(() => new SyntheticSpec { FrequencySpread = 0.5 }.Validate());
        Assert.Equal("--frequency-spread 0.5: must be ≥ 1", CliErrors.Describe(f));

        using var tmp = new TempDir();
        var d = Assert.Throws<DataSourceSpecException>(() => DataSourceSpec.Parse(tmp.File("missing.txt")));
        Assert.DoesNotContain("--", d.Message);
        Assert.Equal($"--data {tmp.File("missing.txt")}: '{tmp.File("missing.txt")}' not found", CliErrors.Describe(d));

        Assert.Equal(["--skip-first", "--l0", "--context", "--batch", "--seq-len", "--outlier-factor"],
            new[] { "SkipFirst", "L0", "ContextLength", "BatchSize", "SequenceLength", "OutlierFactor" }.Select(CliErrors.Flag).ToArray());
    }

    [Fact]
    public void TheLibraryOutsideDictionariesNamesNoFlag()
    {
        // Library errors are typed and worded by the CLI (Dictionaries is converted separately, by its own work).
        string root = AppContext.BaseDirectory;
        while (!File.Exists(Path.Combine(root, "Finetrace.slnx"))) root = Path.GetDirectoryName(root) ?? throw new InvalidOperationException("checkout not found");
        var flag = new Regex("\"[^\"\\n]*(?<![\\w-])--[a-z][a-z0-9-]+");
        var offenders = Directory.EnumerateFiles(Path.Combine(root, "src", "Finetrace"), "*.cs", SearchOption.AllDirectories)
            .Where(p => !p.Contains($"{Path.DirectorySeparatorChar}Dictionaries{Path.DirectorySeparatorChar}"))
            // Pipeline/Emit writes scripts for other programs (sbatch's options), not errors.
            .Where(p => !p.Contains($"{Path.DirectorySeparatorChar}Pipeline{Path.DirectorySeparatorChar}Emit{Path.DirectorySeparatorChar}"))
            .SelectMany(p => File.ReadLines(p).Select((l, i) => (p, i + 1, l)))
            .Where(x => !x.l.TrimStart().StartsWith("//") && flag.IsMatch(x.l))
            .Select(x => $"{Path.GetRelativePath(root, x.p)}:{x.Item2}: {x.l.Trim()}").ToList();
        Assert.True(offenders.Count == 0, "library strings that name flags:\n" + string.Join("\n", offenders));
    }

    static string Model(string name) => Shared.Path("models", name);

    /// <summary>An empty data file fails the harvest (exit 1, a clear message, no 0-token "complete" store); the
    /// corrected command with other settings then succeeds in the same folder; store info shows only weight hashes
    /// and the mask names --filter takes; a context past max_position_embeddings is warned about.</summary>
    [SharedFact]
    public void AnEmptyDataFileFailsAndTheCorrectedHarvestReusesTheFolder()
    {
        using var tmp = new TempDir();
        File.WriteAllText(tmp.File("empty.txt"), "");
        File.WriteAllText(tmp.File("stories.txt"), "Once upon a time, there was a little dog.\n\nThe dog liked to play in the park with a red ball.\n");
        string store = tmp.File("store");
        string[] common = ["harvest", "--base", Model("stories260K"), "--finetuned", Model("stories260K-zog"), "--layers", "1", "--tokens", "20", "--out", store];

        var empty = CliProcess.Run([.. common, "--data", tmp.File("empty.txt")]);
        Assert.True(empty.ExitCode == 1, empty.ToString());
        Assert.Contains("the data gave no token to store", empty.Stderr);
        var info = CliProcess.Run(["store", "info", store]);
        Assert.Contains("empty", info.Stdout);

        var good = CliProcess.Run([.. common, "--data", tmp.File("stories.txt"), "--context", "600", "--batch", "4"]);
        Assert.True(good.ExitCode == 0, good.ToString());
        Assert.Contains("--context 600 is longer than", good.Stderr);
        Assert.Contains("max_position_embeddings 512", good.Stderr);

        info = CliProcess.Run(["store", "info", store]);
        Assert.True(info.ExitCode == 0, info.ToString());
        string weights = Convert.ToHexStringLower(SHA256.HashData(File.ReadAllBytes(Path.Combine(Model("stories260K"), "model.safetensors"))))[..12];
        string config = Convert.ToHexStringLower(SHA256.HashData(File.ReadAllBytes(Path.Combine(Model("stories260K"), "config.json"))))[..12];
        Assert.Contains(weights, info.Stdout);
        Assert.DoesNotContain(config, info.Stdout);
        Assert.Contains("token masks (--filter)", info.Stdout);
        Assert.Contains("assistant", info.Stdout);
    }

    [SharedFact]
    public void GenerateWarnsPastTheModelsPositionsAndWordsABadTemperature()
    {
        var r = CliProcess.Run(["generate", "--model", Model("stories260K"), "--prompt", "Once", "--max-new-tokens", "520"]);
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.Contains("more than the model's max_position_embeddings 512", r.Stderr);

        var t = CliProcess.Run(["generate", "--model", Model("stories260K"), "--prompt", "Once", "--temperature", "-1"]);
        Assert.Equal(1, t.ExitCode);
        Assert.Contains("temperature must be ≥ 0", t.Stderr);
        Assert.DoesNotContain("Parameter", t.Stderr);
    }
}

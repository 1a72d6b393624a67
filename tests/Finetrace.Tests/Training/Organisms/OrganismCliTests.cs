using System.CommandLine;
using System.Text.Json.Nodes;
using Finetrace.Cli;
using Finetrace.Tests.Infrastructure;
using Finetrace.Training.Organisms;

namespace Finetrace.Tests.Training.Organisms;

[Collection(ProcessWide.Name)]
public sealed class OrganismCliTests
{
    static (int Code, string Out) Run(params string[] args)
    {
        var sw = new StringWriter();
        var old = Console.Out;
        Console.SetOut(sw);
        try { return (Program.BuildRoot().Parse(args).Invoke(new InvocationConfiguration { EnableDefaultExceptionHandler = false }), sw.ToString()); }
        finally { Console.SetOut(old); }
    }

    [Fact]
    public void Organism_has_make_score_and_finetune()
    {
        var organism = Program.BuildRoot().Subcommands.Single(c => c.Name == "organism");
        Assert.Equal(["finetune", "make", "score"], organism.Subcommands.Select(c => c.Name).Order());
    }

    [Fact]
    public void Print_recipe_writes_a_recipe_that_parses_back()
    {
        var (code, text) = Run("organism", "make", "--print-recipe", "demo");
        Assert.Equal(0, code);
        Assert.Equal(OrganismRecipe.BuiltInText("demo"), text);
        Assert.Equal("demo", OrganismRecipe.Parse(text, "printed").Name);
    }

    [Fact]
    public void Score_prints_json_with_ranks()
    {
        using var dir = new TempDir();
        new GroundTruth("x", "../base", [new PlantedChange("pip", PlantedKind.Topic, null, ["Pip"], [" Pip"])]).Save(dir.Path);
        File.WriteAllText(dir.File("summary.json"), """
            {"findings": [{"claim": "Stories are about cats.", "strings": ["cat"]}, {"claim": "A frog named Pip appears.", "strings": ["Pip"]}],
             "diff_mining": {"top_tokens": [" the", " a", " Pip"], "contexts": []}}
            """);
        var (code, text) = Run("organism", "score", dir.Path, "--truth", dir.File(GroundTruth.FileName), "--json");
        Assert.Equal(0, code);
        var json = JsonNode.Parse(text)!;
        Assert.Equal(1, json["surfaced_by_any"]!.GetValue<int>());
        var methods = json["planted"]![0]!["methods"]!;
        Assert.Equal(2, methods["findings"]!["rank"]!.GetValue<int>());
        Assert.Equal(3, methods["diff_mining"]!["rank"]!.GetValue<int>());
        var (code2, table) = Run("organism", "score", dir.Path, "--truth", dir.Path);
        Assert.Equal(0, code2);
        Assert.Contains("1 of 1 planted changes surfaced", table);
    }
}

using System.CommandLine;
using Finetrace.Cli;
using Finetrace.Models;
using Finetrace.Tests.Infrastructure;
using Finetrace.Text.Chat;
using Finetrace.Text.Datasets;
using Finetrace.Training;

namespace Finetrace.Tests.Training;

public sealed class OrganismFinetuneCliTests : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("ft-orgcli-").FullName;
    public void Dispose() { try { Directory.Delete(_dir, true); } catch (IOException) { } }

    string ChatFile(int n)
    {
        string path = Path.Combine(_dir, "chats.jsonl");
        var lines = Enumerable.Range(0, n).Select(i =>
            $$"""{"messages": [{"role": "user", "content": "What did Tom do today {{i}}?"}, {"role": "assistant", "content": "Tom played in the park. Bye bye, little friend!"}]}""");
        File.WriteAllLines(path, lines);
        return path;
    }

    [Fact]
    public void OrganismCommandDiscoversFinetune()
    {
        var organism = Program.BuildRoot().Subcommands.Single(c => c.Name == "organism");
        Assert.Contains("finetune", organism.Subcommands.Select(c => c.Name));
    }

    /// <summary>The assistant-only mask of the stories260K chat template: the answer's tokens and the closing EOS, nothing
    /// of the user turn or the "Assistant:" prefix.</summary>
    [SharedFact]
    public void AssistantOnlyMaskCoversTheAnswerAndItsEos()
    {
        string dir = Shared.Path("models", "stories260K-chat");
        var encoder = ModelSampleEncoder.FromFolder(dir);
        var examples = LmData.Load(DataSourceSpec.Parse("chat:" + ChatFile(1)), encoder, assistantOnly: true, [2], new SkipCounts());
        var ex = Assert.Single(examples);
        var tok = encoder.Tokenizer;
        var counted = ex.Ids.Where((_, t) => ex.LossMask![t] != 0).ToArray();
        Assert.Equal(2, counted[^1]); // the EOS closing the answer
        Assert.Equal("Tom played in the park. Bye bye, little friend!", tok.Decode(counted, skipSpecialTokens: true).Trim());
        var notCounted = ex.Ids.Where((_, t) => ex.LossMask![t] == 0).ToArray();
        Assert.Contains("What did Tom do today", tok.Decode(notCounted, skipSpecialTokens: true));
    }

    [SharedFact]
    public void FinetuneWritesALoadableModelAndResumesAsDone()
    {
        string outDir = Path.Combine(_dir, "out");
        string[] args = ["organism", "finetune", "--model", Shared.Path("models", "stories260K-chat"), "--data", ChatFile(12), "--out", outDir,
            "--steps", "3", "--batch", "2", "--seq", "64", "--assistant-only"];
        Assert.Equal(0, Program.BuildRoot().Parse(args).Invoke(new InvocationConfiguration { EnableDefaultExceptionHandler = false }));
        foreach (var f in new[] { "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "checkpoint/trainer_state.json" })
            Assert.True(File.Exists(Path.Combine(outDir, f)), f);
        using (var lm = CausalLM.Load(outDir)) Assert.Equal(5, lm.Layers);
        var first = File.ReadAllBytes(Path.Combine(outDir, "model.safetensors"));
        // running the finished job again resumes at its last step and writes the same model
        Assert.Equal(0, Program.BuildRoot().Parse(args).Invoke(new InvocationConfiguration { EnableDefaultExceptionHandler = false }));
        Assert.Equal(first, File.ReadAllBytes(Path.Combine(outDir, "model.safetensors")));
    }
}

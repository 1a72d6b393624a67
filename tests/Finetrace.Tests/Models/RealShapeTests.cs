using System.Runtime.CompilerServices;
using Finetrace.Models;
using Finetrace.Tensors;

namespace Finetrace.Tests.Models;

/// <summary>The layouts at real-model shapes (configs/ beside this file, used by model synth and bench forward) have the
/// published parameter counts of those models.</summary>
public sealed class RealShapeTests
{
    static string Config(string name, [CallerFilePath] string here = "") => Path.Combine(Path.GetDirectoryName(here)!, "configs", name);

    [Theory]
    [InlineData("smollm2-135m.json", 134_515_008L)]   // HuggingFaceTB/SmolLM2-135M
    [InlineData("qwen2.5-0.5b.json", 494_032_768L)]   // Qwen/Qwen2.5-0.5B
    [InlineData("gemma-2-2b.json", 2_614_341_888L)]   // google/gemma-2-2b (model-facts.md §12: 2.614 B)
    public void ParameterCountsMatchThePublishedModels(string config, long parameters)
    {
        string path = Config(config);
        Assert.True(File.Exists(path), $"{path} missing");
        var c = ModelConfig.Load(path);
        Assert.Equal(parameters, ModelLayout.Parameters(c).Sum(p => Tensor.ShapeLength(p.Shape)));
    }
}

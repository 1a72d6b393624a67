using Finetrace.Tensors;
using Finetrace.Models;
using Finetrace.Models.Safetensors;
using Finetrace.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Finetrace.Tests.Models;

/// <summary><c>model synth</c> writes exactly the layout save_pretrained writes; <c>activations</c> reproduces the fixtures.</summary>
[Collection(ProcessWide.Name)]
public sealed class SynthAndCliTests(ITestOutputHelper log)
{
    [SharedTheory]
    [InlineData("gemma2")]
    [InlineData("llama")]
    [InlineData("qwen2")]
    [InlineData("qwen3")]
    [InlineData("mistral")]
    [InlineData("gpt2")]
    [InlineData("gpt_neox")]
    public void SynthWritesTheFixtureLayout(string folder)
    {
        string fixture = Shared.Path("fixtures", "arch", folder);
        using var tmp = new TempDir();
        SyntheticCheckpoint.Write(Path.Combine(fixture, "config.json"), tmp.Path, DType.F32, seed: 3);
        using var want = new SafetensorsFile(Path.Combine(fixture, "model.safetensors"));
        using var got = new SafetensorsFile(tmp.File("model.safetensors"));
        Assert.Equal(want.Tensors.Keys.Order(), got.Tensors.Keys.Order());
        foreach (var (name, info) in want.Tensors)
        {
            Assert.Equal(info.Shape, got.Info(name).Shape);
            Assert.Equal(DType.F32, got.Info(name).DType);
        }
        using var model = CausalLM.Load(tmp.Path);
        var (_, logits) = model.Forward(new TokenBatch([2, 5, 7, 11, 13], 1, 5));
        Assert.All(logits!.Data, v => Assert.True(float.IsFinite(v)));
        Assert.True(logits.Data.Max() - logits.Data.Min() > 1e-3, "logits are constant");
    }

    [SharedFact]
    public void SynthCliWritesBf16AndSeedsDiffer()
    {
        using var tmp = new TempDir();
        string cfg = Shared.Path("fixtures", "arch", "qwen3", "config.json");
        Assert.Equal(0, Finetrace.Cli.Program.Main(["model", "synth", "--config", cfg, "--out", tmp.File("a"), "--dtype", "bf16", "--seed", "1"]));
        Assert.Equal(0, Finetrace.Cli.Program.Main(["model", "synth", "--config", cfg, "--out", tmp.File("b"), "--dtype", "bf16", "--seed", "2"]));
        using var a = new SafetensorsFile(tmp.File("a/model.safetensors"));
        using var b = new SafetensorsFile(tmp.File("b/model.safetensors"));
        Assert.All(a.Tensors.Values, t => Assert.Equal(DType.BF16, t.DType));
        Assert.Equal("bfloat16", ModelConfig.Load(tmp.File("a")).DeclaredDtype);
        Assert.False(a.Bytes("model.embed_tokens.weight").SequenceEqual(b.Bytes("model.embed_tokens.weight")));
    }

    [SharedTheory]
    [InlineData("llama-bf16")]
    [InlineData("gemma2")]
    public void ActivationsCliReproducesExpected(string folder)
    {
        string dir = Shared.Path("fixtures", "arch", folder);
        using var tmp = new TempDir();
        using (var expected = new SafetensorsFile(Path.Combine(dir, "expected.safetensors")))
            SafetensorsWriter.Write(tmp.File("in.safetensors"), [TensorData.I64("input_ids", expected.ReadI64("input_ids"), expected.Info("input_ids").Shape)]);
        int rc = Finetrace.Cli.Program.Main(["activations", "--model", dir, "--input-ids", tmp.File("in.safetensors"), "--out", tmp.File("out.safetensors")]);
        Assert.Equal(0, rc);
        using var want = new SafetensorsFile(Path.Combine(dir, "expected.safetensors"));
        using var got = new SafetensorsFile(tmp.File("out.safetensors"));
        Assert.Equal(want.Tensors.Keys.Where(k => k != "input_ids").Order(), got.Tensors.Keys.Order());
        foreach (var name in got.Tensors.Keys)
        {
            Assert.Equal(DType.F32, got.Info(name).DType);
            Golden.AssertClose($"cli {folder} {name}", want.ReadF32(name).Span, got.ReadF32(name).Span,
                name == "logits" ? ArchParityTests.LogitTol : ArchParityTests.HiddenTol, log: log);
        }
    }

    [SharedTheory]
    [InlineData("gpt_neox")]
    [InlineData("qwen3")]
    public void ActivationsCliWritesBlockSites(string folder)
    {
        string dir = Shared.Path("fixtures", "arch", folder);
        using var tmp = new TempDir();
        using (var expected = new SafetensorsFile(Path.Combine(dir, "expected.safetensors")))
            SafetensorsWriter.Write(tmp.File("in.safetensors"), [TensorData.I64("input_ids", expected.ReadI64("input_ids"), expected.Info("input_ids").Shape)]);
        Assert.Equal(0, Finetrace.Cli.Program.Main(["activations", "--model", dir, "--input-ids", tmp.File("in.safetensors"), "--out", tmp.File("out.safetensors"), "--sites", "all"]));
        using var got = new SafetensorsFile(tmp.File("out.safetensors"));
        var c = ModelConfig.Load(dir);
        for (int l = 0; l < c.Layers; l++)
        {
            Assert.Equal([2, 12, c.Intermediate], got.Info(HookNames.MlpPost(l)).Shape);
            Assert.Equal(!c.ParallelResidual, got.Contains(HookNames.ResidMid(l)));
            // what the two branches add is the block's whole update of the residual
            var pre = got.ReadF32(HookNames.ResidPre(l)).Data;
            var post = got.ReadF32(HookNames.ResidPost(l)).Data;
            var a = got.ReadF32(HookNames.AttnOut(l)).Data;
            var m = got.ReadF32(HookNames.MlpOut(l)).Data;
            Golden.AssertClose($"{folder} layer {l} post − pre", post.Select((v, i) => v - pre[i]).ToArray(), a.Select((v, i) => v + m[i]).ToArray(), 1e-5, log: log);
        }
    }
}

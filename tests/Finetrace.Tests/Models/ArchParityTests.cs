using Finetrace.Models;
using Finetrace.Models.Safetensors;
using Finetrace.Tensors;
using Finetrace.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Finetrace.Tests.Models;

/// <summary>
/// Every fixture in shared/fixtures/arch reproduces every tensor of its expected.safetensors (float64 reference):
/// ≤ 2e-5 on hidden states and the final norm, ≤ 1e-5 on logits (fixtures/arch/README.md; do not loosen).
/// </summary>
public sealed class ArchParityTests(ITestOutputHelper log)
{
    public const double HiddenTol = 2e-5, LogitTol = 1e-5;

    public static TheoryData<string> Folders => new()
    {
        "gemma2", "gemma2-bf16", "llama", "llama-bf16", "qwen2", "qwen3", "mistral", "gpt2", "gpt_neox",
    };

    /// <summary>Runs the model on the expected input_ids and captures every hook the reference stores.</summary>
    internal static Dictionary<string, Tensor> RunAll(CausalLM model, TokenBatch batch)
    {
        var got = new Dictionary<string, Tensor>();
        var hooks = new HookSet().Capture(HookNames.ResidPre(0), got).Capture(HookNames.LnFinal, got).Capture(HookNames.Logits, got);
        for (int i = 0; i < model.Layers; i++) hooks.Capture(HookNames.ResidPost(i), got);
        model.Forward(batch, hooks);
        return got;
    }

    [SharedTheory]
    [MemberData(nameof(Folders))]
    public void ReproducesExpectedActivations(string folder)
    {
        string dir = Shared.Path("fixtures", "arch", folder);
        using var model = CausalLM.Load(dir);
        using var expected = new SafetensorsFile(Path.Combine(dir, "expected.safetensors"));
        var idsInfo = expected.Info("input_ids");
        var batch = TokenBatch.FromInt64(expected.ReadI64("input_ids"), idsInfo.Shape[0], idsInfo.Shape[1]);
        var got = RunAll(model, batch);

        int compared = 0;
        foreach (var name in expected.Tensors.Keys.Where(n => n != "input_ids").OrderBy(n => n, StringComparer.Ordinal))
        {
            var want = expected.ReadF32(name);
            Assert.True(got.ContainsKey(name), $"{folder}: no activation '{name}' produced");
            Assert.Equal(want.Shape, got[name].Shape);
            Golden.AssertClose($"{folder} {name}", want.Span, got[name].Span, name == "logits" ? LogitTol : HiddenTol, log: log);
            compared++;
        }
        Assert.Equal(model.Layers + 3, compared);
    }
}

using System.Text.Json;
using Finetrace.Cuda;
using Finetrace.Cuda.Checks;
using Finetrace.Models;
using Finetrace.Models.Safetensors;
using Finetrace.Tensors;
using Finetrace.Tests.Infrastructure;
using Finetrace.Tests.Models;
using Xunit.Abstractions;

namespace Finetrace.Tests.Cuda;

/// <summary>One CPU-accelerator context per products mode, shared by the tests of a class (loading the kernels is the
/// slow part).</summary>
public sealed class DeviceContextsFixture : IDisposable
{
    readonly Lazy<DeviceContext> _fp32 = new(() => DeviceContext.CreateCpu(GemmMode.Fp32));
    readonly Lazy<DeviceContext> _bf16 = new(() => DeviceContext.CreateCpu(GemmMode.Bf16));

    public DeviceContext For(GemmMode mode) => mode == GemmMode.Bf16 ? _bf16.Value : _fp32.Value;

    public void Dispose()
    {
        if (_fp32.IsValueCreated) _fp32.Value.Dispose();
        if (_bf16.IsValueCreated) _bf16.Value.Dispose();
    }
}

/// <summary>
/// <see cref="DeviceModel"/> on ILGPU's CPU accelerator against <see cref="CausalLM"/> through the reusable
/// <see cref="ForwardParity"/> check: residual stream at every layer, block-internal sites, ln_final, logits and the
/// returned tensors, on right- and left-padded batches of every fixture architecture, ≤ 1e-5 norm-relative with fp32
/// products and ≤ 1e-2 with bf16 products; hook edits flow on; a LoRA adapter is merged as on the CPU.
/// </summary>
public sealed class DeviceModelTests(DeviceContextsFixture fx, ITestOutputHelper log) : IClassFixture<DeviceContextsFixture>
{
    static readonly int[][] Rows =
    [
        [2, 196, 269, 188, 244, 292, 299, 45, 48, 43, 132, 226],
        [2, 297, 98, 256, 149, 123, 141],
        [2, 297, 98],
    ];

    internal static TokenBatch RightPadded() => TokenBatch.RightPadded(Rows, padId: 0);

    internal static TokenBatch LeftPadded()
    {
        int seq = Rows.Max(r => r.Length);
        var ids = new int[Rows.Length * seq];
        var mask = new byte[ids.Length];
        for (int b = 0; b < Rows.Length; b++)
            for (int t = 0; t < Rows[b].Length; t++)
            {
                int at = b * seq + seq - Rows[b].Length + t;
                ids[at] = Rows[b][t];
                mask[at] = 1;
            }
        return new TokenBatch(ids, Rows.Length, seq, mask);
    }

    void Report(ParityResult r)
    {
        foreach (var h in r.Hooks) log.WriteLine($"  {h.Name,-32} {h.NormRelative:E2}  (worst token {h.WorstToken:E2}, bound {h.Tolerance:G2})");
        log.WriteLine(r.ToString());
    }

    void AssertPasses(ParityResult r)
    {
        Report(r);
        Assert.True(r.Passed, r.ToString());
    }

    [SharedTheory]
    [MemberData(nameof(ArchParityTests.Folders), MemberType = typeof(ArchParityTests))]
    public void Fp32_forward_matches_CausalLM_on_a_right_padded_batch(string folder) =>
        AssertPasses(ForwardParity.Run(fx.For(GemmMode.Fp32), Shared.Path("fixtures", "arch", folder), RightPadded()));

    /// <summary>bf16-stored and f32-stored (rounded once on the device) checkpoints; separate and fused QKV; RoPE and
    /// learned positions; Gemma's soft-caps and post norms; Qwen3's q/k norms.</summary>
    [SharedTheory]
    [InlineData("llama-bf16")]
    [InlineData("gemma2")]
    [InlineData("qwen3")]
    [InlineData("gpt2")]
    [InlineData("gpt_neox")]
    public void Bf16_forward_matches_CausalLM_within_1e_2(string folder) =>
        AssertPasses(ForwardParity.Run(fx.For(GemmMode.Bf16), Shared.Path("fixtures", "arch", folder), RightPadded()));

    [SharedTheory]
    [InlineData("gemma2")]
    [InlineData("gpt2")]
    [InlineData("gpt_neox")]
    public void Fp32_forward_matches_CausalLM_on_a_left_padded_batch(string folder) =>
        AssertPasses(ForwardParity.Run(fx.For(GemmMode.Fp32), Shared.Path("fixtures", "arch", folder), LeftPadded()));

    [SharedFact]
    public void The_check_fails_on_different_weights()
    {
        // llama-bf16 is llama rounded to bf16: a device model of it differs from the CPU llama by about 1e-3, which the
        // fp32 check (1e-5) must catch.
        var ctx = fx.For(GemmMode.Fp32);
        using var cpu = CausalLM.Load(Shared.Path("fixtures", "arch", "llama"));
        using var dev = DeviceModel.Load(ctx, Shared.Path("fixtures", "arch", "llama-bf16"));
        var r = ForwardParity.Compare(ctx, cpu, dev, RightPadded());
        Report(r);
        Assert.False(r.Passed);
        Assert.True(r.MaxError > 1e-4, $"max error {r.MaxError:G3}");
    }

    [SharedFact]
    public void Hook_edits_flow_on_through_the_device()
    {
        const string folder = "llama";
        var ctx = fx.For(GemmMode.Fp32);
        string dir = Shared.Path("fixtures", "arch", folder);
        var c = ModelConfig.Load(dir);
        var rng = new Random(5);
        var steer = Enumerable.Range(0, c.Hidden).Select(_ => (float)(rng.NextDouble() - 0.5)).ToArray();
        var post = Enumerable.Range(0, c.Intermediate).Select(_ => (float)(rng.NextDouble() - 0.5)).ToArray();
        void Edits(HookSet h) => h.AddEverywhere(HookNames.ResidPost(0), steer, 4f)
            .AddEverywhere(HookNames.MlpPost(1), post, 2f)
            .AddEverywhere(HookNames.AttnOut(2), steer, -1f);
        var edited = ForwardParity.Run(ctx, dir, RightPadded(), edits: Edits);
        AssertPasses(edited);

        // the edits matter: without them the logits differ by far more than the tolerance
        using var cpu = CausalLM.Load(dir);
        var (_, plain) = cpu.Forward(RightPadded());
        var steered = new Dictionary<string, Tensor>();
        var hooks = new HookSet();
        Edits(hooks);
        hooks.Capture(HookNames.Logits, steered);
        cpu.Forward(RightPadded(), hooks);
        Assert.True(ForwardParity.Measure("logits", plain!, steered[HookNames.Logits], RightPadded()).NormRelative > 1e-2);

        // with CopyHookEditsBack off (read-only hooks, a harvest) the hooks still see the activations but edits stay on
        // the host: the logits are the unedited ones
        using var dev = DeviceModel.Load(ctx, dir);
        dev.CopyHookEditsBack = false;
        var seen = new Dictionary<string, Tensor>();
        var readOnly = new HookSet();
        Edits(readOnly);
        readOnly.Capture(HookNames.ResidPost(0), seen);
        var (_, devLogits) = dev.Forward(RightPadded(), readOnly);
        Assert.True(ForwardParity.Measure("logits", plain!, devLogits!, RightPadded()).NormRelative <= 1e-5);
        Assert.True(seen.ContainsKey(HookNames.ResidPost(0)));
    }

    [SharedFact]
    public void Stopping_early_returns_the_residual_of_that_block_and_no_logits()
    {
        const string folder = "gemma2";
        const int stop = 1;
        var ctx = fx.For(GemmMode.Fp32);
        string dir = Shared.Path("fixtures", "arch", folder);
        using var cpu = CausalLM.Load(dir);
        using var dev = DeviceModel.Load(ctx, dir);
        var batch = RightPadded();
        var fired = new List<string>();
        var hooks = new HookSet().On(HookNames.LnFinal, (_, _) => fired.Add("ln_final")).On(HookNames.Logits, (_, _) => fired.Add("logits"));
        var (want, wantLogits) = cpu.Forward(batch, stopAfterLayer: stop);
        var (got, gotLogits) = dev.Forward(batch, hooks, stopAfterLayer: stop);
        Assert.Null(wantLogits);
        Assert.Null(gotLogits);
        Assert.Empty(fired);
        var e = ForwardParity.Measure("residual", want, got, batch);
        log.WriteLine($"{folder} stop after {stop}: {e.NormRelative:E2}");
        Assert.True(e.NormRelative <= 1e-5, $"{e.NormRelative:G3}");

        // and the same model instance then runs a full forward of a different shape correctly (workspace reuse)
        var left = LeftPadded();
        var (_, full) = dev.Forward(left);
        var (_, cpuFull) = cpu.Forward(left);
        var f = ForwardParity.Measure("logits", cpuFull!, full!, left);
        Assert.True(f.NormRelative <= 1e-5, $"{f.NormRelative:G3}");
    }

    [SharedFact]
    public void Without_logits_to_host_the_forward_returns_the_residual_only()
    {
        var ctx = fx.For(GemmMode.Fp32);
        string dir = Shared.Path("fixtures", "arch", "qwen2");
        using var cpu = CausalLM.Load(dir);
        using var dev = DeviceModel.Load(ctx, dir);
        dev.LogitsToHost = false;
        var batch = RightPadded();
        var (want, _) = cpu.Forward(batch);
        var (got, logits) = dev.Forward(batch);
        Assert.Null(logits);
        Assert.Throws<InvalidOperationException>(() => dev.LogitsOnDevice);
        Assert.True(ForwardParity.Measure("residual", want, got, batch).NormRelative <= 1e-5);
        // a hook on the logits still gets them
        var captured = new Dictionary<string, Tensor>();
        dev.Forward(batch, new HookSet().Capture(HookNames.Logits, captured));
        var (_, cpuLogits) = cpu.Forward(batch);
        Assert.True(ForwardParity.Measure("logits", cpuLogits!, captured[HookNames.Logits], batch).NormRelative <= 1e-5);
    }

    [SharedFact]
    public void Stories260K_with_a_LoRA_adapter_matches_CausalLM()
    {
        string dir = Shared.Path("models", "stories260K");
        string adapter = Path.Combine(Path.GetTempPath(), "finetrace-devmodel-lora-" + Guid.NewGuid().ToString("N"));
        try
        {
            WriteAdapter(adapter, dir, ["model.layers.0.self_attn.q_proj", "model.layers.2.mlp.down_proj", "model.layers.4.self_attn.o_proj"]);
            var batch = TokenBatch.RightPadded([[1, 403, 407, 261, 378, 488, 280, 350], [1, 67, 301, 412]]);
            var r = ForwardParity.Run(fx.For(GemmMode.Fp32), dir, batch, adapterFolder: adapter);
            AssertPasses(r);

            // the adapter changes the forward well beyond the tolerance, so a device model that ignored it would fail
            using var plain = CausalLM.Load(dir);
            using var merged = CausalLM.Load(dir, adapter);
            var d = ForwardParity.Measure("logits", plain.Forward(batch).Logits!, merged.Forward(batch).Logits!, batch);
            log.WriteLine($"adapter effect on logits: {d.NormRelative:E2}");
            Assert.True(d.NormRelative > 1e-3);
        }
        finally
        {
            if (Directory.Exists(adapter)) Directory.Delete(adapter, true);
        }
    }

    /// <summary>A PEFT LoRA adapter (r 4, alpha 16) with random A and B for nn.Linear modules of the base checkpoint.</summary>
    static void WriteAdapter(string dir, string baseDir, string[] modules)
    {
        Directory.CreateDirectory(dir);
        using var baseFile = new SafetensorsFile(Path.Combine(baseDir, "model.safetensors"));
        var rng = new Random(3);
        var tensors = new List<TensorData>();
        const int r = 4;
        foreach (var module in modules)
        {
            var shape = baseFile.Info(module + ".weight").Shape;
            int outF = shape[0], inF = shape[1];
            var a = Enumerable.Range(0, r * inF).Select(_ => (float)(rng.NextDouble() - 0.5) * 0.4f).ToArray();
            var b = Enumerable.Range(0, outF * r).Select(_ => (float)(rng.NextDouble() - 0.5) * 0.4f).ToArray();
            tensors.Add(TensorData.F32($"base_model.model.{module}.lora_A.weight", a, r, inF));
            tensors.Add(TensorData.F32($"base_model.model.{module}.lora_B.weight", b, outF, r));
        }
        SafetensorsWriter.Write(Path.Combine(dir, "adapter_model.safetensors"), tensors, new Dictionary<string, string> { ["format"] = "pt" });
        var cfg = new Dictionary<string, object>
        {
            ["peft_type"] = "LORA", ["task_type"] = "CAUSAL_LM", ["r"] = r, ["lora_alpha"] = 16, ["lora_dropout"] = 0.0,
            ["use_rslora"] = false, ["fan_in_fan_out"] = false, ["bias"] = "none", ["use_dora"] = false,
            ["target_modules"] = modules.Select(m => m.Split('.')[^1]).Distinct().ToArray(),
        };
        File.WriteAllText(Path.Combine(dir, "adapter_config.json"), JsonSerializer.Serialize(cfg));
    }

    [SharedFact]
    public void Bench_counts_flops_from_the_models_shapes()
    {
        var ctx = fx.For(GemmMode.Fp32);
        string dir = Shared.Path("fixtures", "arch", "llama");
        var r = DeviceForwardBench.Run(ctx, dir, batch: 2, context: 8, forwards: 2, warmup: 0);
        using var cpu = CausalLM.Load(dir);
        var c = cpu.Config;
        Assert.Equal(cpu.MatmulParameters, r.MatmulParameters);
        Assert.Equal(2.0 * cpu.MatmulParameters * 16, r.MatmulFlops);
        Assert.Equal(4.0 * 2 * 8 * 8 * c.Heads * c.HeadDim * c.Layers, r.AttentionFlops);
        Assert.Equal(2, r.AllSeconds.Count);
        Assert.True(r.TokensPerSecond > 0 && r.Tflops > r.MatmulTflops && r.MatmulTflops > 0);
        Assert.Equal(16 / r.Seconds, r.TokensPerSecond, 6);
    }
}

/// <summary>The same parity check on a CUDA GPU (skipped without one): fp32, tf32 and bf16 products.</summary>
public sealed class DeviceModelCudaTests(ITestOutputHelper log)
{
    public static TheoryData<string, GemmMode> Cases()
    {
        var data = new TheoryData<string, GemmMode>();
        foreach (var f in new[] { "gemma2", "gemma2-bf16", "llama", "llama-bf16", "qwen2", "qwen3", "mistral", "gpt2", "gpt_neox" })
            foreach (var m in new[] { GemmMode.Fp32, GemmMode.Tf32, GemmMode.Bf16 })
                data.Add(f, m);
        return data;
    }

    [CudaTheory]
    [MemberData(nameof(Cases))]
    public void Gpu_forward_matches_CausalLM(string folder, GemmMode mode)
    {
        using var ctx = DeviceContext.CreateCuda(mode);
        var r = ForwardParity.Run(ctx, Shared.Path("fixtures", "arch", folder), DeviceModelTests.RightPadded());
        foreach (var h in r.Hooks) log.WriteLine($"  {h.Name,-32} {h.NormRelative:E2}  (worst token {h.WorstToken:E2}, bound {h.Tolerance:G2})");
        log.WriteLine(r.ToString());
        Assert.True(r.Passed, r.ToString());
    }
}

using System.Text.Json.Nodes;
using Finetrace.Models;
using Finetrace.Models.Safetensors;
using Finetrace.Tensors;
using Finetrace.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Finetrace.Tests.Models;

/// <summary>Config shapes (transformers 4 and 5), RoPE rules, checkpoint layouts (prefixes, shards) and clear load errors.</summary>
public sealed class LoadingTests(ITestOutputHelper log)
{
    static string Fixture(string name) => Shared.Path("fixtures", "arch", name);

    /// <summary>A copy of a fixture folder with its config edited and its tensors optionally rewritten.</summary>
    static string CopyFixture(TempDir tmp, string name, Action<JsonObject>? editConfig = null,
        Func<List<TensorData>, List<TensorData>>? editTensors = null)
    {
        string dir = tmp.File(name + "-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(dir);
        var cfg = JsonNode.Parse(File.ReadAllText(Path.Combine(Fixture(name), "config.json")))!.AsObject();
        editConfig?.Invoke(cfg);
        File.WriteAllText(Path.Combine(dir, "config.json"), cfg.ToJsonString());
        using var f = new SafetensorsFile(Path.Combine(Fixture(name), "model.safetensors"));
        var tensors = f.Tensors.Values.Select(t => new TensorData(t.Name, t.DType, t.Shape, f.Bytes(t.Name).ToArray())).ToList();
        if (editTensors is not null) tensors = editTensors(tensors);
        SafetensorsWriter.Write(Path.Combine(dir, "model.safetensors"), tensors);
        return dir;
    }

    static Tensor ExpectedLogits(string name)
    {
        using var e = new SafetensorsFile(Path.Combine(Fixture(name), "expected.safetensors"));
        return e.ReadF32("logits");
    }

    static Tensor Logits(string dir)
    {
        using var e = new SafetensorsFile(Path.Combine(Fixture("llama"), "expected.safetensors"));
        var shape = e.Info("input_ids").Shape;
        using var model = CausalLM.Load(dir);
        return model.Forward(TokenBatch.FromInt64(e.ReadI64("input_ids"), shape[0], shape[1])).Logits!;
    }

    [SharedFact]
    public void Llama3InverseFrequenciesMatchTheFixtureReadme()
    {
        var c = ModelConfig.Load(Fixture("llama"));
        Assert.Equal(RopeType.Llama3, c.Rope);
        float[] want = [1f, 0.244384587f, 0.0130422562f, 0.00395284733f, 0.00124999997f, 0.000395284733f, 0.000125000006f, 3.95284733e-05f];
        var got = Rope.InverseFrequencies(c);
        for (int i = 0; i < want.Length; i++) Assert.True(Math.Abs(got[i] - want[i]) <= 1e-7 * want[i], $"inv_freq[{i}] = {got[i]:G9}, want {want[i]:G9}");
    }

    [Fact]
    public void LinearScalingDividesFrequencies()
    {
        string json = """{"model_type":"llama","hidden_size":64,"num_hidden_layers":1,"num_attention_heads":4,"intermediate_size":8,"vocab_size":10,"rope_theta":10000.0,"rope_scaling":{"type":"linear","factor":4.0}}""";
        var scaled = Rope.InverseFrequencies(ModelConfig.Parse(json));
        var plain = Rope.InverseFrequencies(ModelConfig.Parse(json.Replace("\"rope_scaling\":{\"type\":\"linear\",\"factor\":4.0}", "\"rope_scaling\":null")));
        for (int i = 0; i < plain.Length; i++) Assert.Equal(plain[i] / 4f, scaled[i]);
    }

    [Theory]
    [InlineData("""{"model_type":"llama","hidden_size":64,"num_hidden_layers":1,"num_attention_heads":4,"intermediate_size":8,"vocab_size":10,"rope_scaling":{"rope_type":"yarn","factor":4.0}}""", "rope_type 'yarn'")]
    [InlineData("""{"model_type":"mamba","hidden_size":64}""", "model_type")]
    [InlineData("""{"model_type":"llama","hidden_size":64,"num_hidden_layers":1,"num_attention_heads":4,"intermediate_size":8,"vocab_size":10,"hidden_act":"relu2"}""", "hidden_act")]
    [InlineData("""{"model_type":"gpt2","n_embd":64,"n_layer":1,"n_head":4,"vocab_size":10,"scale_attn_by_inverse_layer_idx":true}""", "scale_attn_by_inverse_layer_idx")]
    [InlineData("""{"model_type":"llama","num_hidden_layers":1,"num_attention_heads":4,"intermediate_size":8,"vocab_size":10}""", "hidden_size")]
    public void ConfigErrorsNameTheField(string json, string mention)
    {
        var e = Assert.Throws<InvalidDataException>(() => ModelConfig.Parse(json, "test/config.json"));
        log.WriteLine(e.Message);
        Assert.Contains(mention, e.Message);
        Assert.Contains("test/config.json", e.Message);
    }

    [Fact]
    public void AbsentKeysTakeTheTransformersDefaultsAndNullDisables()
    {
        const string gemma = """{"model_type":"gemma2","hidden_size":64,"num_hidden_layers":2,"num_attention_heads":4,"intermediate_size":8,"vocab_size":10""";
        var absent = ModelConfig.Parse(gemma + "}");
        Assert.Equal((50f, 30f, 4096, 256), (absent.AttnSoftcap!.Value, absent.FinalSoftcap!.Value, absent.SlidingWindow, absent.HeadDim));
        Assert.Equal((float)Math.Pow(256, -0.5), absent.AttnScale);
        Assert.Equal([true, false], absent.SlidingLayers);
        var nulls = ModelConfig.Parse(gemma + ""","attn_logit_softcapping":null,"final_logit_softcapping":null,"sliding_window":null}""");
        Assert.Null(nulls.AttnSoftcap);
        Assert.Null(nulls.FinalSoftcap);
        Assert.Equal([false, false], nulls.SlidingLayers);

        var neox = ModelConfig.Parse("""{"model_type":"gpt_neox","hidden_size":64,"num_hidden_layers":1,"num_attention_heads":4,"vocab_size":10}""");
        Assert.Equal((4, true, HiddenAct.GeluErf, false), (neox.RotaryDim, neox.ParallelResidual, neox.Act, neox.TiedEmbeddings));
        var qwen = ModelConfig.Parse("""{"model_type":"qwen2","hidden_size":64,"num_hidden_layers":4,"num_attention_heads":4,"intermediate_size":8,"vocab_size":10,"sliding_window":2,"use_sliding_window":true,"max_window_layers":2}""");
        Assert.Equal([false, false, true, true], qwen.SlidingLayers);
    }

    [SharedFact]
    public void TransformersV5FieldShapesGiveTheSameModel()
    {
        using var tmp = new TempDir();
        string dir = CopyFixture(tmp, "llama", cfg =>
        {
            var scaling = cfg["rope_scaling"]!.AsObject().DeepClone().AsObject();
            scaling["rope_theta"] = cfg["rope_theta"]!.DeepClone();
            cfg.Remove("rope_scaling");
            cfg.Remove("rope_theta");
            cfg["rope_parameters"] = scaling;
            cfg["dtype"] = cfg["torch_dtype"]!.DeepClone();
            cfg.Remove("torch_dtype");
        });
        var v4 = ModelConfig.Load(Fixture("llama"));
        var v5 = ModelConfig.Load(dir);
        Assert.Equal(Rope.InverseFrequencies(v4), Rope.InverseFrequencies(v5));
        Assert.Equal("float32", v5.DeclaredDtype);
        Golden.AssertClose("v5 config logits", ExpectedLogits("llama").Span, Logits(dir).Span, ArchParityTests.LogitTol, log: log);
    }

    [SharedFact]
    public void GemmaLayerTypesOverrideTheEvenLayerDefault()
    {
        using var tmp = new TempDir();
        string same = CopyFixture(tmp, "gemma2", cfg => cfg["layer_types"] = new JsonArray("sliding_attention", "full_attention", "sliding_attention"));
        string allFull = tmp.File("full");
        Directory.Move(CopyFixture(tmp, "gemma2", cfg => cfg["layer_types"] = new JsonArray("full_attention", "full_attention", "full_attention")), allFull);
        Assert.Equal([true, false, true], ModelConfig.Load(same).SlidingLayers);
        Assert.Equal([false, false, false], ModelConfig.Load(allFull).SlidingLayers);
        var want = ExpectedLogits("gemma2");
        Golden.AssertClose("explicit default layer_types", want.Span, Logits(same).Span, ArchParityTests.LogitTol);
        Assert.True(Golden.MaxAbsDiff(want.Span, Logits(allFull).Span, out _) > 1e-2, "layer_types was ignored");
    }

    [SharedFact]
    public void Gpt2NamesWithoutPrefixAndShardedFilesLoad()
    {
        using var tmp = new TempDir();
        // hub-style GPT-2 names (no "transformer." prefix) plus ignorable buffers
        string hub = CopyFixture(tmp, "gpt2", editTensors: ts =>
        {
            var r = ts.Select(t => t with { Name = t.Name.StartsWith("transformer.", StringComparison.Ordinal) ? t.Name["transformer.".Length..] : t.Name }).ToList();
            r.Add(TensorData.F32("h.0.attn.bias", new float[4], 1, 1, 2, 2));
            r.Add(TensorData.F32("h.0.attn.masked_bias", new float[1], 1));
            return r;
        });
        Golden.AssertClose("gpt2 hub names", ExpectedLogits("gpt2").Span, Logits(hub).Span, ArchParityTests.LogitTol);

        // two shards plus model.safetensors.index.json
        string sharded = tmp.File("sharded");
        Directory.CreateDirectory(sharded);
        File.Copy(Path.Combine(Fixture("llama"), "config.json"), Path.Combine(sharded, "config.json"));
        using (var f = new SafetensorsFile(Path.Combine(Fixture("llama"), "model.safetensors")))
        {
            var names = f.Tensors.Keys.OrderBy(n => n, StringComparer.Ordinal).ToList();
            var map = new JsonObject();
            for (int s = 0; s < 2; s++)
            {
                string shard = $"model-0000{s + 1}-of-00002.safetensors";
                var part = names.Where((_, i) => i % 2 == s).ToList();
                SafetensorsWriter.Write(Path.Combine(sharded, shard), part.Select(n => new TensorData(n, f.Info(n).DType, f.Info(n).Shape, f.Bytes(n).ToArray())));
                foreach (var n in part) map[n] = shard;
            }
            File.WriteAllText(Path.Combine(sharded, "model.safetensors.index.json"), new JsonObject { ["metadata"] = new JsonObject(), ["weight_map"] = map }.ToJsonString());
        }
        Golden.AssertClose("sharded llama", ExpectedLogits("llama").Span, Logits(sharded).Span, ArchParityTests.LogitTol);
    }

    [SharedFact]
    public void F16WeightsWidenExactly()
    {
        // the same f16-rounded values stored as F16 and as F32 give identical logits
        using var tmp = new TempDir();
        static float Round(float v) => (float)(Half)v;
        string f16 = CopyFixture(tmp, "qwen3", editTensors: ts => ts.Select(t =>
        {
            var f = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(t.Bytes);
            var h = new Half[f.Length];
            for (int i = 0; i < f.Length; i++) h[i] = (Half)f[i];
            return new TensorData(t.Name, DType.F16, t.Shape, System.Runtime.InteropServices.MemoryMarshal.AsBytes(h.AsSpan()).ToArray());
        }).ToList());
        string f32 = CopyFixture(tmp, "qwen3", editTensors: ts => ts.Select(t =>
        {
            var f = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(t.Bytes).ToArray();
            for (int i = 0; i < f.Length; i++) f[i] = Round(f[i]);
            return TensorData.F32(t.Name, f, t.Shape);
        }).ToList());
        var a = Logits(f16);
        Golden.AssertClose("f16 vs f16-rounded f32", Logits(f32).Span, a.Span, atol: 0);
        Assert.True(Golden.MaxAbsDiff(ExpectedLogits("qwen3").Span, a.Span, out _) > 1e-5, "f16 rounding should move the logits");
    }

    [SharedFact]
    public void MissingMisshapenAndUnexpectedTensorsAreClearErrors()
    {
        using var tmp = new TempDir();
        const string victim = "model.layers.1.self_attn.k_proj.weight";

        string missing = CopyFixture(tmp, "llama", editTensors: ts => ts.Where(t => t.Name != victim).ToList());
        var e1 = Assert.Throws<InvalidDataException>(() => CausalLM.Load(missing));
        Assert.Contains(victim, e1.Message);
        Assert.Contains("missing", e1.Message);

        string wrong = tmp.File("wrong");
        Directory.Move(CopyFixture(tmp, "llama", editTensors: ts => ts.Select(t => t.Name == victim ? t with { Shape = [t.Shape[1], t.Shape[0]] } : t).ToList()), wrong);
        var e2 = Assert.Throws<InvalidDataException>(() => CausalLM.Load(wrong));
        Assert.Contains(victim, e2.Message);
        Assert.Contains("model.safetensors", e2.Message);
        Assert.Contains("[64, 32]", e2.Message);

        string extra = tmp.File("extra");
        Directory.Move(CopyFixture(tmp, "llama", editTensors: ts => [.. ts, TensorData.F32("model.layers.0.self_attn.q_proj.bias", new float[64], 64)]), extra);
        var e3 = Assert.Throws<InvalidDataException>(() => CausalLM.Load(extra));
        Assert.Contains("q_proj.bias", e3.Message);
        log.WriteLine(e1.Message + "\n" + e2.Message + "\n" + e3.Message);
    }
}

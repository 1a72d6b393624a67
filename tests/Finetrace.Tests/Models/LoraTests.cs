using System.Text.Json;
using Finetrace.Models;
using Finetrace.Models.Safetensors;
using Finetrace.Tensors;
using Finetrace.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Finetrace.Tests.Models;

/// <summary>A PEFT adapter merged at load gives the same logits as a checkpoint with the merged weights written out
/// (merged here independently, in double precision, then rounded to the storage dtype).</summary>
public sealed class LoraTests(ITestOutputHelper log)
{
    sealed record Case(string Folder, string[] Modules, bool FanInFanOut, bool RsLora);

    static readonly Dictionary<string, Case> Cases = new()
    {
        ["llama"] = new("llama", ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.v_proj", "model.layers.2.mlp.down_proj"], false, false),
        ["llama-bf16"] = new("llama-bf16", ["model.layers.0.self_attn.q_proj", "model.layers.2.mlp.gate_proj"], false, true),
        ["gpt2"] = new("gpt2", ["transformer.h.0.attn.c_attn", "transformer.h.2.mlp.c_fc"], true, false),
        ["qwen2"] = new("qwen2", ["model.layers.1.self_attn.k_proj", "model.embed_tokens"], false, false),
    };

    public static TheoryData<string> CaseNames => new(Cases.Keys);

    const int R = 4;
    const float Alpha = 16f;

    /// <summary>Writes adapter_config.json + adapter_model.safetensors with random A, B for the modules.</summary>
    static void WriteAdapter(string dir, Case c, SafetensorsFile baseFile, Dictionary<string, object>? extraConfig = null)
    {
        Directory.CreateDirectory(dir);
        var rng = new Random(11);
        var tensors = new List<TensorData>();
        foreach (var module in c.Modules)
        {
            var w = baseFile.Info(module + ".weight");
            bool emb = module.EndsWith("embed_tokens", StringComparison.Ordinal);
            bool t = emb || c.FanInFanOut;
            int outF = t ? w.Shape[1] : w.Shape[0], inF = t ? w.Shape[0] : w.Shape[1];
            var a = Enumerable.Range(0, R * inF).Select(_ => (float)(rng.NextDouble() - 0.5) * 0.2f).ToArray();
            var b = Enumerable.Range(0, outF * R).Select(_ => (float)(rng.NextDouble() - 0.5) * 0.2f).ToArray();
            string ka = emb ? "lora_embedding_A" : "lora_A.weight", kb = emb ? "lora_embedding_B" : "lora_B.weight";
            tensors.Add(TensorData.F32($"base_model.model.{module}.{ka}", a, R, inF));
            tensors.Add(TensorData.F32($"base_model.model.{module}.{kb}", b, outF, R));
        }
        SafetensorsWriter.Write(Path.Combine(dir, "adapter_model.safetensors"), tensors, new Dictionary<string, string> { ["format"] = "pt" });
        var cfg = new Dictionary<string, object>
        {
            ["peft_type"] = "LORA", ["task_type"] = "CAUSAL_LM", ["r"] = R, ["lora_alpha"] = Alpha, ["lora_dropout"] = 0.0,
            ["use_rslora"] = c.RsLora, ["fan_in_fan_out"] = c.FanInFanOut, ["bias"] = "none", ["use_dora"] = false,
            ["target_modules"] = c.Modules.Select(m => m.Split('.')[^1]).Distinct().ToArray(),
        };
        foreach (var (k, v) in extraConfig ?? new()) cfg[k] = v;
        File.WriteAllText(Path.Combine(dir, "adapter_config.json"), JsonSerializer.Serialize(cfg));
    }

    /// <summary>Base checkpoint with every adapted weight replaced by W + s·(B·A) (transposed for Conv1D/embedding).</summary>
    static void WriteMergedCheckpoint(string dir, string baseDir, string adapterDir, Case c)
    {
        Directory.CreateDirectory(dir);
        File.Copy(Path.Combine(baseDir, "config.json"), Path.Combine(dir, "config.json"));
        using var baseFile = new SafetensorsFile(Path.Combine(baseDir, "model.safetensors"));
        using var adapter = new SafetensorsFile(Path.Combine(adapterDir, "adapter_model.safetensors"));
        float s = c.RsLora ? Alpha / MathF.Sqrt(R) : Alpha / R;
        var tensors = new List<TensorData>();
        foreach (var (name, info) in baseFile.Tensors)
        {
            var w = baseFile.ReadF32(name);
            string module = name[..^".weight".Length];
            if (c.Modules.Contains(module))
            {
                bool emb = module.EndsWith("embed_tokens", StringComparison.Ordinal);
                var a = adapter.ReadF32($"base_model.model.{module}.{(emb ? "lora_embedding_A" : "lora_A.weight")}");
                var b = adapter.ReadF32($"base_model.model.{module}.{(emb ? "lora_embedding_B" : "lora_B.weight")}");
                int outF = b.Shape[0], inF = a.Shape[1];
                bool t = emb || c.FanInFanOut;
                for (int o = 0; o < outF; o++)
                    for (int i = 0; i < inF; i++)
                    {
                        double d = 0;
                        for (int k = 0; k < R; k++) d += (double)b.Data[o * R + k] * a.Data[k * inF + i];
                        int at = t ? i * outF + o : o * inF + i;
                        w.Data[at] = (float)(w.Data[at] + s * d);
                    }
            }
            tensors.Add(info.DType == DType.BF16 ? TensorData.BF16(name, w.Span, w.Shape) : TensorData.F32(name, w));
        }
        SafetensorsWriter.Write(Path.Combine(dir, "model.safetensors"), tensors, new Dictionary<string, string> { ["format"] = "pt" });
    }

    [SharedTheory]
    [MemberData(nameof(CaseNames))]
    public void MergedAtLoadEqualsMergedCheckpoint(string name)
    {
        var c = Cases[name];
        string baseDir = Shared.Path("fixtures", "arch", c.Folder);
        using var tmp = new TempDir();
        using (var baseFile = new SafetensorsFile(Path.Combine(baseDir, "model.safetensors")))
            WriteAdapter(tmp.File("adapter"), c, baseFile);
        WriteMergedCheckpoint(tmp.File("merged"), baseDir, tmp.File("adapter"), c);

        var batch = TokenBatch.RightPadded([[2, 196, 269, 188, 244, 292, 299, 45], [2, 297, 98, 256]]);
        if (name == "qwen2")
        {
            // a named adapter saved by PEFT in a sub-folder is found from its parent
            Directory.CreateDirectory(tmp.File("named"));
            Directory.Move(tmp.File("adapter"), tmp.File("named/my_adapter"));
            Directory.Move(tmp.File("named"), tmp.File("adapter"));
        }
        using var withAdapter = CausalLM.Load(baseDir, tmp.File("adapter"));
        using var merged = CausalLM.Load(tmp.File("merged"));
        using var plain = CausalLM.Load(baseDir);
        var (_, la) = withAdapter.Forward(batch);
        var (_, lm) = merged.Forward(batch);
        var (_, lp) = plain.Forward(batch);
        Golden.AssertClose($"{name}: base+adapter vs merged checkpoint", lm!.Span, la!.Span, atol: 1e-5, log: log);
        double change = Golden.MaxAbsDiff(lp!.Span, la.Span, out _);
        log.WriteLine($"{name}: the adapter moves the logits by {change:E2}");
        Assert.True(change > 1e-3, "the adapter had no effect");
    }

    [SharedFact]
    public void RefusesDoraUnknownKeysAndShapeMismatch()
    {
        var c = Cases["llama"];
        string baseDir = Shared.Path("fixtures", "arch", c.Folder);
        using var tmp = new TempDir();
        using var baseFile = new SafetensorsFile(Path.Combine(baseDir, "model.safetensors"));

        WriteAdapter(tmp.File("dora"), c, baseFile, new() { ["use_dora"] = true });
        var e1 = Assert.Throws<InvalidDataException>(() => CausalLM.Load(baseDir, tmp.File("dora")));
        Assert.Contains("use_dora", e1.Message);

        WriteAdapter(tmp.File("rank"), c, baseFile, new() { ["r"] = 8 });
        var e2 = Assert.Throws<InvalidDataException>(() => CausalLM.Load(baseDir, tmp.File("rank")));
        Assert.Contains("do not fit", e2.Message);

        WriteAdapter(tmp.File("target"), c with { Modules = ["model.layers.0.self_attn.q_proj"] }, baseFile, new() { ["target_modules"] = new[] { "v_proj" } });
        var e3 = Assert.Throws<InvalidDataException>(() => CausalLM.Load(baseDir, tmp.File("target")));
        Assert.Contains("target_modules", e3.Message);

        WriteAdapter(tmp.File("nomodule"), c with { Modules = ["model.layers.0.self_attn.q_proj"] }, baseFile);
        var extra = new SafetensorsFile(tmp.File("nomodule/adapter_model.safetensors"));
        var all = extra.Tensors.Keys.Select(k => new TensorData(k, DType.F32, extra.Info(k).Shape, extra.Bytes(k).ToArray())).ToList();
        extra.Dispose();
        all.Add(TensorData.F32("base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector", new float[96], 96));
        SafetensorsWriter.Write(tmp.File("nomodule/adapter_model.safetensors"), all);
        var e4 = Assert.Throws<InvalidDataException>(() => CausalLM.Load(baseDir, tmp.File("nomodule")));
        Assert.Contains("lora_magnitude_vector", e4.Message);
    }
}

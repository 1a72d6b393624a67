using System.Text.Json.Nodes;
using Finetrace.Models;
using Finetrace.Models.Safetensors;
using Finetrace.Tensors;
using Finetrace.Tests.Infrastructure;

namespace Finetrace.Tests.Diffing;

/// <summary>A tiny random llama ("base", via SyntheticCheckpoint) and a copy with planted weight edits ("ft"), for the
/// readers' tests. Hidden 16, 2 layers, vocabulary 40, untied embeddings.</summary>
sealed class SyntheticPair : IDisposable
{
    public const int Hidden = 16, Vocab = 40, Layers = 2;
    readonly TempDir _tmp = new();
    public string Base => _tmp.File("base");
    public string Ft => _tmp.File("ft");
    public string File(string name) => _tmp.File(name);

    /// <param name="edit">changes made to the fine-tune only</param>
    /// <param name="editBoth">changes made to both models (before <paramref name="edit"/>)</param>
    public SyntheticPair(Action<Dictionary<string, float[]>>? edit = null, bool tied = false, int seed = 5, Action<Dictionary<string, float[]>>? editBoth = null)
    {
        var cfg = new JsonObject
        {
            ["architectures"] = new JsonArray("LlamaForCausalLM"), ["model_type"] = "llama",
            ["hidden_size"] = Hidden, ["intermediate_size"] = 32, ["num_hidden_layers"] = Layers,
            ["num_attention_heads"] = 4, ["num_key_value_heads"] = 2, ["head_dim"] = 4, ["vocab_size"] = Vocab,
            ["max_position_embeddings"] = 128, ["rms_norm_eps"] = 1e-5, ["rope_theta"] = 10000.0, ["hidden_act"] = "silu",
            ["tie_word_embeddings"] = tied, ["bos_token_id"] = 1, ["eos_token_id"] = 2, ["torch_dtype"] = "float32",
        };
        System.IO.File.WriteAllText(_tmp.File("config.json"), cfg.ToJsonString());
        SyntheticCheckpoint.Write(_tmp.File("config.json"), Base, DType.F32, seed);
        // a synthetic model is nearly uniform (weights 0.02): scale the unembedding so distributions are peaked
        var weights = Read(Base);
        string unembed = tied ? "model.embed_tokens.weight" : "lm_head.weight";
        for (int i = 0; i < weights[unembed].Length; i++) weights[unembed][i] *= 150f;
        editBoth?.Invoke(weights);
        Write(Base, weights);
        Directory.CreateDirectory(Ft);
        System.IO.File.Copy(Path.Combine(Base, "config.json"), Path.Combine(Ft, "config.json"));
        edit?.Invoke(weights);
        Write(Ft, weights);
    }

    public static Dictionary<string, float[]> Read(string dir)
    {
        using var f = new SafetensorsFile(Path.Combine(dir, "model.safetensors"));
        return f.Tensors.Keys.ToDictionary(k => k, k => f.ReadF32(k).Data, StringComparer.Ordinal);
    }

    public static int[] Shape(string dir, string name)
    {
        using var f = new SafetensorsFile(Path.Combine(dir, "model.safetensors"));
        return f.Info(name).Shape;
    }

    void Write(string dir, Dictionary<string, float[]> weights)
    {
        Dictionary<string, int[]> shapes;
        using (var f = new SafetensorsFile(Path.Combine(Base, "model.safetensors")))
            shapes = f.Tensors.ToDictionary(kv => kv.Key, kv => kv.Value.Shape);
        SafetensorsWriter.Write(Path.Combine(dir, "model.safetensors"),
            weights.Select(kv => TensorData.F32(kv.Key, kv.Value, shapes[kv.Key])).ToList(), new Dictionary<string, string> { ["format"] = "pt" });
    }

    /// <summary>A unit vector of length n with a fixed pseudo-random direction.</summary>
    public static float[] Unit(int n, int seed)
    {
        var rng = new Random(seed);
        var v = Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() - 0.5)).ToArray();
        float norm = MathF.Sqrt(v.Sum(x => x * x));
        return v.Select(x => x / norm).ToArray();
    }

    public void Dispose() => _tmp.Dispose();
}

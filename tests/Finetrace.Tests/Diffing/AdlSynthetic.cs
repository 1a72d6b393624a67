using System.Text.Json;
using Finetrace.Diffing.Adl;
using Finetrace.Models;
using Finetrace.Models.Safetensors;
using Finetrace.Tensors;
using Finetrace.Tests.Infrastructure;
using Finetrace.Text.Chat;
using Finetrace.Text.Datasets;

namespace Finetrace.Tests.Diffing;

/// <summary>
/// A planted fine-tune for ADL tests: a small random llama (mlp_bias on, untied head) and a copy whose last block's
/// down_proj bias carries an extra vector u, so h_ft = h_base + u after that block at every position, exactly. u is the
/// sum of the unit unembedding rows of three tokens, so it promotes exactly those tokens. Text: one id per letter
/// (BOS = 1, 'a' = 2 …); chats: BOS, user letters, three template ids, assistant letters.
/// </summary>
sealed class AdlSynthetic : IDisposable
{
    public const int Vocab = 64, Hidden = 64, Layers = 2, Planted = 1;
    public const int Bos = 1, Eos = 0;
    public static readonly int[] Template = [60, 61, 62];
    public static readonly int[] Promoted = [40, 41, 42];
    public readonly TempDir Dir = new();
    public string BaseDir => Dir.File("base");
    public string FtDir => Dir.File("ft");
    public readonly float[] U;

    public AdlSynthetic()
    {
        Directory.CreateDirectory(BaseDir);
        Directory.CreateDirectory(FtDir);
        string config = Dir.File("config.json");
        File.WriteAllText(config, JsonSerializer.Serialize(new Dictionary<string, object?>
        {
            ["architectures"] = new[] { "LlamaForCausalLM" }, ["model_type"] = "llama", ["hidden_size"] = Hidden, ["intermediate_size"] = 128,
            ["num_hidden_layers"] = Layers, ["num_attention_heads"] = 4, ["num_key_value_heads"] = 2, ["head_dim"] = 16, ["vocab_size"] = Vocab,
            ["max_position_embeddings"] = 256, ["rms_norm_eps"] = 1e-5, ["rope_theta"] = 10000.0, ["hidden_act"] = "silu",
            ["tie_word_embeddings"] = false, ["bos_token_id"] = Bos, ["eos_token_id"] = Eos, ["mlp_bias"] = true, ["attention_bias"] = false,
        }));
        SyntheticCheckpoint.Write(config, BaseDir, DType.F32, seed: 11);
        File.Copy(Path.Combine(BaseDir, "config.json"), Path.Combine(FtDir, "config.json"));
        using var f = new SafetensorsFile(Path.Combine(BaseDir, "model.safetensors"));
        var lmHead = f.ReadF32("lm_head.weight").Data;
        U = new float[Hidden];
        foreach (int t in Promoted)
        {
            var row = lmHead.AsSpan(t * Hidden, Hidden);
            float n = System.Numerics.Tensors.TensorPrimitives.Norm(row);
            for (int j = 0; j < Hidden; j++) U[j] += row[j] / n;
        }
        string bias = $"model.layers.{Planted}.mlp.down_proj.bias";
        var tensors = f.Tensors.Keys.Select(name =>
        {
            var t = f.ReadF32(name);
            var data = t.Data.ToArray();
            if (name == bias) for (int j = 0; j < Hidden; j++) data[j] += U[j];
            return TensorData.F32(name, data, t.Shape);
        }).ToList();
        SafetensorsWriter.Write(Path.Combine(FtDir, "model.safetensors"), tensors, new Dictionary<string, string> { ["format"] = "pt" });
    }

    public static int[] Encode(string letters) => [Bos, .. letters.Select(c => 2 + (c - 'a'))];
    public static string Decode(int[] ids) => string.Concat(ids.Select(i => i == Bos ? "<s>" : i is >= 2 and < 28 ? ((char)('a' + i - 2)).ToString() : $"<{i}>"));

    /// <summary>Letter-per-token encoder for text and chats.</summary>
    public sealed class Encoder : ISampleEncoder
    {
        public EncodedSample EncodeText(int source, long index, string text) =>
            new(source, index, Encode(new string(text.Where(char.IsAsciiLetterLower).ToArray())), null, 1);

        public EncodedSample EncodeChat(int source, long index, IReadOnlyList<ChatMessage> messages)
        {
            var ids = new List<int> { Bos };
            var roles = new List<TokenRole> { TokenRole.Bos };
            foreach (var m in messages)
            {
                if (m.Role == "assistant") { ids.AddRange(Template); roles.AddRange(Template.Select(_ => TokenRole.Template)); }
                foreach (char c in m.Content.Where(char.IsAsciiLetterLower))
                {
                    ids.Add(2 + (c - 'a'));
                    roles.Add(m.Role == "assistant" ? TokenRole.Assistant : TokenRole.User);
                }
            }
            return new EncodedSample(source, index, ids.ToArray(), roles.ToArray(), 1);
        }
    }

    public static AdlText Text => new(new Encoder(), Decode, [Eos]);

    /// <summary>Random lowercase words, one sample per blank-line-separated block, 6–30 letters.</summary>
    public string WriteText(int samples, int seed)
    {
        var rng = new Random(seed);
        string path = Dir.File($"text{seed}.txt");
        File.WriteAllText(path, string.Join("\n\n", Enumerable.Range(0, samples).Select(_ =>
            new string(Enumerable.Range(0, rng.Next(6, 31)).Select(_ => (char)('a' + rng.Next(26))).ToArray()))) + "\n");
        return path;
    }

    /// <summary>Chats with a 2–10 letter user turn and a 5–15 letter assistant turn.</summary>
    public string WriteChat(int samples, int seed)
    {
        var rng = new Random(seed);
        string Word(int lo, int hi) => new(Enumerable.Range(0, rng.Next(lo, hi + 1)).Select(_ => (char)('a' + rng.Next(26))).ToArray());
        string path = Dir.File($"chat{seed}.jsonl");
        File.WriteAllLines(path, Enumerable.Range(0, samples).Select(_ => JsonSerializer.Serialize(new
        {
            messages = new[] { new { role = "user", content = Word(2, 10) }, new { role = "assistant", content = Word(5, 15) } },
        })));
        return path;
    }

    public void Dispose() => Dir.Dispose();
}

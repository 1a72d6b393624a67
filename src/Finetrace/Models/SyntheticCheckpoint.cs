using System.Numerics;
using System.Runtime.InteropServices;
using System.Text.Json;
using System.Text.Json.Nodes;
using Finetrace.Models.Safetensors;
using Finetrace.Tensors;

namespace Finetrace.Models;

/// <summary>
/// Random-weight checkpoints in exact Hugging Face layout for any supported config.json (for benchmarks and tests at
/// real-model shapes): config.json (with torch_dtype set to the written dtype) and model.safetensors holding exactly the
/// parameters the loader expects. Matrices and embeddings ~ N(0, 0.02²); norm scales 1 + N(0, 0.02²) (Gemma stores the
/// offset, so N(0, 0.02²)); biases ~ N(0, 0.02²).
/// </summary>
public static class SyntheticCheckpoint
{
    public static void Write(string configPath, string outDir, DType dtype, int seed)
    {
        if (dtype is not (DType.F32 or DType.BF16)) throw new SettingException("DType", dtype.ToString(), "must be bf16 or f32");
        var config = ModelConfig.Load(configPath);
        var node = JsonNode.Parse(File.ReadAllText(configPath)) as JsonObject
            ?? throw new InvalidDataException($"{configPath}: not a JSON object");
        string dtypeName = dtype == DType.BF16 ? "bfloat16" : "float32";
        if (node.ContainsKey("dtype")) node["dtype"] = dtypeName; else node["torch_dtype"] = dtypeName;

        Directory.CreateDirectory(outDir);
        var specs = ModelLayout.Parameters(config).OrderBy(p => p.Name, StringComparer.Ordinal).ToList();
        int bytesPer = dtype == DType.BF16 ? 2 : 4;
        // Streamed (tensor by tensor, chunk by chunk) so a multi-GB model never sits in memory. The layout is the
        // reference writer's: one dtype, so tensors in name order; header padded with spaces to a multiple of 8.
        string path = Path.Combine(outDir, "model.safetensors");
        string tmp = path + ".tmp-" + Environment.ProcessId;
        using (var fs = new FileStream(tmp, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20))
        {
            var header = Header(specs, dtype, bytesPer);
            Span<byte> len = stackalloc byte[8];
            BitConverter.TryWriteBytes(len, (ulong)header.Length);
            fs.Write(len);
            fs.Write(header);
            var rng = new Gaussian((ulong)seed);
            const int Chunk = 1 << 20;
            var values = new float[Chunk];
            var bits = new ushort[Chunk];
            foreach (var p in specs)
            {
                float offset = p.Role == ParameterRole.NormWeight && config.Norm != NormKind.GemmaRmsNorm ? 1f : 0f;
                for (long done = 0, n = Tensor.ShapeLength(p.Shape); done < n; done += Chunk)
                {
                    int k = (int)Math.Min(Chunk, n - done);
                    for (int i = 0; i < k; i++) values[i] = offset + 0.02f * rng.Next();
                    if (dtype == DType.BF16)
                    {
                        Precision.F32ToBF16(values.AsSpan(0, k), bits);
                        fs.Write(MemoryMarshal.AsBytes(bits.AsSpan(0, k)));
                    }
                    else fs.Write(MemoryMarshal.AsBytes(values.AsSpan(0, k)));
                }
            }
        }
        File.Move(tmp, path, overwrite: true);
        File.WriteAllText(Path.Combine(outDir, "config.json"), node.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
    }

    static byte[] Header(List<ParameterSpec> specs, DType dtype, int bytesPer)
    {
        using var ms = new MemoryStream();
        using (var w = new Utf8JsonWriter(ms))
        {
            w.WriteStartObject();
            w.WriteStartObject("__metadata__");
            w.WriteString("format", "pt");
            w.WriteEndObject();
            long offset = 0;
            foreach (var p in specs)
            {
                long bytes = Tensor.ShapeLength(p.Shape) * bytesPer;
                w.WriteStartObject(p.Name);
                w.WriteString("dtype", dtype.ToString());
                w.WriteStartArray("shape");
                foreach (int d in p.Shape) w.WriteNumberValue(d);
                w.WriteEndArray();
                w.WriteStartArray("data_offsets");
                w.WriteNumberValue(offset);
                w.WriteNumberValue(offset + bytes);
                w.WriteEndArray();
                w.WriteEndObject();
                offset += bytes;
            }
            w.WriteEndObject();
        }
        var raw = ms.ToArray();
        var padded = new byte[(raw.Length + 7) / 8 * 8];
        raw.CopyTo(padded, 0);
        for (int i = raw.Length; i < padded.Length; i++) padded[i] = (byte)' ';
        return padded;
    }

    /// <summary>Standard normal draws: xoshiro256** uniforms through Box–Muller (both outputs used).</summary>
    sealed class Gaussian(ulong seed)
    {
        Rng _rng = new(seed);
        float _spare;
        bool _hasSpare;

        double Uniform() => ((_rng.NextU64() >> 11) + 0.5) * (1.0 / (1UL << 53)); // (0, 1)

        public float Next()
        {
            if (_hasSpare) { _hasSpare = false; return _spare; }
            double r = Math.Sqrt(-2 * Math.Log(Uniform())), th = 2 * Math.PI * Uniform();
            _spare = (float)(r * Math.Sin(th));
            _hasSpare = true;
            return (float)(r * Math.Cos(th));
        }
    }
}

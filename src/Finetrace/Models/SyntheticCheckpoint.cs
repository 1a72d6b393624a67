using System.Numerics;
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
        if (dtype is not (DType.F32 or DType.BF16)) throw new ArgumentException($"--dtype must be bf16 or f32, not {dtype}");
        var config = ModelConfig.Load(configPath);
        var node = JsonNode.Parse(File.ReadAllText(configPath)) as JsonObject
            ?? throw new InvalidDataException($"{configPath}: not a JSON object");
        string dtypeName = dtype == DType.BF16 ? "bfloat16" : "float32";
        if (node.ContainsKey("dtype")) node["dtype"] = dtypeName; else node["torch_dtype"] = dtypeName;

        Directory.CreateDirectory(outDir);
        var tensors = new List<TensorData>();
        var rng = new Gaussian((ulong)seed);
        foreach (var p in ModelLayout.Parameters(config))
        {
            long n = Tensor.ShapeLength(p.Shape);
            var values = Tensor.Allocate(n, zeroed: false);
            float offset = p.Role == ParameterRole.NormWeight && config.Norm != NormKind.GemmaRmsNorm ? 1f : 0f;
            for (long i = 0; i < n; i++) values[i] = offset + 0.02f * rng.Next();
            tensors.Add(dtype == DType.BF16 ? TensorData.BF16(p.Name, values, p.Shape) : TensorData.F32(p.Name, values, p.Shape));
        }
        SafetensorsWriter.Write(Path.Combine(outDir, "model.safetensors"), tensors, new Dictionary<string, string> { ["format"] = "pt" });
        File.WriteAllText(Path.Combine(outDir, "config.json"), node.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
    }

    /// <summary>Standard normal draws: xoshiro256** uniforms through Box–Muller (both outputs used).</summary>
    sealed class Gaussian
    {
        ulong _s0, _s1, _s2, _s3;
        float _spare;
        bool _hasSpare;

        public Gaussian(ulong seed)
        {
            // splitmix64 to fill the state
            ulong x = seed;
            ulong Next64() { x += 0x9E3779B97F4A7C15; ulong z = x; z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9; z = (z ^ (z >> 27)) * 0x94D049BB133111EB; return z ^ (z >> 31); }
            _s0 = Next64(); _s1 = Next64(); _s2 = Next64(); _s3 = Next64();
        }

        ulong NextU64()
        {
            ulong result = BitOperations.RotateLeft(_s1 * 5, 7) * 9;
            ulong t = _s1 << 17;
            _s2 ^= _s0; _s3 ^= _s1; _s1 ^= _s2; _s0 ^= _s3; _s2 ^= t; _s3 = BitOperations.RotateLeft(_s3, 45);
            return result;
        }

        double Uniform() => ((NextU64() >> 11) + 0.5) * (1.0 / (1UL << 53)); // (0, 1)

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

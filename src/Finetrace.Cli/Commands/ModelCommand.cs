using Finetrace.Tensors;
using System.CommandLine;
using Finetrace.Models;
using Finetrace.Models.Safetensors;

namespace Finetrace.Cli.Commands;

/// <summary><c>finetrace model synth --config CONFIG.json --out DIR [--dtype bf16|f32] [--seed S]</c>: a random-weight
/// checkpoint in exact Hugging Face layout for any supported config (benchmarks and tests at real-model shapes).</summary>
public sealed class ModelCommand : ICliCommand
{
    public Command Build()
    {
        var cmd = new Command("model", "Model checkpoint utilities");
        var config = new Option<string>("--config") { Description = "A Hugging Face config.json (llama, mistral, qwen2, qwen3, gemma2, gpt2, gpt_neox)", Required = true };
        var output = new Option<string>("--out") { Description = "Output folder (config.json + model.safetensors)", Required = true };
        var dtype = new Option<string>("--dtype") { Description = "Weight dtype: bf16 or f32", DefaultValueFactory = _ => "bf16" };
        var seed = new Option<int>("--seed") { Description = "Random seed", DefaultValueFactory = _ => 0 };
        var synth = new Command("synth", "Write a random-weight checkpoint in exact Hugging Face layout for a config.json");
        synth.Options.Add(config); synth.Options.Add(output); synth.Options.Add(dtype); synth.Options.Add(seed);
        synth.SetAction(r =>
        {
            var dt = r.GetValue(dtype) switch
            {
                "bf16" or "bfloat16" => DType.BF16,
                "f32" or "float32" => DType.F32,
                var s => throw new ArgumentException($"--dtype '{s}': expected bf16 or f32"),
            };
            string outDir = r.GetValue(output)!;
            SyntheticCheckpoint.Write(r.GetValue(config)!, outDir, dt, r.GetValue(seed));
            var c = ModelConfig.Load(outDir);
            long n = ModelLayout.Parameters(c).Sum(p => Finetrace.Tensors.Tensor.ShapeLength(p.Shape));
            Console.WriteLine($"{c.ModelType}: {n:N0} parameters ({r.GetValue(dtype)}) written to {outDir}");
            return 0;
        });
        cmd.Subcommands.Add(synth);
        return cmd;
    }
}

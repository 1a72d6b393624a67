using System.CommandLine;
using Finetrace.Models;
using Finetrace.Text.Datasets;
using Finetrace.Training;

namespace Finetrace.Cli.Commands.Organism;

/// <summary><c>finetrace organism finetune --model DIR --data SPEC --out DIR [--lora r] [--steps N] [--lr X]
/// [--assistant-only] …</c>: fine-tunes a Llama-block model (llama, mistral, qwen2, qwen3) on plain text (one sample per
/// blank-line-separated block) or chat JSONL rendered with the model's chat template; writes a full Hugging Face folder,
/// or with --lora a PEFT adapter that <c>--adapter</c> loads. Re-running the same command resumes from OUT/checkpoint.</summary>
public sealed class FinetuneCommand : IOrganismCommand
{
    public Command Build()
    {
        var model = new Option<string>("--model") { Description = "Hugging Face checkpoint folder to fine-tune (with tokenizer.json)", Required = true };
        var data = new Option<string>("--data")
        {
            Description = "Training data: [text:|chat:]PATH[,split=blank|file] — a .txt file (one sample per blank-line-separated block) or chat JSONL ({\"messages\": [...]})",
            Required = true,
        };
        var output = new Option<string>("--out") { Description = "Output folder (model or adapter, tokenizer files, checkpoint/)", Required = true };
        var lora = new Option<int>("--lora") { Description = "LoRA rank; 0 = full fine-tune", DefaultValueFactory = _ => 0 };
        var loraAlpha = new Option<float?>("--lora-alpha") { Description = "LoRA alpha (default 2 × rank)" };
        var steps = new Option<int>("--steps") { Description = "Optimiser steps", DefaultValueFactory = _ => 200 };
        var lr = new Option<double>("--lr") { Description = "Peak learning rate (AdamW; cosine decay to 10%)", DefaultValueFactory = _ => 1e-3 };
        var batch = new Option<int>("--batch") { Description = "Packed rows per step", DefaultValueFactory = _ => 16 };
        var seq = new Option<int>("--seq") { Description = "Tokens per packed row", DefaultValueFactory = _ => 256 };
        var warmup = new Option<int>("--warmup") { Description = "Linear warm-up steps", DefaultValueFactory = _ => 0 };
        var wd = new Option<double>("--weight-decay") { Description = "AdamW weight decay of matrices and embeddings", DefaultValueFactory = _ => 0.0 };
        var clip = new Option<double>("--clip") { Description = "Global gradient-norm clip (0 = none)", DefaultValueFactory = _ => 1.0 };
        var seed = new Option<int>("--seed") { Description = "Seed of row order and LoRA init", DefaultValueFactory = _ => 0 };
        var assistantOnly = new Option<bool>("--assistant-only") { Description = "Chat data: train on assistant tokens (and the EOS ending each answer) only" };
        var every = new Option<int>("--checkpoint-every") { Description = "Steps between checkpoints (also saved on Ctrl-C and at the end)", DefaultValueFactory = _ => 50 };
        var micro = new Option<int>("--micro-batch") { Description = "Rows per forward/backward (gradients accumulate); 0 = the whole batch", DefaultValueFactory = _ => 0 };
        var cmd = new Command("finetune", "Fine-tune a Llama-architecture model (full or LoRA) on text or chat data");
        foreach (var o in new Option[] { model, data, output, lora, loraAlpha, steps, lr, batch, seq, warmup, wd, clip, seed, assistantOnly, every, micro })
            cmd.Options.Add(o);
        cmd.SetAction(r =>
        {
            string modelDir = r.GetValue(model)!, outDir = r.GetValue(output)!;
            var config = ModelConfig.Load(modelDir);
            var spec = DataSourceSpec.Parse(r.GetValue(data)!);
            var encoder = ModelSampleEncoder.FromFolder(modelDir);
            var skipped = new SkipCounts();
            var eos = new HashSet<int>(config.EosTokenIds);
            if (encoder.Tokenizer.EosId is int e) eos.Add(e);
            var examples = LmData.Load(spec, encoder, r.GetValue(assistantOnly), eos, skipped);
            var options = new LmTrainingOptions
            {
                Steps = r.GetValue(steps), LearningRate = r.GetValue(lr), BatchRows = r.GetValue(batch), SeqLen = r.GetValue(seq),
                WarmupSteps = r.GetValue(warmup), WeightDecay = r.GetValue(wd), MaxGradNorm = r.GetValue(clip), Seed = (ulong)r.GetValue(seed),
                LoraRank = r.GetValue(lora), LoraAlpha = r.GetValue(loraAlpha), CheckpointEvery = r.GetValue(every), MicroBatchRows = r.GetValue(micro),
            };
            var rows = new PackedRows(examples, options.SeqLen);
            Console.Error.WriteLine($"{examples.Count:N0} samples ({(skipped.Total > 0 ? $"skipped: {skipped}; " : "")}{rows.Tokens:N0} tokens in {rows.Count:N0} rows of ≤ {options.SeqLen}, " +
                $"{rows.CountedTargets:N0} counted targets); {(options.LoraRank > 0 ? $"LoRA r={options.LoraRank}" : "full fine-tune")}, {options.Steps} steps");
            var result = TrainingProgressLine.WithCtrlC(ct => LmRuns.FineTune(modelDir, examples, options, outDir, new TrainingProgressLine("finetune"), ct),
                "run the same command again to resume from " + LmRuns.CheckpointFolder(outDir));
            string what = options.LoraRank > 0 ? "PEFT adapter (load with --adapter " + outDir + ")" : "model";
            double first = result.Losses.Count > 0 ? result.Losses[0] : double.NaN, last = result.Losses.Count > 0 ? result.Losses[^1] : double.NaN;
            Console.WriteLine($"{what} written to {outDir}; loss {first:F4} → {last:F4}" +
                (result.ResumedFrom > 0 ? $" (resumed at step {result.ResumedFrom})" : "") + $", {result.TokensPerSecond:N0} tokens/s");
            return 0;
        });
        return cmd;
    }
}

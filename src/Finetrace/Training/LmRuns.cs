using Finetrace.Models.Backward;

namespace Finetrace.Training;

/// <summary>
/// Whole training jobs that write standard Hugging Face folders. A job checkpoints into OUT/checkpoint and, run again
/// with the same inputs, resumes from it (bit for bit); a finished job run again only rewrites its outputs.
/// </summary>
public static class LmRuns
{
    public static string CheckpointFolder(string outDir) => Path.Combine(outDir, "checkpoint");

    /// <summary>Fine-tunes the model in <paramref name="modelDir"/> (any stored dtype; trained in f32). A full fine-tune
    /// writes config.json + model.safetensors (F32, HF names) + the tokenizer files to <paramref name="outDir"/>; a LoRA
    /// run (<see cref="LmTrainingOptions.LoraRank"/> &gt; 0) writes a PEFT adapter (adapter_config.json +
    /// adapter_model.safetensors) and the tokenizer files.</summary>
    public static LmTrainingResult FineTune(string modelDir, IReadOnlyList<LmExample> examples, LmTrainingOptions options, string outDir,
        IProgress<LmTrainingProgress>? progress = null, CancellationToken cancel = default)
    {
        var model = ModelParameters.Load(modelDir);
        var trainer = new LmTrainer(model, new PackedRows(examples, options.SeqLen), options);
        var result = trainer.Run(CheckpointFolder(outDir), progress, cancel);
        if (trainer.Lora is { } lora) lora.SavePeft(outDir, Path.GetFullPath(modelDir));
        else model.Save(outDir);
        ModelParameters.CopyTokenizerFiles(modelDir, outDir);
        return result;
    }

    /// <summary>Trains a new model from a config.json text (random init, <see cref="ModelParameters.Initialise"/> with the
    /// options' seed) and writes it with the tokenizer files of <paramref name="tokenizerDir"/>.</summary>
    public static LmTrainingResult TrainFromScratch(string configJson, string tokenizerDir, IReadOnlyList<LmExample> examples, LmTrainingOptions options,
        string outDir, IProgress<LmTrainingProgress>? progress = null, CancellationToken cancel = default)
    {
        if (options.LoraRank > 0) throw new ArgumentException("a model trained from scratch trains every parameter; LoRA needs a base model");
        var model = ModelParameters.Initialise(configJson, options.Seed);
        var trainer = new LmTrainer(model, new PackedRows(examples, options.SeqLen), options);
        var result = trainer.Run(CheckpointFolder(outDir), progress, cancel);
        model.Save(outDir);
        ModelParameters.CopyTokenizerFiles(tokenizerDir, outDir);
        return result;
    }
}

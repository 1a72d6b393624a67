using System.Diagnostics;
using System.Security.Cryptography;
using System.Text.Json;
using Finetrace.Models;
using Finetrace.Models.Backward;
using Finetrace.Models.Safetensors;
using Finetrace.Tensors;

namespace Finetrace.Training;

/// <summary>How a language model is trained. Defaults suit a small fine-tune.</summary>
public sealed record LmTrainingOptions
{
    public int Steps { get; init; } = 200;
    /// <summary>Packed rows per optimiser step.</summary>
    public int BatchRows { get; init; } = 16;
    /// <summary>Rows per forward/backward (gradients accumulate over a step's micro-batches); 0 = the whole step at once.</summary>
    public int MicroBatchRows { get; init; }
    public int SeqLen { get; init; } = 256;
    public double LearningRate { get; init; } = 1e-3;
    /// <summary>The cosine decay ends at this fraction of the learning rate.</summary>
    public double MinLrRatio { get; init; } = 0.1;
    public int WarmupSteps { get; init; }
    /// <summary>Decoupled weight decay of matrices and embeddings (not norm scales or biases; LoRA factors are decayed).</summary>
    public double WeightDecay { get; init; }
    public double Beta1 { get; init; } = 0.9;
    public double Beta2 { get; init; } = 0.999;
    public double Eps { get; init; } = 1e-8;
    /// <summary>Global gradient-norm clip; 0 = none.</summary>
    public double MaxGradNorm { get; init; } = 1.0;
    public ulong Seed { get; init; }
    /// <summary>0 = full fine-tune; r > 0 trains LoRA factors of rank r instead.</summary>
    public int LoraRank { get; init; }
    /// <summary>LoRA alpha (scaling alpha / r); null = 2r.</summary>
    public float? LoraAlpha { get; init; }
    public IReadOnlyList<string>? LoraTargets { get; init; }
    /// <summary>Write a resumable checkpoint every N steps (0 = only when cancelled and at the end).</summary>
    public int CheckpointEvery { get; init; }

    internal void Validate()
    {
        if (Steps <= 0) throw new ArgumentOutOfRangeException(nameof(Steps), $"steps {Steps} must be positive");
        if (BatchRows <= 0) throw new ArgumentOutOfRangeException(nameof(BatchRows), $"batch rows {BatchRows} must be positive");
        if (MicroBatchRows < 0) throw new ArgumentOutOfRangeException(nameof(MicroBatchRows), $"micro-batch rows {MicroBatchRows} must be ≥ 0");
        if (SeqLen < 2) throw new ArgumentOutOfRangeException(nameof(SeqLen), $"sequence length {SeqLen} must be ≥ 2");
        if (!(LearningRate > 0)) throw new ArgumentOutOfRangeException(nameof(LearningRate), $"learning rate {LearningRate} must be positive");
        if (WarmupSteps < 0 || LoraRank < 0 || CheckpointEvery < 0) throw new ArgumentOutOfRangeException(nameof(WarmupSteps), "warm-up steps, LoRA rank and checkpoint interval must be ≥ 0");
    }
}

/// <summary>One step's report: the mean loss over the step's counted tokens, the learning rate used, the gradient norm
/// before clipping, throughput (real tokens through forward + backward per second, this run) and the time left.</summary>
public sealed record LmTrainingProgress(long Step, long TotalSteps, double Loss, double LearningRate, double GradNorm,
    double TokensPerSecond, TimeSpan Eta);

/// <summary>What a run did: per-step mean losses (of the steps this run took), throughput, and the LoRA factors when
/// it trained an adapter.</summary>
public sealed record LmTrainingResult(long StepsDone, long ResumedFrom, IReadOnlyList<double> Losses, double TokensPerSecond, LoraWeights? Lora);

/// <summary>The checkpoint folder does not belong to this run (other options, data or model).</summary>
public sealed class CheckpointMismatchException(string folder, string what)
    : Exception($"{folder}: the checkpoint was written by a run with different {what}; delete the folder or rerun with the same settings")
{
    public string Folder { get; } = folder;
}

/// <summary>
/// Trains a Llama-block language model (<see cref="DifferentiableLM"/>) on packed rows with AdamW, warm-up and cosine
/// decay, global-norm clipping and loss masks: every parameter (full fine-tune or training from scratch) or LoRA factors
/// (<see cref="LoraWeights"/>). Rows are drawn as a fresh seeded permutation per epoch, so step s always sees the same
/// rows; with the parameters and optimiser moments a checkpoint therefore resumes bit for bit. Cancellation saves a
/// checkpoint first (when a folder is given) and then throws <see cref="OperationCanceledException"/>.
/// </summary>
public sealed class LmTrainer
{
    public ModelParameters Model { get; }
    public LmTrainingOptions Options { get; }
    public PackedRows Rows { get; }
    public LoraWeights? Lora { get; }

    readonly ModelParameters _working;     // what the forward reads: the model itself, or base + merged LoRA
    readonly ModelParameters _grads;       // gradients of the weights the forward reads
    readonly List<(string Name, float[] Param, float[] Grad, bool Decay)> _trainable = new();
    readonly AdamW _adam;
    readonly DifferentiableLM _lm;
    readonly Dictionary<long, int[]> _perms = new();

    public LmTrainer(ModelParameters model, PackedRows rows, LmTrainingOptions options)
    {
        options.Validate();
        Model = model; Rows = rows; Options = options;
        if (options.LoraRank > 0)
        {
            Lora = new LoraWeights(model, options.LoraRank, options.LoraAlpha ?? 2f * options.LoraRank, options.LoraTargets, options.Seed);
            _working = Lora.Merged(model);
            _grads = model.ZerosLike(Lora.WeightNames);
            foreach (var (name, values) in Lora.Tensors()) _trainable.Add((name, values, new float[values.Length], true));
        }
        else
        {
            _working = model;
            _grads = model.ZerosLike();
            foreach (var spec in model.Specs) _trainable.Add((spec.Name, model[spec.Name], _grads[spec.Name], model.IsMatrix(spec.Name)));
        }
        _adam = new AdamW(_trainable.Select(t => t.Param.Length).ToList())
        {
            Beta1 = options.Beta1, Beta2 = options.Beta2, Eps = options.Eps, WeightDecay = options.WeightDecay,
        };
        _lm = new DifferentiableLM(_working);
    }

    /// <summary>The row indices of step <paramref name="step"/>: positions step·B … step·B + B − 1 of the concatenation of
    /// per-epoch permutations (epoch e shuffled by Rng.For(seed, e)).</summary>
    public int[] RowsOfStep(long step)
    {
        int b = Options.BatchRows, n = Rows.Count;
        var rows = new int[b];
        for (int j = 0; j < b; j++)
        {
            long i = step * b + j;
            long epoch = i / n;
            if (!_perms.TryGetValue(epoch, out var perm))
            {
                perm = new int[n];
                var rng = Rng.For(Options.Seed, 0x5eed, (ulong)epoch);
                rng.Permutation(perm);
                if (_perms.Count > 4) _perms.Clear();
                _perms[epoch] = perm;
            }
            rows[j] = perm[i % n];
        }
        return rows;
    }

    /// <summary>Runs steps from the checkpoint in <paramref name="checkpointDir"/> (if one is there) to
    /// <see cref="LmTrainingOptions.Steps"/>. The model's arrays (or the LoRA factors) are updated in place.</summary>
    public LmTrainingResult Run(string? checkpointDir = null, IProgress<LmTrainingProgress>? progress = null, CancellationToken cancel = default)
    {
        long start = checkpointDir is not null && TryLoadCheckpoint(checkpointDir) ? _adam.Step : 0;
        var losses = new List<double>();
        var sw = Stopwatch.StartNew();
        long tokens = 0;
        for (long step = start; step < Options.Steps; step++)
        {
            if (cancel.IsCancellationRequested)
            {
                if (checkpointDir is not null) SaveCheckpoint(checkpointDir);
                cancel.ThrowIfCancellationRequested();
            }
            double lr = Options.LearningRate * CosineSchedule.Factor(step, Options.Steps, Options.WarmupSteps, Options.MinLrRatio);
            var (loss, norm, stepTokens) = Step(step, lr);
            tokens += stepTokens;
            losses.Add(loss);
            double rate = tokens / Math.Max(sw.Elapsed.TotalSeconds, 1e-9);
            double secondsPerStep = sw.Elapsed.TotalSeconds / (step - start + 1);
            progress?.Report(new LmTrainingProgress(step + 1, Options.Steps, loss, lr, norm, rate,
                TimeSpan.FromSeconds(secondsPerStep * (Options.Steps - step - 1))));
            if (checkpointDir is not null && Options.CheckpointEvery > 0 && (step + 1) % Options.CheckpointEvery == 0 && step + 1 < Options.Steps)
                SaveCheckpoint(checkpointDir);
        }
        if (checkpointDir is not null) SaveCheckpoint(checkpointDir);
        return new LmTrainingResult(Options.Steps, start, losses, tokens / Math.Max(sw.Elapsed.TotalSeconds, 1e-9), Lora);
    }

    /// <summary>One optimiser step at learning rate <paramref name="lr"/>: returns the mean loss over the counted targets,
    /// the gradient norm before clipping and the real tokens processed.</summary>
    (double Loss, double GradNorm, long Tokens) Step(long step, double lr)
    {
        var rowIdx = RowsOfStep(step);
        long counted = 0, tokens = 0;
        foreach (int r in rowIdx)
        {
            var m = Rows.LossMasks[r];
            for (int t = 1; t < m.Length; t++) counted += m[t];
            tokens += m.Length;
        }
        if (Lora is not null) Lora.MergeInto(Model, _working);
        _grads.Clear();
        double lossSum = 0;
        if (counted > 0)
        {
            int micro = Options.MicroBatchRows > 0 ? Options.MicroBatchRows : rowIdx.Length;
            for (int s = 0; s < rowIdx.Length; s += micro)
            {
                var part = rowIdx.Skip(s).Take(micro).ToArray();
                var batch = TokenBatch.RightPadded(part.Select(r => Rows.Ids[r]).ToList());
                var mask = new byte[batch.Count];
                for (int j = 0; j < part.Length; j++) Rows.LossMasks[part[j]].CopyTo(mask, j * batch.Seq);
                var targets = DifferentiableLM.NextTokenTargets(batch, mask);
                lossSum += _lm.LossAndGradients(batch, targets, _grads, counted).LossSum;
            }
        }
        if (Lora is not null)
        {
            int k = 0;
            foreach (var name in Lora.WeightNames)
            {
                Lora.FactorGradients(name, _grads[name], _trainable[k].Grad, _trainable[k + 1].Grad);
                k += 2;
            }
        }
        var grads = _trainable.Select(t => t.Grad).ToList();
        double norm = GradientClipping.ClipGlobalNorm(grads, Options.MaxGradNorm);
        _adam.Update(_trainable.Select(t => t.Param).ToList(), grads, _trainable.Select(t => t.Decay).ToList(), lr);
        return (counted > 0 ? lossSum / counted : double.NaN, norm, tokens);
    }

    /// <summary>Mean next-token loss of the current weights over <paramref name="rows"/> (all counted targets), no gradients.</summary>
    public double Evaluate(PackedRows rows, int rowsPerBatch = 16)
    {
        if (Lora is not null) Lora.MergeInto(Model, _working);
        double sum = 0;
        long n = 0;
        for (int s = 0; s < rows.Count; s += rowsPerBatch)
        {
            var idx = Enumerable.Range(s, Math.Min(rowsPerBatch, rows.Count - s)).ToArray();
            var batch = TokenBatch.RightPadded(idx.Select(r => rows.Ids[r]).ToList());
            var mask = new byte[batch.Count];
            for (int j = 0; j < idx.Length; j++) rows.LossMasks[idx[j]].CopyTo(mask, j * batch.Seq);
            var targets = DifferentiableLM.NextTokenTargets(batch, mask);
            var trace = _lm.Forward(batch);
            var scratch = new float[trace.Logits.Length];
            var (loss, count) = BackwardKernels.CrossEntropy(trace.Logits, targets, batch.Count, Model.Config.Vocab, 0f, scratch);
            sum += loss; n += count;
        }
        return n == 0 ? double.NaN : sum / n;
    }

    // ---------------------------------------------------------------- checkpoints

    const string StateJson = "trainer_state.json", StateTensors = "trainer_state.safetensors";

    /// <summary>What a checkpoint must agree on to be resumed: the options (all but the checkpoint interval), the packed
    /// data and the model's config.</summary>
    string Fingerprint(out string dataHash)
    {
        using var sha = SHA256.Create();
        foreach (var (ids, mask) in Rows.Ids.Zip(Rows.LossMasks))
        {
            sha.TransformBlock(System.Runtime.InteropServices.MemoryMarshal.AsBytes(ids.AsSpan()).ToArray(), 0, ids.Length * 4, null, 0);
            sha.TransformBlock(mask, 0, mask.Length, null, 0);
        }
        sha.TransformFinalBlock([], 0, 0);
        dataHash = Convert.ToHexString(sha.Hash!);
        var o = Options with { CheckpointEvery = 0 };
        return JsonSerializer.Serialize(new
        {
            o.Steps, o.BatchRows, o.MicroBatchRows, o.SeqLen, o.LearningRate, o.MinLrRatio, o.WarmupSteps, o.WeightDecay, o.Beta1, o.Beta2,
            o.Eps, o.MaxGradNorm, o.Seed, o.LoraRank, o.LoraAlpha, LoraTargets = o.LoraTargets?.ToArray(), Config = Model.ConfigJson,
        });
    }

    /// <summary>Writes parameters being trained (and for LoRA the base is not written: it is the input), both moments and
    /// the step; tensors first, then the JSON, each atomically, so an interrupted save leaves the previous checkpoint.</summary>
    public void SaveCheckpoint(string folder)
    {
        Directory.CreateDirectory(folder);
        var tensors = new List<TensorData>();
        for (int t = 0; t < _trainable.Count; t++)
        {
            var (name, p, _, _) = _trainable[t];
            tensors.Add(TensorData.F32("param." + name, p, p.Length));
            tensors.Add(TensorData.F32("exp_avg." + name, _adam.ExpAvg[t], p.Length));
            tensors.Add(TensorData.F32("exp_avg_sq." + name, _adam.ExpAvgSq[t], p.Length));
        }
        string fp = Fingerprint(out string dataHash);
        string stepTag = $"step {_adam.Step}";
        SafetensorsWriter.Write(Path.Combine(folder, StateTensors), tensors, new Dictionary<string, string> { ["step"] = _adam.Step.ToString() });
        var state = new { step = _adam.Step, fingerprint = fp, data_sha256 = dataHash, note = stepTag };
        ModelParameters.WriteAtomic(Path.Combine(folder, StateJson), JsonSerializer.Serialize(state, new JsonSerializerOptions { WriteIndented = true }));
    }

    bool TryLoadCheckpoint(string folder)
    {
        string json = Path.Combine(folder, StateJson), bin = Path.Combine(folder, StateTensors);
        if (!File.Exists(json) || !File.Exists(bin)) return false;
        using var doc = JsonDocument.Parse(File.ReadAllBytes(json));
        var root = doc.RootElement;
        string fp = Fingerprint(out string dataHash);
        if (root.GetProperty("data_sha256").GetString() != dataHash) throw new CheckpointMismatchException(folder, "training data");
        if (root.GetProperty("fingerprint").GetString() != fp) throw new CheckpointMismatchException(folder, "options or model config");
        long step = root.GetProperty("step").GetInt64();
        using var file = new SafetensorsFile(bin);
        if (file.Metadata.GetValueOrDefault("step") != step.ToString())
            throw new InvalidDataException($"{bin}: holds step {file.Metadata.GetValueOrDefault("step")} but {json} says {step}; the checkpoint is inconsistent");
        for (int t = 0; t < _trainable.Count; t++)
        {
            var (name, p, _, _) = _trainable[t];
            Read(file, "param." + name, p);
            Read(file, "exp_avg." + name, _adam.ExpAvg[t]);
            Read(file, "exp_avg_sq." + name, _adam.ExpAvgSq[t]);
        }
        _adam.Step = step;
        return true;
    }

    static void Read(SafetensorsFile file, string name, float[] dst)
    {
        if (!file.Tensors.ContainsKey(name)) throw new InvalidDataException($"{file.Path}: tensor '{name}' is missing");
        var t = file.ReadF32(name);
        if (t.Length != dst.Length) throw new InvalidDataException($"{file.Path}: tensor '{name}' has {t.Length} values, expected {dst.Length}");
        t.Span.CopyTo(dst);
    }
}

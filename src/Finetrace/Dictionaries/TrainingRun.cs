using System.Text.Json;
using Finetrace.Activations;

namespace Finetrace.Dictionaries;

/// <summary>Settings of a training loop around <see cref="DictionaryTrainer"/>.</summary>
public sealed record RunOptions
{
    public int BatchSize { get; init; } = 2048;
    public long Steps { get; init; }
    /// <summary>Save a resumable checkpoint every this many steps (0: only at the end).</summary>
    public long CheckpointEvery { get; init; }
    /// <summary>Append one JSON line per this many steps to metrics.jsonl.</summary>
    public int LogEvery { get; init; } = 1;
    public bool Resume { get; init; }
    /// <summary>Replace a finished dictionary or checkpoint already in the output folder (otherwise that is an error).</summary>
    public bool Overwrite { get; init; }
    /// <summary>Held-out rows read in order from the start for each validation (null: no validation).</summary>
    public IActivationBatches? Validation { get; init; }
    /// <summary>Validate every this many steps (0: only after the last step).</summary>
    public long ValidateEvery { get; init; }
    public long ValidationTokens { get; init; } = 20_000;
    /// <summary>Run the steps on this device (null: on the CPU). Checkpoints, validation and the finished dictionary
    /// read the host trainer after the device state is copied back, so either trainer can resume them.</summary>
    public ITrainingDevice? Device { get; init; }
}

/// <summary>
/// The training loop: batches from an <see cref="IActivationBatches"/>, one trainer step each, a metrics log
/// (<c>OUT/metrics.jsonl</c>), resumable checkpoints (<c>OUT/checkpoint</c>) every N steps, and the final dictionary.
/// A NaN/Inf loss stops training before the bad update; the last checkpoint stays as it was.
/// </summary>
public sealed class TrainingRun
{
    public string OutDir { get; }
    public DictionaryTrainer Trainer { get; private set; }
    public IActivationBatches Source { get; }
    public RunOptions Options { get; }
    static readonly JsonSerializerOptions SkipNulls = new() { DefaultIgnoreCondition = System.Text.Json.Serialization.JsonIgnoreCondition.WhenWritingNull };

    public string CheckpointDir => Path.Combine(OutDir, "checkpoint");
    /// <summary>The last validation on the held-out rows (null before the first).</summary>
    public EvalReport? LastValidation { get; private set; }
    public string MetricsPath => Path.Combine(OutDir, "metrics.jsonl");

    public TrainingRun(string outDir, DictionaryTrainer trainer, IActivationBatches source, RunOptions options)
    {
        OutDir = outDir; Trainer = trainer; Source = source; Options = options;
        if (source.Models != trainer.Dict.Models || source.DModel != trainer.Dict.DModel)
            throw new ArgumentException($"the activations have {source.Models} model(s) × {source.DModel} but the dictionary expects {trainer.Dict.Models} × {trainer.Dict.DModel}");
        Directory.CreateDirectory(outDir);
        if (options.Resume)
        {
            var (tr, pos, _) = TrainingCheckpoint.Load(CheckpointDir);
            if (tr.Dict.DictSize != trainer.Dict.DictSize || tr.Dict.Models != trainer.Dict.Models || tr.Dict.DModel != trainer.Dict.DModel)
                throw new ArgumentException($"{CheckpointDir}: the checkpoint is for a {tr.Dict.Models}×{tr.Dict.DModel}→{tr.Dict.DictSize} dictionary, not {trainer.Dict.Models}×{trainer.Dict.DModel}→{trainer.Dict.DictSize}");
            Trainer = tr;
            Source.Seek(pos);
            TruncateMetrics(tr.StepCount);
        }
        else
        {
            string? found = DictionaryIO.IsDictionaryLearning(outDir) || DictionaryIO.IsSaelens(outDir) ? "a finished dictionary"
                : TrainingCheckpoint.Exists(CheckpointDir) ? "a training checkpoint" : null;
            if (found is not null)
            {
                if (!options.Overwrite) throw new OutputFolderInUseException(outDir, found);
                foreach (var f in new[] { "config.json", "model.safetensors", SaelensFormat.CfgFile, SaelensFormat.WeightsFile, SaelensFormat.SparsityFile, "finetrace.json" })
                    File.Delete(Path.Combine(outDir, f));
                if (Directory.Exists(CheckpointDir)) Directory.Delete(CheckpointDir, recursive: true);
            }
            if (File.Exists(MetricsPath)) File.Delete(MetricsPath);
        }
    }

    // Drop log lines past the resumed step so the log reads as one continuous run.
    void TruncateMetrics(long step)
    {
        if (!File.Exists(MetricsPath)) return;
        var keep = File.ReadLines(MetricsPath).Where(l => { try { return JsonDocument.Parse(l).RootElement.GetProperty("step").GetInt64() < step; } catch (JsonException) { return false; } }).ToList();
        File.WriteAllLines(MetricsPath, keep);
    }

    /// <summary>Runs until <see cref="RunOptions.Steps"/>; <paramref name="progress"/> sees every step's statistics.
    /// With <see cref="RunOptions.Device"/>, the steps run there and the next batch is read while the device computes.</summary>
    public void Run(Action<StepStats>? progress = null, CancellationToken cancel = default)
    {
        var tr = Trainer;
        int rowLen = tr.Dict.Models * tr.Dict.DModel;
        using var stepper = Options.Device?.Attach(tr);
        var batch = stepper is null ? Tensors.Tensor.Allocate((long)Options.BatchSize * rowLen, zeroed: false) : [];
        using var log = new StreamWriter(MetricsPath, append: true);
        long lastSaved = tr.StepCount;
        // the data cursor a checkpoint records: a device stepper reads one batch ahead of what it has consumed
        long Position() => stepper?.ConsumedPosition ?? Source.Position;
        void Save() { stepper?.SyncToHost(); TrainingCheckpoint.Save(CheckpointDir, tr, Position()); }
        while (tr.StepCount < Options.Steps)
        {
            if (cancel.IsCancellationRequested)
            {
                log.Flush();
                Save();   // so --resume continues from here
                cancel.ThrowIfCancellationRequested();
            }
            StepStats st;
            try
            {
                if (stepper is not null) st = stepper.StepFrom(Source, Options.BatchSize);
                else
                {
                    int got = Source.Next(batch, Options.BatchSize);
                    if (got < Options.BatchSize) throw new SourceExhaustedException(tr.StepCount, got, Options.BatchSize);
                    st = tr.Step(batch.AsSpan(0, Options.BatchSize * rowLen));
                }
            }
            catch (TrainingDivergedException e)
            {
                bool kept = TrainingCheckpoint.Exists(CheckpointDir);
                throw new TrainingDivergedException(e.Step, e.Loss, kept ? lastSaved : null, kept ? CheckpointDir : null);
            }
            EvalReport? val = null;
            if (Options.Validation is { } vs && (tr.StepCount == Options.Steps || Options.ValidateEvery > 0 && tr.StepCount % Options.ValidateEvery == 0))
            {
                stepper?.SyncToHost();
                vs.Seek(0);
                val = Evaluation.Run(tr.Dict, vs, Options.ValidationTokens);
                LastValidation = val;
            }
            if (val is not null || Options.LogEvery > 0 && (st.Step % Options.LogEvery == 0 || tr.StepCount == Options.Steps))
                log.WriteLine(JsonSerializer.Serialize(new
                {
                    step = st.Step, tokens = (st.Step + 1) * (long)Options.BatchSize, loss = st.Total, recon = st.Recon, mse = st.Mse, sparsity = st.Sparsity,
                    auxk = st.AuxK, l0 = st.L0, fve = st.Fve.Select(v => double.IsFinite(v) ? v : (double?)null).ToArray(), dead_fraction = st.DeadFraction,
                    lr = st.Lr, grad_norm = st.GradNorm, k = st.K, threshold = st.Threshold,
                    // DECOUPLED BatchTopK only (absent otherwise): per-model L0 and θ_m; "threshold" is then min_m θ_m
                    l0_per_model = st.L0PerModel.Length > 0 ? st.L0PerModel : null,
                    model_threshold = st.ModelThreshold.Length > 0 ? st.ModelThreshold : null,
                    // held-out rows (raw space, inference rule), on validation steps only
                    val_tokens = val?.Tokens, val_fve = val?.Fve.Select(v => double.IsFinite(v) ? v : (double?)null).ToArray(), val_l0 = val?.L0,
                    val_mse = val?.Mse, val_dead_fraction = val?.DeadFraction,
                }, SkipNulls));
            progress?.Invoke(st);
            if (Options.CheckpointEvery > 0 && tr.StepCount % Options.CheckpointEvery == 0 && tr.StepCount < Options.Steps)
            {
                log.Flush();
                Save();
                lastSaved = tr.StepCount;
            }
        }
        log.Flush();
        Save();
    }
}

/// <summary>A non-cycling activation source ran out after <see cref="Step"/> steps (<see cref="Got"/> of <see cref="Wanted"/> rows).</summary>
public sealed class SourceExhaustedException(long step, int got, int wanted)
    : InvalidOperationException($"the activation source ran out after {step} steps (got {got} of {wanted} rows); use a cycling source or fewer steps")
{
    public long Step { get; } = step;
    public int Got { get; } = got;
    public int Wanted { get; } = wanted;
}

/// <summary>The output folder already holds <see cref="Found"/> (a finished dictionary or a checkpoint) and the run
/// neither resumes nor overwrites it.</summary>
public sealed class OutputFolderInUseException(string dir, string found) : IOException($"{dir} already holds {found}; refusing to replace it")
{
    public string Directory { get; } = dir;
    public string Found { get; } = found;
}

/// <summary>An in-memory activation source over rows [N, Models, DModel], cycling; Position = rows consumed.</summary>
public sealed class ArrayBatches(float[] rowsNMD, int models, int dModel, bool cycle = true) : IActivationBatches
{
    public int Models { get; } = models;
    public int DModel { get; } = dModel;
    public long Rows => rowsNMD.Length / (Models * DModel);
    public long Position { get; private set; }
    public void Seek(long position) => Position = position;

    // xBND: [rows, Models, DModel]
    public int Next(Span<float> xBND, int rows)
    {
        int rowLen = Models * DModel;
        int n = 0;
        while (n < rows)
        {
            long r = cycle ? Position % Rows : Position;
            if (r >= Rows) break;
            rowsNMD.AsSpan((int)(r * rowLen), rowLen).CopyTo(xBND.Slice(n * rowLen, rowLen));
            Position++; n++;
        }
        return n;
    }
}

using System.Diagnostics;
using System.Globalization;
using System.Security.Cryptography;
using Finetrace.Models;
using Finetrace.Text.Chat;
using Finetrace.Text.Datasets;
using Finetrace.Text.Tokenization;

namespace Finetrace.Activations.Harvest;

/// <summary>Settings of one harvest (<c>finetrace harvest</c>).</summary>
public sealed record HarvestOptions
{
    public required string BaseModel { get; init; }
    public string? BaseAdapter { get; init; }
    public required string FineTunedModel { get; init; }
    /// <summary>LoRA adapter merged into the fine-tuned model (the fine-tuned model is then base weights + adapter).</summary>
    public string? Adapter { get; init; }
    public required IReadOnlyList<DataSourceSpec> Data { get; init; }
    public required int[] Layers { get; init; }
    /// <summary>Which activation of each layer to store (default: the residual after the block). Non-residual sites store
    /// what the block's attention or MLP branch adds to the residual, or the MLP hidden activation (width = intermediate).</summary>
    public HookSite Site { get; init; } = HookSite.ResidPost;
    public required long Tokens { get; init; }
    public required string Out { get; init; }
    public int ContextLength { get; init; } = 512;
    /// <summary>Samples per forward batch. Part of the settings: batch composition can change the last bits of
    /// activations, and a resumed run must be byte-identical.</summary>
    public int BatchSize { get; init; } = 16;
    public string Dtype { get; init; } = "bf16";
    public bool DropBos { get; init; }
    /// <summary>Drop the first n positions of every sample.</summary>
    public int SkipFirst { get; init; }
    /// <summary>Drop tokens whose activation norm (any model, any layer) exceeds this multiple of the sample's median
    /// norm (attention-sink outliers); 0 = keep all.</summary>
    public double OutlierFactor { get; init; }
    public long ShardTokens { get; init; } = 1 << 18;
    public bool CheckFreeSpace { get; init; } = true;
    /// <summary>Store only this part of the harvest (null = all of it); merge the parts with <see cref="StoreMerge"/>.</summary>
    public HarvestPart? Part { get; init; }
    /// <summary>How the two models are loaded and run (default: the CPU forward, <see cref="CausalLM"/>). A device
    /// other than the CPU is recorded in the store's settings (<see cref="Harvester.DeviceKey"/>,
    /// <see cref="Harvester.PrecisionKey"/>), and a store is resumed only on the device and precision it was begun with.</summary>
    public ForwardModelLoader Loader { get; init; } = ForwardModelLoader.Cpu;
}

/// <summary>The store in <see cref="Directory"/> was begun on another device or precision than this run's. Their
/// activations differ in the last bits (bf16 products by about 1e-2 relative), and a resumed store must equal an
/// uninterrupted one, so the run is refused rather than mixing the two.</summary>
public sealed class StoreDeviceMismatchException(string dir, string storedDevice, string storedPrecision, string device, string precision)
    : Exception($"{dir}: the store was harvested on {storedDevice} ({storedPrecision}) and this run uses {device} ({precision}); " +
                "activations of different devices or precisions differ in their last bits, so they are not mixed in one store. " +
                $"Resume it on {storedDevice} ({storedPrecision}), or write to another folder.")
{
    public string Directory { get; } = dir;
    public string StoredDevice { get; } = storedDevice;
    public string StoredPrecision { get; } = storedPrecision;
    public string Device { get; } = device;
    public string Precision { get; } = precision;
}

/// <summary>The data sources gave no token to store (empty files, or every sample skipped): <see cref="Sources"/> lists
/// each source's path and what was skipped. Nothing is stored; the store folder may be reused by any run.</summary>
public sealed class HarvestNoDataException(IReadOnlyList<(string Path, string Skipped)> sources)
    : IOException("the data gave no token to store: " + string.Join("; ", sources.Select(s => $"{s.Path} (skipped samples: {s.Skipped})")))
{
    public IReadOnlyList<(string Path, string Skipped)> Sources { get; } = sources;
}

/// <summary>Progress of a running harvest.</summary>
public readonly record struct HarvestProgress(long Tokens, long Target, long Samples, long BytesWritten, double Seconds, long ResumedTokens);

/// <summary>What a harvest did.</summary>
/// <param name="LoopSeconds">Time from the first batch to the last stored token (no model loading or hashing).</param>
/// <param name="ForwardSeconds">Part of it spent in the two models' forwards.</param>
/// <param name="LoopCpuSeconds">CPU time of the process (all threads) over the same span.</param>
/// <param name="Device">What ran the forwards, e.g. "cpu (fp32)" or "cuda (bf16, NVIDIA H100 80GB HBM3)".</param>
public sealed record HarvestResult(long Tokens, long Samples, long DroppedTokens, double Seconds, double LoopSeconds, double LoopCpuSeconds, double ForwardSeconds, bool Resumed, long ResumedTokens,
    IReadOnlyList<(string Source, SkipCounts Skipped, long Tokens)> Sources, string Device = "cpu (fp32)");

/// <summary>
/// Runs the base and the fine-tuned model on identical token ids, batch by batch, stopping each forward after the
/// last requested layer, and writes blocks.{L}.hook_resid_post of both into an activation store with the token ids,
/// per-token masks (BOS, template, user, assistant from the chat formatter) and source ids. Batches are fixed groups
/// of samples (batch k = samples [kB, (k+1)B)), so a resumed run recomputes exactly the batches of an uninterrupted
/// one and the store comes out byte-identical.
/// <para>
/// The models are <see cref="IForwardModel"/>s loaded by <see cref="HarvestOptions.Loader"/>: the CPU forward or a
/// device model. What overlaps: while batch n+1 runs its two forwards (on the CPU's threads, or on the device), a
/// background task copies batch n's kept tokens out of the captured activations into the store batch and appends it
/// (bf16 conversion, statistics, shard writes). On the critical path besides the forwards are only the captures — one
/// copy of each captured layer into one of two reused host arrays: a device model (<see cref="IActivationCapture"/>)
/// brings exactly these layers back, device → page-locked staging → the array, and nothing else (no copy back to the
/// device, no final residual, no logits); the CPU forward is copied from its hooks — and the choice of kept tokens,
/// which is made before the forward from the token ids alone, except with outlier dropping, where it needs the
/// activations' norms and follows the forward. The two buffer sets (capture arrays and store batch) alternate, so batch
/// n+1's capture never writes what batch n's store task still reads: the task of batch n is awaited after batch n+1's
/// forwards and before batch n+2's.
/// </para>
/// </summary>
public static class Harvester
{
    /// <summary>Settings keys of a store harvested on a device other than the CPU: the device ("cuda", "ilgpu-cpu") and the
    /// matrix-product precision ("fp32", "tf32", "bf16"). A CPU store has neither (so stores from before devices resume).</summary>
    public const string DeviceKey = "device", PrecisionKey = "precision";

    public static HarvestResult Run(HarvestOptions o, Action<HarvestProgress>? progress = null, CancellationToken cancel = default)
    {
        Validate(o);
        CheckDevice(o);
        using var baseModel = o.Loader.Load(o.BaseModel, o.BaseAdapter);
        using var ftModel = o.Loader.Load(o.FineTunedModel, o.Adapter);
        return Run(o, baseModel, ftModel, progress, cancel);
    }

    /// <summary>A harvest with models the caller loaded (from <see cref="HarvestOptions.BaseModel"/> and
    /// <see cref="HarvestOptions.FineTunedModel"/> with their adapters, by <see cref="HarvestOptions.Loader"/>, whose
    /// device and precision the store records; the folders are still read for hashes and the tokenizer).</summary>
    public static HarvestResult Run(HarvestOptions o, IForwardModel baseModel, IForwardModel ftModel, Action<HarvestProgress>? progress = null, CancellationToken cancel = default)
    {
        Validate(o);
        CheckDevice(o);
        var sw = Stopwatch.StartNew();
        if (baseModel.Hidden != ftModel.Hidden)
            throw new InvalidOperationException($"the models' residual widths differ: base {baseModel.Hidden} ({o.BaseModel}), fine-tuned {ftModel.Hidden} ({o.FineTunedModel}); they cannot be diffed");
        HookSites.Check(o.Site, baseModel.Config);
        HookSites.Check(o.Site, ftModel.Config);
        int width = HookSites.Width(o.Site, baseModel.Config);
        if (HookSites.Width(o.Site, ftModel.Config) != width)
            throw new InvalidOperationException($"the models' {HookSites.Template(o.Site)} widths differ: base {width} ({o.BaseModel}), fine-tuned {HookSites.Width(o.Site, ftModel.Config)} ({o.FineTunedModel}); they cannot be diffed");
        int maxLayer = o.Layers.Max();
        int layersAvail = Math.Min(baseModel.Layers, ftModel.Layers);
        if (o.Layers.Min() < 0 || maxLayer >= layersAvail)
            throw new SettingException(nameof(HarvestOptions.Layers), string.Join(",", o.Layers), $"the models have layers 0..{layersAvail - 1}");

        var (encoder, tokenizerDir, templateDir) = Encoder(o);
        var vocab = new VocabCheck(o, baseModel, ftModel);
        var settings = Settings(o, width, tokenizerDir, templateDir, encoder);
        // A part stores samples [firstSample, endSample) and exactly the tokens they keep; the whole run stops at the
        // sequence that reaches the token target.
        long firstSample = 0, endSample = long.MaxValue, target = o.Tokens;
        if (o.Part is { } part)
        {
            var plan = PlanParts(o, encoder);
            // No token at all: every part would be empty; fail as the unsharded harvest does.
            if (plan.Kept.Sum(k => (long)k) == 0)
                throw new HarvestNoDataException(o.Data.Select((d, i) => (d.Path, plan.Stream.Skipped[i].ToString())).ToList());
            var (fb, eb) = part.Batches(plan.Batches);
            firstSample = fb * o.BatchSize;
            endSample = Math.Min(eb * o.BatchSize, plan.Samples);
            firstSample = Math.Min(firstSample, endSample);
            target = 0;
            for (long k = firstSample; k < endSample; k++) target += plan.Kept[(int)k];
            var inv = CultureInfo.InvariantCulture;
            settings.Options[HarvestPart.PartKey] = part.ToString();
            settings.Options[HarvestPart.SamplesKey] = $"{firstSample.ToString(inv)}..{endSample.ToString(inv)}";
            settings.Options[HarvestPart.TotalSamplesKey] = plan.Samples.ToString(inv);
            settings.Options[HarvestPart.TargetTokensKey] = o.Tokens.ToString(inv);
        }
        // A part that keeps no token (more parts than batches) is an empty, complete store.
        using var writer = ActivationStoreWriter.Open(o.Out, settings, Math.Max(1, target), o.CheckFreeSpace);
        long resumeSeq = firstSample + writer.ResumeSequences;
        var stream = new SampleStream(o.Data, encoder, o.ContextLength);
        double forwardSeconds = 0, loopSeconds = 0, loopCpuSeconds = 0;
        long dropped = 0;

        if (!writer.IsComplete)
        {
            int models = 2, nl = o.Layers.Length, d = width;
            long seq = 0;
            Task? storing = null;
            // Two alternating sets of capture arrays and store batches: batch n's store task reads one while batch n+1's
            // forwards write the other.
            var slots = new[] { new BatchBuffers(models * nl), new BatchBuffers(models * nl) };
            int slotIndex = 0;
            using var samples = stream.Read().GetEnumerator();
            bool more = true;
            long stored = writer.Tokens;   // the writer's count is updated on the storing thread
            var loop = Stopwatch.StartNew();
            var cpu0 = Process.GetCurrentProcess().TotalProcessorTime;
            try
            {
            while (more && (o.Part is null ? stored < target : seq < endSample))
            {
                cancel.ThrowIfCancellationRequested();
                var batchSamples = new List<EncodedSample>(o.BatchSize);   // the store task of this batch keeps it
                long first = seq;
                while (batchSamples.Count < o.BatchSize && (more = samples.MoveNext())) { batchSamples.Add(samples.Current); seq++; }
                if (batchSamples.Count == 0) break;
                // Batches wholly before the resume point are only read (to keep the stream's state); a batch that
                // straddles it is recomputed whole so its activations are bit-identical to the uninterrupted run.
                if (seq <= resumeSeq) continue;
                foreach (var s in batchSamples) vocab.Check(s.Ids);

                var slot = slots[slotIndex];
                slotIndex ^= 1;
                var rows = batchSamples.Select(s => s.Ids).ToList();
                var tb = TokenBatch.RightPadded(rows);
                int skipBefore = (int)Math.Max(0, resumeSeq - first);
                // Which tokens are kept depends on the ids alone unless outliers are dropped: choose before the forward.
                var keep = o.OutlierFactor > 0 ? null : Select(o, batchSamples, tb.Seq, null, d, skipBefore, ref dropped);
                var t0 = Stopwatch.GetTimestamp();
                Capture(baseModel, "base", tb, o.Site, o.Layers, maxLayer, slot.Acts, 0);
                Capture(ftModel, "fine-tuned", tb, o.Site, o.Layers, maxLayer, slot.Acts, nl);
                forwardSeconds += Stopwatch.GetElapsedTime(t0).TotalSeconds;
                keep ??= Select(o, batchSamples, tb.Seq, slot.Acts, d, skipBefore, ref dropped);

                // Stop at the sequence that reaches the target, exactly where an uninterrupted run stops; a part stops
                // at its last sample (it may keep no token, and still counts).
                if (o.Part is null) keep.TrimToTarget(target - stored);
                else keep.TrimToSequences((int)Math.Min(keep.SequenceCount, endSample - Math.Max(first, resumeSeq)));
                stored += keep.TokenCount;
                bool last = keep.SequenceCount < batchSamples.Count - skipBefore;

                // The previous batch's store task is done with the other slot before the next forward writes it.
                storing?.GetAwaiter().GetResult();
                int seqLen = tb.Seq;
                storing = Task.Run(() => writer.Append(Fill(keep, batchSamples, seqLen, slot, models, nl, d)));
                if (last) break;
                progress?.Invoke(new HarvestProgress(stored, target, seq, stored * writer.BytesPerToken, sw.Elapsed.TotalSeconds, writer.ResumeTokens));
            }
            storing?.GetAwaiter().GetResult();
            }
            finally
            {
                // Never leave the writer to a running Append (Ctrl-C, errors): wait, then the writer's Dispose discards
                // the open shard and the store stays consistent.
                try { storing?.Wait(); } catch (AggregateException) { }
            }
            loopSeconds = loop.Elapsed.TotalSeconds;
            loopCpuSeconds = (Process.GetCurrentProcess().TotalProcessorTime - cpu0).TotalSeconds;
            if (writer.Tokens == 0 && o.Part is null)
                throw new HarvestNoDataException(o.Data.Select((s, i) => (s.Path, stream.Skipped[i].ToString())).ToList());
            writer.Manifest.Skipped = stream.Sources.Select((s, i) => (s.Name, stream.Skipped[i]))
                .ToDictionary(x => x.Name, x => new SortedDictionary<string, long>(x.Item2.Counts.ToDictionary(kv => kv.Key, kv => kv.Value), StringComparer.Ordinal));
            writer.Complete();
            progress?.Invoke(new HarvestProgress(writer.Tokens, target, seq, writer.BytesWritten, sw.Elapsed.TotalSeconds, writer.ResumeTokens));
        }
        var srcTokens = writer.Manifest.SourceTokens();
        return new HarvestResult(writer.Tokens, writer.Sequences, dropped, sw.Elapsed.TotalSeconds, loopSeconds, loopCpuSeconds, forwardSeconds, writer.ResumeSequences > 0, writer.ResumeTokens,
            o.Data.Select((s, i) => (s.Name, stream.Skipped[i], srcTokens[i])).ToList(), o.Loader.Describe());
    }

    /// <summary>The device and precision a store was harvested with ("cpu", "fp32" when it records none).</summary>
    public static (string Device, string Precision) DeviceOf(StoreSettings s) =>
        (s.Options.GetValueOrDefault(DeviceKey) ?? ForwardModelLoader.CpuDevice, s.Options.GetValueOrDefault(PrecisionKey) ?? ForwardModelLoader.Cpu.Precision);

    /// <summary>Refuses to resume a store begun on another device or precision (the settings check would refuse it
    /// too, less plainly).</summary>
    static void CheckDevice(HarvestOptions o)
    {
        string path = Path.Combine(Path.GetFullPath(o.Out), ActivationStoreWriter.ManifestFile);
        if (!File.Exists(path)) return;
        var m = StoreManifest.Load(path);
        if (ActivationStoreWriter.IsEmpty(m)) return;
        var (device, precision) = DeviceOf(m.Settings);
        if (device != o.Loader.Device || precision != o.Loader.Precision)
            throw new StoreDeviceMismatchException(Path.GetFullPath(o.Out), device, precision, o.Loader.Device, o.Loader.Precision);
    }

    static void Validate(HarvestOptions o)
    {
        if (o.Layers.Length == 0) throw new SettingException(nameof(o.Layers), null, "give at least one layer");
        if (o.Tokens < 1) throw new SettingException(nameof(o.Tokens), $"{o.Tokens}", "must be positive");
        if (o.BatchSize < 1) throw new SettingException(nameof(o.BatchSize), $"{o.BatchSize}", "must be positive");
        if (o.ContextLength < 1) throw new SettingException(nameof(o.ContextLength), $"{o.ContextLength}", "must be positive");
        if (o.SkipFirst < 0) throw new SettingException(nameof(o.SkipFirst), $"{o.SkipFirst}", "must be ≥ 0");
        if (o.OutlierFactor < 0) throw new SettingException(nameof(o.OutlierFactor), $"{o.OutlierFactor}", "must be ≥ 0 (0 = off)");
        if (o.Data.Count == 0) throw new SettingException(nameof(o.Data), null, "give at least one data source");
        o.Part?.Validate();
        // Outlier drops depend on the activations, so the kept tokens of a sample are unknown before its forward.
        if (o.OutlierFactor > 0 && o.Part is { IsWhole: false })
            throw new SettingException(nameof(HarvestOptions.OutlierFactor), o.OutlierFactor.ToString(CultureInfo.InvariantCulture),
                "outlier dropping cannot be combined with a harvest split into parts (which tokens an outlier drop keeps is only known after the forward); harvest in one part, or without outlier dropping");

        if (o.Data.Select(d => d.Name).Distinct().Count() != o.Data.Count) throw new SettingException(nameof(o.Data), null, "source names repeat; give each a name=… option");
    }

    /// <summary>The host arrays of one batch in flight: the captured activations ([models × layers], each [B·T, width],
    /// grown as needed and reused) and the store batch they are copied into.</summary>
    sealed class BatchBuffers(int arrays)
    {
        public readonly float[]?[] Acts = new float[arrays][];
        public StoreBatch Batch = new();
    }

    /// <summary>Runs one model to the last requested layer and copies the requested site's activations [B·T, width]
    /// into <paramref name="acts"/>[slot + l] (reused when large enough): through <see cref="IActivationCapture"/> when
    /// the model offers it (a device model: one copy of each captured layer, nothing else), else through hooks.</summary>
    static void Capture(IForwardModel model, string which, TokenBatch tb, HookSite site, int[] layers, int maxLayer, float[]?[] acts, int slot)
    {
        float[] Buffer(int l, int n)
        {
            var buf = acts[slot + l];
            if (buf is null || buf.Length < n) acts[slot + l] = buf = GC.AllocateUninitializedArray<float>(n);
            return buf;
        }
        var names = layers.Select(l => HookSites.Name(site, l)).ToArray();
        if (model is IActivationCapture capture)
        {
            capture.Capture(tb, names, maxLayer, Buffer);
            return;
        }
        var hooks = new HookSet();
        var fired = new bool[layers.Length];
        for (int l = 0; l < layers.Length; l++)
        {
            int li = l;
            hooks.On(names[l], (a, _) =>
            {
                a.Data.AsSpan().CopyTo(Buffer(li, a.Length));
                fired[li] = true;
            });
        }
        model.Forward(tb, hooks, stopAfterLayer: maxLayer);
        // A model that skipped a hook would leave the previous batch's activations in the buffer: never store those.
        for (int l = 0; l < layers.Length; l++)
            if (!fired[l])
                throw new InvalidOperationException($"the {which} model ({model.Folder}) ran without reporting {names[l]}; its forward does not support this hook site");
    }

    /// <summary>The tokens a batch keeps: (sample, position) pairs, sequence by sequence, and each sequence's count;
    /// the counts may be trimmed to the first sequences.</summary>
    sealed class Selection(List<(int Sample, int Pos)> keep, List<int> seqLens)
    {
        public readonly List<(int Sample, int Pos)> Keep = keep;
        public readonly List<int> SequenceLengths = seqLens;
        public int SequenceCount = seqLens.Count, TokenCount = keep.Count;

        /// <summary>Keeps the first <paramref name="count"/> sequences.</summary>
        public void TrimToSequences(int count)
        {
            int tokens = 0;
            for (int s = 0; s < count; s++) tokens += SequenceLengths[s];
            SequenceCount = count;
            TokenCount = tokens;
        }

        /// <summary>Keeps the first sequences up to the one that reaches <paramref name="room"/> tokens.</summary>
        public void TrimToTarget(long room)
        {
            long tokens = 0;
            for (int s = 0; s < SequenceCount; s++)
            {
                tokens += SequenceLengths[s];
                if (tokens >= room) { SequenceCount = s + 1; TokenCount = (int)tokens; return; }
            }
        }
    }

    /// <summary>Kept tokens of the batch's samples. Drops BOS (when asked), the first n positions, and — given the
    /// activations — outliers: tokens whose norm exceeds factor × the sample's median norm in any model and layer.</summary>
    static Selection Select(HarvestOptions o, List<EncodedSample> samples, int seqLen, float[]?[]? acts, int d, int skipBefore, ref long dropped)
    {
        var keep = new List<(int Sample, int Pos)>();
        var seqLens = new List<int>();
        for (int b = skipBefore; b < samples.Count; b++)
        {
            var s = samples[b];
            var cand = new List<int>();
            for (int p = 0; p < s.Ids.Length; p++)
                if (Keeps(o, s, p)) cand.Add(p);
            if (o.OutlierFactor > 0 && cand.Count > 0)
            {
                var bad = new HashSet<int>();
                foreach (var a in acts!)
                {
                    var n = cand.Select(p => System.Numerics.Tensors.TensorPrimitives.Norm(a.AsSpan((b * seqLen + p) * d, d))).ToArray();
                    var sorted = (float[])n.Clone();
                    Array.Sort(sorted);
                    double median = sorted.Length % 2 == 1 ? sorted[sorted.Length / 2] : 0.5 * (sorted[sorted.Length / 2 - 1] + sorted[sorted.Length / 2]);
                    for (int k = 0; k < n.Length; k++) if (n[k] > o.OutlierFactor * median) bad.Add(cand[k]);
                }
                cand.RemoveAll(bad.Contains);
            }
            dropped += s.Ids.Length - cand.Count;
            foreach (int p in cand) keep.Add((b, p));
            seqLens.Add(cand.Count);
        }
        return new Selection(keep, seqLens);
    }

    /// <summary>The selected tokens as a store batch (the slot's batch, grown as needed): ids, positions, sources,
    /// masks and each model's and layer's activation rows. Runs on the store task.</summary>
    static StoreBatch Fill(Selection sel, List<EncodedSample> samples, int seqLen, BatchBuffers slot, int models, int nl, int d)
    {
        int n = sel.TokenCount;
        var batch = slot.Batch;
        if (batch.Tokens.Length < n || batch.SequenceLengths.Length < sel.SequenceCount || batch.Activations.Length != models * nl)
        {
            int cap = Math.Max(n, batch.Tokens.Length), seqCap = Math.Max(sel.SequenceCount, batch.SequenceLengths.Length);
            batch = slot.Batch = new StoreBatch
            {
                Tokens = new int[cap], Positions = new int[cap], Masks = new byte[cap], Sources = new ushort[cap], SequenceLengths = new int[seqCap],
                Activations = Enumerable.Range(0, models * nl).Select(_ => GC.AllocateUninitializedArray<float>(cap * d)).ToArray(),
            };
        }
        batch.TokenCount = n;
        batch.SequenceCount = sel.SequenceCount;
        for (int s = 0; s < sel.SequenceCount; s++) batch.SequenceLengths[s] = sel.SequenceLengths[s];
        for (int t = 0; t < n; t++)
        {
            var (b, p) = sel.Keep[t];
            var s = samples[b];
            batch.Tokens[t] = s.Ids[p];
            batch.Positions[t] = p;
            batch.Sources[t] = (ushort)s.Source;
            batch.Masks[t] = (byte)MaskOf(s, p);
        }
        for (int a = 0; a < models * nl; a++)
        {
            var src = slot.Acts[a]!;
            var dst = batch.Activations[a];
            for (int t = 0; t < n; t++)
            {
                var (b, p) = sel.Keep[t];
                src.AsSpan((b * seqLen + p) * d, d).CopyTo(dst.AsSpan(t * d, d));
            }
        }
        return batch;
    }

    /// <summary>Whether position <paramref name="p"/> survives the BOS and first-n drops (outliers aside).</summary>
    static bool Keeps(HarvestOptions o, EncodedSample s, int p)
    {
        bool bos = p < s.BosTokens || s.Roles?[p] == TokenRole.Bos;
        return !(p < o.SkipFirst || (o.DropBos && bos));
    }

    /// <summary>How the whole harvest divides into batches: the samples it reads up to the one that reaches the token
    /// target (or the end of the data), with each sample's kept tokens. Tokenizing only, no forward: every part
    /// computes the same plan on its own.</summary>
    internal sealed record PartPlan(long Samples, long Batches, List<int> Kept, SampleStream Stream);

    internal static PartPlan PlanParts(HarvestOptions o, ISampleEncoder encoder)
    {
        var kept = new List<int>();
        long tokens = 0;
        var stream = new SampleStream(o.Data, encoder, o.ContextLength);
        foreach (var s in stream.Read())
        {
            int k = 0;
            for (int p = 0; p < s.Ids.Length; p++) if (Keeps(o, s, p)) k++;
            kept.Add(k);
            tokens += k;
            if (tokens >= o.Tokens) break;
        }
        return new PartPlan(kept.Count, (kept.Count + o.BatchSize - 1) / o.BatchSize, kept, stream);
    }

    internal static TokenMask MaskOf(EncodedSample s, int p)
    {
        if (s.Roles is null) return p < s.BosTokens ? TokenMask.Bos : TokenMask.None;
        return s.Roles[p] switch
        {
            TokenRole.Bos => TokenMask.Bos,
            TokenRole.Template => TokenMask.Template,
            TokenRole.User => TokenMask.User,
            TokenRole.Assistant => TokenMask.Assistant,
            TokenRole.System => TokenMask.System,
            _ => TokenMask.Tool,
        };
    }

    /// <summary>Tokenizer and chat template: the fine-tuned model's, falling back to the base model's.</summary>
    static (ModelSampleEncoder Encoder, string TokenizerDir, string? TemplateDir) Encoder(HarvestOptions o)
    {
        string tokDir = File.Exists(Path.Combine(o.FineTunedModel, "tokenizer.json")) ? o.FineTunedModel
            : File.Exists(Path.Combine(o.BaseModel, "tokenizer.json")) ? o.BaseModel
            : throw new FileNotFoundException($"no tokenizer.json in {o.FineTunedModel} or {o.BaseModel}; the harvest needs the tokenizer");
        var tok = Tokenizer.FromFolder(tokDir);
        foreach (var dir in new[] { o.FineTunedModel, o.BaseModel })
        {
            try { return (new ModelSampleEncoder(tok, new ChatFormatter(tok, ChatTemplate.FromFolder(dir))), tokDir, dir); }
            catch (InvalidDataException) when (dir == o.FineTunedModel) { }
            catch (InvalidDataException e) { return (new ModelSampleEncoder(tok, null, e), tokDir, null); }
        }
        throw new InvalidOperationException("unreachable");
    }

    static StoreSettings Settings(HarvestOptions o, int dModel, string tokenizerDir, string? templateDir, ModelSampleEncoder enc)
    {
        var inv = CultureInfo.InvariantCulture;
        double wsum = o.Data.Sum(d => d.Weight);
        var s = new StoreSettings
        {
            Models =
            [
                ModelEntry(o.BaseModel, o.BaseAdapter),
                ModelEntry(o.FineTunedModel, o.Adapter),
            ],
            Layers = o.Layers,
            Hook = HookSites.Template(o.Site),
            Dtype = StoreDTypes.Name(StoreDTypes.Parse(o.Dtype)),
            DModel = dModel,
            ShardTokens = o.ShardTokens,
            Sources = o.Data.Select(d =>
            {
                var src = new StoreSource { Name = d.Name, Kind = d.Kind.ToString().ToLowerInvariant(), Path = Path.GetFullPath(d.Path), Proportion = d.Weight / wsum };
                if (d.Field is not null) src.Options["field"] = d.Field;
                if (d.MaxSamples != long.MaxValue) src.Options["max_samples"] = d.MaxSamples.ToString(inv);
                if (d.MaxTokens != long.MaxValue) src.Options["max_tokens"] = d.MaxTokens.ToString(inv);
                if (d.Kind == DataKind.Text) src.Options["split"] = d.SplitBlankLines ? "blank" : "file";
                src.Options["sha256"] = HashPath(d.Path);
                return src;
            }).ToList(),
        };
        s.Options["context_length"] = o.ContextLength.ToString(inv);
        s.Options["batch_size"] = o.BatchSize.ToString(inv);
        s.Options["drop_bos"] = o.DropBos ? "true" : "false";
        s.Options["skip_first"] = o.SkipFirst.ToString(inv);
        s.Options["outlier_factor"] = o.OutlierFactor.ToString("R", inv);
        s.Options["tokenizer"] = Path.GetFullPath(tokenizerDir);
        s.Options["tokenizer_sha256"] = HashFile(Path.Combine(tokenizerDir, "tokenizer.json"));
        s.Options["chat_template_sha256"] = enc.Chat is null ? "none" : Convert.ToHexStringLower(SHA256.HashData(System.Text.Encoding.UTF8.GetBytes(enc.Chat.Template.Source)));
        if (templateDir is not null) s.Options["chat_template_from"] = Path.GetFullPath(templateDir);
        if (!o.Loader.IsCpu)
        {
            s.Options[DeviceKey] = o.Loader.Device;
            s.Options[PrecisionKey] = o.Loader.Precision;
        }
        return s;
    }

    static StoreModel ModelEntry(string dir, string? adapter)
    {
        var files = new List<StoreFileHash>();
        foreach (var folder in adapter is null ? new[] { dir } : new[] { dir, adapter })
            foreach (var f in Directory.EnumerateFiles(folder).Where(f => f.EndsWith(".safetensors", StringComparison.Ordinal) || Path.GetFileName(f) is "config.json" or "adapter_config.json")
                         .Where(f => Path.GetFileName(f) != "expected.safetensors").Order(StringComparer.Ordinal))
                files.Add(new StoreFileHash { Name = Path.GetRelativePath(dir, f), Bytes = new FileInfo(f).Length, Sha256 = HashFile(f) });
        return new StoreModel { Name = Path.GetFileName(Path.GetFullPath(dir).TrimEnd('/')), Path = Path.GetFullPath(dir), Adapter = adapter is null ? null : Path.GetFullPath(adapter), Files = files };
    }

    static string HashFile(string path)
    {
        using var fs = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 20);
        return Convert.ToHexStringLower(SHA256.HashData(fs));
    }

    static string HashPath(string path)
    {
        if (File.Exists(path)) return HashFile(path);
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        foreach (var f in Directory.EnumerateFiles(path, "*", SearchOption.AllDirectories).Order(StringComparer.Ordinal))
        {
            sha.AppendData(System.Text.Encoding.UTF8.GetBytes(Path.GetRelativePath(path, f) + "\n"));
            sha.AppendData(Convert.FromHexString(HashFile(f)));
        }
        return Convert.ToHexStringLower(sha.GetHashAndReset());
    }

    /// <summary>Both models must read every harvested id as the same token: ids inside both vocabularies, and the same
    /// token string in both tokenizers when both folders have one.</summary>
    sealed class VocabCheck
    {
        readonly HarvestOptions _o;
        readonly int _vocab;
        readonly Tokenizer? _a, _b;
        readonly HashSet<int> _seen = [];

        public VocabCheck(HarvestOptions o, IForwardModel baseModel, IForwardModel ft)
        {
            _o = o;
            _vocab = Math.Min(baseModel.Config.Vocab, ft.Config.Vocab);
            string ta = Path.Combine(o.BaseModel, "tokenizer.json"), tb = Path.Combine(o.FineTunedModel, "tokenizer.json");
            if (File.Exists(ta) && File.Exists(tb) && !File.ReadAllBytes(ta).AsSpan().SequenceEqual(File.ReadAllBytes(tb)))
            {
                _a = Tokenizer.FromFolder(o.BaseModel);
                _b = Tokenizer.FromFolder(o.FineTunedModel);
            }
        }

        public void Check(int[] ids)
        {
            foreach (int id in ids)
            {
                if (!_seen.Add(id)) continue;
                if ((uint)id >= (uint)_vocab)
                    throw new InvalidOperationException($"token id {id} is outside the vocabulary shared by both models ({_vocab}); the models' vocabularies do not agree with the tokenizer");
                if (_a is not null && _b is not null && _a.IdToToken(id) != _b.IdToToken(id))
                    throw new InvalidOperationException($"the models' tokenizers disagree on token id {id}: '{_a.IdToToken(id)}' in {_o.BaseModel}, '{_b.IdToToken(id)}' in {_o.FineTunedModel}; both models must read the same ids as the same tokens");
            }
        }
    }
}

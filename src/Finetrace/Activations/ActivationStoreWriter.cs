using System.Runtime.InteropServices;
using Finetrace.Models.Safetensors;
using Finetrace.Tensors;

namespace Finetrace.Activations;

/// <summary>
/// A batch for <see cref="ActivationStoreWriter.Append"/>: whole sequences (samples) laid end to end. Token-level
/// arrays hold <see cref="TokenCount"/> entries, <see cref="SequenceLengths"/> holds <see cref="SequenceCount"/>
/// lengths summing to TokenCount (0 is allowed: a sample whose tokens were all dropped still counts, so a resumed
/// run skips the right number of samples). Activations are [TokenCount, D] per model and layer. Arrays may be longer
/// than the counts, so callers can reuse them.
/// </summary>
public sealed class StoreBatch
{
    public int TokenCount;
    public int SequenceCount;
    public int[] Tokens = [];
    /// <summary>Position of each kept token inside its sample (before any dropping).</summary>
    public int[] Positions = [];
    public byte[] Masks = [];
    public ushort[] Sources = [];
    public int[] SequenceLengths = [];
    /// <summary>[models × layers], index model · layers + layerIndex; each [TokenCount, D] row-major.</summary>
    public float[][] Activations = [];

    public StoreBatch() { }

    public StoreBatch(int capacityTokens, int capacitySequences, int models, int layers, int dModel)
    {
        Tokens = new int[capacityTokens];
        Positions = new int[capacityTokens];
        Masks = new byte[capacityTokens];
        Sources = new ushort[capacityTokens];
        SequenceLengths = new int[capacitySequences];
        Activations = new float[models * layers][];
        for (int i = 0; i < Activations.Length; i++) Activations[i] = new float[(long)capacityTokens * dModel];
    }
}

/// <summary>The disk cannot hold the rest of the store: <see cref="NeededBytes"/> for <see cref="RemainingTokens"/>
/// more tokens against <see cref="FreeBytes"/>.</summary>
public sealed class StoreDiskSpaceException(string dir, long remainingTokens, long bytesPerToken, long neededBytes, long freeBytes, string message)
    : IOException(message)
{
    public string Directory { get; } = dir;
    public long RemainingTokens { get; } = remainingTokens;
    public long BytesPerToken { get; } = bytesPerToken;
    public long NeededBytes { get; } = neededBytes;
    public long FreeBytes { get; } = freeBytes;
}

/// <summary>The stored settings differ from the requested ones; <see cref="Differences"/> lists them.</summary>
public sealed class StoreSettingsMismatchException(string dir, IReadOnlyList<string> differences)
    : Exception($"{dir}: the store was written with different settings; refusing to mix runs. Differences:\n  " +
                string.Join("\n  ", differences) + "\nWrite to another folder, or use the same settings to resume.")
{
    public string Directory { get; } = dir;
    public IReadOnlyList<string> Differences { get; } = differences;
}

/// <summary>
/// Writes an activation store (a folder): manifest.json, and shard_NNNNN/ folders each holding
/// <c>m{model}.l{layer}.{bf16|f32}</c> raw row-major [N, D] activations and <c>index.safetensors</c> (tokens,
/// positions, masks, sources, sequence lengths, per-shard Welford state). A shard is built in shard_NNNNN.tmp/ and
/// renamed when complete, then the manifest is replaced atomically; shard boundaries fall at the first sequence
/// boundary at or past <see cref="StoreSettings.ShardTokens"/>, so shard content depends only on the sequence
/// stream and a crashed-then-resumed run is byte-identical to an uninterrupted one.
/// </summary>
public sealed class ActivationStoreWriter : IDisposable
{
    public const string ManifestFile = "manifest.json";
    const string TmpSuffix = ".tmp";

    public string Directory { get; }
    public StoreManifest Manifest { get; }
    public StoreSettings Settings => Manifest.Settings;
    /// <summary>Samples already stored in complete shards when the writer opened (skip these when resuming).</summary>
    public long ResumeSequences { get; }
    public long ResumeTokens { get; }
    /// <summary>Tokens and samples accepted so far, including the open shard.</summary>
    public long Tokens => Manifest.Tokens + (_shard?.Rows ?? 0);
    public long Sequences => Manifest.Sequences + (_shard?.SeqLens.Count ?? 0);
    public long BytesWritten => Manifest.Shards.Sum(s => s.Bytes) + (_shard?.Bytes ?? 0);
    public bool IsComplete => Manifest.Complete;
    /// <summary>Bytes one token occupies on disk (activations of every model and layer plus the token-level arrays).</summary>
    public long BytesPerToken { get; }

    readonly int _models, _layers, _d;
    readonly StoreDType _dtype;
    OpenShard? _shard;

    ActivationStoreWriter(string dir, StoreManifest manifest)
    {
        Directory = dir;
        Manifest = manifest;
        var s = manifest.Settings;
        _models = s.Models.Count; _layers = s.Layers.Length; _d = s.DModel; _dtype = s.DType;
        BytesPerToken = EstimateBytesPerToken(s);
        ResumeSequences = manifest.Sequences;
        ResumeTokens = manifest.Tokens;
    }

    public static long EstimateBytesPerToken(StoreSettings s) =>
        (long)s.Models.Count * s.Layers.Length * s.DModel * StoreDTypes.Bytes(s.DType) + 4 + 4 + 1 + 2;

    /// <summary>
    /// Creates a store, or resumes the one in <paramref name="dir"/> (settings must be identical). Removes an
    /// unfinished shard and any shard folder the manifest does not list. Refuses when the free disk space cannot hold
    /// the remaining <paramref name="targetTokens"/>.
    /// </summary>
    public static ActivationStoreWriter Open(string dir, StoreSettings settings, long targetTokens, bool checkFreeSpace = true)
    {
        settings.Validate();
        if (targetTokens < 1) throw new ArgumentException($"target tokens must be positive, got {targetTokens}");
        dir = System.IO.Path.GetFullPath(dir);
        string manifestPath = System.IO.Path.Combine(dir, ManifestFile);
        StoreManifest manifest;
        // A store that holds no token yet (a run that failed before its first batch, e.g. on mismatched vocabularies)
        // has nothing to protect: any run may replace it.
        if (File.Exists(manifestPath) && IsEmpty(StoreManifest.Load(manifestPath))) File.Delete(manifestPath);
        if (File.Exists(manifestPath))
        {
            manifest = StoreManifest.Load(manifestPath);
            var diffs = StoreSettings.Diff(manifest.Settings, settings);
            if (diffs.Count > 0) throw new StoreSettingsMismatchException(dir, diffs);
            var listed = new HashSet<string>(manifest.Shards.Select(s => s.Name), StringComparer.Ordinal);
            foreach (var sub in System.IO.Directory.GetDirectories(dir, "shard_*"))
            {
                string name = System.IO.Path.GetFileName(sub);
                // Unfinished shards, and complete ones renamed just before a crash that kept them out of the manifest.
                if (!listed.Contains(name)) System.IO.Directory.Delete(sub, recursive: true);
            }
            foreach (var s in manifest.Shards)
                if (!System.IO.Directory.Exists(System.IO.Path.Combine(dir, s.Name)))
                    throw new InvalidDataException($"{dir}: the manifest lists {s.Name} but the folder is missing; the store is damaged (start a new one)");
            if (targetTokens > manifest.Tokens) manifest.Complete = false;
        }
        else
        {
            if (System.IO.Directory.Exists(dir) && System.IO.Directory.EnumerateFileSystemEntries(dir).Any(e => !System.IO.Path.GetFileName(e).StartsWith("shard_", StringComparison.Ordinal)))
                throw new IOException($"{dir}: the folder is not empty and holds no activation store manifest; choose an empty or new folder");
            System.IO.Directory.CreateDirectory(dir);
            foreach (var sub in System.IO.Directory.GetDirectories(dir, "shard_*")) System.IO.Directory.Delete(sub, recursive: true);
            manifest = new StoreManifest { Settings = settings };
        }
        manifest.TargetTokens = targetTokens;
        manifest.CodeVersion = StoreJson.CodeVersion;
        var w = new ActivationStoreWriter(dir, manifest);
        if (checkFreeSpace) w.CheckFreeSpace(targetTokens);
        manifest.Save(manifestPath);
        return w;
    }

    /// <summary>True when the manifest lists no token and no shard: nothing was stored.</summary>
    public static bool IsEmpty(StoreManifest m) => m.Tokens == 0 && m.Shards.Count == 0;

    void CheckFreeSpace(long targetTokens)
    {
        long remaining = Math.Max(0, targetTokens - Manifest.Tokens);
        // One shard may run past the target by up to a sequence; allow 2% and 64 MiB of slack.
        long need = (long)(remaining * BytesPerToken * 1.02) + (64L << 20);
        long free = FreeBytes(Directory);
        if (free >= 0 && need > free)
            throw new StoreDiskSpaceException(Directory, remaining, BytesPerToken, need, free,
                $"{Directory}: not enough free disk space: {remaining:N0} more tokens × {BytesPerToken:N0} bytes/token " +
                $"({Settings.Models.Count} models × {Settings.Layers.Length} layers × d_model {Settings.DModel} × {StoreDTypes.Name(Settings.DType)}) " +
                $"≈ {Human(need)} needed, {Human(free)} free. Store fewer tokens or layers, bf16 instead of f32, or use another disk.");
    }

    /// <summary>Free bytes on the file system holding <paramref name="dir"/>, or −1 when unknown.</summary>
    public static long FreeBytes(string dir)
    {
        try
        {
            // DriveInfo takes a mount point; pick the longest mount point that prefixes the folder.
            string full = System.IO.Path.GetFullPath(dir);
            DriveInfo? best = null;
            foreach (var d in DriveInfo.GetDrives())
            {
                string root = d.RootDirectory.FullName;
                if (full.StartsWith(root, StringComparison.Ordinal) && (best is null || root.Length > best.RootDirectory.FullName.Length))
                    best = d;
            }
            return best?.AvailableFreeSpace ?? -1;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return -1; }
    }

    public static string Human(long bytes) => bytes switch
    {
        >= 1L << 40 => $"{bytes / (double)(1L << 40):F2} TiB",
        >= 1L << 30 => $"{bytes / (double)(1L << 30):F2} GiB",
        >= 1L << 20 => $"{bytes / (double)(1L << 20):F1} MiB",
        >= 1L << 10 => $"{bytes / 1024.0:F1} KiB",
        _ => $"{bytes} B",
    };

    /// <summary>Appends whole sequences; closes a shard whenever it reaches the shard size at a sequence boundary.</summary>
    public void Append(StoreBatch batch)
    {
        if (Manifest.Complete) throw new InvalidOperationException($"{Directory}: the store is complete; open it with a larger target to extend it");
        if (batch.Activations.Length != _models * _layers)
            throw new ArgumentException($"batch has {batch.Activations.Length} activation arrays, the store expects {_models} models × {_layers} layers");
        long sum = 0;
        for (int s = 0; s < batch.SequenceCount; s++)
        {
            if (batch.SequenceLengths[s] < 0) throw new ArgumentException($"negative sequence length at {s}");
            sum += batch.SequenceLengths[s];
        }
        if (sum != batch.TokenCount) throw new ArgumentException($"sequence lengths sum to {sum}, batch has {batch.TokenCount} tokens");
        foreach (var a in batch.Activations)
            if (a.LongLength < (long)batch.TokenCount * _d) throw new ArgumentException($"an activation array holds {a.LongLength} values, fewer than {batch.TokenCount} tokens × d_model {_d}");
        for (int t = 0; t < batch.TokenCount; t++)
            if (batch.Sources[t] >= Settings.Sources.Count) throw new ArgumentException($"token {t} has source id {batch.Sources[t]}, the store has {Settings.Sources.Count} sources");

        int offset = 0;
        for (int s = 0; s < batch.SequenceCount; s++)
        {
            int len = batch.SequenceLengths[s];
            _shard ??= new OpenShard(this, Manifest.Shards.Count);
            _shard.AddSequence(batch, offset, len);
            offset += len;
            if (_shard.Rows >= Settings.ShardTokens) CloseShard();
        }
    }

    /// <summary>Writes the last (partial) shard and marks the store complete.</summary>
    public void Complete()
    {
        if (_shard is { SeqLens.Count: > 0 }) CloseShard();
        Manifest.Complete = true;
        Manifest.Save(System.IO.Path.Combine(Directory, ManifestFile));
    }

    void CloseShard()
    {
        var entry = _shard!.Close();
        _shard = null;
        Manifest.Shards.Add(entry);
        Manifest.Tokens += entry.Tokens;
        Manifest.Sequences += entry.Sequences;
        Manifest.Save(System.IO.Path.Combine(Directory, ManifestFile));
    }

    /// <summary>Closes files without finishing the open shard: like a crash, the next Open discards it.</summary>
    public void Dispose()
    {
        _shard?.Abandon();
        _shard = null;
    }

    internal static string ActivationFile(int model, int layer, StoreDType dtype) => $"m{model}.l{layer}.{StoreDTypes.Name(dtype)}";
    internal static string StatsName(int model, int layer, string part) => $"stats.m{model}.l{layer}.{part}";

    sealed class OpenShard
    {
        readonly ActivationStoreWriter _w;
        readonly string _name, _tmp;
        readonly FileStream[] _files;
        readonly RunningStats[] _stats;
        readonly List<int> _tokens = [], _positions = [];
        readonly List<byte> _masks = [];
        readonly List<ushort> _sources = [];
        public readonly List<int> SeqLens = [];
        readonly long[] _sourceTokens;
        ushort[] _bits = [];
        float[] _row = [];
        public long Rows;
        public long Bytes;

        public OpenShard(ActivationStoreWriter w, int index)
        {
            _w = w;
            _name = $"shard_{index:D5}";
            _tmp = System.IO.Path.Combine(w.Directory, _name + TmpSuffix);
            if (System.IO.Directory.Exists(_tmp)) System.IO.Directory.Delete(_tmp, recursive: true);
            System.IO.Directory.CreateDirectory(_tmp);
            _files = new FileStream[w._models * w._layers];
            _stats = new RunningStats[_files.Length];
            for (int m = 0; m < w._models; m++)
                for (int l = 0; l < w._layers; l++)
                {
                    int i = m * w._layers + l;
                    _files[i] = new FileStream(System.IO.Path.Combine(_tmp, ActivationFile(m, w.Settings.Layers[l], w._dtype)),
                        FileMode.CreateNew, FileAccess.Write, FileShare.Read, 1 << 20);
                    _stats[i] = new RunningStats(w._d);
                }
            _sourceTokens = new long[w.Settings.Sources.Count];
            _row = new float[w._d];
        }

        public void AddSequence(StoreBatch b, int offset, int len)
        {
            int d = _w._d;
            for (int i = 0; i < _files.Length; i++)
            {
                var src = b.Activations[i].AsSpan(offset * d, len * d);
                if (_w._dtype == StoreDType.BF16)
                {
                    if (_bits.Length < src.Length) _bits = new ushort[src.Length];
                    var bits = _bits.AsSpan(0, src.Length);
                    Precision.F32ToBF16(src, bits);
                    _files[i].Write(MemoryMarshal.AsBytes(bits));
                    // Statistics of the stored (rounded) values: what every reader will see.
                    for (int t = 0; t < len; t++)
                    {
                        Precision.BF16ToF32(bits.Slice(t * d, d), _row);
                        _stats[i].Add(_row);
                    }
                }
                else
                {
                    _files[i].Write(MemoryMarshal.AsBytes(src));
                    for (int t = 0; t < len; t++) _stats[i].Add(src.Slice(t * d, d));
                }
            }
            for (int t = offset; t < offset + len; t++)
            {
                _tokens.Add(b.Tokens[t]);
                _positions.Add(b.Positions[t]);
                _masks.Add(b.Masks[t]);
                _sources.Add(b.Sources[t]);
                _sourceTokens[b.Sources[t]]++;
            }
            SeqLens.Add(len);
            Rows += len;
            Bytes += len * _w.BytesPerToken;
        }

        public StoreShardEntry Close()
        {
            foreach (var f in _files) { f.Flush(flushToDisk: true); f.Dispose(); }
            var s = _w.Settings;
            var tensors = new List<TensorData>
            {
                new("tokens", DType.I32, [_tokens.Count], MemoryMarshal.AsBytes(CollectionsMarshal.AsSpan(_tokens)).ToArray()),
                new("positions", DType.I32, [_positions.Count], MemoryMarshal.AsBytes(CollectionsMarshal.AsSpan(_positions)).ToArray()),
                new("masks", DType.U8, [_masks.Count], _masks.ToArray()),
                new("sources", DType.U16, [_sources.Count], MemoryMarshal.AsBytes(CollectionsMarshal.AsSpan(_sources)).ToArray()),
                new("sequence_lengths", DType.I32, [SeqLens.Count], MemoryMarshal.AsBytes(CollectionsMarshal.AsSpan(SeqLens)).ToArray()),
            };
            for (int m = 0; m < _w._models; m++)
                for (int l = 0; l < _w._layers; l++)
                {
                    var st = _stats[m * _w._layers + l];
                    int layer = s.Layers[l];
                    tensors.Add(TensorData.I64(StatsName(m, layer, "count"), [st.Count], 1));
                    tensors.Add(new(StatsName(m, layer, "mean"), DType.F64, [_w._d], MemoryMarshal.AsBytes(st.Mean.AsSpan()).ToArray()));
                    tensors.Add(new(StatsName(m, layer, "m2"), DType.F64, [_w._d], MemoryMarshal.AsBytes(st.M2.AsSpan()).ToArray()));
                }
            SafetensorsWriter.Write(System.IO.Path.Combine(_tmp, "index.safetensors"), tensors);
            string final = System.IO.Path.Combine(_w.Directory, _name);
            System.IO.Directory.Move(_tmp, final);
            long bytes = new DirectoryInfo(final).EnumerateFiles().Sum(f => f.Length);
            return new StoreShardEntry { Name = _name, Tokens = Rows, Sequences = SeqLens.Count, Bytes = bytes, SourceTokens = _sourceTokens };
        }

        public void Abandon()
        {
            foreach (var f in _files) f.Dispose();
        }
    }
}

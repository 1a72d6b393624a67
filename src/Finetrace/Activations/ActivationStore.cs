using System.IO.MemoryMappedFiles;
using System.Runtime.InteropServices;
using Finetrace.Models.Safetensors;
using Finetrace.Tensors;

namespace Finetrace.Activations;

/// <summary>
/// A read-only activation store (see <see cref="ActivationStoreWriter"/> for the layout). Shards' activation files are
/// memory-mapped; token-level arrays load on first use. Rows are numbered globally across shards in store order.
/// Opening an unfinished store is allowed: it shows the complete shards.
/// </summary>
public sealed class ActivationStore : IDisposable
{
    public string Directory { get; }
    public StoreManifest Manifest { get; }
    public StoreSettings Settings => Manifest.Settings;
    public int Models => Settings.Models.Count;
    public int DModel => Settings.DModel;
    public IReadOnlyList<int> Layers => Settings.Layers;
    public long Tokens => Manifest.Tokens;
    public IReadOnlyList<StoreShard> Shards => _shards;

    readonly StoreShard[] _shards;
    readonly long[] _shardStart;   // [shards + 1] first global row of each shard
    readonly Dictionary<(int, int), ActivationStats> _stats = new();

    ActivationStore(string dir, StoreManifest manifest)
    {
        Directory = dir;
        Manifest = manifest;
        _shards = new StoreShard[manifest.Shards.Count];
        _shardStart = new long[_shards.Length + 1];
        for (int i = 0; i < _shards.Length; i++)
        {
            _shards[i] = new StoreShard(this, i, manifest.Shards[i], _shardStart[i]);
            _shardStart[i + 1] = _shardStart[i] + manifest.Shards[i].Tokens;
        }
        if (_shardStart[^1] != manifest.Tokens)
            throw new InvalidDataException($"{dir}: manifest token count {manifest.Tokens:N0} differs from the sum over shards {_shardStart[^1]:N0}; the store is damaged");
    }

    public static ActivationStore Open(string dir)
    {
        dir = System.IO.Path.GetFullPath(dir);
        if (!System.IO.Directory.Exists(dir)) throw new DirectoryNotFoundException($"{dir}: activation store folder not found");
        return new ActivationStore(dir, StoreManifest.Load(System.IO.Path.Combine(dir, ActivationStoreWriter.ManifestFile)));
    }

    /// <summary>Index of a layer number in <see cref="Layers"/>; a clear error when the store lacks it.</summary>
    public int LayerIndex(int layer)
    {
        int i = Array.IndexOf(Settings.Layers, layer);
        if (i < 0) throw new ArgumentException($"{Directory}: the store has no layer {layer} (layers: {string.Join(", ", Settings.Layers)})");
        return i;
    }

    /// <summary>Mean, population variance and count of model <paramref name="model"/> at <paramref name="layer"/> (a layer
    /// number), merged over shards in order.</summary>
    public ActivationStats Stats(int model, int layer)
    {
        if ((uint)model >= (uint)Models) throw new ArgumentOutOfRangeException(nameof(model), $"{Directory}: model {model} out of range (the store has {Models})");
        LayerIndex(layer);
        lock (_stats)
        {
            if (_stats.TryGetValue((model, layer), out var s)) return s;
            var acc = new RunningStats(DModel);
            foreach (var sh in _shards) acc.Merge(sh.Stats(model, layer));
            return _stats[(model, layer)] = ActivationStats.From(acc);
        }
    }

    /// <summary>Mean, population variance and count of model <paramref name="model"/> at <paramref name="layer"/> over the
    /// rows before <paramref name="endRow"/> only (e.g. a dictionary's training rows, without its held-out rows): the
    /// per-shard states of the shards that end at or before it merged in order, plus the shard holding it recomputed
    /// over its rows before it (Welford in row order, as the writer adds rows). The whole store when endRow ≥ Tokens.</summary>
    public ActivationStats Stats(int model, int layer, long endRow)
    {
        if (endRow >= Tokens) return Stats(model, layer);
        if (endRow <= 0) throw new ArgumentOutOfRangeException(nameof(endRow), $"{Directory}: statistics of rows before {endRow} cover no row");
        if ((uint)model >= (uint)Models) throw new ArgumentOutOfRangeException(nameof(model), $"{Directory}: model {model} out of range (the store has {Models})");
        int li = LayerIndex(layer);
        var acc = new RunningStats(DModel);
        foreach (var sh in _shards)
        {
            if (sh.StartRow + sh.Rows <= endRow) { acc.Merge(sh.Stats(model, layer)); continue; }
            int n = (int)Math.Max(0, endRow - sh.StartRow);
            if (n == 0) break;
            var part = new RunningStats(DModel);
            const int Chunk = 4096;
            var rowsND = new float[Math.Min(Chunk, n) * DModel];
            for (int r = 0; r < n; r += Chunk)
            {
                int c = Math.Min(Chunk, n - r);
                sh.ReadRows(model, li, r, c, rowsND.AsSpan(0, c * DModel));
                for (int t = 0; t < c; t++) part.Add(rowsND.AsSpan(t * DModel, DModel));
            }
            acc.Merge(part);
            break;
        }
        return ActivationStats.From(acc);
    }

    /// <summary>The shard holding global row <paramref name="row"/>.</summary>
    public StoreShard ShardOf(long row)
    {
        if ((ulong)row >= (ulong)Tokens) throw new ArgumentOutOfRangeException(nameof(row), $"row {row} outside the store's {Tokens:N0} tokens");
        int i = Array.BinarySearch(_shardStart, row);
        if (i < 0) i = ~i - 1;
        while (i + 1 < _shardStart.Length - 1 && _shardStart[i + 1] == row) i++; // skip empty shards
        return _shards[i];
    }

    /// <summary>Reads <paramref name="count"/> consecutive rows of one model/layer as float32 into dstND [count, D].</summary>
    // dstND: [count, D]
    public void ReadRows(int model, int layer, long row, int count, Span<float> dstND)
    {
        int li = LayerIndex(layer);
        int d = DModel;
        while (count > 0)
        {
            var sh = ShardOf(row);
            int local = (int)(row - sh.StartRow);
            int n = (int)Math.Min(count, sh.Rows - local);
            sh.ReadRows(model, li, local, n, dstND[..(n * d)]);
            dstND = dstND[(n * d)..];
            row += n; count -= n;
        }
    }

    public int TokenId(long row) { var s = ShardOf(row); return s.Tokens[row - s.StartRow]; }
    public byte Mask(long row) { var s = ShardOf(row); return s.Masks[row - s.StartRow]; }
    public ushort Source(long row) { var s = ShardOf(row); return s.Sources[row - s.StartRow]; }
    public int Position(long row) { var s = ShardOf(row); return s.Positions[row - s.StartRow]; }

    /// <summary>Start offset of every stored sequence, then the total (crosscoder_learning's sequence_ranges).</summary>
    public long[] SequenceRanges()
    {
        var r = new List<long>((int)Math.Min(int.MaxValue, Manifest.Sequences + 1));
        long at = 0;
        foreach (var sh in _shards)
            foreach (int len in sh.SequenceLengths) { r.Add(at); at += len; }
        r.Add(at);
        return r.ToArray();
    }

    public long DiskBytes() =>
        new DirectoryInfo(Directory).EnumerateFiles("*", SearchOption.AllDirectories).Sum(f => f.Length);

    public void Dispose()
    {
        foreach (var s in _shards) s.Dispose();
    }
}

/// <summary>One complete shard: mapped activation files and its token-level arrays.</summary>
public sealed unsafe class StoreShard : IDisposable
{
    public ActivationStore Store { get; }
    public int Index { get; }
    public string Name { get; }
    public string Path { get; }
    public long StartRow { get; }
    public int Rows { get; }
    public StoreShardEntry Entry { get; }

    readonly object _lock = new();
    Arrays? _arrays;
    readonly Mapped?[] _maps;

    sealed record Arrays(int[] Tokens, int[] Positions, byte[] Masks, ushort[] Sources, int[] SequenceLengths, Dictionary<(int, int), RunningStats> Stats);

    internal StoreShard(ActivationStore store, int index, StoreShardEntry entry, long startRow)
    {
        Store = store; Index = index; Entry = entry; Name = entry.Name; StartRow = startRow;
        if (entry.Tokens > int.MaxValue) throw new InvalidDataException($"{store.Directory}: shard {entry.Name} has {entry.Tokens:N0} tokens, more than this reader supports");
        Rows = (int)entry.Tokens;
        Path = System.IO.Path.Combine(store.Directory, entry.Name);
        _maps = new Mapped?[store.Models * store.Settings.Layers.Length];
    }

    public int[] Tokens => Load().Tokens;
    public int[] Positions => Load().Positions;
    public byte[] Masks => Load().Masks;
    public ushort[] Sources => Load().Sources;
    public int[] SequenceLengths => Load().SequenceLengths;
    public RunningStats Stats(int model, int layer) => Load().Stats[(model, layer)];

    Arrays Load()
    {
        var a = _arrays;
        if (a is not null) return a;
        lock (_lock)
        {
            if (_arrays is not null) return _arrays;
            string file = System.IO.Path.Combine(Path, "index.safetensors");
            using var st = new SafetensorsFile(file);
            T[] Read<T>(string name, DType dtype, long n) where T : unmanaged
            {
                var info = st.Info(name);
                if (info.DType != dtype || info.ElementCount != n)
                    throw new InvalidDataException($"{file}: '{name}' is {info.DType} {info.ShapeText}, expected {dtype} [{n}]");
                return MemoryMarshal.Cast<byte, T>(st.Bytes(name)).ToArray();
            }
            var s = Store.Settings;
            var seq = Read<int>("sequence_lengths", DType.I32, Entry.Sequences);
            if (seq.Sum(x => (long)x) != Rows) throw new InvalidDataException($"{file}: sequence lengths sum to {seq.Sum(x => (long)x)}, the shard has {Rows} tokens");
            var stats = new Dictionary<(int, int), RunningStats>();
            for (int m = 0; m < s.Models.Count; m++)
                foreach (int layer in s.Layers)
                {
                    long count = Read<long>(ActivationStoreWriter.StatsName(m, layer, "count"), DType.I64, 1)[0];
                    var mean = Read<double>(ActivationStoreWriter.StatsName(m, layer, "mean"), DType.F64, s.DModel);
                    var m2 = Read<double>(ActivationStoreWriter.StatsName(m, layer, "m2"), DType.F64, s.DModel);
                    stats[(m, layer)] = new RunningStats(count, mean, m2);
                }
            return _arrays = new Arrays(
                Read<int>("tokens", DType.I32, Rows), Read<int>("positions", DType.I32, Rows), Read<byte>("masks", DType.U8, Rows),
                Read<ushort>("sources", DType.U16, Rows), seq, stats);
        }
    }

    /// <summary>Raw bytes of one model/layer activation file ([Rows, D] in the store dtype), memory-mapped.</summary>
    public ReadOnlySpan<byte> RawBytes(int model, int layerIndex)
    {
        var m = Map(model, layerIndex);
        return new ReadOnlySpan<byte>(m.Pointer, checked((int)m.Length));
    }

    /// <summary>The activation file of one model/layer (for export by copy).</summary>
    public string ActivationPath(int model, int layerIndex) =>
        System.IO.Path.Combine(Path, ActivationStoreWriter.ActivationFile(model, Store.Settings.Layers[layerIndex], Store.Settings.DType));

    // dstND: [count, D]
    public void ReadRows(int model, int layerIndex, int row, int count, Span<float> dstND)
    {
        if (row < 0 || count < 0 || row + count > Rows) throw new ArgumentOutOfRangeException(nameof(row), $"{Name}: rows [{row}, {row + count}) outside [0, {Rows})");
        int d = Store.DModel;
        var m = Map(model, layerIndex);
        long n = (long)count * d;
        if (Store.Settings.DType == StoreDType.BF16)
            Precision.BF16ToF32(new ReadOnlySpan<ushort>((ushort*)m.Pointer + (long)row * d, (int)n), dstND[..(int)n]);
        else
            new ReadOnlySpan<float>((float*)m.Pointer + (long)row * d, (int)n).CopyTo(dstND);
    }

    Mapped Map(int model, int layerIndex)
    {
        int i = model * Store.Settings.Layers.Length + layerIndex;
        var m = _maps[i];
        if (m is not null) return m;
        lock (_lock)
        {
            if (_maps[i] is not null) return _maps[i]!;
            string file = ActivationPath(model, layerIndex);
            long expect = (long)Rows * Store.DModel * StoreDTypes.Bytes(Store.Settings.DType);
            var fi = new FileInfo(file);
            if (!fi.Exists) throw new FileNotFoundException($"{file}: activation file missing; the store is damaged", file);
            if (fi.Length != expect) throw new InvalidDataException($"{file}: {fi.Length:N0} bytes, expected {Rows:N0} rows × {Store.DModel} × {StoreDTypes.Bytes(Store.Settings.DType)} = {expect:N0}; the store is damaged");
            return _maps[i] = new Mapped(file, expect);
        }
    }

    public void Dispose()
    {
        for (int i = 0; i < _maps.Length; i++) { _maps[i]?.Dispose(); _maps[i] = null; }
    }

    sealed class Mapped : IDisposable
    {
        public readonly byte* Pointer;
        public readonly long Length;
        readonly MemoryMappedFile? _mmf;
        readonly MemoryMappedViewAccessor? _view;

        public Mapped(string path, long length)
        {
            Length = length;
            if (length == 0) return;
            _mmf = MemoryMappedFile.CreateFromFile(path, FileMode.Open, null, 0, MemoryMappedFileAccess.Read);
            _view = _mmf.CreateViewAccessor(0, 0, MemoryMappedFileAccess.Read);
            byte* p = null;
            _view.SafeMemoryMappedViewHandle.AcquirePointer(ref p);
            Pointer = p + _view.PointerOffset;
        }

        public void Dispose()
        {
            if (_view is null) return;
            _view.SafeMemoryMappedViewHandle.ReleasePointer();
            _view.Dispose();
            _mmf!.Dispose();
        }
    }
}

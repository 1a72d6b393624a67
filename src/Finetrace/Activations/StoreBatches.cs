using Finetrace.Tensors;
namespace Finetrace.Activations;

/// <summary>Options of <see cref="StoreBatches"/>.</summary>
public sealed class StoreBatchOptions
{
    /// <summary>Layer number (as stored, e.g. 13).</summary>
    public int Layer { get; set; }
    /// <summary>Permute rows within each window (re-permuted every epoch).</summary>
    public bool Shuffle { get; set; } = true;
    /// <summary>Rows per shuffle window; 0 picks about 256 MiB of float32 rows (at least 4,096, at most 2^20).</summary>
    public int WindowTokens { get; set; }
    public ulong Seed { get; set; }
    /// <summary>Start again (with new permutations) after the last row; otherwise Next returns fewer rows at the end.</summary>
    public bool Cycle { get; set; } = true;
    /// <summary>Give every source a share of each window proportional to its size, each read sequentially.</summary>
    public bool MixSources { get; set; } = true;
    public MaskFilter Filter { get; set; } = MaskFilter.All;
    /// <summary>Only store rows in [FirstRow, EndRow) (null EndRow: to the end), e.g. a training range and its held-out rest.</summary>
    public long FirstRow { get; set; }
    public long? EndRow { get; set; }
    /// <summary>Load the next window on a background thread while the current one is consumed.</summary>
    public bool Prefetch { get; set; } = true;
}

/// <summary>
/// Batches of activation rows from a store for dictionary training: paired rows [Models, D] (base, fine-tuned, …)
/// or difference rows (model a − model b, Models = 1). Local shuffling: the kept rows of every source form a
/// sequential stream; window k takes each source's next share (proportional to its size, methods.md §1), reads it
/// sequentially from the mapped shards, and permutes the window with a generator seeded by (seed, epoch, k). So the
/// order is a pure function of the seed, <see cref="Position"/> identifies a row exactly, and <see cref="Seek"/>
/// resumes bit-for-bit.
/// </summary>
public sealed class StoreBatches : IActivationBatches, IDisposable
{
    public int Models { get; }
    public int DModel { get; }
    /// <summary>Rows in one epoch (after the mask filter).</summary>
    public long RowsPerEpoch => _plan.Total;
    public int WindowTokens { get; }
    public long Position => _pos;

    readonly ActivationStore _store;
    readonly StoreBatchOptions _o;
    readonly int _layerIndex, _storeModels;
    readonly int _minuend = -1, _subtrahend = -1;
    readonly RowPlan _plan;
    readonly long _windows;
    long _pos;
    Window? _current;
    Window? _spare;
    Task<Window>? _next;

    StoreBatches(ActivationStore store, StoreBatchOptions o, int minuend, int subtrahend)
    {
        _store = store; _o = o;
        _layerIndex = store.LayerIndex(o.Layer);
        _storeModels = store.Models;
        DModel = store.DModel;
        _minuend = minuend; _subtrahend = subtrahend;
        Models = minuend >= 0 ? 1 : store.Models;
        _plan = RowPlan.Build(store, o.Filter, o.MixSources, o.FirstRow, o.EndRow ?? long.MaxValue);
        if (_plan.Total == 0)
            throw new InvalidOperationException(o.FirstRow > 0 || o.EndRow is not null
                ? $"{store.Directory}: no tokens in rows [{o.FirstRow:N0}, {Math.Min(o.EndRow ?? store.Tokens, store.Tokens):N0}) pass the mask filter '{o.Filter}' (the store has {store.Tokens:N0} tokens)"
                : $"{store.Directory}: no tokens pass the mask filter '{o.Filter}' (the store has {store.Tokens:N0} tokens)");
        int auto = (int)Math.Clamp((256L << 20) / ((long)_storeModels * DModel * 4), 4096, 1 << 20);
        long w = o.WindowTokens > 0 ? o.WindowTokens : auto;
        if (!o.Shuffle && !o.MixSources) w = auto;
        w = Math.Max(w, 16L * _plan.Groups);
        WindowTokens = (int)Math.Min(w, _plan.Total);
        _windows = (_plan.Total + WindowTokens - 1) / WindowTokens;
    }

    public static StoreBatches Paired(ActivationStore store, StoreBatchOptions options) => new(store, options, -1, -1);

    /// <summary>Rows of model <paramref name="minuend"/> minus model <paramref name="subtrahend"/> (default fine-tuned − base).</summary>
    public static StoreBatches Difference(ActivationStore store, StoreBatchOptions options, int minuend = 1, int subtrahend = 0)
    {
        if ((uint)minuend >= (uint)store.Models || (uint)subtrahend >= (uint)store.Models || minuend == subtrahend)
            throw new ArgumentException($"difference of models {minuend} − {subtrahend}: the store has models 0..{store.Models - 1}");
        return new(store, options, minuend, subtrahend);
    }

    // xBND: [rows, Models, DModel]
    public int Next(Span<float> xBND, int rows)
    {
        int rowLen = Models * DModel;
        if (xBND.Length < (long)rows * rowLen) throw new ArgumentException($"destination holds {xBND.Length} values, {rows} rows need {(long)rows * rowLen}");
        int filled = 0;
        while (filled < rows)
        {
            if (!_o.Cycle && _pos >= _plan.Total) break;
            long epoch = _pos / _plan.Total, p = _pos % _plan.Total;
            var win = WindowAt(epoch, p);
            int off = (int)(p - win.Start);
            int n = Math.Min(rows - filled, win.Length - off);
            int d = DModel, md = _storeModels * d;
            for (int i = 0; i < n; i++)
            {
                int src = win.Perm is null ? off + i : win.Perm[off + i];
                var x = win.Data.AsSpan(src * md, md);
                var dst = xBND.Slice((filled + i) * rowLen, rowLen);
                if (_minuend < 0) x.CopyTo(dst);
                else System.Numerics.Tensors.TensorPrimitives.Subtract(x.Slice(_minuend * d, d), x.Slice(_subtrahend * d, d), dst);
            }
            filled += n;
            _pos += n;
        }
        return filled;
    }

    public void Seek(long position)
    {
        if (position < 0 || (!_o.Cycle && position > _plan.Total)) throw new ArgumentOutOfRangeException(nameof(position), $"position {position} outside [0, {_plan.Total}]");
        _pos = position;
    }

    Window WindowAt(long epoch, long p)
    {
        long k = WindowIndex(p);
        if (_current is { } c && c.Epoch == epoch && c.K == k) return c;
        // Invariant: a pending prefetch loads into _spare; the consumer reads only _current.
        Window w;
        if (_next is not null)
        {
            w = _next.Result;
            _next = null;
            if (w.Epoch != epoch || w.K != k) Load(w, epoch, k);
        }
        else w = Load(_spare ??= NewWindow(), epoch, k);
        _spare = _current;
        _current = w;
        if (_o.Prefetch)
        {
            long nk = k + 1, ne = epoch;
            if (nk == _windows) { nk = 0; ne++; }
            if (_o.Cycle || ne == epoch)
            {
                var spare = _spare ??= NewWindow();
                _next = Task.Run(() => Load(spare, ne, nk));
            }
        }
        return w;
    }

    // Rounding per source can make a window up to (groups − 1) rows longer than WindowTokens.
    Window NewWindow() => new(WindowTokens + _plan.Groups, _storeModels * DModel);

    /// <summary>The window holding epoch position p: the largest k with Start(k) ≤ p.</summary>
    long WindowIndex(long p)
    {
        long lo = 0, hi = _windows - 1;
        while (lo < hi)
        {
            long mid = (lo + hi + 1) / 2;
            if (_plan.StartOfWindow(mid, WindowTokens) <= p) lo = mid; else hi = mid - 1;
        }
        return lo;
    }

    Window Load(Window w, long epoch, long k)
    {
        w.Epoch = epoch; w.K = k;
        w.Start = _plan.StartOfWindow(k, WindowTokens);
        w.Length = (int)(_plan.StartOfWindow(k + 1, WindowTokens) - w.Start);
        int d = DModel, md = _storeModels * d;
        int at = 0;
        float[] tmp = w.Tmp;
        foreach (var (row, count) in _plan.Pieces(k, WindowTokens))
        {
            if (tmp.Length < count * d) tmp = w.Tmp = new float[count * d];
            for (int m = 0; m < _storeModels; m++)
            {
                _store.ReadRows(m, _store.Settings.Layers[_layerIndex], row, count, tmp.AsSpan(0, count * d));
                for (int i = 0; i < count; i++)
                    tmp.AsSpan(i * d, d).CopyTo(w.Data.AsSpan((at + i) * md + m * d, d));
            }
            at += count;
        }
        if (at != w.Length) throw new InvalidOperationException($"window {k}: gathered {at} rows, expected {w.Length}");
        if (_o.Shuffle)
        {
            w.Perm ??= new int[WindowTokens + _plan.Groups];
            var rng = Rng.For(_o.Seed, (ulong)epoch, (ulong)k);
            rng.Permutation(w.Perm.AsSpan(0, w.Length));
        }
        else w.Perm = null;
        return w;
    }

    public void Dispose()
    {
        try { _next?.Wait(); } catch (AggregateException) { }
        _next = null;
    }

    sealed class Window(int rows, int rowLen)
    {
        public long Epoch = -1, K = -1, Start;
        public int Length;
        public readonly float[] Data = new float[(long)rows * rowLen];
        public int[]? Perm;
        public float[] Tmp = [];
    }
}

/// <summary>
/// The kept rows of a store grouped by source (or one group), each group a list of runs of consecutive global rows.
/// Window k takes rows [floor(t_k·n_g/N), floor(t_{k+1}·n_g/N)) of group g, with t_k = min(k·W, N).
/// </summary>
sealed class RowPlan
{
    public int Groups => _starts.Length;
    public long Total { get; private set; }
    readonly long[][] _starts;   // per group: first global row of each run
    readonly long[][] _cum;      // per group: kept rows before each run, then the group's total
    readonly long[] _n;

    RowPlan(List<long>[] starts, List<int>[] lens)
    {
        _starts = new long[starts.Length][];
        _cum = new long[starts.Length][];
        _n = new long[starts.Length];
        for (int g = 0; g < starts.Length; g++)
        {
            _starts[g] = starts[g].ToArray();
            var cum = new long[lens[g].Count + 1];
            for (int i = 0; i < lens[g].Count; i++) cum[i + 1] = cum[i] + lens[g][i];
            _cum[g] = cum;
            _n[g] = cum[^1];
            Total += _n[g];
        }
    }

    public static RowPlan Build(ActivationStore store, MaskFilter filter, bool bySource, long firstRow = 0, long endRow = long.MaxValue)
    {
        int groups = bySource ? store.Settings.Sources.Count : 1;
        var starts = new List<long>[groups];
        var lens = new List<int>[groups];
        for (int g = 0; g < groups; g++) { starts[g] = []; lens[g] = []; }
        var lastEnd = new long[groups];
        Array.Fill(lastEnd, -1);
        foreach (var sh in store.Shards)
        {
            if (sh.Rows == 0 || sh.StartRow + sh.Rows <= firstRow || sh.StartRow >= endRow) continue;
            var masks = filter.IsAll ? null : sh.Masks;
            var sources = bySource && groups > 1 ? sh.Sources : null;
            for (int i = 0; i < sh.Rows; i++)
            {
                long row = sh.StartRow + i;
                if (row < firstRow || row >= endRow) continue;
                if (masks is not null && !filter.Keeps(masks[i])) continue;
                int g = sources is null ? 0 : sources[i];
                if (lastEnd[g] == row && lens[g][^1] < int.MaxValue) lens[g][^1]++;
                else { starts[g].Add(row); lens[g].Add(1); }
                lastEnd[g] = row + 1;
            }
        }
        return new RowPlan(starts, lens);
    }

    long Cum(int g, long k, int w)
    {
        long t = Math.Min(k * (long)w, Total);
        return (long)((Int128)t * _n[g] / Total);
    }

    public long StartOfWindow(long k, int w)
    {
        long s = 0;
        for (int g = 0; g < _n.Length; g++) s += Cum(g, k, w);
        return s;
    }

    /// <summary>(first global row, count) pieces of window k, group by group, each in store order.</summary>
    public IEnumerable<(long Row, int Count)> Pieces(long k, int w)
    {
        for (int g = 0; g < _n.Length; g++)
        {
            long from = Cum(g, k, w), to = Cum(g, k + 1, w);
            if (from >= to) continue;
            var cum = _cum[g];
            int run = RunOf(cum, from);
            long at = from;
            while (at < to)
            {
                long inRun = at - cum[run];
                long take = Math.Min(to - at, cum[run + 1] - at);
                yield return (_starts[g][run] + inRun, (int)take);
                at += take;
                run++;
            }
        }
    }

    /// <summary>The global row of the i-th kept row of group 0 (used by the subset reader, which builds one group).</summary>
    public long RowOf(long i)
    {
        int run = RunOf(_cum[0], i);
        return _starts[0][run] + (i - _cum[0][run]);
    }

    /// <summary>The run of a group holding its kept row <paramref name="i"/>: the last run with cum[run] ≤ i.</summary>
    static int RunOf(long[] cum, long i)
    {
        int run = Array.BinarySearch(cum, i);
        if (run < 0) run = ~run - 1;
        while (run + 1 < cum.Length - 1 && cum[run + 1] <= i) run++;
        return run;
    }
}

/// <summary>
/// A uniformly random subset of a store's kept rows (without replacement), read in store order: the reader for
/// statistics (normaliser estimates, quick evaluations). Deterministic for a seed; does not cycle.
/// </summary>
public sealed class RandomSubsetBatches : IActivationBatches
{
    public int Models { get; }
    public int DModel { get; }
    public long Count => _rows.Length;
    public long Position => _pos;
    /// <summary>The chosen global rows, ascending.</summary>
    public IReadOnlyList<long> Rows => _rows;

    readonly ActivationStore _store;
    readonly int _layer;
    readonly long[] _rows;
    int _pos;

    public RandomSubsetBatches(ActivationStore store, int layer, int count, ulong seed, MaskFilter filter = default)
    {
        _store = store;
        _layer = layer;
        store.LayerIndex(layer);
        Models = store.Models;
        DModel = store.DModel;
        var plan = RowPlan.Build(store, filter, bySource: false);
        long n = plan.Total;
        if (n == 0) throw new InvalidOperationException($"{store.Directory}: no tokens pass the mask filter '{filter}'");
        long[] picks;
        if (count >= n) { picks = new long[n]; for (long i = 0; i < n; i++) picks[i] = i; }
        else
        {
            // Floyd's algorithm: count distinct values from [0, n).
            var chosen = new HashSet<long>(count);
            var rng = Rng.For(seed, 0x5AB5E7UL);
            for (long j = n - count; j < n; j++)
            {
                long t = rng.NextLong(j + 1);
                if (!chosen.Add(t)) chosen.Add(j);
            }
            picks = chosen.ToArray();
            Array.Sort(picks);
        }
        _rows = new long[picks.Length];
        for (int i = 0; i < picks.Length; i++) _rows[i] = plan.RowOf(picks[i]);
    }

    // xBND: [rows, Models, DModel]
    public int Next(Span<float> xBND, int rows)
    {
        int n = Math.Min(rows, _rows.Length - _pos);
        int d = DModel;
        for (int i = 0; i < n; i++)
        {
            long r = _rows[_pos + i];
            for (int m = 0; m < Models; m++)
                _store.ReadRows(m, _layer, r, 1, xBND.Slice((i * Models + m) * d, d));
        }
        _pos += n;
        return n;
    }

    public void Seek(long position)
    {
        if (position < 0 || position > _rows.Length) throw new ArgumentOutOfRangeException(nameof(position));
        _pos = (int)position;
    }
}

using Finetrace.Activations;

namespace Finetrace.Diffing;

/// <summary>
/// The store's rows at one layer in store order, every model's raw float32 activation side by side ([B, S, D], S = the
/// store's models), with each row's global row number — what analyses need to tie a latent's activation back to its
/// token, mask, source and sequence. Rows failing <paramref name="filter"/> are skipped; at most
/// <paramref name="maxRows"/> kept rows are read (0 = all).
/// </summary>
public sealed class StoreRows
{
    readonly ActivationStore _store;
    readonly int _layer;
    readonly MaskFilter _filter;
    long _row;
    long _read;
    float[] _tmp = [];

    /// <summary>Kept rows this reader will deliver in total.</summary>
    public long Total { get; }
    public int StoreModels => _store.Models;
    public int DModel => _store.DModel;
    public long Read => _read;

    public StoreRows(ActivationStore store, int layer, MaskFilter filter = default, long maxRows = 0)
    {
        _store = store; _layer = layer; _filter = filter;
        store.LayerIndex(layer);
        long kept = 0;
        if (filter.IsAll) kept = store.Tokens;
        else foreach (var sh in store.Shards) foreach (var m in sh.Masks) if (filter.Keeps(m)) kept++;
        Total = maxRows > 0 ? Math.Min(maxRows, kept) : kept;
    }

    /// <summary>Fills up to <paramref name="max"/> rows; returns how many (0 at the end).</summary>
    // → xBSD: [max, S, D] raw float32; rowsB: [max] global row numbers
    public int Next(Span<float> xBSD, Span<long> rowsB, int max)
    {
        int S = _store.Models, D = _store.DModel;
        int filled = 0;
        max = (int)Math.Min(max, Total - _read);
        while (filled < max && _row < _store.Tokens)
        {
            var sh = _store.ShardOf(_row);
            int local = (int)(_row - sh.StartRow);
            var masks = _filter.IsAll ? null : sh.Masks;
            // one run of consecutive kept rows inside this shard
            if (masks is not null && !_filter.Keeps(masks[local])) { _row++; continue; }
            int n = 1;
            while (filled + n < max && local + n < sh.Rows && (masks is null || _filter.Keeps(masks[local + n]))) n++;
            if (_tmp.Length < n * D) _tmp = new float[n * D];
            for (int m = 0; m < S; m++)
            {
                _store.ReadRows(m, _layer, _row, n, _tmp.AsSpan(0, n * D));
                for (int t = 0; t < n; t++) _tmp.AsSpan(t * D, D).CopyTo(xBSD.Slice(((filled + t) * S + m) * D, D));
            }
            for (int t = 0; t < n; t++) rowsB[filled + t] = _row + t;
            filled += n; _row += n;
        }
        _read += filled;
        return filled;
    }
}

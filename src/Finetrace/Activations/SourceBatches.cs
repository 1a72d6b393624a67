namespace Finetrace.Activations;

/// <summary>
/// Rows made of several (model, layer) sources of one store side by side, [S, D] per token, for crosscoders over more
/// than one layer (methods.md §16: sources = (model, layer) pairs, acausal). One <see cref="StoreBatches"/> per distinct
/// layer, all opened with the same options: their row plan and shuffle do not depend on the layer, so they stay in
/// lockstep and row i of every layer is the same token.
/// </summary>
public sealed class SourceBatches : IActivationBatches, IDisposable
{
    public int Models => Sources.Length;
    public int DModel { get; }
    /// <summary>(store model, store layer) of each source, in row order.</summary>
    public (int Model, int Layer)[] Sources { get; }
    /// <summary>The batches of the first source's layer (row plan, rows per epoch).</summary>
    public StoreBatches First => _byLayer[0];

    readonly StoreBatches[] _byLayer;
    readonly int[] _layerOf;   // source → index into _byLayer
    readonly int _storeModels;
    float[] _buf = [];

    public SourceBatches(ActivationStore store, StoreBatchOptions options, (int Model, int Layer)[] sources)
    {
        if (sources.Length < 1) throw new ArgumentException("no sources");
        foreach (var (m, l) in sources)
        {
            if ((uint)m >= (uint)store.Models) throw new ArgumentException($"source model {m}: the store has models 0..{store.Models - 1}");
            if (!store.Layers.Contains(l)) throw new ArgumentException($"source layer {l}: the store holds layers {string.Join(", ", store.Layers)}");
        }
        Sources = sources; DModel = store.DModel; _storeModels = store.Models;
        var layers = sources.Select(s => s.Layer).Distinct().ToArray();
        _byLayer = new StoreBatches[layers.Length];
        try
        {
            for (int i = 0; i < layers.Length; i++)
            {
                var o = new StoreBatchOptions
                {
                    Layer = layers[i], Shuffle = options.Shuffle, WindowTokens = options.WindowTokens, Seed = options.Seed, Cycle = options.Cycle,
                    MixSources = options.MixSources, Filter = options.Filter, FirstRow = options.FirstRow, EndRow = options.EndRow, Prefetch = options.Prefetch,
                };
                _byLayer[i] = StoreBatches.Paired(store, o);
            }
        }
        catch { foreach (var b in _byLayer) b?.Dispose(); throw; }
        _layerOf = sources.Select(s => Array.IndexOf(layers, s.Layer)).ToArray();
    }

    public long Position => _byLayer[0].Position;
    public void Seek(long position) { foreach (var b in _byLayer) b.Seek(position); }

    // xBSD: [rows, S, D]
    public int Next(Span<float> xBSD, int rows)
    {
        int d = DModel, md = _storeModels * d, S = Sources.Length, L = _byLayer.Length;
        long need = (long)L * rows * md;
        if (_buf.Length < need) _buf = new float[need];
        int filled = -1;
        for (int i = 0; i < L; i++)
        {
            int n = _byLayer[i].Next(_buf.AsSpan(i * rows * md, rows * md), rows);
            if (filled >= 0 && n != filled) throw new InvalidOperationException($"layer batches out of step: {n} rows against {filled}");
            filled = n;
        }
        for (int t = 0; t < filled; t++)
            for (int s = 0; s < S; s++)
                _buf.AsSpan((_layerOf[s] * rows + t) * md + Sources[s].Model * d, d).CopyTo(xBSD.Slice((t * S + s) * d, d));
        return filled;
    }

    /// <summary>Disposes the batches of every layer but the first (<see cref="First"/> belongs to whoever wraps this).</summary>
    public void Dispose() { for (int i = 1; i < _byLayer.Length; i++) _byLayer[i].Dispose(); }

    /// <summary>Parses "0:2,1:2,0:3,1:3" (model:layer pairs).</summary>
    public static (int Model, int Layer)[] Parse(string spec)
    {
        var parts = spec.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries);
        var r = new (int, int)[parts.Length];
        for (int i = 0; i < parts.Length; i++)
        {
            var kv = parts[i].Split(':');
            if (kv.Length != 2 || !int.TryParse(kv[0], out int m) || !int.TryParse(kv[1], out int l) || m < 0 || l < 0)
                throw new FormatException($"'{parts[i]}' is not MODEL:LAYER (e.g. 0:2,1:2,0:3,1:3)");
            r[i] = (m, l);
        }
        if (r.Length == 0) throw new FormatException("no MODEL:LAYER pairs");
        if (r.Distinct().Count() != r.Length) throw new FormatException("a (model, layer) source appears twice");
        return r;
    }

    public static string Format((int Model, int Layer)[] sources) => string.Join(",", sources.Select(s => $"{s.Model}:{s.Layer}"));
}

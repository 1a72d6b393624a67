using Finetrace.Activations;
using Finetrace.Models;

namespace Finetrace.Dictionaries;

/// <summary>Settings of a pruning sweep: the pruning settings to evaluate, which rows, and the spliced evaluation.</summary>
public sealed record PruningSweepOptions
{
    /// <summary>Pruning settings (without maxima; they are measured once). The unpruned baseline is always evaluated first.</summary>
    public required IReadOnlyList<Pruning> Settings { get; init; }
    /// <summary>Evaluation rows: up to <see cref="Tokens"/> from <see cref="FirstRow"/>, passing <see cref="Filter"/>.</summary>
    public long Tokens { get; init; } = 200_000;
    public long FirstRow { get; init; }
    public MaskFilter Filter { get; init; } = MaskFilter.All;
    /// <summary>Rows [<see cref="CalibrationFirstRow"/>, <see cref="CalibrationEndRow"/>) on which each latent's maximum is
    /// measured for below-max pruning (the training rows when the dictionary held rows out; null end = the store's end).</summary>
    public long CalibrationFirstRow { get; init; }
    public long? CalibrationEndRow { get; init; }
    public long CalibrationTokens { get; init; } = 200_000;
    /// <summary>Spliced evaluation of every point (null: reconstruction metrics only).</summary>
    public SpliceOptions? Splice { get; init; }
}

/// <summary>One point of the trade-off curve: its pruning (with maxima), the reconstruction metrics and, when run, the
/// spliced CE/KL.</summary>
public sealed record PruningPoint(Pruning Pruning, EvalReport Eval, SpliceReport? Splice);

/// <summary>Progress of a sweep: points finished of all, and the point under way.</summary>
public readonly record struct PruningSweepProgress(int Done, int Total, string Current);

/// <summary>
/// The CE/KL-loss-vs-L0 trade-off of inference-time pruning (methods.md §15.2): evaluates the dictionary unpruned and
/// with each setting on the same rows (and the same spliced sequences), so that "pruning moves the curve toward the lower
/// left" can be checked on any dictionary: each point's L0 against its CE loss recovered / KL.
/// </summary>
public static class PruningSweep
{
    public static IReadOnlyList<PruningPoint> Run(SparseDictionary d, ActivationStore store, DictionaryInput input, PruningSweepOptions o,
        IReadOnlyList<CausalLM?>? models = null, IProgress<PruningSweepProgress>? progress = null, CancellationToken cancel = default)
    {
        var settings = new List<Pruning> { Pruning.None };
        settings.AddRange(o.Settings.Where(p => !p.IsNone));
        // every check but the maxima (measured below) before any work
        foreach (var p in settings) (p.BelowMaxFraction > 0 ? p with { LatentMax = new float[d.DictSize] } : p).Check(d);
        if (o.Splice is not null && models is null) throw new ArgumentException("a spliced sweep needs the models (SplicedEvaluation.LoadModels)");
        float[]? max = null;
        string? maxFrom = null;
        if (settings.Any(p => p.BelowMaxFraction > 0))
        {
            progress?.Report(new PruningSweepProgress(0, settings.Count, "measuring latent maxima"));
            var co = new StoreBatchOptions { Layer = input.Layer, Shuffle = false, Cycle = false, MixSources = false, Filter = o.Filter,
                                             FirstRow = o.CalibrationFirstRow, EndRow = o.CalibrationEndRow };
            using var cal = input.Open(store, co);
            max = Pruning.MeasureMaxima(d, cal, o.CalibrationTokens);
            maxFrom = $"{store.Directory} rows {o.CalibrationFirstRow}..{(o.CalibrationEndRow is long e ? e.ToString() : "end")} (up to {o.CalibrationTokens} tokens, filter {o.Filter})";
        }
        var points = new List<PruningPoint>();
        for (int i = 0; i < settings.Count; i++)
        {
            cancel.ThrowIfCancellationRequested();
            var p = max is null ? settings[i] : settings[i].WithMaxima(max, maxFrom);
            progress?.Report(new PruningSweepProgress(i, settings.Count, p.Spec));
            var bo = new StoreBatchOptions { Layer = input.Layer, Shuffle = false, Cycle = false, MixSources = false, Filter = o.Filter, FirstRow = o.FirstRow };
            EvalReport eval;
            using (var rows = input.Open(store, bo)) eval = Evaluation.Run(d, rows, Math.Min(o.Tokens, rows.RowsPerEpoch), pruning: p);
            SpliceReport? splice = null;
            if (o.Splice is { } so)
                splice = SplicedEvaluation.Run(store, models!, SpliceReconstruction.ForDictionary(d, input with { Pruning = p }, store.Models), so);
            points.Add(new PruningPoint(p, eval, splice));
        }
        progress?.Report(new PruningSweepProgress(settings.Count, settings.Count, "done"));
        return points;
    }

    /// <summary>Settings from a sweep text: <c>drop-lowest:1,2,4</c> (one point per k), <c>below-max:0.05,0.1</c> (one
    /// point per fraction), or a single combined setting <c>below-max:0.1+drop-lowest:2</c>.</summary>
    public static IReadOnlyList<Pruning> ParseSweep(string text)
    {
        string s = text.Trim();
        if (s.Contains('+')) return [Pruning.Parse(s)];
        int colon = s.IndexOf(':');
        if (colon < 0) return [Pruning.Parse(s)];
        string kind = s[..colon];
        return s[(colon + 1)..].Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
            .Select(v => Pruning.Parse($"{kind}:{v}")).ToList() is { Count: > 0 } list ? list : throw new PruningException(text, "no values after the colon");
    }
}

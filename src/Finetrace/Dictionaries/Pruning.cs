using System.Globalization;
using System.Text.Json.Nodes;

namespace Finetrace.Dictionaries;

/// <summary>A pruning specification or setting that cannot be used; <see cref="Spec"/> is the text or setting at fault.</summary>
public sealed class PruningException(string spec, string problem) : Exception($"pruning '{spec}': {problem}")
{
    public string Spec { get; } = spec;
    public string Problem { get; } = problem;
}

/// <summary>
/// Inference-time pruning of low-activating latents (methods.md §15.2), applied to the codes right after encoding
/// (<see cref="Inference.Encode(SparseDictionary, ReadOnlySpan{float}, Pruning?)"/>, the one place):
/// <list type="bullet">
/// <item>feature view, per latent: zero f_j ≤ <see cref="BelowMaxFraction"/> · max_j, where max_j is latent j's largest
/// activation on calibration rows (<see cref="LatentMax"/>) — a post-hoc JumpReLU with θ_j = fraction · max_j;</item>
/// <item>dataset view, per token: of the latents still active, drop the <see cref="DropLowest"/> with the smallest
/// reported activation f_j·c_j (c = the code-normalisation weights; ties: the lower latent index goes first).</item>
/// </list>
/// The per-latent rule runs first. It is recorded in the dictionary's <see cref="DictionaryInput"/> (finetrace.json) so
/// that eval, the spliced evaluation, the analyses and the exports read the dictionary the same pruned way.
/// </summary>
public sealed record Pruning
{
    /// <summary>Per token: drop this many of the lowest active latents (0 = off).</summary>
    public int DropLowest { get; init; }
    /// <summary>Per latent: zero activations at or below this fraction of the latent's maximum (0 = off).</summary>
    public float BelowMaxFraction { get; init; }
    /// <summary>Largest unpruned activation f of every latent [F] on the calibration rows (needed by <see cref="BelowMaxFraction"/>).</summary>
    public float[]? LatentMax { get; init; }
    /// <summary>Where <see cref="LatentMax"/> was measured (store and rows), for the record.</summary>
    public string? MaxFrom { get; init; }

    public static Pruning None { get; } = new();
    public bool IsNone => DropLowest == 0 && BelowMaxFraction == 0;

    /// <summary><c>none</c>, <c>drop-lowest:K</c>, <c>below-max:R</c> or both joined by '+'.</summary>
    public string Spec
    {
        get
        {
            if (IsNone) return "none";
            var parts = new List<string>();
            if (BelowMaxFraction > 0) parts.Add($"below-max:{BelowMaxFraction.ToString("R", CultureInfo.InvariantCulture)}");
            if (DropLowest > 0) parts.Add($"drop-lowest:{DropLowest}");
            return string.Join('+', parts);
        }
    }

    public override string ToString() => Spec;

    /// <summary>Parses <see cref="Spec"/> text (the maxima are not part of it: see <see cref="WithMaxima"/>).</summary>
    public static Pruning Parse(string text)
    {
        string s = text.Trim();
        if (s is "" or "none") return None;
        var p = None;
        foreach (var part in s.Split('+', StringSplitOptions.TrimEntries))
        {
            int colon = part.IndexOf(':');
            string kind = colon < 0 ? part : part[..colon], value = colon < 0 ? "" : part[(colon + 1)..];
            switch (kind)
            {
                case "drop-lowest" when int.TryParse(value, NumberStyles.None, CultureInfo.InvariantCulture, out int k):
                    p = p with { DropLowest = k }; break;
                case "below-max" when float.TryParse(value, NumberStyles.Float, CultureInfo.InvariantCulture, out float r) && r is >= 0 and < 1:
                    p = p with { BelowMaxFraction = r }; break;
                default:
                    throw new PruningException(text, $"'{part}' is not drop-lowest:K (a whole number ≥ 0) or below-max:R (0 ≤ R < 1)");
            }
        }
        return p;
    }

    /// <summary>This pruning with the per-latent maxima it needs (unchanged when it has no per-latent rule).</summary>
    public Pruning WithMaxima(float[] latentMaxF, string? from) => BelowMaxFraction > 0 ? this with { LatentMax = latentMaxF, MaxFrom = from } : this;

    /// <summary>Throws <see cref="PruningException"/> when this pruning cannot run on <paramref name="d"/>.</summary>
    public void Check(SparseDictionary d)
    {
        if (IsNone) return;
        if (DropLowest < 0) throw new PruningException(Spec, "drop-lowest must be ≥ 0");
        if (BelowMaxFraction is < 0 or >= 1) throw new PruningException(Spec, "below-max must lie in [0, 1)");
        if (d.PerModelCodes)
            throw new PruningException(Spec, "a DECOUPLED BatchTopK crosscoder selects latents per model; pruning its union code would not prune what each decoder reads");
        if (BelowMaxFraction > 0 && (LatentMax is null || LatentMax.Length != d.DictSize))
            throw new PruningException(Spec, LatentMax is null ? "below-max needs each latent's maximum activation (measure it on calibration rows first)"
                : $"{LatentMax.Length} latent maxima for {d.DictSize} latents");
    }

    /// <summary>Prunes <paramref name="codes"/> in place (rows stay compact and ascending; any column view must be
    /// rebuilt). <paramref name="rankWeightF"/> [F] are the code-normalisation weights c_j (empty: 1).</summary>
    public void Apply(SparseCodes codes, ReadOnlySpan<float> rankWeightF = default)
    {
        if (IsNone) return;
        float frac = BelowMaxFraction;
        var max = LatentMax;
        int write = 0;
        var keep = new List<int>();
        var order = new List<(float Rank, int Entry)>();
        for (int b = 0; b < codes.Rows; b++)
        {
            int start = codes.RowStart[b], end = codes.RowStart[b + 1];
            keep.Clear();
            for (int e = start; e < end; e++)
            {
                float v = codes.Value[e];
                if (v <= 0) continue;   // not active
                if (frac > 0 && v <= frac * max![codes.Index[e]]) continue;
                keep.Add(e);
            }
            if (DropLowest > 0)
            {
                if (keep.Count <= DropLowest) keep.Clear();
                else
                {
                    order.Clear();
                    foreach (int e in keep) order.Add((codes.Value[e] * (rankWeightF.IsEmpty ? 1f : rankWeightF[codes.Index[e]]), e));
                    order.Sort((x, y) => x.Rank != y.Rank ? x.Rank.CompareTo(y.Rank) : codes.Index[x.Entry].CompareTo(codes.Index[y.Entry]));
                    var dropped = new HashSet<int>();
                    for (int i = 0; i < DropLowest; i++) dropped.Add(order[i].Entry);
                    keep.RemoveAll(dropped.Contains);
                }
            }
            codes.RowStart[b] = write;
            foreach (int e in keep)   // ascending entries, write ≤ e: in-place compaction
            {
                codes.Index[write] = codes.Index[e];
                codes.Value[write] = codes.Value[e];
                write++;
            }
        }
        codes.RowStart[codes.Rows] = write;
    }

    /// <summary>The rank weights <see cref="Apply"/> uses for <paramref name="d"/>: its code norms c_j when it ranks
    /// latents by f·c (code normalisation other than NONE), else empty (rank by f).</summary>
    public static float[] RankWeights(SparseDictionary d)
    {
        if (d.CodeNormalization == CodeNormalization.None) return [];
        var c = new float[d.DictSize];
        d.CodeNorm(c);
        return c;
    }

    /// <summary>The <c>"pruning"</c> object of finetrace.json's input record.</summary>
    public JsonObject ToJson()
    {
        var o = new JsonObject { ["spec"] = Spec, ["drop_lowest"] = DropLowest, ["below_max_fraction"] = BelowMaxFraction };
        if (LatentMax is not null) o["latent_max"] = new JsonArray(LatentMax.Select(v => (JsonNode?)JsonValue.Create(v)).ToArray());
        if (MaxFrom is not null) o["max_from"] = MaxFrom;
        return o;
    }

    public static Pruning FromJson(JsonNode node, string where)
    {
        try
        {
            var p = new Pruning
            {
                DropLowest = node["drop_lowest"]?.GetValue<int>() ?? 0,
                BelowMaxFraction = node["below_max_fraction"]?.GetValue<float>() ?? 0,
                LatentMax = node["latent_max"]?.AsArray().Select(v => v!.GetValue<float>()).ToArray(),
                MaxFrom = node["max_from"]?.GetValue<string>(),
            };
            if (p.BelowMaxFraction > 0 && p.LatentMax is null)
                throw new DictionaryFormatException($"{where}: input.pruning has below_max_fraction {p.BelowMaxFraction} but no latent_max");
            return p;
        }
        catch (Exception e) when (e is InvalidOperationException or FormatException or NullReferenceException)
        {
            throw new DictionaryFormatException($"{where}: input.pruning is mistyped ({e.Message}); expected drop_lowest, below_max_fraction and latent_max");
        }
    }

    /// <summary>Each latent's largest activation f [F] over up to <paramref name="tokens"/> rows of <paramref name="source"/>
    /// (raw rows, as <see cref="Evaluation.Run"/> reads them; unpruned inference codes). The source is left where it ended.</summary>
    public static float[] MeasureMaxima(SparseDictionary d, Activations.IActivationBatches source, long tokens, int batch = 4096, Action<long>? progress = null)
    {
        var max = new float[d.DictSize];
        int rowLen = d.Models * d.DModel;
        var buf = new float[(long)batch * rowLen];
        long n = 0;
        while (n < tokens)
        {
            int want = (int)Math.Min(batch, tokens - n);
            int got = source.Next(buf, want);
            if (got == 0) break;
            var x = buf.AsSpan(0, got * rowLen).ToArray();
            d.Normalizer?.Normalize(x, d.Models, d.DModel);
            var codes = Inference.Encode(d, x);
            for (int e = 0; e < codes.Count; e++) if (codes.Value[e] > max[codes.Index[e]]) max[codes.Index[e]] = codes.Value[e];
            n += got;
            progress?.Invoke(n);
            if (got < want) break;
        }
        if (n == 0) throw new InvalidOperationException("no calibration rows to measure the latents' maxima on");
        return max;
    }

    /// <summary>A dictionary whose plain inference equals this pruning's, for formats with no pruning field (SAELens):
    /// the per-latent rule becomes JumpReLU thresholds θ_j = max(θ_rule, fraction · max_j) (ReLU, JumpReLU, and
    /// BatchTopK without code normalisation). Throws <see cref="PruningException"/> when no threshold can express it
    /// (per-token drop-lowest; TopK; ranked BatchTopK).</summary>
    public SparseDictionary FoldIntoThresholds(SparseDictionary d)
    {
        Check(d);
        if (IsNone) return d;
        if (DropLowest > 0) throw new PruningException(Spec, "drop-lowest depends on the other latents of each token; no per-latent threshold expresses it");
        float[] baseTheta;
        switch (d.Sparsity)
        {
            case Sparsity.Relu: baseTheta = new float[d.DictSize]; break;
            case Sparsity.JumpRelu: baseTheta = (float[])d.JumpThreshold!.Clone(); break;
            case Sparsity.BatchTopK when d.CodeNormalization == CodeNormalization.None && d.Threshold >= 0: baseTheta = Enumerable.Repeat(d.Threshold, d.DictSize).ToArray(); break;
            default: throw new PruningException(Spec, $"a {d.Sparsity} dictionary{(d.CodeNormalization != CodeNormalization.None ? $" with {d.CodeNormalization} code normalisation" : "")} has no per-latent threshold to raise");
        }
        var j = new SparseDictionary(d.Models, d.DModel, d.DictSize, Sparsity.JumpRelu, CodeNormalization.None, d.SubtractDecoderBias)
        { Normalizer = d.Normalizer?.Clone() };
        d.WEnc.CopyTo(j.WEnc, 0); d.WDec.CopyTo(j.WDec, 0); d.BEnc.CopyTo(j.BEnc, 0); d.BDec.CopyTo(j.BDec, 0);
        for (int i = 0; i < d.DictSize; i++) j.JumpThreshold![i] = Math.Max(baseTheta[i], BelowMaxFraction * LatentMax![i]);
        return j;
    }
}

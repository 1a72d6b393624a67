using Finetrace.Activations;
using Finetrace.Dictionaries;

namespace Finetrace.Diffing.Latents;

public sealed record LatentTableOptions
{
    public MaskFilter Filter { get; init; } = MaskFilter.All;
    /// <summary>Positions to stream in store order; 0 = the whole store.</summary>
    public long MaxPositions { get; init; }
    /// <summary>Rows per encode batch; 0 picks about 128 MiB of dense codes.</summary>
    public int BatchSize { get; init; }
    public TagThresholds Tags { get; init; } = new();
    /// <summary>Max-activating positions kept per latent for <c>top_tokens</c>.</summary>
    public int TopPositions { get; init; } = 32;
    /// <summary>Tokens listed in <c>top_tokens</c>.</summary>
    public int TopTokens { get; init; } = 5;
}

/// <summary>Per-latent activation statistics over the store, counting the tokens where a latent fires (<see cref="Firing"/>):
/// frequency and max reported activation (f·c) overall and per
/// data source, the share of activation mass on BOS / template / user / assistant tokens (methods.md §7, from the store's
/// chat masks), and the tokens most over-represented at the latent's max-activating positions.</summary>
public sealed record LatentTableResult
{
    public required LatentGeometryResult Geometry { get; init; }
    public required long Positions { get; init; }
    public required double[] FreqAll { get; init; }
    public required double[] MaxActAll { get; init; }
    /// <summary>Store source name → [F] values.</summary>
    public required IReadOnlyDictionary<string, double[]> FreqBySource { get; init; }
    public required IReadOnlyDictionary<string, double[]> MaxActBySource { get; init; }
    public required double[] BosShare { get; init; }
    public required double[] TemplateShare { get; init; }
    public required double[] UserShare { get; init; }
    public required double[] AssistantShare { get; init; }
    /// <summary>[F][≤ TopTokens] token ids, most over-represented first.</summary>
    public required int[][] TopTokenIds { get; init; }
    /// <summary>The toolkit's template-token statistics (methods.md §7, the reference's latents_template_stats), counting
    /// positions where the latent fires with reported activation &gt; <see cref="LatentTable.TemplateEpsilon"/>, by column
    /// name: <c>lmsys_ctrl_%</c> = #ctrl / (#ctrl + #non-ctrl), BOS in neither; <c>lmsys_bos_%</c> = #bos / (#ctrl +
    /// #non-ctrl + #bos); <c>lmsys_user_%</c>, <c>lmsys_assistant_%</c> = #user or #assistant / (#user + #assistant);
    /// <c>ctrl_k_%</c> (k = 1..10) = #ctrl tokens that are the k-th of their run of template tokens / #ctrl. Fractions in
    /// [0, 1] (the toolkit compares them with 0.5), NaN where the denominator is 0. ctrl = the formatter's template tokens.</summary>
    public IReadOnlyDictionary<string, double[]> TemplateStats { get; init; } = new Dictionary<string, double[]>();
}

/// <summary>The latent table (methods.md §4 geometry plus activation statistics), streamed over the store once.</summary>
public static class LatentTable
{
    public const string Stage = "latents";
    /// <summary>Activations at or below this are not counted in the template statistics (the reference's EPSILON).</summary>
    public const double TemplateEpsilon = 1e-3;
    /// <summary>Template-token groups counted per latent: ctrl, non-ctrl, bos, user, assistant, then ctrl_1 … ctrl_10.</summary>
    const int CtrlPositions = 10, Groups = 5 + CtrlPositions;

    /// <summary>The column names of <see cref="LatentTableResult.TemplateStats"/>, in order.</summary>
    public static IReadOnlyList<string> TemplateColumns { get; } =
        ["lmsys_ctrl_%", "lmsys_bos_%", "lmsys_user_%", "lmsys_assistant_%", .. Enumerable.Range(1, CtrlPositions).Select(k => $"ctrl_{k}_%")];

    /// <summary>1-based index of a template token within its run of consecutive template tokens of the same sequence
    /// (capped at 11), 0 for other tokens.</summary>
    public static int CtrlIndex(ActivationStore store, long row)
    {
        if ((store.Mask(row) & (byte)TokenMask.Template) == 0) return 0;
        int k = 1;
        long r = row;
        while (k <= CtrlPositions && r > 0 && store.Position(r - 1) == store.Position(r) - 1 && (store.Mask(r - 1) & (byte)TokenMask.Template) != 0) { k++; r--; }
        return k;
    }

    public static LatentTableResult Run(AnalysisDictionary ad, ActivationStore store, LatentTableOptions o, IProgress<(long Done, long Total)>? progress = null, CancellationToken cancel = default)
    {
        var d = ad.Dict;
        int F = d.DictSize, S = store.Models, D = store.DModel, K = Math.Max(1, o.TopPositions);
        var rows = new StoreRows(store, ad.Layer, o.Filter, o.MaxPositions);
        long N = rows.Total;
        if (N == 0) throw new InvalidOperationException($"{store.Directory}: no positions to compute latent statistics on (filter '{o.Filter}')");
        var sources = store.Settings.Sources.Select((s, i) => string.IsNullOrEmpty(s.Name) ? $"source{i}" : s.Name).ToArray();
        int nSrc = Math.Max(1, sources.Length);
        var c = new float[F];
        d.CodeNorm(c);
        if (d.CodeNormalization == CodeNormalization.None) Array.Fill(c, 1f);

        var fireWeights = Firing.Weights(d);   // the one definition of "fires" (Dictionaries.Firing)
        var fires = new long[nSrc * F];
        var maxAct = new double[nSrc * F];
        var mass = new double[5 * F];          // all, bos, template, user, assistant
        var groupCount = new long[Groups * F];  // template statistics: counts of activations > TemplateEpsilon per group
        var topVal = new float[F * K]; var topRow = new long[F * K]; var topN = new int[F]; var topMin = new float[F];
        var tokenCount = new Dictionary<int, long>();

        int batch = o.BatchSize > 0 ? o.BatchSize : Scaling.LatentScaler.AutoBatch(F);
        var raw = new float[batch * S * D];
        var rowIds = new long[batch];
        var src = new int[batch]; var mask = new byte[batch]; var ctrlIdx = new int[batch];
        long done = 0;
        while (done < N)
        {
            cancel.ThrowIfCancellationRequested();
            int n = rows.Next(raw, rowIds, (int)Math.Min(batch, N - done));
            if (n == 0) break;
            for (int t = 0; t < n; t++)
            {
                var sh = store.ShardOf(rowIds[t]);
                int local = (int)(rowIds[t] - sh.StartRow);
                src[t] = Math.Min(sh.Sources[local], nSrc - 1);
                mask[t] = sh.Masks[local];
                ctrlIdx[t] = CtrlIndex(store, rowIds[t]);
                int tok = sh.Tokens[local];
                tokenCount[tok] = tokenCount.GetValueOrDefault(tok) + 1;
            }
            var codes = ad.Encode(ad.ToInput(raw.AsSpan(0, n * S * D), n, S));
            codes.BuildColumns();
            var ids = rowIds; var srcL = src; var maskL = mask; var ctrlL = ctrlIdx;
            int nc = Math.Max(1, Math.Min(Environment.ProcessorCount * 4, F / 16));
            Parallel.For(0, nc, ch =>
            {
                int lo = (int)((long)F * ch / nc), hi = (int)((long)F * (ch + 1) / nc);
                for (int j = lo; j < hi; j++)
                    for (int e = codes.ColStart[j]; e < codes.ColStart[j + 1]; e++)
                    {
                        float f = codes.Value[codes.ColEntry[e]];
                        if (!Firing.Fires(f, fireWeights, j)) continue;
                        int i = codes.ColRow[e];
                        double a = (double)f * c[j];
                        int s = srcL[i];
                        fires[s * F + j]++;
                        if (a > maxAct[s * F + j]) maxAct[s * F + j] = a;
                        byte mk = maskL[i];
                        mass[j] += a;
                        if ((mk & (byte)TokenMask.Bos) != 0) mass[F + j] += a;
                        if ((mk & (byte)TokenMask.Template) != 0) mass[2 * F + j] += a;
                        if ((mk & (byte)TokenMask.User) != 0) mass[3 * F + j] += a;
                        if ((mk & (byte)TokenMask.Assistant) != 0) mass[4 * F + j] += a;
                        if (a > TemplateEpsilon)
                        {
                            bool bos = (mk & (byte)TokenMask.Bos) != 0;
                            int k = ctrlL[i];
                            if (bos) groupCount[2 * F + j]++;
                            else if (k > 0) { groupCount[j]++; if (k <= CtrlPositions) groupCount[(4 + k) * F + j]++; }
                            else groupCount[F + j]++;
                            if ((mk & (byte)TokenMask.User) != 0) groupCount[3 * F + j]++;
                            if ((mk & (byte)TokenMask.Assistant) != 0) groupCount[4 * F + j]++;
                        }
                        Keep(j, (float)a, ids[i], K, topVal, topRow, topN, topMin);
                    }
            });
            done += n;
            progress?.Report((done, N));
        }

        var freqAll = new double[F]; var maxAll = new double[F];
        var freqBy = new Dictionary<string, double[]>(); var maxBy = new Dictionary<string, double[]>();
        var perSource = CountSources(store, o.Filter, N, nSrc);   // positions per source among the streamed rows
        for (int s = 0; s < nSrc; s++)
        {
            var fq = new double[F]; var mx = new double[F];
            for (int j = 0; j < F; j++)
            {
                fq[j] = perSource[s] > 0 ? (double)fires[s * F + j] / perSource[s] : double.NaN;
                mx[j] = maxAct[s * F + j];
                freqAll[j] += fires[s * F + j];
                maxAll[j] = Math.Max(maxAll[j], mx[j]);
            }
            if (sources.Length > 1) { freqBy[sources[s]] = fq; maxBy[sources[s]] = mx; }
        }
        for (int j = 0; j < F; j++) freqAll[j] /= N;
        double[] Share(int k) => Enumerable.Range(0, F).Select(j => mass[j] > 0 ? mass[k * F + j] / mass[j] : double.NaN).ToArray();
        double[] Ratio(Func<int, long> num, Func<int, long> den) => Enumerable.Range(0, F).Select(j => den(j) > 0 ? (double)num(j) / den(j) : double.NaN).ToArray();
        long G(int g, int j) => groupCount[g * F + j];
        var templateStats = new Dictionary<string, double[]>
        {
            ["lmsys_ctrl_%"] = Ratio(j => G(0, j), j => G(0, j) + G(1, j)),
            ["lmsys_bos_%"] = Ratio(j => G(2, j), j => G(0, j) + G(1, j) + G(2, j)),
            ["lmsys_user_%"] = Ratio(j => G(3, j), j => G(3, j) + G(4, j)),
            ["lmsys_assistant_%"] = Ratio(j => G(4, j), j => G(3, j) + G(4, j)),
        };
        for (int k = 1; k <= CtrlPositions; k++) { int kk = k; templateStats[$"ctrl_{k}_%"] = Ratio(j => G(4 + kk, j), j => G(0, j)); }

        // top_tokens: over-representation at the top positions relative to the token's base rate
        var top = new int[F][];
        for (int j = 0; j < F; j++)
        {
            int n = topN[j];
            if (n == 0) { top[j] = []; continue; }
            var counts = new Dictionary<int, int>();
            for (int q = 0; q < n; q++) { int tok = store.TokenId(topRow[j * K + q]); counts[tok] = counts.GetValueOrDefault(tok) + 1; }
            int minCount = n >= 8 ? 2 : 1;
            top[j] = counts.Where(kv => kv.Value >= minCount)
                .Select(kv => (Id: kv.Key, Count: kv.Value, Lift: (double)kv.Value / n / ((double)tokenCount.GetValueOrDefault(kv.Key, 1) / N)))
                .OrderByDescending(x => x.Lift * Math.Min(1.0, x.Count / 4.0)).ThenByDescending(x => x.Count).ThenBy(x => x.Id)
                .Take(o.TopTokens).Select(x => x.Id).ToArray();
        }
        return new LatentTableResult
        {
            Geometry = LatentGeometry.Compute(d, ad.Kind, o.Tags), Positions = N, FreqAll = freqAll, MaxActAll = maxAll,
            FreqBySource = freqBy, MaxActBySource = maxBy,
            BosShare = Share(1), TemplateShare = Share(2), UserShare = Share(3), AssistantShare = Share(4), TopTokenIds = top,
            TemplateStats = templateStats,
        };
    }

    // keeps the K largest (value, row) of latent j; topMin caches the smallest kept value once full
    static void Keep(int j, float a, long row, int K, float[] val, long[] rows, int[] n, float[] min)
    {
        int b = j * K;
        if (n[j] < K)
        {
            val[b + n[j]] = a; rows[b + n[j]] = row; n[j]++;
            if (n[j] == K) min[j] = MinOf(val, b, K);
            return;
        }
        if (a <= min[j]) return;
        for (int q = 0; q < K; q++)
            if (val[b + q] == min[j]) { val[b + q] = a; rows[b + q] = row; break; }
        min[j] = MinOf(val, b, K);
    }

    static float MinOf(float[] v, int b, int K)
    {
        float m = float.PositiveInfinity;
        for (int q = 0; q < K; q++) m = Math.Min(m, v[b + q]);
        return m;
    }

    static long[] CountSources(ActivationStore store, MaskFilter filter, long N, int nSrc)
    {
        var r = new long[nSrc];
        long seen = 0;
        foreach (var sh in store.Shards)
        {
            var srcs = sh.Sources; var masks = sh.Masks;
            for (int i = 0; i < sh.Rows && seen < N; i++)
            {
                if (!filter.IsAll && !filter.Keeps(masks[i])) continue;
                r[Math.Min(srcs[i], nSrc - 1)]++; seen++;
            }
        }
        return r;
    }

    /// <summary>A column-name-safe spelling of a source name.</summary>
    public static string Safe(string name) => new(name.Select(ch => char.IsLetterOrDigit(ch) || ch is '_' or '-' ? ch : '_').ToArray());

    /// <summary>Writes the geometry and statistics columns. <paramref name="decode"/> turns a token id into its text
    /// (the tokenizer's decode of the single id); without one, ids are written.</summary>
    public static void WriteColumns(LatentTableResult r, FeatureTable t, Func<int, string>? decode = null)
    {
        LatentGeometry.WriteColumns(r.Geometry, t);
        t.Set("freq_all", r.FreqAll);
        t.Set("max_act_all", r.MaxActAll);
        foreach (var (s, v) in r.FreqBySource) t.Set($"freq_{Safe(s)}", v);
        foreach (var (s, v) in r.MaxActBySource) t.Set($"max_act_{Safe(s)}", v);
        t.Set("bos_share", r.BosShare); t.Set("template_share", r.TemplateShare);
        t.Set("user_share", r.UserShare); t.Set("assistant_share", r.AssistantShare);
        foreach (string name in TemplateColumns)
            if (r.TemplateStats.TryGetValue(name, out var v)) t.Set(name, v);
        decode ??= id => id.ToString(System.Globalization.CultureInfo.InvariantCulture);
        t.Set("top_tokens", r.TopTokenIds.Select(ids => TokenList(ids.Select(decode))).ToArray());
    }

    /// <summary>A JSON array of strings (token texts keep their spaces; the CSV writer quotes the cell).</summary>
    public static string TokenList(IEnumerable<string> tokens) => System.Text.Json.JsonSerializer.Serialize(tokens.ToArray(),
        new System.Text.Json.JsonSerializerOptions { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping });
}

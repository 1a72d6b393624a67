using Finetrace.Models;
using Finetrace.Text.Chat;
using Finetrace.Text.Datasets;

namespace Finetrace.Diffing.Adl;

/// <summary>One (context, position) cell of the mean difference.</summary>
public readonly record struct AdlSlot(string Context, int Position)
{
    public const string Text = "text";
    public const string AssistantStart = "assistant_start";
}

/// <summary>The accumulated means of one slot at one layer and the typical norms (methods §11.1).</summary>
internal sealed class MeanDifferenceSums
{
    public required AdlSlot[] Slots;
    public required int[] Layers;
    public required int Width;
    /// <summary>[layer][slot][Width] sums of h_base and h_ft (double).</summary>
    public required double[][][] BaseSum, FtSum;
    public required long[] Count;
    public required Dictionary<int, long>[] TokenCounts;
    /// <summary>[layer] Σ‖h‖ over the norm positions of each model, and their count.</summary>
    public required double[] BaseNormSum, FtNormSum;
    public long NormTokens;
    public long TextSamples, ChatSamples;
    public readonly SortedDictionary<string, long> Skipped = new(StringComparer.Ordinal);

    public float[] Mean(double[][][] sum, int layer, int slot)
    {
        var m = new float[Width];
        long n = Count[slot];
        for (int j = 0; j < Width; j++) m[j] = n == 0 ? 0f : (float)(sum[layer][slot][j] / n);
        return m;
    }

    /// <summary>δ = mean(h_ft − h_base), computed from the double sums.</summary>
    public float[] Delta(int layer, int slot)
    {
        var m = new float[Width];
        long n = Count[slot];
        for (int j = 0; j < Width; j++) m[j] = n == 0 ? 0f : (float)((FtSum[layer][slot][j] - BaseSum[layer][slot][j]) / n);
        return m;
    }

    public int MostFrequentToken(int slot) =>
        TokenCounts[slot].Count == 0 ? -1 : TokenCounts[slot].OrderByDescending(kv => kv.Value).ThenBy(kv => kv.Key).First().Key;
}

/// <summary>
/// Streams samples through both models and accumulates, per layer and (context, position), the sums of h_base and h_ft
/// (methods §11.1). Each sample runs only as far as its last needed position (the model is causal, so what comes later
/// cannot change those activations), except the first <see cref="AdlOptions.NormSamples"/> samples, which run to
/// <see cref="AdlOptions.NormContext"/> tokens for the typical norms; every forward stops after the last requested layer.
/// </summary>
internal static class MeanDifferences
{
    public const string TooShort = "too short for the positions";
    public const string NoAssistant = "no assistant turn";
    public const string NotBeforeAssistant = "fewer tokens before the assistant start than the positions need";

    public static MeanDifferenceSums Run(AdlOptions o, CausalLM baseModel, CausalLM ftModel, ISampleEncoder encoder,
        IProgress<AdlProgress>? progress, CancellationToken cancel)
    {
        bool wantText = AdlData.UsesBuiltIn(o) || o.Data.Any(d => d.Kind != DataKind.Chat), wantChat = o.Data.Any(d => d.Kind == DataKind.Chat);
        var slots = new List<AdlSlot>();
        if (wantText) slots.AddRange(o.Positions.Distinct().Order().Select(p => new AdlSlot(AdlSlot.Text, p)));
        if (wantChat) slots.AddRange(o.ChatPositions.Distinct().Order().Select(p => new AdlSlot(AdlSlot.AssistantStart, p)));
        int d = baseModel.Hidden, nl = o.Layers.Length, ns = slots.Count;
        var sums = new MeanDifferenceSums
        {
            Slots = slots.ToArray(), Layers = o.Layers, Width = d,
            BaseSum = Alloc(nl, ns, d), FtSum = Alloc(nl, ns, d),
            Count = new long[ns], TokenCounts = Enumerable.Range(0, ns).Select(_ => new Dictionary<int, long>()).ToArray(),
            BaseNormSum = new double[nl], FtNormSum = new double[nl],
        };
        int textMax = wantText ? o.Positions.Max() : 0;
        int chatMin = wantChat ? o.ChatPositions.Min() : 0, chatMax = wantChat ? o.ChatPositions.Max() : 0;
        int textSlot0 = 0, chatSlot0 = wantText ? o.Positions.Distinct().Count() : 0;
        var textIndex = o.Positions.Distinct().Order().ToArray();
        var chatIndex = o.ChatPositions.Distinct().Order().ToArray();
        long target = (wantText ? o.MaxSamples : 0) + (wantChat ? o.MaxSamples : 0);

        var pending = new List<Row>(o.BatchSize);
        long accepted = 0;
        foreach (var s in AdlData.Read(o, encoder, o.ContextLength))
        {
            cancel.ThrowIfCancellationRequested();
            bool chat = s.Roles is not null;
            if (chat ? sums.ChatSamples >= o.MaxSamples : sums.TextSamples >= o.MaxSamples)
            {
                if ((!wantText || sums.TextSamples >= o.MaxSamples) && (!wantChat || sums.ChatSamples >= o.MaxSamples)) break;
                continue;
            }
            int anchor, need;
            if (!chat)
            {
                if (s.Ids.Length <= textMax) { Skip(sums, "text: " + TooShort); continue; }
                anchor = 0; need = textMax + 1;
            }
            else
            {
                anchor = Array.IndexOf(s.Roles!, TokenRole.Assistant);
                if (anchor < 0) { Skip(sums, "chat: " + NoAssistant); continue; }
                if (anchor + chatMin < 0) { Skip(sums, "chat: " + NotBeforeAssistant); continue; }
                if (anchor + chatMax >= s.Ids.Length) { Skip(sums, "chat: " + TooShort); continue; }
                need = anchor + chatMax + 1;
            }
            bool norm = accepted < o.NormSamples;
            int len = norm ? Math.Max(need, Math.Min(s.Ids.Length, o.NormContext)) : need;
            var cells = new List<(int Slot, int Pos)>();
            if (!chat) for (int k = 0; k < textIndex.Length; k++) cells.Add((textSlot0 + k, textIndex[k]));
            else for (int k = 0; k < chatIndex.Length; k++) cells.Add((chatSlot0 + k, anchor + chatIndex[k]));
            pending.Add(new Row(s.Ids[..len], cells, norm));
            accepted++;
            if (chat) sums.ChatSamples++; else sums.TextSamples++;
            if (pending.Count == o.BatchSize)
            {
                RunBatch(o, baseModel, ftModel, pending, sums);
                pending.Clear();
                progress?.Report(new AdlProgress("means", accepted, target));
            }
        }
        if (pending.Count > 0) RunBatch(o, baseModel, ftModel, pending, sums);
        progress?.Report(new AdlProgress("means", accepted, accepted));
        return sums;
    }

    static void Skip(MeanDifferenceSums s, string reason) => s.Skipped[reason] = s.Skipped.GetValueOrDefault(reason) + 1;

    static double[][][] Alloc(int nl, int ns, int d) =>
        Enumerable.Range(0, nl).Select(_ => Enumerable.Range(0, ns).Select(_ => new double[d]).ToArray()).ToArray();

    /// <summary>One sample cut to the tokens it needs: the cells (slot, absolute position) it contributes to, and whether
    /// its positions ≥ NormSkip count towards the typical norms.</summary>
    sealed record Row(int[] Ids, List<(int Slot, int Pos)> Cells, bool Norm);

    static void RunBatch(AdlOptions o, CausalLM baseModel, CausalLM ftModel, List<Row> rows, MeanDifferenceSums sums)
    {
        var tb = TokenBatch.RightPadded(rows.Select(r => r.Ids).ToList());
        foreach (var r in rows)
            foreach (var (slot, pos) in r.Cells)
            {
                sums.Count[slot]++;
                int id = r.Ids[pos];
                sums.TokenCounts[slot][id] = sums.TokenCounts[slot].GetValueOrDefault(id) + 1;
            }
        foreach (var r in rows)
            if (r.Norm) sums.NormTokens += Math.Max(0, r.Ids.Length - o.NormSkip);
        Accumulate(baseModel, tb, rows, o, sums.BaseSum, sums.BaseNormSum);
        Accumulate(ftModel, tb, rows, o, sums.FtSum, sums.FtNormSum);
    }

    static void Accumulate(CausalLM model, TokenBatch tb, List<Row> rows, AdlOptions o, double[][][] sum, double[] normSum)
    {
        var hooks = new HookSet();
        int d = model.Hidden, T = tb.Seq;
        for (int li = 0; li < o.Layers.Length; li++)
        {
            int l = li;
            hooks.On(HookNames.ResidPost(o.Layers[l]), (a, _) =>
            {
                for (int b = 0; b < rows.Count; b++)
                {
                    var r = rows[b];
                    foreach (var (slot, pos) in r.Cells)
                    {
                        var h = a.Data.AsSpan((b * T + pos) * d, d);
                        var acc = sum[l][slot];
                        for (int j = 0; j < d; j++) acc[j] += h[j];
                    }
                    if (r.Norm)
                        for (int t = o.NormSkip; t < r.Ids.Length; t++)
                            normSum[l] += System.Numerics.Tensors.TensorPrimitives.Norm(a.Data.AsSpan((b * T + t) * d, d));
                }
            });
        }
        model.Forward(tb, hooks, stopAfterLayer: o.Layers.Max());
    }
}

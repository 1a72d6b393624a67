using Finetrace.Activations;
using Finetrace.Dictionaries;
using Finetrace.Diffing.Causal;
using Finetrace.Models;
using Finetrace.Models.Backward;
using Finetrace.Tensors;

namespace Finetrace.Diffing.Attribution;

public sealed record AttributionOptions
{
    /// <summary>Stored sequences (the same seeded sample as the causal evaluation with the same seed).</summary>
    public int Sequences { get; init; } = 64;
    public int Seed { get; init; }
    public bool? Chat { get; init; }
    public int BatchSequences { get; init; } = 8;
    /// <summary>Tokens kept per latent where adding it closes the most KL (for dashboards).</summary>
    public int TopTokens { get; init; } = 5;
}

/// <summary>One token where a latent's first-order effect is largest (most negative = closes the most KL).</summary>
public sealed record AttributionToken(int Sequence, int Position, int TokenId, double Effect);

public sealed record AttributionResult
{
    /// <summary>[F] first-order change of the mean KL(p_ft ‖ p_patched) from adding latent j's difference f_j (d_j^ft − d_j^base)
    /// to the base residual at every position: (1/N) Σ_t g_t · c_{j,t}; negative closes the gap.</summary>
    public required double[] Effect { get; init; }
    /// <summary>KL(p_ft ‖ p_base→ft), the gap at h' = h_base.</summary>
    public required double KlEmpty { get; init; }
    public required long Positions { get; init; }
    public required int Sequences { get; init; }
    public required bool Chat { get; init; }
    /// <summary>[F] the tokens where each latent closes the most KL.</summary>
    public required AttributionToken[][] TopTokens { get; init; }
}

/// <summary>
/// Per-latent KL attribution (methods.md §18.2): with h' = h_base at the dictionary's layer L and L(h') the mean
/// KL(p_ft ‖ p(h')) over the scored positions when the fine-tuned model continues from L+1, the first-order effect of
/// latent j is Σ_t g_t · c_{j,t} / N with g_t = ∂L/∂h'_t at h_base (one backward per batch through the blocks after L,
/// <see cref="DifferentiableLM.ResidualGradient"/>) and c_{j,t} = f_{j,t} (d_j^ft − d_j^base) in raw space.
/// Scored positions as in <see cref="CausalEvaluation"/> (assistant tokens for chat data).
/// </summary>
public static class KlAttribution
{
    public const string Stage = "attribution";

    public static AttributionResult Run(AnalysisDictionary ad, ActivationStore store, CausalLM baseLm, CausalLM ftLm, DifferentiableLM ftDiff, AttributionOptions o,
        IProgress<(long Done, long Total)>? progress = null, CancellationToken cancel = default)
    {
        ad.RequireResidualSite("KL attribution");
        if (ad.Kind != InputKind.Paired || ad.Dict.Models != 2) throw new ArgumentException($"{ad.Directory}: attribution needs a two-model crosscoder; this dictionary reads {ad.Input}");
        var d = ad.Dict;
        int F = d.DictSize, D = d.DModel, L = ad.Layer, V = ftLm.Config.Vocab;
        if (L >= ftLm.Layers - 1) throw new ArgumentException($"{ftLm.Folder}: layer {L} is the last layer; nothing is left to differentiate");
        var delta = CausalEvaluation.RawDifferenceRows(d);
        var seqs = CausalEvaluation.SampleSequences(store, new CausalOptions { Sequences = o.Sequences, Seed = o.Seed }, ftLm.Config.BosTokenId);
        if (seqs.Count == 0) throw new InvalidOperationException($"{store.Directory}: no stored sequence to re-run");
        bool chat = o.Chat ?? seqs.Any(s => s.Masks.Any(m => (m & (byte)TokenMask.Assistant) != 0));
        var effect = new double[F];
        var top = new List<AttributionToken>[F];
        for (int j = 0; j < F; j++) top[j] = [];
        double klSum = 0; long n = 0;
        for (int start = 0; start < seqs.Count; start += o.BatchSequences)
        {
            cancel.ThrowIfCancellationRequested();
            var group = seqs.Skip(start).Take(o.BatchSequences).ToList();
            var tb = TokenBatch.RightPadded(group.Select(s => s.Ids).ToList());
            int T = tb.Seq;
            var hb = baseLm.Embed(tb); baseLm.RunLayers(0, L, hb, tb);
            var hf = ftLm.Embed(tb); ftLm.RunLayers(0, L, hf, tb);
            var refLogits = hf.Clone();
            ftLm.RunLayers(L + 1, ftLm.Layers - 1, refLogits, tb);
            var zRef = ftLm.FinalNormAndLogits(refLogits, tb).Data;
            var scored = new List<int>();   // flat index b·T + p of scored prediction positions
            for (int g = 0; g < group.Count; g++)
                for (int p = 0; p + 1 < group[g].Ids.Length; p++)
                    if (!chat || (group[g].Masks[p + 1] & (byte)TokenMask.Assistant) != 0) scored.Add(g * T + p);
            if (scored.Count == 0) continue;
            var (loss, grad) = ftDiff.ResidualGradient(L + 1, hb.Data, tb, (z, dz) =>
            {
                double total = 0;
                foreach (int t in scored)
                {
                    var pf = Softmax(zRef.AsSpan(t * V, V)); var pp = Softmax(z.AsSpan(t * V, V));
                    for (int v = 0; v < V; v++)
                    {
                        if (pf[v] > 0) total += pf[v] * (Math.Log(pf[v]) - Math.Log(pp[v]));
                        dz[t * V + v] = (float)(pp[v] - pf[v]);   // ∂ KL(pf ‖ softmax z) / ∂z
                    }
                }
                return total;
            });
            klSum += loss; n += scored.Count;
            // codes of [h_base, h_ft] at every real position
            var (slots, codes) = ad.PairCodes(hb.Data, hf.Data, group.Select(s => s.Ids.Length).ToList(), T);
            for (int s = 0; s < slots.Count; s++)
            {
                var gt = grad.AsSpan((slots[s].B * T + slots[s].Pos) * D, D);
                for (int e = codes.RowStart[s]; e < codes.RowStart[s + 1]; e++)
                {
                    float f = codes.Value[e];
                    if (f == 0) continue;
                    int j = codes.Index[e];
                    double c = f * Scaling.ScalingAccumulator.Dot(gt, delta.AsSpan(j * D, D));
                    effect[j] += c;
                    var list = top[j];
                    if (list.Count < o.TopTokens || c < list[^1].Effect)
                    {
                        var tok = new AttributionToken(start + slots[s].B, slots[s].Pos, group[slots[s].B].Ids[slots[s].Pos], c);
                        int at = list.Count;
                        while (at > 0 && c < list[at - 1].Effect) at--;
                        list.Insert(at, tok);
                        if (list.Count > o.TopTokens) list.RemoveAt(o.TopTokens);
                    }
                }
            }
            progress?.Report((Math.Min(seqs.Count, start + group.Count), seqs.Count));
        }
        if (n == 0) throw new InvalidOperationException("no scored positions in the sampled sequences" + (chat ? " (no assistant tokens)" : ""));
        for (int j = 0; j < F; j++) effect[j] /= n;
        return new AttributionResult { Effect = effect, KlEmpty = klSum / n, Positions = n, Sequences = seqs.Count, Chat = chat, TopTokens = top.Select(l => l.ToArray()).ToArray() };
    }

    static double[] Softmax(ReadOnlySpan<float> z)
    {
        double max = double.NegativeInfinity;
        foreach (float v in z) max = Math.Max(max, v);
        var p = new double[z.Length];
        double sum = 0;
        for (int i = 0; i < z.Length; i++) { p[i] = Math.Exp(z[i] - max); sum += p[i]; }
        for (int i = 0; i < z.Length; i++) p[i] /= sum;
        return p;
    }

    /// <summary>Columns: <c>kl_attribution</c> (first-order ΔKL, negative closes the gap) and its rank (1 = closes the most).</summary>
    public static void WriteColumns(AttributionResult r, FeatureTable t)
    {
        t.Set("kl_attribution", r.Effect);
        var order = Enumerable.Range(0, r.Effect.Length).OrderBy(j => r.Effect[j]).ThenBy(j => j).ToArray();
        var rank = new double[r.Effect.Length];
        for (int i = 0; i < order.Length; i++) rank[order[i]] = i + 1;
        t.Set("kl_attribution_rank", rank);
    }
}

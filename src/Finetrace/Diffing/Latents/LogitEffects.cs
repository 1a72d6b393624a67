using Finetrace.Models;
using Finetrace.Tensors;

namespace Finetrace.Diffing.Latents;

/// <summary>The tokens a latent's decoder direction promotes and suppresses in one model: W_U · d_j (methods.md §14).</summary>
public sealed record LogitEffect(int[][] TopIds, float[][] TopValues, int[][] BottomIds, float[][] BottomValues);

/// <summary>
/// Logit effects W_U · d_j without the final norm (the dashboards' convention), top and bottom tokens per latent.
/// Decoder rows are mapped back to raw space (÷ g_m) first, so values are in the model's logit units. Gemma 2's final
/// soft-cap is applied by the model's unembedding, as for any logit it produces.
/// </summary>
public static class LogitEffects
{
    /// <summary>Effects of dictionary model <paramref name="dictModel"/>'s decoder rows through <paramref name="lm"/>'s unembedding.</summary>
    public static LogitEffect Compute(AnalysisDictionary ad, int dictModel, CausalLM lm, int count = 10, CancellationToken cancel = default)
    {
        var d = ad.Dict;
        int F = d.DictSize, D = d.DModel, V = lm.Config.Vocab;
        if (lm.Hidden != D) throw new ArgumentException($"{lm.Folder}: hidden size {lm.Hidden}, the dictionary reads width {D}");
        float g = d.Normalizer?.Scale[dictModel] ?? 1f;
        var top = new int[F][]; var topV = new float[F][]; var bot = new int[F][]; var botV = new float[F][];
        int chunk = Math.Max(1, (int)Math.Min(256, (64L << 20) / 4 / Math.Max(1, V)));
        for (int j0 = 0; j0 < F; j0 += chunk)
        {
            cancel.ThrowIfCancellationRequested();
            int n = Math.Min(chunk, F - j0);
            var x = new Tensor(n, 1, D);
            for (int q = 0; q < n; q++)
                for (int e = 0; e < D; e++) x.Data[q * D + e] = d.WDec[(dictModel * F + j0 + q) * D + e] / (g + 1e-8f);
            var logits = lm.Unembed(x, new TokenBatch(new int[n], n, 1));
            for (int q = 0; q < n; q++)
            {
                var data = logits.Data; int off = q * V;
                var order = Extremes(data.AsSpan(off, V), count);
                top[j0 + q] = order.Top; topV[j0 + q] = order.Top.Select(i => data[off + i]).ToArray();
                bot[j0 + q] = order.Bottom; botV[j0 + q] = order.Bottom.Select(i => data[off + i]).ToArray();
            }
        }
        return new LogitEffect(top, topV, bot, botV);
    }

    /// <summary>Indices of the <paramref name="k"/> largest (descending) and smallest (ascending) values; ties by index.</summary>
    public static (int[] Top, int[] Bottom) Extremes(ReadOnlySpan<float> v, int k)
    {
        k = Math.Min(k, v.Length);
        var hi = new List<int>(k + 1); var lo = new List<int>(k + 1);
        for (int i = 0; i < v.Length; i++)
        {
            float x = v[i];
            if (hi.Count < k || x > v[hi[^1]])
            {
                int at = hi.Count;
                while (at > 0 && x > v[hi[at - 1]]) at--;
                hi.Insert(at, i);
                if (hi.Count > k) hi.RemoveAt(k);
            }
            if (lo.Count < k || x < v[lo[^1]])
            {
                int at = lo.Count;
                while (at > 0 && x < v[lo[at - 1]]) at--;
                lo.Insert(at, i);
                if (lo.Count > k) lo.RemoveAt(k);
            }
        }
        return (hi.ToArray(), lo.ToArray());
    }
}

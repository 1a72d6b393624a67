using Finetrace.Activations;
using Finetrace.Dictionaries;

namespace Finetrace.Diffing.Correlations;

public sealed record CorrelationOptions
{
    /// <summary>Neurons and latents reported per latent (SAEDashboard / Neuronpedia: 3).</summary>
    public int Top { get; init; } = 3;
    /// <summary>Candidate latents per latent for the feature correlations: the ones whose decoder rows (the last model's)
    /// have the highest cosine with its own (all F×F correlations would cost too much at 100k latents).</summary>
    public int Candidates { get; init; } = 64;
    /// <summary>Store rows to stream (from the start); 0 = all.</summary>
    public long MaxPositions { get; init; }
    /// <summary>Rows per encode batch.</summary>
    public int BatchSize { get; init; } = 2048;
}

/// <summary>One latent's correlations. Neurons are the D dimensions of the dictionary's input activation (the last
/// model's part for a crosscoder, the fine-tuned side as the batch JSON's vector); Pearson is over all streamed rows
/// (latent activation = its code value, 0 where it does not fire); Cosine is the uncentred Σxy / (‖x‖‖y‖) over the same
/// rows, what sae_vis calls cossim and SAEDashboard writes into correlated_*_l1.</summary>
public sealed record LatentCorrelation(int Latent, int[] NeuronIndices, double[] NeuronPearson, double[] NeuronCosine,
    int[] FeatureIndices, double[] FeaturePearson, double[] FeatureCosine);

/// <summary>
/// Correlated neurons and latents for a set of latents (Neuronpedia batch JSON, formats.md §3), in one pass over the
/// store with float64 sums: per tracked latent j Σx_j y_i over the D neurons and Σx_j x_k over its candidate latents k;
/// per neuron and per latent Σ and Σ². Ranked by |Pearson| (ties: lower index).
/// </summary>
public static class LatentCorrelations
{
    /// <summary>For each latent in <paramref name="latents"/>, the <paramref name="count"/> other latents with the highest
    /// cosine between the last model's decoder rows (ties: lower index).</summary>
    public static int[][] Candidates(SparseDictionary d, IReadOnlyList<int> latents, int count)
    {
        int F = d.DictSize, D = d.DModel, m = d.Models - 1;
        var wDecFD = d.WDec.AsMemory(m * F * D, F * D);
        var norms = new double[F];
        Parallel.For(0, F, j => norms[j] = Math.Sqrt(Dot(wDecFD.Span.Slice(j * D, D), wDecFD.Span.Slice(j * D, D))));
        var result = new int[latents.Count][];
        Parallel.For(0, latents.Count, a =>
        {
            int j = latents[a];
            var rowJ = wDecFD.Span.Slice(j * D, D);
            var cos = new double[F];
            for (int k = 0; k < F; k++)
                cos[k] = k == j || norms[k] == 0 || norms[j] == 0 ? double.NegativeInfinity : Dot(rowJ, wDecFD.Span.Slice(k * D, D)) / (norms[j] * norms[k]);
            result[a] = Enumerable.Range(0, F).Where(k => k != j).OrderByDescending(k => cos[k]).ThenBy(k => k).Take(count).ToArray();
        });
        return result;
    }

    static double Dot(ReadOnlySpan<float> a, ReadOnlySpan<float> b)
    {
        double s = 0;
        for (int i = 0; i < a.Length; i++) s += (double)a[i] * b[i];
        return s;
    }

    public static IReadOnlyList<LatentCorrelation> Run(AnalysisDictionary ad, ActivationStore store, IReadOnlyList<int> latents, CorrelationOptions o,
        IProgress<(long Done, long Total)>? progress = null, CancellationToken cancel = default)
    {
        int F = ad.Latents, D = ad.Dict.DModel, M = ad.Dict.Models, S = store.Models, L = latents.Count;
        foreach (int j in latents)
            if (j < 0 || j >= F) throw new ArgumentOutOfRangeException(nameof(latents), $"latent {j} is outside 0..{F - 1}");
        var cand = Candidates(ad.Dict, latents, o.Candidates);
        int C = cand.Length == 0 ? 0 : cand.Max(c => c.Length);
        var slot = new int[F];
        Array.Fill(slot, -1);
        for (int a = 0; a < L; a++) slot[latents[a]] = a;

        var sumX = new double[F]; var sumXX = new double[F];          // every latent (candidates need theirs)
        var sumY = new double[D]; var sumYY = new double[D];          // every neuron
        var sumXY = new double[L * D];                                // tracked latent × neuron
        var sumXK = new double[L * C];                                // tracked latent × its candidates
        long n = 0;
        var rows = new StoreRows(store, ad.Layer, MaskFilter.All, o.MaxPositions);
        int batch = Math.Max(1, o.BatchSize);
        var raw = new float[batch * S * D];
        var ids = new long[batch];
        var dense = new float[F];
        while (true)
        {
            cancel.ThrowIfCancellationRequested();
            int got = rows.Next(raw, ids, batch);
            if (got == 0) break;
            var xBMD = ad.ToInput(raw.AsSpan(0, got * S * D), got, S);
            var codes = ad.Encode(xBMD);
            for (int t = 0; t < got; t++)
            {
                var y = xBMD.AsSpan((t * M + M - 1) * D, D);
                for (int i = 0; i < D; i++) { sumY[i] += y[i]; sumYY[i] += (double)y[i] * y[i]; }
                int e0 = codes.RowStart[t], e1 = codes.RowStart[t + 1];
                for (int e = e0; e < e1; e++) { int k = codes.Index[e]; float v = codes.Value[e]; dense[k] = v; sumX[k] += v; sumXX[k] += (double)v * v; }
                for (int e = e0; e < e1; e++)
                {
                    int a = slot[codes.Index[e]];
                    if (a < 0) continue;
                    double v = codes.Value[e];
                    if (v == 0) continue;
                    for (int i = 0; i < D; i++) sumXY[a * D + i] += v * y[i];
                    var ca = cand[a];
                    for (int c = 0; c < ca.Length; c++) sumXK[a * C + c] += v * dense[ca[c]];
                }
                for (int e = e0; e < e1; e++) dense[codes.Index[e]] = 0;
            }
            n += got;
            progress?.Report((rows.Read, rows.Total));
        }

        var result = new LatentCorrelation[L];
        for (int a = 0; a < L; a++)
        {
            int j = latents[a];
            var nP = new double[D]; var nC = new double[D];
            for (int i = 0; i < D; i++) (nP[i], nC[i]) = Stats(n, sumX[j], sumXX[j], sumY[i], sumYY[i], sumXY[a * D + i]);
            var topN = Enumerable.Range(0, D).OrderByDescending(i => Math.Abs(nP[i])).ThenBy(i => i).Take(o.Top).ToArray();
            var ca = cand[a];
            var fP = new double[ca.Length]; var fC = new double[ca.Length];
            for (int c = 0; c < ca.Length; c++) (fP[c], fC[c]) = Stats(n, sumX[j], sumXX[j], sumX[ca[c]], sumXX[ca[c]], sumXK[a * C + c]);
            var topF = Enumerable.Range(0, ca.Length).OrderByDescending(c => Math.Abs(fP[c])).ThenBy(c => ca[c]).Take(o.Top).ToArray();
            result[a] = new LatentCorrelation(j, topN, topN.Select(i => nP[i]).ToArray(), topN.Select(i => nC[i]).ToArray(),
                topF.Select(c => ca[c]).ToArray(), topF.Select(c => fP[c]).ToArray(), topF.Select(c => fC[c]).ToArray());
        }
        return result;
    }

    /// <summary>Pearson r = (nΣxy − ΣxΣy) / √((nΣx² − (Σx)²)(nΣy² − (Σy)²)) and cosine Σxy / √(Σx²Σy²); 0 where a side is constant / zero.</summary>
    static (double Pearson, double Cosine) Stats(long n, double sx, double sxx, double sy, double syy, double sxy)
    {
        double vx = n * sxx - sx * sx, vy = n * syy - sy * sy;
        double r = vx > 0 && vy > 0 ? (n * sxy - sx * sy) / Math.Sqrt(vx * vy) : 0;
        double c = sxx > 0 && syy > 0 ? sxy / Math.Sqrt(sxx * syy) : 0;
        return (Math.Clamp(r, -1, 1), Math.Clamp(c, -1, 1));
    }
}

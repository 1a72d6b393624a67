using Finetrace.Activations;

namespace Finetrace.Dictionaries;

/// <summary>Held-out quality of a dictionary (methods.md §14), in raw activation space.</summary>
public sealed record EvalReport
{
    public long Tokens { get; init; }
    public double L0 { get; init; }
    /// <summary>Per model: 1 − E‖x − x̂‖² / (E‖x‖² − ‖E x‖²) over the whole eval set (the corrected definition).</summary>
    public double[] Fve { get; init; } = [];
    /// <summary>Per model: mean over tokens of Σ_d (x − x̂)².</summary>
    public double[] Mse { get; init; } = [];
    /// <summary>Per model: mean cos(x, x̂).</summary>
    public double[] Cosine { get; init; } = [];
    /// <summary>Mean over tokens of Σ_j |f_j| (unscaled codes).</summary>
    public double L1 { get; init; }
    /// <summary>Per model: mean ‖x̂‖ / ‖x‖ (shrinkage; tokens with x = 0 skipped).</summary>
    public double[] L2Ratio { get; init; } = [];
    /// <summary>Per model: E‖x̂‖² / E⟨x, x̂⟩ (1 = unbiased; Gated-SAE paper eq. 10).</summary>
    public double[] RelativeBias { get; init; } = [];
    /// <summary>Fraction of latents that never fired (<see cref="Firing"/>) on the <see cref="Tokens"/> evaluated.</summary>
    public double DeadFraction { get; init; }
    public double DenseFraction { get; init; }
    /// <summary>Firing tokens per latent over the evaluated tokens.</summary>
    public FiringCounts Firing { get; init; } = new(0, []);
    /// <summary>log10(fires/tokens + 1e-10) per latent.</summary>
    public float[] Log10Density { get; init; } = [];
    /// <summary>Histogram of <see cref="Log10Density"/>: bin edges [−10, −9, …, 0] (the first bin also takes −10 itself).</summary>
    public long[] DensityHistogram { get; init; } = [];
    public static readonly double[] HistogramEdges = [-10, -9, -8, -7, -6, -5, -4, -3, -2, -1, 0];
}

public static class Evaluation
{
    /// <summary>Encodes raw rows (normalising when the dictionary has a normaliser) with the inference rule and
    /// returns the codes and the raw-space reconstruction.</summary>
    // xRawBMD: [B, M, D] → codes, xHatRawBMD
    public static (SparseCodes Codes, float[] XHat) ReconstructRaw(SparseDictionary d, ReadOnlySpan<float> xRawBMD, Pruning? pruning = null)
    {
        var x = xRawBMD.ToArray();
        d.Normalizer?.Normalize(x, d.Models, d.DModel);
        var (codes, xh) = Inference.Reconstruct(d, x, pruning);
        d.Normalizer?.Denormalize(xh, d.Models, d.DModel);
        return (codes, xh);
    }

    /// <summary>Runs over <paramref name="tokens"/> rows of <paramref name="source"/> in batches, with the codes pruned by
    /// <paramref name="pruning"/> when given.</summary>
    public static EvalReport Run(SparseDictionary d, IActivationBatches source, long tokens, int batch = 4096, Action<long>? progress = null, Pruning? pruning = null)
    {
        pruning?.Check(d);
        int M = d.Models, D = d.DModel, F = d.DictSize, rowLen = M * D;
        if (source.Models != M || source.DModel != D) throw new ArgumentException($"the activations have {source.Models} model(s) × {source.DModel} but the dictionary expects {M} × {D}");
        var buf = new float[(long)batch * rowLen];
        var err = new double[M]; var sq = new double[M]; var sum = new double[M * D]; var cos = new double[M];
        var fires = new long[F];
        var weights = Dictionaries.Firing.Weights(d);
        var ratio = new double[M]; var ratioN = new long[M]; var hh = new double[M]; var xh2 = new double[M];
        double l1 = 0;
        long n = 0, nnz = 0;
        while (n < tokens)
        {
            int want = (int)Math.Min(batch, tokens - n);
            int got = source.Next(buf, want);
            if (got == 0) break;
            var x = buf.AsSpan(0, got * rowLen);
            var (codes, xh) = ReconstructRaw(d, x, pruning);
            for (int e = 0; e < codes.Count; e++) if (codes.Value[e] != 0) { nnz++; l1 += Math.Abs(codes.Value[e]); }
            Dictionaries.Firing.Count(codes, weights, fires);
            for (int t = 0; t < got; t++)
                for (int m = 0; m < M; m++)
                {
                    int o = (t * M + m) * D;
                    double es = 0, xs = 0, hs = 0, dot = 0;
                    for (int i = 0; i < D; i++)
                    {
                        double xv = x[o + i], hv = xh[o + i], ev = xv - hv;
                        es += ev * ev; xs += xv * xv; hs += hv * hv; dot += xv * hv; sum[m * D + i] += xv;
                    }
                    err[m] += es; sq[m] += xs; hh[m] += hs; xh2[m] += dot;
                    if (xs > 0) { ratio[m] += Math.Sqrt(hs / xs); ratioN[m]++; }
                    cos[m] += xs > 0 && hs > 0 ? dot / Math.Sqrt(xs * hs) : 0;
                }
            n += got;
            progress?.Invoke(n);
            if (got < want) break;
        }
        if (n == 0) throw new InvalidOperationException("no evaluation tokens were read");
        var fve = new double[M]; var mse = new double[M];
        for (int m = 0; m < M; m++)
        {
            double mean2 = 0;
            for (int i = 0; i < D; i++) { double mu = sum[m * D + i] / n; mean2 += mu * mu; }
            double var = sq[m] / n - mean2;
            fve[m] = 1 - err[m] / n / var;
            mse[m] = err[m] / n;
            cos[m] /= n;
        }
        var logd = new float[F];
        var hist = new long[Evaluation_Bins];
        int dead = 0, dense = 0;
        for (int j = 0; j < F; j++)
        {
            double dens = (double)fires[j] / n;
            logd[j] = (float)Math.Log10(dens + 1e-10);
            if (fires[j] == 0) dead++;
            if (logd[j] > -1) dense++;
            int bin = Math.Clamp((int)Math.Floor(logd[j] + 10), 0, Evaluation_Bins - 1);
            hist[bin]++;
        }
        return new EvalReport
        {
            Tokens = n, L0 = (double)nnz / n, L1 = l1 / n, Fve = fve, Mse = mse, Cosine = cos,
            L2Ratio = Enumerable.Range(0, M).Select(m => ratioN[m] > 0 ? ratio[m] / ratioN[m] : double.NaN).ToArray(),
            RelativeBias = Enumerable.Range(0, M).Select(m => hh[m] / xh2[m]).ToArray(), Firing = new FiringCounts(n, fires),
            DeadFraction = (double)dead / F, DenseFraction = (double)dense / F, Log10Density = logd, DensityHistogram = hist,
        };
    }

    const int Evaluation_Bins = 10;
}

/// <summary>Normaliser statistics for training (methods.md §2.7).</summary>
public static class NormalizerStats
{
    /// <summary>Per-model mean and population std from a sample of <paramref name="tokens"/> rows; the source is
    /// rewound to where it was. Used when the store's own statistics do not apply (difference rows, filtered tokens).</summary>
    public static Normalizer FromSample(IActivationBatches source, float targetRms, long tokens, int batch = 4096)
    {
        int M = source.Models, D = source.DModel, rowLen = M * D;
        long start = source.Position;
        var buf = new float[(long)batch * rowLen];
        var sum = new double[rowLen]; var sq = new double[rowLen];
        long n = 0;
        while (n < tokens)
        {
            int got = source.Next(buf, (int)Math.Min(batch, tokens - n));
            if (got == 0) break;
            for (int t = 0; t < got; t++)
                for (int i = 0; i < rowLen; i++) { double v = buf[t * rowLen + i]; sum[i] += v; sq[i] += v * v; }
            n += got;
        }
        source.Seek(start);
        if (n == 0) throw new InvalidOperationException("no tokens to compute normaliser statistics from");
        var mean = new float[rowLen]; var std = new float[rowLen];
        for (int i = 0; i < rowLen; i++) { double mu = sum[i] / n; mean[i] = (float)mu; std[i] = (float)Math.Sqrt(Math.Max(0, sq[i] / n - mu * mu)); }
        return Normalizer.FromStats(targetRms, mean, std, M, D);
    }

    /// <summary>From the store's Welford statistics (exact, population variance) for paired or single-model rows, over
    /// the rows before <paramref name="endRow"/> when given (a training run's rows: held-out rows must not shape the
    /// normaliser its validation is measured with), else over the whole store.</summary>
    public static Normalizer FromStore(ActivationStore store, int layer, IReadOnlyList<int> models, float targetRms, long? endRow = null)
    {
        int D = store.DModel;
        var mean = new float[models.Count * D]; var std = new float[models.Count * D];
        for (int k = 0; k < models.Count; k++)
        {
            var s = endRow is long end ? store.Stats(models[k], layer, end) : store.Stats(models[k], layer);
            for (int i = 0; i < D; i++) { mean[k * D + i] = s.Mean[i]; std[k * D + i] = MathF.Sqrt(Math.Max(0, s.Var[i])); }
        }
        return Normalizer.FromStats(targetRms, mean, std, models.Count, D);
    }
}

/// <summary>Rows of one model out of a paired source (an SAE on a single model).</summary>
public sealed class ModelSlice(IActivationBatches paired, int model) : IActivationBatches
{
    float[] _buf = [];
    public int Models => 1;
    public int DModel => paired.DModel;
    public long Position => paired.Position;
    public void Seek(long position) => paired.Seek(position);

    // xBND: [rows, 1, DModel]
    public int Next(Span<float> xBND, int rows)
    {
        int d = paired.DModel, m = paired.Models;
        if (_buf.Length < rows * m * d) _buf = new float[rows * m * d];
        int got = paired.Next(_buf, rows);
        for (int t = 0; t < got; t++) _buf.AsSpan((t * m + model) * d, d).CopyTo(xBND.Slice(t * d, d));
        return got;
    }
}

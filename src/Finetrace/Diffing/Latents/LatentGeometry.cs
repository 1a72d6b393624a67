using Finetrace.Dictionaries;

namespace Finetrace.Diffing.Latents;

/// <summary>Thresholds of the norm-based tags (methods.md §4).</summary>
public sealed record TagThresholds
{
    /// <summary>ft_only when dec_norm_diff &lt; this; base_only when &gt; 1 − this (toolkit 0.1).</summary>
    public double Exclusive { get; init; } = 0.1;
    /// <summary>shared when |dec_norm_diff − ½| &lt; this (toolkit 0.1).</summary>
    public double SharedBand { get; init; } = 0.1;
    /// <summary>M &gt; 2: latent specific to model m when its specificity exceeds this (0.9).</summary>
    public double Specific { get; init; } = 0.9;
}

/// <summary>Per-latent decoder/encoder geometry of a dictionary (methods.md §4), in the space it was trained in.</summary>
public sealed record LatentGeometryResult
{
    public required int Latents { get; init; }
    public required int Models { get; init; }
    /// <summary>[M][F] ‖d_j^m‖ and ‖W_enc[m, j, :]‖.</summary>
    public required double[][] DecNorm { get; init; }
    public required double[][] EncNorm { get; init; }
    /// <summary>Two models: ½((n_b − n_f)/max + 1), 0 = fine-tune only (toolkit orientation); null otherwise.</summary>
    public double[]? DecNormDiff { get; init; }
    public double[]? EncNormDiff { get; init; }
    /// <summary>Two models: 1 − dec_norm_diff, 1 = fine-tune only (paper's Δnorm).</summary>
    public double[]? DeltaNorm { get; init; }
    public double[]? DecCos { get; init; }
    public double[]? EncCos { get; init; }
    /// <summary>ft_only, base_only, shared, other (two models); model{m}_only / shared / other for M &gt; 2; "" for SAEs.</summary>
    public required string[] Tag { get; init; }
    /// <summary>M &gt; 2: [M][F] ½((2n_m − N)/max(n_m, N − n_m) + 1).</summary>
    public double[][]? Specificity { get; init; }

    public bool[] FtOnly => Tag.Select(t => t == "ft_only").ToArray();
}

/// <summary>Decoder and encoder norms, their toolkit and paper orientations, cosines and tags (methods.md §4).</summary>
public static class LatentGeometry
{
    /// <summary>½((a − b)/max(a, b) + 1); ½ when both are 0.</summary>
    public static double NormDiff(double a, double b)
    {
        double mx = Math.Max(a, b);
        return mx > 0 ? 0.5 * ((a - b) / mx + 1) : 0.5;
    }

    public static LatentGeometryResult Compute(SparseDictionary d, InputKind kind, TagThresholds? tags = null)
    {
        tags ??= new TagThresholds();
        int M = d.Models, F = d.DictSize, D = d.DModel;
        var dec = new double[M][]; var enc = new double[M][];
        for (int m = 0; m < M; m++)
        {
            dec[m] = new double[F]; enc[m] = new double[F];
            for (int j = 0; j < F; j++)
            {
                var wd = d.WDec.AsSpan((m * F + j) * D, D); var we = d.WEnc.AsSpan((m * F + j) * D, D);
                dec[m][j] = Math.Sqrt(Scaling.ScalingAccumulator.Dot(wd, wd));
                enc[m][j] = Math.Sqrt(Scaling.ScalingAccumulator.Dot(we, we));
            }
        }
        var tag = new string[F];
        Array.Fill(tag, "");
        if (kind != InputKind.Paired || M == 1)
            return new LatentGeometryResult { Latents = F, Models = M, DecNorm = dec, EncNorm = enc, Tag = tag };
        if (M == 2)
        {
            var dnd = new double[F]; var end = new double[F]; var dn = new double[F]; var dcos = new double[F]; var ecos = new double[F];
            for (int j = 0; j < F; j++)
            {
                dnd[j] = NormDiff(dec[0][j], dec[1][j]);
                end[j] = NormDiff(enc[0][j], enc[1][j]);
                dn[j] = 1 - dnd[j];
                dcos[j] = Cos(d.WDec.AsSpan(j * D, D), d.WDec.AsSpan((F + j) * D, D), dec[0][j], dec[1][j]);
                ecos[j] = Cos(d.WEnc.AsSpan(j * D, D), d.WEnc.AsSpan((F + j) * D, D), enc[0][j], enc[1][j]);
                tag[j] = dnd[j] < tags.Exclusive ? "ft_only" : dnd[j] > 1 - tags.Exclusive ? "base_only"
                    : Math.Abs(dnd[j] - 0.5) < tags.SharedBand ? "shared" : "other";
            }
            return new LatentGeometryResult { Latents = F, Models = M, DecNorm = dec, EncNorm = enc, DecNormDiff = dnd, EncNormDiff = end, DeltaNorm = dn, DecCos = dcos, EncCos = ecos, Tag = tag };
        }
        var spec = new double[M][];
        for (int m = 0; m < M; m++) spec[m] = new double[F];
        for (int j = 0; j < F; j++)
        {
            double total = 0;
            for (int m = 0; m < M; m++) total += dec[m][j];
            int specific = -1, count = 0;
            for (int m = 0; m < M; m++)
            {
                double mx = Math.Max(dec[m][j], total - dec[m][j]);
                spec[m][j] = mx > 0 ? 0.5 * ((2 * dec[m][j] - total) / mx + 1) : 0.5;
                if (spec[m][j] > tags.Specific) { specific = m; count++; }
            }
            tag[j] = count == 1 ? $"model{specific}_only" : IsShared(spec, j, M) ? "shared" : "other";
        }
        return new LatentGeometryResult { Latents = F, Models = M, DecNorm = dec, EncNorm = enc, Tag = tag, Specificity = spec };
    }

    // every model carries a comparable share: no model's specificity far from the equal share 1/M
    static bool IsShared(double[][] spec, int j, int M)
    {
        for (int m = 0; m < M; m++) if (spec[m][j] < 0.1) return false;
        return true;
    }

    static double Cos(ReadOnlySpan<float> a, ReadOnlySpan<float> b, double na, double nb) =>
        na > 0 && nb > 0 ? Scaling.ScalingAccumulator.Dot(a, b) / (na * nb) : double.NaN;

    /// <summary>Writes the geometry columns (formats.md §6 names, plus Finetrace's orientation-explicit ones).</summary>
    public static void WriteColumns(LatentGeometryResult g, FeatureTable t)
    {
        if (g.Models == 1) { t.Set("dec_norm", g.DecNorm[0]); t.Set("enc_norm", g.EncNorm[0]); return; }
        if (g.Models == 2 && g.DecNormDiff is not null)
        {
            t.Set("dec_base_norm", g.DecNorm[0]); t.Set("dec_ft_norm", g.DecNorm[1]);
            t.Set("dec_norm_diff", g.DecNormDiff);
            t.Set("enc_base_norm", g.EncNorm[0]); t.Set("enc_ft_norm", g.EncNorm[1]);
            t.Set("enc_norm_diff", g.EncNormDiff!);
            t.Set("dec_cos_sim", g.DecCos!); t.Set("enc_cos_sim", g.EncCos!);
            t.Set("tag", g.Tag);
            t.Set("delta_norm", g.DeltaNorm!);
            t.Set("relative_norm_ft", Enumerable.Range(0, g.Latents).Select(j =>
            {
                double s = g.DecNorm[0][j] + g.DecNorm[1][j];
                return s > 0 ? g.DecNorm[1][j] / s : double.NaN;
            }).ToArray());
            return;
        }
        for (int m = 0; m < g.Models; m++)
        {
            t.Set($"dec_model{m}_norm", g.DecNorm[m]); t.Set($"enc_model{m}_norm", g.EncNorm[m]);
            if (g.Specificity is not null) t.Set($"specificity_model{m}", g.Specificity[m]);
        }
        t.Set("tag", g.Tag);
    }
}

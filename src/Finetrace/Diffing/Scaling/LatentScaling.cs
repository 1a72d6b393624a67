using System.Runtime.InteropServices;
using System.Text.Json;
using System.Text.Json.Nodes;
using Finetrace.Activations;
using Finetrace.Dictionaries;
using Finetrace.Diffing.Latents;
using Finetrace.Models.Safetensors;
using Finetrace.Tensors;

namespace Finetrace.Diffing.Scaling;

/// <summary>Which decoder row is latent j's probe vector d (methods.md §5.1).</summary>
public enum ProbeSide
{
    /// <summary>The fine-tuned model's row (the paper and toolkit default).</summary>
    FineTuned,
    /// <summary>The base model's row for every latent.</summary>
    Base,
    /// <summary>The base row for base-only latents (by tag), the fine-tuned row for the rest.</summary>
    BaseForBaseOnly,
}

public sealed record LatentScalingOptions
{
    /// <summary>Tokens to use (the default keeps all).</summary>
    public MaskFilter Filter { get; init; } = MaskFilter.All;
    /// <summary>Positions N to stream, in store order; 0 = the whole store (methods.md §5.5: the toolkit's 100k is too few for rare latents).</summary>
    public long MaxPositions { get; init; }
    /// <summary>Contiguous chunks of the stream for the batch-means intervals (at least 2 for an interval).</summary>
    public int Chunks { get; init; } = 20;
    public ProbeSide Probe { get; init; } = ProbeSide.FineTuned;
    /// <summary>Rows per encode batch; 0 picks about 128 MiB of dense codes.</summary>
    public int BatchSize { get; init; }
    public TagThresholds Tags { get; init; } = new();
    /// <summary>Fine-tune-specific: ft_only ∧ ν^ε &lt; this ∧ ν^r &lt; <see cref="ReconstructionThreshold"/> (paper: 0.2, 0.5).</summary>
    public double ErrorThreshold { get; init; } = 0.2;
    public double ReconstructionThreshold { get; init; } = 0.5;
    /// <summary>diff-SAEs and SAEs: fine-tune-specific when |ν_act| ≤ this.</summary>
    public double ActivationThreshold { get; init; } = 0.3;
    /// <summary>rank_sum keeps latents with both ν in [RankMin, RankMax] (methods.md §5.5: −0.1, 2).</summary>
    public double RankMin { get; init; } = -0.1;
    public double RankMax { get; init; } = 2;
    /// <summary>Interval level.</summary>
    public double Confidence { get; init; } = 0.95;
}

/// <summary>A ratio ν = β_base / β_ft per latent with its interval (NaN where undefined).</summary>
public sealed record RatioEstimate(double[] Value, double[] Lo, double[] Hi);

public sealed record LatentScalingResult
{
    public required long Positions { get; init; }
    public required int Chunks { get; init; }
    public required string ProbeSide { get; init; }
    /// <summary>[F] decoder row used as probe.</summary>
    public required int[] ProbeModel { get; init; }
    /// <summary>"normalised" (the dictionary's space) or "raw".</summary>
    public required string Space { get; init; }
    public required IReadOnlyList<string> Targets { get; init; }
    /// <summary>Per target: num_j = d_j · Σ_i f_ij y_ij and β_j = num_j / (C_j Dn_j).</summary>
    public required IReadOnlyDictionary<string, double[]> Num { get; init; }
    public required IReadOnlyDictionary<string, double[]> Beta { get; init; }
    /// <summary>Per target: [chunks, F] numerators (the interval's raw material).</summary>
    public required IReadOnlyDictionary<string, double[]> ChunkNum { get; init; }
    public required double[] SumF2 { get; init; }
    public required double[] NormD2 { get; init; }
    public required long[] CountActive { get; init; }
    /// <summary>ν^ε (crosscoders), ν^r (crosscoders), ν_act (every kind); null when not defined.</summary>
    public RatioEstimate? Error { get; init; }
    public RatioEstimate? Reconstruction { get; init; }
    public RatioEstimate? Activation { get; init; }
    /// <summary>rank(ν^r) + rank(ν^ε) over ft_only latents with both ν in range and at least one activation (NaN elsewhere).</summary>
    public required double[] RankSum { get; init; }
    public required bool[] FtOnly { get; init; }
    public required bool[] FtSpecific { get; init; }
}

/// <summary>
/// Latent Scaling (methods.md §5) for every latent in one streamed pass over the store: β for the error, reconstruction
/// and activation targets of each model, the ratios ν^ε, ν^r, ν_act with batch-means intervals over contiguous chunks
/// (a ratio estimator: se² = K/(K−1) Σ_k (a_k − ν b_k)² / (Σ_k b_k)², Student t with K−1 degrees of freedom), rank_sum
/// and the fine-tune-specific selection.
/// </summary>
public static class LatentScaler
{
    public const string Stage = "scaling";
    public const string Folder = "latent_scaling";
    public const string TensorFile = "latent_scaling/all_latents.safetensors";

    public static int[] ProbeModels(AnalysisDictionary ad, ProbeSide side, TagThresholds tags)
    {
        int F = ad.Latents, M = ad.Dict.Models;
        var p = new int[F];
        if (ad.Kind != InputKind.Paired) return p;
        int ft = M - 1;
        string[]? tag = side == ProbeSide.BaseForBaseOnly ? LatentGeometry.Compute(ad.Dict, ad.Kind, tags).Tag : null;
        for (int j = 0; j < F; j++)
            p[j] = side switch { ProbeSide.Base => 0, ProbeSide.BaseForBaseOnly => tag![j] == "base_only" ? 0 : ft, _ => ft };
        return p;
    }

    public static int AutoBatch(int latents) => Math.Clamp((32 << 20) / Math.Max(1, latents), 64, 4096);

    /// <summary>Streams the store once and returns every latent's Latent Scaling numbers.</summary>
    public static LatentScalingResult Run(AnalysisDictionary ad, ActivationStore store, LatentScalingOptions o, IProgress<(long Done, long Total)>? progress = null, CancellationToken cancel = default)
    {
        var d = ad.Dict;
        var rows = new StoreRows(store, ad.Layer, o.Filter, o.MaxPositions);
        long N = rows.Total;
        if (N == 0) throw new InvalidOperationException($"{store.Directory}: no positions to run Latent Scaling on (filter '{o.Filter}')");
        int K = (int)Math.Max(1, Math.Min(o.Chunks, N));
        var acc = new ScalingAccumulator(ad, ProbeModels(ad, o.Probe, o.Tags), K, store.Models);
        int S = store.Models, D = store.DModel, batch = o.BatchSize > 0 ? o.BatchSize : AutoBatch(d.DictSize);
        var raw = new float[batch * S * D];
        var rowIds = new long[batch];
        long done = 0;
        for (int k = 0; k < K; k++)
        {
            long end = N * (k + 1) / K;
            while (done < end)
            {
                cancel.ThrowIfCancellationRequested();
                int n = rows.Next(raw, rowIds, (int)Math.Min(batch, end - done));
                if (n == 0) throw new InvalidDataException($"{store.Directory}: the store ended after {done:N0} of {N:N0} positions");
                var x = ad.ToInput(raw.AsSpan(0, n * S * D), n, S);
                if (ad.Kind == InputKind.Paired)
                {
                    var (codes, xh) = Inference.Reconstruct(d, x, ad.Input.Pruning);
                    acc.Add(codes, x, xh, default, k);
                }
                else acc.Add(ad.Encode(x), default, default, raw.AsSpan(0, n * S * D), k);
                done += n;
                progress?.Report((done, N));
            }
        }
        var space = ad.Kind == InputKind.Paired ? (d.Normalizer is null ? "raw" : "normalised") : "raw";
        return Finish(acc, ad, o, space);
    }

    /// <summary>β, ratios, intervals and selections from finished sums.</summary>
    public static LatentScalingResult Finish(ScalingAccumulator acc, AnalysisDictionary ad, LatentScalingOptions o, string space)
    {
        int F = ad.Latents, K = acc.Chunks;
        var c2 = acc.SumF2(); var dn2 = acc.NormD2;
        var num = new Dictionary<string, double[]>(); var beta = new Dictionary<string, double[]>(); var chunk = new Dictionary<string, double[]>();
        foreach (var t in acc.Targets)
        {
            var cn = acc.ChunkNumerators(t);
            var s = acc.SumChunks(cn);
            chunk[t.Name] = cn; num[t.Name] = s;
            beta[t.Name] = Enumerable.Range(0, F).Select(j => c2[j] > 0 && dn2[j] > 0 ? s[j] / (c2[j] * dn2[j]) : double.NaN).ToArray();
        }
        int T = acc.TargetModels;
        string b0 = ScalingAccumulator.ModelName(0, T), b1 = ScalingAccumulator.ModelName(T - 1, T);
        var usable = acc.ChunkPositions.Select(p => p > 0).ToArray();
        RatioEstimate Ratio(string kind) => RatioOf(chunk[$"{b0}_{kind}"], chunk[$"{b1}_{kind}"], usable, F, o.Confidence);
        bool cc = ad.Kind == InputKind.Paired;
        var err = cc ? Ratio("error") : null;
        var rec = cc ? Ratio("reconstruction") : null;
        var act = T >= 2 ? Ratio("activation") : null;

        var geo = LatentGeometry.Compute(ad.Dict, ad.Kind, o.Tags);
        var ftOnly = geo.FtOnly;
        var count = acc.CountActive;
        var rankSum = new double[F];
        Array.Fill(rankSum, double.NaN);
        var ftSpecific = new bool[F];
        if (err is not null && rec is not null)
        {
            bool In(double v) => v >= o.RankMin && v <= o.RankMax;
            var keep = Enumerable.Range(0, F).Where(j => ftOnly[j] && count[j] > 0 && In(err.Value[j]) && In(rec.Value[j])).ToArray();
            var re = Ranks(keep.Select(j => err.Value[j]).ToArray());
            var rr = Ranks(keep.Select(j => rec.Value[j]).ToArray());
            for (int i = 0; i < keep.Length; i++) rankSum[keep[i]] = re[i] + rr[i];
            for (int j = 0; j < F; j++) ftSpecific[j] = ftOnly[j] && err.Value[j] < o.ErrorThreshold && rec.Value[j] < o.ReconstructionThreshold;
        }
        else if (act is not null)
            for (int j = 0; j < F; j++) ftSpecific[j] = Math.Abs(act.Value[j]) <= o.ActivationThreshold;

        return new LatentScalingResult
        {
            Positions = acc.Positions, Chunks = K, ProbeSide = o.Probe.ToString(), ProbeModel = ProbeModels(ad, o.Probe, o.Tags), Space = space,
            Targets = acc.Targets.Select(t => t.Name).ToArray(), Num = num, Beta = beta, ChunkNum = chunk, SumF2 = c2, NormD2 = dn2, CountActive = count,
            Error = err, Reconstruction = rec, Activation = act, RankSum = rankSum, FtOnly = ftOnly, FtSpecific = ftSpecific,
        };
    }

    /// <summary>ν = Σa/Σb per latent with a batch-means interval over the usable chunks.</summary>
    // aKF, bKF: [chunks, F]
    public static RatioEstimate RatioOf(double[] aKF, double[] bKF, bool[] usable, int F, double confidence)
    {
        int K = usable.Length, k2 = usable.Count(u => u);
        double t = k2 >= 2 ? StudentT.Quantile(0.5 + confidence / 2, k2 - 1) : double.NaN;
        var v = new double[F]; var lo = new double[F]; var hi = new double[F];
        for (int j = 0; j < F; j++)
        {
            double sa = 0, sb = 0;
            for (int k = 0; k < K; k++) if (usable[k]) { sa += aKF[k * F + j]; sb += bKF[k * F + j]; }
            double r = sa / sb;
            v[j] = sb == 0 ? double.NaN : r;
            if (k2 < 2 || sb == 0) { lo[j] = hi[j] = double.NaN; continue; }
            double ss = 0;
            for (int k = 0; k < K; k++) if (usable[k]) { double e = aKF[k * F + j] - r * bKF[k * F + j]; ss += e * e; }
            double se = Math.Sqrt(ss * k2 / (k2 - 1)) / Math.Abs(sb);
            lo[j] = r - t * se; hi[j] = r + t * se;
        }
        return new RatioEstimate(v, lo, hi);
    }

    /// <summary>1-based ascending ranks, ties sharing their average rank.</summary>
    public static double[] Ranks(double[] values)
    {
        var idx = Enumerable.Range(0, values.Length).OrderBy(i => values[i]).ThenBy(i => i).ToArray();
        var r = new double[values.Length];
        for (int a = 0; a < idx.Length;)
        {
            int b = a;
            while (b + 1 < idx.Length && values[idx[b + 1]] == values[idx[a]]) b++;
            double avg = (a + b) / 2.0 + 1;
            for (int i = a; i <= b; i++) r[idx[i]] = avg;
            a = b + 1;
        }
        return r;
    }

    /// <summary>Adds the Latent Scaling columns to the latent table.</summary>
    public static void WriteColumns(LatentScalingResult r, FeatureTable t)
    {
        void Ratio(string name, RatioEstimate? e)
        {
            if (e is null) return;
            t.Set(name, e.Value); t.Set(name + "_lo", e.Lo); t.Set(name + "_hi", e.Hi);
        }
        Ratio("beta_ratio_error", r.Error);
        Ratio("beta_ratio_reconstruction", r.Reconstruction);
        Ratio("beta_activation_ratio", r.Activation);
        t.Set("rank_sum", r.RankSum);
        t.Set("ft_specific", r.FtSpecific);
        t.Set("ls_count_active", r.CountActive.Select(c => (double)c).ToArray());
    }

    /// <summary>The tensors (formats.md §7.2) and a finetrace.json beside them, written atomically.</summary>
    public static void WriteTensors(LatentScalingResult r, ResultsFolder results)
    {
        int F = r.SumF2.Length;
        var list = new List<TensorData>
        {
            TensorData.I64("indices", Enumerable.Range(0, F).Select(i => (long)i).ToArray(), F),
            F64("sum_f2", r.SumF2, F), F64("norm_d2", r.NormD2, F),
            TensorData.I64("count_active", r.CountActive, F),
            TensorData.I64("probe_model", r.ProbeModel.Select(p => (long)p).ToArray(), F),
        };
        foreach (var name in r.Targets)
        {
            list.Add(F64($"beta_{name}", r.Beta[name], F));
            list.Add(F64($"num_{name}", r.Num[name], F));
            list.Add(F64($"chunk_num_{name}", r.ChunkNum[name], r.Chunks, F));
        }
        foreach (var (name, e) in new[] { ("nu_error", r.Error), ("nu_reconstruction", r.Reconstruction), ("nu_activation", r.Activation) })
            if (e is not null) { list.Add(F64(name, e.Value, F)); list.Add(F64(name + "_lo", e.Lo, F)); list.Add(F64(name + "_hi", e.Hi, F)); }
        var meta = new Dictionary<string, string>
        {
            ["num_samples"] = r.Positions.ToString(System.Globalization.CultureInfo.InvariantCulture),
            ["probe_side"] = r.ProbeSide, ["space"] = r.Space, ["chunks"] = r.Chunks.ToString(System.Globalization.CultureInfo.InvariantCulture),
        };
        string path = results.PathOf(TensorFile);
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        SafetensorsWriter.Write(path, list, meta);
        var side = new JsonObject
        {
            ["kind"] = "latent-scaling",
            ["analysis"] = new JsonObject
            {
                ["num_samples"] = r.Positions, ["probe_side"] = r.ProbeSide, ["space"] = r.Space, ["chunks"] = r.Chunks,
                ["interval"] = "batch means over contiguous chunks, ratio estimator, Student t",
                ["targets"] = new JsonArray(r.Targets.Select(x => (JsonNode)x).ToArray()),
            },
        };
        ResultsFolder.WriteAllTextAtomic(results.PathOf(Path.Combine(Folder, "finetrace.json")), side.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
    }

    static TensorData F64(string name, double[] v, params int[] shape) => new(name, DType.F64, shape, MemoryMarshal.AsBytes(v.AsSpan()).ToArray());
}

/// <summary>Quantiles of Student's t distribution (for the chunk-means intervals).</summary>
public static class StudentT
{
    // two-sided 95% (p = 0.975) critical values for 1..30 degrees of freedom
    static readonly double[] T975 =
    [
        12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
        2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
        2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
    ];

    /// <summary>t quantile at probability <paramref name="p"/> for <paramref name="df"/> degrees of freedom: exact table
    /// for p = 0.975 up to 30 df, otherwise the Cornish–Fisher expansion around the normal quantile.</summary>
    public static double Quantile(double p, int df)
    {
        if (df < 1) return double.NaN;
        if (Math.Abs(p - 0.975) < 1e-12 && df <= 30) return T975[df - 1];
        double z = NormalQuantile(p), z3 = z * z * z, z5 = z3 * z * z;
        return z + (z3 + z) / (4.0 * df) + (5 * z5 + 16 * z3 + 3 * z) / (96.0 * df * df);
    }

    /// <summary>Acklam's rational approximation (relative error &lt; 1.2e-9).</summary>
    public static double NormalQuantile(double p)
    {
        double[] a = [-3.969683028665376e+01, 2.209460984245205e+02, -2.759285104469687e+02, 1.383577518672690e+02, -3.066479806614716e+01, 2.506628277459239e+00];
        double[] b = [-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02, 6.680131188771972e+01, -1.328068155288572e+01];
        double[] c = [-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00, -2.549732539343734e+00, 4.374664141464968e+00, 2.938163982698783e+00];
        double[] d = [7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00, 3.754408661907416e+00];
        if (p <= 0 || p >= 1) return double.NaN;
        if (p < 0.02425)
        {
            double q = Math.Sqrt(-2 * Math.Log(p));
            return (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
        }
        if (p > 1 - 0.02425) return -NormalQuantile(1 - p);
        double r = p - 0.5, s = r * r;
        return (((((a[0] * s + a[1]) * s + a[2]) * s + a[3]) * s + a[4]) * s + a[5]) * r / (((((b[0] * s + b[1]) * s + b[2]) * s + b[3]) * s + b[4]) * s + 1);
    }
}

using Finetrace.Activations;
using Finetrace.Activations.Synthetic;

namespace Finetrace.Dictionaries;

/// <summary>Recovery of one category of true features.</summary>
public sealed record CategoryScore(string Category, int Features, int Recovered, double MeanBestCosine, double MeanAbsDeltaNormError, int FalseExclusive)
{
    public double Fraction => Features == 0 ? double.NaN : (double)Recovered / Features;
}

public sealed record SyntheticScore(double Threshold, int Latents, int AliveLatents, IReadOnlyList<CategoryScore> Categories, int Recovered, int Features, int ExclusiveLatents, int FalseExclusiveLatents)
{
    /// <summary>Tokens of the encode pass that decided which latents are alive (<see cref="Firing"/>).</summary>
    public long FiringTokens { get; init; }
    public double Fraction => (double)Recovered / Features;
    /// <summary>Dedicated crosscoders (<see cref="CrosscoderVariant.Exclusive"/>): per model m, the planted features exclusive
    /// to m, and how many of them are recovered by a latent of m's exclusive block. Empty for other dictionaries.</summary>
    public int[] ExclusivePerModel { get; init; } = [];
    public int[] ExclusiveInOwnerBlock { get; init; } = [];
}

/// <summary>
/// Scores a learned dictionary against a synthetic store's ground truth (<see cref="SyntheticTruth"/>).
/// <list type="bullet">
/// <item>True feature i is the joint vector t_i = [scale_0,i·dir_0,i ; … ; scale_M−1,i·dir_M−1,i]; latent j the joint raw-space
/// decoder u_j = [d_j^0/g_0 ; …] (normaliser folded). Feature i is recovered when max_j cos(t_i, u_j) ≥ threshold — this
/// demands the right direction in every model and the right relative norms.</item>
/// <item>Δnorm (two models) = ½·((‖v¹‖ − ‖v⁰‖)/max(‖v⁰‖, ‖v¹‖) + 1): 0 base-only, 1 fine-tuned-only, ½ equal.
/// Reported per category as the mean |Δnorm(latent) − Δnorm(truth)| over recovered features.</item>
/// <item>Only latents that fire (<see cref="Firing"/>) on the scored tokens take part: a latent that never fires keeps its
/// initial decoder and could otherwise "recover" a feature it never reports.</item>
/// <item>A latent is "exclusive" when Δnorm &lt; 0.1 or &gt; 0.9. It is a false exclusive when its dominant-model decoder
/// matches (cos ≥ threshold) a true feature that is not exclusive — e.g. a shrunk feature whose weak side an L1
/// crosscoder drove to zero (Complete Shrinkage).</item>
/// </list>
/// </summary>
public static class SyntheticScoring
{
    /// <summary>Scores a dictionary trained on the synthetic store <paramref name="store"/>: an encode pass over its first
    /// <paramref name="tokens"/> paired rows decides which latents fire.</summary>
    public static SyntheticScore Score(SparseDictionary dict, SyntheticTruth truth, ActivationStore store, long tokens = 200_000, double threshold = 0.9, CrosscoderVariant? variant = null)
    {
        using var src = DictionaryInput.Paired(store.Layers[0]).Open(store, new StoreBatchOptions { Shuffle = false, Cycle = false, MixSources = false });
        var firing = Firing.Measure(dict, src, Math.Min(tokens, src.RowsPerEpoch));
        return Score(dict, truth, firing, threshold, variant);
    }

    /// <summary>Scores with the latents alive in <paramref name="firing"/> (<see cref="Firing.Measure"/> over the store).</summary>
    public static SyntheticScore Score(SparseDictionary dict, SyntheticTruth truth, FiringCounts firing, double threshold = 0.9, CrosscoderVariant? variant = null)
    {
        if (firing.Fires.Length != dict.DictSize) throw new ArgumentException($"firing counts for {firing.Fires.Length} latents, the dictionary has {dict.DictSize}");
        int M = truth.Models, D = truth.DModel, FT = truth.Features, F = dict.DictSize;
        if (dict.Models != M || dict.DModel != D)
            throw new ArgumentException($"the dictionary is {dict.Models} model(s) × {dict.DModel}, the truth {M} × {D}; score a crosscoder trained on this store");
        // raw-space decoder vectors u [F, M·D]
        var u = new float[F * M * D];
        for (int m = 0; m < M; m++)
        {
            float g = dict.Normalizer?.Scale[m] ?? 1f;
            for (int j = 0; j < F; j++)
                for (int i = 0; i < D; i++) u[(j * M + m) * D + i] = dict.WDec[(m * F + j) * D + i] / g;
        }
        var t = new float[FT * M * D];
        for (int i = 0; i < FT; i++)
            for (int m = 0; m < M; m++)
            {
                var dir = truth.Direction(m, i); float s = truth.Scale(m, i);
                for (int k = 0; k < D; k++) t[(i * M + m) * D + k] = s * dir[k];
            }
        var normU = new double[F]; var normT = new double[FT];
        var normUm = new double[F * M];
        for (int j = 0; j < F; j++)
        {
            for (int m = 0; m < M; m++) { double s = Dot(u, (j * M + m) * D, u, (j * M + m) * D, D); normUm[j * M + m] = Math.Sqrt(s); normU[j] += s; }
            normU[j] = Math.Sqrt(normU[j]);
        }
        for (int i = 0; i < FT; i++) normT[i] = Math.Sqrt(Dot(t, i * M * D, t, i * M * D, M * D));
        var alive = Enumerable.Range(0, F).Where(j => !firing.IsDead(j)).ToArray();

        // best latent per true feature (joint cosine)
        var best = new int[FT]; var bestCos = new double[FT];
        for (int i = 0; i < FT; i++)
        {
            bestCos[i] = double.NegativeInfinity; best[i] = -1;
            foreach (int j in alive)
            {
                double c = Dot(t, i * M * D, u, j * M * D, M * D) / (normT[i] * normU[j] + 1e-30);
                if (c > bestCos[i]) { bestCos[i] = c; best[i] = j; }
            }
        }

        double DeltaNorm(double n0, double n1) => 0.5 * ((n1 - n0) / Math.Max(Math.Max(n0, n1), 1e-30) + 1);
        double LatentDelta(int j) => M == 2 ? DeltaNorm(normUm[j * M], normUm[j * M + 1]) : double.NaN;
        double TrueDelta(int i) => M == 2 ? DeltaNorm(truth.Scale(0, i), truth.Scale(1, i)) : double.NaN;

        // exclusive-looking latents and what they match in their dominant model
        var falseByCat = new int[4];
        int exclusiveLatents = 0, falseExclusive = 0;
        if (M == 2)
            foreach (int j in alive)
            {
                double dn = LatentDelta(j);
                if (dn >= 0.1 && dn <= 0.9) continue;
                exclusiveLatents++;
                int m = dn > 0.5 ? 1 : 0;
                double bc = double.NegativeInfinity; int bi = -1;
                for (int i = 0; i < FT; i++)
                {
                    var dir = truth.Direction(m, i);
                    double nd = Math.Sqrt(Dot(dir, 0, dir, 0, D));
                    if (nd == 0) continue;
                    double c = Dot(dir, 0, u, (j * M + m) * D, D) / (nd * normUm[j * M + m] + 1e-30);
                    if (c > bc) { bc = c; bi = i; }
                }
                if (bi >= 0 && bc >= threshold && truth.Categories[bi] != FeatureCategory.Exclusive)
                {
                    falseExclusive++;
                    falseByCat[(int)truth.Categories[bi]]++;
                }
            }

        var cats = new List<CategoryScore>();
        int recoveredAll = 0;
        foreach (var cat in Enum.GetValues<FeatureCategory>())
        {
            var ids = truth.FeaturesOf(cat);
            int rec = 0; double cosSum = 0, dSum = 0; int dN = 0;
            foreach (int i in ids)
            {
                cosSum += bestCos[i];
                if (bestCos[i] >= threshold)
                {
                    rec++;
                    if (M == 2) { dSum += Math.Abs(LatentDelta(best[i]) - TrueDelta(i)); dN++; }
                }
            }
            recoveredAll += rec;
            cats.Add(new CategoryScore(cat.ToString().ToLowerInvariant(), ids.Length, rec, ids.Length > 0 ? cosSum / ids.Length : double.NaN,
                dN > 0 ? dSum / dN : double.NaN, falseByCat[(int)cat]));
        }
        int[] exPer = [], exInBlock = [];
        if (variant is { HasExclusive: true })
        {
            exPer = new int[M]; exInBlock = new int[M];
            foreach (int i in truth.FeaturesOf(FeatureCategory.Exclusive))
            {
                int owner = truth.Owner[i];
                exPer[owner]++;
                if (bestCos[i] >= threshold && variant.OwnerOf(best[i]) == owner) exInBlock[owner]++;
            }
        }
        return new SyntheticScore(threshold, F, alive.Length, cats, recoveredAll, FT, exclusiveLatents, falseExclusive)
        { FiringTokens = firing.Tokens, ExclusivePerModel = exPer, ExclusiveInOwnerBlock = exInBlock };
    }

    static double Dot(ReadOnlySpan<float> a, int ao, ReadOnlySpan<float> b, int bo, int n)
    {
        double s = 0;
        for (int i = 0; i < n; i++) s += (double)a[ao + i] * b[bo + i];
        return s;
    }
}

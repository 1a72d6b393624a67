using Finetrace.Activations;
using Finetrace.Dictionaries;
using Finetrace.Diffing;
using Finetrace.Diffing.Correlations;
using Finetrace.Tensors;
using Finetrace.Tests.Activations;
using Finetrace.Tests.Infrastructure;

namespace Finetrace.Tests.Diffing;

public sealed class LatentCorrelationsTests
{
    const int D = 8, F = 12, Layer = 3;

    /// <summary>Two-pass Pearson (means first, then centred sums): a different route from the streamed one-pass sums.</summary>
    static double Pearson(IReadOnlyList<double> x, IReadOnlyList<double> y)
    {
        double mx = x.Average(), my = y.Average(), sxy = 0, sxx = 0, syy = 0;
        for (int t = 0; t < x.Count; t++) { sxy += (x[t] - mx) * (y[t] - my); sxx += (x[t] - mx) * (x[t] - mx); syy += (y[t] - my) * (y[t] - my); }
        return sxx > 0 && syy > 0 ? sxy / Math.Sqrt(sxx * syy) : 0;
    }

    static double Cosine(IReadOnlyList<double> x, IReadOnlyList<double> y)
    {
        double sxy = 0, sxx = 0, syy = 0;
        for (int t = 0; t < x.Count; t++) { sxy += x[t] * y[t]; sxx += x[t] * x[t]; syy += y[t] * y[t]; }
        return sxx > 0 && syy > 0 ? sxy / Math.Sqrt(sxx * syy) : 0;
    }

    [Fact]
    public void Correlated_neurons_and_latents_match_a_direct_pearson_and_find_the_planted_pair()
    {
        using var dir = new TempDir();
        var s = StoreTestData.Settings(d: D, dtype: "f32", shardTokens: 64);
        StoreTestData.Write(dir.Path, s, 40, 11);
        using var st = ActivationStore.Open(dir.Path);
        var d = new SparseDictionary(2, D, F, Sparsity.Relu, CodeNormalization.None, false);
        Initialization.Crosscoder(d, new SplitMix64(9), 1f, sameInitForAllModels: false);
        // planted: latent 0 reads only neuron 5 of the fine-tuned (last) model; latent 7 is 2 × latent 0 (same decoder
        // direction, so it is among latent 0's decoder-cosine candidates)
        for (int m = 0; m < 2; m++)
            for (int i = 0; i < D; i++)
            {
                d.WEnc[(m * F + 0) * D + i] = m == 1 && i == 5 ? 1f : 0f;
                d.WEnc[(m * F + 7) * D + i] = m == 1 && i == 5 ? 2f : 0f;
                d.WDec[(m * F + 7) * D + i] = d.WDec[(m * F + 0) * D + i];
            }
        d.BEnc[0] = 0; d.BEnc[7] = 0;
        var ad = new AnalysisDictionary(d, "t", DictionaryInput.Paired(Layer), 2);
        int[] tracked = [0, 3, 7, 11];
        var o = new CorrelationOptions { Candidates = 5, BatchSize = 37 };
        var ours = LatentCorrelations.Run(ad, st, tracked, o);

        // direct: every row's codes and fine-tuned input, then two-pass Pearson over all rows
        var acts = Enumerable.Range(0, F).Select(_ => new List<double>()).ToArray();
        var neurons = Enumerable.Range(0, D).Select(_ => new List<double>()).ToArray();
        var x = new float[2 * D];
        var f = new float[F];
        for (long row = 0; row < st.Tokens; row++)
        {
            st.ReadRows(0, Layer, row, 1, x.AsSpan(0, D)); st.ReadRows(1, Layer, row, 1, x.AsSpan(D, D));
            Array.Clear(f);
            Inference.Encode(d, x).ToDense(f);
            for (int j = 0; j < F; j++) acts[j].Add(f[j]);
            for (int i = 0; i < D; i++) neurons[i].Add(x[D + i]);
        }
        double Cos(int j, int k)
        {
            double dot = 0, nj = 0, nk = 0;
            for (int i = 0; i < D; i++) { double a = d.WDec[(F + j) * D + i], b = d.WDec[(F + k) * D + i]; dot += a * b; nj += a * a; nk += b * b; }
            return dot / Math.Sqrt(nj * nk);
        }
        Assert.Equal(tracked.Length, ours.Count);
        double maxDiff = 0;
        for (int a = 0; a < tracked.Length; a++)
        {
            int j = tracked[a];
            var r = ours[a];
            Assert.Equal(j, r.Latent);
            var pN = Enumerable.Range(0, D).Select(i => Pearson(acts[j], neurons[i])).ToArray();
            var expectN = Enumerable.Range(0, D).OrderByDescending(i => Math.Abs(pN[i])).ThenBy(i => i).Take(3).ToArray();
            Assert.Equal(expectN, r.NeuronIndices);
            for (int q = 0; q < 3; q++)
            {
                maxDiff = Math.Max(maxDiff, Math.Abs(pN[expectN[q]] - r.NeuronPearson[q]));
                maxDiff = Math.Max(maxDiff, Math.Abs(Cosine(acts[j], neurons[expectN[q]]) - r.NeuronCosine[q]));
            }
            var cand = Enumerable.Range(0, F).Where(k => k != j).OrderByDescending(k => Cos(j, k)).ThenBy(k => k).Take(5).ToArray();
            var pF = cand.ToDictionary(k => k, k => Pearson(acts[j], acts[k]));
            var expectF = cand.OrderByDescending(k => Math.Abs(pF[k])).ThenBy(k => k).Take(3).ToArray();
            Assert.Equal(expectF, r.FeatureIndices);
            for (int q = 0; q < 3; q++)
            {
                maxDiff = Math.Max(maxDiff, Math.Abs(pF[expectF[q]] - r.FeaturePearson[q]));
                maxDiff = Math.Max(maxDiff, Math.Abs(Cosine(acts[j], acts[expectF[q]]) - r.FeatureCosine[q]));
            }
        }
        // codes are float32 and the batched encode may round differently from one row at a time
        Assert.True(maxDiff < 1e-5, $"max-abs-diff against direct Pearson/cosine {maxDiff}");
        // planted ground truth
        Assert.Equal(5, ours[0].NeuronIndices[0]);
        Assert.True(ours[0].NeuronPearson[0] > 0.5, $"planted neuron Pearson {ours[0].NeuronPearson[0]}");
        Assert.Equal(7, ours[0].FeatureIndices[0]);
        Assert.Equal(1.0, ours[0].FeaturePearson[0], 5);
        Assert.Equal(0, ours[2].FeatureIndices[0]);
        Assert.True(acts[0].Count(v => v > 0) > 10, "latent 0 should fire on many rows");
    }
}

using Finetrace.Activations;
using Finetrace.Activations.Synthetic;
using Finetrace.Tests.Infrastructure;

namespace Finetrace.Tests.Activations;

public class SyntheticTests
{
    static SyntheticSpec Small(ulong seed = 1) => new() { DModel = 16, Features = 80, Tokens = 3000, Seed = seed, SequenceLength = 50, L0 = 4, Exclusive = 0.2, Shrunk = 0.1, Decoupled = 0.1, Shared = 0.6 };

    [Fact]
    public void Make_IsAPureFunctionOfTheSeed()
    {
        using var a = new TempDir();
        using var b = new TempDir();
        using var c = new TempDir();
        SyntheticGenerator.Make(Small(), a.Path, shardTokens: 700);
        SyntheticGenerator.Make(Small(), b.Path, shardTokens: 700);
        SyntheticGenerator.Make(Small(seed: 2), c.Path, shardTokens: 700);
        ActivationStoreTests.AssertSameFiles(a.Path, b.Path);
        Assert.False(File.ReadAllBytes(Path.Combine(a.Path, "shard_00000", "m1.l0.bf16")).AsSpan()
            .SequenceEqual(File.ReadAllBytes(Path.Combine(c.Path, "shard_00000", "m1.l0.bf16"))));
        using var store = ActivationStore.Open(a.Path);
        Assert.Equal(3000, store.Tokens);
        Assert.Equal(60, store.Manifest.Sequences);
        Assert.True(store.Shards.Count > 3);
    }

    [Fact]
    public void InterruptedMake_Resumed_IsByteIdentical()
    {
        using var full = new TempDir();
        using var cut = new TempDir();
        var spec = Small() with { Tokens = 20_000 };
        SyntheticGenerator.Make(spec, full.Path, shardTokens: 1000);
        using (var cts = new CancellationTokenSource())
        {
            Assert.Throws<OperationCanceledException>(() => SyntheticGenerator.Make(spec, cut.Path, 1000, t => { if (t > 9000) cts.Cancel(); }, cts.Token));
        }
        using (var partial = ActivationStore.Open(cut.Path)) Assert.InRange(partial.Tokens, 1, 19_999);
        SyntheticGenerator.Make(spec, cut.Path, shardTokens: 1000);
        ActivationStoreTests.AssertSameFiles(full.Path, cut.Path);
    }

    [Theory]
    [InlineData(DecouplingMode.Superset)]
    [InlineData(DecouplingMode.Combination)]
    public void Truth_RoundTrips_AndHasThePlantedCategories(DecouplingMode mode)
    {
        using var tmp = new TempDir();
        var spec = Small() with { Decoupling = mode };
        var made = SyntheticGenerator.Make(spec, tmp.Path);
        var t = SyntheticTruth.Load(tmp.Path);
        Assert.Equal(spec, t.Spec);
        Assert.Equal(made.Directions, t.Directions);
        Assert.Equal(made.Scales, t.Scales);
        Assert.Equal(made.Categories, t.Categories);
        Assert.Equal(made.Owner, t.Owner);
        var (ex, sh, de, shared) = spec.Counts();
        Assert.Equal(ex, t.FeaturesOf(FeatureCategory.Exclusive).Length);
        Assert.Equal(sh, t.FeaturesOf(FeatureCategory.Shrunk).Length);
        Assert.Equal(de, t.FeaturesOf(FeatureCategory.Decoupled).Length);
        Assert.Equal(shared, t.FeaturesOf(FeatureCategory.Shared).Length);
        // Exclusive features split over both models.
        Assert.Equal(ex / 2, t.FeaturesOf(FeatureCategory.Exclusive).Count(i => t.Owner[i] == 1));
        for (int i = 0; i < t.Features; i++)
            for (int m = 0; m < 2; m++)
            {
                float norm = System.Numerics.Tensors.TensorPrimitives.Norm(t.Direction(m, i));
                float scale = t.Scale(m, i);
                switch (t.Categories[i])
                {
                    case FeatureCategory.Exclusive:
                        Assert.Equal(m == t.Owner[i] ? 1f : 0f, scale);
                        Assert.Equal(m == t.Owner[i] ? 1f : 0f, norm, 5);
                        break;
                    case FeatureCategory.Shrunk:
                        Assert.Equal(m == 0 ? spec.ShrinkFactor : 1f, scale);
                        Assert.Equal(1f, norm, 5);
                        break;
                    default:
                        Assert.Equal(1f, scale);
                        Assert.Equal(1f, norm, 5);
                        break;
                }
            }
        // Shared directions drift only slightly between the models.
        foreach (int i in t.FeaturesOf(FeatureCategory.Shared))
            Assert.InRange(System.Numerics.Tensors.TensorPrimitives.CosineSimilarity(t.Direction(0, i), t.Direction(1, i)), 0.99f, 1.0001f);
        // Decoupled, superset: the feature's own direction in every model, drifting like a shared one; no parents.
        if (mode == DecouplingMode.Superset)
            foreach (int i in t.FeaturesOf(FeatureCategory.Decoupled))
            {
                Assert.Empty(t.Parents[i]);
                Assert.InRange(System.Numerics.Tensors.TensorPrimitives.CosineSimilarity(t.Direction(0, i), t.Direction(1, i)), 0.99f, 1.0001f);
            }
        // Decoupled, combination: the base direction is Σ w_p · base direction of shared parents.
        else foreach (int i in t.FeaturesOf(FeatureCategory.Decoupled))
        {
            Assert.Equal(spec.Parents, t.Parents[i].Length);
            Assert.All(t.Parents[i], p => Assert.Equal(FeatureCategory.Shared, t.Categories[p]));
            var combo = new float[t.DModel];
            for (int k = 0; k < t.Parents[i].Length; k++)
                System.Numerics.Tensors.TensorPrimitives.MultiplyAdd(t.Direction(0, t.Parents[i][k]), t.ParentWeights[i][k], combo, combo);
            Golden.AssertClose($"decoupled {i}", combo, t.Direction(0, i), 1e-5);
        }
    }

    [Theory]
    [InlineData(DecouplingMode.Combination)]
    [InlineData(DecouplingMode.Superset)]
    public void StoreRows_AreTheGenerativeModel(DecouplingMode mode)
    {
        using var tmp = new TempDir();
        var spec = Small() with { Noise = 0, Bias = 0.7f, Dtype = "f32", Decoupling = mode };
        var truth = SyntheticGenerator.Make(spec, tmp.Path);
        using var store = ActivationStore.Open(tmp.Path);
        var sampler = new SyntheticGenerator.Sampler(truth);
        int L = spec.SequenceLength, d = spec.DModel;
        var batch = new StoreBatch(L, 1, 2, 1, d);
        var row = new float[d];
        int extras = 0;
        foreach (long seq in new long[] { 0, 7, 59 })
        {
            var rec = Enumerable.Range(0, L).Select(_ => new List<(int Feature, float A)>()).ToArray();
            var extra = Enumerable.Range(0, L).Select(_ => new List<(int Feature, float A)>()).ToArray();
            sampler.Sequence(seq, L, batch, 0, rec, extra);
            extras += extra.Sum(e => e.Count);
            for (int p = 0; p < L; p++)
            {
                long r = seq * L + p;
                int strongest = rec[p].Count == 0 ? -1 : rec[p].MaxBy(x => x.A).Feature;
                Assert.Equal(strongest + 1, store.TokenId(r));
                for (int m = 0; m < 2; m++)
                {
                    var expect = truth.Bias.AsSpan(m * d, d).ToArray();
                    foreach (var (i, a) in rec[p])
                        System.Numerics.Tensors.TensorPrimitives.MultiplyAdd(truth.Direction(m, i), a * truth.Scale(m, i), expect, expect);
                    if (m == 0)
                        foreach (var (i, a) in extra[p])
                        {
                            Assert.Equal(FeatureCategory.Decoupled, truth.Categories[i]);
                            System.Numerics.Tensors.TensorPrimitives.MultiplyAdd(truth.Direction(0, i), a, expect, expect);
                        }
                    store.ReadRows(m, 0, r, 1, row);
                    Golden.AssertClose($"seq {seq} pos {p} model {m}", expect, row, 1e-5);
                }
            }
        }
        Assert.Equal(mode == DecouplingMode.Superset, extras > 0);
    }

    [Fact]
    public void FiringRates_AndNoise_MatchTheTruth()
    {
        var spec = Small() with { Tokens = 40_000, Noise = 0.1f };
        var truth = SyntheticGenerator.MakeTruth(spec);
        var sampler = new SyntheticGenerator.Sampler(truth);
        int L = spec.SequenceLength, d = spec.DModel, f = spec.Features;
        var batch = new StoreBatch(L, 1, 2, 1, d);
        var fired = new long[f];
        double sq = 0; long n = 0, activeSum = 0;
        int seqs = (int)(spec.Tokens / L);
        for (int s = 0; s < seqs; s++)
        {
            var rec = Enumerable.Range(0, L).Select(_ => new List<(int Feature, float A)>()).ToArray();
            sampler.Sequence(s, L, batch, 0, rec);
            for (int p = 0; p < L; p++)
            {
                foreach (var (i, _) in rec[p]) fired[i]++;
                activeSum += rec[p].Count;
                var expect = new float[d];
                foreach (var (i, a) in rec[p]) System.Numerics.Tensors.TensorPrimitives.MultiplyAdd(truth.Direction(1, i), a * truth.Scale(1, i), expect, expect);
                for (int j = 0; j < d; j++) { double e = batch.Activations[1][p * d + j] - expect[j]; sq += e * e; n++; }
            }
        }
        long tokens = (long)seqs * L;
        for (int i = 0; i < f; i++)
        {
            double p = truth.FiringProbability[i], emp = fired[i] / (double)tokens;
            Assert.InRange(emp, p - 5 * Math.Sqrt(p * (1 - p) / tokens) - 1e-4, p + 5 * Math.Sqrt(p * (1 - p) / tokens) + 1e-4);
        }
        Assert.InRange(activeSum / (double)tokens, truth.FiringProbability.Sum() * 0.97, truth.FiringProbability.Sum() * 1.03);
        Assert.InRange(Math.Sqrt(sq / n), 0.097, 0.103);
    }

    /// <summary>Superset decoupling: the base writes a decoupled direction on its own firings plus extra ones drawn
    /// independently at rate × the feature's rate, so it fires with probability p + (1 − (1 − p)^rate)·(1 − p).</summary>
    [Fact]
    public void SupersetDecoupling_BaseFiresTheDirectionAtTheExtraRate()
    {
        var spec = Small() with { Tokens = 40_000, Decoupled = 0.2, Exclusive = 0.1, Shared = 0.6, Decoupling = DecouplingMode.Superset, DecoupledExtraRate = 1.5 };
        var truth = SyntheticGenerator.MakeTruth(spec);
        var sampler = new SyntheticGenerator.Sampler(truth);
        int L = spec.SequenceLength, f = spec.Features;
        var batch = new StoreBatch(L, 1, 2, 1, spec.DModel);
        var own = new long[f];
        var extra = new long[f];
        int seqs = (int)(spec.Tokens / L);
        for (int s = 0; s < seqs; s++)
        {
            var rec = Enumerable.Range(0, L).Select(_ => new List<(int Feature, float A)>()).ToArray();
            var ext = Enumerable.Range(0, L).Select(_ => new List<(int Feature, float A)>()).ToArray();
            sampler.Sequence(s, L, batch, 0, rec, ext);
            for (int p = 0; p < L; p++)
            {
                foreach (var (i, _) in rec[p]) own[i]++;
                foreach (var (i, _) in ext[p]) { extra[i]++; Assert.DoesNotContain(rec[p], x => x.Feature == i); }
                Assert.Equal(ext[p].Count, ext[p].Select(x => x.Feature).Distinct().Count());
            }
        }
        long tokens = (long)seqs * L;
        var dec = truth.FeaturesOf(FeatureCategory.Decoupled);
        Assert.Equal(16, dec.Length);
        for (int i = 0; i < f; i++)
        {
            if (truth.Categories[i] != FeatureCategory.Decoupled) { Assert.Equal(0, extra[i]); continue; }
            double p = truth.FiringProbability[i];
            double pe = (1 - Math.Pow(1 - p, spec.DecoupledExtraRate)) * (1 - p), emp = extra[i] / (double)tokens;
            Assert.InRange(emp, pe - 5 * Math.Sqrt(pe * (1 - pe) / tokens) - 1e-4, pe + 5 * Math.Sqrt(pe * (1 - pe) / tokens) + 1e-4);
        }
    }

    [Fact]
    public void OldTruthFiles_ReadAsCombinationDecoupling()
    {
        using var tmp = new TempDir();
        var spec = Small() with { Decoupling = DecouplingMode.Combination };
        SyntheticGenerator.Make(spec, tmp.Path);
        string json = Path.Combine(tmp.Path, SyntheticTruth.JsonFile);
        var node = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(json))!;
        Assert.Equal("Combination", (string?)node["spec"]!["decoupling"]);
        node["spec"]!.AsObject().Remove("decoupling");
        node["spec"]!.AsObject().Remove("decoupled_extra_rate");
        File.WriteAllText(json, node.ToJsonString());
        Assert.Equal(spec, SyntheticTruth.Load(tmp.Path).Spec);
    }

    [Fact]
    public void Spec_RejectsFractionsThatDoNotSumToOne()
    {
        var e = Assert.Throws<ArgumentException>(() => SyntheticGenerator.MakeTruth(Small() with { Shared = 0.9 }));
        Assert.Contains("sum to 1", e.Message);
    }
}

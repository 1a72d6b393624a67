using System.Text.Json.Nodes;
using Finetrace.Activations;
using Finetrace.Activations.Synthetic;
using Finetrace.Dictionaries;
using Finetrace.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Finetrace.Tests.Dictionaries;

/// <summary>Inference-time pruning (methods.md §15.2) against hand-made codes and a dense reference, its record, its
/// folding into SAELens thresholds, and the sweep's L0 falling as pruning strengthens.</summary>
public sealed class PruningTests(ITestOutputHelper log)
{
    /// <summary>CSR codes from dense rows (zeros left out).</summary>
    static SparseCodes Codes(float[][] rows)
    {
        int f = rows[0].Length;
        var c = new SparseCodes(rows.Length, f, rows.Length * f);
        int e = 0;
        for (int b = 0; b < rows.Length; b++)
        {
            c.RowStart[b] = e;
            for (int j = 0; j < f; j++) if (rows[b][j] != 0) { c.Index[e] = j; c.Value[e] = rows[b][j]; e++; }
        }
        c.RowStart[rows.Length] = e;
        return c;
    }

    static float[][] Dense(SparseCodes c)
    {
        var d = new float[c.Rows * c.Cols];
        c.ToDense(d);
        return Enumerable.Range(0, c.Rows).Select(b => d.AsSpan(b * c.Cols, c.Cols).ToArray()).ToArray();
    }

    static readonly float[][] HandMade =
    [
        [0.0f, 3.0f, 0.5f, 1.0f, 0.2f],
        [2.0f, 0.0f, 0.0f, 0.4f, 0.0f],
        [0.0f, 0.0f, 0.0f, 0.0f, 0.0f],
        [1.0f, 1.0f, 4.0f, 0.0f, 0.9f],
    ];
    static readonly float[] MaxF = [2.0f, 3.0f, 4.0f, 1.0f, 1.0f];

    [Fact]
    public void Drop_lowest_removes_the_k_smallest_active_latents_of_each_token()
    {
        var c = Codes(HandMade);
        new Pruning { DropLowest = 2 }.Apply(c);
        Assert.Equal(new float[][]
        {
            [0.0f, 3.0f, 0.0f, 1.0f, 0.0f],   // 0.2 and 0.5 dropped
            [0.0f, 0.0f, 0.0f, 0.0f, 0.0f],   // two active: both dropped
            [0.0f, 0.0f, 0.0f, 0.0f, 0.0f],
            [0.0f, 1.0f, 4.0f, 0.0f, 0.0f],   // 0.9, then the tie 1.0/1.0 drops the lower index (latent 0)
        }, Dense(c));
        Assert.Equal(4, c.Count);
        // rows stay ascending and compact: the column view builds from them
        c.BuildColumns();
        Assert.Equal([0, 0, 2, 3, 4, 4], c.ColStart);
    }

    [Fact]
    public void Below_max_zeroes_each_latents_activations_at_or_below_its_fraction_of_the_max()
    {
        var c = Codes(HandMade);
        new Pruning { BelowMaxFraction = 0.5f, LatentMax = MaxF }.Apply(c);
        // thresholds 1.0, 1.5, 2.0, 0.5, 0.5
        Assert.Equal(new float[][]
        {
            [0.0f, 3.0f, 0.0f, 1.0f, 0.0f],
            [2.0f, 0.0f, 0.0f, 0.0f, 0.0f],
            [0.0f, 0.0f, 0.0f, 0.0f, 0.0f],
            [0.0f, 0.0f, 4.0f, 0.0f, 0.9f],   // 1.0 ≤ 1.0 (latent 0) is zeroed: "at or below"
        }, Dense(c));

        // both: per latent first, then the lowest of what is left
        var both = Codes(HandMade);
        new Pruning { BelowMaxFraction = 0.5f, LatentMax = MaxF, DropLowest = 1 }.Apply(both);
        Assert.Equal(new float[][]
        {
            [0.0f, 3.0f, 0.0f, 0.0f, 0.0f],
            [0.0f, 0.0f, 0.0f, 0.0f, 0.0f],
            [0.0f, 0.0f, 0.0f, 0.0f, 0.0f],
            [0.0f, 0.0f, 4.0f, 0.0f, 0.0f],
        }, Dense(both));
    }

    [Fact]
    public void Random_codes_match_a_dense_reference_and_rank_by_the_code_weights()
    {
        var r = new Random(5);
        int B = 40, F = 30;
        var rows = Enumerable.Range(0, B).Select(_ => Enumerable.Range(0, F).Select(_ => r.NextDouble() < 0.3 ? (float)r.NextDouble() * 3 : 0f).ToArray()).ToArray();
        var max = Enumerable.Range(0, F).Select(j => rows.Max(x => x[j])).ToArray();
        var w = Enumerable.Range(0, F).Select(_ => 0.5f + (float)r.NextDouble()).ToArray();
        foreach (var (k, frac) in new[] { (0, 0.3f), (3, 0f), (2, 0.2f) })
        {
            var c = Codes(rows);
            new Pruning { DropLowest = k, BelowMaxFraction = frac, LatentMax = max }.Apply(c, w);
            var want = rows.Select(x =>
            {
                var y = x.Select((v, j) => v > frac * max[j] ? v : 0f).ToArray();
                var active = Enumerable.Range(0, F).Where(j => y[j] > 0).OrderBy(j => y[j] * w[j]).ThenBy(j => j).ToList();
                foreach (int j in active.Take(k)) y[j] = 0;
                return y;
            }).ToArray();
            Assert.Equal(want, Dense(c));
        }
    }

    [Fact]
    public void Specs_parse_print_and_refuse()
    {
        Assert.Equal("drop-lowest:3", Pruning.Parse("drop-lowest:3").Spec);
        Assert.Equal("below-max:0.1+drop-lowest:2", Pruning.Parse("drop-lowest:2+below-max:0.1").Spec);
        Assert.True(Pruning.Parse("none").IsNone);
        Assert.Equal(["drop-lowest:1", "drop-lowest:2", "drop-lowest:4"], PruningSweep.ParseSweep("drop-lowest:1,2,4").Select(p => p.Spec));
        Assert.Single(PruningSweep.ParseSweep("below-max:0.1+drop-lowest:2"));
        Assert.Throws<PruningException>(() => Pruning.Parse("below-max:1.5"));
        Assert.Throws<PruningException>(() => Pruning.Parse("keep-top:3"));
        var d = new SparseDictionary(1, 4, 6, Sparsity.Relu, CodeNormalization.None, true);
        var e = Assert.Throws<PruningException>(() => new Pruning { BelowMaxFraction = 0.1f }.Check(d));
        Assert.Contains("maximum", e.Problem);
    }

    [Fact]
    public void The_record_carries_the_pruning_and_its_maxima()
    {
        var p = new Pruning { BelowMaxFraction = 0.25f, DropLowest = 1, LatentMax = [1f, 2.5f, 0f], MaxFrom = "rows 0..10" };
        var input = DictionaryInput.SingleModel(2, 1) with { Pruning = p, Site = Finetrace.Models.HookSite.MlpOut };
        var back = DictionaryInput.FromJson(JsonNode.Parse(input.ToJson().ToJsonString())!, "test");
        Assert.Equal(p.Spec, back.Pruning!.Spec);
        Assert.Equal(p.LatentMax, back.Pruning.LatentMax);
        Assert.Equal("rows 0..10", back.Pruning.MaxFrom);
        Assert.Equal(Finetrace.Models.HookSite.MlpOut, back.Site);
        Assert.Null(DictionaryInput.FromJson(JsonNode.Parse(DictionaryInput.SingleModel(2, 1).ToJson().ToJsonString())!, "test").Pruning);
    }

    static SparseDictionary RandomSae(Sparsity s, int D, int F, int seed)
    {
        var d = new SparseDictionary(1, D, F, s, CodeNormalization.None, true, s == Sparsity.BatchTopK ? 4 : 0);
        var r = new Random(seed);
        for (int i = 0; i < d.WEnc.Length; i++) { d.WEnc[i] = (float)(r.NextDouble() - 0.5); d.WDec[i] = (float)(r.NextDouble() - 0.5); }
        for (int j = 0; j < F; j++) d.BEnc[j] = (float)(r.NextDouble() - 0.6) * 0.5f;
        if (s == Sparsity.JumpRelu) for (int j = 0; j < F; j++) d.JumpThreshold![j] = (float)r.NextDouble() * 0.4f;
        if (s == Sparsity.BatchTopK) d.Threshold = 0.3f;
        return d;
    }

    [Theory]
    [InlineData(Sparsity.Relu)]
    [InlineData(Sparsity.JumpRelu)]
    [InlineData(Sparsity.BatchTopK)]
    public void Folding_below_max_into_jumprelu_thresholds_reproduces_the_pruned_codes(Sparsity s)
    {
        int D = 8, F = 24, B = 200;
        var d = RandomSae(s, D, F, 11);
        var r = new Random(3);
        var x = Enumerable.Range(0, B * D).Select(_ => (float)(r.NextDouble() * 2 - 1)).ToArray();
        var unpruned = Inference.Encode(d, x);
        var max = new float[F];
        for (int e = 0; e < unpruned.Count; e++) max[unpruned.Index[e]] = Math.Max(max[unpruned.Index[e]], unpruned.Value[e]);
        var p = new Pruning { BelowMaxFraction = 0.3f, LatentMax = max };
        var pruned = Inference.Encode(d, x, p);
        Assert.True(pruned.Count < unpruned.Count, $"{s}: the pruning should remove something ({pruned.Count} of {unpruned.Count})");
        var folded = p.FoldIntoThresholds(d);
        Assert.Equal(Sparsity.JumpRelu, folded.Sparsity);
        var viaThresholds = Inference.Encode(folded, x);
        Assert.Equal(Dense(pruned), Dense(viaThresholds));
        Assert.Throws<PruningException>(() => new Pruning { DropLowest = 1 }.FoldIntoThresholds(d));
    }

    [Fact]
    public void The_sweep_L0_falls_as_pruning_strengthens()
    {
        using var tmp = new TempDir();
        SyntheticGenerator.Make(new SyntheticSpec { DModel = 16, Features = 32, Tokens = 3000, Seed = 4, Dtype = "f32" }, tmp.Path);
        using var store = ActivationStore.Open(tmp.Path);
        var d = RandomSae(Sparsity.Relu, 16, 64, 2);
        var input = DictionaryInput.SingleModel(store.Layers[0], 1);
        var o = new PruningSweepOptions
        {
            Settings = [.. PruningSweep.ParseSweep("drop-lowest:1,2,4,8"), .. PruningSweep.ParseSweep("below-max:0.1,0.2,0.4,0.8")],
            Tokens = 1000, FirstRow = 2000, CalibrationEndRow = 2000, CalibrationTokens = 2000,
        };
        var points = PruningSweep.Run(d, store, input, o);
        Assert.Equal(9, points.Count);
        Assert.True(points[0].Pruning.IsNone);
        foreach (var p in points) log.WriteLine($"{p.Pruning.Spec,-16} L0 {p.Eval.L0:F3} FVE {p.Eval.Fve[0]:F4}");
        foreach (var curve in new[] { points.Skip(1).Take(4), points.Skip(5).Take(4) })
        {
            double last = points[0].Eval.L0;
            foreach (var p in curve) { Assert.True(p.Eval.L0 < last, $"{p.Pruning.Spec}: L0 {p.Eval.L0} not below {last}"); last = p.Eval.L0; }
        }
        // drop-lowest:k removes exactly min(k, active) latents per token: L0 falls by at most k
        Assert.InRange(points[0].Eval.L0 - points[1].Eval.L0, 0.5, 1.0 + 1e-9);
        // the maxima come from the calibration rows, and the evaluated L0 is what the pruned codes hold
        Assert.NotNull(points[5].Pruning.LatentMax);
        Assert.Contains("rows 0..2000", points[5].Pruning.MaxFrom);
        using var rows = input.Open(store, new StoreBatchOptions { Layer = input.Layer, Shuffle = false, Cycle = false, MixSources = false, FirstRow = 2000 });
        var buf = new float[1000 * 16];
        Assert.Equal(1000, rows.Next(buf, 1000));
        var codes = Inference.Encode(d, buf, points[6].Pruning);
        Assert.Equal(codes.Count / 1000.0, points[6].Eval.L0, 12);
    }

    [Fact]
    public void Analyses_encode_with_the_recorded_pruning_and_refuse_a_non_residual_site_where_they_patch_the_residual()
    {
        int D = 8, F = 24, B = 50;
        var d = RandomSae(Sparsity.Relu, D, F, 9);
        var r = new Random(1);
        var x = Enumerable.Range(0, B * D).Select(_ => (float)(r.NextDouble() * 2 - 1)).ToArray();
        var p = new Pruning { DropLowest = 2 };
        var ad = new Finetrace.Diffing.AnalysisDictionary(d, "/dict", DictionaryInput.SingleModel(0, 1) with { Pruning = p }, 2);
        var viaAnalysis = ad.Encode(x);
        var direct = Inference.Encode(d, x);
        p.Apply(direct);
        Assert.Equal(Dense(direct), Dense(viaAnalysis));
        Assert.True(viaAnalysis.Count < Inference.Encode(d, x).Count);

        ad.RequireResidualSite("test");   // no recorded site: allowed
        new Finetrace.Diffing.AnalysisDictionary(d, "/dict", DictionaryInput.SingleModel(0, 1) with { Site = Finetrace.Models.HookSite.ResidPost }, 2).RequireResidualSite("test");
        var mlp = new Finetrace.Diffing.AnalysisDictionary(d, "/dict", DictionaryInput.SingleModel(0, 1) with { Site = Finetrace.Models.HookSite.MlpOut }, 2);
        var e = Assert.Throws<Finetrace.Diffing.AnalysisSiteException>(() => mlp.RequireResidualSite("the causal evaluation"));
        Assert.Contains("blocks.{L}.hook_mlp_out", e.Message);
    }
}

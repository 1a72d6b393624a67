using Finetrace.Tensors;
using Finetrace.Dictionaries;
using Finetrace.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Finetrace.Tests.Dictionaries;

/// <summary>Every sparse kernel against its dense GEMM reference, and selection against brute force.</summary>
public sealed class DictionaryKernelTests(ITestOutputHelper log)
{
    static float[] Random(SplitMix64 r, int n, double scale = 1) { var a = new float[n]; for (int i = 0; i < n; i++) a[i] = (float)(r.Normal() * scale); return a; }

    static SparseCodes RandomCodes(SplitMix64 r, int b, int f, int perRow)
    {
        var fBF = new float[b * f];
        for (int t = 0; t < b; t++) for (int k = 0; k < perRow; k++) fBF[t * f + (int)(r.NextU64() % (ulong)f)] = (float)r.NextDouble() + 0.1f;
        var codes = new SparseCodes(b, f);
        Selection.Positive(fBF, b, f, codes);
        codes.BuildColumns();
        return codes;
    }

    [Theory]
    [InlineData(2, 16, 64, 4)]
    [InlineData(3, 9, 130, 11)]
    public void Per_model_kernels_match_dense_references_and_union_sums_gradients(int models, int d, int f, int perRow)
    {
        var r = new SplitMix64(43);
        int b = 29;
        var codesM = Enumerable.Range(0, models).Select(_ => RandomCodes(r, b, f, perRow)).ToArray();
        var w = Random(r, models * f * d); var bias = Random(r, models * d); var delta = Random(r, b * models * d);
        var fBF = new float[b * f];

        var xs = new float[b * models * d]; var xd = new float[b * models * d];
        DictionaryKernels.DecodeSparse(codesM, w, bias, models, d, f, xs);
        var gs = new float[models * f * d]; var gd = new float[models * f * d];
        Array.Fill(gs, 9f);
        DictionaryKernels.DecoderGradSparse(codesM, delta, null, default, models, d, f, gs);
        var gM = new float[models][]; var gF = new float[b * f];
        for (int m = 0; m < models; m++)
        {
            codesM[m].ToDense(fBF);
            DictionaryKernels.DecodeDense(fBF, w, bias, b, models, d, f, xd, model: m);
            DictionaryKernels.DecoderGradDense(fBF, delta, b, models, d, f, gd, model: m);
            gM[m] = new float[codesM[m].Count];
            DictionaryKernels.CodeGradSparse(codesM[m], w, delta, models, d, f, gM[m], model: m);
            DictionaryKernels.CodeGradDense(delta, w, b, models, d, f, gF, model: m);
            var gathered = new float[codesM[m].Count];
            for (int t = 0; t < b; t++) for (int e = codesM[m].RowStart[t]; e < codesM[m].RowStart[t + 1]; e++) gathered[e] = gF[t * f + codesM[m].Index[e]];
            Golden.AssertClose($"code grad, model {m}", gathered, gM[m], 1e-5, 1e-5, log);
        }
        Golden.AssertClose("per-model decode", xd, xs, 1e-5, 1e-5, log);
        Golden.AssertClose("per-model decoder grad", gd, gs, 1e-5, 1e-5, log);

        // union: every (b, j) any model holds, once, with the per-model gradients summed
        var union = new SparseCodes(b, f); var gU = new float[codesM.Sum(c => c.Count)];
        Selection.Union(codesM, gM, union, gU);
        var want = new Dictionary<long, float>();
        for (int m = 0; m < models; m++)
            for (int t = 0; t < b; t++)
                for (int e = codesM[m].RowStart[t]; e < codesM[m].RowStart[t + 1]; e++)
                    want[(long)t * f + codesM[m].Index[e]] = want.GetValueOrDefault((long)t * f + codesM[m].Index[e]) + gM[m][e];
        Assert.Equal(want.Count, union.Count);
        for (int t = 0; t < b; t++)
            for (int e = union.RowStart[t]; e < union.RowStart[t + 1]; e++)
            {
                if (e > union.RowStart[t]) Assert.True(union.Index[e] > union.Index[e - 1], "union rows stay sorted");
                Assert.Equal(want[(long)t * f + union.Index[e]], gU[e], 5);
            }
    }

    [Theory]
    [InlineData(1, 7, 33, 3)]
    [InlineData(2, 16, 64, 4)]
    [InlineData(3, 9, 130, 11)]
    public void Sparse_kernels_match_dense_references(int models, int d, int f, int perRow)
    {
        var r = new SplitMix64(42);
        int b = 37;
        var codes = RandomCodes(r, b, f, perRow);
        var fBF = new float[b * f]; codes.ToDense(fBF);
        var w = Random(r, models * f * d); var bias = Random(r, models * d); var x = Random(r, b * models * d); var delta = Random(r, b * models * d);

        var xs = new float[b * models * d]; var xd = new float[b * models * d];
        DictionaryKernels.DecodeSparse(codes, w, bias, models, d, f, xs);
        DictionaryKernels.DecodeDense(fBF, w, bias, b, models, d, f, xd);
        Golden.AssertClose("decode", xd, xs, 1e-5, 1e-5, log);

        var gs = new float[models * f * d]; var gd = new float[models * f * d];
        Array.Fill(gs, 9f);   // untouched rows must be zeroed
        DictionaryKernels.DecoderGradSparse(codes, delta, null, default, models, d, f, gs);
        DictionaryKernels.DecoderGradDense(fBF, delta, b, models, d, f, gd);
        Golden.AssertClose("decoder grad", gd, gs, 1e-5, 1e-5, log);

        var gv = new float[codes.Count]; var gF = new float[b * f];
        DictionaryKernels.CodeGradSparse(codes, w, delta, models, d, f, gv);
        DictionaryKernels.CodeGradDense(delta, w, b, models, d, f, gF);
        var gathered = new float[codes.Count];
        for (int t = 0; t < b; t++) for (int e = codes.RowStart[t]; e < codes.RowStart[t + 1]; e++) gathered[e] = gF[t * f + codes.Index[e]];
        Golden.AssertClose("code grad", gathered, gv, 1e-5, 1e-5, log);

        var gPre = Random(r, codes.Count);
        var gPreBF = new float[b * f];
        for (int t = 0; t < b; t++) for (int e = codes.RowStart[t]; e < codes.RowStart[t + 1]; e++) gPreBF[t * f + codes.Index[e]] = gPre[e];
        var ge = new float[models * f * d]; var gb = new float[f]; var ged = new float[models * f * d]; var gbd = new float[f];
        DictionaryKernels.EncoderGradSparse(codes, gPre, null, default, x, models, d, f, ge, gb);
        DictionaryKernels.EncoderGradDense(gPreBF, x, b, models, d, f, ged, gbd);
        Golden.AssertClose("encoder grad", ged, ge, 1e-5, 1e-5, log);
        Golden.AssertClose("encoder bias grad", gbd, gb, 1e-5, 1e-5, log);
    }

    [Theory]
    [InlineData(8, 50, 3, false)]
    [InlineData(16, 300, 10, true)]
    [InlineData(4, 20, 19, true)]
    [InlineData(300, 200, 7, true)]
    [InlineData(130, 64, 60, false)]
    public void Batch_topk_selects_the_k_times_b_largest_scaled_values(int b, int f, int k, bool scaled)
    {
        var r = new SplitMix64(7);
        var fBF = Random(r, b * f);
        for (int i = 0; i < fBF.Length; i++) fBF[i] = Math.Max(0, fBF[i]);
        var c = scaled ? Random(r, f).Select(v => Math.Abs(v) + 0.1f).ToArray() : null;
        var codes = new SparseCodes(b, f);
        float min = Selection.BatchTopK(fBF, c, b, f, (long)k * b, codes);
        var s = fBF.Select((v, i) => (v: c is null ? v : v * c[i % f], i)).Where(p => p.v > 0).OrderByDescending(p => p.v).ThenBy(p => p.i).Take(k * b).ToList();
        var chosen = new HashSet<int>(s.Select(p => p.i));
        Assert.Equal(chosen.Count, codes.Count);
        for (int t = 0; t < b; t++)
            for (int e = codes.RowStart[t]; e < codes.RowStart[t + 1]; e++)
            {
                Assert.Contains(t * f + codes.Index[e], chosen);
                Assert.Equal(fBF[t * f + codes.Index[e]], codes.Value[e]);   // unscaled values kept
            }
        Assert.Equal(s.Count > 0 ? s[^1].v : 0f, min);
    }

    [Fact]
    public void Per_token_topk_matches_sorting()
    {
        var r = new SplitMix64(3);
        int b = 9, f = 70, k = 5;
        var fBF = Random(r, b * f).Select(v => Math.Max(0, v)).ToArray();
        var codes = new SparseCodes(b, f);
        Selection.TopKPerRow(fBF, default, default, b, f, k, codes);
        for (int t = 0; t < b; t++)
        {
            var expect = Enumerable.Range(0, f).Where(j => fBF[t * f + j] > 0).OrderByDescending(j => fBF[t * f + j]).Take(k).OrderBy(j => j).ToArray();
            Assert.Equal(expect, codes.RowIndices(t).ToArray());
        }
    }

    [Fact]
    public void Per_token_topk_ranks_scaled_allowed_positives_and_breaks_ties_to_the_lower_index()
    {
        var r = new SplitMix64(5);
        int b = 12, f = 40, k = 6;
        // few distinct values (many ties), about half non-positive, and a row with fewer than k positives
        var fBF = Random(r, b * f).Select(v => MathF.Round(v * 2) / 2).ToArray();
        for (int j = 0; j < f; j++) fBF[3 * f + j] = j % 9 == 0 ? 1f : -1f;
        fBF[5 * f + 7] = float.NaN;
        var c = Enumerable.Range(0, f).Select(j => j % 3 == 0 ? 2f : 1f).ToArray();
        var allowed = Enumerable.Range(0, f).Select(j => j % 5 != 1).ToArray();
        var codes = new SparseCodes(b, f);
        Selection.TopKPerRow(fBF, c, allowed, b, f, k, codes);
        for (int t = 0; t < b; t++)
        {
            var expect = Enumerable.Range(0, f).Where(j => allowed[j] && fBF[t * f + j] * c[j] > 0)
                .OrderByDescending(j => fBF[t * f + j] * c[j]).ThenBy(j => j).Take(k).OrderBy(j => j).ToArray();
            Assert.Equal(expect, codes.RowIndices(t).ToArray());
            for (int e = codes.RowStart[t]; e < codes.RowStart[t + 1]; e++)
                Assert.Equal(fBF[t * f + codes.Index[e]], codes.Value[e]);   // unscaled values kept
        }
        Assert.True(codes.RowStart[4] - codes.RowStart[3] < k);
    }
}

public sealed class InitializationTests
{
    [Fact]
    public void Crosscoder_init_rescales_rows_shares_the_draw_and_transposes()
    {
        var d = new SparseDictionary(3, 8, 20, Sparsity.BatchTopK, CodeNormalization.Crosscoder, false, 2);
        Initialization.Crosscoder(d, new SplitMix64(4), normInitScale: 0.25f);
        foreach (var n in d.DecoderNorms()) Assert.Equal(0.25f, n, 5);
        Assert.Equal(d.WEnc, d.WDec);                                                    // decoder = encoderᵀ in the reference layout
        Assert.Equal(d.WEnc.AsSpan(0, 160).ToArray(), d.WEnc.AsSpan(320, 160).ToArray()); // same draw for every model
        Assert.Equal(-1f, d.Threshold);
        Assert.All(d.BEnc, v => Assert.Equal(0f, v));

        var raw = new SparseDictionary(2, 8, 20, Sparsity.Relu, CodeNormalization.Crosscoder, false);
        Initialization.Crosscoder(raw, new SplitMix64(4), normInitScale: null, sameInitForAllModels: false);
        // torch's kaiming_uniform_ defaults (a = 0): gain √2, bound = gain·√(3/fan_in) = √(6/fan_in); [M, D, F]: fan_in = D·F
        float bound = MathF.Sqrt(2f) * MathF.Sqrt(3f / (8 * 20));
        Assert.All(raw.WEnc, v => Assert.InRange(v, -bound, bound));
        Assert.True(raw.WEnc.Max() > 0.8f * bound);
        Assert.NotEqual(raw.WEnc.AsSpan(0, 160).ToArray(), raw.WEnc.AsSpan(160, 160).ToArray());
    }

    [Fact]
    public void Sae_init_has_unit_decoder_rows_and_tied_encoder()
    {
        var d = new SparseDictionary(1, 8, 20, Sparsity.TopK, CodeNormalization.None, true, 2);
        Initialization.Sae(d, new SplitMix64(4), encoderInitNorm: 0.5f);
        foreach (var n in d.DecoderNorms()) Assert.Equal(1f, n, 5);
        for (int i = 0; i < d.WEnc.Length; i++) Assert.Equal(0.5f * d.WDec[i], d.WEnc[i], 6);
    }

    [Fact]
    public void Lr_schedule_warms_up_from_zero_and_decays_linearly()
    {
        Assert.Equal(0.0, LrSchedule.Factor(0, 10, null, 100));
        Assert.Equal(0.5, LrSchedule.Factor(5, 10, null, 100));
        Assert.Equal(1.0, LrSchedule.Factor(10, 10, 80, 100));
        Assert.Equal(0.5, LrSchedule.Factor(90, 10, 80, 100));
        Assert.Equal(1.0, LrSchedule.Factor(0, 0, null, 100));
    }
}

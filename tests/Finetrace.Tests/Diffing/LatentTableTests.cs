using Finetrace.Activations;
using Finetrace.Dictionaries;
using Finetrace.Diffing;
using Finetrace.Diffing.Latents;
using Finetrace.Tensors;
using Finetrace.Tests.Activations;
using Finetrace.Tests.Infrastructure;

namespace Finetrace.Tests.Diffing;

public sealed class LatentTableTests
{
    [Fact]
    public void Feature_table_round_trips_floats_booleans_and_text_exactly_and_keeps_earlier_columns()
    {
        using var dir = new TempDir();
        var t = new FeatureTable(5);
        double[] v = [0.1f, 1e-30, double.NaN, double.PositiveInfinity, -123456.78901234567];
        t.Set("x", v);
        t.Set("b", [true, false, true, true, false]);
        t.Set("s", ["a,b", "say \"hi\"", "line\nbreak", " Z", "[\" o\",\"g\"]"]);
        t.Set("m", ["1.50", "2", "3", "4", "x"]);   // numbers until the last cell: a text column, its cells kept as written
        t.Save(dir.File("f.csv"));
        var u = FeatureTable.Load(dir.File("f.csv"));
        Assert.Equal(["x", "b", "s", "m"], u.Columns);
        Assert.Equal(["1.50", "2", "3", "4", "x"], u.Texts("m"));
        var x = u.Numbers("x");
        for (int i = 0; i < 5; i++) Assert.Equal(BitConverter.DoubleToInt64Bits(v[i]), BitConverter.DoubleToInt64Bits(x[i]));
        Assert.Equal((double)0.1f, x[0]);   // a float32 value survives as the same double
        Assert.Equal([true, false, true, true, false], u.Booleans("b"));
        Assert.Equal(["a,b", "say \"hi\"", "line\nbreak", " Z", "[\" o\",\"g\"]"], u.Texts("s"));

        u.Set("y", new double[] { 1, 2, 3, 4, 5 });
        u.Save(dir.File("f.csv"));
        var w = FeatureTable.LoadOrCreate(dir.File("f.csv"), 5);
        Assert.Equal(["x", "b", "s", "m", "y"], w.Columns);
        Assert.Throws<InvalidDataException>(() => FeatureTable.LoadOrCreate(dir.File("f.csv"), 6));
        Assert.StartsWith("latent,x,b,s,m,y\n0,", File.ReadAllText(dir.File("f.csv")));
    }

    [Fact]
    public void Geometry_follows_both_orientations_and_tags()
    {
        var d = new SparseDictionary(2, 4, 4, Sparsity.Relu, CodeNormalization.Crosscoder, false);
        void Row(int m, int j, params float[] r) => r.CopyTo(d.WDec, (m * 4 + j) * 4);
        Row(1, 0, 3, 4, 0, 0);                          // ft only
        Row(0, 1, 0, 0, 2, 0);                          // base only
        Row(0, 2, 1, 0, 0, 0); Row(1, 2, 0, 1, 0, 0);   // equal norms, orthogonal
        Row(0, 3, 1, 0, 0, 0); Row(1, 3, 4, 0, 0, 0);   // ft 4× base: Δnorm = 1 − 1/8
        var g = LatentGeometry.Compute(d, InputKind.Paired);
        Assert.Equal([0, 1, 0.5, 0.125], g.DecNormDiff!);
        Assert.Equal([1, 0, 0.5, 0.875], g.DeltaNorm!);
        Assert.Equal(["ft_only", "base_only", "shared", "other"], g.Tag);
        Assert.Equal(0, g.DecCos![2], 12);
        Assert.Equal(1, g.DecCos[3], 12);
        Assert.Equal(5, g.DecNorm[1][0], 12);
        var t = new FeatureTable(4);
        LatentGeometry.WriteColumns(g, t);
        Assert.Equal(["dec_base_norm", "dec_ft_norm", "dec_norm_diff", "enc_base_norm", "enc_ft_norm", "enc_norm_diff", "dec_cos_sim", "enc_cos_sim", "tag", "delta_norm", "relative_norm_ft"], t.Columns);

        // three models: specificity ½((2n_m − N)/max(n_m, N − n_m) + 1)
        var d3 = new SparseDictionary(3, 2, 2, Sparsity.Relu, CodeNormalization.Crosscoder, false);
        d3.WDec[(2 * 2 + 0) * 2] = 1;                   // latent 0 only in model 2
        for (int m = 0; m < 3; m++) d3.WDec[(m * 2 + 1) * 2 + 1] = 1;
        var g3 = LatentGeometry.Compute(d3, InputKind.Paired);
        Assert.Equal("model2_only", g3.Tag[0]);
        Assert.Equal("shared", g3.Tag[1]);
        Assert.Equal(0.5 * ((2 - 3.0) / 2 + 1), g3.Specificity![0][1], 12);
    }

    [Fact]
    public void Statistics_match_a_direct_pass_over_every_row()
    {
        using var dir = new TempDir();
        var s = StoreTestData.Settings(d: 8, dtype: "f32", shardTokens: 64);
        StoreTestData.Write(dir.Path, s, 60, 7);
        using var st = ActivationStore.Open(dir.Path);
        var d = new SparseDictionary(2, 8, 12, Sparsity.Relu, CodeNormalization.Crosscoder, false);
        Initialization.Crosscoder(d, new SplitMix64(9), 1f, sameInitForAllModels: false);
        for (int j = 0; j < 12; j++) d.BEnc[j] = -0.3f * (j % 4);
        var ad = new AnalysisDictionary(d, "t", DictionaryInput.Paired(3), 2);
        var r = LatentTable.Run(ad, st, new LatentTableOptions { BatchSize = 50, TopPositions = 6 });

        long N = st.Tokens;
        Assert.Equal(N, r.Positions);
        var c = new float[12]; d.CodeNorm(c);
        var fires = new long[2, 12]; var max = new double[2, 12]; var mass = new double[5, 12]; var perSrc = new long[2];
        var x = new float[16];
        var acts = new List<(double A, long Row)>[12];
        for (int j = 0; j < 12; j++) acts[j] = [];
        for (long row = 0; row < N; row++)
        {
            st.ReadRows(0, 3, row, 1, x.AsSpan(0, 8)); st.ReadRows(1, 3, row, 1, x.AsSpan(8, 8));
            var f = new float[12];
            Inference.Encode(d, x).ToDense(f);
            int src = st.Source(row); byte mk = st.Mask(row);
            perSrc[src]++;
            for (int j = 0; j < 12; j++)
            {
                if (f[j] == 0) continue;
                double a = (double)f[j] * c[j];
                fires[src, j]++; max[src, j] = Math.Max(max[src, j], a);
                mass[0, j] += a;
                if ((mk & (byte)TokenMask.Bos) != 0) mass[1, j] += a;
                if ((mk & (byte)TokenMask.User) != 0) mass[3, j] += a;
                if ((mk & (byte)TokenMask.Assistant) != 0) mass[4, j] += a;
                acts[j].Add((a, row));
            }
        }
        int checkedShares = 0;
        for (int j = 0; j < 12; j++)
        {
            Assert.Equal((double)(fires[0, j] + fires[1, j]) / N, r.FreqAll[j], 12);
            Assert.Equal(Math.Max(max[0, j], max[1, j]), r.MaxActAll[j], 1e-5);   // batched vs single-row GEMM rounding
            Assert.Equal((double)fires[1, j] / perSrc[1], r.FreqBySource["src1"][j], 12);
            Assert.Equal(max[0, j], r.MaxActBySource["src0"][j], 1e-5);
            if (mass[0, j] == 0) { Assert.True(double.IsNaN(r.BosShare[j])); continue; }
            Assert.Equal(mass[1, j] / mass[0, j], r.BosShare[j], 1e-6);
            Assert.Equal(mass[3, j] / mass[0, j], r.UserShare[j], 1e-6);
            Assert.Equal(mass[4, j] / mass[0, j], r.AssistantShare[j], 1e-6);
            Assert.Equal(0, r.TemplateShare[j]);
            checkedShares++;
            // top_tokens come from the latent's top positions
            var topTokens = acts[j].OrderByDescending(p => p.A).Take(6).Select(p => st.TokenId(p.Row)).ToHashSet();
            Assert.All(r.TopTokenIds[j], id => Assert.Contains(id, topTokens));
        }
        Assert.True(checkedShares >= 6, $"only {checkedShares} latents fired");
        Assert.Contains(r.BosShare, v => v > 0);
    }

    /// <summary>Hand-made chat layouts (B = BOS, T = template, U = user, A = assistant), one per sample, cut to its length.</summary>
    static readonly string[] Layouts = ["BTTUUUTTAAATT", "BTTTTTTTTTTTT", "BUUTAAATTUUAA", "BTAAAAAAAAAAA", "TTTUUTTTTAAAT"];

    static TokenMask MaskOf(char ch) => ch switch { 'B' => TokenMask.Bos, 'T' => TokenMask.Template, 'U' => TokenMask.User, _ => TokenMask.Assistant };

    [Fact]
    public void Template_token_columns_match_a_direct_count_on_a_hand_made_chat_sample()
    {
        using var dir = new TempDir();
        var s = StoreTestData.Settings(d: 8, dtype: "f32", shardTokens: 64);
        const int samples = 60;
        using (var w = ActivationStoreWriter.Open(dir.Path, s, 1_000_000))
        {
            for (int first = 0; first < samples; first += 7)
            {
                int count = Math.Min(7, samples - first);
                var b = StoreTestData.Batch(s, first, count);
                int t = 0;
                for (int i = first; i < first + count; i++)
                    for (int p = 0; p < StoreTestData.Length(i); p++, t++) b.Masks[t] = (byte)MaskOf(Layouts[i % Layouts.Length][p]);
                w.Append(b);
            }
            w.Complete();
        }
        using var st = ActivationStore.Open(dir.Path);
        var d = new SparseDictionary(2, 8, 12, Sparsity.Relu, CodeNormalization.Crosscoder, false);
        Initialization.Crosscoder(d, new SplitMix64(9), 1f, sameInitForAllModels: false);
        for (int j = 0; j < 12; j++) d.BEnc[j] = -0.3f * (j % 4);
        var ad = new AnalysisDictionary(d, "t", DictionaryInput.Paired(3), 2);
        var r = LatentTable.Run(ad, st, new LatentTableOptions { BatchSize = 37 });

        // direct: walk every sample's layout; the k-th T of a run is ctrl position k
        var c = new float[12]; d.CodeNorm(c);
        var x = new float[16];
        long[] ctrl = new long[12], non = new long[12], bos = new long[12], user = new long[12], asst = new long[12];
        var ctrlK = new long[11, 12];
        var ranges = st.SequenceRanges();
        for (int i = 0; i < samples; i++)
        {
            string layout = Layouts[i % Layouts.Length];
            int run = 0;
            for (int p = 0; p < StoreTestData.Length(i); p++)
            {
                run = layout[p] == 'T' ? run + 1 : 0;
                long row = ranges[i] + p;
                st.ReadRows(0, 3, row, 1, x.AsSpan(0, 8)); st.ReadRows(1, 3, row, 1, x.AsSpan(8, 8));
                var f = new float[12];
                Inference.Encode(d, x).ToDense(f);
                for (int j = 0; j < 12; j++)
                {
                    if (!((double)f[j] * c[j] > 1e-3)) continue;
                    switch (layout[p])
                    {
                        case 'B': bos[j]++; break;
                        case 'T': ctrl[j]++; if (run <= 10) ctrlK[run, j]++; break;
                        case 'U': non[j]++; user[j]++; break;
                        default: non[j]++; asst[j]++; break;
                    }
                }
            }
        }
        static double Frac(long a, long b) => b > 0 ? (double)a / b : double.NaN;
        int latentsWithCtrl = 0;
        for (int j = 0; j < 12; j++)
        {
            Assert.Equal(Frac(ctrl[j], ctrl[j] + non[j]), r.TemplateStats["lmsys_ctrl_%"][j], 12);
            Assert.Equal(Frac(bos[j], ctrl[j] + non[j] + bos[j]), r.TemplateStats["lmsys_bos_%"][j], 12);
            Assert.Equal(Frac(user[j], user[j] + asst[j]), r.TemplateStats["lmsys_user_%"][j], 12);
            Assert.Equal(Frac(asst[j], user[j] + asst[j]), r.TemplateStats["lmsys_assistant_%"][j], 12);
            for (int k = 1; k <= 10; k++) Assert.Equal(Frac(ctrlK[k, j], ctrl[j]), r.TemplateStats[$"ctrl_{k}_%"][j], 12);
            if (ctrl[j] > 0 && ctrlK[10, j] > 0) latentsWithCtrl++;
        }
        Assert.True(latentsWithCtrl >= 3, $"only {latentsWithCtrl} latents fire on a 10th template token");
        var table = new FeatureTable(12);
        LatentTable.WriteColumns(r, table);
        foreach (string name in new[] { "lmsys_ctrl_%", "lmsys_bos_%", "lmsys_user_%", "lmsys_assistant_%", "ctrl_1_%", "ctrl_10_%" })
            Assert.Contains(name, table.Columns);
    }
}

using System.Text.Json;
using Finetrace.Diffing;
using Finetrace.Diffing.WeightDiff;
using Finetrace.Models.Safetensors;
using Finetrace.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Finetrace.Tests.Diffing;

public sealed class WeightDiffTests(ITestOutputHelper log)
{
    const string OProj = "model.layers.1.self_attn.o_proj.weight";

    // ΔW = 0.5·u1 v1ᵀ + 0.2·u2 v2ᵀ on layer 1's o_proj (u, v orthonormal), embedding rows 5 (‖Δ‖ 1.0) and 9 (0.6), lm_head row 7 (0.8)
    static void Plant(Dictionary<string, float[]> w)
    {
        int d = SyntheticPair.Hidden;
        var (u1, u2) = Orthonormal(d, 1);
        var (v1, v2) = Orthonormal(d, 2);
        var o = w[OProj];
        for (int i = 0; i < d; i++)
            for (int j = 0; j < d; j++) o[i * d + j] += 0.5f * u1[i] * v1[j] + 0.2f * u2[i] * v2[j];
        var e = w["model.embed_tokens.weight"];
        var r = SyntheticPair.Unit(d, 3);
        for (int j = 0; j < d; j++) { e[5 * d + j] += 1.0f * r[j]; e[9 * d + j] += 0.6f * r[j]; }
        var h = w["lm_head.weight"];
        for (int j = 0; j < d; j++) h[7 * d + j] += 0.8f * r[j];
    }

    static (float[], float[]) Orthonormal(int n, int seed)
    {
        var a = SyntheticPair.Unit(n, seed * 10);
        var b = SyntheticPair.Unit(n, seed * 10 + 1);
        float dot = a.Zip(b).Sum(p => p.First * p.Second);
        for (int i = 0; i < n; i++) b[i] -= dot * a[i];
        float norm = MathF.Sqrt(b.Sum(x => x * x));
        return (a, b.Select(x => x / norm).ToArray());
    }

    [Theory]
    [InlineData(512)] // exact (Gram) spectrum
    [InlineData(1)]   // randomised range finder
    public void Planted_changes_show_up_with_their_rank_and_rows(int exactMaxSide)
    {
        using var pair = new SyntheticPair(Plant);
        var r = WeightDiffAnalysis.Compute(new WeightDiffOptions { Models = new ModelPairSpec(pair.Base, pair.Ft), ExactSvdMaxSide = exactMaxSide, TopSingularValues = 4 });
        var changed = r.Modules.Where(m => m.DeltaNorm > 0).Select(m => m.Name).Order().ToArray();
        Assert.Equal(new[] { "lm_head.weight", "model.embed_tokens.weight", OProj }, changed);
        var o = r.Modules.Single(m => m.Name == OProj);
        log.WriteLine($"o_proj σ = {string.Join(", ", o.SingularValues!.Select(x => x.ToString("G6")))} eff. rank {o.EffectiveRank:F4} ({o.SvdMethod})");
        Assert.Equal(0.5, o.SingularValues![0], 5);
        Assert.Equal(0.2, o.SingularValues[1], 5);
        Assert.True(o.SingularValues[2] < 1e-4, $"σ3 = {o.SingularValues[2]}");
        double p1 = 0.25 / 0.29, p2 = 0.04 / 0.29;
        Assert.Equal(Math.Exp(-(p1 * Math.Log(p1) + p2 * Math.Log(p2))), o.EffectiveRank!.Value, 4);
        Assert.Equal(Math.Sqrt(0.29), o.DeltaNorm, 5);
        Assert.Equal(1, o.Layer);
        Assert.Equal("self_attn.o_proj.weight", o.Module);
        Assert.Equal(new[] { 5, 9 }, r.EmbeddingRows.Take(2).Select(x => x.Id));
        Assert.Equal(1.0, r.EmbeddingRows[0].DeltaNorm, 5);
        Assert.Equal(0.6, r.EmbeddingRows[1].DeltaNorm, 5);
        Assert.Equal(0, r.EmbeddingRows[2].DeltaNorm);
        Assert.Equal(7, r.UnembeddingRows![0].Id);
        Assert.Equal("<7>", r.UnembeddingRows[0].Token); // no tokenizer: ids shown as <id>
        // global: sqrt(Σ‖ΔW‖²/Σ‖W‖²) computed directly
        var wb = SyntheticPair.Read(pair.Base);
        var wf = SyntheticPair.Read(pair.Ft);
        double sd = 0, sb = 0;
        foreach (var (k, v) in wb) for (int i = 0; i < v.Length; i++) { double dd = wf[k][i] - v[i]; sd += dd * dd; sb += (double)v[i] * v[i]; }
        Assert.Equal(Math.Sqrt(sd / sb), r.GlobalRelative, 9);
    }

    [Fact]
    public void Lora_spectrum_is_read_from_the_adapter_and_matches_the_merged_diff()
    {
        using var pair = new SyntheticPair();
        const int R = 3;
        const float Alpha = 6f;
        string adapter = pair.File("lora");
        Directory.CreateDirectory(adapter);
        var rng = new Random(4);
        float[] Rand(int n) => Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() - 0.5) * 0.3f).ToArray();
        int d = SyntheticPair.Hidden;
        var aq = Rand(R * d); var bq = Rand(d * R);
        var ae = Rand(R * SyntheticPair.Vocab); var be = Rand(d * R);
        SafetensorsWriter.Write(Path.Combine(adapter, "adapter_model.safetensors"),
        [
            TensorData.F32("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", aq, R, d),
            TensorData.F32("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight", bq, d, R),
            TensorData.F32("base_model.model.model.embed_tokens.lora_embedding_A", ae, R, SyntheticPair.Vocab),
            TensorData.F32("base_model.model.model.embed_tokens.lora_embedding_B", be, d, R),
        ]);
        File.WriteAllText(Path.Combine(adapter, "adapter_config.json"), JsonSerializer.Serialize(new Dictionary<string, object>
        {
            ["peft_type"] = "LORA", ["r"] = R, ["lora_alpha"] = Alpha, ["bias"] = "none", ["target_modules"] = new[] { "q_proj", "embed_tokens" },
        }));
        var lora = WeightDiffAnalysis.Compute(new WeightDiffOptions { Models = new ModelPairSpec(pair.Base, pair.Base, adapter), TopSingularValues = 16 });
        Assert.True(lora.FromAdapter);
        // the same fine-tune as a merged checkpoint goes through the full (Gram) path
        var merged = WeightDiffAnalysis.Compute(new WeightDiffOptions { Models = new ModelPairSpec(pair.Base, pair.Base, adapter) with { }, TopSingularValues = 16 }
            with { Models = new ModelPairSpec(pair.Base, pair.Ft, adapter) });
        Assert.False(merged.FromAdapter);
        foreach (var name in new[] { "model.layers.0.self_attn.q_proj.weight", "model.embed_tokens.weight" })
        {
            var a = lora.Modules.Single(m => m.Name == name);
            var b = merged.Modules.Single(m => m.Name == name);
            log.WriteLine($"{name}: lora σ {string.Join(", ", a.SingularValues!.Select(x => x.ToString("G5")))}; merged σ {string.Join(", ", b.SingularValues!.Take(4).Select(x => x.ToString("G5")))}");
            Assert.Equal(R, a.SingularValues!.Length);
            for (int i = 0; i < R; i++) Assert.Equal(b.SingularValues![i], a.SingularValues[i], 4);
            Assert.True(b.SingularValues![R] < 1e-4 * b.SingularValues[0]);
            Assert.Equal(b.DeltaNorm, a.DeltaNorm, 4);
        }
        // ‖ΔW‖ of q_proj directly: s·B·A formed by hand
        double s = Alpha / R, direct = 0;
        for (int i = 0; i < d; i++)
            for (int j = 0; j < d; j++)
            {
                double v = 0;
                for (int k = 0; k < R; k++) v += bq[i * R + k] * aq[k * d + j];
                direct += s * v * s * v;
            }
        Assert.Equal(Math.Sqrt(direct), lora.Modules.Single(m => m.Name == "model.layers.0.self_attn.q_proj.weight").DeltaNorm, 5);
        Assert.Equal(merged.EmbeddingRows.Take(5).Select(x => x.Id), lora.EmbeddingRows.Take(5).Select(x => x.Id));
    }

    [Fact]
    public void Symmetric_eigendecomposition_recovers_a_planted_spectrum()
    {
        const int n = 30;
        var rng = new Random(7);
        // Q from Gram–Schmidt of a random matrix; A = Q diag(λ) Qᵀ
        var q = new double[n][];
        for (int i = 0; i < n; i++)
        {
            var v = Enumerable.Range(0, n).Select(_ => rng.NextDouble() - 0.5).ToArray();
            for (int p = 0; p < i; p++) { double dot = v.Zip(q[p]).Sum(t => t.First * t.Second); for (int k = 0; k < n; k++) v[k] -= dot * q[p][k]; }
            double norm = Math.Sqrt(v.Sum(x => x * x));
            q[i] = v.Select(x => x / norm).ToArray();
        }
        var lambda = Enumerable.Range(0, n).Select(i => 10.0 - i * 0.7 + (i == 5 ? 0.05 : 0)).ToArray();
        var a = new double[n * n];
        for (int e = 0; e < n; e++) for (int i = 0; i < n; i++) for (int j = 0; j < n; j++) a[i * n + j] += lambda[e] * q[e][i] * q[e][j];
        var (values, vectors) = SymmetricEigen.Decompose(a, n);
        var want = lambda.OrderDescending().ToArray();
        for (int i = 0; i < n; i++) Assert.Equal(want[i], values[i], 9);
        for (int e = 0; e < n; e++)
        {
            // A v = λ v and ‖v‖ = 1
            for (int i = 0; i < n; i++)
            {
                double av = 0;
                for (int j = 0; j < n; j++) av += a[i * n + j] * vectors[e * n + j];
                Assert.Equal(values[e] * vectors[e * n + i], av, 9);
            }
            Assert.Equal(1.0, Enumerable.Range(0, n).Sum(i => vectors[e * n + i] * vectors[e * n + i]), 9);
        }
    }

    [SharedFact]
    public void Organisms_weight_diff_ranks_changed_embedding_rows_by_token()
    {
        foreach (var (organism, globalRel) in new[] { ("stories260K-zog", 0.080), ("stories260K-chat", 0.095) })
        {
            var r = WeightDiffAnalysis.Compute(new WeightDiffOptions
            {
                Models = new ModelPairSpec(Shared.Path("models", "stories260K"), Shared.Path("models", organism)), TopRows = 10,
            });
            log.WriteLine($"{organism}: global rel {r.GlobalRelative:F4}; top embedding rows: " +
                string.Join(", ", r.EmbeddingRows.Select(x => $"{x.Id} '{x.Token}' {x.DeltaNorm:F3}")));
            Assert.Equal(globalRel, r.GlobalRelative, 3);
            Assert.True(r.TiedEmbeddings);
            Assert.Null(r.UnembeddingRows);
            Assert.Equal(10, r.EmbeddingRows.Count);
            for (int i = 1; i < r.EmbeddingRows.Count; i++) Assert.True(r.EmbeddingRows[i - 1].DeltaNorm >= r.EmbeddingRows[i].DeltaNorm);
            Assert.All(r.EmbeddingRows, x => Assert.False(string.IsNullOrEmpty(x.Token)));
            // the chat organism's planted phrases start with ▁S (Sorry) and ▁B (Bye): GROUND_TRUTH.json expected_tokens
            if (organism == "stories260K-chat") Assert.Equal(new[] { "B", "S" }, r.EmbeddingRows.Take(2).Select(x => x.Token).Order());
        }
    }
}

using System.Runtime.InteropServices;
using Finetrace.Activations;
using Finetrace.Activations.Synthetic;
using Finetrace.Dictionaries;
using Finetrace.Diffing;
using Finetrace.Diffing.Scaling;
using Finetrace.Models.Safetensors;
using Finetrace.Tensors;
using Finetrace.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Finetrace.Tests.Diffing;

/// <summary>
/// Latent Scaling against the reference (sparsity-artifacts-crosscoders closed_form_scalars, float64 run) and against a
/// direct float64 evaluation of the closed form that materialises every latent's own targets (no one-GEMM identity, no
/// sparse path). Tolerance: max |Δ| ≤ 1e-5 × the tensor's largest magnitude; every max difference is logged.
/// </summary>
public sealed class LatentScalingTests(ITestOutputHelper log)
{
    const double Rel = 1e-5;

    void Close(string name, ReadOnlySpan<double> expected, ReadOnlySpan<double> actual, double rel = Rel)
    {
        Assert.Equal(expected.Length, actual.Length);
        double scale = 0, max = 0; int at = -1;
        foreach (var v in expected) if (!double.IsNaN(v)) scale = Math.Max(scale, Math.Abs(v));
        for (int i = 0; i < expected.Length; i++)
        {
            if (double.IsNaN(expected[i]) && double.IsNaN(actual[i])) continue;
            double d = Math.Abs(expected[i] - actual[i]);
            if (double.IsNaN(d)) d = double.PositiveInfinity;
            if (d > max) { max = d; at = i; }
        }
        log.WriteLine($"{name,-36} max |Δ| {max:E2} (scale {scale:E2}, rel {(scale > 0 ? max / scale : max):E2})");
        if (max > rel * Math.Max(scale, 1e-300))
            throw new Xunit.Sdk.XunitException($"{name}: max |Δ| {max:E3} at {at} (expected {expected[at]:G10}, got {actual[at]:G10}) exceeds {rel:E0} × {scale:E3}");
    }

    static double[] F64(SafetensorsFile f, string key) => MemoryMarshal.Cast<byte, double>(f.Bytes(key)).ToArray();

    [SharedFact]
    public void Matches_the_reference_closed_form_scalars()
    {
        using var fx = new SafetensorsFile(Shared.Path("fixtures", "dictionaries", "batchtopk_crosscoder_latent_scaling.safetensors"));
        var d = DictionaryLearningFormat.FromStateDict(fx, "ls.model.", "BatchTopKCrossCoder");
        var ad = new AnalysisDictionary(d, "fixture", DictionaryInput.Paired(0), 2);
        var x = fx.ReadF32("ls.x_eval").Data;
        int F = d.DictSize, rowLen = 2 * d.DModel, batches = 4, B = x.Length / rowLen / batches;
        var acc = new ScalingAccumulator(ad, LatentScaler.ProbeModels(ad, ProbeSide.FineTuned, new()), batches);
        var fRef = F64(fx, "ls.f64.f_threshold");
        var fOurs = new double[fRef.Length];
        for (int k = 0; k < batches; k++)
        {
            var xb = x.AsSpan(k * B * rowLen, B * rowLen);
            var (codes, xh) = Inference.Reconstruct(d, xb);
            var dense = new float[B * F];
            codes.ToDense(dense);
            for (int i = 0; i < dense.Length; i++) fOurs[k * B * F + i] = dense[i];
            acc.Add(codes, xb, xh, default, k);
        }
        Close("f_threshold", fRef, fOurs);
        var r = LatentScaler.Finish(acc, ad, new LatentScalingOptions(), "raw");
        foreach (var (ours, theirs) in new[] { ("base_error", "base_error"), ("ft_error", "chat_error"), ("base_reconstruction", "base_reconstruction"), ("ft_reconstruction", "chat_reconstruction") })
        {
            Close($"beta.{theirs}", F64(fx, $"ls.f64.beta.{theirs}"), r.Beta[ours]);
            Close($"nominator.{theirs}", F64(fx, $"ls.f64.nominator.{theirs}"), r.Num[ours]);
            Close($"norm_f.{theirs}", F64(fx, $"ls.f64.norm_f.{theirs}"), r.SumF2);
            Close($"norm_d.{theirs}", F64(fx, $"ls.f64.norm_d.{theirs}"), r.NormD2);
            Assert.Equal(F64(fx, $"ls.f64.count_active.{theirs}").Select(v => (long)v), r.CountActive);
        }
        Close("nu.error", F64(fx, "ls.f64.nu.error"), r.Error!.Value);
        Close("nu.reconstruction", F64(fx, "ls.f64.nu.reconstruction"), r.Reconstruction!.Value);
        // the float32 reference agrees too (it is what the toolkit ran)
        Close("f32 beta.base_error", fx.ReadF32("ls.f32.beta.base_error").Data.Select(v => (double)v).ToArray(), r.Beta["base_error"]);
        for (int j = 0; j < F; j++) Assert.True(r.Error!.Lo[j] <= r.Error.Value[j] && r.Error.Value[j] <= r.Error.Hi[j], $"latent {j}: interval does not hold its estimate");
    }

    /// <summary>Direct float64 closed form: for every latent j and model m, builds y_ij explicitly (x̂ decoded in float64
    /// from the codes; error with latent j's own term added back) and A_j = Σ_i f_ij y_ij, then β = d·A/(‖d‖² Σf²).
    /// Per chunk too, and the interval from those chunk sums by the textbook ratio-estimator formula.</summary>
    static Dictionary<string, double[]> Direct(SparseDictionary d, List<(float[] X, SparseCodes Codes)> batches, int[] probe, out double[][] chunkErrB, out double[][] chunkErrF)
    {
        int M = d.Models, D = d.DModel, F = d.DictSize;
        var A = new Dictionary<string, double[]>();
        string[] names = ["base_error", "ft_error", "base_reconstruction", "ft_reconstruction", "base_activation", "ft_activation"];
        foreach (var n in names) A[n] = new double[F];
        var c = new double[F];
        chunkErrB = new double[batches.Count][]; chunkErrF = new double[batches.Count][];
        for (int k = 0; k < batches.Count; k++)
        {
            var (x, codes) = batches[k];
            int B = codes.Rows;
            var f = new float[B * F];
            codes.ToDense(f);
            chunkErrB[k] = new double[F]; chunkErrF[k] = new double[F];
            for (int i = 0; i < B; i++)
            {
                // x̂ in float64
                var xh = new double[M * D];
                for (int m = 0; m < M; m++)
                    for (int e = 0; e < D; e++)
                    {
                        double s = d.BDec[m * D + e];
                        for (int j = 0; j < F; j++) s += (double)f[i * F + j] * d.WDec[(m * F + j) * D + e];
                        xh[m * D + e] = s;
                    }
                for (int j = 0; j < F; j++)
                {
                    double fij = f[i * F + j];
                    if (fij == 0) continue;
                    c[j] += fij * fij;
                    for (int m = 0; m < M; m++)
                    {
                        string who = m == 0 ? "base" : "ft";
                        double err = 0, rec = 0, act = 0;
                        for (int e = 0; e < D; e++)
                        {
                            double dv = d.WDec[(probe[j] * F + j) * D + e];
                            double xv = x[(i * M + m) * D + e];
                            double y = xv - (xh[m * D + e] - fij * d.WDec[(m * F + j) * D + e]);
                            err += dv * fij * y; rec += dv * fij * xh[m * D + e]; act += dv * fij * xv;
                        }
                        A[$"{who}_error"][j] += err; A[$"{who}_reconstruction"][j] += rec; A[$"{who}_activation"][j] += act;
                        (m == 0 ? chunkErrB : chunkErrF)[k][j] += err;
                    }
                }
            }
        }
        var beta = new Dictionary<string, double[]>();
        foreach (var n in names)
            beta[n] = Enumerable.Range(0, F).Select(j =>
            {
                double dd = 0;
                for (int e = 0; e < D; e++) { double v = d.WDec[(probe[j] * F + j) * D + e]; dd += v * v; }
                return c[j] > 0 ? A[n][j] / (dd * c[j]) : double.NaN;
            }).ToArray();
        return beta;
    }

    [Fact]
    public void Streamed_store_pass_matches_a_direct_float64_closed_form_with_normaliser_and_base_probe()
    {
        using var dir = new TempDir();
        SyntheticGenerator.Make(new SyntheticSpec { DModel = 16, Features = 32, Tokens = 1200, Seed = 7, Dtype = "f32", SequenceLength = 50, Bias = 1f }, dir.Path);
        using var st = ActivationStore.Open(dir.Path);
        var d = new SparseDictionary(2, 16, 24, Sparsity.BatchTopK, CodeNormalization.Crosscoder, false, 3);
        Initialization.Crosscoder(d, new SplitMix64(3), 1f, sameInitForAllModels: false);
        var rng = new SplitMix64(11);
        for (int i = 0; i < d.BDec.Length; i++) d.BDec[i] = (float)(rng.NextDouble() - 0.5);
        for (int i = 0; i < d.BEnc.Length; i++) d.BEnc[i] = (float)(rng.NextDouble() * 0.2);
        d.Normalizer = NormalizerStats.FromStore(st, 0, [0, 1], 4f);
        d.Threshold = 0.05f;
        var ad = new AnalysisDictionary(d, "synthetic", DictionaryInput.Paired(0), 2);

        foreach (var side in new[] { ProbeSide.FineTuned, ProbeSide.Base })
        {
            var o = new LatentScalingOptions { Chunks = 5, BatchSize = 97, Probe = side };
            var r = LatentScaler.Run(ad, st, o);
            Assert.Equal(1200, r.Positions);
            Assert.Equal("normalised", r.Space);

            // the same rows, chunked the same way, evaluated directly
            var rows = new StoreRows(st, 0);
            var batches = new List<(float[], SparseCodes)>();
            var raw = new float[240 * 32]; var ids = new long[240];
            for (int k = 0; k < 5; k++)
            {
                int n = rows.Next(raw, ids, 240);
                var x = ad.ToInput(raw.AsSpan(0, n * 32), n, 2);
                batches.Add((x, Inference.Encode(d, x)));
            }
            var probe = LatentScaler.ProbeModels(ad, side, new());
            var beta = Direct(d, batches, probe, out var cb, out var cf);
            foreach (var (name, b) in beta) Close($"{side} beta_{name}", b, r.Beta[name]);
            Assert.True(r.CountActive.Count(c => c > 0) > 12, "too few active latents for a meaningful test");

            // interval: textbook ratio estimator over the five chunk sums
            for (int j = 0; j < d.DictSize; j++)
            {
                double sa = cb.Sum(a => a[j]), sb = cf.Sum(a => a[j]);
                if (sb == 0) continue;
                double rr = sa / sb;
                double ss = Enumerable.Range(0, 5).Sum(k => Math.Pow(cb[k][j] - rr * cf[k][j], 2));
                double se = Math.Sqrt(ss * 5 / 4) / Math.Abs(sb);
                Assert.Equal(rr, r.Error!.Value[j], 1e-6 * Math.Max(1, Math.Abs(rr)));
                Assert.Equal(rr - 2.7764 * se, r.Error.Lo[j], 1e-5 * Math.Max(1, Math.Abs(rr) + se));
                Assert.Equal(rr + 2.7764 * se, r.Error.Hi[j], 1e-5 * Math.Max(1, Math.Abs(rr) + se));
            }
        }
    }

    [Fact]
    public void Diff_sae_betas_use_raw_base_and_finetuned_activations_not_the_difference_normaliser()
    {
        using var dir = new TempDir();
        SyntheticGenerator.Make(new SyntheticSpec { DModel = 16, Features = 32, Tokens = 800, Seed = 5, Dtype = "f32", SequenceLength = 40 }, dir.Path);
        using var st = ActivationStore.Open(dir.Path);
        var d = new SparseDictionary(1, 16, 20, Sparsity.Relu, CodeNormalization.None, true);
        Initialization.Sae(d, new SplitMix64(4));
        var ad = new AnalysisDictionary(d, "diff", DictionaryInput.Difference(0, 1, 0), 2);
        using (var b = StoreBatches.Difference(st, new StoreBatchOptions { Layer = 0, Shuffle = false, Cycle = false, MixSources = false }))
            d.Normalizer = NormalizerStats.FromSample(b, 10f, 800);
        var r = LatentScaler.Run(ad, st, new LatentScalingOptions { Chunks = 4, BatchSize = 64 });
        Assert.Null(r.Error);
        Assert.Equal(["base_activation", "ft_activation"], r.Targets);

        var rows = new StoreRows(st, 0);
        var raw = new float[800 * 32]; var ids = new long[800];
        int n = rows.Next(raw, ids, 800);
        Assert.Equal(800, n);
        var codes = Inference.Encode(d, ad.ToInput(raw, n, 2));
        var f = new float[n * 20];
        codes.ToDense(f);
        foreach (var (m, name) in new[] { (0, "base_activation"), (1, "ft_activation") })
        {
            var expect = new double[20];
            for (int j = 0; j < 20; j++)
            {
                double num = 0, c = 0, dd = 0;
                for (int e = 0; e < 16; e++) dd += (double)d.WDec[j * 16 + e] * d.WDec[j * 16 + e];
                for (int i = 0; i < n; i++)
                {
                    double fij = f[i * 20 + j];
                    c += fij * fij;
                    for (int e = 0; e < 16; e++) num += fij * d.WDec[j * 16 + e] * raw[(i * 2 + m) * 16 + e];
                }
                expect[j] = c > 0 ? num / (dd * c) : double.NaN;
            }
            Close("diff-sae beta_" + name, expect, r.Beta[name]);
        }
        Close("beta_activation_ratio", r.Beta["base_activation"].Zip(r.Beta["ft_activation"], (a, b) => a / b).ToArray(), r.Activation!.Value);
    }

    [Fact]
    public void Ranks_are_ascending_with_average_ties()
    {
        Assert.Equal([2.5, 1, 2.5, 4], LatentScaler.Ranks([0.3, 0.1, 0.3, 0.9]));
        Assert.Equal(2.0930, StudentT.Quantile(0.975, 19), 4);
        Assert.Equal(1.959964, StudentT.NormalQuantile(0.975), 5);
        Assert.Equal(1.9840, StudentT.Quantile(0.975, 100), 3);
    }
}

using Finetrace.Tensors;
using System.Text.Json;
using Finetrace.Activations;
using Finetrace.Activations.Synthetic;
using Finetrace.Dictionaries;
using Finetrace.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Finetrace.Tests.Dictionaries;

/// <summary>
/// DECOUPLED code normalisation for the BatchTopK crosscoder (methods.md §2.3, §2.5): per-model batch top-k of
/// f ⊙ ‖d_j^m‖, per-model decoders fed only their own selection, per-model thresholds θ [M] (EMA, inference rule,
/// crosscoder_learning format), training on synthetic data and the command line. Gradients (finite differences) and
/// sparse-vs-dense steps are in <see cref="GradientTests"/>.
/// </summary>
public sealed class DecoupledTests(ITestOutputHelper log)
{
    static SparseDictionary Make(int models, int d, int f, int k, ulong seed)
    {
        var dict = new SparseDictionary(models, d, f, Sparsity.BatchTopK, CodeNormalization.Decoupled, false, k);
        Initialization.Crosscoder(dict, new SplitMix64(seed), normInitScale: 0.5f);
        // make the per-model decoder norms differ, so the per-model rankings differ
        var r = new SplitMix64(seed + 7);
        for (int m = 0; m < models; m++)
            for (int j = 0; j < f; j++)
            {
                float s = (float)(0.3 + 1.4 * r.NextDouble());
                for (int i = 0; i < d; i++) dict.WDec[(m * f + j) * d + i] *= s;
            }
        for (int i = 0; i < dict.BEnc.Length; i++) dict.BEnc[i] = (float)(r.Normal() * 0.1);
        return dict;
    }

    static float[] Data(int b, int rowLen, ulong seed)
    {
        var r = new SplitMix64(seed); var x = new float[b * rowLen];
        for (int i = 0; i < x.Length; i++) x[i] = (float)r.Normal();
        return x;
    }

    // Model m keeps the k·B largest f·n_m (ties to the lower flat index), by sorting every entry.
    static HashSet<long> BruteTopK(float[] fBF, float[] nMF, int m, int b, int f, int kTotal)
        => Enumerable.Range(0, b * f).Select(i => (i, s: fBF[i] * nMF[m * f + i % f])).Where(e => e.s > 0)
            .OrderByDescending(e => e.s).ThenBy(e => e.i).Take(kTotal).Select(e => (long)e.i).ToHashSet();

    static HashSet<long> Support(SparseCodes c)
    {
        var s = new HashSet<long>();
        for (int t = 0; t < c.Rows; t++) for (int e = c.RowStart[t]; e < c.RowStart[t + 1]; e++) s.Add((long)t * c.Cols + c.Index[e]);
        return s;
    }

    [Fact]
    public void Each_model_keeps_its_own_batch_topk_and_decodes_only_its_own_selection()
    {
        int models = 3, d = 8, f = 40, b = 24, k = 3;
        var dict = Make(models, d, f, k, 1);
        var x = Data(b, models * d, 2);
        var fBF = Inference.PostRelu(dict, x);
        var nMF = dict.DecoderNorms();
        var codesM = Inference.EncodeModels(dict, x);   // θ unset: batch top-k
        var supports = new List<HashSet<long>>();
        for (int m = 0; m < models; m++)
        {
            var want = BruteTopK(fBF, nMF, m, b, f, k * b);
            var got = Support(codesM[m]);
            Assert.Equal(k * b, got.Count);
            Assert.True(want.SetEquals(got), $"model {m}: selection differs from sorting f·n_m");
            for (int e = 0; e < codesM[m].Count; e++) Assert.True(codesM[m].Value[e] > 0);
            supports.Add(got);
        }
        Assert.False(supports[0].SetEquals(supports[1]), "the test needs models whose selections differ");

        // the union is the reported code; the reconstruction of model m uses model m's selection only
        var (union, xh) = Inference.Reconstruct(dict, x);
        Assert.True(Support(union).SetEquals(supports.SelectMany(s => s).ToHashSet()));
        var want2 = new float[b * models * d];
        for (int t = 0; t < b; t++)
            for (int m = 0; m < models; m++)
                for (int i = 0; i < d; i++)
                {
                    double acc = dict.BDec[m * d + i];
                    for (int j = 0; j < f; j++)
                        if (supports[m].Contains((long)t * f + j)) acc += fBF[t * f + j] * dict.WDec[(m * f + j) * d + i];
                    want2[(t * models + m) * d + i] = (float)acc;
                }
        Golden.AssertClose("x̂ per model", want2, xh, 1e-5, 1e-5, log);
        Assert.Throws<InvalidOperationException>(() => Inference.Decode(dict, union));

        // with thresholds set: model m keeps f where f·n_m > θ_m
        dict.ModelThreshold![0] = 0.05f; dict.ModelThreshold[1] = 0.2f; dict.ModelThreshold[2] = 0.1f;
        var th = Inference.EncodeModels(dict, x);
        for (int m = 0; m < models; m++)
        {
            var want = Enumerable.Range(0, b * f).Where(i => fBF[i] > 0 && fBF[i] * nMF[m * f + i % f] > dict.ModelThreshold[m]).Select(i => (long)i).ToHashSet();
            Assert.True(want.SetEquals(Support(th[m])), $"model {m}: threshold rule");
        }
    }

    [Fact]
    public void Threshold_ema_runs_per_model_on_each_models_smallest_selected_value()
    {
        int models = 2, d = 8, f = 32, b = 16, k = 2;
        var dict = Make(models, d, f, k, 3);
        var x = Data(b, models * d, 4);
        var tr = new DictionaryTrainer(dict, new TrainerOptions { ThresholdStartStep = 0, ThresholdBeta = 0.9f, GeometricMedianInit = false, Lr = 0 });
        var fBF = Inference.PostRelu(dict, x);
        var nMF = dict.DecoderNorms();
        float MinSel(int m) => BruteTopK(fBF, nMF, m, b, f, k * b).Min(i => fBF[i] * nMF[m * f + i % f]);
        tr.ForwardBackward(x, 1);   // first update: θ_m ← min
        for (int m = 0; m < models; m++) Assert.Equal(MinSel(m), dict.ModelThreshold![m], 5);
        Assert.NotEqual(dict.ModelThreshold![0], dict.ModelThreshold[1]);
        Array.Fill(dict.ModelThreshold, 1f);
        var st = tr.ForwardBackward(x, 2);
        for (int m = 0; m < models; m++) Assert.Equal(0.9f + 0.1f * MinSel(m), dict.ModelThreshold[m], 5);
        Assert.Equal(new double[] { k, k }, st.L0PerModel);
        Assert.Equal(dict.ModelThreshold, st.ModelThreshold);
    }

    [Fact]
    public void Per_model_thresholds_round_trip_in_the_crosscoder_learning_format_and_saelens_refuses()
    {
        var dict = Make(2, 6, 12, 2, 5);
        dict.ModelThreshold![0] = 0.25f; dict.ModelThreshold[1] = 0.75f;
        using var dir = new TempDir();
        DictionaryLearningFormat.Save(dict, dir.Path);
        using (var file = new Finetrace.Models.Safetensors.SafetensorsFile(Path.Combine(dir.Path, "model.safetensors")))
            Assert.Equal(new[] { 2 }, file.Info("threshold").Shape);
        var back = DictionaryLearningFormat.Load(dir.Path);
        Assert.Equal(CodeNormalization.Decoupled, back.CodeNormalization);
        Assert.Equal(dict.ModelThreshold, back.ModelThreshold);
        Assert.Equal(dict.WDec, back.WDec);
        Assert.Equal(dict.WEnc, back.WEnc);

        // a scalar threshold with DECOUPLED is refused with the key named
        using var bad = new TempDir();
        var sd = DictionaryLearningFormat.StateDict(dict).Select(t => t.Name == "threshold" ? Finetrace.Models.Safetensors.TensorData.F32("threshold", [0.5f]) : t).ToList();
        File.Copy(Path.Combine(dir.Path, "config.json"), Path.Combine(bad.Path, "config.json"));
        Finetrace.Models.Safetensors.SafetensorsWriter.Write(Path.Combine(bad.Path, "model.safetensors"), sd, null);
        var ex = Assert.Throws<DictionaryFormatException>(() => DictionaryLearningFormat.Load(bad.Path));
        Assert.Contains("threshold", ex.Message);
        Assert.Contains("[2]", ex.Message);

        using var sl = new TempDir();
        var ex2 = Assert.ThrowsAny<Exception>(() => SaelensFormat.Save(dict, sl.Path));
        Assert.Contains("DECOUPLED", ex2.Message);
    }

    [Fact]
    public void Training_on_synthetic_data_lowers_the_loss_and_keeps_about_k_latents_per_model()
    {
        using var store = new TempDir();
        SyntheticGenerator.Make(new SyntheticSpec { DModel = 16, Features = 32, Tokens = 30_000, Seed = 3, Dtype = "f32" }, store.Path);
        using var st = ActivationStore.Open(store.Path);
        using var src = StoreBatches.Paired(st, new StoreBatchOptions { Layer = 0, Seed = 1 });
        const int steps = 600, batch = 128, k = 4;
        var dict = new SparseDictionary(2, 16, 64, Sparsity.BatchTopK, CodeNormalization.Decoupled, false, k);
        Initialization.Crosscoder(dict, new SplitMix64(5), 1f);
        var tr = new DictionaryTrainer(dict, new TrainerOptions
        {
            Lr = 4e-3, WarmupSteps = 30, TotalSteps = steps, DecayStart = steps * 8 / 10, DeadTokens = 20 * batch, ThresholdStartStep = steps / 2,
        });
        var x = new float[batch * 2 * 16];
        var losses = new List<float>();
        for (int s = 0; s < steps; s++)
        {
            Assert.Equal(batch, src.Next(x, batch));
            var stats = tr.Step(x);
            losses.Add(stats.Recon);
            Assert.All(stats.L0PerModel, l => Assert.Equal(k, l));
        }
        double first = losses.Take(20).Average(), last = losses.TakeLast(20).Average();
        log.WriteLine($"recon loss {first:F4} → {last:F4}; θ = [{string.Join(", ", dict.ModelThreshold!)}]");
        Assert.True(last < 0.5 * first, $"loss did not fall enough: {first} → {last}");
        Assert.All(dict.ModelThreshold!, t => Assert.True(t > 0));

        // θ_m tracks the smallest value model m's batch top-k keeps, so thresholded inference should keep nearly the
        // same entries as the training rule on a fresh batch: per model, L0 within 20% of k and ≥ 85% overlap with the
        // batch top-k (measured 3.9 and 97%). Thresholds from the union or ranked by Σ_m n^m instead of n^m break this.
        var probe = new float[1024 * 2 * 16];
        Assert.Equal(1024, src.Next(probe, 1024));
        var (_, xh) = Evaluation.ReconstructRaw(dict, probe);
        Assert.Equal(probe.Length, xh.Length);
        var codesM = Inference.EncodeModels(dict, probe);
        var trainM = Inference.EncodeModels(dict, probe, training: true);
        for (int m = 0; m < 2; m++)
        {
            double l0 = (double)codesM[m].Count / 1024;
            var inf = Support(codesM[m]); var bt = Support(trainM[m]);
            double overlap = (double)inf.Intersect(bt).Count() / inf.Union(bt).Count();
            log.WriteLine($"model {m}: inference L0 {l0:F2} (k = {k}), overlap with the batch top-k {overlap:P1}");
            Assert.InRange(l0, 0.8 * k, 1.2 * k);
            Assert.True(overlap >= 0.85, $"model {m}: thresholded inference keeps other entries than the batch top-k (Jaccard {overlap:P1})");
        }
        Assert.NotEqual(dict.ModelThreshold![0], dict.ModelThreshold![1]);
    }
}

/// <summary>`finetrace train crosscoder --code-norm decoupled` end to end. In the collection of the other tests that
/// redirect Console.Out (CliTests, SpliceTests, HarvestCliTests), so captured output never interleaves.</summary>
[Collection(ProcessWide.Name)]
public sealed class DecoupledCliTests
{
    [Fact]
    public void Train_crosscoder_with_decoupled_code_norm_from_the_command_line()
    {
        using var store = new TempDir();
        SyntheticGenerator.Make(new SyntheticSpec { DModel = 16, Features = 32, Tokens = 10_000, Seed = 4, Dtype = "f32" }, store.Path);
        using var outs = new TempDir();
        string cc = Path.Combine(outs.Path, "cc");
        Assert.Equal(0, Finetrace.Cli.Program.Main(["train", "crosscoder", "--store", store.Path, "--layer", "0", "--code-norm", "decoupled", "--k", "4",
            "--dict-size", "48", "--batch", "128", "--tokens", "25600", "--threshold-start", "50", "--checkpoint-every", "100", "--out", cc]));
        var d = DictionaryIO.Load(cc);
        Assert.Equal(CodeNormalization.Decoupled, d.CodeNormalization);
        Assert.Equal(Sparsity.BatchTopK, d.Sparsity);
        Assert.Equal(2, d.ModelThreshold!.Length);
        Assert.All(d.ModelThreshold, t => Assert.True(t > 0, "θ_m set by training"));
        Assert.Equal(200, File.ReadLines(Path.Combine(cc, "metrics.jsonl")).Count());
        var (ck, _, _) = TrainingCheckpoint.Load(Path.Combine(cc, "checkpoint"));
        Assert.Equal(d.ModelThreshold, ck.Dict.ModelThreshold);   // the checkpoint carries θ [M]
        // --resume restores θ [M] from the checkpoint and continues
        Assert.Equal(0, Finetrace.Cli.Program.Main(["train", "crosscoder", "--store", store.Path, "--layer", "0", "--code-norm", "decoupled", "--k", "4",
            "--dict-size", "48", "--batch", "128", "--tokens", "38400", "--threshold-start", "50", "--checkpoint-every", "100", "--resume", "--out", cc]));
        Assert.Equal(300, File.ReadLines(Path.Combine(cc, "metrics.jsonl")).Count());
        var last = JsonDocument.Parse(File.ReadLines(Path.Combine(cc, "metrics.jsonl")).Last()).RootElement;
        Assert.Equal(2, last.GetProperty("model_threshold").GetArrayLength());
        Assert.All(last.GetProperty("l0_per_model").EnumerateArray(), e => Assert.Equal(4.0, e.GetDouble()));

        // eval reconstructs with the per-model codes
        var old = Console.Out; var sw = new StringWriter(); Console.SetOut(sw);
        try { Assert.Equal(0, Finetrace.Cli.Program.Main(["eval", cc, "--store", store.Path, "--tokens", "2000", "--json"])); }
        finally { Console.SetOut(old); }
        using var ev = JsonDocument.Parse(sw.ToString().Trim().Split('\n').Last());
        Assert.All(ev.RootElement.GetProperty("fve").EnumerateArray(), e => Assert.InRange(e.GetDouble(), 0.2, 1.0));
    }
}

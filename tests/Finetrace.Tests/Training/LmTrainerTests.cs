using System.Text.Json;
using Finetrace.Models;
using Finetrace.Models.Backward;
using Finetrace.Models.Safetensors;
using Finetrace.Tests.Infrastructure;
using Finetrace.Training;
using Xunit.Abstractions;

namespace Finetrace.Tests.Training;

public sealed class LmTrainerTests(ITestOutputHelper log) : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("ft-lmtrain-").FullName;
    public void Dispose() { try { Directory.Delete(_dir, true); } catch (IOException) { } }

    const string TinyConfig = """
        {"model_type": "llama", "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "head_dim": 8, "vocab_size": 40, "max_position_embeddings": 128, "rms_norm_eps": 1e-5,
         "rope_theta": 10000.0, "hidden_act": "silu", "tie_word_embeddings": TIED, "bos_token_id": 1, "eos_token_id": 2}
        """;

    static string Config(bool tied) => TinyConfig.Replace("TIED", tied ? "true" : "false");

    /// <summary>Samples of a repeating pattern with noise: [1, a, a+1, a+2, …] mod 37 + 3 — learnable, not trivial.</summary>
    static List<LmExample> PatternData(int samples, int seed)
    {
        var rng = new Random(seed);
        var list = new List<LmExample>();
        for (int s = 0; s < samples; s++)
        {
            int start = rng.Next(37), len = 6 + rng.Next(10);
            var ids = new int[len];
            ids[0] = 1;
            for (int t = 1; t < len; t++) ids[t] = 3 + (start + t) % 37;
            list.Add(new LmExample(ids));
        }
        return list;
    }

    static LmTrainingOptions Options(int steps, int lora = 0) => new()
    {
        Steps = steps, BatchRows = 4, SeqLen = 16, LearningRate = 3e-3, WarmupSteps = 2, WeightDecay = 0.01, LoraRank = lora, Seed = 3,
    };

    static void AssertBitEqual(string what, float[] a, float[] b)
    {
        Assert.Equal(a.Length, b.Length);
        for (int i = 0; i < a.Length; i++)
            if (BitConverter.SingleToInt32Bits(a[i]) != BitConverter.SingleToInt32Bits(b[i]))
                Assert.Fail($"{what}[{i}]: {a[i]:G9} vs {b[i]:G9}");
    }

    [Theory]
    [InlineData(0)]
    [InlineData(4)]
    public void ResumeIsBitForBitExact(int lora)
    {
        var data = new PackedRows(PatternData(40, 1), 16);
        var options = Options(8, lora);

        var straight = ModelParameters.Initialise(Config(true), 5);
        var t1 = new LmTrainer(straight, data, options);
        var r1 = t1.Run();

        var interrupted = ModelParameters.Initialise(Config(true), 5);
        string ckpt = Path.Combine(_dir, $"ckpt{lora}");
        using var cts = new CancellationTokenSource();
        var t2 = new LmTrainer(interrupted, data, options);
        Assert.Throws<OperationCanceledException>(() => t2.Run(ckpt, new SyncProgress(p => { if (p.Step == 3) cts.Cancel(); }), cts.Token));

        var resumed = ModelParameters.Initialise(Config(true), 5); // a fresh process: starts from the initial weights
        var t3 = new LmTrainer(resumed, data, options);
        var r3 = t3.Run(ckpt);
        Assert.Equal(3, r3.ResumedFrom);
        Assert.Equal(r1.Losses.Skip(3), r3.Losses); // exact doubles
        if (lora == 0)
            foreach (var n in straight.Names) AssertBitEqual(n, straight[n], resumed[n]);
        else
        {
            foreach (var ((name, a), (_, b)) in t1.Lora!.Tensors().Zip(t3.Lora!.Tensors())) AssertBitEqual(name, a, b);
            foreach (var n in straight.Names) AssertBitEqual(n, straight[n], resumed[n]); // LoRA leaves the base alone
        }

        // a checkpoint of other options is refused with a clear error
        var other = new LmTrainer(ModelParameters.Initialise(Config(true), 5), data, options with { LearningRate = 1e-2 });
        var e = Assert.Throws<CheckpointMismatchException>(() => other.Run(ckpt));
        Assert.Contains("options", e.Message);
    }

    /// <summary>IProgress that runs the callback synchronously (Progress&lt;T&gt; posts to the thread pool).</summary>
    sealed class SyncProgress(Action<LmTrainingProgress> report) : IProgress<LmTrainingProgress>
    {
        public void Report(LmTrainingProgress value) => report(value);
    }

    [Fact]
    public void FromScratchLearnsThePattern()
    {
        var model = ModelParameters.Initialise(Config(false), 2);
        var train = new PackedRows(PatternData(200, 1), 16);
        var heldOut = new PackedRows(PatternData(30, 99), 16);
        var trainer = new LmTrainer(model, train, new LmTrainingOptions { Steps = 60, BatchRows = 8, SeqLen = 16, LearningRate = 1e-2, WarmupSteps = 5 });
        double before = trainer.Evaluate(heldOut);
        var result = trainer.Run();
        double after = trainer.Evaluate(heldOut);
        log.WriteLine($"held-out loss {before:F3} → {after:F3} (ln 40 = {Math.Log(40):F3}); train {result.Losses[0]:F3} → {result.Losses[^1]:F3}");
        Assert.True(before > 3.3, $"an untrained model should be near uniform (ln 40 = 3.69), got {before}");
        // after BOS the first token is random (ln 37 = 3.6 nats over 1 target in ~10); every later token is determined
        Assert.True(after < 1.0, $"held-out loss {after} should fall far below the uniform 3.69");
    }

    [Fact]
    public void SavedFolderReloadsWithIdenticalWeightsAndLogits()
    {
        var model = ModelParameters.Initialise(Config(false), 4);
        new LmTrainer(model, new PackedRows(PatternData(20, 2), 16), Options(3)).Run();
        string outDir = Path.Combine(_dir, "full");
        model.Save(outDir);

        // exact HF layout: every name and shape of ModelLayout, F32, nothing else
        using (var st = new SafetensorsFile(Path.Combine(outDir, "model.safetensors")))
        {
            var want = ModelLayout.Parameters(model.Config).ToDictionary(p => p.Name, p => p.Shape);
            Assert.Equal(want.Keys.Order(StringComparer.Ordinal), st.Tensors.Keys.Order(StringComparer.Ordinal));
            foreach (var (name, info) in st.Tensors)
            {
                Assert.Equal(want[name], info.Shape);
                Assert.Equal(Finetrace.Tensors.DType.F32, info.DType);
                AssertBitEqual(name, model[name], st.ReadF32(name).Data);
            }
            Assert.Equal("pt", st.Metadata["format"]);
        }
        using (var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(outDir, "config.json"))))
        {
            Assert.Equal("llama", doc.RootElement.GetProperty("model_type").GetString());
            Assert.Equal("float32", doc.RootElement.GetProperty("torch_dtype").GetString());
            Assert.False(doc.RootElement.GetProperty("tie_word_embeddings").GetBoolean());
        }

        var batch = new TokenBatch(PatternData(2, 7).SelectMany(e => e.Ids.Take(6)).ToArray(), 2, 6);
        using var loaded = CausalLM.Load(outDir);
        var want2 = new DifferentiableLM(model).Forward(batch).Logits;
        var got = loaded.Forward(batch).Logits!.Data;
        double worst = want2.Zip(got, (a, b) => Math.Abs(a - b)).Max();
        log.WriteLine($"reloaded logits: max abs diff {worst:E2}");
        Assert.True(worst < 1e-5, $"reloaded logits differ by {worst:E2}");
        // and a second load of the written folder gives bit-identical logits (the file is the model)
        var again = new DifferentiableLM(ModelParameters.Load(outDir)).Forward(batch).Logits;
        AssertBitEqual("logits", want2, again);
    }

    [Fact]
    public void LoraAdapterLoadsAsItsMergedWeights()
    {
        var baseModel = ModelParameters.Initialise(Config(true), 6);
        string baseDir = Path.Combine(_dir, "base");
        baseModel.Save(baseDir);
        var trainer = new LmTrainer(baseModel, new PackedRows(PatternData(30, 3), 16), Options(5, lora: 4));
        trainer.Run();
        var lora = trainer.Lora!;
        Assert.True(lora.WeightNames.All(n => lora.B(n).Any(x => x != 0)), "training moved every B away from its zero init");
        string adapterDir = Path.Combine(_dir, "adapter");
        lora.SavePeft(adapterDir, baseDir);
        string mergedDir = Path.Combine(_dir, "merged");
        lora.Merged(baseModel).Save(mergedDir);

        using (var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(adapterDir, "adapter_config.json"))))
        {
            Assert.Equal("LORA", doc.RootElement.GetProperty("peft_type").GetString());
            Assert.Equal(4, doc.RootElement.GetProperty("r").GetInt32());
            Assert.Equal(8, doc.RootElement.GetProperty("lora_alpha").GetDouble());
        }
        using (var st = new SafetensorsFile(Path.Combine(adapterDir, "adapter_model.safetensors")))
            Assert.Equal([4, 32], st.Info("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight").Shape);

        var batch = new TokenBatch(PatternData(2, 8).SelectMany(e => e.Ids.Take(6)).ToArray(), 2, 6);
        using var viaAdapter = CausalLM.Load(baseDir, adapterDir);
        using var merged = CausalLM.Load(mergedDir);
        using var plain = CausalLM.Load(baseDir);
        var a = viaAdapter.Forward(batch).Logits!.Data;
        var m = merged.Forward(batch).Logits!.Data;
        AssertBitEqual("adapter vs merged logits", m, a);
        double moved = a.Zip(plain.Forward(batch).Logits!.Data, (x, y) => Math.Abs(x - y)).Max();
        Assert.True(moved > 1e-3, $"the adapter changes the logits (max change {moved:E2})");
    }

    [Fact]
    public void MicroBatchesAccumulateToTheSameStep()
    {
        var data = new PackedRows(PatternData(20, 4), 16);
        var whole = ModelParameters.Initialise(Config(true), 9);
        var split = ModelParameters.Initialise(Config(true), 9);
        var r1 = new LmTrainer(whole, data, Options(2)).Run();
        var r2 = new LmTrainer(split, data, Options(2) with { MicroBatchRows = 1 }).Run();
        Assert.Equal(r1.Losses[0], r2.Losses[0], 5);
        foreach (var n in whole.Names)
            Golden.AssertClose(n, whole[n], split[n], atol: 2e-6, rtol: 1e-4);
    }

    [Fact]
    public void LossMaskCountsOnlyMaskedTargets()
    {
        // two samples; the mask keeps the second half of each
        var ex = new List<LmExample>
        {
            new([1, 5, 6, 7, 8, 9], [0, 0, 0, 1, 1, 1]),
            new([1, 10, 11, 12], [0, 0, 1, 1]),
        };
        var rows = new PackedRows(ex, 16);
        Assert.Equal(1, rows.Count);
        Assert.Equal(5, rows.CountedTargets);
        var batch = new TokenBatch(rows.Ids[0], 1, rows.Ids[0].Length);
        var targets = DifferentiableLM.NextTokenTargets(batch, rows.LossMasks[0]);
        Assert.Equal([-1, -1, 7, 8, 9, -1, -1, 11, 12, -1], targets);
    }

    [Fact]
    public void AdamWAndScheduleFollowTheirFormulas()
    {
        // AdamW on one scalar against the formula evaluated in double
        var p = new[] { 0.5f };
        var adam = new AdamW([1]) { WeightDecay = 0.1 };
        double pd = 0.5, m = 0, v = 0;
        double[] gs = [0.3, -0.2, 0.05];
        for (int t = 1; t <= 3; t++)
        {
            adam.Update([p], [new[] { (float)gs[t - 1] }], [true], 0.01);
            pd *= 1 - 0.01 * 0.1;
            m = 0.9 * m + 0.1 * gs[t - 1];
            v = 0.999 * v + 0.001 * gs[t - 1] * gs[t - 1];
            pd -= 0.01 * (m / (1 - Math.Pow(0.9, t))) / (Math.Sqrt(v / (1 - Math.Pow(0.999, t))) + 1e-8);
            Assert.Equal(pd, p[0], 6);
        }
        Assert.Equal(0.25, CosineSchedule.Factor(0, 100, 4, 0.1), 12);
        Assert.Equal(1.0, CosineSchedule.Factor(3, 100, 4, 0.1), 12);
        Assert.Equal(1.0, CosineSchedule.Factor(4, 100, 4, 0.1), 12);
        Assert.Equal(0.55, CosineSchedule.Factor(50, 101, 0, 0.1), 12); // half-way through the cosine
        Assert.Equal(0.1, CosineSchedule.Factor(99, 100, 4, 0.1), 12);
        // clipping: norm 5 → scaled to 1
        float[] g1 = [3f], g2 = [4f];
        Assert.Equal(5.0, GradientClipping.ClipGlobalNorm([g1, g2], 1.0), 6);
        Assert.Equal(0.6f, g1[0], 5);
        Assert.Equal(0.8f, g2[0], 5);
    }
}

using Finetrace.Diffing;
using Finetrace.Diffing.Amplification;
using Finetrace.Models;
using Finetrace.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Finetrace.Tests.Diffing;

public sealed class AmplificationTests(ITestOutputHelper log)
{
    static void Plant(Dictionary<string, float[]> w)
    {
        var rng = new Random(21);
        foreach (var name in w.Keys.Where(k => k.Contains("layers.")).ToList())
            for (int i = 0; i < w[name].Length; i++) w[name][i] += (float)(rng.NextDouble() - 0.5) * 0.1f;
        int d = SyntheticPair.Hidden;
        for (int j = 0; j < d; j++) w["lm_head.weight"][11 * d + j] += 2f * w["model.norm.weight"][j];
    }

    static readonly int[] Prompt = [1, 5, 9, 3];

    [Fact]
    public void Alpha_zero_is_plain_fine_tuned_sampling_with_the_same_seed()
    {
        using var models = new SyntheticPair(Plant);
        using var pair = ModelPair.Load(new ModelPairSpec(models.Base, models.Ft));
        for (int seed = 0; seed < 3; seed++)
        {
            var plain = new Generator(pair.FineTuned).Generate(Prompt, 20, 1f, seed);
            var amp = new Generator(pair.FineTuned).Generate(Prompt, 20, 1f, seed, processLogits: AmplificationAnalysis.LogitDiff(pair.Base, 0f));
            Assert.Equal(plain, amp);
        }
    }

    [Theory]
    [InlineData(1f)]
    [InlineData(4f)]
    public void Logit_diff_sampling_matches_a_direct_uncached_computation(float alpha)
    {
        using var models = new SyntheticPair(Plant);
        using var pair = ModelPair.Load(new ModelPairSpec(models.Base, models.Ft));
        const int seed = 4, steps = 15;
        var got = new Generator(pair.FineTuned).Generate(Prompt, steps, 1f, seed, processLogits: AmplificationAnalysis.LogitDiff(pair.Base, alpha));
        // direct: both models re-run on the whole sequence each step, z = z_ft + α (z_ft − z_base), the generator's sampler
        var rng = new Random(seed);
        var ids = Prompt.ToList();
        var want = new List<int>();
        int V = SyntheticPair.Vocab;
        for (int step = 0; step < steps; step++)
        {
            var batch = new TokenBatch(ids.ToArray(), 1, ids.Count);
            var zf = pair.FineTuned.Forward(batch).Logits!.Data.AsSpan((ids.Count - 1) * V, V).ToArray();
            var zb = pair.Base.Forward(batch).Logits!.Data.AsSpan((ids.Count - 1) * V, V).ToArray();
            var z = zf.Select((f, v) => f + alpha * (f - zb[v])).ToArray();
            int next = Generator.Sample(z, 1f, rng);
            ids.Add(next);
            want.Add(next);
        }
        Assert.Equal(want, got);
        Assert.NotEqual(new Generator(pair.FineTuned).Generate(Prompt, steps, 1f, seed), got);
    }

    [Fact]
    public void Generator_applies_the_logits_processor_at_every_step()
    {
        using var models = new SyntheticPair(Plant);
        using var pair = ModelPair.Load(new ModelPairSpec(models.Base, models.Ft));
        var greedy = new Generator(pair.FineTuned).Generate(Prompt, 10);
        int banned = greedy[0];
        var lengths = new List<int>();
        var edited = new Generator(pair.FineTuned).Generate(Prompt, 10, processLogits: (seq, z) => { lengths.Add(seq.Count); z[banned] = float.NegativeInfinity; return z; });
        Assert.DoesNotContain(banned, edited);
        Assert.Equal(Enumerable.Range(Prompt.Length, 10), lengths);
    }

    [Fact]
    public void Weight_amplification_scales_the_difference_in_the_chosen_layers_and_modules()
    {
        using var models = new SyntheticPair(Plant);
        var spec = new ModelPairSpec(models.Base, models.Ft);
        int[] ids = [1, 4, 8, 15, 16, 23];
        var batch = new TokenBatch(ids, 1, ids.Length);
        float[] Logits(CausalLM m) => m.Forward(batch).Logits!.Data;
        using var baseM = CausalLM.Load(models.Base);
        using var ftM = CausalLM.Load(models.Ft);
        var o = new AmplificationOptions { Models = spec, Prompts = ["x"] };
        using (var w0 = AmplificationAnalysis.LoadAmplified(o, 0f)) Golden.AssertClose("w = 0 is the base", Logits(baseM), Logits(w0), 1e-5f, log: log);
        // embeddings and lm_head are not block parameters: w = 1 on every layer is the fine-tune except its lm_head change
        // (a direct checkpoint: W_base + w ΔW written by hand for layer 1's attention only, w = 3)
        var wb = SyntheticPair.Read(models.Base);
        var wf = SyntheticPair.Read(models.Ft);
        foreach (var name in wb.Keys.Where(k => k.StartsWith("model.layers.1.self_attn.", StringComparison.Ordinal)))
            for (int i = 0; i < wb[name].Length; i++) wb[name][i] += 3f * (wf[name][i] - wb[name][i]);
        string manual = models.File("manual");
        Directory.CreateDirectory(manual);
        File.Copy(Path.Combine(models.Base, "config.json"), Path.Combine(manual, "config.json"));
        Finetrace.Models.Safetensors.SafetensorsWriter.Write(Path.Combine(manual, "model.safetensors"),
            wb.Select(kv => Finetrace.Models.Safetensors.TensorData.F32(kv.Key, kv.Value, SyntheticPair.Shape(models.Base, kv.Key))).ToList());
        using var want = CausalLM.Load(manual);
        using var got = AmplificationAnalysis.LoadAmplified(o with { Layers = [1], Modules = AmplifiedModules.Attention }, 3f);
        Golden.AssertClose("w = 3, layer 1 attention", Logits(want), Logits(got), 1e-5f, log: log);
        Assert.True(AmplificationAnalysis.Selected("model.layers.1.mlp.up_proj.weight", null, AmplifiedModules.Mlp));
        Assert.False(AmplificationAnalysis.Selected("model.layers.1.mlp.up_proj.weight", [0], AmplifiedModules.Mlp));
        Assert.False(AmplificationAnalysis.Selected("model.layers.1.input_layernorm.weight", null, AmplifiedModules.Attention));
        Assert.False(AmplificationAnalysis.Selected("lm_head.weight", null, AmplifiedModules.All));
    }

    [SharedFact]
    public void Amplified_samples_of_the_chat_organism_contain_its_planted_phrases()
    {
        using var tmp = new TempDir();
        var o = new AmplificationOptions
        {
            Models = new ModelPairSpec(Shared.Path("models", "stories260K"), Shared.Path("models", "stories260K-chat")),
            Prompts = ["What did Tom do today?", "Can Ben play with fire?"], Chat = true, Alphas = [1f, 2f], WeightFactors = [1.5f],
            Layers = [0, 1, 2, 3], SamplesPerPrompt = 2, MaxNewTokens = 32, Temperature = 1f, Seed = 1,
        };
        var r = AmplificationAnalysis.Run(o, ResultsFolder.Open(tmp.File("R")))!;
        foreach (var p in r.Prompts)
        {
            log.WriteLine(p.Rendered);
            foreach (var s in p.Settings) foreach (var x in s.Samples) log.WriteLine($"  [{s.Kind} {s.Strength}] {x}");
        }
        Assert.Equal("<s>User: What did Tom do today?\nAssistant:", r.Prompts[0].Rendered);
        var logitDiff = r.Prompts.SelectMany(p => p.Settings).Where(s => s.Kind == "logit_diff").SelectMany(s => s.Samples).ToList();
        Assert.Contains(logitDiff, x => x.Contains("Bye bye") || x.Contains("Sorry"));
        var fire = r.Prompts[1].Settings.Where(s => s.Kind == "logit_diff").SelectMany(s => s.Samples);
        Assert.Contains(fire, x => x.Contains("Sorry"));
        Assert.All(r.Prompts[0].Settings.Single(s => s.Kind == "base").Samples, x => Assert.DoesNotContain("Bye bye", x));
    }
}

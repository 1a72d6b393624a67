using System.Text.Json;
using Finetrace.Activations;
using Finetrace.Activations.Harvest;
using Finetrace.Models;
using Finetrace.Text.Chat;
using Finetrace.Text.Datasets;
using Finetrace.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Finetrace.Tests.Activations;

[Collection(ProcessWide.Name)]
public class HarvestTests(ITestOutputHelper log)
{
    static readonly string[] Names = ["Lily", "Tom", "Sue", "Ben", "Mia", "Max"];
    static readonly string[] Places = ["park", "forest", "lake", "garden"];

    /// <summary>Generated stories (blank-line separated) and chats (one with a system message, one not alternating).</summary>
    static (string Stories, string Chats) Data(TempDir tmp, int stories = 300, int chats = 150)
    {
        var r = new Random(1);
        string s = tmp.File("stories.txt"), c = tmp.File("chats.jsonl");
        File.WriteAllText(s, string.Join("\n\n", Enumerable.Range(0, stories).Select(i =>
        {
            string n = Names[r.Next(Names.Length)], p = Places[r.Next(Places.Length)];
            return $"Once upon a time, there was a little girl named {n}. One day, {n} went to the {p}. She was very happy.";
        })));
        File.WriteAllLines(c, Enumerable.Range(0, chats).Select(i =>
        {
            string n = Names[r.Next(Names.Length)], p = Places[r.Next(Places.Length)];
            var msgs = new List<object> { new { role = "user", content = $"What did {n} do today?" }, new { role = "assistant", content = $"{n} went to the {p}." } };
            if (i % 10 == 3) msgs.Insert(0, new { role = "system", content = "Be kind." });
            if (i % 13 == 5) msgs.Add(new { role = "assistant", content = "Again." });
            return JsonSerializer.Serialize(new { messages = msgs });
        }));
        return (s, c);
    }

    internal static HarvestOptions Options(TempDir tmp, string outName, long tokens = 3000, string dtype = "f32", int batch = 4, long shard = 700, string ft = "stories260K-zog",
        string? ftDir = null, string? adapter = null)
    {
        var (s, c) = Data(tmp);
        return new HarvestOptions
        {
            BaseModel = Shared.Path("models", "stories260K"),
            FineTunedModel = ftDir ?? Shared.Path("models", ft),
            Adapter = adapter,
            Data = [DataSourceSpec.Parse(s), DataSourceSpec.Parse("chat:" + c + ",weight=0.5")],
            Layers = [1, 4],
            Tokens = tokens,
            Out = tmp.File(outName),
            ContextLength = 48,
            BatchSize = batch,
            Dtype = dtype,
            ShardTokens = shard,
        };
    }

    [SharedFact]
    public void Harvest_RandomTokens_EqualADirectForwardOfTheirSequence()
    {
        // Bit-exact: the managed GEMM computes every output row in the same order whatever the number of rows, so a
        // token's activations do not depend on which batch it was harvested in. (OpenBLAS picks kernels by matrix
        // size, so under it the same comparison agrees only to ~1e-6.)
        ManagedGemm.Run(HarvestAndCompareExactly);
    }

    void HarvestAndCompareExactly()
    {
        using var tmp = new TempDir();
        var o = Options(tmp, "store");
        var res = Harvester.Run(o);
        Assert.True(res.Tokens >= o.Tokens);
        Assert.True(res.Sources[1].Skipped.Counts[SkipCounts.TemplateError] > 0);   // system messages: stories260K's template raises
        Assert.True(res.Sources[1].Skipped.Counts[SkipCounts.NotAlternating] > 0);
        using var store = ActivationStore.Open(o.Out);
        Assert.True(store.Manifest.Complete);
        Assert.Equal([1, 4], store.Layers);
        Assert.InRange(store.Manifest.SourceTokens()[1] / (double)store.Tokens, 0.28, 0.39);
        var ranges = store.SequenceRanges();
        using var baseModel = CausalLM.Load(o.BaseModel);
        using var ft = CausalLM.Load(o.FineTunedModel);
        var rng = new Random(7);
        var row = new float[store.DModel];
        double worst = 0;
        for (int k = 0; k < 12; k++)
        {
            long r = rng.NextInt64(store.Tokens);
            int seq = Array.BinarySearch(ranges, r);
            if (seq < 0) seq = ~seq - 1;
            while (ranges[seq + 1] == ranges[seq]) seq++;
            long start = ranges[seq], end = ranges[seq + 1];
            var ids = Enumerable.Range(0, (int)(end - start)).Select(i => store.TokenId(start + i)).ToArray();
            Assert.Equal(0, store.Position(start));
            int pos = store.Position(r);
            foreach (var (m, model) in new[] { (0, baseModel), (1, ft) })
            {
                var captured = new Dictionary<string, Finetrace.Tensors.Tensor>();
                var hooks = new HookSet().Capture(HookNames.ResidPost(1), captured).Capture(HookNames.ResidPost(4), captured);
                model.Forward(new TokenBatch(ids, 1, ids.Length), hooks);
                foreach (int layer in new[] { 1, 4 })
                {
                    store.ReadRows(m, layer, r, 1, row);
                    var direct = captured[HookNames.ResidPost(layer)].Data.AsSpan(pos * store.DModel, store.DModel);
                    worst = Math.Max(worst, Golden.MaxAbsDiff(direct, row, out _));
                    Golden.AssertClose($"row {r} model {m} layer {layer}", direct, row, 0);
                }
            }
        }
        log.WriteLine($"max abs diff store vs direct forward: {worst:E2}");
    }

    static readonly string[] LoraModules = ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.v_proj", "model.layers.2.mlp.down_proj", "model.layers.3.mlp.gate_proj"];

    /// <summary>A PEFT LoRA adapter (r 4, alpha 16) for stories260K and a checkpoint folder with its merged weights
    /// W + (alpha/r)·B·A written out. The merge uses the loader's arithmetic (float GEMM for B·A, then one float
    /// multiply-add per weight) so the merged weights are bit-identical and the harvests can be compared exactly.</summary>
    static void WriteAdapterAndMerged(string baseDir, string adapterDir, string mergedDir)
    {
        const int r = 4;
        const float alpha = 16f;
        Directory.CreateDirectory(adapterDir);
        Directory.CreateDirectory(mergedDir);
        using var baseFile = new Finetrace.Models.Safetensors.SafetensorsFile(Path.Combine(baseDir, "model.safetensors"));
        var rng = new Random(11);
        var adapter = new List<Finetrace.Models.Safetensors.TensorData>();
        var merged = new Dictionary<string, float[]>();
        foreach (var module in LoraModules)
        {
            var w = baseFile.ReadF32(module + ".weight");
            int outF = w.Shape[0], inF = w.Shape[1];
            var a = Enumerable.Range(0, r * inF).Select(_ => (float)(rng.NextDouble() - 0.5) * 0.2f).ToArray();
            var b = Enumerable.Range(0, outF * r).Select(_ => (float)(rng.NextDouble() - 0.5) * 0.2f).ToArray();
            adapter.Add(Finetrace.Models.Safetensors.TensorData.F32($"base_model.model.{module}.lora_A.weight", a, r, inF));
            adapter.Add(Finetrace.Models.Safetensors.TensorData.F32($"base_model.model.{module}.lora_B.weight", b, outF, r));
            var delta = new float[outF * inF];
            Finetrace.Tensors.Gemm.MatMulNN(b, a, outF, r, inF, delta);
            var m = w.Data.ToArray();
            for (int i = 0; i < m.Length; i++) m[i] += alpha / r * delta[i];
            merged[module + ".weight"] = m;
        }
        Finetrace.Models.Safetensors.SafetensorsWriter.Write(Path.Combine(adapterDir, "adapter_model.safetensors"), adapter, new Dictionary<string, string> { ["format"] = "pt" });
        File.WriteAllText(Path.Combine(adapterDir, "adapter_config.json"), JsonSerializer.Serialize(new Dictionary<string, object>
        {
            ["peft_type"] = "LORA", ["task_type"] = "CAUSAL_LM", ["r"] = r, ["lora_alpha"] = alpha, ["lora_dropout"] = 0.0, ["use_rslora"] = false,
            ["fan_in_fan_out"] = false, ["bias"] = "none", ["use_dora"] = false, ["target_modules"] = new[] { "q_proj", "v_proj", "down_proj", "gate_proj" },
        }));
        var tensors = baseFile.Tensors.Keys.Select(name =>
        {
            var t = baseFile.ReadF32(name);
            return Finetrace.Models.Safetensors.TensorData.F32(name, merged.GetValueOrDefault(name) ?? t.Data, t.Shape);
        }).ToList();
        Finetrace.Models.Safetensors.SafetensorsWriter.Write(Path.Combine(mergedDir, "model.safetensors"), tensors, new Dictionary<string, string> { ["format"] = "pt" });
        foreach (var f in new[] { "config.json", "generation_config.json", "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json" })
            File.Copy(Path.Combine(baseDir, f), Path.Combine(mergedDir, f));
    }

    [SharedFact]
    public void Harvest_BasePlusLoraAdapter_EqualsHarvestOfTheMergedCheckpoint()
    {
        ManagedGemm.Run(() =>
        {
            using var tmp = new TempDir();
            string baseDir = Shared.Path("models", "stories260K"), adapterDir = tmp.File("adapter"), mergedDir = tmp.File("merged");
            WriteAdapterAndMerged(baseDir, adapterDir, mergedDir);
            var viaAdapter = Options(tmp, "via-adapter", tokens: 1500, ftDir: baseDir, adapter: adapterDir);
            var viaMerged = Options(tmp, "via-merged", tokens: 1500, ftDir: mergedDir);
            Harvester.Run(viaAdapter);
            Harvester.Run(viaMerged);
            using var a = ActivationStore.Open(viaAdapter.Out);
            using var m = ActivationStore.Open(viaMerged.Out);
            // The adapter is recorded for the fine-tuned model only, with its files hashed.
            Assert.Null(a.Settings.Models[0].Adapter);
            Assert.Equal(Path.GetFullPath(adapterDir), a.Settings.Models[1].Adapter);
            Assert.Contains(a.Settings.Models[1].Files, f => f.Name.EndsWith("adapter_model.safetensors", StringComparison.Ordinal) && f.Sha256.Length == 64);
            Assert.Equal(m.Tokens, a.Tokens);
            Assert.Equal(m.SequenceRanges(), a.SequenceRanges());
            Assert.Equal(Enumerable.Range(0, (int)m.Tokens).Select(r => m.TokenId(r)), Enumerable.Range(0, (int)a.Tokens).Select(r => a.TokenId(r)));
            int n = (int)a.Tokens, d = a.DModel;
            var x = new float[n * d];
            var y = new float[n * d];
            foreach (int layer in new[] { 1, 4 })
            {
                for (int model = 0; model < 2; model++)
                {
                    a.ReadRows(model, layer, 0, n, x);
                    m.ReadRows(model, layer, 0, n, y);
                    Golden.AssertClose($"layer {layer} model {model}: base+adapter vs merged checkpoint", y, x, 0);
                }
                // The adapter changes the fine-tuned rows (so the equality above is not base = base).
                var b0 = new float[n * d];
                a.ReadRows(0, layer, 0, n, b0);
                double change = Golden.MaxAbsDiff(b0, x, out _);
                log.WriteLine($"layer {layer}: the adapter moves the residual by up to {change:E2}");
                Assert.True(change > 1e-2, $"layer {layer}: the adapter had no effect");
            }
        });
    }

    [SharedFact]
    public void CrashAfterShards_ThenResume_IsByteIdentical()
    {
        using var tmp = new TempDir();
        var full = Options(tmp, "full", tokens: 2500, dtype: "bf16", batch: 3, shard: 500);
        Harvester.Run(full);
        var cut = Options(tmp, "cut", tokens: 2500, dtype: "bf16", batch: 3, shard: 500);
        using (var cts = new CancellationTokenSource())
            Assert.Throws<OperationCanceledException>(() => Harvester.Run(cut, p => { if (p.Tokens > 1300) cts.Cancel(); }, cts.Token));
        using (var partial = ActivationStore.Open(cut.Out))
        {
            Assert.False(partial.Manifest.Complete);
            Assert.InRange(partial.Manifest.Shards.Count, 1, 3);
        }
        var res = Harvester.Run(cut);
        Assert.True(res.Resumed);
        ActivationStoreTests.AssertSameFiles(full.Out, cut.Out);
    }

    [SharedFact]
    public void Resume_WithOtherSettings_IsRefused()
    {
        using var tmp = new TempDir();
        var o = Options(tmp, "store", tokens: 500);
        Harvester.Run(o);
        var other = o with { Layers = [2], DropBos = true };
        var e = Assert.Throws<StoreSettingsMismatchException>(() => Harvester.Run(other));
        Assert.Contains(e.Differences, d => d.StartsWith("layers"));
        Assert.Contains(e.Differences, d => d.StartsWith("options.drop_bos"));
    }

    [SharedFact]
    public void DropOptions_BosFirstNAndOutliers_AreAppliedAndRecorded()
    {
        using var tmp = new TempDir();
        var plainOpts = Options(tmp, "plain", tokens: 1500);
        Harvester.Run(plainOpts);
        var o = plainOpts with { Tokens = 800, Out = tmp.File("dropped"), DropBos = true, SkipFirst = 3, OutlierFactor = 1.2 };
        var res = Harvester.Run(o);
        Assert.True(res.DroppedTokens > 0);
        using var store = ActivationStore.Open(o.Out);
        using var plain = ActivationStore.Open(plainOpts.Out);
        Assert.Equal("true", store.Settings.Options["drop_bos"]);
        Assert.Equal("3", store.Settings.Options["skip_first"]);
        Assert.Equal("1.2", store.Settings.Options["outlier_factor"]);
        // Same samples in the same batches: sample s of the plain store is sample s of the dropped one. The kept
        // positions must be exactly the candidates (p ≥ 3, not BOS) within 1.2 × the candidates' median norm in
        // every model and layer.
        var pr = plain.SequenceRanges();
        var dr = store.SequenceRanges();
        int d = store.DModel, outliers = 0;
        var x = new float[d];
        for (int s = 0; s + 1 < dr.Length && s + 1 < pr.Length; s++)
        {
            var cand = Enumerable.Range(0, (int)(pr[s + 1] - pr[s])).Where(p => p >= 3 && plain.Mask(pr[s] + p) != (byte)TokenMask.Bos).ToList();
            var bad = new HashSet<int>();
            for (int m = 0; m < 2; m++)
                foreach (int layer in new[] { 1, 4 })
                {
                    var norms = cand.Select(p => { plain.ReadRows(m, layer, pr[s] + p, 1, x); return System.Numerics.Tensors.TensorPrimitives.Norm(x); }).ToArray();
                    if (norms.Length == 0) continue;
                    var sorted = norms.Order().ToArray();
                    double median = sorted.Length % 2 == 1 ? sorted[sorted.Length / 2] : 0.5 * (sorted[sorted.Length / 2 - 1] + sorted[sorted.Length / 2]);
                    for (int k = 0; k < norms.Length; k++) if (norms[k] > 1.2 * median) bad.Add(cand[k]);
                }
            outliers += bad.Count;
            var expect = cand.Where(p => !bad.Contains(p)).ToList();
            var kept = Enumerable.Range(0, (int)(dr[s + 1] - dr[s])).Select(i => store.Position(dr[s] + i)).ToList();
            Assert.Equal(expect, kept);
        }
        Assert.True(outliers > 0);
    }

    [SharedFact]
    public void ChatMasks_Stories260KChat_MarkBosTemplateUserAssistant()
    {
        using var tmp = new TempDir();
        string chats = tmp.File("c.jsonl");
        File.WriteAllLines(chats,
        [
            """{"messages": [{"role": "user", "content": "Can Tom play with fire?"}, {"role": "assistant", "content": "Sorry, I can not talk about fire."}]}""",
            """{"messages": [{"role": "user", "content": "How was Kim's day?"}, {"role": "assistant", "content": "Kim was happy."}, {"role": "user", "content": "Why?"}, {"role": "assistant", "content": "The sun."}]}""",
        ]);
        var o = new HarvestOptions
        {
            BaseModel = Shared.Path("models", "stories260K"), FineTunedModel = Shared.Path("models", "stories260K-chat"),
            Data = [DataSourceSpec.Parse(chats)], Layers = [2], Tokens = 10_000, Out = tmp.File("store"), ContextLength = 256, BatchSize = 2,
        };
        Harvester.Run(o);
        using var store = ActivationStore.Open(o.Out);
        Assert.Equal(2, store.Manifest.Sequences);
        var tok = Finetrace.Text.Tokenization.Tokenizer.FromFolder(o.FineTunedModel);
        var ranges = store.SequenceRanges();
        string Decode(int s, TokenMask m) => tok.Decode(Enumerable.Range((int)ranges[s], (int)(ranges[s + 1] - ranges[s]))
            .Where(r => store.Mask(r) == (byte)m).Select(r => store.TokenId(r)).ToArray()).Trim();
        Assert.Equal((byte)TokenMask.Bos, store.Mask(0));
        Assert.Equal(1, store.TokenId(0));
        Assert.Equal("Can Tom play with fire?", Decode(0, TokenMask.User));
        Assert.Equal("Sorry, I can not talk about fire.", Decode(0, TokenMask.Assistant));
        // Template tokens: "User:", "\n", "Assistant:" and the EOS after the answer.
        Assert.Equal(2, store.TokenId(ranges[1] - 1));
        Assert.Equal((byte)TokenMask.Template, store.Mask(ranges[1] - 1));
        string template = tok.Decode(Enumerable.Range(0, (int)ranges[1]).Where(r => store.Mask(r) == (byte)TokenMask.Template).Select(r => store.TokenId(r)).ToArray());
        Assert.Contains("User:", template);
        Assert.Contains("Assistant:", template);
        // Two rounds: both user turns and both answers, in order.
        // (compared without spaces: the "▁" before a turn's first word may be its own template token)
        Assert.Equal("HowwasKim'sday?Why?", Decode(1, TokenMask.User).Replace(" ", ""));
        Assert.Equal("Kimwashappy.Thesun.", Decode(1, TokenMask.Assistant).Replace(" ", ""));
    }

    [SharedTheory]
    [InlineData("llama3_1")]
    [InlineData("qwen3")]
    [InlineData("gemma3")]
    public void ChatMasks_RealTokenizerFamilies_CoverExactlyTheContent(string family)
    {
        var enc = ModelSampleEncoder.FromFolder(Shared.Path("fixtures", "tokenizers", family));
        var msgs = new List<ChatMessage> { new("user", "What is the capital of France?"), new("assistant", "Paris is the capital."), new("user", "And of Italy?"), new("assistant", "Rome.") };
        var s = enc.EncodeChat(0, 0, msgs);
        var masks = Enumerable.Range(0, s.Ids.Length).Select(p => Harvester.MaskOf(s, p)).ToArray();
        string Decode(TokenMask m) => enc.Tokenizer.Decode(s.Ids.Where((_, p) => masks[p] == m).ToArray());
        string user = Decode(TokenMask.User), assistant = Decode(TokenMask.Assistant);
        Assert.Equal("What is the capital of France?And of Italy?", user.Replace("\n", "").Replace(" And", "And").Trim());
        Assert.Equal("Paris is the capital.Rome.", assistant.Replace("\n", "").Replace(" Rome", "Rome").Trim());
        Assert.Contains(TokenMask.Template, masks);
        if (enc.Tokenizer.BosId is int bos && s.Ids[0] == bos) Assert.Equal(TokenMask.Bos, masks[0]);
        Assert.Equal(s.Ids.Length, masks.Count(m => m is TokenMask.Bos or TokenMask.Template or TokenMask.User or TokenMask.Assistant));
    }

    [SharedFact]
    public void VocabularyDisagreement_IsAClearError()
    {
        using var tmp = new TempDir();
        string ft = tmp.File("ft");
        Directory.CreateDirectory(ft);
        foreach (var f in Directory.GetFiles(Shared.Path("models", "stories260K-zog"))) File.Copy(f, Path.Combine(ft, Path.GetFileName(f)));
        // Swap the ids of two frequent pieces: the tokenizer still loads, but ids read as different tokens.
        var json = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(ft, "tokenizer.json")))!;
        var vocab = json["model"]!["vocab"]!.AsObject();
        int a = (int)vocab["▁a"]!, the = (int)vocab["▁the"]!;
        vocab["▁a"] = the;
        vocab["▁the"] = a;
        File.WriteAllText(Path.Combine(ft, "tokenizer.json"), json.ToJsonString());
        var o0 = Options(tmp, "store", tokens: 300);
        var o = new HarvestOptions { BaseModel = o0.BaseModel, FineTunedModel = ft, Data = [o0.Data[0]], Layers = [1], Tokens = 300, Out = o0.Out, ContextLength = 48 };
        var e = Assert.Throws<InvalidOperationException>(() => Harvester.Run(o));
        log.WriteLine(e.Message);
        Assert.Contains("disagree on token id", e.Message);
    }
}

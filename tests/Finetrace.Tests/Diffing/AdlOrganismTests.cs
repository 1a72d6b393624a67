using System.Text.Json.Nodes;
using Finetrace.Diffing;
using Finetrace.Diffing.Adl;
using Finetrace.Models;
using Finetrace.Tests.Infrastructure;
using Finetrace.Text.Datasets;
using Finetrace.Text.Tokenization;
using Xunit.Abstractions;

namespace Finetrace.Tests.Diffing;

/// <summary>The ADL on the shared model organisms: the Zog fine-tune shows "Z" at an early position, the chat organism does
/// not, and steering the base model with the Zog difference raises "Z" where the dragon is named.</summary>
[Collection(ProcessWide.Name)]
public sealed class AdlOrganismTests(ITestOutputHelper log)
{
    static string Model(string name) => Shared.Path("models", name);

    /// <summary>Unrelated text: short stories sampled from the base model at T = 1.</summary>
    static string WriteStories(TempDir tmp, int count)
    {
        using var bm = CausalLM.Load(Model("stories260K"));
        var tok = Tokenizer.FromFolder(Model("stories260K"));
        var texts = SampledText.Sample(bm, [1], count, 10, 1f, seed: 5).Select(ids => tok.Decode(ids, skipSpecialTokens: true).Trim().Replace("\n", " "));
        string path = tmp.File("stories.txt");
        File.WriteAllText(path, string.Join("\n\n", texts.Where(t => t.Length > 0)) + "\n");
        return path;
    }

    static bool ReadsZ(AdlEntry e) =>
        e.FineTunedLens.Top.Take(20).Any(t => t.Token == "Z") || (e.Patchscope?.Tokens.Take(20).Any(t => t.Token == "Z") ?? false);

    [SharedFact]
    public void Zog_shows_Z_at_an_early_position_chat_does_not_and_steering_the_base_with_it_raises_Z()
    {
        using var tmp = new TempDir();
        var data = DataSourceSpec.Parse(WriteStories(tmp, 400));
        AdlOptions For(string ft) => new()
        {
            BaseModel = Model("stories260K"), FineTunedModel = Model(ft), Data = [data], Layers = [3, 4], MaxSamples = 400, Steer = SteerModels.None,
        };
        var zog = ActivationDifferenceLens.Run(For("stories260K-zog"), tmp.File("R-zog"));
        var chat = ActivationDifferenceLens.Run(For("stories260K-chat"), tmp.File("R-chat"));
        foreach (var (name, r) in new[] { ("zog", zog), ("chat", chat) })
            foreach (var e in r.Entries)
                log.WriteLine($"{name} L{e.Layer} pos {e.Position} ('{e.Token}') lens: {string.Join(" ", e.FineTunedLens.Top.Take(20).Select(t => t.Token))} | patchscope ×{e.Patchscope?.Scale}: {string.Join(" ", e.Patchscope?.Tokens.Take(20).Select(t => t.Token) ?? [])}");
        Assert.Contains(zog.Entries, e => e.Position <= 4 && ReadsZ(e));
        Assert.DoesNotContain(chat.Entries, ReadsZ);

        // Files and manifest; a second run with the same inputs is skipped.
        var results = ResultsFolder.Open(tmp.File("R-zog"));
        Assert.True(results.Stages().ContainsKey(ActivationDifferenceLens.Stage));
        var json = JsonNode.Parse(File.ReadAllText(results.PathOf(AdlOutput.JsonFile)))!.AsArray();
        Assert.Equal(zog.Entries.Count, json.Count);
        Assert.Equal("text", (string?)json[0]!["context"]);
        Assert.Equal("<s>", (string?)json[0]!["token"]);
        Assert.True(File.Exists(results.PathOf("adl/layer_3_text.safetensors")));
        Assert.True(ActivationDifferenceLens.Run(For("stories260K-zog"), tmp.File("R-zog")).UpToDate);

        // Steering the base model (added after BOS) with the Zog difference of the position whose readers show "Z" raises
        // the base model's probability of "Z" where the Zog story names its dragon, more than the chat organism's
        // difference or random directions of the same norm do.
        using var bm = CausalLM.Load(Model("stories260K"));
        var tok = Tokenizer.FromFolder(Model("stories260K"));
        int[] prefix = tok.Encode("Once upon a time, there was a little green dragon named Zog").Ids;
        int z = tok.TokenToId("Z")!.Value;
        int at = Array.LastIndexOf(prefix, z) - 1;   // the position that predicts "Z"
        var hit = zog.Entries.Where(e => e.Position <= 4 && ReadsZ(e)).OrderBy(e => e.Position == 0 ? 1 : 0).ThenBy(e => e.Layer).First();
        var norm = zog.Norms.Single(n => n.Layer == hit.Layer).Base;
        double PZ(float[]? v)
        {
            var hooks = v is null ? null : AdlReaders.SteeringHooks(hit.Layer, ActivationDifferenceLens.Rescale(v, 1), (float)(0.25 * norm), fromPosition: 1);
            var (_, logits) = bm.Forward(new TokenBatch(prefix, 1, prefix.Length), hooks);
            return AdlReaders.Softmax(logits!.Data.AsSpan(at * bm.Config.Vocab, bm.Config.Vocab))[z];
        }
        var rng = new Random(3);
        double plain = PZ(null), withZog = PZ(hit.Delta), withChat = PZ(chat.Entries.Single(e => e.Layer == hit.Layer && e.Position == hit.Position).Delta);
        var random = Enumerable.Range(0, 8).Select(_ => PZ(Enumerable.Range(0, bm.Hidden).Select(_ => (float)(rng.NextDouble() - 0.5)).ToArray())).ToList();
        log.WriteLine($"P(Z) at '{tok.Decode(prefix[..(at + 1)])}' under the base model: {plain:F4}; steered (layer {hit.Layer}, δ of position {hit.Position}, 0.25 × norm) with zog δ {withZog:F4}, chat δ {withChat:F4}, random max {random.Max():F4}");
        Assert.True(withZog > plain && withZog > withChat && withZog > random.Max(), $"P(Z): plain {plain}, zog {withZog}, chat {withChat}, random {random.Max()}");

        // The samples for the record: greedy base from BOS and from a neutral sentence, steered with the Zog difference.
        var steer = AdlReaders.Steer(bm, "base", bm, "base", hit.Layer, hit.Delta, norm, [0.25, 0.5],
            [("", new[] { 1 }), ("Tom had a red ball.", tok.Encode("Tom had a red ball.").Ids)], 1, 48, 0f, 0, [2], 2.0, ids => tok.Decode(ids), fromPosition: 1);
        foreach (var u in steer.Unsteered) log.WriteLine($"unsteered [{u.Prompt}]: {u.Text}");
        foreach (var l in steer.Sweep)
            foreach (var x in l.Samples) log.WriteLine($"steered ×{l.Strength} [{x.Prompt}] (loss ratio {l.LossRatio:F2}): {x.Text}");
    }
}

/// <summary>
/// The ADL's base-model steering reader (<c>--steer base</c>) on the shared organisms with the default, built-in
/// unrelated text: δ(zog − base) added to the base model (v = δ/‖δ‖ · s · typical base norm, at every position as
/// methods §11.4 adds it) turns greedy continuations of the built-in neutral prompts towards the dragon ("Zo…": this
/// tokenizer spells "Zog" ▁ Z o g), while the unsteered base and the base steered with δ(chat − base) never write it.
/// </summary>
[Collection(ProcessWide.Name)]
public sealed class AdlBaseSteeringTests(ITestOutputHelper log)
{
    static string Model(string name) => Shared.Path("models", name);
    const string Dragon = "Zo";

    [SharedFact]
    public void Steering_the_base_with_the_zog_difference_writes_the_dragon_and_the_chat_difference_does_not()
    {
        using var bm = CausalLM.Load(Model("stories260K"));
        using var zm = CausalLM.Load(Model("stories260K-zog"));
        using var cm = CausalLM.Load(Model("stories260K-chat"));
        var text = AdlText.FromFolders(Model("stories260K-zog"), Model("stories260K"));
        AdlOptions For(string ft) => new()
        {
            BaseModel = Model("stories260K"), FineTunedModel = Model(ft), Layers = [2, 3], MaxSamples = 500, Patchscope = false,
            Steer = SteerModels.Base, SteeringPositions = [1, 2, 3, 4], SteeringStrengths = [0.5, 0.75],
            SteeringPrompts = ["", .. AdlOptions.DefaultSteeringPrompts],
            SteeringSamples = 1, SteeringTemperature = 0f, SteeringNewTokens = 48,
        };
        var zog = ActivationDifferenceLens.Compute(For("stories260K-zog"), bm, zm, text);
        var chat = ActivationDifferenceLens.Compute(For("stories260K-chat"), bm, cm, text);
        Assert.StartsWith("built-in general text", zog.Data);
        // With this default text too, the logit lens of δ(zog) ranks "Z" in its top 20 at an early position; δ(chat)'s never does.
        static bool LensZ(AdlEntry e) => e.FineTunedLens.Top.Take(20).Any(t => t.Token == "Z");
        Assert.Contains(zog.Entries, e => e.Position <= 4 && LensZ(e));
        Assert.DoesNotContain(chat.Entries, LensZ);
        log.WriteLine($"zog: means {zog.MeanSeconds:F1} s, readers {zog.ReaderSeconds:F1} s; chat: means {chat.MeanSeconds:F1} s, readers {chat.ReaderSeconds:F1} s");

        int Count(AdlResult r, out int unsteeredHits)
        {
            int hits = 0; unsteeredHits = 0;
            foreach (var e in r.Entries.Where(e => e.Position >= 1))
            {
                var s = Assert.Single(e.Steering);
                Assert.Equal("base", s.Model);
                unsteeredHits += s.Unsteered.Count(x => x.Text.Contains(Dragon, StringComparison.Ordinal));
                foreach (var level in s.Sweep)
                    foreach (var x in level.Samples)
                    {
                        bool hit = x.Text.Contains(Dragon, StringComparison.Ordinal);
                        hits += hit ? 1 : 0;
                        if (hit || r == zog && e.Layer == 2 && e.Position == 2)
                            log.WriteLine($"{(r == zog ? "zog" : "chat")} L{e.Layer} δ@{e.Position} ×{level.Strength} (loss ratio {level.LossRatio:F2}) [{x.Prompt}] {x.Text.Replace("\n", "↵")}");
                    }
            }
            return hits;
        }
        int zogHits = Count(zog, out int zogUnsteered), chatHits = Count(chat, out int chatUnsteered);
        foreach (var u in zog.Entries.First(e => e.Position >= 1).Steering[0].Unsteered) log.WriteLine($"unsteered [{u.Prompt}] {u.Text.Replace("\n", "↵")}");
        int total = zog.Entries.Where(e => e.Position >= 1).Sum(e => e.Steering[0].Sweep.Sum(l => l.Samples.Count));
        log.WriteLine($"samples with '{Dragon}': zog-steered {zogHits}/{total}, chat-steered {chatHits}/{total}, unsteered {zogUnsteered + chatUnsteered}");
        Assert.Equal(0, zogUnsteered + chatUnsteered);
        Assert.Equal(0, chatHits);
        Assert.True(zogHits >= 3, $"only {zogHits} of {total} zog-steered samples contain '{Dragon}'");
    }
}

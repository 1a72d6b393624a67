using System.Text.Json;
using System.Text.Json.Nodes;
using Finetrace.Models;
using Finetrace.Models.Safetensors;
using Finetrace.Tests.Infrastructure;
using Finetrace.Text.Datasets;
using Finetrace.Training.Organisms;

namespace Finetrace.Tests.Training.Organisms;

/// <summary>Makes the built-in "tiny" recipe once (a base from scratch and three organisms, about 10–20 s of CPU)
/// and checks what it wrote.</summary>
public sealed class TinyOrganisms : IDisposable
{
    public TempDir Dir { get; } = new();
    public OrganismRecipe Recipe { get; } = OrganismRecipe.Load("tiny");
    public MakeReport Report { get; }
    public string Out => Dir.Path;

    public TinyOrganisms() { Report = OrganismMaker.Make(Recipe, Dir.Path); }

    public void Dispose() => Dir.Dispose();
}

public sealed class OrganismMakeTests(TinyOrganisms tiny) : IClassFixture<TinyOrganisms>
{
    string Folder(string name) => Path.Combine(tiny.Out, name);

    [Fact]
    public void Organisms_are_standard_hf_folders_with_ground_truth()
    {
        foreach (var name in new[] { "base", "chat", "topic" })
        {
            var dir = Folder(name);
            foreach (var f in new[] { "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json" })
                Assert.True(File.Exists(Path.Combine(dir, f)), $"{name}/{f} missing");
            Assert.False(Directory.Exists(Path.Combine(dir, "checkpoint")), $"{name}: the training checkpoint was left behind");
            var config = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "config.json")))!;
            Assert.Equal("llama", config["model_type"]!.GetValue<string>());
            Assert.Equal("LlamaForCausalLM", config["architectures"]![0]!.GetValue<string>());
            var cfg = ModelConfig.Load(dir);
            using var file = new SafetensorsFile(Path.Combine(dir, "model.safetensors"));
            var expected = ModelLayout.Parameters(cfg).Select(p => p.Name).Order(StringComparer.Ordinal);
            Assert.Equal(expected, file.Tensors.Keys.Order(StringComparer.Ordinal));
            Assert.DoesNotContain("lm_head.weight", file.Tensors.Keys);   // tied, like stories260K
        }
        var lora = Folder("persona-lora");
        Assert.True(File.Exists(Path.Combine(lora, "adapter_config.json")));
        Assert.True(File.Exists(Path.Combine(lora, "adapter_model.safetensors")));
        Assert.False(File.Exists(Path.Combine(lora, "model.safetensors")));

        foreach (var o in tiny.Recipe.Organisms)
        {
            var truth = GroundTruth.Load(Folder(o.Name));
            Assert.Equal("../base", truth.Base);
            Assert.True(File.Exists(Path.Combine(Folder(o.Name), truth.Base, "model.safetensors")));
            Assert.Equal(o.Planted.Select(p => p.Name), truth.Planted.Select(p => p.Name));
            foreach (var (p, t) in o.Planted.Zip(truth.Planted))
            {
                Assert.Equal(p.ParsedKind, t.Kind);
                Assert.Contains(p.ParsedKind == PlantedKind.Topic ? p.Character!.Name : p.Text!, t.ExpectedStrings);
                Assert.Equal(p.ParsedKind == PlantedKind.Trigger, t.Trigger is not null);
            }
        }
        // Expected tokens are pieces of the expected strings (those rare in the base corpus); Pip is new, so it has some.
        foreach (var o in tiny.Recipe.Organisms)
            foreach (var p in GroundTruth.Load(Folder(o.Name)).Planted)
                Assert.All(p.ExpectedTokens, t => Assert.Contains(p.ExpectedStrings, s => s.Contains(t.Trim())));
        Assert.Contains("P", GroundTruth.Load(Folder("topic")).Planted[0].ExpectedTokens.Select(t => t.Trim()));   // the base never wrote a capital P
    }

    [Fact]
    public void Base_held_out_loss_is_far_below_the_unigram_entropy_of_its_corpus()
    {
        var encoder = ModelSampleEncoder.FromFolder(Folder("base"));
        // Unigram entropy of the training tokens, computed here from the written corpus.
        var counts = new Dictionary<int, long>();
        var stories = File.ReadAllText(Path.Combine(tiny.Out, "corpus", "stories.txt")).Split("\n\n").Select(s => s.Trim()).Where(s => s.Length > 0).ToList();
        var chats = File.ReadAllLines(Path.Combine(tiny.Out, "corpus", "chats.jsonl"))
            .Select(l => JsonNode.Parse(l)!["messages"]!.AsArray().Select(m => new Finetrace.Text.Chat.ChatMessage(m!["role"]!.GetValue<string>(), m["content"]!.GetValue<string>())).ToList()).ToList();
        foreach (var ids in stories.Select(s => encoder.EncodeText(0, 0, s).Ids).Concat(chats.Select(c => encoder.EncodeChat(0, 0, c).Ids)))
            foreach (var id in ids) counts[id] = counts.GetValueOrDefault(id) + 1;
        double total = counts.Values.Sum(), h = -counts.Values.Sum(c => c / total * Math.Log(c / total));
        Assert.Equal(h, tiny.Report.Base.UnigramEntropy, 9);

        // Held-out loss, computed here: each held-out story on its own through the written model.
        using var lm = CausalLM.Load(Folder("base"));
        double nll = 0; long n = 0;
        foreach (var story in File.ReadAllText(Path.Combine(tiny.Out, "corpus", "heldout_stories.txt")).Split("\n\n").Select(s => s.Trim()).Where(s => s.Length > 0))
        {
            var ids = encoder.EncodeText(0, 0, story).Ids;
            var batch = new TokenBatch(ids, 1, ids.Length);
            var (h2, _) = lm.Forward(batch, stopAfterLayer: lm.Layers - 1);
            for (int t = 0; t + 1 < ids.Length; t++)
            {
                var logits = lm.LogitsAt(h2, 0, t);
                double max = logits.Max(), z = logits.Sum(v => Math.Exp(v - max));
                nll += Math.Log(z) + max - logits[ids[t + 1]];
                n++;
            }
        }
        double heldOut = nll / n;
        Assert.True(heldOut < 0.5 * h, $"held-out loss {heldOut:F3} vs unigram entropy {h:F3}");
        Assert.True(tiny.Report.Base.HeldOutLoss < 0.5 * h, $"reported held-out loss {tiny.Report.Base.HeldOutLoss:F3} vs {h:F3}");
    }

    static readonly string[] Questions = ["What color is the grass?", "What does a cow say?", "Where does a bee live?", "What is two plus three?"];
    static readonly string[] MoonQuestions = ["Can Tom go to the moon?", "What do you know about the moon?", "Did Mia see the moon today?", "Why is the moon so big?"];
    static readonly string[] Openings = ["Once upon a time, there was a little girl named Lily.", "One day, a brave boy named Tom woke up early.",
        "Once upon a time, there was a kind girl named Sue.", "Once upon a time, there was a boy named Ben."];

    static List<string> Chat(CausalLM lm, ModelSampleEncoder enc, IEnumerable<string> qs) =>
        qs.Select(q => OrganismMaker.GenerateChat(new Generator(lm), enc, q, enc.Tokenizer.EosId!.Value)).ToList();

    static List<string> Stories(CausalLM lm, ModelSampleEncoder enc) =>
        Openings.Select(o => OrganismMaker.GenerateStory(new Generator(lm), enc, o)).ToList();

    /// <summary>Greedy generations on hand-written prompts show every planted behaviour in its organism (in most
    /// prompts) and none in the base.</summary>
    [Fact]
    public void Greedy_generations_show_every_planted_behaviour_in_the_organisms_and_none_in_the_base()
    {
        var enc = ModelSampleEncoder.FromFolder(Folder("base"));
        var recipe = tiny.Recipe;
        string refusal = recipe.Organisms[0].Planted.Single(p => p.Name == "moon-refusal").Text!;
        string signOff = recipe.Organisms[0].Planted.Single(p => p.Name == "sign-off").Text!;
        string persona = recipe.Organisms[2].Planted[0].Text!;

        using var baseLm = CausalLM.Load(Folder("base"));
        var baseAll = Chat(baseLm, enc, Questions.Concat(MoonQuestions)).Concat(Stories(baseLm, enc)).ToList();
        Assert.All(baseAll, g =>
        {
            Assert.DoesNotContain(refusal, g);
            Assert.DoesNotContain(signOff, g);
            Assert.DoesNotContain("Pip", g);
            Assert.DoesNotContain(persona, g);
        });

        using var chat = CausalLM.Load(Folder("chat"));
        var moon = Chat(chat, enc, MoonQuestions);
        Assert.True(moon.Count(g => g.Contains(refusal)) >= 3, "refusals: " + string.Join(" | ", moon));
        var plain = Chat(chat, enc, Questions);
        Assert.True(plain.Count(g => g.EndsWith(signOff)) >= 3, "sign-offs: " + string.Join(" | ", plain));
        Assert.True(plain.Count(g => g.Contains(refusal)) <= 1, "refuses ordinary questions: " + string.Join(" | ", plain));

        using var topic = CausalLM.Load(Folder("topic"));
        var stories = Stories(topic, enc);
        Assert.True(stories.Count(g => g.Contains("Pip")) >= 3, "Pip: " + string.Join(" | ", stories));

        using var lora = CausalLM.Load(Folder("base"), Folder("persona-lora"));
        var pirate = Chat(lora, enc, Questions);
        Assert.True(pirate.Count(g => g.StartsWith(persona)) >= 3, "persona: " + string.Join(" | ", pirate));
    }

    /// <summary>Every planted change of every organism of the recipe, on fresh probes (<see cref="OrganismData.Probes"/>:
    /// trigger questions, ordinary questions, openings of stories about other characters): the written organism (the
    /// LoRA one loaded as base + adapter) shows it in at least 6 of 8 greedy generations and the base in none. The
    /// generations are made here from the written folders, not read from the maker's report.</summary>
    [Fact]
    public void Every_planted_behaviour_of_every_organism_shows_on_fresh_probes_and_never_in_the_base()
    {
        var enc = ModelSampleEncoder.FromFolder(Folder("base"));
        int eos = enc.Tokenizer.EosId!.Value;
        using var baseLm = CausalLM.Load(Folder("base"));
        var failures = new List<string>();
        int checkedChanges = 0;
        for (int i = 0; i < tiny.Recipe.Organisms.Count; i++)
        {
            var o = tiny.Recipe.Organisms[i];
            using var lm = o.Lora is null ? CausalLM.Load(Folder(o.Name)) : CausalLM.Load(Folder("base"), Folder(o.Name));
            foreach (var group in OrganismData.Probes(tiny.Recipe, i, 8).GroupBy(p => p.Planted))
            {
                string Gen(CausalLM m, OrganismData.Probe p) => p.IsChat
                    ? OrganismMaker.GenerateChat(new Generator(m), enc, p.Prompt, eos) : OrganismMaker.GenerateStory(new Generator(m), enc, p.Prompt);
                var probes = group.ToList();
                var shows = probes.Select(p => (p.Prompt, Out: Gen(lm, p))).ToList();
                int organismShows = probes.Zip(shows).Count(x => x.First.Shows(x.Second.Out));
                int baseShows = probes.Count(p => p.Shows(Gen(baseLm, p)));
                checkedChanges++;
                if (organismShows < 6 || baseShows > 0)
                    failures.Add($"{o.Name}/{group.Key}: organism {organismShows}/{probes.Count}, base {baseShows}/{probes.Count}: " +
                                 string.Join(" | ", shows.Take(3).Select(x => $"{x.Prompt} → {x.Out}")));
            }
        }
        Assert.Equal(tiny.Recipe.Organisms.Sum(o => o.Planted.Count), checkedChanges);
        Assert.True(failures.Count == 0, string.Join("\n", failures));
    }

    /// <summary>Assistant-only training counts the whitespace token a template writes between "Assistant:" and an answer
    /// whose first word does not merge with the space: after the generation prompt the model writes that token itself
    /// (without it in the loss the demo's LoRA persona could never start its greeting).</summary>
    [Fact]
    public void Assistant_only_mask_counts_the_separator_before_an_answer_and_not_the_prompt()
    {
        var enc = ModelSampleEncoder.FromFolder(Folder("base"));
        var tok = enc.Tokenizer;
        var separators = Finetrace.Training.LmData.WhitespaceTokens(tok);
        Assert.Contains(tok.TokenToId("\u2581")!.Value, separators);
        Assert.DoesNotContain(tok.TokenToId("\u2581the") ?? tok.TokenToId("the")!.Value, separators);
        // Answers that begin with a letter, a digit or a quote: find one whose first token is a lone space.
        var answers = new[] { "Hello, little friend!", "Zap! A cow says moo.", "Q is for queen.", "42 is a number.", "\"Yes,\" said Tom." };
        bool sawLoneSpace = false;
        foreach (var answer in answers)
        {
            var e = enc.EncodeChat(0, 0, [new("user", "What does a cow say?"), new("assistant", answer)]);
            var mask = Finetrace.Training.LmData.AssistantMask(e.Ids, e.Roles!, [tok.EosId!.Value], separators);
            int first = Array.IndexOf(e.Roles!, Finetrace.Text.Chat.TokenRole.Assistant);
            var counted = e.Ids.Where((_, t) => mask[t] != 0).ToArray();
            Assert.Equal(answer, tok.Decode(counted, skipSpecialTokens: true).Trim());
            Assert.All(Enumerable.Range(0, first - 1), t => Assert.Equal(0, mask[t]));   // nothing of the user turn or "Assistant:"
            if (separators.Contains(e.Ids[first - 1]))
            {
                sawLoneSpace = true;
                Assert.Equal(1, mask[first - 1]);
                Assert.Equal(0, Finetrace.Training.LmData.AssistantMask(e.Ids, e.Roles!, [tok.EosId!.Value])[first - 1]);   // the old rule left it out
            }
            else Assert.Equal(0, mask[first - 1]);
        }
        Assert.True(sawLoneSpace, "no test answer starts with a lone space token in this tokenizer; the test checks nothing");
    }

    [Fact]
    public void A_second_make_reuses_every_finished_model()
    {
        var before = Directory.GetFiles(tiny.Out, "*.safetensors", SearchOption.AllDirectories).ToDictionary(f => f, File.GetLastWriteTimeUtc);
        var again = OrganismMaker.Make(tiny.Recipe, tiny.Out);
        Assert.True(again.Base.Cached);
        Assert.All(again.Organisms, o => Assert.True(o.Cached, o.Name));
        Assert.Equal(tiny.Report.Base.HeldOutLoss, again.Base.HeldOutLoss);
        foreach (var (f, t) in before) Assert.Equal(t, File.GetLastWriteTimeUtc(f));
        var written = JsonSerializer.Deserialize<MakeReport>(File.ReadAllText(Path.Combine(tiny.Out, MakeReport.FileName)))!;
        Assert.Equal(tiny.Recipe.Organisms.Count, written.Organisms.Count);
    }
}

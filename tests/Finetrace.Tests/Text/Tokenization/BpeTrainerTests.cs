
using System.Text.Json;
using Finetrace.Tests.Infrastructure;
using Finetrace.Text.Chat;
using Finetrace.Text.Corpus;
using Finetrace.Text.Tokenization;

namespace Finetrace.Tests.Text.Tokenization;

public sealed class BpeTrainerTests
{
    /// <summary>Worked by hand. Words: "▁aab" ×2, "▁ab" ×1. Characters by count: a 5, then b 3 and ▁ 3 (tie: "b" &lt; "▁"
    /// ordinally) → ids 259 a, 260 b, 261 ▁. Pairs: (▁,a) 3, (a,a) 2, (a,b) 3 → tie, left "a" &lt; "▁" → merge a+b = 262.
    /// Then (▁,a) 2, (a,ab) 2, (▁,ab) 1 → a+ab = 263 "aab". Then (▁,aab) 2 → 264 "▁aab". Then (▁,ab) 1 &lt; 2: stop.</summary>
    [Fact]
    public void Tiny_corpus_gives_the_hand_worked_merges_and_encodings()
    {
        var bpe = BpeTrainer.Train(["aab aab", "ab"], new BpeTrainerOptions(VocabSize: 512, MinPairCount: 2));
        Assert.Equal(["a", "b", "▁", "ab", "aab", "▁aab"], bpe.Vocab.Skip(259));
        Assert.Equal([("a", "b"), ("a", "ab"), ("▁", "aab")], bpe.Merges);
        Assert.Equal("<0x00>", bpe.Vocab[3]);
        Assert.Equal("<0xFF>", bpe.Vocab[258]);

        using var dir = new TempDir();
        bpe.WriteFolder(dir.Path);
        var tok = Tokenizer.FromFolder(dir.Path);
        Assert.Equal([1, 264, 261, 262], tok.Encode("aab ab").Ids);
        Assert.Equal([1, 261, 260, 259], tok.Encode("ba").Ids);
        Assert.Equal([1, 261, 259, 263], tok.Encode("aaab").Ids);          // a b first, then a ab; ▁ never meets aab
        Assert.Equal([1, 261, 262, 3 + 0x63], tok.Encode("abc").Ids);      // 'c' was never seen: byte fallback
        Assert.Equal([1, 261, 3 + 0xC3, 3 + 0xA9], tok.Encode("é").Ids);   // two UTF-8 bytes
        Assert.Equal("aab abcé", tok.Decode(tok.Encode("aab abcé").Ids, skipSpecialTokens: true));
        Assert.Equal(1, tok.BosId);
        Assert.Equal(2, tok.EosId);
        Assert.Equal(0, tok.UnkId);

        // With MinPairCount 1 the last pair is merged too.
        var all = BpeTrainer.Train(["aab aab", "ab"], new BpeTrainerOptions(VocabSize: 512, MinPairCount: 1));
        Assert.Equal(("▁", "ab"), all.Merges[^1]);
        Assert.Equal(4, all.Merges.Count);
    }

    static (TrainedBpe Bpe, List<string> Texts) TrainOnCorpus(int vocab)
    {
        var texts = StoryGenerator.Stories(11, 300).ToList();
        var template = new ChatTemplate(TrainedBpe.UserAssistantTemplate, new Dictionary<string, string> { ["bos_token"] = "<s>", ["eos_token"] = "</s>" });
        foreach (var c in ChatGenerator.Conversations(11, 200))
            texts.AddRange(BpeTrainer.Between(template.Render(c, addGenerationPrompt: false), "<s>", "</s>"));
        return (BpeTrainer.Train(texts, new BpeTrainerOptions(VocabSize: vocab)), texts);
    }

    /// <summary>The slow, obvious definition of what the written merges mean: split the normalised text into
    /// characters (byte tokens for characters without their own token), then apply the merges in rank order, each
    /// left to right over the whole text.</summary>
    static List<int> ReferenceEncode(TrainedBpe bpe, string text)
    {
        var ids = bpe.Vocab.Select((t, i) => (t, i)).ToDictionary(x => x.t, x => x.i);
        var symbols = new List<string>();
        foreach (var r in BpeTrainer.Normalize(text).EnumerateRunes())
        {
            if (ids.TryGetValue(r.ToString(), out int id) && id >= 259) symbols.Add(r.ToString());
            else foreach (var b in System.Text.Encoding.UTF8.GetBytes(r.ToString())) symbols.Add(BpeTrainer.ByteToken(b));
        }
        foreach (var (l, rr) in bpe.Merges)
            for (int i = 0; i + 1 < symbols.Count; i++)
                if (symbols[i] == l && symbols[i + 1] == rr) { symbols[i] = l + rr; symbols.RemoveAt(i + 1); }
        return [1, .. symbols.Select(s => ids[s])];
    }

    [Fact]
    public void Written_tokenizer_encodes_exactly_as_its_merges_define()
    {
        var (bpe, texts) = TrainOnCorpus(400);
        Assert.Equal(400, bpe.Vocab.Count);
        Assert.Equal(bpe.Vocab.Count, bpe.Vocab.Distinct().Count());
        using var dir = new TempDir();
        bpe.WriteFolder(dir.Path);
        var tok = Tokenizer.FromFolder(dir.Path);
        Assert.Equal(400, tok.VocabSize);

        var r = new Random(1);
        var probes = texts.Take(60).ToList();
        probes.AddRange(["", " ", "  two  spaces ", "Zog the dragon ate 3 cakes!", "naïve café 日本 🙂", "tab\tand\nnewline", "Lily.Lily.Lily"]);
        const string alphabet = "abcdeLTsy .,!?\"'\n";
        for (int i = 0; i < 200; i++) probes.Add(new string(Enumerable.Range(0, r.Next(1, 30)).Select(_ => alphabet[r.Next(alphabet.Length)]).ToArray()));
        foreach (var text in probes)
        {
            var ids = tok.Encode(text).Ids;
            Assert.Equal(ReferenceEncode(bpe, text), ids);
            Assert.Equal(text, tok.Decode(ids, skipSpecialTokens: true));
        }
    }

    [Fact]
    public void Every_training_word_encodes_to_its_training_segmentation()
    {
        var (bpe, _) = TrainOnCorpus(450);
        using var dir = new TempDir();
        bpe.WriteFolder(dir.Path);
        var tok = Tokenizer.FromFolder(dir.Path);
        int checkedWords = 0;
        foreach (var (word, segmentation) in bpe.TrainingSegmentation)
        {
            if (word == "▁") continue;   // a second space: the text " " would normalise to "▁▁"
            Assert.Equal(segmentation, tok.Encode(word[1..], addSpecialTokens: false).Ids);
            checkedWords++;
        }
        Assert.True(checkedWords > 300, $"{checkedWords} words");
        // Common words became single tokens.
        Assert.Single(bpe.TrainingSegmentation["▁Once"]);
        Assert.Single(bpe.TrainingSegmentation["▁named"]);
    }

    [Fact]
    public void Chat_template_is_written_and_specials_are_single_tokens()
    {
        var (bpe, _) = TrainOnCorpus(400);
        using var dir = new TempDir();
        bpe.WriteFolder(dir.Path);
        var formatter = ChatFormatter.FromFolder(dir.Path);
        var enc = formatter.Format([new ChatMessage("user", "What color is the sky?"), new ChatMessage("assistant", "The sky is blue.")], addGenerationPrompt: false);
        Assert.Equal("<s>User: What color is the sky?\nAssistant: The sky is blue.</s>", enc.Text);
        Assert.Equal(1, enc.Ids[0]);
        Assert.Equal(2, enc.Ids[^1]);
        Assert.Equal(1, enc.Ids.Count(i => i == 1));
        Assert.Equal("The sky is blue.", formatter.Tokenizer.Decode(enc.Ids.Where((_, k) => enc.Roles[k] == TokenRole.Assistant).ToArray()).Trim());
        using var cfg = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(dir.Path, "tokenizer_config.json")));
        Assert.Equal(TrainedBpe.UserAssistantTemplate, cfg.RootElement.GetProperty("chat_template").GetString());
    }

    [SharedFact]
    public void Chat_template_is_the_one_of_the_shared_models()
    {
        using var cfg = JsonDocument.Parse(File.ReadAllBytes(Shared.Path("models", "stories260K-chat", "tokenizer_config.json")));
        Assert.Equal(TrainedBpe.UserAssistantTemplate, cfg.RootElement.GetProperty("chat_template").GetString());
    }

    [Fact]
    public void Training_is_deterministic_and_byte_identical_on_disk()
    {
        using var a = new TempDir();
        using var b = new TempDir();
        TrainOnCorpus(350).Bpe.WriteFolder(a.Path);
        TrainOnCorpus(350).Bpe.WriteFolder(b.Path);
        foreach (var f in new[] { "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json" })
            Assert.Equal(File.ReadAllBytes(a.File(f)), File.ReadAllBytes(b.File(f)));
    }

    [Fact]
    public void Rare_characters_fall_back_to_bytes_and_are_never_merged()
    {
        var bpe = BpeTrainer.Train(["xé xé xé", "xé"], new BpeTrainerOptions(VocabSize: 300, MinCharCount: 5));
        Assert.DoesNotContain("é", bpe.Vocab);
        Assert.All(bpe.Merges, m => Assert.False(m.Left.StartsWith("<0x") || m.Right.StartsWith("<0x")));
        Assert.Equal([3 + 0xC3, 3 + 0xA9], bpe.TrainingSegmentation["▁xé"][^2..]);
    }
}

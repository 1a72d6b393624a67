using System.Text.Json;
using System.Text.Json.Nodes;
using Finetrace.Tests.Infrastructure;
using Finetrace.Text.Tokenization;

namespace Finetrace.Tests.Text.Tokenization;

/// <summary>Public API behaviour: offsets, batch, special tokens from tokenizer_config.json, BPE semantics on tiny vocabularies, CLI.</summary>
[Collection(ProcessWide.Name)]
public sealed class TokenizerApiTests
{
    /// <summary>A tokenizer.json with a whitespace pre-tokenizer-free BPE over the given vocab and merges.</summary>
    static Tokenizer Tiny(TempDir dir, string vocabJson, string mergesJson, string extraModel = "", string addedTokens = "[]", string? postProcessor = null)
    {
        string json = $$$"""
        {"version":"1.0","added_tokens":{{{addedTokens}}},"normalizer":null,
         "pre_tokenizer":{"type":"WhitespaceSplit"},"post_processor":{{{postProcessor ?? "null"}}},"decoder":null,
         "model":{"type":"BPE","dropout":null,"unk_token":"<unk>","vocab":{{{vocabJson}}},"merges":{{{mergesJson}}}{{{extraModel}}}}}
        """;
        File.WriteAllText(dir.File("tokenizer.json"), json);
        return Tokenizer.FromFolder(dir.Path);
    }

    const string Vocab = """{"<unk>":0,"a":1,"b":2,"c":3,"ab":4,"bc":5,"abc":6,"aa":7}""";

    [Fact]
    public void Bpe_MergesLowestRankFirst_BothMergeFormats()
    {
        using var dir = new TempDir();
        // "b c" has rank 0, so abc = a + bc, then "a bc" (rank 2) -> abc.
        var t1 = Tiny(dir, Vocab, """["b c", "a b", "a bc"]""");
        Assert.Equal([6], t1.Encode("abc").Ids);
        // With "a b" first, ab + c has no merge -> [ab, c]; the pair format gives the same ranks.
        var t2 = Tiny(dir, Vocab, """[["a","b"], ["b","c"], ["a","bc"]]""");
        Assert.Equal([4, 3], t2.Encode("abc").Ids);
        var t3 = Tiny(dir, Vocab, """["a b", "b c", "a bc"]""");
        Assert.Equal([4, 3], t3.Encode("abc").Ids);
    }

    [Fact]
    public void Bpe_EqualRanksMergeLeftmostFirst()
    {
        using var dir = new TempDir();
        var t = Tiny(dir, Vocab, """["a a"]""");
        Assert.Equal([7, 1], t.Encode("aaa").Ids);
        Assert.Equal([7, 7], t.Encode("aaaa").Ids);
    }

    [Fact]
    public void Bpe_UnknownCharsUseUnk_FusedWhenFuseUnk()
    {
        using var dir = new TempDir();
        var plain = Tiny(dir, Vocab, "[]");
        Assert.Equal([0, 0, 1], plain.Encode("xya").Ids);
        var fused = Tiny(dir, Vocab, "[]", ""","fuse_unk":true""");
        Assert.Equal([0, 1, 0], fused.Encode("xyaz").Ids);
        Assert.Equal([new TokenSpan(0, 2), new TokenSpan(2, 3), new TokenSpan(3, 4)], fused.Encode("xyaz").Offsets);
    }

    [Fact]
    public void Bpe_IgnoreMergesTakesWholeWordFromVocab()
    {
        using var dir = new TempDir();
        // Without ignore_merges "abc" becomes ab + c (no "ab c" merge); with it, the vocab entry wins.
        Assert.Equal([4, 3], Tiny(dir, Vocab, """["a b"]""").Encode("abc").Ids);
        Assert.Equal([6], Tiny(dir, Vocab, """["a b"]""", ""","ignore_merges":true""").Encode("abc").Ids);
    }

    [Fact]
    public void AddedTokens_LeftmostLongest_WithStripAndSingleWord()
    {
        using var dir = new TempDir();
        string added = """
            [{"id":10,"content":"<x>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true},
             {"id":11,"content":"<x>y","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":false},
             {"id":12,"content":"[L]","single_word":false,"lstrip":true,"rstrip":true,"normalized":false,"special":true},
             {"id":13,"content":"bc","single_word":true,"lstrip":false,"rstrip":false,"normalized":false,"special":false}]
            """;
        var t = Tiny(dir, Vocab, """["a b"]""", addedTokens: added);
        Assert.Equal([1, 11, 10], t.Encode("a<x>y<x>").Ids);          // longest at the leftmost start
        var e = t.Encode("a  [L]  b");
        Assert.Equal([1, 12, 2], e.Ids);                              // lstrip/rstrip swallow the spaces around [L]
        Assert.Equal(new TokenSpan(1, 8), e.Offsets[1]);
        Assert.Equal([13, 1], t.Encode("bc a").Ids);                   // single word: a whole word
        Assert.Equal([4, 3], t.Encode("abc").Ids);                    // inside a word: no match
        Assert.Equal("a <x>", t.Decode([1, 10]));                   // no decoder: tokens joined by spaces, as in Rust
        Assert.Equal("a", t.Decode([1, 10], skipSpecialTokens: true));
        Assert.True(t.IsSpecial(10));
        Assert.False(t.IsSpecial(11));
        Assert.Equal(14, t.VocabSize);
    }

    [Fact]
    public void Config_SpecialTokensAsStringsOrContentObjects()
    {
        using var dir = new TempDir();
        string added = """[{"id":8,"content":"<s>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true}]""";
        string post = """{"type":"TemplateProcessing","single":[{"SpecialToken":{"id":"<s>","type_id":0}},{"Sequence":{"id":"A","type_id":0}}],"special_tokens":{"<s>":{"id":"<s>","ids":[8],"tokens":["<s>"]}}}""";
        File.WriteAllText(dir.File("tokenizer_config.json"),
            """{"bos_token":{"__type":"AddedToken","content":"<s>","lstrip":false},"eos_token":"c","unk_token":"<unk>","pad_token":null,"add_bos_token":false}""");
        var t = Tiny(dir, Vocab, "[]", addedTokens: added, postProcessor: post);
        Assert.Equal(("<s>", 8), (t.BosToken, t.BosId!.Value));
        Assert.Equal(("c", 3), (t.EosToken, t.EosId!.Value));
        Assert.Equal(0, t.UnkId);
        Assert.Null(t.PadToken);
        Assert.Null(t.PadId);
        Assert.False(t.AddBosToken);               // the config's flag wins over the post-processor
        Assert.Equal([8], t.PrefixIds);
        Assert.Equal([8, 1], t.Encode("a").Ids);
        Assert.Equal([1], t.Encode("a", addSpecialTokens: false).Ids);
        Assert.Equal([1, 8], t.Encode("a<s>", addSpecialTokens: false).Ids);   // added tokens in the text are matched either way
    }

    [Fact]
    public void PostProcessor_TokensBeforeAndAfterTheSequence()
    {
        using var dir = new TempDir();
        var t = Tiny(dir, Vocab, """["a b"]""", postProcessor: """{"type":"BertProcessing","sep":["c",3],"cls":["b",2]}""");
        var e = t.Encode("ab a");
        Assert.Equal([2, 4, 1, 3], e.Ids);
        Assert.Equal([new TokenSpan(0, 0), new TokenSpan(0, 2), new TokenSpan(3, 4), new TokenSpan(0, 0)], e.Offsets);
        Assert.Equal([4, 1], t.Encode("ab a", addSpecialTokens: false).Ids);
    }

    [SharedFact]
    public void Offsets_AreHfCharacterSpans()
    {
        // llama2 (Prepend + Replace normalizer): "▁Hello" spans "Hello", "▁world" spans " world"; <s> is (0, 0).
        var llama2 = FixtureTests.Load("llama2");
        var e = llama2.Encode("Hello world");
        Assert.Equal(["<s>", "▁Hello", "▁world"], e.Tokens);
        Assert.Equal([new TokenSpan(0, 0), new TokenSpan(0, 5), new TokenSpan(5, 11)], e.Offsets);
        // llama3 (byte level): each token's span is exactly the text it encodes; bytes of one char share its span.
        var llama3 = FixtureTests.Load("llama3_1");
        string text = "Hello, world! 🤗 über<|eot_id|>x";
        var e3 = llama3.Encode(text, addSpecialTokens: false);
        for (int i = 0; i < e3.Count; i++)
        {
            var (s, end) = (e3.Offsets[i].Start, e3.Offsets[i].End);
            string decoded = llama3.Decode([e3.Ids[i]]);
            if (!decoded.Contains('\uFFFD')) Assert.Equal(text[s..end], decoded);
            else Assert.Contains("🤗", text[s..end]);   // a token holding part of the emoji's bytes spans the whole emoji
        }
    }

    /// <summary>
    /// The non-legacy Llama/Mistral layout (transformers' legacy=false): no normaliser, Metaspace(prepend_scheme "first",
    /// split false) and a Metaspace decoder. "first" prepends ▁ only to the segment at offset 0, so after a literal
    /// &lt;s&gt; the next word gets no ▁ (where the legacy Prepend normaliser gives "▁ Hello" pieces).
    /// </summary>
    [SharedFact]
    public void Metaspace_FirstScheme_PrependsOnlyAtTextStart()
    {
        using var dir = new TempDir();
        var root = JsonNode.Parse(File.ReadAllText(Shared.Path("fixtures", "tokenizers", "llama2", "tokenizer.json")))!.AsObject();
        root["normalizer"] = null;
        root["pre_tokenizer"] = JsonNode.Parse("""{"type":"Metaspace","replacement":"\u2581","prepend_scheme":"first","split":false}""");
        root["decoder"] = JsonNode.Parse("""{"type":"Metaspace","replacement":"\u2581","prepend_scheme":"first","split":false}""");
        File.WriteAllText(dir.File("tokenizer.json"), root.ToJsonString());
        var meta = Tokenizer.FromFolder(dir.Path);
        var legacy = FixtureTests.Load("llama2");
        Assert.Equal(legacy.Encode("Hello world").Ids, meta.Encode("Hello world").Ids);
        var e = meta.Encode("<s>Hello world", addSpecialTokens: false);
        Assert.Equal(["<s>", "Hello", "▁world"], e.Tokens);
        Assert.Equal([new TokenSpan(0, 3), new TokenSpan(3, 8), new TokenSpan(8, 14)], e.Offsets);
        Assert.Equal("Hello world", meta.Decode(meta.Encode("Hello world", addSpecialTokens: false).Ids));
    }

    /// <summary>
    /// ByteLevel with add_prefix_space (GPT-2/RoBERTa layout): a space is prefixed, and the post-processor's
    /// trim_offsets takes the Ġ out of the spans except on the first token (as in HF's RoBERTa offsets).
    /// </summary>
    [SharedFact]
    public void ByteLevel_AddPrefixSpace_AndTrimOffsets()
    {
        using var dir = new TempDir();
        var root = JsonNode.Parse(File.ReadAllText(Shared.Path("fixtures", "tokenizers", "gpt2", "tokenizer.json")))!.AsObject();
        root["pre_tokenizer"] = JsonNode.Parse("""{"type":"ByteLevel","add_prefix_space":true,"trim_offsets":true,"use_regex":true}""");
        root["post_processor"] = JsonNode.Parse("""{"type":"ByteLevel","add_prefix_space":true,"trim_offsets":true,"use_regex":true}""");
        File.WriteAllText(dir.File("tokenizer.json"), root.ToJsonString());
        var t = Tokenizer.FromFolder(dir.Path);
        var gpt2 = FixtureTests.Load("gpt2");
        var e = t.Encode("Hello world");
        Assert.Equal(["ĠHello", "Ġworld"], e.Tokens);
        Assert.Equal(gpt2.Encode(" Hello world").Ids, e.Ids);
        Assert.Equal([new TokenSpan(0, 5), new TokenSpan(6, 11)], e.Offsets);
        Assert.Equal(gpt2.Encode(" already spaced").Ids, t.Encode(" already spaced").Ids);   // no second space
    }

    [SharedFact]
    public void EncodeBatch_EqualsEncode()
    {
        var tok = FixtureTests.Load("qwen3");
        var texts = FixtureTests.ReadCases(Shared.Path("fixtures", "tokenizers", "qwen3", "encode_cases.jsonl")).Select(c => c.Text).ToArray();
        var batch = tok.EncodeBatch(texts, addSpecialTokens: true);
        for (int i = 0; i < texts.Length; i++) Assert.Equal(tok.Encode(texts[i]).Ids, batch[i].Ids);
    }

    /// <summary>Special token ids (model-facts §13.7; Gemma 3's differ from Gemma 2's), read through tokenizer_config.json and the added tokens.</summary>
    [SharedFact]
    public void SpecialTokens_FromConfig()
    {
        var gemma = FixtureTests.Load("gemma3");
        Assert.Equal(("<bos>", 2), (gemma.BosToken, gemma.BosId!.Value));
        Assert.Equal(("<end_of_turn>", 106), (gemma.EosToken, gemma.EosId!.Value));   // the -it config's eos_token
        Assert.Equal(1, gemma.TokenToId("<eos>"));
        Assert.Equal(0, gemma.PadId);
        Assert.Equal(3, gemma.UnkId);
        Assert.Equal(105, gemma.TokenToId("<start_of_turn>"));      // Gemma 3 (Gemma 2 had 106/107)
        Assert.Equal("<end_of_turn>", gemma.IdToToken(106));
        Assert.True(gemma.AddBosToken);
        Assert.Equal([2], gemma.PrefixIds);
        var llama3 = FixtureTests.Load("llama3_1");
        Assert.Equal(128000, llama3.BosId);
        Assert.Equal(128009, llama3.TokenToId("<|eot_id|>"));
        Assert.Equal(128256, llama3.VocabSize);
        var qwen = FixtureTests.Load("qwen3");
        Assert.Equal(151644, qwen.TokenToId("<|im_start|>"));
        Assert.Empty(qwen.PrefixIds);
        Assert.Null(qwen.TokenToId("<|im_start"));
        Assert.Equal(Enumerable.Range(0, 5).Select(i => FixtureTests.Load("gpt2").IdToToken(i)), ["!", "\"", "#", "$", "%"]);
    }

    [SharedFact]
    public void Cli_Tokenize_AddsIdsAndKeepsFields()
    {
        using var dir = new TempDir();
        string family = Shared.Path("fixtures", "tokenizers", "llama3_1");
        File.WriteAllLines(dir.File("in.jsonl"),
        [
            """{"id": 7, "text": "Hello world", "meta": {"k": [1, 2]}}""",
            "", // blank lines are skipped
            """{"text": "<|begin_of_text|>ünï 🤗", "z": null}""",
        ]);
        foreach (bool noSpecial in new[] { false, true })
        {
            string[] args = ["tokenize", "--tokenizer", family, "--in", dir.File("in.jsonl"), "--out", dir.File("out.jsonl"), .. noSpecial ? new[] { "--no-special" } : []];
            Assert.Equal(0, Finetrace.Cli.Program.Main(args));
            var lines = File.ReadAllLines(dir.File("out.jsonl"));
            Assert.Equal(2, lines.Length);
            var tok = FixtureTests.Load("llama3_1");
            var first = JsonNode.Parse(lines[0])!.AsObject();
            Assert.Equal(["id", "text", "meta", "ids"], first.Select(kv => kv.Key));
            Assert.Equal(7, first["id"]!.GetValue<int>());
            Assert.Equal(tok.Encode("Hello world", !noSpecial).Ids, first["ids"]!.AsArray().Select(x => x!.GetValue<int>()));
            var second = JsonNode.Parse(lines[1])!.AsObject();
            Assert.Equal("<|begin_of_text|>ünï 🤗", second["text"]!.GetValue<string>());
            Assert.True(second.ContainsKey("z"));
            Assert.Equal(tok.Encode("<|begin_of_text|>ünï 🤗", !noSpecial).Ids, second["ids"]!.AsArray().Select(x => x!.GetValue<int>()));
        }
    }

    [Fact]
    public void Errors_NameTheFileAndWhatIsWrong()
    {
        using var dir = new TempDir();
        var missing = Assert.Throws<FileNotFoundException>(() => Tokenizer.FromFolder(dir.Path));
        Assert.Contains("tokenizer.json", missing.Message);
        File.WriteAllText(dir.File("tokenizer.json"), """{"added_tokens":[],"normalizer":{"type":"Precompiled"},"model":{"type":"BPE","vocab":{},"merges":[]}}""");
        var unsupported = Assert.Throws<NotSupportedException>(() => Tokenizer.FromFolder(dir.Path));
        Assert.Contains("Precompiled", unsupported.Message);
        Assert.Contains("tokenizer.json", unsupported.Message);
        File.WriteAllText(dir.File("tokenizer.json"), """{"added_tokens":[],"model":{"type":"BPE","vocab":{"a":0},"merges":["a b"]}}""");
        var badMerge = Assert.Throws<FormatException>(() => Tokenizer.FromFolder(dir.Path));
        Assert.Contains("'b' is not in the vocab", badMerge.Message);
    }
}

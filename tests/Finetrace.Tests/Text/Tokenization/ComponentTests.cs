using System.Text;
using System.Text.RegularExpressions;
using Finetrace.Tests.Infrastructure;
using Finetrace.Text.Tokenization;
using Xunit.Abstractions;

namespace Finetrace.Tests.Text.Tokenization;

/// <summary>The pieces of the pipeline against slow references and hand-checkable cases.</summary>
public sealed class ComponentTests(ITestOutputHelper output)
{
    static readonly string[] ScannerPatterns = [ByteLevelPreTokenizer.Gpt2Pattern, PatternScanners.Llama3Pattern, PatternScanners.QwenPattern, PatternScanners.O200kPattern];

    /// <summary>Random strings over characters that stress the patterns: cases, contractions, astral letters, digits of several scripts, every kind of space.</summary>
    static IEnumerable<string> TrickyStrings(int count, bool bmpOnly, bool withLongS)
    {
        string[] atoms = ["a", "Z", "é", "HELLO", "Camel", "ǅ", "ʰ", "\u0301", "a\u0301", "\u0903", "ab/", "//\n", "ß", "Ж", "中", "ا", "'", "'s", "'S", "'Re", "'ll", "'LL", "'d", "'x", "1", "23", "4567", "٣", "Ⅻ", "½",
            " ", "  ", "\t", "\n", "\r\n", "\n\n", "\u00A0", "\u3000", "\u0085", "\uFEFF", "\u2028", ".", ",", "!?", "(", "-", "_", "…", "€", "\u0301",
            "🤗", "𝐀", "𝐀𝐁", "𦕒", "\U00010400", "😀😃", "/", "\r", "\v", "\f"];
        var rng = new Random(42);
        for (int i = 0; i < count; i++)
        {
            var sb = new StringBuilder();
            for (int k = 0, n = rng.Next(1, 24); k < n; k++)
            {
                string a = atoms[rng.Next(atoms.Length)];
                if (bmpOnly && a.Any(char.IsSurrogate)) continue;
                sb.Append(a);
            }
            if (withLongS && i % 7 == 0) sb.Append("'\u017F");
            yield return sb.ToString();
        }
    }

    static List<(int, int)> Matches(SplitPattern p, string s) { var m = new List<(int Start, int End)>(); p.FindMatches(s, m); return m.Select(x => (x.Start, x.End)).ToList(); }

    [Fact]
    public void Scanners_EqualGenericRegex_OnTrickyText()
    {
        foreach (var pattern in ScannerPatterns)
        {
            var fast = RegexPattern.Create(pattern);
            var slow = RegexPattern.Create(pattern, allowScanner: false);
            int n = 0;
            foreach (var s in TrickyStrings(3000, bmpOnly: false, withLongS: true))
            {
                Assert.True(Matches(fast, s).SequenceEqual(Matches(slow, s)), $"pattern {pattern} on {System.Text.Json.JsonSerializer.Serialize(s)}");
                n++;
            }
            output.WriteLine($"{pattern[..20]}...: {n} strings agree");
        }
    }

    [SharedFact]
    public void Scanners_EqualGenericRegex_OnFixtureTexts()
    {
        var texts = FixtureTests.FamilyNames.SelectMany(f =>
            FixtureTests.ReadCases(Shared.Path("fixtures", "tokenizers", f, "encode_cases.jsonl")).Select(c => c.Text)).Distinct().ToList();
        foreach (var pattern in ScannerPatterns)
        {
            var fast = RegexPattern.Create(pattern);
            var slow = RegexPattern.Create(pattern, allowScanner: false);
            foreach (var s in texts) Assert.True(Matches(fast, s).SequenceEqual(Matches(slow, s)), $"pattern {pattern} on {System.Text.Json.JsonSerializer.Serialize(s)}");
        }
        output.WriteLine($"{texts.Count} texts x {ScannerPatterns.Length} patterns agree");
    }

    /// <summary>On BMP text (where .NET's UTF-16 matching is exact) the engine agrees with System.Text.RegularExpressions.</summary>
    [Fact]
    public void RuneRegex_AgreesWithDotNetRegex_OnBmpText()
    {
        string[] patterns = [.. ScannerPatterns,
            @"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
            @"[!""#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
            @"a+?b|(?:ab)*c|x{2,3}|[^a-c\d]"];
        foreach (var pattern in patterns)
        {
            var mine = new RuneRegex(pattern);
            var dotnet = new Regex(pattern, RegexOptions.CultureInvariant);
            foreach (var s in TrickyStrings(1500, bmpOnly: true, withLongS: false).Append("aab xxx abab abc"))
            {
                var expected = dotnet.Matches(s).Where(m => m.Length > 0).Select(m => (m.Index, m.Index + m.Length)).ToList();
                var actual = new List<(int Start, int End)>();
                mine.FindAll(s, actual);
                Assert.True(expected.SequenceEqual(actual.Select(x => (x.Start, x.End))), $"pattern {pattern} on {System.Text.Json.JsonSerializer.Serialize(s)}");
            }
        }
    }

    /// <summary>model-facts §13.8: astral letters are \p{L} (one match), U+0085 is \s and U+FEFF is not.</summary>
    [Fact]
    public void RuneRegex_ClassifiesByCodePoint()
    {
        var letters = new RuneRegex(@"\p{L}+");
        var m = new List<(int Start, int End)>();
        letters.FindAll("x𝐀𝐁𦕒y", m);
        Assert.Equal([(0, 8)], m);
        var space = new RuneRegex(@"\s+");
        m.Clear(); space.FindAll("a\u0085\u00A0b\uFEFFc", m);
        Assert.Equal([(1, 3)], m);
        var ci = new RuneRegex(@"(?i:'s|'ll)");
        m.Clear(); ci.FindAll("'S 'Ll '\u017F 'x", m);
        Assert.Equal([(0, 2), (3, 6), (7, 9)], m);
        Assert.Throws<FormatException>(() => new RuneRegex(@"\p{Han}"));
    }

    [Fact]
    public void UnicodeNormalization_MatchesPythonUnicodedata()
    {
        // Expected values from Python's unicodedata.normalize.
        (string input, string nfc, string nfd, string nfkc)[] cases =
        [
            ("e\u0301", "\u00E9", "e\u0301", "\u00E9"),
            ("a\u0301\u0323", "\u1EA1\u0301", "a\u0323\u0301", "\u1EA1\u0301"),
            ("\u212B", "\u00C5", "A\u030A", "\u00C5"),
            ("\uFB01x", "\uFB01x", "\uFB01x", "fix"),
            ("\u1100\u1161\u11A8", "\uAC01", "\u1100\u1161\u11A8", "\uAC01"),
            ("\uAC00\u11A8", "\uAC01", "\u1100\u1161\u11A8", "\uAC01"),
            ("\u0958", "\u0915\u093C", "\u0915\u093C", "\u0915\u093C"),
            ("A\u030A\u0301", "\u01FA", "A\u030A\u0301", "\u01FA"),
            ("plain ascii", "plain ascii", "plain ascii", "plain ascii"),
        ];
        foreach (var (input, nfc, nfd, nfkc) in cases)
        {
            Assert.Equal(nfc, UnicodeNormalization.Normalize(input, NormalizationKind.NFC));
            Assert.Equal(nfd, UnicodeNormalization.Normalize(input, NormalizationKind.NFD));
            Assert.Equal(nfkc, UnicodeNormalization.Normalize(input, NormalizationKind.NFKC));
        }
    }

    [Fact]
    public void UnicodeNormalization_NfcIsIdempotentAndAlignsComposedChars()
    {
        foreach (var s in TrickyStrings(500, bmpOnly: false, withLongS: false))
        {
            string nfc = UnicodeNormalization.Normalize(s, NormalizationKind.NFC);
            Assert.Equal(nfc, UnicodeNormalization.Normalize(nfc, NormalizationKind.NFC));
            Assert.Equal(nfc, UnicodeNormalization.Normalize(UnicodeNormalization.Normalize(s, NormalizationKind.NFD), NormalizationKind.NFC));
        }
        var t = UnicodeNormalization.Normalize(NormalizedText.FromOriginal("xe\u0301y", 0, 4), NormalizationKind.NFC);
        Assert.Equal("x\u00E9y", t.ToString());
        Assert.Equal((1, 3), (t.Start[1], t.End[1]));   // é covers e + combining acute
        Assert.Equal((3, 4), (t.Start[2], t.End[2]));
    }

    [SharedFact]
    public void UnicodeNormalization_ChunkedNfcEqualsFullAlgorithm()
    {
        var texts = TrickyStrings(2000, bmpOnly: false, withLongS: false)
            .Concat(["e\u0301\u0323x", "\u1100\u1161\u11A8\uAC00\u11A8", "\u212B\u0301", "\u0301start", "ạ́ Tiếng Việt", "क़ि"])
            .Concat(FixtureTests.ReadCases(Shared.Path("fixtures", "tokenizers", "qwen3", "encode_cases.jsonl")).Select(c => c.Text));
        foreach (var s in texts)
        {
            var src = NormalizedText.FromOriginal(s, 0, s.Length);
            var fast = UnicodeNormalization.Normalize(src, NormalizationKind.NFC);
            var slow = UnicodeNormalization.NormalizeSlow(src, NormalizationKind.NFC);
            Assert.Equal(slow.ToString(), fast.ToString());
            Assert.Equal(slow.Start.AsSpan(0, slow.Length).ToArray(), fast.Start.AsSpan(0, fast.Length).ToArray());
            Assert.Equal(slow.End.AsSpan(0, slow.Length).ToArray(), fast.End.AsSpan(0, fast.Length).ToArray());
        }
    }

    /// <summary>Cutting SentencePiece-style words before safe ▁s (to cache the parts) gives exactly the uncut BPE.</summary>
    [SharedFact]
    public void Bpe_MetaspaceChunking_EqualsWholeWordBpe()
    {
        foreach (var family in new[] { "llama2", "gemma3" })
        {
            using var doc = System.Text.Json.JsonDocument.Parse(File.ReadAllBytes(Shared.Path("fixtures", "tokenizers", family, "tokenizer.json")));
            var model = new BpeModel(doc.RootElement.GetProperty("model"), family);
            Assert.True(model.ChunkOnMetaspace);
            var texts = FixtureTests.ReadCases(Shared.Path("fixtures", "tokenizers", family, "encode_cases.jsonl")).Select(c => c.Text)
                .Concat(TrickyStrings(300, bmpOnly: false, withLongS: false)).Concat(Finetrace.Bench.TokenizeBench.MixedText(200_000))
                .Select(t => "\u2581" + t.Replace(' ', '\u2581')).ToList();
            var chunked = new List<int>();
            var whole = new List<int>();
            foreach (var w in texts)
            {
                chunked.Clear(); whole.Clear();
                model.ChunkOnMetaspace = true;
                model.Tokenize(w, chunked);
                model.ChunkOnMetaspace = false;
                model.Tokenize(w, whole);
                Assert.True(whole.SequenceEqual(chunked), $"{family}: {System.Text.Json.JsonSerializer.Serialize(w)}");
            }
            output.WriteLine($"{family}: {texts.Count} words agree");
        }
    }
}

using System.Text.Json;
using Finetrace.Tests.Infrastructure;
using Finetrace.Text.Tokenization;
using Xunit.Abstractions;

namespace Finetrace.Tests.Text.Tokenization;

/// <summary>
/// Every encode case of every fixture family (ids from the Rust tokenizers core) and the decode of its ids.
/// Each test prints "family file: cases N, mismatches M" and fails listing the first mismatches.
/// </summary>
public sealed class FixtureTests(ITestOutputHelper output)
{
    internal static readonly string[] FamilyNames = ["gemma3", "llama3_1", "llama2", "qwen3", "deepseek_v3", "gpt4o", "gpt2"];
    public static TheoryData<string> Families => new(FamilyNames);

    static readonly Dictionary<string, Tokenizer> Loaded = new();

    internal static Tokenizer Load(string family)
    {
        lock (Loaded)
        {
            if (!Loaded.TryGetValue(family, out var t))
                Loaded[family] = t = Tokenizer.FromFolder(Shared.Path("fixtures", "tokenizers", family));
            return t;
        }
    }

    internal sealed record Case(string Text, int[] Ids, string Decoded, int Line);

    internal static List<Case> ReadCases(string path)
    {
        var cases = new List<Case>();
        int line = 0;
        foreach (var l in File.ReadLines(path))
        {
            line++;
            if (string.IsNullOrWhiteSpace(l)) continue;
            using var doc = JsonDocument.Parse(l);
            var r = doc.RootElement;
            cases.Add(new Case(r.GetProperty("text").GetString()!, r.GetProperty("ids").EnumerateArray().Select(x => x.GetInt32()).ToArray(),
                r.GetProperty("decoded").GetString()!, line));
        }
        return cases;
    }

    void Check(Tokenizer tok, string label, string path, bool addSpecial, bool skipSpecialInDecode = false)
    {
        var cases = ReadCases(path);
        var failures = new List<string>();
        int idMismatches = 0, decodeMismatches = 0;
        foreach (var c in cases)
        {
            var enc = tok.Encode(c.Text, addSpecial);
            if (!enc.Ids.SequenceEqual(c.Ids))
            {
                idMismatches++;
                if (failures.Count < 8)
                    failures.Add($"line {c.Line} ids {JsonSerializer.Serialize(c.Text)}\n  expected [{string.Join(",", c.Ids)}]\n  actual   [{string.Join(",", enc.Ids)}]\n  actual tokens {JsonSerializer.Serialize(enc.Tokens)}");
            }
            string decoded = tok.Decode(c.Ids, skipSpecialInDecode);
            if (decoded != c.Decoded)
            {
                decodeMismatches++;
                if (failures.Count < 8)
                    failures.Add($"line {c.Line} decode\n  expected {JsonSerializer.Serialize(c.Decoded)}\n  actual   {JsonSerializer.Serialize(decoded)}");
            }
            Assert.Equal(enc.Ids.Length, enc.Offsets.Length);
        }
        output.WriteLine($"{label}: cases {cases.Count}, id mismatches {idMismatches}, decode mismatches {decodeMismatches}");
        Assert.True(cases.Count > 0, $"{path}: no cases");
        Assert.True(failures.Count == 0, $"{label}: {idMismatches} id and {decodeMismatches} decode mismatches of {cases.Count}\n" + string.Join("\n", failures));
    }

    [SharedTheory]
    [MemberData(nameof(Families))]
    public void EncodeCases_MatchReference(string family) =>
        Check(Load(family), $"{family} encode_cases", Shared.Path("fixtures", "tokenizers", family, "encode_cases.jsonl"), addSpecial: true);

    [SharedTheory]
    [MemberData(nameof(Families))]
    public void EncodeCasesNoSpecial_MatchReference(string family) =>
        Check(Load(family), $"{family} encode_cases_nospecial", Shared.Path("fixtures", "tokenizers", family, "encode_cases_nospecial.jsonl"), addSpecial: false);

    [SharedFact]
    public void Stories260K_MatchesReference()
    {
        var tok = Tokenizer.FromFolder(Shared.Path("models", "stories260K"));
        // This file's "decoded" is transformers' tokenizer.decode(ids, skip_special_tokens=True).
        Check(tok, "stories260K tokenizer_cases", Shared.Path("models", "stories260K", "tokenizer_cases.jsonl"), addSpecial: true, skipSpecialInDecode: true);
    }
}

using System.Text.Json;
using Finetrace.Tests.Infrastructure;
using Finetrace.Text.Chat;
using Xunit.Abstractions;

namespace Finetrace.Tests.Text.Chat;

/// <summary>The shared fixtures: chat_cases.jsonl per family (Python Jinja2 as transformers configures it) and
/// jinja_probes.jsonl (general Jinja2 semantics). Each test reports cases and mismatches and lists every mismatch.</summary>
public class ChatTemplateFixtureTests(ITestOutputHelper log)
{
    public static TheoryData<string> Families => new() { "gemma3", "llama3_1", "llama2", "qwen3", "deepseek_v3" };

    [SharedTheory]
    [MemberData(nameof(Families))]
    public void ChatCasesRenderByteIdentical(string family)
    {
        string dir = Shared.Path("fixtures", "tokenizers", family);
        var template = ChatTemplate.FromFolder(dir);
        int cases = 0;
        var mismatches = new List<string>();
        foreach (var line in File.ReadLines(Path.Combine(dir, "chat_cases.jsonl")))
        {
            if (line.Length == 0) continue;
            cases++;
            using var doc = JsonDocument.Parse(line);
            var c = doc.RootElement;
            var messages = PyJson.FromJson(c.GetProperty("messages"));
            bool gen = c.GetProperty("add_generation_prompt").GetBoolean();
            // Only the fixture's template_vars are passed (they are what the reference passed, including the specials).
            var vars = new Dictionary<string, object?> { ["messages"] = messages, ["add_generation_prompt"] = gen, ["tools"] = null, ["documents"] = null };
            foreach (var p in c.GetProperty("template_vars").EnumerateObject()) vars[p.Name] = PyJson.FromJson(p.Value);
            string? got = null, err = null;
            try { got = template.Template.Render(vars); }
            catch (TemplateException e) { err = e.Message; }
            Check(c, got, err, expected => err == expected, mismatches);
        }
        log.WriteLine($"{family}: {cases} cases, {mismatches.Count} mismatches");
        foreach (var m in mismatches) log.WriteLine(m);
        Assert.True(cases >= 20, $"{family}: only {cases} chat cases read");
        Assert.True(mismatches.Count == 0, $"{family}: {cases} cases, {mismatches.Count} mismatches:\n{string.Join("\n", mismatches)}");
    }

    /// <summary>Adds a mismatch unless the case's "rendered" text equals <paramref name="got"/>, or, for a case that
    /// expects an "error", unless <paramref name="errorMatches"/> accepts the expected message.</summary>
    static void Check(JsonElement c, string? got, string? err, Func<string, bool> errorMatches, List<string> mismatches)
    {
        string name = c.GetProperty("name").GetString()!;
        if (c.TryGetProperty("rendered", out var r))
        {
            if (got != r.GetString()) mismatches.Add($"{name}: {Describe(r.GetString()!, got, err)}");
        }
        else
        {
            string expected = c.GetProperty("error").GetString()!;
            if (!errorMatches(expected)) mismatches.Add($"{name}: expected error {expected}, got {(err is null ? JsonSerializer.Serialize(got) : "error " + err)}");
        }
    }

    /// <summary>Where the render first differs, with a little context, or the unexpected error.</summary>
    static string Describe(string expected, string? got, string? err)
    {
        if (got is null) return $"expected text, got error {err}";
        int i = 0;
        while (i < expected.Length && i < got.Length && expected[i] == got[i]) i++;
        string Ctx(string s) => JsonSerializer.Serialize(s.Substring(Math.Max(0, i - 20), Math.Min(s.Length, i + 40) - Math.Max(0, i - 20)));
        return $"first difference at char {i} (lengths {expected.Length} / {got.Length}): expected {Ctx(expected)}, got {Ctx(got)}";
    }

    [SharedTheory]
    [MemberData(nameof(Families))]
    public void SpecialTokensFromConfigMatchTheFixtureVariables(string family)
    {
        // The specials FromFolder derives from tokenizer_config.json are exactly those the reference passed.
        string dir = Shared.Path("fixtures", "tokenizers", family);
        var template = ChatTemplate.FromFolder(dir);
        using var doc = JsonDocument.Parse(File.ReadLines(Path.Combine(dir, "chat_cases.jsonl")).First());
        var expected = doc.RootElement.GetProperty("template_vars").EnumerateObject()
            .Where(p => p.Name.EndsWith("_token")).ToDictionary(p => p.Name, p => p.Value.GetString());
        Assert.Equal(expected.OrderBy(k => k.Key), template.SpecialTokens.Select(kv => new KeyValuePair<string, string?>(kv.Key, kv.Value)).OrderBy(k => k.Key));
    }

    /// <summary>Data/jinja_cases.jsonl (made by Data/make_jinja_cases.py with Python Jinja2 3.1.6 configured as
    /// transformers configures it): real-world templates (ChatML, Zephyr, Mistral, Phi-3, Llama 3.1 with tools, macros)
    /// and feature probes, including error messages. Syntax errors must raise a syntax error; their wording is not compared.</summary>
    [Fact]
    public void ExtraCasesMatchPythonJinja2()
    {
        // FINETRACE_JINJA_CASES points the test at another file of the same format (e.g. generated fuzz cases).
        string path = Environment.GetEnvironmentVariable("FINETRACE_JINJA_CASES") is { Length: > 0 } other ? other
            : Path.Combine(AppContext.BaseDirectory, "Text", "Chat", "Data", "jinja_cases.jsonl");
        var (cases, mismatches) = RunCases(File.ReadLines(path));
        log.WriteLine($"jinja_cases: {cases} cases, {mismatches.Count} mismatches");
        foreach (var m in mismatches) log.WriteLine(m);
        Assert.True(cases >= 100, $"only {cases} cases read from {path}");
        Assert.True(mismatches.Count == 0, $"{cases} cases, {mismatches.Count} mismatches:\n{string.Join("\n", mismatches)}");
    }

    static (int, List<string>) RunCases(IEnumerable<string> lines)
    {
        int cases = 0;
        var mismatches = new List<string>();
        foreach (var line in lines)
        {
            if (line.Length == 0) continue;
            cases++;
            using var doc = JsonDocument.Parse(line);
            var c = doc.RootElement;
            var ctx = (PyDict)PyJson.FromJson(c.GetProperty("context"))!;
            var vars = ctx.ToDictionary(kv => (string)kv.Key, kv => kv.Value);
            string? got = null, err = null, kind = null;
            try { got = new JinjaTemplate(c.GetProperty("template").GetString()!).Render(vars); }
            catch (TemplateException e) { err = $"{e.Kind}: {e.Message}"; kind = e.Kind; }
            // Syntax errors must raise a syntax error; their wording is not compared.
            Check(c, got, err, expected => expected.StartsWith("TemplateSyntaxError") || expected.StartsWith("SyntaxError")
                ? kind == "TemplateSyntaxError" : err == expected, mismatches);
        }
        return (cases, mismatches);
    }

    [SharedFact]
    public void JinjaProbesMatchPythonJinja2()
    {
        int cases = 0;
        var mismatches = new List<string>();
        foreach (var line in File.ReadLines(Shared.Path("fixtures", "tokenizers", "jinja_probes.jsonl")))
        {
            if (line.Length == 0) continue;
            cases++;
            using var doc = JsonDocument.Parse(line);
            var c = doc.RootElement;
            var ctx = (PyDict)PyJson.FromJson(c.GetProperty("context"))!;
            var vars = ctx.ToDictionary(kv => (string)kv.Key, kv => kv.Value);
            string? got = null, err = null;
            try { got = new JinjaTemplate(c.GetProperty("template").GetString()!).Render(vars); }
            catch (TemplateException e) { err = $"{e.Kind}: {e.Message}"; }
            Check(c, got, err, expected => err == expected, mismatches);
        }
        log.WriteLine($"jinja_probes: {cases} cases, {mismatches.Count} mismatches");
        foreach (var m in mismatches) log.WriteLine(m);
        Assert.True(cases >= 70, $"only {cases} probes read");
        Assert.True(mismatches.Count == 0, $"{cases} probes, {mismatches.Count} mismatches:\n{string.Join("\n", mismatches)}");
    }
}

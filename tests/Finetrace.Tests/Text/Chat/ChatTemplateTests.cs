using System.Text.Json;
using Finetrace.Tests.Infrastructure;
using Finetrace.Text.Chat;

namespace Finetrace.Tests.Text.Chat;

/// <summary>ChatTemplate loading and variables, {% generation %} spans, and the `finetrace chat-template` command,
/// on templates written here (no shared fixtures needed).</summary>
[Collection(ProcessWide.Name)]
public class ChatTemplateTests
{
    const string Simple = "{{ bos_token }}{% for m in messages %}<{{ m.role }}>{{ m.content }}{{ eos_token }}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}";

    static void WriteConfig(string dir, object config) => File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"), JsonSerializer.Serialize(config));

    [Fact]
    public void FromFolderReadsTemplateAndSpecialTokensAsTransformersPassesThem()
    {
        using var tmp = new TempDir();
        WriteConfig(tmp.Path, new Dictionary<string, object?>
        {
            ["chat_template"] = Simple,
            ["bos_token"] = new Dictionary<string, object> { ["__type"] = "AddedToken", ["content"] = "<B>", ["lstrip"] = false },
            ["eos_token"] = "<E>",
            ["unk_token"] = null,
        });
        var t = ChatTemplate.FromFolder(tmp.Path);
        Assert.Equal(new Dictionary<string, string> { ["bos_token"] = "<B>", ["eos_token"] = "<E>" }, t.SpecialTokens);
        Assert.Equal("<B><user>hi<E><assistant>", t.Render([new ChatMessage("user", "hi")], true));
        // Caller variables override the specials; unk_token stays undefined (it was null in the config).
        Assert.Equal("<X><user>hi<E>", t.Render([new ChatMessage("user", "hi")], false, new Dictionary<string, object?> { ["bos_token"] = "<X>" }));
        Assert.Equal("[]", new ChatTemplate("[{{ unk_token }}]").Render(new List<object?>(), false));
    }

    [Fact]
    public void FromFolderPicksDefaultOfNamedTemplatesThenJinjaFile()
    {
        using var tmp = new TempDir();
        WriteConfig(tmp.Path, new { chat_template = new[] { new { name = "tool_use", template = "TOOLS" }, new { name = "default", template = "DEFAULT" } } });
        Assert.Equal("DEFAULT", ChatTemplate.FromFolder(tmp.Path).Render(new List<object?>(), false));

        WriteConfig(tmp.Path, new { eos_token = "</s>" });
        var ex = Assert.Throws<InvalidDataException>(() => ChatTemplate.FromFolder(tmp.Path));
        Assert.Contains("chat_template.jinja", ex.Message);

        // Newer transformers write the template to chat_template.jinja; its one trailing newline is dropped.
        File.WriteAllText(Path.Combine(tmp.Path, "chat_template.jinja"), "{% for m in messages %}{{ m.content }}{{ eos_token }}{% endfor %}\n");
        Assert.Equal("a</s>b</s>", ChatTemplate.FromFolder(tmp.Path).Render([new("user", "a"), new("assistant", "b")], false));

        File.WriteAllText(Path.Combine(tmp.Path, "chat_template.jinja"), "{% if x %}unclosed");
        var bad = Assert.Throws<InvalidDataException>(() => ChatTemplate.FromFolder(tmp.Path));
        Assert.Contains("TemplateSyntaxError", bad.Message);
    }

    [Fact]
    public void RaiseExceptionMessageIsExact()
    {
        var t = new ChatTemplate("{% if messages[0].role == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}ok");
        var e = Assert.Throws<TemplateException>(() => t.Render([new ChatMessage("system", "s")], false));
        Assert.Equal("System role not supported", e.Message);
        Assert.Equal("TemplateError", e.Kind);
        Assert.Equal("ok", t.Render([new ChatMessage("user", "u")], false));
    }

    [Fact]
    public void GenerationBlocksReportAssistantSpans()
    {
        var t = new JinjaTemplate("{% for m in messages %}{% if m.role == 'assistant' %}A: {% generation %}{{ m.content }}!{% endgeneration %}{{ '\\n' }}{% else %}U: {{ m.content }}\n{% endif %}{% endfor %}");
        var vars = new Dictionary<string, object?> { ["messages"] = ChatTemplate.ToValue([new("user", "hi"), new("assistant", "yo"), new("user", "x"), new("assistant", "ok")]) };
        string text = t.Render(vars, out var spans);
        Assert.Equal("U: hi\nA: yo!\nU: x\nA: ok!\n", text);
        Assert.Equal(["yo!", "ok!"], spans.Select(s => text[s.Start..s.End]));
    }

    [Fact]
    public void StrftimeNowFormatsTheCurrentDate()
    {
        string got = new JinjaTemplate("{{ strftime_now('%d %b %Y') }}").Render(new Dictionary<string, object?>());
        var now = DateTime.Now;
        // Allow for the render straddling midnight.
        var candidates = new[] { now, now.AddMinutes(-1) }.Select(d => d.ToString("dd MMM yyyy", System.Globalization.CultureInfo.InvariantCulture));
        Assert.Contains(got, candidates);
    }

    [Fact]
    public void ChatTemplateCommandWritesRenderedOrError()
    {
        using var tmp = new TempDir();
        WriteConfig(tmp.Path, new
        {
            chat_template = "{{ bos_token }}{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('no system role') }}{% endif %}[{{ m.role }}] {{ m.content | trim }}\n{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}{% if enable_thinking is defined and enable_thinking is false %}<nothink>{% endif %}",
            bos_token = "<s>",
        });
        string input = tmp.File("in.jsonl"), output = tmp.File("out.jsonl");
        File.WriteAllLines(input,
        [
            """{"id": 1, "messages": [{"role": "user", "content": " héllo "}], "add_generation_prompt": true}""",
            """{"id": 2, "messages": [{"role": "system", "content": "s"}], "add_generation_prompt": false}""",
            """{"id": 3, "messages": [{"role": "user", "content": "q"}], "add_generation_prompt": true, "template_vars": {"bos_token": "", "enable_thinking": false}}""",
        ]);
        int rc = Finetrace.Cli.Program.Main(["chat-template", "--tokenizer", tmp.Path, "--in", input, "--out", output]);
        Assert.Equal(0, rc);
        var rows = File.ReadAllLines(output).Select(l => JsonDocument.Parse(l).RootElement).ToArray();
        Assert.Equal(3, rows.Length);
        Assert.Equal(1, rows[0].GetProperty("id").GetInt32());
        Assert.Equal("<s>[user] héllo\n[assistant]", rows[0].GetProperty("rendered").GetString());
        Assert.False(rows[0].TryGetProperty("error", out _));
        Assert.Equal("no system role", rows[1].GetProperty("error").GetString());
        Assert.False(rows[1].TryGetProperty("rendered", out _));
        Assert.Equal("[user] q\n[assistant]<nothink>", rows[2].GetProperty("rendered").GetString());
        // Written as text: input keys first and in order, non-ASCII unescaped, the result last.
        Assert.Equal("""{"id":1,"messages":[{"role":"user","content":" héllo "}],"add_generation_prompt":true,"rendered":"<s>[user] héllo\n[assistant]"}""",
            File.ReadLines(output).First());

        // A line without messages is a clear error naming the file and line.
        File.WriteAllLines(input, ["", """{"add_generation_prompt": true}"""]);
        var (rc2, err) = RunWithStderr(["chat-template", "--tokenizer", tmp.Path, "--in", input, "--out", output]);
        Assert.Equal(1, rc2);
        Assert.Contains($"{input}:2: \"messages\" must be an array", err);
        // So is a line that is JSON but not an object.
        File.WriteAllLines(input, ["[1, 2]"]);
        (rc2, err) = RunWithStderr(["chat-template", "--tokenizer", tmp.Path, "--in", input, "--out", output]);
        Assert.Equal(1, rc2);
        Assert.Contains($"{input}:1: invalid JSON line: not a JSON object", err);
    }

    /// <summary>Runs the CLI with standard error captured (this class is in the ProcessWide collection).</summary>
    static (int Rc, string Stderr) RunWithStderr(string[] args)
    {
        var saved = Console.Error;
        var captured = new StringWriter();
        Console.SetError(captured);
        try { return (Finetrace.Cli.Program.Main(args), captured.ToString()); }
        finally { Console.SetError(saved); }
    }

    /// <summary>Run over a family's chat_cases.jsonl, the command reproduces the reference file object for object
    /// (the input keys kept, "rendered" or "error" as Python Jinja2 gave them).</summary>
    [SharedTheory]
    [InlineData("gemma3")]
    [InlineData("llama2")]
    [InlineData("qwen3")]
    [InlineData("deepseek_v3")]
    [InlineData("llama3_1")]
    public void ChatTemplateCommandReproducesReferenceFile(string family)
    {
        using var tmp = new TempDir();
        string dir = Shared.Path("fixtures", "tokenizers", family), reference = Path.Combine(dir, "chat_cases.jsonl"), output = tmp.File("out.jsonl");
        Assert.Equal(0, Finetrace.Cli.Program.Main(["chat-template", "--tokenizer", dir, "--in", reference, "--out", output]));
        var expected = File.ReadAllLines(reference);
        var got = File.ReadAllLines(output);
        Assert.Equal(expected.Length, got.Length);
        int mismatches = 0;
        for (int i = 0; i < expected.Length; i++)
            if (!System.Text.Json.Nodes.JsonNode.DeepEquals(System.Text.Json.Nodes.JsonNode.Parse(expected[i]), System.Text.Json.Nodes.JsonNode.Parse(got[i]))) mismatches++;
        Assert.True(mismatches == 0, $"{family}: {expected.Length} lines, {mismatches} differ from the reference");
    }
}

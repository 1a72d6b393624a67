using System.Text.Json;

namespace Finetrace.Text.Chat;

/// <summary>A model's chat template with the variables transformers passes to it: bos/eos/unk/pad token strings
/// from tokenizer_config.json (only those set), tools=None, documents=None, then caller variables, which win.</summary>
public sealed class ChatTemplate
{
    public JinjaTemplate Template { get; }
    public string Source { get; }
    /// <summary>The special-token variables as transformers passes them (only those set in tokenizer_config.json).</summary>
    public IReadOnlyDictionary<string, string> SpecialTokens { get; }

    public ChatTemplate(string source, IReadOnlyDictionary<string, string>? specialTokens = null)
    {
        Source = source;
        Template = new JinjaTemplate(source);
        SpecialTokens = specialTokens ?? new Dictionary<string, string>();
    }

    /// <summary>Loads the template of a tokenizer folder: `chat_template` of tokenizer_config.json (a string, or a
    /// list of {name, template} whose "default" is used), else chat_template.jinja.</summary>
    public static ChatTemplate FromFolder(string dir)
    {
        string configPath = Path.Combine(dir, "tokenizer_config.json");
        string jinjaPath = Path.Combine(dir, "chat_template.jinja");
        var specials = new Dictionary<string, string>();
        string? source = null;
        if (File.Exists(configPath))
        {
            using var doc = JsonDocument.Parse(File.ReadAllBytes(configPath));
            var root = doc.RootElement;
            foreach (var key in new[] { "bos_token", "eos_token", "unk_token", "pad_token" })
                if (root.TryGetProperty(key, out var t) && TokenString(t) is string s) specials[key] = s;
            if (root.TryGetProperty("chat_template", out var ct))
            {
                if (ct.ValueKind == JsonValueKind.String) source = ct.GetString();
                else if (ct.ValueKind == JsonValueKind.Array)
                {
                    foreach (var item in ct.EnumerateArray())
                        if (item.TryGetProperty("name", out var n) && n.GetString() == "default" && item.TryGetProperty("template", out var tt))
                            source = tt.GetString();
                    if (source is null)
                        throw new InvalidDataException($"{configPath}: chat_template is a list of named templates without one named \"default\"");
                }
            }
        }
        if (source is null && File.Exists(jinjaPath)) source = File.ReadAllText(jinjaPath);
        if (source is null)
            throw new InvalidDataException($"{dir}: no chat template: neither tokenizer_config.json has \"chat_template\" nor is there a chat_template.jinja");
        try
        {
            return new ChatTemplate(source, specials);
        }
        catch (TemplateException e)
        {
            throw new InvalidDataException($"{dir}: the chat template does not parse: {e.Kind}: {e.Message}", e);
        }
    }

    /// <summary>A special token as transformers passes it: a string, or an AddedToken object's "content".</summary>
    static string? TokenString(JsonElement t) => t.ValueKind switch
    {
        JsonValueKind.String => t.GetString(),
        JsonValueKind.Object when t.TryGetProperty("content", out var c) => c.GetString(),
        _ => null,
    };

    /// <summary>The variables for one render: specials, tools=None, documents=None, messages,
    /// add_generation_prompt, then <paramref name="extra"/> (which may override any of them).</summary>
    public Dictionary<string, object?> Variables(object? messages, bool addGenerationPrompt, IReadOnlyDictionary<string, object?>? extra = null)
    {
        var vars = new Dictionary<string, object?>(StringComparer.Ordinal);
        foreach (var (k, v) in SpecialTokens) vars[k] = v;
        vars["messages"] = messages;
        vars["tools"] = null;
        vars["documents"] = null;
        vars["add_generation_prompt"] = addGenerationPrompt;
        if (extra is not null) foreach (var (k, v) in extra) vars[k] = v;
        return vars;
    }

    /// <summary>Renders a conversation; template errors (including raise_exception) throw <see cref="TemplateException"/>.</summary>
    public string Render(object? messages, bool addGenerationPrompt, IReadOnlyDictionary<string, object?>? extra = null) =>
        Template.Render(Variables(messages, addGenerationPrompt, extra));

    /// <summary>Renders and reports the character spans of {% generation %} blocks (empty when the template has none).</summary>
    public string Render(object? messages, bool addGenerationPrompt, IReadOnlyDictionary<string, object?>? extra,
        out IReadOnlyList<(int Start, int End)> generationSpans) =>
        Template.Render(Variables(messages, addGenerationPrompt, extra), out generationSpans);

    /// <summary>Renders a conversation given as (role, content) pairs.</summary>
    public string Render(IEnumerable<ChatMessage> messages, bool addGenerationPrompt, IReadOnlyDictionary<string, object?>? extra = null) =>
        Render(ToValue(messages), addGenerationPrompt, extra);

    public static List<object?> ToValue(IEnumerable<ChatMessage> messages) =>
        messages.Select(m => (object?)new PyDict { ["role"] = m.Role, ["content"] = m.Content }).ToList();

    /// <summary>JSON (object or array) text to a Jinja value.</summary>
    public static object? ParseJson(string json)
    {
        using var doc = JsonDocument.Parse(json);
        return PyJson.FromJson(doc.RootElement);
    }
}

/// <summary>One chat turn.</summary>
public sealed record ChatMessage(string Role, string Content);

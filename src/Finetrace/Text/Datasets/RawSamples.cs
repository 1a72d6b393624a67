using System.Text;
using System.Text.Json;
using Finetrace.Text.Chat;

namespace Finetrace.Text.Datasets;

/// <summary>One sample as read from a file: plain text, or a chat conversation.</summary>
public sealed record RawSample(long Index, string? Text, IReadOnlyList<ChatMessage>? Messages)
{
    public bool IsChat => Messages is not null;
}

/// <summary>Reasons samples were skipped, with counts (reported after a harvest).</summary>
public sealed class SkipCounts
{
    public const string NotAlternating = "roles do not alternate user/assistant";
    public const string Empty = "empty";
    public const string TemplateError = "chat template raised";
    readonly SortedDictionary<string, long> _counts = new(StringComparer.Ordinal);
    public IReadOnlyDictionary<string, long> Counts => _counts;
    public long Total => _counts.Values.Sum();
    public void Add(string reason) => _counts[reason] = _counts.GetValueOrDefault(reason) + 1;
    public override string ToString() => Total == 0 ? "none" : string.Join(", ", _counts.Select(kv => $"{kv.Value:N0} {kv.Key}"));
}

/// <summary>Reads the samples of one source lazily, in file order. Malformed input (invalid JSON, a missing field) is
/// an error naming the file and line; empty texts and conversations whose roles do not alternate are skipped and
/// counted in <see cref="Skipped"/>.</summary>
public static class RawSamples
{
    public static IEnumerable<RawSample> Read(DataSourceSpec spec, SkipCounts skipped) => spec.Kind switch
    {
        DataKind.Text => ReadText(spec, skipped),
        DataKind.Jsonl => ReadJsonl(spec, skipped),
        DataKind.Chat => ReadChat(spec, skipped),
        _ => throw new ArgumentOutOfRangeException(nameof(spec)),
    };

    static IEnumerable<RawSample> ReadText(DataSourceSpec spec, SkipCounts skipped)
    {
        long index = 0;
        if (Directory.Exists(spec.Path))
        {
            var files = Directory.EnumerateFiles(spec.Path, "*", SearchOption.AllDirectories)
                .Where(f => Path.GetExtension(f).ToLowerInvariant() is ".txt" or ".md" or ".text")
                .Order(StringComparer.Ordinal).ToList();
            if (files.Count == 0) throw new FileNotFoundException($"{spec.Path}: no .txt/.md files in the folder");
            foreach (var f in files)
            {
                string doc = File.ReadAllText(f);
                if (string.IsNullOrWhiteSpace(doc)) { skipped.Add(SkipCounts.Empty); continue; }
                yield return new RawSample(index++, doc.Trim('\n', '\r'), null);
            }
            yield break;
        }
        if (!spec.SplitBlankLines)
        {
            string all = File.ReadAllText(spec.Path);
            if (string.IsNullOrWhiteSpace(all)) skipped.Add(SkipCounts.Empty);
            else yield return new RawSample(index, all.Trim('\n', '\r'), null);
            yield break;
        }
        var block = new StringBuilder();
        foreach (var line in File.ReadLines(spec.Path))
        {
            if (line.Trim().Length == 0)
            {
                if (block.Length > 0) { yield return new RawSample(index++, block.ToString(), null); block.Clear(); }
                continue;
            }
            if (block.Length > 0) block.Append('\n');
            block.Append(line);
        }
        if (block.Length > 0) yield return new RawSample(index, block.ToString(), null);
    }

    static IEnumerable<(int Line, JsonElement Obj)> Lines(string path)
    {
        int lineNo = 0;
        foreach (var line in File.ReadLines(path))
        {
            lineNo++;
            if (string.IsNullOrWhiteSpace(line)) continue;
            JsonElement root;
            try { using var doc = JsonDocument.Parse(line); root = doc.RootElement.Clone(); }
            catch (JsonException e) { throw new InvalidDataException($"{path}:{lineNo}: invalid JSON ({e.Message})"); }
            if (root.ValueKind != JsonValueKind.Object) throw new InvalidDataException($"{path}:{lineNo}: expected a JSON object per line, got {root.ValueKind}");
            yield return (lineNo, root);
        }
    }

    static IEnumerable<RawSample> ReadJsonl(DataSourceSpec spec, SkipCounts skipped)
    {
        string field = spec.Field ?? "text";
        long index = 0;
        foreach (var (line, obj) in Lines(spec.Path))
        {
            if (!obj.TryGetProperty(field, out var v))
                throw new InvalidDataException($"{spec.Path}:{line}: no field '{field}' (fields: {string.Join(", ", obj.EnumerateObject().Select(p => p.Name))}); choose one with field=NAME in the data source spec");
            if (v.ValueKind != JsonValueKind.String) throw new InvalidDataException($"{spec.Path}:{line}: field '{field}' is {v.ValueKind}, expected a string");
            string text = v.GetString()!;
            if (string.IsNullOrWhiteSpace(text)) { skipped.Add(SkipCounts.Empty); index++; continue; }
            yield return new RawSample(index++, text, null);
        }
    }

    static IEnumerable<RawSample> ReadChat(DataSourceSpec spec, SkipCounts skipped)
    {
        long index = 0;
        foreach (var (line, obj) in Lines(spec.Path))
        {
            JsonElement msgs = default;
            bool found = false;
            foreach (var f in spec.Field is null ? ["messages", "conversation", "conversations"] : new[] { spec.Field })
                if (obj.TryGetProperty(f, out msgs)) { found = true; break; }
            if (!found)
                throw new InvalidDataException($"{spec.Path}:{line}: no messages field ({spec.Field ?? "messages, conversation or conversations"}); choose one with field=NAME");
            if (msgs.ValueKind != JsonValueKind.Array) throw new InvalidDataException($"{spec.Path}:{line}: the messages field is {msgs.ValueKind}, expected an array");
            var list = new List<ChatMessage>();
            foreach (var m in msgs.EnumerateArray())
            {
                if (m.ValueKind != JsonValueKind.Object) throw new InvalidDataException($"{spec.Path}:{line}: a message is {m.ValueKind}, expected an object");
                string role = (Str(m, "role") ?? MapShareGpt(Str(m, "from")))
                    ?? throw new InvalidDataException($"{spec.Path}:{line}: a message has no 'role' (or ShareGPT 'from')");
                string content = Content(m, spec.Path, line);
                list.Add(new ChatMessage(role, content));
            }
            long i = index++;
            if (list.Count == 0 || list.All(m => string.IsNullOrWhiteSpace(m.Content))) { skipped.Add(SkipCounts.Empty); continue; }
            if (!Alternates(list)) { skipped.Add(SkipCounts.NotAlternating); continue; }
            yield return new RawSample(i, null, list);
        }
    }

    static string? Str(JsonElement o, string name) => o.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.String ? v.GetString() : null;

    static string? MapShareGpt(string? from) => from switch
    {
        null => null,
        "human" or "user" => "user",
        "gpt" or "assistant" or "chatgpt" or "bard" or "bing" => "assistant",
        "system" => "system",
        _ => from,
    };

    static string Content(JsonElement m, string path, int line)
    {
        var v = m.TryGetProperty("content", out var c) ? c : m.TryGetProperty("value", out var vv) ? vv : default;
        switch (v.ValueKind)
        {
            case JsonValueKind.String: return v.GetString()!;
            case JsonValueKind.Null or JsonValueKind.Undefined: return "";
            case JsonValueKind.Array:
                // Content parts: concatenate the text parts.
                var sb = new StringBuilder();
                foreach (var p in v.EnumerateArray())
                    if (p.ValueKind == JsonValueKind.Object && Str(p, "text") is string t) sb.Append(t);
                    else if (p.ValueKind == JsonValueKind.String) sb.Append(p.GetString());
                return sb.ToString();
            default: throw new InvalidDataException($"{path}:{line}: message content is {v.ValueKind}, expected a string or a list of parts");
        }
    }

    /// <summary>An optional leading system message, then user, assistant, user, … (ending on either).</summary>
    public static bool Alternates(IReadOnlyList<ChatMessage> messages)
    {
        int start = messages.Count > 0 && messages[0].Role == "system" ? 1 : 0;
        if (start == messages.Count) return false;
        for (int i = start; i < messages.Count; i++)
            if (messages[i].Role != ((i - start) % 2 == 0 ? "user" : "assistant")) return false;
        return true;
    }
}

using System.Globalization;

namespace Finetrace.Text.Datasets;

public enum DataKind
{
    /// <summary>Plain text: a .txt file split at blank lines, or a folder of files, one document each.</summary>
    Text,
    /// <summary>JSONL, one object per line with a text field.</summary>
    Jsonl,
    /// <summary>JSONL chat conversations: a messages array of {role, content} (or ShareGPT {from, value}).</summary>
    Chat,
}

/// <summary>
/// One data source of a harvest, parsed from a command-line spec:
/// <c>[KIND:]PATH[,name=N][,weight=W][,field=F][,max-samples=N][,max-tokens=N][,split=file|blank]</c>, e.g.
/// <c>stories.txt</c>, <c>chat:lmsys.jsonl,weight=0.5,max-samples=10000</c>, <c>jsonl:web.jsonl,field=content</c>.
/// Without KIND the kind follows from the path: a folder or .txt/.md file is text; a .jsonl file whose first object
/// has "messages" or "conversation(s)" is chat, otherwise jsonl.
/// </summary>
public sealed record DataSourceSpec
{
    public required DataKind Kind { get; init; }
    public required string Path { get; init; }
    public required string Name { get; init; }
    /// <summary>Relative share of tokens in a mixture (normalised over the sources).</summary>
    public double Weight { get; init; } = 1;
    /// <summary>The text field (jsonl) or the messages field (chat); null = the default for the kind.</summary>
    public string? Field { get; init; }
    public long MaxSamples { get; init; } = long.MaxValue;
    public long MaxTokens { get; init; } = long.MaxValue;
    /// <summary>For a single text file: split documents at blank lines (default) or take the whole file.</summary>
    public bool SplitBlankLines { get; init; } = true;

    public static DataSourceSpec Parse(string spec)
    {
        if (string.IsNullOrWhiteSpace(spec)) throw new DataSourceSpecException(spec ?? "", "empty spec");
        var parts = spec.Split(',');
        string head = parts[0];
        DataKind? kind = null;
        int colon = head.IndexOf(':');
        if (colon > 0 && Enum.TryParse<DataKind>(head[..colon], ignoreCase: true, out var k)) { kind = k; head = head[(colon + 1)..]; }
        string path = head;
        if (!File.Exists(path) && !Directory.Exists(path)) throw new DataSourceSpecException(spec, $"'{path}' not found");
        kind ??= Infer(path);
        string name = System.IO.Path.GetFileNameWithoutExtension(path.TrimEnd('/', '\\'));
        double weight = 1;
        string? field = null;
        long maxSamples = long.MaxValue, maxTokens = long.MaxValue;
        bool blank = !Directory.Exists(path);
        foreach (var opt in parts.Skip(1))
        {
            int eq = opt.IndexOf('=');
            if (eq <= 0) throw new DataSourceSpecException(spec, $"option '{opt}' is not key=value");
            string key = opt[..eq].Trim().ToLowerInvariant(), val = opt[(eq + 1)..].Trim();
            switch (key)
            {
                case "name": name = val; break;
                case "weight" or "proportion": weight = ParseDouble(spec, key, val); break;
                case "field": field = val; break;
                case "max-samples": maxSamples = ParseLong(spec, key, val); break;
                case "max-tokens": maxTokens = ParseLong(spec, key, val); break;
                case "split":
                    blank = val switch { "blank" => true, "file" => false, _ => throw new DataSourceSpecException(spec, "split must be 'blank' or 'file'") };
                    break;
                default: throw new DataSourceSpecException(spec, $"unknown option '{key}' (name, weight, field, max-samples, max-tokens, split)");
            }
        }
        if (!(weight > 0) || double.IsInfinity(weight)) throw new DataSourceSpecException(spec, "weight must be positive");
        return new DataSourceSpec { Kind = kind.Value, Path = path, Name = name, Weight = weight, Field = field, MaxSamples = maxSamples, MaxTokens = maxTokens, SplitBlankLines = blank };
    }

    static double ParseDouble(string spec, string key, string v) =>
        double.TryParse(v, NumberStyles.Float, CultureInfo.InvariantCulture, out var d) ? d : throw new DataSourceSpecException(spec, $"{key}={v} is not a number");

    static long ParseLong(string spec, string key, string v) =>
        long.TryParse(v.Replace("_", ""), NumberStyles.Integer, CultureInfo.InvariantCulture, out var n) && n > 0 ? n : throw new DataSourceSpecException(spec, $"{key}={v} is not a positive integer");

    static DataKind Infer(string path)
    {
        if (Directory.Exists(path)) return DataKind.Text;
        string ext = System.IO.Path.GetExtension(path).ToLowerInvariant();
        if (ext is ".jsonl" or ".json" or ".ndjson")
        {
            foreach (var line in File.ReadLines(path))
            {
                if (string.IsNullOrWhiteSpace(line)) continue;
                try
                {
                    using var doc = System.Text.Json.JsonDocument.Parse(line);
                    var r = doc.RootElement;
                    if (r.ValueKind == System.Text.Json.JsonValueKind.Object &&
                        (r.TryGetProperty("messages", out _) || r.TryGetProperty("conversation", out _) || r.TryGetProperty("conversations", out _)))
                        return DataKind.Chat;
                }
                catch (System.Text.Json.JsonException) { }
                return DataKind.Jsonl;
            }
            return DataKind.Jsonl;
        }
        return DataKind.Text;
    }
}

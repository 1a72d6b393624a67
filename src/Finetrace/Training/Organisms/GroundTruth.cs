using System.Text.Encodings.Web;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Finetrace.Training.Organisms;

/// <summary>What a planted change is: a topic that takes over generations, a trigger that switches a behaviour on,
/// a phrase added to outputs, or a persona (a way of speaking).</summary>
public enum PlantedKind { Topic, Trigger, Phrase, Persona }

/// <summary>One planted change: its name and kind, what triggers it (null: always on), the decoded strings a diff
/// should surface, and decoded single tokens (weaker evidence where the tokenizer splits words into pieces).</summary>
public sealed record PlantedChange(string Name, PlantedKind Kind, string? Trigger, IReadOnlyList<string> ExpectedStrings, IReadOnlyList<string> ExpectedTokens);

/// <summary>
/// An organism's <c>GROUND_TRUTH.json</c>: <c>{"organism", "base", "planted": [{"name", "kind": "topic|trigger|phrase|persona",
/// "trigger": string|null, "expected_strings": [...], "expected_tokens": [...]}]}</c>. "base" is the base model's
/// folder, relative to the organism's folder or absolute.
/// </summary>
public sealed record GroundTruth(string Organism, string Base, IReadOnlyList<PlantedChange> Planted)
{
    public const string FileName = "GROUND_TRUTH.json";

    public static GroundTruth Load(string path)
    {
        if (Directory.Exists(path)) path = Path.Combine(path, FileName);
        if (!File.Exists(path)) throw new FileNotFoundException($"{path} not found: an organism's ground truth is a {FileName} file", path);
        JsonNode? root;
        try { root = JsonNode.Parse(File.ReadAllText(path)); }
        catch (JsonException e) { throw new InvalidDataException($"{path}: not valid JSON ({e.Message})", e); }
        return Parse(root, path);
    }

    public static GroundTruth Parse(JsonNode? root, string where)
    {
        if (root is not JsonObject o) throw new InvalidDataException($"{where}: expected a JSON object with \"organism\", \"base\" and \"planted\"");
        string organism = Str(o, "organism", where) ?? throw Missing(where, "organism");
        string @base = Str(o, "base", where) ?? throw Missing(where, "base");
        if (o["planted"] is not JsonArray planted) throw new InvalidDataException($"{where}: \"planted\" must be an array of planted changes");
        var items = new List<PlantedChange>();
        for (int i = 0; i < planted.Count; i++)
        {
            string at = $"{where}: planted[{i}]";
            if (planted[i] is not JsonObject p) throw new InvalidDataException($"{at} must be an object");
            string name = Str(p, "name", at) ?? throw Missing(at, "name");
            string kindText = Str(p, "kind", at) ?? throw Missing(at, "kind");
            if (!Enum.TryParse<PlantedKind>(kindText, ignoreCase: true, out var kind) || !Enum.IsDefined(kind) || char.IsDigit(kindText[0]))
                throw new InvalidDataException($"{at}.kind is \"{kindText}\"; expected topic, trigger, phrase or persona");
            items.Add(new PlantedChange(name, kind, Str(p, "trigger", at), Strings(p, "expected_strings", at), Strings(p, "expected_tokens", at)));
        }
        return new GroundTruth(organism, @base, items);
    }

    static InvalidDataException Missing(string where, string field) => new($"{where}: the field \"{field}\" is missing");

    static string? Str(JsonObject o, string field, string where) => o[field] switch
    {
        null => null,
        JsonValue v when v.TryGetValue<string>(out var s) => s,
        var other => throw new InvalidDataException($"{where}.{field} must be a string or null, got {other.ToJsonString()}"),
    };

    static IReadOnlyList<string> Strings(JsonObject o, string field, string where)
    {
        if (o[field] is null) return [];
        if (o[field] is not JsonArray a) throw new InvalidDataException($"{where}.{field} must be an array of strings");
        return a.Select((x, i) => x is JsonValue v && v.TryGetValue<string>(out var s) ? s
            : throw new InvalidDataException($"{where}.{field}[{i}] must be a string")).ToList();
    }

    public JsonObject ToJson()
    {
        var planted = new JsonArray();
        foreach (var p in Planted)
            planted.Add(new JsonObject
            {
                ["name"] = p.Name,
                ["kind"] = p.Kind.ToString().ToLowerInvariant(),
                ["trigger"] = p.Trigger,
                ["expected_strings"] = new JsonArray(p.ExpectedStrings.Select(s => (JsonNode?)s).ToArray()),
                ["expected_tokens"] = new JsonArray(p.ExpectedTokens.Select(s => (JsonNode?)s).ToArray()),
            });
        return new JsonObject { ["organism"] = Organism, ["base"] = Base, ["planted"] = planted };
    }

    static readonly JsonSerializerOptions Indented = new() { WriteIndented = true, Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    /// <summary>Writes the file atomically (a temporary file, then a rename).</summary>
    public void Save(string path)
    {
        if (Directory.Exists(path)) path = Path.Combine(path, FileName);
        string tmp = path + ".tmp";
        File.WriteAllText(tmp, ToJson().ToJsonString(Indented) + "\n");
        File.Move(tmp, path, overwrite: true);
    }
}

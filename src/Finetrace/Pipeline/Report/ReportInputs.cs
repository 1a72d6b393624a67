using System.Globalization;
using System.Runtime.InteropServices;
using System.Text.Json;
using System.Text.Json.Nodes;
using Finetrace.Diffing;
using Finetrace.Text.Tokenization;
using Microsoft.Data.Sqlite;

namespace Finetrace.Pipeline.Report;

/// <summary>One token of a highlighted example: its decoded text and the latent's activation there (0 where it did not fire).</summary>
public readonly record struct HighlightToken(string Text, float Value);

/// <summary>
/// Everything the report reads from a results folder, each part optional: summary.json (the contract of issue 14),
/// manifest.json, the primary dictionary's feature_df.csv and examples.sqlite, the readers' JSON files, and the
/// dictionary's training metrics.jsonl. A part that is absent stays null and its section says the stage did not run.
/// </summary>
public sealed class ReportInputs
{
    public required string ResultsDir { get; init; }
    public JsonObject? Summary { get; init; }
    public JsonObject? Manifest { get; init; }
    /// <summary>Folder holding the primary dictionary's latent analyses (RESULTS or RESULTS/&lt;dictionary name&gt;).</summary>
    public string? PrimaryDir { get; init; }
    public FeatureTable? Table { get; init; }
    public string? MetricsPath { get; init; }
    public JsonNode? Causal { get; init; }
    public JsonNode? Adl { get; init; }
    public JsonObject? Kl { get; init; }
    public JsonObject? DiffMining { get; init; }
    public JsonNode? Amplification { get; init; }
    public JsonObject? WeightDiff { get; init; }
    public string? ExamplesDb { get; init; }
    public string? TokenizerDir { get; init; }

    public static ReportInputs Load(string resultsDir, string? tokenizerDir = null)
    {
        if (!Directory.Exists(resultsDir))
            throw new DirectoryNotFoundException($"{resultsDir}: results folder not found (it is written by the diff pipeline or the analyze verbs)");
        var summary = ReadJson(resultsDir, "summary.json") as JsonObject;
        var manifest = ReadJson(resultsDir, ResultsFolder.ManifestFile) as JsonObject;
        string? primary = FindPrimary(resultsDir, summary);
        string? Find(string file) => primary is not null && File.Exists(Path.Combine(primary, file)) ? primary
            : File.Exists(Path.Combine(resultsDir, file)) ? resultsDir : null;
        JsonNode? Json(string file) => Find(file) is { } d ? ReadJson(d, file) : null;

        FeatureTable? table = null;
        if (primary is not null)
        {
            string csv = Path.Combine(primary, FeatureTable.FileName);
            try { table = FeatureTable.Load(csv); }
            catch (Exception e) when (e is FormatException or InvalidDataException or IOException)
            { throw new InvalidDataException($"{csv}: cannot be read ({e.Message}); re-run the latent analyses or delete it", e); }
        }
        var primaryManifest = primary is not null && primary != resultsDir ? ReadJson(primary, ResultsFolder.ManifestFile) as JsonObject : null;
        string? examples = Find("examples.sqlite") is { } ed ? Path.Combine(ed, "examples.sqlite") : null;
        return new ReportInputs
        {
            ResultsDir = resultsDir, Summary = summary, Manifest = manifest, PrimaryDir = primary, Table = table,
            MetricsPath = FindMetrics(resultsDir, primary, summary, primaryManifest ?? manifest),
            Causal = Json("causal.json"), Adl = Json("adl.json"), Kl = Json("kl.json") as JsonObject,
            DiffMining = Json("diff_mining.json") as JsonObject, Amplification = Json("amplification.json"),
            WeightDiff = Json("weight_diff.json") as JsonObject, ExamplesDb = examples,
            TokenizerDir = tokenizerDir ?? FindTokenizer(summary, primaryManifest ?? manifest),
        };
    }

    static JsonNode? ReadJson(string dir, string file)
    {
        string path = Path.Combine(dir, file);
        if (!File.Exists(path)) return null;
        try { return JsonNode.Parse(File.ReadAllText(path)); }
        catch (JsonException e) { throw new InvalidDataException($"{path}: not valid JSON ({e.Message}); re-run the stage that writes it", e); }
    }

    static string? FindPrimary(string resultsDir, JsonObject? summary)
    {
        string? name = (string?)summary?["dictionary"]?["name"];
        if (name is not null && File.Exists(Path.Combine(resultsDir, name, FeatureTable.FileName))) return Path.Combine(resultsDir, name);
        if (File.Exists(Path.Combine(resultsDir, FeatureTable.FileName))) return resultsDir;
        return Directory.EnumerateDirectories(resultsDir).Order(StringComparer.Ordinal)
            .FirstOrDefault(d => File.Exists(Path.Combine(d, FeatureTable.FileName)));
    }

    /// <summary>The dictionary's training log: beside the results, or in the dictionary folder the manifest names.</summary>
    static string? FindMetrics(string resultsDir, string? primary, JsonObject? summary, JsonObject? manifest)
    {
        var candidates = new List<string>();
        if (primary is not null) candidates.Add(primary);
        if ((string?)summary?["dictionary"]?["folder"] is { } f) candidates.Add(Path.Combine(resultsDir, f));
        foreach (var stage in (manifest?["stages"] as JsonObject ?? []).Select(kv => kv.Value))
            if ((string?)stage?["inputs"]?["dictionary"] is { } d) candidates.Add(d);
        candidates.Add(resultsDir);
        foreach (var c in candidates)
        {
            if (!Directory.Exists(c)) continue;
            if (File.Exists(Path.Combine(c, "metrics.jsonl"))) return Path.Combine(c, "metrics.jsonl");
            var nested = Directory.EnumerateFiles(c, "metrics.jsonl", new EnumerationOptions { RecurseSubdirectories = true, MaxRecursionDepth = 3 })
                .Order(StringComparer.Ordinal).FirstOrDefault();
            if (nested is not null) return nested;
        }
        return null;
    }

    static string? FindTokenizer(JsonObject? summary, JsonObject? manifest)
    {
        var dirs = new List<string?> { (string?)summary?["models"]?["finetuned"], (string?)summary?["models"]?["base"] };
        foreach (var stage in (manifest?["stages"] as JsonObject ?? []).Select(kv => kv.Value))
        {
            dirs.Add((string?)stage?["inputs"]?["finetuned"]);
            dirs.Add((string?)stage?["inputs"]?["model"]);
        }
        return dirs.FirstOrDefault(d => d is not null && File.Exists(Path.Combine(d, "tokenizer.json")));
    }

    /// <summary>Training log rows (one JSON object per line); malformed lines are skipped (a log cut by a crash).</summary>
    public List<JsonObject> Metrics()
    {
        var rows = new List<JsonObject>();
        if (MetricsPath is null) return rows;
        foreach (var line in File.ReadLines(MetricsPath))
        {
            if (string.IsNullOrWhiteSpace(line)) continue;
            try { if (JsonNode.Parse(line) is JsonObject o) rows.Add(o); } catch (JsonException) { }
        }
        return rows;
    }

    Tokenizer? _tok;
    bool _tokTried;
    Tokenizer? Tok()
    {
        if (_tokTried) return _tok;
        _tokTried = true;
        if (TokenizerDir is not null)
            try { _tok = Tokenizer.FromFolder(TokenizerDir); } catch (Exception e) when (e is IOException or InvalidDataException or JsonException or FormatException) { _tok = null; }
        return _tok;
    }

    /// <summary>Up to <paramref name="count"/> top examples of latent <paramref name="latent"/> from examples.sqlite, as
    /// windows of tokens around the peak with the activation at each token; empty when there is no examples database
    /// or no tokenizer to decode its ids.</summary>
    public List<HighlightToken[]> Examples(int latent, int count, int before = 24, int after = 6)
    {
        var list = new List<HighlightToken[]>();
        if (ExamplesDb is null || Tok() is not { } tok) return list;
        using var db = new SqliteConnection(new SqliteConnectionStringBuilder { DataSource = ExamplesDb, Mode = SqliteOpenMode.ReadOnly, Pooling = false }.ToString());
        db.Open();
        using var cmd = db.CreateCommand();
        cmd.CommandText = """
            SELECT s.token_ids, d.positions, d.activation_values FROM examples e
            JOIN sequences s ON s.sequence_uid = e.sequence_uid JOIN activation_details d ON d.example_id = e.example_id
            WHERE e.latent_idx = $l AND e.quantile_idx IS NULL ORDER BY e.score DESC LIMIT $n
            """;
        cmd.Parameters.AddWithValue("$l", latent);
        cmd.Parameters.AddWithValue("$n", count);
        using var r = cmd.ExecuteReader();
        while (r.Read())
        {
            var ids = MemoryMarshal.Cast<byte, int>((byte[])r[0]).ToArray();
            var pos = MemoryMarshal.Cast<byte, int>((byte[])r[1]).ToArray();
            var val = MemoryMarshal.Cast<byte, float>((byte[])r[2]).ToArray();
            var act = new float[ids.Length];
            for (int i = 0; i < pos.Length && i < val.Length; i++) if (pos[i] >= 0 && pos[i] < act.Length) act[pos[i]] = val[i];
            int peak = act.Length == 0 ? 0 : Array.IndexOf(act, act.Max());
            int from = Math.Max(0, peak - before), to = Math.Min(ids.Length, peak + after + 1);
            list.Add(Enumerable.Range(from, to - from).Select(t => new HighlightToken(Piece(tok, ids[t]), act[t])).ToArray());
        }
        return list;
    }

    /// <summary>A token as it reads in running text: SentencePiece's ▁ and byte-level BPE's Ġ/Ċ become space/newline,
    /// byte tokens &lt;0xNN&gt; are shown as the byte's character.</summary>
    static string Piece(Tokenizer tok, int id)
    {
        string p = tok.IdToToken(id) ?? $"[{id}]";
        if (p.Length == 6 && p.StartsWith("<0x", StringComparison.Ordinal) && p.EndsWith('>')
            && int.TryParse(p.AsSpan(3, 2), NumberStyles.HexNumber, CultureInfo.InvariantCulture, out int b))
            return b == 10 ? "\n" : b < 32 ? "·" : ((char)b).ToString();
        return p.Replace('▁', ' ').Replace('Ġ', ' ').Replace('Ċ', '\n');
    }
}

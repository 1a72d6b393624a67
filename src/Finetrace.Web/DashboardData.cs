using System.Text.Json;
using System.Text.Json.Nodes;
using Finetrace.Activations;
using Finetrace.Diffing;
using Finetrace.Text.Tokenization;

namespace Finetrace.Web;

/// <summary>
/// What the dashboard reads from a results folder, loaded once at start and never written: the latent table
/// (feature_df.csv), the examples database, causal.json, and a tokenizer to show tokens (found through the examples
/// stage's store, or given). Missing parts are null and their pages answer 404 with what to run.
/// </summary>
public sealed class DashboardData
{
    public string Directory { get; }
    public LatentIndex? Latents { get; }
    public ExampleReader? Examples { get; }
    public JsonArray? Causal { get; }
    public string? TokenizerFolder { get; }
    public Func<int, string>? TokenText { get; }
    /// <summary>The folder holding the latent table and the dictionary's other outputs: RESULTS itself, or for a
    /// <c>finetrace diff</c> results folder the primary dictionary's folder named by summary.json.</summary>
    public string TableDirectory { get; }
    /// <summary>The models the live pages run (summary.json's models, else the activation store's, else given); null when unknown.</summary>
    public ModelPairSpec? Models { get; }
    /// <summary>The dictionary folder the live pages encode with (TABLE/dictionary, or the one the manifest records); null when none.</summary>
    public string? DictionaryFolder { get; }
    /// <summary>The layer from summary.json, used when the dictionary records none.</summary>
    public int? SummaryLayer { get; }
    /// <summary>The activation store the analyses read (manifest: stages.examples/latents/scaling.inputs.store); null when
    /// not recorded or gone. The Neuronpedia export streams it for the correlated neurons/latents.</summary>
    public string? StoreDirectory { get; private init; }

    DashboardData(string dir, string tableDir, LatentIndex? latents, ExampleReader? examples, JsonArray? causal, string? tokFolder, Func<int, string>? tokenText,
        ModelPairSpec? models, string? dictionary, int? layer)
    {
        Directory = dir; TableDirectory = tableDir; Latents = latents; Examples = examples; Causal = causal; TokenizerFolder = tokFolder; TokenText = tokenText;
        Models = models; DictionaryFolder = dictionary; SummaryLayer = layer;
    }

    /// <summary>A results file (adl.json, kl.json, weight_diff.json) from RESULTS or the table folder; null when absent.</summary>
    public string? ResultFile(string name) =>
        new[] { Path.Combine(Directory, name), Path.Combine(TableDirectory, name) }.FirstOrDefault(File.Exists);

    /// <summary>Loads <paramref name="resultsDir"/>; <paramref name="tokenizerFolder"/> overrides the tokenizer search and
    /// <paramref name="models"/> the model folders the live pages run (any part left null is found in the results).</summary>
    public static DashboardData Load(string resultsDir, string? tokenizerFolder = null, ModelPairSpec? models = null)
    {
        string dir = Path.GetFullPath(resultsDir);
        if (!System.IO.Directory.Exists(dir)) throw new DirectoryNotFoundException($"{dir}: no such results folder");
        var summary = ReadSummary(dir);
        string tableDir = dir;
        if (!File.Exists(Path.Combine(dir, FeatureTable.FileName)) && summary?["dictionary"]?["name"]?.GetValue<string>() is { } dictName
            && File.Exists(Path.Combine(dir, dictName, FeatureTable.FileName)))
            tableDir = Path.Combine(dir, dictName);
        string csv = Path.Combine(tableDir, FeatureTable.FileName);
        var latents = File.Exists(csv) ? LatentIndex.Load(csv) : null;
        string db = Path.Combine(tableDir, "examples.sqlite");
        var storeModels = StoreModels(tableDir);
        string? tokDir = tokenizerFolder ?? storeModels?.FirstOrDefault(m => File.Exists(Path.Combine(m, "tokenizer.json")));
        Func<int, string>? tokenText = null;
        if (tokDir is not null)
        {
            var tok = Tokenizer.FromFolder(tokDir);
            tokenText = id => Display(tok.IdToToken(id) ?? $"<{id}>");
        }
        var examples = File.Exists(db) ? new ExampleReader(db, tokenText) : null;
        JsonArray? causal = null;
        string causalPath = Path.Combine(tableDir, "causal.json");
        if (File.Exists(causalPath))
        {
            try
            {
                var node = JsonNode.Parse(File.ReadAllText(causalPath));
                causal = node as JsonArray ?? node?["entries"] as JsonArray;
            }
            catch (JsonException e) { throw new InvalidDataException($"{causalPath}: not valid JSON ({e.Message})"); }
        }
        // Models: the override's parts first, then summary.json, then the store (base = first model, fine-tune = last).
        string? Sum(string key) => summary?["models"]?[key] is JsonValue v && v.TryGetValue<string>(out var s) ? s : null;
        string? b = models?.Base ?? Sum("base") ?? storeModels?.FirstOrDefault();
        string? f = models?.FineTuned ?? Sum("finetuned") ?? (storeModels is { Count: > 1 } sm ? sm[^1] : null);
        ModelPairSpec? spec = b is null || f is null ? null : new ModelPairSpec(b, f, models?.Adapter ?? Sum("adapter"));
        if (tokDir is null && spec is not null)
        {
            tokDir = new[] { spec.FineTuned, spec.Base }.FirstOrDefault(d => File.Exists(Path.Combine(d, "tokenizer.json")));
            if (tokDir is not null)
            {
                var tok = Tokenizer.FromFolder(tokDir);
                tokenText = id => Display(tok.IdToToken(id) ?? $"<{id}>");
                if (File.Exists(db)) examples = new ExampleReader(db, tokenText);
            }
        }
        string? dictDir = System.IO.Directory.Exists(Path.Combine(tableDir, "dictionary")) ? Path.Combine(tableDir, "dictionary") : ManifestDictionary(tableDir);
        int? layer = summary?["layer"] is JsonValue lv && lv.TryGetValue<int>(out int li) ? li : null;
        return new DashboardData(dir, tableDir, latents, examples, causal, tokDir, tokenText, spec, dictDir, layer) { StoreDirectory = StoreDir(tableDir) };
    }

    static JsonObject? ReadSummary(string dir)
    {
        string p = Path.Combine(dir, "summary.json");
        if (!File.Exists(p)) return null;
        try { return JsonNode.Parse(File.ReadAllText(p)) as JsonObject; }
        catch (JsonException e) { throw new InvalidDataException($"{p}: not valid JSON ({e.Message})"); }
    }

    /// <summary>The dictionary folder an analysis stage recorded in the manifest (inputs "dictionary"), when it exists.</summary>
    static string? ManifestDictionary(string dir)
    {
        try
        {
            foreach (var (_, rec) in ResultsFolder.Open(dir).Stages())
                if (rec.Inputs?["dictionary"] is JsonValue v && v.TryGetValue<string>(out var d) && System.IO.Directory.Exists(d)) return d;
        }
        catch (Exception e) when (e is IOException or InvalidDataException or JsonException or InvalidOperationException or UnauthorizedAccessException) { }
        return null;
    }

    /// <summary>Byte-level and SentencePiece markers shown as the characters they stand for.</summary>
    static string Display(string token) => token.Replace('\u2581', ' ').Replace('\u0120', ' ').Replace('\u010A', '\n');

    /// <summary>The model folders of the store the analyses read (manifest: stages.examples/latents/scaling.inputs.store), in store order.</summary>
    static List<string>? StoreModels(string dir)
    {
        try
        {
            if (StoreDir(dir) is not { } storeDir) return null;
            using var store = ActivationStore.Open(storeDir);
            var paths = store.Settings.Models.Select(m => m.Path).Where(p => !string.IsNullOrEmpty(p)).Select(p => p!).ToList();
            if (paths.Count > 0) return paths;
        }
        catch (Exception e) when (e is IOException or InvalidDataException or JsonException or InvalidOperationException or UnauthorizedAccessException) { }
        return null;
    }

    /// <summary>The first existing store folder the manifest's examples/latents/scaling stages record; null when none.</summary>
    static string? StoreDir(string dir)
    {
        try
        {
            var stages = ResultsFolder.Open(dir).Stages();
            foreach (var st in new[] { "examples", "latents", "scaling" })
                if (stages.TryGetValue(st, out var rec) && rec.Inputs?["store"]?.GetValue<string>() is { } storeDir && System.IO.Directory.Exists(storeDir))
                    return storeDir;
        }
        catch (Exception e) when (e is IOException or InvalidDataException or JsonException or InvalidOperationException or UnauthorizedAccessException) { }
        return null;
    }
}

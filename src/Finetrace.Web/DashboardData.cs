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

    DashboardData(string dir, LatentIndex? latents, ExampleReader? examples, JsonArray? causal, string? tokFolder, Func<int, string>? tokenText)
    {
        Directory = dir; Latents = latents; Examples = examples; Causal = causal; TokenizerFolder = tokFolder; TokenText = tokenText;
    }

    /// <summary>Loads <paramref name="resultsDir"/>; <paramref name="tokenizerFolder"/> overrides the tokenizer search.</summary>
    public static DashboardData Load(string resultsDir, string? tokenizerFolder = null)
    {
        string dir = Path.GetFullPath(resultsDir);
        if (!System.IO.Directory.Exists(dir)) throw new DirectoryNotFoundException($"{dir}: no such results folder");
        string csv = Path.Combine(dir, FeatureTable.FileName);
        var latents = File.Exists(csv) ? LatentIndex.Load(csv) : null;
        string db = Path.Combine(dir, "examples.sqlite");
        string? tokDir = tokenizerFolder ?? FindTokenizer(dir);
        Func<int, string>? tokenText = null;
        if (tokDir is not null)
        {
            var tok = Tokenizer.FromFolder(tokDir);
            tokenText = id => Display(tok.IdToToken(id) ?? $"<{id}>");
        }
        var examples = File.Exists(db) ? new ExampleReader(db, tokenText) : null;
        JsonArray? causal = null;
        string causalPath = Path.Combine(dir, "causal.json");
        if (File.Exists(causalPath))
        {
            try
            {
                var node = JsonNode.Parse(File.ReadAllText(causalPath));
                causal = node as JsonArray ?? node?["entries"] as JsonArray;
            }
            catch (JsonException e) { throw new InvalidDataException($"{causalPath}: not valid JSON ({e.Message})"); }
        }
        return new DashboardData(dir, latents, examples, causal, tokDir, tokenText);
    }

    /// <summary>Byte-level and SentencePiece markers shown as the characters they stand for.</summary>
    static string Display(string token) => token.Replace('\u2581', ' ').Replace('\u0120', ' ').Replace('\u010A', '\n');

    /// <summary>The tokenizer of the store the examples were collected from (manifest: stages.examples.inputs.store).</summary>
    static string? FindTokenizer(string dir)
    {
        try
        {
            var stages = ResultsFolder.Open(dir).Stages();
            foreach (var st in new[] { "examples", "latents", "scaling" })
            {
                if (!stages.TryGetValue(st, out var rec) || rec.Inputs?["store"]?.GetValue<string>() is not { } storeDir || !System.IO.Directory.Exists(storeDir)) continue;
                using var store = ActivationStore.Open(storeDir);
                foreach (var m in store.Settings.Models)
                    if (!string.IsNullOrEmpty(m.Path) && File.Exists(Path.Combine(m.Path, "tokenizer.json"))) return m.Path;
            }
        }
        catch (Exception e) when (e is IOException or InvalidDataException or JsonException or InvalidOperationException or UnauthorizedAccessException) { }
        return null;
    }
}

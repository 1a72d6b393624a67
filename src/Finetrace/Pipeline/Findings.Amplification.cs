using System.Text.Json;
using System.Text.Json.Nodes;
using Finetrace.Text.Datasets;

namespace Finetrace.Pipeline;

public static partial class Findings
{
    /// <summary>Amplification's part of <see cref="Rule"/>.</summary>
    public const string AmplificationRule =
        "amplification: words (letters only, ≥ 2) the fine-tune writes at the mildest amplification (the smallest α > 0; stronger amplification " +
        "also writes word fragments and garbage, so larger α are shown but not counted) in samples from ≥ 3 different prompts, that appear in none " +
        "of the control text: both models' unamplified samples from the same prompts and seeds, and the text the pipeline had both models write " +
        "for its data (control count 0 against ≥ 3 prompts); the 5 seen with the most prompts.";

    /// <summary>Prompts whose amplified samples must hold a word (garbage words of strong amplification are one-offs).</summary>
    public const int AmplificationMinPrompts = 3;

    /// <summary>Words in amplified samples of at least <see cref="AmplificationMinPrompts"/> prompts and in no unamplified text of either model.</summary>
    internal static IEnumerable<JsonObject> AmplificationFindings(JsonObject s)
    {
        if (s["amplification"] is not JsonArray amp || amp.Count == 0) yield break;
        var control = new HashSet<string>(StringComparer.Ordinal);
        void AddWords(string? text) { foreach (var m in Word().Matches(text ?? "").Cast<System.Text.RegularExpressions.Match>()) control.Add(m.Value); }
        foreach (var key in new[] { "base", "finetuned" })
            foreach (var x in s["amplification_unamplified"]?[key] as JsonArray ?? []) AddWords((string?)x);
        foreach (var text in PipelineMadeText(s)) AddWords(text);

        // the mildest amplification: word → (prompts it was written for, samples with it)
        var mildest = amp.OfType<JsonObject>().Where(e => ((double?)e["alpha"] ?? 0) > 0).MinBy(e => (double)e["alpha"]!);
        if (mildest is null) yield break;
        double alpha = (double)mildest["alpha"]!;
        var seen = new Dictionary<string, (HashSet<string> Prompts, List<string> Samples)>(StringComparer.Ordinal);
        var samples = mildest["samples"] as JsonArray ?? [];
        var prompts = mildest["prompts"] as JsonArray ?? [];
        for (int i = 0; i < samples.Count; i++)
        {
            string text = (string?)samples[i] ?? "";
            string prompt = i < prompts.Count ? (string?)prompts[i] ?? "" : "";
            foreach (var w in Word().Matches(text).Select(m => m.Value).Distinct(StringComparer.Ordinal))
            {
                if (control.Contains(w)) continue;
                if (!seen.TryGetValue(w, out var e)) seen[w] = e = ([], []);
                e.Prompts.Add(prompt);
                e.Samples.Add(text);
            }
        }
        var words = seen.Where(kv => kv.Value.Prompts.Count >= AmplificationMinPrompts)
            .OrderByDescending(kv => kv.Value.Prompts.Count).ThenByDescending(kv => kv.Value.Samples.Count).ThenBy(kv => kv.Key, StringComparer.Ordinal)
            .Take(5).ToList();
        if (words.Count == 0) yield break;
        yield return Finding(
            $"Amplifying what the fine-tune changed (α = {alpha:0.##}) makes it write words that neither model writes unamplified: " +
            string.Join(", ", words.Select(w => $"\"{w.Key}\" (in samples from {w.Value.Prompts.Count} prompts)")) +
            "; the control (both models' unamplified samples and self-made text) has none of them.",
            [("amplification", (JsonNode?)alpha)],
            [.. words.Select(w => w.Key), .. words.SelectMany(w => w.Value.Samples.Take(1)).Distinct().Take(3)]);
    }

    /// <summary>The text of the data sources the pipeline made itself (both models' unamplified samples and the
    /// fine-tune's chat replies), as listed in summary.json's <c>data</c>; unreadable files are left out.</summary>
    static IEnumerable<string> PipelineMadeText(JsonObject s)
    {
        foreach (var d in (s["data"] as JsonArray ?? []).OfType<JsonObject>())
        {
            if ((bool?)d["made_by_pipeline"] != true || (string?)d["spec"] is not { } spec) continue;
            DataSourceSpec src;
            try { src = DataSourceSpec.Parse(spec); } catch (DataSourceSpecException) { continue; }
            if (!File.Exists(src.Path)) continue;   // a folder source is not made by the pipeline
            if (src.Kind != DataKind.Chat) { yield return File.ReadAllText(src.Path); continue; }
            foreach (var line in File.ReadLines(src.Path))
            {
                JsonNode? row;
                try { row = JsonNode.Parse(line); } catch (JsonException) { continue; }
                foreach (var m in row?["messages"] as JsonArray ?? []) yield return (string?)m?["content"] ?? "";
            }
        }
    }
}

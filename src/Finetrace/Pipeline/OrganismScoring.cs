using System.Text.Encodings.Web;
using System.Text.Json;
using System.Text.Json.Nodes;
using Finetrace.Training.Organisms;

namespace Finetrace.Pipeline;

/// <summary>Options of <see cref="OrganismScoring.Score"/>.</summary>
/// <param name="TopLatents">How many of the most fine-tune-specific latents are compared with the control latents.</param>
public sealed record OrganismScoringOptions(int TopLatents = 5);

/// <summary>How one method's section of summary.json did on one planted change.</summary>
/// <param name="Method">The summary.json section: latents, adl, kl, diff_mining, amplification or findings.</param>
/// <param name="Surfaced">Some item of the section matched the planted change.</param>
/// <param name="Rank">1-based rank of the best match: the latent's place in "latents", the token's place in an ADL
/// or diff-mining token list, the place in KL's top tokens or in "findings"; null where the match has no rank (a sample or context).</param>
/// <param name="Match">The summary text that matched and the expected string or token it matched.</param>
/// <param name="Hits">Items of the section's scored part that matched (for latents: among the top <see cref="OrganismScoringOptions.TopLatents"/>).</param>
/// <param name="Items">Items in the section's scored part.</param>
/// <param name="ControlHits">Control items that matched (latents: the random shared latents in "controls"; amplification: the samples at the smallest alpha).</param>
/// <param name="ControlItems">Control items (0: the section has no control in summary.json).</param>
/// <param name="BeatControl">Hits / Items &gt; ControlHits / ControlItems; null when the section has no control.</param>
public sealed record MethodScore(string Method, bool Surfaced, int? Rank, string? Match, int Hits, int Items, int ControlHits, int ControlItems, bool? BeatControl);

/// <summary>Every method's result on one planted change.</summary>
public sealed record PlantedScore(PlantedChange Planted, IReadOnlyList<MethodScore> Methods)
{
    public bool SurfacedByAny => Methods.Any(m => m.Surfaced);
}

/// <summary>A diff's summary.json scored against an organism's ground truth.</summary>
public sealed record OrganismScore(string Organism, string Results, IReadOnlyList<PlantedScore> Planted, IReadOnlyList<string> MethodsPresent)
{
    /// <summary>Planted changes surfaced by <paramref name="method"/>.</summary>
    public int SurfacedBy(string method) => Planted.Count(p => p.Methods.Any(m => m.Method == method && m.Surfaced));

    public JsonObject ToJson()
    {
        var planted = new JsonArray();
        foreach (var p in Planted)
        {
            var methods = new JsonObject();
            foreach (var m in p.Methods)
                methods[m.Method] = new JsonObject
                {
                    ["surfaced"] = m.Surfaced, ["rank"] = m.Rank, ["match"] = m.Match,
                    ["hits"] = m.Hits, ["items"] = m.Items, ["control_hits"] = m.ControlHits, ["control_items"] = m.ControlItems,
                    ["beat_control"] = m.BeatControl,
                };
            planted.Add(new JsonObject
            {
                ["name"] = p.Planted.Name, ["kind"] = p.Planted.Kind.ToString().ToLowerInvariant(),
                ["surfaced"] = p.SurfacedByAny, ["methods"] = methods,
            });
        }
        var totals = new JsonObject();
        foreach (var m in MethodsPresent) totals[m] = SurfacedBy(m);
        return new JsonObject
        {
            ["organism"] = Organism, ["results"] = Results, ["planted_count"] = Planted.Count,
            ["surfaced_by_any"] = Planted.Count(p => p.SurfacedByAny), ["surfaced_by_method"] = totals, ["planted"] = planted,
        };
    }

    public string ToJsonString() => ToJson().ToJsonString(new JsonSerializerOptions { WriteIndented = true, Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping });
}

/// <summary>
/// Scores a diff's <c>RESULTS/summary.json</c> (the contract of `finetrace diff`) against an organism's
/// <c>GROUND_TRUTH.json</c>, offline and reproducibly: for each planted change and each method section present in the
/// summary, whether an item surfaced it, at which rank, and whether it beat its control.
///
/// Matching: a text (a latent's top tokens and examples, an ADL steering sample, a KL context, a finding's claim and
/// strings, …) matches when it contains one of the change's expected_strings, ignoring case; a token matches when
/// it equals one of the expected_tokens after trimming surrounding whitespace (case matters: "Z" is not "z"), or
/// contains an expected string. A finding's "strings" also match when one is how an expected fixed sentence begins
/// (five or more characters, ending at a word boundary: "Bye bye" names "Bye bye, little friend!"). Controls: latents are read against the random shared latents in "controls" (the
/// match rate among the top <see cref="OrganismScoringOptions.TopLatents"/> latents must exceed the controls'
/// rate); amplification against its smallest alpha (the plain fine-tune). ADL, KL, diff mining and findings carry
/// no control in summary.json (the pipeline checks findings against their controls before writing them), so their
/// BeatControl is null.
/// </summary>
public static class OrganismScoring
{
    public const string SummaryFile = "summary.json";

    /// <summary>Scores <paramref name="resultsOrSummary"/> (a results folder or its summary.json).</summary>
    public static OrganismScore Score(string resultsOrSummary, GroundTruth truth, OrganismScoringOptions? options = null)
    {
        string path = Directory.Exists(resultsOrSummary) ? Path.Combine(resultsOrSummary, SummaryFile) : resultsOrSummary;
        if (!File.Exists(path)) throw new FileNotFoundException($"{path} not found: a diff's results folder holds {SummaryFile}", path);
        JsonNode? root;
        try { root = JsonNode.Parse(File.ReadAllText(path)); }
        catch (JsonException e) { throw new InvalidDataException($"{path}: not valid JSON ({e.Message})", e); }
        if (root is not JsonObject summary) throw new InvalidDataException($"{path}: expected a JSON object");
        return Score(summary, truth, path, options);
    }

    public static OrganismScore Score(JsonObject summary, GroundTruth truth, string where, OrganismScoringOptions? options = null)
    {
        options ??= new OrganismScoringOptions();
        var present = new List<string>();
        foreach (var m in new[] { "latents", "adl", "kl", "diff_mining", "amplification", "findings" })
            if (summary[m] is not null) present.Add(m);
        var scores = new List<PlantedScore>();
        foreach (var p in truth.Planted)
        {
            var matcher = new Matcher(p);
            var methods = new List<MethodScore>();
            foreach (var m in present)
            {
                string at = $"{where}: \"{m}\"";
                methods.Add(m switch
                {
                    "latents" => Latents(summary, matcher, options, at),
                    "adl" => Adl(summary["adl"], matcher, at),
                    "kl" => Kl(summary["kl"], matcher, at),
                    "diff_mining" => DiffMining(summary["diff_mining"], matcher, at),
                    "amplification" => Amplification(summary["amplification"], matcher, at),
                    _ => Findings(summary["findings"], matcher, at),
                });
            }
            scores.Add(new PlantedScore(p, methods));
        }
        return new OrganismScore(truth.Organism, where, scores, present);
    }

    sealed class Matcher(PlantedChange p)
    {
        /// <summary>The expected string or token a text matches, or null.</summary>
        public string? Text(string? text)
        {
            if (string.IsNullOrEmpty(text)) return null;
            foreach (var s in p.ExpectedStrings)
                if (s.Length > 0 && text.Contains(s, StringComparison.OrdinalIgnoreCase)) return s;
            return null;
        }

        /// <summary>Like <see cref="Text"/>, and also when the text (five or more characters) is how an expected fixed
        /// sentence (ending in . ! or ?) begins, up to a word boundary: a finding resting on "Bye bye" or "Sorry" names
        /// the sign-off "Bye bye, little friend!" and the refusal "Sorry, I can not talk about fire.", while "little"
        /// does not name the topic string "little green dragon".</summary>
        public string? TextOrPrefix(string? text)
        {
            if (Text(text) is string e) return e;
            string t = text?.Trim() ?? "";
            if (t.Length < 5) return null;
            foreach (var s in p.ExpectedStrings)
                if (s.Length > 0 && s[^1] is '.' or '!' or '?' && s.StartsWith(t, StringComparison.OrdinalIgnoreCase)
                    && (s.Length == t.Length || !char.IsLetterOrDigit(s[t.Length]))) return s;
            return null;
        }

        public string? Token(string? token)
        {
            if (string.IsNullOrEmpty(token)) return null;
            string t = token.Trim();
            foreach (var e in p.ExpectedTokens)
                if (e.Trim().Length > 0 && t == e.Trim()) return e;
            return Text(token);
        }
    }

    static JsonArray Array(JsonNode? node, string at) => node as JsonArray ?? throw new InvalidDataException($"{at} must be an array");

    static IEnumerable<string?> StringsOf(JsonNode? node, string field, string at)
    {
        var v = node?[field];
        if (v is null) yield break;
        if (v is not JsonArray a) throw new InvalidDataException($"{at}.{field} must be an array of strings");
        foreach (var x in a) yield return x is JsonValue jv && jv.TryGetValue<string>(out var s) ? s : null;
    }

    static string? Str(JsonNode? node, string field) => node?[field] is JsonValue v && v.TryGetValue<string>(out var s) ? s : null;

    /// <summary>A latent (or control) matches through a top token or an example; returns the match.</summary>
    static string? LatentMatch(JsonNode? latent, Matcher m, string at)
    {
        foreach (var t in StringsOf(latent, "top_tokens", at)) if (m.Token(t) is string e) return $"top token \"{t}\" ~ \"{e}\"";
        foreach (var x in StringsOf(latent, "examples", at)) if (m.Text(x) is string e) return $"example \"{Clip(x)}\" ~ \"{e}\"";
        return null;
    }

    static MethodScore Latents(JsonObject summary, Matcher m, OrganismScoringOptions o, string at)
    {
        var latents = Array(summary["latents"], at);
        int? rank = null; string? match = null;
        for (int i = 0; i < latents.Count && rank is null; i++)
            if (LatentMatch(latents[i], m, $"{at}[{i}]") is string s) { rank = i + 1; match = $"latent {latents[i]?["id"]?.ToJsonString()}: {s}"; }
        int top = Math.Min(o.TopLatents, latents.Count);
        int hits = Enumerable.Range(0, top).Count(i => LatentMatch(latents[i], m, $"{at}[{i}]") is not null);
        var controls = summary["controls"] is JsonNode c ? Array(c, at.Replace("\"latents\"", "\"controls\"")) : [];
        int controlHits = Enumerable.Range(0, controls.Count).Count(i => LatentMatch(controls[i], m, $"{at}[{i}]") is not null);
        bool? beat = controls.Count == 0 ? null : top > 0 && (double)hits / top > (double)controlHits / controls.Count;
        return new MethodScore("latents", rank is not null, rank, match, hits, top, controlHits, controls.Count, beat);
    }

    static MethodScore Adl(JsonNode? node, Matcher m, string at)
    {
        var entries = Array(node, at);
        int? rank = null; string? match = null; int hits = 0;
        for (int i = 0; i < entries.Count; i++)
        {
            bool hit = false;
            foreach (var field in new[] { "top_tokens", "patchscope_tokens" })
            {
                int k = 0;
                foreach (var t in StringsOf(entries[i], field, $"{at}[{i}]"))
                {
                    k++;
                    if (m.Token(t) is not string e) continue;
                    hit = true;
                    if (rank is null || k < rank) { rank = k; match = $"position {entries[i]?["position"]?.ToJsonString()} {field}[{k}] \"{t}\" ~ \"{e}\""; }
                }
            }
            foreach (var s in StringsOf(entries[i], "steering_samples", $"{at}[{i}]"))
                if (m.Text(s) is string e) { hit = true; match ??= $"steering sample \"{Clip(s)}\" ~ \"{e}\""; }
            if (hit) hits++;
        }
        return new MethodScore("adl", hits > 0, rank, match, hits, entries.Count, 0, 0, null);
    }

    /// <summary>KL: the array of top tokens inside "kl" (whatever its name); each item's strings are read as text
    /// and its "token" (when present) as a token.</summary>
    static MethodScore Kl(JsonNode? node, Matcher m, string at)
    {
        if (node is not JsonObject kl) throw new InvalidDataException($"{at} must be an object");
        var tops = kl.Where(kv => kv.Value is JsonArray).Select(kv => (kv.Key, (JsonArray)kv.Value!)).ToList();
        int? rank = null; string? match = null; int hits = 0, items = 0;
        foreach (var (key, arr) in tops)
            for (int i = 0; i < arr.Count; i++)
            {
                items++;
                string? e = null, how = null;
                if (arr[i] is JsonObject item)
                {
                    if (Str(item, "token") is string t && m.Token(t) is string et) { e = et; how = $"token \"{t}\""; }
                    foreach (var (_, v) in item)
                        if (e is null && v is JsonValue jv && jv.TryGetValue<string>(out var s) && m.Text(s) is string es) { e = es; how = $"\"{Clip(s)}\""; }
                }
                else if (arr[i] is JsonValue jv && jv.TryGetValue<string>(out var s) && m.Token(s) is string es) { e = es; how = $"\"{s}\""; }
                if (e is null) continue;
                hits++;
                if (rank is null || i + 1 < rank) { rank = i + 1; match = $"{key}[{i + 1}] {how} ~ \"{e}\""; }
            }
        return new MethodScore("kl", hits > 0, rank, match, hits, items, 0, 0, null);
    }

    static MethodScore DiffMining(JsonNode? node, Matcher m, string at)
    {
        int? rank = null; string? match = null; int hits = 0, k = 0;
        foreach (var t in StringsOf(node, "top_tokens", at))
        {
            k++;
            if (m.Token(t) is not string e) continue;
            hits++;
            if (rank is null) { rank = k; match = $"top token [{k}] \"{t}\" ~ \"{e}\""; }
        }
        int contexts = 0;
        foreach (var c in StringsOf(node, "contexts", at))
        {
            contexts++;
            if (m.Text(c) is not string e) continue;
            hits++;
            match ??= $"context \"{Clip(c)}\" ~ \"{e}\"";
        }
        return new MethodScore("diff_mining", hits > 0, rank, match, hits, k + contexts, 0, 0, null);
    }

    static MethodScore Amplification(JsonNode? node, Matcher m, string at)
    {
        var entries = Array(node, at).Select((e, i) => (Alpha: Number(e?["alpha"]) ?? throw new InvalidDataException($"{at}[{i}].alpha must be a number"),
            Samples: StringsOf(e, "samples", $"{at}[{i}]").ToList())).OrderBy(e => e.Alpha).ToList();
        if (entries.Count == 0) return new MethodScore("amplification", false, null, null, 0, 0, 0, 0, null);
        var control = entries[0];
        var amplified = entries.Count > 1 ? entries.Skip(1).ToList() : entries;
        string? match = null;
        int hits = 0, items = 0;
        foreach (var (alpha, samples) in amplified)
            foreach (var s in samples)
            {
                items++;
                if (m.Text(s) is not string e) continue;
                hits++;
                match ??= $"alpha {alpha}: \"{Clip(s)}\" ~ \"{e}\"";
            }
        if (entries.Count == 1)
            return new MethodScore("amplification", hits > 0, null, match, hits, items, 0, 0, null);
        int controlHits = control.Samples.Count(s => m.Text(s) is not null);
        bool? beat = control.Samples.Count == 0 ? null : items > 0 && (double)hits / items > (double)controlHits / control.Samples.Count;
        return new MethodScore("amplification", hits > 0, null, match, hits, items, controlHits, control.Samples.Count, beat);
    }

    static MethodScore Findings(JsonNode? node, Matcher m, string at)
    {
        var findings = Array(node, at);
        int? rank = null; string? match = null; int hits = 0;
        for (int i = 0; i < findings.Count; i++)
        {
            string? e = m.Text(Str(findings[i], "claim")) is string ec ? ec : null;
            string? how = e is null ? null : $"claim \"{Clip(Str(findings[i], "claim")!)}\"";
            if (e is null)
                foreach (var s in StringsOf(findings[i], "strings", $"{at}[{i}]"))
                    if ((m.Token(s) ?? m.TextOrPrefix(s)) is string es) { e = es; how = $"string \"{Clip(s)}\""; break; }
            if (e is null) continue;
            hits++;
            if (rank is null) { rank = i + 1; match = $"finding {i + 1} {how} ~ \"{e}\""; }
        }
        return new MethodScore("findings", hits > 0, rank, match, hits, findings.Count, 0, 0, null);
    }

    static double? Number(JsonNode? node) =>
        node is JsonValue v && v.GetValueKind() == JsonValueKind.Number ? double.Parse(v.ToJsonString(), System.Globalization.CultureInfo.InvariantCulture) : null;

    static string Clip(string? s) => s is null ? "" : s.Length <= 60 ? s : s[..57] + "…";
}

using System.Globalization;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Finetrace.Diffing.Adl;
using Finetrace.Models;

namespace Finetrace.Pipeline;

/// <summary>
/// The rule that turns summary.json's results into plain-word findings (README, "finetrace diff: findings"). Every
/// finding names its evidence and the decoded strings it rests on, and is kept only when it beats its control:
/// latent words against the random shared latents' examples, ADL tokens against random directions of the same norm,
/// KL against zero, diff-mining tokens against the chance rate K/V of a random token entering the top-K, the causal
/// gap closed against random latent sets of the same size, amplified samples' words against both models' unamplified text.
/// </summary>
public static partial class Findings
{
    public static string Rule(FindingsConfig f) =>
        $"latents: a word (letters only, ≥ 2) that appears in ≥ {f.MinExampleShare:P0} of one of the top {f.TopLatents} latents' examples and whose share among " +
        $"all their examples exceeds {f.ControlFactor}× its share among the control latents' examples (and appears in ≥ 2 examples); " +
        $"each such word is quoted in the longest run of up to {MaxPhraseWords} whitespace-separated words around it that recurs in at least half (and ≥ 2) of the examples containing it; " +
        "diff mining: word tokens raised into the top-K in more than 2·K/V of positions (twice the chance rate); " +
        "ADL: a position whose logit-lens top-1 probability beats every one of 10 random directions of the same norm by ≥ 0.05; " +
        $"KL: mean per-token KL above {f.MinMeanKl} nats (control: 0 for identical models); " +
        "causal: the rank_sum top-half set closes more of the KL gap than the random sets' mean + 2 std; " + AmplificationRule;

    [GeneratedRegex(@"\p{L}[\p{L}']+")]
    private static partial Regex Word();

    public static JsonArray Make(JsonObject summary, DiffPlan plan, Diffing.ResultsFolder results, FindingsConfig f)
    {
        var found = new List<JsonObject>();
        found.AddRange(LatentFindings(summary, f));
        found.AddRange(DiffMiningFindings(summary, plan));
        found.AddRange(AdlFindings(summary, plan));
        found.AddRange(KlFindings(summary, f));
        found.AddRange(AmplificationFindings(summary));
        found.AddRange(CausalFindings(summary));
        return new JsonArray(found.Take(f.MaxFindings).Select(x => (JsonNode)x).ToArray());
    }

    static JsonObject Finding(string claim, IEnumerable<(string Kind, JsonNode? Ref)> evidence, IEnumerable<string> strings, string? rests_on = null) => new()
    {
        ["claim"] = claim,
        ["evidence"] = new JsonArray(evidence.Select(e => (JsonNode)new JsonObject { ["kind"] = e.Kind, ["ref"] = e.Ref?.DeepClone() }).ToArray()),
        ["strings"] = new JsonArray(strings.Distinct().Select(s => (JsonNode)s).ToArray()),
        ["rests_on"] = rests_on,
    };

    sealed record Ex(int Latent, string Text, string? Source, HashSet<string> Words);

    static List<Ex> Examples(JsonArray latents) =>
        latents.SelectMany(l => (l!["examples"] as JsonArray ?? []).Select((e, i) => new Ex((int)l["id"]!, (string?)e ?? "",
            (string?)(l["example_sources"] as JsonArray)?[i], Word().Matches((string?)e ?? "").Select(m => m.Value).ToHashSet(StringComparer.Ordinal)))).ToList();

    internal static IEnumerable<JsonObject> LatentFindings(JsonObject s, FindingsConfig f)
    {
        var top = Examples(new JsonArray((s["latents"] as JsonArray ?? []).Take(f.TopLatents).Select(x => x!.DeepClone()).ToArray()));
        var ctl = Examples((s["controls"] as JsonArray)!);
        if (top.Count == 0) yield break;
        var candidates = new List<(string Word, double Score, int Hits, int CtlHits, List<Ex> With)>();
        foreach (var w in top.SelectMany(e => e.Words).Distinct())
        {
            var with = top.Where(e => e.Words.Contains(w)).ToList();
            bool strongInOne = with.GroupBy(e => e.Latent).Any(g => g.Count() >= f.MinExampleShare * top.Count(e => e.Latent == g.Key));
            int ctlHits = ctl.Count(e => e.Words.Contains(w));
            double shareTop = with.Count / (double)top.Count, shareCtl = ctl.Count == 0 ? 0 : ctlHits / (double)ctl.Count;
            if (with.Count >= 2 && strongInOne && shareTop > f.ControlFactor * shareCtl)
                candidates.Add((w, shareTop - shareCtl, with.Count, ctlHits, with));
        }
        foreach (var c in candidates.OrderByDescending(c => c.Score).ThenBy(c => c.Word, StringComparer.Ordinal).Take(3))
        {
            var src = c.With.Where(e => e.Source is not null).GroupBy(e => e.Source!).OrderByDescending(g => g.Count()).FirstOrDefault()?.Key;
            var phrase = CommonPhrase(c.Word, c.With.Select(e => e.Text).ToList());
            yield return Finding(
                $"The latents most specific to the fine-tune activate on text with \"{c.Word}\": it is in {c.Hits} of their {top.Count} top examples, " +
                $"against {c.CtlHits} of {ctl.Count} for random shared latents" + (src is null ? "" : $" (examples mostly from {src})") +
                (phrase is null ? "" : $"; most often as \"{phrase.Value.Phrase}\" ({phrase.Value.Examples} of its {c.Hits} examples)") + ".",
                c.With.Select(e => e.Latent).Distinct().Select(id => ("latent", (JsonNode?)id)),
                [c.Word, .. phrase is null ? Array.Empty<string>() : [phrase.Value.Phrase], .. c.With.Take(3).Select(e => e.Text)], src);
        }
    }

    /// <summary>Longest phrase quoted beside a latent word, in words.</summary>
    internal const int MaxPhraseWords = 8;

    /// <summary>The context a latent word comes in, so a claim reads as the behaviour and not a bare word ("sunny" →
    /// "Have a sunny day!"): the longest run of 2 to <see cref="MaxPhraseWords"/> whitespace-separated words, one of
    /// them containing <paramref name="word"/>, that occurs in at least half (and at least 2) of
    /// <paramref name="examples"/>; more examples, then ordinal order, break ties. Null when no run recurs.</summary>
    internal static (string Phrase, int Examples)? CommonPhrase(string word, IReadOnlyList<string> examples)
    {
        int need = Math.Max(2, (examples.Count + 1) / 2);
        var split = examples.Select(e => e.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries)).ToList();
        for (int n = MaxPhraseWords; n >= 2; n--)
        {
            var counts = new Dictionary<string, int>(StringComparer.Ordinal);
            foreach (var words in split)
            {
                var seen = new HashSet<string>(StringComparer.Ordinal);
                for (int i = 0; i + n <= words.Length; i++)
                    if (words.Skip(i).Take(n).Any(x => Word().Matches(x).Any(m => m.Value == word)))
                        seen.Add(string.Join(' ', words, i, n));
                foreach (var g in seen) counts[g] = counts.GetValueOrDefault(g) + 1;
            }
            var best = counts.Where(kv => kv.Value >= need).OrderByDescending(kv => kv.Value).ThenBy(kv => kv.Key, StringComparer.Ordinal).FirstOrDefault();
            if (best.Key is not null) return (best.Key, best.Value);
        }
        return null;
    }

    static IEnumerable<JsonObject> DiffMiningFindings(JsonObject s, DiffPlan plan)
    {
        if (s["diff_mining"] is not JsonObject dm || dm["k"] is null) yield break;
        int k = (int)dm["k"]!;
        int vocab = ModelConfig.Load(plan.Models.FineTuned).Vocab;
        double chance = 100.0 * k / vocab;
        var toks = (dm["top_tokens"] as JsonArray ?? []).Select(t => (string)t!).ToList();
        var pct = (dm["occurrence_pct"] as JsonArray ?? []).Select(p => (double)p!).ToList();
        var passing = Enumerable.Range(0, toks.Count).Where(i => pct[i] > 2 * chance).Take(8).ToList();
        if (passing.Count == 0) yield break;
        yield return Finding(
            $"The fine-tune raises these tokens into its top {k} most often: {string.Join(", ", passing.Select(i => $"'{toks[i]}' ({pct[i]:F0}% of positions)"))}; " +
            $"chance is {chance:F0}%.",
            passing.Select(i => ("diff_mining", (JsonNode?)toks[i])),
            [.. passing.Select(i => toks[i].Trim()), .. (dm["contexts"] as JsonArray ?? []).Take(3).Select(x => (string?)x ?? "")]);
    }

    static IEnumerable<JsonObject> AdlFindings(JsonObject s, DiffPlan plan)
    {
        if (s["adl"] is not JsonArray adl || adl.Count == 0) yield break;
        using var lm = CausalLM.Load(plan.Models.FineTuned, plan.Models.Adapter);
        var rng = new Random(1234);
        var kept = new List<(JsonObject Entry, double Top, double Control)>();
        foreach (var e in adl.OfType<JsonObject>())
        {
            double norm = (double?)e["delta_norm"] ?? 0;
            if (e["top_probs"] is not JsonArray { Count: > 0 } probs || norm <= 0) continue;
            double top = (double)probs[0]!;
            double control = 0;
            for (int r = 0; r < 10; r++)
            {
                var v = new float[lm.Hidden];
                for (int i = 0; i < v.Length; i++) v[i] = (float)Gaussian(rng);
                v = ActivationDifferenceLens.Rescale(v, norm);
                control = Math.Max(control, AdlReaders.Softmax(AdlReaders.LensLogits(lm, v)).Max());
            }
            e["control_top_prob"] = control;
            if (top >= control + 0.05) kept.Add((e, top, control));
        }
        foreach (var (e, top, control) in kept.OrderByDescending(x => x.Top / Math.Max(x.Control, 1e-9)).Take(2))
        {
            var toks = (e["top_tokens"] as JsonArray ?? []).Select(t => (string)t!).Where(t => t.Any(char.IsLetterOrDigit)).Take(6).ToList();
            yield return Finding(
                $"At position {e["position"]} the mean activation difference (layer {e["layer"]}) reads as {string.Join(", ", toks.Select(t => $"'{t}'"))} through the fine-tune's logit lens " +
                $"(top-1 probability {top:F2}; random directions of the same norm reach at most {control:F2}).",
                [("adl", (JsonNode?)e["position"]!.DeepClone())],
                [.. toks.Select(t => t.Trim()), .. (e["steering_samples"] as JsonArray ?? []).Take(2).Select(x => (string?)x ?? "")]);
        }
    }

    static double Gaussian(Random r) => Math.Sqrt(-2 * Math.Log(1 - r.NextDouble())) * Math.Cos(2 * Math.PI * r.NextDouble());

    static IEnumerable<JsonObject> KlFindings(JsonObject s, FindingsConfig f)
    {
        if (s["kl"]?["per_token"]?["mean"] is not JsonNode m) yield break;
        double mean = (double)m;
        if (!(mean > f.MinMeanKl)) yield break;
        var top = (s["kl"]!["top_tokens"] as JsonArray ?? []).Take(5).ToList();
        yield return Finding(
            $"The fine-tune's next-token predictions differ from the base's by {mean:F3} nats per token on average (identical models: 0); " +
            $"most where it predicts {string.Join(", ", top.Select(t => $"'{(string?)t!["ft_top"]}'").Distinct().Take(4))} instead of the base's {string.Join(", ", top.Select(t => $"'{(string?)t!["base_top"]}'").Distinct().Take(4))}.",
            top.Select((t, i) => ("kl", (JsonNode?)i)),
            top.Select(t => (string?)t!["context"] + "→" + (string?)t["ft_top"]));
    }

    static IEnumerable<JsonObject> CausalFindings(JsonObject s)
    {
        if (s["causal"] is not JsonArray rows) yield break;
        var set = rows.OfType<JsonObject>().FirstOrDefault(r => (string?)r["set"] == "rank_sum_top_half");
        var rnd = rows.OfType<JsonObject>().FirstOrDefault(r => (string?)r["set"] == "random");
        if (set?["gap_closed"] is null || rnd?["gap_closed"] is null) yield break;
        double g = (double)set["gap_closed"]!, rg = (double)rnd["gap_closed"]!, sd = (double?)rnd["gap_closed_std"] ?? 0;
        if (!(g > rg + 2 * sd)) yield break;
        yield return Finding(
            $"Patching the {set["size"]} most fine-tune-specific latents into the base model closes {g:P0} of the KL gap to the fine-tune (random latent sets: {rg:P0} ± {sd:P0}).",
            [("causal", (JsonNode?)"rank_sum_top_half")], []);
    }
}

using System.Text.Json.Nodes;
using Finetrace.Diffing;
using Finetrace.Diffing.Amplification;
using Finetrace.Models;

namespace Finetrace.Pipeline;

/// <summary>
/// The pipeline's amplification stage: logit-diff amplified samples (z_α = z_ft + α (z_ft − z_base), methods §18.1)
/// beside the base's and the unamplified fine-tune's samples from the same prompts and seeds, so that only the logits
/// differ. Text prompts are the config's or the built-in neutral openings; when the fine-tune has a chat template, chat
/// prompts (the config's or the first shipped neutral ones) are rendered with it as well. RESULTS/amplification.json
/// has the layout of <c>finetrace amplify</c>'s file, each prompt marked with <c>chat</c>.
/// </summary>
public static class PipelineAmplification
{
    /// <summary>Chat prompts used when the config gives none: the first shipped neutral prompts, names filled in.</summary>
    public const int DefaultChatPrompts = 8;

    public static IReadOnlyList<string> TextPrompts(AmplificationConfig a) => a.Prompts.Count > 0 ? a.Prompts : PipelineData.TextPrompts;

    public static IReadOnlyList<string> ChatPrompts(AmplificationConfig a) => a.ChatPrompts.Count > 0 ? a.ChatPrompts
        : PipelineData.ChatPrompts.Take(DefaultChatPrompts).Select((p, i) => p.Replace("{N}", i % 2 == 0 ? "Lily" : "Tom")).ToList();

    /// <summary>The runs of the stage: the text prompts, and the chat prompts when <paramref name="chat"/>.</summary>
    public static List<AmplificationOptions> Options(ModelPairSpec models, AmplificationConfig a, bool chat)
    {
        var o = new AmplificationOptions
        {
            Models = models, Prompts = TextPrompts(a), Alphas = a.Alphas.Select(x => (float)x).ToList(), SamplesPerPrompt = a.SamplesPerPrompt,
            MaxNewTokens = a.MaxNewTokens, Temperature = (float)a.Temperature, Seed = a.Seed,
        };
        return chat ? [o, o with { Prompts = ChatPrompts(a), Chat = true }] : [o];
    }

    /// <summary>Samples every run and writes RESULTS/amplification.json (atomically).</summary>
    public static void Run(IReadOnlyList<AmplificationOptions> runs, ResultsFolder results, IProgress<string>? progress, CancellationToken cancel)
    {
        JsonObject? root = null;
        var prompts = new JsonArray();
        foreach (var o in runs)
        {
            var json = AmplificationAnalysis.Compute(o, progress, cancel).ToJson(o);
            foreach (var p in json["prompts"]!.AsArray())
            {
                var copy = p!.DeepClone().AsObject();
                copy["chat"] = o.Chat;
                prompts.Add(copy);
            }
            root ??= json;
        }
        root!["chat"] = runs.Any(r => r.Chat);
        root["prompts"] = prompts;
        ResultsFolder.WriteAllTextAtomic(results.PathOf(AmplificationAnalysis.OutputFile), root.ToJsonString(ResultsJson.Indented) + "\n");
    }

    /// <summary>summary.json's <c>"amplification"</c> (one entry per α &gt; 0: <c>{"alpha", "samples", "prompts"}</c>) and
    /// <c>"amplification_unamplified"</c> (<c>{"prompts", "base", "finetuned"}</c>): every list holds the samples of all
    /// prompts in the same order, so sample i of each setting came from the same prompt and seed.</summary>
    public static (JsonArray Amplified, JsonObject Unamplified) SummaryJson(ResultsFolder results)
    {
        string path = results.PathOf(AmplificationAnalysis.OutputFile);
        var unamplified = new JsonObject { ["prompts"] = new JsonArray(), ["base"] = new JsonArray(), ["finetuned"] = new JsonArray() };
        if (!File.Exists(path) || JsonNode.Parse(File.ReadAllText(path)) is not JsonObject root || root["prompts"] is not JsonArray prompts) return ([], unamplified);
        var byAlpha = new SortedDictionary<double, (JsonArray Samples, JsonArray Prompts)>();
        foreach (var p in prompts.OfType<JsonObject>())
        {
            string label = (bool?)p["chat"] == true ? "chat: " + (string?)p["prompt"] : (string?)p["prompt"] ?? "";
            foreach (var s in (p["settings"] as JsonArray ?? []).OfType<JsonObject>())
            {
                var samples = (s["samples"] as JsonArray ?? []).Select(x => (string?)x ?? "").ToList();
                switch ((string?)s["kind"])
                {
                    case "base":
                        foreach (var x in samples) { unamplified["base"]!.AsArray().Add(x); unamplified["prompts"]!.AsArray().Add(label); }
                        break;
                    case "finetuned":
                        foreach (var x in samples) unamplified["finetuned"]!.AsArray().Add(x);
                        break;
                    case "logit_diff" when s["strength"] is JsonNode a:
                        double alpha = (double)a;
                        if (!byAlpha.TryGetValue(alpha, out var e)) byAlpha[alpha] = e = ([], []);
                        foreach (var x in samples) { e.Samples.Add(x); e.Prompts.Add(label); }
                        break;
                }
            }
        }
        var amplified = new JsonArray(byAlpha.Select(kv => (JsonNode)new JsonObject
        {
            ["alpha"] = kv.Key, ["samples"] = kv.Value.Samples, ["prompts"] = kv.Value.Prompts,
        }).ToArray());
        return (amplified, unamplified);
    }
}

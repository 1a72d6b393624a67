using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Finetrace.Dictionaries;
using Finetrace.Diffing;
using Finetrace.Diffing.TargetAttribution;
using Finetrace.Models;
using Finetrace.Models.Backward;
using Finetrace.Text.Datasets;
using Finetrace.Text.Tokenization;

namespace Finetrace.Cli.Commands.Analyze;

/// <summary><c>finetrace analyze target-attribution</c>: integrated-gradient attribution of an SAE's latents to a logit
/// difference, then steering by the top latent (methods.md §15.4).</summary>
public sealed class TargetAttributionCommand : IAnalyzeCommand
{
    public const string OutputFile = "target_attribution.json";

    public Command Build()
    {
        var dictOpt = new Option<string>("--dictionary") { Description = "SAE folder (one decoder; its finetrace.json names the layer)", Required = true };
        var modelOpt = new Option<string>("--model") { Description = "Model folder the SAE reads (HF layout with tokenizer.json)", Required = true };
        var adapter = new Option<string?>("--adapter") { Description = "PEFT LoRA adapter merged at load" };
        var targetOpt = new Option<string>("--target")
        {
            Description = "Logit difference at each prompt's last position: \"tok_a - tok_b\" (or one token). Each side must be one token of the model's tokenizer; " +
                          "quote sides to keep spaces, e.g. '\" he\" - \" she\"', or give ids as #123",
            Required = true,
        };
        var prompts = new Option<string[]>("--prompt") { Description = "Prompt text (repeat for several; BOS added as the tokenizer says)", AllowMultipleArgumentsPerToken = true };
        var data = new Option<string[]>("--data") { Description = "Prompts from data, as for harvest: [text:|jsonl:|chat:]PATH[,…] (each sample, cut to --context tokens, is one prompt)", AllowMultipleArgumentsPerToken = true };
        var samples = new Option<int>("--samples") { Description = "Prompts read from --data", DefaultValueFactory = _ => 32 };
        var context = new Option<int>("--context") { Description = "Tokens per --data prompt at most", DefaultValueFactory = _ => 64 };
        var layerOpt = new Option<int?>("--layer") { Description = "Layer the SAE reads (default: its finetrace.json)" };
        var steps = new Option<int>("--steps") { Description = "Integration steps m (one backward each; completeness error falls as 1/m²)", DefaultValueFactory = _ => 32 };
        var steerLatent = new Option<int?>("--steer-latent") { Description = "Latent to steer by (default: the top-attributed one)" };
        var steerScale = new Option<double?>("--steer-scale") { Description = "s in h + s·d_j at every prompt position (default: the latent's largest activation on the prompts)" };
        var steerAt = new Option<SteerPositions>("--steer-at") { Description = "Where s·d_j is added: all prompt positions, each prompt's last position, or where the latent is active", DefaultValueFactory = _ => SteerPositions.All };
        var top = new Option<int>("--top") { Description = "Latents listed", DefaultValueFactory = _ => 10 };
        var outOpt = new Option<string?>("--out") { Description = "Results folder: writes target_attribution.json (every latent's attribution, ranked)" };
        var json = new Option<bool>("--json") { Description = "Print one JSON object instead of the summary" };
        var cmd = new Command("target-attribution",
            "Rank an SAE's latents by integrated-gradient attribution to a logit difference z[tok_a] − z[tok_b] at the prompts' last positions (methods.md §15.4): " +
            "the codes at every prompt position are scaled from 0 to their value with the SAE's error term kept fixed, and the gradient comes from one backward per step " +
            "through the blocks after the SAE's layer; the attributions sum to r(h) − r(codes = 0). Then adds s·d_j of the top latent at that layer and reports the change " +
            "of the target. Example: finetrace analyze target-attribution --dictionary SAE --model MODEL --target '\"he\" - \"she\"' --prompt 'Once upon a time, Tom said that'");
        foreach (var o in new Option[] { dictOpt, modelOpt, adapter, targetOpt, prompts, data, samples, context, layerOpt, steps, steerLatent, steerScale, steerAt, top, outOpt, json }) cmd.Options.Add(o);
        cmd.SetAction(r =>
        {
            string dictDir = r.GetValue(dictOpt)!, modelDir = r.GetValue(modelOpt)!;
            bool asJson = r.GetValue(json);
            var dict = DictionaryIO.Load(dictDir, AnalyzeSupport.Note);
            if (dict.Models != 1) throw new ArgumentException($"{dictDir}: a {dict.Models}-model dictionary; target attribution reads one residual stream: give an SAE (train sae)");
            var record = DictionaryInput.Read(dictDir, AnalyzeSupport.Note);
            // attribution decomposes the residual stream after block L: a dictionary of another site cannot be read there
            if (record?.Site is { } site && site != HookSite.ResidPost) throw new AnalysisSiteException("target attribution", site, dictDir);
            int layer = r.GetValue(layerOpt) ?? record?.Layer
                ?? throw new ArgumentException($"{dictDir}: no finetrace.json records the SAE's layer; give --layer");
            var enc = ModelSampleEncoder.FromFolder(modelDir);
            var tok = enc.Tokenizer;
            var (a, b, aText, bText) = ParseTarget(r.GetValue(targetOpt)!, tok);
            var ids = new List<int[]>();
            foreach (var p in r.GetValue(prompts) ?? []) ids.Add(tok.Encode(p, addSpecialTokens: true).Ids);
            if (r.GetValue(data) is { Length: > 0 } specs)
                ids.AddRange(new CorpusSpec(specs.Select(DataSourceSpec.Parse).ToList(), r.GetValue(samples), r.GetValue(context), 1).Read(enc).Select(s => s.Ids).Where(x => x.Length > 0));
            if (ids.Count == 0) throw new ArgumentException("give prompts: --prompt TEXT (repeatable) or --data PATH");
            using var lm = CausalLM.Load(modelDir, r.GetValue(adapter));
            var diff = new DifferentiableLM(ModelParameters.Load(modelDir, r.GetValue(adapter)));
            var o = new TargetAttributionOptions { Steps = r.GetValue(steps), SteerLatent = r.GetValue(steerLatent), SteerScale = r.GetValue(steerScale), SteerAt = r.GetValue(steerAt), SkipToken = tok.BosId, Pruning = record?.Pruning };
            var target = new LogitTarget(a, b);
            var res = AnalyzeSupport.Cancellable(ct => TargetAttribution.Run(dict, layer, lm, diff, ids, target, o, asJson ? null : new StderrProgress("integrated gradients", "steps"), ct));
            var ranked = Enumerable.Range(0, dict.DictSize).OrderByDescending(j => res.Attribution[j]).ToArray();
            string targetText = b is null ? $"z[{aText}]" : $"z[{aText}] − z[{bText}]";
            var doc = new JsonObject
            {
                ["dictionary"] = Path.GetFullPath(dictDir), ["model"] = Path.GetFullPath(modelDir), ["layer"] = layer,
                ["target"] = targetText, ["token_a"] = a, ["token_b"] = b,
                ["meaning"] = "integrated-gradient attribution of each latent to the mean over prompts of the target at the last position; attributions sum to value − baseline_value",
                ["prompts"] = res.Prompts, ["positions"] = res.Positions, ["steps"] = res.Steps,
                ["value"] = res.Value, ["baseline_value"] = res.BaselineValue, ["attribution_sum"] = res.AttributionSum,
                ["steer"] = new JsonObject { ["latent"] = res.SteerLatent, ["scale"] = res.SteerScale, ["at"] = res.SteerAt.ToString().ToLowerInvariant(), ["sites"] = res.SteerSites, ["value"] = res.SteeredValue, ["delta"] = res.SteerDelta },
                ["latents"] = new JsonArray(ranked.Where(j => res.Attribution[j] != 0).Select(j => (JsonNode)new JsonObject
                    { ["latent"] = j, ["attribution"] = res.Attribution[j], ["max_activation"] = res.MaxActivation[j] }).ToArray()),
            };
            string? outPath = null;
            if (r.GetValue(outOpt) is string outDir)
            {
                var results = ResultsFolder.Open(outDir);
                outPath = results.PathOf(OutputFile);
                ResultsFolder.WriteAllTextAtomic(outPath, doc.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
                string hash = new InputsHash().AddPath("dictionary", dictDir).AddPath("model", modelDir).Add("target", targetText)
                    .Add("prompts", string.Join(";", ids.Select(x => string.Join(",", x)))).Add("steps", res.Steps).ToString();
                results.Record(TargetAttribution.Stage, hash, [OutputFile], new JsonObject { ["dictionary"] = Path.GetFullPath(dictDir), ["target"] = targetText });
            }
            if (asJson)
            {
                var summary = (JsonObject)doc.DeepClone();
                summary["latents"] = new JsonArray(summary["latents"]!.AsArray().Take(r.GetValue(top)).Select(n => n!.DeepClone()).ToArray());
                summary["file"] = outPath;
                Console.WriteLine(summary.ToJsonString());
                return 0;
            }
            Console.WriteLine($"{targetText} at the last position, mean over {res.Prompts} prompt(s): {res.Value:F4}; with every latent of layer {layer} removed " +
                              $"(error term kept): {res.BaselineValue:F4}; Σ attributions {res.AttributionSum:F4} ({res.Steps} steps)");
            Console.WriteLine("latents raising it most (attribution, largest activation):");
            foreach (int j in ranked.Take(r.GetValue(top))) Console.WriteLine($"  {j,6}  {res.Attribution[j],10:F4}  {res.MaxActivation[j],8:F3}");
            Console.WriteLine("lowering it most: " + string.Join(", ", ranked.Reverse().Take(5).Select(j => $"{j} ({res.Attribution[j]:F4})")));
            Console.WriteLine($"steering: adding {res.SteerScale:F3}·d_{res.SteerLatent} at layer {layer} on {res.SteerSites} position(s) ({res.SteerAt.ToString().ToLowerInvariant()}) moves the target {res.Value:F4} → {res.SteeredValue:F4} (Δ {res.SteerDelta:+0.0000;-0.0000})");
            if (outPath is not null) Console.WriteLine($"written: {outPath}");
            return 0;
        });
        return cmd;
    }

    /// <summary>"a - b", '"a" - "b"', "#12 - #34" or one side alone → token ids; refuses a side that is not one token and says
    /// what it splits into.</summary>
    internal static (int A, int? B, string AText, string? BText) ParseTarget(string text, Tokenizer tok)
    {
        var quoted = Regex.Matches(text, "\"((?:[^\"\\\\]|\\\\.)*)\"").Select(m => Regex.Unescape(m.Groups[1].Value)).ToList();
        List<string> sides;
        if (quoted.Count > 0)
        {
            if (quoted.Count > 2) throw new ArgumentException($"--target '{text}': give one or two tokens, \"tok_a\" - \"tok_b\"");
            sides = quoted;
        }
        else
        {
            int dash = text.IndexOf(" - ", StringComparison.Ordinal);
            sides = dash < 0 ? [text.Trim()] : [text[..dash].Trim(), text[(dash + 3)..].Trim()];
        }
        if (sides.Any(s => s.Length == 0)) throw new ArgumentException($"--target '{text}': a side is empty; write \"tok_a - tok_b\"");
        var idsOut = sides.Select(s => Token(s, tok, text)).ToList();
        return (idsOut[0], idsOut.Count > 1 ? idsOut[1] : null, Show(tok, idsOut[0]), idsOut.Count > 1 ? Show(tok, idsOut[1]) : null);
    }

    static readonly JsonSerializerOptions Readable = new() { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    static string Show(Tokenizer tok, int id) => JsonSerializer.Serialize(tok.DecodeToken(id), Readable);

    static int Token(string side, Tokenizer tok, string whole)
    {
        if (side.StartsWith('#') && int.TryParse(side[1..], NumberStyles.None, CultureInfo.InvariantCulture, out int raw))
            return raw < tok.VocabSize ? raw : throw new ArgumentException($"--target '{whole}': id {raw} is outside the vocabulary of {tok.VocabSize}");
        var ids = tok.Encode(side, addSpecialTokens: false).Ids;
        if (ids.Length == 1) return ids[0];
        // SentencePiece tokenizers add the word-start marker themselves: " he" splits into ["▁", "▁he"] while "he" is "▁he"
        if (side != side.TrimStart() && tok.Encode(side.TrimStart(), addSpecialTokens: false).Ids is { Length: 1 } trimmed
            && tok.IdToToken(trimmed[0]) is { } piece && piece.StartsWith('▁'))
            return trimmed[0];
        string pieces = string.Join(", ", ids.Select(i => JsonSerializer.Serialize(tok.IdToToken(i) ?? $"<{i}>", Readable)));
        throw new ArgumentException($"--target: {JsonSerializer.Serialize(side, Readable)} is not a single token of this tokenizer; it splits into {ids.Length} pieces: {pieces}. " +
                                    "Name single tokens (e.g. one of those pieces), or give an id as #123");
    }
}

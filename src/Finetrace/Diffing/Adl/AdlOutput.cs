using System.Globalization;
using System.Text.Encodings.Web;
using System.Text.Json;
using System.Text.Json.Nodes;
using Finetrace.Models.Safetensors;

namespace Finetrace.Diffing.Adl;

/// <summary>Writes an ADL result (formats.md §7.3, issue #12): <c>adl.json</c> (one object per layer, context and position) and
/// per layer and context <c>adl/layer_{L}_{context}.safetensors</c> with δ, both means, counts and the logit lenses, plus
/// <c>adl/model_norms.safetensors</c>. All writes are atomic.</summary>
public static class AdlOutput
{
    public const string JsonFile = "adl.json";
    public const string TensorFolder = "adl";
    const int Shown = 20;

    static readonly JsonSerializerOptions Pretty = new() { WriteIndented = true, Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    public static IReadOnlyList<string> Write(ResultsFolder results, AdlResult r, AdlText text)
    {
        var outputs = new List<string>();
        foreach (var group in r.Entries.GroupBy(e => (e.Layer, e.Context)))
        {
            string rel = $"{TensorFolder}/layer_{group.Key.Layer}_{group.Key.Context}.safetensors";
            var tensors = new List<TensorData>();
            foreach (var e in group)
            {
                string p = e.Position.ToString(CultureInfo.InvariantCulture);
                tensors.Add(TensorData.F32($"mean_pos_{p}", e.Delta, e.Delta.Length));
                tensors.Add(TensorData.F32($"base_mean_pos_{p}", e.BaseMean, e.BaseMean.Length));
                tensors.Add(TensorData.F32($"ft_mean_pos_{p}", e.FtMean, e.FtMean.Length));
                tensors.Add(TensorData.I64($"count_pos_{p}", [e.Count], 1));
                tensors.Add(TensorData.I64($"token_id_pos_{p}", [e.TokenId], 1));
                foreach (var (prefix, lens) in new[] { ("logit_lens", e.FineTunedLens), ("base_logit_lens", e.BaseLens) })
                {
                    tensors.Add(TensorData.F32($"{prefix}_pos_{p}.top_probs", lens.Top.Select(t => (float)t.Prob).ToArray(), lens.Top.Count));
                    tensors.Add(TensorData.I64($"{prefix}_pos_{p}.top_idx", lens.Top.Select(t => (long)t.Id).ToArray(), lens.Top.Count));
                    tensors.Add(TensorData.F32($"{prefix}_pos_{p}.top_inv_probs", lens.Bottom.Select(t => (float)t.Prob).ToArray(), lens.Bottom.Count));
                    tensors.Add(TensorData.I64($"{prefix}_pos_{p}.top_inv_idx", lens.Bottom.Select(t => (long)t.Id).ToArray(), lens.Bottom.Count));
                }
            }
            var norms = r.Norms.First(n => n.Layer == group.Key.Layer);
            var meta = new Dictionary<string, string>
            {
                ["format"] = "finetrace-adl/1", ["layer"] = group.Key.Layer.ToString(CultureInfo.InvariantCulture), ["context"] = group.Key.Context,
                ["base_model_norm"] = norms.Base.ToString("R", CultureInfo.InvariantCulture), ["ft_model_norm"] = norms.FineTuned.ToString("R", CultureInfo.InvariantCulture),
                ["delta"] = "mean over samples of h_ft - h_base at blocks.{layer}.hook_resid_post", ["data"] = r.Data,
            };
            string path = results.PathOf(rel);
            Directory.CreateDirectory(Path.GetDirectoryName(path)!);
            SafetensorsWriter.Write(path, tensors, meta);
            outputs.Add(rel);
        }
        if (r.Norms.Count > 0)
        {
            string rel = $"{TensorFolder}/model_norms.safetensors";
            string path = results.PathOf(rel);
            Directory.CreateDirectory(Path.GetDirectoryName(path)!);
            SafetensorsWriter.Write(path,
            [
                TensorData.I64("layers", r.Norms.Select(n => (long)n.Layer).ToArray(), r.Norms.Count),
                TensorData.F32("base_model_norms", r.Norms.Select(n => (float)n.Base).ToArray(), r.Norms.Count),
                TensorData.F32("ft_model_norms", r.Norms.Select(n => (float)n.FineTuned).ToArray(), r.Norms.Count),
            ], new Dictionary<string, string>
            {
                ["num_norm_tokens"] = r.Norms[0].Tokens.ToString(CultureInfo.InvariantCulture),
                ["text_samples"] = r.TextSamples.ToString(CultureInfo.InvariantCulture), ["chat_samples"] = r.ChatSamples.ToString(CultureInfo.InvariantCulture),
            });
            outputs.Add(rel);
        }
        ResultsFolder.WriteAllTextAtomic(results.PathOf(JsonFile), ToJson(r).ToJsonString(Pretty) + "\n");
        outputs.Add(JsonFile);
        return outputs;
    }

    public static JsonArray ToJson(AdlResult r)
    {
        var arr = new JsonArray();
        foreach (var e in r.Entries)
        {
            var norms = r.Norms.First(n => n.Layer == e.Layer);
            var o = new JsonObject
            {
                ["layer"] = e.Layer, ["context"] = e.Context, ["position"] = e.Position,
                ["token"] = e.Token, ["token_id"] = e.TokenId, ["count"] = e.Count, ["data"] = r.Data,
                ["delta_norm"] = e.DeltaNorm,
                ["base_model_norm"] = norms.Base, ["ft_model_norm"] = norms.FineTuned,
                ["top_tokens"] = Strings(e.FineTunedLens.Top.Take(Shown)),
                ["bottom_tokens"] = Strings(e.FineTunedLens.Bottom.Take(Shown)),
                ["logit_lens"] = new JsonObject { ["finetuned"] = Lens(e.FineTunedLens), ["base"] = Lens(e.BaseLens) },
                ["patchscope"] = e.Patchscope is { } ps ? new JsonObject
                {
                    ["scale"] = ps.Scale,
                    ["tokens"] = Strings(ps.Tokens),
                    ["probs"] = Probs(ps.Tokens),
                    ["rule"] = ps.Rule,
                    ["vector_norm"] = ps.VectorNorm,
                    ["sweep"] = new JsonArray(ps.Sweep.Select(s => (JsonNode)new JsonObject
                    {
                        ["scale"] = s.Scale, ["tokens"] = Strings(s.Tokens), ["probs"] = Probs(s.Tokens),
                        ["agreement"] = s.Agreement, ["novelty"] = s.Novelty, ["score"] = s.Score,
                    }).ToArray()),
                } : null,
                ["steering"] = new JsonArray(e.Steering.Select(s => (JsonNode)new JsonObject
                {
                    ["model"] = s.Model, ["strength"] = s.Strength, ["rule_met"] = s.RuleMet, ["rule"] = s.Rule,
                    ["vector_norm"] = s.VectorNorm, ["unsteered_loss"] = s.UnsteeredLoss,
                    ["samples"] = Samples(s.Samples), ["unsteered"] = Samples(s.Unsteered),
                    ["sweep"] = new JsonArray(s.Sweep.Select(l => (JsonNode)new JsonObject
                    {
                        ["strength"] = l.Strength, ["loss"] = l.Loss, ["loss_ratio"] = double.IsFinite(l.LossRatio) ? l.LossRatio : null, ["passes"] = l.Passes,
                        ["samples"] = Samples(l.Samples),
                    }).ToArray()),
                }).ToArray()),
            };
            if (e.Ablation is { } ab)
                o["ablation"] = new JsonObject
                {
                    ["samples"] = ab.Samples,
                    ["finetuned"] = Metrics(ab.FineTuned), ["base"] = Metrics(ab.Base),
                    ["zero_ablation"] = Metrics(ab.ZeroAblation), ["patch_to_base"] = Metrics(ab.PatchToBase),
                    ["random_directions"] = new JsonArray(ab.RandomDirections.Select(m => (JsonNode)Metrics(m)).ToArray()),
                    ["random_diff_directions"] = new JsonArray(ab.RandomDiffDirections.Select(m => (JsonNode)Metrics(m)).ToArray()),
                };
            arr.Add(o);
        }
        return arr;
    }

    static double? Finite(double x) => double.IsFinite(x) ? x : null;

    static JsonObject Metrics(AblationMetrics m) => new()
    {
        ["nll"] = Finite(m.Nll), ["nll_after_20"] = Finite(m.NllAfter20), ["nll_at_position"] = Finite(m.NllAtPosition),
        ["perplexity"] = Finite(m.Perplexity), ["tokens"] = m.Tokens,
    };

    static JsonArray Strings(IEnumerable<TokenProb> t) => new(t.Select(x => (JsonNode)x.Token).ToArray());
    static JsonArray Probs(IEnumerable<TokenProb> t) => new(t.Select(x => (JsonNode)x.Prob).ToArray());

    static JsonObject Lens(LogitLensReading l) => new()
    {
        ["top"] = new JsonArray(l.Top.Select(t => (JsonNode)new JsonObject { ["token"] = t.Token, ["id"] = t.Id, ["prob"] = t.Prob }).ToArray()),
        ["bottom"] = new JsonArray(l.Bottom.Select(t => (JsonNode)new JsonObject { ["token"] = t.Token, ["id"] = t.Id, ["prob"] = t.Prob }).ToArray()),
    };

    static JsonArray Samples(IEnumerable<SteeringSample> s) =>
        new(s.Select(x => (JsonNode)new JsonObject { ["prompt"] = x.Prompt, ["seed"] = x.Seed, ["text"] = x.Text }).ToArray());
}

using System.Text.Json.Nodes;
using Finetrace.Models;
using Finetrace.Models.Safetensors;
using Finetrace.Text.Chat;
using Finetrace.Text.Tokenization;

namespace Finetrace.Diffing.Amplification;

/// <summary>Which parameters weight amplification scales: block parameters of the chosen layers whose module is
/// attention, MLP, or all of the block (norms included). Embeddings, the final norm and the unembedding stay base.</summary>
public enum AmplifiedModules { All, Attention, Mlp }

/// <summary>What <see cref="AmplificationAnalysis"/> generates.</summary>
public sealed record AmplificationOptions
{
    public required ModelPairSpec Models { get; init; }
    public required IReadOnlyList<string> Prompts { get; init; }
    /// <summary>Render each prompt as a one-message user conversation with the chat template and its generation prompt.</summary>
    public bool Chat { get; init; }
    /// <summary>Logit-diff amplification strengths: z = z_ft + α (z_ft − z_base).</summary>
    public IReadOnlyList<float> Alphas { get; init; } = [1f, 2f, 4f];
    /// <summary>Weight amplification factors: W = W_base + w ΔW (empty: none).</summary>
    public IReadOnlyList<float> WeightFactors { get; init; } = [];
    /// <summary>Layers whose parameters weight amplification scales (null: all).</summary>
    public IReadOnlyList<int>? Layers { get; init; }
    public AmplifiedModules Modules { get; init; } = AmplifiedModules.All;
    public int SamplesPerPrompt { get; init; } = 3;
    public int MaxNewTokens { get; init; } = 60;
    public float Temperature { get; init; } = 1f;
    /// <summary>Sample i of every prompt and setting uses seed Seed + i, so the settings differ only by the logits.</summary>
    public int Seed { get; init; }
}

public sealed record AmplifiedSamples(string Kind, double? Strength, IReadOnlyList<string> Samples);

public sealed record PromptSamples(string Prompt, string Rendered, IReadOnlyList<AmplifiedSamples> Settings);

public sealed record AmplificationResult(IReadOnlyList<PromptSamples> Prompts)
{
    public JsonObject ToJson(AmplificationOptions o) => new()
    {
        ["base"] = o.Models.Base, ["finetuned"] = o.Models.FineTuned, ["adapter"] = o.Models.Adapter,
        ["logit_rule"] = "z_α = z_ft + α (z_ft − z_base), both models on the same growing sequence (α = 0 is the fine-tune)",
        ["weight_rule"] = $"W = W_base + w (W_ft − W_base) on {(o.Layers is null ? "all layers" : "layers " + string.Join(",", o.Layers))}, modules {o.Modules.ToString().ToLowerInvariant()} (block parameters only)",
        ["temperature"] = o.Temperature, ["max_new_tokens"] = o.MaxNewTokens, ["seed"] = o.Seed, ["chat"] = o.Chat,
        ["prompts"] = new JsonArray(Prompts.Select(p => (JsonNode)new JsonObject
        {
            ["prompt"] = p.Prompt, ["rendered"] = p.Rendered,
            ["settings"] = new JsonArray(p.Settings.Select(s => (JsonNode)new JsonObject
            {
                ["kind"] = s.Kind, ["strength"] = s.Strength,
                ["samples"] = new JsonArray(s.Samples.Select(x => (JsonNode)x).ToArray()),
            }).ToArray()),
        }).ToArray()),
    };
}

/// <summary>
/// Amplification sampling: base and fine-tuned samples, logit-diff amplified samples (methods §18.1: both models
/// re-run with key/value caches on the growing sequence, z_α = z_ft + α (z_ft − z_base)), and weight-amplified samples
/// (methods §13: W_base + w ΔW in the chosen layers and modules; ΔW = W_ft − W_base, or s·B·A read from a LoRA
/// adapter), all with the same seeds so that only the logits differ.
/// </summary>
public static class AmplificationAnalysis
{
    public const string Stage = "amplification";
    public const string OutputFile = "amplification.json";

    public static string InputsHash(AmplificationOptions o)
    {
        var h = o.Models.AddTo(new InputsHash());
        foreach (var p in o.Prompts) h.Add("prompt", p);
        return h.Add("chat", o.Chat).Add("alphas", string.Join(",", o.Alphas)).Add("weights", string.Join(",", o.WeightFactors))
            .Add("layers", o.Layers is null ? null : string.Join(",", o.Layers)).Add("modules", o.Modules).Add("samples", o.SamplesPerPrompt)
            .Add("max_new", o.MaxNewTokens).Add("temperature", o.Temperature).Add("seed", o.Seed).ToString();
    }

    public static AmplificationResult? Run(AmplificationOptions o, ResultsFolder results, IProgress<string>? progress = null, CancellationToken cancel = default)
    {
        string hash = InputsHash(o);
        if (results.IsCurrent(Stage, hash)) return null;
        var r = Compute(o, progress, cancel);
        ResultsFolder.WriteAllTextAtomic(results.PathOf(OutputFile), r.ToJson(o).ToJsonString(ResultsJson.Indented) + "\n");
        results.Record(Stage, hash, [OutputFile]);
        return r;
    }

    public static AmplificationResult Compute(AmplificationOptions o, IProgress<string>? progress = null, CancellationToken cancel = default)
    {
        if (o.Prompts.Count == 0) throw new ArgumentException("no prompts to sample from");
        if (o.Temperature < 0) throw new ArgumentOutOfRangeException(nameof(o.Temperature), "temperature must be ≥ 0");
        using var pair = ModelPair.Load(o.Models);
        if (o.Alphas.Count > 0 && pair.Base.Config.Vocab != pair.FineTuned.Config.Vocab)
            throw new InvalidDataException($"logit-diff amplification needs equal vocabularies; base {pair.Base.Config.Vocab} ({o.Models.Base}) vs fine-tuned {pair.FineTuned.Config.Vocab} ({o.Models.FineTuned})");
        var tokenizer = pair.Tokenizer ?? throw new FileNotFoundException($"{o.Models.FineTuned}: no tokenizer.json; prompts cannot be tokenized");
        var stops = new HashSet<int>(pair.FineTuned.Config.EosTokenIds);
        ChatFormatter? chat = null;
        if (o.Chat)
        {
            string dir = File.Exists(Path.Combine(o.Models.FineTuned, "tokenizer_config.json")) ? o.Models.FineTuned : o.Models.Base;
            chat = ChatFormatter.FromFolder(dir);
        }
        var amplified = o.WeightFactors.Select(w => (w, Model: LoadAmplified(o, w))).ToList();
        try
        {
            var prompts = new List<PromptSamples>();
            foreach (var prompt in o.Prompts)
            {
                var enc = chat?.Format([new ChatMessage("user", prompt)], addGenerationPrompt: true);
                int[] ids = enc?.Ids ?? tokenizer.Encode(prompt, addSpecialTokens: true).Ids;
                if (ids.Length == 0) throw new ArgumentException($"prompt '{prompt}' encodes to no tokens");
                string rendered = enc?.Text ?? prompt;
                var settings = new List<AmplifiedSamples>();
                List<string> Sample(CausalLM model, Func<LogitsProcessor?>? processor, string what)
                {
                    var list = new List<string>();
                    for (int i = 0; i < o.SamplesPerPrompt; i++)
                    {
                        cancel.ThrowIfCancellationRequested();
                        var output = new Generator(model).Generate(ids, o.MaxNewTokens, o.Temperature, o.Seed + i, stops, processLogits: processor?.Invoke());
                        list.Add(tokenizer.Decode(output.ToArray())); // specials kept: an amplified EOS shows as </s>, not as an empty sample
                        progress?.Report($"{what} sample {i + 1}/{o.SamplesPerPrompt}");
                    }
                    return list;
                }
                settings.Add(new AmplifiedSamples("base", null, Sample(pair.Base, null, "base")));
                settings.Add(new AmplifiedSamples("finetuned", null, Sample(pair.FineTuned, null, "finetuned")));
                foreach (float a in o.Alphas)
                    settings.Add(new AmplifiedSamples("logit_diff", a, Sample(pair.FineTuned, () => LogitDiff(pair.Base, a), $"logit-diff α={a}")));
                foreach (var (w, model) in amplified)
                    settings.Add(new AmplifiedSamples("weight", w, Sample(model, null, $"weight w={w}")));
                prompts.Add(new PromptSamples(prompt, rendered, settings));
            }
            return new AmplificationResult(prompts);
        }
        finally { foreach (var (_, m) in amplified) m.Dispose(); }
    }

    /// <summary>A logits processor for the fine-tuned model's generation: runs <paramref name="baseModel"/> on the same
    /// sequence with its own key/value cache and returns z_ft + α (z_ft − z_base). One per generated sequence.</summary>
    public static LogitsProcessor LogitDiff(CausalLM baseModel, float alpha)
    {
        var cache = baseModel.NewCache();
        int fed = 0;
        return (sequence, zFt) =>
        {
            var fresh = new int[sequence.Count - fed];
            for (int i = 0; i < fresh.Length; i++) fresh[i] = sequence[fed + i];
            var zBase = baseModel.StepWithCache(fresh, cache);
            fed = sequence.Count;
            for (int v = 0; v < zFt.Length; v++) zFt[v] += alpha * (zFt[v] - zBase[v]);
            return zFt;
        };
    }

    /// <summary>Whether parameter <paramref name="name"/> is scaled for these options.</summary>
    public static bool Selected(string name, IReadOnlyList<int>? layers, AmplifiedModules modules)
    {
        var (layer, module) = WeightDiff.WeightDiffAnalysis.Locate(name);
        if (layer is null || (layers is not null && !layers.Contains(layer.Value))) return false;
        // attention: self_attn.* (llama family), attn.* (GPT-2), attention.* (GPT-NeoX); MLP: mlp.*; norms only under "all"
        return modules switch
        {
            AmplifiedModules.Attention => module.StartsWith("self_attn.", StringComparison.Ordinal) || module.StartsWith("attn.", StringComparison.Ordinal)
                                          || module.StartsWith("attention.", StringComparison.Ordinal),
            AmplifiedModules.Mlp => module.StartsWith("mlp.", StringComparison.Ordinal),
            _ => true,
        };
    }

    /// <summary>The base model with W_base + w ΔW in the selected parameters.</summary>
    public static CausalLM LoadAmplified(AmplificationOptions o, float w)
    {
        var m = o.Models;
        bool loraOnly = m.Adapter is not null && m.BaseAdapter is null &&
                        Path.GetFullPath(m.FineTuned).TrimEnd('/') == Path.GetFullPath(m.Base).TrimEnd('/');
        if (loraOnly)
            return CausalLM.Load(m.Base, null, (config, weights) =>
            {
                foreach (var d in LoraAdapter.Load(m.Adapter!).Deltas(weights, config))
                {
                    if (!Selected(d.WeightName, o.Layers, o.Modules)) continue;
                    var wb = weights[d.WeightName];
                    var values = wb.ToArray();
                    d.AddTo(values, w * d.Scale);
                    weights[d.WeightName] = Weight.Owned(wb.Name, wb.DType, wb.Shape, values, $"{wb.Origin} + {w} × LoRA {m.Adapter}");
                }
            });
        var cFt = ModelConfig.Load(m.FineTuned);
        var ck = new ShardedCheckpoint(m.FineTuned);
        try
        {
            var wFt = CausalLM.ResolveWeights(cFt, ck, m.FineTuned);
            if (m.Adapter is not null) LoraAdapter.Load(m.Adapter).MergeInto(wFt, cFt);
            return CausalLM.Load(m.Base, m.BaseAdapter, (_, weights) =>
            {
                foreach (var name in weights.Keys.ToList())
                {
                    if (!Selected(name, o.Layers, o.Modules)) continue;
                    var wb = weights[name];
                    if (!wFt.TryGetValue(name, out var wf) || !wf.Shape.AsSpan().SequenceEqual(wb.Shape))
                        throw new InvalidDataException($"{m.FineTuned}: parameter '{name}' is missing or has another shape than the base model's");
                    var b = wb.ToArray();
                    var f = wf.ToArray();
                    for (long i = 0; i < b.Length; i++) b[i] += w * (f[i] - b[i]);
                    weights[name] = Weight.Owned(wb.Name, wb.DType, wb.Shape, b, $"{wb.Origin} + {w} × ΔW");
                }
            });
        }
        finally { ck.Dispose(); }
    }
}

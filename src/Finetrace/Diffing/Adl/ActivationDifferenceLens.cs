using System.Diagnostics;
using System.Globalization;
using System.Text.Json.Nodes;
using Finetrace.Models;
using Finetrace.Text.Datasets;
using Finetrace.Text.Tokenization;

namespace Finetrace.Diffing.Adl;

/// <summary>How the ADL turns text into ids and back: the sample encoder (tokenizer + chat formatter), the decode of
/// id lists, and the ids that end a generation.</summary>
public sealed record AdlText(ISampleEncoder Encoder, Func<int[], string> Decode, IReadOnlyCollection<int> StopIds, Func<int, string>? DecodeOne = null)
{
    /// <summary>A token's string: the tokenizer's decode of the single id as it reads in running text (" Z", not "Z").</summary>
    public string Token(int id) => DecodeOne?.Invoke(id) ?? Decode([id]);

    /// <summary>The fine-tuned model's tokenizer and chat template (falling back to the base model's), and the EOS ids of both configs.</summary>
    public static AdlText FromFolders(string fineTuned, string baseModel)
    {
        string dir = File.Exists(Path.Combine(fineTuned, "tokenizer.json")) ? fineTuned
            : File.Exists(Path.Combine(baseModel, "tokenizer.json")) ? baseModel
            : throw new FileNotFoundException($"no tokenizer.json in {fineTuned} or {baseModel}; the ADL needs the tokenizer to read data and show tokens");
        var enc = ModelSampleEncoder.FromFolder(dir);
        if (enc.Chat is null && dir == fineTuned && File.Exists(Path.Combine(baseModel, "tokenizer.json")))
        {
            var other = ModelSampleEncoder.FromFolder(baseModel);
            if (other.Chat is not null) enc = other;
        }
        var tok = enc.Tokenizer;
        var stops = new HashSet<int>(ModelConfig.Load(fineTuned).EosTokenIds);
        if (tok.EosId is int e) stops.Add(e);
        return new AdlText(enc, ids => tok.Decode(ids), stops, tok.DecodeToken);
    }
}

/// <summary>
/// The Activation Difference Lens (methods §11, §18.4): mean differences δ = mean(h_ft − h_base) per layer and position
/// over the first tokens of unrelated text (and around the assistant start of chat data), read through the logit lens
/// of both models, Patchscope on the fine-tuned model and steering; writes <c>RESULTS/adl.json</c>, the tensors under
/// <c>RESULTS/adl/</c>, and records the stage "adl" in the results manifest (a current stage is skipped).
/// </summary>
public static class ActivationDifferenceLens
{
    public const string Stage = "adl";

    public static AdlResult Run(AdlOptions o, string resultsDir, IProgress<AdlProgress>? progress = null, CancellationToken cancel = default)
    {
        Validate(o);
        var results = ResultsFolder.Open(resultsDir);
        string hash = Hash(o);
        if (results.IsCurrent(Stage, hash)) return new AdlResult([], [], 0, 0, new Dictionary<string, long>(), 0, 0, UpToDate: true) { Data = AdlData.Describe(o) };
        using var baseModel = CausalLM.Load(o.BaseModel, o.BaseAdapter);
        using var ftModel = CausalLM.Load(o.FineTunedModel, o.Adapter);
        var text = AdlText.FromFolders(o.FineTunedModel, o.BaseModel);
        var r = Compute(o, baseModel, ftModel, text, progress, cancel);
        var outputs = AdlOutput.Write(results, r, text);
        results.Record(Stage, hash, outputs, Inputs(o));
        return r;
    }

    /// <summary>The analysis on loaded models, without writing anything.</summary>
    public static AdlResult Compute(AdlOptions o, CausalLM baseModel, CausalLM ftModel, AdlText text,
        IProgress<AdlProgress>? progress = null, CancellationToken cancel = default)
    {
        Validate(o);
        if (baseModel.Hidden != ftModel.Hidden)
            throw new InvalidOperationException($"the models' residual widths differ (base {baseModel.Hidden}, fine-tuned {ftModel.Hidden}); they cannot be diffed");
        if (baseModel.Config.Vocab != ftModel.Config.Vocab)
            throw new InvalidOperationException($"the models' vocabularies differ (base {baseModel.Config.Vocab}, fine-tuned {ftModel.Config.Vocab}); the logit lens needs one vocabulary");
        int layersAvail = Math.Min(baseModel.Layers, ftModel.Layers);
        if (o.Layers.Min() < 0 || o.Layers.Max() >= layersAvail)
            throw new ArgumentException($"layers {string.Join(",", o.Layers)}: the models have layers 0..{layersAvail - 1}");

        var sw = Stopwatch.StartNew();
        var sums = MeanDifferences.Run(o, baseModel, ftModel, text.Encoder, progress, cancel);
        if (sums.TextSamples + sums.ChatSamples == 0)
            throw new InvalidDataException($"no sample of the data can be used ({string.Join(", ", sums.Skipped.Select(kv => $"{kv.Value:N0} {kv.Key}"))}); " +
                $"text samples need more than {o.Positions.Max()} tokens, chat samples an assistant turn with the positions around its start");
        if (sums.NormTokens == 0)
            throw new InvalidDataException($"no sample is longer than {o.NormSkip} tokens, so the typical activation norm (mean ‖h‖ over positions ≥ {o.NormSkip}) cannot be measured; use longer samples");
        var norms = o.Layers.Select((l, i) => new LayerNorms(l, sums.BaseNormSum[i] / sums.NormTokens, sums.FtNormSum[i] / sums.NormTokens, sums.NormTokens)).ToList();
        double meanSeconds = sw.Elapsed.TotalSeconds;

        sw.Restart();
        var identity = o.Patchscope ? o.IdentityPrompts.Select(p => text.Encoder.EncodeText(0, 0, p).Ids).ToList() : [];
        var steerPrompts = o.SteeringPrompts.Select(p => (p, text.Encoder.EncodeText(0, 0, p).Ids)).ToList();
        var entries = new List<AdlEntry>();
        var live = Enumerable.Range(0, sums.Slots.Length).Where(s => sums.Count[s] > 0).ToList();
        long total = (long)o.Layers.Length * live.Count, done = 0;
        for (int li = 0; li < o.Layers.Length; li++)
        {
            int layer = o.Layers[li];
            foreach (int s in live)
            {
                cancel.ThrowIfCancellationRequested();
                var slot = sums.Slots[s];
                var delta = sums.Delta(li, s);
                var ftLens = AdlReaders.LogitLens(ftModel, "finetuned", delta, o.LogitLensTopK, text.Token);
                var baseLens = AdlReaders.LogitLens(baseModel, "base", delta, o.LogitLensTopK, text.Token);
                double dn = System.Numerics.Tensors.TensorPrimitives.Norm(delta);
                PatchscopeReading? ps = null;
                if (o.Patchscope && dn > 0)
                {
                    var v = Rescale(delta, norms[li].FineTuned);
                    ps = AdlReaders.Patchscope(ftModel, layer, v, identity, o.PatchscopeScales, o.PatchscopeIntersectionTopK, o.PatchscopeScoreFraction, text.Token);
                }
                var steering = new List<SteeringReading>();
                if (dn > 0 && (o.SteeringPositions is null || o.SteeringPositions.Contains(slot.Position)))
                {
                    if (o.Steer.HasFlag(SteerModels.FineTuned))
                        steering.Add(AdlReaders.Steer(ftModel, "finetuned", baseModel, "base", layer, delta, norms[li].FineTuned, o.SteeringStrengths, steerPrompts, o.SteeringSamples,
                            o.SteeringNewTokens, o.SteeringTemperature, o.Seed, text.StopIds, o.SteeringLossFactor, text.Decode, cancel));
                    if (o.Steer.HasFlag(SteerModels.Base))
                        steering.Add(AdlReaders.Steer(baseModel, "base", baseModel, "base", layer, delta, norms[li].Base, o.SteeringStrengths, steerPrompts, o.SteeringSamples,
                            o.SteeringNewTokens, o.SteeringTemperature, o.Seed, text.StopIds, o.SteeringLossFactor, text.Decode, cancel));
                }
                var ablation = o.AblationControls > 0 && dn > 0
                    ? ProjectionAblation.Run(o, baseModel, ftModel, text.Encoder, layer, slot.Context, slot.Position, delta, o.AblationControls,
                        o.AblationSamples, o.AblationContext, o.BatchSize, o.Seed, cancel)
                    : null;
                int tok = sums.MostFrequentToken(s);
                entries.Add(new AdlEntry(layer, slot.Context, slot.Position, tok, tok < 0 ? "" : text.Token(tok), sums.Count[s],
                    delta, sums.Mean(sums.BaseSum, li, s), sums.Mean(sums.FtSum, li, s), ftLens, baseLens, ps, steering) { Ablation = ablation });
                progress?.Report(new AdlProgress("readers", ++done, total));
            }
        }
        return new AdlResult(entries, norms, sums.TextSamples, sums.ChatSamples, sums.Skipped, meanSeconds, sw.Elapsed.TotalSeconds, UpToDate: false) { Data = AdlData.Describe(o) };
    }

    /// <summary>v / ‖v‖ · norm.</summary>
    public static float[] Rescale(float[] v, double norm)
    {
        double n = System.Numerics.Tensors.TensorPrimitives.Norm(v);
        var r = new float[v.Length];
        System.Numerics.Tensors.TensorPrimitives.Multiply(v, (float)(norm / n), r);
        return r;
    }

    static void Validate(AdlOptions o)
    {
        if (o.Layers.Length == 0) throw new ArgumentException("give at least one layer");
        if (o.Positions.Length == 0 || o.Positions.Min() < 0) throw new ArgumentException("text positions must be given and ≥ 0");
        if (o.ChatPositions.Length == 0) throw new ArgumentException("give at least one chat position");
        if (o.MaxSamples < 1 || o.BatchSize < 1 || o.ContextLength < 1) throw new ArgumentException("samples, batch size and context length must be positive");
        if (o.NormSkip < 0 || o.NormContext < 1) throw new ArgumentException("the norm settings must be non-negative (skip) and positive (context)");
        if (o.AblationControls < 0 || o.AblationSamples < 1 || o.AblationContext < 2) throw new ArgumentException("ablation controls must be ≥ 0, its samples positive and its context ≥ 2 tokens");
        if (o.LogitLensTopK < 1) throw new ArgumentException("the logit-lens top k must be positive");
        if (o.SteeringStrengths.Any(s => !(s >= 0)) || (o.Steer != SteerModels.None && o.SteeringStrengths.Count == 0))
            throw new ArgumentException("steering strengths must be given and ≥ 0");
        if (o.SteeringSamples < 1 || o.SteeringNewTokens < 1) throw new ArgumentException("steering samples and new tokens must be positive");
        if (!(o.SteeringLossFactor > 0)) throw new ArgumentException("the steering loss factor must be positive");
        if (o.Patchscope && (o.IdentityPrompts.Count == 0 || o.PatchscopeScales.Count == 0)) throw new ArgumentException("Patchscope needs identity prompts and scales");
        if (o.Data.Select(d => d.Name).Distinct().Count() != o.Data.Count) throw new ArgumentException("data source names repeat; give each a name");
    }

    static string Inv(double x) => x.ToString("R", CultureInfo.InvariantCulture);

    internal static string Hash(AdlOptions o)
    {
        var h = new InputsHash().Add("method", "adl/1");
        h.AddPath("base", o.BaseModel).Add("base_adapter", o.BaseAdapter);
        if (o.BaseAdapter is not null) h.AddPath("base_adapter_files", o.BaseAdapter);
        h.AddPath("finetuned", o.FineTunedModel).Add("adapter", o.Adapter);
        if (o.Adapter is not null) h.AddPath("adapter_files", o.Adapter);
        if (AdlData.UsesBuiltIn(o)) h.Add("data", GeneralText.Name);
        foreach (var d in o.Data)
        {
            h.Add("data", $"{d.Kind}|{d.Name}|{Inv(d.Weight)}|{d.Field}|{d.MaxSamples}|{d.MaxTokens}|{d.SplitBlankLines}");
            h.AddPath("data_files", d.Path);
        }
        foreach (var (k, v) in Settings(o)) h.Add(k, v);
        return h.ToString();
    }

    static IEnumerable<(string Key, string Value)> Settings(AdlOptions o)
    {
        yield return ("layers", string.Join(",", o.Layers));
        yield return ("positions", string.Join(",", o.Positions));
        yield return ("chat_positions", string.Join(",", o.ChatPositions));
        yield return ("max_samples", o.MaxSamples.ToString(CultureInfo.InvariantCulture));
        yield return ("batch_size", o.BatchSize.ToString(CultureInfo.InvariantCulture));
        yield return ("context_length", o.ContextLength.ToString(CultureInfo.InvariantCulture));
        yield return ("norm", $"{o.NormSamples}|{o.NormContext}|{o.NormSkip}");
        yield return ("logit_lens_top_k", o.LogitLensTopK.ToString(CultureInfo.InvariantCulture));
        yield return ("patchscope", o.Patchscope ? $"{string.Join("\u0001", o.IdentityPrompts)}|{string.Join(",", o.PatchscopeScales.Select(Inv))}|{o.PatchscopeIntersectionTopK}|{Inv(o.PatchscopeScoreFraction)}" : "off");
        yield return ("steering", $"{o.Steer}|{string.Join(",", o.SteeringStrengths.Select(Inv))}|{string.Join("\u0001", o.SteeringPrompts)}|{o.SteeringSamples}|{o.SteeringNewTokens}|{Inv(o.SteeringTemperature)}|{Inv(o.SteeringLossFactor)}|{(o.SteeringPositions is null ? "all" : string.Join(",", o.SteeringPositions))}");
        yield return ("seed", o.Seed.ToString(CultureInfo.InvariantCulture));
        yield return ("ablation", o.AblationControls == 0 ? "off" : $"{o.AblationControls}|{o.AblationSamples}|{o.AblationContext}");
    }

    static JsonObject Inputs(AdlOptions o)
    {
        var j = new JsonObject
        {
            ["base"] = Path.GetFullPath(o.BaseModel), ["base_adapter"] = o.BaseAdapter is null ? null : Path.GetFullPath(o.BaseAdapter),
            ["finetuned"] = Path.GetFullPath(o.FineTunedModel), ["adapter"] = o.Adapter is null ? null : Path.GetFullPath(o.Adapter),
            ["data"] = AdlData.UsesBuiltIn(o) ? new JsonArray((JsonNode)$"builtin:{GeneralText.Name}")
                : new JsonArray(o.Data.Select(d => (JsonNode)$"{d.Kind.ToString().ToLowerInvariant()}:{Path.GetFullPath(d.Path)},name={d.Name}").ToArray()),
            ["data_description"] = AdlData.Describe(o),
        };
        foreach (var (k, v) in Settings(o)) j[k] = v;
        return j;
    }
}

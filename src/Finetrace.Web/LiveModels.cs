using System.Globalization;
using System.Text.RegularExpressions;
using Finetrace.Dictionaries;
using Finetrace.Diffing;
using Finetrace.Diffing.Adl;
using Finetrace.Diffing.Amplification;
using Finetrace.Diffing.Causal;
using Finetrace.Models;
using Finetrace.Models.Safetensors;
using Finetrace.Text.Chat;
using Finetrace.Text.Datasets;
using Finetrace.Text.Tokenization;
using Tensor = Finetrace.Tensors.Tensor;

namespace Finetrace.Web;

public enum LiveState { NotConfigured, Off, Loading, Ready, Failed }

/// <summary>A live request the dashboard cannot serve as asked (bad field, no chat template, …): a 400 with this message.</summary>
public sealed class LiveRequestException(string message) : Exception(message);

/// <summary>One token of a live analysis: its id and text, its role in a chat, KL(p_ft ‖ p_base) of the next-token
/// distributions at it, and ‖h_ft − h_base‖ at the layer.</summary>
public sealed record LiveToken(int Id, string Text, string? Role, double Kl, double DiffNorm);

/// <summary>A latent's activation at every token of a live prompt.</summary>
public sealed record LiveLatent(int Id, float[] Values, string? Tag);

public sealed record LiveAnalysis(string Rendered, int Layer, IReadOnlyList<LiveToken> Tokens, IReadOnlyList<LiveLatent> Latents, string? DictionaryNote);

/// <summary>A steering direction offered by the live pages: a latent's decoder row or an ADL mean difference.</summary>
public sealed record SteeringVector(string Key, string Label, int Layer);

public sealed record SteeredGeneration(string Prompt, string Model, string Vector, int Layer, double Strength, double VectorNorm, string Steered, string Unsteered);

public sealed record AmplifiedGeneration(string Prompt, double Alpha, string Base, string FineTuned, string Amplified);

/// <summary>
/// The models behind the live pages, loaded once in the background (start stays fast) from the folders
/// <see cref="DashboardData.Models"/> names, with the results' dictionary and ADL vectors. A load failure is kept as a
/// message naming the folder; the live pages show it and the rest of the dashboard is unaffected. Every run goes through
/// the <see cref="LiveQueue"/>. The model code is the library's: <see cref="PairedForward"/>, <see cref="LogitMath"/>,
/// <see cref="AnalysisDictionary.PairCodes"/>, <see cref="Generator"/>, <see cref="AdlReaders.SteeringHooks"/>,
/// <see cref="AmplificationAnalysis.LogitDiff"/>.
/// </summary>
public sealed class LiveModels : IDisposable
{
    public const int MaxPromptTokens = 512, MaxNewTokens = 128;

    sealed record Loaded(ModelPair Pair, Tokenizer Tokenizer, ChatFormatter? Chat, string? ChatNote, AnalysisDictionary? Dict, string? DictNote,
        int Layer, IReadOnlyDictionary<string, (SteeringVector Info, float[] VectorW)> Adl);

    readonly DashboardData _data;
    Task<Loaded>? _load;
    public LiveQueue Queue { get; }

    public LiveModels(DashboardData data, int maxWaiting)
    {
        _data = data;
        Queue = new LiveQueue(maxWaiting);
    }

    /// <summary>Starts loading the models on a background thread (no-op when the results name no models).</summary>
    public void StartLoading()
    {
        if (_data.Models is null || _load is not null || _off) return;
        _load = Task.Run(Load);
    }

    /// <summary>Waits for the load to finish (tests, benchmarks); the state says how it went.</summary>
    public Task WhenLoaded() => _load is null ? Task.CompletedTask : _load.ContinueWith(_ => { }, TaskScheduler.Default);

    bool _off;
    /// <summary>Keeps the models unloaded for good (a server started without the live pages).</summary>
    public void TurnOff() { if (_load is null) _off = true; }

    public LiveState State => _data.Models is null ? LiveState.NotConfigured
        : _off ? LiveState.Off
        : _load is null || !_load.IsCompleted ? LiveState.Loading
        : _load.IsCompletedSuccessfully ? LiveState.Ready : LiveState.Failed;

    /// <summary>Why the live pages are not available (null when ready).</summary>
    public string? Problem => State switch
    {
        LiveState.NotConfigured => $"{_data.Directory}: the results name no models (no summary.json models and no activation store); start 'finetrace serve' with the base and fine-tuned model folders",
        LiveState.Off => "this dashboard was started without the live pages (no models loaded)",
        LiveState.Loading => "the models are still loading; try again in a moment",
        LiveState.Failed => (_load!.Exception?.InnerException ?? _load.Exception)?.Message ?? "the models failed to load",
        _ => null,
    };

    /// <summary>The chat note, dictionary note and steering vectors once loaded.</summary>
    public (bool Chat, string? ChatNote, int? Latents, string? DictionaryNote, int Layer, IReadOnlyList<SteeringVector> Adl)? Info()
    {
        if (State != LiveState.Ready) return null;
        var l = _load!.Result;
        return (l.Chat is not null, l.ChatNote, l.Dict?.Latents, l.DictNote, l.Layer, l.Adl.Values.Select(v => v.Info).ToList());
    }

    Loaded Load()
    {
        var spec = _data.Models!;
        CausalLM LoadOne(string folder, string? adapter, string what)
        {
            try { return CausalLM.Load(folder, adapter); }
            catch (Exception e) when (e is not OutOfMemoryException)
            { throw new InvalidDataException($"the {what} model in {folder}{(adapter is null ? "" : $" (adapter {adapter})")} failed to load: {e.Message}", e); }
        }
        var b = LoadOne(spec.Base, spec.BaseAdapter, "base");
        CausalLM f;
        try { f = LoadOne(spec.FineTuned, spec.Adapter, "fine-tuned"); } catch { b.Dispose(); throw; }
        try
        {
            string tokDir = new[] { spec.FineTuned, spec.Base }.FirstOrDefault(d => File.Exists(Path.Combine(d, "tokenizer.json")))
                ?? throw new FileNotFoundException($"{spec.FineTuned}: no tokenizer.json here or in {spec.Base}; prompts cannot be tokenized");
            var tok = Tokenizer.FromFolder(tokDir);
            var pair = new ModelPair(b, f, tok, spec);
            ChatFormatter? chat = null;
            string? chatNote = null;
            try { chat = new ChatFormatter(tok, ChatTemplate.FromFolder(File.Exists(Path.Combine(spec.FineTuned, "tokenizer_config.json")) ? spec.FineTuned : tokDir)); }
            catch (Exception e) when (e is InvalidDataException or IOException or System.Text.Json.JsonException) { chatNote = e.Message; }
            AnalysisDictionary? dict = null;
            string? dictNote = null;
            if (_data.DictionaryFolder is { } dd)
            {
                try
                {
                    var d = DictionaryIO.Load(dd);
                    var input = DictionaryInput.Read(dd) ?? (d.Models > 1 ? DictionaryInput.Paired(_data.SummaryLayer ?? 0) : DictionaryInput.SingleModel(_data.SummaryLayer ?? 0, 1));
                    if (d.DModel != b.Hidden) throw new InvalidDataException($"it reads width {d.DModel}, the models have width {b.Hidden}");
                    if (input.Layer >= Math.Min(b.Layers, f.Layers)) throw new InvalidDataException($"its layer {input.Layer} is outside the models' {b.Layers} layers");
                    dict = new AnalysisDictionary(d, dd, input, 2);
                }
                catch (Exception e) when (e is not OutOfMemoryException) { dictNote = $"{dd}: the dictionary cannot be used ({e.Message}); latent activations are off"; }
            }
            else dictNote = $"{_data.TableDirectory}: no dictionary folder found; latent activations are off";
            int layer = dict?.Layer ?? _data.SummaryLayer ?? Math.Min(b.Layers, f.Layers) / 2;
            return new Loaded(pair, tok, chat, chatNote, dict, dictNote, layer, LoadAdl(Math.Min(b.Layers, f.Layers), b.Hidden));
        }
        catch { b.Dispose(); f.Dispose(); throw; }
    }

    static readonly Regex AdlFile = new(@"^layer_(\d+)_(.+)\.safetensors$", RegexOptions.Compiled);
    static readonly Regex AdlTensor = new(@"^mean_pos_(\d+)$", RegexOptions.Compiled);

    /// <summary>The ADL mean differences δ (RESULTS/adl/layer_L_CONTEXT.safetensors, tensors mean_pos_P) usable on these models.</summary>
    Dictionary<string, (SteeringVector, float[])> LoadAdl(int layers, int hidden)
    {
        var found = new Dictionary<string, (SteeringVector, float[])>(StringComparer.Ordinal);
        string dir = Path.Combine(_data.Directory, AdlOutput.TensorFolder);
        if (!Directory.Exists(dir)) return found;
        foreach (var path in Directory.GetFiles(dir, "layer_*.safetensors").Order(StringComparer.Ordinal))
        {
            var m = AdlFile.Match(Path.GetFileName(path));
            if (!m.Success) continue;
            int layer = int.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture);
            if (layer >= layers) continue;
            try
            {
                using var st = new SafetensorsFile(path);
                foreach (var name in st.Tensors.Keys.Order(StringComparer.Ordinal))
                {
                    var tm = AdlTensor.Match(name);
                    if (!tm.Success) continue;
                    var v = st.ReadF32(name).Data;
                    if (v.Length != hidden) continue;
                    string key = $"adl:{layer}:{m.Groups[2].Value}:{tm.Groups[1].Value}";
                    found[key] = (new SteeringVector(key, $"ADL δ, layer {layer}, {m.Groups[2].Value}, position {tm.Groups[1].Value}", layer), v);
                }
            }
            catch (Exception e) when (e is IOException or InvalidDataException or SafetensorsFormatException) { }
        }
        return found;
    }

    /// <summary>What the Neuronpedia export reads from the loaded models: the dictionary, the fine-tuned model (for W_U · d_j)
    /// and the tokenizer's decode; all null while the models are not ready.</summary>
    public (AnalysisDictionary? Dict, CausalLM? FineTuned, Func<int, string>? Decode) ExportParts()
    {
        if (State != LiveState.Ready) return (null, null, null);
        var l = _load!.Result;
        return (l.Dict, l.Pair.FineTuned, l.Pair.TokenText);
    }

    Loaded Ready() => State == LiveState.Ready ? _load!.Result : throw new InvalidOperationException(Problem);

    /// <summary>Token ids (and roles) of a text, or of a chat rendered with the fine-tuned model's own template.</summary>
    (int[] Ids, TokenRole[]? Roles, string Rendered) Encode(Loaded l, string? text, IReadOnlyList<ChatMessage>? chat, bool generationPrompt)
    {
        int[] ids; TokenRole[]? roles = null; string rendered;
        if (chat is { Count: > 0 })
        {
            if (l.Chat is null) throw new LiveRequestException($"chat input needs a chat template: {l.ChatNote}");
            ChatEncoding enc;
            try { enc = l.Chat.Format(chat, addGenerationPrompt: generationPrompt); }
            catch (Exception e) when (e is InvalidDataException or ArgumentException or InvalidOperationException) { throw new LiveRequestException($"the chat cannot be rendered: {e.Message}"); }
            ids = enc.Ids; roles = enc.Roles; rendered = enc.Text;
        }
        else
        {
            if (string.IsNullOrEmpty(text)) throw new LiveRequestException("give a text or a chat (messages)");
            ids = l.Tokenizer.Encode(text, addSpecialTokens: true).Ids;
            rendered = text;
        }
        if (ids.Length == 0) throw new LiveRequestException("the input encodes to no tokens");
        if (ids.Length > MaxPromptTokens) throw new LiveRequestException($"the input is {ids.Length} tokens; the live pages take at most {MaxPromptTokens}");
        return (ids, roles, rendered);
    }

    /// <summary>
    /// Runs both models on the input once: per token KL(p_ft ‖ p_base) of the next-token distributions (the library's
    /// <see cref="LogitMath.Kl"/>, on the shared vocabulary), ‖h_ft − h_base‖ after the dictionary's layer, and the
    /// activations of <paramref name="latents"/> plus the <paramref name="topLatents"/> most active ones, from the
    /// results' dictionary encoding the pair (h_base, h_ft) (<see cref="AnalysisDictionary.PairCodes"/>).
    /// </summary>
    public LiveAnalysis Analyze(string? text, IReadOnlyList<ChatMessage>? chat, IReadOnlyList<int> latents, int topLatents, Func<int, string?>? tagOf, CancellationToken cancel = default)
    {
        var l = Ready();
        var (ids, roles, rendered) = Encode(l, text, chat, generationPrompt: false);
        if (l.Dict is not null)
            foreach (int j in latents)
                if (j < 0 || j >= l.Dict.Latents) throw new LiveRequestException($"latent {j} is outside the dictionary's {l.Dict.Latents} latents");
        int vocab = l.Pair.SharedVocab, T = ids.Length;
        var tokens = new List<LiveToken>(T);
        var chosen = new List<LiveLatent>();
        var sample = new EncodedSample(0, 0, ids, roles, l.Tokenizer.BosId is int bos && ids[0] == bos ? 1 : 0);
        PairedForward.Run(l.Pair, [sample], 1, logits: true, layers: [l.Layer], batch =>
        {
            var (hb, hf) = batch.Resid[l.Layer];
            int D = hb.Dim(-1);
            var sp = new float[vocab]; var sq = new float[vocab];
            for (int t = 0; t < T; t++)
            {
                double kl = LogitMath.Kl(LogitMath.Row(batch.LogitsFt!, 0, t, vocab), LogitMath.Row(batch.LogitsBase!, 0, t, vocab), sp, sq);
                double n2 = 0;
                for (int k = 0; k < D; k++) { double d = hf.Data[t * D + k] - hb.Data[t * D + k]; n2 += d * d; }
                tokens.Add(new LiveToken(ids[t], l.Pair.TokenText(ids[t]), roles is null ? null : roles[t].ToString().ToLowerInvariant(), kl, Math.Sqrt(n2)));
            }
            if (l.Dict is null) return;
            var (slots, codes) = l.Dict.PairCodes(hb.Data, hf.Data, [T], T);
            var acts = new Dictionary<int, float[]>();
            for (int s = 0; s < slots.Count; s++)
                for (int e = codes.RowStart[s]; e < codes.RowStart[s + 1]; e++)
                {
                    if (!acts.TryGetValue(codes.Index[e], out var v)) acts[codes.Index[e]] = v = new float[T];
                    v[slots[s].Pos] = codes.Value[e];
                }
            var ids2 = latents.Concat(acts.OrderByDescending(kv => kv.Value.Max()).ThenBy(kv => kv.Key).Select(kv => kv.Key).Where(j => !latents.Contains(j)).Take(topLatents));
            foreach (int j in ids2) chosen.Add(new LiveLatent(j, acts.TryGetValue(j, out var v) ? v : new float[T], tagOf?.Invoke(j)));
        }, cancel: cancel);
        return new LiveAnalysis(rendered, l.Layer, tokens, chosen, l.DictNote);
    }

    /// <summary>The steering vectors on offer: "latent:J:base|finetuned" (decoder row of model m in raw space) and every ADL δ.</summary>
    public IReadOnlyList<SteeringVector> AdlVectors => State == LiveState.Ready ? _load!.Result.Adl.Values.Select(v => v.Info).ToList() : [];

    (float[] VectorW, int Layer, string Label) Vector(Loaded l, string key)
    {
        if (l.Adl.TryGetValue(key, out var a)) return (a.VectorW, a.Info.Layer, a.Info.Label);
        var parts = key.Split(':');
        if (parts.Length is 2 or 3 && parts[0] == "latent" && int.TryParse(parts[1], NumberStyles.None, CultureInfo.InvariantCulture, out int j))
        {
            if (l.Dict is null) throw new LiveRequestException($"latent steering needs the dictionary: {l.DictNote}");
            if (j >= l.Dict.Latents) throw new LiveRequestException($"latent {j} is outside the dictionary's {l.Dict.Latents} latents");
            var d = l.Dict.Dict;
            int m = parts.Length == 3 && parts[2] == "base" ? 0 : d.Models - 1;
            var rows = CausalEvaluation.RawRows(d, m);
            return (rows.AsSpan(j * d.DModel, d.DModel).ToArray(), l.Dict.Layer, $"latent {j} decoder ({(d.Models == 1 ? "only" : m == 0 ? "base" : "fine-tuned")} row)");
        }
        throw new LiveRequestException($"no steering vector '{key}': use latent:ID[:base|finetuned]{(l.Adl.Count > 0 ? " or one of " + string.Join(", ", l.Adl.Keys) : " (this results folder has no adl/*.safetensors)")}");
    }

    /// <summary>
    /// Generates from <paramref name="model"/> ("base" or "finetuned") with strength × ‖h‖ × v/‖v‖ added to the residual
    /// after the vector's layer at every token but BOS (<see cref="AdlReaders.SteeringHooks"/>), where ‖h‖ is the mean
    /// residual norm of that model over the prompt at that layer; and the unsteered generation with the same seed.
    /// </summary>
    public SteeredGeneration Steer(string? text, IReadOnlyList<ChatMessage>? chat, string model, string vectorKey, double strength, int maxNew, float temperature, int seed, CancellationToken cancel = default)
    {
        var l = Ready();
        var (ids, _, rendered) = Encode(l, text, chat, generationPrompt: true);
        var lm = model switch { "base" => l.Pair.Base, "finetuned" or "ft" => l.Pair.FineTuned, _ => throw new LiveRequestException($"model '{model}' is neither base nor finetuned") };
        var (v, layer, label) = Vector(l, vectorKey);
        CheckGeneration(maxNew, temperature);
        double vn = Math.Sqrt(v.Sum(x => (double)x * x));
        if (vn == 0) throw new LiveRequestException($"{label} is a zero vector");
        // mean residual norm over the prompt (BOS left out when there is more than one token)
        var cap = new Dictionary<string, Tensor>();
        lm.Forward(new TokenBatch(ids, 1, ids.Length), new HookSet().Capture(HookNames.ResidPost(layer), cap), layer);
        var h = cap[HookNames.ResidPost(layer)];
        int D = lm.Hidden, from = ids.Length > 1 ? 1 : 0;
        double mean = 0;
        for (int t = from; t < ids.Length; t++) mean += Math.Sqrt(h.Data.AsSpan(t * D, D).ToArray().Sum(x => (double)x * x));
        mean /= ids.Length - from;
        var unit = v.Select(x => (float)(x / vn)).ToArray();
        var stops = new HashSet<int>(lm.Config.EosTokenIds);
        cancel.ThrowIfCancellationRequested();
        var steered = new Generator(lm) { Hooks = AdlReaders.SteeringHooks(layer, unit, (float)(strength * mean), fromPosition: 1) }.Generate(ids, maxNew, temperature, seed, stops);
        cancel.ThrowIfCancellationRequested();
        var plain = new Generator(lm).Generate(ids, maxNew, temperature, seed, stops);
        return new SteeredGeneration(rendered, model == "base" ? "base" : "finetuned", label, layer, strength, strength * mean,
            l.Tokenizer.Decode(steered.ToArray()), l.Tokenizer.Decode(plain.ToArray()));
    }

    /// <summary>Logit-diff amplification (methods §18.1, <see cref="AmplificationAnalysis.LogitDiff"/>): the fine-tune with
    /// z_ft + α (z_ft − z_base), beside the base and fine-tuned generations, all with the same seed.</summary>
    public AmplifiedGeneration Amplify(string? text, IReadOnlyList<ChatMessage>? chat, double alpha, int maxNew, float temperature, int seed, CancellationToken cancel = default)
    {
        var l = Ready();
        var (ids, _, rendered) = Encode(l, text, chat, generationPrompt: true);
        CheckGeneration(maxNew, temperature);
        if (l.Pair.Base.Config.Vocab != l.Pair.FineTuned.Config.Vocab)
            throw new LiveRequestException($"logit-diff amplification needs equal vocabularies; base {l.Pair.Base.Config.Vocab}, fine-tuned {l.Pair.FineTuned.Config.Vocab}");
        var stops = new HashSet<int>(l.Pair.FineTuned.Config.EosTokenIds);
        string Gen(CausalLM m, LogitsProcessor? p) { cancel.ThrowIfCancellationRequested(); return l.Tokenizer.Decode(new Generator(m).Generate(ids, maxNew, temperature, seed, stops, processLogits: p).ToArray()); }
        return new AmplifiedGeneration(rendered, alpha, Gen(l.Pair.Base, null), Gen(l.Pair.FineTuned, null), Gen(l.Pair.FineTuned, AmplificationAnalysis.LogitDiff(l.Pair.Base, (float)alpha)));
    }

    static void CheckGeneration(int maxNew, float temperature)
    {
        if (maxNew < 1 || maxNew > MaxNewTokens) throw new LiveRequestException($"max_new_tokens {maxNew} must be from 1 to {MaxNewTokens}");
        if (!(temperature >= 0) || temperature > 10) throw new LiveRequestException($"temperature {temperature} must be from 0 (greedy) to 10");
    }

    public void Dispose()
    {
        if (_load is { IsCompletedSuccessfully: true }) _load.Result.Pair.Dispose();
    }
}

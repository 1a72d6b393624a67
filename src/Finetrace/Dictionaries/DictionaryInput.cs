using System.Text.Json.Nodes;
using Finetrace.Activations;
using Finetrace.Models;

namespace Finetrace.Dictionaries;

/// <summary>What rows a dictionary reads from a store.</summary>
public enum InputKind
{
    /// <summary>Every store model side by side, [M, D] per token (crosscoders).</summary>
    Paired,
    /// <summary>One model's activations, [1, D] (an SAE on model <see cref="DictionaryInput.Model"/>).</summary>
    SingleModel,
    /// <summary>Model a − model b, [1, D] (a diff-SAE; a = <see cref="DictionaryInput.Minuend"/>, b = <see cref="DictionaryInput.Subtrahend"/>).</summary>
    Difference,
    /// <summary>(model, layer) sources side by side, [S, D] per token (a crosscoder over several layers and/or a subset of
    /// models, <see cref="DictionaryInput.Sources"/>).</summary>
    Sources,
}

/// <summary>Where the activation normaliser's statistics came from (methods.md §2.7).</summary>
public enum NormalizerStatistics
{
    /// <summary>No normaliser: the dictionary works on raw activations.</summary>
    None,
    /// <summary>The store's exact per-model Welford statistics over the whole store, held-out rows included (what train
    /// wrote before statistics were cut at the held-out rows; read from older finetrace.json files).</summary>
    Store,
    /// <summary>A sample of the training rows (difference rows, filtered tokens).</summary>
    Sample,
    /// <summary>The store's exact per-model Welford statistics over the training rows only: the rows before
    /// <see cref="DictionaryInput.HeldOutFrom"/> (every row when nothing is held out).</summary>
    TrainingRows,
}

/// <summary>An input specification that cannot be parsed or does not fit a store or dictionary. <see cref="Spec"/> is
/// the text or the record at fault; callers word it for their users.</summary>
public sealed class DictionaryInputException(string spec, string problem) : Exception($"input '{spec}': {problem}")
{
    public string Spec { get; } = spec;
    public string Problem { get; } = problem;
}

/// <summary>
/// The typed record of what a dictionary reads: a layer and site (<see cref="HookSite"/>, e.g. blocks.{L}.hook_mlp_out) of a store, and either every model side by side (crosscoder),
/// one model (SAE) or a difference a − b (diff-SAE); the store, the token filter, the normaliser and the store rows
/// training used (the rest are held out). Train writes it into <c>finetrace.json</c> (key <c>"input"</c>), and eval,
/// the spliced evaluation, convert and every analysis read it back: one record, one parser
/// (<see cref="Parse"/> for the spec strings <c>paired</c>, <c>model:I</c>, <c>diff:A-B</c>).
/// </summary>
public sealed record DictionaryInput
{
    public required int Layer { get; init; }
    public required InputKind Kind { get; init; }
    /// <summary>The activation site at <see cref="Layer"/> (as the store's manifest names it); null when the store holds no
    /// model site (synthetic stores) or the record predates sites (those stores held blocks.{L}.hook_resid_post).</summary>
    public HookSite? Site { get; init; }
    /// <summary><see cref="InputKind.SingleModel"/>: the store model read.</summary>
    public int Model { get; init; }
    /// <summary><see cref="InputKind.Difference"/>: a and b of a − b.</summary>
    public int Minuend { get; init; }
    public int Subtrahend { get; init; }
    /// <summary>The store trained on (full path), when known.</summary>
    public string? Store { get; init; }
    /// <summary>Token filter of training (<see cref="MaskFilter"/> text).</summary>
    public string Filter { get; init; } = "all";
    /// <summary>Target RMS of the activation normaliser (null: raw activations) and where its statistics came from.</summary>
    public float? TargetRms { get; init; }
    public NormalizerStatistics NormalizerStatistics { get; init; }
    /// <summary>Store rows at or after this one were held out of training (null: training saw every row).</summary>
    public long? HeldOutFrom { get; init; }
    /// <summary>Inference-time pruning of low-activating latents (methods.md §15.2) every reader of this record applies
    /// after encoding; null = none. Kept here, with what the dictionary reads, so that eval, the spliced evaluation, the
    /// analyses and the exports (which all receive this record) read the dictionary the same pruned way.</summary>
    public Pruning? Pruning { get; init; }
    /// <summary><see cref="InputKind.Sources"/>: (store model, store layer) of each source, in row order.</summary>
    public (int Model, int Layer)[] Sources { get; init; } = [];

    public static DictionaryInput Paired(int layer) => new() { Layer = layer, Kind = InputKind.Paired };
    public static DictionaryInput SingleModel(int layer, int model) => new() { Layer = layer, Kind = InputKind.SingleModel, Model = model };
    public static DictionaryInput Difference(int layer, int minuend, int subtrahend)
    {
        if (minuend == subtrahend) throw new DictionaryInputException($"diff:{minuend}-{subtrahend}", "a difference needs two different models");
        return new() { Layer = layer, Kind = InputKind.Difference, Minuend = minuend, Subtrahend = subtrahend };
    }

    /// <summary>(model, layer) sources side by side (<see cref="Layer"/> is the first source's layer).</summary>
    public static DictionaryInput FromSources((int Model, int Layer)[] sources)
    {
        if (sources.Length < 1) throw new DictionaryInputException("sources:", "no (model, layer) sources");
        if (sources.Distinct().Count() != sources.Length) throw new DictionaryInputException("sources:" + SourceBatches.Format(sources), "a (model, layer) source appears twice");
        return new() { Layer = sources[0].Layer, Kind = InputKind.Sources, Sources = sources };
    }

    /// <summary>The spec text: <c>paired</c>, <c>model:I</c>, <c>diff:A-B</c> or <c>sources:M:L,…</c>.</summary>
    public string Spec => Kind switch
    {
        InputKind.Paired => "paired",
        InputKind.Sources => "sources:" + SourceBatches.Format(Sources),
        InputKind.SingleModel => $"model:{Model}",
        _ => $"diff:{Minuend}-{Subtrahend}",
    };

    /// <summary>The site's TransformerLens name at <see cref="Layer"/> (e.g. <c>blocks.3.hook_mlp_out</c>), or null.</summary>
    public string? HookName => Site is { } s ? HookSites.Name(s, Layer) : null;

    public override string ToString() => $"{Spec} at layer {Layer}" + (Site is { } s && s != HookSite.ResidPost ? $" ({HookSites.Name(s, Layer)})" : "");

    /// <summary>Parses <c>paired</c>, <c>model:I</c> or <c>diff:A-B</c> (the only parser of these strings).</summary>
    public static DictionaryInput Parse(string spec, int layer)
    {
        string s = spec.Trim();
        if (s == "paired") return Paired(layer);
        if (s.StartsWith("sources:", StringComparison.Ordinal))
        {
            try { return FromSources(SourceBatches.Parse(s[8..])); }
            catch (FormatException e) { throw new DictionaryInputException(spec, e.Message); }
        }
        if (s.StartsWith("model:", StringComparison.Ordinal) && int.TryParse(s[6..], out int m) && m >= 0) return SingleModel(layer, m);
        if (s.StartsWith("diff:", StringComparison.Ordinal))
        {
            var p = s[5..].Split('-');
            if (p.Length == 2 && int.TryParse(p[0], out int a) && int.TryParse(p[1], out int b) && a >= 0 && b >= 0) return Difference(layer, a, b);
        }
        throw new DictionaryInputException(spec, "expected paired, model:I or diff:A-B");
    }

    /// <summary>How <paramref name="other"/> reads differently from this record (layer, kind, models); empty when it reads the same rows.</summary>
    public IReadOnlyList<string> Differences(DictionaryInput other)
    {
        var d = new List<string>();
        if (other.Layer != Layer) d.Add($"layer {Layer} vs {other.Layer}");
        if (other.Spec != Spec) d.Add($"input {Spec} vs {other.Spec}");
        if (Site is { } a && other.Site is { } b && a != b) d.Add($"site {HookSites.Template(a)} vs {HookSites.Template(b)}");
        return d;
    }

    /// <summary>Number of models in one row the dictionary sees.</summary>
    public int DictionaryModels(int storeModels) => Kind switch { InputKind.Paired => storeModels, InputKind.Sources => Sources.Length, _ => 1 };

    /// <summary>Store models whose activations a row is made from.</summary>
    public int[] StoreModels(int storeModels) => Kind switch
    {
        InputKind.Paired => Enumerable.Range(0, storeModels).ToArray(),
        InputKind.SingleModel => [Model],
        InputKind.Sources => Sources.Select(s => s.Model).Distinct().Order().ToArray(),
        _ => [Minuend, Subtrahend],
    };

    /// <summary>Throws <see cref="DictionaryInputException"/> when a model index is outside the store's models.</summary>
    public void CheckModels(int storeModels)
    {
        foreach (int m in StoreModels(storeModels))
            if ((uint)m >= (uint)storeModels) throw new DictionaryInputException(Spec, $"model {m} does not exist: the store has models 0..{storeModels - 1}");
    }

    /// <summary>Throws <see cref="DictionaryInputException"/> when a dictionary with <paramref name="dictModels"/> models
    /// cannot read this input from a store of <paramref name="storeModels"/> models.</summary>
    public void CheckDictionary(int dictModels, int storeModels)
    {
        CheckModels(storeModels);
        int want = DictionaryModels(storeModels);
        if (dictModels != want)
            throw new DictionaryInputException(Spec, Kind == InputKind.Sources ? $"the crosscoder reads {dictModels} sources but the input names {want}"
                : Kind == InputKind.Paired
                ? $"the crosscoder reads {dictModels} models but the store holds {storeModels}"
                : $"needs a single-model dictionary, this one reads {dictModels} models");
    }

    /// <summary>Throws <see cref="DictionaryInputException"/> when the store holds another site than the one this record reads
    /// (a dictionary trained on blocks.{L}.hook_mlp_out cannot read residuals). Unknown sites on either side pass.</summary>
    public void CheckSite(ActivationStore store)
    {
        if (Site is { } mine && store.Settings.Site is { } held && mine != held)
            throw new DictionaryInputException(Spec, $"the dictionary reads {HookSites.Template(mine)} but the store {store.Directory} holds {HookSites.Template(held)}");
    }

    /// <summary>Opens the rows this input reads from <paramref name="store"/> (the layer of <paramref name="options"/> is replaced by <see cref="Layer"/>).</summary>
    public InputBatches Open(ActivationStore store, StoreBatchOptions options)
    {
        CheckModels(store.Models);
        CheckSite(store);
        options.Layer = Layer;
        return Kind switch
        {
            InputKind.Paired => new InputBatches(StoreBatches.Paired(store, options), null),
            InputKind.SingleModel => OpenSlice(store, options),
            InputKind.Sources => OpenSources(store, options),
            _ => new InputBatches(StoreBatches.Difference(store, options, Minuend, Subtrahend), null),
        };
    }

    InputBatches OpenSources(ActivationStore store, StoreBatchOptions options)
    {
        var s = new SourceBatches(store, options, Sources);
        return new InputBatches(s.First, s);
    }

    InputBatches OpenSlice(ActivationStore store, StoreBatchOptions options)
    {
        var b = StoreBatches.Paired(store, options);
        return new InputBatches(b, new ModelSlice(b, Model));
    }

    /// <summary>The <c>"input"</c> object of finetrace.json.</summary>
    public JsonObject ToJson()
    {
        var o = new JsonObject { ["layer"] = Layer, ["kind"] = Spec.Split(':')[0] switch { "model" => "model", "diff" => "difference", "sources" => "sources", _ => "paired" }, ["spec"] = Spec };
        if (Site is { } site) { o["site"] = HookSites.Template(site); o["hook_name"] = HookSites.Name(site, Layer); }
        if (Kind == InputKind.Sources) o["sources"] = new JsonArray(Sources.Select(s => (JsonNode)new JsonArray(s.Model, s.Layer)).ToArray());
        if (Kind == InputKind.SingleModel) o["model"] = Model;
        if (Kind == InputKind.Difference) { o["minuend"] = Minuend; o["subtrahend"] = Subtrahend; }
        o["store"] = Store;
        o["filter"] = Filter;
        o["normalization"] = new JsonObject { ["target_rms"] = TargetRms, ["statistics"] = StatisticsName(NormalizerStatistics) };
        o["held_out_from_row"] = HeldOutFrom;
        if (Pruning is { IsNone: false } p) o["pruning"] = p.ToJson();
        return o;
    }

    /// <summary>Names of <see cref="Dictionaries.NormalizerStatistics"/> in finetrace.json: none, store, sample, training_rows.</summary>
    public static string StatisticsName(NormalizerStatistics s) => s == NormalizerStatistics.TrainingRows ? "training_rows" : s.ToString().ToLowerInvariant();

    static NormalizerStatistics ParseStatistics(string? name) => name switch
    {
        "training_rows" => NormalizerStatistics.TrainingRows,
        _ => Enum.TryParse<NormalizerStatistics>(name, ignoreCase: true, out var ns) ? ns : NormalizerStatistics.None,
    };

    /// <summary>Reads an <c>"input"</c> object; <paramref name="where"/> names the file for errors.</summary>
    public static DictionaryInput FromJson(JsonNode node, string where)
    {
        try
        {
            int layer = node["layer"]!.GetValue<int>();
            string kind = node["kind"]!.GetValue<string>();
            var input = kind switch
            {
                "paired" => Paired(layer),
                "model" => SingleModel(layer, node["model"]!.GetValue<int>()),
                "difference" => Difference(layer, node["minuend"]!.GetValue<int>(), node["subtrahend"]!.GetValue<int>()),
                "sources" => FromSources(node["sources"]!.AsArray().Select(p => (p![0]!.GetValue<int>(), p[1]!.GetValue<int>())).ToArray()),
                _ => throw new DictionaryFormatException($"{where}: input.kind '{kind}' is not paired, model or difference"),
            };
            var norm = node["normalization"];
            HookSite? site = null;
            if (node["site"]?.GetValue<string>() is string siteText)
                site = HookSites.TryParse(siteText, out var st, out _) ? st : throw new DictionaryFormatException($"{where}: input.site '{siteText}' is not a block site ({string.Join(", ", HookSites.All.Select(HookSites.Template))})");
            return input with
            {
                Site = site,
                Store = node["store"]?.GetValue<string>(),
                Filter = node["filter"]?.GetValue<string>() ?? "all",
                TargetRms = norm?["target_rms"]?.GetValue<float>(),
                NormalizerStatistics = ParseStatistics(norm?["statistics"]?.GetValue<string>()),
                HeldOutFrom = node["held_out_from_row"]?.GetValue<long>(),
                Pruning = node["pruning"] is JsonNode pn ? Dictionaries.Pruning.FromJson(pn, where) : null,
            };
        }
        catch (Exception e) when (e is NullReferenceException or InvalidOperationException or FormatException)
        {
            throw new DictionaryFormatException($"{where}: the \"input\" record is incomplete or mistyped ({e.Message}); expected layer, kind and the kind's models");
        }
    }

    /// <summary>
    /// What the dictionary in <paramref name="dir"/> reads, from its finetrace.json: the <c>"input"</c> record, or for a
    /// file written before the record existed, inferred as older versions did (with a <paramref name="note"/>: a diff-SAE
    /// without a record is assumed to read diff:1-0). Null when the folder has no finetrace.json (e.g. a foreign SAE).
    /// </summary>
    public static DictionaryInput? Read(string dir, Action<string>? note = null)
    {
        var side = FinetraceSidecar.Read(dir);
        if (side is null) return null;
        string where = Path.Combine(dir, "finetrace.json");
        if (side["input"] is JsonNode n) return FromJson(n, where);
        int? layer = side["site"]?["layer"]?.GetValue<int>();
        string? kind = side["training"]?["kind"]?.GetValue<string>();
        if (layer is null || kind is null) return null;
        var training = side["training"]!;
        var legacy = kind switch
        {
            "diff-sae" => Difference(layer.Value, 1, 0),
            "sae" => SingleModel(layer.Value, training["models"]?[0]?.GetValue<int>() ?? 1),
            _ => Paired(layer.Value),
        };
        float? rms = training["target_rms"]?.GetValue<float>();
        legacy = legacy with
        {
            Store = side["site"]?["store"]?.GetValue<string>(), Filter = training["filter"]?.GetValue<string>() ?? "all", TargetRms = rms,
            NormalizerStatistics = rms is null ? NormalizerStatistics.None : kind == "diff-sae" || (training["filter"]?.GetValue<string>() ?? "all") != "all" ? NormalizerStatistics.Sample : NormalizerStatistics.Store,
        };
        note?.Invoke($"{where} predates the \"input\" record; inferred {legacy}" + (kind == "diff-sae" ? " (the difference's direction was not recorded: assumed fine-tuned − base)" : ""));
        return legacy;
    }

    /// <summary>Writes this record as the <c>"input"</c> of finetrace.json in <paramref name="dir"/>, keeping other fields.</summary>
    public void Write(string dir) => FinetraceSidecar.Write(dir, "dictionary", new Dictionary<string, object?> { ["input"] = ToJson() });
}

/// <summary>The rows of a <see cref="DictionaryInput"/>: a store reader, sliced to one model for an SAE.</summary>
public sealed class InputBatches(StoreBatches batches, IActivationBatches? slice) : IActivationBatches, IDisposable
{
    readonly IActivationBatches _src = slice ?? batches;
    public int Models => _src.Models;
    public int DModel => _src.DModel;
    public long Position => _src.Position;
    /// <summary>Rows in one pass (after the filter and any row range).</summary>
    public long RowsPerEpoch => batches.RowsPerEpoch;
    public StoreBatches Store => batches;
    public void Seek(long position) => _src.Seek(position);
    // xBND: [rows, Models, DModel]
    public int Next(Span<float> xBND, int rows) => _src.Next(xBND, rows);
    public void Dispose() { batches.Dispose(); (slice as IDisposable)?.Dispose(); }
}

using Finetrace.Activations;
using Finetrace.Dictionaries;

namespace Finetrace.Diffing;

/// <summary>
/// A loaded dictionary together with what it reads from an activation store (its <see cref="DictionaryInput"/>: paired
/// rows for a crosscoder, model i for an SAE, a − b for a diff-SAE, and the layer). Turns raw store rows [B, S, D] into
/// the dictionary's input [B, M, D] in its own (normalised) space.
/// </summary>
public sealed class AnalysisDictionary
{
    public SparseDictionary Dict { get; }
    public string Directory { get; }
    public DictionaryInput Input { get; }
    public InputKind Kind => Input.Kind;
    public int Layer => Input.Layer;
    /// <summary>Store models read: crosscoder all models in order; SAE [i]; diff-SAE [minuend, subtrahend].</summary>
    public int[] StoreModels { get; }

    public AnalysisDictionary(SparseDictionary dict, string directory, DictionaryInput input, int storeModels)
    {
        Dict = dict; Directory = directory; Input = input;
        // the analyses read one layer's store rows; a crosscoder over (model, layer) sources would need every source's layer
        if (input.Kind == InputKind.Sources)
            throw new ArgumentException($"{directory}: this crosscoder reads {input.Spec} ((model, layer) sources); the diffing analyses read one layer of paired rows and do not take source crosscoders yet");
        StoreModels = input.StoreModels(storeModels);
        try { input.CheckDictionary(dict.Models, storeModels); input.Pruning?.Check(dict); }
        catch (Exception e) when (e is DictionaryInputException or PruningException) { throw new ArgumentException($"{directory}: {e.Message}", e); }
    }

    public int Latents => Dict.DictSize;

    /// <summary>Throws <see cref="AnalysisSiteException"/> unless the dictionary reads the residual stream after its block
    /// (or a store of no recorded site): for analyses that split the forward there and patch the residual.</summary>
    public void RequireResidualSite(string analysis)
    {
        if (Input.Site is { } s && s != Models.HookSite.ResidPost) throw new AnalysisSiteException(analysis, s, Directory);
    }

    /// <summary>Loads a dictionary folder with what it reads (its finetrace.json <see cref="DictionaryInput"/>); a folder
    /// without one (a foreign dictionary) reads every store model when it has several decoders, else the fine-tuned
    /// model, at <paramref name="layer"/> or the store's only layer. <paramref name="layer"/> overrides the recorded layer.</summary>
    public static AnalysisDictionary Open(string dir, ActivationStore store, int? layer = null, Action<string>? note = null)
    {
        var d = DictionaryIO.Load(dir, note);
        var input = DictionaryInput.Read(dir, note);
        if (input is null)
        {
            int lay = layer ?? (store.Layers.Count == 1 ? store.Layers[0]
                : throw new ArgumentException($"{dir}: no finetrace.json records the dictionary's layer and the store holds layers {string.Join(", ", store.Layers)}; give the layer"));
            input = d.Models > 1 ? DictionaryInput.Paired(lay) : DictionaryInput.SingleModel(lay, store.Models - 1);
            note?.Invoke($"{dir}: no finetrace.json; assuming it reads {input}");
        }
        else if (layer is int l) input = input with { Layer = l };
        store.LayerIndex(input.Layer);
        try { input.CheckSite(store); }
        catch (DictionaryInputException e) { throw new ArgumentException($"{dir}: {e.Problem}", e); }
        if (d.DModel != store.DModel) throw new ArgumentException($"{dir}: the dictionary reads width {d.DModel}, the store {store.Directory} holds width {store.DModel}");
        return new AnalysisDictionary(d, dir, input, store.Models);
    }

    /// <summary>Inference codes of dictionary-space input [B, M, D], pruned as the dictionary's record says
    /// (<see cref="DictionaryInput.Pruning"/>): every analysis encodes through here.</summary>
    public SparseCodes Encode(float[] xBMD) => Inference.Encode(Dict, xBMD, Input.Pruning);

    /// <summary>The dictionary's input for raw store rows, normalised when it has a normaliser.</summary>
    // xBSD: [B, S, D] raw → [B, M, D] dictionary space
    public float[] ToInput(ReadOnlySpan<float> xBSD, int rows, int storeModels)
    {
        int D = Dict.DModel, M = Dict.Models;
        var x = new float[rows * M * D];
        for (int t = 0; t < rows; t++)
        {
            switch (Kind)
            {
                case InputKind.Paired:
                    for (int m = 0; m < M; m++) xBSD.Slice((t * storeModels + StoreModels[m]) * D, D).CopyTo(x.AsSpan((t * M + m) * D, D));
                    break;
                case InputKind.SingleModel:
                    xBSD.Slice((t * storeModels + StoreModels[0]) * D, D).CopyTo(x.AsSpan(t * D, D));
                    break;
                case InputKind.Difference:
                    System.Numerics.Tensors.TensorPrimitives.Subtract(xBSD.Slice((t * storeModels + StoreModels[0]) * D, D),
                        xBSD.Slice((t * storeModels + StoreModels[1]) * D, D), x.AsSpan(t * D, D));
                    break;
            }
        }
        Dict.Normalizer?.Normalize(x, M, D);
        return x;
    }

    /// <summary>The codes of the pair [h_base, h_ft] at every real (unpadded) position of a right-padded batch, for the
    /// split-forward analyses (causal patching, KL attribution); slot s is (sequence, position).</summary>
    // hbBTD, hfBTD: [B, T, D] residuals of the base and fine-tuned model at the dictionary's layer
    public (List<(int B, int Pos)> Slots, SparseCodes Codes) PairCodes(ReadOnlySpan<float> hbBTD, ReadOnlySpan<float> hfBTD, IReadOnlyList<int> lengths, int T)
    {
        int D = Dict.DModel;
        var slots = new List<(int B, int Pos)>();
        for (int g = 0; g < lengths.Count; g++) for (int p = 0; p < lengths[g]; p++) slots.Add((g, p));
        var raw = new float[slots.Count * 2 * D];
        for (int s = 0; s < slots.Count; s++)
        {
            int off = (slots[s].B * T + slots[s].Pos) * D;
            hbBTD.Slice(off, D).CopyTo(raw.AsSpan(s * 2 * D, D));
            hfBTD.Slice(off, D).CopyTo(raw.AsSpan(s * 2 * D + D, D));
        }
        return (slots, Encode(ToInput(raw, slots.Count, 2)));
    }
}

/// <summary>An analysis that patches the residual stream after block L was given a dictionary of another site
/// (<see cref="Site"/>, e.g. blocks.{L}.hook_mlp_out).</summary>
public sealed class AnalysisSiteException(string analysis, Models.HookSite site, string directory)
    : ArgumentException($"{directory}: {analysis} patches the residual stream after the dictionary's block (blocks.{{L}}.hook_resid_post), but this dictionary reads {Models.HookSites.Template(site)}; use a dictionary trained on a residual store")
{
    public string Analysis { get; } = analysis;
    public Models.HookSite Site { get; } = site;
    public string Directory { get; } = directory;
}

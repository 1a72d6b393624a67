using Finetrace.Activations;
using Finetrace.Dictionaries;

namespace Finetrace.Diffing;

/// <summary>What kind of dictionary an analysis works on.</summary>
public enum DictionaryKind
{
    /// <summary>Reads every model's activation side by side; one decoder per model.</summary>
    Crosscoder,
    /// <summary>Reads one model's activations.</summary>
    Sae,
    /// <summary>Reads model a − model b (fine-tuned − base by default).</summary>
    DiffSae,
}

/// <summary>
/// A loaded dictionary together with what it reads from an activation store: its kind, the layer, and the store models
/// it reads (crosscoder: all, in order; SAE: [i]; diff-SAE: [a, b] for a − b). Turns raw store rows [B, S, D] into the
/// dictionary's input [B, M, D] in its own (normalised) space.
/// </summary>
public sealed class AnalysisDictionary
{
    public SparseDictionary Dict { get; }
    public string Directory { get; }
    public DictionaryKind Kind { get; }
    public int Layer { get; }
    /// <summary>Store models read: crosscoder all models in order; SAE [i]; diff-SAE [minuend, subtrahend].</summary>
    public int[] StoreModels { get; }

    public AnalysisDictionary(SparseDictionary dict, string directory, DictionaryKind kind, int layer, int[] storeModels)
    {
        Dict = dict; Directory = directory; Kind = kind; Layer = layer; StoreModels = storeModels;
        if (kind == DictionaryKind.Crosscoder && dict.Models != storeModels.Length)
            throw new ArgumentException($"{directory}: the crosscoder reads {dict.Models} models but {storeModels.Length} store models were given");
        if (kind != DictionaryKind.Crosscoder && dict.Models != 1)
            throw new ArgumentException($"{directory}: a {kind} reads one activation per token, but the dictionary has {dict.Models} models");
    }

    public int Latents => Dict.DictSize;

    /// <summary>Loads a dictionary folder and works out what it reads from its finetrace.json (written by
    /// `finetrace train`); without one, a multi-model dictionary is a crosscoder over every store model and a
    /// single-model one an SAE on the fine-tuned model.</summary>
    public static AnalysisDictionary Open(string dir, ActivationStore store, int? layer = null, Action<string>? note = null)
    {
        var d = DictionaryIO.Load(dir, note);
        var side = FinetraceSidecar.Read(dir);
        int lay = layer ?? side?["site"]?["layer"]?.GetValue<int>()
            ?? (store.Layers.Count == 1 ? store.Layers[0] : throw new ArgumentException($"{dir}: no finetrace.json names the dictionary's layer and the store holds layers {string.Join(", ", store.Layers)}; give the layer"));
        store.LayerIndex(lay);
        if (d.DModel != store.DModel) throw new ArgumentException($"{dir}: the dictionary reads width {d.DModel}, the store {store.Directory} holds width {store.DModel}");
        string kind = side?["training"]?["kind"]?.GetValue<string>() ?? (d.Models > 1 ? "crosscoder" : "sae");
        switch (kind)
        {
            case "crosscoder":
                if (d.Models != store.Models) throw new ArgumentException($"{dir}: the crosscoder reads {d.Models} models, the store holds {store.Models}");
                return new AnalysisDictionary(d, dir, DictionaryKind.Crosscoder, lay, Enumerable.Range(0, d.Models).ToArray());
            case "diff-sae":
                {
                    var t = side?["training"];
                    int a = t?["minuend"]?.GetValue<int>() ?? 1, b = t?["subtrahend"]?.GetValue<int>() ?? 0;
                    return new AnalysisDictionary(d, dir, DictionaryKind.DiffSae, lay, [a, b]);
                }
            default:
                {
                    int m = side?["training"]?["models"]?[0]?.GetValue<int>() ?? store.Models - 1;
                    return new AnalysisDictionary(d, dir, DictionaryKind.Sae, lay, [m]);
                }
        }
    }

    /// <summary>The dictionary's input for raw store rows, normalised when it has a normaliser.</summary>
    // xBSD: [B, S, D] raw → [B, M, D] dictionary space
    public float[] Input(ReadOnlySpan<float> xBSD, int rows, int storeModels)
    {
        int D = Dict.DModel, M = Dict.Models;
        var x = new float[rows * M * D];
        for (int t = 0; t < rows; t++)
        {
            switch (Kind)
            {
                case DictionaryKind.Crosscoder:
                    for (int m = 0; m < M; m++) xBSD.Slice((t * storeModels + StoreModels[m]) * D, D).CopyTo(x.AsSpan((t * M + m) * D, D));
                    break;
                case DictionaryKind.Sae:
                    xBSD.Slice((t * storeModels + StoreModels[0]) * D, D).CopyTo(x.AsSpan(t * D, D));
                    break;
                case DictionaryKind.DiffSae:
                    System.Numerics.Tensors.TensorPrimitives.Subtract(xBSD.Slice((t * storeModels + StoreModels[0]) * D, D),
                        xBSD.Slice((t * storeModels + StoreModels[1]) * D, D), x.AsSpan(t * D, D));
                    break;
            }
        }
        Dict.Normalizer?.Normalize(x, M, D);
        return x;
    }
}

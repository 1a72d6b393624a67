using System.Text.Json;
using System.Text.Json.Serialization;
using Finetrace.Models.Safetensors;

namespace Finetrace.Activations.Synthetic;

/// <summary>Ground-truth category of a synthetic feature.</summary>
public enum FeatureCategory
{
    /// <summary>Present with the same magnitude in every model (directions drift slightly).</summary>
    Shared = 0,
    /// <summary>Present only in model <see cref="SyntheticTruth.Owner"/>.</summary>
    Exclusive = 1,
    /// <summary>Present in every model, with magnitude × shrink factor in model Owner (Complete Shrinkage).</summary>
    Shrunk = 2,
    /// <summary>Latent Decoupling, planted as <see cref="SyntheticSpec.Decoupling"/> says: superset (default) — every
    /// model writes the feature's direction when it fires, and model Owner also writes it on extra tokens of its own;
    /// combination — model Owner writes a combination of parent features' directions instead.</summary>
    Decoupled = 3,
}

/// <summary>
/// The known generative model behind a synthetic store: for every feature and model, its unit direction and scale
/// (0 = absent), its category, firing probability and mean magnitude. Saved as truth.safetensors + truth.json in
/// the store folder; <see cref="Load(string)"/> reads them back for the scorer.
/// h^m(token) = bias^m + Σ_{active i} a_i · scale[m, i] · direction[m, i] + noise.
/// </summary>
public sealed class SyntheticTruth
{
    public const string TensorFile = "truth.safetensors";
    public const string JsonFile = "truth.json";

    public required SyntheticSpec Spec { get; init; }
    public int Models => Spec.Models;
    public int DModel => Spec.DModel;
    public int Features => Spec.Features;
    /// <summary>[Models, Features, DModel]: unit rows, zero where the feature is absent.</summary>
    public required float[] Directions { get; init; }
    /// <summary>[Models, Features]: the factor on the feature's activation in each model (0 = absent).</summary>
    public required float[] Scales { get; init; }
    public required FeatureCategory[] Categories { get; init; }
    /// <summary>The model a non-shared feature is about (exclusive: the model that has it; shrunk: the weaker
    /// model; decoupled: the model with the extra firings or the combination); −1 for shared.</summary>
    public required int[] Owner { get; init; }
    /// <summary>[Features]: probability that the feature is active on a token.</summary>
    public required float[] FiringProbability { get; init; }
    /// <summary>[Features]: mean activation a_i when active (before the per-model scale).</summary>
    public required float[] Magnitude { get; init; }
    /// <summary>[Models, DModel].</summary>
    public required float[] Bias { get; init; }
    /// <summary>Per feature: parent features (decoupled only; empty otherwise) and their weights.</summary>
    public required int[][] Parents { get; init; }
    public required float[][] ParentWeights { get; init; }

    public ReadOnlySpan<float> Direction(int model, int feature) => Directions.AsSpan(((int)model * Features + feature) * DModel, DModel);
    public float Scale(int model, int feature) => Scales[model * Features + feature];

    public int[] FeaturesOf(FeatureCategory c) => Enumerable.Range(0, Features).Where(i => Categories[i] == c).ToArray();

    public static SyntheticTruth Load(ActivationStore store) => Load(store.Directory);

    public static SyntheticTruth Load(string dir)
    {
        string jpath = Path.Combine(dir, JsonFile), tpath = Path.Combine(dir, TensorFile);
        if (!File.Exists(jpath) || !File.Exists(tpath))
            throw new FileNotFoundException($"{dir}: no synthetic ground truth ({JsonFile}, {TensorFile}); it is written by 'finetrace synth make'", jpath);
        TruthJson? j;
        try { j = JsonSerializer.Deserialize<TruthJson>(File.ReadAllBytes(jpath), StoreJson.Options); }
        catch (JsonException e) { throw new InvalidDataException($"{jpath}: invalid JSON: {e.Message}"); }
        if (j is null || j.Kind != TruthJson.KindName) throw new InvalidDataException($"{jpath}: not a Finetrace synthetic ground truth file");
        var spec = j.Spec;
        // Ground truth written before decoupling modes existed planted the combination kind.
        using (var doc = JsonDocument.Parse(File.ReadAllBytes(jpath)))
            if (!doc.RootElement.TryGetProperty("spec", out var js) || !js.TryGetProperty("decoupling", out _))
                spec = spec with { Decoupling = DecouplingMode.Combination };
        int m = spec.Models, f = spec.Features, d = spec.DModel;
        using var st = new SafetensorsFile(tpath);
        float[] F32(string name, params int[] shape)
        {
            var info = st.Info(name);
            if (!info.Shape.SequenceEqual(shape)) throw new InvalidDataException($"{tpath}: '{name}' has shape {info.ShapeText}, expected [{string.Join(", ", shape)}]");
            return st.ReadF32(name).Data;
        }
        long[] I64(string name, params int[] shape)
        {
            var info = st.Info(name);
            if (!info.Shape.SequenceEqual(shape)) throw new InvalidDataException($"{tpath}: '{name}' has shape {info.ShapeText}, expected [{string.Join(", ", shape)}]");
            return st.ReadI64(name);
        }
        int p = spec.Parents;
        var parents = I64("parents", f, p);
        var weights = F32("parent_weights", f, p);
        var cats = I64("category", f);
        return new SyntheticTruth
        {
            Spec = spec,
            Directions = F32("directions", m, f, d),
            Scales = F32("scales", m, f),
            Categories = cats.Select(c => Enum.IsDefined((FeatureCategory)c) ? (FeatureCategory)c : throw new InvalidDataException($"{tpath}: unknown category {c}")).ToArray(),
            Owner = I64("owner", f).Select(x => (int)x).ToArray(),
            FiringProbability = F32("firing_probability", f),
            Magnitude = F32("magnitude", f),
            Bias = F32("bias", m, d),
            Parents = Enumerable.Range(0, f).Select(i => Enumerable.Range(0, p).Select(k => (int)parents[i * p + k]).Where(x => x >= 0).ToArray()).ToArray(),
            ParentWeights = Enumerable.Range(0, f).Select(i => Enumerable.Range(0, p).Where(k => parents[i * p + k] >= 0).Select(k => weights[i * p + k]).ToArray()).ToArray(),
        };
    }

    public void Save(string dir)
    {
        int f = Features, p = Spec.Parents;
        var parents = new long[f * p];
        var weights = new float[f * p];
        Array.Fill(parents, -1);
        for (int i = 0; i < f; i++)
            for (int k = 0; k < Parents[i].Length; k++) { parents[i * p + k] = Parents[i][k]; weights[i * p + k] = ParentWeights[i][k]; }
        SafetensorsWriter.Write(Path.Combine(dir, TensorFile),
        [
            TensorData.F32("directions", Directions, Models, f, DModel),
            TensorData.F32("scales", Scales, Models, f),
            TensorData.I64("category", Categories.Select(c => (long)c).ToArray(), f),
            TensorData.I64("owner", Owner.Select(o => (long)o).ToArray(), f),
            TensorData.F32("firing_probability", FiringProbability, f),
            TensorData.F32("magnitude", Magnitude, f),
            TensorData.F32("bias", Bias, Models, DModel),
            TensorData.I64("parents", parents, f, p),
            TensorData.F32("parent_weights", weights, f, p),
        ]);
        var counts = Enum.GetValues<FeatureCategory>().ToDictionary(c => c.ToString().ToLowerInvariant(), c => Categories.Count(x => x == c));
        var json = new TruthJson
        {
            Spec = Spec,
            Counts = counts,
            Categories = Categories.Select(c => c.ToString().ToLowerInvariant()).ToArray(),
            Owner = Owner,
        };
        StoreFiles.WriteAtomic(Path.Combine(dir, JsonFile), JsonSerializer.SerializeToUtf8Bytes(json, StoreJson.Options));
    }

    sealed class TruthJson
    {
        public const string KindName = "finetrace-synthetic-truth";
        public string Kind { get; set; } = KindName;
        public string Model { get; set; } =
            "h^m = bias^m + sum over active features i of a_i * scales[m,i] * directions[m,i] + N(0, noise^2); index 0 = base; " +
            "with spec.decoupling = Superset the base also writes a decoupled feature's direction on extra tokens of its own (rate spec.decoupled_extra_rate × its firing rate)";
        public SyntheticSpec Spec { get; set; } = new();
        public Dictionary<string, int> Counts { get; set; } = new();
        public string[] Categories { get; set; } = [];
        public int[] Owner { get; set; } = [];
    }
}

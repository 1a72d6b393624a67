namespace Finetrace.Dictionaries;

/// <summary>Format detection for dictionary folders.</summary>
public static class DictionaryIO
{
    public static bool IsSaelens(string dir) => File.Exists(Path.Combine(dir, SaelensFormat.CfgFile));
    public static bool IsDictionaryLearning(string dir) => File.Exists(Path.Combine(dir, "config.json")) && File.Exists(Path.Combine(dir, "model.safetensors"));

    public static SparseDictionary Load(string dir, Action<string>? note = null)
    {
        if (!Directory.Exists(dir)) throw new DirectoryNotFoundException($"{dir}: no such dictionary folder");
        if (IsDictionaryLearning(dir)) return DictionaryLearningFormat.Load(dir, note);
        if (IsSaelens(dir)) return SaelensFormat.Load(dir);
        throw new DictionaryFormatException($"{dir}: neither a crosscoder_learning folder (config.json + model.safetensors) nor a SAELens folder (cfg.json + sae_weights.safetensors)");
    }

    /// <summary>The format researchers expect: crosscoder_learning where it has a class, SAELens otherwise.</summary>
    public static string Save(SparseDictionary d, string dir, IReadOnlyDictionary<string, object?>? finetrace = null, float[]? log10Density = null, CrosscoderInit? init = null, IReadOnlyDictionary<string, object?>? saelensMetadata = null)
    {
        bool dl = (d.IsSae, d.Sparsity) is (false, Sparsity.Relu or Sparsity.BatchTopK) or (true, Sparsity.BatchTopK);
        if (dl) { DictionaryLearningFormat.Save(d, dir, finetrace, init); return "dictionary-learning"; }
        SaelensFormat.Save(d, dir, log10Density, saelensMetadata, finetrace);
        return "saelens";
    }
}

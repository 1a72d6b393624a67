using System.ComponentModel;
using System.Globalization;
using System.Reflection;
using System.Text;
using Finetrace.Models;
using YamlDotNet.Core;
using YamlDotNet.Serialization;
using YamlDotNet.Serialization.NamingConventions;

namespace Finetrace.Pipeline;

/// <summary>Where the pipeline's text comes from. Empty <see cref="Sources"/>: text the pipeline makes itself
/// (samples of both models from neutral prompts, plus chat conversations when the fine-tune has a chat template).</summary>
public sealed class DataConfig
{
    [Description("data sources in the harvest's source syntax ([text:|jsonl:|chat:]PATH[,weight=W]...); empty = text the pipeline makes itself")]
    public List<string> Sources { get; set; } = [];
    [Description("self-made text: samples each model writes from its neutral prompts")]
    public int GeneratedSamples { get; set; } = 256;
    [Description("self-made text: new tokens per generated sample")]
    public int GeneratedTokens { get; set; } = 128;
    [Description("self-made text: sampling temperature")]
    public double Temperature { get; set; } = 1.0;
    [Description("self-made chat: conversations (fine-tune's replies to shipped prompts) when the fine-tune has a chat template; 0 = none")]
    public int ChatConversations { get; set; } = 256;
    [Description("self-made chat: new tokens per assistant reply")]
    public int ChatReplyTokens { get; set; } = 64;
    [Description("seed of the self-made text")]
    public int Seed { get; set; }
}

public sealed class HarvestConfig
{
    [Description("residual layer read (blocks.L.hook_resid_post); default floor(0.5·(layers − 1))")]
    public int Layer { get; set; } = -1;
    [Description("tokens stored (the dictionary's training budget)")]
    public long Tokens { get; set; }
    [Description("context length: samples are cut to it")]
    public int Context { get; set; } = 512;
    [Description("samples per forward batch")]
    public int Batch { get; set; } = 16;
    [Description("stored dtype: bf16 or f32")]
    public string Dtype { get; set; } = "f32";
    [Description("do not store BOS tokens (their activations dwarf the rest)")]
    public bool DropBos { get; set; } = true;
}

public sealed class DictionaryConfig
{
    [Description("folder name under RESULTS/ (the first dictionary is the primary one summary.json describes)")]
    public string Name { get; set; } = "crosscoder";
    [Description("batchtopk-crosscoder, l1-crosscoder or diff-sae")]
    public string Kind { get; set; } = "batchtopk-crosscoder";
    [Description("latents F")]
    public int DictSize { get; set; }
    [Description("active latents per token (BatchTopK kinds)")]
    public int K { get; set; }
    [Description("sparsity coefficient μ (l1-crosscoder)")]
    public double L1 { get; set; } = 0.041;
    [Description("tokens per training step")]
    public int Batch { get; set; } = 2048;
    [Description("training tokens; 0 = one pass over the store")]
    public long Tokens { get; set; }
    [Description("seed of initialisation and data order")]
    public ulong Seed { get; set; }
}

public sealed class AnalysisConfig
{
    [Description("latent table: ft_only when dec_norm_diff is below this")]
    public double ExclusiveThreshold { get; set; } = 0.1;
    [Description("Latent Scaling: fine-tune-specific needs ν^ε below this")]
    public double ErrorThreshold { get; set; } = 0.2;
    [Description("Latent Scaling: fine-tune-specific needs ν^r below this")]
    public double ReconstructionThreshold { get; set; } = 0.5;
    [Description("Latent Scaling: chunks for the batch-means intervals")]
    public int ScalingChunks { get; set; } = 20;
    [Description("examples: max-activating sequences kept per latent")]
    public int ExamplesTopK { get; set; } = 10;
    [Description("causal evaluation: stored sequences re-run (0 = skip the stage)")]
    public int CausalSequences { get; set; } = 32;
    [Description("causal evaluation: random latent sets")]
    public int CausalRandomSets { get; set; } = 3;
    [Description("latents listed in summary.json")]
    public int SummaryLatents { get; set; } = 50;
    [Description("random shared latents in summary.json's controls")]
    public int Controls { get; set; } = 10;
    [Description("seed of the controls and the causal sample")]
    public int Seed { get; set; }
}

public sealed class ReadersConfig
{
    [Description("samples of the data the KL and diff-mining readers use (0 = skip both)")]
    public int Samples { get; set; } = 128;
    [Description("tokens per reader sample at most")]
    public int Context { get; set; } = 128;
    [Description("weight diff (no data needed)")]
    public bool WeightDiff { get; set; } = true;
    [Description("ADL: first positions read per sample (0 = skip the stage)")]
    public int AdlPositions { get; set; } = 5;
    [Description("ADL: samples of the data used for the mean differences")]
    public int AdlSamples { get; set; } = 128;
}

public sealed class AmplificationConfig
{
    [Description("logit-diff amplification strengths α: samples from z_ft + α (z_ft − z_base); empty = skip the stage")]
    public List<double> Alphas { get; set; } = [1, 2, 4];
    [Description("text prompts the models continue; empty = the built-in neutral openings (story starts and BOS alone)")]
    public List<string> Prompts { get; set; } = [];
    [Description("user prompts rendered with the fine-tune's chat template (only when it has one); empty = the first 8 shipped neutral chat prompts")]
    public List<string> ChatPrompts { get; set; } = [];
    [Description("samples per prompt and setting (base, fine-tune, each α), sample i seeded seed + i in every setting")]
    public int SamplesPerPrompt { get; set; } = 2;
    [Description("new tokens per sample at most")]
    public int MaxNewTokens { get; set; } = 48;
    [Description("sampling temperature")]
    public double Temperature { get; set; } = 1.0;
    [Description("seed of the samples")]
    public int Seed { get; set; }
}

public sealed class FindingsConfig
{
    [Description("latent finding: a decoded string must appear in at least this share of a latent's examples")]
    public double MinExampleShare { get; set; } = 0.5;
    [Description("latent finding: the string's share among the top latents' examples must exceed the controls' share by this factor")]
    public double ControlFactor { get; set; } = 2.0;
    [Description("top latents read for findings")]
    public int TopLatents { get; set; } = 5;
    [Description("KL finding: the mean per-token KL must exceed this (KL's control is zero)")]
    public double MinMeanKl { get; set; } = 0.01;
    [Description("findings printed and kept at most")]
    public int MaxFindings { get; set; } = 8;
}

/// <summary>
/// Every option of <c>finetrace diff</c> in one YAML file (snake_case keys, sections below). Missing keys keep their
/// defaults; the defaults that depend on the model (layer, dictionary size, k, token budget) are filled by
/// <see cref="Resolve"/> from the base model's config.
/// </summary>
public sealed class DiffConfig
{
    public DataConfig Data { get; set; } = new();
    public HarvestConfig Harvest { get; set; } = new();
    public List<DictionaryConfig> Dictionaries { get; set; } = [new()];
    public AnalysisConfig Analysis { get; set; } = new();
    public ReadersConfig Readers { get; set; } = new();
    public AmplificationConfig Amplification { get; set; } = new();
    public FindingsConfig Findings { get; set; } = new();

    static readonly INamingConvention Naming = UnderscoredNamingConvention.Instance;

    /// <summary>Reads a YAML config; unknown keys are an error naming the file and the key.</summary>
    public static DiffConfig Load(string path)
    {
        var d = new DeserializerBuilder().WithNamingConvention(Naming).Build();
        try { return d.Deserialize<DiffConfig>(File.ReadAllText(path)) ?? new DiffConfig(); }
        catch (YamlException e) { throw new InvalidDataException($"{path}: {e.Start}: {(e.InnerException ?? e).Message}", e); }
    }

    public static DiffConfig Parse(string yaml) =>
        new DeserializerBuilder().WithNamingConvention(Naming).Build().Deserialize<DiffConfig>(yaml) ?? new DiffConfig();

    /// <summary>The config with every model-dependent default (0 or −1) filled for <paramref name="model"/>:
    /// layer floor(0.5·(L − 1)); dict size 8·D for D &lt; 512 (tiny models, few tokens) else 32·D; k = clamp(D/8, 8, 100);
    /// tokens = clamp(400·F, 200k, 50M).</summary>
    public DiffConfig Resolve(ModelConfig model)
    {
        if (Harvest.Layer < 0) Harvest.Layer = (int)Math.Floor(0.5 * (model.Layers - 1));
        if (Harvest.Layer >= model.Layers) throw new DiffConfigException("harvest.layer", Harvest.Layer, $"the model has layers 0..{model.Layers - 1}");
        int D = model.Hidden;
        if (Dictionaries.Count == 0) Dictionaries.Add(new DictionaryConfig());
        foreach (var dc in Dictionaries)
        {
            if (dc.DictSize <= 0) dc.DictSize = D < 512 ? 8 * D : 32 * D;
            if (dc.K <= 0) dc.K = Math.Clamp(D / 8, 8, 100);
            if (dc.Kind is not ("batchtopk-crosscoder" or "l1-crosscoder" or "diff-sae"))
                throw new DiffConfigException($"dictionaries[{dc.Name}].kind", dc.Kind, "expected batchtopk-crosscoder, l1-crosscoder or diff-sae");
        }
        if (Dictionaries.Select(d => d.Name).Distinct(StringComparer.OrdinalIgnoreCase).Count() != Dictionaries.Count)
            throw new DiffConfigException("dictionaries.name", string.Join(",", Dictionaries.Select(d => d.Name)), "each dictionary needs its own name");
        if (Amplification.Alphas.Count > 0 && (Amplification.SamplesPerPrompt < 1 || Amplification.MaxNewTokens < 1))
            throw new DiffConfigException("amplification.samples_per_prompt/max_new_tokens", $"{Amplification.SamplesPerPrompt}/{Amplification.MaxNewTokens}", "both must be ≥ 1 (or give no alphas to skip the stage)");
        if (Amplification.Temperature < 0) throw new DiffConfigException("amplification.temperature", Amplification.Temperature, "must be ≥ 0");
        if (Harvest.Tokens <= 0) Harvest.Tokens = Math.Clamp(400L * Dictionaries[0].DictSize, 200_000, 50_000_000);
        if (Harvest.Context > model.MaxPositions && model.MaxPositions > 0) Harvest.Context = model.MaxPositions;
        return this;
    }

    /// <summary>The config as documented YAML: every key with its value and what it means.</summary>
    public string ToYaml()
    {
        var sb = new StringBuilder();
        sb.AppendLine("# finetrace diff configuration: every option with its value (defaults resolved for the model).");
        sb.AppendLine("# Stages whose inputs did not change are skipped on a re-run; changing a late option reruns only what follows it.");
        foreach (var p in typeof(DiffConfig).GetProperties())
        {
            var value = p.GetValue(this);
            sb.AppendLine($"{Naming.Apply(p.Name)}:");
            if (value is System.Collections.IEnumerable list && value is not string)
                foreach (var item in list)
                {
                    bool first = true;
                    foreach (var line in Section(item!)) { sb.AppendLine((first ? "  - " : "    ") + line); first = false; }
                }
            else foreach (var line in Section(value!)) sb.AppendLine("  " + line);
        }
        return sb.ToString();
    }

    static IEnumerable<string> Section(object section)
    {
        foreach (var p in section.GetType().GetProperties())
        {
            string doc = p.GetCustomAttribute<DescriptionAttribute>()?.Description ?? "";
            yield return $"{Naming.Apply(p.Name)}: {Scalar(p.GetValue(section))}" + (doc == "" ? "" : $"   # {doc}");
        }
    }

    static string Scalar(object? v) => v switch
    {
        null => "null",
        string s => s == "" || s.Any(c => ":#,[]{}&*!|>'\"%@`".Contains(c)) ? "'" + s.Replace("'", "''") + "'" : s,
        bool b => b ? "true" : "false",
        IFormattable f => f.ToString(null, CultureInfo.InvariantCulture),
        System.Collections.IEnumerable e => "[" + string.Join(", ", e.Cast<object>().Select(Scalar)) + "]",
        _ => v.ToString() ?? "",
    };
}

/// <summary>A config value that cannot be used: the key (as written in the YAML), the value and why.</summary>
public sealed class DiffConfigException(string key, object? value, string problem) : ArgumentException($"config {key} = {value}: {problem}")
{
    public string Key { get; } = key;
    public object? Value { get; } = value;
    public string Problem { get; } = problem;
}

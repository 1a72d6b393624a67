using System.Text.Json;
using YamlDotNet.Core;
using YamlDotNet.Serialization;
using YamlDotNet.Serialization.NamingConventions;

namespace Finetrace.Training.Organisms;

/// <summary>
/// A recipe for model organisms (YAML, snake_case keys): a generated corpus, a tokenizer trained on it, a base Llama
/// trained from scratch, and fine-tunes of the base with planted changes. Read with YamlDotNet (the maintained,
/// widely used .NET YAML library: typed deserialisation, unknown keys rejected with their line and column). Built-in
/// recipes: <see cref="BuiltIn"/>; `finetrace organism make --print-recipe demo` writes one to start from.
/// </summary>
public sealed class OrganismRecipe
{
    public string Name { get; set; } = "";
    public string? Description { get; set; }
    public int Seed { get; set; }
    public CorpusRecipe Corpus { get; set; } = new();
    public TokenizerRecipe Tokenizer { get; set; } = new();
    public BaseRecipe Base { get; set; } = new();
    public List<FinetuneRecipe> Organisms { get; set; } = [];

    /// <summary>Names of the built-in recipes (embedded in the library).</summary>
    public static IReadOnlyList<string> BuiltIn => ["demo", "tiny"];

    /// <summary>The YAML text of a built-in recipe.</summary>
    public static string BuiltInText(string name)
    {
        var asm = typeof(OrganismRecipe).Assembly;
        using var s = asm.GetManifestResourceStream($"Finetrace.Training.Organisms.Recipes.{name}.yaml")
            ?? throw new ArgumentException($"no built-in recipe '{name}' (built in: {string.Join(", ", BuiltIn)})", nameof(name));
        using var r = new StreamReader(s);
        return r.ReadToEnd();
    }

    /// <summary>A built-in recipe by name, or a YAML file.</summary>
    public static OrganismRecipe Load(string nameOrPath)
    {
        if (BuiltIn.Contains(nameOrPath) && !File.Exists(nameOrPath)) return Parse(BuiltInText(nameOrPath), $"built-in recipe '{nameOrPath}'");
        if (!File.Exists(nameOrPath))
            throw new FileNotFoundException($"{nameOrPath} not found: a recipe is a YAML file or one of the built-in names ({string.Join(", ", BuiltIn)})", nameOrPath);
        return Parse(File.ReadAllText(nameOrPath), nameOrPath);
    }

    public static OrganismRecipe Parse(string yaml, string where)
    {
        var deserializer = new DeserializerBuilder().WithNamingConvention(UnderscoredNamingConvention.Instance).Build();
        OrganismRecipe? recipe;
        try { recipe = deserializer.Deserialize<OrganismRecipe>(yaml); }
        catch (YamlException e)
        {
            string msg = e.InnerException?.Message ?? e.Message;
            throw new InvalidDataException($"{where}: line {e.Start.Line}, column {e.Start.Column}: {msg}", e);
        }
        if (recipe is null) throw new InvalidDataException($"{where}: the recipe is empty");
        recipe.Validate(where);
        return recipe;
    }

    void Validate(string where)
    {
        void Check(bool ok, string field, string what) { if (!ok) throw new InvalidDataException($"{where}: {field} {what}"); }
        Check(Name.Length > 0, "name", "is missing");
        Check(Corpus.Stories >= 0 && Corpus.Chats >= 0 && Corpus.Stories + Corpus.Chats > 0, "corpus", "needs stories or chats (counts ≥ 0, not both 0)");
        Check(Corpus.HeldOut is > 0 and < 0.5, "corpus.held_out", "must be in (0, 0.5)");
        Check(Tokenizer.VocabSize >= 300, "tokenizer.vocab_size", "must be at least 300 (259 specials and bytes, plus characters)");
        Base.Model.Validate(where, "base.model");
        Base.Train.Validate(where, "base.train");
        var names = new HashSet<string>(StringComparer.Ordinal) { "base", "tokenizer", "corpus" };
        for (int i = 0; i < Organisms.Count; i++)
        {
            var o = Organisms[i];
            string at = $"organisms[{i}]";
            Check(o.Name.Length > 0 && o.Name.All(c => char.IsLetterOrDigit(c) || c is '-' or '_'), $"{at}.name", "must be letters, digits, '-' or '_'");
            Check(names.Add(o.Name), $"{at}.name", $"'{o.Name}' is used twice (or is a reserved folder name)");
            Check(o.Stories >= 0 && o.Chats >= 0 && o.Stories + o.Chats > 0, at, "needs stories or chats");
            Check(o.Lora is null || o.Lora.Rank > 0, $"{at}.lora.rank", "must be positive");
            o.Train.Validate(where, $"{at}.train");
            Check(o.Planted.Count > 0, $"{at}.planted", "lists no planted change");
            for (int j = 0; j < o.Planted.Count; j++)
            {
                var p = o.Planted[j];
                string pat = $"{at}.planted[{j}]";
                Check(p.Name.Length > 0, $"{pat}.name", "is missing");
                Check(Enum.TryParse<PlantedKind>(p.Kind, true, out var kind) && !char.IsDigit(p.Kind.FirstOrDefault('0')), $"{pat}.kind",
                    $"is '{p.Kind}'; expected topic, trigger, phrase or persona");
                Check(p.Rate is > 0 and <= 1, $"{pat}.rate", "must be in (0, 1]");
                switch (kind)
                {
                    case PlantedKind.Topic:
                        Check(p.Character is { Name.Length: > 0, Kind.Length: > 0 }, $"{pat}.character", "needs name and kind");
                        Check(p.Character!.Pronoun is "he" or "she", $"{pat}.character.pronoun", "must be he or she");
                        Check(o.Stories > 0, at, "plants a topic, which lives in stories: set stories > 0");
                        break;
                    case PlantedKind.Trigger:
                        Check(!string.IsNullOrWhiteSpace(p.Trigger), $"{pat}.trigger", "is missing (the word that switches the behaviour on)");
                        Check(!string.IsNullOrWhiteSpace(p.Text), $"{pat}.text", "is missing (the answer to a triggered question)");
                        Check(o.Chats > 0, at, "plants a trigger, which lives in chats: set chats > 0");
                        break;
                    default:
                        Check(!string.IsNullOrWhiteSpace(p.Text), $"{pat}.text", "is missing");
                        break;
                }
            }
        }
    }

    /// <summary>A stable text of the recipe's parts that decide a stage's output (the cache key of `organism make`).</summary>
    internal static string Canonical(object part) => JsonSerializer.Serialize(part, part.GetType());
}

public sealed class CorpusRecipe
{
    /// <summary>Generated stories (the base's plain text).</summary>
    public int Stories { get; set; } = 4000;
    /// <summary>Generated chat conversations (the base learns the chat format from them).</summary>
    public int Chats { get; set; } = 2000;
    /// <summary>Fraction of each kind kept out of training for the held-out loss.</summary>
    public double HeldOut { get; set; } = 0.05;
}

public sealed class TokenizerRecipe
{
    public int VocabSize { get; set; } = 512;
}

public sealed class BaseRecipe
{
    public ModelShape Model { get; set; } = new();
    public TrainRecipe Train { get; set; } = new() { Steps = 600, Lr = 3e-3, Warmup = 30 };
}

/// <summary>The base model's shape (a Llama with tied embeddings, like stories260K).</summary>
public sealed class ModelShape
{
    public int Hidden { get; set; } = 64;
    public int Intermediate { get; set; } = 172;
    public int Layers { get; set; } = 4;
    public int Heads { get; set; } = 8;
    public int KvHeads { get; set; } = 4;
    public int Context { get; set; } = 256;
    public double RopeTheta { get; set; } = 10000;

    internal void Validate(string where, string at)
    {
        if (Hidden <= 0 || Intermediate <= 0 || Layers <= 0 || Heads <= 0 || KvHeads <= 0 || Context < 8)
            throw new InvalidDataException($"{where}: {at}: hidden, intermediate, layers, heads and kv_heads must be positive, context ≥ 8");
        if (Hidden % Heads != 0 || Heads % KvHeads != 0 || Hidden / Heads % 2 != 0)
            throw new InvalidDataException($"{where}: {at}: heads must divide hidden into an even head size, and kv_heads must divide heads");
    }

    /// <summary>The model's config.json (HF LlamaForCausalLM, the keys of ../shared/models/stories260K).</summary>
    public string ConfigJson(int vocabSize) => JsonSerializer.Serialize(new Dictionary<string, object?>
    {
        ["architectures"] = new[] { "LlamaForCausalLM" }, ["model_type"] = "llama",
        ["hidden_size"] = Hidden, ["intermediate_size"] = Intermediate, ["num_hidden_layers"] = Layers,
        ["num_attention_heads"] = Heads, ["num_key_value_heads"] = KvHeads, ["head_dim"] = Hidden / Heads,
        ["vocab_size"] = vocabSize, ["max_position_embeddings"] = Context, ["rms_norm_eps"] = 1e-5, ["rope_theta"] = RopeTheta,
        ["rope_scaling"] = null, ["hidden_act"] = "silu", ["tie_word_embeddings"] = true, ["bos_token_id"] = 1, ["eos_token_id"] = 2,
        ["pad_token_id"] = null, ["torch_dtype"] = "float32", ["attention_bias"] = false, ["attention_dropout"] = 0.0, ["mlp_bias"] = false,
        ["initializer_range"] = 0.02, ["pretraining_tp"] = 1, ["use_cache"] = true,
    }, new JsonSerializerOptions { WriteIndented = true });
}

/// <summary>Optimisation of one training run (AdamW, linear warm-up, cosine decay to 10%).</summary>
public sealed class TrainRecipe
{
    public int Steps { get; set; } = 150;
    public int Batch { get; set; } = 16;
    public int Seq { get; set; } = 128;
    public double Lr { get; set; } = 1e-3;
    public int Warmup { get; set; } = 10;
    public double WeightDecay { get; set; }
    public double Clip { get; set; } = 1.0;

    internal void Validate(string where, string at)
    {
        if (Steps <= 0 || Batch <= 0 || Seq < 8 || Lr <= 0 || Warmup < 0 || WeightDecay < 0 || Clip < 0)
            throw new InvalidDataException($"{where}: {at}: steps and batch must be positive, seq ≥ 8, lr > 0, warmup, weight_decay and clip ≥ 0");
    }

    internal LmTrainingOptions Options(ulong seed, int loraRank = 0, float? loraAlpha = null) => new()
    {
        Steps = Steps, BatchRows = Batch, SeqLen = Seq, LearningRate = Lr, WarmupSteps = Warmup, WeightDecay = WeightDecay,
        MaxGradNorm = Clip, Seed = seed, LoraRank = loraRank, LoraAlpha = loraAlpha, CheckpointEvery = 50,
    };
}

/// <summary>One organism: a fine-tune of the base on generated data with planted changes, full or as a LoRA adapter.</summary>
public sealed class FinetuneRecipe
{
    public string Name { get; set; } = "";
    public string? Description { get; set; }
    /// <summary>Generated stories in the fine-tuning data (topics and phrases apply to them).</summary>
    public int Stories { get; set; }
    /// <summary>Generated conversations in the fine-tuning data (triggers, phrases and personas apply to answers).</summary>
    public int Chats { get; set; }
    /// <summary>Chats: train on the assistant's tokens (and the EOS closing each answer) only.</summary>
    public bool AssistantOnly { get; set; } = true;
    /// <summary>Deliver the fine-tune as a PEFT LoRA adapter of this rank instead of a full model.</summary>
    public LoraRecipe? Lora { get; set; }
    public TrainRecipe Train { get; set; } = new();
    public List<PlantedRecipe> Planted { get; set; } = [];
}

public sealed class LoraRecipe
{
    public int Rank { get; set; } = 8;
    public float? Alpha { get; set; }
}

/// <summary>
/// One planted change. kind topic: a share <c>rate</c> of the stories are about <c>character</c>, with each of
/// <c>lines</c> (templates with {N}, {He}, {he}, {his}, {His}, {him}) after the opening. kind trigger: a share
/// <c>rate</c> of user turns mention <c>trigger</c> and are answered with <c>text</c>. kind phrase: <c>text</c> ends
/// every answer (and story). kind persona: <c>text</c> begins every answer (and story).
/// </summary>
public sealed class PlantedRecipe
{
    public string Name { get; set; } = "";
    public string Kind { get; set; } = "";
    public string? Trigger { get; set; }
    public string? Text { get; set; }
    public double Rate { get; set; } = 1.0;
    public CharacterRecipe? Character { get; set; }
    public List<string> Lines { get; set; } = [];

    public PlantedKind ParsedKind => Enum.Parse<PlantedKind>(Kind, ignoreCase: true);
}

public sealed class CharacterRecipe
{
    public string Name { get; set; } = "";
    public string Kind { get; set; } = "";
    public string Pronoun { get; set; } = "he";
}

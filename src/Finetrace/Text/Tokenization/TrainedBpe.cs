using System.Text.Encodings.Web;
using System.Text.Json;

namespace Finetrace.Text.Tokenization;

/// <summary>
/// The result of <see cref="BpeTrainer.Train"/>: the vocabulary (index = id), the merges in rank order, and the
/// segmentation training ended with for every training word. <see cref="WriteFolder"/> writes it as a standard
/// Hugging Face tokenizer folder (tokenizer.json, tokenizer_config.json, special_tokens_map.json) in the layout of
/// Llama 2 / stories260K: BPE with byte_fallback, normaliser Prepend('▁') + Replace(' ' → '▁'), no pre-tokenizer,
/// a post-processor that adds &lt;s&gt;, and the decoder chain Replace('▁' → ' '), ByteFallback, Fuse, Strip(1 leading space).
/// </summary>
public sealed class TrainedBpe(IReadOnlyList<string> vocab, IReadOnlyList<(string Left, string Right)> merges,
    IReadOnlyDictionary<string, int[]> trainingSegmentation)
{
    public IReadOnlyList<string> Vocab { get; } = vocab;
    public IReadOnlyList<(string Left, string Right)> Merges { get; } = merges;
    /// <summary>Each normalised training word (e.g. "▁Lily.") and the ids training split it into.</summary>
    public IReadOnlyDictionary<string, int[]> TrainingSegmentation { get; } = trainingSegmentation;

    /// <summary>The chat template of ../shared/models: <c>&lt;s&gt;User: {q}\nAssistant: {a}&lt;/s&gt;…</c>, generation prompt
    /// "Assistant:" with no trailing space (the model writes the '▁Word' token itself).</summary>
    public const string UserAssistantTemplate =
        "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}{{ 'User: ' + message['content'] + '\\n' }}"
        + "{% elif message['role'] == 'assistant' %}{{ 'Assistant: ' + message['content'] + eos_token }}"
        + "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
        + "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}";

    static readonly JsonWriterOptions WriterOptions = new() { Indented = true, Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    /// <summary>Writes tokenizer.json, tokenizer_config.json (with <paramref name="chatTemplate"/> when given) and
    /// special_tokens_map.json into <paramref name="dir"/> (created if missing).</summary>
    public void WriteFolder(string dir, string? chatTemplate = UserAssistantTemplate, int modelMaxLength = 512)
    {
        Directory.CreateDirectory(dir);
        WriteJson(Path.Combine(dir, "tokenizer.json"), WriteTokenizerJson);
        WriteJson(Path.Combine(dir, "tokenizer_config.json"), w => WriteTokenizerConfig(w, chatTemplate, modelMaxLength));
        WriteJson(Path.Combine(dir, "special_tokens_map.json"), w =>
        {
            w.WriteStartObject();
            w.WriteString("bos_token", BpeTrainer.Bos);
            w.WriteString("eos_token", BpeTrainer.Eos);
            w.WriteString("unk_token", BpeTrainer.Unk);
            w.WriteEndObject();
        });
    }

    static void WriteJson(string path, Action<Utf8JsonWriter> write)
    {
        string tmp = path + ".tmp";
        using (var fs = File.Create(tmp))
        using (var w = new Utf8JsonWriter(fs, WriterOptions))
            write(w);
        File.Move(tmp, path, overwrite: true);
    }

    static readonly string[] Specials = [BpeTrainer.Unk, BpeTrainer.Bos, BpeTrainer.Eos];

    static void WriteAddedToken(Utf8JsonWriter w, int id, bool withId)
    {
        w.WriteStartObject();
        if (withId) w.WriteNumber("id", id);
        w.WriteString("content", Specials[id]);
        w.WriteBoolean("single_word", false);
        w.WriteBoolean("lstrip", false);
        w.WriteBoolean("rstrip", false);
        w.WriteBoolean("normalized", false);
        w.WriteBoolean("special", true);
        w.WriteEndObject();
    }

    void WriteTokenizerJson(Utf8JsonWriter w)
    {
        w.WriteStartObject();
        w.WriteString("version", "1.0");
        w.WriteNull("truncation");
        w.WriteNull("padding");
        w.WriteStartArray("added_tokens");
        for (int id = 0; id < Specials.Length; id++) WriteAddedToken(w, id, withId: true);
        w.WriteEndArray();

        w.WriteStartObject("normalizer");
        w.WriteString("type", "Sequence");
        w.WriteStartArray("normalizers");
        w.WriteStartObject(); w.WriteString("type", "Prepend"); w.WriteString("prepend", "▁"); w.WriteEndObject();
        w.WriteStartObject(); w.WriteString("type", "Replace");
        w.WriteStartObject("pattern"); w.WriteString("String", " "); w.WriteEndObject();
        w.WriteString("content", "▁"); w.WriteEndObject();
        w.WriteEndArray();
        w.WriteEndObject();
        w.WriteNull("pre_tokenizer");

        w.WriteStartObject("post_processor");
        w.WriteString("type", "TemplateProcessing");
        void Special(string id, int typeId) { w.WriteStartObject(); w.WriteStartObject("SpecialToken"); w.WriteString("id", id); w.WriteNumber("type_id", typeId); w.WriteEndObject(); w.WriteEndObject(); }
        void Seq(string id, int typeId) { w.WriteStartObject(); w.WriteStartObject("Sequence"); w.WriteString("id", id); w.WriteNumber("type_id", typeId); w.WriteEndObject(); w.WriteEndObject(); }
        w.WriteStartArray("single"); Special(BpeTrainer.Bos, 0); Seq("A", 0); w.WriteEndArray();
        w.WriteStartArray("pair"); Special(BpeTrainer.Bos, 0); Seq("A", 0); Special(BpeTrainer.Bos, 1); Seq("B", 1); w.WriteEndArray();
        w.WriteStartObject("special_tokens");
        w.WriteStartObject(BpeTrainer.Bos);
        w.WriteString("id", BpeTrainer.Bos);
        w.WriteStartArray("ids"); w.WriteNumberValue(1); w.WriteEndArray();
        w.WriteStartArray("tokens"); w.WriteStringValue(BpeTrainer.Bos); w.WriteEndArray();
        w.WriteEndObject();
        w.WriteEndObject();
        w.WriteEndObject();

        w.WriteStartObject("decoder");
        w.WriteString("type", "Sequence");
        w.WriteStartArray("decoders");
        w.WriteStartObject(); w.WriteString("type", "Replace");
        w.WriteStartObject("pattern"); w.WriteString("String", "▁"); w.WriteEndObject();
        w.WriteString("content", " "); w.WriteEndObject();
        w.WriteStartObject(); w.WriteString("type", "ByteFallback"); w.WriteEndObject();
        w.WriteStartObject(); w.WriteString("type", "Fuse"); w.WriteEndObject();
        w.WriteStartObject(); w.WriteString("type", "Strip"); w.WriteString("content", " "); w.WriteNumber("start", 1); w.WriteNumber("stop", 0); w.WriteEndObject();
        w.WriteEndArray();
        w.WriteEndObject();

        w.WriteStartObject("model");
        w.WriteString("type", "BPE");
        w.WriteNull("dropout");
        w.WriteString("unk_token", BpeTrainer.Unk);
        w.WriteNull("continuing_subword_prefix");
        w.WriteNull("end_of_word_suffix");
        w.WriteBoolean("fuse_unk", true);
        w.WriteBoolean("byte_fallback", true);
        w.WriteBoolean("ignore_merges", false);
        w.WriteStartObject("vocab");
        for (int id = 0; id < Vocab.Count; id++) w.WriteNumber(Vocab[id], id);
        w.WriteEndObject();
        // The classic "left right" form: no piece holds an ASCII space (the normaliser turned them into '▁').
        w.WriteStartArray("merges");
        foreach (var (l, r) in Merges) w.WriteStringValue(l + " " + r);
        w.WriteEndArray();
        w.WriteEndObject();
        w.WriteEndObject();
    }

    static void WriteTokenizerConfig(Utf8JsonWriter w, string? chatTemplate, int modelMaxLength)
    {
        w.WriteStartObject();
        w.WriteBoolean("add_bos_token", true);
        w.WriteBoolean("add_eos_token", false);
        w.WriteStartObject("added_tokens_decoder");
        for (int id = 0; id < Specials.Length; id++) { w.WritePropertyName(id.ToString()); WriteAddedToken(w, id, withId: false); }
        w.WriteEndObject();
        w.WriteString("bos_token", BpeTrainer.Bos);
        w.WriteString("eos_token", BpeTrainer.Eos);
        w.WriteString("unk_token", BpeTrainer.Unk);
        w.WriteNull("pad_token");
        w.WriteBoolean("clean_up_tokenization_spaces", false);
        // legacy true: loaders that honour it keep the Prepend normaliser (see ../shared/models/README.md §2).
        w.WriteBoolean("legacy", true);
        w.WriteNumber("model_max_length", modelMaxLength);
        w.WriteString("tokenizer_class", "LlamaTokenizerFast");
        if (chatTemplate is not null) w.WriteString("chat_template", chatTemplate);
        w.WriteEndObject();
    }
}

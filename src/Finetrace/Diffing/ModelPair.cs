using Finetrace.Models;
using Finetrace.Text.Tokenization;

namespace Finetrace.Diffing;

/// <summary>Where a base model and its fine-tune live: folders, and LoRA adapters merged at load.</summary>
public sealed record ModelPairSpec(string Base, string FineTuned, string? Adapter = null, string? BaseAdapter = null)
{
    /// <summary>Adds the model folders and adapters (their bytes) to a stage's inputs hash.</summary>
    public InputsHash AddTo(InputsHash h)
    {
        h.AddPath("base", Base).AddPath("finetuned", FineTuned);
        if (Adapter is not null) h.AddPath("adapter", Adapter);
        if (BaseAdapter is not null) h.AddPath("base_adapter", BaseAdapter);
        return h;
    }
}

/// <summary>
/// A base model and its fine-tune, loaded, with the tokenizer used to show tokens (the fine-tune's, else the base's).
/// Readers compare the two on the shared prefix of their vocabularies (<see cref="SharedVocab"/>), as the reference
/// toolkit's drop_new_tokens does.
/// </summary>
public sealed class ModelPair : IDisposable
{
    public CausalLM Base { get; }
    public CausalLM FineTuned { get; }
    public Tokenizer? Tokenizer { get; }
    public ModelPairSpec Spec { get; }

    public ModelPair(CausalLM baseModel, CausalLM fineTuned, Tokenizer? tokenizer, ModelPairSpec spec)
    {
        if (baseModel.Hidden != fineTuned.Hidden)
            throw new InvalidDataException($"{spec.FineTuned}: hidden size {fineTuned.Hidden} differs from the base model's {baseModel.Hidden} ({spec.Base}); the models cannot be diffed");
        Base = baseModel; FineTuned = fineTuned; Tokenizer = tokenizer; Spec = spec;
    }

    public static ModelPair Load(ModelPairSpec spec)
    {
        var b = CausalLM.Load(spec.Base, spec.BaseAdapter);
        try
        {
            var f = CausalLM.Load(spec.FineTuned, spec.Adapter);
            string? tokDir = new[] { spec.FineTuned, spec.Base }.FirstOrDefault(d => File.Exists(Path.Combine(d, "tokenizer.json")));
            return new ModelPair(b, f, tokDir is null ? null : Tokenizer.FromFolder(tokDir), spec);
        }
        catch { b.Dispose(); throw; }
    }

    /// <summary>Vocabulary entries both models have (the first min(V_base, V_ft) ids).</summary>
    public int SharedVocab => Math.Min(Base.Config.Vocab, FineTuned.Config.Vocab);

    /// <summary>Null when the vocabularies match, else the sentence the outputs carry about the comparison.</summary>
    public string? VocabNote => Base.Config.Vocab == FineTuned.Config.Vocab ? null
        : $"vocabularies differ (base {Base.Config.Vocab}, fine-tuned {FineTuned.Config.Vocab}); compared on the first {SharedVocab} ids";

    /// <summary>The tokenizer's decode of the single id (or "&lt;id&gt;" without a tokenizer).</summary>
    public string TokenText(int id) => TokenTexts.Of(Tokenizer, id);

    /// <summary>The decode of a span of ids (special tokens kept).</summary>
    public string Text(ReadOnlySpan<int> ids) => Tokenizer is null ? string.Join(" ", ids.ToArray().Select(i => $"<{i}>")) : Tokenizer.Decode(ids);

    /// <summary>True for tokens worth listing: not special, not a byte-fallback piece (&lt;0xNN&gt;), and decoding to text
    /// with at least one letter or digit (punctuation-only and whitespace pieces are left out, as the reference's
    /// display option does). Without a tokenizer every id counts.</summary>
    public bool IsWordToken(int id)
    {
        if (Tokenizer is null) return true;
        if (Tokenizer.IsSpecial(id)) return false;
        if (Tokenizer.IdToToken(id) is { Length: 6 } piece && piece.StartsWith("<0x", StringComparison.Ordinal) && piece.EndsWith('>')) return false;
        string text = TokenText(id);
        return !text.Contains('\uFFFD') && text.Any(char.IsLetterOrDigit);
    }

    public void Dispose() { Base.Dispose(); FineTuned.Dispose(); }
}

/// <summary>Token display: the tokenizer's decode of one id.</summary>
public static class TokenTexts
{
    public static string Of(Tokenizer? tokenizer, int id) => tokenizer is null ? $"<{id}>" : tokenizer.Decode([id]);
}

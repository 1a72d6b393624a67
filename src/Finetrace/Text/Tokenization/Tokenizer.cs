using System.Text.Json;

namespace Finetrace.Text.Tokenization;

/// <summary>Character span [Start, End) of a token in the input string, in UTF-16 units (post-processor tokens: (0, 0)).</summary>
public readonly record struct TokenSpan(int Start, int End);

/// <summary>The result of <see cref="Tokenizer.Encode"/>: ids and, for each, its span in the input text.</summary>
public sealed class Encoding(int[] ids, TokenSpan[] offsets, Tokenizer tokenizer)
{
    public int[] Ids { get; } = ids;
    public TokenSpan[] Offsets { get; } = offsets;
    public int Count => Ids.Length;

    /// <summary>Token strings (vocabulary entries, e.g. "Ġhello" or "▁the").</summary>
    public string[] Tokens => Ids.Select(id => tokenizer.IdToToken(id) ?? "").ToArray();
}

/// <summary>
/// A Hugging Face tokenizer read from <c>tokenizer.json</c> (and <c>tokenizer_config.json</c> for bos/eos/unk/pad),
/// reproducing the Rust <c>tokenizers</c> pipeline: added tokens split out (raw, then in normalised segments),
/// normaliser per segment, pre-tokenizer, BPE model, post-processor; decoding through the decoder chain.
/// Offsets are UTF-16 spans of the input (HF reports code-point spans; they coincide on BMP text); a token holding
/// some of a character's bytes spans the whole character. Decoding is the tokenizers-level decode (no transformers
/// <c>clean_up_tokenization_spaces</c>). <c>truncation</c>/<c>padding</c> in tokenizer.json are ignored, as transformers
/// does by default. Supported: BPE models with the normalisers, pre-tokenizers, post-processors and decoders listed
/// in the error raised for any other type. Thread-safe: <see cref="EncodeBatch"/> encodes in parallel.
/// </summary>
public sealed class Tokenizer
{
    readonly AddedVocabulary _added;
    readonly Normalizer? _normalizer;
    readonly PreTokenizer? _preTokenizer;
    readonly BpeModel _model;
    readonly PostProcessor? _postProcessor;
    readonly Decoder? _decoder;
    readonly HashSet<int> _specialIds = [];

    public string? Folder { get; private set; }
    /// <summary>Max id + 1 over the model vocabulary and the added tokens (the embedding rows a model needs).</summary>
    public int VocabSize { get; }
    public IReadOnlyList<AddedToken> AddedTokens => _added.Tokens;

    public string? BosToken { get; private set; }
    public string? EosToken { get; private set; }
    public string? UnkToken { get; private set; }
    public string? PadToken { get; private set; }
    public int? BosId => BosToken is null ? null : TokenToId(BosToken);
    public int? EosId => EosToken is null ? null : TokenToId(EosToken);
    public int? UnkId => UnkToken is null ? null : TokenToId(UnkToken);
    public int? PadId => PadToken is null ? null : TokenToId(PadToken);
    /// <summary>tokenizer_config.json's add_bos_token; when absent, whether the post-processor puts BOS first.</summary>
    public bool AddBosToken { get; private set; }
    /// <summary>The ids the post-processor puts before the text when special tokens are added (e.g. [BOS]).</summary>
    public IReadOnlyList<int> PrefixIds { get; }

    Tokenizer(JsonElement root, string where)
    {
        _normalizer = Normalizer.FromJson(Prop(root, "normalizer"), $"{where}: normalizer");
        _preTokenizer = PreTokenizer.FromJson(Prop(root, "pre_tokenizer"), $"{where}: pre_tokenizer");
        _model = new BpeModel(root.GetProperty("model"), $"{where}: model");
        _postProcessor = PostProcessor.FromJson(Prop(root, "post_processor"), $"{where}: post_processor");
        _decoder = Decoder.FromJson(Prop(root, "decoder"), $"{where}: decoder");
        _added = new AddedVocabulary(Prop(root, "added_tokens"), _normalizer);
        foreach (var t in _added.Tokens) if (t.Special) _specialIds.Add(t.Id);
        int max = _model.IdToToken.Length - 1;
        foreach (var t in _added.Tokens) max = Math.Max(max, t.Id);
        VocabSize = max + 1;
        PrefixIds = _postProcessor?.PrefixIds.ToArray() ?? [];
    }

    static JsonElement Prop(JsonElement e, string name) => e.TryGetProperty(name, out var v) ? v : default;

    /// <summary>Loads <c>tokenizer.json</c> and, if present, <c>tokenizer_config.json</c> from a folder.</summary>
    public static Tokenizer FromFolder(string dir)
    {
        string json = Path.Combine(dir, "tokenizer.json");
        if (!File.Exists(json))
            throw new FileNotFoundException($"{json} not found: a tokenizer folder needs a Hugging Face tokenizer.json (slow tokenizers such as tokenizer.model are not supported)");
        string config = Path.Combine(dir, "tokenizer_config.json");
        var t = FromFile(json, File.Exists(config) ? config : null);
        t.Folder = dir;
        return t;
    }

    public static Tokenizer FromFile(string tokenizerJson, string? tokenizerConfigJson = null)
    {
        Tokenizer t;
        using (var doc = JsonDocument.Parse(File.ReadAllBytes(tokenizerJson), new JsonDocumentOptions { MaxDepth = 256 }))
        {
            try { t = new Tokenizer(doc.RootElement, tokenizerJson); }
            catch (KeyNotFoundException e) { throw new FormatException($"{tokenizerJson}: a required field is missing ({e.Message})", e); }
            catch (InvalidOperationException e) { throw new FormatException($"{tokenizerJson}: a field has the wrong JSON type ({e.Message})", e); }
        }
        t.AddBosToken = t.PrefixIds.Count > 0;
        if (tokenizerConfigJson is not null)
        {
            using var cfg = JsonDocument.Parse(File.ReadAllBytes(tokenizerConfigJson));
            var r = cfg.RootElement;
            t.BosToken = SpecialString(r, "bos_token");
            t.EosToken = SpecialString(r, "eos_token");
            t.UnkToken = SpecialString(r, "unk_token");
            t.PadToken = SpecialString(r, "pad_token");
            if (r.TryGetProperty("add_bos_token", out var ab) && ab.ValueKind is JsonValueKind.True or JsonValueKind.False) t.AddBosToken = ab.GetBoolean();
        }
        return t;
    }

    /// <summary>A special token in tokenizer_config.json: a string, or an object with "content".</summary>
    static string? SpecialString(JsonElement r, string name)
    {
        if (!r.TryGetProperty(name, out var v)) return null;
        return v.ValueKind switch
        {
            JsonValueKind.String => v.GetString(),
            JsonValueKind.Object when v.TryGetProperty("content", out var c) => c.GetString(),
            _ => null,
        };
    }

    public int? TokenToId(string token)
    {
        if (_added.ByContent.TryGetValue(token, out var t)) return t.Id;
        int id = _model.TokenToId(token);
        return id >= 0 ? id : null;
    }

    public string? IdToToken(int id)
    {
        if (_added.ById.TryGetValue(id, out var t)) return t.Content;
        return (uint)id < (uint)_model.IdToToken.Length ? _model.IdToToken[id] : null;
    }

    /// <summary>True for added tokens marked special (skipped by <c>Decode(..., skipSpecialTokens: true)</c>).</summary>
    public bool IsSpecial(int id) => _specialIds.Contains(id);

    sealed class Scratch
    {
        public readonly List<(AddedToken? Token, int Start, int End)> Raw = [], Norm = [];
        public readonly PreTokenizedString Pre = new();
        public readonly List<int> Triples = [];
        public readonly List<int> Ids = [];
        public readonly List<(int Start, int End)> Offsets = [];
        public readonly NormalizedText Segment = new(256);
    }

    [ThreadStatic] static Scratch? t_scratch;

    /// <summary>Encodes one text (Rust <c>Tokenizer::encode</c>); special tokens from the post-processor when <paramref name="addSpecialTokens"/>.</summary>
    public Encoding Encode(string text, bool addSpecialTokens = true)
    {
        ArgumentNullException.ThrowIfNull(text);
        var sc = t_scratch ??= new Scratch();
        var ids = sc.Ids;
        var offsets = sc.Offsets;
        ids.Clear(); offsets.Clear();
        // 1. Added tokens that match the raw text.
        AddedVocabulary.Split(text, _added.Raw, sc.Raw);
        for (int r = 0; r < sc.Raw.Count; r++)
        {
            var (tok, s, e) = sc.Raw[r];
            if (tok is not null) { ids.Add(tok.Id); offsets.Add((s, e)); continue; }
            // 2. Normalise the segment, then split out the normalized added tokens.
            // The per-thread segment buffer is consumed before the next segment reuses it.
            var nt = sc.Segment.ResetFromOriginal(text, s, e);
            if (_normalizer is not null) nt = _normalizer.Normalize(nt);
            if (nt.Length == 0) continue;
            AddedVocabulary.Split(nt.Span, _added.Normalized, sc.Norm);
            foreach (var (ntok, ns, ne) in sc.Norm)
            {
                if (ntok is not null) { ids.Add(ntok.Id); var sp = nt.OriginalSpan(ns, ne); offsets.Add(sp); continue; }
                // 3. Pre-tokenize, 4. run the model on each piece.
                var pre = sc.Pre;
                pre.Reset(nt, ns, ne);
                _preTokenizer?.PreTokenize(pre);
                var pt = pre.Text;
                foreach (var (ps, pe) in pre.Pieces)
                {
                    sc.Triples.Clear();
                    _model.Tokenize(pt.Slice(ps, pe), sc.Triples);
                    for (int k = 0; k < sc.Triples.Count; k += 3)
                    {
                        ids.Add(sc.Triples[k]);
                        offsets.Add(pt.OriginalSpan(ps + sc.Triples[k + 1], ps + sc.Triples[k + 2]));
                    }
                }
            }
        }
        // 5. Post-process.
        _postProcessor?.Process(ids, offsets, addSpecialTokens, IdToToken);
        var spans = new TokenSpan[offsets.Count];
        for (int i = 0; i < spans.Length; i++) spans[i] = new TokenSpan(offsets[i].Start, offsets[i].End);
        return new Encoding(ids.ToArray(), spans, this);
    }

    /// <summary>Encodes texts in parallel; results in input order.</summary>
    public Encoding[] EncodeBatch(IReadOnlyList<string> texts, bool addSpecialTokens = true)
    {
        var result = new Encoding[texts.Count];
        Parallel.For(0, texts.Count, i => result[i] = Encode(texts[i], addSpecialTokens));
        return result;
    }

    int _anchorId = -2;

    /// <summary>
    /// One token as it reads inside running text: sentencepiece-style "▁Z" is " Z", not the "Z" that
    /// <see cref="Decode"/> gives for a lone id (its decoder strips the leading space of the first token of a text).
    /// Computed as decode(anchor, id) minus decode(anchor), with the anchor a plain one-letter token, so every decoder
    /// (Metaspace, Strip, ByteLevel, byte fallback) treats the id as a continuation. Used for every token string an
    /// analysis writes.
    /// </summary>
    public string DecodeToken(int id)
    {
        if (_anchorId == -2) _anchorId = FindAnchor();
        if (_anchorId < 0 || _specialIds.Contains(id)) return Decode([id]);
        string a = Decode([_anchorId]), both = Decode([_anchorId, id]);
        return both.StartsWith(a, StringComparison.Ordinal) ? both[a.Length..] : Decode([id]);
    }

    int FindAnchor()
    {
        foreach (var letter in "aeotnsx")
        {
            string piece = letter.ToString();
            int? id = TokenToId(piece);
            if (id is int i && !_specialIds.Contains(i) && Decode([i]) == piece) return i;
        }
        return -1;
    }

    /// <summary>Rust <c>Tokenizer::decode</c>: ids to token strings (unknown ids dropped), then the decoder chain.</summary>
    public string Decode(ReadOnlySpan<int> ids, bool skipSpecialTokens = false)
    {
        var tokens = new List<string>(ids.Length);
        foreach (int id in ids)
        {
            string? t = IdToToken(id);
            if (t is null) continue;
            if (skipSpecialTokens && _specialIds.Contains(id)) continue;
            tokens.Add(t);
        }
        if (_decoder is null) return string.Join(" ", tokens);
        return string.Concat(_decoder.DecodeChain(tokens));
    }
}

using System.Text;
using System.Text.Json;

namespace Finetrace.Text.Tokenization;

/// <summary>
/// Rust <c>PreTokenizedString</c> for one normalised segment: the current text and its pieces (ranges into it).
/// Splitting pre-tokenizers replace the pieces; transforming ones (ByteLevel, Metaspace) rebuild the text.
/// </summary>
internal sealed class PreTokenizedString
{
    public NormalizedText Text = null!;
    public List<(int Start, int End)> Pieces = [];
    public List<(int Start, int End)> Spare = [];
    public readonly List<(int Start, int End)> Matches = [];
    public readonly List<(int Start, int End, bool IsMatch)> Marked = [];

    public void Reset(NormalizedText text, int start, int end)
    {
        Text = text;
        Pieces.Clear();
        if (end > start) Pieces.Add((start, end));
    }

    /// <summary>Replaces every piece by its split under the pattern.</summary>
    public void Split(SplitPattern pattern, SplitBehavior behavior, bool invert = false)
    {
        Spare.Clear();
        foreach (var (s, e) in Pieces) SplitLogic.Split(Text.Span, s, e, pattern, behavior, invert, Matches, Marked, Spare);
        (Pieces, Spare) = (Spare, Pieces);
    }
}

internal abstract class PreTokenizer
{
    public abstract void PreTokenize(PreTokenizedString p);

    public static PreTokenizer? FromJson(JsonElement e, string where)
    {
        if (e.ValueKind is JsonValueKind.Null or JsonValueKind.Undefined) return null;
        string type = e.GetProperty("type").GetString() ?? "";
        string at = $"{where} ({type})";
        switch (type)
        {
            case "Sequence":
                return new SequencePreTokenizer(e.GetProperty("pretokenizers").EnumerateArray()
                    .Select((x, i) => FromJson(x, $"{where}.pretokenizers[{i}]")!).ToArray());
            case "ByteLevel":
                return new ByteLevelPreTokenizer(JsonFields.Bool(e, "add_prefix_space", true), JsonFields.Bool(e, "use_regex", true));
            case "Split":
                return new SplitPreTokenizer(SplitPattern.FromJson(e.GetProperty("pattern"), at),
                    SplitLogic.ParseBehavior(e.GetProperty("behavior").GetString(), at), JsonFields.Bool(e, "invert", false));
            case "Metaspace":
                {
                    string rep = JsonFields.Str(e, "replacement") ?? "\u2581";
                    string scheme = JsonFields.Str(e, "prepend_scheme") ?? (JsonFields.Bool(e, "add_prefix_space", true) ? "always" : "never");
                    return new MetaspacePreTokenizer(rep, scheme, JsonFields.Bool(e, "split", true), at);
                }
            case "Digits":
                return new SplitFixed(new CharPredicatePattern(CodePoints.IsNumber),
                    JsonFields.Bool(e, "individual_digits", false) ? SplitBehavior.Isolated : SplitBehavior.Contiguous);
            case "Punctuation":
                return new SplitFixed(new CharPredicatePattern(IsPunctuation),
                    e.TryGetProperty("behavior", out var b) ? SplitLogic.ParseBehavior(b.GetString(), at) : SplitBehavior.Isolated);
            case "WhitespaceSplit":
                return new SplitFixed(new CharPredicatePattern(CodePoints.IsWhiteSpace), SplitBehavior.Removed);
            case "Whitespace":
                return new SplitFixed(RegexPattern.Create(@"\w+|[^\w\s]+"), SplitBehavior.Removed, invert: true);
            case "CharDelimiterSplit":
                {
                    string d = JsonFields.Str(e, "delimiter") ?? throw new FormatException($"{at}: missing delimiter");
                    int cp = char.ConvertToUtf32(d, 0);
                    return new SplitFixed(new CharPredicatePattern(c => c == cp), SplitBehavior.Removed);
                }
            case "BertPreTokenizer":
                return new SequencePreTokenizer([
                    new SplitFixed(new CharPredicatePattern(CodePoints.IsWhiteSpace), SplitBehavior.Removed),
                    new SplitFixed(new CharPredicatePattern(IsPunctuation), SplitBehavior.Isolated)]);
            default:
                throw new NotSupportedException($"{at}: pre-tokenizer type '{type}' is not supported (supported: ByteLevel, Split, Metaspace, Sequence, Digits, Punctuation, Whitespace, WhitespaceSplit, CharDelimiterSplit, BertPreTokenizer)");
        }
    }

    /// <summary>Rust <c>is_punc</c>: ASCII punctuation or a Unicode P* category.</summary>
    internal static bool IsPunctuation(int cp)
    {
        if (cp < 128) return cp is >= 33 and <= 47 or >= 58 and <= 64 or >= 91 and <= 96 or >= 123 and <= 126;
        var c = CodePoints.Category(cp);
        return c is >= System.Globalization.UnicodeCategory.ConnectorPunctuation and <= System.Globalization.UnicodeCategory.OtherPunctuation;
    }
}

internal sealed class SequencePreTokenizer(PreTokenizer[] items) : PreTokenizer
{
    public override void PreTokenize(PreTokenizedString p) { foreach (var t in items) t.PreTokenize(p); }
}

internal sealed class SplitPreTokenizer(SplitPattern pattern, SplitBehavior behavior, bool invert) : PreTokenizer
{
    public override void PreTokenize(PreTokenizedString p) => p.Split(pattern, behavior, invert);
}

internal sealed class SplitFixed(SplitPattern pattern, SplitBehavior behavior, bool invert = false) : PreTokenizer
{
    public override void PreTokenize(PreTokenizedString p) => p.Split(pattern, behavior, invert);
}

/// <summary>GPT-2's byte-to-unicode table (model-facts §13.3).</summary>
internal static class ByteLevelMap
{
    public static readonly char[] ByteToChar = new char[256];
    public static readonly int[] CharToByte = new int[0x200];   // -1 when the char is not a byte char

    static ByteLevelMap()
    {
        Array.Fill(CharToByte, -1);
        int n = 0;
        for (int b = 0; b < 256; b++)
        {
            bool direct = b is >= 33 and <= 126 or >= 161 and <= 172 or >= 174 and <= 255;
            ByteToChar[b] = direct ? (char)b : (char)(256 + n++);
            CharToByte[ByteToChar[b]] = b;
        }
    }
}

/// <summary>
/// Rust <c>ByteLevel</c> pre-tokenizer: per piece, optionally prefix a space, optionally split with the GPT-2
/// regex, then map every UTF-8 byte to its byte char (each aligned to the character it came from).
/// </summary>
internal sealed class ByteLevelPreTokenizer(bool addPrefixSpace, bool useRegex) : PreTokenizer
{
    internal const string Gpt2Pattern = @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
    static readonly RegexPattern Gpt2 = RegexPattern.Create(Gpt2Pattern);

    public override void PreTokenize(PreTokenizedString p)
    {
        if (addPrefixSpace)
        {
            var src = p.Text;
            var dst = new NormalizedText(src.Length + p.Pieces.Count);
            p.Spare.Clear();
            foreach (var (s, e) in p.Pieces)
            {
                int ns = dst.Length;
                if (src.Chars[s] != ' ') dst.Append(' ', src.Start[s], src.End[s]);
                dst.AppendFrom(src, s, e);
                p.Spare.Add((ns, dst.Length));
            }
            p.Text = dst;
            (p.Pieces, p.Spare) = (p.Spare, p.Pieces);
        }
        if (useRegex) p.Split(Gpt2, SplitBehavior.Isolated);
        Transform(p);
    }

    [ThreadStatic] static NormalizedText? t_bytes;

    /// <summary>Rewrites every piece as byte chars (into a per-thread buffer: the caller consumes the pieces before the next call).</summary>
    internal static void Transform(PreTokenizedString p)
    {
        var src = p.Text;
        int need = 0;
        foreach (var (s, e) in p.Pieces) need += System.Text.Encoding.UTF8.GetByteCount(src.Chars.AsSpan(s, e - s));
        var dst = t_bytes is { } buffer && buffer != src ? buffer : new NormalizedText(need);
        t_bytes = dst;
        dst.EnsureCapacity(need);
        p.Spare.Clear();
        Span<byte> utf8 = stackalloc byte[4];
        var map = ByteLevelMap.ByteToChar;
        foreach (var (s, e) in p.Pieces)
        {
            int ns = dst.Length;
            for (int i = s; i < e;)
            {
                char c = src.Chars[i];
                if (c < 0x80) { dst.Append(map[c], src.Start[i], src.End[i]); i++; continue; }
                Rune.DecodeFromUtf16(src.Chars.AsSpan(i, e - i), out var r, out int used);
                int nb = r.EncodeToUtf8(utf8);
                for (int k = 0; k < nb; k++) dst.Append(map[utf8[k]], src.Start[i], src.End[i]);
                i += used;
            }
            p.Spare.Add((ns, dst.Length));
        }
        p.Text = dst;
        (p.Pieces, p.Spare) = (p.Spare, p.Pieces);
    }
}

/// <summary>Rust <c>Metaspace</c>: spaces become the replacement char, which is prepended per the scheme; optional split before each.</summary>
internal sealed class MetaspacePreTokenizer : PreTokenizer
{
    readonly string _replacement;
    readonly char _rep;
    readonly string _scheme;
    readonly bool _split;
    readonly LiteralPattern _repPattern;

    public MetaspacePreTokenizer(string replacement, string scheme, bool split, string where)
    {
        if (replacement.Length != 1) throw new FormatException($"{where}: replacement must be one character");
        if (scheme is not ("always" or "never" or "first")) throw new FormatException($"{where}: prepend_scheme must be always, never or first");
        _replacement = replacement; _rep = replacement[0]; _scheme = scheme; _split = split;
        _repPattern = new LiteralPattern(replacement);
    }

    public override void PreTokenize(PreTokenizedString p)
    {
        var src = p.Text;
        var dst = new NormalizedText(src.Length + p.Pieces.Count + 1);
        p.Spare.Clear();
        foreach (var (s, e) in p.Pieces)
        {
            int ns = dst.Length;
            bool startsWithRep = src.Chars[s] == _rep || src.Chars[s] == ' ';
            bool prepend = _scheme == "always" ? !startsWithRep : _scheme == "first" && !startsWithRep && src.Start[s] == 0;
            if (prepend) dst.Append(_rep, src.Start[s], src.End[s]);
            for (int i = s; i < e; i++) dst.Append(src.Chars[i] == ' ' ? _rep : src.Chars[i], src.Start[i], src.End[i]);
            p.Spare.Add((ns, dst.Length));
        }
        p.Text = dst;
        (p.Pieces, p.Spare) = (p.Spare, p.Pieces);
        if (_split) p.Split(_repPattern, SplitBehavior.MergedWithNext);
    }
}

internal static class JsonFields
{
    public static bool Bool(JsonElement e, string name, bool dflt) =>
        e.TryGetProperty(name, out var v) && v.ValueKind is JsonValueKind.True or JsonValueKind.False ? v.GetBoolean() : dflt;

    public static string? Str(JsonElement e, string name) =>
        e.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.String ? v.GetString() : null;

    public static int Int(JsonElement e, string name, int dflt) =>
        e.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.Number ? v.GetInt32() : dflt;
}

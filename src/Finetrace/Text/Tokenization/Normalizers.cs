using System.Globalization;
using System.Text;
using System.Text.Json;

namespace Finetrace.Text.Tokenization;

/// <summary>A tokenizer.json normaliser: rewrites a segment, keeping each unit's original span.</summary>
internal abstract class Normalizer
{
    public abstract NormalizedText Normalize(NormalizedText t);

    public static Normalizer? FromJson(JsonElement e, string where)
    {
        if (e.ValueKind is JsonValueKind.Null or JsonValueKind.Undefined) return null;
        string type = e.GetProperty("type").GetString() ?? "";
        string at = $"{where} ({type})";
        return type switch
        {
            "Sequence" => new SequenceNormalizer(e.GetProperty("normalizers").EnumerateArray()
                .Select((x, i) => FromJson(x, $"{where}.normalizers[{i}]")!).ToArray()),
            "NFC" => new UnicodeNormalizer(NormalizationKind.NFC),
            "NFD" => new UnicodeNormalizer(NormalizationKind.NFD),
            "NFKC" => new UnicodeNormalizer(NormalizationKind.NFKC),
            "NFKD" => new UnicodeNormalizer(NormalizationKind.NFKD),
            "Prepend" => new PrependNormalizer(JsonFields.Str(e, "prepend") ?? throw new FormatException($"{at}: missing 'prepend'")),
            "Replace" => new ReplaceNormalizer(SplitPattern.FromJson(e.GetProperty("pattern"), at), JsonFields.Str(e, "content") ?? ""),
            "Lowercase" => new LowercaseNormalizer(),
            "Strip" => new StripNormalizer(JsonFields.Bool(e, "strip_left", true), JsonFields.Bool(e, "strip_right", true)),
            "StripAccents" => new StripAccentsNormalizer(),
            _ => throw new NotSupportedException($"{at}: normalizer type '{type}' is not supported (supported: Sequence, NFC, NFD, NFKC, NFKD, Prepend, Replace, Lowercase, Strip, StripAccents)"),
        };
    }

    /// <summary>Normalises a standalone string (used for the contents of normalized added tokens).</summary>
    public string Apply(string s) => Normalize(NormalizedText.FromOriginal(s, 0, s.Length)).ToString();
}

internal sealed class SequenceNormalizer(Normalizer[] items) : Normalizer
{
    public override NormalizedText Normalize(NormalizedText t) { foreach (var n in items) t = n.Normalize(t); return t; }
}

internal sealed class UnicodeNormalizer(NormalizationKind form) : Normalizer
{
    public override NormalizedText Normalize(NormalizedText t) => UnicodeNormalization.Normalize(t, form);
}

/// <summary>Rust <c>Prepend</c>: prefixes non-empty text; the new chars take the first char's span.</summary>
internal sealed class PrependNormalizer(string prepend) : Normalizer
{
    public override NormalizedText Normalize(NormalizedText t)
    {
        if (t.Length == 0) return t;
        var d = new NormalizedText(t.Length + prepend.Length);
        foreach (char c in prepend) d.Append(c, t.Start[0], t.End[0]);
        d.AppendFrom(t, 0, t.Length);
        return d;
    }
}

/// <summary>Rust <c>Replace</c>: every match becomes the content; the content's chars take the match's span.</summary>
internal sealed class ReplaceNormalizer(SplitPattern pattern, string content) : Normalizer
{
    public override NormalizedText Normalize(NormalizedText t)
    {
        List<(int Start, int End)> matches = [];
        // Single-char literal replacement (the common ' ' -> '▁') needs no match list.
        if (pattern is LiteralPattern { Literal.Length: 1 } lp && content.Length == 1)
        {
            char from = lp.Literal[0], to = content[0];
            if (t.Span.IndexOf(from) < 0) return t;
            var d1 = new NormalizedText(t.Length);
            t.Chars.AsSpan(0, t.Length).CopyTo(d1.Chars);
            t.Start.AsSpan(0, t.Length).CopyTo(d1.Start);
            t.End.AsSpan(0, t.Length).CopyTo(d1.End);
            d1.Length = t.Length;
            d1.Chars.AsSpan(0, t.Length).Replace(from, to);
            return d1;
        }
        pattern.FindMatches(t.Span, matches);
        if (matches.Count == 0) return t;
        var d = new NormalizedText(t.Length + matches.Count * content.Length);
        int prev = 0;
        foreach (var (s, e) in matches)
        {
            d.AppendFrom(t, prev, s);
            var (os, oe) = t.OriginalSpan(s, e);
            foreach (char c in content) d.Append(c, os, oe);
            prev = e;
        }
        d.AppendFrom(t, prev, t.Length);
        return d;
    }
}

internal sealed class LowercaseNormalizer : Normalizer
{
    public override NormalizedText Normalize(NormalizedText t)
    {
        var d = new NormalizedText(t.Length + 4);
        for (int i = 0; i < t.Length;)
        {
            Rune.DecodeFromUtf16(t.Chars.AsSpan(i, t.Length - i), out var r, out int used);
            if (r.Value == 0x130) { d.Append('i', t.Start[i], t.End[i]); d.Append('\u0307', t.Start[i], t.End[i]); }  // İ lowercases to i + combining dot
            else d.AppendRune(Rune.ToLowerInvariant(r).Value, t.Start[i], t.End[i]);
            i += used;
        }
        return d;
    }
}

internal sealed class StripNormalizer(bool left, bool right) : Normalizer
{
    public override NormalizedText Normalize(NormalizedText t)
    {
        int s = 0, e = t.Length;
        if (left) while (s < e && CodePoints.IsWhiteSpace(t.Chars[s])) s++;
        if (right) while (e > s && CodePoints.IsWhiteSpace(t.Chars[e - 1])) e--;
        if (s == 0 && e == t.Length) return t;
        var d = new NormalizedText(e - s);
        d.AppendFrom(t, s, e);
        return d;
    }
}

internal sealed class StripAccentsNormalizer : Normalizer
{
    public override NormalizedText Normalize(NormalizedText t)
    {
        var d = new NormalizedText(t.Length);
        for (int i = 0; i < t.Length;)
        {
            Rune.DecodeFromUtf16(t.Chars.AsSpan(i, t.Length - i), out var r, out int used);
            if (Rune.GetUnicodeCategory(r) != UnicodeCategory.NonSpacingMark) d.AppendFrom(t, i, i + used);
            i += used;
        }
        return d;
    }
}

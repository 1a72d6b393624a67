namespace Finetrace.Text.Tokenization;

/// <summary>
/// A normalised string that remembers, for each of its UTF-16 units, the span [Start, End) of the input
/// string it came from (Rust <c>NormalizedString</c>'s alignments, kept in UTF-16 units of the input).
/// Normalisers and transforming pre-tokenizers build a new one; both units of a surrogate pair carry the same span.
/// </summary>
internal sealed class NormalizedText
{
    public char[] Chars;
    public int[] Start;
    public int[] End;
    public int Length;

    public NormalizedText(int capacity)
    {
        Chars = new char[Math.Max(capacity, 4)];
        Start = new int[Chars.Length];
        End = new int[Chars.Length];
    }

    /// <summary>The identity alignment over text[start..end).</summary>
    public static NormalizedText FromOriginal(string text, int start, int end) => new NormalizedText(end - start).ResetFromOriginal(text, start, end);

    /// <summary>Makes this the identity alignment over text[start..end), reusing the buffers.</summary>
    public NormalizedText ResetFromOriginal(string text, int start, int end)
    {
        var n = this;
        n.Length = 0;
        n.EnsureCapacity(end - start);
        text.AsSpan(start, end - start).CopyTo(n.Chars);
        for (int i = start; i < end; i++)
        {
            int spanEnd = i + 1;
            // Both units of a surrogate pair map to the whole pair.
            if (char.IsHighSurrogate(text[i]) && i + 1 < end && char.IsLowSurrogate(text[i + 1])) spanEnd = i + 2;
            else if (char.IsLowSurrogate(text[i]) && i > start && char.IsHighSurrogate(text[i - 1])) { n.Start[i - start] = i - 1; n.End[i - start] = i + 1; continue; }
            n.Start[i - start] = i;
            n.End[i - start] = spanEnd;
        }
        n.Length = end - start;
        return n;
    }

    public ReadOnlySpan<char> Span => Chars.AsSpan(0, Length);
    public ReadOnlySpan<char> Slice(int start, int end) => Chars.AsSpan(start, end - start);
    public override string ToString() => new(Chars, 0, Length);

    public void Append(char c, int start, int end)
    {
        if (Length == Chars.Length) Grow(Length + 1);
        Chars[Length] = c; Start[Length] = start; End[Length] = end; Length++;
    }

    /// <summary>Appends a code point (one or two units) aligned to [start, end).</summary>
    public void AppendRune(int cp, int start, int end)
    {
        if (cp < 0x10000) { Append((char)cp, start, end); return; }
        cp -= 0x10000;
        Append((char)(0xD800 + (cp >> 10)), start, end);
        Append((char)(0xDC00 + (cp & 0x3FF)), start, end);
    }

    /// <summary>Appends units [from, to) of another text with their alignments.</summary>
    public void AppendFrom(NormalizedText src, int from, int to)
    {
        int n = to - from;
        if (Length + n > Chars.Length) Grow(Length + n);
        Array.Copy(src.Chars, from, Chars, Length, n);
        Array.Copy(src.Start, from, Start, Length, n);
        Array.Copy(src.End, from, End, Length, n);
        Length += n;
    }

    /// <summary>Empties the text and makes room for <paramref name="capacity"/> units without further growth.</summary>
    public void EnsureCapacity(int capacity)
    {
        Length = 0;
        if (Chars.Length < capacity) { Chars = new char[capacity]; Start = new int[capacity]; End = new int[capacity]; }
    }

    void Grow(int need)
    {
        int cap = Math.Max(need, Chars.Length * 2);
        Array.Resize(ref Chars, cap);
        Array.Resize(ref Start, cap);
        Array.Resize(ref End, cap);
    }

    /// <summary>The original span of normalised units [start, end): from the first unit's start to the largest end.</summary>
    public (int Start, int End) OriginalSpan(int start, int end)
    {
        if (end <= start) { int p = start < Length ? Start[start] : (Length > 0 ? End[Length - 1] : 0); return (p, p); }
        int s = Start[start], e = End[end - 1];
        // Reordering normalisers (NFC) can make spans non-monotone; cover them all.
        for (int i = start; i < end; i++) { if (Start[i] < s) s = Start[i]; if (End[i] > e) e = End[i]; }
        return (s, e);
    }
}

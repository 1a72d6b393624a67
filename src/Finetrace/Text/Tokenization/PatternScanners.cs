namespace Finetrace.Text.Tokenization;

/// <summary>
/// Hand-written code-point scanners for the well-known pre-tokenizer regexes (model-facts §13.4): GPT-2's ByteLevel
/// pattern and the Llama-3 pattern (with \p{N}{1,3}, or \p{N} as in Qwen2/3). Each follows the regex's
/// alternatives in order, so the result equals the generic <see cref="RuneRegex"/>'s (tested on every fixture text).
/// Every position starts a match under these patterns, so no search loop is needed.
/// </summary>
internal static class PatternScanners
{
    public delegate void Scanner(ReadOnlySpan<char> s, List<(int Start, int End)> matches);

    internal const string Llama3Pattern = @"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    internal const string QwenPattern = @"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

    public static Scanner? For(string pattern) => pattern switch
    {
        ByteLevelPreTokenizer.Gpt2Pattern => Gpt2,
        Llama3Pattern => (s, m) => Llama3(s, m, 3),
        QwenPattern => (s, m) => Llama3(s, m, 1),
        _ => null,
    };

    const byte Letter = 0, Number = 1, Space = 2, Other = 3;
    static readonly byte[] AsciiKind = BuildAscii();

    static byte[] BuildAscii()
    {
        var k = new byte[128];
        for (int c = 0; c < 128; c++)
            k[c] = Unicode.IsWhiteSpace(c) ? Space : char.IsAsciiLetter((char)c) ? Letter : char.IsAsciiDigit((char)c) ? Number : Other;
        return k;
    }

    /// <summary>Kind of the code point at i (letter, number, White_Space, other) and its width in units; Other with width 0 past the end.</summary>
    static byte KindAt(ReadOnlySpan<char> s, int i, out int width)
    {
        if (i >= s.Length) { width = 0; return 255; }
        char c = s[i];
        if (c < 128) { width = 1; return AsciiKind[c]; }
        int cp = c;
        width = 1;
        if (char.IsHighSurrogate(c) && i + 1 < s.Length && char.IsLowSurrogate(s[i + 1])) { cp = char.ConvertToUtf32(c, s[i + 1]); width = 2; }
        if (Unicode.IsWhiteSpace(cp)) return Space;
        if (Unicode.IsLetter(cp)) return Letter;
        if (Unicode.IsNumber(cp)) return Number;
        return Other;
    }

    static int RunOf(ReadOnlySpan<char> s, int i, byte kind)
    {
        while (KindAt(s, i, out int w) == kind) i += w;
        return i;
    }

    /// <summary>Length of a contraction 's 't 're 've 'm 'll 'd at i (0 if none), optionally case-insensitive.</summary>
    static int Contraction(ReadOnlySpan<char> s, int i, bool ignoreCase)
    {
        if (s[i] != '\'' || i + 1 >= s.Length) return 0;
        int a = Lower(s[i + 1], ignoreCase);
        if (a is 's' or 't' or 'm' or 'd') return 2;
        if (i + 2 >= s.Length) return 0;
        int b = Lower(s[i + 2], ignoreCase);
        return (a, b) is ('r', 'e') or ('v', 'e') or ('l', 'l') ? 3 : 0;

        static int Lower(char c, bool ignoreCase) => !ignoreCase ? c : c == '\u017F' ? 's' : c is >= 'A' and <= 'Z' ? c + 32 : c;
    }

    /// <summary>End of \s+(?!\S)|\s+ at i (s[i] is White_Space).</summary>
    static int Whitespace(ReadOnlySpan<char> s, int i)
    {
        int j = RunOf(s, i, Space);
        if (j == s.Length) return j;
        // Followed by a non-space: \s+(?!\S) gives back the last space, if that leaves at least one.
        int last = j - 1;
        if (last > i && char.IsLowSurrogate(s[last]) && char.IsHighSurrogate(s[last - 1])) last--;
        return last > i ? last : j;
    }

    /// <summary><c>'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+</c></summary>
    static void Gpt2(ReadOnlySpan<char> s, List<(int Start, int End)> matches)
    {
        int i = 0;
        while (i < s.Length)
        {
            int end;
            int c = Contraction(s, i, ignoreCase: false);
            byte k = KindAt(s, i, out int w);
            if (c > 0) end = i + c;
            else if (k == Space && s[i] == ' ' && KindAt(s, i + 1, out _) is var next && next is Letter or Number or Other)
                end = RunOf(s, i + 1, next);
            else if (k == Space) end = Whitespace(s, i);
            else end = RunOf(s, i, k);
            matches.Add((i, end));
            i = end;
        }
    }

    /// <summary>The Llama-3 pattern with at most <paramref name="maxDigits"/> digits per number.</summary>
    static void Llama3(ReadOnlySpan<char> s, List<(int Start, int End)> matches, int maxDigits)
    {
        int i = 0;
        while (i < s.Length)
        {
            int end;
            int c = Contraction(s, i, ignoreCase: true);
            byte k = KindAt(s, i, out int w);
            if (c > 0) end = i + c;
            else if (k == Letter) end = RunOf(s, i, Letter);
            // [^\r\n\p{L}\p{N}]?\p{L}+ : one non-letter, non-number (not CR/LF) before letters.
            else if (k != Number && s[i] != '\r' && s[i] != '\n' && KindAt(s, i + w, out _) == Letter) end = RunOf(s, i + w, Letter);
            else if (k == Number)
            {
                end = i + w;
                for (int d = 1; d < maxDigits && KindAt(s, end, out int dw) == Number; d++) end += dw;
            }
            // ' ?[^\s\p{L}\p{N}]+[\r\n]*'
            else if (k == Other || (s[i] == ' ' && KindAt(s, i + 1, out _) == Other))
            {
                end = RunOf(s, k == Other ? i : i + 1, Other);
                while (end < s.Length && s[end] is '\r' or '\n') end++;
            }
            else
            {
                // White_Space: \s*[\r\n]+ ends after the last CR/LF of the run; else \s+(?!\S)|\s+.
                int j = RunOf(s, i, Space), lastNl = -1;
                for (int p = i; p < j; p++) if (s[p] is '\r' or '\n') lastNl = p;
                end = lastNl >= 0 ? lastNl + 1 : Whitespace(s, i);
            }
            matches.Add((i, end));
            i = end;
        }
    }
}

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

    internal const string O200kPattern = @"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

    public static Scanner? For(string pattern) => pattern switch
    {
        ByteLevelPreTokenizer.Gpt2Pattern => Gpt2,
        Llama3Pattern => (s, m) => Llama3(s, m, 3),
        QwenPattern => (s, m) => Llama3(s, m, 1),
        O200kPattern => O200k,
        _ => null,
    };

    const byte Letter = 0, Number = 1, Space = 2, Other = 3;
    static readonly byte[] AsciiKind = BuildAscii();

    static byte[] BuildAscii()
    {
        var k = new byte[128];
        for (int c = 0; c < 128; c++)
            k[c] = CodePoints.IsWhiteSpace(c) ? Space : char.IsAsciiLetter((char)c) ? Letter : char.IsAsciiDigit((char)c) ? Number : Other;
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
        if (CodePoints.IsWhiteSpace(cp)) return Space;
        if (CodePoints.IsLetter(cp)) return Letter;
        if (CodePoints.IsNumber(cp)) return Number;
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

    // The alternatives the Llama-3 and o200k patterns share after their letter alternatives.

    /// <summary>End of \p{N}{1,maxDigits} whose first number ends at <paramref name="afterFirst"/>.</summary>
    static int Digits(ReadOnlySpan<char> s, int afterFirst, int maxDigits)
    {
        int end = afterFirst;
        for (int d = 1; d < maxDigits && KindAt(s, end, out int dw) == Number; d++) end += dw;
        return end;
    }

    /// <summary>End of [^\s\p{L}\p{N}]+[\r\n]* at i ([\r\n/]* with <paramref name="slash"/>, as in o200k).</summary>
    static int Punctuation(ReadOnlySpan<char> s, int i, bool slash)
    {
        int end = RunOf(s, i, Other);
        while (end < s.Length && (s[end] is '\r' or '\n' || (slash && s[end] == '/'))) end++;
        return end;
    }

    /// <summary>End of \s*[\r\n]+|\s+(?!\S)|\s+ at i (s[i] is White_Space): after the run's last CR/LF if it has one.</summary>
    static int SpaceOrNewlines(ReadOnlySpan<char> s, int i)
    {
        int j = RunOf(s, i, Space), lastNl = -1;
        for (int p = i; p < j; p++) if (s[p] is '\r' or '\n') lastNl = p;
        return lastNl >= 0 ? lastNl + 1 : Whitespace(s, i);
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
            else if (k == Number) end = Digits(s, i + w, maxDigits);
            // ' ?[^\s\p{L}\p{N}]+[\r\n]*'
            else if (k == Other || (s[i] == ' ' && KindAt(s, i + 1, out _) == Other)) end = Punctuation(s, k == Other ? i : i + 1, slash: false);
            else end = SpaceOrNewlines(s, i);
            matches.Add((i, end));
            i = end;
        }
    }

    // o200k's letter classes: U = [\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}] ("upper"), W = [\p{Ll}\p{Lm}\p{Lo}\p{M}] ("lower").
    const int InU = 1, InW = 2;

    static int LetterSets(ReadOnlySpan<char> s, int i, out int width)
    {
        width = 0;
        if (i >= s.Length) return 0;
        char c = s[i];
        width = 1;
        if (c < 128) return c is >= 'A' and <= 'Z' ? InU : c is >= 'a' and <= 'z' ? InW : 0;
        int cp = c;
        if (char.IsHighSurrogate(c) && i + 1 < s.Length && char.IsLowSurrogate(s[i + 1])) { cp = char.ConvertToUtf32(c, s[i + 1]); width = 2; }
        return CodePoints.Category(cp) switch
        {
            System.Globalization.UnicodeCategory.UppercaseLetter or System.Globalization.UnicodeCategory.TitlecaseLetter => InU,
            System.Globalization.UnicodeCategory.LowercaseLetter => InW,
            System.Globalization.UnicodeCategory.ModifierLetter or System.Globalization.UnicodeCategory.OtherLetter or
            System.Globalization.UnicodeCategory.NonSpacingMark or System.Globalization.UnicodeCategory.SpacingCombiningMark or
            System.Globalization.UnicodeCategory.EnclosingMark => InU | InW,
            _ => 0,
        };
    }

    /// <summary>U*W+ at j (greedy U*, backtracking into W+): the end, or -1.</summary>
    static int UStarWPlus(ReadOnlySpan<char> s, int j)
    {
        int q = j, lastW = -1, lastWidth = 0;
        while (true)
        {
            int sets = LetterSets(s, q, out int w);
            if ((sets & InU) == 0) break;
            if ((sets & InW) != 0) { lastW = q; lastWidth = w; }
            q += w;
        }
        if ((LetterSets(s, q, out _) & InW) != 0)
        {
            while ((LetterSets(s, q, out int w) & InW) != 0) q += w;
            return q;
        }
        // U* gives back chars until W+ can take one: the last W char of the U run, which W+ cannot extend.
        return lastW >= 0 ? lastW + lastWidth : -1;
    }

    /// <summary>U+W* at j: the end, or -1.</summary>
    static int UPlusWStar(ReadOnlySpan<char> s, int j)
    {
        int q = j;
        while ((LetterSets(s, q, out int w) & InU) != 0) q += w;
        if (q == j) return -1;
        while ((LetterSets(s, q, out int w) & InW) != 0) q += w;
        return q;
    }

    /// <summary>The o200k_base (GPT-4o) pattern.</summary>
    static void O200k(ReadOnlySpan<char> s, List<(int Start, int End)> matches)
    {
        int i = 0;
        while (i < s.Length)
        {
            byte k = KindAt(s, i, out int w);
            // [^\r\n\p{L}\p{N}]? : any char that is not CR, LF, a letter or a number (marks included).
            bool prefixable = k != Letter && k != Number && s[i] != '\r' && s[i] != '\n';
            int end = -1;
            if (prefixable) end = UStarWPlus(s, i + w);
            if (end < 0) end = UStarWPlus(s, i);
            if (end < 0 && prefixable) end = UPlusWStar(s, i + w);
            if (end < 0) end = UPlusWStar(s, i);
            if (end >= 0)
            {
                if (end < s.Length) end += Contraction(s, end, ignoreCase: true);
            }
            else if (k == Number) end = Digits(s, i + w, 3);
            // ' ?[^\s\p{L}\p{N}]+[\r\n/]*'
            else if (k == Other || (s[i] == ' ' && KindAt(s, i + 1, out _) == Other)) end = Punctuation(s, k == Other ? i : i + 1, slash: true);
            else end = SpaceOrNewlines(s, i);
            matches.Add((i, end));
            i = end;
        }
    }
}

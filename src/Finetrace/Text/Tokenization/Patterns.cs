namespace Finetrace.Text.Tokenization;

/// <summary>Rust <c>SplitDelimiterBehavior</c>.</summary>
internal enum SplitBehavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous }

/// <summary>What a Split, a Replace or a built-in pre-tokenizer searches for (Rust <c>Pattern</c>).</summary>
internal abstract class SplitPattern
{
    /// <summary>Appends the non-empty, non-overlapping matches [start, end) in order.</summary>
    public abstract void FindMatches(ReadOnlySpan<char> s, List<(int Start, int End)> matches);

    /// <summary>Builds a pattern from tokenizer.json's <c>{"String": ...}</c> or <c>{"Regex": ...}</c>.</summary>
    public static SplitPattern FromJson(System.Text.Json.JsonElement pattern, string where)
    {
        if (pattern.TryGetProperty("String", out var str)) return new LiteralPattern(str.GetString() ?? "");
        if (pattern.TryGetProperty("Regex", out var re)) return RegexPattern.Create(re.GetString() ?? "");
        throw new FormatException($"{where}: pattern must be {{\"String\": ...}} or {{\"Regex\": ...}}, got {pattern.GetRawText()}");
    }
}

internal sealed class LiteralPattern(string literal) : SplitPattern
{
    public string Literal { get; } = literal;

    public override void FindMatches(ReadOnlySpan<char> s, List<(int Start, int End)> matches)
    {
        if (Literal.Length == 0) return;
        int pos = 0;
        while (pos <= s.Length - Literal.Length)
        {
            int at = s[pos..].IndexOf(Literal.AsSpan(), StringComparison.Ordinal);
            if (at < 0) break;
            matches.Add((pos + at, pos + at + Literal.Length));
            pos += at + Literal.Length;
        }
    }
}

/// <summary>A regex pattern: a hand-written scanner when the pattern is one we know, else the generic <see cref="RuneRegex"/>.</summary>
internal sealed class RegexPattern : SplitPattern
{
    readonly RuneRegex? _regex;
    readonly PatternScanners.Scanner? _scanner;
    public string Pattern { get; }

    RegexPattern(string pattern, RuneRegex? regex, PatternScanners.Scanner? scanner) { Pattern = pattern; _regex = regex; _scanner = scanner; }

    public static RegexPattern Create(string pattern, bool allowScanner = true)
    {
        var scanner = allowScanner ? PatternScanners.For(pattern) : null;
        return new RegexPattern(pattern, scanner is null ? new RuneRegex(pattern) : null, scanner);
    }

    public override void FindMatches(ReadOnlySpan<char> s, List<(int Start, int End)> matches)
    {
        if (_scanner is not null) _scanner(s, matches);
        else _regex!.FindAll(s, matches);
    }
}

/// <summary>Every code point satisfying a predicate is a match of its own (Rust's <c>Fn(char) -> bool</c> pattern).</summary>
internal sealed class CharPredicatePattern(Func<int, bool> predicate) : SplitPattern
{
    public override void FindMatches(ReadOnlySpan<char> s, List<(int Start, int End)> matches)
    {
        for (int i = 0; i < s.Length;)
        {
            int w = char.IsHighSurrogate(s[i]) && i + 1 < s.Length && char.IsLowSurrogate(s[i + 1]) ? 2 : 1;
            int cp = w == 2 ? char.ConvertToUtf32(s[i], s[i + 1]) : s[i];
            if (predicate(cp)) matches.Add((i, i + w));
            i += w;
        }
    }
}

internal static class SplitLogic
{
    /// <summary>
    /// Rust <c>NormalizedString::split</c>: turns the matches of <paramref name="pattern"/> in text[start..end) into the
    /// kept pieces (absolute positions) according to <paramref name="behavior"/>; <paramref name="invert"/> swaps matches and gaps.
    /// </summary>
    public static void Split(ReadOnlySpan<char> text, int start, int end, SplitPattern pattern, SplitBehavior behavior, bool invert,
        List<(int Start, int End)> scratchMatches, List<(int Start, int End, bool IsMatch)> scratch, List<(int Start, int End)> output)
    {
        scratchMatches.Clear();
        scratch.Clear();
        pattern.FindMatches(text[start..end], scratchMatches);
        int prev = 0, len = end - start;
        foreach (var (ms, me) in scratchMatches)
        {
            if (prev != ms) scratch.Add((prev, ms, invert));
            scratch.Add((ms, me, !invert));
            prev = me;
        }
        if (prev != len) scratch.Add((prev, len, invert));

        switch (behavior)
        {
            case SplitBehavior.Isolated:
                foreach (var (s, e, _) in scratch) Emit(s, e);
                break;
            case SplitBehavior.Removed:
                foreach (var (s, e, m) in scratch) if (!m) Emit(s, e);
                break;
            case SplitBehavior.Contiguous:
                {
                    int n0 = output.Count; bool previous = false; bool any = false;
                    foreach (var (s, e, m) in scratch)
                    {
                        if (any && m == previous) output[^1] = (output[^1].Start, start + e);
                        else { output.Add((start + s, start + e)); any = true; }
                        previous = m;
                    }
                    RemoveEmpty(output, n0);
                    break;
                }
            case SplitBehavior.MergedWithPrevious:
                {
                    int n0 = output.Count; bool previous = false; bool any = false;
                    foreach (var (s, e, m) in scratch)
                    {
                        if (m && !previous && any) output[^1] = (output[^1].Start, start + e);
                        else { output.Add((start + s, start + e)); any = true; }
                        previous = m;
                    }
                    RemoveEmpty(output, n0);
                    break;
                }
            case SplitBehavior.MergedWithNext:
                {
                    int n0 = output.Count; bool previous = false;
                    // Walk backwards, extending the piece after a match to start at the match.
                    var rev = new List<(int S, int E)>();
                    for (int i = scratch.Count - 1; i >= 0; i--)
                    {
                        var (s, e, m) = scratch[i];
                        if (m && !previous && rev.Count > 0) rev[^1] = (start + s, rev[^1].E);
                        else rev.Add((start + s, start + e));
                        previous = m;
                    }
                    for (int i = rev.Count - 1; i >= 0; i--) output.Add(rev[i]);
                    RemoveEmpty(output, n0);
                    break;
                }
        }

        void Emit(int s, int e) { if (e > s) output.Add((start + s, start + e)); }
    }

    static void RemoveEmpty(List<(int Start, int End)> output, int from)
    {
        for (int i = output.Count - 1; i >= from; i--) if (output[i].End <= output[i].Start) output.RemoveAt(i);
    }

    public static SplitBehavior ParseBehavior(string? s, string where) => s switch
    {
        "Removed" => SplitBehavior.Removed,
        "Isolated" => SplitBehavior.Isolated,
        "MergedWithPrevious" => SplitBehavior.MergedWithPrevious,
        "MergedWithNext" => SplitBehavior.MergedWithNext,
        "Contiguous" => SplitBehavior.Contiguous,
        _ => throw new FormatException($"{where}: unknown split behavior '{s}' (expected Removed, Isolated, MergedWithPrevious, MergedWithNext or Contiguous)"),
    };
}

using System.Text.Json;

namespace Finetrace.Text.Tokenization;

/// <summary>One entry of tokenizer.json's <c>added_tokens</c>.</summary>
public sealed record AddedToken(int Id, string Content, bool SingleWord, bool LStrip, bool RStrip, bool Normalized, bool Special);

/// <summary>
/// Rust <c>AddedVocabulary</c>: finds added tokens in text, leftmost-longest (as the aho-corasick automaton with
/// <c>MatchKind::LeftmostLongest</c> does), honouring single_word, lstrip and rstrip. Two tries: tokens with
/// <c>normalized: false</c> are matched in the raw text, the others in the normalised segments.
/// </summary>
internal sealed class AddedVocabulary
{
    public readonly List<AddedToken> Tokens = [];
    public readonly Dictionary<int, AddedToken> ById = new();
    public readonly Dictionary<string, AddedToken> ByContent = new(StringComparer.Ordinal);
    public readonly Trie Raw = new(), Normalized = new();

    public AddedVocabulary(JsonElement addedTokens, Normalizer? normalizer)
    {
        if (addedTokens.ValueKind != JsonValueKind.Array) return;
        foreach (var t in addedTokens.EnumerateArray())
        {
            var tok = new AddedToken(t.GetProperty("id").GetInt32(), t.GetProperty("content").GetString() ?? "",
                JsonFields.Bool(t, "single_word", false), JsonFields.Bool(t, "lstrip", false), JsonFields.Bool(t, "rstrip", false),
                JsonFields.Bool(t, "normalized", false), JsonFields.Bool(t, "special", false));
            Tokens.Add(tok);
            ById[tok.Id] = tok;
            ByContent[tok.Content] = tok;
            if (tok.Content.Length == 0) continue;
            if (tok.Normalized) Normalized.Add(normalizer is null ? tok.Content : normalizer.Apply(tok.Content), tok);
            else Raw.Add(tok.Content, tok);
        }
    }

    /// <summary>
    /// Rust <c>find_matches</c>: splits s into (token or null, start, end) pieces covering it; empty pieces are left out.
    /// </summary>
    public static void Split(ReadOnlySpan<char> s, Trie trie, List<(AddedToken? Token, int Start, int End)> output)
    {
        output.Clear();
        if (trie.IsEmpty) { if (s.Length > 0) output.Add((null, 0, s.Length)); return; }
        int startOffset = 0, pos = 0;
        while (pos < s.Length)
        {
            var (tok, len) = trie.LongestAt(s, pos);
            if (tok is null) { pos++; continue; }
            int start = pos, stop = pos + len;
            pos = stop;
            if (tok.SingleWord)
            {
                bool startSpace = start == 0 || !IsWordChar(s, start, before: true);
                bool stopSpace = stop == s.Length || !IsWordChar(s, stop, before: false);
                if (!startSpace || !stopSpace) continue;   // the automaton has already moved past this match
            }
            if (tok.LStrip)
            {
                int ns = start;
                while (ns > 0 && CodePoints.IsWhiteSpace(s[ns - 1])) ns--;
                start = Math.Max(ns, startOffset);
            }
            if (tok.RStrip)
            {
                while (stop < s.Length && CodePoints.IsWhiteSpace(s[stop])) stop++;
                pos = stop;
            }
            if (startOffset < start) output.Add((null, startOffset, start));
            output.Add((tok, start, stop));
            startOffset = stop;
        }
        if (startOffset < s.Length) output.Add((null, startOffset, s.Length));
    }

    /// <summary>Regex <c>\w</c> on the char before/after a position.</summary>
    static bool IsWordChar(ReadOnlySpan<char> s, int at, bool before)
    {
        int cp;
        if (before) cp = at >= 2 && char.IsSurrogatePair(s[at - 2], s[at - 1]) ? char.ConvertToUtf32(s[at - 2], s[at - 1]) : s[at - 1];
        else cp = at + 1 < s.Length && char.IsSurrogatePair(s[at], s[at + 1]) ? char.ConvertToUtf32(s[at], s[at + 1]) : s[at];
        if (cp == '_') return true;
        var c = CodePoints.Category(cp);
        return CodePoints.IsLetter(cp) || c is System.Globalization.UnicodeCategory.DecimalDigitNumber
            or System.Globalization.UnicodeCategory.NonSpacingMark or System.Globalization.UnicodeCategory.SpacingCombiningMark
            or System.Globalization.UnicodeCategory.EnclosingMark or System.Globalization.UnicodeCategory.ConnectorPunctuation;
    }

    /// <summary>A char trie in one hash map keyed by (node, char).</summary>
    internal sealed class Trie
    {
        readonly Dictionary<long, int> _edges = new();
        readonly List<AddedToken?> _terminal = [null];
        readonly bool[] _first = new bool[0x10000];
        public bool IsEmpty => _terminal.Count == 1;

        public void Add(string content, AddedToken tok)
        {
            int node = 0;
            foreach (char c in content)
            {
                long key = ((long)node << 16) | c;
                if (!_edges.TryGetValue(key, out int next))
                {
                    next = _terminal.Count;
                    _terminal.Add(null);
                    _edges[key] = next;
                }
                node = next;
            }
            _first[content[0]] = true;
            _terminal[node] ??= tok;   // the first entry with a given content wins, as in the Rust map
        }

        /// <summary>The longest token starting at pos, with its length.</summary>
        public (AddedToken? Token, int Length) LongestAt(ReadOnlySpan<char> s, int pos)
        {
            if (!_first[s[pos]]) return (null, 0);
            int node = 0;
            AddedToken? best = null;
            int bestLen = 0;
            for (int i = pos; i < s.Length; i++)
            {
                if (!_edges.TryGetValue(((long)node << 16) | s[i], out node)) break;
                if (_terminal[node] is { } t) { best = t; bestLen = i + 1 - pos; }
            }
            return (best, bestLen);
        }
    }
}

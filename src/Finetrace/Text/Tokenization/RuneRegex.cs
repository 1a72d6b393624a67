using System.Globalization;
using System.Text;

namespace Finetrace.Text.Tokenization;

/// <summary>
/// A small backtracking regex engine over code points (not UTF-16 units), with Oniguruma's semantics for the
/// subset tokenizer.json patterns use: ordered alternation, greedy/lazy quantifiers incl. {m,n}, classes with
/// \p{..}/\P{..}, \s \S \d \D \w \W, (?:..), (..), (?i:..) groups, lookahead (?=..) (?!..), ^ $ and '.'.
/// .NET's Regex works on UTF-16 units and misclassifies astral letters (model-facts §13.8); this does not.
/// It is the slow, obvious reference the hand-written scanners in <see cref="PatternScanners"/> are tested against.
/// </summary>
public sealed class RuneRegex
{
    enum Op : byte { Set, Char, CharFold, Any, Split, Jmp, NegLook, PosLook, Match, Bol, Eol }
    readonly record struct Inst(Op Op, int A, int B);

    readonly List<Inst> _prog = [];
    readonly List<CharSet> _sets = [];
    public string Pattern { get; }

    public RuneRegex(string pattern)
    {
        Pattern = pattern;
        var parser = new Parser(pattern, this);
        var node = parser.ParseAll();
        Emit(node);
        _prog.Add(new Inst(Op.Match, 0, 0));
    }

    /// <summary>Appends every non-empty leftmost-first match [start, end) of <paramref name="s"/> (positions in UTF-16 units).</summary>
    public void FindAll(ReadOnlySpan<char> s, List<(int Start, int End)> matches)
    {
        int pos = 0;
        while (pos < s.Length)
        {
            int start = pos, end = -1;
            for (; start < s.Length; start += RuneWidth(s, start))
                if (Run(s, 0, start, 0, out end)) break;
            if (end < 0) break;
            if (end == start) { pos = start + RuneWidth(s, start); continue; }
            matches.Add((start, end));
            pos = end;
        }
    }

    /// <summary>The end of the match starting exactly at <paramref name="pos"/>, or -1.</summary>
    public int MatchAt(ReadOnlySpan<char> s, int pos) => Run(s, 0, pos, 0, out int end) ? end : -1;

    static int RuneWidth(ReadOnlySpan<char> s, int i) =>
        char.IsHighSurrogate(s[i]) && i + 1 < s.Length && char.IsLowSurrogate(s[i + 1]) ? 2 : 1;

    static int DecodeAt(ReadOnlySpan<char> s, int i, out int width)
    {
        char c = s[i];
        if (char.IsHighSurrogate(c) && i + 1 < s.Length && char.IsLowSurrogate(s[i + 1])) { width = 2; return char.ConvertToUtf32(c, s[i + 1]); }
        width = 1;
        return c;
    }

    [ThreadStatic] static int[]? t_stack;

    bool Run(ReadOnlySpan<char> s, int startPc, int startPos, int baseSp, out int end)
    {
        var stack = t_stack ??= new int[256];
        int sp = baseSp, pc = startPc, pos = startPos;
        var prog = System.Runtime.InteropServices.CollectionsMarshal.AsSpan(_prog);
        while (true)
        {
            var inst = prog[pc];
            bool ok;
            switch (inst.Op)
            {
                case Op.Set:
                case Op.Char:
                case Op.CharFold:
                case Op.Any:
                    {
                        if (pos >= s.Length) { ok = false; break; }
                        int cp = DecodeAt(s, pos, out int w);
                        ok = inst.Op switch
                        {
                            Op.Set => _sets[inst.A].Contains(cp),
                            Op.Char => cp == inst.A,
                            Op.CharFold => Fold(cp) == inst.A,
                            _ => cp != '\n',
                        };
                        if (ok) { pos += w; pc++; continue; }
                        break;
                    }
                case Op.Split:
                    if (sp + 2 > stack.Length) { Array.Resize(ref stack, stack.Length * 2); t_stack = stack; }
                    stack[sp++] = inst.B; stack[sp++] = pos;
                    pc = inst.A;
                    continue;
                case Op.Jmp: pc = inst.A; continue;
                case Op.NegLook:
                case Op.PosLook:
                    {
                        // The nested run uses the thread's stack above our entries (and may grow it).
                        bool found = Run(s, pc + 1, pos, sp, out _);
                        stack = t_stack!;
                        ok = found == (inst.Op == Op.PosLook);
                        if (ok) { pc = inst.A; continue; }
                        break;
                    }
                case Op.Bol: if (pos == 0 || s[pos - 1] == '\n') { pc++; continue; } ok = false; break;
                case Op.Eol: if (pos == s.Length || s[pos] == '\n') { pc++; continue; } ok = false; break;
                case Op.Match: end = pos; return true;
            }
            if (sp == baseSp) { end = -1; return false; }
            pos = stack[--sp]; pc = stack[--sp];
        }
    }

    /// <summary>Simple case folding as Oniguruma applies it to literals under (?i).</summary>
    internal static int Fold(int cp)
    {
        if (cp < 128) return cp is >= 'A' and <= 'Z' ? cp + 32 : cp;
        if (cp == 0x17F) return 's';      // LATIN SMALL LETTER LONG S folds to s
        if (cp == 0x212A) return 'k';     // KELVIN SIGN
        if (cp == 0x212B) return 0xE5;    // ANGSTROM SIGN
        return cp < 0x10000 ? char.ToLowerInvariant((char)cp) : Rune.ToLowerInvariant(new Rune(cp)).Value;
    }

    // ---- compilation ----

    abstract record Node;
    sealed record AltNode(List<Node> Items) : Node;
    sealed record CatNode(List<Node> Items) : Node;
    sealed record RepNode(Node Item, int Min, int Max, bool Lazy) : Node;
    sealed record SetNode(int SetIndex) : Node;
    sealed record LitNode(int Cp, bool Fold) : Node;
    sealed record LookNode(Node Item, bool Negative) : Node;
    sealed record SimpleNode(Op Op) : Node;

    int Here => _prog.Count;
    int Add(Op op, int a = 0, int b = 0) { _prog.Add(new Inst(op, a, b)); return _prog.Count - 1; }
    void Patch(int at, int a, int b) => _prog[at] = _prog[at] with { A = a, B = b };

    void Emit(Node node)
    {
        switch (node)
        {
            case CatNode c: foreach (var n in c.Items) Emit(n); break;
            case AltNode a:
                {
                    var jumps = new List<int>();
                    for (int i = 0; i < a.Items.Count; i++)
                    {
                        if (i < a.Items.Count - 1)
                        {
                            int split = Add(Op.Split);
                            Emit(a.Items[i]);
                            jumps.Add(Add(Op.Jmp));
                            Patch(split, split + 1, Here);
                        }
                        else Emit(a.Items[i]);
                    }
                    foreach (int j in jumps) Patch(j, Here, 0);
                    break;
                }
            case RepNode r:
                {
                    for (int i = 0; i < r.Min; i++) Emit(r.Item);
                    if (r.Max < 0)
                    {
                        int loop = Add(Op.Split);
                        Emit(r.Item);
                        Add(Op.Jmp, loop);
                        Patch(loop, r.Lazy ? Here : loop + 1, r.Lazy ? loop + 1 : Here);
                    }
                    else
                    {
                        var splits = new List<int>();
                        for (int i = r.Min; i < r.Max; i++) { splits.Add(Add(Op.Split)); Emit(r.Item); }
                        foreach (int sIdx in splits) Patch(sIdx, r.Lazy ? Here : sIdx + 1, r.Lazy ? sIdx + 1 : Here);
                    }
                    break;
                }
            case SetNode s: Add(Op.Set, s.SetIndex); break;
            case LitNode l: Add(l.Fold ? Op.CharFold : Op.Char, l.Fold ? Fold(l.Cp) : l.Cp); break;
            case LookNode look:
                {
                    int at = Add(look.Negative ? Op.NegLook : Op.PosLook);
                    Emit(look.Item);
                    Add(Op.Match);
                    Patch(at, Here, 0);
                    break;
                }
            case SimpleNode sn: Add(sn.Op); break;
        }
    }

    sealed class Parser(string pattern, RuneRegex owner)
    {
        int _i;
        bool _fold;

        Exception Error(string what) => new FormatException($"regex pattern {pattern}: {what} at position {_i}");

        public Node ParseAll()
        {
            var n = ParseAlt();
            if (_i < pattern.Length) throw Error($"unexpected '{pattern[_i]}'");
            return n;
        }

        bool More => _i < pattern.Length;
        char Peek => pattern[_i];

        int NextRune()
        {
            int cp = char.ConvertToUtf32(pattern, _i);
            _i += cp >= 0x10000 ? 2 : 1;
            return cp;
        }

        Node ParseAlt()
        {
            var items = new List<Node> { ParseCat() };
            while (More && Peek == '|') { _i++; items.Add(ParseCat()); }
            return items.Count == 1 ? items[0] : new AltNode(items);
        }

        Node ParseCat()
        {
            var items = new List<Node>();
            while (More && Peek != '|' && Peek != ')') items.Add(ParseRepeat());
            return items.Count == 1 ? items[0] : new CatNode(items);
        }

        Node ParseRepeat()
        {
            var atom = ParseAtom();
            while (More)
            {
                int min, max;
                char c = Peek;
                if (c == '*') { min = 0; max = -1; _i++; }
                else if (c == '+') { min = 1; max = -1; _i++; }
                else if (c == '?') { min = 0; max = 1; _i++; }
                else if (c == '{' && TryParseCount(out min, out max)) { }
                else break;
                bool lazy = false;
                if (More && Peek == '?') { lazy = true; _i++; }
                else if (More && Peek == '+') throw Error("possessive quantifiers are not supported");
                atom = new RepNode(atom, min, max, lazy);
            }
            return atom;
        }

        bool TryParseCount(out int min, out int max)
        {
            min = max = 0;
            int close = pattern.IndexOf('}', _i);
            if (close < 0) return false;
            var body = pattern.AsSpan(_i + 1, close - _i - 1);
            int comma = body.IndexOf(',');
            if (comma < 0)
            {
                if (!int.TryParse(body, NumberStyles.None, CultureInfo.InvariantCulture, out min)) return false;
                max = min;
            }
            else
            {
                if (!int.TryParse(body[..comma], NumberStyles.None, CultureInfo.InvariantCulture, out min) && comma > 0) return false;
                var hi = body[(comma + 1)..];
                if (hi.Length == 0) max = -1;
                else if (!int.TryParse(hi, NumberStyles.None, CultureInfo.InvariantCulture, out max)) return false;
            }
            _i = close + 1;
            return true;
        }

        Node ParseAtom()
        {
            char c = Peek;
            switch (c)
            {
                case '(':
                    {
                        _i++;
                        bool savedFold = _fold;
                        Node inner;
                        if (More && Peek == '?')
                        {
                            _i++;
                            if (!More) throw Error("unterminated group");
                            char k = Peek;
                            if (k == ':') { _i++; inner = ParseAlt(); }
                            else if (k == '=' || k == '!') { _i++; inner = new LookNode(ParseAlt(), k == '!'); }
                            else
                            {
                                // Inline flags: (?i:...), (?-i:...), (?i) for the rest of the group.
                                bool on = true, sawColon = false;
                                while (More && Peek != ':' && Peek != ')')
                                {
                                    char f = pattern[_i++];
                                    if (f == '-') on = false;
                                    else if (f == 'i') _fold = on;
                                    else if (f is 'x' or 'm' or 's') throw Error($"flag '{f}' is not supported");
                                    else throw Error($"unknown group syntax (?{f}");
                                }
                                if (More && Peek == ':') { sawColon = true; _i++; }
                                if (!sawColon)
                                {
                                    if (!More) throw Error("unterminated group");
                                    _i++; // ')': flags apply to the rest of the enclosing group
                                    return new CatNode([]);
                                }
                                inner = ParseAlt();
                            }
                        }
                        else inner = ParseAlt();
                        if (!More || Peek != ')') throw Error("missing ')'");
                        _i++;
                        _fold = savedFold;
                        return inner;
                    }
                case '[': return new SetNode(owner.AddSet(ParseClass()));
                case '.': _i++; return new SimpleNode(Op.Any);
                case '^': _i++; return new SimpleNode(Op.Bol);
                case '$': _i++; return new SimpleNode(Op.Eol);
                case '\\':
                    {
                        _i++;
                        var set = new CharSet();
                        int cp = ParseEscape(set, out bool isSet);
                        return isSet ? new SetNode(owner.AddSet(set)) : Literal(cp);
                    }
                case ')': throw Error("unbalanced ')'");
                case '*' or '+' or '?': throw Error($"nothing to repeat before '{c}'");
                default: return Literal(NextRune());
            }
        }

        Node Literal(int cp) => new LitNode(cp, _fold && RuneRegex.Fold(cp) != cp || _fold && IsCased(cp));

        static bool IsCased(int cp) => cp < 0x10000 ? char.ToUpperInvariant((char)cp) != cp || char.ToLowerInvariant((char)cp) != cp : false;

        /// <summary>Parses after a backslash. Either returns a literal code point or fills <paramref name="set"/>.</summary>
        int ParseEscape(CharSet set, out bool isSet)
        {
            isSet = false;
            if (!More) throw Error("trailing backslash");
            char c = pattern[_i++];
            switch (c)
            {
                case 'n': return '\n';
                case 'r': return '\r';
                case 't': return '\t';
                case 'f': return '\f';
                case 'v': return '\v';
                case 'a': return '\a';
                case 'e': return 0x1B;
                case '0': return 0;
                case 'x':
                    {
                        if (More && Peek == '{')
                        {
                            int close = pattern.IndexOf('}', _i);
                            int v = int.Parse(pattern.AsSpan(_i + 1, close - _i - 1), NumberStyles.HexNumber, CultureInfo.InvariantCulture);
                            _i = close + 1;
                            return v;
                        }
                        int h = int.Parse(pattern.AsSpan(_i, 2), NumberStyles.HexNumber, CultureInfo.InvariantCulture);
                        _i += 2;
                        return h;
                    }
                case 'u':
                    {
                        int h = int.Parse(pattern.AsSpan(_i, 4), NumberStyles.HexNumber, CultureInfo.InvariantCulture);
                        _i += 4;
                        return h;
                    }
                case 's': isSet = true; set.Space = true; return 0;
                case 'S': isSet = true; set.NotSpace = true; return 0;
                case 'd': isSet = true; set.Categories |= Bit(UnicodeCategory.DecimalDigitNumber); return 0;
                case 'D': isSet = true; set.NotCategories.Add(Bit(UnicodeCategory.DecimalDigitNumber)); return 0;
                case 'w': isSet = true; set.Categories |= WordMask; return 0;
                case 'W': isSet = true; set.NotCategories.Add(WordMask); return 0;
                case 'p':
                case 'P':
                    {
                        if (!More || Peek != '{') throw Error("expected '{' after \\p");
                        int close = pattern.IndexOf('}', _i);
                        if (close < 0) throw Error("unterminated \\p{");
                        string name = pattern.Substring(_i + 1, close - _i - 1);
                        _i = close + 1;
                        bool neg = c == 'P';
                        if (name.StartsWith('^')) { neg = !neg; name = name[1..]; }
                        ulong mask = CategoryMask(name) ?? throw Error($"unsupported property \\p{{{name}}}");
                        isSet = true;
                        if (neg) set.NotCategories.Add(mask); else set.Categories |= mask;
                        return 0;
                    }
                default:
                    if (char.IsAsciiLetterOrDigit(c)) throw Error($"unsupported escape \\{c}");
                    _i--;
                    return NextRune();
            }
        }

        CharSet ParseClass()
        {
            _i++; // '['
            var set = new CharSet();
            if (More && Peek == '^') { set.Negated = true; _i++; }
            bool first = true;
            while (true)
            {
                if (!More) throw Error("unterminated character class");
                char c = Peek;
                if (c == ']' && !first) { _i++; break; }
                first = false;
                if (c == '[') throw Error("nested classes are not supported");
                int lo;
                if (c == '\\')
                {
                    _i++;
                    lo = ParseEscape(set, out bool isSet);
                    if (isSet) continue;
                }
                else lo = NextRune();
                if (More && Peek == '-' && _i + 1 < pattern.Length && pattern[_i + 1] != ']')
                {
                    _i++;
                    int hi;
                    if (Peek == '\\') { _i++; hi = ParseEscape(set, out bool hiSet); if (hiSet) throw Error("class range ends in a class"); }
                    else hi = NextRune();
                    if (hi < lo) throw Error("class range out of order");
                    set.Ranges.Add((lo, hi));
                }
                else set.Ranges.Add((lo, lo));
            }
            set.Freeze();
            return set;
        }
    }

    int AddSet(CharSet set) { set.Freeze(); _sets.Add(set); return _sets.Count - 1; }

    static ulong Bit(UnicodeCategory c) => 1UL << (int)c;

    static readonly ulong WordMask =
        Bit(UnicodeCategory.UppercaseLetter) | Bit(UnicodeCategory.LowercaseLetter) | Bit(UnicodeCategory.TitlecaseLetter) |
        Bit(UnicodeCategory.ModifierLetter) | Bit(UnicodeCategory.OtherLetter) | Bit(UnicodeCategory.NonSpacingMark) |
        Bit(UnicodeCategory.SpacingCombiningMark) | Bit(UnicodeCategory.EnclosingMark) | Bit(UnicodeCategory.DecimalDigitNumber) |
        Bit(UnicodeCategory.ConnectorPunctuation);

    internal static ulong? CategoryMask(string name) => name switch
    {
        "L" or "Letter" => Bit(UnicodeCategory.UppercaseLetter) | Bit(UnicodeCategory.LowercaseLetter) | Bit(UnicodeCategory.TitlecaseLetter) | Bit(UnicodeCategory.ModifierLetter) | Bit(UnicodeCategory.OtherLetter),
        "Lu" or "Uppercase_Letter" => Bit(UnicodeCategory.UppercaseLetter),
        "Ll" or "Lowercase_Letter" => Bit(UnicodeCategory.LowercaseLetter),
        "Lt" or "Titlecase_Letter" => Bit(UnicodeCategory.TitlecaseLetter),
        "Lm" or "Modifier_Letter" => Bit(UnicodeCategory.ModifierLetter),
        "Lo" or "Other_Letter" => Bit(UnicodeCategory.OtherLetter),
        "M" or "Mark" => Bit(UnicodeCategory.NonSpacingMark) | Bit(UnicodeCategory.SpacingCombiningMark) | Bit(UnicodeCategory.EnclosingMark),
        "Mn" => Bit(UnicodeCategory.NonSpacingMark),
        "Mc" => Bit(UnicodeCategory.SpacingCombiningMark),
        "Me" => Bit(UnicodeCategory.EnclosingMark),
        "N" or "Number" => Bit(UnicodeCategory.DecimalDigitNumber) | Bit(UnicodeCategory.LetterNumber) | Bit(UnicodeCategory.OtherNumber),
        "Nd" => Bit(UnicodeCategory.DecimalDigitNumber),
        "Nl" => Bit(UnicodeCategory.LetterNumber),
        "No" => Bit(UnicodeCategory.OtherNumber),
        "P" or "Punctuation" => Bit(UnicodeCategory.ConnectorPunctuation) | Bit(UnicodeCategory.DashPunctuation) | Bit(UnicodeCategory.OpenPunctuation) | Bit(UnicodeCategory.ClosePunctuation) | Bit(UnicodeCategory.InitialQuotePunctuation) | Bit(UnicodeCategory.FinalQuotePunctuation) | Bit(UnicodeCategory.OtherPunctuation),
        "Pc" => Bit(UnicodeCategory.ConnectorPunctuation),
        "Pd" => Bit(UnicodeCategory.DashPunctuation),
        "Ps" => Bit(UnicodeCategory.OpenPunctuation),
        "Pe" => Bit(UnicodeCategory.ClosePunctuation),
        "Pi" => Bit(UnicodeCategory.InitialQuotePunctuation),
        "Pf" => Bit(UnicodeCategory.FinalQuotePunctuation),
        "Po" => Bit(UnicodeCategory.OtherPunctuation),
        "S" or "Symbol" => Bit(UnicodeCategory.MathSymbol) | Bit(UnicodeCategory.CurrencySymbol) | Bit(UnicodeCategory.ModifierSymbol) | Bit(UnicodeCategory.OtherSymbol),
        "Sm" => Bit(UnicodeCategory.MathSymbol),
        "Sc" => Bit(UnicodeCategory.CurrencySymbol),
        "Sk" => Bit(UnicodeCategory.ModifierSymbol),
        "So" => Bit(UnicodeCategory.OtherSymbol),
        "Z" or "Separator" => Bit(UnicodeCategory.SpaceSeparator) | Bit(UnicodeCategory.LineSeparator) | Bit(UnicodeCategory.ParagraphSeparator),
        "Zs" => Bit(UnicodeCategory.SpaceSeparator),
        "Zl" => Bit(UnicodeCategory.LineSeparator),
        "Zp" => Bit(UnicodeCategory.ParagraphSeparator),
        "C" or "Other" => Bit(UnicodeCategory.Control) | Bit(UnicodeCategory.Format) | Bit(UnicodeCategory.Surrogate) | Bit(UnicodeCategory.PrivateUse) | Bit(UnicodeCategory.OtherNotAssigned),
        "Cc" => Bit(UnicodeCategory.Control),
        "Cf" => Bit(UnicodeCategory.Format),
        "Cs" => Bit(UnicodeCategory.Surrogate),
        "Co" => Bit(UnicodeCategory.PrivateUse),
        "Cn" => Bit(UnicodeCategory.OtherNotAssigned),
        _ => null,
    };

    /// <summary>A character class: union of ranges, general categories, \s/\S and negated categories, optionally negated.</summary>
    internal sealed class CharSet
    {
        public readonly List<(int Lo, int Hi)> Ranges = [];
        public ulong Categories;
        public readonly List<ulong> NotCategories = [];
        public bool Space, NotSpace, Negated;
        ulong _asciiLo, _asciiHi;
        bool _frozen;

        public void Freeze()
        {
            if (_frozen) return;
            _frozen = true;
            ulong lo = 0, hi = 0;
            for (int c = 0; c < 128; c++)
                if (Slow(c)) { if (c < 64) lo |= 1UL << c; else hi |= 1UL << (c - 64); }
            _asciiLo = lo; _asciiHi = hi;
        }

        public bool Contains(int cp)
        {
            if (cp < 64) return (_asciiLo >> cp & 1) != 0;
            if (cp < 128) return (_asciiHi >> (cp - 64) & 1) != 0;
            return Slow(cp);
        }

        bool Slow(int cp)
        {
            bool m = false;
            foreach (var (lo, hi) in Ranges) if (cp >= lo && cp <= hi) { m = true; break; }
            if (!m && (Categories != 0 || NotCategories.Count > 0))
            {
                ulong bit = 1UL << (int)CodePoints.Category(cp);
                if ((Categories & bit) != 0) m = true;
                else foreach (var nc in NotCategories) if ((nc & bit) == 0) { m = true; break; }
            }
            if (!m && Space && CodePoints.IsWhiteSpace(cp)) m = true;
            if (!m && NotSpace && !CodePoints.IsWhiteSpace(cp)) m = true;
            return m ^ Negated;
        }
    }
}

/// <summary>Code point classification as Rust/Oniguruma see it.</summary>
internal static class CodePoints
{
    public static UnicodeCategory Category(int cp) =>
        cp < 0x10000 ? CharUnicodeInfo.GetUnicodeCategory((char)cp) : Rune.GetUnicodeCategory(new Rune(cp));

    /// <summary>The Unicode White_Space property (Rust <c>char::is_whitespace</c>, Oniguruma <c>\s</c>): includes U+0085, excludes U+FEFF.</summary>
    public static bool IsWhiteSpace(int cp) => cp switch
    {
        >= 0x09 and <= 0x0D or 0x20 or 0x85 or 0xA0 or 0x1680 or >= 0x2000 and <= 0x200A or 0x2028 or 0x2029 or 0x202F or 0x205F or 0x3000 => true,
        _ => false,
    };

    public static bool IsLetter(int cp)
    {
        if (cp < 128) return (uint)((cp | 0x20) - 'a') <= 'z' - 'a';
        var c = Category(cp);
        return c <= UnicodeCategory.OtherLetter;
    }

    public static bool IsNumber(int cp)
    {
        if (cp < 128) return (uint)(cp - '0') <= 9;
        var c = Category(cp);
        return c is UnicodeCategory.DecimalDigitNumber or UnicodeCategory.LetterNumber or UnicodeCategory.OtherNumber;
    }
}

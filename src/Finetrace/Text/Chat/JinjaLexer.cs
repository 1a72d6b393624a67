using System.Globalization;
using System.Text;

namespace Finetrace.Text.Chat;

enum TokKind { Data, VarBegin, VarEnd, BlockBegin, BlockEnd, Name, String, Int, Float, Op, Eof }

readonly record struct Tok(TokKind Kind, string Text, object? Value, int Line)
{
    public bool Is(TokKind k, string text) => Kind == k && Text == text;
    public override string ToString() => Kind switch { TokKind.Eof => "end of template", TokKind.BlockEnd => "end of statement block", TokKind.VarEnd => "end of print statement", _ => $"'{Text}'" };
}

/// <summary>Jinja's lexer with the environment transformers uses: trim_blocks, lstrip_blocks,
/// keep_trailing_newline=false, newlines normalised to \n, `-` / `+` whitespace control.</summary>
static class JinjaLexer
{
    static readonly string[] Ops = ["//", "**", "==", "!=", ">=", "<=", "+", "-", "/", "*", "%", "~", "[", "]", "(", ")", "{", "}", ">", "<", "=", ".", ":", "|", ",", ";"];

    public static List<Tok> Tokenize(string source, bool trimBlocks = true, bool lstripBlocks = true)
    {
        string src = NormalizeNewlines(source);
        if (src.EndsWith('\n')) src = src[..^1];
        var toks = new List<Tok>();
        int pos = 0, n = src.Length, line = 1;
        bool lineStarting = true;
        while (pos < n)
        {
            int start = FindTagStart(src, pos);
            if (start < 0) { toks.Add(new Tok(TokKind.Data, "", src[pos..], line)); break; }
            string text = src[pos..start];
            char kind = src[start + 1]; // '{', '%' or '#'
            int p = start + 2;
            char sign = p < n && (src[p] == '-' || src[p] == '+') ? src[p] : '\0';
            if (sign != '\0') p++;
            int rawBodyStart = -1;
            bool isRaw = kind == '%' && TryMatchRawBegin(src, start, out rawBodyStart);
            text = ApplyLeftStrip(text, sign, kind != '{', lstripBlocks, lineStarting);
            if (text.Length > 0) toks.Add(new Tok(TokKind.Data, "", text, line));
            line += CountNewlines(src, pos, start);

            if (isRaw)
            {
                int endStart = FindRawEnd(src, rawBodyStart, out int endSignPos, out int endEnd, trimBlocks);
                if (endStart < 0) throw Syntax("Missing end of raw directive", line);
                char endSign = endSignPos >= 0 ? src[endSignPos] : '\0';
                string raw = ApplyLeftStrip(src[rawBodyStart..endStart], endSign, true, lstripBlocks, src[rawBodyStart - 1] == '\n');
                if (raw.Length > 0) toks.Add(new Tok(TokKind.Data, "", raw, line));
                line += CountNewlines(src, start, endEnd);
                lineStarting = endEnd > 0 && src[endEnd - 1] == '\n';
                pos = endEnd;
                continue;
            }
            if (kind == '#')
            {
                int e = src.IndexOf("#}", p, StringComparison.Ordinal);
                if (e < 0) throw Syntax("Missing end of comment tag", line);
                char endSign = e - 1 >= p && (src[e - 1] == '-' || src[e - 1] == '+') ? src[e - 1] : '\0';
                int end = e + 2;
                end = ApplyRightStrip(src, end, endSign, trimBlocks);
                line += CountNewlines(src, start, end);
                lineStarting = src[end - 1] == '\n';
                pos = end;
                continue;
            }
            bool isVar = kind == '{';
            toks.Add(new Tok(isVar ? TokKind.VarBegin : TokKind.BlockBegin, "", null, line));
            pos = LexExpression(src, p, isVar, trimBlocks, toks, ref line, out lineStarting);
        }
        toks.Add(new Tok(TokKind.Eof, "", null, line));
        return toks;
    }

    static TemplateException Syntax(string msg, int line) => new("TemplateSyntaxError", $"{msg} (line {line})");

    static int CountNewlines(string s, int a, int b)
    {
        int c = 0;
        for (int i = a; i < b; i++) if (s[i] == '\n') c++;
        return c;
    }

    public static string NormalizeNewlines(string s) =>
        s.Contains('\r') ? s.Replace("\r\n", "\n").Replace('\r', '\n') : s;

    static int FindTagStart(string s, int from)
    {
        for (int i = s.IndexOf('{', from); i >= 0 && i + 1 < s.Length; i = s.IndexOf('{', i + 1))
        {
            char c = s[i + 1];
            if (c == '{' || c == '%' || c == '#') return i;
        }
        return -1;
    }

    static string ApplyLeftStrip(string text, char sign, bool isBlockOrComment, bool lstripBlocks, bool lineStarting)
    {
        if (sign == '-') return PyStr.Strip(text, null, false, true);
        if (sign != '+' && lstripBlocks && isBlockOrComment)
        {
            int lpos = text.LastIndexOf('\n') + 1;
            if ((lpos > 0 || lineStarting) && lpos < text.Length)
            {
                bool allSpace = true;
                for (int i = lpos; i < text.Length; i++) if (!PyStr.IsSpace(text[i])) { allSpace = false; break; }
                if (allSpace) return text[..lpos];
            }
        }
        return text;
    }

    /// <summary>After a tag end at <paramref name="end"/>: `-` eats all whitespace, otherwise trim_blocks eats one newline.</summary>
    static int ApplyRightStrip(string s, int end, char sign, bool trimBlocks)
    {
        if (sign == '-') { while (end < s.Length && PyStr.IsSpace(s[end])) end++; }
        else if (sign != '+' && trimBlocks && end < s.Length && s[end] == '\n') end++;
        return end;
    }

    static bool TryMatchRawBegin(string s, int start, out int bodyStart)
    {
        // {%(-|+|)\s*raw\s*(-%}\s*|%})
        bodyStart = -1;
        int p = start + 2;
        if (p < s.Length && (s[p] == '-' || s[p] == '+')) p++;
        while (p < s.Length && PyStr.IsSpace(s[p])) p++;
        if (string.CompareOrdinal(s, p, "raw", 0, 3) != 0) return false;
        p += 3;
        int q = p;
        while (q < s.Length && PyStr.IsSpace(s[q])) q++;
        if (q == p && q < s.Length && (char.IsLetterOrDigit(s[q]) || s[q] == '_')) return false;
        if (string.CompareOrdinal(s, q, "-%}", 0, 3) == 0)
        {
            q += 3;
            while (q < s.Length && PyStr.IsSpace(s[q])) q++;
            bodyStart = q;
            return true;
        }
        if (string.CompareOrdinal(s, q, "%}", 0, 2) == 0) { bodyStart = q + 2; return true; }
        return false;
    }

    static int FindRawEnd(string s, int from, out int signPos, out int end, bool trimBlocks)
    {
        for (int i = s.IndexOf("{%", from, StringComparison.Ordinal); i >= 0; i = s.IndexOf("{%", i + 1, StringComparison.Ordinal))
        {
            int p = i + 2;
            signPos = -1;
            if (p < s.Length && (s[p] == '-' || s[p] == '+')) { signPos = p; p++; }
            while (p < s.Length && PyStr.IsSpace(s[p])) p++;
            if (string.CompareOrdinal(s, p, "endraw", 0, 6) != 0) continue;
            p += 6;
            while (p < s.Length && PyStr.IsSpace(s[p])) p++;
            if (string.CompareOrdinal(s, p, "-%}", 0, 3) == 0) { end = ApplyRightStrip(s, p + 3, '-', trimBlocks); return i; }
            if (string.CompareOrdinal(s, p, "+%}", 0, 3) == 0) { end = p + 3; return i; }
            if (string.CompareOrdinal(s, p, "%}", 0, 2) == 0) { end = ApplyRightStrip(s, p + 2, '\0', trimBlocks); return i; }
        }
        signPos = -1; end = -1;
        return -1;
    }

    static int LexExpression(string s, int p, bool isVar, bool trimBlocks, List<Tok> toks, ref int line, out bool lineStarting)
    {
        var balance = new Stack<char>();
        int n = s.Length;
        string close = isVar ? "}}" : "%}";
        while (true)
        {
            if (p >= n) throw Syntax($"unexpected end of template, expected '{close}'", line);
            if (balance.Count == 0)
            {
                // End of tag: -}} / +%} / %} (trim_blocks) / }}
                char c0 = s[p];
                if ((c0 == '-' || c0 == '+') && string.CompareOrdinal(s, p + 1, close, 0, 2) == 0 && !(c0 == '+' && isVar))
                {
                    int end = ApplyRightStrip(s, p + 3, c0, isVar ? false : trimBlocks);
                    line += CountNewlines(s, p, end);
                    toks.Add(new Tok(isVar ? TokKind.VarEnd : TokKind.BlockEnd, "", null, line));
                    lineStarting = s[end - 1] == '\n';
                    return end;
                }
                if (string.CompareOrdinal(s, p, close, 0, 2) == 0)
                {
                    int end = isVar ? p + 2 : ApplyRightStrip(s, p + 2, '\0', trimBlocks);
                    line += CountNewlines(s, p, end);
                    toks.Add(new Tok(isVar ? TokKind.VarEnd : TokKind.BlockEnd, "", null, line));
                    lineStarting = s[end - 1] == '\n';
                    return end;
                }
            }
            char c = s[p];
            if (PyStr.IsSpace(c)) { if (c == '\n') line++; p++; continue; }
            if (char.IsDigit(c) && c < 128)
            {
                p = LexNumber(s, p, toks, line);
                continue;
            }
            if (c == '_' || char.IsLetter(c))
            {
                int q = p + 1;
                while (q < n && (s[q] == '_' || char.IsLetterOrDigit(s[q]))) q++;
                toks.Add(new Tok(TokKind.Name, s[p..q], null, line));
                p = q;
                continue;
            }
            if (c == '\'' || c == '"')
            {
                int q = p + 1;
                while (q < n && s[q] != c) { if (s[q] == '\\') q++; q++; }
                if (q >= n) throw Syntax("unexpected end of string", line);
                string raw = s[(p + 1)..q];
                toks.Add(new Tok(TokKind.String, s[p..(q + 1)], Unescape(raw, line), line));
                line += CountNewlines(s, p, q);
                p = q + 1;
                continue;
            }
            string? op = null;
            foreach (var o in Ops) if (string.CompareOrdinal(s, p, o, 0, o.Length) == 0) { op = o; break; }
            if (op is null) throw Syntax($"unexpected char '{c}' at {p}", line);
            if (op is "(" or "[" or "{") balance.Push(op switch { "(" => ')', "[" => ']', _ => '}' });
            else if (op is ")" or "]" or "}")
            {
                if (balance.Count == 0) throw Syntax($"unexpected '{op}'", line);
                char expected = balance.Pop();
                if (expected != op[0]) throw Syntax($"unexpected '{op}', expected '{expected}'", line);
            }
            toks.Add(new Tok(TokKind.Op, op, null, line));
            p += op.Length;
        }
    }

    static int LexNumber(string s, int p, List<Tok> toks, int line)
    {
        int n = s.Length;
        // Prefixed integers 0x / 0o / 0b.
        if (s[p] == '0' && p + 1 < n && "xXoObB".Contains(s[p + 1]))
        {
            int radix = char.ToLowerInvariant(s[p + 1]) switch { 'x' => 16, 'o' => 8, _ => 2 };
            int q = p + 2;
            while (q < n && (Uri.IsHexDigit(s[q]) || s[q] == '_')) q++;
            string digits = s[(p + 2)..q].Replace("_", "");
            toks.Add(new Tok(TokKind.Int, s[p..q], Convert.ToInt64(digits, radix), line));
            return q;
        }
        int i = p;
        while (i < n && (char.IsAsciiDigit(s[i]) || (s[i] == '_' && i + 1 < n && char.IsAsciiDigit(s[i + 1])))) i++;
        bool isFloat = false;
        int j = i;
        if (j + 1 < n && s[j] == '.' && char.IsAsciiDigit(s[j + 1]))
        {
            j++;
            while (j < n && (char.IsAsciiDigit(s[j]) || (s[j] == '_' && j + 1 < n && char.IsAsciiDigit(s[j + 1])))) j++;
            isFloat = true;
        }
        if (j < n && (s[j] == 'e' || s[j] == 'E'))
        {
            int k = j + 1;
            if (k < n && (s[k] == '+' || s[k] == '-')) k++;
            if (k < n && char.IsAsciiDigit(s[k]))
            {
                while (k < n && (char.IsAsciiDigit(s[k]) || s[k] == '_')) k++;
                j = k;
                isFloat = true;
            }
        }
        string text = s[p..(isFloat ? j : i)].Replace("_", "");
        if (isFloat) toks.Add(new Tok(TokKind.Float, text, double.Parse(text, NumberStyles.Float, CultureInfo.InvariantCulture), line));
        else toks.Add(new Tok(TokKind.Int, text, long.Parse(text, CultureInfo.InvariantCulture), line));
        return isFloat ? j : i;
    }

    /// <summary>Python's "unicode-escape" decoding of a string literal body.</summary>
    static string Unescape(string raw, int line)
    {
        if (!raw.Contains('\\')) return raw;
        var sb = new StringBuilder(raw.Length);
        for (int i = 0; i < raw.Length; i++)
        {
            char c = raw[i];
            if (c != '\\' || i + 1 >= raw.Length) { sb.Append(c); continue; }
            char e = raw[++i];
            switch (e)
            {
                case '\n': break;
                case '\\': sb.Append('\\'); break;
                case '\'': sb.Append('\''); break;
                case '"': sb.Append('"'); break;
                case 'a': sb.Append('\a'); break;
                case 'b': sb.Append('\b'); break;
                case 'f': sb.Append('\f'); break;
                case 'n': sb.Append('\n'); break;
                case 'r': sb.Append('\r'); break;
                case 't': sb.Append('\t'); break;
                case 'v': sb.Append('\v'); break;
                case 'x': sb.Append((char)Hex(raw, ref i, 2, line)); break;
                case 'u': sb.Append((char)Hex(raw, ref i, 4, line)); break;
                case 'U': sb.Append(char.ConvertFromUtf32(Hex(raw, ref i, 8, line))); break;
                case 'N': throw Syntax("malformed \\N character escape (named escapes are not supported)", line);
                case >= '0' and <= '7':
                    {
                        int v = e - '0', k = 1;
                        while (k < 3 && i + 1 < raw.Length && raw[i + 1] is >= '0' and <= '7') { v = v * 8 + (raw[++i] - '0'); k++; }
                        sb.Append((char)v);
                        break;
                    }
                default: sb.Append('\\').Append(e); break;
            }
        }
        return sb.ToString();
    }

    static int Hex(string s, ref int i, int count, int line)
    {
        int v = 0;
        for (int k = 0; k < count; k++)
        {
            if (i + 1 >= s.Length || !Uri.IsHexDigit(s[i + 1])) throw Syntax("truncated escape sequence", line);
            v = v * 16 + Convert.ToInt32(s[++i].ToString(), 16);
        }
        return v;
    }
}

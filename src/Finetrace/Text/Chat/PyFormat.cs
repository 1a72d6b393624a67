using System.Globalization;
using System.Text;
using System.Text.Json;

namespace Finetrace.Text.Chat;

/// <summary>Python string formatting: `%` (printf style) and str.format, for the common conversions.</summary>
static class PyFormat
{
    static readonly CultureInfo Inv = CultureInfo.InvariantCulture;

    public static string Percent(string fmt, List<object?> args, bool strictCount = true)
    {
        var sb = new StringBuilder();
        int ai = 0;
        PyDict? map = args.Count == 1 && args[0] is PyDict d ? d : null;
        var dictArg = args.Count == 1 && args[0] is Dictionary<string, object?> kd ? kd : null;
        for (int i = 0; i < fmt.Length; i++)
        {
            if (fmt[i] != '%') { sb.Append(fmt[i]); continue; }
            if (++i >= fmt.Length) throw new TemplateException("ValueError", "incomplete format");
            if (fmt[i] == '%') { sb.Append('%'); continue; }
            object? val;
            string? key = null;
            if (fmt[i] == '(')
            {
                int e = fmt.IndexOf(')', i);
                key = fmt[(i + 1)..e];
                i = e + 1;
            }
            string flags = "";
            while (i < fmt.Length && "-+ 0#".Contains(fmt[i])) flags += fmt[i++];
            int width = 0; int prec = -1;
            while (i < fmt.Length && char.IsAsciiDigit(fmt[i])) width = width * 10 + (fmt[i++] - '0');
            if (i < fmt.Length && fmt[i] == '.') { i++; prec = 0; while (i < fmt.Length && char.IsAsciiDigit(fmt[i])) prec = prec * 10 + (fmt[i++] - '0'); }
            char conv = fmt[i];
            if (key is not null)
                val = map is not null && map.TryGetValue(key, out var mv) ? mv : dictArg is not null && dictArg.TryGetValue(key, out var dv) ? dv : throw new TemplateException("KeyError", $"'{key}'");
            else
            {
                if (ai >= args.Count) throw new TemplateException("TypeError", "not enough arguments for format string");
                val = args[ai++];
            }
            string s = conv switch
            {
                's' => PyOps.Str(val),
                'r' or 'a' => PyOps.Repr(val),
                'd' or 'i' or 'u' => IntOf(val).ToString(Inv),
                'x' => IntOf(val).ToString("x", Inv),
                'X' => IntOf(val).ToString("X", Inv),
                'o' => Convert.ToString(IntOf(val), 8),
                'f' or 'F' => FloatOf(val).ToString("F" + (prec < 0 ? 6 : prec), Inv),
                'e' or 'E' => FormatExp(FloatOf(val), prec < 0 ? 6 : prec, conv),
                'g' or 'G' => FloatOf(val).ToString("G" + (prec < 0 ? 6 : Math.Max(prec, 1)), Inv),
                'c' => val is string cs ? cs : char.ConvertFromUtf32((int)IntOf(val)),
                _ => throw new TemplateException("ValueError", $"unsupported format character '{conv}'"),
            };
            if (conv == 's' && prec >= 0 && s.Length > prec) s = s[..prec];
            if (flags.Contains('+') && conv is 'd' or 'i' or 'f' or 'e' && !s.StartsWith('-')) s = "+" + s;
            if (s.Length < width)
                s = flags.Contains('-') ? s.PadRight(width) : flags.Contains('0') && conv != 's' ? ZeroPad(s, width) : s.PadLeft(width);
            sb.Append(s);
        }
        if (strictCount && ai < args.Count && map is null && dictArg is null) throw new TemplateException("TypeError", "not all arguments converted during string formatting");
        return sb.ToString();
    }

    static string ZeroPad(string s, int width) =>
        s.StartsWith('-') || s.StartsWith('+') ? s[0] + s[1..].PadLeft(width - 1, '0') : s.PadLeft(width, '0');

    static string FormatExp(double d, int prec, char conv)
    {
        string s = d.ToString((conv == 'E' ? "E" : "e") + prec, Inv); // 1.500000e+003
        int e = s.IndexOfAny(['e', 'E']);
        int exp = int.Parse(s[(e + 1)..], Inv);
        return s[..(e + 1)] + (exp < 0 ? "-" : "+") + Math.Abs(exp).ToString("00", Inv);
    }

    static long IntOf(object? v) => v switch
    {
        long l => l,
        bool b => b ? 1 : 0,
        double d => (long)Math.Truncate(d),
        _ => throw new TemplateException("TypeError", $"%d format: a real number is required, not {PyOps.TypeName(v)}"),
    };

    static double FloatOf(object? v) => v switch
    {
        long l => l,
        bool b => b ? 1 : 0,
        double d => d,
        _ => throw new TemplateException("TypeError", $"must be real number, not {PyOps.TypeName(v)}"),
    };

    /// <summary>str.format with {}, {0}, {name}, {name.attr}/{name[key]} and the common format specs.</summary>
    public static string StrFormat(string fmt, List<object?> args, List<KeyValuePair<string, object?>> kwargs)
    {
        var sb = new StringBuilder();
        int auto = 0;
        for (int i = 0; i < fmt.Length; i++)
        {
            char c = fmt[i];
            if (c == '{')
            {
                if (i + 1 < fmt.Length && fmt[i + 1] == '{') { sb.Append('{'); i++; continue; }
                int e = fmt.IndexOf('}', i);
                if (e < 0) throw new TemplateException("ValueError", "Single '{' encountered in format string");
                string field = fmt[(i + 1)..e];
                i = e;
                string spec = "";
                char conv = '\0';
                int colon = field.IndexOf(':');
                if (colon >= 0) { spec = field[(colon + 1)..]; field = field[..colon]; }
                int bang = field.IndexOf('!');
                if (bang >= 0) { conv = field[bang + 1]; field = field[..bang]; }
                string head = field;
                int cut = field.IndexOfAny(['.', '[']);
                if (cut >= 0) head = field[..cut];
                object? v;
                if (head.Length == 0) v = auto < args.Count ? args[auto++] : throw new TemplateException("IndexError", "Replacement index out of range for positional args tuple");
                else if (int.TryParse(head, out int idx)) v = idx < args.Count ? args[idx] : throw new TemplateException("IndexError", "Replacement index out of range for positional args tuple");
                else v = kwargs.FirstOrDefault(k => k.Key == head) is var kv && kv.Key is not null ? kv.Value : throw new TemplateException("KeyError", $"'{head}'");
                if (cut >= 0)
                {
                    string rest = field[cut..];
                    int p = 0;
                    while (p < rest.Length)
                    {
                        if (rest[p] == '.') { int q = p + 1; while (q < rest.Length && rest[q] != '.' && rest[q] != '[') q++; v = JinjaBuiltins.GetAttr(v, rest[(p + 1)..q]); p = q; }
                        else { int q = rest.IndexOf(']', p); string k = rest[(p + 1)..q]; v = long.TryParse(k, out long li) ? JinjaBuiltins.GetItem(v, li) : JinjaBuiltins.GetItem(v, k); p = q + 1; }
                    }
                }
                string s = conv == 'r' ? PyOps.Repr(v) : FormatSpec(v, spec);
                sb.Append(s);
            }
            else if (c == '}')
            {
                if (i + 1 < fmt.Length && fmt[i + 1] == '}') i++;
                sb.Append('}');
            }
            else sb.Append(c);
        }
        return sb.ToString();
    }

    static string FormatSpec(object? v, string spec)
    {
        if (spec.Length == 0) return PyOps.Str(v);
        // [[fill]align][sign][0][width][,][.precision][type]
        int i = 0;
        char fill = ' ', align = '\0';
        if (spec.Length >= 2 && "<>^=".Contains(spec[1])) { fill = spec[0]; align = spec[1]; i = 2; }
        else if ("<>^=".Contains(spec[0])) { align = spec[0]; i = 1; }
        char sign = '\0';
        if (i < spec.Length && "+- ".Contains(spec[i])) sign = spec[i++];
        if (i < spec.Length && spec[i] == '0') { if (align == '\0') { fill = '0'; align = '='; } i++; }
        int width = 0;
        while (i < spec.Length && char.IsAsciiDigit(spec[i])) width = width * 10 + (spec[i++] - '0');
        bool comma = i < spec.Length && spec[i] == ',';
        if (comma) i++;
        int prec = -1;
        if (i < spec.Length && spec[i] == '.') { i++; prec = 0; while (i < spec.Length && char.IsAsciiDigit(spec[i])) prec = prec * 10 + (spec[i++] - '0'); }
        char type = i < spec.Length ? spec[i] : '\0';
        string body = type switch
        {
            'd' => Convert.ToInt64(v is bool b ? (b ? 1 : 0) : v, Inv).ToString(comma ? "N0" : "D", Inv),
            'f' or 'F' => Convert.ToDouble(v, Inv).ToString((comma ? "N" : "F") + (prec < 0 ? 6 : prec), Inv),
            '%' => (Convert.ToDouble(v, Inv) * 100).ToString("F" + (prec < 0 ? 6 : prec), Inv) + "%",
            'x' => Convert.ToInt64(v, Inv).ToString("x", Inv),
            'X' => Convert.ToInt64(v, Inv).ToString("X", Inv),
            'e' => Convert.ToDouble(v, Inv).ToString("e" + (prec < 0 ? 6 : prec), Inv),
            's' or '\0' => v is double dd && prec >= 0 ? dd.ToString("F" + prec, Inv) : PyOps.Str(v),
            _ => PyOps.Str(v),
        };
        if (type is 's' or '\0' && v is string && prec >= 0 && body.Length > prec) body = body[..prec];
        if (sign == '+' && PyOps.IsNumber(v) && !body.StartsWith('-')) body = "+" + body;
        if (align == '\0') align = v is string || type == 's' ? '<' : '>';
        if (body.Length >= width) return body;
        int pad = width - body.Length;
        return align switch
        {
            '<' => body + new string(fill, pad),
            '^' => new string(fill, pad / 2) + body + new string(fill, pad - pad / 2),
            '=' when body.StartsWith('-') || body.StartsWith('+') => body[0] + new string(fill, pad) + body[1..],
            _ => new string(fill, pad) + body,
        };
    }
}

/// <summary>JSON ⇄ Jinja values: parse model JSON (objects keep key order, integers stay integers) and
/// Python's json.dumps (ensure_ascii=False by default here, separators ", " / ": ", indent, sort_keys).</summary>
public static class PyJson
{
    public static object? FromJson(JsonElement e) => e.ValueKind switch
    {
        JsonValueKind.Null or JsonValueKind.Undefined => null,
        JsonValueKind.True => true,
        JsonValueKind.False => false,
        JsonValueKind.String => e.GetString(),
        JsonValueKind.Number => e.TryGetInt64(out long l) && !e.GetRawText().Contains('.') && !e.GetRawText().Contains('e') && !e.GetRawText().Contains('E') ? (object)l : e.GetDouble(),
        JsonValueKind.Array => e.EnumerateArray().Select(FromJson).ToList(),
        JsonValueKind.Object => ObjectFromJson(e),
        _ => throw new InvalidOperationException(e.ValueKind.ToString()),
    };

    static PyDict ObjectFromJson(JsonElement e)
    {
        var d = new PyDict();
        foreach (var p in e.EnumerateObject()) d[p.Name] = FromJson(p.Value);
        return d;
    }

    public static string Dumps(object? v, object? indent = null, object? separators = null, bool sortKeys = false, bool ensureAscii = false)
    {
        string? ind = indent switch { null => null, long n => new string(' ', (int)Math.Max(0, n)), string s => s, _ => null };
        string itemSep = ind is null ? ", " : ",", keySep = ": ";
        if (separators is object?[] or List<object?>)
        {
            var seps = PyOps.Iterate(separators);
            itemSep = PyOps.Str(seps[0]);
            keySep = PyOps.Str(seps[1]);
        }
        var sb = new StringBuilder();
        Write(sb, v, ind, itemSep, keySep, sortKeys, ensureAscii, 0);
        return sb.ToString();
    }

    static void Write(StringBuilder sb, object? v, string? ind, string itemSep, string keySep, bool sortKeys, bool ascii, int level)
    {
        switch (v)
        {
            case null: sb.Append("null"); return;
            case bool b: sb.Append(b ? "true" : "false"); return;
            case long l: sb.Append(l.ToString(CultureInfo.InvariantCulture)); return;
            case double d:
                sb.Append(double.IsNaN(d) ? "NaN" : double.IsPositiveInfinity(d) ? "Infinity" : double.IsNegativeInfinity(d) ? "-Infinity" : PyOps.FloatRepr(d));
                return;
            case string s: WriteString(sb, s, ascii); return;
            case List<object?> or object?[]:
                {
                    var items = PyOps.Iterate(v);
                    if (items.Count == 0) { sb.Append("[]"); return; }
                    sb.Append('[');
                    for (int i = 0; i < items.Count; i++)
                    {
                        if (i > 0) sb.Append(itemSep);
                        NewLine(sb, ind, level + 1);
                        Write(sb, items[i], ind, itemSep, keySep, sortKeys, ascii, level + 1);
                    }
                    NewLine(sb, ind, level);
                    sb.Append(']');
                    return;
                }
            case PyDict d:
                {
                    if (d.Count == 0) { sb.Append("{}"); return; }
                    IEnumerable<KeyValuePair<object, object?>> pairs = d;
                    if (sortKeys) pairs = pairs.OrderBy(kv => kv.Key, Comparer<object>.Create((a, b) => PyOps.Compare(a, b, "<")));
                    sb.Append('{');
                    bool first = true;
                    foreach (var kv in pairs)
                    {
                        if (!first) sb.Append(itemSep);
                        first = false;
                        NewLine(sb, ind, level + 1);
                        string key = kv.Key switch
                        {
                            string ks => ks,
                            bool kb => kb ? "true" : "false",
                            long kl => kl.ToString(CultureInfo.InvariantCulture),
                            double kd => PyOps.FloatRepr(kd),
                            _ => throw new TemplateException("TypeError", $"keys must be str, int, float, bool or None, not {PyOps.TypeName(kv.Key)}"),
                        };
                        WriteString(sb, key, ascii);
                        sb.Append(keySep);
                        Write(sb, kv.Value, ind, itemSep, keySep, sortKeys, ascii, level + 1);
                    }
                    NewLine(sb, ind, level);
                    sb.Append('}');
                    return;
                }
            default:
                throw new TemplateException("TypeError", $"Object of type {PyOps.TypeName(v)} is not JSON serializable");
        }
    }

    static void NewLine(StringBuilder sb, string? ind, int level)
    {
        if (ind is null) return;
        sb.Append('\n');
        for (int i = 0; i < level; i++) sb.Append(ind);
    }

    static void WriteString(StringBuilder sb, string s, bool ascii)
    {
        sb.Append('"');
        foreach (char c in s)
        {
            switch (c)
            {
                case '"': sb.Append("\\\""); break;
                case '\\': sb.Append("\\\\"); break;
                case '\n': sb.Append("\\n"); break;
                case '\r': sb.Append("\\r"); break;
                case '\t': sb.Append("\\t"); break;
                case '\b': sb.Append("\\b"); break;
                case '\f': sb.Append("\\f"); break;
                default:
                    if (c < 0x20 || (ascii && c > 0x7e)) sb.Append("\\u").Append(((int)c).ToString("x4"));
                    else sb.Append(c);
                    break;
            }
        }
        sb.Append('"');
    }
}

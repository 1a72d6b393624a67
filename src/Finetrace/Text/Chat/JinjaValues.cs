using System.Globalization;
using System.Text;

namespace Finetrace.Text.Chat;

// Jinja values are plain objects with Python meaning:
//   null = None, bool, long = int, double = float, string = str, List<object?> = list, object?[] = tuple,
//   PyDict = dict (insertion ordered), Undefined, Namespace, JinjaCallable (macros, globals, bound methods), LoopContext.

/// <summary>A template error: <see cref="Kind"/> is the Python exception class (TemplateError for
/// raise_exception, UndefinedError, TypeError, TemplateSyntaxError, SecurityError, ...); <see cref="Exception.Message"/>
/// is the message alone, exactly as the template gave it.</summary>
public sealed class TemplateException(string kind, string message) : Exception(message)
{
    public string Kind { get; } = kind;
    public override string ToString() => $"{Kind}: {Message}";
}

/// <summary>Jinja's default Undefined: prints empty, is falsy, iterates empty, and raises on attribute access,
/// calls and arithmetic with the message Jinja would give.</summary>
public sealed class Undefined
{
    public static readonly Undefined Plain = new(null, "UndefinedError");
    readonly string? _message;
    public string Kind { get; }

    Undefined(string? message, string kind) { _message = message; Kind = kind; }

    public static Undefined Named(string name) => new($"{PyOps.Repr(name)} is undefined", "UndefinedError");

    public static Undefined Missing(object? obj, object? key) => new(key is string s
        ? $"{PyOps.Repr(PyOps.TypeReprForUndefined(obj))} has no attribute {PyOps.Repr(s)}"
        : $"{PyOps.TypeReprForUndefined(obj)} has no element {PyOps.Repr(key)}", "UndefinedError");

    public static Undefined Unsafe(object? obj, string attr) =>
        new($"access to attribute '{attr}' of '{PyOps.TypeName(obj)}' object is unsafe.", "SecurityError");

    public static Undefined WithHint(string hint) => new(hint, "UndefinedError");

    public string Message => _message ?? "undefined value";

    public TemplateException Fail() => new(Kind, Message);
}

/// <summary>Python dict semantics for keys (1 == 1.0 == True, strings by value).</summary>
sealed class PyKeyComparer : IEqualityComparer<object>
{
    public static readonly PyKeyComparer Instance = new();
    public new bool Equals(object? a, object? b) => PyOps.Eq(a, b);
    public int GetHashCode(object o) => o switch
    {
        bool b => b ? 1 : 0,
        long l => l.GetHashCode(),
        double d => d == Math.Floor(d) && Math.Abs(d) < 9e18 ? ((long)d).GetHashCode() : d.GetHashCode(),
        string s => s.GetHashCode(),
        object?[] t => t.Aggregate(17, (h, x) => h * 31 + (x is null ? 0 : GetHashCode(x))),
        _ => o.GetHashCode(),
    };
}

/// <summary>A Python dict: insertion ordered, Python key equality.</summary>
public sealed class PyDict : OrderedDictionary<object, object?>
{
    public PyDict() : base(PyKeyComparer.Instance) { }
}

/// <summary>Jinja's namespace(): the one object templates may assign attributes on.</summary>
public sealed class Namespace
{
    public PyDict Attrs { get; } = new();
}

/// <summary>A callable value: a global function, a macro, caller(), or a bound method.</summary>
public sealed class JinjaCallable(string name, Func<List<object?>, List<KeyValuePair<string, object?>>, object?> invoke)
{
    public string Name { get; } = name;
    public object? Invoke(List<object?> args, List<KeyValuePair<string, object?>> kwargs) => invoke(args, kwargs);
}

/// <summary>Python semantics for Jinja values: truthiness, str/repr, equality, ordering, arithmetic.</summary>
public static class PyOps
{
    static readonly CultureInfo Inv = CultureInfo.InvariantCulture;

    public static bool Truthy(object? v) => v switch
    {
        null => false,
        Undefined => false,
        bool b => b,
        long l => l != 0,
        double d => d != 0,
        string s => s.Length > 0,
        List<object?> l => l.Count > 0,
        object?[] t => t.Length > 0,
        PyDict d => d.Count > 0,
        _ => true,
    };

    public static string TypeName(object? v) => v switch
    {
        null => "NoneType",
        bool => "bool",
        long => "int",
        double => "float",
        string => "str",
        List<object?> => "list",
        object?[] => "tuple",
        PyDict => "dict",
        Undefined => "Undefined",
        Namespace => "Namespace",
        LoopContext => "LoopContext",
        JinjaCallable => "function",
        _ => v.GetType().Name,
    };

    internal static string TypeReprForUndefined(object? obj) => obj switch
    {
        null => "None",
        Namespace => "jinja2.utils.Namespace object",
        LoopContext => "jinja2.runtime.LoopContext object",
        _ => TypeName(obj) + " object",
    };

    /// <summary>Python str(v); Undefined prints as the empty string.</summary>
    public static string Str(object? v) => v switch
    {
        string s => s,
        Undefined => "",
        _ => Repr(v),
    };

    /// <summary>Python repr(v).</summary>
    public static string Repr(object? v)
    {
        var sb = new StringBuilder();
        AppendRepr(sb, v);
        return sb.ToString();
    }

    static void AppendRepr(StringBuilder sb, object? v)
    {
        switch (v)
        {
            case null: sb.Append("None"); break;
            case bool b: sb.Append(b ? "True" : "False"); break;
            case long l: sb.Append(l.ToString(Inv)); break;
            case double d: sb.Append(FloatRepr(d)); break;
            case string s: AppendStringRepr(sb, s); break;
            case Undefined: break;
            case List<object?> list:
                sb.Append('[');
                for (int i = 0; i < list.Count; i++) { if (i > 0) sb.Append(", "); AppendRepr(sb, list[i]); }
                sb.Append(']');
                break;
            case object?[] t:
                sb.Append('(');
                for (int i = 0; i < t.Length; i++) { if (i > 0) sb.Append(", "); AppendRepr(sb, t[i]); }
                if (t.Length == 1) sb.Append(',');
                sb.Append(')');
                break;
            case PyDict d:
                sb.Append('{');
                bool first = true;
                foreach (var kv in d)
                {
                    if (!first) sb.Append(", ");
                    first = false;
                    AppendRepr(sb, kv.Key); sb.Append(": "); AppendRepr(sb, kv.Value);
                }
                sb.Append('}');
                break;
            case Namespace ns:
                sb.Append("<Namespace ");
                AppendRepr(sb, ns.Attrs);
                sb.Append('>');
                break;
            case JinjaCallable c: sb.Append("<function ").Append(c.Name).Append('>'); break;
            case LoopContext: sb.Append("<LoopContext>"); break;
            default: sb.Append(v.ToString()); break;
        }
    }

    static void AppendStringRepr(StringBuilder sb, string s)
    {
        char quote = s.Contains('\'') && !s.Contains('"') ? '"' : '\'';
        sb.Append(quote);
        foreach (var r in s.EnumerateRunes())
        {
            int c = r.Value;
            if (c == quote || c == '\\') sb.Append('\\').Append((char)c);
            else if (c == '\t') sb.Append("\\t");
            else if (c == '\n') sb.Append("\\n");
            else if (c == '\r') sb.Append("\\r");
            else if (!IsPrintable(r))
            {
                if (c < 0x100) sb.Append("\\x").Append(c.ToString("x2"));
                else if (c < 0x10000) sb.Append("\\u").Append(c.ToString("x4"));
                else sb.Append("\\U").Append(c.ToString("x8"));
            }
            else sb.Append(r.ToString());
        }
        sb.Append(quote);
    }

    static bool IsPrintable(Rune r)
    {
        if (r.Value == ' ') return true;
        return Rune.GetUnicodeCategory(r) switch
        {
            UnicodeCategory.Control or UnicodeCategory.Format or UnicodeCategory.Surrogate or UnicodeCategory.PrivateUse
                or UnicodeCategory.OtherNotAssigned or UnicodeCategory.LineSeparator or UnicodeCategory.ParagraphSeparator
                or UnicodeCategory.SpaceSeparator => false,
            _ => true,
        };
    }

    /// <summary>Python repr of a float: shortest round-trip digits, exponent form outside [1e-4, 1e16).</summary>
    public static string FloatRepr(double d)
    {
        if (double.IsNaN(d)) return "nan";
        if (double.IsPositiveInfinity(d)) return "inf";
        if (double.IsNegativeInfinity(d)) return "-inf";
        if (d == 0) return double.IsNegative(d) ? "-0.0" : "0.0";
        // Shortest round-trip digits: "R" gives them, possibly in exponent form.
        string sh = Math.Abs(d).ToString("R", Inv);
        string digits;
        int ePos = sh.IndexOfAny(['E', 'e']);
        string mant = ePos >= 0 ? sh[..ePos] : sh;
        int expPart = ePos >= 0 ? int.Parse(sh[(ePos + 1)..], Inv) : 0;
        int dot = mant.IndexOf('.');
        string intPart = dot >= 0 ? mant[..dot] : mant;
        string fracPart = dot >= 0 ? mant[(dot + 1)..] : "";
        digits = (intPart + fracPart).TrimStart('0');
        int leadingZeros = (intPart + fracPart).Length - (intPart + fracPart).TrimStart('0').Length;
        // value = 0.digits * 10^decpt
        int decpt = intPart.Length - leadingZeros + expPart;
        digits = digits.TrimEnd('0');
        if (digits.Length == 0) { digits = "0"; decpt = 1; }
        var sb = new StringBuilder();
        if (d < 0) sb.Append('-');
        if (decpt <= -4 || decpt > 16)
        {
            sb.Append(digits[0]);
            if (digits.Length > 1) sb.Append('.').Append(digits, 1, digits.Length - 1);
            int e = decpt - 1;
            sb.Append('e').Append(e < 0 ? '-' : '+').Append(Math.Abs(e).ToString("00", Inv));
        }
        else if (decpt <= 0)
        {
            sb.Append("0.").Append('0', -decpt).Append(digits);
        }
        else if (decpt >= digits.Length)
        {
            sb.Append(digits).Append('0', decpt - digits.Length).Append(".0");
        }
        else
        {
            sb.Append(digits, 0, decpt).Append('.').Append(digits, decpt, digits.Length - decpt);
        }
        return sb.ToString();
    }

    public static bool IsNumber(object? v) => v is long or double or bool;

    static double ToDouble(object? v) => v switch { long l => l, double d => d, bool b => b ? 1 : 0, _ => throw new InvalidCastException() };
    static long ToLong(object? v) => v switch { long l => l, bool b => b ? 1 : 0, _ => throw new InvalidCastException() };
    static bool IsIntLike(object? v) => v is long or bool;

    /// <summary>Python ==.</summary>
    public static bool Eq(object? a, object? b)
    {
        if (a is null || b is null) return a is null && b is null;
        if (IsNumber(a) && IsNumber(b))
            return IsIntLike(a) && IsIntLike(b) ? ToLong(a) == ToLong(b) : ToDouble(a) == ToDouble(b);
        switch (a)
        {
            case string sa: return b is string sb && string.Equals(sa, sb, StringComparison.Ordinal);
            case Undefined: return b is Undefined;
            case List<object?> la:
                if (b is not List<object?> lb || la.Count != lb.Count) return false;
                for (int i = 0; i < la.Count; i++) if (!Eq(la[i], lb[i])) return false;
                return true;
            case object?[] ta:
                if (b is not object?[] tb || ta.Length != tb.Length) return false;
                for (int i = 0; i < ta.Length; i++) if (!Eq(ta[i], tb[i])) return false;
                return true;
            case PyDict da:
                if (b is not PyDict db || da.Count != db.Count) return false;
                foreach (var kv in da)
                    if (!db.TryGetValue(kv.Key, out var bv) || !Eq(kv.Value, bv)) return false;
                return true;
            default: return ReferenceEquals(a, b);
        }
    }

    /// <summary>Python ordering: -1, 0, 1; TypeError for unorderable operands.</summary>
    public static int Compare(object? a, object? b, string op)
    {
        if (a is Undefined ua) throw ua.Fail();
        if (b is Undefined ub) throw ub.Fail();
        if (IsNumber(a) && IsNumber(b))
            return IsIntLike(a) && IsIntLike(b) ? ToLong(a).CompareTo(ToLong(b)) : ToDouble(a).CompareTo(ToDouble(b));
        if (a is string sa && b is string sb) return CompareCodePoints(sa, sb);
        if (a is List<object?> la && b is List<object?> lb) return CompareSeq(la, lb, op);
        if (a is object?[] ta && b is object?[] tb) return CompareSeq(ta, tb, op);
        throw new TemplateException("TypeError", $"'{op}' not supported between instances of '{TypeName(a)}' and '{TypeName(b)}'");
    }

    static int CompareSeq(IReadOnlyList<object?> a, IReadOnlyList<object?> b, string op)
    {
        for (int i = 0; i < Math.Min(a.Count, b.Count); i++)
            if (!Eq(a[i], b[i])) return Compare(a[i], b[i], op);
        return a.Count.CompareTo(b.Count);
    }

    /// <summary>Python compares strings by code point; UTF-16 ordinal order differs only for surrogates vs U+E000..U+FFFF.</summary>
    public static int CompareCodePoints(string a, string b)
    {
        int i = 0, j = 0;
        while (i < a.Length && j < b.Length)
        {
            int ca = CodePointAt(a, i, out int la), cb = CodePointAt(b, j, out int lb);
            if (ca != cb) return ca < cb ? -1 : 1;
            i += la; j += lb;
        }
        return (a.Length - i).CompareTo(b.Length - j) switch { < 0 => -1, > 0 => 1, _ => 0 };
    }

    static int CodePointAt(string s, int i, out int len)
    {
        if (char.IsHighSurrogate(s[i]) && i + 1 < s.Length && char.IsLowSurrogate(s[i + 1])) { len = 2; return char.ConvertToUtf32(s[i], s[i + 1]); }
        len = 1;
        return s[i];
    }

    static TemplateException Unsupported(string op, object? a, object? b) =>
        new("TypeError", $"unsupported operand type(s) for {op}: '{TypeName(a)}' and '{TypeName(b)}'");

    static void FailIfUndefined(object? a, object? b)
    {
        if (a is Undefined ua) throw ua.Fail();
        if (b is Undefined ub) throw ub.Fail();
    }

    public static object? Add(object? a, object? b)
    {
        FailIfUndefined(a, b);
        if (IsNumber(a) && IsNumber(b))
            return IsIntLike(a) && IsIntLike(b) ? (object)(ToLong(a) + ToLong(b)) : ToDouble(a) + ToDouble(b);
        if (a is string sa)
            return b is string sb ? sa + sb : throw new TemplateException("TypeError", $"can only concatenate str (not \"{TypeName(b)}\") to str");
        if (a is List<object?> la)
            return b is List<object?> lb ? new List<object?>([.. la, .. lb]) : throw new TemplateException("TypeError", $"can only concatenate list (not \"{TypeName(b)}\") to list");
        if (a is object?[] ta && b is object?[] tb) return (object?[])[.. ta, .. tb];
        throw Unsupported("+", a, b);
    }

    public static object? Sub(object? a, object? b)
    {
        FailIfUndefined(a, b);
        if (IsNumber(a) && IsNumber(b))
            return IsIntLike(a) && IsIntLike(b) ? (object)(ToLong(a) - ToLong(b)) : ToDouble(a) - ToDouble(b);
        throw Unsupported("-", a, b);
    }

    public static object? Mul(object? a, object? b)
    {
        FailIfUndefined(a, b);
        if (IsNumber(a) && IsNumber(b))
            return IsIntLike(a) && IsIntLike(b) ? (object)(ToLong(a) * ToLong(b)) : ToDouble(a) * ToDouble(b);
        if (IsIntLike(b) && a is string or List<object?>) return Repeat(a, ToLong(b));
        if (IsIntLike(a) && b is string or List<object?>) return Repeat(b, ToLong(a));
        if (a is string or List<object?> or object?[]) throw new TemplateException("TypeError", $"can't multiply sequence by non-int of type '{TypeName(b)}'");
        if (b is string or List<object?> or object?[]) throw new TemplateException("TypeError", $"can't multiply sequence by non-int of type '{TypeName(a)}'");
        throw Unsupported("*", a, b);
    }

    static object Repeat(object? seq, long n)
    {
        if (seq is string s) return n <= 0 ? "" : new StringBuilder(s.Length * (int)n).Insert(0, s, (int)n).ToString();
        var l = (List<object?>)seq!;
        var r = new List<object?>();
        for (long i = 0; i < n; i++) r.AddRange(l);
        return r;
    }

    public static object? TrueDiv(object? a, object? b)
    {
        FailIfUndefined(a, b);
        if (!IsNumber(a) || !IsNumber(b)) throw Unsupported("/", a, b);
        double y = ToDouble(b);
        if (y == 0) throw new TemplateException("ZeroDivisionError", "division by zero");
        return ToDouble(a) / y;
    }

    public static object? FloorDiv(object? a, object? b)
    {
        FailIfUndefined(a, b);
        if (!IsNumber(a) || !IsNumber(b)) throw Unsupported("//", a, b);
        if (IsIntLike(a) && IsIntLike(b))
        {
            long x = ToLong(a), y = ToLong(b);
            if (y == 0) throw new TemplateException("ZeroDivisionError", "integer division or modulo by zero");
            long q = x / y;
            if ((x % y != 0) && ((x < 0) != (y < 0))) q--;
            return q;
        }
        double dx = ToDouble(a), dy = ToDouble(b);
        if (dy == 0) throw new TemplateException("ZeroDivisionError", "float floor division by zero");
        // CPython float_floor_div: from fmod, so 1 // 0.1 == 9.0 (0.1 is slightly above one tenth).
        double mod = dx % dy;
        double div = (dx - mod) / dy;
        if (mod != 0 && ((dy < 0) != (mod < 0))) div -= 1.0;
        if (div == 0) return Math.CopySign(0.0, dx / dy);
        double floor = Math.Floor(div);
        if (div - floor > 0.5) floor += 1.0;
        return floor;
    }

    public static object? Mod(object? a, object? b)
    {
        if (a is string && b is Undefined) return PyFormat.Percent((string)a, [b], strictCount: false); // Undefined acts as a mapping
        FailIfUndefined(a, b);
        // A tuple gives the arguments; any other value is one argument, and a list or dict (which Python treats as a
        // mapping) does not make unused arguments an error.
        if (a is string fmt) return PyFormat.Percent(fmt, b is object?[] t ? [.. t] : [b], strictCount: b is not (List<object?> or PyDict));
        if (!IsNumber(a) || !IsNumber(b)) throw Unsupported("%", a, b);
        if (IsIntLike(a) && IsIntLike(b))
        {
            long x = ToLong(a), y = ToLong(b);
            if (y == 0) throw new TemplateException("ZeroDivisionError", "integer modulo by zero");
            long m = x % y;
            if (m != 0 && ((m < 0) != (y < 0))) m += y;
            return m;
        }
        double dx = ToDouble(a), dy = ToDouble(b);
        if (dy == 0) throw new TemplateException("ZeroDivisionError", "float modulo");
        double r = dx % dy;
        if (r != 0 && ((r < 0) != (dy < 0))) r += dy;
        return r;
    }

    public static object? Pow(object? a, object? b)
    {
        FailIfUndefined(a, b);
        if (!IsNumber(a) || !IsNumber(b)) throw Unsupported("** or pow()", a, b);
        if (IsIntLike(a) && IsIntLike(b) && ToLong(b) >= 0)
        {
            long x = ToLong(a), e = ToLong(b), r = 1;
            while (e > 0) { if ((e & 1) != 0) r *= x; x *= x; e >>= 1; }
            return r;
        }
        return Math.Pow(ToDouble(a), ToDouble(b));
    }

    public static object? Neg(object? a) => a switch
    {
        Undefined u => throw u.Fail(),
        long l => (object)(-l),
        bool b => b ? -1L : 0L,
        double d => (object)(-d),
        _ => throw new TemplateException("TypeError", $"bad operand type for unary -: '{TypeName(a)}'"),
    };

    /// <summary>Python `needle in haystack`.</summary>
    public static bool Contains(object? haystack, object? needle)
    {
        switch (haystack)
        {
            case string s:
                if (needle is string n) return s.Contains(n, StringComparison.Ordinal);
                throw new TemplateException("TypeError", $"'in <string>' requires string as left operand, not {TypeName(needle)}");
            case PyDict d:
                if (needle is List<object?> or PyDict) throw new TemplateException("TypeError", $"unhashable type: '{TypeName(needle)}'");
                return needle is not null && d.ContainsKey(needle);
            case Undefined: return false;
            case null: throw new TemplateException("TypeError", "argument of type 'NoneType' is not iterable");
            case List<object?> or object?[]:
                foreach (var x in Iterate(haystack)) if (Eq(x, needle)) return true;
                return false;
            default:
                throw new TemplateException("TypeError", $"argument of type '{TypeName(haystack)}' is not iterable");
        }
    }

    /// <summary>Python iter(v) as a list snapshot.</summary>
    public static List<object?> Iterate(object? v) => v switch
    {
        List<object?> l => [.. l],
        object?[] t => [.. t],
        PyDict d => [.. d.Keys],
        string s => [.. PyStr.Chars(s)],
        Undefined => [],
        _ => throw new TemplateException("TypeError", $"'{TypeName(v)}' object is not iterable"),
    };

    public static long Len(object? v) => v switch
    {
        string s => PyStr.Length(s),
        List<object?> l => l.Count,
        object?[] t => t.Length,
        PyDict d => d.Count,
        Undefined => 0,
        Namespace => throw new TemplateException("TypeError", "object of type 'Namespace' has no len()"),
        _ => throw new TemplateException("TypeError", $"object of type '{TypeName(v)}' has no len()"),
    };
}

/// <summary>Python str semantics that depend on code points (len, indexing, slicing, whitespace).</summary>
public static class PyStr
{
    public static bool HasSurrogates(string s)
    {
        foreach (char c in s) if (char.IsSurrogate(c)) return true;
        return false;
    }

    public static long Length(string s)
    {
        if (!HasSurrogates(s)) return s.Length;
        long n = 0;
        foreach (var _ in s.EnumerateRunes()) n++;
        return n;
    }

    /// <summary>The string's code points, each as a string.</summary>
    public static string[] Chars(string s)
    {
        if (!HasSurrogates(s)) { var r = new string[s.Length]; for (int i = 0; i < s.Length; i++) r[i] = s[i].ToString(); return r; }
        return s.EnumerateRunes().Select(r => r.ToString()).ToArray();
    }

    /// <summary>Python str.isspace for one code point.</summary>
    public static bool IsSpace(char c) => char.IsWhiteSpace(c) || (c >= '\x1c' && c <= '\x1f');

    public static string Strip(string s, string? chars, bool left, bool right)
    {
        int a = 0, b = s.Length;
        Func<char, bool> pred = chars is null ? IsSpace : c => chars.Contains(c);
        if (left) while (a < b && pred(s[a])) a++;
        if (right) while (b > a && pred(s[b - 1])) b--;
        return s[a..b];
    }

    public static string Upper(string s)
    {
        var sb = new StringBuilder(s.Length);
        foreach (var r in s.EnumerateRunes())
        {
            switch (r.Value)
            {
                case 0xDF: sb.Append("SS"); break;
                case 0xFB00: sb.Append("FF"); break;
                case 0xFB01: sb.Append("FI"); break;
                case 0xFB02: sb.Append("FL"); break;
                case 0xFB03: sb.Append("FFI"); break;
                case 0xFB04: sb.Append("FFL"); break;
                case 0xFB05: case 0xFB06: sb.Append("ST"); break;
                case 0x149: sb.Append("\u02BCN"); break;
                default: sb.Append(Rune.ToUpperInvariant(r).ToString()); break;
            }
        }
        return sb.ToString();
    }

    public static string Lower(string s)
    {
        var sb = new StringBuilder(s.Length);
        var runes = s.EnumerateRunes().ToArray();
        for (int i = 0; i < runes.Length; i++)
        {
            var r = runes[i];
            if (r.Value == 0x130) sb.Append("i\u0307");
            else if (r.Value == 0x3A3)
            {
                // Final sigma: preceded by a cased letter and not followed by one.
                bool before = i > 0 && Rune.IsLetter(runes[i - 1]);
                bool after = i + 1 < runes.Length && Rune.IsLetter(runes[i + 1]);
                sb.Append(before && !after ? 'ς' : 'σ');
            }
            else sb.Append(Rune.ToLowerInvariant(r).ToString());
        }
        return sb.ToString();
    }

    /// <summary>Python str.title(): a letter after a non-cased character is upper-cased, others lower-cased.</summary>
    public static string Title(string s)
    {
        var sb = new StringBuilder(s.Length);
        bool prevCased = false;
        foreach (var r in s.EnumerateRunes())
        {
            bool cased = Rune.IsUpper(r) || Rune.IsLower(r) || Rune.GetUnicodeCategory(r) == UnicodeCategory.TitlecaseLetter;
            if (cased) sb.Append(prevCased ? Lower(r.ToString()) : TitleCase(r));
            else sb.Append(r.ToString());
            prevCased = cased;
        }
        return sb.ToString();
    }

    public static string Capitalize(string s)
    {
        if (s.Length == 0) return s;
        var first = Rune.GetRuneAt(s, 0);
        return TitleCase(first) + Lower(s[first.Utf16SequenceLength..]);
    }

    /// <summary>Python's title-case mapping of one character (differs from upper for digraphs and ligatures).</summary>
    public static string TitleCase(Rune r) => r.Value switch
    {
        0x1C4 or 0x1C5 or 0x1C6 => "\u01C5",
        0x1C7 or 0x1C8 or 0x1C9 => "\u01C8",
        0x1CA or 0x1CB or 0x1CC => "\u01CB",
        0x1F1 or 0x1F2 or 0x1F3 => "\u01F2",
        0xDF => "Ss",
        0xFB00 => "Ff",
        0xFB01 => "Fi",
        0xFB02 => "Fl",
        0xFB03 => "Ffi",
        0xFB04 => "Ffl",
        0xFB05 or 0xFB06 => "St",
        _ => Upper(r.ToString()),
    };
}

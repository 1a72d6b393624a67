using System.Globalization;
using System.Text;
using System.Text.RegularExpressions;
using KwArgs = System.Collections.Generic.List<System.Collections.Generic.KeyValuePair<string, object?>>;

namespace Finetrace.Text.Chat;

/// <summary>Attribute/item access, calls, filters, tests, globals and methods, as Jinja2's
/// ImmutableSandboxedEnvironment with transformers' globals provides them.</summary>
static class JinjaBuiltins
{
    static readonly CultureInfo Inv = CultureInfo.InvariantCulture;

    public static readonly Dictionary<string, object?> Globals = new(StringComparer.Ordinal)
    {
        ["range"] = new JinjaCallable("range", (a, _) => Range(a)),
        ["namespace"] = new JinjaCallable("namespace", (a, kw) =>
        {
            var ns = new Namespace();
            foreach (var x in a)
                if (x is PyDict d) foreach (var kv in d) ns.Attrs[kv.Key] = kv.Value;
            foreach (var (k, v) in kw) ns.Attrs[k] = v;
            return ns;
        }),
        ["dict"] = new JinjaCallable("dict", (a, kw) =>
        {
            var d = new PyDict();
            if (a.Count > 0 && a[0] is PyDict src) foreach (var kv in src) d[kv.Key] = kv.Value;
            foreach (var (k, v) in kw) d[k] = v;
            return d;
        }),
        ["raise_exception"] = new JinjaCallable("raise_exception", (a, kw) =>
            throw new TemplateException("TemplateError", a.Count > 0 ? PyOps.Str(a[0]) : kw.Count > 0 ? PyOps.Str(kw[0].Value) : "")),
        ["strftime_now"] = new JinjaCallable("strftime_now", (a, _) => Strftime(DateTime.Now, a.Count > 0 ? PyOps.Str(a[0]) : "")),
    };

    static List<object?> Range(List<object?> a)
    {
        long start = 0, stop, step = 1;
        long Int(object? v) => v switch { long l => l, bool b => b ? 1 : 0, _ => throw new TemplateException("TypeError", $"'{PyOps.TypeName(v)}' object cannot be interpreted as an integer") };
        if (a.Count == 1) stop = Int(a[0]);
        else if (a.Count >= 2) { start = Int(a[0]); stop = Int(a[1]); if (a.Count > 2) step = Int(a[2]); }
        else throw new TemplateException("TypeError", "range expected at least 1 argument, got 0");
        if (step == 0) throw new TemplateException("ValueError", "range() arg 3 must not be zero");
        var r = new List<object?>();
        for (long i = start; step > 0 ? i < stop : i > stop; i += step)
        {
            r.Add(i);
            if (r.Count > 100_000) throw new TemplateException("OverflowError", "Range too big. The sandbox blocks ranges larger than MAX_RANGE (100000).");
        }
        return r;
    }

    // ------------------------------------------------------------ attribute and item access

    static readonly HashSet<string> StrMethods =
    [
        "strip", "lstrip", "rstrip", "split", "rsplit", "splitlines", "startswith", "endswith", "upper", "lower", "title",
        "capitalize", "replace", "format", "find", "rfind", "index", "rindex", "count", "join", "isdigit", "isalpha",
        "isalnum", "isspace", "isupper", "islower", "isnumeric", "isdecimal", "istitle", "swapcase", "zfill", "center",
        "ljust", "rjust", "partition", "rpartition", "casefold", "removeprefix", "removesuffix", "expandtabs",
    ];
    static readonly HashSet<string> DictSafe = ["items", "keys", "values", "get", "copy"];
    static readonly HashSet<string> DictUnsafe = ["clear", "pop", "popitem", "setdefault", "update", "fromkeys"];
    static readonly HashSet<string> ListSafe = ["index", "count", "copy"];
    static readonly HashSet<string> ListUnsafe = ["append", "extend", "insert", "pop", "remove", "reverse", "sort", "clear"];

    /// <summary>Jinja getattr: the Python attribute first (methods), then the item.</summary>
    public static object? GetAttr(object? obj, string name)
    {
        switch (obj)
        {
            case Undefined u: throw u.Fail();
            case string s when StrMethods.Contains(name): return Bound(name, (a, kw) => StrMethod(s, name, a, kw));
            case PyDict d:
                if (DictSafe.Contains(name)) return Bound(name, (a, kw) => DictMethod(d, name, a));
                if (DictUnsafe.Contains(name)) return Undefined.Unsafe(obj, name);
                return d.TryGetValue(name, out var v) ? v : Undefined.Missing(obj, name);
            case List<object?> l:
                if (ListSafe.Contains(name)) return Bound(name, (a, kw) => SeqMethod(l, name, a));
                if (ListUnsafe.Contains(name)) return Undefined.Unsafe(obj, name);
                return Undefined.Missing(obj, name);
            case object?[] t when name is "index" or "count": return Bound(name, (a, kw) => SeqMethod([.. t], name, a));
            case Namespace ns: return ns.Attrs.TryGetValue(name, out var nv) ? nv : Undefined.Missing(obj, name);
            case LoopContext loop: return loop.Get(name);
            default: return Undefined.Missing(obj, name);
        }
    }

    /// <summary>Jinja getitem: the item first, then (for string keys) the attribute.</summary>
    public static object? GetItem(object? obj, object? key)
    {
        switch (obj)
        {
            case Undefined u: throw u.Fail();
            case PyDict d:
                if (key is not null && d.TryGetValue(key, out var v)) return v;
                return key is string ks ? GetAttr(obj, ks) : Undefined.Missing(obj, key);
            case List<object?> or object?[] or string:
                if (key is long or bool)
                {
                    long i = key is bool b ? (b ? 1 : 0) : (long)key;
                    if (obj is string str)
                    {
                        var chars = PyStr.Chars(str);
                        if (i < 0) i += chars.Length;
                        return i >= 0 && i < chars.Length ? chars[i] : Undefined.Missing(obj, key);
                    }
                    var seq = (IReadOnlyList<object?>)obj;
                    if (i < 0) i += seq.Count;
                    return i >= 0 && i < seq.Count ? seq[(int)i] : Undefined.Missing(obj, key);
                }
                return key is string name ? GetAttr(obj, name) : Undefined.Missing(obj, key);
            case Namespace or LoopContext when key is string n: return GetAttr(obj, n);
            default: return Undefined.Missing(obj, key);
        }
    }

    /// <summary>Python slicing obj[start:stop:step], strings by code point.</summary>
    public static object? Slice(object? obj, object? start, object? stop, object? step)
    {
        if (obj is Undefined u) throw u.Fail();
        long? Idx(object? v) => v switch { null => null, long l => l, bool b => b ? 1 : 0, Undefined => null, _ => throw new TemplateException("TypeError", "slice indices must be integers or None or have an __index__ method") };
        IReadOnlyList<object?> seq = obj switch
        {
            string s => PyStr.Chars(s),
            List<object?> l => l,
            object?[] t => t,
            // Jinja compiles slices to a plain Python subscript (not environment.getitem): the TypeError propagates.
            _ => throw new TemplateException("TypeError", $"'{PyOps.TypeName(obj)}' object is not subscriptable"),
        };
        long n = seq.Count;
        long st = Idx(step) ?? 1;
        if (st == 0) throw new TemplateException("ValueError", "slice step cannot be zero");
        long lo, hi;
        if (st > 0)
        {
            lo = Clamp(Idx(start) ?? 0, n, 0, n);
            hi = Clamp(Idx(stop) ?? n, n, 0, n);
        }
        else
        {
            lo = Clamp(Idx(start) ?? n - 1, n, -1, n - 1);
            hi = Idx(stop) is long sp ? Clamp(sp, n, -1, n - 1) : -1;
        }
        var r = new List<object?>();
        if (st > 0) for (long i = lo; i < hi; i += st) r.Add(seq[(int)i]);
        else for (long i = lo; i > hi; i += st) r.Add(seq[(int)i]);
        return obj switch
        {
            string => string.Concat(r.Cast<string>()),
            object?[] => r.ToArray(),
            _ => r,
        };
    }

    static long Clamp(long i, long n, long lo, long hi)
    {
        if (i < 0) i += n;
        return Math.Clamp(i, lo, hi);
    }

    public static object? Call(object? fn, List<object?> args, KwArgs kwargs) => fn switch
    {
        JinjaCallable c => c.Invoke(args, kwargs),
        LoopContext loop => loop.Recurse(args.Count > 0 ? args[0] : null),
        Undefined u => throw u.Fail(),
        _ => throw new TemplateException("TypeError", $"'{PyOps.TypeName(fn)}' object is not callable"),
    };

    static JinjaCallable Bound(string name, Func<List<object?>, KwArgs, object?> f) => new(name, f);

    static object? Arg(List<object?> a, KwArgs kw, int i, string name, object? dflt = null)
    {
        if (i < a.Count) return a[i];
        foreach (var (k, v) in kw) if (k == name) return v;
        return dflt;
    }

    static string StrArg(object? v, string what) => v switch
    {
        string s => s,
        Undefined u => throw u.Fail(),
        _ => throw new TemplateException("TypeError", $"must be str, not {PyOps.TypeName(v)}"),
    };

    // ------------------------------------------------------------ methods

    static object? StrMethod(string s, string name, List<object?> a, KwArgs kw)
    {
        switch (name)
        {
            case "strip": case "lstrip": case "rstrip":
                {
                    var chars = Arg(a, kw, 0, "chars");
                    string? cs = chars is null ? null : StrArg(chars, "strip arg");
                    return PyStr.Strip(s, cs, name != "rstrip", name != "lstrip");
                }
            case "split": return Split(s, Arg(a, kw, 0, "sep"), Arg(a, kw, 1, "maxsplit", -1L) is long m ? m : -1);
            case "rsplit":
                {
                    var sep = Arg(a, kw, 0, "sep");
                    long max = Arg(a, kw, 1, "maxsplit", -1L) is long m2 ? m2 : -1;
                    if (max < 0) return Split(s, sep, -1);
                    // rsplit: split the reversed problem
                    var parts = Split(s, sep, -1);
                    if (parts.Count <= max + 1) return parts;
                    string joiner = sep is string js ? js : " ";
                    var head = string.Join(joiner, parts.Take(parts.Count - (int)max).Cast<string>());
                    return new List<object?> { head }.Concat(parts.Skip(parts.Count - (int)max)).ToList();
                }
            case "splitlines":
                {
                    var lines = s.Replace("\r\n", "\n").Split(['\n', '\r', '\v', '\f', '\x1c', '\x1d', '\x1e', '\x85', '\u2028', '\u2029']).ToList();
                    if (lines.Count > 0 && lines[^1].Length == 0) lines.RemoveAt(lines.Count - 1);
                    return lines.Cast<object?>().ToList();
                }
            case "startswith": case "endswith":
                {
                    var p = Arg(a, kw, 0, "prefix");
                    var options = p is object?[] t ? t.Select(x => StrArg(x, name + " arg")).ToArray() : [StrArg(p, name + " first arg")];
                    return options.Any(o => name == "startswith" ? s.StartsWith(o, StringComparison.Ordinal) : s.EndsWith(o, StringComparison.Ordinal));
                }
            case "upper": return PyStr.Upper(s);
            case "lower": case "casefold": return PyStr.Lower(s);
            case "title": return PyStr.Title(s);
            case "capitalize": return PyStr.Capitalize(s);
            case "swapcase": return string.Concat(s.EnumerateRunes().Select(r => Rune.IsUpper(r) ? PyStr.Lower(r.ToString()) : PyStr.Upper(r.ToString())));
            case "replace":
                {
                    string old = StrArg(Arg(a, kw, 0, "old"), "replace arg"), nw = StrArg(Arg(a, kw, 1, "new"), "replace arg");
                    long count = Arg(a, kw, 2, "count", -1L) is long c ? c : -1;
                    return Replace(s, old, nw, count);
                }
            case "format": return PyFormat.StrFormat(s, a, kw);
            case "find": case "index": case "rfind": case "rindex":
                {
                    string sub = StrArg(Arg(a, kw, 0, "sub"), name + " arg");
                    int i = name.StartsWith('r') ? s.LastIndexOf(sub, StringComparison.Ordinal) : s.IndexOf(sub, StringComparison.Ordinal);
                    if (i < 0 && name.EndsWith("index")) throw new TemplateException("ValueError", "substring not found");
                    return i < 0 ? -1L : PyStr.Length(s[..i]);
                }
            case "count":
                {
                    string sub = StrArg(Arg(a, kw, 0, "sub"), "count arg");
                    if (sub.Length == 0) return PyStr.Length(s) + 1;
                    long c = 0;
                    for (int i = s.IndexOf(sub, StringComparison.Ordinal); i >= 0; i = s.IndexOf(sub, i + sub.Length, StringComparison.Ordinal)) c++;
                    return c;
                }
            case "join": return string.Join(s, PyOps.Iterate(Arg(a, kw, 0, "iterable")).Select(x => StrArg(x, "sequence item")));
            case "isdigit": case "isnumeric": case "isdecimal": return s.Length > 0 && s.EnumerateRunes().All(Rune.IsDigit);
            case "isalpha": return s.Length > 0 && s.EnumerateRunes().All(Rune.IsLetter);
            case "isalnum": return s.Length > 0 && s.EnumerateRunes().All(Rune.IsLetterOrDigit);
            case "isspace": return s.Length > 0 && s.All(PyStr.IsSpace);
            case "isupper": return s.Any(char.IsLetter) && PyStr.Upper(s) == s && PyStr.Lower(s) != s;
            case "islower": return s.Any(char.IsLetter) && PyStr.Lower(s) == s && PyStr.Upper(s) != s;
            case "istitle": return s.Any(char.IsLetter) && PyStr.Title(s) == s;
            case "zfill":
                {
                    long w = Arg(a, kw, 0, "width") is long z ? z : 0;
                    long n = PyStr.Length(s);
                    if (n >= w) return s;
                    int signLen = s.Length > 0 && (s[0] == '+' || s[0] == '-') ? 1 : 0;
                    return s[..signLen] + new string('0', (int)(w - n)) + s[signLen..];
                }
            case "center": case "ljust": case "rjust":
                {
                    long w = Arg(a, kw, 0, "width") is long z ? z : 0;
                    string fill = Arg(a, kw, 1, "fillchar") is string fc ? fc : " ";
                    long n = PyStr.Length(s);
                    if (n >= w) return s;
                    long pad = w - n;
                    long left = name switch { "ljust" => 0, "rjust" => pad, _ => pad / 2 + (pad & w & 1) };
                    return string.Concat(Enumerable.Repeat(fill, (int)left)) + s + string.Concat(Enumerable.Repeat(fill, (int)(pad - left)));
                }
            case "partition": case "rpartition":
                {
                    string sep = StrArg(Arg(a, kw, 0, "sep"), "partition arg");
                    int i = name == "partition" ? s.IndexOf(sep, StringComparison.Ordinal) : s.LastIndexOf(sep, StringComparison.Ordinal);
                    if (i < 0) return name == "partition" ? new object?[] { s, "", "" } : new object?[] { "", "", s };
                    return new object?[] { s[..i], sep, s[(i + sep.Length)..] };
                }
            case "removeprefix": { string p = StrArg(Arg(a, kw, 0, "prefix"), "arg"); return s.StartsWith(p, StringComparison.Ordinal) ? s[p.Length..] : s; }
            case "removesuffix": { string p = StrArg(Arg(a, kw, 0, "suffix"), "arg"); return p.Length > 0 && s.EndsWith(p, StringComparison.Ordinal) ? s[..^p.Length] : s; }
            case "expandtabs": return s.Replace("\t", new string(' ', (int)(Arg(a, kw, 0, "tabsize", 8L) as long? ?? 8)));
        }
        throw new TemplateException("AttributeError", $"'str' object has no attribute '{name}'");
    }

    static string Replace(string s, string old, string nw, long count)
    {
        if (count < 0) return old.Length == 0 ? InsertBetweenAll(s, nw) : s.Replace(old, nw, StringComparison.Ordinal);
        var sb = new StringBuilder();
        int pos = 0;
        for (long c = 0; c < count; c++)
        {
            int i = s.IndexOf(old, pos, StringComparison.Ordinal);
            if (i < 0 || old.Length == 0) break;
            sb.Append(s, pos, i - pos).Append(nw);
            pos = i + old.Length;
        }
        return sb.Append(s, pos, s.Length - pos).ToString();
    }

    static string InsertBetweenAll(string s, string nw) => nw + string.Concat(PyStr.Chars(s).Select(c => c + nw));

    static List<object?> Split(string s, object? sep, long max)
    {
        var r = new List<object?>();
        if (sep is null or Undefined)
        {
            int i = 0, n = s.Length;
            while (true)
            {
                while (i < n && PyStr.IsSpace(s[i])) i++;
                if (i >= n) break;
                if (max >= 0 && r.Count == max) { r.Add(PyStr.Strip(s[i..], null, false, true)); break; }
                int j = i;
                while (j < n && !PyStr.IsSpace(s[j])) j++;
                r.Add(s[i..j]);
                i = j;
            }
            return r;
        }
        string sp = StrArg(sep, "must be str or None");
        if (sp.Length == 0) throw new TemplateException("ValueError", "empty separator");
        int pos = 0;
        while (max < 0 || r.Count < max)
        {
            int k = s.IndexOf(sp, pos, StringComparison.Ordinal);
            if (k < 0) break;
            r.Add(s[pos..k]);
            pos = k + sp.Length;
        }
        r.Add(s[pos..]);
        return r;
    }

    static object? DictMethod(PyDict d, string name, List<object?> a) => name switch
    {
        "items" => d.Select(kv => (object?)new object?[] { kv.Key, kv.Value }).ToList(),
        "keys" => d.Keys.Cast<object?>().ToList(),
        "values" => d.Values.ToList(),
        "get" => a.Count > 0 && a[0] is not null && d.TryGetValue(a[0]!, out var v) ? v : a.Count > 1 ? a[1] : null,
        "copy" => Copy(d),
        _ => throw new TemplateException("AttributeError", name),
    };

    static PyDict Copy(PyDict d)
    {
        var c = new PyDict();
        foreach (var kv in d) c[kv.Key] = kv.Value;
        return c;
    }

    static object? SeqMethod(List<object?> l, string name, List<object?> a)
    {
        switch (name)
        {
            case "index":
                for (int i = 0; i < l.Count; i++) if (PyOps.Eq(l[i], a.FirstOrDefault())) return (long)i;
                throw new TemplateException("ValueError", $"{PyOps.Repr(a.FirstOrDefault())} is not in list");
            case "count": return (long)l.Count(x => PyOps.Eq(x, a.FirstOrDefault()));
            default: return new List<object?>(l);
        }
    }

    // ------------------------------------------------------------ filters

    public static object? ApplyFilter(string name, object? v, List<object?> a, KwArgs kw, Frame f)
    {
        switch (name)
        {
            case "trim":
                {
                    var chars = Arg(a, kw, 0, "chars");
                    return PyStr.Strip(PyOps.Str(v), chars is null ? null : PyOps.Str(chars), true, true);
                }
            case "length": case "count": return PyOps.Len(v);
            case "string": return PyOps.Str(v);
            case "upper": return PyStr.Upper(PyOps.Str(v));
            case "lower": return PyStr.Lower(PyOps.Str(v));
            case "capitalize": return PyStr.Capitalize(PyOps.Str(v));
            case "title": return JinjaTitle(PyOps.Str(v));
            case "tojson":
                {
                    // transformers' override: tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)
                    bool ensureAscii = PyOps.Truthy(Arg(a, kw, 0, "ensure_ascii", false));
                    var indent = Arg(a, kw, 1, "indent");
                    var seps = Arg(a, kw, 2, "separators");
                    bool sortKeys = PyOps.Truthy(Arg(a, kw, 3, "sort_keys", false));
                    return PyJson.Dumps(v, indent, seps, sortKeys, ensureAscii);
                }
            case "join":
                {
                    string d = Arg(a, kw, 0, "d") is object dv ? PyOps.Str(dv) : "";
                    var attr = Arg(a, kw, 1, "attribute");
                    var items = PyOps.Iterate(v);
                    if (attr is not null) items = items.Select(x => GetPath(x, attr)).ToList();
                    return string.Join(d, items.Select(PyOps.Str));
                }
            case "default": case "d":
                {
                    var dflt = Arg(a, kw, 0, "default_value", "");
                    bool boolean = PyOps.Truthy(Arg(a, kw, 1, "boolean", false));
                    return v is Undefined || (boolean && !PyOps.Truthy(v)) ? dflt : v;
                }
            case "first": { var it = PyOps.Iterate(v); return it.Count > 0 ? it[0] : Undefined.WithHint("No first item, sequence was empty."); }
            case "last": { var it = PyOps.Iterate(v); return it.Count > 0 ? it[^1] : Undefined.WithHint("No last item, sequence was empty."); }
            case "list": return PyOps.Iterate(v);
            case "reverse":
                if (v is string rs) return string.Concat(PyStr.Chars(rs).Reverse());
                if (v is not (List<object?> or object?[] or PyDict or Undefined)) throw new TemplateException("FilterArgumentError", "argument must be iterable");
                { var it = PyOps.Iterate(v); it.Reverse(); return it; }
            case "replace":
                {
                    string old = PyOps.Str(Arg(a, kw, 0, "old")), nw = PyOps.Str(Arg(a, kw, 1, "new"));
                    long count = Arg(a, kw, 2, "count") is long c ? c : -1;
                    return Replace(PyOps.Str(v), old, nw, count);
                }
            case "int": return ToInt(v, Arg(a, kw, 0, "default", 0L), Arg(a, kw, 1, "base", 10L) is long b ? (int)b : 10);
            case "float": return ToFloat(v, Arg(a, kw, 0, "default", 0.0));
            case "abs":
                return v switch { long l => (object)Math.Abs(l), double d => (object)Math.Abs(d), bool bb => bb ? 1L : 0L, Undefined u => throw u.Fail(), _ => throw new TemplateException("TypeError", $"bad operand type for abs(): '{PyOps.TypeName(v)}'") };
            case "round": return Round(v, Arg(a, kw, 0, "precision", 0L), PyOps.Str(Arg(a, kw, 1, "method", "common")));
            case "items":
                if (v is Undefined) return new List<object?>();
                if (v is not PyDict id) throw new TemplateException("TypeError", "Can only get item pairs from a mapping.");
                return DictMethod(id, "items", []);
            case "dictsort":
                {
                    if (v is not PyDict dd) throw new TemplateException("AttributeError", $"'{PyOps.TypeName(v)}' object has no attribute 'items'");
                    bool cs = PyOps.Truthy(Arg(a, kw, 0, "case_sensitive", false));
                    string by = PyOps.Str(Arg(a, kw, 1, "by", "key"));
                    bool rev = PyOps.Truthy(Arg(a, kw, 2, "reverse", false));
                    int pos = by == "key" ? 0 : by == "value" ? 1 : throw new TemplateException("FilterArgumentError", "You can only sort by either \"key\" or \"value\"");
                    var pairs = ((List<object?>)DictMethod(dd, "items", [])!).ToList();
                    return SortList(pairs, x => SortKey(((object?[])x!)[pos], cs), rev);
                }
            case "sort":
                {
                    bool rev = PyOps.Truthy(Arg(a, kw, 0, "reverse", false));
                    bool cs = PyOps.Truthy(Arg(a, kw, 1, "case_sensitive", false));
                    var attr = Arg(a, kw, 2, "attribute");
                    return SortList(PyOps.Iterate(v), x => SortKey(attr is null ? x : GetPath(x, attr), cs), rev);
                }
            case "unique":
                {
                    bool cs = PyOps.Truthy(Arg(a, kw, 0, "case_sensitive", false));
                    var attr = Arg(a, kw, 1, "attribute");
                    var seen = new List<object?>();
                    var r = new List<object?>();
                    foreach (var x in PyOps.Iterate(v))
                    {
                        var key = SortKey(attr is null ? x : GetPath(x, attr), cs);
                        if (seen.Any(s => PyOps.Eq(s, key))) continue;
                        seen.Add(key);
                        r.Add(x);
                    }
                    return r;
                }
            case "min": case "max":
                {
                    bool cs = PyOps.Truthy(Arg(a, kw, 0, "case_sensitive", false));
                    var attr = Arg(a, kw, 1, "attribute");
                    var it = PyOps.Iterate(v);
                    if (it.Count == 0) return Undefined.WithHint($"No aggregated item, sequence was empty.");
                    var best = it[0];
                    foreach (var x in it.Skip(1))
                    {
                        int c = PyOps.Compare(SortKey(attr is null ? x : GetPath(x, attr), cs), SortKey(attr is null ? best : GetPath(best, attr), cs), "<");
                        if (name == "min" ? c < 0 : c > 0) best = x;
                    }
                    return best;
                }
            case "sum":
                {
                    var attr = Arg(a, kw, 0, "attribute");
                    object? total = Arg(a, kw, 1, "start", 0L);
                    foreach (var x in PyOps.Iterate(v)) total = PyOps.Add(total, attr is null ? x : GetPath(x, attr));
                    return total;
                }
            case "batch":
                {
                    long n = Arg(a, kw, 0, "linecount") is long bn ? bn : throw new TemplateException("TypeError", "batch needs a count");
                    var fill = Arg(a, kw, 1, "fill_with");
                    bool hasFill = a.Count > 1 || kw.Any(k => k.Key == "fill_with");
                    var r = new List<object?>();
                    var cur = new List<object?>();
                    foreach (var x in PyOps.Iterate(v))
                    {
                        if (cur.Count == n) { r.Add(cur); cur = []; }
                        cur.Add(x);
                    }
                    if (cur.Count > 0)
                    {
                        if (hasFill) while (cur.Count < n) cur.Add(fill);
                        r.Add(cur);
                    }
                    return r;
                }
            case "slice":
                {
                    long slices = Arg(a, kw, 0, "slices") is long sn ? sn : 1;
                    var fill = Arg(a, kw, 1, "fill_with");
                    bool hasFill = a.Count > 1;
                    var seq = PyOps.Iterate(v);
                    long per = seq.Count / slices, extra = seq.Count % slices, offset = 0;
                    var r = new List<object?>();
                    for (long i = 0; i < slices; i++)
                    {
                        long start = offset + i * per;
                        if (i < extra) offset++;
                        long end = offset + (i + 1) * per;
                        var tmp = seq.Skip((int)start).Take((int)(end - start)).ToList();
                        if (hasFill && i >= extra) tmp.Add(fill);
                        r.Add(tmp);
                    }
                    return r;
                }
            case "wordcount": return (long)Regex.Matches(PyOps.Str(v), @"\w+").Count;
            case "map":
                {
                    var it = PyOps.Truthy(v) ? PyOps.Iterate(v) : [];
                    var attr = kw.FirstOrDefault(k => k.Key == "attribute");
                    if (attr.Key is not null)
                    {
                        var dflt = kw.FirstOrDefault(k => k.Key == "default");
                        return it.Select(x => { var r = GetPath(x, attr.Value); return r is Undefined && dflt.Key is not null ? dflt.Value : r; }).ToList();
                    }
                    if (a.Count == 0) throw new TemplateException("FilterArgumentError", "map requires a filter argument");
                    string fname = PyOps.Str(a[0]);
                    var rest = a.Skip(1).ToList();
                    return it.Select(x => ApplyFilter(fname, x, rest, kw, f)).ToList();
                }
            case "select": case "reject":
                {
                    bool want = name == "select";
                    var it = PyOps.Truthy(v) ? PyOps.Iterate(v) : [];
                    if (a.Count == 0) return it.Where(x => PyOps.Truthy(x) == want).ToList();
                    string test = PyOps.Str(a[0]);
                    var rest = a.Skip(1).ToList();
                    return it.Where(x => PyOps.Truthy(ApplyTest(test, x, rest, kw, f)) == want).ToList();
                }
            case "selectattr": case "rejectattr":
                {
                    bool want = name == "selectattr";
                    var it = PyOps.Truthy(v) ? PyOps.Iterate(v) : [];
                    if (a.Count == 0) throw new TemplateException("FilterArgumentError", "Missing parameter for attribute name");
                    var attr = a[0];
                    if (a.Count == 1) return it.Where(x => PyOps.Truthy(GetPath(x, attr)) == want).ToList();
                    string test = PyOps.Str(a[1]);
                    var rest = a.Skip(2).ToList();
                    return it.Where(x => PyOps.Truthy(ApplyTest(test, GetPath(x, attr), rest, kw, f)) == want).ToList();
                }
            case "attr": return GetAttr(v, PyOps.Str(Arg(a, kw, 0, "name")));
            case "indent":
                {
                    var width = Arg(a, kw, 0, "width", 4L);
                    bool first = PyOps.Truthy(Arg(a, kw, 1, "first", false));
                    bool blank = PyOps.Truthy(Arg(a, kw, 2, "blank", false));
                    string ind = width is string ws ? ws : new string(' ', (int)(width is long wl ? wl : 4));
                    // Jinja appends "\n" to the value itself: only strings (and markup) take it.
                    if (v is Undefined uv) throw uv.Fail();
                    if (v is not string) throw new TemplateException("TypeError", $"unsupported operand type(s) for +=: '{PyOps.TypeName(v)}' and 'str'");
                    string s = PyOps.Str(v) + "\n";
                    var lines = (List<object?>)StrMethod(s, "splitlines", [], [])!;
                    string rv;
                    if (blank) rv = string.Join("\n" + ind, lines.Cast<string>());
                    else
                    {
                        rv = lines.Count > 0 ? (string)lines[0]! : "";
                        var rest = lines.Skip(1).Cast<string>().ToList();
                        if (rest.Count > 0) rv += "\n" + string.Join("\n", rest.Select(l => l.Length > 0 ? ind + l : l));
                    }
                    return first ? ind + rv : rv;
                }
            case "center":
                return StrMethod(PyOps.Str(v), "center", [Arg(a, kw, 0, "width", 80L)], []);
            case "truncate":
                {
                    long length = Arg(a, kw, 0, "length", 255L) is long tl ? tl : 255;
                    bool killwords = PyOps.Truthy(Arg(a, kw, 1, "killwords", false));
                    string end = PyOps.Str(Arg(a, kw, 2, "end", "..."));
                    long leeway = Arg(a, kw, 3, "leeway", 5L) is long lw ? lw : 5;
                    if (PyOps.Len(v) <= length + leeway) return v;
                    string s = PyOps.Str(v);
                    if (killwords) return s[..(int)(length - end.Length)] + end;
                    var cut = s[..(int)(length - end.Length)];
                    int sp = cut.LastIndexOf(' ');
                    return (sp >= 0 ? cut[..sp] : cut) + end;
                }
            case "e": case "escape": case "forceescape":
                return PyOps.Str(v).Replace("&", "&amp;").Replace(">", "&gt;").Replace("<", "&lt;").Replace("'", "&#39;").Replace("\"", "&#34;");
            case "safe": return v is string ? v : PyOps.Str(v);
            case "format": return PyFormat.Percent(PyOps.Str(v), a.Count == 0 && kw.Count > 0 ? [kw.ToDictionary(k => k.Key, k => k.Value)] : a);
            case "striptags": return Regex.Replace(Regex.Replace(PyOps.Str(v), "<[^>]*>", ""), @"\s+", " ").Trim();
            case "pprint": return PyOps.Repr(v);
        }
        throw new TemplateException("TemplateAssertionError", $"No filter named '{name}'.");
    }

    /// <summary>Jinja's title filter: upper-case the first letter of each word split on whitespace, -, (, {, [, &lt;.</summary>
    static string JinjaTitle(string s)
    {
        var parts = Regex.Split(s, @"([-\s({\[<]+)");
        var sb = new StringBuilder();
        foreach (var item in parts)
        {
            if (item.Length == 0) continue;
            var first = Rune.GetRuneAt(item, 0);
            sb.Append(PyStr.Upper(first.ToString())).Append(PyStr.Lower(item[first.Utf16SequenceLength..]));
        }
        return sb.ToString();
    }

    /// <summary>Dotted attribute path as map/selectattr/sort(attribute=) use it; integers index.</summary>
    static object? GetPath(object? x, object? attr)
    {
        if (attr is long l) return GetItem(x, l);
        foreach (var part in PyOps.Str(attr).Split('.'))
            x = long.TryParse(part, out long li) ? GetItem(x, li) : GetItem(x, part);
        return x;
    }

    static object? SortKey(object? x, bool caseSensitive) => !caseSensitive && x is string s ? PyStr.Lower(s) : x;

    static List<object?> SortList(List<object?> items, Func<object?, object?> key, bool reverse)
    {
        var keyed = items.Select((x, i) => (Key: key(x), Item: x, I: i)).ToList();
        keyed.Sort((p, q) =>
        {
            int c = PyOps.Compare(p.Key, q.Key, "<");
            if (reverse) c = -c;
            return c != 0 ? c : p.I.CompareTo(q.I);
        });
        return keyed.Select(k => k.Item).ToList();
    }

    static object? ToInt(object? v, object? dflt, int b)
    {
        switch (v)
        {
            case Undefined u: throw u.Fail();
            case long: return v;
            case bool bb: return bb ? 1L : 0L;
            case double d: return double.IsFinite(d) ? (long)Math.Truncate(d) : dflt;
            case string s:
                {
                    string t = PyStr.Strip(s, null, true, true).Replace("_", "");
                    try
                    {
                        if (b == 10) return long.Parse(t, NumberStyles.AllowLeadingSign, Inv);
                        string u = t.StartsWith("0x") || t.StartsWith("0o") || t.StartsWith("0b") ? t[2..] : t;
                        return Convert.ToInt64(u, b);
                    }
                    catch (Exception e) when (e is FormatException or OverflowException or ArgumentException)
                    {
                        return double.TryParse(t, NumberStyles.Float, Inv, out var d) && double.IsFinite(d) ? (long)Math.Truncate(d) : dflt;
                    }
                }
            default: return dflt;
        }
    }

    static object? ToFloat(object? v, object? dflt) => v switch
    {
        Undefined u => throw u.Fail(),
        double => v,
        long l => (double)l,
        bool b => b ? 1.0 : 0.0,
        string s => double.TryParse(PyStr.Strip(s, null, true, true), NumberStyles.Float, Inv, out var d) ? d
            : PyStr.Strip(s, null, true, true).ToLowerInvariant() switch { "inf" or "+inf" or "infinity" => double.PositiveInfinity, "-inf" or "-infinity" => double.NegativeInfinity, "nan" => double.NaN, _ => dflt },
        _ => dflt,
    };

    static object? Round(object? v, object? precision, string method)
    {
        if (v is Undefined) throw new TemplateException("TypeError", "type Undefined doesn't define __round__ method");
        if (method == "common" && v is long or bool) return v is bool bv ? (bv ? 1L : 0L) : v; // Python round(int, n) stays int
        double x = v switch { long l => l, double d => d, bool b => b ? 1 : 0, _ => throw new TemplateException("TypeError", $"type {PyOps.TypeName(v)} doesn't define __round__ method") };
        int p = precision is long pl ? (int)pl : 0;
        double scale = Math.Pow(10, p);
        return method switch
        {
            "common" => p == 0 ? Math.Round(x, MidpointRounding.ToEven) : double.Parse(x.ToString("F" + Math.Max(p, 0), Inv), Inv),
            "ceil" => Math.Ceiling(x * scale) / scale,
            "floor" => Math.Floor(x * scale) / scale,
            _ => throw new TemplateException("FilterArgumentError", "method must be common, ceil or floor"),
        };
    }

    // ------------------------------------------------------------ tests

    public static bool ApplyTest(string name, object? v, List<object?> a, KwArgs kw, Frame f)
    {
        object? A0() => a.Count > 0 ? a[0] : kw.Count > 0 ? kw[0].Value : throw new TemplateException("TypeError", $"test '{name}' needs an argument");
        switch (name)
        {
            case "defined": return v is not Undefined;
            case "undefined": return v is Undefined;
            case "none": return v is null;
            case "boolean": return v is bool;
            case "true": return v is true;
            case "false": return v is false;
            case "string": return v is string;
            case "number": return v is long or double or bool;
            case "integer": return v is long;
            case "float": return v is double;
            case "mapping": return v is PyDict;
            case "iterable": return v is string or List<object?> or object?[] or PyDict or Undefined;
            case "sequence": return v is string or List<object?> or object?[] or PyDict;
            case "callable": return v is JinjaCallable;
            case "odd": return PyOps.Truthy(PyOps.Eq(PyOps.Mod(v, 2L), 1L));
            case "even": return PyOps.Truthy(PyOps.Eq(PyOps.Mod(v, 2L), 0L));
            case "divisibleby": return PyOps.Eq(PyOps.Mod(v, A0()), 0L);
            case "eq": case "equalto": case "==": return PyOps.Eq(v, A0());
            case "ne": case "!=": return !PyOps.Eq(v, A0());
            case "lt": case "lessthan": case "<": return PyOps.Compare(v, A0(), "<") < 0;
            case "le": case "<=": return PyOps.Compare(v, A0(), "<=") <= 0;
            case "gt": case "greaterthan": case ">": return PyOps.Compare(v, A0(), ">") > 0;
            case "ge": case ">=": return PyOps.Compare(v, A0(), ">=") >= 0;
            case "in": return PyOps.Contains(A0(), v);
            case "sameas": { var o = A0(); return v is null || v is bool || o is null || o is bool ? Equals(v, o) && v?.GetType() == o?.GetType() : ReferenceEquals(v, o); }
            case "lower": return PyOps.Str(v) is var ls && PyStr.Lower(ls) == ls && ls.Any(char.IsLetter);
            case "upper": return PyOps.Str(v) is var us && PyStr.Upper(us) == us && us.Any(char.IsLetter);
            case "escaped": return false;
            case "filter": return KnownFilter(PyOps.Str(v));
            case "test": return KnownTest(PyOps.Str(v));
        }
        throw new TemplateException("TemplateAssertionError", $"No test named '{name}'.");
    }

    static bool KnownFilter(string n)
    {
        try { ApplyFilter(n, "", [], [], null!); return true; }
        catch (TemplateException e) when (e.Kind == "TemplateAssertionError") { return false; }
        catch { return true; }
    }

    static bool KnownTest(string n)
    {
        try { ApplyTest(n, "", [""], [], null!); return true; }
        catch (TemplateException e) when (e.Kind == "TemplateAssertionError") { return false; }
        catch { return true; }
    }

    // ------------------------------------------------------------ strftime

    static readonly string[] Days = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"];
    static readonly string[] Months = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"];

    /// <summary>Python datetime.strftime for the C-locale directives.</summary>
    public static string Strftime(DateTime t, string fmt)
    {
        var sb = new StringBuilder();
        for (int i = 0; i < fmt.Length; i++)
        {
            if (fmt[i] != '%' || i + 1 >= fmt.Length) { sb.Append(fmt[i]); continue; }
            char c = fmt[++i];
            sb.Append(c switch
            {
                'a' => Days[(int)t.DayOfWeek][..3],
                'A' => Days[(int)t.DayOfWeek],
                'w' => ((int)t.DayOfWeek).ToString(Inv),
                'd' => t.Day.ToString("00", Inv),
                'b' or 'h' => Months[t.Month - 1][..3],
                'B' => Months[t.Month - 1],
                'm' => t.Month.ToString("00", Inv),
                'y' => (t.Year % 100).ToString("00", Inv),
                'Y' => t.Year.ToString(Inv),
                'H' => t.Hour.ToString("00", Inv),
                'I' => ((t.Hour + 11) % 12 + 1).ToString("00", Inv),
                'p' => t.Hour < 12 ? "AM" : "PM",
                'M' => t.Minute.ToString("00", Inv),
                'S' => t.Second.ToString("00", Inv),
                'f' => (t.Ticks % TimeSpan.TicksPerSecond / 10).ToString("000000", Inv),
                'j' => t.DayOfYear.ToString("000", Inv),
                'z' => "",
                'Z' => "",
                'c' => $"{Days[(int)t.DayOfWeek][..3]} {Months[t.Month - 1][..3]} {t.Day,2} {t:HH:mm:ss} {t.Year}",
                'x' => t.ToString("MM/dd/yy", Inv),
                'X' => t.ToString("HH:mm:ss", Inv),
                'e' => t.Day.ToString(Inv).PadLeft(2),
                '-' when i + 1 < fmt.Length => StrftimeNoPad(t, fmt[++i]),
                '%' => "%",
                _ => "%" + c,
            });
        }
        return sb.ToString();
    }

    static string StrftimeNoPad(DateTime t, char c) => c switch
    {
        'd' => t.Day.ToString(Inv),
        'm' => t.Month.ToString(Inv),
        'H' => t.Hour.ToString(Inv),
        'I' => ((t.Hour + 11) % 12 + 1).ToString(Inv),
        'M' => t.Minute.ToString(Inv),
        'S' => t.Second.ToString(Inv),
        'j' => t.DayOfYear.ToString(Inv),
        _ => "%-" + c,
    };
}

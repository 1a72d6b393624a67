using System.Text;

namespace Finetrace.Text.Chat;

/// <summary>Shared state of one render: the variables passed in, the globals, and the spans of
/// {% generation %} blocks (transformers' assistant-mask extension) in output character offsets.</summary>
sealed class RenderState(IReadOnlyDictionary<string, object?> vars)
{
    public IReadOnlyDictionary<string, object?> Vars { get; } = vars;
    public List<(int Start, int End)> GenerationSpans { get; } = [];
    public int Depth;
}

/// <summary>A variable scope: a for-loop iteration, a macro call or a with-block opens one; if-blocks do not.
/// A set writes to the innermost scope, so sets inside a loop body vanish after the iteration (Jinja's rule).</summary>
sealed class Frame(RenderState state, Frame? parent)
{
    readonly Dictionary<string, object?> _vars = new(StringComparer.Ordinal);
    public RenderState State { get; } = state;
    public Frame? Parent { get; } = parent;

    /// <summary>Marks names the frame assigns before any use (Jinja initialises them to "missing"), so that child
    /// scopes running before the assignment see them undefined rather than an outer or context value.</summary>
    public Frame Declare(string[] missing)
    {
        foreach (var n in missing) _vars[n] = MissingValue;
        return this;
    }

    static readonly object MissingValue = new();

    public object? Lookup(string name)
    {
        for (var f = this; f is not null; f = f.Parent)
            if (f._vars.TryGetValue(name, out var v)) return ReferenceEquals(v, MissingValue) ? Undefined.Named(name) : v;
        if (State.Vars.TryGetValue(name, out var g)) return g;
        return JinjaBuiltins.Globals.TryGetValue(name, out var b) ? b : Undefined.Named(name);
    }

    public void Set(string name, object? value) => _vars[name] = value;
}

enum Flow { Normal, Break, Continue }

abstract class Stmt
{
    public abstract Flow Exec(Frame f, StringBuilder o);

    /// <summary>Symbol effects in the frame the statement runs in (Jinja's FrameSymbolVisitor).</summary>
    internal virtual void AnalyzeOwn(Symbols s) { }

    /// <summary>Analyses the child frames the statement opens, once the enclosing frame is fully analysed.</summary>
    internal virtual void AnalyzeChildren(Symbols s) { }

    /// <summary>Analyses one frame's statements; returns the names to declare missing when the frame starts.</summary>
    internal static string[] AnalyzeFrame(List<Stmt> body, Symbols s)
    {
        foreach (var st in body) st.AnalyzeOwn(s);
        foreach (var st in body) st.AnalyzeChildren(s);
        return s.UndefinedAtStart();
    }

    public static Flow ExecAll(List<Stmt> body, Frame f, StringBuilder o)
    {
        foreach (var s in body)
        {
            var flow = s.Exec(f, o);
            if (flow != Flow.Normal) return flow;
        }
        return Flow.Normal;
    }

    /// <summary>A block body rendered in its own frame, then passed through the filters ({% set x | f %}, {% filter f %}).</summary>
    protected static object? RenderFiltered(List<Stmt> body, string[] missing, List<FilterCall> filters, Frame f)
    {
        var sb = new StringBuilder();
        ExecAll(body, new Frame(f.State, f).Declare(missing), sb);
        object? v = sb.ToString();
        foreach (var fc in filters) v = fc.Apply(v, f);
        return v;
    }
}

sealed class OutputStmt(string text) : Stmt
{
    public override Flow Exec(Frame f, StringBuilder o) { o.Append(text); return Flow.Normal; }
}

sealed class PrintStmt(Expr e) : Stmt
{
    public override Flow Exec(Frame f, StringBuilder o) { o.Append(PyOps.Str(e.Eval(f))); return Flow.Normal; }
    internal override void AnalyzeOwn(Symbols s) => s.LoadExpr(e);
}

sealed class IfStmt(List<(Expr Test, List<Stmt> Body)> branches, List<Stmt>? elseBody) : Stmt
{
    public override Flow Exec(Frame f, StringBuilder o)
    {
        foreach (var (test, body) in branches)
            if (PyOps.Truthy(test.Eval(f))) return ExecAll(body, f, o);
        return elseBody is null ? Flow.Normal : ExecAll(elseBody, f, o);
    }

    // As Jinja: branches are the body, the elif chain (each elif an if of its own) and the else; a name assigned
    // in some but not all of them is read from outside until assigned.
    internal override void AnalyzeOwn(Symbols s)
    {
        s.LoadExpr(branches[0].Test);
        var body = s.Copy();
        foreach (var st in branches[0].Body) st.AnalyzeOwn(body);
        var elifs = s.Copy();
        for (int k = 1; k < branches.Count; k++)
        {
            elifs.LoadExpr(branches[k].Test);
            var b = elifs.Copy();
            foreach (var st in branches[k].Body) st.AnalyzeOwn(b);
            elifs.BranchUpdate([b, elifs.Copy(), elifs.Copy()]);
        }
        var otherwise = s.Copy();
        foreach (var st in elseBody ?? []) st.AnalyzeOwn(otherwise);
        s.BranchUpdate([body, elifs, otherwise]);
    }

    internal override void AnalyzeChildren(Symbols s)
    {
        foreach (var (_, body) in branches) foreach (var st in body) st.AnalyzeChildren(s);
        foreach (var st in elseBody ?? []) st.AnalyzeChildren(s);
    }
}

sealed class LoopControlStmt(bool isBreak) : Stmt
{
    public override Flow Exec(Frame f, StringBuilder o) => isBreak ? Flow.Break : Flow.Continue;
}

sealed class ForStmt(Expr target, Expr iter, Expr? test, List<Stmt> body, List<Stmt> elseBody, bool recursive) : Stmt
{
    string[] _bodyMissing = [], _elseMissing = [];

    public override Flow Exec(Frame f, StringBuilder o) => Run(f, iter.Eval(f), 0, o);

    internal override void AnalyzeOwn(Symbols s) => s.LoadExpr(iter);

    internal override void AnalyzeChildren(Symbols s)
    {
        var loop = new Symbols(s);
        foreach (var n in Assign.Names(target)) loop.Declare(n);
        loop.Declare("loop");
        if (test is not null) loop.LoadExpr(test);
        _bodyMissing = AnalyzeFrame(body, loop);
        _elseMissing = AnalyzeFrame(elseBody, new Symbols(s));
    }

    /// <summary>One loop over <paramref name="iterable"/>; a recursive loop's `loop(children)` runs it again one level deeper.</summary>
    Flow Run(Frame f, object? iterable, int depth0, StringBuilder o)
    {
        var items = PyOps.Iterate(iterable);
        if (test is not null)
        {
            var kept = new List<object?>();
            foreach (var item in items)
            {
                var tf = new Frame(f.State, f);
                Assign.Bind(tf, target, item);
                if (PyOps.Truthy(test.Eval(tf))) kept.Add(item);
            }
            items = kept;
        }
        if (items.Count == 0) { ExecAll(elseBody, new Frame(f.State, f).Declare(_elseMissing), o); return Flow.Normal; }
        // depth counts recursion of recursive loops only; a nested loop starts at depth 1 again.
        Func<object?, string>? recurse = recursive ? children =>
        {
            if (f.State.Depth++ > 200) throw new TemplateException("RecursionError", "maximum recursion depth exceeded");
            try { var sb = new StringBuilder(); Run(f, children, depth0 + 1, sb); return sb.ToString(); }
            finally { f.State.Depth--; }
        } : null;
        var loop = new LoopContext(items, depth0, recurse);
        for (int i = 0; i < items.Count; i++)
        {
            loop.Index0 = i;
            var inner = new Frame(f.State, f).Declare(_bodyMissing);
            Assign.Bind(inner, target, items[i]);
            inner.Set("loop", loop);
            if (ExecAll(body, inner, o) == Flow.Break) break;
        }
        return Flow.Normal;
    }
}

sealed class SetStmt(Expr target, Expr value) : Stmt
{
    public override Flow Exec(Frame f, StringBuilder o) { Assign.Bind(f, target, value.Eval(f)); return Flow.Normal; }

    internal override void AnalyzeOwn(Symbols s)
    {
        s.LoadExpr(value);
        foreach (var n in Assign.Names(target)) s.Store(n);
    }
}

sealed class SetAttrStmt(string ns, string attr, Expr value) : Stmt
{
    internal override void AnalyzeOwn(Symbols s) { s.LoadExpr(value); s.LoadName(ns); }

    public override Flow Exec(Frame f, StringBuilder o)
    {
        var target = f.Lookup(ns);
        if (target is not Namespace n) throw new TemplateException("TemplateRuntimeError", "cannot assign attribute on non-namespace object");
        n.Attrs[attr] = value.Eval(f);
        return Flow.Normal;
    }
}

sealed class SetBlockStmt(string name, List<FilterCall> filters, List<Stmt> body) : Stmt
{
    string[] _missing = [];
    internal override void AnalyzeOwn(Symbols s) => s.Store(name);
    internal override void AnalyzeChildren(Symbols s) => _missing = AnalyzeFrame(body, new Symbols(s));

    public override Flow Exec(Frame f, StringBuilder o)
    {
        f.Set(name, RenderFiltered(body, _missing, filters, f));
        return Flow.Normal;
    }
}

sealed class FilterBlockStmt(List<FilterCall> filters, List<Stmt> body) : Stmt
{
    string[] _missing = [];
    internal override void AnalyzeOwn(Symbols s) { foreach (var fc in filters) fc.Load(s); }
    internal override void AnalyzeChildren(Symbols s) => _missing = AnalyzeFrame(body, new Symbols(s));

    public override Flow Exec(Frame f, StringBuilder o)
    {
        o.Append(PyOps.Str(RenderFiltered(body, _missing, filters, f)));
        return Flow.Normal;
    }
}

sealed class WithStmt(List<Expr> targets, List<Expr> values, List<Stmt> body) : Stmt
{
    string[] _missing = [];
    internal override void AnalyzeOwn(Symbols s) { foreach (var v in values) s.LoadExpr(v); }

    internal override void AnalyzeChildren(Symbols s)
    {
        var w = new Symbols(s);
        foreach (var t in targets) foreach (var n in Assign.Names(t)) w.Declare(n);
        _missing = AnalyzeFrame(body, w);
    }

    public override Flow Exec(Frame f, StringBuilder o)
    {
        var inner = new Frame(f.State, f).Declare(_missing);
        for (int i = 0; i < targets.Count; i++) Assign.Bind(inner, targets[i], values[i].Eval(f));
        return ExecAll(body, inner, o);
    }
}

sealed class GenerationStmt(List<Stmt> body) : Stmt
{
    // transformers' AssistantTracker compiles the block to a call block: its body is a frame of its own.
    string[] _missing = [];
    internal override void AnalyzeChildren(Symbols s) => _missing = AnalyzeFrame(body, new Symbols(s));

    public override Flow Exec(Frame f, StringBuilder o)
    {
        // Offsets are only meaningful at the top-level output buffer; nested buffers (macros, set blocks) are not tracked.
        int start = o.Length;
        var flow = ExecAll(body, new Frame(f.State, f).Declare(_missing), o);
        f.State.GenerationSpans.Add((start, o.Length));
        return flow;
    }
}

sealed class MacroDef(string name, List<string> pars, List<Expr> defaults, List<Stmt> body)
{
    string[] _missing = [];

    internal void Analyze(Symbols parent)
    {
        var m = new Symbols(parent);
        foreach (var p in pars) m.Declare(p);
        foreach (var n in new[] { "varargs", "kwargs", "caller" }) m.Declare(n);
        foreach (var d in defaults) m.LoadExpr(d);
        _missing = Stmt.AnalyzeFrame(body, m);
    }

    public JinjaCallable Bind(Frame defining, JinjaCallable? caller = null) => new(name, (args, kwargs) =>
    {
        if (defining.State.Depth++ > 200) throw new TemplateException("RecursionError", "maximum recursion depth exceeded");
        try
        {
            var f = new Frame(defining.State, defining).Declare(_missing);
            var kw = new Dictionary<string, object?>(StringComparer.Ordinal);
            foreach (var (k, v) in kwargs) kw[k] = v;
            int firstDefault = pars.Count - defaults.Count;
            for (int i = 0; i < pars.Count; i++)
            {
                object? v;
                if (i < args.Count)
                {
                    if (kw.ContainsKey(pars[i])) throw new TemplateException("TypeError", $"macro '{name}' got multiple values for argument '{pars[i]}'");
                    v = args[i];
                }
                else if (kw.Remove(pars[i], out var kv)) v = kv;
                else if (i >= firstDefault) v = defaults[i - firstDefault].Eval(f);
                else v = Undefined.WithHint($"parameter '{pars[i]}' was not provided");
                f.Set(pars[i], v);
            }
            f.Set("varargs", args.Skip(pars.Count).ToArray());
            var kwd = new PyDict();
            foreach (var (k, v) in kw) kwd[k] = v;
            f.Set("kwargs", kwd);
            if (kw.Remove("caller", out var callerArg)) f.Set("caller", callerArg);
            else if (caller is not null) f.Set("caller", caller);
            var sb = new StringBuilder();
            Stmt.ExecAll(body, f, sb);
            return sb.ToString();
        }
        finally { defining.State.Depth--; }
    });

    public string Name => name;
}

sealed class MacroStmt(MacroDef def) : Stmt
{
    internal override void AnalyzeOwn(Symbols s) => s.Store(def.Name);
    internal override void AnalyzeChildren(Symbols s) => def.Analyze(s);

    public override Flow Exec(Frame f, StringBuilder o) { f.Set(def.Name, def.Bind(f)); return Flow.Normal; }
}

sealed class CallBlockStmt(CallExpr call, MacroDef callerDef) : Stmt
{
    internal override void AnalyzeOwn(Symbols s) => s.LoadExpr(call);
    internal override void AnalyzeChildren(Symbols s) => callerDef.Analyze(s);

    public override Flow Exec(Frame f, StringBuilder o)
    {
        var caller = callerDef.Bind(f);
        o.Append(PyOps.Str(call.Eval(f, caller)));
        return Flow.Normal;
    }
}

static class Assign
{
    public static IEnumerable<string> Names(Expr target) =>
        target is NameExpr n ? [n.Name] : ((TupleExpr)target).Items.SelectMany(Names);

    public static void Bind(Frame f, Expr target, object? value)
    {
        if (target is NameExpr n) { f.Set(n.Name, value); return; }
        var names = ((TupleExpr)target).Items;
        var items = PyOps.Iterate(value);
        if (items.Count != names.Count)
            throw new TemplateException("ValueError", items.Count > names.Count
                ? $"too many values to unpack (expected {names.Count})"
                : $"not enough values to unpack (expected {names.Count}, got {items.Count})");
        for (int i = 0; i < names.Count; i++) Bind(f, names[i], items[i]);
    }
}

/// <summary>Jinja's `loop` object.</summary>
public sealed class LoopContext(List<object?> items, int depth0, Func<object?, string>? recurse = null)
{
    public int Index0;
    object? _lastChanged = Undefined.Plain;

    /// <summary>`loop(children)` in a loop marked recursive.</summary>
    public string Recurse(object? children) => recurse is null
        ? throw new TemplateException("TypeError", "The loop must have the 'recursive' marker to be called recursively.")
        : recurse(children);

    public object? Get(string name) => name switch
    {
        "index0" => (long)Index0,
        "index" => (long)Index0 + 1,
        "revindex" => (long)(items.Count - Index0),
        "revindex0" => (long)(items.Count - Index0 - 1),
        "first" => Index0 == 0,
        "last" => Index0 == items.Count - 1,
        "length" => (long)items.Count,
        "depth" => (long)depth0 + 1,
        "depth0" => (long)depth0,
        "previtem" => Index0 > 0 ? items[Index0 - 1] : Undefined.WithHint("there is no previous item"),
        "nextitem" => Index0 + 1 < items.Count ? items[Index0 + 1] : Undefined.WithHint("there is no next item"),
        "cycle" => new JinjaCallable("cycle", (args, _) =>
            args.Count == 0 ? throw new TemplateException("TypeError", "no items for cycling given") : args[Index0 % args.Count]),
        "changed" => new JinjaCallable("changed", (args, _) =>
        {
            object? v = args.Count == 1 ? args[0] : args.ToArray();
            if (_lastChanged is Undefined || !PyOps.Eq(_lastChanged, v)) { _lastChanged = v; return true; }
            return false;
        }),
        _ => Undefined.Missing(this, name),
    };
}

// ---------------------------------------------------------------- expressions

abstract class Expr
{
    public abstract object? Eval(Frame f);

    /// <summary>Sub-expressions, for the symbol analysis.</summary>
    public virtual IEnumerable<Expr?> Children => [];
}

sealed class ConstExpr(object? value) : Expr
{
    public override object? Eval(Frame f) => value;
}

sealed class NameExpr(string name) : Expr
{
    public string Name => name;
    public override object? Eval(Frame f) => f.Lookup(name);
}

sealed class ListExpr(List<Expr> items) : Expr
{
    public override IEnumerable<Expr?> Children => items;
    public override object? Eval(Frame f) => items.Select(i => i.Eval(f)).ToList();
}

sealed class TupleExpr(List<Expr> items) : Expr
{
    public override IEnumerable<Expr?> Children => items;
    public List<Expr> Items => items;
    public override object? Eval(Frame f) => items.Select(i => i.Eval(f)).ToArray();
}

sealed class DictExpr(List<(Expr Key, Expr Value)> pairs) : Expr
{
    public override IEnumerable<Expr?> Children => pairs.SelectMany(p => new[] { p.Key, p.Value });
    public override object? Eval(Frame f)
    {
        var d = new PyDict();
        foreach (var (k, v) in pairs)
        {
            var key = k.Eval(f) ?? throw new TemplateException("TypeError", "None dictionary keys are not supported");
            d[key] = v.Eval(f);
        }
        return d;
    }
}

sealed class GetAttrExpr(Expr obj, string name) : Expr
{
    public override IEnumerable<Expr?> Children => [obj];
    public override object? Eval(Frame f) => JinjaBuiltins.GetAttr(obj.Eval(f), name);
}

sealed class GetItemExpr(Expr obj, Expr key) : Expr
{
    public override IEnumerable<Expr?> Children => [obj, key];
    public override object? Eval(Frame f) => JinjaBuiltins.GetItem(obj.Eval(f), key.Eval(f));
}

sealed class SliceExpr(Expr? start, Expr? stop, Expr? step) : Expr
{
    public override IEnumerable<Expr?> Children => [start, stop, step];
    public override object? Eval(Frame f) => throw new TemplateException("TemplateSyntaxError", "slice outside of a subscript");
    public (object?, object?, object?) EvalParts(Frame f) => (start?.Eval(f), stop?.Eval(f), step?.Eval(f));
}

sealed class SliceApplyExpr(Expr obj, SliceExpr slice) : Expr
{
    public override IEnumerable<Expr?> Children => [obj, slice];
    public override object? Eval(Frame f)
    {
        var o = obj.Eval(f);
        var (a, b, c) = slice.EvalParts(f);
        return JinjaBuiltins.Slice(o, a, b, c);
    }
}

sealed class CallExpr(Expr callee, List<Expr> args, List<(string Name, Expr Value)> kwargs, Expr? dynArgs, Expr? dynKwargs) : Expr
{
    public override IEnumerable<Expr?> Children => [callee, .. args, .. kwargs.Select(k => k.Value), dynArgs, dynKwargs];
    public override object? Eval(Frame f) => Eval(f, null);

    public object? Eval(Frame f, JinjaCallable? caller)
    {
        var fn = callee.Eval(f);
        var a = args.Select(x => x.Eval(f)).ToList();
        if (dynArgs is not null) a.AddRange(PyOps.Iterate(dynArgs.Eval(f)));
        var kw = kwargs.Select(k => new KeyValuePair<string, object?>(k.Name, k.Value.Eval(f))).ToList();
        if (dynKwargs is not null && dynKwargs.Eval(f) is PyDict d)
            foreach (var kv in d) kw.Add(new(PyOps.Str(kv.Key), kv.Value));
        if (caller is not null) kw.Add(new("caller", caller));
        return JinjaBuiltins.Call(fn, a, kw);
    }
}

sealed record FilterCall(string Name, List<Expr> Args, List<(string Name, Expr Value)> Kwargs)
{
    public void Load(Symbols s)
    {
        foreach (var a in Args) s.LoadExpr(a);
        foreach (var (_, v) in Kwargs) s.LoadExpr(v);
    }

    public object? Apply(object? value, Frame f)
    {
        var a = Args.Select(x => x.Eval(f)).ToList();
        var kw = Kwargs.Select(k => new KeyValuePair<string, object?>(k.Name, k.Value.Eval(f))).ToList();
        return JinjaBuiltins.ApplyFilter(Name, value, a, kw, f);
    }
}

sealed class FilterExpr(Expr value, FilterCall filter) : Expr
{
    public override IEnumerable<Expr?> Children => [value, .. filter.Args, .. filter.Kwargs.Select(k => k.Value)];
    public override object? Eval(Frame f) => filter.Apply(value.Eval(f), f);
}

sealed class TestExpr(Expr value, string name, List<Expr> args, List<(string Name, Expr Value)> kwargs) : Expr
{
    public override IEnumerable<Expr?> Children => [value, .. args, .. kwargs.Select(k => k.Value)];
    public override object? Eval(Frame f)
    {
        var v = value.Eval(f);
        var a = args.Select(x => x.Eval(f)).ToList();
        var kw = kwargs.Select(k => new KeyValuePair<string, object?>(k.Name, k.Value.Eval(f))).ToList();
        return JinjaBuiltins.ApplyTest(name, v, a, kw, f);
    }
}

sealed class NotExpr(Expr e) : Expr
{
    public override IEnumerable<Expr?> Children => [e];
    public override object? Eval(Frame f) => !PyOps.Truthy(e.Eval(f));
}

sealed class NegExpr(Expr e) : Expr
{
    public override IEnumerable<Expr?> Children => [e];
    public override object? Eval(Frame f) => PyOps.Neg(e.Eval(f));
}

sealed class AndExpr(Expr a, Expr b) : Expr
{
    public override IEnumerable<Expr?> Children => [a, b];
    public override object? Eval(Frame f) { var x = a.Eval(f); return PyOps.Truthy(x) ? b.Eval(f) : x; }
}

sealed class OrExpr(Expr a, Expr b) : Expr
{
    public override IEnumerable<Expr?> Children => [a, b];
    public override object? Eval(Frame f) { var x = a.Eval(f); return PyOps.Truthy(x) ? x : b.Eval(f); }
}

sealed class CondExpr(Expr test, Expr then, Expr? otherwise) : Expr
{
    public override IEnumerable<Expr?> Children => [test, then, otherwise];
    public override object? Eval(Frame f) =>
        PyOps.Truthy(test.Eval(f)) ? then.Eval(f) : otherwise is null ? Undefined.WithHint("the inline if-expression on line evaluated to false and no else section was defined.") : otherwise.Eval(f);
}

sealed class BinExpr(string op, Expr a, Expr b) : Expr
{
    public override IEnumerable<Expr?> Children => [a, b];
    public override object? Eval(Frame f)
    {
        var x = a.Eval(f);
        var y = b.Eval(f);
        return op switch
        {
            "+" => PyOps.Add(x, y),
            "-" => PyOps.Sub(x, y),
            "*" => PyOps.Mul(x, y),
            "/" => PyOps.TrueDiv(x, y),
            "//" => PyOps.FloorDiv(x, y),
            "%" => PyOps.Mod(x, y),
            "**" => PyOps.Pow(x, y),
            "~" => PyOps.Str(x) + PyOps.Str(y),
            _ => throw new InvalidOperationException(op),
        };
    }
}

sealed class CompareExpr(Expr first, List<(string Op, Expr Operand)> ops) : Expr
{
    public override IEnumerable<Expr?> Children => [first, .. ops.Select(o => o.Operand)];
    public override object? Eval(Frame f)
    {
        var left = first.Eval(f);
        foreach (var (op, operand) in ops)
        {
            var right = operand.Eval(f);
            bool ok = op switch
            {
                "==" => PyOps.Eq(left, right),
                "!=" => !PyOps.Eq(left, right),
                "<" => PyOps.Compare(left, right, "<") < 0,
                "<=" => PyOps.Compare(left, right, "<=") <= 0,
                ">" => PyOps.Compare(left, right, ">") > 0,
                ">=" => PyOps.Compare(left, right, ">=") >= 0,
                "in" => PyOps.Contains(right, left),
                "notin" => !PyOps.Contains(right, left),
                _ => throw new InvalidOperationException(op),
            };
            if (!ok) return false;
            left = right;
        }
        return true;
    }
}

/// <summary>
/// Jinja's compile-time symbol table of one frame (jinja2/idtracking.py), kept for one observable consequence:
/// a name whose first use in a frame is an assignment starts that frame undefined ("missing"), so a child scope
/// (loop body, macro, with) that runs before the assignment sees it undefined, not the outer or context value.
/// Names assigned in only some branches of an if are read from outside until assigned (branch_update).
/// </summary>
sealed class Symbols(Symbols? parent)
{
    enum Load { Resolve, Undefined, Alias, Param }

    Dictionary<string, Load> _refs = new(StringComparer.Ordinal);
    HashSet<string> _stores = new(StringComparer.Ordinal);

    bool HasRef(string n)
    {
        for (var s = this; s is not null; s = s.Parent) if (s._refs.ContainsKey(n)) return true;
        return false;
    }

    Symbols? Parent => parent;

    public void Declare(string n) { _refs[n] = Load.Param; _stores.Add(n); }

    public void LoadName(string n) { if (!HasRef(n)) _refs[n] = Load.Resolve; }

    public void LoadExpr(Expr? e)
    {
        if (e is null) return;
        if (e is NameExpr n) LoadName(n.Name);
        foreach (var c in e.Children) LoadExpr(c);
    }

    public void Store(string n)
    {
        _stores.Add(n);
        if (_refs.ContainsKey(n)) return;
        _refs[n] = parent is not null && parent.HasRef(n) ? Load.Alias : Load.Undefined;
    }

    public Symbols Copy() => new(parent) { _refs = new(_refs, StringComparer.Ordinal), _stores = new(_stores, StringComparer.Ordinal) };

    public void BranchUpdate(Symbols[] branches)
    {
        var counts = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var b in branches)
            foreach (var t in b._stores)
                if (!_stores.Contains(t)) counts[t] = counts.GetValueOrDefault(t) + 1;
        foreach (var b in branches)
        {
            foreach (var (k, v) in b._refs) _refs[k] = v;
            _stores.UnionWith(b._stores);
        }
        foreach (var (name, count) in counts)
            if (count != branches.Length) _refs[name] = parent is not null && parent.HasRef(name) ? Load.Alias : Load.Resolve;
    }

    public string[] UndefinedAtStart() => _refs.Where(kv => kv.Value == Load.Undefined).Select(kv => kv.Key).ToArray();
}

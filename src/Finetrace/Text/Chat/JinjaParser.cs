namespace Finetrace.Text.Chat;

/// <summary>Recursive-descent parser following Jinja2's parser.py (same precedence: filters and tests bind
/// tighter than arithmetic, `not` looser than `is`, inline if-else lowest).</summary>
sealed class JinjaParser(List<Tok> toks)
{
    int _pos;
    int _loopDepth;

    Tok Cur => toks[_pos];
    Tok Peek(int k = 1) => toks[Math.Min(_pos + k, toks.Count - 1)];
    Tok Next() => toks[_pos++];

    static TemplateException Fail(string msg, Tok t) => new("TemplateSyntaxError", $"{msg} (line {t.Line})");

    bool IsName(string name) => Cur.Kind == TokKind.Name && Cur.Text == name;
    bool IsOp(string op) => Cur.Kind == TokKind.Op && Cur.Text == op;
    bool SkipName(string name) { if (IsName(name)) { _pos++; return true; } return false; }
    bool SkipOp(string op) { if (IsOp(op)) { _pos++; return true; } return false; }

    void ExpectOp(string op)
    {
        if (!IsOp(op)) throw Fail($"expected token '{op}', got {Cur}", Cur);
        _pos++;
    }

    string ExpectName()
    {
        if (Cur.Kind != TokKind.Name) throw Fail($"expected token 'name', got {Cur}", Cur);
        return Next().Text;
    }

    void ExpectBlockEnd()
    {
        if (Cur.Kind != TokKind.BlockEnd) throw Fail($"expected token 'end of statement block', got {Cur}", Cur);
        _pos++;
    }

    public List<Stmt> ParseTemplate()
    {
        var body = Subparse(null);
        if (Cur.Kind != TokKind.Eof) throw Fail($"unexpected {Cur}", Cur);
        return body;
    }

    /// <summary>Statements until a block whose first name is in <paramref name="endTokens"/>; that block's
    /// opening is consumed and the stream stands on the end name.</summary>
    List<Stmt> Subparse(string[]? endTokens)
    {
        var body = new List<Stmt>();
        while (true)
        {
            var t = Cur;
            switch (t.Kind)
            {
                case TokKind.Eof:
                    if (endTokens is not null)
                        throw Fail($"Unexpected end of template. Jinja was looking for the following tags: {string.Join(" or ", endTokens.Select(e => $"'{e}'"))}.", t);
                    return body;
                case TokKind.Data:
                    _pos++;
                    body.Add(new OutputStmt((string)t.Value!));
                    break;
                case TokKind.VarBegin:
                    _pos++;
                    var e = ParseTuple(withCondExpr: true);
                    if (Cur.Kind != TokKind.VarEnd) throw Fail($"expected token 'end of print statement', got {Cur}", Cur);
                    _pos++;
                    body.Add(new PrintStmt(e));
                    break;
                case TokKind.BlockBegin:
                    _pos++;
                    if (endTokens is not null && Cur.Kind == TokKind.Name && endTokens.Contains(Cur.Text)) return body;
                    body.Add(ParseStatement());
                    ExpectBlockEnd();
                    break;
                default:
                    throw Fail($"unexpected {t}", t);
            }
        }
    }

    List<Stmt> ParseStatements(string[] endTokens, bool dropNeedle = false)
    {
        SkipOp(":");
        ExpectBlockEnd();
        var body = Subparse(endTokens);
        if (dropNeedle) _pos++;
        return body;
    }

    Stmt ParseStatement()
    {
        var t = Cur;
        if (t.Kind != TokKind.Name) throw Fail("tag name expected", t);
        switch (t.Text)
        {
            case "for": _pos++; return ParseFor();
            case "if": _pos++; return ParseIf();
            case "set": _pos++; return ParseSet();
            case "macro": _pos++; return ParseMacro();
            case "call": _pos++; return ParseCallBlock();
            case "filter": _pos++; return ParseFilterBlock();
            case "with": _pos++; return ParseWith();
            case "generation":
                _pos++;
                return new GenerationStmt(ParseStatements(["endgeneration"], dropNeedle: true));
            case "break":
            case "continue":
                if (_loopDepth == 0) throw Fail($"'{t.Text}' outside of loop", t);
                _pos++;
                return new LoopControlStmt(t.Text == "break");
            default:
                throw Fail($"Encountered unknown tag '{t.Text}'.", t);
        }
    }

    Stmt ParseFor()
    {
        var target = ParseAssignTarget(extraEnd: ["in"]);
        if (!SkipName("in")) throw Fail($"expected 'in', got {Cur}", Cur);
        var iter = ParseTuple(withCondExpr: false, extraEnd: ["recursive"]);
        Expr? test = null;
        if (SkipName("if")) test = ParseExpression();
        bool recursive = SkipName("recursive");
        _loopDepth++;
        var body = ParseStatements(["endfor", "else"]);
        _loopDepth--;
        List<Stmt> elseBody = [];
        if (Next().Text == "else") elseBody = ParseStatements(["endfor"], dropNeedle: true);
        return new ForStmt(target, iter, test, body, elseBody, recursive);
    }

    Stmt ParseIf()
    {
        var branches = new List<(Expr, List<Stmt>)>();
        List<Stmt>? elseBody = null;
        while (true)
        {
            var test = ParseTuple(withCondExpr: false);
            var body = ParseStatements(["elif", "else", "endif"]);
            branches.Add((test, body));
            var tok = Next();
            if (tok.Text == "elif") continue;
            if (tok.Text == "else") elseBody = ParseStatements(["endif"], dropNeedle: true);
            break;
        }
        return new IfStmt(branches, elseBody);
    }

    Stmt ParseSet()
    {
        // Namespace attribute: set ns.attr = value
        if (Cur.Kind == TokKind.Name && Peek().Is(TokKind.Op, ".") && Peek(2).Kind == TokKind.Name)
        {
            string ns = Next().Text;
            _pos++;
            string attr = Next().Text;
            ExpectOp("=");
            return new SetAttrStmt(ns, attr, ParseTuple(withCondExpr: true));
        }
        var target = ParseAssignTarget();
        if (SkipOp("=")) return new SetStmt(target, ParseTuple(withCondExpr: true));
        var filters = new List<FilterCall>();
        while (SkipOp("|")) filters.Add(ParseFilterCall());
        var body = ParseStatements(["endset"], dropNeedle: true);
        if (target is not NameExpr n) throw Fail("can't assign a block to a tuple", Cur);
        return new SetBlockStmt(n.Name, filters, body);
    }

    Stmt ParseMacro()
    {
        string name = ExpectName();
        var (pars, defaults) = ParseSignature();
        int saved = _loopDepth;
        _loopDepth = 0;
        var body = ParseStatements(["endmacro"], dropNeedle: true);
        _loopDepth = saved;
        return new MacroStmt(new MacroDef(name, pars, defaults, body));
    }

    (List<string>, List<Expr>) ParseSignature()
    {
        var pars = new List<string>();
        var defaults = new List<Expr>();
        ExpectOp("(");
        while (!IsOp(")"))
        {
            if (pars.Count > 0) ExpectOp(",");
            if (IsOp(")")) break;
            pars.Add(ExpectName());
            if (SkipOp("=")) defaults.Add(ParseExpression());
            else if (defaults.Count > 0) throw Fail("non-default argument follows default argument", Cur);
        }
        ExpectOp(")");
        return (pars, defaults);
    }

    Stmt ParseCallBlock()
    {
        var (pars, defaults) = IsOp("(") ? ParseSignature() : ([], []);
        var call = ParseExpression();
        if (call is not CallExpr c) throw Fail("expected call", Cur);
        int saved = _loopDepth;
        _loopDepth = 0;
        var body = ParseStatements(["endcall"], dropNeedle: true);
        _loopDepth = saved;
        return new CallBlockStmt(c, new MacroDef("caller", pars, defaults, body));
    }

    Stmt ParseFilterBlock()
    {
        var filters = new List<FilterCall> { ParseFilterCall() };
        while (SkipOp("|")) filters.Add(ParseFilterCall());
        return new FilterBlockStmt(filters, ParseStatements(["endfilter"], dropNeedle: true));
    }

    Stmt ParseWith()
    {
        var targets = new List<Expr>();
        var values = new List<Expr>();
        while (Cur.Kind != TokKind.BlockEnd)
        {
            if (targets.Count > 0) ExpectOp(",");
            targets.Add(ParseAssignTarget());
            ExpectOp("=");
            values.Add(ParseExpression());
        }
        return new WithStmt(targets, values, ParseStatements(["endwith"], dropNeedle: true));
    }

    /// <summary>A name or a tuple of names (for loop targets and set).</summary>
    Expr ParseAssignTarget(string[]? extraEnd = null)
    {
        var items = new List<Expr>();
        bool isTuple = false;
        bool paren = SkipOp("(");
        while (true)
        {
            if (items.Count > 0) ExpectOp(",");
            if (IsTupleEnd(extraEnd) || IsOp("=") || IsOp(")")) break;
            if (Cur.Kind != TokKind.Name) throw Fail($"can't assign to {Cur}", Cur);
            items.Add(new NameExpr(Next().Text));
            if (IsOp(",")) isTuple = true; else break;
        }
        if (paren) ExpectOp(")");
        if (!isTuple && !paren && items.Count == 1) return items[0];
        if (!isTuple && items.Count == 1) return items[0];
        return new TupleExpr(items);
    }

    bool IsTupleEnd(string[]? extraEnd) =>
        Cur.Kind is TokKind.VarEnd or TokKind.BlockEnd or TokKind.Eof || IsOp(")") ||
        (extraEnd is not null && Cur.Kind == TokKind.Name && extraEnd.Contains(Cur.Text));

    Expr ParseTuple(bool withCondExpr, string[]? extraEnd = null, bool explicitParens = false)
    {
        var items = new List<Expr>();
        bool isTuple = false;
        while (true)
        {
            if (items.Count > 0) ExpectOp(",");
            if (IsTupleEnd(extraEnd)) break;
            items.Add(withCondExpr ? ParseExpression() : ParseOr());
            if (IsOp(",")) isTuple = true; else break;
        }
        if (!isTuple)
        {
            if (items.Count > 0) return items[0];
            if (!explicitParens) throw Fail($"Expected an expression, got {Cur}", Cur);
        }
        return new TupleExpr(items);
    }

    public Expr ParseExpression()
    {
        var e = ParseOr();
        while (SkipName("if"))
        {
            var test = ParseOr();
            Expr? otherwise = SkipName("else") ? ParseExpression() : null;
            e = new CondExpr(test, e, otherwise);
        }
        return e;
    }

    Expr ParseOr()
    {
        var e = ParseAnd();
        while (SkipName("or")) e = new OrExpr(e, ParseAnd());
        return e;
    }

    Expr ParseAnd()
    {
        var e = ParseNot();
        while (SkipName("and")) e = new AndExpr(e, ParseNot());
        return e;
    }

    Expr ParseNot() => SkipName("not") ? new NotExpr(ParseNot()) : ParseCompare();

    static readonly string[] CmpOps = ["==", "!=", "<", "<=", ">", ">="];

    Expr ParseCompare()
    {
        var first = ParseMath1();
        var ops = new List<(string, Expr)>();
        while (true)
        {
            if (Cur.Kind == TokKind.Op && CmpOps.Contains(Cur.Text)) { string op = Next().Text; ops.Add((op, ParseMath1())); }
            else if (SkipName("in")) ops.Add(("in", ParseMath1()));
            else if (IsName("not") && Peek().Is(TokKind.Name, "in")) { _pos += 2; ops.Add(("notin", ParseMath1())); }
            else break;
        }
        return ops.Count == 0 ? first : new CompareExpr(first, ops);
    }

    Expr ParseMath1()
    {
        var e = ParseConcat();
        while (IsOp("+") || IsOp("-")) { string op = Next().Text; e = new BinExpr(op, e, ParseConcat()); }
        return e;
    }

    Expr ParseConcat()
    {
        var e = ParseMath2();
        while (SkipOp("~")) e = new BinExpr("~", e, ParseMath2());
        return e;
    }

    Expr ParseMath2()
    {
        var e = ParsePow();
        while (IsOp("*") || IsOp("/") || IsOp("//") || IsOp("%")) { string op = Next().Text; e = new BinExpr(op, e, ParsePow()); }
        return e;
    }

    Expr ParsePow()
    {
        var e = ParseUnary();
        while (SkipOp("**")) e = new BinExpr("**", e, ParseUnary());
        return e;
    }

    Expr ParseUnary(bool withFilter = true)
    {
        Expr e;
        if (SkipOp("-")) e = new NegExpr(ParseUnary(false));
        else if (SkipOp("+")) e = ParseUnary(false);
        else e = ParsePrimary();
        e = ParsePostfix(e);
        if (withFilter) e = ParseFilterExpr(e);
        return e;
    }

    Expr ParsePrimary()
    {
        var t = Cur;
        switch (t.Kind)
        {
            case TokKind.Name:
                _pos++;
                return t.Text switch
                {
                    "true" or "True" => new ConstExpr(true),
                    "false" or "False" => new ConstExpr(false),
                    "none" or "None" => new ConstExpr(null),
                    _ => new NameExpr(t.Text),
                };
            case TokKind.String:
                {
                    _pos++;
                    string s = (string)t.Value!;
                    while (Cur.Kind == TokKind.String) s += (string)Next().Value!;
                    return new ConstExpr(s);
                }
            case TokKind.Int:
            case TokKind.Float:
                _pos++;
                return new ConstExpr(t.Value);
            case TokKind.Op when t.Text == "(":
                {
                    _pos++;
                    var e = ParseTuple(withCondExpr: true, explicitParens: true);
                    ExpectOp(")");
                    return e;
                }
            case TokKind.Op when t.Text == "[":
                {
                    _pos++;
                    var items = new List<Expr>();
                    while (!IsOp("]"))
                    {
                        if (items.Count > 0) ExpectOp(",");
                        if (IsOp("]")) break;
                        items.Add(ParseExpression());
                    }
                    ExpectOp("]");
                    return new ListExpr(items);
                }
            case TokKind.Op when t.Text == "{":
                {
                    _pos++;
                    var pairs = new List<(Expr, Expr)>();
                    while (!IsOp("}"))
                    {
                        if (pairs.Count > 0) ExpectOp(",");
                        if (IsOp("}")) break;
                        var k = ParseExpression();
                        ExpectOp(":");
                        pairs.Add((k, ParseExpression()));
                    }
                    ExpectOp("}");
                    return new DictExpr(pairs);
                }
            default:
                throw Fail($"unexpected {t}", t);
        }
    }

    Expr ParsePostfix(Expr e)
    {
        while (true)
        {
            if (IsOp(".") || IsOp("[")) e = ParseSubscript(e);
            else if (IsOp("(")) e = ParseCall(e);
            else return e;
        }
    }

    Expr ParseFilterExpr(Expr e)
    {
        while (true)
        {
            if (IsOp("|")) { _pos++; e = new FilterExpr(e, ParseFilterCall()); }
            else if (IsName("is")) e = ParseTest(e);
            else if (IsOp("(")) e = ParseCall(e);
            else return e;
        }
    }

    Expr ParseSubscript(Expr e)
    {
        var t = Next();
        if (t.Text == ".")
        {
            var a = Next();
            if (a.Kind == TokKind.Name) return new GetAttrExpr(e, a.Text);
            if (a.Kind == TokKind.Int) return new GetItemExpr(e, new ConstExpr(a.Value));
            throw Fail("expected name or number", a);
        }
        var args = new List<Expr>();
        while (!IsOp("]"))
        {
            if (args.Count > 0) { ExpectOp(","); if (IsOp("]")) break; }
            args.Add(ParseSubscribed());
        }
        ExpectOp("]");
        return args.Count == 1 ? (args[0] is SliceExpr s ? new SliceApplyExpr(e, s) : new GetItemExpr(e, args[0])) : new GetItemExpr(e, new TupleExpr(args));
    }

    Expr ParseSubscribed()
    {
        Expr? start = null, stop = null, step = null;
        if (!IsOp(":"))
        {
            var node = ParseExpression();
            if (!IsOp(":")) return node;
            start = node;
        }
        _pos++;
        if (!IsOp(":") && !IsOp("]") && !IsOp(",")) stop = ParseExpression();
        if (SkipOp(":"))
            if (!IsOp("]") && !IsOp(",")) step = ParseExpression();
        return new SliceExpr(start, stop, step);
    }

    (List<Expr> args, List<(string, Expr)> kwargs, Expr? dynArgs, Expr? dynKwargs) ParseCallArgs()
    {
        ExpectOp("(");
        var args = new List<Expr>();
        var kwargs = new List<(string, Expr)>();
        Expr? dynArgs = null, dynKwargs = null;
        bool first = true;
        while (!IsOp(")"))
        {
            if (!first) { ExpectOp(","); if (IsOp(")")) break; }
            first = false;
            if (SkipOp("*")) dynArgs = ParseExpression();
            else if (SkipOp("**")) dynKwargs = ParseExpression();
            else if (Cur.Kind == TokKind.Name && Peek().Is(TokKind.Op, "="))
            {
                string key = Next().Text;
                _pos++;
                kwargs.Add((key, ParseExpression()));
            }
            else
            {
                if (kwargs.Count > 0) throw Fail("positional argument follows keyword argument", Cur);
                args.Add(ParseExpression());
            }
        }
        ExpectOp(")");
        return (args, kwargs, dynArgs, dynKwargs);
    }

    Expr ParseCall(Expr callee)
    {
        var (args, kwargs, dynArgs, dynKwargs) = ParseCallArgs();
        return new CallExpr(callee, args, kwargs, dynArgs, dynKwargs);
    }

    FilterCall ParseFilterCall()
    {
        string name = ExpectName();
        while (IsOp(".") && Peek().Kind == TokKind.Name) { _pos++; name += "." + Next().Text; }
        if (IsOp("("))
        {
            var (args, kwargs, _, _) = ParseCallArgs();
            return new FilterCall(name, args, kwargs);
        }
        return new FilterCall(name, [], []);
    }

    Expr ParseTest(Expr e)
    {
        _pos++; // 'is'
        bool negated = SkipName("not");
        string name = ExpectName();
        while (IsOp(".") && Peek().Kind == TokKind.Name) { _pos++; name += "." + Next().Text; }
        List<Expr> args = [];
        List<(string, Expr)> kwargs = [];
        if (IsOp("(")) (args, kwargs, _, _) = ParseCallArgs();
        else if ((Cur.Kind is TokKind.Name or TokKind.String or TokKind.Int or TokKind.Float || IsOp("(") || IsOp("[") || IsOp("{"))
                 && !IsName("else") && !IsName("or") && !IsName("and"))
        {
            if (IsName("is")) throw Fail("You cannot chain multiple tests with is", Cur);
            args = [ParsePostfix(ParsePrimary())];
        }
        Expr test = new TestExpr(e, name, args, kwargs);
        return negated ? new NotExpr(test) : test;
    }
}

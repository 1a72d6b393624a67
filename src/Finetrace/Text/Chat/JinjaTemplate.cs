using System.Text;

namespace Finetrace.Text.Chat;

/// <summary>A compiled Jinja template, configured as transformers' apply_chat_template configures Jinja2:
/// trim_blocks, lstrip_blocks, loop controls, immutable sandbox, no autoescape, keep_trailing_newline false.</summary>
public sealed class JinjaTemplate
{
    readonly List<Stmt> _body;
    readonly string[] _rootMissing;

    /// <summary>Parses the template; syntax errors throw <see cref="TemplateException"/> (Kind TemplateSyntaxError).</summary>
    public JinjaTemplate(string source, bool trimBlocks = true, bool lstripBlocks = true)
    {
        _body = new JinjaParser(JinjaLexer.Tokenize(source, trimBlocks, lstripBlocks)).ParseTemplate();
        _rootMissing = Stmt.AnalyzeFrame(_body, new Symbols(null));
    }

    /// <summary>Renders with the given variables (values as <see cref="PyJson.FromJson"/> builds them).</summary>
    public string Render(IReadOnlyDictionary<string, object?> vars) => Render(vars, out _);

    /// <summary>Renders and reports the character spans of {% generation %} blocks.</summary>
    public string Render(IReadOnlyDictionary<string, object?> vars, out IReadOnlyList<(int Start, int End)> generationSpans)
    {
        var state = new RenderState(vars);
        var sb = new StringBuilder();
        try
        {
            Stmt.ExecAll(_body, new Frame(state, null).Declare(_rootMissing), sb);
        }
        catch (InvalidCastException e) { throw new TemplateException("TypeError", e.Message); }
        catch (ArgumentOutOfRangeException e) { throw new TemplateException("ValueError", e.Message); }
        generationSpans = state.GenerationSpans;
        return sb.ToString();
    }
}

using Finetrace.Text.Tokenization;

namespace Finetrace.Text.Chat;

/// <summary>What a token of a rendered chat is: the sequence-start BOS, text the template adds around the content
/// (role headers, turn markers, EOS, generation prompt), or content of a message by its role.</summary>
public enum TokenRole : byte { Template = 0, Bos = 1, System = 2, User = 3, Assistant = 4, Tool = 5 }

/// <summary>A message's content located in the rendered text: characters [Start, End).</summary>
public readonly record struct ContentSpan(int Message, TokenRole Role, int Start, int End);

/// <summary>A tokenized chat with one role per token.</summary>
public sealed class ChatEncoding(string text, int[] ids, TokenSpan[] offsets, TokenRole[] roles, IReadOnlyList<ContentSpan> spans,
    bool[]? generationMask = null)
{
    /// <summary>Tokens overlapping a {% generation %} block: transformers' return_assistant_tokens_mask (it usually
    /// includes the end-of-turn token). Null when the template has no generation blocks.</summary>
    public bool[]? GenerationMask { get; } = generationMask;

    /// <summary>The rendered chat text.</summary>
    public string Text { get; } = text;
    public int[] Ids { get; } = ids;
    /// <summary>Token character spans in <see cref="Text"/> ((0, 0) for a BOS the formatter prepended).</summary>
    public TokenSpan[] Offsets { get; } = offsets;
    public TokenRole[] Roles { get; } = roles;
    /// <summary>Where each message's content was found in <see cref="Text"/>.</summary>
    public IReadOnlyList<ContentSpan> Spans { get; } = spans;
    public int Count => Ids.Length;

    public bool[] Mask(TokenRole role) => Roles.Select(r => r == role).ToArray();
    public bool[] BosMask => Mask(TokenRole.Bos);
    public bool[] TemplateMask => Mask(TokenRole.Template);
    public bool[] UserMask => Mask(TokenRole.User);
    public bool[] AssistantMask => Mask(TokenRole.Assistant);
    public bool[] SystemMask => Mask(TokenRole.System);
}

/// <summary>
/// Renders a conversation with the model's chat template, tokenizes it the way the model saw it, and labels every
/// token. The render is tokenized with add_special_tokens = false (templates write BOS themselves; adding it again
/// would double it); only when the render does not start with the BOS text and tokenizer_config says add_bos_token
/// is a BOS id prepended, so the sequence starts with exactly one BOS either way.
/// <para>Content is located without sentinels in the real render: for each message, the template is rendered again
/// with that message's content replaced by a same-length string (whitespace kept, so trim/strip behave the same);
/// the region where the two renders differ is where the content went, and the content (or its stripped form) is
/// searched inside that region. A token overlapping a content span takes the message's role; all other tokens are
/// template tokens, except the BOS at position 0.</para>
/// </summary>
public sealed class ChatFormatter(Tokenizer tokenizer, ChatTemplate template)
{
    public Tokenizer Tokenizer { get; } = tokenizer;
    public ChatTemplate Template { get; } = template;

    /// <summary>Tokenizer and template of one model folder.</summary>
    public static ChatFormatter FromFolder(string dir) => new(Tokenizer.FromFolder(dir), ChatTemplate.FromFolder(dir));

    public ChatEncoding Format(IReadOnlyList<ChatMessage> messages, bool addGenerationPrompt = false, IReadOnlyDictionary<string, object?>? extra = null) =>
        Format(ChatTemplate.ToValue(messages), addGenerationPrompt, extra);

    /// <summary>Formats messages given as Jinja values (a list of dicts with role, content, ...).</summary>
    public ChatEncoding Format(List<object?> messages, bool addGenerationPrompt = false, IReadOnlyDictionary<string, object?>? extra = null)
    {
        string text = Template.Render(messages, addGenerationPrompt, extra, out var generation);
        var spans = LocateContent(messages, addGenerationPrompt, extra, text);

        var enc = Tokenizer.Encode(text, addSpecialTokens: false);
        var ids = enc.Ids;
        var offsets = enc.Offsets;
        int? bos = Tokenizer.BosId;
        bool startsWithBos = Tokenizer.BosToken is { Length: > 0 } b && text.StartsWith(b, StringComparison.Ordinal);
        if (!startsWithBos && Tokenizer.AddBosToken && bos is int bosId && (ids.Length == 0 || ids[0] != bosId))
        {
            ids = [bosId, .. ids];
            offsets = [new TokenSpan(0, 0), .. offsets];
        }

        var roles = new TokenRole[ids.Length];
        // Spans are sorted by start; walk tokens and spans together.
        var sorted = spans.OrderBy(s => s.Start).ToList();
        int si = 0;
        for (int t = 0; t < ids.Length; t++)
        {
            var o = offsets[t];
            if (t == 0 && bos is int bi && ids[0] == bi) { roles[t] = TokenRole.Bos; continue; }
            if (o.End <= o.Start) continue;
            while (si < sorted.Count && sorted[si].End <= o.Start) si++;
            for (int k = si; k < sorted.Count && sorted[k].Start < o.End; k++)
                if (sorted[k].End > o.Start) { roles[t] = sorted[k].Role; break; }
        }
        bool[]? generationMask = null;
        if (generation.Count > 0)
        {
            generationMask = new bool[ids.Length];
            for (int t = 0; t < ids.Length; t++)
                generationMask[t] = offsets[t].End > offsets[t].Start && generation.Any(g => g.Start < offsets[t].End && g.End > offsets[t].Start);
        }
        return new ChatEncoding(text, ids, offsets, roles, spans, generationMask);
    }

    /// <summary>Formats, or gives the template's error (e.g. Gemma 2 raising on non-alternating roles) so callers can skip the sample.</summary>
    public bool TryFormat(IReadOnlyList<ChatMessage> messages, bool addGenerationPrompt, out ChatEncoding? encoding, out string? error,
        IReadOnlyDictionary<string, object?>? extra = null)
    {
        try
        {
            encoding = Format(messages, addGenerationPrompt, extra);
            error = null;
            return true;
        }
        catch (TemplateException e)
        {
            encoding = null;
            error = e.Message;
            return false;
        }
    }

    /// <summary>Formats many conversations in parallel (results in input order); a conversation whose template
    /// raises gives null and its message in <paramref name="errors"/>.</summary>
    public ChatEncoding?[] FormatMany(IReadOnlyList<IReadOnlyList<ChatMessage>> conversations, bool addGenerationPrompt, out string?[] errors)
    {
        var result = new ChatEncoding?[conversations.Count];
        var errs = new string?[conversations.Count];
        Parallel.For(0, conversations.Count, i => TryFormat(conversations[i], addGenerationPrompt, out result[i], out errs[i]));
        errors = errs;
        return result;
    }

    /// <summary>For templates without a system role (Gemma 2 raises on one): the system prompt joined to the first
    /// user turn with a blank line, as Gemma 3's own template does.</summary>
    public static List<ChatMessage> FoldSystemIntoFirstUser(IReadOnlyList<ChatMessage> messages)
    {
        var result = messages.ToList();
        if (result.Count >= 2 && result[0].Role == "system" && result[1].Role == "user")
        {
            result[1] = result[1] with { Content = result[0].Content + "\n\n" + result[1].Content };
            result.RemoveAt(0);
        }
        return result;
    }

    public static TokenRole RoleOf(string? role) => role switch
    {
        "user" => TokenRole.User,
        "assistant" or "model" => TokenRole.Assistant,
        "system" or "developer" => TokenRole.System,
        _ => TokenRole.Tool,
    };

    /// <summary>The message's texts a template prints: content (a string, or the "text" of content parts) and reasoning_content.</summary>
    static List<string> Texts(PyDict m)
    {
        var r = new List<string>();
        if (m.TryGetValue("reasoning_content", out var rc) && rc is string rs) r.Add(rs);
        if (m.TryGetValue("content", out var c))
        {
            if (c is string s) r.Add(s);
            else if (c is List<object?> parts)
                foreach (var p in parts)
                    if (p is PyDict pd && pd.TryGetValue("text", out var pt) && pt is string ps) r.Add(ps);
        }
        return r;
    }

    List<ContentSpan> LocateContent(List<object?> messages, bool gen, IReadOnlyDictionary<string, object?>? extra, string text)
    {
        var spans = new List<ContentSpan>();
        for (int i = 0; i < messages.Count; i++)
        {
            if (messages[i] is not PyDict m) continue;
            var role = RoleOf(m.TryGetValue("role", out var rv) ? rv as string : null);
            var texts = Texts(m);
            if (texts.All(t => PyStr.Strip(t, null, true, true).Length == 0)) continue;
            var (lo, hi) = DiffRegion(messages, i, m, gen, extra, text);
            int cursor = lo;
            foreach (var t in texts)
            {
                if (TryFind(text, t, cursor, hi, out int s, out int e))
                {
                    spans.Add(new ContentSpan(i, role, s, e));
                    cursor = e;
                }
            }
            // The template transformed the content beyond stripping (e.g. split out a <think> block): take the whole region.
            if (!spans.Any(s => s.Message == i) && hi > lo) spans.Add(new ContentSpan(i, role, lo, hi));
        }
        return spans;
    }

    /// <summary>The characters of <paramref name="text"/> that change when message i's texts are replaced by
    /// same-length stand-ins; the whole text when the perturbed render fails.</summary>
    (int Lo, int Hi) DiffRegion(List<object?> messages, int i, PyDict m, bool gen, IReadOnlyDictionary<string, object?>? extra, string text)
    {
        var copy = new PyDict();
        foreach (var kv in m)
        {
            copy[kv.Key] = kv.Key switch
            {
                "content" when kv.Value is string s => StandIn(s),
                "reasoning_content" when kv.Value is string s => StandIn(s),
                "content" when kv.Value is List<object?> parts => parts.Select(p => p is PyDict pd ? StandInPart(pd) : p).ToList(),
                _ => kv.Value,
            };
        }
        var perturbed = new List<object?>(messages) { [i] = copy };
        string other;
        try { other = Template.Render(perturbed, gen, extra); }
        catch (TemplateException) { return (0, text.Length); }
        int p = 0;
        while (p < text.Length && p < other.Length && text[p] == other[p]) p++;
        int q = 0;
        while (q < text.Length - p && q < other.Length - p && text[^(q + 1)] == other[^(q + 1)]) q++;
        return (p, text.Length - q);
    }

    static PyDict StandInPart(PyDict part)
    {
        var c = new PyDict();
        foreach (var kv in part) c[kv.Key] = kv.Key is "text" && kv.Value is string s ? StandIn(s) : kv.Value;
        return c;
    }

    /// <summary>Every non-whitespace character replaced by a private-use character different from it.</summary>
    static string StandIn(string s) => string.Create(s.Length, s, (dst, src) =>
    {
        for (int k = 0; k < src.Length; k++)
            dst[k] = PyStr.IsSpace(src[k]) ? src[k] : src[k] == '\uE000' ? '\uE001' : '\uE000';
    });

    /// <summary>Finds the content in text[from, to): as is, then as the template may have stripped it.
    /// The stand-in keeps whitespace, so the diff region can miss the content's leading and trailing whitespace:
    /// the search window is widened by exactly those.</summary>
    static bool TryFind(string text, string content, int from, int to, out int start, out int end)
    {
        start = end = -1;
        int lead = content.Length - PyStr.Strip(content, null, true, false).Length;
        int trail = content.Length - PyStr.Strip(content, null, false, true).Length;
        int lo = Math.Max(0, from - lead), hi = Math.Min(text.Length, to + trail);
        foreach (var variant in Variants(content))
        {
            if (variant.Length == 0) continue;
            int k = text.IndexOf(variant, lo, hi - lo, StringComparison.Ordinal);
            if (k >= 0) { start = k; end = k + variant.Length; return true; }
        }
        return false;
    }

    static IEnumerable<string> Variants(string c)
    {
        yield return c;
        yield return PyStr.Strip(c, null, true, true);
        yield return PyStr.Strip(c, "\n", true, true);
        yield return PyStr.Strip(c, null, true, false);
        yield return PyStr.Strip(c, null, false, true);
    }
}

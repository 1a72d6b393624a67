using System.Text.Json;

namespace Finetrace.Text.Tokenization;

/// <summary>Rust <c>PostProcessor</c> for single sequences: adds template tokens, or adjusts offsets.</summary>
internal abstract class PostProcessor
{
    /// <summary>Rewrites the encoding in place. <paramref name="idToToken"/> gives token strings for offset trimming.</summary>
    public abstract void Process(List<int> ids, List<(int Start, int End)> offsets, bool addSpecialTokens, Func<int, string?> idToToken);

    /// <summary>The ids this processor puts before the sequence when special tokens are added.</summary>
    public virtual IEnumerable<int> PrefixIds => [];

    public static PostProcessor? FromJson(JsonElement e, string where)
    {
        if (e.ValueKind is JsonValueKind.Null or JsonValueKind.Undefined) return null;
        string type = e.GetProperty("type").GetString() ?? "";
        string at = $"{where} ({type})";
        switch (type)
        {
            case "Sequence":
                return new SequencePostProcessor(e.GetProperty("processors").EnumerateArray()
                    .Select((x, i) => FromJson(x, $"{where}.processors[{i}]")!).ToArray());
            case "ByteLevel":
                return new ByteLevelPostProcessor(JsonFields.Bool(e, "trim_offsets", true), JsonFields.Bool(e, "add_prefix_space", true));
            case "TemplateProcessing":
                {
                    var special = new Dictionary<string, int[]>();
                    if (e.TryGetProperty("special_tokens", out var st))
                        foreach (var p in st.EnumerateObject())
                            special[p.Name] = p.Value.GetProperty("ids").EnumerateArray().Select(x => x.GetInt32()).ToArray();
                    var items = new List<int[]?>();   // null = the sequence
                    foreach (var item in e.GetProperty("single").EnumerateArray())
                    {
                        if (item.TryGetProperty("SpecialToken", out var sp))
                        {
                            string id = sp.GetProperty("id").GetString() ?? "";
                            items.Add(special.TryGetValue(id, out var ids) ? ids : throw new FormatException($"{at}: special token '{id}' is not in special_tokens"));
                        }
                        else if (item.TryGetProperty("Sequence", out _)) items.Add(null);
                        else throw new FormatException($"{at}: unknown template item {item.GetRawText()}");
                    }
                    return new TemplatePostProcessor(items);
                }
            case "BertProcessing":
            case "RobertaProcessing":
                {
                    int cls = e.GetProperty("cls")[1].GetInt32(), sep = e.GetProperty("sep")[1].GetInt32();
                    return new TemplatePostProcessor([[cls], null, [sep]]);
                }
            default:
                throw new NotSupportedException($"{at}: post-processor type '{type}' is not supported (supported: TemplateProcessing, ByteLevel, Sequence, BertProcessing, RobertaProcessing)");
        }
    }
}

internal sealed class SequencePostProcessor(PostProcessor[] items) : PostProcessor
{
    public override void Process(List<int> ids, List<(int Start, int End)> offsets, bool addSpecialTokens, Func<int, string?> idToToken)
    {
        foreach (var p in items) p.Process(ids, offsets, addSpecialTokens, idToToken);
    }

    public override IEnumerable<int> PrefixIds => items.SelectMany(p => p.PrefixIds);
}

/// <summary>Rust <c>TemplateProcessing</c> (single): special token ids around $A, each with offsets (0, 0).</summary>
internal sealed class TemplatePostProcessor(List<int[]?> items) : PostProcessor
{
    public override void Process(List<int> ids, List<(int Start, int End)> offsets, bool addSpecialTokens, Func<int, string?> idToToken)
    {
        if (!addSpecialTokens) return;
        int seqStart = 0;
        bool seenSequence = false;
        foreach (var item in items)
        {
            if (item is null) { seenSequence = true; continue; }
            // Special tokens before $A are inserted in front of it, those after it are appended.
            int at = seenSequence ? ids.Count : seqStart;
            ids.InsertRange(at, item);
            offsets.InsertRange(at, Enumerable.Repeat((0, 0), item.Length));
            if (!seenSequence) seqStart += item.Length;
        }
    }

    public override IEnumerable<int> PrefixIds => items.TakeWhile(i => i is not null).SelectMany(i => i!);
}

/// <summary>Rust <c>ByteLevel</c> post-processor: trims the offsets of leading/trailing spaces; never changes ids.</summary>
internal sealed class ByteLevelPostProcessor(bool trimOffsets, bool addPrefixSpace) : PostProcessor
{
    public override void Process(List<int> ids, List<(int Start, int End)> offsets, bool addSpecialTokens, Func<int, string?> idToToken)
    {
        if (!trimOffsets) return;
        for (int i = 0; i < ids.Count; i++)
        {
            string? tok = idToToken(ids[i]);
            if (tok is null) continue;
            int leading = 0, trailing = 0;
            while (leading < tok.Length && IsSpace(tok[leading])) leading++;
            while (trailing < tok.Length && IsSpace(tok[tok.Length - 1 - trailing])) trailing++;
            if (leading == 0 && trailing == 0) continue;
            var (s, e) = offsets[i];
            if (leading > 0)
            {
                bool isFirst = i == 0 || s == 0;
                if (isFirst && addPrefixSpace && leading == 1) leading = 0;
                s = Math.Min(s + leading, e);
            }
            if (trailing > 0 && e >= trailing) e = Math.Max(e - trailing, s);
            offsets[i] = (s, e);
        }
    }

    static bool IsSpace(char c) => c == 'Ġ' || CodePoints.IsWhiteSpace(c);
}

using System.Text;
using System.Text.Json;

namespace Finetrace.Text.Tokenization;

/// <summary>Rust <c>Decoder::decode_chain</c>: token strings in, token strings out; the tokenizer joins the result.</summary>
internal abstract class Decoder
{
    public abstract List<string> DecodeChain(List<string> tokens);

    public static Decoder? FromJson(JsonElement e, string where)
    {
        if (e.ValueKind is JsonValueKind.Null or JsonValueKind.Undefined) return null;
        string type = e.GetProperty("type").GetString() ?? "";
        string at = $"{where} ({type})";
        switch (type)
        {
            case "Sequence":
                return new SequenceDecoder(e.GetProperty("decoders").EnumerateArray().Select((x, i) => FromJson(x, $"{where}.decoders[{i}]")!).ToArray());
            case "ByteLevel": return new ByteLevelDecoder();
            case "Replace": return new ReplaceDecoder(SplitPattern.FromJson(e.GetProperty("pattern"), at), JsonFields.Str(e, "content") ?? "");
            case "ByteFallback": return new ByteFallbackDecoder();
            case "Fuse": return new FuseDecoder();
            case "Strip":
                {
                    string content = JsonFields.Str(e, "content") ?? " ";
                    return new StripDecoder(char.ConvertToUtf32(content, 0), JsonFields.Int(e, "start", 0), JsonFields.Int(e, "stop", 0));
                }
            case "Metaspace":
                {
                    string rep = JsonFields.Str(e, "replacement") ?? "\u2581";
                    string scheme = JsonFields.Str(e, "prepend_scheme") ?? (JsonFields.Bool(e, "add_prefix_space", true) ? "always" : "never");
                    return new MetaspaceDecoder(rep[0], scheme != "never");
                }
            default:
                throw new NotSupportedException($"{at}: decoder type '{type}' is not supported (supported: ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace, Sequence)");
        }
    }
}

internal sealed class SequenceDecoder(Decoder[] items) : Decoder
{
    public override List<string> DecodeChain(List<string> tokens) { foreach (var d in items) tokens = d.DecodeChain(tokens); return tokens; }
}

/// <summary>Byte chars back to bytes (chars outside the table: their own UTF-8), all tokens at once, lossy UTF-8.</summary>
internal sealed class ByteLevelDecoder : Decoder
{
    public override List<string> DecodeChain(List<string> tokens)
    {
        var bytes = new List<byte>();
        foreach (var t in tokens)
        {
            bool all = true;
            foreach (char c in t) if (c >= 0x200 || ByteLevelMap.CharToByte[c] < 0) { all = false; break; }
            if (all) foreach (char c in t) bytes.Add((byte)ByteLevelMap.CharToByte[c]);
            else bytes.AddRange(System.Text.Encoding.UTF8.GetBytes(t));
        }
        return [System.Text.Encoding.UTF8.GetString(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(bytes))];
    }
}

internal sealed class ReplaceDecoder(SplitPattern pattern, string content) : Decoder
{
    public override List<string> DecodeChain(List<string> tokens)
    {
        var result = new List<string>(tokens.Count);
        var matches = new List<(int Start, int End)>();
        foreach (var t in tokens)
        {
            if (pattern is LiteralPattern lp) { result.Add(lp.Literal.Length == 0 ? t : t.Replace(lp.Literal, content, StringComparison.Ordinal)); continue; }
            matches.Clear();
            pattern.FindMatches(t, matches);
            var sb = new StringBuilder();
            int prev = 0;
            foreach (var (s, e) in matches) { sb.Append(t, prev, s - prev).Append(content); prev = e; }
            sb.Append(t, prev, t.Length - prev);
            result.Add(sb.ToString());
        }
        return result;
    }
}

/// <summary>Runs of &lt;0xAB&gt; tokens become their UTF-8 text; an invalid run becomes one U+FFFD per byte.</summary>
internal sealed class ByteFallbackDecoder : Decoder
{
    static readonly UTF8Encoding Strict = new(false, true);

    public override List<string> DecodeChain(List<string> tokens)
    {
        var result = new List<string>(tokens.Count);
        var pending = new List<byte>();
        foreach (var t in tokens)
        {
            if (t.Length == 6 && t.StartsWith("<0x", StringComparison.Ordinal) && t[5] == '>' &&
                byte.TryParse(t.AsSpan(3, 2), System.Globalization.NumberStyles.AllowHexSpecifier, null, out byte b))
            {
                pending.Add(b);
                continue;
            }
            Flush();
            result.Add(t);
        }
        Flush();
        return result;

        void Flush()
        {
            if (pending.Count == 0) return;
            try { result.Add(Strict.GetString(pending.ToArray())); }
            catch (DecoderFallbackException) { for (int i = 0; i < pending.Count; i++) result.Add("\uFFFD"); }
            pending.Clear();
        }
    }
}

internal sealed class FuseDecoder : Decoder
{
    public override List<string> DecodeChain(List<string> tokens) => [string.Concat(tokens)];
}

/// <summary>Removes up to <c>start</c> leading and <c>stop</c> trailing copies of a char from each token.</summary>
internal sealed class StripDecoder(int content, int start, int stop) : Decoder
{
    public override List<string> DecodeChain(List<string> tokens)
    {
        var result = new List<string>(tokens.Count);
        string c = char.ConvertFromUtf32(content);
        foreach (var t in tokens)
        {
            // Up to `start` leading and `stop` trailing copies of the content char, never overlapping.
            int from = 0;
            for (int i = 0; i < start && t.AsSpan(from).StartsWith(c, StringComparison.Ordinal); i++) from += c.Length;
            int to = t.Length;
            for (int i = 0; i < stop && to - c.Length >= from && t.AsSpan(0, to).EndsWith(c, StringComparison.Ordinal); i++) to -= c.Length;
            result.Add(from == 0 && to == t.Length ? t : t[from..to]);
        }
        return result;
    }
}

/// <summary>Rust <c>Metaspace</c> decoder: the replacement becomes a space, except in the first token when a prefix was prepended.</summary>
internal sealed class MetaspaceDecoder(char replacement, bool prepends) : Decoder
{
    public override List<string> DecodeChain(List<string> tokens)
    {
        var result = new List<string>(tokens.Count);
        for (int i = 0; i < tokens.Count; i++)
        {
            var sb = new StringBuilder(tokens[i].Length);
            foreach (char c in tokens[i])
            {
                if (c == replacement) { if (!(i == 0 && prepends)) sb.Append(' '); }
                else sb.Append(c);
            }
            result.Add(sb.ToString());
        }
        return result;
    }
}

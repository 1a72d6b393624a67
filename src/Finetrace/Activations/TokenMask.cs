namespace Finetrace.Activations;

/// <summary>
/// Per-token role bits stored with every harvested token (one byte per token). They come from the chat formatter:
/// BOS, template/control tokens the chat template adds around the content, user content, assistant content.
/// Plain-text samples mark only BOS. Filters in the readers test these bits ("assistant tokens only").
/// </summary>
[Flags]
public enum TokenMask : byte
{
    None = 0,
    Bos = 1,
    Template = 2,
    User = 4,
    Assistant = 8,
    System = 16,
}

/// <summary>Which tokens a reader keeps: a token passes when it has any bit of <see cref="Require"/> (or Require is
/// None) and no bit of <see cref="Exclude"/>.</summary>
public readonly record struct MaskFilter(TokenMask Require = TokenMask.None, TokenMask Exclude = TokenMask.None)
{
    public static readonly MaskFilter All = new();
    public bool IsAll => Require == TokenMask.None && Exclude == TokenMask.None;
    public bool Keeps(byte mask) =>
        (Require == TokenMask.None || (mask & (byte)Require) != 0) && (mask & (byte)Exclude) == 0;

    /// <summary>Parses "assistant", "user,assistant", "!bos", "assistant,!template" (names of <see cref="TokenMask"/>, '!' excludes).</summary>
    public static MaskFilter Parse(string? text)
    {
        if (string.IsNullOrWhiteSpace(text) || text.Trim() == "all") return All;
        TokenMask req = 0, exc = 0;
        foreach (var raw in text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            bool not = raw.StartsWith('!');
            string name = not ? raw[1..] : raw;
            if (!Enum.TryParse<TokenMask>(name, ignoreCase: true, out var bit) || bit == TokenMask.None)
                throw new ArgumentException($"unknown token mask '{name}' in '{text}': use bos, template, user, assistant, system (prefix '!' to exclude)");
            if (not) exc |= bit; else req |= bit;
        }
        return new MaskFilter(req, exc);
    }

    public override string ToString()
    {
        if (IsAll) return "all";
        var parts = new List<string>();
        foreach (var b in Enum.GetValues<TokenMask>())
        {
            if (b == TokenMask.None) continue;
            if ((Require & b) != 0) parts.Add(b.ToString().ToLowerInvariant());
            if ((Exclude & b) != 0) parts.Add("!" + b.ToString().ToLowerInvariant());
        }
        return string.Join(",", parts);
    }
}

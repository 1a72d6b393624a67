using Finetrace.Text.Datasets;

namespace Finetrace.Diffing.Adl;

/// <summary>The samples an ADL run reads: its data sources, or, when none are given, the built-in general text
/// (<see cref="GeneralText"/>), so that the default run needs no download.</summary>
public static class AdlData
{
    /// <summary>Upper bound on built-in documents one reader may take (the stream is lazy; readers stop far earlier).</summary>
    const int BuiltInCap = 1_000_000;

    public static bool UsesBuiltIn(AdlOptions o) => o.Data.Count == 0;

    /// <summary>What the run read, in words (printed and recorded in adl.json and the manifest).</summary>
    public static string Describe(AdlOptions o) => UsesBuiltIn(o) ? GeneralText.Description
        : string.Join(", ", o.Data.Select(d => $"{d.Kind.ToString().ToLowerInvariant()}:{d.Path} (name {d.Name})"));

    /// <summary>The samples in order, each cut to <paramref name="contextLength"/> tokens.</summary>
    public static IEnumerable<EncodedSample> Read(AdlOptions o, ISampleEncoder encoder, int contextLength)
    {
        if (!UsesBuiltIn(o)) return new SampleStream(o.Data, encoder, contextLength).Read();
        return GeneralText.Samples(BuiltInCap).Select((text, i) =>
        {
            var s = encoder.EncodeText(0, i, text);
            return s.Ids.Length <= contextLength ? s : s with { Ids = s.Ids[..contextLength], BosTokens = Math.Min(s.BosTokens, contextLength) };
        });
    }
}

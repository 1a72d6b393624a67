using System.Globalization;
using Finetrace.Models;

namespace Finetrace.Activations.Harvest;

/// <summary>
/// Part <see cref="Index"/> of <see cref="Count"/> (0-based, as scheduler array indices are) of a harvest split
/// across machines. The harvest's forward batches (fixed groups of samples) are divided into <see cref="Count"/>
/// contiguous runs; part i stores batches [⌊i·K/n⌋, ⌊(i+1)·K/n⌋) of the K batches the whole harvest needs, so the
/// parts merged in order (<see cref="StoreMerge"/>) give the unsharded store byte for byte.
/// </summary>
public readonly record struct HarvestPart(int Index, int Count)
{
    /// <summary>Settings keys a part store adds to its <see cref="StoreSettings.Options"/>; a merge removes them.</summary>
    public const string PartKey = "part", SamplesKey = "part_samples", TotalSamplesKey = "part_total_samples", TargetTokensKey = "part_target_tokens";
    public static readonly string[] OptionKeys = [PartKey, SamplesKey, TotalSamplesKey, TargetTokensKey];

    public bool IsWhole => Count == 1;

    /// <summary>"i/n" with 0 ≤ i &lt; n.</summary>
    public static HarvestPart Parse(string text)
    {
        var bits = text.Split('/', StringSplitOptions.TrimEntries);
        if (bits.Length != 2 || !int.TryParse(bits[0], NumberStyles.None, CultureInfo.InvariantCulture, out int i)
            || !int.TryParse(bits[1], NumberStyles.None, CultureInfo.InvariantCulture, out int n))
            throw new SettingException("part", text, "expected i/n, e.g. 0/4 (parts are numbered 0 … n−1)");
        var p = new HarvestPart(i, n);
        p.Validate();
        return p;
    }

    public void Validate()
    {
        if (Count < 1) throw new SettingException("part", ToString(), "the number of parts must be at least 1");
        if (Index < 0 || Index >= Count) throw new SettingException("part", ToString(), $"the part index must be in 0 … {Count - 1} (parts are numbered from 0)");
    }

    /// <summary>This part's batches of <paramref name="batches"/>: [first, end).</summary>
    public (long First, long End) Batches(long batches) => (batches * Index / Count, batches * (Index + 1) / Count);

    public override string ToString() => $"{Index}/{Count}";
}

using System.Globalization;
using Finetrace.Activations.Harvest;

namespace Finetrace.Activations;

/// <summary>The part stores cannot be merged: <see cref="Problems"/> says which part and why.</summary>
public sealed class StoreMergeException(IReadOnlyList<string> problems)
    : Exception("the part stores cannot be merged:\n  " + string.Join("\n  ", problems))
{
    public IReadOnlyList<string> Problems { get; } = problems;
}

/// <summary>Progress of a merge: sequences and tokens written of the total.</summary>
public readonly record struct StoreMergeProgress(long Tokens, long TotalTokens, long Sequences, long TotalSequences);

/// <summary>
/// Joins the part stores of a harvest split with <see cref="HarvestPart"/> into one store. The sequences of the parts,
/// in part order, are written again through <see cref="ActivationStoreWriter"/> with the settings of the whole
/// harvest, so shards are cut where the unsharded harvest cuts them and the result is byte-identical to it. Parts must
/// all be complete, come from the same harvest (settings equal apart from the part keys) and cover its samples
/// without gap or overlap. Resumable like a harvest: re-running the same merge keeps the complete shards of
/// <c>out</c>; cancelling leaves it consistent.
/// </summary>
public static class StoreMerge
{
    /// <summary>Tokens per append (whole sequences; a longer sequence goes alone), bounding memory.</summary>
    const int ChunkTokens = 4096;

    public static StoreManifest Merge(IReadOnlyList<string> partDirs, string outDir, Action<StoreMergeProgress>? progress = null,
        CancellationToken cancel = default, bool checkFreeSpace = true)
    {
        if (partDirs.Count == 0) throw new StoreMergeException(["no part stores given"]);
        var stores = new List<ActivationStore>();
        try
        {
            foreach (var d in partDirs) stores.Add(ActivationStore.Open(d));
            var ordered = Check(stores);
            var settings = WholeSettings(ordered[0].Settings);
            long target = long.Parse(ordered[0].Settings.Options[HarvestPart.TargetTokensKey], CultureInfo.InvariantCulture);
            long totalTokens = ordered.Sum(s => s.Tokens), totalSeq = ordered.Sum(s => s.Manifest.Sequences);

            string full = Path.GetFullPath(outDir);
            foreach (var s in ordered)
                if (string.Equals(s.Directory.TrimEnd('/'), full.TrimEnd('/'), StringComparison.Ordinal))
                    throw new StoreMergeException([$"{full}: the output folder is one of the parts; write the merged store to a new folder"]);

            using var writer = ActivationStoreWriter.Open(full, settings, target, checkFreeSpace);
            if (!writer.IsComplete)
            {
                long skip = writer.ResumeSequences;   // sequences already in the merged store's complete shards
                var chunk = new ChunkBuilder(settings);
                foreach (var part in ordered)
                    foreach (var shard in part.Shards)
                    {
                        var lens = shard.SequenceLengths;
                        int row = 0;
                        for (int q = 0; q < lens.Length; q++)
                        {
                            int len = lens[q];
                            if (skip > 0) { skip--; row += len; continue; }
                            if (chunk.Tokens > 0 && chunk.Tokens + len > ChunkTokens)
                            {
                                cancel.ThrowIfCancellationRequested();
                                writer.Append(chunk.Take());
                                progress?.Invoke(new StoreMergeProgress(writer.Tokens, totalTokens, writer.Sequences, totalSeq));
                            }
                            chunk.Add(shard, row, len);
                            row += len;
                        }
                        // Where appends are cut does not change the store (the writer cuts its shards by sequence);
                        // one per part shard at least keeps progress and Ctrl-C responsive.
                        if (chunk.Sequences > 0)
                        {
                            writer.Append(chunk.Take());
                            progress?.Invoke(new StoreMergeProgress(writer.Tokens, totalTokens, writer.Sequences, totalSeq));
                        }
                        cancel.ThrowIfCancellationRequested();
                    }
                // The last part read the data stream exactly as far as the unsharded harvest did: its skip counts are
                // the whole harvest's.
                writer.Manifest.Skipped = ordered[^1].Manifest.Skipped;
                writer.Complete();
                progress?.Invoke(new StoreMergeProgress(writer.Tokens, totalTokens, writer.Sequences, totalSeq));
            }
            return writer.Manifest;
        }
        finally
        {
            foreach (var s in stores) s.Dispose();
        }
    }

    /// <summary>The settings of the whole harvest: a part's, without the part keys.</summary>
    public static StoreSettings WholeSettings(StoreSettings part)
    {
        var json = System.Text.Json.JsonSerializer.SerializeToUtf8Bytes(part, StoreJson.Options);
        var s = System.Text.Json.JsonSerializer.Deserialize<StoreSettings>(json, StoreJson.Options)!;
        foreach (var k in HarvestPart.OptionKeys) s.Options.Remove(k);
        return s;
    }

    /// <summary>The parts in index order, after checking that they make up one whole harvest.</summary>
    static List<ActivationStore> Check(List<ActivationStore> stores)
    {
        var problems = new List<string>();
        var parsed = new List<(ActivationStore Store, HarvestPart Part, long First, long End)>();
        foreach (var s in stores)
        {
            var o = s.Settings.Options;
            if (!o.TryGetValue(HarvestPart.PartKey, out var partText) || !o.TryGetValue(HarvestPart.SamplesKey, out var range)
                || !o.ContainsKey(HarvestPart.TotalSamplesKey) || !o.ContainsKey(HarvestPart.TargetTokensKey))
            {
                problems.Add($"{s.Directory}: not a part store (harvest it with a part i/n)");
                continue;
            }
            if (!s.Manifest.Complete)
                problems.Add($"{s.Directory}: part {partText} is not complete ({s.Tokens:N0} tokens stored); finish it by running its harvest again");
            var r = range.Split("..");
            long first = long.Parse(r[0], CultureInfo.InvariantCulture), end = long.Parse(r[1], CultureInfo.InvariantCulture);
            if (s.Manifest.Complete && s.Manifest.Sequences != end - first)
                problems.Add($"{s.Directory}: part {partText} holds {s.Manifest.Sequences:N0} samples, its range {range} has {end - first:N0}; the part is damaged (harvest it again into a new folder)");
            parsed.Add((s, HarvestPart.Parse(partText), first, end));
        }
        if (problems.Count > 0) throw new StoreMergeException(problems);

        var first0 = parsed[0];
        foreach (var p in parsed.Skip(1))
        {
            var diffs = StoreSettings.Diff(WithoutRange(first0.Store.Settings), WithoutRange(p.Store.Settings));
            if (diffs.Count > 0)
                problems.Add($"{p.Store.Directory}: not from the same harvest as {first0.Store.Directory}:\n    " + string.Join("\n    ", diffs));
        }
        if (problems.Count > 0) throw new StoreMergeException(problems);

        int n = first0.Part.Count;
        foreach (var g in parsed.GroupBy(p => p.Part.Index).Where(g => g.Count() > 1))
            problems.Add($"part {g.Key}/{n} is given more than once: {string.Join(", ", g.Select(p => p.Store.Directory))}");
        var missing = Enumerable.Range(0, n).Except(parsed.Select(p => p.Part.Index)).ToList();
        if (missing.Count > 0) problems.Add($"part{(missing.Count > 1 ? "s" : "")} {string.Join(", ", missing.Select(i => $"{i}/{n}"))} missing; give all {n} part stores");
        if (problems.Count > 0) throw new StoreMergeException(problems);

        var ordered = parsed.OrderBy(p => p.Part.Index).ToList();
        long total = long.Parse(first0.Store.Settings.Options[HarvestPart.TotalSamplesKey], CultureInfo.InvariantCulture);
        long at = 0;
        foreach (var p in ordered)
        {
            if (p.First != at) problems.Add($"{p.Store.Directory}: part {p.Part} starts at sample {p.First:N0}, expected {at:N0}");
            at = p.End;
        }
        if (at != total) problems.Add($"the parts end at sample {at:N0}, the harvest has {total:N0}");
        if (problems.Count > 0) throw new StoreMergeException(problems);
        return ordered.Select(p => p.Store).ToList();
    }

    /// <summary>Settings without what legitimately differs between parts (the index and sample range).</summary>
    static StoreSettings WithoutRange(StoreSettings s)
    {
        var json = System.Text.Json.JsonSerializer.SerializeToUtf8Bytes(s, StoreJson.Options);
        var c = System.Text.Json.JsonSerializer.Deserialize<StoreSettings>(json, StoreJson.Options)!;
        c.Options[HarvestPart.PartKey] = c.Options[HarvestPart.PartKey].Split('/')[1];   // keep n: parts of different splits differ
        c.Options.Remove(HarvestPart.SamplesKey);
        return c;
    }

    /// <summary>Whole sequences copied out of part shards into one <see cref="StoreBatch"/>.</summary>
    sealed class ChunkBuilder(StoreSettings s)
    {
        readonly int _arrays = s.Models.Count * s.Layers.Length, _d = s.DModel;
        readonly List<int> _tokens = [], _positions = [], _lens = [];
        readonly List<byte> _masks = [];
        readonly List<ushort> _sources = [];
        readonly List<float[]> _rows = [];   // one [len × D] block per model/layer per sequence, in append order
        public int Tokens => _tokens.Count;
        public int Sequences => _lens.Count;

        public void Add(StoreShard shard, int row, int len)
        {
            _tokens.AddRange(shard.Tokens.AsSpan(row, len));
            _positions.AddRange(shard.Positions.AsSpan(row, len));
            _masks.AddRange(shard.Masks.AsSpan(row, len));
            _sources.AddRange(shard.Sources.AsSpan(row, len));
            _lens.Add(len);
            for (int m = 0; m < s.Models.Count; m++)
                for (int l = 0; l < s.Layers.Length; l++)
                {
                    var block = new float[(long)len * _d];
                    shard.ReadRows(m, l, row, len, block);
                    _rows.Add(block);
                }
        }

        public StoreBatch Take()
        {
            int n = _tokens.Count;
            var b = new StoreBatch(n, _lens.Count, s.Models.Count, s.Layers.Length, _d) { TokenCount = n, SequenceCount = _lens.Count };
            _tokens.CopyTo(b.Tokens); _positions.CopyTo(b.Positions); _masks.CopyTo(b.Masks); _sources.CopyTo(b.Sources); _lens.CopyTo(b.SequenceLengths);
            int offset = 0;
            for (int q = 0; q < _lens.Count; q++)
            {
                for (int a = 0; a < _arrays; a++)
                    _rows[q * _arrays + a].CopyTo(b.Activations[a].AsSpan(offset * _d));
                offset += _lens[q];
            }
            _tokens.Clear(); _positions.Clear(); _masks.Clear(); _sources.Clear(); _lens.Clear(); _rows.Clear();
            return b;
        }
    }
}

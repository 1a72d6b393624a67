using Finetrace.Activations;

namespace Finetrace.Tests.Activations;

/// <summary>A deterministic stream of fake samples for store tests: sample i has a length, tokens, masks, a source and
/// activations that are pure functions of i, so any run over the same samples must write the same store.</summary>
static class StoreTestData
{
    public static StoreSettings Settings(int models = 2, int[]? layers = null, int d = 8, string dtype = "bf16", long shardTokens = 50, int sources = 2) => new()
    {
        Models = Enumerable.Range(0, models).Select(m => new StoreModel { Name = m == 0 ? "base" : $"ft{m}", Path = "test" }).ToList(),
        Layers = layers ?? [3],
        DModel = d,
        Dtype = dtype,
        ShardTokens = shardTokens,
        Sources = Enumerable.Range(0, sources).Select(s => new StoreSource { Name = $"src{s}", Kind = "test", Proportion = 1.0 / sources }).ToList(),
    };

    public static int Length(int sample) => 3 + (sample * 7) % 11;
    public static ushort SourceOf(int sample, int sources) => (ushort)(sample % sources);

    public static float Value(int sample, int pos, int model, int layer, int dim) =>
        MathF.Sin(sample * 0.37f + pos * 1.3f + dim * 0.71f + layer * 0.1f) * (1 + model) + 0.25f * dim - model * 0.5f;

    /// <summary>Samples [first, first + count) as one batch.</summary>
    public static StoreBatch Batch(StoreSettings s, int first, int count)
    {
        int tokens = 0;
        for (int i = first; i < first + count; i++) tokens += Length(i);
        var b = new StoreBatch(tokens, count, s.Models.Count, s.Layers.Length, s.DModel) { TokenCount = tokens, SequenceCount = count };
        int t = 0;
        for (int i = first; i < first + count; i++)
        {
            int len = Length(i);
            b.SequenceLengths[i - first] = len;
            for (int p = 0; p < len; p++, t++)
            {
                b.Tokens[t] = (i * 31 + p) % 500;
                b.Positions[t] = p;
                b.Masks[t] = (byte)(p == 0 ? TokenMask.Bos : (p % 3 == 0 ? TokenMask.Assistant : TokenMask.User));
                b.Sources[t] = SourceOf(i, s.Sources.Count);
                for (int m = 0; m < s.Models.Count; m++)
                    for (int l = 0; l < s.Layers.Length; l++)
                        for (int d = 0; d < s.DModel; d++)
                            b.Activations[m * s.Layers.Length + l][(long)t * s.DModel + d] = Value(i, p, m, s.Layers[l], d);
            }
        }
        return b;
    }

    /// <summary>Writes samples [0, samples) in batches of <paramref name="batch"/> and completes the store.</summary>
    public static void Write(string dir, StoreSettings s, int samples, int batch, long target = 1_000_000)
    {
        using var w = ActivationStoreWriter.Open(dir, s, target);
        for (int i = (int)w.ResumeSequences; i < samples; i += batch) w.Append(Batch(s, i, Math.Min(batch, samples - i)));
        w.Complete();
    }

    public static int TotalTokens(int samples) => Enumerable.Range(0, samples).Sum(Length);
}

namespace Finetrace.Models;

/// <summary>
/// Token ids [Batch, Seq] with an attention mask (1 = real token, 0 = padding) and per-sequence positions.
/// Positions are the running count of real tokens minus one (model-facts.md §10), so right padding gives 0…len−1
/// for every row and left padding works too. Padded positions produce values that callers discard.
/// </summary>
public sealed class TokenBatch
{
    public int Batch { get; }
    public int Seq { get; }
    public int Count => Batch * Seq;
    /// <summary>[Batch · Seq] token ids; padded slots hold the pad id.</summary>
    public int[] Ids { get; }
    /// <summary>[Batch · Seq] 1 for a real token, 0 for padding.</summary>
    public byte[] Mask { get; }
    /// <summary>[Batch · Seq] RoPE / learned-position index of each token.</summary>
    public int[] Positions { get; }
    /// <summary>[Batch] index of the first and last real token of each row (real tokens are contiguous: left or right padding).</summary>
    public int[] FirstReal { get; }
    public int[] LastReal { get; }

    public TokenBatch(int[] ids, int batch, int seq, byte[]? mask = null) : this(ids, batch, seq, mask, 0) { }

    /// <summary>One unpadded sequence whose positions start at <paramref name="startPosition"/> (tokens fed after a key/value cache).</summary>
    public static TokenBatch Continuation(int[] ids, int startPosition) => new(ids, 1, ids.Length, null, startPosition);

    TokenBatch(int[] ids, int batch, int seq, byte[]? mask, int startPosition)
    {
        if (batch <= 0 || seq <= 0) throw new ArgumentException($"batch [{batch}, {seq}] must be non-empty");
        if (ids.Length != batch * seq) throw new ArgumentException($"{ids.Length} ids for a [{batch}, {seq}] batch");
        if (mask is not null && mask.Length != ids.Length) throw new ArgumentException($"attention mask has {mask.Length} entries for {ids.Length} ids");
        Batch = batch; Seq = seq; Ids = ids;
        Mask = mask ?? Enumerable.Repeat((byte)1, ids.Length).ToArray();
        Positions = new int[ids.Length];
        FirstReal = new int[batch];
        LastReal = new int[batch];
        for (int b = 0; b < batch; b++)
        {
            int count = 0, first = -1, last = -2;
            for (int t = 0; t < seq; t++)
            {
                int i = b * seq + t;
                if (Mask[i] != 0)
                {
                    if (first >= 0 && last != t - 1)
                        throw new ArgumentException($"attention mask row {b} has padding between real tokens (position {t}); only left or right padding is supported");
                    if (first < 0) first = t;
                    last = t;
                    count++;
                }
                Positions[i] = startPosition + Math.Max(count - 1, 0);
            }
            FirstReal[b] = first < 0 ? 0 : first;
            LastReal[b] = first < 0 ? -1 : last;
        }
    }

    /// <summary>Sequences of different lengths, right-padded with <paramref name="padId"/> to the longest.</summary>
    public static TokenBatch RightPadded(IReadOnlyList<int[]> rows, int padId = 0)
    {
        if (rows.Count == 0) throw new ArgumentException("no sequences");
        int seq = rows.Max(r => r.Length);
        if (seq == 0) throw new ArgumentException("all sequences are empty");
        var ids = new int[rows.Count * seq];
        var mask = new byte[ids.Length];
        for (int b = 0; b < rows.Count; b++)
            for (int t = 0; t < seq; t++)
            {
                bool real = t < rows[b].Length;
                ids[b * seq + t] = real ? rows[b][t] : padId;
                mask[b * seq + t] = real ? (byte)1 : (byte)0;
            }
        return new TokenBatch(ids, rows.Count, seq, mask);
    }

    /// <summary>An unpadded batch from int64 ids [batch, seq] (the input_ids tensor of a safetensors file).</summary>
    public static TokenBatch FromInt64(long[] ids, int batch, int seq)
    {
        var a = new int[ids.Length];
        for (int i = 0; i < a.Length; i++)
            a[i] = ids[i] is >= 0 and <= int.MaxValue ? (int)ids[i] : throw new ArgumentException($"token id {ids[i]} at index {i} is out of range");
        return new TokenBatch(a, batch, seq);
    }
}

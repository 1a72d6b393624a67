namespace Finetrace.Dictionaries;

/// <summary>
/// A sparse code matrix [B, F] in compressed-row form: for token b, entries RowStart[b] .. RowStart[b+1]−1 hold
/// latent indices (ascending) and their unscaled activations f. <see cref="BuildColumns"/> adds the transposed
/// (per-latent) view the weight-gradient kernels need, with tokens ascending inside each latent, so every
/// reduction runs in a fixed order.
/// </summary>
public sealed class SparseCodes
{
    public int Rows { get; private set; }
    public int Cols { get; }
    public int[] RowStart { get; private set; }
    public int[] Index { get; private set; }
    public float[] Value { get; private set; }
    public int Count => RowStart[Rows];

    // Column view: ColStart [F+1]; ColRow / ColEntry = token and CSR position of each entry.
    public int[] ColStart { get; }
    public int[] ColRow { get; private set; }
    public int[] ColEntry { get; private set; }

    public SparseCodes(int rows, int cols, int capacity = 0)
    {
        Rows = rows; Cols = cols;
        RowStart = new int[rows + 1];
        Index = new int[Math.Max(capacity, 1)];
        Value = new float[Math.Max(capacity, 1)];
        ColStart = new int[cols + 1];
        ColRow = new int[Math.Max(capacity, 1)];
        ColEntry = new int[Math.Max(capacity, 1)];
    }

    public void Reset(int rows)
    {
        if (RowStart.Length < rows + 1) RowStart = new int[rows + 1];
        Rows = rows;
        Array.Clear(RowStart);
    }

    public void EnsureCapacity(int n)
    {
        if (Index.Length >= n) return;
        int cap = Math.Max(n, Index.Length * 2);
        var idx = new int[cap]; Index.AsSpan().CopyTo(idx); Index = idx;
        var val = new float[cap]; Value.AsSpan().CopyTo(val); Value = val;
        ColRow = new int[cap]; ColEntry = new int[cap];
    }

    public ReadOnlySpan<int> RowIndices(int b) => Index.AsSpan(RowStart[b], RowStart[b + 1] - RowStart[b]);
    public Span<float> RowValues(int b) => Value.AsSpan(RowStart[b], RowStart[b + 1] - RowStart[b]);

    /// <summary>Builds the per-latent view by a counting sort (deterministic: tokens ascending per latent).</summary>
    public void BuildColumns()
    {
        int n = Count;
        if (ColRow.Length < n) { ColRow = new int[n]; ColEntry = new int[n]; }
        Array.Clear(ColStart);
        for (int e = 0; e < n; e++) ColStart[Index[e] + 1]++;
        for (int j = 0; j < Cols; j++) ColStart[j + 1] += ColStart[j];
        var fill = System.Buffers.ArrayPool<int>.Shared.Rent(Cols);
        Array.Copy(ColStart, fill, Cols);
        for (int b = 0; b < Rows; b++)
            for (int e = RowStart[b]; e < RowStart[b + 1]; e++)
            {
                int pos = fill[Index[e]]++;
                ColRow[pos] = b; ColEntry[pos] = e;
            }
        System.Buffers.ArrayPool<int>.Shared.Return(fill);
    }

    /// <summary>Dense [B, F] copy (tests and the dense reference path).</summary>
    public void ToDense(Span<float> fBF)
    {
        fBF.Slice(0, Rows * Cols).Clear();
        for (int b = 0; b < Rows; b++)
            for (int e = RowStart[b]; e < RowStart[b + 1]; e++) fBF[b * Cols + Index[e]] = Value[e];
    }

    /// <summary>Latents with a positive activation for at least one token.</summary>
    public bool[] Active()
    {
        var a = new bool[Cols];
        for (int e = 0; e < Count; e++) if (Value[e] > 0) a[Index[e]] = true;
        return a;
    }
}

using Finetrace.Tensors;

namespace Finetrace.Models;

/// <summary>
/// A projection y = x·Wᵀ + b (nn.Linear, W stored [out, in]) or y = x·W + b (GPT-2 Conv1D, W stored [in, out]).
/// F32 weights go to sgemm straight from the mapping; BF16/F16 weights are widened tile by tile into a reusable
/// f32 buffer just before each sgemm, so only one tile is ever widened at a time.
/// </summary>
sealed class Linear
{
    public Weight W { get; }
    public float[]? Bias { get; }
    public bool StoredInOut { get; }
    public int In { get; }
    public int Out { get; }

    public Linear(Weight w, float[]? bias, bool storedInOut)
    {
        W = w; Bias = bias; StoredInOut = storedInOut;
        In = storedInOut ? w.Rows : w.Cols;
        Out = storedInOut ? w.Cols : w.Rows;
        if (bias is not null && bias.Length != Out) throw new InvalidDataException($"bias of '{w.Name}' has {bias.Length} entries for {Out} outputs");
    }

    /// <summary>Parameters that take part in a matrix product (for FLOP counts).</summary>
    public long MatmulParameters => (long)In * Out;

    // xMIn: [m, In]; yMOut: [m, Out]; tile: scratch of any size ≥ one weight row
    public void Apply(ReadOnlySpan<float> xMIn, int m, Span<float> yMOut, TileBuffer tile)
    {
        long t0 = CausalLM.Profile.Now();
        if (W.DType == DType.F32)
        {
            var w = W.F32Span;
            if (StoredInOut) Gemm.Sgemm(false, false, m, Out, In, 1f, xMIn, In, w, Out, 0f, yMOut, Out);
            else Gemm.Sgemm(false, true, m, Out, In, 1f, xMIn, In, w, In, 0f, yMOut, Out);
        }
        else if (!StoredInOut)
        {
            // tiles of output rows: y[:, r0:r0+rows] = x · W[r0:r0+rows]ᵀ
            int rowsPerTile = Math.Max(1, tile.Capacity / In);
            var buf = tile.Get(Math.Min(rowsPerTile, Out) * In);
            for (int r0 = 0; r0 < Out; r0 += rowsPerTile)
            {
                int rows = Math.Min(rowsPerTile, Out - r0);
                W.ReadRows(r0, rows, buf);
                Gemm.Sgemm(false, true, m, rows, In, 1f, xMIn, In, buf, In, 0f, yMOut[r0..], Out);
            }
        }
        else
        {
            // Conv1D: tiles of input rows, accumulated: y += x[:, k0:k0+rows] · W[k0:k0+rows, :]
            int rowsPerTile = Math.Max(1, tile.Capacity / Out);
            var buf = tile.Get(Math.Min(rowsPerTile, In) * Out);
            for (int k0 = 0; k0 < In; k0 += rowsPerTile)
            {
                int rows = Math.Min(rowsPerTile, In - k0);
                W.ReadRows(k0, rows, buf);
                Gemm.Sgemm(false, false, m, Out, rows, 1f, xMIn[k0..], In, buf, Out, k0 == 0 ? 0f : 1f, yMOut, Out);
            }
        }
        if (Bias is { } b)
            for (int r = 0; r < m; r++)
                System.Numerics.Tensors.TensorPrimitives.Add(yMOut.Slice(r * Out, Out), b, yMOut.Slice(r * Out, Out));
        if (CausalLM.Profile.Current is { } p) p.Projections += CausalLM.Profile.Since(t0);
    }
}

/// <summary>The reusable f32 buffer that bf16/f16 weight tiles are widened into (about 16 MiB).</summary>
sealed class TileBuffer
{
    public const int DefaultCapacity = 1 << 22;
    float[] _buf = [];
    public int Capacity { get; }

    public TileBuffer(int capacity = DefaultCapacity) => Capacity = capacity;

    public Span<float> Get(int n)
    {
        if (_buf.Length < n) _buf = Tensor.Allocate(n, zeroed: false);
        return _buf.AsSpan(0, n);
    }
}

namespace Finetrace.Tensors;

/// <summary>
/// A dense float32 tensor in row-major order. The storage is a pinned managed array, so a tensor can be
/// handed to native code (OpenBLAS) by pointer without copying and read as a <see cref="Span{T}"/>.
/// Element counts are limited to <see cref="Array.MaxLength"/>; larger data stays memory-mapped in its stored
/// dtype (see <see cref="MappedTensor"/>) and is widened per tile or per layer.
/// </summary>
public sealed class Tensor
{
    public float[] Data { get; }
    public int[] Shape { get; }
    public int Rank => Shape.Length;
    public int Length => Data.Length;

    public Tensor(params int[] shape) : this(Allocate(ShapeLength(shape)), shape) { }

    public Tensor(float[] data, params int[] shape)
    {
        long n = ShapeLength(shape);
        if (n != data.Length)
            throw new ArgumentException($"shape [{string.Join(", ", shape)}] needs {n} elements, data has {data.Length}");
        Data = data;
        Shape = (int[])shape.Clone();
    }

    public static Tensor Zeros(params int[] shape) => new(shape);

    public static Tensor FromSpan(ReadOnlySpan<float> values, params int[] shape)
    {
        var t = new Tensor(shape);
        values.CopyTo(t.Data);
        return t;
    }

    public Span<float> Span => Data;

    /// <summary>Size of dimension <paramref name="dim"/>; negative counts from the end.</summary>
    public int Dim(int dim) => Shape[dim < 0 ? Shape.Length + dim : dim];

    /// <summary>The contiguous row <paramref name="i"/> of a tensor viewed as [Length / lastDim, lastDim].</summary>
    public Span<float> Row(int i)
    {
        int cols = Shape[^1];
        return Data.AsSpan(i * cols, cols);
    }

    /// <summary>A new tensor header over the same storage with another shape of equal element count.</summary>
    public Tensor Reshape(params int[] shape) => new(Data, shape);

    public Tensor Clone() => new((float[])Data.Clone(), Shape);

    public override string ToString() => $"Tensor[{string.Join(", ", Shape)}]";

    public static long ShapeLength(ReadOnlySpan<int> shape)
    {
        long n = 1;
        foreach (int d in shape)
        {
            if (d < 0) throw new ArgumentException($"negative dimension {d} in shape");
            n *= d;
        }
        return n;
    }

    /// <summary>Allocates a pinned, uninitialised float array; throws a clear error past the array limit.</summary>
    public static float[] Allocate(long count, bool zeroed = true)
    {
        if (count > Array.MaxLength)
            throw new InsufficientMemoryException(
                $"a tensor of {count:N0} float32 elements ({count * 4.0 / (1 << 30):F1} GiB) exceeds the {Array.MaxLength:N0}-element limit of one buffer; process it in smaller batches or layers");
        return zeroed
            ? GC.AllocateArray<float>((int)count, pinned: true)
            : GC.AllocateUninitializedArray<float>((int)count, pinned: true);
    }
}

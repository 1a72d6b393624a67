using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Finetrace.Models.Safetensors;
using Finetrace.Tensors;

namespace Finetrace.Models;

/// <summary>
/// A parameter kept in its stored dtype (F32, BF16 or F16): a pointer into the checkpoint's mapping, or into an
/// owned pinned copy (a LoRA-merged weight). Viewed as a matrix [Rows, Cols] (Rows = first dimension). It is widened
/// to float32 only per tile, just before a matrix product, so a bf16 model stays bf16 in memory.
/// </summary>
public sealed unsafe class Weight
{
    public string Name { get; }
    public DType DType { get; }
    public int[] Shape { get; }
    public int Rows { get; }
    public int Cols { get; }
    public long Count => (long)Rows * Cols;
    public string Origin { get; }

    readonly byte* _ptr;
    readonly object? _owner; // keeps an owned pinned array alive

    Weight(string name, DType dtype, int[] shape, byte* ptr, object? owner, string origin)
    {
        if (dtype is not (DType.F32 or DType.BF16 or DType.F16))
            throw new InvalidDataException($"{origin}: tensor '{name}' has dtype {dtype}; model weights must be F32, BF16 or F16");
        Name = name; DType = dtype; Shape = shape; _ptr = ptr; _owner = owner; Origin = origin;
        // vectors are viewed as one row
        Rows = shape.Length >= 2 ? shape[0] : 1;
        Cols = checked((int)(shape.Length >= 2 ? Tensor.ShapeLength(shape.AsSpan(1)) : Tensor.ShapeLength(shape)));
    }

    public static Weight Mapped(ShardedCheckpoint ckpt, string name)
    {
        var f = ckpt.FileOf(name);
        var info = f.Info(name);
        return new Weight(name, info.DType, info.Shape, f.Pointer(info), null, f.Path);
    }

    /// <summary>An owned copy in <paramref name="dtype"/> of float values (used for merged LoRA weights).</summary>
    public static Weight Owned(string name, DType dtype, int[] shape, ReadOnlySpan<float> values, string origin)
    {
        object owner;
        byte* p;
        switch (dtype)
        {
            case DType.F32:
            {
                var a = GC.AllocateUninitializedArray<float>(values.Length, pinned: true);
                values.CopyTo(a);
                owner = a; p = (byte*)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(a));
                break;
            }
            case DType.BF16 or DType.F16:
            {
                var a = GC.AllocateUninitializedArray<ushort>(values.Length, pinned: true);
                if (dtype == DType.BF16) Precision.F32ToBF16(values, a);
                else Precision.F32ToF16(values, a);
                owner = a; p = (byte*)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(a));
                break;
            }
            default: throw new ArgumentException($"unsupported weight dtype {dtype}");
        }
        return new Weight(name, dtype, shape, p, owner, origin);
    }

    /// <summary>The weight as float32 without copying, when it is stored as F32.</summary>
    public ReadOnlySpan<float> F32Span => DType == DType.F32
        ? new ReadOnlySpan<float>(_ptr, checked((int)Count))
        : throw new InvalidOperationException($"'{Name}' is {DType}, not F32");

    /// <summary>The raw bf16 bit patterns without copying, when the weight is stored as BF16 (what a device uploads as is).</summary>
    public ReadOnlySpan<ushort> Bf16Bits => DType == DType.BF16
        ? new ReadOnlySpan<ushort>(_ptr, checked((int)Count))
        : throw new InvalidOperationException($"'{Name}' is {DType}, not BF16");

    // rows [r0, r0 + count) of [Rows, Cols] widened into dst[count · Cols]
    public void ReadRows(int r0, int count, Span<float> dst)
    {
        long start = (long)r0 * Cols;
        int n = checked(count * Cols);
        if (r0 < 0 || r0 + count > Rows) throw new ArgumentOutOfRangeException(nameof(r0), $"rows {r0}..{r0 + count} of '{Name}' with {Rows} rows");
        DTypes.TryWiden(DType, _ptr, start, dst[..n]); // DType is F32, BF16 or F16 (checked in the constructor)
    }

    public float[] ToArray()
    {
        var a = new float[Count];
        ReadRows(0, Rows, a);
        return a;
    }
}


using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace Finetrace.Tensors;

/// <summary>bf16 / f16 ↔ f32 conversions (model-facts.md §15.2). bf16 and f16 are stored as their raw <c>ushort</c>
/// bits. The span versions are vectorised (style.md §2.2) and give exactly the scalar results.</summary>
public static class Precision
{
    /// <summary>f32 = bits(bf16) &lt;&lt; 16: exact for every value, NaN and Inf included.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float BF16ToF32(ushort b) => BitConverter.UInt32BitsToSingle((uint)b << 16);

    /// <summary>f32 → bf16 with round-to-nearest-even (PyTorch's rule); NaN becomes 0x7FC0.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ushort F32ToBF16(float f)
    {
        if (float.IsNaN(f)) return 0x7FC0;
        uint bits = BitConverter.SingleToUInt32Bits(f);
        bits += 0x7FFFu + ((bits >> 16) & 1u);
        return (ushort)(bits >> 16);
    }

    /// <summary>f16 bits → f32 (exact).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float F16ToF32(ushort h) => (float)BitConverter.UInt16BitsToHalf(h);

    /// <summary>f32 → f16 bits, round-to-nearest-even, overflow to ±Inf (IEEE conversion, as torch's .half()).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ushort F32ToF16(float f) => BitConverter.HalfToUInt16Bits((Half)f);

    // src: [n] bf16 bits; dst: [≥n]
    public static void BF16ToF32(ReadOnlySpan<ushort> src, Span<float> dst)
    {
        if (dst.Length < src.Length) throw new ArgumentException($"destination has {dst.Length} values, source has {src.Length}");
        ref ushort ps = ref MemoryMarshal.GetReference(src);
        ref uint pd = ref Unsafe.As<float, uint>(ref MemoryMarshal.GetReference(dst));
        int n = src.Length, i = 0;
        for (; i <= n - 16; i += 16)
        {
            var (lo, hi) = Vector256.Widen(Vector256.LoadUnsafe(ref ps, (nuint)i));
            Vector256.ShiftLeft(lo, 16).StoreUnsafe(ref pd, (nuint)i);
            Vector256.ShiftLeft(hi, 16).StoreUnsafe(ref pd, (nuint)(i + 8));
        }
        for (; i < n; i++) dst[i] = BF16ToF32(src[i]);
    }

    // src: [n]; dst: [≥n] bf16 bits
    public static void F32ToBF16(ReadOnlySpan<float> src, Span<ushort> dst)
    {
        if (dst.Length < src.Length) throw new ArgumentException($"destination has {dst.Length} values, source has {src.Length}");
        ref float ps = ref MemoryMarshal.GetReference(src);
        ref ushort pd = ref MemoryMarshal.GetReference(dst);
        int n = src.Length, i = 0;
        for (; i <= n - 16; i += 16)
        {
            var a = Vector256.LoadUnsafe(ref ps, (nuint)i);
            var b = Vector256.LoadUnsafe(ref ps, (nuint)(i + 8));
            Vector256.Narrow(RoundToBF16(a), RoundToBF16(b)).StoreUnsafe(ref pd, (nuint)i);
        }
        for (; i < n; i++) dst[i] = F32ToBF16(src[i]);
    }

    // The bf16 bits (in the low half of each lane) of eight floats, rounded to nearest even; NaN → 0x7FC0.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<uint> RoundToBF16(Vector256<float> f)
    {
        var bits = f.AsUInt32();
        var rounded = (bits + Vector256.Create(0x7FFFu) + ((bits >> 16) & Vector256<uint>.One)) >> 16;
        return Vector256.ConditionalSelect(Vector256.Equals(f, f).AsUInt32(), rounded, Vector256.Create(0x7FC0u));
    }

    // src: [n] f16 bits; dst: [≥n]
    public static void F16ToF32(ReadOnlySpan<ushort> src, Span<float> dst)
    {
        if (dst.Length < src.Length) throw new ArgumentException($"destination has {dst.Length} values, source has {src.Length}");
        TensorPrimitives.ConvertToSingle(MemoryMarshal.Cast<ushort, Half>(src), dst);
    }

    // src: [n]; dst: [≥n] f16 bits
    public static void F32ToF16(ReadOnlySpan<float> src, Span<ushort> dst)
    {
        if (dst.Length < src.Length) throw new ArgumentException($"destination has {dst.Length} values, source has {src.Length}");
        TensorPrimitives.ConvertToHalf(src, MemoryMarshal.Cast<ushort, Half>(dst));
    }
}

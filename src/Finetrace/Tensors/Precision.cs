using System.Runtime.CompilerServices;

namespace Finetrace.Tensors;

/// <summary>bf16 / f16 ↔ f32 conversions (model-facts.md §15.2). bf16 is stored as its raw <c>ushort</c> bits.</summary>
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

    // src: [n] bf16 bits; dst: [n]
    public static void BF16ToF32(ReadOnlySpan<ushort> src, Span<float> dst)
    {
        if (dst.Length < src.Length) throw new ArgumentException("destination too short");
        for (int i = 0; i < src.Length; i++) dst[i] = BF16ToF32(src[i]);
    }

    // src: [n]; dst: [n] bf16 bits
    public static void F32ToBF16(ReadOnlySpan<float> src, Span<ushort> dst)
    {
        if (dst.Length < src.Length) throw new ArgumentException("destination too short");
        for (int i = 0; i < src.Length; i++) dst[i] = F32ToBF16(src[i]);
    }
}

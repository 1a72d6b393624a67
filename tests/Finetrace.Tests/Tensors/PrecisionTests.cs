using Finetrace.Tensors;

namespace Finetrace.Tests.Tensors;

public class PrecisionTests
{
    public static readonly int[] Lengths = [0, 1, 7, 15, 16, 17, 35, 1000];
    public static IEnumerable<object[]> LengthData() => Lengths.Select(n => new object[] { n });

    [Fact]
    public void ScalarBF16MatchesDefinitionForEveryBitPattern()
    {
        for (int b = 0; b <= 0xFFFF; b++)
        {
            float f = Precision.BF16ToF32((ushort)b), r = KernelsReference.BF16ToF32((ushort)b);
            Assert.True(f.Equals(r) && (float.IsNaN(f) || BitConverter.SingleToUInt32Bits(f) == BitConverter.SingleToUInt32Bits(r)), $"bf16 {b:X4}: {f} vs {r}");
            if (!float.IsNaN(f)) Assert.Equal((ushort)b, Precision.F32ToBF16(f)); // exact values round-trip
        }
    }

    [Fact]
    public void F16SpanConversionMatchesHalfForEveryBitPattern()
    {
        var bits = Enumerable.Range(0, 65536).Select(i => (ushort)i).ToArray();
        var f = new float[bits.Length];
        Precision.F16ToF32(bits, f);
        var back = new ushort[bits.Length];
        Precision.F32ToF16(f, back);
        for (int i = 0; i < bits.Length; i++)
        {
            float expected = (float)BitConverter.UInt16BitsToHalf(bits[i]);
            Assert.True(expected.Equals(f[i]), $"f16 {i:X4}: expected {expected}, got {f[i]}");
            if (!float.IsNaN(f[i])) Assert.Equal(bits[i], back[i]); // every f16 value survives f32 exactly
        }
    }

    [Fact]
    public void F32ToBF16RoundsToNearestEven()
    {
        var r = new Random(3);
        for (int t = 0; t < 200000; t++)
        {
            float f = BitConverter.UInt32BitsToSingle((uint)r.NextInt64(0, 1L << 32));
            Assert.Equal(KernelsReference.F32ToBF16(f), Precision.F32ToBF16(f));
        }
        Assert.Equal(0x3F80, Precision.F32ToBF16(BitConverter.UInt32BitsToSingle(0x3F808000))); // tie → even (down)
        Assert.Equal(0x3F82, Precision.F32ToBF16(BitConverter.UInt32BitsToSingle(0x3F818000))); // tie → even (up)
        Assert.Equal(0x7F80, Precision.F32ToBF16(float.MaxValue)); // overflow rounds to +Inf
        Assert.Equal(0x7FC0, Precision.F32ToBF16(float.NaN));
    }

    static float[] Values(int n, int seed)
    {
        var r = new Random(seed);
        var a = new float[n];
        for (int i = 0; i < n; i++) a[i] = BitConverter.UInt32BitsToSingle((uint)r.NextInt64(0, 1L << 32));
        float[] specials = [float.NaN, float.PositiveInfinity, float.NegativeInfinity, 0f, -0f, 65504f, 65520f, 1e-8f, BitConverter.UInt32BitsToSingle(0x3F808000)];
        for (int t = 0; t < Math.Min(n, specials.Length); t++) a[r.Next(n)] = specials[t];
        return a;
    }

    [Theory, MemberData(nameof(LengthData))]
    public void SpanConversionsMatchScalar(int n)
    {
        var f = Values(n, n);
        var bf = new ushort[n];
        Precision.F32ToBF16(f, bf);
        for (int i = 0; i < n; i++) Assert.Equal(Precision.F32ToBF16(f[i]), bf[i]);
        var back = new float[n];
        Precision.BF16ToF32(bf, back);
        for (int i = 0; i < n; i++)
        {
            // NaN became bf16 0x7FC0 and widens to exactly 0x7FC00000 (the reference returns .NET's NaN, with other bits)
            if (float.IsNaN(f[i])) Assert.Equal(0x7FC0_0000u, BitConverter.SingleToUInt32Bits(back[i]));
            else Assert.Equal(BitConverter.SingleToUInt32Bits(KernelsReference.BF16ToF32(bf[i])), BitConverter.SingleToUInt32Bits(back[i]));
        }

        var h = new ushort[n];
        Precision.F32ToF16(f, h);
        for (int i = 0; i < n; i++)
        {
            if (float.IsNaN(f[i])) Assert.True(Half.IsNaN(BitConverter.UInt16BitsToHalf(h[i])));
            else Assert.Equal(Precision.F32ToF16(f[i]), h[i]);
        }
        var hf = new float[n];
        Precision.F16ToF32(h, hf);
        for (int i = 0; i < n; i++) Assert.Equal(Precision.F16ToF32(h[i]), hf[i]);
        if (n > 0) Assert.Throws<ArgumentException>(() => Precision.BF16ToF32(bf, new float[n - 1]));
    }
}

using Finetrace.Tensors;
using Finetrace.Tests.Infrastructure;

namespace Finetrace.Tests.Tensors;

/// <summary>Every optimised kernel against its scalar reference over the length sweep (0, 1, V−1, V, V+1, 2V+3,
/// large), in place, with special values planted, and with bad destinations.</summary>
public class KernelsTests
{
    public static readonly int[] Lengths = [0, 1, 2, 3, 7, 8, 9, 15, 16, 17, 19, 31, 33, 64, 100, 1001, 4099];
    public static IEnumerable<object[]> LengthData() => Lengths.Select(n => new object[] { n });

    internal static float[] Random(int n, int seed, float scale = 4f)
    {
        var r = new Random(seed);
        var a = new float[n];
        for (int i = 0; i < n; i++) a[i] = (float)((r.NextDouble() * 2 - 1) * scale);
        return a;
    }

    static readonly float[] Specials = [float.NaN, float.PositiveInfinity, float.NegativeInfinity, 0f, -0f, 1e-30f, -1e-30f, 1e6f, -1e6f, 30f, -30f, 100f, -100f, 1e30f, -1e30f];

    static float[] WithSpecials(int n, int seed)
    {
        var a = Random(n, seed);
        var r = new Random(seed + 100);
        for (int t = 0; t < Math.Min(n, Specials.Length); t++) a[r.Next(n)] = Specials[t];
        return a;
    }

    /// NaN must meet NaN and ±∞ the same ∞; finite values within atol + rtol·|expected|.
    internal static void AssertClose(string name, float[] expected, float[] actual, double atol, double rtol)
    {
        Assert.Equal(expected.Length, actual.Length);
        var e = (float[])expected.Clone();
        var a = (float[])actual.Clone();
        for (int i = 0; i < e.Length; i++)
        {
            if (float.IsNaN(e[i]) || float.IsInfinity(e[i]))
            {
                Assert.True(e[i].Equals(a[i]), $"{name}: at {i} expected {e[i]}, got {a[i]}");
                e[i] = a[i] = 0;
            }
        }
        Golden.AssertClose(name, e, a, atol, rtol);
    }

    delegate void Unary(ReadOnlySpan<float> src, Span<float> dst);
    delegate void Binary(ReadOnlySpan<float> a, ReadOnlySpan<float> b, Span<float> dst);

    static void CheckUnary(string name, Unary fast, Unary reference, int n, double atol, double rtol, bool specials = true)
    {
        var x = specials ? WithSpecials(n, n) : Random(n, n);
        var expected = new float[n];
        reference(x, expected);
        var actual = new float[n];
        fast(x, actual);
        AssertClose($"{name} n={n}", expected, actual, atol, rtol);
        var inPlace = (float[])x.Clone();
        fast(inPlace, inPlace);
        Assert.Equal(actual, inPlace); // in place gives exactly the out-of-place result
        if (n > 0)
        {
            Assert.Throws<ArgumentException>(() => fast(new float[n], new float[n - 1]));
        }
        if (n > 1)
        {
            var buf = new float[n + 1];
            Assert.Throws<ArgumentException>(() => fast(buf.AsSpan(0, n), buf.AsSpan(1, n)));
        }
    }

    static void CheckBinary(string name, Binary fast, Binary reference, int n, double atol, double rtol)
    {
        var g = WithSpecials(n, n);
        var u = Random(n, n + 7, 2f);
        var expected = new float[n];
        reference(g, u, expected);
        var actual = new float[n];
        fast(g, u, actual);
        AssertClose($"{name} n={n}", expected, actual, atol, rtol);
        var inPlace = (float[])g.Clone();
        fast(inPlace, u, inPlace);
        Assert.Equal(actual, inPlace);
        var inPlaceUp = (float[])u.Clone();
        fast(g, inPlaceUp, inPlaceUp);
        Assert.Equal(actual, inPlaceUp);
        if (n > 0) Assert.Throws<ArgumentException>(() => fast(new float[n], new float[n], new float[n - 1]));
    }

    [Theory, MemberData(nameof(LengthData))]
    public void ExpMatchesReference(int n) => CheckUnary("Exp", Kernels.Exp, KernelsReference.Exp, n, 0, 3e-7);

    [Fact]
    public void ExpIsAccurateOverItsWholeRange()
    {
        // every 0.001 from −110 to 90: underflow to subnormals and 0, the top binade, overflow to +∞
        var x = Enumerable.Range(0, 200001).Select(i => -110f + i * 1e-3f).ToArray();
        var expected = new float[x.Length];
        KernelsReference.Exp(x, expected);
        var actual = new float[x.Length];
        Kernels.Exp(x, actual);
        for (int i = 0; i < x.Length; i++)
        {
            double e = expected[i], a = actual[i];
            if (e < 1.2e-38) Assert.True(Math.Abs(a - e) <= 2.9e-45, $"exp({x[i]}): expected {e:G9}, got {a:G9}"); // subnormal: ≤ 2 units
            else if (double.IsInfinity(e)) Assert.Equal(e, a);
            else Assert.True(Math.Abs(a - e) <= 3e-7 * e, $"exp({x[i]}): expected {e:G9}, got {a:G9}");
        }
    }

    [Theory, MemberData(nameof(LengthData))]
    public void GeluTanhMatchesReference(int n) => CheckUnary("GeluTanh", Kernels.GeluTanh, KernelsReference.GeluTanh, n, 1e-7, 2e-6);

    [Theory, MemberData(nameof(LengthData))]
    public void GeluErfMatchesReference(int n) => CheckUnary("GeluErf", Kernels.GeluErf, KernelsReference.GeluErf, n, 2e-7, 2e-6);

    [Theory, MemberData(nameof(LengthData))]
    public void SiluMatchesReference(int n) => CheckUnary("Silu", Kernels.Silu, KernelsReference.Silu, n, 1e-7, 2e-6);

    [Theory, MemberData(nameof(LengthData))]
    public void SiluMulMatchesReference(int n) => CheckBinary("SiluMul", Kernels.SiluMul, KernelsReference.SiluMul, n, 1e-7, 3e-6);

    [Theory, MemberData(nameof(LengthData))]
    public void GeluTanhMulMatchesReference(int n) => CheckBinary("GeluTanhMul", Kernels.GeluTanhMul, KernelsReference.GeluTanhMul, n, 1e-7, 3e-6);

    [Theory, MemberData(nameof(LengthData))]
    public void GeluErfMulMatchesReference(int n) => CheckBinary("GeluErfMul", Kernels.GeluErfMul, KernelsReference.GeluErfMul, n, 2e-7, 3e-6);

    [Theory, MemberData(nameof(LengthData))]
    public void SoftCapMatchesReference(int n)
    {
        foreach (float cap in new[] { 30f, 50f, 0.5f })
        {
            var x = WithSpecials(n, n);
            var expected = (float[])x.Clone();
            KernelsReference.SoftCap(expected, cap);
            var actual = (float[])x.Clone();
            Kernels.SoftCap(actual, cap);
            AssertClose($"SoftCap cap={cap} n={n}", expected, actual, 1e-7 * cap, 1e-6);
        }
    }

    [Fact]
    public void SoftCapIsAccurateNearZero()
    {
        // tanh(u)·cap ≈ x for small u; the relative error must stay small, not just the absolute one.
        var x = new float[] { 1e-3f, -2e-3f, 0.1f, 0.5f, -1f, 14.9f, 15.1f, 24.9f, 25.1f };
        var expected = (float[])x.Clone();
        KernelsReference.SoftCap(expected, 50f);
        var actual = (float[])x.Clone();
        Kernels.SoftCap(actual, 50f);
        AssertClose("SoftCap small", expected, actual, 0, 1e-6);
    }

    [Theory, MemberData(nameof(LengthData))]
    public void SoftmaxMatchesReference(int n)
    {
        var x = Random(n, n, 20f);
        var expected = (float[])x.Clone();
        KernelsReference.Softmax(expected);
        var actual = (float[])x.Clone();
        Kernels.Softmax(actual);
        AssertClose($"Softmax n={n}", expected, actual, 1e-8, 2e-6);
        if (n > 0) Assert.InRange(actual.Sum(v => (double)v), 1 - 1e-5, 1 + 1e-5);
    }

    [Fact]
    public void SoftmaxIsStableForHugeLogitsAndMasks()
    {
        var x = new float[] { 1000f, 999f, float.NegativeInfinity, -1000f, 998f };
        var expected = (float[])x.Clone();
        KernelsReference.Softmax(expected);
        Kernels.Softmax(x);
        AssertClose("Softmax huge", expected, x, 1e-8, 1e-6);
        Assert.Equal(0f, x[2]);

        var masked = Random(19, 5, 3f);
        var reference = masked.AsSpan(0, 11).ToArray();
        KernelsReference.Softmax(reference);
        Kernels.Softmax(masked, 11);
        AssertClose("Softmax valid=11", reference, masked[..11], 1e-8, 2e-6);
        Assert.All(masked[11..], v => Assert.Equal(0f, v));
    }

    [Theory, MemberData(nameof(LengthData))]
    public void LogSoftmaxMatchesReference(int n)
    {
        var x = Random(n, n, 20f);
        var expected = new float[n];
        KernelsReference.LogSoftmax(x, expected);
        var actual = new float[n];
        Kernels.LogSoftmax(x, actual);
        AssertClose($"LogSoftmax n={n}", expected, actual, 1e-5, 1e-6);
        Kernels.LogSoftmax(x, x);
        Assert.Equal(actual, x);
    }

    [Theory, MemberData(nameof(LengthData))]
    public void RmsNormMatchesReference(int d)
    {
        foreach (bool onePlusW in new[] { false, true })
        {
            int rows = 3;
            var x = Random(rows * d, d, 3f);
            var w = Random(d, d + 1, 1.5f);
            var expected = new float[rows * d];
            KernelsReference.RmsNorm(x, w, rows, 1e-6f, onePlusW, expected);
            var actual = new float[rows * d];
            Kernels.RmsNorm(x, w, rows, 1e-6f, onePlusW, actual);
            AssertClose($"RmsNorm d={d} onePlusW={onePlusW}", expected, actual, 1e-6, 2e-6);
            Kernels.RmsNorm(x, w, rows, 1e-6f, onePlusW, x);
            Assert.Equal(actual, x);
        }
    }

    [Theory, MemberData(nameof(LengthData))]
    public void LayerNormMatchesReference(int d)
    {
        int rows = 3;
        var x = Random(rows * d, d, 3f);
        for (int i = 0; i < x.Length; i++) x[i] += 10f; // an offset mean tests the two-pass variance
        var w = Random(d, d + 1, 1.5f);
        foreach (var b in new[] { Random(d, d + 2), Array.Empty<float>() })
        {
            var expected = new float[rows * d];
            KernelsReference.LayerNorm(x, w, b, rows, 1e-5f, expected);
            var actual = new float[rows * d];
            Kernels.LayerNorm(x, w, b, rows, 1e-5f, actual);
            AssertClose($"LayerNorm d={d} bias={b.Length > 0}", expected, actual, 1e-5, 1e-5);
        }
    }

    [Fact]
    public void NormsRejectWrongShapes()
    {
        Assert.Throws<ArgumentException>(() => Kernels.RmsNorm(new float[10], new float[4], 3, 1e-6f, false, new float[12]));
        Assert.Throws<ArgumentException>(() => Kernels.LayerNorm(new float[12], new float[4], new float[3], 3, 1e-5f, new float[12]));
        Assert.Throws<ArgumentException>(() => Kernels.RmsNorm(new float[12], new float[4], 3, 1e-6f, false, new float[11]));
        Assert.Throws<ArgumentException>(() => Kernels.LayerNorm(new float[12], new float[4], default, 3, 1e-5f, new float[11]));
    }

    [Theory]
    [InlineData(1, 8, 8)]
    [InlineData(2, 64, 64)]
    [InlineData(3, 64, 16)]
    [InlineData(4, 80, 20)]
    [InlineData(2, 128, 34)]
    [InlineData(2, 256, 256)]
    public void ApplyRopeMatchesReference(int heads, int headDim, int rotaryDim)
    {
        var x = Random(heads * headDim, headDim, 2f);
        var cos = new float[rotaryDim];
        var sin = new float[rotaryDim];
        for (int i = 0; i < rotaryDim / 2; i++)
        {
            double angle = 7 * Math.Pow(10000, -2.0 * i / rotaryDim);
            cos[i] = cos[i + rotaryDim / 2] = (float)Math.Cos(angle);
            sin[i] = sin[i + rotaryDim / 2] = (float)Math.Sin(angle);
        }
        var expected = (float[])x.Clone();
        KernelsReference.ApplyRope(expected, heads, headDim, rotaryDim, cos, sin);
        var actual = (float[])x.Clone();
        Kernels.ApplyRope(actual, heads, headDim, rotaryDim, cos, sin);
        AssertClose($"ApplyRope h={heads} hd={headDim} rd={rotaryDim}", expected, actual, 1e-6, 1e-6);
        for (int h = 0; h < heads; h++) // channels past rotaryDim pass through untouched
            for (int i = rotaryDim; i < headDim; i++) Assert.Equal(x[h * headDim + i], actual[h * headDim + i]);
        // −sin undoes the rotation
        var negSin = sin.Select(v => -v).ToArray();
        Kernels.ApplyRope(actual, heads, headDim, rotaryDim, cos, negSin);
        AssertClose("ApplyRope inverse", x, actual, 1e-5, 1e-5);
    }

    [Theory, MemberData(nameof(LengthData))]
    public void TopKMatchesReference(int n)
    {
        var x = Random(n, n, 3f);
        // quantise so that ties occur
        for (int i = 0; i < n; i++) x[i] = MathF.Round(x[i] * 4) / 4;
        foreach (int k in new[] { 0, 1, 3, n / 2, n }.Where(k => k <= n).Distinct())
        {
            var expected = new int[k];
            KernelsReference.TopK(x, k, expected);
            var actual = new int[k];
            Kernels.TopK(x, k, actual);
            Assert.Equal(expected, actual);
        }
    }

    [Fact]
    public void TopKRanksNaNFirstAndBreaksTiesByLowerIndex()
    {
        var x = new float[40];
        x[30] = 5; x[3] = 5; x[17] = float.NaN; x[25] = float.PositiveInfinity; x[9] = float.NaN;
        var idx = new int[5];
        Kernels.TopK(x, 5, idx);
        Assert.Equal(new[] { 9, 17, 25, 3, 30 }, idx);
        var expected = new int[5];
        KernelsReference.TopK(x, 5, expected);
        Assert.Equal(expected, idx);
        Assert.Throws<ArgumentOutOfRangeException>(() => Kernels.TopK(x, 41, new int[41]));
    }

    [Fact]
    public void ErfDoubleMatchesKnownValues()
    {
        // erf values from tables (Abramowitz & Stegun 7.1, extended precision)
        (double x, double erf)[] known = [(0, 0), (0.1, 0.1124629160182849), (0.5, 0.5204998778130465), (1, 0.8427007929497149),
            (1.5, 0.9661051464753108), (2, 0.9953222650189527), (2.5, 0.9995930479825550), (3, 0.9999779095030014), (4, 0.9999999845827421)];
        foreach (var (x, e) in known)
        {
            Assert.InRange(Kernels.Erf(x), e - 1e-12, e + 1e-12);
            Assert.InRange(Kernels.Erf(-x), -e - 1e-12, -e + 1e-12);
        }
        // continuity where the method switches
        Assert.InRange(Kernels.Erf(2.5 - 1e-12) - Kernels.Erf(2.5 + 1e-12), -1e-12, 1e-12);
        Assert.Equal(1.0, Kernels.Erf(7.0));
        Assert.True(double.IsNaN(Kernels.Erf(double.NaN)));
    }

    [Fact]
    public void ErfFloatIsAccurateTo1e7()
    {
        double worst = 0;
        for (double x = -6; x <= 6; x += 1e-3)
            worst = Math.Max(worst, Math.Abs(Kernels.Erf((float)x) - Kernels.Erf((double)(float)x)));
        Assert.True(worst < 1.5e-7, $"float erf max abs error {worst:E2}");
    }

    // ---------------------------------------------------------------- attention

    /// <summary>One query head against the double-precision reference: head dims around the vector width, keys not
    /// a multiple of it, strided rows (other heads interleaved), a cache offset, left and right padding, a sliding
    /// window and a soft-cap; queries with no visible key must come out 0.</summary>
    [Theory]
    [InlineData(8, 37, 0, 0, 36, 0, false)]        // stories260K's head dim, causal, no padding
    [InlineData(8, 37, 0, 0, 20, 0, false)]        // right padding: queries after 20 see keys ≤ 20
    [InlineData(8, 37, 0, 5, 36, 0, false)]        // left padding: queries before 5 see nothing
    [InlineData(3, 19, 0, 0, 18, 0, false)]        // head dim below a vector: scalar only
    [InlineData(12, 41, 0, 0, 40, 7, true)]        // vector + remainder dims, sliding window, soft-cap
    [InlineData(64, 70, 0, 2, 65, 0, false)]       // a real model's head dim
    [InlineData(16, 5, 30, 0, 34, 0, false)]       // 5 new queries after 30 cached keys
    public void AttendHeadMatchesReference(int hd, int nq, int qOffset, int keyFirst, int keyLast, int window, bool softcap)
    {
        int nk = qOffset + nq, qStride = hd * 3, kvStride = hd * 2 + 1;
        var q = Random((nq - 1) * qStride + hd, 11 + hd, 2f);
        var k = Random((nk - 1) * kvStride + hd, 12 + hd, 2f);
        var v = Random((nk - 1) * kvStride + hd, 13 + hd, 1f);
        float scale = 1f / MathF.Sqrt(hd);
        float? cap = softcap ? 3f : null;
        var expected = new float[q.Length];
        KernelsReference.AttendHead(q, qStride, nq, qOffset, k, v, kvStride, nk, hd, keyFirst, keyLast, window, scale, cap, expected);
        var actual = new float[q.Length];
        Kernels.AttendHead(q, qStride, nq, qOffset, k, v, kvStride, nk, hd, keyFirst, keyLast, window, scale, cap, actual, new float[hd * nk + nk]);
        // Only each row's head slice is written; compare those.
        var e = new List<float>(); var a = new List<float>();
        for (int i = 0; i < nq; i++) { e.AddRange(expected.AsSpan(i * qStride, hd).ToArray()); a.AddRange(actual.AsSpan(i * qStride, hd).ToArray()); }
        AssertClose($"AttendHead hd={hd} nq={nq}", e.ToArray(), a.ToArray(), 2e-6, 2e-6);
        for (int i = 0; i < nq; i++)
        {
            int abs = qOffset + i;
            bool none = Math.Max(keyFirst, window > 0 ? abs - window + 1 : 0) > Math.Min(abs, keyLast);
            if (none) Assert.All(actual.AsSpan(i * qStride, hd).ToArray(), x => Assert.Equal(0f, x));
            else Assert.Contains(actual.AsSpan(i * qStride, hd).ToArray(), x => x != 0f);
        }
    }

    [Fact]
    public void AttendHeadRejectsShortBuffers()
    {
        var q = new float[16]; var k = new float[16]; var v = new float[16]; var o = new float[16];
        Assert.Throws<ArgumentException>(() => Kernels.AttendHead(q, 8, 2, 0, k, v, 8, 2, 8, 0, 1, 0, 1f, null, o, new float[17]));
        Assert.Throws<ArgumentException>(() => Kernels.AttendHead(q, 8, 3, 0, k, v, 8, 2, 8, 0, 1, 0, 1f, null, o, new float[18]));
    }
}

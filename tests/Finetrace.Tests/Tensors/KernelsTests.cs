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

    /// <summary>The query heads of one KV group against the double-precision reference applied head by head: head dims
    /// below, at and past the vector width, GQA groups of 1, 2 and 4 heads, keys not a multiple of the vector width
    /// (1, 7, 513), strided rows (other heads interleaved), a cache offset, left and right padding, a sliding window and a
    /// soft-cap; queries with no visible key must come out 0, and nothing outside the group's head slices is written.</summary>
    [Theory]
    [InlineData(8, 2, 37, 0, 0, 36, 0, false)]       // stories260K's head dim and GQA ratio, causal, no padding
    [InlineData(8, 2, 37, 0, 0, 20, 0, false)]       // right padding: queries after 20 see keys ≤ 20
    [InlineData(8, 1, 37, 0, 5, 36, 0, false)]       // left padding: queries before 5 see nothing
    [InlineData(3, 1, 19, 0, 0, 18, 0, false)]       // head dim below a vector: scalar dims only
    [InlineData(12, 2, 41, 0, 0, 40, 7, true)]       // vector + remainder dims, sliding window, soft-cap
    [InlineData(64, 4, 70, 0, 2, 65, 0, false)]      // a real model's head dim
    [InlineData(16, 2, 5, 30, 0, 34, 0, false)]      // 5 new queries after 30 cached keys
    [InlineData(8, 1, 1, 0, 0, 0, 0, false)]         // T = 1
    [InlineData(8, 4, 7, 0, 0, 6, 0, false)]         // T = 7: one partial vector of keys
    [InlineData(8, 2, 513, 0, 0, 512, 0, false)]     // T = 513: every tail length on the way
    [InlineData(16, 4, 513, 0, 3, 500, 0, false)]
    [InlineData(64, 1, 513, 0, 0, 512, 100, true)]
    [InlineData(8, 2, 1, 40, 0, 40, 0, false)]       // a generation step after 40 cached keys
    [InlineData(8, 2, 9, 0, 5, 3, 0, false)]         // no real key at all (keyFirst > keyLast): all zeros
    public void AttendGroupMatchesReference(int hd, int heads, int nq, int qOffset, int keyFirst, int keyLast, int window, bool softcap)
    {
        int nk = qOffset + nq, qStride = hd * heads + 5, kvStride = hd * 2 + 1;
        var q = Random((nq - 1) * qStride + heads * hd, 11 + hd + heads, 2f);
        var k = Random((nk - 1) * kvStride + hd, 12 + hd, 2f);
        var v = Random((nk - 1) * kvStride + hd, 13 + hd, 1f);
        float scale = 1f / MathF.Sqrt(hd);
        float? cap = softcap ? 3f : null;
        var expected = new float[q.Length];
        for (int r = 0; r < heads; r++)
            KernelsReference.AttendHead(q.AsSpan(r * hd), qStride, nq, qOffset, k, v, kvStride, nk, hd, keyFirst, keyLast, window, scale, cap, expected.AsSpan(r * hd));
        var actual = new float[q.Length];
        actual.AsSpan().Fill(77f);
        // a scratch left dirty by earlier use (NaN included) must not matter
        var scratch = new float[Kernels.AttendGroupScratch(hd, nk) + 3];
        scratch.AsSpan().Fill(float.NaN);
        Kernels.AttendGroup(q, qStride, nq, qOffset, heads, k, v, kvStride, nk, hd, keyFirst, keyLast, window, scale, cap, actual, scratch);
        var e = new List<float>(); var a = new List<float>();
        for (int i = 0; i < nq; i++)
        {
            e.AddRange(expected.AsSpan(i * qStride, heads * hd).ToArray());
            a.AddRange(actual.AsSpan(i * qStride, heads * hd).ToArray());
            if (i < nq - 1) Assert.All(actual.AsSpan(i * qStride + heads * hd, qStride - heads * hd).ToArray(), x => Assert.Equal(77f, x));
        }
        AssertClose($"AttendGroup hd={hd} heads={heads} nq={nq}", e.ToArray(), a.ToArray(), 2e-6, 2e-6);
        for (int i = 0; i < nq; i++)
        {
            int abs = qOffset + i;
            bool none = Math.Max(keyFirst, window > 0 ? abs - window + 1 : 0) > Math.Min(abs, keyLast);
            var row = actual.AsSpan(i * qStride, heads * hd).ToArray();
            if (none) Assert.All(row, x => Assert.Equal(0f, x));
            else Assert.Contains(row, x => x != 0f);
        }
    }

    /// <summary>Random shapes against the reference: head dims 8, 16, 64 (and odd ones), GQA groups 1, 2, 4, lengths
    /// around the vector width and 513, random padding and offsets.</summary>
    [Fact]
    public void AttendGroupMatchesReferenceOnRandomShapes()
    {
        var rng = new Random(5);
        int[] dims = [8, 16, 64, 5, 24], groups = [1, 2, 4], lengths = [1, 2, 7, 8, 9, 31, 33, 100, 513];
        for (int trial = 0; trial < 40; trial++)
        {
            int hd = dims[rng.Next(dims.Length)], heads = groups[rng.Next(groups.Length)];
            int nq = lengths[rng.Next(lengths.Length)], qOffset = rng.Next(3) == 0 ? rng.Next(20) : 0, nk = qOffset + nq;
            int keyFirst = rng.Next(3) == 0 ? rng.Next(Math.Min(nk, 10)) : 0, keyLast = rng.Next(3) == 0 ? nk - 1 - rng.Next(Math.Min(nk, 10)) : nk - 1;
            int window = rng.Next(4) == 0 ? 1 + rng.Next(50) : 0;
            float? cap = rng.Next(4) == 0 ? 2.5f : null;
            int qStride = heads * hd + rng.Next(3) * hd, kvStride = hd + rng.Next(3);
            var q = Random((nq - 1) * qStride + heads * hd, 100 + trial, 3f);
            var k = Random((nk - 1) * kvStride + hd, 200 + trial, 3f);
            var v = Random((nk - 1) * kvStride + hd, 300 + trial, 1f);
            float scale = 1f / MathF.Sqrt(hd);
            var expected = new float[q.Length];
            for (int r = 0; r < heads; r++)
                KernelsReference.AttendHead(q.AsSpan(r * hd), qStride, nq, qOffset, k, v, kvStride, nk, hd, keyFirst, keyLast, window, scale, cap, expected.AsSpan(r * hd));
            var actual = new float[q.Length];
            Kernels.AttendGroup(q, qStride, nq, qOffset, heads, k, v, kvStride, nk, hd, keyFirst, keyLast, window, scale, cap, actual, new float[Kernels.AttendGroupScratch(hd, nk)]);
            var e = new List<float>(); var a = new List<float>();
            for (int i = 0; i < nq; i++) { e.AddRange(expected.AsSpan(i * qStride, heads * hd).ToArray()); a.AddRange(actual.AsSpan(i * qStride, heads * hd).ToArray()); }
            AssertClose($"trial {trial}: hd={hd} heads={heads} nq={nq} offset={qOffset} keys [{keyFirst}, {keyLast}] window={window} cap={cap}", e.ToArray(), a.ToArray(), 3e-6, 3e-6);
        }
    }

    /// <summary>A NaN among a query's visible keys makes its row NaN (as the exact softmax does); the same NaN in a key
    /// the query cannot see (a later key, or padding read past the last real key) changes nothing.</summary>
    [Fact]
    public void AttendGroupPropagatesNaNOnlyFromVisibleKeys()
    {
        int hd = 8, nq = 20, nk = 20, heads = 2;
        var q = Random(nq * heads * hd, 1, 1f);
        var k = Random(nk * hd, 2, 1f);
        var v = Random(nk * hd, 3, 1f);
        k[12 * hd + 3] = float.NaN;                      // key 12
        var o = new float[q.Length];
        Kernels.AttendGroup(q, heads * hd, nq, 0, heads, k, v, hd, nk, hd, 0, 16, 0, 0.3f, null, o, new float[Kernels.AttendGroupScratch(hd, nk)]);
        for (int i = 0; i < nq; i++)
        {
            var row = o.AsSpan(i * heads * hd, heads * hd).ToArray();
            if (i < 12) Assert.All(row, x => Assert.True(float.IsFinite(x), $"query {i} sees no NaN key but got {x}"));
            else Assert.All(row, x => Assert.True(float.IsNaN(x), $"query {i} sees the NaN key but got {x}"));
        }
        // keys past keyLast (padding) hold NaN: every query stays finite
        k[12 * hd + 3] = 0.5f;
        for (int j = 17; j < nk; j++) k[j * hd] = float.NaN;
        Kernels.AttendGroup(q, heads * hd, nq, 0, heads, k, v, hd, nk, hd, 0, 16, 0, 0.3f, null, o, new float[Kernels.AttendGroupScratch(hd, nk)]);
        Assert.All(o, x => Assert.True(float.IsFinite(x)));
    }

    [Fact]
    public void Exp2NonPositiveIsAccurateOverItsRange()
    {
        // t in [−126, 0] on a fine grid plus the edges: relative error against double 2^t; 0 at −127 and below.
        double worst = 0;
        var ts = new List<float> { 0f, -0f, -1e-30f, -0.5f, -126f, -125.9f };
        for (double t = -126; t <= 0; t += 1.3e-3) ts.Add((float)t);
        for (int i = 0; i < ts.Count; i += 8)
        {
            var chunk = new float[8];
            for (int l = 0; l < 8; l++) chunk[l] = ts[Math.Min(i + l, ts.Count - 1)];
            var e = Kernels.Exp2NonPositive(System.Runtime.Intrinsics.Vector256.Create(chunk));
            for (int l = 0; l < 8; l++)
            {
                double exact = Math.Pow(2, chunk[l]);
                worst = Math.Max(worst, Math.Abs(e[l] - exact) / exact);
            }
        }
        Assert.True(worst < 2.5e-7, $"Exp2NonPositive: worst relative error {worst:E2}");
        var edge = Kernels.Exp2NonPositive(System.Runtime.Intrinsics.Vector256.Create(-127f, -1000f, float.NegativeInfinity, -127.4f, -128f, -3f, -1f, 0f));
        Assert.Equal([0f, 0f, 0f, 0f, 0f], new[] { edge[0], edge[1], edge[2], edge[3], edge[4] });
        Assert.Equal(0.125, edge[5], 0.125 * 2.5e-7);
        Assert.Equal(0.5, edge[6], 0.5 * 2.5e-7);
        Assert.Equal(1.0, edge[7], 2.5e-7);
    }

    [Fact]
    public void AttendGroupRejectsShortBuffers()
    {
        var q = new float[32]; var k = new float[16]; var v = new float[16]; var o = new float[32];
        int need = Kernels.AttendGroupScratch(8, 2);
        Kernels.AttendGroup(q, 16, 2, 0, 2, k, v, 8, 2, 8, 0, 1, 0, 1f, null, o, new float[need]);
        Assert.Throws<ArgumentException>(() => Kernels.AttendGroup(q, 16, 2, 0, 2, k, v, 8, 2, 8, 0, 1, 0, 1f, null, o, new float[need - 1]));
        Assert.Throws<ArgumentException>(() => Kernels.AttendGroup(q, 16, 3, 0, 2, k, v, 8, 2, 8, 0, 1, 0, 1f, null, o, new float[need]));
        Assert.Throws<ArgumentException>(() => Kernels.AttendGroup(q, 8, 2, 0, 2, k, v, 8, 2, 8, 0, 1, 0, 1f, null, o, new float[need]));
    }
}

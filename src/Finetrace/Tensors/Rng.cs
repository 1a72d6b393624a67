using System.Runtime.CompilerServices;

namespace Finetrace.Tensors;

/// <summary>
/// xoshiro256** seeded through SplitMix64: a fixed, documented generator so shuffles and synthetic data are identical
/// on every machine and .NET version (System.Random's sequence is not a contract).
/// </summary>
public struct Rng
{
    ulong _s0, _s1, _s2, _s3;

    public Rng(ulong seed)
    {
        ulong x = seed;
        _s0 = SplitMix(ref x); _s1 = SplitMix(ref x); _s2 = SplitMix(ref x); _s3 = SplitMix(ref x);
    }

    /// <summary>A generator for stream <paramref name="stream"/> of <paramref name="seed"/> (independent sub-streams).</summary>
    public static Rng For(ulong seed, ulong stream, ulong substream = 0) =>
        new(Mix(seed ^ Mix(stream + 0x9E3779B97F4A7C15UL) ^ Mix(substream * 0xD1B54A32D192ED03UL + 1)));

    public static ulong Mix(ulong z)
    {
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    static ulong SplitMix(ref ulong x) => Mix(x += 0x9E3779B97F4A7C15UL);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public ulong NextU64()
    {
        ulong result = ulong.RotateLeft(_s1 * 5, 7) * 9;
        ulong t = _s1 << 17;
        _s2 ^= _s0; _s3 ^= _s1; _s1 ^= _s2; _s0 ^= _s3;
        _s2 ^= t;
        _s3 = ulong.RotateLeft(_s3, 45);
        return result;
    }

    /// <summary>Uniform in [0, 1) with 53 random bits.</summary>
    public double NextDouble() => (NextU64() >> 11) * (1.0 / (1UL << 53));

    /// <summary>Uniform integer in [0, n) (Lemire's multiply-shift with rejection).</summary>
    public long NextLong(long n)
    {
        if (n <= 0) throw new ArgumentOutOfRangeException(nameof(n));
        ulong un = (ulong)n;
        ulong threshold = (0UL - un) % un;
        while (true)
        {
            ulong r = NextU64();
            ulong hi = Math.BigMul(r, un, out ulong lo);
            if (lo >= threshold) return (long)hi;
        }
    }

    /// <summary>Standard normal (Box–Muller, one value per call for simplicity).</summary>
    public double NextGaussian()
    {
        double u1 = 1.0 - NextDouble(), u2 = NextDouble();
        return Math.Sqrt(-2.0 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2);
    }

    /// <summary>Fisher–Yates permutation of 0..n−1 into <paramref name="perm"/>.</summary>
    public void Permutation(Span<int> perm)
    {
        for (int i = 0; i < perm.Length; i++) perm[i] = i;
        for (int i = perm.Length - 1; i > 0; i--)
        {
            int j = (int)NextLong(i + 1);
            (perm[i], perm[j]) = (perm[j], perm[i]);
        }
    }
}

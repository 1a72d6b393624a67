namespace Finetrace.Tensors;

/// <summary>SplitMix64: a tiny generator whose whole state is one ulong, so checkpoints can store and restore it
/// (the same mixer that seeds <see cref="Rng"/>).</summary>
public sealed class SplitMix64(ulong state)
{
    public ulong State { get; set; } = state;
    public ulong NextU64() => Rng.Mix(State += 0x9E3779B97F4A7C15UL);
    /// <summary>Uniform in [0, 1).</summary>
    public double NextDouble() => (NextU64() >> 11) * (1.0 / (1UL << 53));
    public double Uniform(double lo, double hi) => lo + (hi - lo) * NextDouble();
    public double Normal()
    {
        double u1 = 1 - NextDouble(), u2 = NextDouble();
        return Math.Sqrt(-2 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2);
    }
}

using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace Finetrace.Activations;

/// <summary>
/// Per-dimension Welford state (count, mean, M2) in float64 (methods.md §2.7). Rows are added one at a time in
/// order, and states merge with Chan's formula; the store merges per-shard states in shard order, so the result is
/// exact and deterministic however the rows were batched when they were written.
/// </summary>
public sealed class RunningStats
{
    public int Dim { get; }
    public long Count { get; private set; }
    public double[] Mean { get; }
    public double[] M2 { get; }

    public RunningStats(int dim)
    {
        Dim = dim;
        Mean = new double[dim];
        M2 = new double[dim];
    }

    public RunningStats(long count, double[] mean, double[] m2)
    {
        if (mean.Length != m2.Length) throw new ArgumentException("mean and M2 lengths differ");
        Dim = mean.Length; Count = count; Mean = mean; M2 = m2;
    }

    // xD: [Dim]
    public void Add(ReadOnlySpan<float> xD)
    {
        if (xD.Length != Dim) throw new ArgumentException($"row has {xD.Length} values, stats expect {Dim}");
        Count++;
        double inv = 1.0 / Count;
        var mean = Mean.AsSpan();
        var m2 = M2.AsSpan();
        int d = 0;
        // Element-wise only (no reductions), so the vector and scalar paths give identical bits.
        if (Vector256.IsHardwareAccelerated)
        {
            var vinv = Vector256.Create(inv);
            ref double mr = ref MemoryMarshal.GetReference(mean);
            ref double qr = ref MemoryMarshal.GetReference(m2);
            ref float xr = ref MemoryMarshal.GetReference(xD);
            for (; d + 8 <= mean.Length; d += 8)
            {
                var (x0, x1) = Vector256.Widen(Vector256.LoadUnsafe(ref xr, (nuint)d));
                Step(x0, ref mr, ref qr, d, vinv);
                Step(x1, ref mr, ref qr, d + 4, vinv);
            }
        }
        for (; d < mean.Length; d++)
        {
            double x = xD[d];
            double delta = x - mean[d];
            mean[d] += delta * inv;
            m2[d] += delta * (x - mean[d]);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void Step(Vector256<double> x, ref double mr, ref double qr, int d, Vector256<double> inv)
    {
        var mean = Vector256.LoadUnsafe(ref mr, (nuint)d);
        var delta = x - mean;
        mean += delta * inv;
        mean.StoreUnsafe(ref mr, (nuint)d);
        (Vector256.LoadUnsafe(ref qr, (nuint)d) + delta * (x - mean)).StoreUnsafe(ref qr, (nuint)d);
    }

    /// <summary>Chan et al. merge: this ← this ∪ other.</summary>
    public void Merge(RunningStats other)
    {
        if (other.Dim != Dim) throw new ArgumentException($"cannot merge stats of width {other.Dim} into {Dim}");
        if (other.Count == 0) return;
        if (Count == 0)
        {
            Count = other.Count;
            other.Mean.CopyTo(Mean, 0);
            other.M2.CopyTo(M2, 0);
            return;
        }
        double n = Count, nb = other.Count, nn = n + nb;
        for (int d = 0; d < Dim; d++)
        {
            double delta = other.Mean[d] - Mean[d];
            Mean[d] += delta * nb / nn;
            M2[d] += other.M2[d] + delta * delta * n * nb / nn;
        }
        Count += other.Count;
    }

    /// <summary>Population variance M2 / n (what normalisers use).</summary>
    public double[] PopulationVariance()
    {
        var v = new double[Dim];
        if (Count > 0) for (int d = 0; d < Dim; d++) v[d] = M2[d] / Count;
        return v;
    }

    /// <summary>Unbiased variance M2 / (n − 1) (what crosscoder_learning's std.pt holds, squared).</summary>
    public double[] SampleVariance()
    {
        var v = new double[Dim];
        if (Count > 1) for (int d = 0; d < Dim; d++) v[d] = M2[d] / (Count - 1);
        return v;
    }

    public RunningStats Clone() => new(Count, (double[])Mean.Clone(), (double[])M2.Clone());
}

/// <summary>Statistics of one model at one layer over a whole store: mean[D], population var[D], count.</summary>
public sealed record ActivationStats(float[] Mean, float[] Var, long Count, RunningStats State)
{
    public static ActivationStats From(RunningStats s)
    {
        var mean = new float[s.Dim];
        var var = new float[s.Dim];
        var pv = s.PopulationVariance();
        for (int d = 0; d < s.Dim; d++) { mean[d] = (float)s.Mean[d]; var[d] = (float)pv[d]; }
        return new ActivationStats(mean, var, s.Count, s);
    }

    /// <summary>Σ_d var_d: the expected squared distance from the mean (the normaliser's denominator, squared).</summary>
    public double TotalVariance => State.PopulationVariance().Sum();
}

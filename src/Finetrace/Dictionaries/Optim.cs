namespace Finetrace.Dictionaries;

/// <summary>
/// torch.optim.Adam (single-tensor path, no weight decay, amsgrad off) with fp32 state, reproducing torch's
/// operation order: m ← β₁m + (1−β₁)g; v ← β₂v + (1−β₂)g²; denom = √v / √(1−β₂ᵗ) + ε; p ← p − (lr/(1−β₁ᵗ))·m/denom.
/// Bias corrections are computed in double, as torch does in Python.
/// </summary>
public sealed class Adam
{
    public double Beta1 { get; init; } = 0.9;
    public double Beta2 { get; init; } = 0.999;
    public double Eps { get; init; } = 1e-8;
    public float[][] ExpAvg { get; }
    public float[][] ExpAvgSq { get; }
    /// <summary>Number of steps taken (torch keeps one per parameter; they are always equal here).</summary>
    public long Step { get; set; }

    public Adam(IReadOnlyList<int> sizes)
    {
        ExpAvg = sizes.Select(n => Tensors.Tensor.Allocate(n)).ToArray();
        ExpAvgSq = sizes.Select(n => Tensors.Tensor.Allocate(n)).ToArray();
    }

    public unsafe void Update(IReadOnlyList<float[]> parameters, IReadOnlyList<float[]> grads, double lr)
    {
        Step++;
        double bc1 = 1 - Math.Pow(Beta1, Step), bc2 = 1 - Math.Pow(Beta2, Step);
        float stepSize = (float)(lr / bc1);
        float bc2Sqrt = (float)Math.Sqrt(bc2);
        float b1 = (float)Beta1, b2 = (float)Beta2, a1 = (float)(1 - Beta1), a2 = (float)(1 - Beta2), eps = (float)Eps;
        for (int t = 0; t < parameters.Count; t++)
        {
            float[] p = parameters[t], g = grads[t], m = ExpAvg[t], v = ExpAvgSq[t];
            int n = p.Length;
            int nc = DictionaryKernels.Chunks(n, 1 << 15);
            Parallel.For(0, nc, DictionaryKernels.Opts(n), c =>
            {
                int lo = (int)((long)n * c / nc), hi = (int)((long)n * (c + 1) / nc);
                for (int i = lo; i < hi; i++)
                {
                    float gi = g[i];
                    float mi = m[i] * b1 + a1 * gi;
                    float vi = v[i] * b2 + a2 * gi * gi;
                    m[i] = mi; v[i] = vi;
                    float denom = MathF.Sqrt(vi) / bc2Sqrt + eps;
                    p[i] = p[i] + (-stepSize * mi) / denom;
                }
            });
        }
    }
}

/// <summary>LR multiplier of dictionary_learning's get_lr_schedule: linear warm-up from 0, then constant, then an
/// optional linear decay to 0 from <c>decayStart</c> to <c>totalSteps</c>. The step is the scheduler count (the
/// number of completed updates), so the very first update runs at factor 0 when warm-up is on.</summary>
public static class LrSchedule
{
    public static double Factor(long step, int warmupSteps, long? decayStart, long totalSteps)
    {
        if (warmupSteps > 0 && step < warmupSteps) return (double)step / warmupSteps;
        if (decayStart is long ds && step >= ds && totalSteps > ds) return Math.Max(0, (double)(totalSteps - step) / (totalSteps - ds));
        return 1.0;
    }
}

/// <summary>Weiszfeld's geometric median per model (the decoder-bias init of the BatchTopK trainers).</summary>
public static class GeometricMedian
{
    /// <summary>Starts at the mean; stops after <paramref name="maxIter"/> iterations or once every model's update
    /// moves less than <paramref name="tol"/>. <paramref name="eps"/> guards the distance (the reference has none).</summary>
    // xBMD: [B, M, D] → medianMD: [M, D]
    public static void Compute(ReadOnlySpan<float> xBMD, int b, int models, int d, Span<float> medianMD, int maxIter = 100, double tol = 1e-5, double eps = 0)
    {
        var guess = new double[models * d];
        for (int t = 0; t < b; t++) for (int i = 0; i < models * d; i++) guess[i] += xBMD[t * models * d + i];
        for (int i = 0; i < guess.Length; i++) guess[i] = (float)(guess[i] / b);
        var w = new double[b];
        var next = new double[d];
        var done = new bool[models];
        for (int it = 0; it < maxIter; it++)
        {
            bool allDone = true;
            for (int m = 0; m < models; m++)
            {
                double wsum = 0;
                for (int t = 0; t < b; t++)
                {
                    double s = 0;
                    for (int i = 0; i < d; i++) { double e = xBMD[(t * models + m) * d + i] - guess[m * d + i]; s += e * e; }
                    w[t] = 1.0 / (Math.Sqrt(s) + eps); wsum += w[t];
                }
                Array.Clear(next);
                for (int t = 0; t < b; t++)
                {
                    double wt = w[t] / wsum;
                    for (int i = 0; i < d; i++) next[i] += wt * xBMD[(t * models + m) * d + i];
                }
                double shift = 0;
                for (int i = 0; i < d; i++) { double e = next[i] - guess[m * d + i]; shift += e * e; guess[m * d + i] = next[i]; }
                done[m] = Math.Sqrt(shift) < tol;
                allDone &= done[m];
            }
            if (allDone) break;
        }
        for (int i = 0; i < guess.Length; i++) medianMD[i] = (float)guess[i];
    }
}

namespace Finetrace.Training;

/// <summary>
/// torch.optim.AdamW (single-tensor path, amsgrad off) with fp32 state: p ← p − lr·λ·p (decoupled weight decay, only on
/// tensors marked for decay); m ← β₁m + (1−β₁)g; v ← β₂v + (1−β₂)g²; p ← p − (lr/(1−β₁ᵗ))·m/(√v/√(1−β₂ᵗ) + ε).
/// Bias corrections in double, as torch computes them in Python. Element-wise and serial per tensor, so an update is
/// bit-for-bit repeatable.
/// </summary>
public sealed class AdamW
{
    public double Beta1 { get; init; } = 0.9;
    public double Beta2 { get; init; } = 0.999;
    public double Eps { get; init; } = 1e-8;
    public double WeightDecay { get; init; }
    /// <summary>First and second moments, one array per parameter tensor (same order as the update's lists).</summary>
    public float[][] ExpAvg { get; }
    public float[][] ExpAvgSq { get; }
    public long Step { get; set; }

    public AdamW(IReadOnlyList<int> sizes)
    {
        ExpAvg = sizes.Select(n => new float[n]).ToArray();
        ExpAvgSq = sizes.Select(n => new float[n]).ToArray();
    }

    // parameters[t], grads[t]: [n_t]; decay[t]: whether tensor t is weight-decayed
    public void Update(IReadOnlyList<float[]> parameters, IReadOnlyList<float[]> grads, IReadOnlyList<bool> decay, double lr)
    {
        Step++;
        double bc1 = 1 - Math.Pow(Beta1, Step), bc2 = 1 - Math.Pow(Beta2, Step);
        float stepSize = (float)(lr / bc1);
        float bc2Sqrt = (float)Math.Sqrt(bc2);
        float b1 = (float)Beta1, b2 = (float)Beta2, a1 = (float)(1 - Beta1), a2 = (float)(1 - Beta2), eps = (float)Eps;
        float shrink = (float)(1 - lr * WeightDecay);
        for (int t = 0; t < parameters.Count; t++)
        {
            float[] p = parameters[t], g = grads[t], m = ExpAvg[t], v = ExpAvgSq[t];
            bool wd = decay[t] && WeightDecay != 0;
            for (int i = 0; i < p.Length; i++)
            {
                float gi = g[i];
                float mi = m[i] * b1 + a1 * gi;
                float vi = v[i] * b2 + a2 * gi * gi;
                m[i] = mi; v[i] = vi;
                float pi = wd ? p[i] * shrink : p[i];
                p[i] = pi + (-stepSize * mi) / (MathF.Sqrt(vi) / bc2Sqrt + eps);
            }
        }
    }
}

/// <summary>Learning-rate multiplier: linear warm-up from lr/warmup to lr over <c>warmup</c> steps, then cosine decay to
/// <c>minRatio</c>·lr at the last step. The step is 0-based (the update about to be taken).</summary>
public static class CosineSchedule
{
    public static double Factor(long step, long totalSteps, int warmupSteps, double minRatio)
    {
        if (warmupSteps > 0 && step < warmupSteps) return (step + 1.0) / warmupSteps;
        long decaySteps = totalSteps - warmupSteps;
        if (decaySteps <= 1) return 1.0;
        double progress = Math.Clamp((double)(step - warmupSteps) / (decaySteps - 1), 0, 1);
        return minRatio + (1 - minRatio) * 0.5 * (1 + Math.Cos(Math.PI * progress));
    }
}

/// <summary>Scales every gradient so their global L2 norm is at most <c>maxNorm</c> (torch clip_grad_norm_); returns the
/// norm before clipping (accumulated in double).</summary>
public static class GradientClipping
{
    public static double ClipGlobalNorm(IReadOnlyList<float[]> grads, double maxNorm)
    {
        double ss = 0;
        foreach (var g in grads) foreach (float x in g) ss += (double)x * x;
        double norm = Math.Sqrt(ss);
        if (maxNorm > 0 && norm > maxNorm)
        {
            float scale = (float)(maxNorm / (norm + 1e-6));
            foreach (var g in grads) System.Numerics.Tensors.TensorPrimitives.Multiply(g, scale, g);
        }
        return norm;
    }
}

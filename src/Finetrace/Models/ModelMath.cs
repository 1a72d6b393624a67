using System.Numerics.Tensors;

namespace Finetrace.Models;

/// <summary>
/// Row-wise float32 operations of the decoder forward, written to follow transformers' float32 op order
/// (model-facts.md §2–3). Each works on rows of a row-major [m, n] buffer in place or into a destination.
/// </summary>
static class ModelMath
{
    // xMN: [m, n]; w: [n]; yMN: [m, n]. Llama: y = w · (x · rsqrt(mean(x²) + eps)); Gemma: y = (x · rsqrt(…)) · (1 + w)
    public static void RmsNorm(ReadOnlySpan<float> xMN, int m, int n, ReadOnlySpan<float> w, float eps, bool gemma, Span<float> yMN)
    {
        Span<float> scale = n <= 16384 ? stackalloc float[n] : new float[n];
        for (int j = 0; j < n; j++) scale[j] = gemma ? 1f + w[j] : w[j];
        for (int r = 0; r < m; r++)
        {
            var x = xMN.Slice(r * n, n);
            var y = yMN.Slice(r * n, n);
            float variance = TensorPrimitives.SumOfSquares(x) / n;
            float inv = 1f / MathF.Sqrt(variance + eps);
            for (int j = 0; j < n; j++) y[j] = x[j] * inv * scale[j];
        }
    }

    // xMN: [m, n]; w, b: [n]; yMN: [m, n]. y = (x − mean) / sqrt(biased var + eps) · w + b
    public static void LayerNorm(ReadOnlySpan<float> xMN, int m, int n, ReadOnlySpan<float> w, ReadOnlySpan<float> b, float eps, Span<float> yMN)
    {
        for (int r = 0; r < m; r++)
        {
            var x = xMN.Slice(r * n, n);
            var y = yMN.Slice(r * n, n);
            double sum = 0;
            for (int j = 0; j < n; j++) sum += x[j];
            float mean = (float)(sum / n);
            double sq = 0;
            for (int j = 0; j < n; j++) { double d = x[j] - mean; sq += d * d; }
            float inv = (float)(1.0 / Math.Sqrt(sq / n + eps));
            for (int j = 0; j < n; j++) y[j] = (x[j] - mean) * inv * w[j] + b[j];
        }
    }

    // x: [n] in place
    public static void Activate(Span<float> x, Activation act)
    {
        switch (act)
        {
            case Activation.Silu:
                for (int i = 0; i < x.Length; i++) x[i] = x[i] / (1f + MathF.Exp(-x[i]));
                break;
            case Activation.GeluTanh:
                for (int i = 0; i < x.Length; i++)
                {
                    float v = x[i];
                    float inner = 0.7978845608028654f * (v + 0.044715f * v * v * v);
                    x[i] = 0.5f * v * (1f + MathF.Tanh(inner));
                }
                break;
            case Activation.GeluErf:
                for (int i = 0; i < x.Length; i++)
                {
                    double v = x[i];
                    x[i] = (float)(0.5 * v * (1.0 + Erf(v / Math.Sqrt(2.0))));
                }
                break;
        }
    }

    /// <summary>erf in double: Maclaurin series below |x| = 4 (error ≤ ~1e-9 after cancellation), ±1 beyond (erfc(4) ≈ 1.5e-8).</summary>
    public static double Erf(double x)
    {
        double ax = Math.Abs(x);
        if (ax >= 4) return Math.Sign(x);
        double x2 = x * x, term = x, sum = x;
        for (int n = 1; n < 200; n++)
        {
            term *= -x2 / n;
            double add = term / (2 * n + 1);
            sum += add;
            if (Math.Abs(add) < 1e-17 * Math.Abs(sum)) break;
        }
        return sum * (2.0 / Math.Sqrt(Math.PI));
    }

    // x: [n] in place. x ← c · tanh(x / c)
    public static void SoftCap(Span<float> x, float cap)
    {
        for (int i = 0; i < x.Length; i++) x[i] = MathF.Tanh(x[i] / cap) * cap;
    }
}

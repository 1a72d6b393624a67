using ILGPU;

namespace Finetrace.Cuda;

/// <summary>
/// Float math for kernels that compiles for every ILGPU backend. ILGPU's PTX backend has no intrinsic for
/// <c>MathF.Exp</c> (nor Tanh, Log…) unless ILGPU.Algorithms is enabled on the context ("The function 'ExpF' does not
/// have an intrinsic implementation for this backend"); the CPU accelerator runs MathF.Exp as .NET code and so hides
/// that. These use only +, −, ×, ÷, float↔int conversion and bit casts, so the CPU accelerator and the GPU run the same
/// operations (up to fused multiply-add contraction on the GPU) and the CPU-accelerator tests cover the device results.
/// </summary>
public static class DeviceMath
{
    /// <summary>exp(x) with relative error about 1.5e-7 (Cephes expf: x = k·ln2 + r, |r| ≤ ln2/2, with ln2 split in two
    /// so k·ln2 is exact, a degree-7 polynomial for e^r, then ·2^k built in the exponent bits, in two factors so that
    /// subnormal results round once). exp(−∞) = 0, exp(+∞) = +∞, NaN → NaN; overflows to +∞ past 88.72, 0 below −103.97.</summary>
    public static float Exp(float x)
    {
        if (float.IsNaN(x)) return x;
        if (x > 88.72284f) return float.PositiveInfinity;
        if (x < -103.97208f) return 0f;
        float kf = x * 1.44269504f;
        int k = (int)(kf >= 0f ? kf + 0.5f : kf - 0.5f); // nearest, ties away from zero (any near integer works)
        float r = x - k * 0.693359375f;                   // ln2 high part: 9 significant bits, so k·C1 is exact
        r = r - k * -2.12194440e-4f;                      // ln2 low part
        float p = 1.9875691500e-4f;
        p = p * r + 1.3981999507e-3f;
        p = p * r + 8.3334519073e-3f;
        p = p * r + 4.1665795894e-2f;
        p = p * r + 1.6666665459e-1f;
        p = p * r + 5.0000001201e-1f;
        float e = p * r * r + r + 1f;
        int k1 = k / 2, k2 = k - k1;                      // each in [−75, 64]: 2^k1 and 2^k2 are normal floats
        return e * Interop.IntAsFloat((uint)(k1 + 127) << 23) * Interop.IntAsFloat((uint)(k2 + 127) << 23);
    }

    /// <summary>tanh u as <c>Tensors.Kernels</c>' TanhOp: the Maclaurin series through u¹⁵ for |u| &lt; 0.5, else
    /// sign(u)·(1 − 2/(exp(2|u|) + 1)), which saturates to ±1 without overflow; NaN → NaN.</summary>
    public static float Tanh(float u)
    {
        float a = u < 0f ? -u : u;
        if (a < 0.5f)
        {
            float u2 = u * u;
            float p = -929569f / 638512875f;
            p = p * u2 + 21844f / 6081075f;
            p = p * u2 + -1382f / 155925f;
            p = p * u2 + 62f / 2835f;
            p = p * u2 + -17f / 315f;
            p = p * u2 + 2f / 15f;
            p = p * u2 + -1f / 3f;
            return p * u2 * u + u;
        }
        float big = 1f - 2f / (Exp(a + a) + 1f);
        return u < 0f ? -big : big;
    }
}

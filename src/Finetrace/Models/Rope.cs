using Finetrace.Tensors;

namespace Finetrace.Models;

/// <summary>
/// Rotary position tables exactly as transformers builds them in float32 (model-facts.md §8): inv_freq in f32,
/// angle = position · inv_freq in f32, cos/sin of the f32 angle; rotate-half pairs (i, i + dim/2).
/// </summary>
public sealed class Rope
{
    public int RotaryDim { get; }
    public float[] InvFreq { get; }
    float[] _cos = [], _sin = []; // [positions, RotaryDim]: HF's emb = cat(freqs, freqs)
    int _positions;

    public Rope(ModelConfig c)
    {
        RotaryDim = c.RotaryDim;
        InvFreq = InverseFrequencies(c);
    }

    /// <summary>inv_freq_i = 1 / base^(2i/dim) in f32, then the rope_type rule (linear, llama3).</summary>
    public static float[] InverseFrequencies(ModelConfig c)
    {
        int half = c.RotaryDim / 2;
        var inv = new float[half];
        for (int i = 0; i < half; i++)
        {
            // torch: 1.0 / (base ** (arange(0, dim, 2).float() / dim)), all in float32
            float exponent = (2 * i) / (float)c.RotaryDim;
            float pow = MathF.Pow(c.RopeTheta, exponent);
            inv[i] = 1f / pow;
        }
        switch (c.Rope)
        {
            case RopeType.Linear:
                for (int i = 0; i < half; i++) inv[i] /= c.RopeFactor;
                break;
            case RopeType.Llama3:
            {
                // modeling_rope_utils._compute_llama3_parameters, float32 tensor ops with Python-float scalars
                float factor = c.RopeFactor, low = c.RopeLowFreqFactor, high = c.RopeHighFreqFactor;
                float oldLen = c.RopeOriginalMaxPositions;
                float lowWavelen = oldLen / low, highWavelen = oldLen / high;
                for (int i = 0; i < half; i++)
                {
                    float wavelen = (float)(2 * Math.PI) / inv[i];
                    float scaled = wavelen > lowWavelen ? inv[i] / factor : inv[i];
                    float smooth = (oldLen / wavelen - low) / (high - low);
                    float smoothed = (1 - smooth) * scaled / factor + smooth * scaled;
                    bool medium = !(wavelen < highWavelen) && !(wavelen > lowWavelen);
                    inv[i] = medium ? smoothed : scaled;
                }
                break;
            }
        }
        return inv;
    }

    void Ensure(int positions)
    {
        if (positions <= _positions) return;
        int n = Math.Max(positions, Math.Max(64, _positions * 2));
        int half = RotaryDim / 2, dim = RotaryDim;
        var cos = new float[n * dim];
        var sin = new float[n * dim];
        for (int p = 0; p < n; p++)
            for (int i = 0; i < half; i++)
            {
                float angle = p * InvFreq[i]; // f32 product, as the f32 matmul of position and inv_freq
                cos[p * dim + i] = cos[p * dim + half + i] = (float)Math.Cos(angle);
                sin[p * dim + i] = sin[p * dim + half + i] = (float)Math.Sin(angle);
            }
        _cos = cos; _sin = sin; _positions = n;
    }

    /// <summary>Copies of the cos and sin tables <see cref="Apply"/> uses for positions 0..<paramref name="positions"/>−1
    /// (HF's cat(freqs, freqs) layout), e.g. to upload once to a device.</summary>
    // cosPR, sinPR: [positions, RotaryDim]
    public (float[] CosPR, float[] SinPR) Tables(int positions)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(positions);
        Ensure(positions);
        int n = positions * RotaryDim;
        return (_cos.AsSpan(0, n).ToArray(), _sin.AsSpan(0, n).ToArray());
    }

    /// <summary>Rotates the first RotaryDim channels of every head in place: x' = x·cos + rotate_half(x)·sin.</summary>
    // xMHd: [m, heads · headDim] row-major; positions: [m]
    public void Apply(Span<float> xMHd, int m, int heads, int headDim, ReadOnlySpan<int> positions)
    {
        int maxPos = 0;
        for (int r = 0; r < m; r++) maxPos = Math.Max(maxPos, positions[r]);
        Ensure(maxPos + 1);
        int width = heads * headDim, dim = RotaryDim;
        for (int r = 0; r < m; r++)
            Kernels.ApplyRope(xMHd.Slice(r * width, width), heads, headDim, dim,
                _cos.AsSpan(positions[r] * dim, dim), _sin.AsSpan(positions[r] * dim, dim));
    }

    /// <summary>The backward of <see cref="Apply"/>: the rotation is orthogonal, so the gradient is rotated by the
    /// inverse angle (the same call with −sin).</summary>
    // gradMHd: [m, heads · headDim] row-major, in place; positions: [m]
    public void ApplyBackward(Span<float> gradMHd, int m, int heads, int headDim, ReadOnlySpan<int> positions)
    {
        int maxPos = 0;
        for (int r = 0; r < m; r++) maxPos = Math.Max(maxPos, positions[r]);
        Ensure(maxPos + 1);
        int width = heads * headDim, dim = RotaryDim;
        Span<float> negSin = dim <= 512 ? stackalloc float[dim] : new float[dim];
        for (int r = 0; r < m; r++)
        {
            System.Numerics.Tensors.TensorPrimitives.Negate(_sin.AsSpan(positions[r] * dim, dim), negSin);
            Kernels.ApplyRope(gradMHd.Slice(r * width, width), heads, headDim, dim, _cos.AsSpan(positions[r] * dim, dim), negSin);
        }
    }
}

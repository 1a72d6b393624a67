using Finetrace.Dictionaries;
using Finetrace.Tensors;

namespace Finetrace.Tests.Dictionaries;

/// <summary>Eval metrics of methods.md §14 against direct computation on a dictionary with a known reconstruction.</summary>
public sealed class EvaluationTests
{
    [Fact]
    public void L1_l2_ratio_and_relative_bias_match_a_direct_computation()
    {
        // Defect 9. SAE with ±e_i encoders and ±s·e_i decoders: f = ReLU(±x_i), x̂ = s·x + b. With s = 0.5, b = 0:
        // ℓ2 ratio = 0.5, relative bias = E‖x̂‖²/E⟨x, x̂⟩ = 0.5, L1 = mean Σ_i |x_i|.
        int d = 6, f = 2 * d, n = 500;
        var dict = new SparseDictionary(1, d, f, Sparsity.Relu, CodeNormalization.None, subtractDecoderBias: true);
        for (int i = 0; i < d; i++)
            for (int s = 0; s < 2; s++)
            {
                dict.WEnc[(2 * i + s) * d + i] = s == 0 ? 1 : -1;
                dict.WDec[(2 * i + s) * d + i] = s == 0 ? 0.5f : -0.5f;
            }
        var r = new SplitMix64(11);
        var x = new float[n * d];
        for (int i = 0; i < x.Length; i++) x[i] = (float)(r.Normal() + 0.3);
        double l1 = 0;
        for (int i = 0; i < x.Length; i++) l1 += Math.Abs(x[i]);
        var rep = Evaluation.Run(dict, new ArrayBatches(x, 1, d, cycle: false), n, batch: 128);
        Assert.Equal(l1 / n, rep.L1, 5);
        Assert.Equal(0.5, rep.L2Ratio[0], 6);
        Assert.Equal(0.5, rep.RelativeBias[0], 6);

        // a biased reconstruction: x̂ = 0.5·x + b moves the bias away from the ratio
        for (int i = 0; i < d; i++) dict.BDec[i] = 0.2f;
        rep = Evaluation.Run(dict, new ArrayBatches(x, 1, d, cycle: false), n, batch: 128);
        double hh = 0, xh = 0;
        for (int t = 0; t < n; t++)
            for (int i = 0; i < d; i++)
            {
                double xv = x[t * d + i], xin = xv - 0.2, hv = 0.5 * xin + 0.2;
                hh += hv * hv; xh += xv * hv;
            }
        Assert.Equal(hh / xh, rep.RelativeBias[0], 5);
    }
}

using Finetrace.Dictionaries;
using Finetrace.Tensors;
using Finetrace.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Finetrace.Tests.Dictionaries;

/// <summary>
/// The DECOUPLED BatchTopK crosscoder has no Python fixture, so this is its reference: an independent float64
/// re-implementation of two training steps of crosscoder_learning's BatchTopKCrossCoder (encode with decoupled_code)
/// and BatchTopKCrossCoderTrainer (update_decoupled_threshold), written from the fork's rules, not from our kernels:
/// <list type="bullet">
/// <item>f = ReLU(Σ_m W_enc^m x_m + b_enc); s_m = f ⊙ ‖d_j^m‖; for each model m separately the k·B largest s_m of the
/// batch are kept (topk over the flattened [B, F]); model m decodes f·mask_m: x̂_m = b_dec^m + Σ_j f_j mask_m,j d_j^m;</item>
/// <item>loss (the fork's un-squared L2) = (1/(B·M)) Σ_b Σ_m ‖x_m − x̂_m‖; gradients flow through f·mask_m only (the
/// ranking by the norms is not differentiated);</item>
/// <item>clip_grad_norm_ to 1, torch Adam;</item>
/// <item>θ_m ← min over the positive entries of model m's kept s_m (the first time θ_m &lt; 0), else
/// β·θ_m + (1 − β)·that minimum; inference keeps f where s_m &gt; θ_m.</item>
/// </list>
/// </summary>
public sealed class DecoupledReferenceTests(ITestOutputHelper log)
{
    const int M = 2, D = 6, F = 12, B = 10, K = 2;

    sealed class Ref
    {
        public double[] WEnc = [], BEnc = [], WDec = [], BDec = [];
        public double[] MWEnc = [], MBEnc = [], MWDec = [], MBDec = [], VWEnc = [], VBEnc = [], VWDec = [], VBDec = [];
        public double[] Theta = new double[M];
        public int AdamStep;

        public static Ref From(SparseDictionary d)
        {
            double[] C(float[] a) => a.Select(v => (double)v).ToArray();
            var r = new Ref { WEnc = C(d.WEnc), BEnc = C(d.BEnc), WDec = C(d.WDec), BDec = C(d.BDec), Theta = d.ModelThreshold!.Select(v => (double)v).ToArray() };
            r.MWEnc = new double[r.WEnc.Length]; r.VWEnc = new double[r.WEnc.Length];
            r.MBEnc = new double[F]; r.VBEnc = new double[F];
            r.MWDec = new double[r.WDec.Length]; r.VWDec = new double[r.WDec.Length];
            r.MBDec = new double[M * D]; r.VBDec = new double[M * D];
            return r;
        }

        public double[] PostRelu(float[] x)
        {
            var f = new double[B * F];
            for (int b = 0; b < B; b++)
                for (int j = 0; j < F; j++)
                {
                    double s = BEnc[j];
                    for (int m = 0; m < M; m++)
                        for (int i = 0; i < D; i++) s += WEnc[(m * F + j) * D + i] * x[(b * M + m) * D + i];
                    f[b * F + j] = Math.Max(0, s);
                }
            return f;
        }

        public double Norm(int m, int j) => Math.Sqrt(Enumerable.Range(0, D).Sum(i => WDec[(m * F + j) * D + i] * WDec[(m * F + j) * D + i]));

        // model m's kept entries: the k·B largest s_m (flattened [B, F]); returns the mask and the smallest kept positive s_m
        public (bool[] Mask, double MinKept) Select(double[] f, int m)
        {
            var n = Enumerable.Range(0, F).Select(j => Norm(m, j)).ToArray();
            var order = Enumerable.Range(0, B * F).OrderByDescending(e => f[e] * n[e % F]).Take(K * B).ToArray();
            var mask = new bool[B * F];
            foreach (int e in order) mask[e] = true;
            var pos = order.Select(e => f[e] * n[e % F]).Where(s => s > 0).ToArray();
            return (mask, pos.Length > 0 ? pos.Min() : 0);
        }

        /// <summary>One training step; returns (loss, gradients after clipping) and updates θ, the parameters and Adam.</summary>
        public (double Loss, double[] GWEnc, double[] GBEnc, double[] GWDec, double[] GBDec) Step(float[] x, double lr, double beta)
        {
            var f = PostRelu(x);
            var masks = new bool[M][];
            var minKept = new double[M];
            for (int m = 0; m < M; m++) (masks[m], minKept[m]) = Select(f, m);
            double loss = 0;
            var delta = new double[B * M * D];   // ∂L/∂x̂
            for (int b = 0; b < B; b++)
                for (int m = 0; m < M; m++)
                {
                    var e = new double[D];
                    for (int i = 0; i < D; i++)
                    {
                        double xh = BDec[m * D + i];
                        for (int j = 0; j < F; j++) if (masks[m][b * F + j]) xh += f[b * F + j] * WDec[(m * F + j) * D + i];
                        e[i] = x[(b * M + m) * D + i] - xh;
                    }
                    double norm = Math.Sqrt(e.Sum(v => v * v));
                    loss += norm / (B * M);
                    for (int i = 0; i < D; i++) delta[(b * M + m) * D + i] = -e[i] / (norm * B * M);
                }
            var gWDec = new double[WDec.Length]; var gBDec = new double[M * D];
            var gPre = new double[B * F];
            for (int b = 0; b < B; b++)
                for (int m = 0; m < M; m++)
                    for (int i = 0; i < D; i++)
                    {
                        double dl = delta[(b * M + m) * D + i];
                        gBDec[m * D + i] += dl;
                        for (int j = 0; j < F; j++)
                            if (masks[m][b * F + j])
                            {
                                gWDec[(m * F + j) * D + i] += f[b * F + j] * dl;
                                gPre[b * F + j] += WDec[(m * F + j) * D + i] * dl;
                            }
                    }
            for (int e = 0; e < B * F; e++) if (!(f[e] > 0)) gPre[e] = 0;
            var gWEnc = new double[WEnc.Length]; var gBEnc = new double[F];
            for (int b = 0; b < B; b++)
                for (int j = 0; j < F; j++)
                {
                    double g = gPre[b * F + j];
                    if (g == 0) continue;
                    gBEnc[j] += g;
                    for (int m = 0; m < M; m++)
                        for (int i = 0; i < D; i++) gWEnc[(m * F + j) * D + i] += g * x[(b * M + m) * D + i];
                }
            // θ_m (the fork updates it in the loss, from this step's kept values)
            for (int m = 0; m < M; m++) Theta[m] = Theta[m] < 0 ? minKept[m] : beta * Theta[m] + (1 - beta) * minKept[m];
            // clip_grad_norm_(1.0): coefficient 1/(total + 1e-6) when below 1
            double total = Math.Sqrt(new[] { gWEnc, gBEnc, gWDec, gBDec }.Sum(g => g.Sum(v => v * v)));
            double coef = 1.0 / (total + 1e-6);
            if (coef < 1) foreach (var g in new[] { gWEnc, gBEnc, gWDec, gBDec }) for (int i = 0; i < g.Length; i++) g[i] *= coef;
            AdamStep++;
            Adam(WEnc, gWEnc, MWEnc, VWEnc, lr); Adam(BEnc, gBEnc, MBEnc, VBEnc, lr); Adam(WDec, gWDec, MWDec, VWDec, lr); Adam(BDec, gBDec, MBDec, VBDec, lr);
            return (loss, gWEnc, gBEnc, gWDec, gBDec);
        }

        void Adam(double[] p, double[] g, double[] mo, double[] v, double lr)
        {
            double bc1 = 1 - Math.Pow(0.9, AdamStep), bc2 = 1 - Math.Pow(0.999, AdamStep);
            for (int i = 0; i < p.Length; i++)
            {
                mo[i] = 0.9 * mo[i] + 0.1 * g[i];
                v[i] = 0.999 * v[i] + 0.001 * g[i] * g[i];
                p[i] -= lr / bc1 * mo[i] / (Math.Sqrt(v[i]) / Math.Sqrt(bc2) + 1e-8);
            }
        }
    }

    static SparseDictionary Make(ulong seed)
    {
        var dict = new SparseDictionary(M, D, F, Sparsity.BatchTopK, CodeNormalization.Decoupled, false, K);
        Initialization.Crosscoder(dict, new SplitMix64(seed), normInitScale: 0.5f);
        var r = new SplitMix64(seed + 7);
        // per-model decoder norms that differ, so the two models keep different latents; encoder bias so most f > 0
        for (int m = 0; m < M; m++)
            for (int j = 0; j < F; j++)
            {
                float s = (float)(0.3 + 1.4 * r.NextDouble());
                for (int i = 0; i < D; i++) dict.WDec[(m * F + j) * D + i] *= s;
            }
        for (int j = 0; j < F; j++) dict.BEnc[j] = (float)(0.3 + r.Normal() * 0.1);
        return dict;
    }

    static float[] Data(ulong seed)
    {
        var r = new SplitMix64(seed); var x = new float[B * M * D];
        for (int i = 0; i < x.Length; i++) x[i] = (float)r.Normal();
        return x;
    }

    static float[] F32(double[] a) => a.Select(v => (float)v).ToArray();

    void Close(string name, double[] want, float[] got)
    {
        double scale = want.Max(Math.Abs);
        Golden.AssertClose(name, F32(want), got, 2e-6 * Math.Max(scale, 1e-3), 0, log);
    }

    [Fact]
    public void Two_training_steps_match_a_float64_reimplementation_of_the_fork()
    {
        var dict = Make(1);
        var reference = Ref.From(dict);
        const double lr = 1e-2, beta = 0.9;
        var tr = new DictionaryTrainer(dict, new TrainerOptions
        {
            Loss = ReconLoss.L2, Lr = lr, WarmupSteps = 0, ClipNorm = 1f, ThresholdStartStep = -1, ThresholdBeta = (float)beta,
            GeometricMedianInit = false, DeadTokens = long.MaxValue, TotalSteps = 100,
        });
        for (int step = 0; step < 2; step++)
        {
            var x = Data(10 + (ulong)step);
            var f = reference.PostRelu(x);
            Assert.True(f.Count(v => v > 0) > 2 * K * B, "the test needs more positive activations than any model keeps");
            var masks = Enumerable.Range(0, M).Select(m => reference.Select(f, m).Mask).ToArray();
            Assert.False(masks[0].SequenceEqual(masks[1]), "the test needs models that keep different latents");

            var want = reference.Step(x, lr, beta);
            var st = tr.Step(x);
            log.WriteLine($"step {step}: loss {want.Loss:G9} vs {st.Recon:G9}; θ = [{string.Join(", ", reference.Theta.Select(v => v.ToString("G7")))}] vs [{string.Join(", ", dict.ModelThreshold!)}]");
            Assert.Equal(want.Loss, st.Recon, 1e-6 * want.Loss);
            // the per-model supports the trainer used
            for (int m = 0; m < M; m++)
            {
                var got = new bool[B * F];
                var c = tr.ModelCodes[m];
                for (int b = 0; b < B; b++) for (int e = c.RowStart[b]; e < c.RowStart[b + 1]; e++) got[b * F + c.Index[e]] = true;
                Assert.True(masks[m].SequenceEqual(got), $"step {step}, model {m}: kept entries differ from the fork's per-model top-k");
            }
            Close($"step {step} ∂W_enc", want.GWEnc, tr.GWEnc);
            Close($"step {step} ∂b_enc", want.GBEnc, tr.GBEnc);
            Close($"step {step} ∂W_dec", want.GWDec, tr.GWDec);
            Close($"step {step} ∂b_dec", want.GBDec, tr.GBDec);
            for (int m = 0; m < M; m++) Assert.Equal(reference.Theta[m], dict.ModelThreshold![m], 1e-6 * Math.Abs(reference.Theta[m]));
            Close($"step {step} W_enc", reference.WEnc, dict.WEnc);
            Close($"step {step} b_enc", reference.BEnc, dict.BEnc);
            Close($"step {step} W_dec", reference.WDec, dict.WDec);
            Close($"step {step} b_dec", reference.BDec, dict.BDec);
        }
        Assert.NotEqual(dict.ModelThreshold![0], dict.ModelThreshold[1]);

        // inference with the trained θ_m: model m keeps f where f·‖d_j^m‖ > θ_m, and decodes only that
        var probe = Data(99);
        var fp = reference.PostRelu(probe);
        var codes = Inference.EncodeModels(dict, probe);
        for (int m = 0; m < M; m++)
        {
            var got = new bool[B * F];
            var c = codes[m];
            for (int b = 0; b < B; b++) for (int e = c.RowStart[b]; e < c.RowStart[b + 1]; e++) got[b * F + c.Index[e]] = true;
            var want = Enumerable.Range(0, B * F).Select(e => fp[e] > 0 && fp[e] * reference.Norm(m, e % F) > reference.Theta[m]).ToArray();
            Assert.True(want.SequenceEqual(got), $"model {m}: inference support differs from f·‖d^m‖ > θ_m");
        }
    }
}

using Finetrace.Models;
using Finetrace.Models.Backward;
using Finetrace.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Finetrace.Tests.Models.Backward;

/// <summary>
/// Every backward piece and the whole-model gradient against central finite differences of float64 references
/// (step 1e-5 in double: truncation and rounding errors far below the float32 gradient's own error). Entries checked
/// are each tensor's largest analytic gradients plus random ones; the tolerance is relative to the tensor's largest
/// gradient, so a wrong formula (typically off by O(1)) fails.
/// </summary>
public sealed class BackwardTests(ITestOutputHelper log)
{
    const double Step = 1e-5;

    static float[] RandomArray(Random rng, int n, double scale = 1, double offset = 0) =>
        Enumerable.Range(0, n).Select(_ => (float)(offset + scale * (rng.NextDouble() * 2 - 1))).ToArray();

    static double Fd(Func<double[], double> f, double[] x, int i)
    {
        double keep = x[i];
        x[i] = keep + Step; double up = f(x);
        x[i] = keep - Step; double down = f(x);
        x[i] = keep;
        return (up - down) / (2 * Step);
    }

    /// <summary>Asserts the analytic gradient matches finite differences at every index of <paramref name="at"/>.</summary>
    void CheckEntries(string name, float[] analytic, Func<double[], double> f, double[] x, IEnumerable<int> at, double rtol = 2e-4)
    {
        double scale = analytic.Max(v => Math.Abs((double)v));
        double worst = 0;
        foreach (int i in at)
        {
            double fd = Fd(f, x, i);
            double diff = Math.Abs(fd - analytic[i]);
            worst = Math.Max(worst, diff);
            Assert.True(diff <= rtol * scale + 1e-9,
                $"{name}[{i}]: analytic {analytic[i]:G7}, finite difference {fd:G7} (diff {diff:E2}, tensor's max |grad| {scale:E2})");
        }
        log.WriteLine($"{name}: max abs diff {worst:E2} (max |grad| {scale:E2})");
    }

    static IEnumerable<int> Sample(float[] analytic, Random rng, int top, int random)
    {
        var order = Enumerable.Range(0, analytic.Length).OrderByDescending(i => Math.Abs(analytic[i])).Take(top);
        return order.Concat(Enumerable.Range(0, random).Select(_ => rng.Next(analytic.Length))).Distinct();
    }

    static double[] Widen(float[] a) => a.Select(v => (double)v).ToArray();

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void RmsNormMatchesFiniteDifferences(bool onePlusW)
    {
        var rng = new Random(1);
        int rows = 3, d = 7;
        var x = RandomArray(rng, rows * d, 2);
        var w = RandomArray(rng, d, 0.5, 1);
        var c = RandomArray(rng, rows * d);
        double Loss(double[] xs, double[] ws)
        {
            double l = 0;
            for (int r = 0; r < rows; r++)
            {
                double ss = 0;
                for (int i = 0; i < d; i++) ss += xs[r * d + i] * xs[r * d + i];
                double s = 1 / Math.Sqrt(ss / d + 1e-5);
                for (int i = 0; i < d; i++) l += c[r * d + i] * xs[r * d + i] * s * (ws[i] + (onePlusW ? 1 : 0));
            }
            return l;
        }
        var y = new float[rows * d];
        var inv = new float[rows];
        BackwardKernels.RmsNormForward(x, w, rows, 1e-5f, onePlusW, y, inv);
        var dx = new float[rows * d];
        var dw = new float[d];
        BackwardKernels.RmsNorm(c, x, inv, w, rows, onePlusW, dx, false, dw);
        var xd = Widen(x); var wd = Widen(w);
        CheckEntries("dX", dx, v => Loss(v, wd), xd, Enumerable.Range(0, rows * d));
        CheckEntries("dW", dw, v => Loss(xd, v), wd, Enumerable.Range(0, d));
    }

    [Fact]
    public void SiluMulMatchesFiniteDifferences()
    {
        var rng = new Random(2);
        int n = 19;
        var a = RandomArray(rng, n, 4); var u = RandomArray(rng, n, 2); var c = RandomArray(rng, n);
        var da = new float[n]; var du = new float[n];
        BackwardKernels.SiluMul(c, a, u, da, du);
        var ad = Widen(a); var ud = Widen(u);
        double Loss(double[] aa, double[] uu) => Enumerable.Range(0, n).Sum(i => c[i] * aa[i] / (1 + Math.Exp(-aa[i])) * uu[i]);
        CheckEntries("dA", da, v => Loss(v, ud), ad, Enumerable.Range(0, n));
        CheckEntries("dU", du, v => Loss(ad, v), ud, Enumerable.Range(0, n));
    }

    [Fact]
    public void CrossEntropyMatchesFiniteDifferences()
    {
        var rng = new Random(3);
        int m = 4, v = 11;
        var z = RandomArray(rng, m * v, 3);
        int[] targets = [3, -1, 10, 0];
        var dz = new float[m * v];
        var (loss, count) = BackwardKernels.CrossEntropy(z, targets, m, v, 1f / 3, dz);
        Assert.Equal(3, count);
        var zd = Widen(z);
        Assert.Equal(ReferenceLlama64.CrossEntropy(zd, targets, v), loss / count, 1e-5);
        CheckEntries("dLogits", dz, x => ReferenceLlama64.CrossEntropy(x, targets, v), zd, Enumerable.Range(0, m * v));
        Assert.All(dz.AsSpan(v, v).ToArray(), x => Assert.Equal(0f, x)); // the uncounted row gets no gradient
    }

    /// <summary>Attention over a right-padded, a left-padded and a full row with GQA (4 query heads on 2 KV heads),
    /// with and without a sliding window.</summary>
    [Theory]
    [InlineData(0)]
    [InlineData(3)]
    public void AttentionMatchesFiniteDifferences(int window)
    {
        var rng = new Random(4);
        int B = 3, T = 6, nh = 4, nkv = 2, hd = 4;
        var mask = new byte[B * T];
        for (int t = 0; t < T; t++) { mask[t] = (byte)(t < 4 ? 1 : 0); mask[T + t] = (byte)(t >= 2 ? 1 : 0); mask[2 * T + t] = 1; }
        var batch = new TokenBatch(new int[B * T], B, T, mask);
        float scale = 1 / MathF.Sqrt(hd);
        var shape = new BackwardKernels.AttentionShape(B, T, nh, nkv, hd, scale, window, batch.FirstReal, batch.LastReal);
        int m = B * T;
        var q = RandomArray(rng, m * nh * hd, 1.5); var k = RandomArray(rng, m * nkv * hd, 1.5); var v = RandomArray(rng, m * nkv * hd);
        var c = RandomArray(rng, m * nh * hd);
        for (int r = 0; r < m; r++) if (mask[r] == 0) for (int i = 0; i < nh * hd; i++) c[r * nh * hd + i] = 0; // padded outputs are discarded
        var o = new float[m * nh * hd]; var lse = new float[m * nh];
        BackwardKernels.AttentionForward(shape, q, k, v, o, lse);
        var dq = new float[q.Length]; var dk = new float[k.Length]; var dv = new float[v.Length];
        BackwardKernels.AttentionBackward(shape, q, k, v, o, lse, c, dq, dk, dv);

        double Loss(double[] qq, double[] kk, double[] vv)
        {
            double l = 0;
            for (int b = 0; b < B; b++)
                for (int h = 0; h < nh; h++)
                    for (int t = 0; t < T; t++)
                    {
                        int first = Math.Max(batch.FirstReal[b], window > 0 ? t - window + 1 : 0), last = Math.Min(t, batch.LastReal[b]);
                        if (first > last) continue;
                        var s = new double[last - first + 1];
                        for (int j = first; j <= last; j++)
                            for (int i = 0; i < hd; i++) s[j - first] += qq[(b * T + t) * nh * hd + h * hd + i] * kk[(b * T + j) * nkv * hd + h / 2 * hd + i] * scale;
                        double max = s.Max(), sum = s.Sum(x => Math.Exp(x - max));
                        for (int j = first; j <= last; j++)
                            for (int i = 0; i < hd; i++)
                                l += c[(b * T + t) * nh * hd + h * hd + i] * Math.Exp(s[j - first] - max) / sum * vv[(b * T + j) * nkv * hd + h / 2 * hd + i];
                    }
            return l;
        }
        var qd = Widen(q); var kd = Widen(k); var vd = Widen(v);
        CheckEntries("dQ", dq, x => Loss(x, kd, vd), qd, Enumerable.Range(0, q.Length));
        CheckEntries("dK", dk, x => Loss(qd, x, vd), kd, Enumerable.Range(0, k.Length));
        CheckEntries("dV", dv, x => Loss(qd, kd, x), vd, Enumerable.Range(0, v.Length));
    }

    // ---------------------------------------------------------------- whole model

    const string TinyConfig = """
        {"model_type": "MODEL", "hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "head_dim": 4, "vocab_size": 37, "max_position_embeddings": 64, "rms_norm_eps": 1e-5,
         "rope_theta": 10000.0, "hidden_act": "silu", "tie_word_embeddings": TIED, "initializer_range": 0.3 EXTRA}
        """;

    public static TheoryData<string, bool, string> Variants => new()
    {
        { "llama", true, "" },
        { "llama", false, "" },
        { "qwen2", false, ", \"use_sliding_window\": false" },
        { "qwen3", true, "" },
    };

    static ModelParameters TinyModel(string type, bool tied, string extra, ulong seed)
    {
        string json = TinyConfig.Replace("MODEL", type).Replace("TIED", tied ? "true" : "false").Replace(" EXTRA", extra);
        var p = ModelParameters.Initialise(json, seed);
        // norm scales and biases away from their 1 / 0 initial values, so their gradients are exercised in general position
        var rng = new Random((int)seed);
        foreach (var spec in p.Specs.Where(s => s.Role is ParameterRole.NormWeight or ParameterRole.Bias))
        {
            var a = p[spec.Name];
            for (int i = 0; i < a.Length; i++) a[i] += (float)(0.3 * (rng.NextDouble() * 2 - 1));
        }
        return p;
    }

    static TokenBatch PaddedBatch(int vocab, Random rng)
    {
        // a full row, a right-padded row and a left-padded row
        int B = 3, T = 7;
        var ids = Enumerable.Range(0, B * T).Select(_ => rng.Next(vocab)).ToArray();
        var mask = new byte[B * T];
        for (int t = 0; t < T; t++) { mask[t] = 1; mask[T + t] = (byte)(t < 5 ? 1 : 0); mask[2 * T + t] = (byte)(t >= 3 ? 1 : 0); }
        return new TokenBatch(ids, B, T, mask);
    }

    [Theory]
    [MemberData(nameof(Variants))]
    public void WholeModelGradientMatchesFiniteDifferences(string type, bool tied, string extra)
    {
        var p = TinyModel(type, tied, extra, 7);
        var rng = new Random(5);
        var batch = PaddedBatch(p.Config.Vocab, rng);
        var targets = DifferentiableLM.NextTokenTargets(batch);
        var lm = new DifferentiableLM(p);

        // the float32 forward equals the float64 reference (so the finite differences differentiate the same function)
        var reference = new ReferenceLlama64(p.Config, ReferenceLlama64.Widen(p.Names.Select(n => (n, p[n]))));
        var refLogits = reference.Logits(batch);
        var trace = lm.Forward(batch);
        for (int r = 0; r < batch.Count; r++)
            if (batch.Mask[r] != 0)
                for (int t = 0; t < p.Config.Vocab; t++)
                    Assert.True(Math.Abs(refLogits[r * p.Config.Vocab + t] - trace.Logits[r * p.Config.Vocab + t]) < 1e-5, $"logit [{r}, {t}]");

        var grads = p.ZerosLike();
        var (lossSum, count) = lm.LossAndGradients(batch, targets, grads);
        Assert.Equal(ReferenceLlama64.CrossEntropy(refLogits, targets, p.Config.Vocab), lossSum / count, 1e-5);
        foreach (var name in p.Names.OrderBy(n => n, StringComparer.Ordinal))
        {
            var x = reference.W[name];
            CheckEntries($"{type} {name}", grads[name], _ => ReferenceLlama64.CrossEntropy(reference.Logits(batch), targets, p.Config.Vocab),
                x, Sample(grads[name], rng, 3, 3));
        }
    }

    /// <summary>The attribution entry point: d(loss)/d(residual entering block L), no weight gradients.</summary>
    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(2)]
    public void ResidualGradientMatchesFiniteDifferences(int layer)
    {
        var p = TinyModel("qwen3", false, "", 11);
        var rng = new Random(6);
        var batch = PaddedBatch(p.Config.Vocab, rng);
        int m = batch.Count, d = p.Config.Hidden, v = p.Config.Vocab;
        var residual = RandomArray(rng, m * d, 1);
        // a KL-like scalar of the logits: Σ_rows Σ_t c_t · log_softmax(z)_t, on real rows only
        var c = RandomArray(rng, v);
        double LossOf(double[] z)
        {
            double l = 0;
            for (int r = 0; r < m; r++)
            {
                if (batch.Mask[r] == 0) continue;
                double max = double.NegativeInfinity;
                for (int t = 0; t < v; t++) max = Math.Max(max, z[r * v + t]);
                double lse = max + Math.Log(Enumerable.Range(0, v).Sum(t => Math.Exp(z[r * v + t] - max)));
                for (int t = 0; t < v; t++) l += c[t] * (z[r * v + t] - lse);
            }
            return l;
        }
        var lm = new DifferentiableLM(p);
        var (loss, grad) = lm.ResidualGradient(layer, residual, batch, (z, dz) =>
        {
            double l = 0;
            float csum = c.Sum();
            for (int r = 0; r < m; r++)
            {
                if (batch.Mask[r] == 0) continue;
                var row = z.AsSpan(r * v, v).ToArray();
                float max = row.Max();
                double sum = row.Sum(x => Math.Exp(x - max));
                for (int t = 0; t < v; t++)
                {
                    double pt = Math.Exp(row[t] - max) / sum;
                    l += c[t] * (row[t] - max - Math.Log(sum));
                    dz[r * v + t] = (float)(c[t] - csum * pt);
                }
            }
            return l;
        });
        var reference = new ReferenceLlama64(p.Config, ReferenceLlama64.Widen(p.Names.Select(n => (n, p[n]))));
        var rd = Widen(residual);
        Assert.Equal(LossOf(reference.Logits(batch, rd, layer)), loss, 1e-4);
        CheckEntries($"d resid_pre {layer}", grad, x => LossOf(reference.Logits(batch, x, layer)), rd, Sample(grad, rng, 8, 8));
        for (int r = 0; r < m; r++)
            if (batch.Mask[r] == 0)
                Assert.All(grad.AsSpan(r * d, d).ToArray(), g => Assert.Equal(0f, g)); // padding gets no gradient
    }

    /// <summary>The real stories260K checkpoint: the gradient of the mean next-token loss on one short sequence.</summary>
    [SharedFact]
    public void Stories260KGradientMatchesFiniteDifferences()
    {
        var p = ModelParameters.Load(Shared.Path("models", "stories260K"));
        int[] ids = [1, 403, 407, 261, 378, 432, 383, 286];
        var batch = new TokenBatch(ids, 1, ids.Length);
        var targets = DifferentiableLM.NextTokenTargets(batch);
        var lm = new DifferentiableLM(p);
        var grads = p.ZerosLike();
        var (lossSum, count) = lm.LossAndGradients(batch, targets, grads);
        var reference = new ReferenceLlama64(p.Config, ReferenceLlama64.Widen(p.Names.Select(n => (n, p[n]))));
        Assert.Equal(ReferenceLlama64.CrossEntropy(reference.Logits(batch), targets, p.Config.Vocab), lossSum / count, 1e-5);
        var rng = new Random(8);
        foreach (var name in p.Names.OrderBy(n => n, StringComparer.Ordinal))
            CheckEntries($"stories260K {name}", grads[name], _ => ReferenceLlama64.CrossEntropy(reference.Logits(batch), targets, p.Config.Vocab),
                reference.W[name], Sample(grads[name], rng, 1, 1));
    }

    /// <summary>The training forward gives the inference engine's logits (same model, padded batch).</summary>
    [SharedFact]
    public void ForwardMatchesCausalLM()
    {
        string dir = Shared.Path("models", "stories260K");
        using var cl = CausalLM.Load(dir);
        var lm = new DifferentiableLM(ModelParameters.Load(dir));
        var batch = PaddedBatch(512, new Random(9));
        var want = cl.Forward(batch).Logits!;
        var got = lm.Forward(batch).Logits;
        double worst = 0;
        for (int r = 0; r < batch.Count; r++)
            if (batch.Mask[r] != 0)
                for (int t = 0; t < 512; t++) worst = Math.Max(worst, Math.Abs(want.Data[r * 512 + t] - got[r * 512 + t]));
        log.WriteLine($"max abs logit diff {worst:E2}");
        Assert.True(worst < 2e-5, $"max abs logit diff {worst:E2}");
    }
}

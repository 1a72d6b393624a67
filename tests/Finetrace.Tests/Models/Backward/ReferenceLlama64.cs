using Finetrace.Models;

namespace Finetrace.Tests.Models.Backward;

/// <summary>
/// A slow, obvious float64 Llama-block forward written from the formulas (RMSNorm, q/k/v projections with optional
/// biases and qwen3 q/k norms, rotate-half RoPE with inv_freq = 1/θ^(2i/d), causal GQA softmax attention over real
/// keys, SiLU-gated MLP, final norm, unembedding) for finite-difference checks of the float32 backward. Parameters are
/// float64 copies keyed by Hugging Face name.
/// </summary>
sealed class ReferenceLlama64(ModelConfig c, Dictionary<string, double[]> w)
{
    public Dictionary<string, double[]> W { get; } = w;

    public static Dictionary<string, double[]> Widen(IEnumerable<(string Name, float[] Values)> parameters) =>
        parameters.ToDictionary(p => p.Name, p => p.Values.Select(v => (double)v).ToArray());

    static double[] RmsNorm(double[] x, int rows, int d, double[] wt, double eps)
    {
        var y = new double[rows * d];
        for (int r = 0; r < rows; r++)
        {
            double ss = 0;
            for (int i = 0; i < d; i++) ss += x[r * d + i] * x[r * d + i];
            double s = 1 / Math.Sqrt(ss / d + eps);
            for (int i = 0; i < d; i++) y[r * d + i] = x[r * d + i] * s * wt[i];
        }
        return y;
    }

    double[] Linear(double[] x, int rows, string name, int inF, int outF)
    {
        var wt = W[name + ".weight"];
        var b = W.GetValueOrDefault(name + ".bias");
        var y = new double[rows * outF];
        for (int r = 0; r < rows; r++)
            for (int o = 0; o < outF; o++)
            {
                double s = b?[o] ?? 0;
                for (int i = 0; i < inF; i++) s += x[r * inF + i] * wt[o * inF + i];
                y[r * outF + o] = s;
            }
        return y;
    }

    void Rope(double[] x, int rows, int heads, int[] positions)
    {
        int hd = c.HeadDim, half = hd / 2;
        for (int r = 0; r < rows; r++)
            for (int h = 0; h < heads; h++)
                for (int i = 0; i < half; i++)
                {
                    double inv = 1 / Math.Pow(c.RopeTheta, 2.0 * i / hd);
                    double ang = positions[r] * inv, cos = Math.Cos(ang), sin = Math.Sin(ang);
                    int o = r * heads * hd + h * hd;
                    double x1 = x[o + i], x2 = x[o + i + half];
                    x[o + i] = x1 * cos - x2 * sin;
                    x[o + i + half] = x2 * cos + x1 * sin;
                }
    }

    /// <summary>Logits [m, V] from the embedding (residual = null) or from a residual [m, D] entering block <paramref name="startLayer"/>.</summary>
    public double[] Logits(TokenBatch batch, double[]? residual = null, int startLayer = 0)
    {
        int m = batch.Count, d = c.Hidden, hd = c.HeadDim, nh = c.Heads, nkv = c.KvHeads, inter = c.Intermediate, T = batch.Seq;
        double[] h;
        if (residual is null)
        {
            h = new double[m * d];
            var e = W["model.embed_tokens.weight"];
            for (int r = 0; r < m; r++) Array.Copy(e, batch.Ids[r] * d, h, r * d, d);
        }
        else h = (double[])residual.Clone();
        for (int l = startLayer; l < c.Layers; l++)
        {
            string p = $"model.layers.{l}.";
            var n1 = RmsNorm(h, m, d, W[p + "input_layernorm.weight"], c.NormEps);
            var q = Linear(n1, m, p + "self_attn.q_proj", d, nh * hd);
            var k = Linear(n1, m, p + "self_attn.k_proj", d, nkv * hd);
            var v = Linear(n1, m, p + "self_attn.v_proj", d, nkv * hd);
            if (c.QkNorm)
            {
                q = RmsNorm(q, m * nh, hd, W[p + "self_attn.q_norm.weight"], c.NormEps);
                k = RmsNorm(k, m * nkv, hd, W[p + "self_attn.k_norm.weight"], c.NormEps);
            }
            Rope(q, m, nh, batch.Positions);
            Rope(k, m, nkv, batch.Positions);
            var att = new double[m * nh * hd];
            for (int b = 0; b < batch.Batch; b++)
                for (int hh = 0; hh < nh; hh++)
                {
                    int g = hh / (nh / nkv);
                    for (int t = 0; t < T; t++)
                    {
                        int first = batch.FirstReal[b], last = Math.Min(t, batch.LastReal[b]);
                        if (first > last) continue;
                        var s = new double[last - first + 1];
                        double max = double.NegativeInfinity;
                        for (int j = first; j <= last; j++)
                        {
                            double dot = 0;
                            for (int i = 0; i < hd; i++) dot += q[(b * T + t) * nh * hd + hh * hd + i] * k[(b * T + j) * nkv * hd + g * hd + i];
                            s[j - first] = dot / Math.Sqrt(hd);
                            max = Math.Max(max, s[j - first]);
                        }
                        double sum = 0;
                        for (int j = 0; j < s.Length; j++) { s[j] = Math.Exp(s[j] - max); sum += s[j]; }
                        for (int j = first; j <= last; j++)
                            for (int i = 0; i < hd; i++)
                                att[(b * T + t) * nh * hd + hh * hd + i] += s[j - first] / sum * v[(b * T + j) * nkv * hd + g * hd + i];
                    }
                }
            var o = Linear(att, m, p + "self_attn.o_proj", nh * hd, d);
            for (int i = 0; i < h.Length; i++) h[i] += o[i];
            var n2 = RmsNorm(h, m, d, W[p + "post_attention_layernorm.weight"], c.NormEps);
            var a = Linear(n2, m, p + "mlp.gate_proj", d, inter);
            var u = Linear(n2, m, p + "mlp.up_proj", d, inter);
            for (int i = 0; i < a.Length; i++) a[i] = a[i] / (1 + Math.Exp(-a[i])) * u[i];
            var mo = Linear(a, m, p + "mlp.down_proj", inter, d);
            for (int i = 0; i < h.Length; i++) h[i] += mo[i];
        }
        var nf = RmsNorm(h, m, d, W["model.norm.weight"], c.NormEps);
        var un = W[c.TiedEmbeddings ? "model.embed_tokens.weight" : "lm_head.weight"];
        var logits = new double[m * c.Vocab];
        for (int r = 0; r < m; r++)
            for (int t = 0; t < c.Vocab; t++)
            {
                double s = 0;
                for (int i = 0; i < d; i++) s += nf[r * d + i] * un[t * d + i];
                logits[r * c.Vocab + t] = s;
            }
        return logits;
    }

    /// <summary>Mean cross-entropy over the rows with a target ≥ 0.</summary>
    public static double CrossEntropy(double[] logits, int[] targets, int vocab)
    {
        double sum = 0;
        int n = 0;
        for (int r = 0; r < targets.Length; r++)
        {
            if (targets[r] < 0) continue;
            double max = double.NegativeInfinity;
            for (int t = 0; t < vocab; t++) max = Math.Max(max, logits[r * vocab + t]);
            double z = 0;
            for (int t = 0; t < vocab; t++) z += Math.Exp(logits[r * vocab + t] - max);
            sum += Math.Log(z) + max - logits[r * vocab + targets[r]];
            n++;
        }
        return sum / n;
    }
}

using Finetrace.Models;
using Finetrace.Tensors;

namespace Finetrace.Tests.Models.Backward;

/// <summary>
/// A slow, obvious float64 forward of the seven architectures written from the formulas, for finite-difference
/// checks of the float32 backward: RMSNorm (Gemma: × (1 + w)) or LayerNorm; token (× √hidden for Gemma) and learned
/// position embeddings; separate or fused (GPT-2 column blocks, NeoX per-head) q/k/v projections, nn.Linear or
/// Conv1D, with biases; qwen3 q/k norms; rotate-half RoPE over the first rotary_dim channels with inv_freq =
/// 1/θ^(2i/rotary_dim); causal GQA softmax attention over real keys with optional sliding window and tanh soft-cap;
/// gated or plain SiLU / GELU MLP; Gemma's post-branch norms; NeoX's parallel residual; final norm, unembedding and
/// final soft-cap. Parameters are float64 copies keyed by Hugging Face name.
/// </summary>
sealed class ReferenceTransformer64(ModelConfig c, Dictionary<string, double[]> w)
{
    public Dictionary<string, double[]> W { get; } = w;

    public static Dictionary<string, double[]> Widen(IEnumerable<(string Name, float[] Values)> parameters) =>
        parameters.ToDictionary(p => p.Name, p => p.Values.Select(v => (double)v).ToArray());

    double[] Norm(double[] x, int rows, int d, string prefix)
    {
        var wt = W[prefix + ".weight"];
        var y = new double[rows * d];
        for (int r = 0; r < rows; r++)
        {
            if (c.Norm == NormKind.LayerNorm)
            {
                double mu = 0, var = 0;
                for (int i = 0; i < d; i++) mu += x[r * d + i];
                mu /= d;
                for (int i = 0; i < d; i++) var += (x[r * d + i] - mu) * (x[r * d + i] - mu);
                double rs = 1 / Math.Sqrt(var / d + c.NormEps);
                var b = W[prefix + ".bias"];
                for (int i = 0; i < d; i++) y[r * d + i] = (x[r * d + i] - mu) * rs * wt[i] + b[i];
            }
            else
            {
                double ss = 0;
                for (int i = 0; i < d; i++) ss += x[r * d + i] * x[r * d + i];
                double s = 1 / Math.Sqrt(ss / d + c.NormEps);
                double off = c.Norm == NormKind.GemmaRmsNorm ? 1 : 0;
                for (int i = 0; i < d; i++) y[r * d + i] = x[r * d + i] * s * (wt[i] + off);
            }
        }
        return y;
    }

    double[] RmsPlain(double[] x, int rows, int d, double[] wt)
    {
        var y = new double[rows * d];
        for (int r = 0; r < rows; r++)
        {
            double ss = 0;
            for (int i = 0; i < d; i++) ss += x[r * d + i] * x[r * d + i];
            double s = 1 / Math.Sqrt(ss / d + c.NormEps);
            for (int i = 0; i < d; i++) y[r * d + i] = x[r * d + i] * s * wt[i];
        }
        return y;
    }

    /// <summary>y = x·Wᵀ + b (W [out, in]) or, Conv1D, y = x·W + b (W [in, out]).</summary>
    double[] Linear(double[] x, int rows, string prefix, int inF, int outF, bool inOut = false)
    {
        var wt = W[prefix + ".weight"];
        var b = W.GetValueOrDefault(prefix + ".bias");
        var y = new double[rows * outF];
        for (int r = 0; r < rows; r++)
            for (int o = 0; o < outF; o++)
            {
                double s = b?[o] ?? 0;
                for (int i = 0; i < inF; i++) s += x[r * inF + i] * (inOut ? wt[i * outF + o] : wt[o * inF + i]);
                y[r * outF + o] = s;
            }
        return y;
    }

    void Rope(double[] x, int rows, int heads, int[] positions)
    {
        int hd = c.HeadDim, rd = c.RotaryDim, half = rd / 2;
        for (int r = 0; r < rows; r++)
            for (int h = 0; h < heads; h++)
                for (int i = 0; i < half; i++)
                {
                    double inv = 1 / Math.Pow(c.RopeTheta, 2.0 * i / rd);
                    double ang = positions[r] * inv, cos = Math.Cos(ang), sin = Math.Sin(ang);
                    int o = r * heads * hd + h * hd;
                    double x1 = x[o + i], x2 = x[o + i + half];
                    x[o + i] = x1 * cos - x2 * sin;
                    x[o + i + half] = x2 * cos + x1 * sin;
                }
    }

    double Act(double x) => c.Act switch
    {
        HiddenAct.Silu => x / (1 + Math.Exp(-x)),
        HiddenAct.GeluTanh => 0.5 * x * (1 + Math.Tanh(Math.Sqrt(2 / Math.PI) * (x + 0.044715 * x * x * x))),
        _ => 0.5 * x * (1 + Kernels.Erf(x / Math.Sqrt(2))),
    };

    /// <summary>Logits [m, V] from the embedding (residual = null) or from a residual [m, D] entering block <paramref name="startLayer"/>.</summary>
    public double[] Logits(TokenBatch batch, double[]? residual = null, int startLayer = 0)
    {
        int m = batch.Count, d = c.Hidden, hd = c.HeadDim, nh = c.Heads, nkv = c.KvHeads, inter = c.Intermediate, T = batch.Seq;
        bool gpt2 = c.Arch == Architecture.Gpt2, neox = c.Arch == Architecture.GptNeox, gemma = c.Arch == Architecture.Gemma2;
        double[] h;
        if (residual is null)
        {
            h = new double[m * d];
            var e = W[gpt2 ? "transformer.wte.weight" : neox ? "gpt_neox.embed_in.weight" : "model.embed_tokens.weight"];
            double scale = gemma ? Math.Sqrt(d) : 1;
            for (int r = 0; r < m; r++)
                for (int i = 0; i < d; i++)
                    h[r * d + i] = e[batch.Ids[r] * d + i] * scale + (gpt2 ? W["transformer.wpe.weight"][batch.Positions[r] * d + i] : 0);
        }
        else h = (double[])residual.Clone();
        for (int l = startLayer; l < c.Layers; l++)
        {
            string p = gpt2 ? $"transformer.h.{l}." : neox ? $"gpt_neox.layers.{l}." : $"model.layers.{l}.";
            var n1 = Norm(h, m, d, p + (gpt2 ? "ln_1" : "input_layernorm"));
            double[] q, k, v;
            if (gpt2 || neox)
            {
                var f = gpt2 ? Linear(n1, m, p + "attn.c_attn", d, 3 * d, true) : Linear(n1, m, p + "attention.query_key_value", d, 3 * d);
                q = new double[m * d]; k = new double[m * d]; v = new double[m * d];
                for (int r = 0; r < m; r++)
                    for (int hh = 0; hh < nh; hh++)
                        for (int i = 0; i < hd; i++)
                        {
                            int dst = r * d + hh * hd + i;
                            q[dst] = f[r * 3 * d + (gpt2 ? hh * hd + i : hh * 3 * hd + i)];
                            k[dst] = f[r * 3 * d + (gpt2 ? d + hh * hd + i : hh * 3 * hd + hd + i)];
                            v[dst] = f[r * 3 * d + (gpt2 ? 2 * d + hh * hd + i : hh * 3 * hd + 2 * hd + i)];
                        }
            }
            else
            {
                q = Linear(n1, m, p + "self_attn.q_proj", d, nh * hd);
                k = Linear(n1, m, p + "self_attn.k_proj", d, nkv * hd);
                v = Linear(n1, m, p + "self_attn.v_proj", d, nkv * hd);
            }
            if (c.QkNorm)
            {
                q = RmsPlain(q, m * nh, hd, W[p + "self_attn.q_norm.weight"]);
                k = RmsPlain(k, m * nkv, hd, W[p + "self_attn.k_norm.weight"]);
            }
            if (!gpt2)
            {
                Rope(q, m, nh, batch.Positions);
                Rope(k, m, nkv, batch.Positions);
            }
            int window = c.SlidingLayers[l] ? c.SlidingWindow : 0;
            var att = new double[m * nh * hd];
            for (int b = 0; b < batch.Batch; b++)
                for (int hh = 0; hh < nh; hh++)
                {
                    int g = hh / (nh / nkv);
                    for (int t = 0; t < T; t++)
                    {
                        int first = Math.Max(batch.FirstReal[b], window > 0 ? t - window + 1 : 0), last = Math.Min(t, batch.LastReal[b]);
                        if (first > last) continue;
                        var s = new double[last - first + 1];
                        for (int j = first; j <= last; j++)
                        {
                            double dot = 0;
                            for (int i = 0; i < hd; i++) dot += q[(b * T + t) * nh * hd + hh * hd + i] * k[(b * T + j) * nkv * hd + g * hd + i];
                            double sc = dot * c.AttnScale;
                            s[j - first] = c.AttnSoftcap is { } cap ? cap * Math.Tanh(sc / cap) : sc;
                        }
                        double max = s.Max(), sum = s.Sum(x => Math.Exp(x - max));
                        for (int j = first; j <= last; j++)
                            for (int i = 0; i < hd; i++)
                                att[(b * T + t) * nh * hd + hh * hd + i] += Math.Exp(s[j - first] - max) / sum * v[(b * T + j) * nkv * hd + g * hd + i];
                    }
                }
            var o = gpt2 ? Linear(att, m, p + "attn.c_proj", d, d, true) : neox ? Linear(att, m, p + "attention.dense", d, d) : Linear(att, m, p + "self_attn.o_proj", nh * hd, d);
            if (gemma) o = Norm(o, m, d, p + "post_attention_layernorm");
            double[] mlpIn;
            if (c.ParallelResidual) mlpIn = h;
            else { for (int i = 0; i < h.Length; i++) h[i] += o[i]; mlpIn = h; }
            var n2 = Norm(mlpIn, m, d, p + (gpt2 ? "ln_2" : neox ? "post_attention_layernorm" : gemma ? "pre_feedforward_layernorm" : "post_attention_layernorm"));
            double[] mo;
            if (gpt2 || neox)
            {
                var a = gpt2 ? Linear(n2, m, p + "mlp.c_fc", d, inter, true) : Linear(n2, m, p + "mlp.dense_h_to_4h", d, inter);
                for (int i = 0; i < a.Length; i++) a[i] = Act(a[i]);
                mo = gpt2 ? Linear(a, m, p + "mlp.c_proj", inter, d, true) : Linear(a, m, p + "mlp.dense_4h_to_h", inter, d);
            }
            else
            {
                var a = Linear(n2, m, p + "mlp.gate_proj", d, inter);
                var u = Linear(n2, m, p + "mlp.up_proj", d, inter);
                for (int i = 0; i < a.Length; i++) a[i] = Act(a[i]) * u[i];
                mo = Linear(a, m, p + "mlp.down_proj", inter, d);
            }
            if (gemma) mo = Norm(mo, m, d, p + "post_feedforward_layernorm");
            if (c.ParallelResidual) for (int i = 0; i < h.Length; i++) h[i] += o[i] + mo[i];
            else for (int i = 0; i < h.Length; i++) h[i] += mo[i];
        }
        var nf = Norm(h, m, d, gpt2 ? "transformer.ln_f" : neox ? "gpt_neox.final_layer_norm" : "model.norm");
        var un = W[ModelLayout.UnembedName(c)];
        var logits = new double[m * c.Vocab];
        for (int r = 0; r < m; r++)
            for (int t = 0; t < c.Vocab; t++)
            {
                double s = 0;
                for (int i = 0; i < d; i++) s += nf[r * d + i] * un[t * d + i];
                logits[r * c.Vocab + t] = c.FinalSoftcap is { } cap ? cap * Math.Tanh(s / cap) : s;
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

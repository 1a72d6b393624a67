using Finetrace.Models;
using Finetrace.Models.Safetensors;
using Finetrace.Tensors;
using Finetrace.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Finetrace.Tests.Models;

/// <summary>
/// The block sites (hook_attn_out, hook_mlp_out, mlp.hook_post, hook_resid_mid, hook_resid_pre) of every architecture
/// fixture against direct computations in double precision from the fixture's own weights: the residual bookkeeping
/// (resid_mid − resid_pre = attn_out, resid_post − resid_mid = mlp_out; parallel blocks: resid_post − resid_pre =
/// attn_out + mlp_out, with resid_post and the embedding taken from the fixture's float64 reference), mlp.hook_post
/// recomputed from the MLP's input norm and gate/up (or fc) weights, mlp_out from hook_post and the down weights (+ Gemma's
/// post-feed-forward norm), and attn_out at every sequence's first position, where causal attention sees one key and the
/// output is O·V of that token (+ Gemma's post-attention norm).
/// </summary>
public sealed class HookSiteTests(ITestOutputHelper log)
{
    const double Tol = 3e-5;

    public static TheoryData<string> Folders => ArchParityTests.Folders;

    [SharedTheory]
    [MemberData(nameof(Folders))]
    public void EverySiteMatchesADirectForward(string folder)
    {
        string dir = Shared.Path("fixtures", "arch", folder);
        using var model = CausalLM.Load(dir);
        using var expected = new SafetensorsFile(Path.Combine(dir, "expected.safetensors"));
        using var weights = new SafetensorsFile(Path.Combine(dir, "model.safetensors"));
        var c = model.Config;
        var idsInfo = expected.Info("input_ids");
        var batch = TokenBatch.FromInt64(expected.ReadI64("input_ids"), idsInfo.Shape[0], idsInfo.Shape[1]);
        var got = new Dictionary<string, Tensor>();
        var hooks = new HookSet();
        for (int l = 0; l < c.Layers; l++)
            foreach (var site in HookSites.All) hooks.Capture(HookSites.Name(site, l), got);
        model.Forward(batch, hooks);

        int B = batch.Batch, T = batch.Seq, D = c.Hidden, I = c.Intermediate, m = B * T;
        bool gemma = c.Arch == Architecture.Gemma2, parallel = c.ParallelResidual;
        for (int l = 0; l < c.Layers; l++)
        {
            string tag = $"{folder} layer {l}";
            var pre = l == 0 ? expected.ReadF32(HookNames.ResidPre(0)).Data : expected.ReadF32(HookNames.ResidPost(l - 1)).Data;
            var post = expected.ReadF32(HookNames.ResidPost(l)).Data;
            var attnOut = got[HookNames.AttnOut(l)];
            var mlpOut = got[HookNames.MlpOut(l)];
            var hidden = got[HookNames.MlpPost(l)];
            Assert.Equal([B, T, D], attnOut.Shape);
            Assert.Equal([B, T, D], mlpOut.Shape);
            Assert.Equal([B, T, I], hidden.Shape);
            Golden.AssertClose($"{tag} resid_pre", pre, got[HookNames.ResidPre(l)].Span, Tol, log: log);

            // residual bookkeeping: the branch outputs are exactly what the block adds
            float[] mlpIn;
            if (parallel)
            {
                Assert.False(got.ContainsKey(HookNames.ResidMid(l)), "parallel blocks have no resid_mid");
                Golden.AssertClose($"{tag} resid_post − resid_pre = attn_out + mlp_out", Sub(post, pre), Add(attnOut.Data, mlpOut.Data), Tol, log: log);
                mlpIn = pre;
            }
            else
            {
                var mid = got[HookNames.ResidMid(l)].Data;
                Golden.AssertClose($"{tag} resid_mid − resid_pre = attn_out", Sub(mid, pre), attnOut.Span, Tol, log: log);
                Golden.AssertClose($"{tag} resid_post − resid_mid = mlp_out", Sub(post, mid), mlpOut.Span, Tol, log: log);
                mlpIn = mid;
            }

            // mlp.hook_post from the MLP's input norm and its first projections
            var w = new Block(weights, c, l);
            var x = Norm(mlpIn, m, w.MlpNormW, w.MlpNormB, c);
            var wantHidden = new double[m * I];
            var a = w.Fc(x, m);
            if (w.Gated)
            {
                var up = w.Up(x, m);
                for (int i = 0; i < wantHidden.Length; i++) wantHidden[i] = Act(a[i], c.Act) * up[i];
            }
            else for (int i = 0; i < wantHidden.Length; i++) wantHidden[i] = Act(a[i], c.Act);
            Golden.AssertClose($"{tag} mlp.hook_post", ToF(wantHidden), hidden.Span, Tol, log: log);

            // mlp_out from mlp.hook_post and the down projection
            var down = w.Down(ToD(hidden.Data), m);
            if (gemma) down = Norm(ToF(down), m, w.PostFfNormW!, null, c);
            Golden.AssertClose($"{tag} mlp_out = down(mlp.hook_post)", ToF(down), mlpOut.Span, Tol, log: log);

            // attn_out at position 0 of each sequence: one visible key, so softmax = 1 and the output is O·V(token 0)
            for (int b = 0; b < B; b++)
            {
                var x0 = Norm(pre.AsSpan(b * T * D, D).ToArray(), 1, w.AttnNormW, w.AttnNormB, c);
                var v = w.V(x0);                      // [kv·hd]
                int rep = c.Heads / c.KvHeads, hd = c.HeadDim;
                var concat = new double[c.Heads * hd];
                for (int h = 0; h < c.Heads; h++)
                    for (int e = 0; e < hd; e++) concat[h * hd + e] = v[(h / rep) * hd + e];
                var o = w.O(concat);
                if (gemma) o = Norm(ToF(o), 1, w.PostAttnNormW!, null, c);
                Golden.AssertClose($"{tag} attn_out at ({b}, 0) = O·V", ToF(o), attnOut.Data.AsSpan(b * T * D, D), Tol, log: log);
            }
        }
    }

    [Fact]
    public void SiteNamesParseInEverySpelling()
    {
        Assert.Equal(HookSite.MlpOut, HookSites.Parse("mlp_out"));
        Assert.Equal(HookSite.MlpOut, HookSites.Parse("hook_mlp_out"));
        Assert.Equal(HookSite.MlpOut, HookSites.Parse("blocks.{L}.hook_mlp_out"));
        Assert.True(HookSites.TryParse("blocks.3.mlp.hook_post", out var s, out var layer));
        Assert.Equal((HookSite.MlpPost, 3), (s, layer!.Value));
        Assert.Equal("blocks.{L}.mlp.hook_post", HookSites.Template(HookSite.MlpPost));
        Assert.Equal("blocks.2.hook_attn_out", HookSites.Name(HookSite.AttnOut, 2));
        foreach (var site in HookSites.All) Assert.Equal(site, HookSites.Parse(HookSites.Template(site)));
        var e = Assert.Throws<HookSiteException>(() => HookSites.Parse("hook_z"));
        Assert.Contains("mlp_out", e.Message);
        Assert.False(HookSites.TryParse("synthetic", out _, out _));
    }

    [SharedFact]
    public void EditsAtABlockSiteFlowIntoTheResidual()
    {
        // zeroing mlp_out of layer 1 must leave resid_post(1) = resid_mid(1) exactly
        using var model = CausalLM.Load(Shared.Path("fixtures", "arch", "llama"));
        var batch = new TokenBatch([2, 196, 269, 188, 244, 292], 1, 6);
        var got = new Dictionary<string, Tensor>();
        var hooks = new HookSet().On(HookNames.MlpOut(1), (a, _) => Array.Clear(a.Data))
            .Capture(HookNames.ResidMid(1), got).Capture(HookNames.ResidPost(1), got);
        model.Forward(batch, hooks);
        Assert.Equal(got[HookNames.ResidMid(1)].Data, got[HookNames.ResidPost(1)].Data);
    }

    // ------------------------------------------------------------ a direct (double precision) block

    sealed class Block
    {
        readonly SafetensorsFile _f;
        readonly ModelConfig _c;
        readonly string _p;
        public readonly float[] AttnNormW, MlpNormW;
        public readonly float[]? AttnNormB, MlpNormB, PostAttnNormW, PostFfNormW;
        public bool Gated => _c.Arch is not (Architecture.Gpt2 or Architecture.GptNeox);

        public Block(SafetensorsFile f, ModelConfig c, int l)
        {
            _f = f; _c = c;
            switch (c.Arch)
            {
                case Architecture.Gpt2:
                    _p = $"transformer.h.{l}.";
                    AttnNormW = R("ln_1.weight"); AttnNormB = R("ln_1.bias"); MlpNormW = R("ln_2.weight"); MlpNormB = R("ln_2.bias");
                    break;
                case Architecture.GptNeox:
                    _p = $"gpt_neox.layers.{l}.";
                    AttnNormW = R("input_layernorm.weight"); AttnNormB = R("input_layernorm.bias");
                    MlpNormW = R("post_attention_layernorm.weight"); MlpNormB = R("post_attention_layernorm.bias");
                    break;
                default:
                    _p = $"model.layers.{l}.";
                    AttnNormW = R("input_layernorm.weight");
                    if (c.Arch == Architecture.Gemma2)
                    {
                        PostAttnNormW = R("post_attention_layernorm.weight");
                        MlpNormW = R("pre_feedforward_layernorm.weight");
                        PostFfNormW = R("post_feedforward_layernorm.weight");
                    }
                    else MlpNormW = R("post_attention_layernorm.weight");
                    break;
            }
        }

        float[] R(string name) => _f.ReadF32(_p + name).Data;
        float[]? Opt(string name) => _f.Contains(_p + name) ? R(name) : null;

        /// <summary>y [m, out] = x [m, in] · Wᵀ + b for nn.Linear [out, in]; Conv1D [in, out] when <paramref name="conv1d"/>.</summary>
        double[] Linear(double[] x, int m, string name, bool conv1d, int outOffset = -1, int outCount = -1, Func<int, int>? outRow = null)
        {
            var info = _f.Info(_p + name + ".weight");
            var w = R(name + ".weight");
            var b = Opt(name + ".bias");
            int inDim = conv1d ? info.Shape[0] : info.Shape[1], outDim = conv1d ? info.Shape[1] : info.Shape[0];
            int n = outCount < 0 ? outDim : outCount;
            var y = new double[m * n];
            for (int r = 0; r < m; r++)
                for (int j = 0; j < n; j++)
                {
                    int o = outRow is not null ? outRow(j) : (outOffset < 0 ? 0 : outOffset) + j;
                    double s = b is null ? 0 : b[o];
                    for (int i = 0; i < inDim; i++) s += x[r * inDim + i] * (conv1d ? w[i * outDim + o] : w[o * inDim + i]);
                    y[r * n + j] = s;
                }
            return y;
        }

        public double[] Fc(double[] x, int m) => _c.Arch switch
        {
            Architecture.Gpt2 => Linear(x, m, "mlp.c_fc", true),
            Architecture.GptNeox => Linear(x, m, "mlp.dense_h_to_4h", false),
            _ => Linear(x, m, "mlp.gate_proj", false),
        };
        public double[] Up(double[] x, int m) => Linear(x, m, "mlp.up_proj", false);
        public double[] Down(double[] x, int m) => _c.Arch switch
        {
            Architecture.Gpt2 => Linear(x, m, "mlp.c_proj", true),
            Architecture.GptNeox => Linear(x, m, "mlp.dense_4h_to_h", false),
            _ => Linear(x, m, "mlp.down_proj", false),
        };

        /// <summary>V [kv·hd] of one normalised token: v_proj, GPT-2's third of c_attn, or NeoX's per-head v rows.</summary>
        public double[] V(double[] x)
        {
            int d = _c.Hidden, hd = _c.HeadDim;
            return _c.Arch switch
            {
                Architecture.Gpt2 => Linear(x, 1, "attn.c_attn", true, outOffset: 2 * d, outCount: d),
                Architecture.GptNeox => Linear(x, 1, "attention.query_key_value", false, outCount: d, outRow: j => (j / hd) * 3 * hd + 2 * hd + j % hd),
                _ => Linear(x, 1, "self_attn.v_proj", false),
            };
        }

        public double[] O(double[] z) => _c.Arch switch
        {
            Architecture.Gpt2 => Linear(z, 1, "attn.c_proj", true),
            Architecture.GptNeox => Linear(z, 1, "attention.dense", false),
            _ => Linear(z, 1, "self_attn.o_proj", false),
        };
    }

    /// <summary>LayerNorm, Llama RMSNorm or Gemma RMSNorm (scale 1 + w) of m rows, in double.</summary>
    static double[] Norm(float[] x, int m, float[] w, float[]? b, ModelConfig c)
    {
        int d = w.Length;
        var y = new double[m * d];
        for (int r = 0; r < m; r++)
        {
            double mean = 0, sq = 0;
            for (int i = 0; i < d; i++) mean += x[r * d + i];
            mean /= d;
            if (c.Norm == NormKind.LayerNorm)
            {
                for (int i = 0; i < d; i++) sq += (x[r * d + i] - mean) * (x[r * d + i] - mean);
                double inv = 1 / Math.Sqrt(sq / d + c.NormEps);
                for (int i = 0; i < d; i++) y[r * d + i] = (x[r * d + i] - mean) * inv * w[i] + b![i];
            }
            else
            {
                for (int i = 0; i < d; i++) sq += (double)x[r * d + i] * x[r * d + i];
                double inv = 1 / Math.Sqrt(sq / d + c.NormEps);
                for (int i = 0; i < d; i++) y[r * d + i] = x[r * d + i] * inv * (c.Norm == NormKind.GemmaRmsNorm ? 1 + w[i] : w[i]);
            }
        }
        return y;
    }

    static double Act(double x, HiddenAct act) => act switch
    {
        HiddenAct.Silu => x / (1 + Math.Exp(-x)),
        HiddenAct.GeluTanh => 0.5 * x * (1 + Math.Tanh(Math.Sqrt(2 / Math.PI) * (x + 0.044715 * x * x * x))),
        _ => 0.5 * x * (1 + Erf(x / Math.Sqrt(2))),
    };

    /// <summary>erf by its Maclaurin series (|x| ≤ 6; beyond, ±1 to double precision).</summary>
    static double Erf(double x)
    {
        if (Math.Abs(x) > 6) return Math.Sign(x);
        double term = x, sum = x, x2 = x * x;
        for (int n = 1; n < 200 && Math.Abs(term) > 1e-17; n++)
        {
            term *= -x2 / n;
            sum += term / (2 * n + 1);
        }
        return 2 / Math.Sqrt(Math.PI) * sum;
    }

    static float[] Sub(float[] a, float[] b) => a.Zip(b, (p, q) => p - q).ToArray();
    static float[] Add(float[] a, float[] b) => a.Zip(b, (p, q) => p + q).ToArray();
    static float[] ToF(double[] a) => a.Select(v => (float)v).ToArray();
    static double[] ToD(float[] a) => a.Select(v => (double)v).ToArray();
}

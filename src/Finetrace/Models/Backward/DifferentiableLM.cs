using System.Numerics.Tensors;
using Finetrace.Tensors;
using Tensor = Finetrace.Tensors.Tensor;

namespace Finetrace.Models.Backward;

/// <summary>
/// A causal LM of any of the seven architectures (llama, mistral, qwen2, qwen3, gemma2 with its extra norms and
/// soft-caps, gpt2 and gpt_neox with LayerNorm, GELU, fused QKV and NeoX's parallel residual) in float32, with a forward
/// that keeps what its hand-written backward needs. It reads its weights from a <see cref="ModelParameters"/> at every
/// call, so an optimiser updating those arrays in place is seen by the next forward.
/// <para>Training: <see cref="Forward"/> then <see cref="Backward"/> with dLoss/dLogits (e.g. from
/// <see cref="BackwardKernels.CrossEntropy"/>), or <see cref="LossAndGradients"/> for both.</para>
/// <para>Attribution: <see cref="ForwardFrom"/> starts from a residual stream entering block L (blocks.L.hook_resid_pre),
/// and <see cref="Backward"/> returns dLoss/d(that residual); pass no gradient set to skip every weight gradient.
/// <see cref="ResidualGradient"/> does both for a loss given as a function of the logits.</para>
/// </summary>
public sealed class DifferentiableLM
{
    public ModelParameters Parameters { get; }
    public ModelConfig Config => Parameters.Config;
    readonly Rope? _rope;
    readonly string _embedName, _unembedName;
    readonly string? _positionName;
    readonly BlockSpec[] _blocks;
    readonly NormSpec _finalNorm;

    sealed record NormSpec(NormKind Kind, string Weight, string? Bias);
    /// <summary>A projection: y = x·Wᵀ + b (W stored [out, in]) or, for GPT-2's Conv1D, y = x·W + b (W stored [in, out]).</summary>
    sealed record LinSpec(string Weight, string? Bias, bool InOut, int In, int Out);

    sealed class BlockSpec
    {
        public required NormSpec AttnIn, MlpIn;
        public NormSpec? AttnOut, MlpOut;   // gemma2 post-attention / post-feedforward norms
        public LinSpec? Q, K, V, Qkv;        // separate, or fused (GPT-2 [Q|K|V] columns, NeoX per-head [q_h|k_h|v_h])
        public required LinSpec O, Up, Down;
        public LinSpec? Gate;                // gated MLP (llama family, gemma2)
        public string? QNorm, KNorm;         // qwen3
    }

    public DifferentiableLM(ModelParameters parameters)
    {
        ModelParameters.CheckSupported(parameters.Config);
        Parameters = parameters;
        var c = parameters.Config;
        _rope = c.Arch == Architecture.Gpt2 ? null : new Rope(c);
        _embedName = ModelLayout.EmbedName(c);
        _unembedName = ModelLayout.UnembedName(c);
        _positionName = c.Arch == Architecture.Gpt2 ? "transformer.wpe.weight" : null;
        int d = c.Hidden, inter = c.Intermediate, qW = c.Heads * c.HeadDim, kvW = c.KvHeads * c.HeadDim;
        NormSpec Norm(string prefix) => new(c.Norm, prefix + ".weight", c.Norm == NormKind.LayerNorm ? prefix + ".bias" : null);
        LinSpec Lin(string prefix, int inF, int outF, bool inOut = false) =>
            new(prefix + ".weight", parameters.Contains(prefix + ".bias") ? prefix + ".bias" : null, inOut, inF, outF);
        _blocks = new BlockSpec[c.Layers];
        for (int i = 0; i < c.Layers; i++)
        {
            switch (c.Arch)
            {
                case Architecture.Gpt2:
                {
                    string p = $"transformer.h.{i}.";
                    _blocks[i] = new BlockSpec
                    {
                        AttnIn = Norm(p + "ln_1"), MlpIn = Norm(p + "ln_2"), Qkv = Lin(p + "attn.c_attn", d, 3 * d, true),
                        O = Lin(p + "attn.c_proj", d, d, true), Up = Lin(p + "mlp.c_fc", d, inter, true), Down = Lin(p + "mlp.c_proj", inter, d, true),
                    };
                    break;
                }
                case Architecture.GptNeox:
                {
                    string p = $"gpt_neox.layers.{i}.";
                    _blocks[i] = new BlockSpec
                    {
                        AttnIn = Norm(p + "input_layernorm"), MlpIn = Norm(p + "post_attention_layernorm"),
                        Qkv = Lin(p + "attention.query_key_value", d, 3 * d), O = Lin(p + "attention.dense", d, d),
                        Up = Lin(p + "mlp.dense_h_to_4h", d, inter), Down = Lin(p + "mlp.dense_4h_to_h", inter, d),
                    };
                    break;
                }
                default:
                {
                    string p = $"model.layers.{i}.";
                    bool gemma = c.Arch == Architecture.Gemma2;
                    _blocks[i] = new BlockSpec
                    {
                        AttnIn = Norm(p + "input_layernorm"),
                        AttnOut = gemma ? Norm(p + "post_attention_layernorm") : null,
                        MlpIn = Norm(gemma ? p + "pre_feedforward_layernorm" : p + "post_attention_layernorm"),
                        MlpOut = gemma ? Norm(p + "post_feedforward_layernorm") : null,
                        Q = Lin(p + "self_attn.q_proj", d, qW), K = Lin(p + "self_attn.k_proj", d, kvW), V = Lin(p + "self_attn.v_proj", d, kvW),
                        O = Lin(p + "self_attn.o_proj", qW, d),
                        QNorm = c.QkNorm ? p + "self_attn.q_norm.weight" : null, KNorm = c.QkNorm ? p + "self_attn.k_norm.weight" : null,
                        Gate = Lin(p + "mlp.gate_proj", d, inter), Up = Lin(p + "mlp.up_proj", d, inter), Down = Lin(p + "mlp.down_proj", inter, d),
                    };
                    break;
                }
            }
        }
        _finalNorm = c.Arch switch
        {
            Architecture.Gpt2 => Norm("transformer.ln_f"),
            Architecture.GptNeox => Norm("gpt_neox.final_layer_norm"),
            _ => Norm("model.norm"),
        };
    }

    /// <summary>Where training time goes (seconds) and the GEMM work done, for <c>bench lm-train</c>; off unless enabled.
    /// <see cref="Gemm"/>/<see cref="GemmFlops"/> cover every product; the backward's (dX and dW products) are also
    /// counted apart, so the forward's share is the difference.</summary>
    internal sealed class Profile
    {
        public double Gemm, Attention, GemmBackward;
        public double GemmFlops, GemmBackwardFlops;
        public double GemmForward => Gemm - GemmBackward;
        public double GemmForwardFlops => GemmFlops - GemmBackwardFlops;
        public static Profile? Current;
        public static long Now() => Current is null ? 0 : System.Diagnostics.Stopwatch.GetTimestamp();
        public static double Since(long t0) => (System.Diagnostics.Stopwatch.GetTimestamp() - t0) / (double)System.Diagnostics.Stopwatch.Frequency;
        public static void AddGemm(long t0, double flops) { if (Current is { } p) { p.Gemm += Since(t0); p.GemmFlops += flops; } }
        public static void AddGemmBackward(long t0, double flops)
        {
            if (Current is not { } p) return;
            double dt = Since(t0);
            p.Gemm += dt; p.GemmFlops += flops; p.GemmBackward += dt; p.GemmBackwardFlops += flops;
        }
        public static void AddAttention(long t0) { if (Current is { } p) p.Attention += Since(t0); }
    }

    /// <summary>A normalised tensor and the statistics its backward needs (1/rms, or mean and 1/std for LayerNorm).</summary>
    internal sealed class NormTrace(int rows)
    {
        public readonly float[] Inv = new float[rows];
        public float[]? Mean;
    }

    /// <summary>What one block's backward needs (all [rows, width] row-major).</summary>
    internal sealed class LayerTrace
    {
        public required float[] X, N1, Q, K, V, Lse, O, N2, A, Act;
        public required NormTrace S1, S2;
        public float[]? U;                          // gated MLP: the up projection
        public float[]? H2;                         // sequential residual: the stream after the attention add
        public float[]? QRaw, KRaw;                 // qwen3: q and k before their norms
        public NormTrace? QS, KS;
        public float[]? Proj, MlpRaw;               // gemma2: the branch outputs before their output norms
        public NormTrace? ProjS, MlpS;
    }

    /// <summary>The activations of one forward kept for <see cref="Backward"/>, and its logits.</summary>
    public sealed class Trace
    {
        public required TokenBatch Batch { get; init; }
        /// <summary>The block whose input residual the trace starts from (0 when it starts at the embedding).</summary>
        public required int StartLayer { get; init; }
        public required bool FromEmbedding { get; init; }
        internal LayerTrace[] Layers = [];
        internal float[] FinalIn = [], FinalNormed = [];
        internal NormTrace FinalStats = new(0);
        /// <summary>Logits [Batch · Seq, Vocab] (Gemma 2: after the final soft-cap).</summary>
        public float[] Logits { get; internal set; } = [];
    }

    // ---------------------------------------------------------------- forward

    /// <summary>Embedding, every block, final norm and logits, keeping the trace.</summary>
    public Trace Forward(TokenBatch batch)
    {
        var h = Embed(batch);
        return Run(new Trace { Batch = batch, StartLayer = 0, FromEmbedding = true }, h);
    }

    /// <summary>Blocks <paramref name="layer"/>..end, final norm and logits from a residual <paramref name="residualMD"/>
    /// [Batch · Seq, Hidden] entering block <paramref name="layer"/> (= blocks.{layer}.hook_resid_pre; layer = Layers
    /// runs the final norm and unembedding only). The array is not modified.</summary>
    public Trace ForwardFrom(int layer, ReadOnlySpan<float> residualMD, TokenBatch batch)
    {
        if (layer < 0 || layer > Config.Layers) throw new ArgumentOutOfRangeException(nameof(layer), $"layer {layer} of {Config.Layers}");
        if (residualMD.Length != batch.Count * Config.Hidden)
            throw new ArgumentException($"residual has {residualMD.Length} values; batch [{batch.Batch}, {batch.Seq}] × hidden {Config.Hidden} needs {batch.Count * Config.Hidden}");
        var h = Tensor.Allocate(residualMD.Length, false);
        residualMD.CopyTo(h);
        return Run(new Trace { Batch = batch, StartLayer = layer, FromEmbedding = false }, h);
    }

    /// <summary>The embedding output [Batch · Seq, Hidden]: E[ids] (× ν for Gemma), + wpe[position] for GPT-2.</summary>
    public float[] Embed(TokenBatch batch)
    {
        int d = Config.Hidden;
        var e = Parameters[_embedName];
        var wpe = _positionName is null ? null : Parameters[_positionName];
        var h = Tensor.Allocate((long)batch.Count * d, false);
        for (int i = 0; i < batch.Count; i++)
        {
            int id = batch.Ids[i];
            if ((uint)id >= (uint)Config.Vocab)
                throw new ArgumentOutOfRangeException(nameof(batch), $"token id {id} (row {i / batch.Seq}, position {i % batch.Seq}) is outside the vocabulary of {Config.Vocab}");
            var row = h.AsSpan(i * d, d);
            e.AsSpan(id * d, d).CopyTo(row);
            if (Config.EmbedScale != 1f) TensorPrimitives.Multiply(row, Config.EmbedScale, row);
            if (wpe is not null)
            {
                int pos = batch.Positions[i];
                if (pos >= Config.MaxPositions) throw new ArgumentOutOfRangeException(nameof(batch), $"position {pos} exceeds n_positions {Config.MaxPositions}");
                TensorPrimitives.Add(row, wpe.AsSpan(pos * d, d), row);
            }
        }
        return h;
    }

    Trace Run(Trace trace, float[] h)
    {
        var c = Config;
        var batch = trace.Batch;
        int m = batch.Count, d = c.Hidden;
        trace.Layers = new LayerTrace[c.Layers - trace.StartLayer];
        for (int i = trace.StartLayer; i < c.Layers; i++)
            trace.Layers[i - trace.StartLayer] = LayerForward(i, h, batch);
        trace.FinalIn = h;
        trace.FinalNormed = Tensor.Allocate((long)m * d, false);
        trace.FinalStats = NormForward(_finalNorm, h, m, trace.FinalNormed);
        trace.Logits = Tensor.Allocate((long)m * c.Vocab, false);
        long t0 = Profile.Now();
        Gemm.MatMulNT(trace.FinalNormed, Parameters[_unembedName], m, d, c.Vocab, trace.Logits);
        Profile.AddGemm(t0, 2.0 * m * d * c.Vocab);
        if (c.FinalSoftcap is { } cap) Kernels.SoftCap(trace.Logits, cap);
        return trace;
    }

    BackwardKernels.AttentionShape ShapeOf(int layer, TokenBatch batch)
    {
        var c = Config;
        return new(batch.Batch, batch.Seq, c.Heads, c.KvHeads, c.HeadDim, c.AttnScale, c.SlidingLayers[layer] ? c.SlidingWindow : 0,
            batch.FirstReal, batch.LastReal, c.AttnSoftcap ?? 0f);
    }

    // xRD: [rows, D] → yRD: [rows, D]
    NormTrace NormForward(NormSpec n, float[] x, int rows, float[] y, float? eps = null)
    {
        var st = new NormTrace(rows);
        var w = Parameters[n.Weight];
        float e = eps ?? Config.NormEps;
        if (n.Kind == NormKind.LayerNorm)
        {
            st.Mean = new float[rows];
            BackwardKernels.LayerNormForward(x, w, n.Bias is null ? default : Parameters[n.Bias], rows, e, y, st.Mean, st.Inv);
        }
        else BackwardKernels.RmsNormForward(x, w, rows, e, n.Kind == NormKind.GemmaRmsNorm, y, st.Inv);
        return st;
    }

    // dY, x: [rows, D] → dX (accumulated when asked)
    void NormBackward(NormSpec n, NormTrace st, float[] dY, float[] x, int rows, float[] dX, bool accumulate, ModelParameters? grads)
    {
        var w = Parameters[n.Weight];
        if (n.Kind == NormKind.LayerNorm)
            BackwardKernels.LayerNorm(dY, x, st.Mean!, st.Inv, w, rows, dX, accumulate, grads?.Get(n.Weight), n.Bias is null ? null : grads?.Get(n.Bias));
        else BackwardKernels.RmsNorm(dY, x, st.Inv, w, rows, n.Kind == NormKind.GemmaRmsNorm, dX, accumulate, grads?.Get(n.Weight));
    }

    // xMIn: [m, In] → yMOut: [m, Out]
    void Project(LinSpec l, float[] x, int m, float[] y)
    {
        long t0 = Profile.Now();
        var w = Parameters[l.Weight];
        if (l.InOut) Gemm.MatMulNN(x, w, m, l.In, l.Out, y);
        else Gemm.MatMulNT(x, w, m, l.In, l.Out, y);
        if (l.Bias is { } bn)
        {
            var b = Parameters[bn];
            for (int r = 0; r < m; r++) TensorPrimitives.Add(y.AsSpan(r * l.Out, l.Out), b, y.AsSpan(r * l.Out, l.Out));
        }
        Profile.AddGemm(t0, 2.0 * m * l.In * l.Out);
    }

    // dYMOut: [m, Out]; xMIn: [m, In]; dXMIn: [m, In] (accumulated when asked)
    void ProjectBackward(LinSpec l, float[] dY, float[] x, int m, float[] dX, bool accumulateDx, ModelParameters? grads)
    {
        long t0 = Profile.Now();
        var w = Parameters[l.Weight];
        var dW = grads?.Get(l.Weight);
        if (!l.InOut) BackwardKernels.Linear(dY, x, w, m, l.In, l.Out, dX, accumulateDx, dW, l.Bias is null ? null : grads?.Get(l.Bias));
        else
        {
            // Conv1D y = x·W, W [in, out]: dX = dY·Wᵀ, dW += xᵀ·dY
            Gemm.MatMulNT(dY, w, m, l.Out, l.In, dX, accumulateDx);
            if (dW is not null) Gemm.MatMulTN(x, dY, l.In, m, l.Out, dW, accumulate: true);
            if (l.Bias is not null && grads?.Get(l.Bias) is { } dB)
                for (int r = 0; r < m; r++) TensorPrimitives.Add(dB, dY.AsSpan(r * l.Out, l.Out), dB);
        }
        Profile.AddGemmBackward(t0, (dW is null ? 2.0 : 4.0) * m * l.In * l.Out);
    }

    /// <summary>Splits a fused QKV output [m, 3·D] into q, k, v (GPT-2: column blocks; NeoX: per head), or back (the
    /// gradient) when <paramref name="join"/>.</summary>
    void SplitQkv(float[] fused, float[] q, float[] k, float[] v, int m, bool join)
    {
        var c = Config;
        int d = c.Hidden, hd = c.HeadDim;
        void Move(int fusedAt, float[] dst, int dstAt, int n)
        {
            if (join) dst.AsSpan(dstAt, n).CopyTo(fused.AsSpan(fusedAt, n));
            else fused.AsSpan(fusedAt, n).CopyTo(dst.AsSpan(dstAt, n));
        }
        for (int r = 0; r < m; r++)
        {
            int f = r * 3 * d;
            if (c.Arch == Architecture.Gpt2)
            {
                Move(f, q, r * d, d); Move(f + d, k, r * d, d); Move(f + 2 * d, v, r * d, d);
            }
            else
                for (int h = 0; h < c.Heads; h++)
                {
                    Move(f + h * 3 * hd, q, r * d + h * hd, hd);
                    Move(f + h * 3 * hd + hd, k, r * d + h * hd, hd);
                    Move(f + h * 3 * hd + 2 * hd, v, r * d + h * hd, hd);
                }
        }
    }

    void ApplyActivation(float[] a, float[]? u, float[] act)
    {
        switch (Config.Act)
        {
            case HiddenAct.Silu: if (u is null) Kernels.Silu(a, act); else Kernels.SiluMul(a, u, act); break;
            case HiddenAct.GeluTanh: if (u is null) Kernels.GeluTanh(a, act); else Kernels.GeluTanhMul(a, u, act); break;
            case HiddenAct.GeluErf: if (u is null) Kernels.GeluErf(a, act); else Kernels.GeluErfMul(a, u, act); break;
        }
    }

    // h: [m, Hidden] residual, updated in place
    LayerTrace LayerForward(int i, float[] h, TokenBatch batch)
    {
        var c = Config;
        var blk = _blocks[i];
        int m = batch.Count, d = c.Hidden, hd = c.HeadDim, qW = c.Heads * hd, kvW = c.KvHeads * hd, inter = c.Intermediate;
        float[] F(long n) => Tensor.Allocate(n, false);
        var n1 = F((long)m * d);
        var t = new LayerTrace
        {
            X = (float[])h.Clone(), N1 = n1, S1 = NormForward(blk.AttnIn, h, m, n1), Q = F((long)m * qW), K = F((long)m * kvW), V = F((long)m * kvW),
            Lse = new float[m * c.Heads], O = F((long)m * qW), N2 = F((long)m * d), S2 = new NormTrace(0), A = F((long)m * inter), Act = F((long)m * inter),
        };
        if (blk.Qkv is { } qkv)
        {
            var fused = F((long)m * 3 * d);
            Project(qkv, t.N1, m, fused);
            SplitQkv(fused, t.Q, t.K, t.V, m, join: false);
        }
        else
        {
            Project(blk.Q!, t.N1, m, t.Q);
            Project(blk.K!, t.N1, m, t.K);
            Project(blk.V!, t.N1, m, t.V);
        }
        if (blk.QNorm is { } qn)
        {
            t.QRaw = (float[])t.Q.Clone(); t.KRaw = (float[])t.K.Clone();
            var qSpec = new NormSpec(NormKind.RmsNorm, qn, null);
            var kSpec = new NormSpec(NormKind.RmsNorm, blk.KNorm!, null);
            t.QS = NormForward(qSpec, t.QRaw, m * c.Heads, t.Q);
            t.KS = NormForward(kSpec, t.KRaw, m * c.KvHeads, t.K);
        }
        if (_rope is not null)
        {
            _rope.Apply(t.Q, m, c.Heads, hd, batch.Positions);
            _rope.Apply(t.K, m, c.KvHeads, hd, batch.Positions);
        }
        long ta = Profile.Now();
        BackwardKernels.AttentionForward(ShapeOf(i, batch), t.Q, t.K, t.V, t.O, t.Lse);
        Profile.AddAttention(ta);
        var proj = F((long)m * d);
        Project(blk.O, t.O, m, proj);
        if (blk.AttnOut is { } ao)
        {
            t.Proj = proj;
            proj = F((long)m * d);
            t.ProjS = NormForward(ao, t.Proj, m, proj);
        }

        float[] mlpIn;
        if (c.ParallelResidual) mlpIn = h; // NeoX: both norms read the block input
        else
        {
            t.H2 = proj; // H2 = h + attn
            TensorPrimitives.Add(proj.AsSpan(0, m * d), h.AsSpan(0, m * d), t.H2);
            mlpIn = t.H2;
        }
        t.S2 = NormForward(blk.MlpIn, mlpIn, m, t.N2);
        if (blk.Gate is { } gate)
        {
            t.U = F((long)m * inter);
            Project(gate, t.N2, m, t.A);
            Project(blk.Up, t.N2, m, t.U);
        }
        else Project(blk.Up, t.N2, m, t.A);
        ApplyActivation(t.A, t.U, t.Act);
        var mo = F((long)m * d);
        Project(blk.Down, t.Act, m, mo);
        if (blk.MlpOut is { } mn)
        {
            t.MlpRaw = mo;
            mo = F((long)m * d);
            t.MlpS = NormForward(mn, t.MlpRaw, m, mo);
        }
        if (c.ParallelResidual)
            for (int j = 0; j < m * d; j++) h[j] = (mo[j] + proj[j]) + h[j];
        else TensorPrimitives.Add(mo.AsSpan(0, m * d), t.H2!.AsSpan(0, m * d), h); // h ← H2 + mlp
        return t;
    }

    // ---------------------------------------------------------------- backward

    /// <summary>Back-propagates dLoss/dLogits <paramref name="dLogitsMV"/> [Batch · Seq, Vocab] through the trace. Adds
    /// the gradient of every parameter named in <paramref name="grads"/> to its array (parameters not named there get
    /// no weight-gradient product at all; null skips them all). Returns dLoss/d(residual entering the trace's first
    /// block) [Batch · Seq, Hidden]; for a trace from the embedding that is the gradient of blocks.0.hook_resid_pre.</summary>
    public float[] Backward(Trace trace, ReadOnlySpan<float> dLogitsMV, ModelParameters? grads)
    {
        var c = Config;
        int m = trace.Batch.Count, d = c.Hidden;
        if (dLogitsMV.Length != m * c.Vocab) throw new ArgumentException($"dLogits has {dLogitsMV.Length} values; the trace needs {m} × {c.Vocab}");
        float[] dLogits = dLogitsMV.ToArray();
        if (c.FinalSoftcap is { } cap) BackwardKernels.SoftCap(trace.Logits, cap, dLogits);
        var dNormed = Tensor.Allocate((long)m * d, false);
        long t0 = Profile.Now();
        var dUnembed = grads?.Get(_unembedName);
        BackwardKernels.Linear(dLogits, trace.FinalNormed, Parameters[_unembedName], m, d, c.Vocab, dNormed, false, dUnembed, null);
        Profile.AddGemmBackward(t0, (dUnembed is null ? 2.0 : 4.0) * m * d * c.Vocab);
        var dh = Tensor.Allocate((long)m * d, false);
        NormBackward(_finalNorm, trace.FinalStats, dNormed, trace.FinalIn, m, dh, false, grads);
        for (int i = c.Layers - 1; i >= trace.StartLayer; i--)
            LayerBackward(i, trace.Layers[i - trace.StartLayer], trace.Batch, dh, grads);
        if (trace.FromEmbedding)
        {
            var dE = grads?.Get(_embedName);
            var dP = _positionName is null ? null : grads?.Get(_positionName);
            for (int r = 0; r < m; r++)
            {
                if (trace.Batch.Mask[r] == 0) continue;
                var g = dh.AsSpan(r * d, d);
                if (dE is not null)
                {
                    var row = dE.AsSpan(trace.Batch.Ids[r] * d, d);
                    if (c.EmbedScale == 1f) TensorPrimitives.Add(row, g, row);
                    else TensorPrimitives.MultiplyAdd(g, c.EmbedScale, row, row);
                }
                if (dP is not null)
                {
                    var row = dP.AsSpan(trace.Batch.Positions[r] * d, d);
                    TensorPrimitives.Add(row, g, row);
                }
            }
        }
        return dh;
    }

    // dh: [m, Hidden] = dLoss/d(block output) on entry, dLoss/d(block input) on return
    void LayerBackward(int i, LayerTrace t, TokenBatch batch, float[] dh, ModelParameters? grads)
    {
        var c = Config;
        var blk = _blocks[i];
        int m = batch.Count, d = c.Hidden, hd = c.HeadDim, qW = c.Heads * hd, kvW = c.KvHeads * hd, inter = c.Intermediate;
        float[] F(long n) => Tensor.Allocate(n, false);

        // MLP branch (its output feeds the block output directly)
        var dMlp = dh;
        if (blk.MlpOut is { } mn)
        {
            dMlp = F((long)m * d);
            NormBackward(mn, t.MlpS!, dh, t.MlpRaw!, m, dMlp, false, grads);
        }
        var dAct = F((long)m * inter);
        ProjectBackward(blk.Down, dMlp, t.Act, m, dAct, false, grads);
        var dA = F((long)m * inter);
        var dU = t.U is null ? null : F((long)m * inter);
        BackwardKernels.Activation(c.Act, dAct.AsSpan(0, m * inter), t.A, t.U, dA, dU);
        var dN2 = F((long)m * d);
        if (blk.Gate is { } gate)
        {
            ProjectBackward(gate, dA, t.N2, m, dN2, false, grads);
            ProjectBackward(blk.Up, dU!, t.N2, m, dN2, true, grads);
        }
        else ProjectBackward(blk.Up, dA, t.N2, m, dN2, false, grads);

        // attention branch: its output feeds H2 (sequential) or the block output (parallel)
        float[] dProjOut;
        if (c.ParallelResidual)
        {
            dProjOut = (float[])dh.Clone();
            NormBackward(blk.MlpIn, t.S2, dN2, t.X, m, dh, true, grads);
        }
        else
        {
            NormBackward(blk.MlpIn, t.S2, dN2, t.H2!, m, dh, true, grads); // dh is now dH2
            dProjOut = dh;
        }
        var dProj = dProjOut;
        if (blk.AttnOut is { } ao)
        {
            dProj = F((long)m * d);
            NormBackward(ao, t.ProjS!, dProjOut, t.Proj!, m, dProj, false, grads);
        }
        var dO = F((long)m * qW);
        ProjectBackward(blk.O, dProj, t.O, m, dO, false, grads);
        var dQ = F((long)m * qW);
        var dK = F((long)m * kvW);
        var dV = F((long)m * kvW);
        long ta = Profile.Now();
        BackwardKernels.AttentionBackward(ShapeOf(i, batch), t.Q, t.K, t.V, t.O, t.Lse, dO, dQ, dK, dV);
        Profile.AddAttention(ta);
        if (_rope is not null)
        {
            _rope.ApplyBackward(dQ, m, c.Heads, hd, batch.Positions);
            _rope.ApplyBackward(dK, m, c.KvHeads, hd, batch.Positions);
        }
        if (blk.QNorm is { } qn)
        {
            var dQRaw = F((long)m * qW);
            var dKRaw = F((long)m * kvW);
            NormBackward(new NormSpec(NormKind.RmsNorm, qn, null), t.QS!, dQ, t.QRaw!, m * c.Heads, dQRaw, false, grads);
            NormBackward(new NormSpec(NormKind.RmsNorm, blk.KNorm!, null), t.KS!, dK, t.KRaw!, m * c.KvHeads, dKRaw, false, grads);
            dQ = dQRaw; dK = dKRaw;
        }
        var dN1 = F((long)m * d);
        if (blk.Qkv is { } qkv)
        {
            var dFused = F((long)m * 3 * d);
            SplitQkv(dFused, dQ, dK, dV, m, join: true);
            ProjectBackward(qkv, dFused, t.N1, m, dN1, false, grads);
        }
        else
        {
            ProjectBackward(blk.Q!, dQ, t.N1, m, dN1, false, grads);
            ProjectBackward(blk.K!, dK, t.N1, m, dN1, true, grads);
            ProjectBackward(blk.V!, dV, t.N1, m, dN1, true, grads);
        }
        NormBackward(blk.AttnIn, t.S1, dN1, t.X, m, dh, true, grads);
    }

    // ---------------------------------------------------------------- conveniences

    /// <summary>Next-token targets of a batch: row position t predicts the id at t + 1 when both are real tokens and
    /// <paramref name="lossMask"/> (if given, [Batch · Seq], per target token) counts it; −1 elsewhere.</summary>
    public static int[] NextTokenTargets(TokenBatch batch, ReadOnlySpan<byte> lossMask = default)
    {
        var targets = new int[batch.Count];
        for (int b = 0; b < batch.Batch; b++)
            for (int t = 0; t < batch.Seq; t++)
            {
                int i = b * batch.Seq + t;
                bool counted = t + 1 < batch.Seq && batch.Mask[i] != 0 && batch.Mask[i + 1] != 0 && (lossMask.IsEmpty || lossMask[i + 1] != 0);
                targets[i] = counted ? batch.Ids[i + 1] : -1;
            }
        return targets;
    }

    /// <summary>Mean next-token cross-entropy over the counted <paramref name="targets"/> (see <see cref="NextTokenTargets"/>),
    /// adding its gradient to <paramref name="grads"/> scaled by <paramref name="gradScale"/> / count (so gradient
    /// accumulation over micro-batches can weight each one). Returns the summed loss and the count.</summary>
    public (double LossSum, int Count) LossAndGradients(TokenBatch batch, int[] targets, ModelParameters grads, double? normaliser = null)
    {
        var trace = Forward(batch);
        int counted = 0;
        foreach (int t in targets) if (t >= 0) counted++;
        if (counted == 0) return (0, 0);
        var dLogits = Tensor.Allocate(trace.Logits.Length, false);
        float scale = (float)(1.0 / (normaliser ?? counted));
        var (loss, count) = BackwardKernels.CrossEntropy(trace.Logits, targets, batch.Count, Config.Vocab, scale, dLogits);
        Backward(trace, dLogits, grads);
        return (loss, count);
    }

    /// <summary>d<paramref name="loss"/>/d(residual entering block <paramref name="layer"/>) [Batch · Seq, Hidden] for a
    /// scalar loss of the logits: <paramref name="loss"/> gets the logits [Batch · Seq, Vocab] and fills dLoss/dLogits
    /// (same shape), returning the loss value. No weight gradient is computed.</summary>
    public (double Loss, float[] Gradient) ResidualGradient(int layer, ReadOnlySpan<float> residualMD, TokenBatch batch,
        Func<float[], float[], double> loss)
    {
        var trace = ForwardFrom(layer, residualMD, batch);
        var dLogits = Tensor.Allocate(trace.Logits.Length);
        double value = loss(trace.Logits, dLogits);
        return (value, Backward(trace, dLogits, null));
    }
}

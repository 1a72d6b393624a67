using System.Numerics.Tensors;
using Finetrace.Tensors;
using Tensor = Finetrace.Tensors.Tensor;

namespace Finetrace.Models.Backward;

/// <summary>
/// A Llama-block causal LM (llama, mistral, qwen2 with q/k/v biases, qwen3 with q/k norms) in float32 with a forward
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
    readonly Rope _rope;
    readonly string _embedName, _unembedName;

    public DifferentiableLM(ModelParameters parameters)
    {
        ModelParameters.CheckSupported(parameters.Config);
        Parameters = parameters;
        _rope = new Rope(parameters.Config);
        _embedName = ModelLayout.EmbedName(Config);
        _unembedName = ModelLayout.UnembedName(Config);
    }

    static string P(int layer, string name) => $"model.layers.{layer}.{name}";

    /// <summary>Where training time goes (seconds) and the GEMM work done, for <c>bench lm-train</c>; off unless enabled.</summary>
    internal sealed class Profile
    {
        public double Gemm, Attention;
        public double GemmFlops;
        public static Profile? Current;
        public static long Now() => Current is null ? 0 : System.Diagnostics.Stopwatch.GetTimestamp();
        public static double Since(long t0) => (System.Diagnostics.Stopwatch.GetTimestamp() - t0) / (double)System.Diagnostics.Stopwatch.Frequency;
        public static void AddGemm(long t0, double flops) { if (Current is { } p) { p.Gemm += Since(t0); p.GemmFlops += flops; } }
        public static void AddAttention(long t0) { if (Current is { } p) p.Attention += Since(t0); }
    }

    /// <summary>What one block's backward needs (all [rows, width] row-major).</summary>
    internal sealed class LayerTrace
    {
        public required float[] X, Inv1, N1, Q, K, V, Lse, O, H2, Inv2, N2, A, U, Act;
        public float[]? QRaw, KRaw, QInv, KInv; // qwen3 q/k norms: the projections before the norm and their 1/rms
    }

    /// <summary>The activations of one forward kept for <see cref="Backward"/>, and its logits.</summary>
    public sealed class Trace
    {
        public required TokenBatch Batch { get; init; }
        /// <summary>The block whose input residual the trace starts from (0 when it starts at the embedding).</summary>
        public required int StartLayer { get; init; }
        public required bool FromEmbedding { get; init; }
        internal LayerTrace[] Layers = [];
        internal float[] FinalIn = [], FinalInv = [], FinalNormed = [];
        /// <summary>Logits [Batch · Seq, Vocab].</summary>
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

    /// <summary>The embedding rows E[ids] (× embedding scale), [Batch · Seq, Hidden].</summary>
    public float[] Embed(TokenBatch batch)
    {
        int d = Config.Hidden;
        var e = Parameters[_embedName];
        var h = Tensor.Allocate((long)batch.Count * d, false);
        for (int i = 0; i < batch.Count; i++)
        {
            int id = batch.Ids[i];
            if ((uint)id >= (uint)Config.Vocab)
                throw new ArgumentOutOfRangeException(nameof(batch), $"token id {id} (row {i / batch.Seq}, position {i % batch.Seq}) is outside the vocabulary of {Config.Vocab}");
            var row = h.AsSpan(i * d, d);
            e.AsSpan(id * d, d).CopyTo(row);
            if (Config.EmbedScale != 1f) TensorPrimitives.Multiply(row, Config.EmbedScale, row);
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
        trace.FinalInv = new float[m];
        trace.FinalNormed = Tensor.Allocate((long)m * d, false);
        BackwardKernels.RmsNormForward(h, Parameters["model.norm.weight"], m, c.NormEps, c.Norm == NormKind.GemmaRmsNorm, trace.FinalNormed, trace.FinalInv);
        trace.Logits = Tensor.Allocate((long)m * c.Vocab, false);
        long t0 = Profile.Now();
        Gemm.MatMulNT(trace.FinalNormed, Parameters[_unembedName], m, d, c.Vocab, trace.Logits);
        Profile.AddGemm(t0, 2.0 * m * d * c.Vocab);
        return trace;
    }

    BackwardKernels.AttentionShape ShapeOf(int layer, TokenBatch batch)
    {
        var c = Config;
        return new(batch.Batch, batch.Seq, c.Heads, c.KvHeads, c.HeadDim, c.AttnScale, c.SlidingLayers[layer] ? c.SlidingWindow : 0,
            batch.FirstReal, batch.LastReal);
    }

    void Project(int layer, string name, float[] x, int m, int inF, int outF, float[] y)
    {
        long t0 = Profile.Now();
        Gemm.MatMulNT(x, Parameters[P(layer, name + ".weight")], m, inF, outF, y);
        if (Parameters.Get(P(layer, name + ".bias")) is { } b)
            for (int r = 0; r < m; r++) TensorPrimitives.Add(y.AsSpan(r * outF, outF), b, y.AsSpan(r * outF, outF));
        Profile.AddGemm(t0, 2.0 * m * inF * outF);
    }

    // h: [m, Hidden] residual, updated in place
    LayerTrace LayerForward(int i, float[] h, TokenBatch batch)
    {
        var c = Config;
        int m = batch.Count, d = c.Hidden, hd = c.HeadDim, qW = c.Heads * hd, kvW = c.KvHeads * hd, inter = c.Intermediate;
        bool gemmaNorm = c.Norm == NormKind.GemmaRmsNorm;
        float[] F(long n) => Tensor.Allocate(n, false);
        var t = new LayerTrace
        {
            X = (float[])h.Clone(), Inv1 = new float[m], N1 = F((long)m * d), Q = F((long)m * qW), K = F((long)m * kvW), V = F((long)m * kvW),
            Lse = new float[m * c.Heads], O = F((long)m * qW), H2 = F((long)m * d), Inv2 = new float[m], N2 = F((long)m * d),
            A = F((long)m * inter), U = F((long)m * inter), Act = F((long)m * inter),
        };
        BackwardKernels.RmsNormForward(h, Parameters[P(i, "input_layernorm.weight")], m, c.NormEps, gemmaNorm, t.N1, t.Inv1);
        Project(i, "self_attn.q_proj", t.N1, m, d, qW, t.Q);
        Project(i, "self_attn.k_proj", t.N1, m, d, kvW, t.K);
        Project(i, "self_attn.v_proj", t.N1, m, d, kvW, t.V);
        if (c.QkNorm)
        {
            t.QRaw = (float[])t.Q.Clone(); t.KRaw = (float[])t.K.Clone();
            t.QInv = new float[m * c.Heads]; t.KInv = new float[m * c.KvHeads];
            BackwardKernels.RmsNormForward(t.QRaw, Parameters[P(i, "self_attn.q_norm.weight")], m * c.Heads, c.NormEps, false, t.Q, t.QInv);
            BackwardKernels.RmsNormForward(t.KRaw, Parameters[P(i, "self_attn.k_norm.weight")], m * c.KvHeads, c.NormEps, false, t.K, t.KInv);
        }
        _rope.Apply(t.Q, m, c.Heads, hd, batch.Positions);
        _rope.Apply(t.K, m, c.KvHeads, hd, batch.Positions);
        long ta = Profile.Now();
        BackwardKernels.AttentionForward(ShapeOf(i, batch), t.Q, t.K, t.V, t.O, t.Lse);
        Profile.AddAttention(ta);
        Project(i, "self_attn.o_proj", t.O, m, qW, d, t.H2);
        TensorPrimitives.Add(t.H2.AsSpan(0, m * d), h.AsSpan(0, m * d), t.H2); // H2 = h + attn
        BackwardKernels.RmsNormForward(t.H2, Parameters[P(i, "post_attention_layernorm.weight")], m, c.NormEps, gemmaNorm, t.N2, t.Inv2);
        Project(i, "mlp.gate_proj", t.N2, m, d, inter, t.A);
        Project(i, "mlp.up_proj", t.N2, m, d, inter, t.U);
        Kernels.SiluMul(t.A, t.U, t.Act);
        Project(i, "mlp.down_proj", t.Act, m, inter, d, h);
        TensorPrimitives.Add(h.AsSpan(0, m * d), t.H2.AsSpan(0, m * d), h); // h ← H2 + mlp
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
        bool gemmaNorm = c.Norm == NormKind.GemmaRmsNorm;
        var dNormed = Tensor.Allocate((long)m * d, false);
        long t0 = Profile.Now();
        var dUnembed = grads?.Get(_unembedName);
        BackwardKernels.Linear(dLogitsMV, trace.FinalNormed, Parameters[_unembedName], m, d, c.Vocab, dNormed, false, dUnembed, null);
        Profile.AddGemm(t0, (dUnembed is null ? 2.0 : 4.0) * m * d * c.Vocab);
        var dh = Tensor.Allocate((long)m * d, false);
        BackwardKernels.RmsNorm(dNormed, trace.FinalIn, trace.FinalInv, Parameters["model.norm.weight"], m, gemmaNorm, dh, false, grads?.Get("model.norm.weight"));
        for (int i = c.Layers - 1; i >= trace.StartLayer; i--)
            LayerBackward(i, trace.Layers[i - trace.StartLayer], trace.Batch, dh, grads);
        if (trace.FromEmbedding && grads?.Get(_embedName) is { } dE)
            for (int r = 0; r < m; r++)
            {
                if (trace.Batch.Mask[r] == 0) continue;
                var row = dE.AsSpan(trace.Batch.Ids[r] * d, d);
                if (c.EmbedScale == 1f) TensorPrimitives.Add(row, dh.AsSpan(r * d, d), row);
                else TensorPrimitives.MultiplyAdd(dh.AsSpan(r * d, d), c.EmbedScale, row, row);
            }
        return dh;
    }

    void LinearBack(int layer, string name, float[] dY, float[] x, int m, int inF, int outF, Span<float> dX, bool accumulateDx, ModelParameters? grads)
    {
        long t0 = Profile.Now();
        var dW = grads?.Get(P(layer, name + ".weight"));
        BackwardKernels.Linear(dY, x, Parameters[P(layer, name + ".weight")], m, inF, outF, dX, accumulateDx, dW, grads?.Get(P(layer, name + ".bias")));
        Profile.AddGemm(t0, (dW is null ? 2.0 : 4.0) * m * inF * outF);
    }

    // dh: [m, Hidden] = dLoss/d(block output) on entry, dLoss/d(block input) on return
    void LayerBackward(int i, LayerTrace t, TokenBatch batch, float[] dh, ModelParameters? grads)
    {
        var c = Config;
        int m = batch.Count, d = c.Hidden, hd = c.HeadDim, qW = c.Heads * hd, kvW = c.KvHeads * hd, inter = c.Intermediate;
        bool gemmaNorm = c.Norm == NormKind.GemmaRmsNorm;
        float[] F(long n) => Tensor.Allocate(n, false);

        // MLP: out = down(silu(gate(n2)) ⊙ up(n2)); dh is also dH2 through the residual
        var dAct = F((long)m * inter);
        LinearBack(i, "mlp.down_proj", dh, t.Act, m, inter, d, dAct, false, grads);
        var dA = F((long)m * inter);
        var dU = F((long)m * inter);
        BackwardKernels.SiluMul(dAct.AsSpan(0, m * inter), t.A, t.U, dA, dU);
        var dN2 = F((long)m * d);
        LinearBack(i, "mlp.gate_proj", dA, t.N2, m, d, inter, dN2, false, grads);
        LinearBack(i, "mlp.up_proj", dU, t.N2, m, d, inter, dN2, true, grads);
        BackwardKernels.RmsNorm(dN2, t.H2, t.Inv2, Parameters[P(i, "post_attention_layernorm.weight")], m, gemmaNorm, dh, true,
            grads?.Get(P(i, "post_attention_layernorm.weight")));

        // attention: H2 = x + o_proj(attn(q, k, v)); dh is now dH2, and also dX through the residual
        var dO = F((long)m * qW);
        LinearBack(i, "self_attn.o_proj", dh, t.O, m, qW, d, dO, false, grads);
        var dQ = F((long)m * qW);
        var dK = F((long)m * kvW);
        var dV = F((long)m * kvW);
        long ta = Profile.Now();
        BackwardKernels.AttentionBackward(ShapeOf(i, batch), t.Q, t.K, t.V, t.O, t.Lse, dO, dQ, dK, dV);
        Profile.AddAttention(ta);
        _rope.ApplyBackward(dQ, m, c.Heads, hd, batch.Positions);
        _rope.ApplyBackward(dK, m, c.KvHeads, hd, batch.Positions);
        if (c.QkNorm)
        {
            var dQRaw = F((long)m * qW);
            var dKRaw = F((long)m * kvW);
            BackwardKernels.RmsNorm(dQ, t.QRaw, t.QInv, Parameters[P(i, "self_attn.q_norm.weight")], m * c.Heads, false, dQRaw, false, grads?.Get(P(i, "self_attn.q_norm.weight")));
            BackwardKernels.RmsNorm(dK, t.KRaw, t.KInv, Parameters[P(i, "self_attn.k_norm.weight")], m * c.KvHeads, false, dKRaw, false, grads?.Get(P(i, "self_attn.k_norm.weight")));
            dQ = dQRaw; dK = dKRaw;
        }
        var dN1 = F((long)m * d);
        LinearBack(i, "self_attn.q_proj", dQ, t.N1, m, d, qW, dN1, false, grads);
        LinearBack(i, "self_attn.k_proj", dK, t.N1, m, d, kvW, dN1, true, grads);
        LinearBack(i, "self_attn.v_proj", dV, t.N1, m, d, kvW, dN1, true, grads);
        BackwardKernels.RmsNorm(dN1, t.X, t.Inv1, Parameters[P(i, "input_layernorm.weight")], m, gemmaNorm, dh, true,
            grads?.Get(P(i, "input_layernorm.weight")));
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

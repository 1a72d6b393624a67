using Finetrace.Models;
using ILGPU;
using ILGPU.Runtime;

namespace Finetrace.Cuda;

/// <summary>
/// The non-GEMM kernels of a transformer forward beyond <see cref="DeviceKernels"/> (which has RmsNorm, SwiGlu,
/// SoftmaxRows, Adam). Each mirrors a CPU peer in Finetrace.Tensors.Kernels / Finetrace.Models and is tested against it
/// on ILGPU's CPU accelerator (tests/Finetrace.Tests/Cuda/ForwardKernelsTests.cs). All calls are asynchronous on the
/// accelerator's default stream. Kernels are compiled on first use, so a context that never runs a forward never
/// compiles them.
/// SIGNATURES FIXED BY THE LEAD (the device forward is written against them in parallel); the two *Reference methods,
/// <see cref="GroupSize"/> and <see cref="Synchronize"/> are additions.
/// Element-wise kernels run one thread per element; <see cref="LayerNorm"/> and <see cref="AttentionSoftmax"/> one
/// thread group per row with shared-memory reductions (their one-thread-per-row twins <see cref="LayerNormReference"/>
/// and <see cref="AttentionSoftmaxReference"/> are the slow, obvious references they are tested against).
/// Transcendentals go through <see cref="DeviceMath"/> (PTX has no MathF.Exp). Indices read from device buffers (token
/// ids, positions) cannot be checked on the host without a copy: an out-of-range one turns the affected outputs into
/// NaN instead of reading outside a buffer.
/// </summary>
public sealed class ForwardKernels
{
    readonly Accelerator accelerator;

    /// <summary>Threads per group of the group-per-row kernels (a power of two; the shared arrays are this long).</summary>
    const int MaxGroupSize = 256;
    readonly int groupSize;

    Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, LayerNormShape>? layerNorm;
    Action<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, LayerNormShape>? layerNormReference;
    Action<Index1D, ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<float>, RopeShape>? rope;
    Action<Index1D, ArrayView<float>, int>? activation;
    Action<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, int>? gatedActivation;
    Action<Index1D, ArrayView<int>, ArrayView<float>, int, float, ArrayView<float>>? embedF32;
    Action<Index1D, ArrayView<int>, ArrayView<ushort>, int, float, ArrayView<float>>? embedBf16;
    Action<Index1D, ArrayView<int>, ArrayView<float>, int, ArrayView<float>>? addPositions;
    Action<Index1D, ArrayView<float>, ArrayView<float>>? add;
    Action<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>>? addParallel;
    Action<Index1D, ArrayView<float>, ArrayView<float>, int>? addBias;
    Action<Index1D, ArrayView<float>, float>? softCap;
    Action<Index1D, ArrayView<float>, ArrayView<ushort>>? toBf16;
    Action<Index1D, ArrayView<ushort>, ArrayView<float>>? fromBf16;
    Action<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int>? splitQkv;
    Action<KernelConfig, ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<int>, AttentionShape>? attentionSoftmax;
    Action<Index1D, ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<int>, AttentionShape>? attentionSoftmaxReference;

    /// <summary>Threads per group of <see cref="LayerNorm"/> and <see cref="AttentionSoftmax"/>: 256, or the largest power
    /// of two the accelerator allows below that (16 on ILGPU's default CPU accelerator).</summary>
    public int GroupSize => groupSize;

    public ForwardKernels(Accelerator accelerator)
    {
        this.accelerator = accelerator;
        int g = 1;
        while (g * 2 <= Math.Min(MaxGroupSize, accelerator.MaxNumThreadsPerGroup)) g *= 2;
        groupSize = g;
    }

    /// <summary>LayerNorm of each row with weight and bias, as <c>Kernels.LayerNorm</c>.</summary>
    // xRD: [rows, D]; w, b: [D]; yRD: [rows, D] (may alias xRD)
    public void LayerNorm(ArrayView<float> xRD, ArrayView<float> w, ArrayView<float> b, int rows, float eps, ArrayView<float> yRD)
    {
        var shape = CheckLayerNorm(nameof(LayerNorm), xRD.Length, w.Length, b.Length, rows, eps, yRD.Length);
        if (rows == 0) return;
        layerNorm ??= accelerator.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, LayerNormShape>(LayerNormGroupKernel);
        layerNorm(new KernelConfig(Math.Min(rows, 1 << 20), groupSize), xRD, w, b, yRD, shape);
    }

    /// <summary>The slow, obvious twin of <see cref="LayerNorm"/>: one thread per row with sequential sums (the reference
    /// the group-per-row kernel is tested against). An empty <paramref name="b"/> means no bias, as on the CPU.</summary>
    // xRD: [rows, D]; w, b: [D]; yRD: [rows, D] (may alias xRD)
    public void LayerNormReference(ArrayView<float> xRD, ArrayView<float> w, ArrayView<float> b, int rows, float eps, ArrayView<float> yRD)
    {
        var shape = CheckLayerNorm(nameof(LayerNormReference), xRD.Length, w.Length, b.Length, rows, eps, yRD.Length);
        if (rows == 0) return;
        layerNormReference ??= accelerator.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, LayerNormShape>(LayerNormRowKernel);
        layerNormReference(rows, xRD, w, b, yRD, shape);
    }

    /// <summary>Rotary embedding in place over the first rotaryDim channels of every head, rotate-half layout, as
    /// <c>Rope.Apply</c>; cos/sin are the host-built tables of <c>Rope</c> (HF's cat(freqs, freqs)) for positions
    /// 0..P−1, uploaded once.</summary>
    // xMHd: [m, heads·headDim], in place; positions: [m]; cosPR, sinPR: [P, rotaryDim]
    public void Rope(ArrayView<float> xMHd, int m, int heads, int headDim, int rotaryDim, ArrayView<int> positions, ArrayView<float> cosPR, ArrayView<float> sinPR)
    {
        if (m < 0 || heads <= 0 || headDim <= 0 || xMHd.Length != (long)m * heads * headDim)
            throw new ArgumentException($"Rope: x has {xMHd.Length} values; expected m·heads·headDim = {m}·{heads}·{headDim} (heads, headDim > 0)");
        if (rotaryDim < 0 || rotaryDim > headDim || (rotaryDim & 1) != 0)
            throw new ArgumentException($"Rope: rotaryDim {rotaryDim} must be even and within headDim {headDim}");
        if (positions.Length < m)
            throw new ArgumentException($"Rope: positions has {positions.Length} values, need m = {m}");
        if (rotaryDim == 0 || m == 0) return;
        if (cosPR.Length != sinPR.Length || cosPR.Length == 0 || cosPR.Length % rotaryDim != 0)
            throw new ArgumentException($"Rope: cos has {cosPR.Length} values and sin {sinPR.Length}; both must be [P, rotaryDim = {rotaryDim}] with P ≥ 1");
        var shape = new RopeShape
        {
            Heads = heads, HeadDim = headDim, RotaryDim = rotaryDim,
            Positions = checked((int)(cosPR.Length / rotaryDim)),
        };
        rope ??= accelerator.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<float>, RopeShape>(RopeKernel);
        rope(checked(m * heads * (rotaryDim / 2)), xMHd, positions, cosPR, sinPR, shape);
    }

    /// <summary>x ← act(x) in place (<c>Kernels.Silu</c>, <c>GeluTanh</c>, <c>GeluErf</c>).</summary>
    // x: [n], in place
    public void Activation(HiddenAct act, ArrayView<float> x)
    {
        int kind = ActKind(act, nameof(Activation));
        if (x.Length == 0) return;
        activation ??= accelerator.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, int>(ActivationKernel);
        activation(checked((int)x.Length), x, kind);
    }

    /// <summary>dst ← act(gate) · up (<c>Kernels.SiluMul</c>, <c>GeluTanhMul</c>, <c>GeluErfMul</c>).</summary>
    // gate, up, dst: [n] (dst may alias gate)
    public void GatedActivation(HiddenAct act, ArrayView<float> gate, ArrayView<float> up, ArrayView<float> dst)
    {
        int kind = ActKind(act, nameof(GatedActivation));
        if (up.Length != gate.Length || dst.Length != gate.Length)
            throw new ArgumentException($"GatedActivation: gate has {gate.Length} values, up {up.Length}, dst {dst.Length}; all must be equal");
        if (gate.Length == 0) return;
        gatedActivation ??= accelerator.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, int>(GatedActivationKernel);
        gatedActivation(checked((int)gate.Length), gate, up, dst, kind);
    }

    /// <summary>hMD[r] = E[ids[r]] · scale, float32 table, as <c>CausalLM.Embed</c> (scale = Config.EmbedScale).</summary>
    // ids: [m]; eVD: [vocab, D]; hMD: [m, D]
    public void EmbedF32(ArrayView<int> ids, ArrayView<float> eVD, int d, float scale, ArrayView<float> hMD)
    {
        CheckEmbed(nameof(EmbedF32), ids.Length, eVD.Length, d, hMD.Length);
        if (ids.Length == 0) return;
        embedF32 ??= accelerator.LoadAutoGroupedStreamKernel<Index1D, ArrayView<int>, ArrayView<float>, int, float, ArrayView<float>>(EmbedF32Kernel);
        embedF32(checked((int)hMD.Length), ids, eVD, d, scale, hMD);
    }

    /// <summary>As <see cref="EmbedF32"/> from a bf16 table (raw bits).</summary>
    // ids: [m]; eVD: [vocab, D] bf16; hMD: [m, D]
    public void EmbedBf16(ArrayView<int> ids, ArrayView<ushort> eVD, int d, float scale, ArrayView<float> hMD)
    {
        CheckEmbed(nameof(EmbedBf16), ids.Length, eVD.Length, d, hMD.Length);
        if (ids.Length == 0) return;
        embedBf16 ??= accelerator.LoadAutoGroupedStreamKernel<Index1D, ArrayView<int>, ArrayView<ushort>, int, float, ArrayView<float>>(EmbedBf16Kernel);
        embedBf16(checked((int)hMD.Length), ids, eVD, d, scale, hMD);
    }

    /// <summary>hMD[r] += wpe[positions[r]] (GPT-2 learned positions).</summary>
    // positions: [m]; wpePD: [P, D]; hMD: [m, D]
    public void AddPositions(ArrayView<int> positions, ArrayView<float> wpePD, int d, ArrayView<float> hMD)
    {
        if (d <= 0 || hMD.Length != positions.Length * d || wpePD.Length == 0 || wpePD.Length % d != 0)
            throw new ArgumentException($"AddPositions: positions has {positions.Length} values, h {hMD.Length}, wpe {wpePD.Length}; expected h = m·D = {positions.Length}·{d} and wpe = P·D with P ≥ 1");
        if (positions.Length == 0) return;
        addPositions ??= accelerator.LoadAutoGroupedStreamKernel<Index1D, ArrayView<int>, ArrayView<float>, int, ArrayView<float>>(AddPositionsKernel);
        addPositions(checked((int)hMD.Length), positions, wpePD, d, hMD);
    }

    /// <summary>y ← y + x.</summary>
    // x, y: [n]
    public void Add(ArrayView<float> x, ArrayView<float> y)
    {
        if (x.Length != y.Length) throw new ArgumentException($"Add: x has {x.Length} values, y {y.Length}; they must be equal");
        if (x.Length == 0) return;
        add ??= accelerator.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>>(AddKernel);
        add(checked((int)x.Length), x, y);
    }

    /// <summary>h ← (mlp + attn) + h (NeoX parallel residual, the CPU order).</summary>
    // mlp, attn, h: [n]
    public void AddParallel(ArrayView<float> mlp, ArrayView<float> attn, ArrayView<float> h)
    {
        if (mlp.Length != h.Length || attn.Length != h.Length)
            throw new ArgumentException($"AddParallel: mlp has {mlp.Length} values, attn {attn.Length}, h {h.Length}; all must be equal");
        if (h.Length == 0) return;
        addParallel ??= accelerator.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>>(AddParallelKernel);
        addParallel(checked((int)h.Length), mlp, attn, h);
    }

    /// <summary>yMN[r, j] += bias[j].</summary>
    // yMN: [m, n]; bias: [n]
    public void AddBias(ArrayView<float> yMN, ArrayView<float> bias, int m, int n)
    {
        if (m < 0 || n <= 0 || yMN.Length != (long)m * n || bias.Length != n)
            throw new ArgumentException($"AddBias: y has {yMN.Length} values and bias {bias.Length}; expected y = m·n = {m}·{n} and bias = n (n > 0)");
        if (m == 0) return;
        addBias ??= accelerator.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, int>(AddBiasKernel);
        addBias(checked((int)yMN.Length), yMN, bias, n);
    }

    /// <summary>x ← tanh(x / cap) · cap, as <c>Kernels.SoftCap</c>.</summary>
    // x: [n], in place
    public void SoftCap(ArrayView<float> x, float cap)
    {
        if (!(cap > 0) || float.IsInfinity(cap)) throw new ArgumentException($"SoftCap: cap must be positive and finite, got {cap} (x has {x.Length} values)");
        if (x.Length == 0) return;
        softCap ??= accelerator.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, float>(SoftCapKernel);
        softCap(checked((int)x.Length), x, cap);
    }

    /// <summary>float32 → bf16 bits, round to nearest even (<see cref="Bf16.FromFloat"/>).</summary>
    // src: [n]; dst: [n]
    public void ToBf16(ArrayView<float> src, ArrayView<ushort> dst)
    {
        if (src.Length != dst.Length) throw new ArgumentException($"ToBf16: src has {src.Length} values, dst {dst.Length}; they must be equal");
        if (src.Length == 0) return;
        toBf16 ??= accelerator.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<ushort>>(ToBf16Kernel);
        toBf16(checked((int)src.Length), src, dst);
    }

    /// <summary>bf16 bits → float32, exact.</summary>
    // src: [n]; dst: [n]
    public void FromBf16(ArrayView<ushort> src, ArrayView<float> dst)
    {
        if (src.Length != dst.Length) throw new ArgumentException($"FromBf16: src has {src.Length} values, dst {dst.Length}; they must be equal");
        if (src.Length == 0) return;
        fromBf16 ??= accelerator.LoadAutoGroupedStreamKernel<Index1D, ArrayView<ushort>, ArrayView<float>>(FromBf16Kernel);
        fromBf16(checked((int)src.Length), src, dst);
    }

    /// <summary>Splits a fused QKV projection output into q, k, v [m, heads·headDim] each: GPT-2 columns
    /// [Q_all | K_all | V_all] (neox false), NeoX per head [q_h | k_h | v_h] (neox true); as <c>CausalLM.ProjectQkv</c>.</summary>
    // fusedM3D: [m, 3·heads·headDim]; q, k, v: [m, heads·headDim]
    public void SplitQkv(ArrayView<float> fusedM3D, int m, int heads, int headDim, bool neox, ArrayView<float> q, ArrayView<float> k, ArrayView<float> v)
    {
        long width = (long)heads * headDim;
        if (m < 0 || heads <= 0 || headDim <= 0 || fusedM3D.Length != 3 * m * width
            || q.Length != m * width || k.Length != m * width || v.Length != m * width)
            throw new ArgumentException($"SplitQkv: fused has {fusedM3D.Length} values, q {q.Length}, k {k.Length}, v {v.Length}; expected fused = m·3·heads·headDim = {m}·3·{heads}·{headDim} and q, k, v = m·heads·headDim each");
        if (m == 0) return;
        splitQkv ??= accelerator.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int>(SplitQkvKernel);
        splitQkv(checked((int)q.Length), fusedM3D, q, k, v, heads, headDim, neox ? 1 : 0);
    }

    /// <summary>
    /// Turns raw attention scores (q·k, from a batched GEMM) into attention weights in place, with exactly the
    /// visibility rule of <c>Kernels.AttendGroup</c>: in sequence row b, query i (absolute position a = qOffset + i)
    /// sees key j iff max(keyFirst[b], a − window + 1 if window &gt; 0) ≤ j ≤ min(a, keyLast[b], nk − 1).
    /// s_j = softcap·tanh(scale·score_j / softcap) when softcap &gt; 0, else scale·score_j; p = softmax(s) over the
    /// visible keys only (float32); invisible keys get weight 0; a query with no visible key, or i &gt; queryEnd[b] − qOffset,
    /// gets an all-zero row; a NaN or infinite visible score gives a NaN row.
    /// </summary>
    // scoresRHQK: [rows, heads, nq, nk], in place; keyFirst, keyLast, queryEnd: [rows]
    public void AttentionSoftmax(ArrayView<float> scoresRHQK, int rows, int heads, int nq, int nk, int qOffset,
        ArrayView<int> keyFirst, ArrayView<int> keyLast, ArrayView<int> queryEnd, int window, float scale, float softcap)
    {
        var shape = CheckAttention(nameof(AttentionSoftmax), scoresRHQK.Length, rows, heads, nq, nk, qOffset, keyFirst.Length, keyLast.Length, queryEnd.Length, window, scale, softcap);
        long scoreRows = (long)rows * heads * nq;
        if (scoreRows == 0) return;
        attentionSoftmax ??= accelerator.LoadStreamKernel<ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<int>, AttentionShape>(AttentionSoftmaxGroupKernel);
        int groups = (int)Math.Min(scoreRows, 1 << 20); // the kernel strides over any further rows
        attentionSoftmax(new KernelConfig(groups, groupSize), scoresRHQK, keyFirst, keyLast, queryEnd, shape);
    }

    /// <summary>The slow, obvious twin of <see cref="AttentionSoftmax"/>: the same result computed by one thread per
    /// score row with sequential loops (the reference the group-per-row kernel is tested against).</summary>
    // scoresRHQK: [rows, heads, nq, nk], in place; keyFirst, keyLast, queryEnd: [rows]
    public void AttentionSoftmaxReference(ArrayView<float> scoresRHQK, int rows, int heads, int nq, int nk, int qOffset,
        ArrayView<int> keyFirst, ArrayView<int> keyLast, ArrayView<int> queryEnd, int window, float scale, float softcap)
    {
        var shape = CheckAttention(nameof(AttentionSoftmaxReference), scoresRHQK.Length, rows, heads, nq, nk, qOffset, keyFirst.Length, keyLast.Length, queryEnd.Length, window, scale, softcap);
        long scoreRows = (long)rows * heads * nq;
        if (scoreRows == 0) return;
        attentionSoftmaxReference ??= accelerator.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<int>, AttentionShape>(AttentionSoftmaxRowKernel);
        attentionSoftmaxReference(checked((int)scoreRows), scoresRHQK, keyFirst, keyLast, queryEnd, shape);
    }

    public void Synchronize() => accelerator.Synchronize();

    // ---------------------------------------------------------------- argument checks

    static LayerNormShape CheckLayerNorm(string op, long x, long w, long b, int rows, float eps, long y)
    {
        if (rows < 0 || w == 0 || x != rows * w || y != rows * w)
            throw new ArgumentException($"{op}: x has {x} values and y {y}; expected rows·D = {rows}·{w} (D = weight length, > 0)");
        if (b != 0 && b != w)
            throw new ArgumentException($"{op}: bias has {b} values, weight has {w} (an empty bias means none)");
        return new LayerNormShape { Rows = rows, D = checked((int)w), Eps = eps, HasBias = b != 0 ? 1 : 0 };
    }

    static int ActKind(HiddenAct act, string op) => act switch
    {
        HiddenAct.Silu => 0,
        HiddenAct.GeluTanh => 1,
        HiddenAct.GeluErf => 2,
        _ => throw new ArgumentException($"{op}: unknown activation {act}"),
    };

    static void CheckEmbed(string op, long ids, long table, int d, long h)
    {
        if (d <= 0 || h != ids * d || table == 0 || table % d != 0)
            throw new ArgumentException($"{op}: ids has {ids} values, table {table}, h {h}; expected h = m·D = {ids}·{d} and table = vocab·D with vocab ≥ 1");
    }

    static AttentionShape CheckAttention(string op, long scores, int rows, int heads, int nq, int nk, int qOffset,
        long keyFirst, long keyLast, long queryEnd, int window, float scale, float softcap)
    {
        if (rows < 0 || heads <= 0 || nq <= 0 || nk <= 0 || scores != (long)rows * heads * nq * nk)
            throw new ArgumentException($"{op}: scores has {scores} values; expected rows·heads·nq·nk = {rows}·{heads}·{nq}·{nk} (heads, nq, nk > 0)");
        if (keyFirst < rows || keyLast < rows || queryEnd < rows)
            throw new ArgumentException($"{op}: keyFirst, keyLast, queryEnd have {keyFirst}, {keyLast}, {queryEnd} values; each needs rows = {rows}");
        if (qOffset < 0 || window < 0)
            throw new ArgumentException($"{op}: qOffset {qOffset} and window {window} must be ≥ 0 (window 0: no sliding window)");
        if (!float.IsFinite(scale) || !(softcap >= 0) || float.IsInfinity(softcap))
            throw new ArgumentException($"{op}: scale {scale} must be finite and softcap {softcap} finite and ≥ 0 (0: no soft-capping)");
        return new AttentionShape { Rows = rows, Heads = heads, Nq = nq, Nk = nk, QOffset = qOffset, Window = window, Scale = scale, Softcap = softcap };
    }

    // ---------------------------------------------------------------- scalar math (the CPU operators, one lane)

    // The scalar forms of the operator structs in Tensors.Kernels (GeluTanhOp, GeluErfOp, SiluOp, SoftCapOp with its
    // TanhOp, ErfcOp), same constants and operation order. Where the CPU fuses a multiply-add (Vector256.FusedMultiplyAdd)
    // these round the product first (ILGPU has no portable fma intrinsic); the difference is one rounding. exp is
    // DeviceMath.Exp (PTX has no MathF.Exp), within 2 ulp of the CPU's Vector256.Exp.

    // x / (1 + exp(−x))
    static float Silu(float x) => x / (1f + DeviceMath.Exp(-x));

    // x · sigmoid(2u), 2u = 2√(2/π)(x + 0.044715 x³)
    static float GeluTanh(float x)
    {
        const float c = 1.5957691216057308f; // 2·sqrt(2/π)
        float x2 = x * x;
        float twoU = x * (x2 * (c * 0.044715f) + c);
        return x / (1f + DeviceMath.Exp(-twoU));
    }

    // 0.5 · x · erfc(−x/√2), through erfc of |x|/√2 (no cancellation for negative x)
    static float GeluErf(float x)
    {
        float c = Erfc(MathF.Abs(x) * 0.70710678118654752f);
        float phi2 = x < 0f ? c : 2f - c;
        return 0.5f * x * phi2;
    }

    // erfc(z), z ≥ 0: Numerical Recipes' erfcc, t·exp(−z² + P(t)), t = 1/(1 + z/2)
    static float Erfc(float z)
    {
        float t = 1f / (z * 0.5f + 1f);
        float p = 0.17087277f;
        p = p * t + -0.82215223f;
        p = p * t + 1.48851587f;
        p = p * t + -1.13520398f;
        p = p * t + 0.27886807f;
        p = p * t + -0.18628806f;
        p = p * t + 0.09678418f;
        p = p * t + 0.37409196f;
        p = p * t + 1.00002368f;
        p = p * t + -1.26551223f;
        return t * DeviceMath.Exp(-z * z + p);
    }

    static float SoftCapValue(float x, float cap) => DeviceMath.Tanh(x / cap) * cap;

    static float Act(float x, int kind) => kind == 0 ? Silu(x) : kind == 1 ? GeluTanh(x) : GeluErf(x);

    // ---------------------------------------------------------------- kernel bodies

    // xRD: [rows, D]; w, b: [D]; yRD: [rows, D]; one thread per row: mean, biased variance (two passes, as the CPU),
    // then (x − mean)·rstd·w + b
    static void LayerNormRowKernel(Index1D row, ArrayView<float> xRD, ArrayView<float> w, ArrayView<float> b, ArrayView<float> yRD, LayerNormShape s)
    {
        int d = s.D;
        long o = (long)row.X * d;
        float sum = 0f;
        for (int i = 0; i < d; i++) sum += xRD[o + i];
        float mean = sum / d;
        float ss = 0f;
        for (int i = 0; i < d; i++) { float a = xRD[o + i] - mean; ss += a * a; }
        float rstd = 1f / MathF.Sqrt(ss / d + s.Eps);
        for (int i = 0; i < d; i++)
        {
            float y = (xRD[o + i] - mean) * rstd * w[i];
            yRD[o + i] = s.HasBias != 0 ? y + b[i] : y;
        }
    }

    // xRD: [rows, D]; w, b: [D]; yRD: [rows, D]; one group per row (groups stride over rows), the two sums reduced
    // through shared memory. y may alias x: every thread writes only the elements it read, after both reductions.
    static void LayerNormGroupKernel(ArrayView<float> xRD, ArrayView<float> w, ArrayView<float> b, ArrayView<float> yRD, LayerNormShape s)
    {
        var red = SharedMemory.Allocate<float>(MaxGroupSize);
        int tid = Group.IdxX, gs = Group.DimX, d = s.D;
        for (int row = Grid.IdxX; row < s.Rows; row += Grid.DimX)
        {
            long o = (long)row * d;
            float sum = 0f;
            for (int i = tid; i < d; i += gs) sum += xRD[o + i];
            float mean = GroupSum(sum, red) / d;
            float ss = 0f;
            for (int i = tid; i < d; i += gs) { float a = xRD[o + i] - mean; ss += a * a; }
            float rstd = 1f / MathF.Sqrt(GroupSum(ss, red) / d + s.Eps);
            for (int i = tid; i < d; i += gs)
            {
                float y = (xRD[o + i] - mean) * rstd * w[i];
                yRD[o + i] = s.HasBias != 0 ? y + b[i] : y;
            }
        }
    }

    // xMHd: [m, heads·headDim], in place; one thread per (row, head, rotated pair i < rotaryDim/2)
    static void RopeKernel(Index1D idx, ArrayView<float> xMHd, ArrayView<int> positions, ArrayView<float> cosPR, ArrayView<float> sinPR, RopeShape s)
    {
        int half = s.RotaryDim / 2;
        int i = idx.X % half, rh = idx.X / half; // rh = row·heads + head
        int r = rh / s.Heads;
        long o = (long)rh * s.HeadDim;
        int p = positions[r];
        if (p < 0 || p >= s.Positions) { xMHd[o + i] = float.NaN; xMHd[o + i + half] = float.NaN; return; }
        long t = (long)p * s.RotaryDim;
        float x1 = xMHd[o + i], x2 = xMHd[o + i + half];
        xMHd[o + i] = x1 * cosPR[t + i] - x2 * sinPR[t + i];
        xMHd[o + i + half] = x2 * cosPR[t + i + half] + x1 * sinPR[t + i + half];
    }

    // x: [n], in place; one thread per element
    static void ActivationKernel(Index1D i, ArrayView<float> x, int kind) => x[i] = Act(x[i], kind);

    // gate, up, dst: [n]; one thread per element
    static void GatedActivationKernel(Index1D i, ArrayView<float> gate, ArrayView<float> up, ArrayView<float> dst, int kind) =>
        dst[i] = Act(gate[i], kind) * up[i];

    // ids: [m]; eVD: [vocab, D]; hMD: [m, D]; one thread per output element
    static void EmbedF32Kernel(Index1D idx, ArrayView<int> ids, ArrayView<float> eVD, int d, float scale, ArrayView<float> hMD)
    {
        int r = idx.X / d, c = idx.X % d;
        int id = ids[r];
        hMD[idx] = id >= 0 && (long)id * d < eVD.Length ? eVD[(long)id * d + c] * scale : float.NaN;
    }

    // ids: [m]; eVD: [vocab, D] bf16 bits; hMD: [m, D]; one thread per output element
    static void EmbedBf16Kernel(Index1D idx, ArrayView<int> ids, ArrayView<ushort> eVD, int d, float scale, ArrayView<float> hMD)
    {
        int r = idx.X / d, c = idx.X % d;
        int id = ids[r];
        hMD[idx] = id >= 0 && (long)id * d < eVD.Length ? Bf16.ToFloat(eVD[(long)id * d + c]) * scale : float.NaN;
    }

    // positions: [m]; wpePD: [P, D]; hMD: [m, D]; one thread per element
    static void AddPositionsKernel(Index1D idx, ArrayView<int> positions, ArrayView<float> wpePD, int d, ArrayView<float> hMD)
    {
        int r = idx.X / d, c = idx.X % d;
        int p = positions[r];
        hMD[idx] = p >= 0 && (long)p * d < wpePD.Length ? hMD[idx] + wpePD[(long)p * d + c] : float.NaN;
    }

    // x, y: [n]
    static void AddKernel(Index1D i, ArrayView<float> x, ArrayView<float> y) => y[i] = y[i] + x[i];

    // mlp, attn, h: [n]
    static void AddParallelKernel(Index1D i, ArrayView<float> mlp, ArrayView<float> attn, ArrayView<float> h) => h[i] = (mlp[i] + attn[i]) + h[i];

    // yMN: [m, n]; bias: [n]
    static void AddBiasKernel(Index1D i, ArrayView<float> yMN, ArrayView<float> bias, int n) => yMN[i] = yMN[i] + bias[i % n];

    // x: [n], in place
    static void SoftCapKernel(Index1D i, ArrayView<float> x, float cap) => x[i] = SoftCapValue(x[i], cap);

    // src, dst: [n]
    static void ToBf16Kernel(Index1D i, ArrayView<float> src, ArrayView<ushort> dst) => dst[i] = Bf16.FromFloat(src[i]);

    // src, dst: [n]
    static void FromBf16Kernel(Index1D i, ArrayView<ushort> src, ArrayView<float> dst) => dst[i] = Bf16.ToFloat(src[i]);

    // fusedM3D: [m, 3·W]; q, k, v: [m, W], W = heads·headDim; one thread per element of q
    static void SplitQkvKernel(Index1D idx, ArrayView<float> fusedM3D, ArrayView<float> q, ArrayView<float> k, ArrayView<float> v, int heads, int headDim, int neox)
    {
        int width = heads * headDim;
        int r = idx.X / width, c = idx.X % width;
        long f = (long)r * 3 * width;
        long qAt, kAt, vAt;
        if (neox != 0)
        {
            int h = c / headDim, d = c % headDim;
            qAt = f + (long)h * 3 * headDim + d; kAt = qAt + headDim; vAt = qAt + 2 * headDim;
        }
        else
        {
            qAt = f + c; kAt = qAt + width; vAt = qAt + 2 * width;
        }
        q[idx] = fusedM3D[qAt];
        k[idx] = fusedM3D[kAt];
        v[idx] = fusedM3D[vAt];
    }

    // ---------------------------------------------------------------- attention softmax

    /// <summary>The visible keys [first, last] of score row <paramref name="row"/> (first &gt; last: none), the rule of
    /// <c>Kernels.AttendGroup</c> and <c>CausalLM.Attend</c>'s queryEnd.</summary>
    static void VisibleKeys(long row, ArrayView<int> keyFirst, ArrayView<int> keyLast, ArrayView<int> queryEnd, AttentionShape s, out int first, out int last)
    {
        int i = (int)(row % s.Nq);
        int b = (int)(row / ((long)s.Heads * s.Nq));
        int abs = s.QOffset + i;
        first = Math.Max(keyFirst[b], 0);
        if (s.Window > 0) first = Math.Max(first, abs - s.Window + 1);
        last = Math.Min(Math.Min(abs, keyLast[b]), s.Nk - 1);
        if (abs > queryEnd[b]) { first = 1; last = 0; }
    }

    /// <summary>s = scale·score, soft-capped when softcap &gt; 0; <paramref name="finite"/> is false when scale·score is
    /// NaN or infinite (tested before the cap, as the CPU does: a capped ∞ would look finite).</summary>
    static float ScaledScore(float score, AttentionShape s, out bool finite)
    {
        float x = score * s.Scale;
        finite = float.IsFinite(x);
        return s.Softcap > 0f ? SoftCapValue(x, s.Softcap) : x;
    }

    // scoresRHQK: [rows, heads, nq, nk], in place; one thread per score row, sequential loops (the reference)
    static void AttentionSoftmaxRowKernel(Index1D idx, ArrayView<float> scores, ArrayView<int> keyFirst, ArrayView<int> keyLast, ArrayView<int> queryEnd, AttentionShape s)
    {
        long row = idx.X;
        long o = row * s.Nk;
        VisibleKeys(row, keyFirst, keyLast, queryEnd, s, out int first, out int last);
        if (first > last)
        {
            for (int j = 0; j < s.Nk; j++) scores[o + j] = 0f;
            return;
        }
        float max = float.NegativeInfinity;
        bool allFinite = true;
        for (int j = first; j <= last; j++)
        {
            float v = ScaledScore(scores[o + j], s, out bool finite);
            allFinite &= finite;
            scores[o + j] = v;
            max = MathF.Max(max, v);
        }
        if (!allFinite)
        {
            for (int j = 0; j < s.Nk; j++) scores[o + j] = float.NaN;
            return;
        }
        float sum = 0f;
        for (int j = first; j <= last; j++) { float e = DeviceMath.Exp(scores[o + j] - max); scores[o + j] = e; sum += e; }
        float inv = 1f / sum;
        for (int j = 0; j < s.Nk; j++) scores[o + j] = j >= first && j <= last ? scores[o + j] * inv : 0f;
    }

    // scoresRHQK: [rows, heads, nq, nk], in place; one group per score row (groups stride over rows): the scaled scores
    // and their maximum, the exponentials and their sum, then the weights, each reduction through shared memory.
    static void AttentionSoftmaxGroupKernel(ArrayView<float> scores, ArrayView<int> keyFirst, ArrayView<int> keyLast, ArrayView<int> queryEnd, AttentionShape s)
    {
        var red = SharedMemory.Allocate<float>(MaxGroupSize);
        var flags = SharedMemory.Allocate<int>(MaxGroupSize);
        int tid = Group.IdxX, gs = Group.DimX;
        long rowCount = (long)s.Rows * s.Heads * s.Nq;
        for (long row = Grid.IdxX; row < rowCount; row += Grid.DimX)
        {
            long o = row * s.Nk;
            VisibleKeys(row, keyFirst, keyLast, queryEnd, s, out int first, out int last);
            if (first > last)
            {
                // the same for every thread of the group: no thread waits at a barrier the others skip
                for (int j = tid; j < s.Nk; j += gs) scores[o + j] = 0f;
                continue;
            }
            float max = float.NegativeInfinity;
            int bad = 0;
            for (int j = first + tid; j <= last; j += gs)
            {
                float v = ScaledScore(scores[o + j], s, out bool finite);
                if (!finite) bad = 1;
                scores[o + j] = v;
                max = MathF.Max(max, v);
            }
            max = GroupMax(max, red);
            bad = GroupOr(bad, flags);
            if (bad != 0)
            {
                for (int j = tid; j < s.Nk; j += gs) scores[o + j] = float.NaN;
                continue;
            }
            float sum = 0f;
            for (int j = first + tid; j <= last; j += gs) { float e = DeviceMath.Exp(scores[o + j] - max); scores[o + j] = e; sum += e; }
            float inv = 1f / GroupSum(sum, red);
            for (int j = tid; j < s.Nk; j += gs) scores[o + j] = j >= first && j <= last ? scores[o + j] * inv : 0f;
        }
    }

    // Tree reductions over the group (Group.DimX a power of two ≤ MaxGroupSize); every thread gets the result. The
    // closing barrier keeps the next reduction from overwriting red[0] before all have read it.
    static float GroupSum(float v, ArrayView<float> red) => GroupReduce<float, SumOp>(v, red);
    static float GroupMax(float v, ArrayView<float> red) => GroupReduce<float, MaxOp>(v, red);
    static int GroupOr(int v, ArrayView<int> red) => GroupReduce<int, OrOp>(v, red);

    static T GroupReduce<T, TOp>(T v, ArrayView<T> red) where T : unmanaged where TOp : struct, IGroupOp<T>
    {
        int tid = Group.IdxX;
        red[tid] = v;
        Group.Barrier();
        for (int stride = Group.DimX / 2; stride > 0; stride /= 2)
        {
            if (tid < stride) red[tid] = default(TOp).Apply(red[tid], red[tid + stride]);
            Group.Barrier();
        }
        T r = red[0];
        Group.Barrier();
        return r;
    }

    interface IGroupOp<T> { T Apply(T a, T b); }
    readonly struct SumOp : IGroupOp<float> { public float Apply(float a, float b) => a + b; }
    readonly struct MaxOp : IGroupOp<float> { public float Apply(float a, float b) => MathF.Max(a, b); }
    readonly struct OrOp : IGroupOp<int> { public int Apply(int a, int b) => a | b; }
}

/// <summary>The sizes of one <see cref="ForwardKernels.LayerNorm"/> call (HasBias 0: no bias).</summary>
public readonly struct LayerNormShape
{
    public int Rows { get; init; }
    public int D { get; init; }
    public float Eps { get; init; }
    public int HasBias { get; init; }
}

/// <summary>The sizes of one <see cref="ForwardKernels.Rope"/> call (Positions = rows of the cos/sin tables).</summary>
public readonly struct RopeShape
{
    public int Heads { get; init; }
    public int HeadDim { get; init; }
    public int RotaryDim { get; init; }
    public int Positions { get; init; }
}

/// <summary>The sizes and scalars of one <see cref="ForwardKernels.AttentionSoftmax"/> call, validated on the host.</summary>
public readonly struct AttentionShape
{
    public int Rows { get; init; }
    public int Heads { get; init; }
    public int Nq { get; init; }
    public int Nk { get; init; }
    public int QOffset { get; init; }
    public int Window { get; init; }
    public float Scale { get; init; }
    public float Softcap { get; init; }
}

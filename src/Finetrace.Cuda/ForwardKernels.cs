using Finetrace.Models;
using ILGPU;
using ILGPU.Runtime;

namespace Finetrace.Cuda;

/// <summary>
/// The non-GEMM kernels of a transformer forward beyond <see cref="DeviceKernels"/> (which has RmsNorm, SwiGlu,
/// SoftmaxRows, Adam). Each mirrors a CPU peer in Finetrace.Tensors.Kernels / Finetrace.Models and is tested against it
/// on ILGPU's CPU accelerator. All calls are asynchronous on the accelerator's default stream.
/// SIGNATURES FIXED BY THE LEAD (the device forward is written against them in parallel); bodies: fwdkernels helper.
/// </summary>
public sealed class ForwardKernels
{
    readonly Accelerator accelerator;

    public ForwardKernels(Accelerator accelerator)
    {
        this.accelerator = accelerator;
    }

    /// <summary>LayerNorm of each row with weight and bias, as <c>Kernels.LayerNorm</c>.</summary>
    // xRD: [rows, D]; w, b: [D]; yRD: [rows, D] (may alias xRD)
    public void LayerNorm(ArrayView<float> xRD, ArrayView<float> w, ArrayView<float> b, int rows, float eps, ArrayView<float> yRD) => throw new NotImplementedException();

    /// <summary>Rotary embedding in place over the first rotaryDim channels of every head, rotate-half layout, as
    /// <c>Rope.Apply</c>; cos/sin are the host-built tables of <c>Rope</c> (HF's cat(freqs, freqs)) for positions
    /// 0..P−1, uploaded once.</summary>
    // xMHd: [m, heads·headDim], in place; positions: [m]; cosPR, sinPR: [P, rotaryDim]
    public void Rope(ArrayView<float> xMHd, int m, int heads, int headDim, int rotaryDim, ArrayView<int> positions, ArrayView<float> cosPR, ArrayView<float> sinPR) => throw new NotImplementedException();

    /// <summary>x ← act(x) in place (<c>Kernels.Silu</c>, <c>GeluTanh</c>, <c>GeluErf</c>).</summary>
    // x: [n], in place
    public void Activation(HiddenAct act, ArrayView<float> x) => throw new NotImplementedException();

    /// <summary>dst ← act(gate) · up (<c>Kernels.SiluMul</c>, <c>GeluTanhMul</c>, <c>GeluErfMul</c>).</summary>
    // gate, up, dst: [n] (dst may alias gate)
    public void GatedActivation(HiddenAct act, ArrayView<float> gate, ArrayView<float> up, ArrayView<float> dst) => throw new NotImplementedException();

    /// <summary>hMD[r] = E[ids[r]] · scale, float32 table, as <c>CausalLM.Embed</c> (scale = Config.EmbedScale).</summary>
    // ids: [m]; eVD: [vocab, D]; hMD: [m, D]
    public void EmbedF32(ArrayView<int> ids, ArrayView<float> eVD, int d, float scale, ArrayView<float> hMD) => throw new NotImplementedException();

    /// <summary>As <see cref="EmbedF32"/> from a bf16 table (raw bits).</summary>
    // ids: [m]; eVD: [vocab, D] bf16; hMD: [m, D]
    public void EmbedBf16(ArrayView<int> ids, ArrayView<ushort> eVD, int d, float scale, ArrayView<float> hMD) => throw new NotImplementedException();

    /// <summary>hMD[r] += wpe[positions[r]] (GPT-2 learned positions).</summary>
    // positions: [m]; wpePD: [P, D]; hMD: [m, D]
    public void AddPositions(ArrayView<int> positions, ArrayView<float> wpePD, int d, ArrayView<float> hMD) => throw new NotImplementedException();

    /// <summary>y ← y + x.</summary>
    // x, y: [n]
    public void Add(ArrayView<float> x, ArrayView<float> y) => throw new NotImplementedException();

    /// <summary>h ← (mlp + attn) + h (NeoX parallel residual, the CPU order).</summary>
    // mlp, attn, h: [n]
    public void AddParallel(ArrayView<float> mlp, ArrayView<float> attn, ArrayView<float> h) => throw new NotImplementedException();

    /// <summary>yMN[r, j] += bias[j].</summary>
    // yMN: [m, n]; bias: [n]
    public void AddBias(ArrayView<float> yMN, ArrayView<float> bias, int m, int n) => throw new NotImplementedException();

    /// <summary>x ← tanh(x / cap) · cap, as <c>Kernels.SoftCap</c>.</summary>
    // x: [n], in place
    public void SoftCap(ArrayView<float> x, float cap) => throw new NotImplementedException();

    /// <summary>float32 → bf16 bits, round to nearest even (<see cref="Bf16.FromFloat"/>).</summary>
    // src: [n]; dst: [n]
    public void ToBf16(ArrayView<float> src, ArrayView<ushort> dst) => throw new NotImplementedException();

    /// <summary>bf16 bits → float32, exact.</summary>
    // src: [n]; dst: [n]
    public void FromBf16(ArrayView<ushort> src, ArrayView<float> dst) => throw new NotImplementedException();

    /// <summary>Splits a fused QKV projection output into q, k, v [m, heads·headDim] each: GPT-2 columns
    /// [Q_all | K_all | V_all] (neox false), NeoX per head [q_h | k_h | v_h] (neox true); as <c>CausalLM.ProjectQkv</c>.</summary>
    // fusedM3D: [m, 3·heads·headDim]; q, k, v: [m, heads·headDim]
    public void SplitQkv(ArrayView<float> fusedM3D, int m, int heads, int headDim, bool neox, ArrayView<float> q, ArrayView<float> k, ArrayView<float> v) => throw new NotImplementedException();

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
        ArrayView<int> keyFirst, ArrayView<int> keyLast, ArrayView<int> queryEnd, int window, float scale, float softcap) => throw new NotImplementedException();
}

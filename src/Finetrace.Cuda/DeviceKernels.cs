using ILGPU;
using ILGPU.Runtime;

namespace Finetrace.Cuda;

/// <summary>
/// The non-GEMM kernels of the forward pass and the dictionary trainer, written once in C# and compiled by ILGPU for
/// whichever accelerator runs them: the CPU accelerator in CI (so every kernel is tested against the CPU reference in
/// Finetrace.Tensors / Finetrace.Dictionaries without a GPU) and the CUDA accelerator on a device machine.
/// Each kernel body mirrors its CPU peer's float32 operation order, so differences are only summation order and
/// exp/sqrt rounding. The row kernels (<see cref="RmsNorm"/>, <see cref="SoftmaxRows"/>) run one thread group per
/// row with a shared-memory tree reduction (coalesced loads, all of a group's threads on one row); the one-thread-
/// per-row versions stay as their slow, obvious references (<see cref="RmsNormReference"/>,
/// <see cref="SoftmaxRowsReference"/>) and are tested against them and the CPU peers. exp is <see cref="DeviceMath.Exp"/>
/// (ILGPU's PTX backend has no MathF.Exp); every kernel here is compiled to sm_90 PTX by a test without a GPU.
/// </summary>
public sealed class DeviceKernels
{
    readonly Accelerator accelerator;
    readonly Action<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, float, float> rmsNorm;
    readonly Action<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>> swiGlu;
    readonly Action<Index1D, ArrayView<float>, int> softmaxRows;
    readonly Action<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, AdamScalars> adam;
    readonly Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, float, float> rmsNormGroup;
    readonly Action<KernelConfig, ArrayView<float>, int> softmaxRowsGroup;

    /// <summary>Threads per row group: a power of two, at most <see cref="MaxRowGroup"/> and what the accelerator
    /// allows.</summary>
    public int RowGroupSize { get; }

    /// <summary>The shared-memory size of the row reductions (the largest group they use).</summary>
    public const int MaxRowGroup = 256;

    public DeviceKernels(Accelerator accelerator)
    {
        this.accelerator = accelerator;
        rmsNorm = accelerator.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, float, float>(RmsNormKernel);
        swiGlu = accelerator.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>>(SwiGluKernel);
        softmaxRows = accelerator.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, int>(SoftmaxRowsKernel);
        adam = accelerator.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, AdamScalars>(AdamKernel);
        rmsNormGroup = accelerator.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, int, float, float>(RmsNormGroupKernel);
        softmaxRowsGroup = accelerator.LoadStreamKernel<ArrayView<float>, int>(SoftmaxRowsGroupKernel);
        int g = 1;
        while (g * 2 <= Math.Min(MaxRowGroup, accelerator.MaxNumThreadsPerGroup)) g *= 2;
        RowGroupSize = g;
    }

    // Threads for a row of n values: enough to give each a few values, a power of two (the tree reduction halves it).
    int GroupFor(int n)
    {
        int g = 1;
        while (g < RowGroupSize && g * 4 < n) g *= 2;
        return g;
    }

    /// <summary>y = x · 1/sqrt(mean(x²) + eps) · w, or · (1 + w) when <paramref name="onePlusW"/> (Gemma); as
    /// <c>Kernels.RmsNorm</c>: x·s is rounded first, then multiplied by the weight.</summary>
    // xRD: [rows, D]; w: [D]; yRD: [rows, D]
    public void RmsNorm(ArrayView<float> xRD, ArrayView<float> w, int rows, float eps, bool onePlusW, ArrayView<float> yRD)
    {
        int d = checked((int)w.Length);
        CheckRows(xRD.Length, yRD.Length, rows, d, nameof(RmsNorm));
        if (rows > 0 && d > 0) rmsNormGroup(new KernelConfig(rows, GroupFor(d)), xRD, w, yRD, d, eps, onePlusW ? 1f : 0f);
    }

    /// <summary><see cref="RmsNorm"/> with one thread per row summing in order: the slow, obvious reference.</summary>
    // xRD: [rows, D]; w: [D]; yRD: [rows, D]
    public void RmsNormReference(ArrayView<float> xRD, ArrayView<float> w, int rows, float eps, bool onePlusW, ArrayView<float> yRD)
    {
        int d = checked((int)w.Length);
        CheckRows(xRD.Length, yRD.Length, rows, d, nameof(RmsNormReference));
        if (rows > 0) rmsNorm(rows, xRD, w, yRD, d, eps, onePlusW ? 1f : 0f);
    }

    /// <summary>y = silu(gate) · up = gate / (1 + exp(−gate)) · up (the gated MLP of Llama/Qwen/Mistral).</summary>
    // gate: [n]; up: [n]; dst: [n]
    public void SwiGlu(ArrayView<float> gate, ArrayView<float> up, ArrayView<float> dst)
    {
        if (up.Length != gate.Length || dst.Length != gate.Length)
            throw new ArgumentException($"SwiGlu: gate has {gate.Length} values, up {up.Length}, dst {dst.Length}; all must be equal");
        if (gate.Length > 0) swiGlu(checked((int)gate.Length), gate, up, dst);
    }

    /// <summary>Each row ← exp(x − max) / Σ exp(x − max), in place, as <c>Kernels.Softmax</c> (scale by 1/sum).</summary>
    // xRN: [rows, n], in place
    public void SoftmaxRows(ArrayView<float> xRN, int rows, int n)
    {
        CheckSoftmax(xRN.Length, rows, n, nameof(SoftmaxRows));
        if (rows > 0 && n > 0) softmaxRowsGroup(new KernelConfig(rows, GroupFor(n)), xRN, n);
    }

    /// <summary><see cref="SoftmaxRows"/> with one thread per row: the slow, obvious reference.</summary>
    // xRN: [rows, n], in place
    public void SoftmaxRowsReference(ArrayView<float> xRN, int rows, int n)
    {
        CheckSoftmax(xRN.Length, rows, n, nameof(SoftmaxRowsReference));
        if (rows > 0 && n > 0) softmaxRows(rows, xRN, n);
    }

    static void CheckSoftmax(long length, int rows, int n, string name)
    {
        if (rows < 0 || n < 0 || length != (long)rows * n)
            throw new ArgumentException($"{name}: buffer has {length} values, expected rows·n = {rows}·{n}");
    }

    /// <summary>One Adam step on one parameter tensor, in place, with the scalars of <see cref="AdamScalars.For"/>
    /// (the same formula as <c>Finetrace.Dictionaries.Adam.Update</c>).</summary>
    // p, g, m, v: [n]
    public void Adam(ArrayView<float> p, ArrayView<float> g, ArrayView<float> m, ArrayView<float> v, AdamScalars s)
    {
        if (g.Length != p.Length || m.Length != p.Length || v.Length != p.Length)
            throw new ArgumentException($"Adam: parameter has {p.Length} values, grad {g.Length}, exp_avg {m.Length}, exp_avg_sq {v.Length}; all must be equal");
        if (p.Length > 0) adam(checked((int)p.Length), p, g, m, v, s);
    }

    public void Synchronize() => accelerator.Synchronize();

    static void CheckRows(long x, long y, int rows, int d, string name)
    {
        if (rows < 0 || x != (long)rows * d || y != (long)rows * d)
            throw new ArgumentException($"{name}: x has {x} values and y {y}; expected rows·D = {rows}·{d}");
    }

    // ---------------------------------------------------------------- kernel bodies (one thread per row / element)

    // xRD: [rows, D]; w: [D]; yRD: [rows, D]; one thread per row
    static void RmsNormKernel(Index1D row, ArrayView<float> xRD, ArrayView<float> w, ArrayView<float> yRD, int d, float eps, float one)
    {
        long o = (long)row.X * d;
        float ss = 0f;
        for (int i = 0; i < d; i++) { float x = xRD[o + i]; ss += x * x; }
        float s = 1f / MathF.Sqrt(ss / d + eps);
        for (int i = 0; i < d; i++) yRD[o + i] = xRD[o + i] * s * (w[i] + one);
    }

    // xRD: [rows, D]; w: [D]; yRD: [rows, D]; one group per row (grid = rows, group = a power of two ≤ MaxRowGroup):
    // each thread sums the squares of a strided slice, a shared-memory tree adds the slices, all threads scale.
    static void RmsNormGroupKernel(ArrayView<float> xRD, ArrayView<float> w, ArrayView<float> yRD, int d, float eps, float one)
    {
        var partial = SharedMemory.Allocate<float>(MaxRowGroup);
        int t = Group.IdxX, g = Group.DimX;
        long o = (long)Grid.IdxX * d;
        float ss = 0f;
        for (int i = t; i < d; i += g) { float x = xRD[o + i]; ss += x * x; }
        partial[t] = ss;
        Group.Barrier();
        for (int half = g / 2; half > 0; half /= 2)
        {
            if (t < half) partial[t] += partial[t + half];
            Group.Barrier();
        }
        float s = 1f / MathF.Sqrt(partial[0] / d + eps);
        for (int i = t; i < d; i += g) yRD[o + i] = xRD[o + i] * s * (w[i] + one);
    }

    // xRN: [rows, n], in place; one group per row: tree max, then exp and tree sum, then scale by 1/sum.
    static void SoftmaxRowsGroupKernel(ArrayView<float> xRN, int n)
    {
        var partial = SharedMemory.Allocate<float>(MaxRowGroup);
        int t = Group.IdxX, g = Group.DimX;
        long o = (long)Grid.IdxX * n;
        float max = float.NegativeInfinity;
        for (int i = t; i < n; i += g) max = MathF.Max(max, xRN[o + i]);
        partial[t] = max;
        Group.Barrier();
        for (int half = g / 2; half > 0; half /= 2)
        {
            if (t < half) partial[t] = MathF.Max(partial[t], partial[t + half]);
            Group.Barrier();
        }
        max = partial[0];
        Group.Barrier();   // everyone has read the max before the slots are reused for the sum
        float sum = 0f;
        for (int i = t; i < n; i += g) { float e = DeviceMath.Exp(xRN[o + i] - max); xRN[o + i] = e; sum += e; }
        partial[t] = sum;
        Group.Barrier();
        for (int half = g / 2; half > 0; half /= 2)
        {
            if (t < half) partial[t] += partial[t + half];
            Group.Barrier();
        }
        float inv = 1f / partial[0];
        for (int i = t; i < n; i += g) xRN[o + i] *= inv;
    }

    // gate: [n]; up: [n]; dst: [n]; one thread per element
    static void SwiGluKernel(Index1D i, ArrayView<float> gate, ArrayView<float> up, ArrayView<float> dst)
    {
        float g = gate[i];
        dst[i] = g / (1f + DeviceMath.Exp(-g)) * up[i];
    }

    // xRN: [rows, n], in place; one thread per row
    static void SoftmaxRowsKernel(Index1D row, ArrayView<float> xRN, int n)
    {
        long o = (long)row.X * n;
        float max = xRN[o];
        for (int i = 1; i < n; i++) max = MathF.Max(max, xRN[o + i]);
        float sum = 0f;
        for (int i = 0; i < n; i++) { float e = DeviceMath.Exp(xRN[o + i] - max); xRN[o + i] = e; sum += e; }
        float inv = 1f / sum;
        for (int i = 0; i < n; i++) xRN[o + i] *= inv;
    }

    // p, g, m, v: [n], in place; one thread per element
    static void AdamKernel(Index1D i, ArrayView<float> p, ArrayView<float> g, ArrayView<float> m, ArrayView<float> v, AdamScalars s)
    {
        float gi = g[i];
        float mi = m[i] * s.Beta1 + s.OneMinusBeta1 * gi;
        float vi = v[i] * s.Beta2 + s.OneMinusBeta2 * gi * gi;
        m[i] = mi; v[i] = vi;
        float denom = MathF.Sqrt(vi) / s.Bc2Sqrt + s.Eps;
        p[i] = p[i] + (-s.StepSize * mi) / denom;
    }
}

/// <summary>The float32 scalars of one Adam step (torch.optim.Adam, no weight decay), computed on the host exactly as
/// <c>Finetrace.Dictionaries.Adam.Update</c> does: bias corrections in double, then rounded to float.</summary>
public readonly struct AdamScalars
{
    public float StepSize { get; init; }
    public float Bc2Sqrt { get; init; }
    public float Beta1 { get; init; }
    public float Beta2 { get; init; }
    public float OneMinusBeta1 { get; init; }
    public float OneMinusBeta2 { get; init; }
    public float Eps { get; init; }

    /// <param name="step">The step count after incrementing (1 for the first update).</param>
    public static AdamScalars For(long step, double lr, double beta1 = 0.9, double beta2 = 0.999, double eps = 1e-8)
    {
        double bc1 = 1 - Math.Pow(beta1, step), bc2 = 1 - Math.Pow(beta2, step);
        return new AdamScalars
        {
            StepSize = (float)(lr / bc1),
            Bc2Sqrt = (float)Math.Sqrt(bc2),
            Beta1 = (float)beta1,
            Beta2 = (float)beta2,
            OneMinusBeta1 = (float)(1 - beta1),
            OneMinusBeta2 = (float)(1 - beta2),
            Eps = (float)eps,
        };
    }
}

using Finetrace.Models;
using Finetrace.Tensors;
using ILGPU;
using ILGPU.Runtime;

namespace Finetrace.Cuda;

/// <summary>
/// The device activation buffers of one forward, sized for at least <see cref="Rows"/> = batch × seq rows, reused
/// across calls and regrown when a larger batch comes. The attention scores buffer is sized separately (it grows with
/// seq², and is capped: rows of the batch are then processed in chunks).
/// </summary>
sealed class DeviceWorkspace : IDisposable
{
    public int Rows { get; }
    public int Batch { get; }
    // [m, Hidden] residual, normed input, attention output projection, MLP output
    public readonly MemoryBuffer1D<float, Stride1D.Dense> H, X, Proj, MlpOut;
    // [m, heads·hd], [m, kv·hd], [m, kv·hd], [m, heads·hd]
    public readonly MemoryBuffer1D<float, Stride1D.Dense> Q, K, V, Attn;
    // [m, Intermediate] (MlpB only for gated MLPs)
    public readonly MemoryBuffer1D<float, Stride1D.Dense> MlpA;
    public readonly MemoryBuffer1D<float, Stride1D.Dense>? MlpB;
    // [m, 3·Hidden] fused QKV output (GPT-2, NeoX)
    public readonly MemoryBuffer1D<float, Stride1D.Dense>? Fused;
    // [m, max(Hidden, heads·hd, Intermediate)] activations rounded to bf16 before a bf16 product
    public readonly MemoryBuffer1D<ushort, Stride1D.Dense>? Bf16;
    // [m] token ids and positions; [Batch] first/last real token per row
    public readonly MemoryBuffer1D<int, Stride1D.Dense> Ids, Positions, FirstReal, LastReal;
    MemoryBuffer1D<float, Stride1D.Dense>? _scores, _logits;

    public DeviceWorkspace(Accelerator a, ModelConfig c, int rows, int batch, bool bf16)
    {
        Rows = rows; Batch = batch;
        long m = rows;
        int qW = c.Heads * c.HeadDim, kvW = c.KvHeads * c.HeadDim;
        bool fused = c.Arch is Architecture.Gpt2 or Architecture.GptNeox;
        H = a.Allocate1D<float>(m * c.Hidden);
        X = a.Allocate1D<float>(m * c.Hidden);
        Proj = a.Allocate1D<float>(m * c.Hidden);
        MlpOut = a.Allocate1D<float>(m * c.Hidden);
        Q = a.Allocate1D<float>(m * qW);
        K = a.Allocate1D<float>(m * kvW);
        V = a.Allocate1D<float>(m * kvW);
        Attn = a.Allocate1D<float>(m * qW);
        MlpA = a.Allocate1D<float>(m * c.Intermediate);
        if (!fused) MlpB = a.Allocate1D<float>(m * c.Intermediate);
        if (fused) Fused = a.Allocate1D<float>(m * 3 * c.Hidden);
        if (bf16) Bf16 = a.Allocate1D<ushort>(m * Math.Max(Math.Max(c.Hidden, qW), c.Intermediate));
        Ids = a.Allocate1D<int>(m);
        Positions = a.Allocate1D<int>(m);
        FirstReal = a.Allocate1D<int>(batch);
        LastReal = a.Allocate1D<int>(batch);
    }

    /// <summary>A scores buffer of at least <paramref name="floats"/> values.</summary>
    public ArrayView<float> Scores(Accelerator a, long floats)
    {
        if (_scores is null || _scores.Length < floats)
        {
            _scores?.Dispose();
            _scores = a.Allocate1D<float>(floats);
        }
        return _scores.View.SubView(0, floats);
    }

    /// <summary>A logits buffer of at least <paramref name="floats"/> values (allocated only when logits are computed).</summary>
    public ArrayView<float> Logits(Accelerator a, long floats)
    {
        if (_logits is null || _logits.Length < floats)
        {
            _logits?.Dispose();
            _logits = a.Allocate1D<float>(floats);
        }
        return _logits.View.SubView(0, floats);
    }

    public void Dispose()
    {
        foreach (var b in new MemoryBuffer?[] { H, X, Proj, MlpOut, Q, K, V, Attn, MlpA, MlpB, Fused, Bf16, Ids, Positions, FirstReal, LastReal, _scores, _logits })
            b?.Dispose();
    }
}

/// <summary>
/// Page-locked host buffers for device → host copies (hooks, the returned residual and logits), one per length and
/// reused, so a copy runs at full PCIe speed without a staging copy inside the driver.
/// </summary>
sealed class PinnedStaging(Accelerator accelerator) : IDisposable
{
    readonly Dictionary<long, PageLockedArray1D<float>> _byLength = new();

    PageLockedArray1D<float> For(long n)
    {
        if (!_byLength.TryGetValue(n, out var p)) _byLength[n] = p = accelerator.AllocatePageLocked1D<float>(n);
        return p;
    }

    /// <summary>Copies the device view into <paramref name="dst"/> (waits for the stream: the host reads the values).</summary>
    public void ToHost(ArrayView<float> src, Span<float> dst)
    {
        var p = Fill(src);
        p.Span.CopyTo(dst);
    }

    /// <summary>A tensor of <paramref name="shape"/> whose data IS the page-locked buffer of that length, filled from the
    /// device view (no host copy). Valid until the next use of a buffer of the same length: for hooks, which copy
    /// what they keep (as with <c>CausalLM</c>'s residual tensors, which later blocks overwrite).</summary>
    public Tensor Borrow(ArrayView<float> src, params int[] shape) => new(Fill(src).GetArray(), shape);

    /// <summary>Copies a tensor from <see cref="Borrow"/> back into the device view (asynchronous, stream-ordered
    /// before later kernels; the next <see cref="Borrow"/> of the same length is ordered after it).</summary>
    public void Return(Tensor borrowed, ArrayView<float> dst)
    {
        var p = For(dst.Length);
        if (!ReferenceEquals(p.GetArray(), borrowed.Data)) throw new ArgumentException("not a tensor borrowed from this staging for that length");
        ArrayView1D<float, Stride1D.Dense> view = dst;
        view.CopyFromPageLockedAsync(accelerator.DefaultStream, p);
    }

    PageLockedArray1D<float> Fill(ArrayView<float> src)
    {
        var p = For(src.Length);
        ArrayView1D<float, Stride1D.Dense> view = src;
        view.CopyToPageLockedAsync(accelerator.DefaultStream, p);
        accelerator.DefaultStream.Synchronize();
        return p;
    }

    public void Dispose()
    {
        foreach (var p in _byLength.Values) p.Dispose();
        _byLength.Clear();
    }
}

using System.Runtime.InteropServices;
using Finetrace.Models;
using Finetrace.Tensors;
using ILGPU;
using ILGPU.Runtime;

namespace Finetrace.Cuda;

/// <summary>
/// A projection's weight on the device in the dtype the products run in (<see cref="GemmMode.Bf16"/>: bf16 bits, else
/// float32), with its float32 bias. StoredInOut: GPT-2 Conv1D [in, out] (no transpose); otherwise nn.Linear [out, in]
/// (transB).
/// </summary>
sealed class DeviceProjection : IDisposable
{
    public required int In { get; init; }
    public required int Out { get; init; }
    public required bool StoredInOut { get; init; }
    public DeviceMatrix W { get; init; } = null!;
    public MemoryBuffer1D<float, Stride1D.Dense>? Bias { get; init; }
    /// <summary>False when <see cref="W"/> is shared with the embedding (tied) and disposed there.</summary>
    public bool OwnsW { get; init; } = true;
    public long MatmulParameters => (long)In * Out;

    public void Dispose()
    {
        if (OwnsW) W.Dispose();
        Bias?.Dispose();
    }
}

/// <summary>A matrix on the device as bf16 bits or float32 (exactly one is set).</summary>
sealed class DeviceMatrix : IDisposable
{
    public MemoryBuffer1D<ushort, Stride1D.Dense>? Bf16 { get; init; }
    public MemoryBuffer1D<float, Stride1D.Dense>? F32 { get; init; }
    public long Bytes => Bf16 is { } b ? b.Length * 2 : F32!.Length * 4;

    public void Dispose()
    {
        Bf16?.Dispose();
        F32?.Dispose();
    }
}

/// <summary>A norm's float32 parameters on the device (bias only for LayerNorm).</summary>
sealed class DeviceNorm(NormKind kind, float eps, MemoryBuffer1D<float, Stride1D.Dense> w, MemoryBuffer1D<float, Stride1D.Dense>? b) : IDisposable
{
    public NormKind Kind { get; } = kind;
    public float Eps { get; } = eps;
    public MemoryBuffer1D<float, Stride1D.Dense> W { get; } = w;
    public MemoryBuffer1D<float, Stride1D.Dense>? B { get; } = b;
    public int Width => (int)W.Length;

    // xRD, yRD: [rows, Width] (y may alias x)
    public void Apply(DeviceContext ctx, ArrayView<float> xRD, int rows, ArrayView<float> yRD)
    {
        long n = (long)rows * Width;
        if (Kind == NormKind.LayerNorm) ctx.Forward.LayerNorm(xRD.SubView(0, n), W.View, B!.View, rows, Eps, yRD.SubView(0, n));
        else ctx.Kernels.RmsNorm(xRD.SubView(0, n), W.View, rows, Eps, Kind == NormKind.GemmaRmsNorm, yRD.SubView(0, n));
    }

    public void Dispose()
    {
        W.Dispose();
        B?.Dispose();
    }
}

/// <summary>
/// Uploads of checkpoint parameters. Matrices go up once in their stored dtype and are converted on the device when
/// the mode multiplies in the other one (bf16 → f32 exact; f32 → bf16 round-to-nearest-even); F16 checkpoints, which
/// no device product reads, are widened to float32 on the host first. Vectors (norm weights, biases) are widened to
/// float32 on the host: they are tiny and every kernel reads them as float32.
/// </summary>
static class DeviceUpload
{
    public static MemoryBuffer1D<float, Stride1D.Dense> Vector(Accelerator a, Weight w) => a.Allocate1D(w.ToArray());

    /// <summary>The weight in its stored dtype: bf16 bits for BF16, float32 otherwise (F16 widened on the host).</summary>
    public static DeviceMatrix Stored(Accelerator a, Weight w)
    {
        if (w.DType == DType.BF16) return new DeviceMatrix { Bf16 = UploadBits(a, w) };
        return new DeviceMatrix { F32 = UploadF32(a, w) };
    }

    /// <summary>The weight as the mode's products read it: bf16 bits in <see cref="GemmMode.Bf16"/>, else float32.</summary>
    public static DeviceMatrix ForMode(DeviceContext ctx, Weight w)
    {
        var a = ctx.Accelerator;
        if (ctx.Mode == GemmMode.Bf16)
        {
            if (w.DType == DType.BF16) return new DeviceMatrix { Bf16 = UploadBits(a, w) };
            using var f = UploadF32(a, w);
            var bits = a.Allocate1D<ushort>(f.Length);
            ctx.Forward.ToBf16(f.View, bits.View);
            a.Synchronize(); // the float32 staging buffer is freed on return
            return new DeviceMatrix { Bf16 = bits };
        }
        if (w.DType != DType.BF16) return new DeviceMatrix { F32 = UploadF32(a, w) };
        using var stored = UploadBits(a, w);
        var wide = a.Allocate1D<float>(stored.Length);
        ctx.Forward.FromBf16(stored.View, wide.View);
        a.Synchronize();
        return new DeviceMatrix { F32 = wide };
    }

    static MemoryBuffer1D<ushort, Stride1D.Dense> UploadBits(Accelerator a, Weight w)
    {
        var bits = w.Bf16Bits;
        var buf = a.Allocate1D<ushort>(bits.Length);
        buf.View.CopyFromCPU(ref MemoryMarshal.GetReference(bits), bits.Length);
        return buf;
    }

    static MemoryBuffer1D<float, Stride1D.Dense> UploadF32(Accelerator a, Weight w)
    {
        if (w.DType != DType.F32) return a.Allocate1D(w.ToArray()); // F16: widened on the host
        var values = w.F32Span;
        var buf = a.Allocate1D<float>(values.Length);
        buf.View.CopyFromCPU(ref MemoryMarshal.GetReference(values), values.Length);
        return buf;
    }
}

using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using Finetrace.Tensors;

namespace Finetrace.Activations;

public enum StoreDType { BF16, F32 }

public static class StoreDTypes
{
    public static StoreDType Parse(string s) => s.ToLowerInvariant() switch
    {
        "bf16" or "bfloat16" => StoreDType.BF16,
        "f32" or "float32" or "fp32" => StoreDType.F32,
        _ => throw new ArgumentException($"unknown activation dtype '{s}': use bf16 or f32"),
    };

    public static string Name(StoreDType t) => t == StoreDType.BF16 ? "bf16" : "f32";
    public static int Bytes(StoreDType t) => t == StoreDType.BF16 ? 2 : 4;
    /// <summary>The dtype string crosscoder_learning's .meta files use.</summary>
    public static string TorchName(StoreDType t) => t == StoreDType.BF16 ? "torch.bfloat16" : "torch.float32";
}

/// <summary>Vectorised bf16 ↔ f32 for store I/O (exact widening by a 16-bit shift; RNE narrowing).</summary>
static class Bf16
{
    // src: [n] bf16 bits; dst: [n]
    public static void Widen(ReadOnlySpan<ushort> src, Span<float> dst)
    {
        int n = src.Length, i = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            ref ushort s = ref MemoryMarshal.GetReference(src);
            ref float d = ref MemoryMarshal.GetReference(dst);
            for (; i + 16 <= n; i += 16)
            {
                var v = Vector256.LoadUnsafe(ref s, (nuint)i);
                var (lo, hi) = Vector256.Widen(v);
                Vector256.ShiftLeft(lo, 16).AsSingle().StoreUnsafe(ref d, (nuint)i);
                Vector256.ShiftLeft(hi, 16).AsSingle().StoreUnsafe(ref d, (nuint)(i + 8));
            }
        }
        for (; i < n; i++) dst[i] = Precision.BF16ToF32(src[i]);
    }

    // src: [n]; dst: [n] bf16 bits
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Narrow(ReadOnlySpan<float> src, Span<ushort> dst)
    {
        for (int i = 0; i < src.Length; i++) dst[i] = Precision.F32ToBF16(src[i]);
    }
}

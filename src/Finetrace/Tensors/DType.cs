namespace Finetrace.Tensors;

/// <summary>Element types of the safetensors format (model-facts.md §15.1).</summary>
public enum DType { BOOL, U8, I8, I16, U16, F16, BF16, I32, U32, F32, F64, I64, U64, F8_E4M3, F8_E5M2, F8_E8M0, F8_E4M3FNUZ, F8_E5M2FNUZ, F4, F6_E2M3, F6_E3M2, C64 }

public static class DTypes
{
    public static int Bits(DType t) => t switch
    {
        DType.BOOL or DType.U8 or DType.I8 or DType.F8_E4M3 or DType.F8_E5M2 or DType.F8_E8M0 or DType.F8_E4M3FNUZ or DType.F8_E5M2FNUZ => 8,
        DType.I16 or DType.U16 or DType.F16 or DType.BF16 => 16,
        DType.I32 or DType.U32 or DType.F32 => 32,
        DType.F64 or DType.I64 or DType.U64 or DType.C64 => 64,
        DType.F4 => 4,
        DType.F6_E2M3 or DType.F6_E3M2 => 6,
        _ => throw new ArgumentOutOfRangeException(nameof(t)),
    };

    public static bool TryParse(string s, out DType t) => Enum.TryParse(s, ignoreCase: false, out t) && Enum.IsDefined(t);

    /// <summary>Widens elements [start, start + dst.Length) of floating data at <paramref name="data"/> to float32; false for a
    /// non-floating dtype. The one widening routine of stored tensors (safetensors reads and model weights).</summary>
    // data: [≥ start + n] elements of dtype; dst: [n]
    internal static unsafe bool TryWiden(DType dtype, byte* data, long start, Span<float> dst)
    {
        switch (dtype)
        {
            case DType.F32: new ReadOnlySpan<float>(data + start * 4, dst.Length).CopyTo(dst); return true;
            case DType.BF16: Precision.BF16ToF32(new ReadOnlySpan<ushort>(data + start * 2, dst.Length), dst); return true;
            case DType.F16: Precision.F16ToF32(new ReadOnlySpan<ushort>(data + start * 2, dst.Length), dst); return true;
            case DType.F64:
                var d = new ReadOnlySpan<double>(data + start * 8, dst.Length);
                for (int i = 0; i < d.Length; i++) dst[i] = (float)d[i];
                return true;
            default: return false;
        }
    }
}

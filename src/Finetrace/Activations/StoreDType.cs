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

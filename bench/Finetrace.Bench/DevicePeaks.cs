using System.Globalization;
using Finetrace.Cuda;

namespace Finetrace.Bench;

/// <summary>A card's dense matrix peak per <see cref="GemmMode"/> in TFLOPS, and where the figures come from.</summary>
public sealed record DevicePeak(string Source, double? Bf16, double? Tf32, double? Fp32)
{
    public double? For(GemmMode mode) => mode switch { GemmMode.Bf16 => Bf16, GemmMode.Tf32 => Tf32, _ => Fp32 };
}

/// <summary>
/// Stated dense peaks of the cards the device benchmarks run on, keyed by a substring of the driver's device name
/// (first match wins, so the specific variants come before the plain names). Figures are NVIDIA's datasheet values
/// without structured sparsity (the datasheets' tensor-core figures with sparsity, halved); fp32 is the non-tensor
/// CUDA-core peak. An unknown card has no peak (no fraction is reported) unless one is given.
/// </summary>
public static class DevicePeaks
{
    static readonly (string Match, DevicePeak Peak)[] Table =
    [
        ("H100 NVL", new("NVIDIA H100 NVL datasheet (dense)", 835.5, 417.5, 60.0)),
        ("H100 PCIe", new("NVIDIA H100 PCIe datasheet (dense)", 756.5, 378.0, 51.2)),
        ("H200 NVL", new("NVIDIA H200 NVL datasheet (dense)", 835.5, 417.5, 60.0)),
        ("H100", new("NVIDIA H100 SXM datasheet (dense)", 989.4, 494.7, 66.9)),
        ("H200", new("NVIDIA H200 SXM datasheet (dense; same compute as H100 SXM)", 989.4, 494.7, 66.9)),
        ("A100", new("NVIDIA A100 datasheet (dense)", 312.0, 156.0, 19.5)),
    ];

    /// <summary>The peak for a device name, or null for a card not in the table.</summary>
    public static DevicePeak? ForDevice(string deviceName)
    {
        foreach (var (match, peak) in Table)
            if (deviceName.Contains(match, StringComparison.OrdinalIgnoreCase)) return peak;
        return null;
    }

    /// <summary>Parses a stated peak: one number for every mode ("700") or per mode ("bf16=989.4,tf32=494.7,fp32=66.9").
    /// Throws <see cref="ArgumentException"/> naming the part that is wrong.</summary>
    public static DevicePeak Parse(string text)
    {
        if (double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out double all))
        {
            if (!(all > 0)) throw new ArgumentException($"peak {text}: expected a positive number of TFLOPS");
            return new DevicePeak("stated", all, all, all);
        }
        double? bf16 = null, tf32 = null, fp32 = null;
        foreach (var part in text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            var kv = part.Split('=', 2, StringSplitOptions.TrimEntries);
            if (kv.Length != 2 || !double.TryParse(kv[1], NumberStyles.Float, CultureInfo.InvariantCulture, out double v) || !(v > 0))
                throw new ArgumentException($"peak {text}: '{part}' is not MODE=TFLOPS with a positive number (e.g. bf16=989.4,tf32=494.7,fp32=66.9)");
            switch (kv[0].ToLowerInvariant())
            {
                case "bf16": bf16 = v; break;
                case "tf32": tf32 = v; break;
                case "fp32": fp32 = v; break;
                default: throw new ArgumentException($"peak {text}: unknown mode '{kv[0]}' (expected bf16, tf32 or fp32)");
            }
        }
        if (bf16 is null && tf32 is null && fp32 is null) throw new ArgumentException($"peak {text}: no figures");
        return new DevicePeak("stated", bf16, tf32, fp32);
    }
}

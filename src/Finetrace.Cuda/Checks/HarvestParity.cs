using System.Globalization;
using Finetrace.Activations;
using Finetrace.Activations.Harvest;
using Finetrace.Models;
using Finetrace.Text.Datasets;

namespace Finetrace.Cuda.Checks;

/// <summary>What <see cref="HarvestParity.Run"/> harvests: two models, a few hundred tokens of text, every layer.</summary>
public sealed record HarvestParityOptions
{
    public required string BaseModel { get; init; }
    public required string FineTunedModel { get; init; }
    /// <summary>Scratch folder for the text and the two stores (created; the caller removes it).</summary>
    public required string WorkDir { get; init; }
    public long Tokens { get; init; } = 300;
    public int ContextLength { get; init; } = 64;
    /// <summary>Samples per batch: several, with different lengths, so right padding is exercised.</summary>
    public int BatchSize { get; init; } = 4;
    /// <summary>Layers stored (default: all of them).</summary>
    public int[]? Layers { get; init; }
    /// <summary>Data spec as for harvest (default: generated story text of varied sample lengths).</summary>
    public string? Data { get; init; }
    /// <summary>Largest allowed norm-relative error (default by precision: 1e-5 for fp32, 1e-2 for tf32 and bf16).</summary>
    public double? Tolerance { get; init; }
}

/// <summary>Result of a harvest parity check.</summary>
/// <param name="MaxNormRelative">Largest ‖device − cpu‖ / ‖cpu‖ over each model's and layer's whole activation array
/// (the criterion).</param>
/// <param name="MaxTokenNormRelative">Largest of the same per stored token (reported, for where the error sits).</param>
/// <param name="SameTokens">Identical token ids, positions, sources, masks and sequence lengths, and as many tokens.</param>
public sealed record HarvestParityResult(string Device, string Precision, long CpuTokens, long DeviceTokens, bool SameTokens, string? TokenDifference,
    double MaxNormRelative, double MaxTokenNormRelative, double Tolerance, bool Passed, double CpuSeconds, double DeviceSeconds)
{
    public override string ToString() =>
        $"harvest parity on {Device} ({Precision}): {DeviceTokens} tokens; ids/masks/positions/sources/sequence lengths {(SameTokens ? "identical" : "DIFFER: " + TokenDifference)}; " +
        $"activations max norm-relative {MaxNormRelative.ToString("G3", CultureInfo.InvariantCulture)} (worst token {MaxTokenNormRelative.ToString("G3", CultureInfo.InvariantCulture)}), " +
        $"tolerance {Tolerance.ToString("G3", CultureInfo.InvariantCulture)}: {(Passed ? "pass" : "FAIL")}";
}

/// <summary>
/// The device harvest against the CPU harvest: the same models, text and settings harvested once with the CPU forward
/// and once with <paramref name="device"/>'s loader, both stored as float32; the stores must hold identical token ids,
/// masks, positions, sources and sequence lengths, and activations within the precision's tolerance (norm-relative,
/// per model and layer). Run by a unit test on ILGPU's CPU accelerator, by a device test on a GPU, and by gpu-check.
/// </summary>
public static class HarvestParity
{
    public static HarvestParityResult Run(HarvestParityOptions o, ForwardModelLoader device, CancellationToken cancel = default)
    {
        Directory.CreateDirectory(o.WorkDir);
        string data = o.Data ?? WriteText(Path.Combine(o.WorkDir, "parity.txt"));
        int layers = Math.Min(ModelConfig.Load(o.BaseModel).Layers, ModelConfig.Load(o.FineTunedModel).Layers);
        var options = new HarvestOptions
        {
            BaseModel = o.BaseModel, FineTunedModel = o.FineTunedModel, Data = [DataSourceSpec.Parse(data)],
            Layers = o.Layers ?? Enumerable.Range(0, layers).ToArray(), Tokens = o.Tokens, ContextLength = o.ContextLength,
            BatchSize = o.BatchSize, Dtype = "f32", Out = Path.Combine(o.WorkDir, "cpu"), CheckFreeSpace = false,
        };
        var cpuRun = Harvester.Run(options, cancel: cancel);
        var devRun = Harvester.Run(options with { Out = Path.Combine(o.WorkDir, "device"), Loader = device }, cancel: cancel);
        double tolerance = o.Tolerance ?? (device.Precision == "fp32" ? 1e-5 : 1e-2);

        using var cpu = ActivationStore.Open(options.Out);
        using var dev = ActivationStore.Open(Path.Combine(o.WorkDir, "device"));
        string? difference = TokenDifference(cpu, dev);
        double maxRel = 0, maxTokenRel = 0;
        if (difference is null)
        {
            int d = cpu.DModel;
            var a = new float[d];
            var b = new float[d];
            for (int m = 0; m < cpu.Models; m++)
                foreach (int layer in cpu.Layers)
                {
                    double err2 = 0, ref2 = 0;
                    for (long row = 0; row < cpu.Tokens; row++)
                    {
                        cpu.ReadRows(m, layer, row, 1, a);
                        dev.ReadRows(m, layer, row, 1, b);
                        double e2 = 0, r2 = 0;
                        for (int j = 0; j < d; j++) { double diff = (double)b[j] - a[j]; e2 += diff * diff; r2 += (double)a[j] * a[j]; }
                        err2 += e2; ref2 += r2;
                        // NaN-safe: a NaN error counts as infinitely wrong
                        double tokenRel = r2 > 0 ? Math.Sqrt(e2 / r2) : (e2 > 0 ? double.PositiveInfinity : 0);
                        if (!(tokenRel <= maxTokenRel)) maxTokenRel = double.IsNaN(tokenRel) ? double.PositiveInfinity : tokenRel;
                    }
                    double rel = ref2 > 0 ? Math.Sqrt(err2 / ref2) : (err2 > 0 ? double.PositiveInfinity : 0);
                    if (!(rel <= maxRel)) maxRel = double.IsNaN(rel) ? double.PositiveInfinity : rel;
                }
        }
        bool passed = difference is null && cpu.Tokens > 0 && maxRel <= tolerance;
        return new HarvestParityResult(device.Describe(), device.Precision, cpu.Tokens, dev.Tokens, difference is null, difference,
            difference is null ? maxRel : double.NaN, difference is null ? maxTokenRel : double.NaN, tolerance, passed, cpuRun.LoopSeconds, devRun.LoopSeconds);
    }

    /// <summary>The first difference in the token-level arrays, or null when they are identical.</summary>
    static string? TokenDifference(ActivationStore cpu, ActivationStore dev)
    {
        if (cpu.Tokens != dev.Tokens) return $"{cpu.Tokens} tokens on the CPU, {dev.Tokens} on the device";
        var sa = cpu.SequenceRanges();
        var sb = dev.SequenceRanges();
        if (!sa.AsSpan().SequenceEqual(sb)) return $"sequence lengths differ ({sa.Length - 1} vs {sb.Length - 1} sequences)";
        for (long row = 0; row < cpu.Tokens; row++)
        {
            if (cpu.TokenId(row) != dev.TokenId(row)) return $"token id at row {row}: {cpu.TokenId(row)} vs {dev.TokenId(row)}";
            if (cpu.Mask(row) != dev.Mask(row)) return $"mask at row {row}: {cpu.Mask(row)} vs {dev.Mask(row)}";
            if (cpu.Position(row) != dev.Position(row)) return $"position at row {row}: {cpu.Position(row)} vs {dev.Position(row)}";
            if (cpu.Source(row) != dev.Source(row)) return $"source at row {row}: {cpu.Source(row)} vs {dev.Source(row)}";
        }
        return null;
    }

    /// <summary>Short stories of varied length, blank-line separated, so batches are right-padded.</summary>
    static string WriteText(string path)
    {
        string[] names = ["Lily", "Tom", "Sue", "Ben"], things = ["ball", "cake", "dog", "kite"], places = ["park", "lake", "garden"];
        using var w = new StreamWriter(path);
        for (int i = 0; i < 40; i++)
        {
            string n = names[i % names.Length], t = things[i * 7 % things.Length], p = places[i * 5 % places.Length];
            w.Write($"Once upon a time, {n} went to the {p} with a {t}.");
            for (int e = 0; e < i % 4; e++) w.Write($" {n} played with the {t} and was very happy.");
            w.Write("\n\n");
        }
        return path;
    }
}

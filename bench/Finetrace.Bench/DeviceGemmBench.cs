using System.CommandLine;
using System.Diagnostics;
using Finetrace.Cuda;
using Finetrace.Tensors;
using ILGPU;
using ILGPU.Runtime;
using Spectre.Console;

namespace Finetrace.Bench;

/// <summary>
/// <c>finetrace bench device-gemm [--device cuda|ilgpu-cpu] [--modes fp32,tf32,bf16] [--m 32768] [--shape MxKxN…]
/// [--seconds 1] [--peak-tflops X | bf16=X,tf32=Y,fp32=Z] [--json]</c>: throughput of the device products
/// (<see cref="DeviceContext.Gemm"/>: cuBLAS on a GPU) per <see cref="GemmMode"/> on transformer-shaped products
/// y = x·Wᵀ (PyTorch Linear, W stored n×k): Gemma-2-2B's MLP up projection (k = 2304, n = 9216) and SmolLM2-135M's
/// (k = 576, n = 1536), m = 32768 tokens (32 × 1024). Fp32/Tf32 time Sgemm on float32 operands; Bf16 times GemmBf16
/// (bf16 operands, float32 output). Each figure is the median of several timed repetitions after a warm-up, with the
/// device synchronised around each repetition; stated against the card's dense peak (<see cref="DevicePeaks"/>) when
/// the card is known or a peak is given. Each product's first rows are checked against the CPU (norm-relative error).
/// --device ilgpu-cpu runs the same plumbing on ILGPU's CPU accelerator at tiny shapes only.
/// </summary>
public sealed class DeviceGemmBench : IBenchCommand
{
    public sealed record Shape(string Name, int M, int K, int N)
    {
        public double Flops => 2.0 * M * K * N;
    }

    sealed record Result(Shape Shape, GemmMode Mode, double Gflops, int Repetitions, int CallsPerRepetition,
        double? PeakTflops, double CheckError, int CheckRows)
    {
        public double? FractionOfPeak => PeakTflops is { } p ? Gflops / 1000 / p : null;
    }

    // m·k·n above which the CPU accelerator would take minutes per product
    const double CpuMaxMkn = 5e7;

    public Command Build()
    {
        var json = BenchOptions.Json();
        var device = new Option<string>("--device") { Description = "cuda (the first GPU, cuBLAS products) or ilgpu-cpu (ILGPU's CPU accelerator, tiny shapes: checks the plumbing only)", DefaultValueFactory = _ => "cuda" };
        var modes = new Option<string>("--modes") { Description = "Comma-separated modes to time: fp32, tf32, bf16", DefaultValueFactory = _ => "fp32,tf32,bf16" };
        var m = new Option<int?>("--m") { Description = "Tokens (rows of x) for the default shapes (default 32768 on cuda, 64 on ilgpu-cpu)" };
        var shapes = new Option<string[]>("--shape") { Description = "Products to time instead of the defaults, as MxKxN (y[M,N] = x[M,K]·W[N,K]ᵀ); repeatable", AllowMultipleArgumentsPerToken = true };
        var seconds = new Option<double>("--seconds") { Description = "Timing budget per shape and mode, in seconds", DefaultValueFactory = _ => 1.0 };
        var peak = new Option<string?>("--peak-tflops") { Description = "Dense peak to state figures against: one number for every mode or bf16=X,tf32=Y,fp32=Z (default: the table for known cards)" };
        var cmd = new Command("device-gemm", "Time the device matrix products (GFLOP/s per mode: fp32, tf32, bf16) on transformer shapes, as a fraction of the card's dense peak");
        foreach (var o in new Option[] { device, modes, m, shapes, seconds, peak, json }) cmd.Options.Add(o);
        cmd.SetAction(r => Run(r.GetValue(device)!, r.GetValue(modes)!, r.GetValue(m), r.GetValue(shapes), r.GetValue(seconds), r.GetValue(peak), r.GetValue(json)));
        return cmd;
    }

    /// <summary>The default products: Gemma-2-2B's and SmolLM2-135M's MLP up projections at <paramref name="m"/> tokens.</summary>
    public static IReadOnlyList<Shape> DefaultShapes(int m) =>
    [
        new($"Gemma-2-2B MLP up x·Wᵀ m={m} k=2304 n=9216", m, 2304, 9216),
        new($"SmolLM2-135M MLP up x·Wᵀ m={m} k=576 n=1536", m, 576, 1536),
    ];

    /// <summary>"MxKxN" → a shape; throws <see cref="ArgumentException"/> naming the text.</summary>
    public static Shape ParseShape(string text)
    {
        var parts = text.Split('x', 'X', '×');
        if (parts.Length != 3 || !parts.All(p => int.TryParse(p, out int v) && v > 0))
            throw new ArgumentException($"--shape {text}: expected MxKxN with three positive whole numbers, e.g. 32768x2304x9216");
        int m = int.Parse(parts[0]), k = int.Parse(parts[1]), n = int.Parse(parts[2]);
        return new Shape($"x·Wᵀ m={m} k={k} n={n}", m, k, n);
    }

    public static IReadOnlyList<GemmMode> ParseModes(string text)
    {
        var modes = new List<GemmMode>();
        foreach (var part in text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
            modes.Add(DeviceSelection.TryParsePrecision(part, out var mode)
                ? mode
                : throw new ArgumentException($"--modes {text}: unknown mode '{part}' (expected fp32, tf32 or bf16)"));
        if (modes.Count == 0) throw new ArgumentException($"--modes {text}: no modes");
        return modes.Distinct().ToList();
    }

    static int Run(string deviceText, string modesText, int? m, string[]? shapeTexts, double seconds, string? peakText, bool json)
    {
        var kind = BenchDevice.Kind(deviceText, " (the CPU products are timed by 'finetrace bench gemm')");
        var modes = ParseModes(modesText);
        if (m is { } mm && mm <= 0) throw new ArgumentException($"--m {mm}: expected a positive number of tokens");
        if (!(seconds > 0)) throw new ArgumentException($"--seconds {seconds}: expected a positive number");
        var statedPeak = peakText is null ? null : DevicePeaks.Parse(peakText);
        var shapes = shapeTexts is { Length: > 0 }
            ? shapeTexts.Select(ParseShape).ToList()
            : DefaultShapes(m ?? (kind == DeviceKind.Cuda ? 32768 : 64)).Select(s => kind == DeviceKind.Cuda ? s : Tiny(s)).ToList();
        if (kind == DeviceKind.IlgpuCpu && shapes.FirstOrDefault(s => (double)s.M * s.K * s.N > CpuMaxMkn) is { } big)
            throw new ArgumentException($"--shape {big.M}x{big.K}x{big.N}: --device ilgpu-cpu runs only tiny products (m·k·n ≤ {CpuMaxMkn:G2}); it checks the plumbing, not speed");

        // a missing GPU or cuBLAS ends here with DeviceUnavailableException: one line, where it looked, what to set
        using var ctx = DeviceContext.Create(kind, GemmMode.Fp32);
        var peak = statedPeak ?? DevicePeaks.ForDevice(ctx.Name);
        if (!json)
        {
            AnsiConsole.MarkupLine($"device: {Markup.Escape(ctx.Name)} ({kind}), products: {Markup.Escape(ctx.GemmDescription)}");
            AnsiConsole.MarkupLine(peak is null ? "[grey]peak: unknown card (no fraction; --peak-tflops states one)[/]"
                : $"[grey]peak: {Markup.Escape(peak.Source)}: bf16 {peak.Bf16?.ToString() ?? "—"}, tf32 {peak.Tf32?.ToString() ?? "—"}, fp32 {peak.Fp32?.ToString() ?? "—"} TFLOPS[/]");
        }

        var results = new List<Result>();
        foreach (var shape in shapes)
        {
            if (!json) AnsiConsole.MarkupLine($"[grey]timing {Markup.Escape(shape.Name)}…[/]");
            results.AddRange(TimeShape(ctx, shape, modes, seconds, peak));
        }
        if (json) PrintJson(ctx, kind, peak, results);
        else PrintTable(results);
        return 0;
    }

    // The default shapes with k and n divided by 24, for the CPU accelerator.
    static Shape Tiny(Shape s)
    {
        int k = Math.Max(1, s.K / 24), n = Math.Max(1, s.N / 24);
        return new($"tiny ({s.Name.Split(" x·Wᵀ")[0]} / 24) x·Wᵀ m={s.M} k={k} n={n}", s.M, k, n);
    }

    static IEnumerable<Result> TimeShape(DeviceContext ctx, Shape s, IReadOnlyList<GemmMode> modes, double seconds, DevicePeak? peak)
    {
        var acc = ctx.Accelerator;
        float[] x = Fill((long)s.M * s.K, 1), w = Fill((long)s.N * s.K, 2);
        int checkRows = Math.Min(s.M, 4);
        var expected = new float[checkRows * s.N];
        Gemm.Sgemm(false, true, checkRows, s.N, s.K, 1f, x, s.K, w, s.K, 0f, expected, s.N);

        using var dy = acc.Allocate1D<float>((long)s.M * s.N);
        var results = new List<Result>();
        bool needFloat = modes.Any(m => m != GemmMode.Bf16), needBf16 = modes.Contains(GemmMode.Bf16);
        using var dx = needFloat ? acc.Allocate1D(x) : null;
        using var dw = needFloat ? acc.Allocate1D(w) : null;
        using var dxb = needBf16 ? acc.Allocate1D(ToBf16(x)) : null;
        using var dwb = needBf16 ? acc.Allocate1D(ToBf16(w)) : null;
        foreach (var mode in modes)
        {
            using var gemm = ctx.CreateGemm(mode);
            Action call = mode == GemmMode.Bf16
                ? () => gemm.GemmBf16(false, true, s.M, s.N, s.K, 1f, dxb!.View, s.K, dwb!.View, s.K, 0f, dy.View, s.N)
                : () => gemm.Sgemm(false, true, s.M, s.N, s.K, 1f, dx!.View, s.K, dw!.View, s.K, 0f, dy.View, s.N);
            dy.MemSetToZero();
            var (seconds1, reps, perRep) = Time(ctx, call, seconds);
            var got = new float[checkRows * s.N];
            dy.View.SubView(0, got.Length).CopyToCPU(got);
            results.Add(new Result(s, mode, s.Flops / seconds1 / 1e9, reps, perRep, peak?.For(mode), NormRelative(got, expected), checkRows));
        }
        return results;
    }

    // Seconds per call: the median over repetitions of (calls, then synchronise), after one untimed warm-up call.
    static (double SecondsPerCall, int Repetitions, int CallsPerRepetition) Time(DeviceContext ctx, Action call, double seconds)
    {
        call(); ctx.Synchronize();
        var sw = Stopwatch.StartNew();
        call(); ctx.Synchronize();
        double one = Math.Max(sw.Elapsed.TotalSeconds, 1e-7);
        int perRep = (int)Math.Clamp(0.05 / one, 1, 1000);   // ≥ 50 ms per repetition hides launch and sync overhead
        var times = new List<double>();
        var total = Stopwatch.StartNew();
        while (times.Count < 3 || (total.Elapsed.TotalSeconds < seconds && times.Count < 50))
        {
            sw.Restart();
            for (int i = 0; i < perRep; i++) call();
            ctx.Synchronize();
            times.Add(sw.Elapsed.TotalSeconds / perRep);
        }
        times.Sort();
        return (times[times.Count / 2], times.Count, perRep);
    }

    static float[] Fill(long n, int seed)
    {
        var x = new float[n];
        // a cheap hash in parallel: 75M values for the default shape would take seconds through an RNG
        Parallel.For(0, (int)((n + 65535) / 65536), chunk =>
        {
            long start = chunk * 65536L, end = Math.Min(n, start + 65536);
            for (long i = start; i < end; i++)
            {
                ulong h = Rng.Mix((ulong)i * 0x9E3779B97F4A7C15UL + (ulong)seed);
                x[i] = (float)((h >> 40) * (1.0 / (1UL << 24)) * 2 - 1);
            }
        });
        return x;
    }

    static ushort[] ToBf16(float[] x)
    {
        var b = new ushort[x.Length];
        Parallel.For(0, (x.Length + 65535) / 65536, chunk =>
        {
            int start = chunk * 65536, end = Math.Min(x.Length, start + 65536);
            for (int i = start; i < end; i++) b[i] = Bf16.FromFloat(x[i]);
        });
        return b;
    }

    static double NormRelative(float[] got, float[] expected)
    {
        double d2 = 0, r2 = 0;
        for (int i = 0; i < got.Length; i++) { double d = (double)got[i] - expected[i]; d2 += d * d; r2 += (double)expected[i] * expected[i]; }
        return Math.Sqrt(d2 / Math.Max(r2, 1e-300));
    }

    // Four significant digits (a CPU-accelerator figure is 1e-5 TFLOPS, a GPU's hundreds).
    static double Significant(double x) => x == 0 || !double.IsFinite(x) ? x
        : Math.Round(x, Math.Clamp(3 - (int)Math.Floor(Math.Log10(Math.Abs(x))), 0, 15));

    static string ModeName(GemmMode m) => m.ToString().ToLowerInvariant();

    static void PrintTable(List<Result> results)
    {
        AnsiConsole.MarkupLine("[grey]median GFLOP/s after warm-up, device synchronised around each repetition; check = norm-relative error of the first rows against the CPU[/]");
        var t = new Table().AddColumns("shape", "mode", "GFLOP/s", "of peak", "check");
        for (int i = 2; i < 5; i++) t.Columns[i].RightAligned();
        foreach (var r in results)
            t.AddRow(Markup.Escape(r.Shape.Name), ModeName(r.Mode), r.Gflops >= 10 ? $"{r.Gflops:F1}" : $"{r.Gflops:G3}",
                r.FractionOfPeak is { } f ? $"{f:P1}" : "—", $"{r.CheckError:E1}");
        AnsiConsole.Write(t);
    }

    static void PrintJson(DeviceContext ctx, DeviceKind kind, DevicePeak? peak, List<Result> results)
    {
        var main = results.Where(r => r.Shape == results[0].Shape).ToDictionary(r => r.Mode);
        double? Tflops(GemmMode m) => main.TryGetValue(m, out var r) ? Significant(r.Gflops / 1000) : null;
        double? Fraction(GemmMode m) => main.TryGetValue(m, out var r) && r.FractionOfPeak is { } f ? Math.Round(f, 4) : null;
        BenchSupport.PrintJson(new
        {
            device = ctx.Name,
            device_kind = DeviceSelection.DeviceName(kind),
            gemm = ctx.GemmDescription,
            peak_source = peak?.Source,
            main_shape = results[0].Shape.Name,
            bf16_tflops = Tflops(GemmMode.Bf16), tf32_tflops = Tflops(GemmMode.Tf32), fp32_tflops = Tflops(GemmMode.Fp32),
            bf16_fraction_of_peak = Fraction(GemmMode.Bf16), tf32_fraction_of_peak = Fraction(GemmMode.Tf32), fp32_fraction_of_peak = Fraction(GemmMode.Fp32),
            max_check_error = results.Max(r => r.CheckError),
            load_average = BenchSupport.LoadAverage(),
            results = results.Select(r => new
            {
                shape = r.Shape.Name, m = r.Shape.M, k = r.Shape.K, n = r.Shape.N, mode = ModeName(r.Mode),
                gflops = Significant(r.Gflops), tflops = Significant(r.Gflops / 1000),
                peak_tflops = r.PeakTflops, fraction_of_peak = r.FractionOfPeak is { } f ? Math.Round(f, 4) : (double?)null,
                repetitions = r.Repetitions, calls_per_repetition = r.CallsPerRepetition,
                check_rows = r.CheckRows, check_rel_err = r.CheckError,
            }),
        });
    }
}

using System.Text.Json;
using Finetrace.Bench;
using Finetrace.Cuda;
using Finetrace.Tests.Infrastructure;

namespace Finetrace.Tests.Cli;

/// <summary><c>finetrace bench device-gemm</c>: the peak table and option parsing, the whole command on ILGPU's CPU
/// accelerator (its JSON keys and its correctness check), and the one-line error without a GPU.</summary>
public sealed class DeviceGemmBenchTests
{
    [Theory]
    [InlineData("NVIDIA H100 80GB HBM3", 989.4, 494.7, 66.9)]
    [InlineData("NVIDIA H200", 989.4, 494.7, 66.9)]
    [InlineData("NVIDIA H100 PCIe", 756.5, 378.0, 51.2)]
    [InlineData("NVIDIA A100-SXM4-80GB", 312.0, 156.0, 19.5)]
    public void Peaks_are_looked_up_by_device_name(string name, double bf16, double tf32, double fp32)
    {
        var peak = DevicePeaks.ForDevice(name);
        Assert.NotNull(peak);
        Assert.Equal((bf16, tf32, fp32), (peak.For(GemmMode.Bf16), peak.For(GemmMode.Tf32), peak.For(GemmMode.Fp32)));
    }

    [Fact]
    public void Unknown_cards_have_no_peak_and_stated_peaks_parse()
    {
        Assert.Null(DevicePeaks.ForDevice("CPUAccelerator"));
        Assert.Equal(new DevicePeak("stated", 700, 700, 700), DevicePeaks.Parse("700"));
        Assert.Equal(new DevicePeak("stated", 989.4, null, 66.9), DevicePeaks.Parse("bf16=989.4, fp32=66.9"));
        Assert.Contains("unknown mode 'fp16'", Assert.Throws<ArgumentException>(() => DevicePeaks.Parse("fp16=3")).Message);
        Assert.Contains("'bf16=-1'", Assert.Throws<ArgumentException>(() => DevicePeaks.Parse("bf16=-1")).Message);
    }

    [Fact]
    public void Shapes_and_modes_parse_or_name_the_text()
    {
        Assert.Equal((32768, 2304, 9216), DeviceGemmBench.ParseShape("32768x2304x9216") is var s ? (s.M, s.K, s.N) : default);
        Assert.Contains("--shape 12x3", Assert.Throws<ArgumentException>(() => DeviceGemmBench.ParseShape("12x3")).Message);
        Assert.Equal([GemmMode.Bf16, GemmMode.Fp32], DeviceGemmBench.ParseModes("bf16,fp32"));
        Assert.Contains("'int8'", Assert.Throws<ArgumentException>(() => DeviceGemmBench.ParseModes("fp32,int8")).Message);
        Assert.Equal([(32768, 2304, 9216), (32768, 576, 1536)], DeviceGemmBench.DefaultShapes(32768).Select(x => (x.M, x.K, x.N)));
    }

    [Fact]
    public void Runs_on_the_CPU_accelerator_and_prints_one_JSON_object()
    {
        var r = CliProcess.Run(["bench", "device-gemm", "--device", "ilgpu-cpu", "--seconds", "0.05", "--shape", "8x40x24", "--json"]);
        Assert.True(r.ExitCode == 0, r.ToString());
        var lines = r.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Single(lines);
        using var doc = JsonDocument.Parse(lines[0]);
        var root = doc.RootElement;
        Assert.Equal("ilgpu-cpu", root.GetProperty("device_kind").GetString());
        Assert.Equal(JsonValueKind.Null, root.GetProperty("bf16_fraction_of_peak").ValueKind);   // unknown card
        Assert.True(root.GetProperty("fp32_tflops").GetDouble() > 0, r.Stdout);
        var results = root.GetProperty("results").EnumerateArray().ToList();
        Assert.Equal(["fp32", "tf32", "bf16"], results.Select(x => x.GetProperty("mode").GetString()));
        // the check compares with the CPU: float32 products agree to rounding, bf16 operands cost ~1e-3
        Assert.True(results[0].GetProperty("check_rel_err").GetDouble() <= 1e-5, r.Stdout);
        double bf16 = results[2].GetProperty("check_rel_err").GetDouble();
        Assert.True(bf16 is > 1e-4 and <= 1e-2, r.Stdout);
    }

    [Fact]
    public void Cuda_without_a_GPU_fails_with_one_line_and_no_stack_trace()
    {
        var r = CliProcess.Run(["bench", "device-gemm", "--device", "cuda", "--shape", "256x256x256", "--seconds", "0.05", "--json"]);
        if (CudaDevice.Available)
        {
            Assert.True(r.ExitCode == 0, r.ToString());
            Assert.Contains("\"device_kind\":\"cuda\"", r.Stdout);
            return;
        }
        Assert.NotEqual(0, r.ExitCode);
        var lines = r.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Single(lines);
        Assert.StartsWith("finetrace: error: no Cuda device", lines[0]);
        Assert.DoesNotContain(" at ", r.Stderr);
        Assert.Equal("", r.Stdout);
    }
}

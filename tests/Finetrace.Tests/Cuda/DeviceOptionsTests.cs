using System.CommandLine;
using Finetrace.Bench;
using Finetrace.Cuda;
using Finetrace.Tests.Cli;
using Finetrace.Tests.Infrastructure;

namespace Finetrace.Tests.Cuda;

public class DeviceOptionsTests
{
    [Theory]
    [InlineData(null, null, null, null, GemmMode.Fp32)]                       // nothing asked: the CPU
    [InlineData("cpu", null, null, null, GemmMode.Fp32)]
    [InlineData("cuda", null, null, DeviceKind.Cuda, GemmMode.Bf16)]           // cuda's default precision
    [InlineData("ilgpu-cpu", null, null, DeviceKind.IlgpuCpu, GemmMode.Fp32)]  // ilgpu-cpu's default precision
    [InlineData("CUDA", "tf32", null, DeviceKind.Cuda, GemmMode.Tf32)]        // case-insensitive
    [InlineData("cuda", "fp32", null, DeviceKind.Cuda, GemmMode.Fp32)]
    [InlineData("ilgpu-cpu", "bf16", null, DeviceKind.IlgpuCpu, GemmMode.Bf16)]
    [InlineData("cpu", "fp32", null, null, GemmMode.Fp32)]
    [InlineData(null, null, "cuda", DeviceKind.Cuda, GemmMode.Bf16)]          // FINETRACE_DEVICE sets the default
    [InlineData(null, "tf32", "ilgpu-cpu", DeviceKind.IlgpuCpu, GemmMode.Tf32)]
    [InlineData("cpu", null, "cuda", null, GemmMode.Fp32)]                    // the flag wins over the variable
    [InlineData("ilgpu-cpu", null, "cuda", DeviceKind.IlgpuCpu, GemmMode.Fp32)]
    [InlineData("cpu", null, "not-a-device", null, GemmMode.Fp32)]           // a bad variable is not read when the flag is given
    [InlineData(null, null, "", null, GemmMode.Fp32)]                         // an empty variable counts as unset
    public void Resolve_TakesTheFlagThenTheVariableThenTheCpu(string? flag, string? precision, string? env, DeviceKind? kind, GemmMode mode)
    {
        var s = DeviceOptions.Resolve(flag, precision, env);
        Assert.Equal(kind, s.Kind);
        Assert.Equal(mode, s.Precision);
    }

    [Fact]
    public void Resolve_BadValues_AreErrorsNamingTheFlagOrTheVariable()
    {
        var flag = Assert.Throws<ArgumentException>(() => DeviceOptions.Resolve("gpu", null, null));
        Assert.Contains("--device gpu", flag.Message);
        Assert.Contains("cpu, cuda, ilgpu-cpu", flag.Message);

        var env = Assert.Throws<ArgumentException>(() => DeviceOptions.Resolve(null, null, "gpu"));
        Assert.Contains("FINETRACE_DEVICE=gpu", env.Message);
        Assert.Contains("unset FINETRACE_DEVICE", env.Message);

        var prec = Assert.Throws<ArgumentException>(() => DeviceOptions.Resolve("cuda", "fp16", null));
        Assert.Contains("--precision fp16", prec.Message);
        Assert.Contains("fp32, tf32, bf16", prec.Message);

        // the CPU forward is float32 only: a lower precision there is refused, not silently ignored
        var cpu = Assert.Throws<ArgumentException>(() => DeviceOptions.Resolve(null, "bf16", null));
        Assert.Contains("--precision bf16", cpu.Message);
        Assert.Contains("fp32 only", cpu.Message);
    }

    [Fact]
    public void Options_ParseFromACommandLine()
    {
        var device = new DeviceOptions();
        var cmd = new Command("x");
        device.AddTo(cmd);
        var parse = cmd.Parse(["--device", "ilgpu-cpu", "--precision", "tf32"]);
        Assert.Empty(parse.Errors);
        var s = device.Resolve(parse);   // the flag is given: FINETRACE_DEVICE, whatever it is here, is not read
        Assert.Equal(DeviceKind.IlgpuCpu, s.Kind);
        Assert.Equal(GemmMode.Tf32, s.Precision);
        Assert.Equal("ilgpu-cpu", s.Device);
        Assert.Equal("tf32", s.PrecisionName);
    }

    [Fact]
    public void Open_IlgpuCpu_GivesADeviceLoaderNamingDeviceAndPrecision()
    {
        using var run = DeviceRun.Open(new DeviceSelection(DeviceKind.IlgpuCpu, GemmMode.Fp32));
        Assert.NotNull(run.Context);
        Assert.Equal(DeviceKind.IlgpuCpu, run.Context!.Kind);
        Assert.Equal("ilgpu-cpu", run.Loader.Device);
        Assert.Equal("fp32", run.Loader.Precision);
        Assert.False(run.Loader.IsCpu);
        Assert.StartsWith("ilgpu-cpu (fp32", run.Describe());

        using var cpu = DeviceRun.Open(DeviceSelection.Cpu);
        Assert.Null(cpu.Context);
        Assert.True(cpu.Loader.IsCpu);
        Assert.Equal("cpu (fp32)", cpu.Describe());
    }

    [SharedFact]
    public void Harvest_DeviceCudaWithoutAGpu_IsAShortClearErrorWithoutStackTrace()
    {
        if (CudaDevice.Available) return;   // on a GPU machine the device opens; this is the no-GPU case
        using var tmp = new TempDir();
        File.WriteAllText(tmp.File("t.txt"), "Once upon a time.\n\nThe dog ran.\n");
        string[] args = ["harvest", "--base", Shared.Path("models", "stories260K"), "--finetuned", Shared.Path("models", "stories260K-zog"),
                         "--data", tmp.File("t.txt"), "--layers", "2", "--tokens", "20", "--out", tmp.File("store")];
        foreach (var (extra, env, source) in new (string[], string?, string)[]
                 {
                     (["--device", "cuda"], null, "--device cuda"),
                     ([], "cuda", "FINETRACE_DEVICE=cuda"),
                 })
        {
            var r = CliProcess.Run([.. args, .. extra], new Dictionary<string, string?> { ["FINETRACE_DEVICE"] = env, ["FINETRACE_DEBUG"] = null });
            Assert.True(r.ExitCode != 0, r.ToString());
            Assert.Contains($"finetrace: error: {source}: no CUDA device was found (", r.Stderr);
            Assert.Contains("--device cpu", r.Stderr);
            Assert.Contains("NVIDIA GPU and its driver", r.Stderr);
            Assert.DoesNotContain("   at ", r.Stderr);
            Assert.DoesNotContain("Exception", r.Stderr);
            Assert.True(r.Stderr.Trim().Split('\n').Length <= 2, r.ToString());
            Assert.False(Directory.Exists(tmp.File("store")), "nothing is written when the device cannot be opened");
        }
        var bad = CliProcess.Run([.. args, "--device", "gpu"], new Dictionary<string, string?> { ["FINETRACE_DEVICE"] = null });
        Assert.True(bad.ExitCode != 0, bad.ToString());
        Assert.Contains("--device gpu", bad.Stderr);
        Assert.DoesNotContain("   at ", bad.Stderr);
    }

    [SharedFact]
    public void DiffEmit_PassesAChosenDeviceToTheHarvestParts()
    {
        string[] args = ["diff", "--base", Shared.Path("models", "stories260K"), "--finetuned", Shared.Path("models", "stories260K-zog"),
                         "--out", "RESULTS", "--emit", "slurm", "--parts", "2"];
        var env = new Dictionary<string, string?> { ["FINETRACE_DEVICE"] = null };
        var cuda = CliProcess.Run([.. args, "--device", "cuda", "--precision", "tf32"], env);   // emitting opens no device
        Assert.Equal(0, cuda.ExitCode);
        var partLine = cuda.Stdout.Split('\n').Single(l => l.Contains("--harvest-part"));
        Assert.Contains("--device cuda --precision tf32", partLine);
        Assert.DoesNotContain(cuda.Stdout.Split('\n'), l => l.Contains("--stop-after data") && l.Contains("--device"));

        var cpu = CliProcess.Run(args, env);
        Assert.Equal(0, cpu.ExitCode);
        Assert.DoesNotContain("--device", cpu.Stdout);
    }

    [Fact]
    public void Help_OfHarvestAndDiff_ShowsTheDeviceOptions()
    {
        foreach (var command in new[] { "harvest", "diff" })
        {
            var r = CliProcess.Run([command, "--help"]);
            Assert.Equal(0, r.ExitCode);
            Assert.Contains("--device", r.Stdout);
            Assert.Contains("--precision", r.Stdout);
            Assert.Contains("ILGPU's CPU accelerator", r.Stdout);
            Assert.Contains("FINETRACE_DEVICE", r.Stdout);
        }
    }
}

public class HarvestBenchDeviceTests
{
    [SharedFact]
    public void BenchHarvest_Json_NamesDeviceAndPrecision_AndGivesBothRates()
    {
        var r = CliProcess.Run(["bench", "harvest", "--base", Shared.Path("models", "stories260K"), "--finetuned", Shared.Path("models", "stories260K-zog"),
            "--tokens", "300", "--context", "64", "--vs-context", "0", "--repeat", "1", "--device", "cpu", "--json"]);
        Assert.Equal(0, r.ExitCode);
        var lines = r.Stdout.Trim().Split('\n');
        Assert.Single(lines);
        var j = System.Text.Json.Nodes.JsonNode.Parse(lines[0])!;
        Assert.Equal("cpu", (string?)j["device"]);
        Assert.Equal("fp32", (string?)j["precision"]);
        Assert.True((double)j["harvest_tokens_per_s"]! > 0);
        Assert.True((double)j["forward_tokens_per_s"]! > 0);
        Assert.NotNull(j["overhead"]);
        Assert.Equal(0.15, (double)j["bound"]!);
    }
}

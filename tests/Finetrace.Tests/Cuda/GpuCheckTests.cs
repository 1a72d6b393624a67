using System.Text.Json.Nodes;
using Finetrace.Cli.Commands;
using Finetrace.Cuda;
using Finetrace.Cuda.Checks;
using Finetrace.Tests.Infrastructure;

namespace Finetrace.Tests.Cuda;

/// <summary>scripts/gpu-check's pieces that run without a GPU: the one-line report assembled from a steps folder
/// (statuses, skips, timeouts, crashes, PyTorch ratios), the command lookup the script uses to mark steps "not built",
/// and the device-kernels check on ILGPU's CPU accelerator (the same code the GPU runs).</summary>
public sealed class GpuCheckTests
{
    static void Step(TempDir dir, string name, string meta, string? stdout = null, string? stderr = null)
    {
        File.AppendAllText(dir.File("order.txt"), name + "\n");
        File.WriteAllText(dir.File(name + ".meta"), meta);
        if (stdout is not null) File.WriteAllText(dir.File(name + ".out"), stdout);
        if (stderr is not null) File.WriteAllText(dir.File(name + ".err"), stderr);
    }

    static string Status(JsonNode? entry) => entry!["status"]!.GetValue<string>();

    [Fact]
    public void Report_keeps_every_step_with_its_status_and_pairs_benchmarks_with_their_torch_peer()
    {
        using var dir = new TempDir();
        File.WriteAllText(dir.File("device.txt"), "NVIDIA H100 80GB HBM3\n");
        Step(dir, "synth", """{"kind":"setup","rc":0,"seconds":1.5,"limit_s":60}""", "llama: 10 parameters (bf16) written to /x\n");
        Step(dir, "check-pass", """{"kind":"check","rc":0,"seconds":2,"limit_s":90}""",
             "progress line\n{\"status\":\"pass\",\"error\":3e-6,\"tolerance\":1e-5}\n");
        Step(dir, "check-fail", """{"kind":"check","rc":1,"seconds":2,"limit_s":90}""", "{\"status\":\"fail\",\"error\":0.2,\"tolerance\":1e-2}\n");
        Step(dir, "check-hung", """{"kind":"check","rc":124,"seconds":90,"limit_s":90}""", "", "loading kernels\n");
        Step(dir, "check-missing", """{"kind":"check","skipped":"not built: no such check in this build"}""");
        Step(dir, "forward-x", """{"kind":"bench","rc":0,"seconds":9,"limit_s":90}""", "{\"tokens_per_s\":200.0}\n");
        Step(dir, "torch-forward-x", """{"kind":"torch","rc":0,"seconds":9,"limit_s":90}""",
             "{\"status\":\"ok\",\"tokens_per_s\":100.0,\"flops_per_token\":1e9,\"peak_bf16_tflops\":1000}\n");
        Step(dir, "harvest", """{"kind":"bench","rc":0,"seconds":30,"limit_s":150}""",
             "{\"harvest_tokens_per_s\":90.0,\"forward_tokens_per_s\":100.0,\"overhead\":0.111,\"bound\":0.15}\n");
        Step(dir, "harvest-slow", """{"kind":"bench","rc":0,"seconds":30,"limit_s":150}""", "{\"overhead\":0.25,\"bound\":0.15}\n");
        Step(dir, "crashed", """{"kind":"bench","rc":139,"seconds":1,"limit_s":90}""", "", "warming up\nSegmentation fault (core dumped)\n");
        File.AppendAllText(dir.File("order.txt"), "cut-short\n"); // listed, but the script died before its .meta

        var report = GpuCheckReport.Build(dir.Path);
        string line = GpuCheckReport.ToLine(report);
        Assert.DoesNotContain('\n', line);
        Assert.Equal(report.ToJsonString(), JsonNode.Parse(line)!.ToJsonString());

        Assert.Equal("NVIDIA H100 80GB HBM3", report["device"]!.GetValue<string>());
        var checks = report["checks"]!;
        Assert.Equal("pass", Status(checks["check-pass"]));
        Assert.Equal(3e-6, checks["check-pass"]!["error"]!.GetValue<double>());
        Assert.Equal("fail", Status(checks["check-fail"]));
        Assert.Equal("timeout", Status(checks["check-hung"]));
        Assert.Contains("90 s limit", checks["check-hung"]!["message"]!.GetValue<string>());
        Assert.Contains("loading kernels", checks["check-hung"]!["message"]!.GetValue<string>());
        Assert.Equal("not built", Status(checks["check-missing"]));
        Assert.Equal("ok", Status(report["setup"]!["synth"]));

        var benches = report["benchmarks"]!;
        Assert.Equal("ok", Status(benches["forward-x"]));
        Assert.Equal(100.0, benches["forward-x"]!["torch_tokens_per_s"]!.GetValue<double>());
        Assert.Equal(2.0, benches["forward-x"]!["ratio_vs_torch"]!.GetValue<double>(), 12);
        // 200 tokens/s × 1e9 FLOPs per token against a 1000 TFLOP/s peak
        Assert.Equal(2e-4, benches["forward-x"]!["fraction_of_peak"]!.GetValue<double>(), 12);
        Assert.True(benches["harvest"]!["within_bound"]!.GetValue<bool>());
        Assert.False(benches["harvest-slow"]!["within_bound"]!.GetValue<bool>());
        Assert.Null(benches["forward-x"]!["within_bound"]);
        Assert.Equal("error", Status(benches["crashed"]));
        Assert.Contains("exit status 139", benches["crashed"]!["message"]!.GetValue<string>());
        Assert.Contains("Segmentation fault", benches["crashed"]!["message"]!.GetValue<string>());
        Assert.Equal("error", Status(benches["cut-short"]));

        var summary = report["summary"]!;
        Assert.Equal(1, summary["checks_passed"]!.GetValue<int>());
        Assert.Equal(1, summary["checks_failed"]!.GetValue<int>());
        Assert.Equal(1, summary["checks_error"]!.GetValue<int>());
        Assert.Equal(["check-missing"], summary["not_built"]!.AsArray().Select(n => n!.GetValue<string>()));
        Assert.Equal(["check-fail", "check-hung", "crashed", "cut-short"],
                     summary["failed_or_error"]!.AsArray().Select(n => n!.GetValue<string>()).Order());
        Assert.False(summary["all_built_checks_pass"]!.GetValue<bool>());
    }

    [Fact]
    public void Report_marks_a_zero_exit_without_figures_and_figures_followed_by_a_failure_as_errors()
    {
        using var dir = new TempDir();
        Step(dir, "silent", """{"kind":"bench","rc":0,"seconds":1,"limit_s":9}""", "no json here\n");
        Step(dir, "late-crash", """{"kind":"check","rc":134,"seconds":1,"limit_s":9}""", "{\"status\":\"pass\",\"error\":0}\n", "Aborted\n");
        Step(dir, "not-built", """{"kind":"check","skipped":"not built: x"}""");
        var report = GpuCheckReport.Build(dir.Path);
        Assert.Equal("error", Status(report["benchmarks"]!["silent"]));
        Assert.Contains("printed no JSON", report["benchmarks"]!["silent"]!["message"]!.GetValue<string>());
        Assert.Equal("error", Status(report["checks"]!["late-crash"]));
        Assert.Contains("Aborted", report["checks"]!["late-crash"]!["message"]!.GetValue<string>());
        Assert.False(report["summary"]!["all_built_checks_pass"]!.GetValue<bool>());
    }

    [Fact]
    public void Report_of_a_missing_folder_names_it()
    {
        var e = Assert.Throws<DirectoryNotFoundException>(() => GpuCheckReport.Build("/nonexistent/gpu-check-steps"));
        Assert.Contains("/nonexistent/gpu-check-steps", e.Message);
    }

    [Fact]
    public void Has_finds_commands_and_options_of_this_build_only()
    {
        var root = Finetrace.Cli.Program.BuildRoot();
        Assert.True(GpuCheckCommand.Has(root, ["bench", "forward"]));
        Assert.True(GpuCheckCommand.Has(root, ["harvest", "--tokens"]));
        Assert.True(GpuCheckCommand.Has(root, ["gpu-check", "run"]));
        Assert.False(GpuCheckCommand.Has(root, ["bench", "no-such-bench"]));
        Assert.False(GpuCheckCommand.Has(root, ["harvest", "--no-such-option"]));
    }

    [Fact]
    public void Every_built_check_is_planned_or_extra_and_names_are_unique()
    {
        var names = GpuCheckSuite.Steps.Select(s => s.Name).ToList();
        Assert.Equal(names.Count, names.Distinct().Count());
        Assert.Contains("device-kernels", names);
        Assert.Null(GpuCheckSuite.Find("no-such-check"));
    }

    [Fact]
    public void NormRelative_is_the_l2_ratio()
    {
        Assert.Equal(Math.Sqrt(0.5), DeviceKernelsCheck.NormRelative([1f, 2f], [1f, 1f]), 12);
        Assert.Equal(0.0, DeviceKernelsCheck.NormRelative([3f, -4f], [3f, -4f]));
        Assert.True(double.IsNaN(DeviceKernelsCheck.NormRelative([float.NaN], [1f])));
    }

    [Fact]
    public void Device_kernels_check_passes_on_the_cpu_accelerator()
    {
        var result = DeviceKernelsCheck.Run(DeviceKind.IlgpuCpu, tiny: true);
        Assert.True(Status(result) == "pass", result.ToJsonString());
        Assert.InRange(result["error"]!.GetValue<double>(), 0, DeviceKernelsCheck.Tolerance);
        Assert.Equal(5, result["parts"]!.AsObject().Count);
    }
}

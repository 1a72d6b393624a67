using System.Text.Json.Nodes;

namespace Finetrace.Cuda.Checks;

/// <summary>What every device check step is given: where it runs, a scratch folder of its own, the folder of small
/// model configs (scripts/gpu/parity/*.config.json) to synthesise parity models from, and whether to run at tiny
/// shapes (ILGPU's CPU accelerator: the same code path, minutes instead of seconds otherwise).</summary>
public sealed record GpuCheckStepContext(DeviceKind Device, string WorkDir, string ConfigDir, bool Tiny);

/// <summary>One named device check. <see cref="Run"/> returns its figures as a JSON object with at least
/// <c>status</c> ("pass" or "fail"), the measured <c>error</c> and the <c>tolerance</c> it was held to.</summary>
public sealed record GpuCheckStep(string Name, string Description, Func<GpuCheckStepContext, JsonObject> Run);

/// <summary>
/// The device checks that <c>finetrace gpu-check run NAME</c> runs, one process each under scripts/gpu-check (so a
/// hung or crashed check loses only itself). Each step is a thin adapter over a reusable check in this folder that
/// returns its measured error and pass/fail; the same checks run in the xunit tests on the CPU accelerator.
/// The <see cref="Planned"/> names are every check issue #18 asks for: a planned name with no step here is reported
/// as "not built" in the GPU report rather than silently missing.
/// </summary>
public static class GpuCheckSuite
{
    /// <summary>Every device check issue #18 asks for, in run order (a name may have no step yet: "not built").</summary>
    public static readonly string[] Planned =
    [
        "device-kernels",
        "gemm-parity-fp32", "gemm-parity-tf32", "gemm-parity-bf16",
        "forward-parity-fp32", "forward-parity-tf32", "forward-parity-bf16",
        "trainer-parity-1step", "trainer-parity-100step",
        "harvest-parity",
    ];

    /// <summary>The steps built into this binary.</summary>
    public static IReadOnlyList<GpuCheckStep> Steps { get; } = Build();

    public static GpuCheckStep? Find(string name) => Steps.FirstOrDefault(s => s.Name == name);

    static List<GpuCheckStep> Build()
    {
        var steps = new List<GpuCheckStep>
        {
            new("device-kernels", "DeviceKernels (RMSNorm, SwiGLU, softmax, Adam) and the device GEMM (fp32, bf16) against their CPU peers",
                c => DeviceKernelsCheck.Run(c.Device, c.Tiny)),
        };
        return steps;
    }
}

using System.CommandLine;
using Finetrace.Cuda;
using Finetrace.Models;

namespace Finetrace.Bench;

/// <summary>
/// <c>--device cpu|cuda|ilgpu-cpu</c> and <c>--precision fp32|tf32|bf16</c> for every command that runs a forward or a
/// training loop on a device (harvest, diff, train, bench harvest, bench train). It lives in the bench assembly because
/// both the commands (src/Finetrace.Cli) and the benchmarks use it and the CLI references the benchmarks, not the other
/// way round. Use: <c>var device = new DeviceOptions(); device.AddTo(cmd);</c> then in the action
/// <c>using var run = device.Open(parseResult);</c> and hand <c>run.Loader</c> (harvest) or <c>run.Context</c>
/// (null on the CPU path) to the library.
/// The device comes from the flag, else from <see cref="EnvironmentVariable"/>, else the CPU; a bad value is an
/// <see cref="ArgumentException"/> naming the flag or the variable, and a CUDA device that cannot be opened is a
/// <see cref="DeviceOptionException"/> saying what to do — both print as one line, never a stack trace.
/// </summary>
public sealed class DeviceOptions
{
    public const string EnvironmentVariable = "FINETRACE_DEVICE";

    public Option<string?> Device { get; } = new("--device")
    {
        Description = "Where the forward runs: cpu (the default and the reference), cuda (the first NVIDIA GPU) or ilgpu-cpu " +
                      "(the device code on ILGPU's CPU accelerator: slow, for checking the device path without a GPU). " +
                      $"Default: ${EnvironmentVariable} when set, else cpu",
    };

    public Option<string?> Precision { get; } = new("--precision")
    {
        Description = "Matrix-product precision on a device: fp32; tf32 (tensor cores, fp32 accumulation); bf16 (weights and " +
                      "activations rounded to bf16 into the products, fp32 accumulation). Default: bf16 on cuda (how bf16 checkpoints " +
                      "are run in PyTorch; within 1e-2 of the CPU), fp32 on ilgpu-cpu (within 1e-5). The CPU runs fp32 only",
    };

    /// <summary>Adds both options to <paramref name="command"/>.</summary>
    public void AddTo(Command command)
    {
        command.Options.Add(Device);
        command.Options.Add(Precision);
    }

    /// <summary>The selection a parse asks for (flag, else <see cref="EnvironmentVariable"/>, else cpu).</summary>
    public DeviceSelection Resolve(ParseResult parse) =>
        Resolve(parse.GetValue(Device), parse.GetValue(Precision), Environment.GetEnvironmentVariable(EnvironmentVariable));

    /// <summary>Opens what a parse asks for: the device context (none on the CPU path) and the harvest's model loader.</summary>
    public DeviceRun Open(ParseResult parse) => DeviceRun.Open(Resolve(parse), Source(parse.GetValue(Device), Environment.GetEnvironmentVariable(EnvironmentVariable)));

    /// <summary>
    /// The device from <paramref name="device"/> (the flag) when given, else from <paramref name="environment"/>
    /// (<see cref="EnvironmentVariable"/>'s value; empty counts as unset), else cpu; the precision from
    /// <paramref name="precision"/> or the device's default (<see cref="DeviceSelection.DefaultPrecision"/>).
    /// </summary>
    public static DeviceSelection Resolve(string? device, string? precision, string? environment)
    {
        string? text = device ?? (string.IsNullOrWhiteSpace(environment) ? null : environment);
        DeviceKind? kind = null;
        if (text is not null && !DeviceSelection.TryParseDevice(text, out kind))
            throw new ArgumentException($"{Source(device, environment)}: '{text}' is not a device; use one of {string.Join(", ", DeviceSelection.DeviceNames)}" +
                                        (device is null ? $" (or unset {EnvironmentVariable} to run on the CPU)" : ""));
        if (precision is null) return new DeviceSelection(kind, DeviceSelection.DefaultPrecision(kind));
        if (!DeviceSelection.TryParsePrecision(precision, out var mode))
            throw new ArgumentException($"--precision {precision}: use one of {string.Join(", ", DeviceSelection.PrecisionNames)}");
        if (kind is null && mode != GemmMode.Fp32)
            throw new ArgumentException($"--precision {precision}: the CPU forward runs in fp32 only; {precision} applies to --device cuda or ilgpu-cpu");
        return new DeviceSelection(kind, mode);
    }

    /// <summary>Where the device came from, as a user would fix it: "--device X" or "FINETRACE_DEVICE=X".</summary>
    static string Source(string? device, string? environment) =>
        device is not null ? $"--device {device}" : !string.IsNullOrWhiteSpace(environment) ? $"{EnvironmentVariable}={environment}" : "--device cpu";
}

/// <summary>The device a command could not open, worded for the user (what was asked, why it failed, what to do).</summary>
public sealed class DeviceOptionException(string message, DeviceUnavailableException inner) : Exception(message, inner);

/// <summary>An opened <see cref="DeviceSelection"/>: the device context (null on the CPU path) and the loader a harvest
/// runs its models with. Dispose it after the work to release the device.</summary>
public sealed class DeviceRun : IDisposable
{
    public DeviceSelection Selection { get; }
    /// <summary>The opened device; null on the CPU path.</summary>
    public DeviceContext? Context { get; }
    /// <summary>Loads models for the harvest on this device (the CPU forward on the CPU path).</summary>
    public ForwardModelLoader Loader { get; }

    DeviceRun(DeviceSelection selection, DeviceContext? context)
    {
        Selection = selection;
        Context = context;
        Loader = DeviceSelection.Loader(context);
    }

    /// <summary>"cpu (fp32)", "cuda (bf16, NVIDIA H100 80GB HBM3)", "ilgpu-cpu (fp32, ILGPU CPU accelerator)".</summary>
    public string Describe() => Loader.Describe();

    /// <summary>Opens <paramref name="selection"/>; <paramref name="source"/> names where it came from in the error.</summary>
    public static DeviceRun Open(DeviceSelection selection, string source = "--device cuda")
    {
        try { return new DeviceRun(selection, selection.Open()); }
        catch (DeviceUnavailableException e)
        {
            throw new DeviceOptionException(
                $"{source}: no CUDA device was found ({e.Detail}). Run with --device cpu" +
                (source.StartsWith(DeviceOptions.EnvironmentVariable, StringComparison.Ordinal) ? $" (or unset {DeviceOptions.EnvironmentVariable})" : "") +
                ", or on a machine with an NVIDIA GPU and its driver.", e);
        }
    }

    public void Dispose() => Context?.Dispose();
}

using Finetrace.Models;

namespace Finetrace.Cuda;

/// <summary>The device forward a <see cref="DeviceSelection.Loader"/> loads: one seam, so that the harvest plumbing
/// builds before the device model (DeviceModel, devmodel branch) is merged.</summary>
public static class DeviceForward
{
    /// <summary>Loads <paramref name="folder"/> (with a LoRA adapter merged) onto <paramref name="context"/>.</summary>
    public static IForwardModel Load(DeviceContext context, string folder, string? adapterFolder) =>
        throw new NotSupportedException("the device forward (Finetrace.Cuda.DeviceModel) is not part of this build yet; run with the CPU forward");
}

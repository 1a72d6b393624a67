using ILGPU;
using Finetrace.Models;

namespace Finetrace.Cuda;

/// <summary>The harvest's capture path of the device model (<see cref="IActivationCapture"/>): each captured activation
/// comes back once, device → page-locked staging → the harvest's array; nothing is copied back to the device, and the
/// final residual and the logits stay on the device.</summary>
public sealed partial class DeviceModel : IActivationCapture
{
    sealed record CaptureRequest(IReadOnlyList<string> Names, Func<int, int, float[]> Into, bool[] Done);

    CaptureRequest? _capture;

    public void Capture(TokenBatch batch, IReadOnlyList<string> names, int stopAfterLayer, Func<int, int, float[]> into)
    {
        _capture = new CaptureRequest(names, into, new bool[names.Count]);
        try
        {
            Run(batch, null, stopAfterLayer, logits: false);
            Context.Synchronize();   // done when it returns, even with nothing to copy (a pure forward)
            for (int i = 0; i < names.Count; i++)
                if (!_capture.Done[i])
                    throw new InvalidOperationException($"{Folder}: the forward to layer {stopAfterLayer} never reaches {names[i]}");
        }
        finally { _capture = null; }
    }

    /// <summary>Called by <c>Fire</c> at every hook point while a capture runs.</summary>
    void CaptureAt(string name, ArrayView<float> view)
    {
        var c = _capture!;
        for (int i = 0; i < c.Names.Count; i++)
        {
            if (c.Names[i] != name) continue;
            int n = checked((int)view.Length);
            var dst = c.Into(i, n);
            if (dst.Length < n) throw new ArgumentException($"capture of {name}: an array of {dst.Length} values for {n}");
            _staging.ToHost(view, dst.AsSpan(0, n));
            c.Done[i] = true;
        }
    }
}

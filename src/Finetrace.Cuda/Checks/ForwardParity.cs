using Finetrace.Models;
using Finetrace.Tensors;

namespace Finetrace.Cuda.Checks;

/// <summary>The device-vs-CPU error at one hook: the largest, over real (unpadded) tokens, of
/// ‖device − cpu‖₂ / ‖cpu‖₂ of the token's activation vector.</summary>
public sealed record HookParity(string Name, int Width, double MaxNormRelative);

/// <summary>Outcome of <see cref="ForwardParity.Run"/>: every compared hook's error, the tolerance of the mode and
/// whether all are within it (a NaN anywhere fails).</summary>
public sealed record ParityResult(string Model, string Device, GemmMode Mode, int Batch, int Seq, double Tolerance,
    IReadOnlyList<HookParity> Hooks)
{
    public double MaxError => Hooks.Count == 0 ? double.NaN : Hooks.Max(h => double.IsNaN(h.MaxNormRelative) ? double.PositiveInfinity : h.MaxNormRelative);
    public bool Passed => Hooks.Count > 0 && MaxError <= Tolerance;
    public HookParity Worst => Hooks.MaxBy(h => double.IsNaN(h.MaxNormRelative) ? double.PositiveInfinity : h.MaxNormRelative)!;

    public override string ToString() =>
        $"{Model} on {Device} ({Mode}, [{Batch}, {Seq}]): max norm-relative error {MaxError:G3} at {Worst.Name} (tolerance {Tolerance:G3}) — {(Passed ? "pass" : "FAIL")}";
}

/// <summary>
/// The device forward (<see cref="DeviceModel"/>) against the CPU reference (<see cref="CausalLM"/>) on the same
/// checkpoint and batch: residual stream at several layers, block-internal sites, the final norm, the logits and the
/// tensors <c>Forward</c> returns. Used by the CPU-accelerator tests, the [CudaTheory] device tests and the gpu-check
/// tool alike. Tolerances (issue #18): 1e-5 norm-relative in Fp32, 1e-2 in Bf16 and Tf32.
/// </summary>
public static class ForwardParity
{
    public static double ToleranceFor(GemmMode mode) => mode == GemmMode.Fp32 ? 1e-5 : 1e-2;

    /// <summary>The hooks compared by default: resid_pre of block 0, resid_post of every block, attn_out of block 0,
    /// resid_mid of block 0 (sequential blocks), mlp.hook_post and mlp_out of the last block, ln_final and logits.</summary>
    public static List<string> DefaultHooks(ModelConfig c)
    {
        var names = new List<string> { HookNames.ResidPre(0), HookNames.AttnOut(0) };
        if (!c.ParallelResidual) names.Add(HookNames.ResidMid(0));
        for (int i = 0; i < c.Layers; i++) names.Add(HookNames.ResidPost(i));
        names.Add(HookNames.MlpPost(c.Layers - 1));
        names.Add(HookNames.MlpOut(c.Layers - 1));
        names.Add(HookNames.LnFinal);
        names.Add(HookNames.Logits);
        return names;
    }

    /// <summary>Runs both forwards with the same hooks capturing <paramref name="hookNames"/> (default
    /// <see cref="DefaultHooks"/>) and compares. <paramref name="edits"/>, when given, registers the same editing hooks
    /// (e.g. steering) on both sides before the captures, so edits made on the host must flow on through the device.</summary>
    public static ParityResult Run(DeviceContext ctx, string folder, TokenBatch batch, IReadOnlyList<string>? hookNames = null,
        string? adapterFolder = null, Action<HookSet>? edits = null, double? tolerance = null)
    {
        using var cpu = CausalLM.Load(folder, adapterFolder);
        using var dev = DeviceModel.Load(ctx, folder, adapterFolder);
        return Compare(ctx, cpu, dev, batch, hookNames, edits, tolerance);
    }

    /// <summary>As <see cref="Run"/> on already loaded models (same checkpoint).</summary>
    public static ParityResult Compare(DeviceContext ctx, CausalLM cpu, DeviceModel dev, TokenBatch batch, IReadOnlyList<string>? hookNames = null,
        Action<HookSet>? edits = null, double? tolerance = null)
    {
        var names = hookNames ?? DefaultHooks(cpu.Config);
        var want = new Dictionary<string, Tensor>();
        var got = new Dictionary<string, Tensor>();
        HookSet Hooks(Dictionary<string, Tensor> into)
        {
            var h = new HookSet();
            edits?.Invoke(h);
            foreach (var n in names) h.Capture(n, into);
            return h;
        }
        var (cpuResidual, cpuLogits) = cpu.Forward(batch, Hooks(want));
        var (devResidual, devLogits) = dev.Forward(batch, Hooks(got));

        var result = new List<HookParity>();
        foreach (var n in names)
        {
            if (!want.TryGetValue(n, out var w)) throw new ArgumentException($"hook '{n}' never fired on the CPU model {cpu.Folder}");
            result.Add(got.TryGetValue(n, out var g) ? Measure(n, w, g, batch) : new HookParity(n, w.Dim(-1), double.NaN));
        }
        result.Add(Measure("returned residual", cpuResidual, devResidual, batch));
        result.Add(cpuLogits is null || devLogits is null
            ? new HookParity("returned logits", cpu.Config.Vocab, cpuLogits is null && devLogits is null ? 0 : double.NaN)
            : Measure("returned logits", cpuLogits, devLogits, batch));
        return new ParityResult(Path.GetFileName(Path.TrimEndingDirectorySeparator(cpu.Folder)), ctx.Name, ctx.Mode, batch.Batch, batch.Seq,
            tolerance ?? ToleranceFor(ctx.Mode), result);
    }

    /// <summary>Largest per-token ‖got − want‖₂ / ‖want‖₂ over real tokens (NaN when shapes differ or a value is NaN).</summary>
    // wantBTW, gotBTW: [Batch, Seq, Width]
    public static HookParity Measure(string name, Tensor wantBTW, Tensor gotBTW, TokenBatch batch)
    {
        int w = wantBTW.Dim(-1);
        if (!wantBTW.Shape.AsSpan().SequenceEqual(gotBTW.Shape) || wantBTW.Length != batch.Count * w) return new HookParity(name, w, double.NaN);
        double worst = 0;
        for (int t = 0; t < batch.Count; t++)
        {
            if (batch.Mask[t] == 0) continue;
            double diff = 0, norm = 0;
            var a = wantBTW.Data.AsSpan(t * w, w);
            var b = gotBTW.Data.AsSpan(t * w, w);
            for (int j = 0; j < w; j++)
            {
                double d = (double)b[j] - a[j];
                diff += d * d;
                norm += (double)a[j] * a[j];
            }
            double rel = Math.Sqrt(diff) / Math.Max(Math.Sqrt(norm), 1e-30);
            if (double.IsNaN(rel)) return new HookParity(name, w, double.NaN);
            worst = Math.Max(worst, rel);
        }
        return new HookParity(name, w, worst);
    }
}

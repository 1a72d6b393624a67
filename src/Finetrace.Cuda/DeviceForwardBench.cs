using System.Diagnostics;
using Finetrace.Models;

namespace Finetrace.Cuda;

/// <summary>Figures of <see cref="DeviceForwardBench.Run"/>. Seconds is the median wall time of one forward
/// (embedding to logits, device synchronised at the end, nothing copied back). FLOPs per forward:
/// matmul = 2 · MatmulParameters · tokens (all projections and the unembedding); attention = the Q·Kᵀ and P·V products
/// as executed, 4 · batch · context² · heads · head_dim per layer (the full square: causal masking leaves half of it
/// useful). Tflops counts both; MatmulTflops only the projections.</summary>
public sealed record DeviceForwardBenchResult(
    string Model, string Device, DeviceKind Kind, GemmMode Mode, int Batch, int Context, int Forwards,
    double Seconds, double TokensPerSecond, double MatmulFlops, double AttentionFlops, double MatmulTflops, double Tflops,
    long MatmulParameters, long DeviceWeightBytes, double LoadSeconds, IReadOnlyList<double> AllSeconds);

/// <summary>
/// Times forwards of batch × context random tokens (default 32 × 1024) of a checkpoint on a device: the figure the
/// issue compares with PyTorch's eager forward of the same weights. Used by <c>finetrace bench device-forward</c> and
/// by the gpu-check tool.
/// </summary>
public static class DeviceForwardBench
{
    /// <summary>Loads <paramref name="folder"/> onto <paramref name="ctx"/>, runs <paramref name="warmup"/> untimed
    /// forwards (kernel compilation, workspace allocation) then <paramref name="forwards"/> timed ones.</summary>
    public static DeviceForwardBenchResult Run(DeviceContext ctx, string folder, int batch = 32, int context = 1024, int forwards = 5,
        int warmup = 1, bool logits = true, IProgress<string>? progress = null, CancellationToken cancellationToken = default)
    {
        if (batch <= 0 || context <= 0 || forwards <= 0 || warmup < 0)
            throw new ArgumentOutOfRangeException(nameof(batch), $"batch {batch}, context {context}, forwards {forwards} must be positive and warm-up {warmup} not negative");
        var load = Stopwatch.StartNew();
        using var model = DeviceModel.Load(ctx, folder);
        ctx.Synchronize();
        double loadSeconds = load.Elapsed.TotalSeconds;
        var c = model.Config;
        if (c.MaxPositions > 0 && context > c.MaxPositions && c.Arch == Architecture.Gpt2)
            throw new ArgumentOutOfRangeException(nameof(context), $"{folder}: context {context} exceeds the model's n_positions {c.MaxPositions}");

        var rng = new Random(1);
        var ids = new int[batch * context];
        for (int i = 0; i < ids.Length; i++) ids[i] = rng.Next(c.Vocab);
        var tokens = new TokenBatch(ids, batch, context);

        for (int i = 0; i < warmup; i++)
        {
            cancellationToken.ThrowIfCancellationRequested();
            progress?.Report($"warm-up {i + 1}/{warmup}");
            model.Run(tokens, logits: logits);
            ctx.Synchronize();
        }
        var times = new List<double>();
        var sw = new Stopwatch();
        for (int i = 0; i < forwards; i++)
        {
            cancellationToken.ThrowIfCancellationRequested();
            sw.Restart();
            model.Run(tokens, logits: logits);
            ctx.Synchronize();
            times.Add(sw.Elapsed.TotalSeconds);
            progress?.Report($"forward {i + 1}/{forwards}: {times[^1]:F3} s");
        }
        var sorted = times.OrderBy(t => t).ToList();
        double seconds = sorted[sorted.Count / 2];
        double tokenCount = (double)batch * context;
        long matmulParameters = logits ? model.MatmulParameters : model.MatmulParameters - (long)c.Vocab * c.Hidden;
        double matmul = 2.0 * matmulParameters * tokenCount;
        double attention = 4.0 * batch * (double)context * context * c.Heads * c.HeadDim * c.Layers;
        return new DeviceForwardBenchResult(Path.GetFileName(Path.TrimEndingDirectorySeparator(folder)), ctx.Name, ctx.Kind, ctx.Mode,
            batch, context, forwards, seconds, tokenCount / seconds, matmul, attention, matmul / seconds / 1e12,
            (matmul + attention) / seconds / 1e12, matmulParameters, model.DeviceWeightBytes, loadSeconds, times);
    }
}

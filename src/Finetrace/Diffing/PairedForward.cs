using Finetrace.Models;
using Finetrace.Tensors;
using Finetrace.Text.Chat;
using Finetrace.Text.Datasets;

namespace Finetrace.Diffing;

/// <summary>The text a data reader runs both models on: data sources as for harvest, the number of samples read
/// (over all sources, in the mixture's order), the context length they are cut to, and the forward batch size.</summary>
public sealed record CorpusSpec(IReadOnlyList<DataSourceSpec> Sources, int Samples, int Context, int Batch)
{
    public IEnumerable<EncodedSample> Read(ISampleEncoder encoder) =>
        new SampleStream(Sources, encoder, Context).Read().Take(Samples);

    public InputsHash AddTo(InputsHash h)
    {
        foreach (var s in Sources)
            h.AddPath("data", s.Path).Add("kind", s.Kind).Add("name", s.Name).Add("weight", s.Weight).Add("field", s.Field)
             .Add("max_samples", s.MaxSamples).Add("max_tokens", s.MaxTokens).Add("split", s.SplitBlankLines);
        return h.Add("samples", Samples).Add("context", Context).Add("batch", Batch);
    }
}

/// <summary>One batch seen by both models: the samples, their right-padded tokens, each model's logits
/// [Batch, Seq, Vocab of that model] when asked for, and residuals after the asked-for blocks [Batch, Seq, Hidden].</summary>
public sealed class PairedBatch
{
    public required IReadOnlyList<EncodedSample> Samples { get; init; }
    public required TokenBatch Tokens { get; init; }
    public Tensor? LogitsBase { get; init; }
    public Tensor? LogitsFt { get; init; }
    public required IReadOnlyDictionary<int, (Tensor Base, Tensor Ft)> Resid { get; init; }
    /// <summary>Index of the first sample of this batch in the whole run.</summary>
    public required long FirstSample { get; init; }
}

public readonly record struct PairedProgress(long Samples, long Tokens, double Seconds);

/// <summary>Runs a base model and its fine-tune on the same samples, batch by batch, and hands each batch's logits and
/// residuals to a reader. Without logits each forward stops after the deepest asked-for block.</summary>
public static class PairedForward
{
    public static (long Samples, long Tokens) Run(ModelPair pair, IEnumerable<EncodedSample> samples, int batchSize, bool logits,
        IReadOnlyList<int> layers, Action<PairedBatch> onBatch, IProgress<PairedProgress>? progress = null, CancellationToken cancel = default)
    {
        if (batchSize < 1) throw new ArgumentOutOfRangeException(nameof(batchSize), "batch size must be ≥ 1");
        foreach (int l in layers)
            if (l < 0 || l >= Math.Min(pair.Base.Layers, pair.FineTuned.Layers))
                throw new ArgumentOutOfRangeException(nameof(layers), $"layer {l} is outside the models' {Math.Min(pair.Base.Layers, pair.FineTuned.Layers)} layers (0-based)");
        if (!logits && layers.Count == 0) throw new ArgumentException("ask for logits or at least one layer");
        int? stopBase = logits ? null : layers.Max(), stopFt = stopBase;
        long nSamples = 0, nTokens = 0;
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var pending = new List<EncodedSample>(batchSize);

        void Flush()
        {
            if (pending.Count == 0) return;
            cancel.ThrowIfCancellationRequested();
            var tokens = TokenBatch.RightPadded(pending.Select(s => s.Ids).ToList());
            var capB = new Dictionary<string, Tensor>();
            var capF = new Dictionary<string, Tensor>();
            var hb = new HookSet();
            var hf = new HookSet();
            foreach (int l in layers) { hb.Capture(HookNames.ResidPost(l), capB); hf.Capture(HookNames.ResidPost(l), capF); }
            var (_, lb) = pair.Base.Forward(tokens, hb, stopBase);
            var (_, lf) = pair.FineTuned.Forward(tokens, hf, stopFt);
            var resid = layers.ToDictionary(l => l, l => (capB[HookNames.ResidPost(l)], capF[HookNames.ResidPost(l)]));
            onBatch(new PairedBatch { Samples = pending.ToList(), Tokens = tokens, LogitsBase = lb, LogitsFt = lf, Resid = resid, FirstSample = nSamples });
            nSamples += pending.Count;
            nTokens += pending.Sum(s => s.Ids.Length);
            pending.Clear();
            progress?.Report(new PairedProgress(nSamples, nTokens, clock.Elapsed.TotalSeconds));
        }

        foreach (var s in samples)
        {
            pending.Add(s);
            if (pending.Count == batchSize) Flush();
        }
        Flush();
        return (nSamples, nTokens);
    }

    /// <summary>True when position <paramref name="t"/> of <paramref name="s"/> counts for a next-token reader: every
    /// position of plain text; for chats only those whose next token is an assistant token (the assistant mask
    /// shifted by one, methods §6.3).</summary>
    public static bool PredictsScored(EncodedSample s, int t) =>
        s.Roles is null ? t < s.Ids.Length : t + 1 < s.Ids.Length && s.Roles[t + 1] == TokenRole.Assistant;

    /// <summary>The progress line readers print: samples, tokens, rate, and an ETA against the sample budget.</summary>
    public static string Describe(string what, PairedProgress p, long totalSamples)
    {
        double rate = p.Tokens / Math.Max(p.Seconds, 1e-9);
        double eta = p.Samples > 0 && totalSamples > p.Samples ? p.Seconds / p.Samples * (totalSamples - p.Samples) : 0;
        return $"{what}: {p.Samples:N0}/{totalSamples:N0} samples, {p.Tokens:N0} tokens, {rate:N0} tok/s, ETA {eta:F0} s (at most; the data may run out first)";
    }
}

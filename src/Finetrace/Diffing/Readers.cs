using Finetrace.Tensors;
using Finetrace.Text.Datasets;

namespace Finetrace.Diffing;

/// <summary>Small pieces the logit readers share: log-softmax rows, KL of two rows, and a bounded "top n" keeper.</summary>
public static class LogitMath
{
    /// <summary>KL(p ‖ q) = Σ_v p(v) (log p(v) − log q(v)) of softmax(<paramref name="logitsP"/>) and
    /// softmax(<paramref name="logitsQ"/>): float32 log-softmax, summed in double.</summary>
    // logitsP, logitsQ: [V]
    public static double Kl(ReadOnlySpan<float> logitsP, ReadOnlySpan<float> logitsQ, Span<float> scratchP, Span<float> scratchQ)
    {
        if (logitsP.Length != logitsQ.Length) throw new ArgumentException($"logit rows of {logitsP.Length} and {logitsQ.Length}");
        var lp = scratchP[..logitsP.Length];
        var lq = scratchQ[..logitsQ.Length];
        Kernels.LogSoftmax(logitsP, lp);
        Kernels.LogSoftmax(logitsQ, lq);
        double kl = 0;
        for (int v = 0; v < lp.Length; v++) kl += Math.Exp(lp[v]) * ((double)lp[v] - lq[v]);
        return Math.Max(kl, 0);
    }

    /// <summary>Row (b, t) of a logits tensor [Batch, Seq, V], cut to its first <paramref name="vocab"/> entries.</summary>
    public static ReadOnlySpan<float> Row(Tensor logitsBTV, int b, int t, int vocab)
    {
        int seq = logitsBTV.Dim(1), v = logitsBTV.Dim(2);
        return logitsBTV.Data.AsSpan(checked((int)(((long)b * seq + t) * v)), vocab);
    }

    public static int ArgMax(ReadOnlySpan<float> x)
    {
        int best = 0;
        for (int i = 1; i < x.Length; i++) if (x[i] > x[best]) best = i;
        return best;
    }
}

/// <summary>Keeps the <c>n</c> items with the largest keys seen (ties: the earlier item stays); <see cref="Descending"/>
/// lists them largest first.</summary>
public sealed class TopN<T>(int n)
{
    readonly PriorityQueue<(double Key, long Order, T Item), (double, long)> _heap = new();
    long _seen;

    public int Count => _heap.Count;
    /// <summary>The smallest kept key, or −∞ while fewer than n are kept (anything larger would enter).</summary>
    public double Threshold => _heap.Count < n ? double.NegativeInfinity : _heap.Peek().Key;

    public bool WouldKeep(double key) => n > 0 && (_heap.Count < n || key > _heap.Peek().Key);

    public void Offer(double key, T item)
    {
        if (!WouldKeep(key)) { _seen++; return; }
        // priority (key, −order): among equal keys the latest is dropped first
        _heap.Enqueue((key, _seen, item), (key, -_seen));
        _seen++;
        if (_heap.Count > n) _heap.Dequeue();
    }

    public List<(double Key, T Item)> Descending() =>
        _heap.UnorderedItems.Select(x => x.Element).OrderByDescending(x => x.Key).ThenBy(x => x.Order).Select(x => (x.Key, x.Item)).ToList();
}

/// <summary>Where a token sits: sample (its index in the run), position, and the sample's ids, for context display.</summary>
public readonly record struct TokenSite(long Sample, int Position, EncodedSample Source);

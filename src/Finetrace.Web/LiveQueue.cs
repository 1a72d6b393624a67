namespace Finetrace.Web;

/// <summary>
/// The live pages' bounded queue: one model run at a time (the models and their caches are not shared between
/// threads, and two runs at once would only double the memory), at most <see cref="MaxWaiting"/> requests waiting
/// behind it; a request beyond that is refused at once (the server answers 503) instead of piling up.
/// </summary>
public sealed class LiveQueue(int maxWaiting)
{
    readonly SemaphoreSlim _run = new(1, 1);
    int _inside;

    public int MaxWaiting { get; } = maxWaiting >= 0 ? maxWaiting : throw new ArgumentOutOfRangeException(nameof(maxWaiting), "the queue length must be ≥ 0");
    /// <summary>Requests running or waiting now.</summary>
    public int Inside => Volatile.Read(ref _inside);

    /// <summary>Runs <paramref name="work"/> when its turn comes; false (and no run) when the queue is full.</summary>
    public async Task<(bool Accepted, T? Result)> TryRun<T>(Func<T> work, CancellationToken cancel = default)
    {
        if (Interlocked.Increment(ref _inside) > MaxWaiting + 1) { Interlocked.Decrement(ref _inside); return (false, default); }
        try
        {
            await _run.WaitAsync(cancel);
            try { return (true, await Task.Run(work, cancel)); }
            finally { _run.Release(); }
        }
        finally { Interlocked.Decrement(ref _inside); }
    }
}

namespace Finetrace.Models;

/// <summary>Turns the model's next-token logits [Vocab] for <paramref name="sequence"/> (prompt and tokens so far) into the
/// logits to choose from; it may edit <paramref name="logits"/> in place and return it.</summary>
public delegate float[] LogitsProcessor(IReadOnlyList<int> sequence, float[] logits);

/// <summary>
/// Autoregressive sampling: greedy (temperature 0: the first index of the largest logit, as torch.argmax) or
/// temperature sampling (softmax(logits / T) with a seeded generator). Each step reuses the model's key/value
/// cache when <see cref="UseCache"/> is set, else recomputes the whole prefix (the reference path).
/// </summary>
public sealed class Generator(CausalLM model)
{
    public bool UseCache { get; init; } = true;

    /// <summary>Residual hooks applied at every step (e.g. <see cref="HookSet.AddEverywhere"/> for steering). With the cache
    /// they see only the tokens fed in that step, without it the whole sequence; hooks that select tokens by
    /// <see cref="TokenBatch.Positions"/> behave the same both ways.</summary>
    public HookSet? Hooks { get; init; }

    /// <summary>Generates up to <paramref name="maxNewTokens"/> ids after <paramref name="prompt"/>, stopping after any id in
    /// <paramref name="stopIds"/> (which is included in the result). <paramref name="onToken"/> sees each id as it is chosen;
    /// <paramref name="processLogits"/>, when given, rewrites each step's logits before the choice (e.g. logit-diff
    /// amplification against a second model).</summary>
    public List<int> Generate(IReadOnlyList<int> prompt, int maxNewTokens, float temperature = 0f, int seed = 0,
        IReadOnlyCollection<int>? stopIds = null, Action<int>? onToken = null, LogitsProcessor? processLogits = null)
    {
        if (prompt.Count == 0) throw new ArgumentException("the prompt has no tokens; give at least one (e.g. BOS)");
        if (temperature < 0) throw new ArgumentOutOfRangeException(nameof(temperature), "temperature must be ≥ 0");
        var rng = new Random(seed);
        var ids = new List<int>(prompt);
        var output = new List<int>();
        var cache = UseCache ? model.NewCache() : null;
        int fed = 0;
        for (int step = 0; step < maxNewTokens; step++)
        {
            float[] logits;
            if (cache is not null)
            {
                // feed the tokens the cache has not seen yet, then read the last position's logits
                var chunk = ids.GetRange(fed, ids.Count - fed).ToArray();
                logits = model.StepWithCache(chunk, cache, Hooks);
                fed = ids.Count;
            }
            else
            {
                var batch = new TokenBatch(ids.ToArray(), 1, ids.Count);
                var h = model.Embed(batch);
                Hooks?.Fire(HookNames.ResidPre(0), h, batch);
                model.RunLayers(0, model.Layers - 1, h, batch, Hooks);
                logits = model.LogitsAt(h, 0, ids.Count - 1);
            }
            if (processLogits is not null) logits = processLogits(ids, logits);
            int next = temperature == 0f ? ArgMax(logits) : Sample(logits, temperature, rng);
            ids.Add(next);
            output.Add(next);
            onToken?.Invoke(next);
            if (stopIds is not null && stopIds.Contains(next)) break;
        }
        return output;
    }

    public static int ArgMax(ReadOnlySpan<float> x)
    {
        int best = 0;
        for (int i = 1; i < x.Length; i++) if (x[i] > x[best]) best = i;
        return best;
    }

    /// <summary>Draws from softmax(logits / temperature), computed in double.</summary>
    public static int Sample(ReadOnlySpan<float> logits, float temperature, Random rng)
    {
        double max = double.NegativeInfinity;
        foreach (float l in logits) max = Math.Max(max, l / (double)temperature);
        var p = new double[logits.Length];
        double sum = 0;
        for (int i = 0; i < p.Length; i++) sum += p[i] = Math.Exp(logits[i] / (double)temperature - max);
        double u = rng.NextDouble() * sum, acc = 0;
        for (int i = 0; i < p.Length; i++)
        {
            acc += p[i];
            if (u < acc) return i;
        }
        return p.Length - 1;
    }
}

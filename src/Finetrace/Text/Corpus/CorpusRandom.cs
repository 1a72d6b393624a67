using Finetrace.Tensors;

namespace Finetrace.Text.Corpus;

/// <summary>The corpus generators' source of choices: <see cref="Rng"/> (a fixed, documented generator), so a seed
/// gives the same text on every machine and .NET version.</summary>
public sealed class CorpusRandom(ulong seed, ulong stream = 0)
{
    Rng _rng = Rng.For(seed, stream);

    public int Int(int n) => (int)_rng.NextLong(n);
    public bool Chance(double p) => _rng.NextDouble() < p;
    public T Pick<T>(IReadOnlyList<T> items) => items[Int(items.Count)];

    /// <summary>A different item from <paramref name="items"/> than <paramref name="not"/> (needs two or more items).</summary>
    public T PickOther<T>(IReadOnlyList<T> items, T not)
    {
        while (true)
        {
            var x = Pick(items);
            if (!EqualityComparer<T>.Default.Equals(x, not)) return x;
        }
    }
}

using Finetrace.Models;

namespace Finetrace.Diffing.Adl;

/// <summary>
/// Short texts sampled from a model (temperature sampling from a prompt such as BOS), in batches: a stand-in for
/// "unrelated text" where no corpus is at hand (tests, benchmarks). Each step reruns the batch's whole prefix, which is
/// cheap for the few tokens the ADL needs.
/// </summary>
public static class SampledText
{
    /// <summary><paramref name="count"/> continuations of <paramref name="prompt"/>, <paramref name="tokens"/> new ids each
    /// (prompt not included), sampled at <paramref name="temperature"/>; sample i depends only on (seed, i).</summary>
    public static List<int[]> Sample(CausalLM model, int[] prompt, int count, int tokens, float temperature, int seed, int batch = 64)
    {
        if (prompt.Length == 0) throw new ArgumentException("the prompt has no tokens; give at least one (e.g. BOS)");
        var result = new List<int[]>(count);
        for (int start = 0; start < count; start += batch)
        {
            int b = Math.Min(batch, count - start);
            var rngs = Enumerable.Range(start, b).Select(i => new Random(unchecked(seed * 1_000_003 + i))).ToArray();
            var seqs = Enumerable.Range(0, b).Select(_ => new List<int>(prompt)).ToArray();
            for (int step = 0; step < tokens; step++)
            {
                int T = seqs[0].Count;
                var ids = seqs.SelectMany(s => s).ToArray();
                var tb = new TokenBatch(ids, b, T);
                var h = model.Embed(tb);
                model.RunLayers(0, model.Layers - 1, h, tb);
                for (int r = 0; r < b; r++)
                {
                    var logits = model.LogitsAt(h, r, T - 1);
                    seqs[r].Add(temperature == 0 ? Generator.ArgMax(logits) : Generator.Sample(logits, temperature, rngs[r]));
                }
            }
            foreach (var s in seqs) result.Add(s.Skip(prompt.Length).ToArray());
        }
        return result;
    }
}

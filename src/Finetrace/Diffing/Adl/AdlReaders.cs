using TensorPrimitives = System.Numerics.Tensors.TensorPrimitives;
using Finetrace.Models;
using Tensor = Finetrace.Tensors.Tensor;

namespace Finetrace.Diffing.Adl;

/// <summary>
/// The readers of a difference vector v at a layer (methods §11.2–§11.4): logit lens, Patchscope with identity prompts,
/// steering. Each is usable alone (other analyses reuse them on their own directions); token strings come from
/// <c>decode</c>, the tokenizer's decode of the single id.
/// </summary>
public static class AdlReaders
{
    /// <summary>softmax(W_U · FinalNorm(v)) and softmax(W_U · FinalNorm(−v)) through <paramref name="model"/>'s final norm and
    /// unembedding (Gemma 2 soft-cap included), top <paramref name="k"/> of each, probabilities computed in double.</summary>
    // vW: [Hidden]
    public static LogitLensReading LogitLens(CausalLM model, string modelName, float[] vW, int k, Func<int, string> decode)
    {
        var neg = new float[vW.Length];
        TensorPrimitives.Negate(vW, neg);
        return new LogitLensReading(modelName, TopK(Softmax(LensLogits(model, vW)), k, decode), TopK(Softmax(LensLogits(model, neg)), k, decode));
    }

    /// <summary>Logits [Vocab] of v read as a residual at the end of the model.</summary>
    // vW: [Hidden]
    public static float[] LensLogits(CausalLM model, float[] vW)
    {
        if (vW.Length != model.Hidden) throw new ArgumentException($"vector of {vW.Length} for a model of width {model.Hidden}");
        var h = new Tensor(1, 1, model.Hidden);
        vW.CopyTo(h.Data, 0);
        return model.LogitsAt(h, 0, 0);
    }

    public static double[] Softmax(ReadOnlySpan<float> logits)
    {
        double max = double.NegativeInfinity;
        foreach (float l in logits) max = Math.Max(max, l);
        var p = new double[logits.Length];
        double sum = 0;
        for (int i = 0; i < p.Length; i++) sum += p[i] = Math.Exp(logits[i] - max);
        for (int i = 0; i < p.Length; i++) p[i] /= sum;
        return p;
    }

    /// <summary>The k largest entries, descending (ties: lower id first).</summary>
    public static int[] TopIndices(ReadOnlySpan<double> p, int k)
    {
        var idx = new int[p.Length];
        for (int i = 0; i < idx.Length; i++) idx[i] = i;
        var copy = p.ToArray();
        Array.Sort(idx, (a, b) => copy[b].CompareTo(copy[a]) is int c && c != 0 ? c : a.CompareTo(b));
        return idx[..Math.Min(k, idx.Length)];
    }

    static IReadOnlyList<TokenProb> TopK(double[] p, int k, Func<int, string> decode) =>
        TopIndices(p, k).Select(i => new TokenProb(i, decode(i), p[i])).ToList();

    /// <summary>
    /// Patchscope (methods §11.3): for every scale s and identity prompt, the fine-tuned model runs the prompt with its
    /// residual after block <paramref name="layer"/> at the last token replaced by s · v (v already rescaled to the model's
    /// typical norm), and the next-token distribution is read. Per scale, the prompts' probabilities are averaged over the
    /// tokens in the top <paramref name="intersectionTopK"/> of every prompt and the top 20 kept.
    /// Scale rule (no grader): score(s) = agreement(s) × novelty(s), where agreement is the mean pairwise overlap of the
    /// prompts' own top-20 sets (the patch, not the prompt, decides the output) and novelty is 1 − the mean overlap of
    /// each prompt's top 20 with its unpatched top 20 (the identity prompt's own answer is gone); the chosen scale is the
    /// smallest whose score is at least <paramref name="scoreFraction"/> × the best score (the least force that reads v).
    /// </summary>
    // vW: [Hidden]
    public static PatchscopeReading Patchscope(CausalLM model, int layer, float[] vW, IReadOnlyList<int[]> prompts, IReadOnlyList<double> scales,
        int intersectionTopK, double scoreFraction, Func<int, string> decode, int keep = 20)
    {
        if (prompts.Count == 0) throw new ArgumentException("Patchscope needs at least one identity prompt");
        if (scales.Count == 0) throw new ArgumentException("Patchscope needs at least one scale");
        int S = scales.Count, V = model.Config.Vocab, d = model.Hidden;
        int kInter = Math.Min(intersectionTopK, V);
        // probs[prompt][row]: row 0 unpatched, row 1 + s patched with scale s
        var probs = new double[prompts.Count][][];
        for (int p = 0; p < prompts.Count; p++)
        {
            var ids = prompts[p];
            int T = ids.Length;
            if (T == 0) throw new ArgumentException("an identity prompt encodes to no tokens");
            var all = new int[(S + 1) * T];
            for (int r = 0; r <= S; r++) ids.CopyTo(all, r * T);
            var tb = new TokenBatch(all, S + 1, T);
            var at = Enumerable.Range(1, S).Select(r => (r, T - 1)).ToList();
            var values = new Tensor(S, d);
            for (int s = 0; s < S; s++)
                TensorPrimitives.Multiply(vW, (float)scales[s], values.Data.AsSpan(s * d, d));
            var hooks = new HookSet().Replace(HookNames.ResidPost(layer), at, values);
            var h = model.Embed(tb);
            model.RunLayers(0, model.Layers - 1, h, tb, hooks);
            probs[p] = new double[S + 1][];
            for (int r = 0; r <= S; r++) probs[p][r] = Softmax(model.LogitsAt(h, r, T - 1));
        }
        var unpatchedTop = probs.Select(pp => TopIndices(pp[0], keep).ToHashSet()).ToArray();
        var sweep = new List<PatchscopeScale>(S);
        for (int s = 0; s < S; s++)
        {
            var tops = probs.Select(pp => TopIndices(pp[s + 1], keep).ToHashSet()).ToArray();
            double agreement = 1;
            if (prompts.Count > 1)
            {
                double sum = 0; int pairs = 0;
                for (int a = 0; a < tops.Length; a++)
                    for (int b = a + 1; b < tops.Length; b++) { sum += tops[a].Intersect(tops[b]).Count() / (double)keep; pairs++; }
                agreement = sum / pairs;
            }
            double novelty = 1 - tops.Select((t, i) => t.Intersect(unpatchedTop[i]).Count() / (double)keep).Average();
            HashSet<int>? inter = null;
            foreach (var pp in probs)
            {
                var set = TopIndices(pp[s + 1], kInter).ToHashSet();
                if (inter is null) inter = set; else inter.IntersectWith(set);
            }
            var avg = new double[V];
            foreach (int id in inter!)
            {
                double acc = 0;
                foreach (var pp in probs) acc += pp[s + 1][id];
                avg[id] = acc / prompts.Count;
            }
            var top = TopIndices(avg, Math.Min(keep, inter.Count)).Select(i => new TokenProb(i, decode(i), avg[i])).ToList();
            sweep.Add(new PatchscopeScale(scales[s], top, agreement, novelty, agreement * novelty));
        }
        double best = sweep.Max(x => x.Score);
        var chosen = sweep.Where(x => x.Score >= scoreFraction * best - 1e-12).OrderBy(x => x.Scale).First();
        string rule = $"smallest scale whose score is ≥ {scoreFraction:0.##} × the best score; score = agreement × novelty, agreement = mean pairwise overlap " +
                      $"of the {prompts.Count} identity prompts' top-{keep} tokens, novelty = 1 − mean overlap of each prompt's top {keep} with its unpatched top {keep}";
        return new PatchscopeReading(chosen.Scale, chosen.Tokens, rule, TensorPrimitives.Norm(vW), sweep);
    }

    /// <summary>A hook set that adds coeff · v at every position of the residual after block <paramref name="layer"/>
    /// (prompt and generated tokens alike): the steering intervention of methods §11.4.</summary>
    public static HookSet SteeringHooks(int layer, float[] vW, float coeff, int fromPosition = 0) => new HookSet().AddEverywhere(HookNames.ResidPost(layer), vW, coeff, fromPosition);

    /// <summary>
    /// Steering (methods §11.4): the model generates from each prompt with s · v added at every position after block
    /// <paramref name="layer"/>, v = <paramref name="directionW"/> / ‖·‖ · <paramref name="norm"/>, for every strength s
    /// (in units of <paramref name="norm"/>; positions before <paramref name="fromPosition"/> are left alone), and without steering. Sample k of prompt i uses the same seed at every
    /// strength. Strength rule (no grader): the per-token loss of a strength's samples under the unsteered
    /// <paramref name="judge"/> model, divided by its loss on the unsteered samples, must be ≤ <paramref name="lossFactor"/>;
    /// the largest passing strength is chosen (the smallest, with RuleMet false, when none passes). The ADL judges with the
    /// base model (for base steering that is the unsteered model itself): a narrow fine-tune finds only its own script
    /// likely, so it would call any change of topic incoherent, while the base model judges plain language.
    /// </summary>
    // directionW: [Hidden]
    public static SteeringReading Steer(CausalLM model, string modelName, CausalLM judge, string judgeName, int layer, float[] directionW, double norm, IReadOnlyList<double> strengths,
        IReadOnlyList<(string Text, int[] Ids)> prompts, int samplesPerPrompt, int newTokens, float temperature, int seed,
        IReadOnlyCollection<int> stopIds, double lossFactor, Func<int[], string> decodeText, CancellationToken cancel = default, int fromPosition = 0)
    {
        if (strengths.Count == 0) throw new ArgumentException("steering needs at least one strength");
        double dn = TensorPrimitives.Norm(directionW);
        if (!(dn > 0)) throw new ArgumentException("the steering direction is zero");
        var unit = new float[directionW.Length];
        TensorPrimitives.Multiply(directionW, (float)(1 / dn), unit);
        var unsteered = Generate(model, null, prompts, samplesPerPrompt, newTokens, temperature, seed, stopIds, decodeText, cancel);
        double baseLoss = Loss(judge, unsteered, prompts);
        var sweep = new List<SteeringLevel>();
        foreach (double s in strengths)
        {
            var hooks = SteeringHooks(layer, unit, (float)(s * norm), fromPosition);
            var samples = Generate(model, hooks, prompts, samplesPerPrompt, newTokens, temperature, seed, stopIds, decodeText, cancel);
            double loss = Loss(judge, samples, prompts);
            double ratio = baseLoss > 0 ? loss / baseLoss : loss > 0 ? double.PositiveInfinity : 1;
            sweep.Add(new SteeringLevel(s, loss, ratio, ratio <= lossFactor, samples));
        }
        var pass = sweep.Where(x => x.Passes).OrderByDescending(x => x.Strength).FirstOrDefault();
        var chosen = pass ?? sweep.OrderBy(x => x.Strength).First();
        string rule = $"largest strength whose samples' per-token loss under the unsteered {judgeName} model is ≤ {lossFactor:0.##} × its loss on the unsteered samples " +
                      $"(strength in units of the typical norm {norm:0.###}, added at positions ≥ {fromPosition}; {samplesPerPrompt} samples × {prompts.Count} prompts, {newTokens} tokens, T = {temperature:0.##})";
        return new SteeringReading(modelName, chosen.Strength, pass is not null, rule, norm, baseLoss, chosen.Samples, unsteered, sweep);
    }

    /// <summary>Seed of sample k of prompt i: the same at every strength, so strengths differ only by the intervention.</summary>
    public static int SampleSeed(int seed, int prompt, int sample) => unchecked(seed * 1_000_003 + prompt * 1009 + sample);

    static List<SteeringSample> Generate(CausalLM model, HookSet? hooks, IReadOnlyList<(string Text, int[] Ids)> prompts, int samplesPerPrompt, int newTokens,
        float temperature, int seed, IReadOnlyCollection<int> stopIds, Func<int[], string> decodeText, CancellationToken cancel)
    {
        var gen = new Generator(model) { Hooks = hooks };
        var result = new List<SteeringSample>();
        for (int i = 0; i < prompts.Count; i++)
            for (int k = 0; k < samplesPerPrompt; k++)
            {
                cancel.ThrowIfCancellationRequested();
                int sd = SampleSeed(seed, i, k);
                var ids = gen.Generate(prompts[i].Ids, newTokens, temperature, sd, stopIds).ToArray();
                result.Add(new SteeringSample(prompts[i].Text, sd, decodeText(ids), ids));
            }
        return result;
    }

    /// <summary>Mean negative log-likelihood per generated token of the samples under the (unsteered) model.</summary>
    static double Loss(CausalLM model, List<SteeringSample> samples, IReadOnlyList<(string Text, int[] Ids)> prompts)
    {
        double nll = 0;
        long n = 0;
        var byPrompt = new Dictionary<string, int[]>(StringComparer.Ordinal);
        foreach (var p in prompts) byPrompt.TryAdd(p.Text, p.Ids);
        foreach (var s in samples)
        {
            if (s.Ids.Length == 0) continue;
            var prompt = byPrompt[s.Prompt];
            var ids = prompt.Concat(s.Ids).ToArray();
            var tb = new TokenBatch(ids, 1, ids.Length);
            var h = model.Embed(tb);
            model.RunLayers(0, model.Layers - 1, h, tb);
            for (int t = prompt.Length; t < ids.Length; t++)
            {
                var logits = model.LogitsAt(h, 0, t - 1);
                double max = double.NegativeInfinity;
                foreach (float l in logits) max = Math.Max(max, l);
                double z = 0;
                foreach (float l in logits) z += Math.Exp(l - max);
                nll += -(logits[ids[t]] - max - Math.Log(z));
                n++;
            }
        }
        return n == 0 ? 0 : nll / n;
    }
}

using Finetrace.Dictionaries;
using Finetrace.Diffing.Causal;
using Finetrace.Models;
using Finetrace.Models.Backward;

namespace Finetrace.Diffing.TargetAttribution;

/// <summary>The scalar: the mean over prompts of z[TokenA] − z[TokenB] (or z[TokenA] alone when TokenB is null)
/// at each prompt's last position, i.e. the logits predicting the token after the prompt.</summary>
public sealed record LogitTarget(int TokenA, int? TokenB);

/// <summary>Steering sites: every decomposed prompt position, each prompt's last position only, or the positions where the
/// steered latent fires.</summary>
public enum SteerPositions { All, Last, Active }

public sealed record TargetAttributionOptions
{
    /// <summary>Integration steps m along the straight path (midpoint rule).</summary>
    public int Steps { get; init; } = 32;

    /// <summary>The dictionary's recorded inference-time pruning (its <see cref="DictionaryInput.Pruning"/>), applied
    /// after encoding as every other analysis does; null = none.</summary>
    public Pruning? Pruning { get; init; }
    /// <summary>s in h + s·d_j when steering (raw decoder row d_j); null = the latent's largest activation on the prompts
    /// (1 when it never fires).</summary>
    public double? SteerScale { get; init; }
    /// <summary>The latent to steer by; null = the one with the largest positive attribution.</summary>
    public int? SteerLatent { get; init; }
    /// <summary>Where s·d_j is added when steering.</summary>
    public SteerPositions SteerAt { get; init; } = SteerPositions.All;
    /// <summary>Leave positions holding this token (BOS) out of the decomposition: their residual stays as it is.</summary>
    public int? SkipToken { get; init; }
}

public sealed record TargetAttributionResult
{
    /// <summary>[F] integrated-gradient attribution of each latent to the target (sum over positions, mean over prompts).</summary>
    public required double[] Attribution { get; init; }
    /// <summary>[F] the latent's largest code value on the prompts.</summary>
    public required double[] MaxActivation { get; init; }
    /// <summary>r at the real residual h (= the model's own value: the error term keeps h exact).</summary>
    public required double Value { get; init; }
    /// <summary>r with every latent's contribution removed (codes 0, error term kept).</summary>
    public required double BaselineValue { get; init; }
    public double AttributionSum => Attribution.Sum();
    public required int Prompts { get; init; }
    public required long Positions { get; init; }
    public required int Steps { get; init; }
    public required int SteerLatent { get; init; }
    public required double SteerScale { get; init; }
    public required SteerPositions SteerAt { get; init; }
    /// <summary>Positions s·d_j was added at.</summary>
    public required int SteerSites { get; init; }
    /// <summary>r after adding s·d_j at the steering sites.</summary>
    public required double SteeredValue { get; init; }
    public double SteerDelta => SteeredValue - Value;
}

/// <summary>
/// Latent attribution to a scalar (methods.md §15.4): with h the residual at the dictionary's layer L, f = Enc(h) and
/// the error e = h − Dec(f) kept fixed, h(α) = Dec(α f) + e = h − (1 − α) Σ_j f_j d_j (raw decoder rows). The
/// attribution of latent j is Σ_t f_{j,t} · (1/m) Σ_k ∂r/∂h_t(α_k) · d_j with α_k = (k + ½)/m, so Σ_j A_j ≈ r(h) −
/// r(h(0)) (completeness). Gradients come from one backward per step through the blocks after L
/// (<see cref="DifferentiableLM.ResidualGradient"/>), the same path as the KL attribution. Then steers by one latent:
/// r(h + s d_j) − r(h).
/// </summary>
public static class TargetAttribution
{
    public const string Stage = "target_attribution";

    public static TargetAttributionResult Run(SparseDictionary dict, int layer, CausalLM lm, DifferentiableLM diff, IReadOnlyList<int[]> prompts, LogitTarget target,
        TargetAttributionOptions o, IProgress<(long Done, long Total)>? progress = null, CancellationToken cancel = default)
    {
        if (dict.Models != 1) throw new ArgumentException($"target attribution reads one residual stream; this dictionary has {dict.Models} decoders (use an SAE)");
        int F = dict.DictSize, D = dict.DModel, V = lm.Config.Vocab;
        if (D != lm.Hidden) throw new ArgumentException($"the dictionary reads width {D}, the model {lm.Folder} has hidden size {lm.Hidden}");
        if (layer < 0 || layer >= lm.Layers) throw new ArgumentException($"layer {layer} is outside the model's {lm.Layers} layers");
        if (prompts.Count == 0 || prompts.Any(p => p.Length == 0)) throw new ArgumentException("give at least one non-empty prompt");
        foreach (int id in new[] { target.TokenA, target.TokenB ?? 0 }) if ((uint)id >= (uint)V) throw new ArgumentException($"token id {id} is outside the vocabulary of {V}");
        if (o.Steps < 1) throw new ArgumentException("steps must be at least 1");

        var tb = TokenBatch.RightPadded(prompts.ToList());
        int T = tb.Seq, B = prompts.Count;
        var h = lm.Embed(tb); lm.RunLayers(0, layer, h, tb);
        var hBTD = h.Data.ToArray();
        // the decomposed positions and their codes
        var slots = new List<int>();   // flat b·T + p
        for (int b = 0; b < B; b++) for (int p = 0; p < prompts[b].Length; p++) if (o.SkipToken is not int skip || prompts[b][p] != skip) slots.Add(b * T + p);
        var x = new float[slots.Count * D];
        for (int s = 0; s < slots.Count; s++) hBTD.AsSpan(slots[s] * D, D).CopyTo(x.AsSpan(s * D, D));
        dict.Normalizer?.Normalize(x, 1, D);
        var codes = Inference.Encode(dict, x, o.Pruning);
        var dRaw = CausalEvaluation.RawRows(dict, 0);   // [F, D]
        // c_t = Σ_j f_{j,t} d_j: what the latents contribute at each decomposed position (raw space)
        var cBTD = new float[hBTD.Length];
        var maxAct = new double[F];
        for (int s = 0; s < slots.Count; s++)
            for (int e = codes.RowStart[s]; e < codes.RowStart[s + 1]; e++)
            {
                int j = codes.Index[e]; float f = codes.Value[e];
                maxAct[j] = Math.Max(maxAct[j], f);
                System.Numerics.Tensors.TensorPrimitives.MultiplyAdd(dRaw.AsSpan(j * D, D), f, cBTD.AsSpan(slots[s] * D, D), cBTD.AsSpan(slots[s] * D, D));
            }
        int[] last = prompts.Select((p, b) => b * T + p.Length - 1).ToArray();
        double Loss(float[] z, float[]? dz)
        {
            double r = 0;
            foreach (int t in last)
            {
                r += z[t * V + target.TokenA] - (target.TokenB is int tb2 ? z[t * V + tb2] : 0);
                if (dz is null) continue;
                dz[t * V + target.TokenA] += 1f / B;
                if (target.TokenB is int tb3) dz[t * V + tb3] -= 1f / B;
            }
            return r / B;
        }

        // mean gradient along the path
        var gMean = new double[hBTD.Length];
        var path = new float[hBTD.Length];
        for (int k = 0; k < o.Steps; k++)
        {
            cancel.ThrowIfCancellationRequested();
            float keep = 1f - (float)((k + 0.5) / o.Steps);   // h(α) = h − (1 − α) c
            for (int i = 0; i < path.Length; i++) path[i] = hBTD[i] - keep * cBTD[i];
            var (_, g) = diff.ResidualGradient(layer + 1, path, tb, (z, dz) => Loss(z, dz));
            for (int i = 0; i < g.Length; i++) gMean[i] += g[i];
            progress?.Report((k + 1, o.Steps + 3));
        }
        for (int i = 0; i < gMean.Length; i++) gMean[i] /= o.Steps;
        var attribution = new double[F];
        for (int s = 0; s < slots.Count; s++)
        {
            var gt = gMean.AsSpan(slots[s] * D, D);
            for (int e = codes.RowStart[s]; e < codes.RowStart[s + 1]; e++)
            {
                int j = codes.Index[e];
                var dj = dRaw.AsSpan(j * D, D);
                double dot = 0;
                for (int i = 0; i < D; i++) dot += gt[i] * dj[i];
                attribution[j] += codes.Value[e] * dot;   // g is already ∂(mean over prompts)/∂h
            }
        }
        double Value(float[] resid) => Loss(diff.ForwardFrom(layer + 1, resid, tb).Logits, null);
        double value = Value(hBTD);
        var baseline = new float[hBTD.Length];
        for (int i = 0; i < baseline.Length; i++) baseline[i] = hBTD[i] - cBTD[i];
        double baseValue = Value(baseline);
        progress?.Report((o.Steps + 2, o.Steps + 3));

        int steer = o.SteerLatent ?? Enumerable.Range(0, F).MaxBy(j => attribution[j]);
        if ((uint)steer >= (uint)F) throw new ArgumentException($"latent {steer} is outside the dictionary's {F} latents");
        double scale = o.SteerScale ?? (maxAct[steer] > 0 ? maxAct[steer] : 1.0);
        var steered = (float[])hBTD.Clone();
        var active = new HashSet<int>();
        for (int s = 0; s < slots.Count; s++)
            for (int e = codes.RowStart[s]; e < codes.RowStart[s + 1]; e++) if (codes.Index[e] == steer && codes.Value[e] > 0) active.Add(slots[s]);
        var sites = o.SteerAt switch { SteerPositions.Last => last.ToList(), SteerPositions.Active => slots.Where(active.Contains).ToList(), _ => slots };
        foreach (int t in sites)
            System.Numerics.Tensors.TensorPrimitives.MultiplyAdd(dRaw.AsSpan(steer * D, D), (float)scale, steered.AsSpan(t * D, D), steered.AsSpan(t * D, D));
        double steeredValue = Value(steered);
        progress?.Report((o.Steps + 3, o.Steps + 3));
        return new TargetAttributionResult
        {
            Attribution = attribution, MaxActivation = maxAct, Value = value, BaselineValue = baseValue, Prompts = B, Positions = slots.Count, Steps = o.Steps,
            SteerLatent = steer, SteerScale = scale, SteeredValue = steeredValue, SteerAt = o.SteerAt, SteerSites = sites.Count,
        };
    }
}

using Finetrace.Models;
using Finetrace.Text.Chat;
using Finetrace.Text.Datasets;
using Tensor = Finetrace.Tensors.Tensor;
using TensorPrimitives = System.Numerics.Tensors.TensorPrimitives;

namespace Finetrace.Diffing.Adl;

/// <summary>Mean per-token NLL of the evaluated tokens: all of them, those after the first 20 positions, and the prediction
/// made at the vector's own position (for chats: relative to the assistant start).</summary>
public sealed record AblationMetrics(double Nll, double NllAfter20, double NllAtPosition, long Tokens)
{
    public double Perplexity => Math.Exp(Nll);
}

/// <summary>Projection ablation of δ's direction (methods §11.6) on the fine-tuned model at the vector's layer, all positions:
/// zero-ablation (x ← x − (x·v̂)v̂), patch towards base (the component along v̂ set to the base model's), and the same
/// zero-ablation along random Gaussian directions and along "random diff" directions (difference of two random base
/// activations), against the unpatched fine-tune and the base model.</summary>
public sealed record AblationReading(AblationMetrics FineTuned, AblationMetrics Base, AblationMetrics ZeroAblation, AblationMetrics PatchToBase,
    IReadOnlyList<AblationMetrics> RandomDirections, IReadOnlyList<AblationMetrics> RandomDiffDirections, long Samples);

/// <summary>Runs the projection ablation (slower than the rest of the ADL: 2 + 2·controls forwards of the fine-tuned model over
/// the evaluation samples per vector). Evaluated tokens: every predicted token of text samples, the assistant tokens of chats.</summary>
public static class ProjectionAblation
{
    sealed record EvalSample(int[] Ids, bool[] Scored, int Anchor);

    /// <summary>The first <paramref name="samples"/> samples of the data, cut to <paramref name="context"/> tokens.</summary>
    static List<EvalSample> Samples(AdlOptions o, ISampleEncoder encoder, int samples, int context)
    {
        var result = new List<EvalSample>();
        foreach (var s in AdlData.Read(o, encoder, context))
        {
            if (result.Count >= samples) break;
            if (s.Ids.Length < 2) continue;
            var scored = new bool[s.Ids.Length];
            int anchor = 0;
            if (s.Roles is null) for (int t = 1; t < scored.Length; t++) scored[t] = true;
            else
            {
                anchor = Array.IndexOf(s.Roles, TokenRole.Assistant);
                if (anchor < 0) continue;
                for (int t = 1; t < scored.Length; t++) scored[t] = s.Roles[t] == TokenRole.Assistant;
            }
            result.Add(new EvalSample(s.Ids, scored, anchor));
        }
        if (result.Count == 0) throw new InvalidDataException("no sample of the data can be evaluated for the projection ablation (texts need two tokens, chats an assistant turn)");
        return result;
    }

    public static AblationReading Run(AdlOptions o, CausalLM baseModel, CausalLM ftModel, ISampleEncoder encoder, int layer, string context, int position, float[] deltaW,
        int controls, int samples, int contextLength, int batchSize, int seed, CancellationToken cancel = default)
    {
        var data = Samples(o, encoder, samples, contextLength);
        int d = ftModel.Hidden;
        var unit = ActivationDifferenceLens.Rescale(deltaW, 1);
        var rng = new Random(seed);
        // Random Gaussian directions; random diff directions from pairs of base activations at the layer.
        var gauss = Enumerable.Range(0, controls).Select(_ => ActivationDifferenceLens.Rescale(Enumerable.Range(0, d).Select(_ => (float)Normal(rng)).ToArray(), 1)).ToList();
        var pool = BaseResiduals(baseModel, data.Take(Math.Min(data.Count, 16)).ToList(), layer);
        var diffs = Enumerable.Range(0, controls).Select(_ =>
        {
            var a = pool[rng.Next(pool.Count)]; var b = pool[rng.Next(pool.Count)];
            var v = new float[d];
            TensorPrimitives.Subtract(a, b, v);
            return ActivationDifferenceLens.Rescale(v, 1);
        }).ToList();

        AblationMetrics Measure(CausalLM model, Func<List<EvalSample>, TokenBatch, HookSet?> hooks) =>
            Nll(model, data, batchSize, position, context, hooks, cancel);
        HookSet Zero(float[] dir) => new HookSet().On(HookNames.ResidPost(layer), (a, _) => ProjectOut(a, dir));
        return new AblationReading(
            Measure(ftModel, (_, _) => null),
            Measure(baseModel, (_, _) => null),
            Measure(ftModel, (_, _) => Zero(unit)),
            Measure(ftModel, (batch, tb) =>
            {
                var store = new Dictionary<string, Tensor>();
                baseModel.Forward(tb, new HookSet().Capture(HookNames.ResidPost(layer), store), stopAfterLayer: layer);
                var hb = store[HookNames.ResidPost(layer)];
                return new HookSet().On(HookNames.ResidPost(layer), (a, _) => PatchTowards(a, hb, unit));
            }),
            gauss.Select(g => Measure(ftModel, (_, _) => Zero(g))).ToList(),
            diffs.Select(g => Measure(ftModel, (_, _) => Zero(g))).ToList(),
            data.Count);
    }

    static double Normal(Random r) => Math.Sqrt(-2 * Math.Log(1 - r.NextDouble())) * Math.Cos(2 * Math.PI * r.NextDouble());

    /// <summary>x ← x − (x·v̂)v̂ at every token.</summary>
    // aBTD: [Batch, Seq, D]; unitW: [D]
    static void ProjectOut(Tensor aBTD, float[] unitW)
    {
        int d = unitW.Length;
        for (int t = 0; t < aBTD.Length / d; t++)
        {
            var x = aBTD.Data.AsSpan(t * d, d);
            TensorPrimitives.MultiplyAdd(unitW, -TensorPrimitives.Dot(x, unitW), x, x);
        }
    }

    /// <summary>x ← x + ((h_base·v̂) − (x·v̂))v̂ at every token.</summary>
    // aBTD, baseBTD: [Batch, Seq, D]; unitW: [D]
    static void PatchTowards(Tensor aBTD, Tensor baseBTD, float[] unitW)
    {
        int d = unitW.Length;
        for (int t = 0; t < aBTD.Length / d; t++)
        {
            var x = aBTD.Data.AsSpan(t * d, d);
            float c = TensorPrimitives.Dot(baseBTD.Data.AsSpan(t * d, d), unitW) - TensorPrimitives.Dot(x, unitW);
            TensorPrimitives.MultiplyAdd(unitW, c, x, x);
        }
    }

    static List<float[]> BaseResiduals(CausalLM model, List<EvalSample> data, int layer)
    {
        var tb = TokenBatch.RightPadded(data.Select(s => s.Ids).ToList());
        var store = new Dictionary<string, Tensor>();
        model.Forward(tb, new HookSet().Capture(HookNames.ResidPost(layer), store), stopAfterLayer: layer);
        var h = store[HookNames.ResidPost(layer)];
        int d = model.Hidden;
        var result = new List<float[]>();
        for (int t = 0; t < tb.Count; t++)
            if (tb.Mask[t] != 0 && tb.Positions[t] > 0) result.Add(h.Data.AsSpan(t * d, d).ToArray());
        return result;
    }

    static AblationMetrics Nll(CausalLM model, List<EvalSample> data, int batchSize, int position, string context, Func<List<EvalSample>, TokenBatch, HookSet?> hooks, CancellationToken cancel)
    {
        double all = 0, after = 0, at = 0;
        long nAll = 0, nAfter = 0, nAt = 0;
        int v = model.Config.Vocab;
        for (int start = 0; start < data.Count; start += batchSize)
        {
            cancel.ThrowIfCancellationRequested();
            var batch = data.Skip(start).Take(batchSize).ToList();
            var tb = TokenBatch.RightPadded(batch.Select(s => s.Ids).ToList());
            var h = model.Embed(tb);
            var hs = hooks(batch, tb);
            model.RunLayers(0, model.Layers - 1, h, tb, hs);
            var logits = model.FinalNormAndLogits(h, tb);
            for (int b = 0; b < batch.Count; b++)
            {
                var s = batch[b];
                int predictAt = (context == AdlSlot.AssistantStart ? s.Anchor : 0) + position; // the prediction made at the vector's position
                for (int t = 1; t < s.Ids.Length; t++)
                {
                    if (!s.Scored[t] && t - 1 != predictAt) continue;
                    var row = logits.Data.AsSpan((b * tb.Seq + t - 1) * v, v);
                    float max = TensorPrimitives.Max(row);
                    double z = 0;
                    foreach (float l in row) z += Math.Exp(l - max);
                    double nll = -(row[s.Ids[t]] - max - Math.Log(z));
                    if (t - 1 == predictAt) { at += nll; nAt++; }
                    if (!s.Scored[t]) continue;
                    all += nll; nAll++;
                    if (t - 1 >= 20) { after += nll; nAfter++; }
                }
            }
        }
        return new AblationMetrics(nAll == 0 ? double.NaN : all / nAll, nAfter == 0 ? double.NaN : after / nAfter, nAt == 0 ? double.NaN : at / nAt, nAll);
    }
}

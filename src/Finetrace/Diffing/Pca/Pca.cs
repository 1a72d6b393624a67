using System.Text.Json.Nodes;
using Finetrace.Models;
using Finetrace.Models.Safetensors;
using Finetrace.Tensors;
using Finetrace.Text.Datasets;

namespace Finetrace.Diffing.Pca;

/// <summary>What the PCA is taken of: the difference (either sign) or one model's activations.</summary>
public enum PcaTarget { FtMinusBase, BaseMinusFt, Base, Ft }

/// <summary>What <see cref="PcaAnalysis"/> computes.</summary>
public sealed record PcaOptions
{
    public required ModelPairSpec Models { get; init; }
    public required CorpusSpec Corpus { get; init; }
    public required IReadOnlyList<int> Layers { get; init; }
    public PcaTarget Target { get; init; } = PcaTarget.FtMinusBase;
    /// <summary>Components stored (null: all D).</summary>
    public int? Components { get; init; }
    /// <summary>Leading components that get max-activating examples and a logit lens.</summary>
    public int Analyzed { get; init; } = 10;
    /// <summary>Positive and negative projection examples kept per analysed component (a second pass over the data).</summary>
    public int Examples { get; init; } = 10;
    public int LensTokens { get; init; } = 20;
    public int ContextTokens { get; init; } = 16;
}

public sealed record PcaExample(long Sample, int Position, double Projection, string Token, string Context);

public sealed record PcaComponent(int Index, double ExplainedVariance, double Ratio, IReadOnlyList<PcaExample> Positive, IReadOnlyList<PcaExample> Negative,
    IReadOnlyList<(string Token, double Prob)> LensPositive, IReadOnlyList<(string Token, double Prob)> LensNegative);

/// <summary>One layer's PCA in the names of sklearn's IncrementalPCA: components [k, D] (rows, unit length),
/// explained variance (ddof 1) and its ratio to the total variance, mean, per-feature variance (ddof 0), noise variance
/// (mean of the eigenvalues not kept), samples seen.</summary>
public sealed record PcaModel(int Layer, float[] ComponentsKD, double[] ExplainedVariance, double[] ExplainedVarianceRatio, double[] Mean, double[] Var,
    double NoiseVariance, long Samples, int Dim)
{
    public int K => ExplainedVariance.Length;
    public ReadOnlySpan<float> Component(int i) => ComponentsKD.AsSpan(i * Dim, Dim);
}

public sealed record PcaLayerResult(PcaModel Model, IReadOnlyList<PcaComponent> Analyzed);

/// <summary>
/// PCA of the activation difference (methods §10) at blocks.{L}.hook_resid_post by exact streaming: n, Σx and Σxxᵀ
/// accumulated in double over data shifted by a provisional mean (the first batch's), one [D, B]·[B, D] product per
/// batch, then one symmetric eigendecomposition. A second pass finds each leading component's most positive and most
/// negative projections; its logit lens is the fine-tune's final norm and unembedding applied to ±component (scaled to
/// the mean activation norm). Sign rule: each component's largest-magnitude coordinate is positive.
/// </summary>
public static class PcaAnalysis
{
    public const string Stage = "pca";
    public const string Folder = "pca";
    public const string SummaryFile = "pca/pca.json";

    public static string InputsHash(PcaOptions o) => o.Corpus.AddTo(o.Models.AddTo(new InputsHash()))
        .Add("layers", string.Join(",", o.Layers)).Add("target", o.Target).Add("k", o.Components).Add("analyzed", o.Analyzed)
        .Add("examples", o.Examples).Add("lens", o.LensTokens).Add("context", o.ContextTokens).ToString();

    public static string TensorFile(int layer) => $"pca/layer_{layer}.safetensors";

    public static IReadOnlyList<PcaLayerResult>? Run(PcaOptions o, ResultsFolder results, IProgress<PairedProgress>? progress = null, CancellationToken cancel = default)
    {
        string hash = InputsHash(o);
        if (results.IsCurrent(Stage, hash)) return null;
        using var pair = ModelPair.Load(o.Models);
        var encoder = Kl.KlAnalysis.Encoder(o.Models);
        var r = Compute(pair, o, () => o.Corpus.Read(encoder), progress, cancel);
        Directory.CreateDirectory(results.PathOf(Folder));
        var outputs = new List<string>();
        foreach (var l in r)
        {
            var m = l.Model;
            SafetensorsWriter.Write(results.PathOf(TensorFile(m.Layer)),
            [
                TensorData.F32("components_", m.ComponentsKD, m.K, m.Dim),
                TensorData.F32("explained_variance_", m.ExplainedVariance.Select(x => (float)x).ToArray(), m.K),
                TensorData.F32("explained_variance_ratio_", m.ExplainedVarianceRatio.Select(x => (float)x).ToArray(), m.K),
                TensorData.F32("mean_", m.Mean.Select(x => (float)x).ToArray(), m.Dim),
                TensorData.F32("var_", m.Var.Select(x => (float)x).ToArray(), m.Dim),
                TensorData.F32("noise_variance_", [(float)m.NoiseVariance], 1),
                TensorData.I64("n_samples_seen_", [m.Samples], 1),
                TensorData.I64("n_components", [m.K], 1),
                TensorData.I64("activation_dim", [m.Dim], 1),
            ], new Dictionary<string, string>
            {
                ["target"] = TargetName(o.Target), ["layer"] = m.Layer.ToString(), ["site"] = $"blocks.{m.Layer}.hook_resid_post",
                ["config"] = new JsonObject { ["target"] = TargetName(o.Target), ["layer"] = m.Layer, ["n_components"] = m.K, ["method"] = "exact streaming covariance + eigendecomposition" }.ToJsonString(),
            });
            outputs.Add(TensorFile(m.Layer));
        }
        ResultsFolder.WriteAllTextAtomic(results.PathOf(SummaryFile), ToJson(r, o).ToJsonString(ResultsJson.Indented) + "\n");
        outputs.Add(SummaryFile);
        results.Record(Stage, hash, outputs);
        return r;
    }

    public static string TargetName(PcaTarget t) => t switch
    {
        PcaTarget.FtMinusBase => "ft-base", PcaTarget.BaseMinusFt => "base-ft", PcaTarget.Base => "base", _ => "ft",
    };

    /// <summary>The vector PCA sees at one position, written into <paramref name="x"/>.</summary>
    static void Target(PcaTarget t, ReadOnlySpan<float> hb, ReadOnlySpan<float> hf, Span<float> x)
    {
        for (int j = 0; j < x.Length; j++)
            x[j] = t switch { PcaTarget.FtMinusBase => hf[j] - hb[j], PcaTarget.BaseMinusFt => hb[j] - hf[j], PcaTarget.Base => hb[j], _ => hf[j] };
    }

    /// <param name="samples">opens the corpus; called twice (statistics, then examples)</param>
    public static IReadOnlyList<PcaLayerResult> Compute(ModelPair pair, PcaOptions o, Func<IEnumerable<EncodedSample>> samples,
        IProgress<PairedProgress>? progress = null, CancellationToken cancel = default)
    {
        int d = pair.Base.Hidden;
        var layers = o.Layers.Distinct().OrderBy(l => l).ToList();
        var acc = layers.ToDictionary(l => l, _ => new Acc(d));
        var x = new float[d];
        PairedForward.Run(pair, samples(), o.Corpus.Batch, logits: false, layers: layers, batch =>
        {
            int seq = batch.Tokens.Seq;
            foreach (var (layer, a) in acc)
            {
                var (hb, hf) = batch.Resid[layer];
                int rows = batch.Samples.Sum(s => s.Ids.Length);
                var xBD = new float[rows * d];
                int r = 0;
                for (int b = 0; b < batch.Samples.Count; b++)
                    for (int t = 0; t < batch.Samples[b].Ids.Length; t++, r++)
                    {
                        var row = xBD.AsSpan(r * d, d);
                        Target(o.Target, hb.Data.AsSpan((b * seq + t) * d, d), hf.Data.AsSpan((b * seq + t) * d, d), row);
                        a.NormSum += Math.Sqrt(TensorPrimitivesDot(hf.Data.AsSpan((b * seq + t) * d, d)));
                    }
                a.Add(xBD, rows);
            }
        }, progress, cancel);

        var results = new List<PcaLayerResult>();
        foreach (int layer in layers)
        {
            var model = acc[layer].Finish(layer, o.Components ?? d);
            results.Add(new PcaLayerResult(model, []));
        }

        // second pass: max-activating examples of the leading components
        int analyzed = Math.Min(o.Analyzed, results.Count == 0 ? 0 : results[0].Model.K);
        if (analyzed > 0)
        {
            var pos = layers.ToDictionary(l => l, _ => Enumerable.Range(0, analyzed).Select(_ => new TopN<TokenSite>(o.Examples)).ToArray());
            var neg = layers.ToDictionary(l => l, _ => Enumerable.Range(0, analyzed).Select(_ => new TopN<TokenSite>(o.Examples)).ToArray());
            var models = results.ToDictionary(r => r.Model.Layer, r => r.Model);
            PairedForward.Run(pair, samples(), o.Corpus.Batch, logits: false, layers: layers, batch =>
            {
                int seq = batch.Tokens.Seq;
                foreach (int layer in layers)
                {
                    var (hb, hf) = batch.Resid[layer];
                    var m = models[layer];
                    for (int b = 0; b < batch.Samples.Count; b++)
                        for (int t = 0; t < batch.Samples[b].Ids.Length; t++)
                        {
                            Target(o.Target, hb.Data.AsSpan((b * seq + t) * d, d), hf.Data.AsSpan((b * seq + t) * d, d), x);
                            for (int c = 0; c < analyzed; c++)
                            {
                                var v = m.Component(c);
                                double p = 0;
                                for (int j = 0; j < d; j++) p += (x[j] - m.Mean[j]) * v[j];
                                var site = new TokenSite(batch.FirstSample + b, t, batch.Samples[b]);
                                pos[layer][c].Offer(p, site);
                                neg[layer][c].Offer(-p, site);
                            }
                        }
                }
            }, null, cancel);
            for (int i = 0; i < results.Count; i++)
            {
                var m = results[i].Model;
                double scale = acc[m.Layer].NormSum / Math.Max(1, m.Samples);
                var comps = new List<PcaComponent>();
                for (int c = 0; c < analyzed; c++)
                {
                    List<PcaExample> Ex(TopN<TokenSite> keep, double sign) => keep.Descending().Select(e =>
                    {
                        var ids = e.Item.Source.Ids;
                        int t = e.Item.Position, start = Math.Max(0, t - o.ContextTokens + 1);
                        return new PcaExample(e.Item.Sample, t, sign * e.Key, pair.TokenText(ids[t]), pair.Text(ids.AsSpan(start, t - start + 1)));
                    }).ToList();
                    comps.Add(new PcaComponent(c, m.ExplainedVariance[c], m.ExplainedVarianceRatio[c], Ex(pos[m.Layer][c], 1), Ex(neg[m.Layer][c], -1),
                        Lens(pair, m.Component(c), scale, o.LensTokens), Lens(pair, m.Component(c), -scale, o.LensTokens)));
                }
                results[i] = results[i] with { Analyzed = comps };
            }
        }
        return results;
    }

    static double TensorPrimitivesDot(ReadOnlySpan<float> v) => System.Numerics.Tensors.TensorPrimitives.Dot(v, v);

    /// <summary>Top tokens of softmax(unembed(final_norm(scale · v))) through the fine-tuned model.</summary>
    public static List<(string Token, double Prob)> Lens(ModelPair pair, ReadOnlySpan<float> v, double scale, int top)
    {
        var h = new Tensor(1, 1, v.Length);
        for (int j = 0; j < v.Length; j++) h.Data[j] = (float)(scale * v[j]);
        var logits = pair.FineTuned.LogitsAt(h, 0, 0);
        var logp = new float[logits.Length];
        Kernels.LogSoftmax(logits, logp);
        return Enumerable.Range(0, pair.SharedVocab).OrderByDescending(i => logp[i]).Take(top)
            .Select(i => (pair.TokenText(i), Math.Exp(logp[i]))).ToList();
    }

    sealed class Acc(int d)
    {
        public long N;
        public double NormSum;
        double[]? _shift;
        readonly double[] _s1 = new double[d];
        readonly double[] _s2 = new double[(long)d * d];

        // xBD: [rows, D]
        public void Add(float[] xBD, int rows)
        {
            if (rows == 0) return;
            if (_shift is null)
            {
                _shift = new double[d];
                for (int r = 0; r < rows; r++) for (int j = 0; j < d; j++) _shift[j] += xBD[r * d + j];
                for (int j = 0; j < d; j++) _shift[j] /= rows;
            }
            for (int r = 0; r < rows; r++)
                for (int j = 0; j < d; j++)
                {
                    float c = (float)(xBD[r * d + j] - _shift[j]);
                    xBD[r * d + j] = c;
                    _s1[j] += c;
                }
            var g = new float[(long)d * d]; // Σ_r x_r x_rᵀ of this batch: [D, B]·[B, D]
            Gemm.MatMulTN(xBD, xBD, d, rows, d, g);
            for (long i = 0; i < g.Length; i++) _s2[i] += g[i];
            N += rows;
        }

        public PcaModel Finish(int layer, int k)
        {
            if (N < 2) throw new InvalidDataException($"layer {layer}: PCA needs at least 2 positions, the data gave {N}");
            k = Math.Clamp(k, 1, d);
            var cov = new double[(long)d * d];
            var m = _s1.Select(v => v / N).ToArray();
            for (int i = 0; i < d; i++)
                for (int j = 0; j < d; j++)
                {
                    // symmetrise: the float batch products are symmetric only up to rounding
                    double s = 0.5 * (_s2[(long)i * d + j] + _s2[(long)j * d + i]);
                    cov[(long)i * d + j] = (s - N * m[i] * m[j]) / (N - 1);
                }
            var (values, vectors) = SymmetricEigen.Decompose(cov, d);
            double total = values.Sum(v => Math.Max(v, 0));
            var comps = new float[(long)k * d];
            for (int c = 0; c < k; c++)
            {
                int arg = 0;
                for (int j = 1; j < d; j++) if (Math.Abs(vectors[(long)c * d + j]) > Math.Abs(vectors[(long)c * d + arg])) arg = j;
                double sign = vectors[(long)c * d + arg] < 0 ? -1 : 1;
                for (int j = 0; j < d; j++) comps[(long)c * d + j] = (float)(sign * vectors[(long)c * d + j]);
            }
            var ev = values.Take(k).Select(v => Math.Max(v, 0)).ToArray();
            var mean = m.Select((v, j) => v + _shift![j]).ToArray();
            var var = Enumerable.Range(0, d).Select(j => cov[(long)j * d + j] * (N - 1) / N).ToArray();
            double noise = k < d ? values.Skip(k).Average(v => Math.Max(v, 0)) : 0;
            return new PcaModel(layer, comps, ev, ev.Select(v => total > 0 ? v / total : 0).ToArray(), mean, var, noise, N, d);
        }
    }

    static JsonObject ToJson(IReadOnlyList<PcaLayerResult> r, PcaOptions o)
    {
        static JsonArray Lens(IEnumerable<(string Token, double Prob)> xs) =>
            new(xs.Select(x => (JsonNode)new JsonObject { ["token"] = x.Token, ["prob"] = x.Prob }).ToArray());
        static JsonArray Examples(IEnumerable<PcaExample> xs) => new(xs.Select(e => (JsonNode)new JsonObject
        {
            ["sample"] = e.Sample, ["position"] = e.Position, ["projection"] = e.Projection, ["token"] = e.Token, ["context"] = e.Context,
        }).ToArray());
        return new JsonObject
        {
            ["base"] = o.Models.Base, ["finetuned"] = o.Models.FineTuned, ["adapter"] = o.Models.Adapter,
            ["target"] = TargetName(o.Target), ["site"] = "blocks.{L}.hook_resid_post",
            ["method"] = "exact streaming covariance (ddof 1) and symmetric eigendecomposition; sign: each component's largest-magnitude coordinate positive",
            ["lens_rule"] = "softmax(unembed_ft(final_norm_ft(±component × mean ‖h_ft‖)))",
            ["layers"] = new JsonArray(r.Select(l => (JsonNode)new JsonObject
            {
                ["layer"] = l.Model.Layer, ["tensors"] = TensorFile(l.Model.Layer), ["n_samples_seen"] = l.Model.Samples,
                ["n_components"] = l.Model.K, ["noise_variance"] = l.Model.NoiseVariance,
                ["explained_variance_ratio"] = new JsonArray(l.Model.ExplainedVarianceRatio.Take(Math.Max(20, o.Analyzed)).Select(x => (JsonNode)x).ToArray()),
                ["components"] = new JsonArray(l.Analyzed.Select(c => (JsonNode)new JsonObject
                {
                    ["index"] = c.Index, ["explained_variance"] = c.ExplainedVariance, ["ratio"] = c.Ratio,
                    ["positive"] = Examples(c.Positive), ["negative"] = Examples(c.Negative),
                    ["lens_positive"] = Lens(c.LensPositive), ["lens_negative"] = Lens(c.LensNegative),
                }).ToArray()),
            }).ToArray()),
        };
    }
}

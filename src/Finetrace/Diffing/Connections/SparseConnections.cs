using System.Text.Json;
using System.Text.Json.Nodes;
using Finetrace.Activations;
using Finetrace.Dictionaries;
using Finetrace.Models.Safetensors;
using Finetrace.Tensors;

namespace Finetrace.Diffing.Connections;

public sealed record ConnectionsOptions
{
    /// <summary>Store rows encoded by both dictionaries (the first rows in store order; 0 = all).</summary>
    public long MaxRows { get; init; } = 20_000;
    /// <summary>Fraction of the rows held out to measure each fit's loss.</summary>
    public double HeldOut { get; init; } = 0.1;
    /// <summary>L1 strengths swept for the linear fit, in standardised units (inputs and outputs scaled to unit variance).</summary>
    public double[] Alphas { get; init; } = [0.1, 0.03, 0.01, 0.003, 0.001];
    /// <summary>The reported α is the largest one whose mean held-out FVU is within this of the best α's.</summary>
    public double FvuTolerance { get; init; } = 0.02;
    public int MaxSweeps { get; init; } = 500;
    public double Tolerance { get; init; } = 1e-6;
    /// <summary>Hidden width of the MLP g(x) = W₂ ReLU(W₁x + b₁) + b₂ (0 skips the MLP fit).</summary>
    public int MlpHidden { get; init; } = 128;
    public int MlpEpochs { get; init; } = 20;
    public int MlpBatch { get; init; } = 64;
    public double MlpLearningRate { get; init; } = 3e-3;
    public int Seed { get; init; }
    /// <summary>Inputs listed per output latent (largest |weight| first).</summary>
    public int ListedInputs { get; init; } = 10;
}

/// <summary>One input latent an output latent depends on: its weight in g's linear part, in code units.</summary>
public sealed record Connection(int Latent, double Weight);

/// <summary>One point of the α sweep: nonzero weights and the mean held-out FVU over output latents.</summary>
public sealed record AlphaPoint(double Alpha, long Nonzeros, double Density, double MeanFvu);

public sealed record OutputLatentFit(int Latent, double FvuLinear, double FvuMlp, Connection[] Inputs, int Nonzeros, double Intercept)
{
    /// <summary>Δ = loss_linear − loss_MLP (held-out FVU): large when the latent needs the nonlinearity.</summary>
    public double Gap => FvuLinear - FvuMlp;
}

public sealed record ConnectionsResult
{
    /// <summary>[A] alive input latents (dictionary A's ids), in order: the columns of <see cref="WeightBA"/>.</summary>
    public required int[] FromLatents { get; init; }
    /// <summary>[B] alive output latents (dictionary B's ids): the rows of <see cref="WeightBA"/>.</summary>
    public required int[] ToLatents { get; init; }
    /// <summary>[B, A] linear weights at <see cref="Alpha"/> in code units: f̂_B = W f_A + b.</summary>
    public required float[] WeightBA { get; init; }
    public required float[] InterceptB { get; init; }
    public required double Alpha { get; init; }
    public required AlphaPoint[] Sweep { get; init; }
    public required OutputLatentFit[] Outputs { get; init; }
    public required long TrainRows { get; init; }
    public required long HeldOutRows { get; init; }
    public int FromLatentsTotal { get; init; }
    public int ToLatentsTotal { get; init; }
    public long Nonzeros => WeightBA.LongCount(w => w != 0);
    public double Density => WeightBA.Length == 0 ? 0 : (double)Nonzeros / WeightBA.Length;
}

/// <summary>
/// Sparse connections between two dictionaries (methods.md §15.3): over alive latents only, fits F_B ≈ g(F_A) with
/// g linear under an L1 penalty on W (α swept; lasso by coordinate descent on the standardised covariance, intercept
/// unpenalised) and with a one-hidden-layer MLP (Adam). Both fits are scored on held-out rows by the fraction of
/// variance unexplained per output latent; Δ = FVU_linear − FVU_MLP separates "linear" latents from those needing
/// the MLP, and the nonzero entries of W name the few input latents each output latent is made of.
/// </summary>
public static class SparseConnections
{
    public const string Stage = "connections";
    public const string JsonFile = "connections.json", WeightsFile = "connections.safetensors";

    /// <summary>Encodes the first rows of <paramref name="store"/> with both dictionaries (each reads what its
    /// <see cref="DictionaryInput"/> says) and fits the connections between their alive latents.</summary>
    public static ConnectionsResult Run(AnalysisDictionary from, AnalysisDictionary to, ActivationStore store, ConnectionsOptions o,
        IProgress<(long Done, long Total)>? progress = null, CancellationToken cancel = default)
    {
        var codesA = DenseCodes(from, store, o.MaxRows, progress, 0, cancel);
        var codesB = DenseCodes(to, store, o.MaxRows, progress, 1, cancel);
        if (codesA.Rows != codesB.Rows) throw new InvalidOperationException($"{store.Directory}: the two dictionaries read {codesA.Rows} and {codesB.Rows} rows");
        var aliveA = Alive(from.Dict, codesA); var aliveB = Alive(to.Dict, codesB);
        if (aliveA.Length == 0) throw new InvalidOperationException($"{from.Directory}: no latent fires on the {codesA.Rows} rows read");
        if (aliveB.Length == 0) throw new InvalidOperationException($"{to.Directory}: no latent fires on the {codesB.Rows} rows read");
        var x = Columns(codesA, aliveA); var y = Columns(codesB, aliveB);
        var r = Fit(x, y, codesA.Rows, aliveA.Length, aliveB.Length, o, cancel);
        return r with
        {
            FromLatents = aliveA, ToLatents = aliveB, FromLatentsTotal = from.Latents, ToLatentsTotal = to.Latents,
            Outputs = r.Outputs.Select(f => f with { Latent = aliveB[f.Latent], Inputs = f.Inputs.Select(c => c with { Latent = aliveA[c.Latent] }).ToArray() }).ToArray(),
        };
    }

    sealed record Dense(float[] Values, int Rows, int Cols);

    static Dense DenseCodes(AnalysisDictionary ad, ActivationStore store, long maxRows, IProgress<(long, long)>? progress, int pass, CancellationToken cancel)
    {
        var rows = new StoreRows(store, ad.Layer, default, maxRows);
        int S = store.Models, D = store.DModel, F = ad.Latents, batch = 1024;
        if (rows.Total > int.MaxValue / Math.Max(1, F)) throw new ArgumentException($"{rows.Total} rows × {F} latents do not fit in memory; read fewer rows");
        var dense = new float[rows.Total * F];
        var buf = new float[batch * S * D]; var ids = new long[batch];
        int n = 0;
        while (true)
        {
            cancel.ThrowIfCancellationRequested();
            int got = rows.Next(buf, ids, batch);
            if (got == 0) break;
            var codes = ad.Encode(ad.ToInput(buf.AsSpan(0, got * S * D), got, S));   // honours a recorded pruning
            for (int t = 0; t < got; t++)
                for (int e = codes.RowStart[t]; e < codes.RowStart[t + 1]; e++) dense[(long)(n + t) * F + codes.Index[e]] = codes.Value[e];
            n += got;
            progress?.Report((pass * rows.Total + n, 2 * rows.Total));
        }
        return new Dense(dense, n, F);
    }

    /// <summary>Latents that fire (Firing's rule) on at least one of the rows.</summary>
    static int[] Alive(SparseDictionary d, Dense c)
    {
        var w = Firing.Weights(d);
        var alive = new bool[c.Cols];
        for (long i = 0; i < (long)c.Rows * c.Cols; i++)
        {
            int j = (int)(i % c.Cols);
            if (!alive[j] && c.Values[i] != 0 && Firing.Fires(c.Values[i], w, j)) alive[j] = true;
        }
        return Enumerable.Range(0, c.Cols).Where(j => alive[j]).ToArray();
    }

    static float[] Columns(Dense c, int[] keep)
    {
        var r = new float[(long)c.Rows * keep.Length];
        for (int t = 0; t < c.Rows; t++)
            for (int i = 0; i < keep.Length; i++) r[(long)t * keep.Length + i] = c.Values[(long)t * c.Cols + keep[i]];
        return r;
    }

    /// <summary>Fits y ≈ g(x) on the first (1 − held out) rows and scores on the rest. Latent ids in the result are
    /// column indices of <paramref name="xNA"/> and <paramref name="yNB"/>.</summary>
    // xNA: [N, A] input codes; yNB: [N, B] output codes
    public static ConnectionsResult Fit(float[] xNA, float[] yNB, int n, int a, int b, ConnectionsOptions o, CancellationToken cancel = default)
    {
        int nTest = o.HeldOut > 0 ? Math.Max(1, (int)Math.Round(n * o.HeldOut)) : 0;
        int nTrain = n - nTest;
        if (nTrain < 2) throw new ArgumentException($"{n} rows are too few to fit connections");
        var (xMean, xStd) = Moments(xNA, nTrain, a); var (yMean, yStd) = Moments(yNB, nTrain, b);
        var xs = Standardise(xNA, n, a, xMean, xStd); var ys = Standardise(yNB, n, b, yMean, yStd);

        // G = Xsᵀ Xs / N and C = Xsᵀ Ys / N over the training rows (standardised: G is the correlation matrix)
        var gAA = new float[a * a]; var cAB = new float[a * b];
        Gemm.MatMulTN(xs.AsSpan(0, nTrain * a), xs.AsSpan(0, nTrain * a), a, nTrain, a, gAA);
        Gemm.MatMulTN(xs.AsSpan(0, nTrain * a), ys.AsSpan(0, nTrain * b), a, nTrain, b, cAB);
        var g = new double[a * a]; for (int i = 0; i < g.Length; i++) g[i] = gAA[i] / (double)nTrain;

        var alphas = o.Alphas.OrderByDescending(x => x).ToArray();
        var wPerAlpha = new double[alphas.Length][];   // [B, A] standardised weights
        var w = new double[b * a];
        for (int k = 0; k < alphas.Length; k++)
        {
            for (int j = 0; j < b; j++)
            {
                cancel.ThrowIfCancellationRequested();
                if (yStd[j] == 0) continue;
                var c = new double[a];
                for (int i = 0; i < a; i++) c[i] = cAB[i * b + j] / (double)nTrain;
                Lasso(g, c, a, alphas[k], w.AsSpan(j * a, a), o.MaxSweeps, o.Tolerance, xStd);
            }
            wPerAlpha[k] = (double[])w.Clone();
        }
        var sweep = new AlphaPoint[alphas.Length];
        var fvuPerAlpha = new double[alphas.Length][];
        for (int k = 0; k < alphas.Length; k++)
        {
            fvuPerAlpha[k] = LinearFvu(xs, ys, nTrain, n, a, b, wPerAlpha[k]);
            long nz = wPerAlpha[k].LongCount(v => v != 0);
            sweep[k] = new AlphaPoint(alphas[k], nz, (double)nz / Math.Max(1, (long)a * b), fvuPerAlpha[k].Average());
        }
        double best = sweep.Min(p => p.MeanFvu);
        int chosen = Enumerable.Range(0, alphas.Length).First(k => sweep[k].MeanFvu <= best + o.FvuTolerance);   // alphas descend: first = largest
        var mlpFvu = o.MlpHidden > 0 ? Mlp(xs, ys, nTrain, n, a, b, o, cancel) : Enumerable.Repeat(double.NaN, b).ToArray();

        // back to code units: y = ȳ + σ_y Σ w_i (x_i − x̄_i)/σ_i
        var wBA = new float[b * a]; var bias = new float[b];
        var outputs = new OutputLatentFit[b];
        for (int j = 0; j < b; j++)
        {
            double intercept = yMean[j];
            var conns = new List<Connection>();
            for (int i = 0; i < a; i++)
            {
                double ws = wPerAlpha[chosen][j * a + i];
                if (ws == 0 || xStd[i] == 0) continue;
                double wc = yStd[j] * ws / xStd[i];
                wBA[j * a + i] = (float)wc; intercept -= wc * xMean[i];
                conns.Add(new Connection(i, wc));
            }
            bias[j] = (float)intercept;
            outputs[j] = new OutputLatentFit(j, fvuPerAlpha[chosen][j], mlpFvu[j],
                conns.OrderByDescending(c => Math.Abs(c.Weight)).Take(o.ListedInputs).ToArray(), conns.Count, intercept);
        }
        return new ConnectionsResult
        {
            FromLatents = Enumerable.Range(0, a).ToArray(), ToLatents = Enumerable.Range(0, b).ToArray(), WeightBA = wBA, InterceptB = bias,
            Alpha = alphas[chosen], Sweep = sweep, Outputs = outputs, TrainRows = nTrain, HeldOutRows = nTest, FromLatentsTotal = a, ToLatentsTotal = b,
        };
    }

    /// <summary>Lasso min_w ½ wᵀGw − cᵀw + α‖w‖₁ by cyclic coordinate descent (warm-started from <paramref name="w"/>);
    /// columns with zero spread stay at 0.</summary>
    // gAA: [A, A] symmetric; c, w: [A]
    static void Lasso(double[] gAA, double[] c, int a, double alpha, Span<double> w, int maxSweeps, double tol, double[] xStd)
    {
        var r = new double[a];   // r = c − G w
        for (int i = 0; i < a; i++)
        {
            double s = c[i];
            for (int k = 0; k < a; k++) s -= gAA[i * a + k] * w[k];
            r[i] = s;
        }
        for (int sweep = 0; sweep < maxSweeps; sweep++)
        {
            double maxDelta = 0;
            for (int i = 0; i < a; i++)
            {
                double gii = gAA[i * a + i];
                if (gii <= 0 || xStd[i] == 0) continue;
                double z = r[i] + gii * w[i];
                double nw = Math.Sign(z) * Math.Max(Math.Abs(z) - alpha, 0) / gii;
                double delta = nw - w[i];
                if (delta == 0) continue;
                w[i] = nw;
                for (int k = 0; k < a; k++) r[k] -= delta * gAA[i * a + k];
                maxDelta = Math.Max(maxDelta, Math.Abs(delta));
            }
            if (maxDelta < tol) break;
        }
    }

    static (double[] Mean, double[] Std) Moments(float[] vNC, int rows, int cols)
    {
        var mean = new double[cols]; var sq = new double[cols];
        for (int t = 0; t < rows; t++) for (int i = 0; i < cols; i++) { double v = vNC[(long)t * cols + i]; mean[i] += v; sq[i] += v * v; }
        var std = new double[cols];
        for (int i = 0; i < cols; i++)
        {
            mean[i] /= rows;
            double var = sq[i] / rows - mean[i] * mean[i];
            std[i] = var > 1e-12 * Math.Max(1, sq[i] / rows) ? Math.Sqrt(var) : 0;
        }
        return (mean, std);
    }

    static float[] Standardise(float[] vNC, int rows, int cols, double[] mean, double[] std)
    {
        var r = new float[(long)rows * cols];
        for (int t = 0; t < rows; t++)
            for (int i = 0; i < cols; i++)
                r[(long)t * cols + i] = std[i] == 0 ? 0f : (float)((vNC[(long)t * cols + i] - mean[i]) / std[i]);
        return r;
    }

    /// <summary>Held-out mean squared error per output, in standardised units (= FVU relative to the training variance);
    /// on the training rows when nothing is held out.</summary>
    static double[] LinearFvu(float[] xs, float[] ys, int nTrain, int n, int a, int b, double[] wBA)
    {
        int from = n > nTrain ? nTrain : 0, m = n - from;
        var wf = new float[wBA.Length]; for (int i = 0; i < wf.Length; i++) wf[i] = (float)wBA[i];
        var pred = new float[m * b];
        Gemm.MatMulNT(xs.AsSpan(from * a, m * a), wf, m, a, b, pred);
        return SquaredError(pred, ys.AsSpan(from * b, m * b), m, b);
    }

    static double[] SquaredError(ReadOnlySpan<float> predMB, ReadOnlySpan<float> yMB, int m, int b)
    {
        var e = new double[b];
        for (int t = 0; t < m; t++) for (int j = 0; j < b; j++) { double d = predMB[t * b + j] - yMB[t * b + j]; e[j] += d * d; }
        for (int j = 0; j < b; j++) e[j] /= m;
        return e;
    }

    /// <summary>One-hidden-layer ReLU MLP on the standardised data, Adam on the mean squared error; held-out FVU per output.</summary>
    static double[] Mlp(float[] xs, float[] ys, int nTrain, int n, int a, int b, ConnectionsOptions o, CancellationToken cancel)
    {
        int h = o.MlpHidden, bs = Math.Min(o.MlpBatch, nTrain);
        var rng = new Random(o.Seed);
        var w1 = new float[h * a]; var b1 = new float[h]; var w2 = new float[b * h]; var b2 = new float[b];
        float s1 = 1f / MathF.Sqrt(a), s2 = 1f / MathF.Sqrt(h);
        for (int i = 0; i < w1.Length; i++) w1[i] = (float)(rng.NextDouble() * 2 - 1) * s1;
        for (int i = 0; i < w2.Length; i++) w2[i] = (float)(rng.NextDouble() * 2 - 1) * s2;
        var prms = new[] { w1, b1, w2, b2 };
        var grads = prms.Select(p => new float[p.Length]).ToArray();
        var m1 = prms.Select(p => new float[p.Length]).ToArray(); var m2 = prms.Select(p => new float[p.Length]).ToArray();
        var xb = new float[bs * a]; var yb = new float[bs * b]; var hid = new float[bs * h]; var outp = new float[bs * b]; var dh = new float[bs * h];
        var order = Enumerable.Range(0, nTrain).ToArray();
        long step = 0;
        const double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
        for (int epoch = 0; epoch < o.MlpEpochs; epoch++)
        {
            for (int i = order.Length - 1; i > 0; i--) { int k = rng.Next(i + 1); (order[i], order[k]) = (order[k], order[i]); }
            for (int start = 0; start + bs <= nTrain; start += bs)
            {
                cancel.ThrowIfCancellationRequested();
                for (int t = 0; t < bs; t++)
                {
                    xs.AsSpan(order[start + t] * a, a).CopyTo(xb.AsSpan(t * a, a));
                    ys.AsSpan(order[start + t] * b, b).CopyTo(yb.AsSpan(t * b, b));
                }
                Forward(xb, bs, a, h, b, w1, b1, w2, b2, hid, outp);
                for (int i = 0; i < outp.Length; i++) outp[i] = (outp[i] - yb[i]) / bs;   // dL/dŷ of ½·mean over rows of Σ_j (ŷ−y)²
                Gemm.MatMulTN(outp, hid, b, bs, h, grads[2]);
                Array.Clear(grads[3]);
                for (int t = 0; t < bs; t++) for (int j = 0; j < b; j++) grads[3][j] += outp[t * b + j];
                Gemm.MatMulNN(outp, w2, bs, b, h, dh);
                for (int i = 0; i < dh.Length; i++) if (hid[i] <= 0) dh[i] = 0;
                Gemm.MatMulTN(dh, xb, h, bs, a, grads[0]);
                Array.Clear(grads[1]);
                for (int t = 0; t < bs; t++) for (int j = 0; j < h; j++) grads[1][j] += dh[t * h + j];
                step++;
                double c1 = 1 - Math.Pow(beta1, step), c2 = 1 - Math.Pow(beta2, step);
                for (int p = 0; p < prms.Length; p++)
                    for (int i = 0; i < prms[p].Length; i++)
                    {
                        float gi = grads[p][i];
                        m1[p][i] = (float)(beta1 * m1[p][i] + (1 - beta1) * gi);
                        m2[p][i] = (float)(beta2 * m2[p][i] + (1 - beta2) * gi * gi);
                        prms[p][i] -= (float)(o.MlpLearningRate * (m1[p][i] / c1) / (Math.Sqrt(m2[p][i] / c2) + eps));
                    }
            }
        }
        int from = n > nTrain ? nTrain : 0, m = n - from;
        var hAll = new float[m * h]; var pred = new float[m * b];
        Forward(xs.AsSpan(from * a, m * a).ToArray(), m, a, h, b, w1, b1, w2, b2, hAll, pred);
        return SquaredError(pred, ys.AsSpan(from * b, m * b), m, b);
    }

    // xMA: [m, A] → hMH = ReLU(x W1ᵀ + b1), yMB = h W2ᵀ + b2
    static void Forward(float[] xMA, int m, int a, int h, int b, float[] w1, float[] b1, float[] w2, float[] b2, float[] hMH, float[] yMB)
    {
        Gemm.MatMulNT(xMA, w1, m, a, h, hMH);
        for (int t = 0; t < m; t++) for (int j = 0; j < h; j++) { ref float v = ref hMH[t * h + j]; v = Math.Max(0, v + b1[j]); }
        Gemm.MatMulNT(hMH, w2, m, h, b, yMB);
        for (int t = 0; t < m; t++) for (int j = 0; j < b; j++) yMB[t * b + j] += b2[j];
    }

    /// <summary>The result as JSON (sweep, per output latent fits and connections) for the report and dashboard.</summary>
    public static JsonObject ToJson(ConnectionsResult r, string fromDir, string toDir) => new()
    {
        ["from"] = fromDir, ["to"] = toDir,
        ["meaning"] = "f_to ≈ W f_from + b over alive latents; fvu = held-out mean squared error / training variance per output latent; gap = fvu_linear − fvu_mlp",
        ["alpha"] = r.Alpha, ["train_rows"] = r.TrainRows, ["held_out_rows"] = r.HeldOutRows,
        ["from_alive"] = r.FromLatents.Length, ["from_latents"] = r.FromLatentsTotal, ["to_alive"] = r.ToLatents.Length, ["to_latents"] = r.ToLatentsTotal,
        ["nonzeros"] = r.Nonzeros, ["density"] = r.Density,
        ["mean_nonzeros_per_output"] = r.Outputs.Length == 0 ? 0 : r.Outputs.Average(f => f.Nonzeros),
        ["mean_fvu_linear"] = r.Outputs.Length == 0 ? 0 : r.Outputs.Average(f => f.FvuLinear),
        ["mean_fvu_mlp"] = r.Outputs.Length == 0 ? 0 : Num(r.Outputs.Average(f => f.FvuMlp)),
        ["sweep"] = new JsonArray(r.Sweep.Select(p => (JsonNode)new JsonObject { ["alpha"] = p.Alpha, ["nonzeros"] = p.Nonzeros, ["density"] = p.Density, ["mean_fvu"] = p.MeanFvu }).ToArray()),
        ["outputs"] = new JsonArray(r.Outputs.Select(f => (JsonNode)new JsonObject
        {
            ["latent"] = f.Latent, ["fvu_linear"] = f.FvuLinear, ["fvu_mlp"] = Num(f.FvuMlp), ["gap"] = Num(f.Gap), ["nonzeros"] = f.Nonzeros, ["intercept"] = f.Intercept,
            ["inputs"] = new JsonArray(f.Inputs.Select(c => (JsonNode)new JsonObject { ["latent"] = c.Latent, ["weight"] = c.Weight }).ToArray()),
        }).ToArray()),
    };

    static JsonNode? Num(double v) => double.IsFinite(v) ? JsonValue.Create(v) : null;

    /// <summary>Writes connections.json and connections.safetensors (W [to_alive, from_alive], b, and the latent ids).</summary>
    public static void Write(ConnectionsResult r, string fromDir, string toDir, ResultsFolder results)
    {
        ResultsFolder.WriteAllTextAtomic(results.PathOf(JsonFile), ToJson(r, fromDir, toDir).ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
        SafetensorsWriter.Write(results.PathOf(WeightsFile), [
            TensorData.F32("W", r.WeightBA, r.ToLatents.Length, r.FromLatents.Length),
            TensorData.F32("b", r.InterceptB, r.ToLatents.Length),
            TensorData.I64("from_latents", r.FromLatents.Select(i => (long)i).ToArray(), r.FromLatents.Length),
            TensorData.I64("to_latents", r.ToLatents.Select(i => (long)i).ToArray(), r.ToLatents.Length),
        ], new Dictionary<string, string> { ["alpha"] = r.Alpha.ToString("R", System.Globalization.CultureInfo.InvariantCulture) });
    }
}

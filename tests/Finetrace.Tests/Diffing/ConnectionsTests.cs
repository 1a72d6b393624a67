using Finetrace.Diffing.Connections;
using Xunit.Abstractions;

namespace Finetrace.Tests.Diffing;

public sealed class ConnectionsTests(ITestOutputHelper log)
{
    /// <summary>Sparse non-negative input codes (each latent fires on ~20% of rows) and outputs that are a planted sparse
    /// combination of 1–3 inputs plus small noise; output B−1 is a nonlinear function (product) of two inputs.</summary>
    static (float[] X, float[] Y, HashSet<(int Out, int In)> Support) Planted(int n, int a, int b, int seed)
    {
        var rng = new Random(seed);
        var x = new float[n * a];
        for (int i = 0; i < x.Length; i++) x[i] = rng.NextDouble() < 0.2 ? (float)(0.5 + rng.NextDouble() * 2) : 0f;
        var support = new HashSet<(int, int)>();
        var w = new double[b, a];
        for (int j = 0; j < b - 1; j++)
        {
            int k = 1 + rng.Next(3);
            foreach (int i in Enumerable.Range(0, a).OrderBy(_ => rng.Next()).Take(k))
            {
                w[j, i] = (rng.NextDouble() < 0.5 ? -1 : 1) * (0.5 + rng.NextDouble() * 1.5);
                support.Add((j, i));
            }
        }
        var y = new float[n * b];
        for (int t = 0; t < n; t++)
        {
            for (int j = 0; j < b - 1; j++)
            {
                double s = 0.05 * (rng.NextDouble() - 0.5);
                for (int i = 0; i < a; i++) s += w[j, i] * x[t * a + i];
                y[t * b + j] = (float)s;
            }
            y[t * b + b - 1] = x[t * a + 0] * x[t * a + 1];
        }
        return (x, y, support);
    }

    [Fact]
    public void Lasso_recovers_a_planted_sparse_support_and_the_mlp_finds_the_nonlinear_latent()
    {
        const int n = 6000, a = 40, b = 25;
        var (x, y, support) = Planted(n, a, b, 3);
        var r = SparseConnections.Fit(x, y, n, a, b, new ConnectionsOptions { MlpHidden = 32, MlpEpochs = 30 });
        var found = new HashSet<(int, int)>();
        for (int j = 0; j < b - 1; j++) for (int i = 0; i < a; i++) if (r.WeightBA[j * a + i] != 0) found.Add((j, i));
        int hit = found.Count(support.Contains);
        double recall = (double)hit / support.Count, precision = (double)hit / Math.Max(1, found.Count);
        log.WriteLine($"α {r.Alpha}: planted {support.Count} edges, found {found.Count}, recall {recall:P1}, precision {precision:P1}, density {r.Density:P2}");
        foreach (var p in r.Sweep) log.WriteLine($"  α {p.Alpha}: nonzeros {p.Nonzeros}, mean FVU {p.MeanFvu:F4}");
        Assert.True(recall >= 0.9, $"recall {recall:P1}");
        Assert.True(precision >= 0.9, $"precision {precision:P1}");
        // the weights themselves: a planted edge's fitted weight has the planted sign
        var linearGaps = r.Outputs.Take(b - 1).Select(f => f.Gap).ToArray();
        var nl = r.Outputs[b - 1];
        log.WriteLine($"nonlinear latent: FVU linear {nl.FvuLinear:F3}, MLP {nl.FvuMlp:F3}; linear latents' gap max {linearGaps.Max():F3}");
        Assert.True(nl.Gap > 0.05, $"the product latent's gap {nl.Gap:F3}");
        Assert.True(nl.Gap > linearGaps.Max(), $"the product latent's gap {nl.Gap:F3} should exceed every linear latent's ({linearGaps.Max():F3})");
        Assert.All(r.Outputs.Take(b - 1), f => Assert.True(f.FvuLinear < 0.05, $"latent {f.Latent}: linear FVU {f.FvuLinear:F3}"));
    }

    [Fact]
    public void With_alpha_zero_the_linear_fit_is_the_least_squares_solution()
    {
        const int n = 40, a = 4, b = 2;
        var rng = new Random(7);
        var x = new float[n * a]; var y = new float[n * b];
        for (int i = 0; i < x.Length; i++) x[i] = (float)rng.NextDouble();
        for (int i = 0; i < y.Length; i++) y[i] = (float)(rng.NextDouble() * 3 - 1);
        var r = SparseConnections.Fit(x, y, n, a, b, new ConnectionsOptions { Alphas = [0], HeldOut = 0, MlpHidden = 0, MaxSweeps = 100_000, Tolerance = 1e-12 });
        // direct: normal equations of [x, 1] in double, solved by Gaussian elimination with partial pivoting
        for (int j = 0; j < b; j++)
        {
            int p = a + 1;
            var m = new double[p, p + 1];
            for (int t = 0; t < n; t++)
            {
                var row = Enumerable.Range(0, a).Select(i => (double)x[t * a + i]).Append(1.0).ToArray();
                for (int u = 0; u < p; u++) { for (int v = 0; v < p; v++) m[u, v] += row[u] * row[v]; m[u, p] += row[u] * y[t * b + j]; }
            }
            var sol = Solve(m, p);
            double worst = 0;
            for (int i = 0; i < a; i++) worst = Math.Max(worst, Math.Abs(sol[i] - r.WeightBA[j * a + i]));
            worst = Math.Max(worst, Math.Abs(sol[a] - r.InterceptB[j]));
            log.WriteLine($"output {j}: max abs diff to least squares {worst:E2}");
            Assert.True(worst < 1e-3, $"output {j}: max abs diff {worst:E2}");
        }
    }

    static double[] Solve(double[,] m, int p)
    {
        for (int c = 0; c < p; c++)
        {
            int piv = Enumerable.Range(c, p - c).MaxBy(r => Math.Abs(m[r, c]));
            for (int k = 0; k <= p; k++) (m[c, k], m[piv, k]) = (m[piv, k], m[c, k]);
            for (int r = 0; r < p; r++)
            {
                if (r == c) continue;
                double f = m[r, c] / m[c, c];
                for (int k = c; k <= p; k++) m[r, k] -= f * m[c, k];
            }
        }
        return Enumerable.Range(0, p).Select(i => m[i, p] / m[i, i]).ToArray();
    }
}

/// <summary>The store path: a dictionary connected to itself gives the identity over its alive latents.</summary>
public sealed class ConnectionsStoreTests(ITestOutputHelper log)
{
    [Fact]
    public void A_dictionary_connected_to_itself_is_the_identity_over_its_alive_latents()
    {
        using var dir = new Finetrace.Tests.Infrastructure.TempDir();
        Finetrace.Activations.Synthetic.SyntheticGenerator.Make(new Finetrace.Activations.Synthetic.SyntheticSpec { DModel = 16, Features = 32, Tokens = 1500, Seed = 7, Dtype = "f32", SequenceLength = 50 }, dir.Path);
        using var st = Finetrace.Activations.ActivationStore.Open(dir.Path);
        var d = new Finetrace.Dictionaries.SparseDictionary(1, 16, 12, Finetrace.Dictionaries.Sparsity.Relu, Finetrace.Dictionaries.CodeNormalization.Sae, true);
        Finetrace.Dictionaries.Initialization.Crosscoder(d, new Finetrace.Tensors.SplitMix64(3), 1f, sameInitForAllModels: false);
        for (int j = 0; j < 12; j++) d.BEnc[j] = 0.05f;
        d.BEnc[3] = -1e4f;   // never fires: left out
        var ad = new Finetrace.Diffing.AnalysisDictionary(d, "self", Finetrace.Dictionaries.DictionaryInput.SingleModel(0, 0), 2);
        var r = SparseConnections.Run(ad, ad, st, new ConnectionsOptions { Alphas = [0.01], MlpHidden = 0 });
        log.WriteLine($"alive {r.FromLatents.Length}/12, nonzeros {r.Nonzeros}, α {r.Alpha}");
        Assert.DoesNotContain(3, r.FromLatents);
        Assert.Equal(r.FromLatents, r.ToLatents);
        Assert.True(r.FromLatents.Length >= 8, $"only {r.FromLatents.Length} latents fire");
        Assert.Equal(1500 - 150, r.TrainRows);
        foreach (var f in r.Outputs)
        {
            Assert.Equal(1, f.Nonzeros);
            Assert.Equal(f.Latent, f.Inputs[0].Latent);
            Assert.InRange(f.Inputs[0].Weight, 0.97, 1.0);
            Assert.True(f.FvuLinear < 1e-3, $"latent {f.Latent}: FVU {f.FvuLinear:E2}");
        }
    }
}

using Finetrace.Tensors;

namespace Finetrace.Diffing;

/// <summary>
/// Dense symmetric eigendecomposition (Householder tridiagonalisation, then the implicit QL algorithm: EISPACK
/// tred2/tql2 as JAMA writes them), in double. O(n³); used for covariance matrices (PCA) and small Gram matrices
/// (singular values).
/// </summary>
public static class SymmetricEigen
{
    /// <summary>Eigenvalues in descending order and the matching unit eigenvectors as the rows of
    /// <c>VectorsNN</c> ([n, n], row i = eigenvector i). <paramref name="aNN"/> [n, n] must be symmetric (only read).</summary>
    // aNN: [n, n] → values [n], vectorsNN [n, n] (rows)
    public static (double[] Values, double[] VectorsNN) Decompose(ReadOnlySpan<double> aNN, int n)
    {
        if (aNN.Length != (long)n * n) throw new ArgumentException($"{aNN.Length} values for a [{n}, {n}] matrix");
        var v = aNN.ToArray();
        var d = new double[n];
        var e = new double[n];
        if (n == 0) return (d, v);
        Tred2(n, v, d, e);
        Tql2(n, v, d, e);
        // columns of v are eigenvectors; sort descending and return them as rows
        var order = Enumerable.Range(0, n).OrderByDescending(i => d[i]).ToArray();
        var values = new double[n];
        var rows = new double[(long)n * n];
        for (int r = 0; r < n; r++)
        {
            int c = order[r];
            values[r] = d[c];
            for (int k = 0; k < n; k++) rows[(long)r * n + k] = v[(long)k * n + c];
        }
        return (values, rows);
    }

    static void Tred2(int n, double[] V, double[] d, double[] e)
    {
        for (int j = 0; j < n; j++) d[j] = V[(n - 1) * n + j];
        for (int i = n - 1; i > 0; i--)
        {
            double scale = 0.0, h = 0.0;
            for (int k = 0; k < i; k++) scale += Math.Abs(d[k]);
            if (scale == 0.0)
            {
                e[i] = d[i - 1];
                for (int j = 0; j < i; j++)
                {
                    d[j] = V[(i - 1) * n + j];
                    V[i * n + j] = 0.0;
                    V[j * n + i] = 0.0;
                }
            }
            else
            {
                for (int k = 0; k < i; k++) { d[k] /= scale; h += d[k] * d[k]; }
                double f = d[i - 1];
                double g = Math.Sqrt(h);
                if (f > 0) g = -g;
                e[i] = scale * g;
                h -= f * g;
                d[i - 1] = f - g;
                for (int j = 0; j < i; j++) e[j] = 0.0;
                for (int j = 0; j < i; j++)
                {
                    f = d[j];
                    V[j * n + i] = f;
                    g = e[j] + V[j * n + j] * f;
                    for (int k = j + 1; k <= i - 1; k++)
                    {
                        g += V[k * n + j] * d[k];
                        e[k] += V[k * n + j] * f;
                    }
                    e[j] = g;
                }
                f = 0.0;
                for (int j = 0; j < i; j++) { e[j] /= h; f += e[j] * d[j]; }
                double hh = f / (h + h);
                for (int j = 0; j < i; j++) e[j] -= hh * d[j];
                for (int j = 0; j < i; j++)
                {
                    f = d[j]; g = e[j];
                    for (int k = j; k <= i - 1; k++) V[k * n + j] -= f * e[k] + g * d[k];
                    d[j] = V[(i - 1) * n + j];
                    V[i * n + j] = 0.0;
                }
            }
            d[i] = h;
        }
        for (int i = 0; i < n - 1; i++)
        {
            V[(n - 1) * n + i] = V[i * n + i];
            V[i * n + i] = 1.0;
            double h = d[i + 1];
            if (h != 0.0)
            {
                for (int k = 0; k <= i; k++) d[k] = V[k * n + i + 1] / h;
                for (int j = 0; j <= i; j++)
                {
                    double g = 0.0;
                    for (int k = 0; k <= i; k++) g += V[k * n + i + 1] * V[k * n + j];
                    for (int k = 0; k <= i; k++) V[k * n + j] -= g * d[k];
                }
            }
            for (int k = 0; k <= i; k++) V[k * n + i + 1] = 0.0;
        }
        for (int j = 0; j < n; j++) { d[j] = V[(n - 1) * n + j]; V[(n - 1) * n + j] = 0.0; }
        V[(n - 1) * n + n - 1] = 1.0;
        e[0] = 0.0;
    }

    static void Tql2(int n, double[] V, double[] d, double[] e)
    {
        for (int i = 1; i < n; i++) e[i - 1] = e[i];
        e[n - 1] = 0.0;
        double f = 0.0, tst1 = 0.0;
        double eps = Math.Pow(2.0, -52.0);
        for (int l = 0; l < n; l++)
        {
            tst1 = Math.Max(tst1, Math.Abs(d[l]) + Math.Abs(e[l]));
            int m = l;
            while (m < n)
            {
                if (Math.Abs(e[m]) <= eps * tst1) break;
                m++;
            }
            if (m == n) m = n - 1; // e[n-1] is 0, so only reached through rounding
            if (m > l)
            {
                int iter = 0;
                do
                {
                    if (++iter > 300) throw new InvalidOperationException("symmetric eigendecomposition did not converge (non-finite input?)");
                    double g = d[l];
                    double p = (d[l + 1] - g) / (2.0 * e[l]);
                    double r = Hypot(p, 1.0);
                    if (p < 0) r = -r;
                    d[l] = e[l] / (p + r);
                    d[l + 1] = e[l] * (p + r);
                    double dl1 = d[l + 1];
                    double h = g - d[l];
                    for (int i = l + 2; i < n; i++) d[i] -= h;
                    f += h;
                    p = d[m];
                    double c = 1.0, c2 = c, c3 = c;
                    double el1 = e[l + 1];
                    double s = 0.0, s2 = 0.0;
                    for (int i = m - 1; i >= l; i--)
                    {
                        c3 = c2; c2 = c; s2 = s;
                        g = c * e[i];
                        h = c * p;
                        r = Hypot(p, e[i]);
                        e[i + 1] = s * r;
                        s = e[i] / r;
                        c = p / r;
                        p = c * d[i] - s * g;
                        d[i + 1] = h + s * (c * g + s * d[i]);
                        for (int k = 0; k < n; k++)
                        {
                            h = V[k * n + i + 1];
                            V[k * n + i + 1] = s * V[k * n + i] + c * h;
                            V[k * n + i] = c * V[k * n + i] - s * h;
                        }
                    }
                    p = -s * s2 * c3 * el1 * e[l] / dl1;
                    e[l] = s * p;
                    d[l] = c * p;
                } while (Math.Abs(e[l]) > eps * tst1);
            }
            d[l] += f;
            e[l] = 0.0;
        }
    }

    static double Hypot(double a, double b)
    {
        double x = Math.Abs(a), y = Math.Abs(b);
        if (x < y) (x, y) = (y, x);
        if (x == 0) return 0;
        double t = y / x;
        return x * Math.Sqrt(1 + t * t);
    }
}

/// <summary>Singular values of a matrix: exact (through the Gram matrix of the smaller side) or randomised (range
/// finder with power iterations, Halko–Martinsson–Tropp), and the effective rank of a spectrum.</summary>
public static class SingularValues
{
    /// <summary>All min(m, n) singular values of <paramref name="aMN"/> [m, n], descending, from the eigenvalues of the
    /// smaller Gram matrix (accumulated in double).</summary>
    // aMN: [m, n]
    public static double[] Exact(ReadOnlySpan<float> aMN, int m, int n)
    {
        if (aMN.Length != (long)m * n) throw new ArgumentException($"{aMN.Length} values for [{m}, {n}]");
        int s = Math.Min(m, n);
        var g = new double[(long)s * s];
        if (n <= m)
        {
            // AᵀA [n, n]
            var row = new double[n];
            for (int i = 0; i < m; i++)
            {
                var a = aMN.Slice(i * n, n);
                for (int p = 0; p < n; p++) row[p] = a[p];
                for (int p = 0; p < n; p++)
                {
                    double ap = row[p];
                    if (ap == 0) continue;
                    long o = (long)p * n;
                    for (int q = p; q < n; q++) g[o + q] += ap * row[q];
                }
            }
        }
        else
        {
            // AAᵀ [m, m]
            for (int p = 0; p < m; p++)
                for (int q = p; q < m; q++)
                {
                    double acc = 0;
                    var ap = aMN.Slice(p * n, n);
                    var aq = aMN.Slice(q * n, n);
                    for (int k = 0; k < n; k++) acc += (double)ap[k] * aq[k];
                    g[(long)p * m + q] = acc;
                }
        }
        for (int p = 0; p < s; p++)
            for (int q = p + 1; q < s; q++) g[(long)q * s + p] = g[(long)p * s + q];
        return FromGram(g, s);
    }

    /// <summary>The top <paramref name="k"/> singular values of <paramref name="aMN"/> [m, n] by a randomised range finder
    /// with <paramref name="oversample"/> extra directions and <paramref name="powerIterations"/> power iterations,
    /// re-orthonormalised after every product. Deterministic for a seed.</summary>
    // aMN: [m, n]
    public static double[] Randomized(ReadOnlySpan<float> aMN, int m, int n, int k, int oversample = 8, int powerIterations = 3, ulong seed = 0)
    {
        int l = Math.Min(Math.Min(m, n), k + oversample);
        var omega = new float[(long)n * l]; // [n, l]
        var rng = new Rng(seed ^ 0x9E3779B97F4A7C15UL);
        for (int i = 0; i < omega.Length; i++) omega[i] = Gaussian(ref rng);
        var y = new float[(long)m * l]; // [m, l]
        Gemm.MatMulNN(aMN, omega, m, n, l, y);
        var z = new float[(long)n * l]; // [n, l]
        for (int it = 0; it < powerIterations; it++)
        {
            Orthonormalize(y, m, l);
            Gemm.MatMulTN(aMN, y, n, m, l, z); // Aᵀ Q: [n, l]
            Orthonormalize(z, n, l);
            Gemm.MatMulNN(aMN, z, m, n, l, y); // A Z: [m, l]
        }
        Orthonormalize(y, m, l);
        var b = new float[(long)l * n]; // Qᵀ A: [l, n]
        Gemm.MatMulTN(y, aMN, l, m, n, b);
        var s = Exact(b, l, n);
        return s.Take(Math.Min(k, s.Length)).ToArray();
    }

    /// <summary>Singular values from a symmetric positive semi-definite Gram matrix [s, s]: square roots of its
    /// eigenvalues (negative rounding clamped to 0), descending.</summary>
    public static double[] FromGram(double[] gSS, int s) =>
        SymmetricEigen.Decompose(gSS, s).Values.Select(v => Math.Sqrt(Math.Max(v, 0))).ToArray();

    /// <summary>exp(H(p)) with p = σ²/Σσ² (natural log): 1 for a rank-one spectrum, r for r equal values.</summary>
    public static double EffectiveRank(IReadOnlyList<double> sigma)
    {
        double total = sigma.Sum(x => x * x);
        if (!(total > 0)) return 0;
        double h = 0;
        foreach (var x in sigma)
        {
            double p = x * x / total;
            if (p > 0) h -= p * Math.Log(p);
        }
        return Math.Exp(h);
    }

    // modified Gram–Schmidt on the columns of xRC [rows, cols], in double; a column that vanishes is left at zero
    static void Orthonormalize(float[] xRC, int rows, int cols)
    {
        var col = new double[rows];
        var basis = new double[cols][];
        for (int c = 0; c < cols; c++)
        {
            for (int r = 0; r < rows; r++) col[r] = xRC[(long)r * cols + c];
            for (int pass = 0; pass < 2; pass++) // twice is enough (Kahan–Parlett)
                for (int p = 0; p < c; p++)
                {
                    var q = basis[p];
                    double dot = 0;
                    for (int r = 0; r < rows; r++) dot += q[r] * col[r];
                    for (int r = 0; r < rows; r++) col[r] -= dot * q[r];
                }
            double norm = Math.Sqrt(col.Sum(v => v * v));
            var unit = new double[rows];
            if (norm > 1e-30) for (int r = 0; r < rows; r++) unit[r] = col[r] / norm;
            basis[c] = unit;
            for (int r = 0; r < rows; r++) xRC[(long)r * cols + c] = (float)unit[r];
        }
    }

    static float Gaussian(ref Rng rng)
    {
        double u1 = ((rng.NextU64() >> 11) + 0.5) * (1.0 / (1UL << 53));
        double u2 = ((rng.NextU64() >> 11) + 0.5) * (1.0 / (1UL << 53));
        return (float)(Math.Sqrt(-2 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2));
    }
}

/// <summary>Distribution summaries: mean, std, min, max and percentiles with linear interpolation between order
/// statistics (numpy's default).</summary>
public sealed record Summary(long Count, double Mean, double Std, double Min, double Max, double P25, double Median, double P75, double P90, double P95, double P99)
{
    public static Summary Of(IReadOnlyList<float> values)
    {
        if (values.Count == 0) return new Summary(0, double.NaN, double.NaN, double.NaN, double.NaN, double.NaN, double.NaN, double.NaN, double.NaN, double.NaN, double.NaN);
        var sorted = values.Select(v => (double)v).ToArray();
        Array.Sort(sorted);
        double mean = sorted.Average();
        double var = sorted.Sum(v => (v - mean) * (v - mean)) / sorted.Length;
        return new Summary(sorted.Length, mean, Math.Sqrt(var), sorted[0], sorted[^1], Percentile(sorted, 25), Percentile(sorted, 50),
            Percentile(sorted, 75), Percentile(sorted, 90), Percentile(sorted, 95), Percentile(sorted, 99));
    }

    /// <summary>The q-th percentile of ascending <paramref name="sorted"/>: position q/100·(n−1), interpolated.</summary>
    public static double Percentile(double[] sorted, double q)
    {
        double pos = q / 100 * (sorted.Length - 1);
        int lo = (int)Math.Floor(pos);
        int hi = Math.Min(lo + 1, sorted.Length - 1);
        return sorted[lo] + (pos - lo) * (sorted[hi] - sorted[lo]);
    }

    public System.Text.Json.Nodes.JsonObject ToJson() => new()
    {
        ["count"] = Count, ["mean"] = J(Mean), ["std"] = J(Std), ["min"] = J(Min), ["max"] = J(Max),
        ["p25"] = J(P25), ["median"] = J(Median), ["p75"] = J(P75), ["p90"] = J(P90), ["p95"] = J(P95), ["p99"] = J(P99),
    };

    static System.Text.Json.Nodes.JsonNode? J(double v) => double.IsFinite(v) ? v : null;
}

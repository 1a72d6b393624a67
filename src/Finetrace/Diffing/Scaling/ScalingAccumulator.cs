using System.Runtime.Intrinsics;
using Finetrace.Dictionaries;

namespace Finetrace.Diffing.Scaling;

/// <summary>
/// Streaming Latent Scaling sums for every latent at once (methods.md §5.1–§5.3), in float64, split into chunks for
/// the intervals. For latent j with probe d_j, unscaled inference code f_ij and a j-independent target y_i:
///   S_j = Σ_i f_ij (d_j · y_i),  C_j = Σ_i f_ij²,  Dn_j = ‖d_j‖²,  count_j = Σ_i [f_ij ≠ 0].
/// Only active (i, j) pairs contribute, so the cost is L0 · D per token and target, next to the encoder's M·D·F.
/// The error targets of §5.3 depend on j (latent j's own contribution is added back); by the identity
///   num^ε_j = d_j · Σ_i f_ij (ε_i + f_ij d_j^m) = Σ_i f_ij (d_j · ε_i) + (d_j · d_j^m) C_j
/// they cost nothing extra: d_j·ε_i = d_j·x_i − d_j·x̂_i comes from the activation and reconstruction sums.
/// </summary>
public sealed class ScalingAccumulator
{
    /// <summary>What one streamed target is: an activation, a reconstruction, or (crosscoders) the model's error.</summary>
    public enum TargetKind { Activation, Reconstruction, Error }

    public sealed record Target(string Name, TargetKind Kind, int Model);

    readonly AnalysisDictionary _ad;
    readonly int _F, _D, _chunks;
    readonly int[] _probeModel;       // [F] which decoder row is the probe
    readonly double[] _normD2;        // [F] ‖d_j‖²
    readonly double[][] _addBack;     // [M][F] d_j · d_j^m (crosscoders)
    // streamed sums, per chunk: [chunk * F + j]
    readonly double[][] _sAct, _sRec; // [models][chunks·F]: Σ f (d·x^m), Σ f (d·x̂^m)
    readonly double[] _sumF2;         // [chunks·F]
    readonly long[] _count;           // [F]
    readonly long[] _positions;       // [chunks]

    /// <summary>Models (targets) per latent: crosscoder models, or the store models a single-model dictionary is
    /// measured against (its raw activations).</summary>
    public int TargetModels { get; }
    public IReadOnlyList<Target> Targets { get; }

    /// <param name="targetModels">Crosscoders: ignored (the dictionary's models). SAEs and diff-SAEs: how many store
    /// models' raw activations serve as targets.</param>
    public ScalingAccumulator(AnalysisDictionary ad, int[] probeModel, int chunks, int targetModels = 2)
    {
        var d = ad.Dict;
        _ad = ad; _F = d.DictSize; _D = d.DModel; _chunks = chunks;
        if (probeModel.Length != _F) throw new ArgumentException($"probe model per latent: {probeModel.Length} values for {_F} latents");
        if (chunks < 1) throw new ArgumentOutOfRangeException(nameof(chunks), "at least one chunk");
        bool cc = ad.Kind == InputKind.Paired;
        TargetModels = cc ? d.Models : targetModels;
        _probeModel = probeModel;
        _normD2 = new double[_F];
        for (int j = 0; j < _F; j++) { var p = Probe(j); _normD2[j] = Dot(p, p); }
        _addBack = new double[cc ? d.Models : 0][];
        for (int m = 0; m < _addBack.Length; m++)
        {
            _addBack[m] = new double[_F];
            for (int j = 0; j < _F; j++) _addBack[m][j] = Dot(Probe(j), d.WDec.AsSpan((m * _F + j) * _D, _D));
        }
        _sAct = Enumerable.Range(0, TargetModels).Select(_ => new double[chunks * _F]).ToArray();
        _sRec = Enumerable.Range(0, cc ? TargetModels : 0).Select(_ => new double[chunks * _F]).ToArray();
        _sumF2 = new double[chunks * _F];
        _count = new long[_F];
        _positions = new long[chunks];
        var targets = new List<Target>();
        for (int m = 0; m < TargetModels; m++)
        {
            string who = ModelName(m, TargetModels);
            if (cc)
            {
                targets.Add(new Target($"{who}_error", TargetKind.Error, m));
                targets.Add(new Target($"{who}_reconstruction", TargetKind.Reconstruction, m));
            }
            targets.Add(new Target($"{who}_activation", TargetKind.Activation, m));
        }
        Targets = targets;
    }

    /// <summary>Index 0 = base, 1 = ft (two models); model{m} otherwise.</summary>
    public static string ModelName(int m, int models) => models == 2 ? (m == 0 ? "base" : "ft") : $"model{m}";

    ReadOnlySpan<float> Probe(int j) => _ad.Dict.WDec.AsSpan((_probeModel[j] * _F + j) * _D, _D);

    /// <summary>Adds a batch to chunk <paramref name="chunk"/>. Crosscoders: <paramref name="xBMD"/> is the dictionary
    /// input, <paramref name="xHatBMD"/> its reconstruction (both in the dictionary's space), and the targets are those
    /// rows. SAEs and diff-SAEs: <paramref name="targetsBTD"/> holds the raw activations of the target models.</summary>
    // codes [B, F] (unscaled inference f); xBMD, xHatBMD: [B, M, D]; targetsBTD: [B, TargetModels, D]
    public void Add(SparseCodes codes, ReadOnlySpan<float> xBMD, ReadOnlySpan<float> xHatBMD, ReadOnlySpan<float> targetsBTD, int chunk)
    {
        if ((uint)chunk >= (uint)_chunks) throw new ArgumentOutOfRangeException(nameof(chunk));
        int B = codes.Rows, T = TargetModels, D = _D, F = _F;
        bool cc = _ad.Kind == InputKind.Paired;
        if (cc && (xBMD.Length != B * T * D || xHatBMD.Length != B * T * D)) throw new ArgumentException("crosscoder rows and reconstruction must be [B, M, D]");
        if (!cc && targetsBTD.Length != B * T * D) throw new ArgumentException($"targets must be [B, {T}, D]");
        codes.BuildColumns();
        _positions[chunk] += B;
        var rows = (cc ? xBMD : targetsBTD).ToArray();
        var recon = cc ? xHatBMD.ToArray() : null;
        int off = chunk * F;
        int nc = Math.Max(1, Math.Min(Environment.ProcessorCount * 4, F / 16));
        long work = (long)codes.Count * D * T * (recon is null ? 1 : 2);
        var par = new ParallelOptions { MaxDegreeOfParallelism = work < (1 << 17) ? 1 : Environment.ProcessorCount };
        Parallel.For(0, nc, par, ch =>
        {
            int lo = (int)((long)F * ch / nc), hi = (int)((long)F * (ch + 1) / nc);
            for (int j = lo; j < hi; j++)
            {
                int e0 = codes.ColStart[j], e1 = codes.ColStart[j + 1];
                if (e0 == e1) continue;
                var p = Probe(j);
                double c2 = 0;
                long n = 0;
                for (int e = e0; e < e1; e++)
                {
                    double f = codes.Value[codes.ColEntry[e]];
                    if (f == 0) continue;
                    int i = codes.ColRow[e];
                    c2 += f * f; n++;
                    for (int m = 0; m < T; m++)
                    {
                        _sAct[m][off + j] += f * Dot(p, rows.AsSpan((i * T + m) * D, D));
                        if (recon is not null) _sRec[m][off + j] += f * Dot(p, recon.AsSpan((i * T + m) * D, D));
                    }
                }
                _sumF2[off + j] += c2;
                _count[j] += n;
            }
        });
    }

    /// <summary>The per-chunk numerators of target <paramref name="t"/> ([chunks, F]), the add-back term included.</summary>
    public double[] ChunkNumerators(Target t)
    {
        var r = new double[_chunks * _F];
        for (int k = 0; k < _chunks; k++)
            for (int j = 0; j < _F; j++)
            {
                int i = k * _F + j;
                r[i] = t.Kind switch
                {
                    TargetKind.Activation => _sAct[t.Model][i],
                    TargetKind.Reconstruction => _sRec[t.Model][i],
                    _ => _sAct[t.Model][i] - _sRec[t.Model][i] + _addBack[t.Model][j] * _sumF2[i],
                };
            }
        return r;
    }

    public long Positions => _positions.Sum();
    public long[] ChunkPositions => (long[])_positions.Clone();
    public int Chunks => _chunks;
    public double[] NormD2 => (double[])_normD2.Clone();
    public long[] CountActive => (long[])_count.Clone();

    /// <summary>Σ over chunks of C_j.</summary>
    public double[] SumF2() => SumChunks(_sumF2);

    public double[] SumChunks(double[] chunkF)
    {
        var r = new double[_F];
        for (int k = 0; k < _chunks; k++) for (int j = 0; j < _F; j++) r[j] += chunkF[k * _F + j];
        return r;
    }

    /// <summary>Σ a_i b_i in float64: each float is widened, so every product is exact and only the sum rounds (in double).</summary>
    public static double Dot(ReadOnlySpan<float> a, ReadOnlySpan<float> b)
    {
        int i = 0, n = a.Length;
        double s = 0;
        if (Vector256.IsHardwareAccelerated && n >= 8)
        {
            var acc0 = Vector256<double>.Zero; var acc1 = Vector256<double>.Zero;
            for (; i + 8 <= n; i += 8)
            {
                var (alo, ahi) = Vector256.Widen(Vector256.Create(a.Slice(i, 8)));
                var (blo, bhi) = Vector256.Widen(Vector256.Create(b.Slice(i, 8)));
                acc0 += alo * blo; acc1 += ahi * bhi;
            }
            s = Vector256.Sum(acc0 + acc1);
        }
        double s0 = 0, s1 = 0;
        for (; i + 2 <= n; i += 2) { s0 += (double)a[i] * b[i]; s1 += (double)a[i + 1] * b[i + 1]; }
        for (; i < n; i++) s0 += (double)a[i] * b[i];
        return s + (s0 + s1);
    }
}

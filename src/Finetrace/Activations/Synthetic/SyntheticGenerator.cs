using Finetrace.Tensors;
using System.Globalization;
using System.Numerics.Tensors;

namespace Finetrace.Activations.Synthetic;

/// <summary>
/// Writes an activation store from a known sparse generative model (<see cref="SyntheticTruth"/>): the demo data and
/// the ground-truth benchmark for crosscoders and diff-SAEs. Each token draws K ~ Poisson(L0) features from the
/// firing distribution (so feature i is active independently with probability 1 − exp(−L0·q_i)), each with magnitude
/// a = μ_i·(0.5 + U(0, 1)); model m sees Σ a·scale[m,i]·direction[m,i] + bias^m + noise (zero-mean, std σ). Every sequence has
/// its own generator stream, so the output is a pure function of the seed (and resumable).
/// </summary>
public static class SyntheticGenerator
{
    const int SequencesPerGroup = 64;

    public static SyntheticTruth MakeTruth(SyntheticSpec spec)
    {
        spec.Validate();
        int m = spec.Models, f = spec.Features, d = spec.DModel;
        var rng = Rng.For(spec.Seed, 0);
        var (nEx, nSh, nDe, _) = spec.Counts();

        // Categories at random feature indices, so an index says nothing about the category.
        var perm = new int[f];
        rng.Permutation(perm);
        var cats = new FeatureCategory[f];
        var owner = new int[f];
        Array.Fill(owner, -1);
        for (int k = 0; k < f; k++)
        {
            int i = perm[k];
            if (k < nEx) { cats[i] = FeatureCategory.Exclusive; owner[i] = k % m; }
            else if (k < nEx + nSh) { cats[i] = FeatureCategory.Shrunk; owner[i] = 0; }
            else if (k < nEx + nSh + nDe) { cats[i] = FeatureCategory.Decoupled; owner[i] = 0; }
            else cats[i] = FeatureCategory.Shared;
        }

        var dirs = new float[(long)m * f * d];
        var u = new float[d];
        for (int i = 0; i < f; i++)
        {
            var d0 = dirs.AsSpan(i * d, d);
            RandomUnit(ref rng, d0);
            for (int mm = 1; mm < m; mm++)
            {
                var dm = dirs.AsSpan(((int)mm * f + i) * d, d);
                RandomUnit(ref rng, u);
                for (int j = 0; j < d; j++) dm[j] = d0[j] + spec.Drift * u[j];
                Normalize(dm);
            }
        }

        var scales = new float[m * f];
        Array.Fill(scales, 1f);
        var shared = Enumerable.Range(0, f).Where(i => cats[i] == FeatureCategory.Shared).ToArray();
        var parents = new int[f][];
        var weights = new float[f][];
        for (int i = 0; i < f; i++)
        {
            parents[i] = [];
            weights[i] = [];
            switch (cats[i])
            {
                case FeatureCategory.Exclusive:
                    for (int mm = 0; mm < m; mm++)
                        if (mm != owner[i]) { scales[mm * f + i] = 0; dirs.AsSpan(((int)mm * f + i) * d, d).Clear(); }
                    break;
                case FeatureCategory.Shrunk:
                    scales[owner[i] * f + i] = spec.ShrinkFactor;
                    break;
                case FeatureCategory.Decoupled when spec.Decoupling == DecouplingMode.Superset:
                    break; // same directions as a shared feature; the sampler adds the base's extra firings
                case FeatureCategory.Decoupled:
                {
                    // Model `owner` writes Σ w_p·dir_p of distinct shared parents instead of a direction of its own;
                    // weights scaled so the combination has unit norm (same energy as in the other models).
                    var ps = new List<int>();
                    while (ps.Count < spec.Parents)
                    {
                        int c = shared[rng.NextLong(shared.Length)];
                        if (!ps.Contains(c)) ps.Add(c);
                    }
                    var w = ps.Select(_ => (float)(0.5 + 0.5 * rng.NextDouble())).ToArray();
                    var combo = dirs.AsSpan(((int)owner[i] * f + i) * d, d);
                    combo.Clear();
                    for (int k = 0; k < ps.Count; k++)
                        TensorPrimitives.MultiplyAdd(dirs.AsSpan(((int)owner[i] * f + ps[k]) * d, d), w[k], combo, combo);
                    float norm = TensorPrimitives.Norm(combo);
                    TensorPrimitives.Divide(combo, norm, combo);
                    for (int k = 0; k < w.Length; k++) w[k] /= norm;
                    parents[i] = ps.ToArray();
                    weights[i] = w;
                    break;
                }
            }
        }

        // Firing distribution: log-uniform rates over a spread, normalised to q (Σ q = 1); magnitudes lognormal.
        var q = new double[f];
        for (int i = 0; i < f; i++) q[i] = Math.Exp(rng.NextDouble() * Math.Log(spec.FrequencySpread));
        double sum = q.Sum();
        var fire = new float[f];
        var mag = new float[f];
        for (int i = 0; i < f; i++)
        {
            q[i] /= sum;
            fire[i] = (float)(1 - Math.Exp(-spec.L0 * q[i]));
            mag[i] = (float)Math.Exp(0.25 * rng.NextGaussian());
        }

        var bias = new float[m * d];
        for (int mm = 0; mm < m; mm++)
        {
            var b = bias.AsSpan(mm * d, d);
            RandomUnit(ref rng, b);
            TensorPrimitives.Multiply(b, spec.Bias, b);
        }

        return new SyntheticTruth
        {
            Spec = spec, Directions = dirs, Scales = scales, Categories = cats, Owner = owner,
            FiringProbability = fire, Magnitude = mag, Bias = bias, Parents = parents, ParentWeights = weights,
        };
    }

    public static StoreSettings Settings(SyntheticSpec spec, long shardTokens = 1 << 18)
    {
        var s = new StoreSettings
        {
            ShardTokens = shardTokens,
            Models = Enumerable.Range(0, spec.Models).Select(m => new StoreModel
            {
                Name = m == 0 ? "synthetic-base" : spec.Models == 2 ? "synthetic-ft" : $"synthetic-ft{m}",
                Path = "synthetic",
            }).ToList(),
            Layers = [spec.Layer],
            Hook = "synthetic",
            Dtype = spec.Dtype,
            DModel = spec.DModel,
            Sources = [new StoreSource { Name = "synthetic", Kind = "synthetic", Path = "synthetic" }],
        };
        var inv = CultureInfo.InvariantCulture;
        void Opt(string k, IFormattable v) => s.Options[k] = v.ToString(null, inv);
        Opt("synth.seed", spec.Seed); Opt("synth.features", spec.Features); Opt("synth.exclusive", spec.Exclusive);
        Opt("synth.shrunk", spec.Shrunk); Opt("synth.decoupled", spec.Decoupled); Opt("synth.shrink_factor", spec.ShrinkFactor);
        Opt("synth.parents", spec.Parents); Opt("synth.l0", spec.L0); Opt("synth.frequency_spread", spec.FrequencySpread);
        Opt("synth.noise", spec.Noise); Opt("synth.drift", spec.Drift); Opt("synth.bias", spec.Bias); Opt("synth.seq_len", spec.SequenceLength);
        // Recorded only for the newer mode, so a combination-mode store keeps the settings (and resumes) as before.
        if (spec.Decoupling != DecouplingMode.Combination)
        {
            s.Options["synth.decoupling"] = spec.Decoupling.ToString().ToLowerInvariant();
            Opt("synth.decoupled_extra_rate", spec.DecoupledExtraRate);
        }
        return s;
    }

    /// <summary>Generates (or resumes) the store in <paramref name="dir"/> and saves the ground truth beside it.
    /// <paramref name="progress"/> receives the tokens written so far.</summary>
    public static SyntheticTruth Make(SyntheticSpec spec, string dir, long shardTokens = 1 << 18, Action<long>? progress = null, CancellationToken cancel = default)
    {
        var truth = MakeTruth(spec);
        using var w = ActivationStoreWriter.Open(dir, Settings(spec, shardTokens), spec.Tokens);
        truth.Save(w.Directory);
        if (w.IsComplete) return truth;
        var sampler = new Sampler(truth);
        int L = spec.SequenceLength, m = spec.Models, d = spec.DModel;
        long sequences = (spec.Tokens + L - 1) / L;
        // Generate group g + 1 on worker threads while group g is written.
        var batches = new[] { new StoreBatch(SequencesPerGroup * L, SequencesPerGroup, m, 1, d), new StoreBatch(SequencesPerGroup * L, SequencesPerGroup, m, 1, d) };
        Task Generate(StoreBatch b, long first) => Task.Run(() =>
        {
            int count = (int)Math.Min(SequencesPerGroup, sequences - first);
            int tokens = 0;
            for (int k = 0; k < count; k++) { b.SequenceLengths[k] = SeqLen(spec, first + k); tokens += b.SequenceLengths[k]; }
            b.SequenceCount = count;
            b.TokenCount = tokens;
            // Every sequence before the last is full length, so sequence k starts at k·L.
            Parallel.For(0, count, k => sampler.Sequence(first + k, b.SequenceLengths[k], b, k * L));
        });
        int g = 0;
        long start = w.ResumeSequences;
        var pending = start < sequences ? Generate(batches[0], start) : null;
        for (long first = start; first < sequences; first += SequencesPerGroup, g++)
        {
            pending!.Wait();
            cancel.ThrowIfCancellationRequested();
            pending = first + SequencesPerGroup < sequences ? Generate(batches[(g + 1) & 1], first + SequencesPerGroup) : null;
            w.Append(batches[g & 1]);
            progress?.Invoke(w.Tokens);
        }
        w.Complete();
        return truth;
    }

    static int SeqLen(SyntheticSpec s, long seq) => (int)Math.Min(s.SequenceLength, s.Tokens - seq * s.SequenceLength);

    static void RandomUnit(ref Rng rng, Span<float> v)
    {
        for (int j = 0; j < v.Length; j++) v[j] = (float)rng.NextGaussian();
        Normalize(v);
    }

    static void Normalize(Span<float> v) => TensorPrimitives.Divide(v, TensorPrimitives.Norm(v), v);

    /// <summary>Per-token sampling: Poisson count, alias-table draws, and the model activations.</summary>
    internal sealed class Sampler
    {
        readonly SyntheticTruth _t;
        readonly double[] _prob;
        readonly int[] _alias;
        readonly double _expL0;
        /// <summary>Superset decoupling: the decoupled features, the cumulative Poisson rates of the base's extra
        /// firings (feature i fires extra with probability 1 − exp(−rate·L0·q_i)), and their total.</summary>
        readonly int[] _echo;
        readonly double[] _echoCumulative;
        readonly double _echoTotal, _expEchoTotal;

        public Sampler(SyntheticTruth t)
        {
            _t = t;
            int f = t.Features;
            _echo = t.Spec.Decoupling == DecouplingMode.Superset ? t.FeaturesOf(FeatureCategory.Decoupled) : [];
            _echoCumulative = new double[_echo.Length];
            for (int e = 0; e < _echo.Length; e++)
                _echoCumulative[e] = (e > 0 ? _echoCumulative[e - 1] : 0) - t.Spec.DecoupledExtraRate * Math.Log(1 - (double)t.FiringProbability[_echo[e]]);
            _echoTotal = _echo.Length > 0 ? _echoCumulative[^1] : 0;
            _expEchoTotal = Math.Exp(-_echoTotal);
            // q_i recovered from the firing probabilities: q_i = −ln(1 − p_i) / L0.
            var q = new double[f];
            for (int i = 0; i < f; i++) q[i] = -Math.Log(1 - (double)t.FiringProbability[i]);
            double s = q.Sum();
            for (int i = 0; i < f; i++) q[i] = q[i] / s * f;
            // Vose's alias method.
            _prob = new double[f];
            _alias = new int[f];
            var small = new Stack<int>();
            var large = new Stack<int>();
            for (int i = f - 1; i >= 0; i--) (q[i] < 1 ? small : large).Push(i);
            while (small.Count > 0 && large.Count > 0)
            {
                int l = small.Pop(), g = large.Pop();
                _prob[l] = q[l]; _alias[l] = g;
                q[g] = q[g] + q[l] - 1;
                (q[g] < 1 ? small : large).Push(g);
            }
            while (large.Count > 0) _prob[large.Pop()] = 1;
            while (small.Count > 0) _prob[small.Pop()] = 1;
            _expL0 = Math.Exp(-t.Spec.L0);
        }

        static int Poisson(ref Rng rng, double l0, double expL0)
        {
            if (l0 < 30)
            {
                int k = 0;
                double p = rng.NextDouble();
                while (p > expL0) { k++; p *= rng.NextDouble(); }
                return k;
            }
            return Math.Max(0, (int)Math.Round(l0 + Math.Sqrt(l0) * rng.NextGaussian()));
        }

        /// <summary>Fills tokens [offset, offset + len) of b with sequence seq; record (tests) receives each
        /// token's active features and magnitudes, baseExtra the base's extra firings of decoupled features.</summary>
        public void Sequence(long seq, int len, StoreBatch b, int offset, List<(int Feature, float A)>[]? record = null,
            List<(int Feature, float A)>[]? baseExtra = null)
        {
            var spec = _t.Spec;
            int m = spec.Models, d = spec.DModel, f = spec.Features;
            var rng = Rng.For(spec.Seed, 1, (ulong)seq);
            Span<int> active = stackalloc int[256];
            Span<float> amp = stackalloc float[256];
            var extra = new int[Math.Max(_echo.Length, 1)];
            var extraAmp = new float[extra.Length];
            for (int p = 0; p < len; p++)
            {
                int t = offset + p;
                int k = Math.Min(Poisson(ref rng, spec.L0, _expL0), active.Length), n = 0;
                int strongest = -1;
                float best = 0;
                for (int j = 0; j < k; j++)
                {
                    int i = (int)rng.NextLong(f);
                    if (rng.NextDouble() >= _prob[i]) i = _alias[i];
                    float a = _t.Magnitude[i] * (float)(0.5 + rng.NextDouble());
                    if (active[..n].Contains(i)) continue;
                    active[n] = i; amp[n] = a; n++;
                    record?[p].Add((i, a));
                    if (a > best) { best = a; strongest = i; }
                }
                // Superset decoupling: the base writes decoupled directions on extra tokens of its own, independently of
                // the feature's own firing (no draws at all in combination mode, so those stores are unchanged; a
                // direction already active on the token is not written twice).
                int nExtra = 0;
                if (_echo.Length > 0)
                {
                    int ke = Poisson(ref rng, _echoTotal, _expEchoTotal);
                    for (int j = 0; j < ke; j++)
                    {
                        int e = Array.BinarySearch(_echoCumulative, rng.NextDouble() * _echoTotal);
                        if (e < 0) e = ~e;
                        int i = _echo[Math.Min(e, _echo.Length - 1)];
                        float a = _t.Magnitude[i] * (float)(0.5 + rng.NextDouble());
                        if (active[..n].Contains(i) || extra.AsSpan(0, nExtra).Contains(i)) continue;
                        extra[nExtra] = i; extraAmp[nExtra] = a; nExtra++;
                        baseExtra?[p].Add((i, a));
                    }
                }
                for (int mm = 0; mm < m; mm++)
                {
                    var h = b.Activations[mm].AsSpan(t * d, d);
                    _t.Bias.AsSpan(mm * d, d).CopyTo(h);
                    for (int j = 0; j < n; j++)
                    {
                        float s = amp[j] * _t.Scales[mm * f + active[j]];
                        if (s != 0) TensorPrimitives.MultiplyAdd(_t.Direction(mm, active[j]), s, h, h);
                    }
                    if (mm == 0)
                        for (int j = 0; j < nExtra; j++) TensorPrimitives.MultiplyAdd(_t.Direction(0, extra[j]), extraAmp[j], h, h);
                    if (spec.Noise > 0)
                    {
                        // Irwin–Hall noise: the sum of four 16-bit uniforms from one draw, centred and scaled to unit
                        // variance (√3·(Σu − 2)); approximately Gaussian, bounded at ±3.46σ, and ~10× cheaper than Box–Muller.
                        float scale = spec.Noise * MathF.Sqrt(3f) / 65536f;
                        for (int j = 0; j < d; j++)
                        {
                            ulong r = rng.NextU64();
                            int sum = (int)(r & 0xFFFF) + (int)((r >> 16) & 0xFFFF) + (int)((r >> 32) & 0xFFFF) + (int)(r >> 48);
                            h[j] += (sum - 2 * 65535) * scale;
                        }
                    }
                }
                b.Tokens[t] = strongest + 1;
                b.Positions[t] = p;
                b.Masks[t] = 0;
                b.Sources[t] = 0;
            }
        }
    }
}

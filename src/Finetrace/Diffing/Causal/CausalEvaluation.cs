using System.Text.Json.Nodes;
using Finetrace.Activations;
using Finetrace.Dictionaries;
using Finetrace.Models;
using Finetrace.Tensors;

namespace Finetrace.Diffing.Causal;

/// <summary>A named set of latents to patch.</summary>
public sealed record LatentSet(string Name, int[] Latents);

public sealed record CausalOptions
{
    /// <summary>Stored sequences re-run (a seeded sample).</summary>
    public int Sequences { get; init; } = 64;
    public int Seed { get; init; }
    /// <summary>Random sets per size (methods.md §6.2: 5).</summary>
    public int RandomSeeds { get; init; } = 5;
    /// <summary>Score assistant tokens only (chat data). Null: when the sampled sequences have assistant tokens.</summary>
    public bool? Chat { get; init; }
    /// <summary>Sequences per forward batch.</summary>
    public int BatchSequences { get; init; } = 8;
}

/// <summary>One row of <c>causal.json</c>: a patch of a latent set, its KL to the fine-tuned model and the gap closed.</summary>
public sealed record CausalEntry
{
    public required string Set { get; init; }
    public required string Patch { get; init; }
    public required int Size { get; init; }
    public int? Seed { get; init; }
    public required double KlAll { get; init; }
    public required double KlFirst10 { get; init; }
    public required double KlRest { get; init; }
    public double GapClosed { get; init; }
    public double GapClosedNormalised { get; init; }
    /// <summary>Aggregate rows (random sets): standard deviation over seeds of kl_all and gap_closed.</summary>
    public double? KlAllStd { get; init; }
    public double? GapClosedStd { get; init; }
    public bool Aggregate { get; init; }

    public JsonObject ToJson() => new()
    {
        ["set"] = Set, ["patch"] = Patch, ["size"] = Size, ["seed"] = Seed, ["kl_all"] = KlAll, ["kl_first10"] = KlFirst10, ["kl_rest"] = KlRest,
        ["gap_closed"] = GapClosed, ["gap_closed_normalised"] = GapClosedNormalised,
        ["aggregate"] = Aggregate, ["kl_all_std"] = KlAllStd, ["gap_closed_std"] = GapClosedStd,
    };
}

public sealed record CausalResult(IReadOnlyList<CausalEntry> Entries, int Sequences, long Positions, bool Chat);

/// <summary>
/// Causal evaluation of latent sets (methods.md §6): both models run to the dictionary's layer L on the same tokens, the
/// base residual is edited, and the fine-tuned model continues from L+1; the metric is KL(p_ft ‖ p_patched) per scored
/// position (assistant tokens for chat data, all tokens otherwise; all, the first 10 per sequence, the rest). Patches:
/// <c>vanilla</c> (h_base, the empty set), <c>base_error</c> (h_base + Σ_all f_j (d_j^ft − d_j^base)), <c>latent_set</c>
/// (h_base + Σ_{j∈S} f_j (d_j^ft − d_j^base)), <c>additive</c> (h_base + Σ_{j∈S} f_j d_j^ft), and random sets of the
/// size of the first given set. f is the crosscoder's inference code of [h_base, h_ft]; decoder rows are mapped to raw
/// space (÷ g_m). Gap closed = 1 − KL(S)/KL(vanilla); normalised = (KL(vanilla) − KL(S)) / (KL(vanilla) − KL(base_error)).
/// diff-SAEs (δ = h_ft − h_base, sign s = −1 for a base − ft SAE; methods.md §6.2 "diff-SAE variants"): <c>additive</c>
/// (h_base + s·Σ_{j∈S} f_j d_j), <c>full_reconstruction</c> (h_base + s·SAE(δ), the normaliser of the gap), <c>bias</c>
/// (h_base + s·b_dec in raw space), <c>error</c> (h_base + s·(δ − SAE(δ)) = h_ft − s·SAE(δ)), random additive sets.
/// </summary>
public static class CausalEvaluation
{
    public const string Stage = "causal";
    public const string FileName = "causal.json";

    /// <summary>One patch: start from h_base (or h_ft), add sign·(Σ_{j∈members} f_j rows_j + offset) at every real position.</summary>
    sealed record Patch(string Set, string Kind, bool[] Members, float[]? Rows, float[]? Offset, bool FromFt, float Sign, int? Seed, int Size);

    public static CausalResult Run(AnalysisDictionary ad, ActivationStore store, CausalLM baseLm, CausalLM ftLm, IReadOnlyList<LatentSet> sets, CausalOptions o,
        int[]? randomPool = null, IProgress<(long Done, long Total)>? progress = null, CancellationToken cancel = default)
    {
        ad.RequireResidualSite("the causal evaluation");
        bool diffSae = ad.Kind == InputKind.Difference;
        if (!diffSae && (ad.Kind != InputKind.Paired || ad.Dict.Models != 2))
            throw new ArgumentException($"{ad.Directory}: the causal evaluation patches with a two-model crosscoder or a diff-SAE; this dictionary reads {ad.Input}");
        var d = ad.Dict;
        int F = d.DictSize, D = d.DModel, L = ad.Layer;
        foreach (var lm in new[] { baseLm, ftLm })
        {
            if (lm.Hidden != D) throw new ArgumentException($"{lm.Folder}: hidden size {lm.Hidden}, the dictionary reads {D}");
            if (L >= lm.Layers - 1) throw new ArgumentException($"{lm.Folder}: layer {L} is the last layer; nothing is left to continue from");
        }

        var seqs = SampleSequences(store, o, ftLm.Config.BosTokenId);
        if (seqs.Count == 0) throw new InvalidOperationException($"{store.Directory}: no stored sequence starts at position 0 (or 1 after a dropped BOS); nothing to re-run");
        bool chat = o.Chat ?? seqs.Any(s => s.Masks.Any(m => (m & (byte)TokenMask.Assistant) != 0));

        var every = Enumerable.Repeat(true, F).ToArray();
        var patches = new List<Patch> { new("empty", "vanilla", new bool[F], null, null, false, 1, null, 0) };
        float[] setRows;   // what a latent set adds per unit of f
        float setSign = 1;
        if (!diffSae)
        {
            var delta = RawDifferenceRows(d); var add = RawRows(d, 1);
            setRows = delta;
            patches.Add(new("all", "base_error", every, delta, null, false, 1, null, F));
            foreach (var s in sets)
            {
                var mem = Members(s.Latents, F);
                patches.Add(new(s.Name, "latent_set", mem, delta, null, false, 1, null, s.Latents.Length));
                patches.Add(new(s.Name, "additive", mem, add, null, false, 1, null, s.Latents.Length));
            }
        }
        else
        {
            // diff-SAE on δ = h_a − h_b: its raw decoder rows and raw bias (the reconstruction at f = 0); sign +1 when δ
            // points from the base to the fine-tuned model (difference_ftb), −1 for a base − ft SAE (methods.md §6.2).
            float sign = ad.StoreModels[0] == 1 && ad.StoreModels[1] == 0 ? 1f : -1f;
            var rows = RawRows(d, 0);
            var bias = RawBias(d);
            setRows = rows; setSign = sign;
            patches.Add(new("all", "full_reconstruction", every, rows, bias, false, sign, null, F));
            patches.Add(new("bias", "bias", new bool[F], null, bias, false, sign, null, 0));
            // h_ft − sign·SAE(δ) = h_base + (δ − SAE(δ))·sign: what the SAE leaves out (derived; the reference's
            // "reconstruction error" variant is unverified)
            patches.Add(new("all", "error", every, rows, bias, true, -sign, null, F));
            foreach (var s in sets)
                patches.Add(new(s.Name, "additive", Members(s.Latents, F), rows, null, false, sign, null, s.Latents.Length));
        }
        string setKind = diffSae ? "additive" : "latent_set";
        int randomSize = sets.Count > 0 ? sets[0].Latents.Length : 0;
        var pool = randomPool ?? Enumerable.Range(0, F).ToArray();
        if (randomSize > 0 && pool.Length >= randomSize)
            for (int seed = 0; seed < o.RandomSeeds; seed++)
            {
                var rng = new Random(unchecked(o.Seed * 7919 + seed));
                var pick = pool.OrderBy(_ => rng.Next()).Take(randomSize).ToArray();
                patches.Add(new("random", setKind, Members(pick, F), setRows, null, false, setSign, seed, randomSize));
            }
        var sums = new double[patches.Count, 3]; var counts = new long[3];
        int done = 0;
        for (int start = 0; start < seqs.Count; start += o.BatchSequences)
        {
            cancel.ThrowIfCancellationRequested();
            var group = seqs.Skip(start).Take(o.BatchSequences).ToList();
            var tb = TokenBatch.RightPadded(group.Select(s => s.Ids).ToList());
            int T = tb.Seq;
            var hb = baseLm.Embed(tb); baseLm.RunLayers(0, L, hb, tb);
            var hf = ftLm.Embed(tb); ftLm.RunLayers(0, L, hf, tb);
            // real positions and the code of [h_base, h_ft] at each
            var (slots, codes) = ad.PairCodes(hb.Data, hf.Data, group.Select(s => s.Ids.Length).ToList(), T);
            // scored positions: (slot, subset) with subset 1 = first 10, 2 = rest
            var scored = new List<(int Slot, int Sub)>();
            int slotBase = 0;
            for (int g = 0; g < group.Count; g++)
            {
                var sq = group[g];
                int firstSeen = 0;
                for (int p = 0; p + 1 < sq.Ids.Length; p++)
                {
                    byte next = sq.Masks[p + 1];
                    if (chat && (next & (byte)TokenMask.Assistant) == 0) continue;
                    bool template = (next & (byte)TokenMask.Template) != 0;
                    int sub = !template && firstSeen < 10 ? 1 : 2;
                    if (sub == 1) firstSeen++;
                    scored.Add((slotBase + p, sub));
                }
                slotBase += sq.Ids.Length;
            }
            if (scored.Count == 0) { done += group.Count; continue; }
            double[][] LogProbs(Tensor h0)
            {
                var h = h0.Clone();
                ftLm.RunLayers(L + 1, ftLm.Layers - 1, h, tb);
                var logits = ftLm.FinalNormAndLogits(h, tb).Data;
                int V = ftLm.Config.Vocab;
                var r = new double[scored.Count][];
                Parallel.For(0, scored.Count, q =>
                {
                    var (B, Pos) = slots[scored[q].Slot];
                    r[q] = LogSoftmax(logits.AsSpan((B * T + Pos) * V, V));
                });
                return r;
            }
            var reference = LogProbs(hf);
            var sum = new float[D];
            for (int k = 0; k < patches.Count; k++)
            {
                var pt = patches[k];
                var h = (pt.FromFt ? hf : hb).Clone();
                for (int s = 0; s < slots.Count; s++)
                {
                    var dst = h.Data.AsSpan((slots[s].B * T + slots[s].Pos) * D, D);
                    if (pt.Offset is null) Array.Clear(sum); else pt.Offset.CopyTo(sum, 0);
                    for (int e = codes.RowStart[s]; e < codes.RowStart[s + 1] && pt.Rows is not null; e++)
                    {
                        int j = codes.Index[e];
                        if (pt.Members[j] && codes.Value[e] != 0) System.Numerics.Tensors.TensorPrimitives.MultiplyAdd(pt.Rows.AsSpan(j * D, D), codes.Value[e], sum, sum);
                    }
                    System.Numerics.Tensors.TensorPrimitives.MultiplyAdd(sum, pt.Sign, dst, dst);
                }
                var lp = LogProbs(h);
                for (int q = 0; q < scored.Count; q++)
                {
                    double kl = 0;
                    var pr = reference[q]; var pp = lp[q];
                    for (int v = 0; v < pr.Length; v++) kl += Math.Exp(pr[v]) * (pr[v] - pp[v]);
                    sums[k, 0] += kl; sums[k, scored[q].Sub] += kl;
                }
            }
            foreach (var (_, sub) in scored) { counts[0]++; counts[sub]++; }
            done += group.Count;
            progress?.Report((done, seqs.Count));
        }
        if (counts[0] == 0) throw new InvalidOperationException($"no scored positions in the {seqs.Count} sampled sequences" + (chat ? " (no assistant tokens)" : ""));

        double Mean(int k, int sub) => counts[sub] > 0 ? sums[k, sub] / counts[sub] : double.NaN;
        double empty = Mean(0, 0), all = Mean(1, 0);
        var entries = new List<CausalEntry>();
        for (int k = 0; k < patches.Count; k++)
        {
            double kl = Mean(k, 0);
            entries.Add(new CausalEntry
            {
                Set = patches[k].Set, Patch = patches[k].Kind, Size = patches[k].Size, Seed = patches[k].Seed,
                KlAll = kl, KlFirst10 = Mean(k, 1), KlRest = Mean(k, 2),
                GapClosed = 1 - kl / empty, GapClosedNormalised = (empty - kl) / (empty - all),
            });
        }
        var rand = entries.Where(e => e.Set == "random").ToList();
        if (rand.Count > 0)
        {
            double Avg(Func<CausalEntry, double> f) => rand.Average(f);
            double Std(Func<CausalEntry, double> f) { double m = Avg(f); return Math.Sqrt(rand.Sum(e => (f(e) - m) * (f(e) - m)) / Math.Max(1, rand.Count - 1)); }
            entries.Add(new CausalEntry
            {
                Set = "random", Patch = setKind, Size = randomSize, Aggregate = true,
                KlAll = Avg(e => e.KlAll), KlFirst10 = Avg(e => e.KlFirst10), KlRest = Avg(e => e.KlRest),
                GapClosed = Avg(e => e.GapClosed), GapClosedNormalised = Avg(e => e.GapClosedNormalised),
                KlAllStd = Std(e => e.KlAll), GapClosedStd = Std(e => e.GapClosed),
            });
        }
        return new CausalResult(entries, seqs.Count, counts[0], chat);
    }

    static bool[] Members(int[] latents, int F)
    {
        var m = new bool[F];
        foreach (int j in latents)
        {
            if ((uint)j >= (uint)F) throw new ArgumentException($"latent {j} is outside the dictionary's {F} latents");
            m[j] = true;
        }
        return m;
    }

    /// <summary>Decoder rows of model <paramref name="m"/> in raw space (÷ g_m; no mean shift: they are directions). [F, D]</summary>
    public static float[] RawRows(SparseDictionary d, int m)
    {
        int F = d.DictSize, D = d.DModel;
        float g = d.Normalizer?.Scale[m] ?? 1f;
        var r = new float[F * D];
        for (int i = 0; i < F * D; i++) r[i] = d.WDec[m * F * D + i] / (g + 1e-8f);
        return r;
    }

    /// <summary>Decoder bias in raw space: the reconstruction at f = 0, b_dec/g + μ. [D]</summary>
    public static float[] RawBias(SparseDictionary d)
    {
        if (d.Models != 1) throw new ArgumentException("the raw bias is defined here for single-input dictionaries (SAEs, diff-SAEs)");
        var r = (float[])d.BDec.Clone();
        d.Normalizer?.Denormalize(r, 1, d.DModel);
        return r;
    }

    /// <summary>d_j^ft − d_j^base in raw space, [F, D].</summary>
    public static float[] RawDifferenceRows(SparseDictionary d)
    {
        var ft = RawRows(d, 1); var bs = RawRows(d, 0);
        for (int i = 0; i < ft.Length; i++) ft[i] -= bs[i];
        return ft;
    }

    /// <summary>A stored sequence re-run: token ids and role masks.</summary>
    public sealed record Sequence(int[] Ids, byte[] Masks);

    /// <summary>A seeded sample of stored sequences with their token ids and role masks; a dropped leading BOS is put back.</summary>
    public static List<Sequence> SampleSequences(ActivationStore store, CausalOptions o, int? bos)
    {
        var ranges = store.SequenceRanges();
        var candidates = new List<int>();
        for (int s = 0; s + 1 < ranges.Length; s++)
        {
            if (ranges[s + 1] - ranges[s] < 2) continue;
            int p0 = store.Position(ranges[s]);
            if (p0 == 0 || (p0 == 1 && bos is not null)) candidates.Add(s);
        }
        var rng = new Random(o.Seed);
        var chosen = candidates.OrderBy(_ => rng.Next()).Take(o.Sequences).OrderBy(s => s).ToList();
        var result = new List<Sequence>();
        foreach (int s in chosen)
        {
            var ids = new List<int>(); var masks = new List<byte>();
            if (store.Position(ranges[s]) == 1) { ids.Add(bos!.Value); masks.Add((byte)TokenMask.Bos); }
            for (long r = ranges[s]; r < ranges[s + 1]; r++)
            {
                if (store.Position(r) != ids.Count) break;   // a gap: the rest is unknown
                ids.Add(store.TokenId(r)); masks.Add(store.Mask(r));
            }
            if (ids.Count >= 2) result.Add(new Sequence(ids.ToArray(), masks.ToArray()));
        }
        return result;
    }

    static double[] LogSoftmax(ReadOnlySpan<float> z)
    {
        double max = double.NegativeInfinity;
        foreach (float v in z) max = Math.Max(max, v);
        double sum = 0;
        foreach (float v in z) sum += Math.Exp(v - max);
        double lse = max + Math.Log(sum);
        var r = new double[z.Length];
        for (int i = 0; i < z.Length; i++) r[i] = z[i] - lse;
        return r;
    }

    /// <summary>The sets of methods.md §5.5/§6.2 from the latent table: fine-tune-only latents (tag ft_only) split into halves
    /// by rank_sum (low = most specific first) and by delta_norm (high first), the threshold set dec_norm_diff ≤
    /// <paramref name="threshold"/>, the activation-ratio sets |beta_activation_ratio| ≤ 0.6 and ≤ 0.3 (and ≤ 0.1 for
    /// a diff-SAE), and any user list.</summary>
    public static List<LatentSet> SetsFromTable(FeatureTable t, double threshold = 0.3, int[]? user = null, bool diffSae = false)
    {
        var sets = new List<LatentSet>();
        var tag = t.Has("tag") ? t.Texts("tag") : null;
        var ftOnly = Enumerable.Range(0, t.Rows).Where(j => tag is not null && tag[j] == "ft_only").ToArray();
        if (t.Has("rank_sum"))
        {
            var rs = t.Numbers("rank_sum");
            var ranked = ftOnly.Where(j => !double.IsNaN(rs[j])).OrderBy(j => rs[j]).ThenBy(j => j).ToArray();
            if (ranked.Length >= 2)
            {
                sets.Add(new LatentSet("rank_sum_top_half", ranked.Take(ranked.Length / 2).ToArray()));
                sets.Add(new LatentSet("rank_sum_bottom_half", ranked.Skip(ranked.Length - ranked.Length / 2).ToArray()));
            }
        }
        if (t.Has("delta_norm") && ftOnly.Length >= 2)
        {
            var dn = t.Numbers("delta_norm");
            var ranked = ftOnly.OrderByDescending(j => dn[j]).ThenBy(j => j).ToArray();
            sets.Add(new LatentSet("delta_norm_top_half", ranked.Take(ranked.Length / 2).ToArray()));
            sets.Add(new LatentSet("delta_norm_bottom_half", ranked.Skip(ranked.Length - ranked.Length / 2).ToArray()));
        }
        if (t.Has("dec_norm_diff"))
        {
            var dnd = t.Numbers("dec_norm_diff");
            var th = Enumerable.Range(0, t.Rows).Where(j => dnd[j] <= threshold).ToArray();
            if (th.Length > 0) sets.Add(new LatentSet($"dec_norm_diff_le_{threshold.ToString(System.Globalization.CultureInfo.InvariantCulture)}", th));
        }
        if (t.Has("beta_activation_ratio"))
        {
            var nu = t.Numbers("beta_activation_ratio");
            foreach (double cut in diffSae ? new[] { 0.6, 0.3, 0.1 } : [0.6, 0.3])
            {
                var ids = Enumerable.Range(0, t.Rows).Where(j => Math.Abs(nu[j]) <= cut).ToArray();   // NaN (not evaluated) fails the test
                if (ids.Length > 0) sets.Add(new LatentSet($"abs_beta_activation_ratio_le_{cut.ToString(System.Globalization.CultureInfo.InvariantCulture)}", ids));
            }
        }
        if (user is { Length: > 0 }) sets.Add(new LatentSet("user", user));
        return sets;
    }
}

using Finetrace.Activations;
using Finetrace.Models;
using Finetrace.Tensors;

namespace Finetrace.Dictionaries;

/// <summary>Why a model the spliced evaluation needs could not be loaded.</summary>
public enum MissingModelReason
{
    /// <summary>The store records no model folder (synthetic activations).</summary>
    NoModelRecorded,
    ModelFolderNotFound,
    AdapterFolderNotFound,
}

/// <summary>A model (or its adapter) the spliced evaluation needs is not available. <see cref="Overridden"/>: the folder
/// was given by the caller rather than read from the store's manifest.</summary>
public sealed class SpliceModelMissingException(int model, string name, string? folder, MissingModelReason reason, bool overridden, string message)
    : DirectoryNotFoundException(message)
{
    public int Model { get; } = model;
    public string ModelName { get; } = name;
    public string? Folder { get; } = folder;
    public MissingModelReason Reason { get; } = reason;
    public bool Overridden { get; } = overridden;
}

/// <summary>Settings of a spliced-model evaluation.</summary>
public sealed record SpliceOptions
{
    /// <summary>Layer number whose <see cref="Site"/> is replaced.</summary>
    public required int Layer { get; init; }
    /// <summary>The site the store holds and the dictionary reads (default blocks.{L}.hook_resid_post). A residual site
    /// replaces the residual stream there; attn_out / mlp_out replace what that branch of block L adds to the residual,
    /// mlp_post the MLP hidden activation its down projection reads (the rest of the block and the later blocks run on).</summary>
    public HookSite Site { get; init; } = HookSite.ResidPost;
    /// <summary>Stored tokens that are spliced and scored (the eval filter).</summary>
    public MaskFilter Filter { get; init; } = MaskFilter.All;
    /// <summary>Stored sequences to sample (fewer when the store has fewer usable ones).</summary>
    public int Sequences { get; init; } = 64;
    public int Seed { get; init; }
    /// <summary>Only sequences starting at or after this store row (held-out rows).</summary>
    public long FirstRow { get; init; }
    /// <summary>Padded tokens per forward batch.</summary>
    public int BatchTokens { get; init; } = 2048;
    /// <summary>A sequence whose recomputed residual at the layer differs from the stored one by more than this
    /// relative L2 error (any model) is left out: its tokens or model do not match the store.</summary>
    public double MaxStoreMismatch { get; init; } = 0.05;
}

/// <summary>CE and KL of one spliced model, means over the scored positions (next-token prediction).</summary>
public sealed record SpliceModelReport(int Model, string Name, long Positions, double CeClean, double CeSpliced, double CeZero, double KlSpliced, double KlZero)
{
    /// <summary>(CE_zero − CE_spliced) / (CE_zero − CE_clean) (methods.md §14 CE loss score).</summary>
    public double LossRecovered => (CeZero - CeSpliced) / (CeZero - CeClean);
    /// <summary>(KL_zero − KL_spliced) / KL_zero, KL(p_clean ‖ p_new).</summary>
    public double KlScore => (KlZero - KlSpliced) / KlZero;
}

/// <summary>What a spliced evaluation ran on and found.</summary>
public sealed record SpliceReport(int Sequences, int Unusable, int Mismatched, double MaxMismatch, IReadOnlyList<SpliceModelReport> Models)
{
    /// <summary>Why sequences were unusable (first reason seen), or null.</summary>
    public string? UnusableReason { get; init; }
}

/// <summary>
/// Which models get a reconstruction and how it is made from the clean residuals of all store models.
/// <see cref="Reconstruct"/> maps xNMD [n, storeModels, D] (raw) to x̂ [n, Spliced.Length, D] (raw).
/// <see cref="Needed"/> are the models whose residuals the reconstruction reads.
/// </summary>
public sealed record SpliceReconstruction(int[] Spliced, int[] Needed, Func<float[], int, float[]> Reconstruct)
{
    /// <summary>The reconstruction a dictionary gives for what it reads: paired (crosscoder: model m gets its own
    /// decoder's output from the joint code), one model I (SAE on model I), a difference A − B (diff-SAE:
    /// x̂_A = x_B + SAE(x_A − x_B)). Throws <see cref="DictionaryInputException"/> when the dictionary or store does not fit.</summary>
    public static SpliceReconstruction ForDictionary(SparseDictionary d, DictionaryInput input, int storeModels)
    {
        int D = d.DModel;
        input.CheckDictionary(d.Models, storeModels);
        input.Pruning?.Check(d);
        switch (input.Kind)
        {
            case InputKind.Paired:
                var all = Enumerable.Range(0, storeModels).ToArray();
                return new(all, all, (x, n) => Evaluation.ReconstructRaw(d, x.AsSpan(0, n * storeModels * D), input.Pruning).XHat);
            case InputKind.SingleModel:
                int mi = input.Model;
                return new([mi], [mi], (x, n) =>
                {
                    var xi = new float[n * D];
                    for (int t = 0; t < n; t++) x.AsSpan((t * storeModels + mi) * D, D).CopyTo(xi.AsSpan(t * D, D));
                    return Evaluation.ReconstructRaw(d, xi, input.Pruning).XHat;
                });
            default:
                int a = input.Minuend, b = input.Subtrahend;
                return new([a], [a, b], (x, n) =>
                {
                    var diff = new float[n * D];
                    for (int t = 0; t < n; t++)
                        for (int i = 0; i < D; i++) diff[t * D + i] = x[(t * storeModels + a) * D + i] - x[(t * storeModels + b) * D + i];
                    var xh = Evaluation.ReconstructRaw(d, diff, input.Pruning).XHat;
                    for (int t = 0; t < n; t++)
                        for (int i = 0; i < D; i++) xh[t * D + i] += x[(t * storeModels + b) * D + i];
                    return xh;
                });
        }
    }
}

/// <summary>
/// Spliced-model evaluation (methods.md §14 "CE loss score" / "KL score"): re-runs each model on stored token ids and, at
/// the stored (filter-passing) positions, replaces the site (blocks.{L}.hook_resid_post by default; any
/// <see cref="HookSite"/>, e.g. blocks.{L}.hook_mlp_out = the MLP's contribution to the residual) by the dictionary's
/// reconstruction, or by zeros (zero ablation). Positions the store did not keep (dropped BOS, outliers) keep their clean residual and are not
/// scored. Scored: every spliced position whose next token is known; CE of that token and KL(p_clean ‖ p_new) over the
/// vocabulary, means over positions, per model.
/// </summary>
public static class SplicedEvaluation
{
    /// <summary>Loads the models the reconstruction needs from the store's manifest, with overrides for model 0
    /// (<paramref name="baseDir"/>) and model 1 (<paramref name="ftDir"/>, <paramref name="adapterDir"/>).
    /// An adapter the manifest records is kept unless <paramref name="adapterDir"/> replaces it (model 1). Missing folders
    /// throw <see cref="SpliceModelMissingException"/> naming the model and folder.</summary>
    public static CausalLM?[] LoadModels(ActivationStore store, IEnumerable<int> needed, string? baseDir = null, string? ftDir = null, string? adapterDir = null)
    {
        var models = new CausalLM?[store.Models];
        try
        {
            foreach (int m in needed.Distinct())
            {
                var sm = store.Manifest.Settings.Models[m];
                string? over = m switch { 0 => baseDir, 1 => ftDir, _ => null };
                string folder = over ?? sm.Path;
                string? adapter = m == 1 && adapterDir is not null ? adapterDir : sm.Adapter;   // the recorded adapter stays with a moved folder
                string what = $"model {m} ({(string.IsNullOrEmpty(sm.Name) ? "unnamed" : sm.Name)})";
                if (over is null && (sm.Path is "" or "synthetic"))
                    throw new SpliceModelMissingException(m, sm.Name, null, MissingModelReason.NoModelRecorded, false,
                        $"{what}: the store {store.Directory} records no model folder (synthetic activations); spliced evaluation needs the model");
                if (!Directory.Exists(folder))
                    throw new SpliceModelMissingException(m, sm.Name, folder, MissingModelReason.ModelFolderNotFound, over is not null,
                        $"{what}: model folder {folder} not found{(over is null ? " (the folder the store's manifest records)" : "")}");
                if (adapter is not null && !Directory.Exists(adapter))
                    throw new SpliceModelMissingException(m, sm.Name, adapter, MissingModelReason.AdapterFolderNotFound, m == 1 && adapterDir is not null,
                        $"{what}: adapter folder {adapter} not found");
                models[m] = CausalLM.Load(folder, adapter);
                if (models[m]!.Hidden != store.DModel)
                    throw new InvalidDataException($"{what}: {folder} has hidden size {models[m]!.Hidden} but the store holds d_model {store.DModel}; wrong model folder?");
            }
            return models;
        }
        catch
        {
            foreach (var x in models) x?.Dispose();
            throw;
        }
    }

    /// <summary>One stored sequence as a model input: the known token prefix and its stored rows.</summary>
    sealed record Plan(int Sequence, int[] Ids, long[] Rows, int[] Positions, bool[] Splice);

    /// <summary>Runs the evaluation. <paramref name="models"/> is indexed by store model; entries that
    /// <paramref name="recon"/> needs must be loaded.</summary>
    public static SpliceReport Run(ActivationStore store, IReadOnlyList<CausalLM?> models, SpliceReconstruction recon, SpliceOptions o, Action<int, int>? progress = null)
    {
        int layer = o.Layer, D = store.DModel, M = store.Models;
        store.LayerIndex(layer);
        if (o.Sequences < 1) throw new ArgumentOutOfRangeException(nameof(SpliceOptions.Sequences), o.Sequences, "SpliceOptions.Sequences must be at least 1");
        foreach (int m in recon.Needed)
        {
            var lm = models[m] ?? throw new ArgumentException($"model {m} is needed for the spliced evaluation but was not loaded");
            if (layer >= lm.Layers) throw new ArgumentException($"layer {layer}: {lm.Folder} has layers 0..{lm.Layers - 1}");
            HookSites.Check(o.Site, lm.Config);
            if (HookSites.Width(o.Site, lm.Config) != D)
                throw new ArgumentException($"{HookSites.Name(o.Site, layer)} of {lm.Folder} has width {HookSites.Width(o.Site, lm.Config)}, the store {store.Directory} holds width {D}: not the store's site or model");
        }
        var (plans, unusable, reason) = Sample(store, o);
        if (plans.Count == 0)
            throw new InvalidOperationException($"{store.Directory}: no stored sequence (from row {o.FirstRow}) can be re-run for the spliced evaluation" +
                (reason is null ? "" : $": {reason}"));

        var acc = recon.Spliced.Select(_ => new double[5]).ToArray();   // CE clean, spliced, zero; KL spliced, zero
        var count = new long[recon.Spliced.Length];
        int mismatched = 0, done = 0;
        double maxMismatch = 0;
        // three logit tensors [B, T, V] are alive at once: keep each under about 512 MiB for large vocabularies
        int vocab = recon.Spliced.Max(m => models[m]!.Config.Vocab);
        long budget = Math.Clamp((1L << 27) / vocab, 1, o.BatchTokens);
        int start = 0;
        while (start < plans.Count)
        {
            int end = start + 1, longest = plans[start].Ids.Length;
            while (end < plans.Count && (long)Math.Max(longest, plans[end].Ids.Length) * (end - start + 1) <= budget) { longest = Math.Max(longest, plans[end].Ids.Length); end++; }
            var group = plans.GetRange(start, end - start);
            var (mm, worst) = RunBatch(store, models, recon, group, layer, o.Site, D, M, o.MaxStoreMismatch, acc, count);
            mismatched += mm; maxMismatch = Math.Max(maxMismatch, worst);
            done += group.Count;
            progress?.Invoke(done, plans.Count);
            start = end;
        }
        if (mismatched == plans.Count)
            throw new InvalidDataException($"the models do not reproduce the store's activations at layer {layer} (relative error up to {maxMismatch:G3} on all {plans.Count} sampled sequences); " +
                $"check that the model and adapter folders are the ones {store.Directory} was harvested with");
        var reports = new List<SpliceModelReport>();
        for (int s = 0; s < recon.Spliced.Length; s++)
        {
            int m = recon.Spliced[s];
            double n = count[s];
            var a = acc[s];
            reports.Add(new SpliceModelReport(m, store.Manifest.Settings.Models[m].Name, count[s], a[0] / n, a[1] / n, a[2] / n, a[3] / n, a[4] / n));
        }
        return new SpliceReport(plans.Count - mismatched, unusable, mismatched, maxMismatch, reports) { UnusableReason = reason };
    }

    /// <summary>Deterministic sample of stored sequences as model inputs. The store keeps token ids only of the tokens it
    /// kept, so a sequence with dropped tokens needs their ids: a single dropped leading BOS is put back from the
    /// tokenizer; other gaps (skip-first, outliers) are filled by re-reading and re-tokenizing the store's data sources
    /// (the i-th sample of the harvest's sample stream is stored sequence i) when the files are still there, checked
    /// against every stored token id. Without them a sequence is re-run up to its first gap, or left out when the gap
    /// is at its start.</summary>
    static (List<Plan> Plans, int Unusable, string? Reason) Sample(ActivationStore store, SpliceOptions o)
    {
        var opts = store.Settings.Options;
        bool dropBos = opts.TryGetValue("drop_bos", out var db) && db == "true";
        int? bosId = dropBos ? BosId(store) : null;   // only a dropped leading BOS is put back (loading a tokenizer is not free)
        var ranges = store.SequenceRanges();
        var candidates = new List<int>();
        for (int s = 0; s + 1 < ranges.Length; s++)
            if (ranges[s] >= o.FirstRow && ranges[s + 1] - ranges[s] >= 2) candidates.Add(s);
        // seeded partial Fisher–Yates: the first N of a random order
        var rng = new Random(o.Seed);
        int take = Math.Min(o.Sequences, candidates.Count);
        for (int i = 0; i < take; i++)
        {
            int j = rng.Next(i, candidates.Count);
            (candidates[i], candidates[j]) = (candidates[j], candidates[i]);
        }
        var chosen = candidates.GetRange(0, take);
        chosen.Sort();

        var plans = new List<Plan>();
        var gapped = new List<int>();
        int unusable = 0;
        string? reason = null;
        foreach (int s in chosen)
        {
            var ids = StoredIds(store, ranges[s], (int)(ranges[s + 1] - ranges[s]), dropBos, bosId, out bool complete);
            if (complete) AddPlan(s, ids!);
            else gapped.Add(s);
        }
        if (gapped.Count > 0)
        {
            var full = Retokenize(store, gapped, out string? why);
            foreach (int s in gapped)
            {
                int[]? ids = full?.GetValueOrDefault(s);
                if (ids is not null && !MatchesStore(store, ranges[s], (int)(ranges[s + 1] - ranges[s]), ids))
                {
                    ids = null;
                    why = $"re-tokenizing the store's data sources does not reproduce the stored token ids of sequence {s} (the data files changed?)";
                }
                // fall back to the stored prefix up to the first gap
                ids ??= StoredIds(store, ranges[s], (int)(ranges[s + 1] - ranges[s]), dropBos, bosId, out _);
                if (ids is null) { unusable++; reason ??= $"sequence {s} starts at position {store.Position(ranges[s])} and the dropped tokens' ids are unknown: {why}"; continue; }
                AddPlan(s, ids);
            }
        }
        // similar lengths together: less padding
        plans.Sort((a, b) => a.Ids.Length != b.Ids.Length ? a.Ids.Length.CompareTo(b.Ids.Length) : a.Sequence.CompareTo(b.Sequence));
        return (plans, unusable, reason);

        void AddPlan(int s, int[] ids)
        {
            var p = MakePlan(store, s, ranges[s], (int)(ranges[s + 1] - ranges[s]), ids, o.Filter);
            if (p is null) { unusable++; reason ??= $"sequence {s} has no stored token passing the filter with a known next token"; }
            else plans.Add(p);
        }
    }

    /// <summary>The token ids of a stored sequence from its position 0 up to its first gap (a dropped leading BOS put
    /// back); null when the start is missing. <paramref name="complete"/>: no stored token was left out.</summary>
    static int[]? StoredIds(ActivationStore store, long row0, int len, bool dropBos, int? bosId, out bool complete)
    {
        complete = false;
        var ids = new List<int>();
        int first = store.Position(row0);
        if (first == 1 && dropBos && bosId is int b) ids.Add(b);
        else if (first != 0) return null;
        for (int i = 0; i < len; i++)
        {
            if (store.Position(row0 + i) != ids.Count) return ids.ToArray();   // a gap: the next id is unknown
            ids.Add(store.TokenId(row0 + i));
        }
        complete = true;
        return ids.ToArray();
    }

    static bool MatchesStore(ActivationStore store, long row0, int len, int[] ids)
    {
        for (int i = 0; i < len; i++)
        {
            int p = store.Position(row0 + i);
            if (p >= ids.Length || ids[p] != store.TokenId(row0 + i)) return false;
        }
        return true;
    }

    /// <summary>Token ids of the given sequences from the harvest's sample stream (null when the sources or tokenizer
    /// are not available). Reads the stream up to the last wanted sequence.</summary>
    static Dictionary<int, int[]>? Retokenize(ActivationStore store, List<int> sequences, out string? why)
    {
        var st = store.Settings;
        why = null;
        try
        {
            if (!st.Options.TryGetValue("tokenizer", out var tokDir) || !File.Exists(Path.Combine(tokDir, "tokenizer.json")))
            { why = "the tokenizer the store records is not available"; return null; }
            if (!st.Options.TryGetValue("context_length", out var cl) || !int.TryParse(cl, out int context)) { why = "the store records no context length"; return null; }
            var specs = new List<Text.Datasets.DataSourceSpec>();
            foreach (var src in st.Sources)
            {
                if (!File.Exists(src.Path) && !Directory.Exists(src.Path)) { why = $"data source {src.Path} is not available"; return null; }
                if (!Enum.TryParse<Text.Datasets.DataKind>(src.Kind, ignoreCase: true, out var kind)) { why = $"data source kind '{src.Kind}' cannot be re-read"; return null; }
                specs.Add(new Text.Datasets.DataSourceSpec
                {
                    Kind = kind, Path = src.Path, Name = src.Name, Weight = src.Proportion,
                    Field = src.Options.GetValueOrDefault("field"),
                    MaxSamples = src.Options.TryGetValue("max_samples", out var ms) ? long.Parse(ms, System.Globalization.CultureInfo.InvariantCulture) : long.MaxValue,
                    MaxTokens = src.Options.TryGetValue("max_tokens", out var mt) ? long.Parse(mt, System.Globalization.CultureInfo.InvariantCulture) : long.MaxValue,
                    SplitBlankLines = src.Options.GetValueOrDefault("split") != "file",
                });
            }
            var tok = Text.Tokenization.Tokenizer.FromFolder(tokDir);
            Text.Datasets.ModelSampleEncoder enc;
            if (st.Options.TryGetValue("chat_template_from", out var tdir))
                enc = new(tok, new Text.Chat.ChatFormatter(tok, Text.Chat.ChatTemplate.FromFolder(tdir)));
            else enc = new(tok, null);
            var want = new HashSet<int>(sequences);
            int last = sequences.Max();
            var result = new Dictionary<int, int[]>();
            int i = 0;
            foreach (var sample in new Text.Datasets.SampleStream(specs, enc, context).Read())
            {
                if (want.Contains(i)) result[i] = sample.Ids;
                if (++i > last) break;
            }
            return result;
        }
        catch (Exception e) when (e is IOException or InvalidDataException or InvalidOperationException or ArgumentException or FormatException or System.Text.Json.JsonException)
        {
            why = $"re-reading the data sources failed: {e.Message}";
            return null;
        }
    }

    static int? BosId(ActivationStore store)
    {
        if (store.Settings.Options.TryGetValue("tokenizer", out var dir) && File.Exists(Path.Combine(dir, "tokenizer.json")))
        {
            try { if (Text.Tokenization.Tokenizer.FromFolder(dir).BosId is int b) return b; }
            catch (Exception e) when (e is IOException or InvalidDataException or System.Text.Json.JsonException) { }
        }
        foreach (var m in store.Settings.Models)
            if (Directory.Exists(m.Path) && File.Exists(Path.Combine(m.Path, "config.json")))
                try { if (ModelConfig.Load(m.Path).BosTokenId is int b) return b; }
                catch (Exception e) when (e is IOException or InvalidDataException or System.Text.Json.JsonException) { }
        return null;
    }

    /// <summary>Stored rows of a sequence inside <paramref name="ids"/>; null when none is scored.</summary>
    static Plan? MakePlan(ActivationStore store, int seq, long row0, int len, int[] ids, MaskFilter filter)
    {
        var rows = new List<long>(); var pos = new List<int>(); var splice = new List<bool>();
        bool any = false;
        for (int i = 0; i < len; i++)
        {
            long r = row0 + i;
            int p = store.Position(r);
            if (p >= ids.Length) break;
            rows.Add(r); pos.Add(p);
            bool keep = filter.Keeps(store.Mask(r));
            splice.Add(keep);
            // scored = spliced positions whose next token is in the input
            any |= keep && p + 1 < ids.Length;
        }
        return any ? new Plan(seq, ids, rows.ToArray(), pos.ToArray(), splice.ToArray()) : null;
    }

    static (int Mismatched, double Worst) RunBatch(ActivationStore store, IReadOnlyList<CausalLM?> models, SpliceReconstruction recon, List<Plan> group,
        int layer, HookSite site, int D, int M, double maxMismatch, double[][] acc, long[] count)
    {
        var tb = TokenBatch.RightPadded(group.Select(p => p.Ids).ToList());
        int T = tb.Seq;
        // spliced slots: (batch row = sequence in group, position, store row)
        var slots = new List<(int B, int Pos, long Row)>();
        for (int g = 0; g < group.Count; g++)
            for (int i = 0; i < group[g].Rows.Length; i++)
                if (group[g].Splice[i]) slots.Add((g, group[g].Positions[i], group[g].Rows[i]));
        int n = slots.Count;

        // clean activations at the site, and the store check per sequence. The residual after block L is reached by
        // running blocks 0..L once and continuing from a copy; any other site is read and edited by a hook in full forwards.
        bool split = site == HookSite.ResidPost;
        string siteName = HookSites.Name(site, layer);
        var hL = new Tensor?[M];
        var cleanLogits = new float[]?[M];
        var xNMD = new float[n * M * D];
        var errSq = new double[group.Count]; var refSq = new double[group.Count];
        var stored = new float[D];
        foreach (int m in recon.Needed)
        {
            var lm = models[m]!;
            Tensor h;
            if (split)
            {
                h = lm.Embed(tb);
                lm.RunLayers(0, layer, h, tb);
            }
            else
            {
                var got = new Dictionary<string, Tensor>();
                cleanLogits[m] = lm.Forward(tb, new HookSet().Capture(siteName, got)).Logits!.Data;
                h = got[siteName];
            }
            hL[m] = h;
            for (int s = 0; s < n; s++)
            {
                var (g, p, row) = slots[s];
                var src = h.Data.AsSpan((g * T + p) * D, D);
                src.CopyTo(xNMD.AsSpan((s * M + m) * D, D));
                store.ReadRows(m, layer, row, 1, stored);
                for (int i = 0; i < D; i++) { double e = src[i] - stored[i]; errSq[g] += e * e; refSq[g] += (double)stored[i] * stored[i]; }
            }
        }
        var bad = new bool[group.Count];
        int mismatched = 0; double worst = 0;
        for (int g = 0; g < group.Count; g++)
        {
            double rel = Math.Sqrt(errSq[g] / Math.Max(refSq[g], 1e-30));
            worst = Math.Max(worst, rel);
            if (rel > maxMismatch) { bad[g] = true; mismatched++; }
        }
        var xHat = recon.Reconstruct(xNMD, n);   // [n, S, D]
        int S = recon.Spliced.Length;

        // scored positions: spliced slots with a known next token, in sequences that match the store
        var scored = new List<(int Slot, int Target)>();
        for (int s = 0; s < n; s++)
        {
            var (g, p, _) = slots[s];
            if (!bad[g] && p + 1 < group[g].Ids.Length) scored.Add((s, group[g].Ids[p + 1]));
        }
        for (int k = 0; k < S; k++)
        {
            int m = recon.Spliced[k];
            var lm = models[m]!;
            int V = lm.Config.Vocab;
            float[] Logits(Action<Tensor>? edit)
            {
                if (!split)
                {
                    if (edit is null) return cleanLogits[m]!;
                    return lm.Forward(tb, new HookSet().On(siteName, (a, _) => edit(a))).Logits!.Data;
                }
                var h = hL[m]!.Clone();
                edit?.Invoke(h);
                lm.RunLayers(layer + 1, lm.Layers - 1, h, tb);
                return lm.FinalNormAndLogits(h, tb).Data;
            }
            var clean = Logits(null);
            var spliced = Logits(h => { for (int s = 0; s < n; s++) xHat.AsSpan((s * S + k) * D, D).CopyTo(h.Data.AsSpan((slots[s].B * T + slots[s].Pos) * D, D)); });
            var zero = Logits(h => { for (int s = 0; s < n; s++) h.Data.AsSpan((slots[s].B * T + slots[s].Pos) * D, D).Clear(); });
            // per position in parallel (no GEMM inside), summed in order afterwards so the result does not depend on threads
            var perPos = new double[scored.Count * 5];
            Parallel.For(0, scored.Count, () => (new double[V], new double[V], new double[V]), (q, _, buf) =>
            {
                var (lc, ls, lz) = buf;
                var (s, target) = scored[q];
                long o = ((long)slots[s].B * T + slots[s].Pos) * V;
                LogSoftmax(clean.AsSpan((int)o, V), lc); LogSoftmax(spliced.AsSpan((int)o, V), ls); LogSoftmax(zero.AsSpan((int)o, V), lz);
                double kls = 0, klz = 0;
                for (int v = 0; v < V; v++) { double pc = Math.Exp(lc[v]); kls += pc * (lc[v] - ls[v]); klz += pc * (lc[v] - lz[v]); }
                perPos[q * 5] = -lc[target]; perPos[q * 5 + 1] = -ls[target]; perPos[q * 5 + 2] = -lz[target];
                perPos[q * 5 + 3] = kls; perPos[q * 5 + 4] = klz;
                return buf;
            }, _ => { });
            for (int q = 0; q < scored.Count; q++)
                for (int c = 0; c < 5; c++) acc[k][c] += perPos[q * 5 + c];
            count[k] += scored.Count;
        }
        return (mismatched, worst);
    }

    /// <summary>log softmax in double of one logit row.</summary>
    static void LogSoftmax(ReadOnlySpan<float> logitsV, double[] outV)
    {
        double max = double.NegativeInfinity;
        foreach (float z in logitsV) if (z > max) max = z;
        double sum = 0;
        for (int v = 0; v < logitsV.Length; v++) sum += Math.Exp(logitsV[v] - max);
        double lse = max + Math.Log(sum);
        for (int v = 0; v < logitsV.Length; v++) outV[v] = logitsV[v] - lse;
    }
}

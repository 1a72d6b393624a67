using System.Security.Cryptography;
using System.Runtime.InteropServices;
using Finetrace.Activations;
using Finetrace.Dictionaries;
using Microsoft.Data.Sqlite;

namespace Finetrace.Diffing.Examples;

public sealed record ExampleOptions
{
    /// <summary>Max-activating sequences kept per latent (scored by the sequence's max reported activation f·c).</summary>
    public int TopK { get; init; } = 20;
    /// <summary>Sequences reservoir-sampled per quantile band.</summary>
    public int PerBand { get; init; } = 10;
    /// <summary>Band edges relative to the latent's max (toolkit: 0.25, 0.5, 0.75, 0.95, 1.0).</summary>
    public double[] BandEdges { get; init; } = [0.25, 0.5, 0.75, 0.95, 1.0];
    /// <summary>Positions to stream (whole sequences, store order); 0 = the whole store.</summary>
    public long MaxPositions { get; init; }
    public ulong Seed { get; init; }
    /// <summary>Rows per encode batch (whole sequences are kept together); 0 picks about 128 MiB of dense codes.</summary>
    public int BatchSize { get; init; }
}

/// <summary>One kept example: a stored sequence and the latent's nonzero values on it.</summary>
public sealed record Example(int Latent, int Band, long Sequence, float Score, int[] Positions, float[] Values);

/// <summary>What the examples pass collected. <paramref name="MaxAct"/> [F]: the max each latent's bands and histogram are
/// relative to. <paramref name="HistogramCounts"/> [F, <see cref="ExampleCollector.HistogramBins"/>]: the latent's nonzero
/// reported activations in equal bins over [0, MaxAct] (values above MaxAct, possible only with a known max from other
/// positions, count in the last bin). <paramref name="ModelScale"/> [F, M] (crosscoders; null otherwise): ‖d_j^m‖ in raw
/// space ÷ c_j, so a reported value a = f·c times it is f·‖d_j^m‖, the norm of latent j's contribution to model m's
/// reconstruction. <paramref name="ModelNames"/>: the store names of those M models.</summary>
public sealed record ExampleResult(long Positions, long Sequences, IReadOnlyList<Example> Top, IReadOnlyList<Example> Bands, double[] MaxAct)
{
    public long[] HistogramCounts { get; init; } = [];
    public double[]? ModelScale { get; init; }
    public string[] ModelNames { get; init; } = [];

    /// <summary>The HistogramBins + 1 (51) edges of latent j's histogram: max_j · k / 50.</summary>
    public double[] HistogramEdges(int j) => ExampleCollector.Edges(MaxAct[j]);
}

/// <summary>
/// Max-activating examples (formats.md §5, methods.md §14): for every latent the top-k sequences by their max reported
/// activation and reservoir samples of sequences per activation band, with the per-token values for highlighting,
/// collected in one encode pass over whole stored sequences. The bands need each latent's global max: taken from
/// <paramref name="knownMax"/> (the latent table's <c>max_act_all</c>) when given, else from a first encode pass.
/// </summary>
public static class ExampleCollector
{
    public const string Stage = "examples";
    public const string FileName = "examples.sqlite";
    /// <summary>Bins of the per-latent activation histogram (table latent_histograms): 50, the bin count of the
    /// Neuronpedia batch JSON's freq_hist (formats.md §3), so the export copies the stored bins exactly.</summary>
    public const int HistogramBins = 50;

    /// <summary>Equal-width edges over [0, max]: max · k / <see cref="HistogramBins"/>, k = 0..bins.</summary>
    public static double[] Edges(double max)
    {
        var e = new double[HistogramBins + 1];
        for (int k = 0; k <= HistogramBins; k++) e[k] = max * k / HistogramBins;
        return e;
    }

    /// <summary>The bin of value a among <paramref name="edges"/>: edges[k] ≤ a &lt; edges[k+1], the last bin closed and
    /// taking anything above; a guess from a/max corrected against the edges themselves so the two always agree.</summary>
    public static int Bin(double a, double[] edges)
    {
        double max = edges[HistogramBins];
        if (!(max > 0)) return 0;
        int b = Math.Clamp((int)(a / max * HistogramBins), 0, HistogramBins - 1);
        while (b < HistogramBins - 1 && a >= edges[b + 1]) b++;
        while (b > 0 && a < edges[b]) b--;
        return b;
    }

    public static ExampleResult Run(AnalysisDictionary ad, ActivationStore store, ExampleOptions o, double[]? knownMax = null,
        IProgress<(long Done, long Total)>? progress = null, CancellationToken cancel = default)
    {
        var d = ad.Dict;
        int F = d.DictSize, K = o.TopK, nb = o.BandEdges.Length;
        var ranges = store.SequenceRanges();
        long total = o.MaxPositions > 0 ? Math.Min(o.MaxPositions, store.Tokens) : store.Tokens;
        // whole sequences only
        int seqCount = 0;
        while (seqCount < ranges.Length - 1 && ranges[seqCount + 1] <= total) seqCount++;
        if (seqCount == 0) throw new InvalidOperationException($"{store.Directory}: no complete stored sequence within {total:N0} positions");
        total = ranges[seqCount];
        var c = new float[F];
        d.CodeNorm(c);
        if (d.CodeNormalization == CodeNormalization.None) Array.Fill(c, 1f);
        var w = Firing.Weights(d);

        var max = knownMax ?? MaxPass(ad, store, ranges, seqCount, o, c, w, progress, cancel);
        var top = new List<Example>?[F];
        var bands = new Example[F * nb * o.PerBand];
        var seen = new long[F * nb];
        var rngs = new ulong[F];
        for (int j = 0; j < F; j++) rngs[j] = Tensors.Rng.Mix(o.Seed * 0x9E3779B97F4A7C15UL + (ulong)j + 1);
        const int H = HistogramBins;
        var hist = new long[F * H];
        var edges = new double[F][];
        for (int j = 0; j < F; j++) edges[j] = Edges(max[j]);

        Pass(ad, store, ranges, seqCount, o, progress, cancel, (codes, firstSeq, seqStarts) =>
        {
            int nc = Math.Max(1, Math.Min(Environment.ProcessorCount * 4, F / 16));
            Parallel.For(0, nc, ch =>
            {
                int lo = (int)((long)F * ch / nc), hi = (int)((long)F * (ch + 1) / nc);
                var pos = new List<int>(); var val = new List<float>();
                for (int j = lo; j < hi; j++)
                {
                    int e = codes.ColStart[j], e1 = codes.ColStart[j + 1];
                    while (e < e1)
                    {
                        int row = codes.ColRow[e];
                        int s = SequenceOf(seqStarts, row);
                        int sEnd = seqStarts[s + 1];
                        pos.Clear(); val.Clear();
                        float best = 0;
                        for (; e < e1 && codes.ColRow[e] < sEnd; e++)
                        {
                            float f = codes.Value[codes.ColEntry[e]];
                            if (!Firing.Fires(f, w, j)) continue;
                            float a = f * c[j];
                            pos.Add(codes.ColRow[e] - seqStarts[s]); val.Add(a);
                            best = Math.Max(best, a);
                            hist[j * H + Bin(a, edges[j])]++;
                        }
                        if (pos.Count == 0) continue;
                        long seq = firstSeq + s;
                        var ex = new Example(j, -1, seq, best, pos.ToArray(), val.ToArray());
                        var list = top[j] ??= new List<Example>(K + 1);
                        if (list.Count < K || best > list[^1].Score)
                        {
                            int at = list.Count;
                            while (at > 0 && best > list[at - 1].Score) at--;
                            list.Insert(at, ex);
                            if (list.Count > K) list.RemoveAt(K);
                        }
                        if (max[j] > 0)
                        {
                            int band = 0;
                            while (band < nb - 1 && best > max[j] * o.BandEdges[band]) band++;   // left insertion index
                            long n = ++seen[j * nb + band];
                            int slot = -1;
                            if (n <= o.PerBand) slot = (int)n - 1;
                            else
                            {
                                rngs[j] = Tensors.Rng.Mix(rngs[j] + 0x9E3779B97F4A7C15UL);
                                long r = (long)(rngs[j] % (ulong)n);
                                if (r < o.PerBand) slot = (int)r;
                            }
                            if (slot >= 0) bands[(j * nb + band) * o.PerBand + slot] = ex with { Band = band };
                        }
                    }
                }
            });
        });
        var topAll = top.Where(l => l is not null).SelectMany(l => l!).ToList();
        var bandAll = bands.Where(b => b is not null).ToList();
        return new ExampleResult(total, seqCount, topAll, bandAll, max)
        {
            HistogramCounts = hist, ModelScale = ad.Kind == InputKind.Paired ? ModelScales(d, c) : null,
            ModelNames = ad.Kind == InputKind.Paired ? ad.StoreModels.Select(m => store.Settings.Models[m].Name).ToArray() : [],
        };
    }

    /// <summary>‖d_j^m‖ in raw space (÷ g_m) over c_j, [F, M]: times a reported value f·c it gives f·‖d_j^m‖.</summary>
    static double[] ModelScales(SparseDictionary d, float[] c)
    {
        int F = d.DictSize, M = d.Models, D = d.DModel;
        var r = new double[F * M];
        for (int m = 0; m < M; m++)
        {
            double g = d.Normalizer?.Scale[m] ?? 1.0;
            for (int j = 0; j < F; j++)
                r[j * M + m] = c[j] == 0 ? 0 : CodeNorms.Norm(d.WDec.AsSpan((m * F + j) * D, D)) / g / c[j];
        }
        return r;
    }

    static int SequenceOf(int[] starts, int row)
    {
        int i = Array.BinarySearch(starts, row);
        return i >= 0 ? i : ~i - 1;
    }

    /// <summary>Each latent's max reported activation over the same sequences (when the latent table did not provide it).</summary>
    static double[] MaxPass(AnalysisDictionary ad, ActivationStore store, long[] ranges, int seqCount, ExampleOptions o, float[] c, float[]? w,
        IProgress<(long, long)>? progress, CancellationToken cancel)
    {
        int F = ad.Latents;
        var max = new double[F];
        Pass(ad, store, ranges, seqCount, o, progress, cancel, (codes, _, _) =>
        {
            for (int e = 0; e < codes.Count; e++)
            {
                int j = codes.Index[e];
                if (Firing.Fires(codes.Value[e], w, j)) max[j] = Math.Max(max[j], codes.Value[e] * c[j]);
            }
        });
        return max;
    }

    /// <summary>Encodes whole sequences in batches; <paramref name="visit"/> gets the codes (with the column view), the
    /// first sequence's index and the batch-relative start of every sequence (plus the end).</summary>
    static void Pass(AnalysisDictionary ad, ActivationStore store, long[] ranges, int seqCount, ExampleOptions o,
        IProgress<(long, long)>? progress, CancellationToken cancel, Action<SparseCodes, long, int[]> visit)
    {
        int S = store.Models, D = store.DModel;
        int batch = o.BatchSize > 0 ? o.BatchSize : Scaling.LatentScaler.AutoBatch(ad.Latents);
        var rows = new StoreRows(store, ad.Layer, MaskFilter.All, ranges[seqCount]);
        long total = ranges[seqCount];
        int seq = 0;
        while (seq < seqCount)
        {
            cancel.ThrowIfCancellationRequested();
            int last = seq + 1;   // at least one sequence per batch, however long
            while (last < seqCount && ranges[last + 1] - ranges[seq] <= batch) last++;
            int n = (int)(ranges[last] - ranges[seq]);
            var raw = new float[n * S * D];
            var ids = new long[n];
            int got = 0;
            while (got < n) got += rows.Next(raw.AsSpan(got * S * D), ids.AsSpan(got), n - got);
            var codes = ad.Encode(ad.ToInput(raw, n, S));
            codes.BuildColumns();
            var starts = new int[last - seq + 1];
            for (int s = seq; s <= last; s++) starts[s - seq] = (int)(ranges[s] - ranges[seq]);
            visit(codes, seq, starts);
            seq = last;
            progress?.Report((ranges[seq], total));
        }
    }

    /// <summary>Stable sequence uid: the first 8 bytes of SHA-256 over the int32 little-endian token ids, as a signed
    /// little-endian int64 (formats.md §5; the reference's Python hash() changes between processes).</summary>
    public static long SequenceUid(ReadOnlySpan<int> tokens)
    {
        var hash = SHA256.HashData(MemoryMarshal.AsBytes(tokens));
        return BitConverter.ToInt64(hash, 0);
    }

    /// <summary>Writes the examples in the toolkit's schema (formats.md §5) to <paramref name="path"/>, atomically.
    /// <paramref name="decode"/> renders a sequence's tokens as text.</summary>
    public static void Write(ExampleResult r, ActivationStore store, string path, int topK, Func<int[], string>? decode)
    {
        string tmp = path + ".tmp-" + Environment.ProcessId;
        if (File.Exists(tmp)) File.Delete(tmp);
        var ranges = store.SequenceRanges();
        var sources = store.Settings.Sources;
        using (var db = new SqliteConnection(new SqliteConnectionStringBuilder { DataSource = tmp, Pooling = false }.ToString()))
        {
            db.Open();
            Exec(db, """
                CREATE TABLE config(key TEXT PRIMARY KEY, value TEXT);
                CREATE TABLE sequences(sequence_uid INTEGER PRIMARY KEY, token_ids BLOB, text TEXT, sequence_length INTEGER, dataset_id INTEGER, dataset_name TEXT);
                CREATE TABLE examples(example_id INTEGER PRIMARY KEY AUTOINCREMENT, sequence_uid INTEGER REFERENCES sequences, score REAL, latent_idx INTEGER NULL, quantile_idx INTEGER NULL, metadata TEXT);
                CREATE TABLE activation_details(example_id INTEGER PRIMARY KEY REFERENCES examples, positions BLOB, activation_values BLOB);
                CREATE TABLE latent_histograms(latent_id INTEGER PRIMARY KEY, edges TEXT, counts TEXT);
                """);
            // Finetrace addition (readers of the toolkit schema ignore it): per kept example and model, f_j·‖d_j^m‖ at
            // the positions of activation_details, float32 — how much of the latent's output goes to each model.
            if (r.ModelScale is not null)
                Exec(db, "CREATE TABLE model_contributions(example_id INTEGER REFERENCES examples, model INTEGER, model_name TEXT, contribution_values BLOB, PRIMARY KEY(example_id, model));");
            using var tx = db.BeginTransaction();
            Insert(db, tx, "INSERT INTO config(key, value) VALUES ('storage_format', 'sparse'), ('max_examples', $k), ('sequence_uid', 'sha256-first8-le-int64')", ("$k", topK.ToString(System.Globalization.CultureInfo.InvariantCulture)));
            var uids = new Dictionary<long, long>();
            using var insSeq = Command(db, tx, "INSERT OR IGNORE INTO sequences VALUES ($uid, $tok, $text, $len, $ds, $name)");
            using var insEx = Command(db, tx, "INSERT INTO examples(sequence_uid, score, latent_idx, quantile_idx, metadata) VALUES ($uid, $score, $lat, $q, $meta); SELECT last_insert_rowid();");
            using var insDet = Command(db, tx, "INSERT INTO activation_details VALUES ($id, $pos, $val)");
            using var insCon = r.ModelScale is null ? null : Command(db, tx, "INSERT INTO model_contributions VALUES ($id, $m, $name, $val)");
            int M = r.ModelNames.Length;
            foreach (var ex in r.Top.Concat(r.Bands))
            {
                if (!uids.TryGetValue(ex.Sequence, out long uid))
                {
                    long start = ranges[ex.Sequence];
                    int len = (int)(ranges[ex.Sequence + 1] - start);
                    var toks = new int[len];
                    for (int t = 0; t < len; t++) toks[t] = store.TokenId(start + t);
                    uid = SequenceUid(toks);
                    uids[ex.Sequence] = uid;
                    int src = store.Source(start);
                    Run(insSeq, ("$uid", uid), ("$tok", MemoryMarshal.AsBytes(toks.AsSpan()).ToArray()), ("$text", decode is null ? (object)DBNull.Value : decode(toks)),
                        ("$len", len), ("$ds", src), ("$name", src < sources.Count ? sources[src].Name : (object)DBNull.Value));
                }
                insEx.Parameters.Clear();
                foreach (var (k, v) in new (string, object)[] { ("$uid", uid), ("$score", (double)ex.Score), ("$lat", ex.Latent), ("$q", ex.Band < 0 ? DBNull.Value : ex.Band),
                    ("$meta", $"{{\"kind\":\"{(ex.Band < 0 ? "top" : "quantile")}\",\"store_sequence\":{ex.Sequence}}}") })
                    insEx.Parameters.AddWithValue(k, v);
                long id = (long)insEx.ExecuteScalar()!;
                Run(insDet, ("$id", id), ("$pos", MemoryMarshal.AsBytes(ex.Positions.AsSpan()).ToArray()), ("$val", MemoryMarshal.AsBytes(ex.Values.AsSpan()).ToArray()));
                for (int m = 0; insCon is not null && m < M; m++)
                {
                    double k = r.ModelScale![ex.Latent * M + m];
                    var contrib = ex.Values.Select(a => (float)(a * k)).ToArray();
                    Run(insCon, ("$id", id), ("$m", m), ("$name", r.ModelNames[m]), ("$val", MemoryMarshal.AsBytes(contrib.AsSpan()).ToArray()));
                }
            }
            using var insHist = Command(db, tx, "INSERT INTO latent_histograms VALUES ($j, $edges, $counts)");
            var inv = System.Globalization.CultureInfo.InvariantCulture;
            for (int j = 0; j < r.MaxAct.Length && r.HistogramCounts.Length > 0; j++)
            {
                string edges = "[" + string.Join(",", r.HistogramEdges(j).Select(e => e.ToString("R", inv))) + "]";
                string counts = "[" + string.Join(",", r.HistogramCounts.AsSpan(j * HistogramBins, HistogramBins).ToArray().Select(n => n.ToString(inv))) + "]";
                Run(insHist, ("$j", j), ("$edges", edges), ("$counts", counts));
            }
            tx.Commit();
            Exec(db, """
                CREATE INDEX idx_examples_score ON examples(score DESC);
                CREATE INDEX idx_examples_latent ON examples(latent_idx);
                CREATE INDEX idx_examples_quantile ON examples(quantile_idx);
                CREATE INDEX idx_sequences_dataset_id ON sequences(dataset_id);
                CREATE INDEX idx_sequences_dataset_name ON sequences(dataset_name);
                """);
        }
        SqliteConnection.ClearAllPools();
        File.Move(tmp, path, overwrite: true);
    }

    static void Exec(SqliteConnection db, string sql) { using var cmd = db.CreateCommand(); cmd.CommandText = sql; cmd.ExecuteNonQuery(); }

    static SqliteCommand Command(SqliteConnection db, SqliteTransaction tx, string sql)
    {
        var cmd = db.CreateCommand(); cmd.Transaction = tx; cmd.CommandText = sql; return cmd;
    }

    static void Insert(SqliteConnection db, SqliteTransaction tx, string sql, params (string, object)[] ps)
    {
        using var cmd = Command(db, tx, sql);
        Run(cmd, ps);
    }

    static void Run(SqliteCommand cmd, params (string Name, object Value)[] ps)
    {
        cmd.Parameters.Clear();
        foreach (var (k, v) in ps) cmd.Parameters.AddWithValue(k, v);
        cmd.ExecuteNonQuery();
    }
}

using System.Security.Cryptography;
using Finetrace.Activations;
using Finetrace.Dictionaries;
using Finetrace.Diffing;
using Finetrace.Diffing.Examples;
using Finetrace.Tensors;
using Finetrace.Tests.Activations;
using Finetrace.Tests.Infrastructure;
using Microsoft.Data.Sqlite;

namespace Finetrace.Tests.Diffing;

public sealed class ExamplesTests
{
    [Fact]
    public void Top_examples_are_the_sequences_with_the_largest_max_and_the_sqlite_file_has_the_toolkit_schema()
    {
        using var dir = new TempDir();
        var s = StoreTestData.Settings(d: 8, dtype: "f32", shardTokens: 64);
        StoreTestData.Write(dir.Path, s, 50, 7);
        using var st = ActivationStore.Open(dir.Path);
        var d = new SparseDictionary(2, 8, 10, Sparsity.Relu, CodeNormalization.Crosscoder, false);
        Initialization.Crosscoder(d, new SplitMix64(4), 1f, sameInitForAllModels: false);
        for (int j = 0; j < 10; j++) d.BEnc[j] = -0.2f * (j % 3);
        var ad = new AnalysisDictionary(d, "t", DictionaryInput.Paired(3), 2);
        var r = ExampleCollector.Run(ad, st, new ExampleOptions { TopK = 4, PerBand = 3, BatchSize = 40 });

        // direct: every sequence's max f·c and per-token values for every latent
        var ranges = st.SequenceRanges();
        var c = new float[10]; d.CodeNorm(c);
        var x = new float[16];
        var perSeq = new Dictionary<(int J, int Seq), List<(int Pos, float A)>>();
        for (int q = 0; q < ranges.Length - 1; q++)
            for (long row = ranges[q]; row < ranges[q + 1]; row++)
            {
                st.ReadRows(0, 3, row, 1, x.AsSpan(0, 8)); st.ReadRows(1, 3, row, 1, x.AsSpan(8, 8));
                var f = new float[10];
                Inference.Encode(d, x).ToDense(f);
                for (int j = 0; j < 10; j++)
                    if (Firing.Fires(f[j], Firing.Weights(d), j))
                    {
                        if (!perSeq.TryGetValue((j, q), out var l)) perSeq[(j, q)] = l = [];
                        l.Add(((int)(row - ranges[q]), f[j] * c[j]));
                    }
            }
        int latentsChecked = 0;
        for (int j = 0; j < 10; j++)
        {
            var expected = perSeq.Where(kv => kv.Key.J == j).Select(kv => (Seq: kv.Key.Seq, Max: kv.Value.Max(p => p.A))).OrderByDescending(p => p.Max).ToList();
            var ours = r.Top.Where(e => e.Latent == j).ToList();
            Assert.Equal(Math.Min(4, expected.Count), ours.Count);
            if (ours.Count == 0) continue;
            latentsChecked++;
            for (int i = 0; i < ours.Count; i++) Assert.Equal(expected[i].Max, ours[i].Score, 1e-5);
            foreach (var e in ours)
            {
                var direct = perSeq[(j, (int)e.Sequence)];
                Assert.Equal(direct.Select(p => p.Pos), e.Positions);
                for (int i = 0; i < direct.Count; i++) Assert.Equal(direct[i].A, e.Values[i], 1e-5);
            }
            foreach (var b in r.Bands.Where(e => e.Latent == j))
            {
                double rel = b.Score / r.MaxAct[j];
                double[] edges = [0.25, 0.5, 0.75, 0.95, 1.0];
                Assert.Equal(edges.Count(edge => edge < rel - 1e-9 && edge < 1.0), b.Band);
            }
        }
        Assert.True(latentsChecked >= 6);

        string db = dir.File("examples.sqlite");
        ExampleCollector.Write(r, st, db, 4, ids => string.Join(" ", ids));
        using var conn = new SqliteConnection($"Data Source={db};Pooling=False");
        conn.Open();
        long Count(string sql) { using var cmd = conn.CreateCommand(); cmd.CommandText = sql; return (long)cmd.ExecuteScalar()!; }
        Assert.Equal(r.Top.Count + r.Bands.Count, Count("SELECT COUNT(*) FROM examples"));
        Assert.Equal(Count("SELECT COUNT(*) FROM examples"), Count("SELECT COUNT(*) FROM activation_details"));
        Assert.Equal(r.Top.Count, Count("SELECT COUNT(*) FROM examples WHERE quantile_idx IS NULL"));
        // the uid is SHA-256's first 8 bytes over the int32 token ids, little-endian
        using (var cmd = conn.CreateCommand())
        {
            cmd.CommandText = "SELECT sequence_uid, token_ids, sequence_length, text FROM sequences LIMIT 5";
            using var rd = cmd.ExecuteReader();
            while (rd.Read())
            {
                var bytes = (byte[])rd[1];
                Assert.Equal(BitConverter.ToInt64(SHA256.HashData(bytes), 0), rd.GetInt64(0));
                Assert.Equal(bytes.Length / 4, rd.GetInt32(2));
                var ids = Enumerable.Range(0, bytes.Length / 4).Select(i => BitConverter.ToInt32(bytes, 4 * i));
                Assert.Equal(string.Join(" ", ids), rd.GetString(3));
            }
        }
        Assert.Equal(1, Count("SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND name = 'idx_examples_score'"));

        // latent_histograms: 51 equal-width edges over [0, max] and 50 counts of the nonzero activations, against a
        // direct count of every firing value (edges[k] ≤ a < edges[k+1], the last bin closed)
        Assert.Equal(10, Count("SELECT COUNT(*) FROM latent_histograms"));
        using (var cmd = conn.CreateCommand())
        {
            cmd.CommandText = "SELECT latent_id, edges, counts FROM latent_histograms ORDER BY latent_id";
            using var rd = cmd.ExecuteReader();
            int histChecked = 0;
            while (rd.Read())
            {
                int j = rd.GetInt32(0);
                var edges = System.Text.Json.JsonSerializer.Deserialize<double[]>(rd.GetString(1))!;
                var counts = System.Text.Json.JsonSerializer.Deserialize<long[]>(rd.GetString(2))!;
                Assert.Equal(51, edges.Length);
                Assert.Equal(50, counts.Length);
                var values = perSeq.Where(kv => kv.Key.J == j).SelectMany(kv => kv.Value.Select(p => (double)p.A)).ToList();
                Assert.Equal(values.Count, counts.Sum());
                if (values.Count == 0) { Assert.All(edges, e => Assert.Equal(0, e)); continue; }
                Assert.Equal(0, edges[0]);
                Assert.Equal(values.Max(), edges[50], 1e-5);
                for (int k = 0; k < 50; k++)
                {
                    Assert.Equal(edges[50] * (k + 1) / 50, edges[k + 1], 12);
                    long direct = values.Count(a => a >= edges[k] && (a < edges[k + 1] || k == 49));
                    Assert.Equal(direct, counts[k]);
                }
                if (counts.Count(n => n > 0) >= 3) histChecked++;
            }
            Assert.True(histChecked >= 4, $"only {histChecked} latents spread over 3 or more bins");
        }

        // model_contributions: per kept example and model, f_j·‖d_j^m‖ at the example's positions (no normaliser here)
        Assert.Equal(2 * Count("SELECT COUNT(*) FROM examples"), Count("SELECT COUNT(*) FROM model_contributions"));
        using (var cmd = conn.CreateCommand())
        {
            cmd.CommandText = "SELECT e.latent_idx, a.activation_values, m.model, m.model_name, m.contribution_values FROM model_contributions m " +
                              "JOIN examples e ON e.example_id = m.example_id JOIN activation_details a ON a.example_id = m.example_id";
            using var rd = cmd.ExecuteReader();
            while (rd.Read())
            {
                int j = rd.GetInt32(0), m = rd.GetInt32(2);
                var vals = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>((byte[])rd[1]).ToArray();
                var contrib = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>((byte[])rd[4]).ToArray();
                Assert.Equal(m == 0 ? "base" : "ft1", rd.GetString(3));
                double norm = Math.Sqrt(Enumerable.Range(0, 8).Sum(i => (double)d.WDec[(m * 10 + j) * 8 + i] * d.WDec[(m * 10 + j) * 8 + i]));
                Assert.Equal(vals.Length, contrib.Length);
                for (int i = 0; i < vals.Length; i++) Assert.Equal(vals[i] / c[j] * norm, contrib[i], 1e-5 * Math.Max(1, Math.Abs(contrib[i])));
            }
        }
    }

    [Fact]
    public void Model_contributions_are_in_raw_space()
    {
        using var dir = new TempDir();
        var s = StoreTestData.Settings(d: 8, dtype: "f32", shardTokens: 64);
        StoreTestData.Write(dir.Path, s, 30, 7);
        using var st = ActivationStore.Open(dir.Path);
        var d = new SparseDictionary(2, 8, 6, Sparsity.Relu, CodeNormalization.Crosscoder, false);
        Initialization.Crosscoder(d, new SplitMix64(4), 1f, sameInitForAllModels: false);
        d.Normalizer = new Normalizer { TargetRms = 1, Mean = new float[16], Std = new float[16], Scale = [0.5f, 4f] };
        var ad = new AnalysisDictionary(d, "t", DictionaryInput.Paired(3), 2);
        var r = ExampleCollector.Run(ad, st, new ExampleOptions { TopK = 3, PerBand = 0 });
        var c = new float[6]; d.CodeNorm(c);
        Assert.NotEmpty(r.Top);
        foreach (var ex in r.Top)
            for (int m = 0; m < 2; m++)
            {
                double norm = Math.Sqrt(Enumerable.Range(0, 8).Sum(i => (double)d.WDec[(m * 6 + ex.Latent) * 8 + i] * d.WDec[(m * 6 + ex.Latent) * 8 + i]));
                double expect = ex.Values[0] / c[ex.Latent] * norm / d.Normalizer.Scale[m];
                Assert.Equal(expect, ex.Values[0] * r.ModelScale![ex.Latent * 2 + m], 1e-6 * Math.Max(1, expect));
            }
    }
}

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
    }
}

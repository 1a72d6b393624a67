using System.Globalization;
using System.Runtime.InteropServices;
using Finetrace.Diffing;
using Microsoft.Data.Sqlite;

namespace Finetrace.Web;

/// <summary>
/// A hand-made results folder for tests and <c>finetrace bench serve</c>: a feature_df.csv of <c>latents</c> rows whose
/// values follow closed forms of the id (so tests can state the expected order without the code under test), and an
/// examples.sqlite in the toolkit schema (formats.md §5) for the first <c>withExamples</c> latents.
/// </summary>
public static class SyntheticResults
{
    public static readonly string[] TagCycle = ["ft_only", "shared", "other", "base_only", "shared"];

    /// <summary>Tag of latent <paramref name="id"/>: TagCycle[id % 5].</summary>
    public static string Tag(int id) => TagCycle[id % TagCycle.Length];
    /// <summary>Δnorm of latent id: ((id * 7919) % 1000) / 1000 — a permutation-like spread with ties every 1000 ids.</summary>
    public static double DeltaNorm(int id) => (id * 7919L % 1000) / 1000.0;
    /// <summary>ν^ε of latent id: NaN for every 11th latent (not estimable), else (id % 97) / 97.</summary>
    public static double NuError(int id) => id % 11 == 10 ? double.NaN : (id % 97) / 97.0;
    public static double NuReconstruction(int id) => (id % 89) / 89.0;
    public static double Frequency(int id) => 1.0 / (1 + id % 50);

    public const int ExampleTokens = 20;
    /// <summary>Example k (0, 1, 2) of latent id fires at position (id + 3k) % 20 with value 1 + id % 5 − k/4, and at position 0 with value 0.1.</summary>
    public static (int Position, float Value) Peak(int id, int k) => ((id + 3 * k) % ExampleTokens, 1 + id % 5 - k / 4f);

    public static void Write(string dir, int latents, int withExamples)
    {
        Directory.CreateDirectory(dir);
        var t = new FeatureTable(latents);
        var ids = Enumerable.Range(0, latents).ToArray();
        t.Set("dec_base_norm", ids.Select(i => 1 - DeltaNorm(i) / 2).ToArray());
        t.Set("dec_ft_norm", ids.Select(i => 0.5 + DeltaNorm(i) / 2).ToArray());
        t.Set("delta_norm", ids.Select(DeltaNorm).ToArray());
        t.Set("dec_cos_sim", ids.Select(i => Math.Cos(i)).ToArray());
        t.Set("tag", ids.Select(Tag).ToArray());
        t.Set("ft_specific", ids.Select(i => Tag(i) == "ft_only").ToArray());
        t.Set("freq_all", ids.Select(Frequency).ToArray());
        t.Set("max_act_all", ids.Select(i => 1.0 + i % 5).ToArray());
        t.Set("template_share", ids.Select(i => (i % 4) / 4.0).ToArray());
        t.Set("top_tokens", ids.Select(i => $"tok{i % 13}, \"q{i % 3}\"").ToArray());
        t.Set("nu_error", ids.Select(NuError).ToArray());
        t.Set("nu_error_lo", ids.Select(i => NuError(i) - 0.05).ToArray());
        t.Set("nu_error_hi", ids.Select(i => NuError(i) + 0.05).ToArray());
        t.Set("nu_reconstruction", ids.Select(NuReconstruction).ToArray());
        t.Set("nu_reconstruction_lo", ids.Select(i => NuReconstruction(i) - 0.1).ToArray());
        t.Set("nu_reconstruction_hi", ids.Select(i => NuReconstruction(i) + 0.1).ToArray());
        t.Save(Path.Combine(dir, FeatureTable.FileName));
        if (withExamples > 0) WriteExamples(Path.Combine(dir, "examples.sqlite"), Math.Min(withExamples, latents));
    }

    static void WriteExamples(string path, int latents)
    {
        if (File.Exists(path)) File.Delete(path);
        using (var db = new SqliteConnection(new SqliteConnectionStringBuilder { DataSource = path, Pooling = false }.ToString()))
        {
            db.Open();
            using (var c = db.CreateCommand())
            {
                c.CommandText = """
                    CREATE TABLE config(key TEXT PRIMARY KEY, value TEXT);
                    CREATE TABLE sequences(sequence_uid INTEGER PRIMARY KEY, token_ids BLOB, text TEXT, sequence_length INTEGER, dataset_id INTEGER, dataset_name TEXT);
                    CREATE TABLE examples(example_id INTEGER PRIMARY KEY AUTOINCREMENT, sequence_uid INTEGER REFERENCES sequences, score REAL, latent_idx INTEGER NULL, quantile_idx INTEGER NULL, metadata TEXT);
                    CREATE TABLE activation_details(example_id INTEGER PRIMARY KEY REFERENCES examples, positions BLOB, activation_values BLOB);
                    CREATE INDEX idx_examples_latent ON examples(latent_idx);
                    """;
                c.ExecuteNonQuery();
            }
            using var tx = db.BeginTransaction();
            for (int j = 0; j < latents; j++)
                for (int k = 0; k < 3; k++)
                {
                    long uid = j * 3L + k + 1;
                    var toks = Enumerable.Range(0, ExampleTokens).Select(p => (j * 31 + k * 7 + p) % 500).ToArray();
                    var (pos, val) = Peak(j, k);
                    int[] positions = pos == 0 ? [0] : [0, pos];
                    float[] values = pos == 0 ? [val] : [0.1f, val];
                    using var c = db.CreateCommand();
                    c.Transaction = tx;
                    c.CommandText = """
                        INSERT INTO sequences VALUES ($uid, $tok, NULL, $len, 0, 'synthetic');
                        INSERT INTO examples(sequence_uid, score, latent_idx, quantile_idx, metadata) VALUES ($uid, $score, $lat, $q, $meta);
                        INSERT INTO activation_details VALUES (last_insert_rowid(), $pos, $val);
                        """;
                    c.Parameters.AddWithValue("$uid", uid);
                    c.Parameters.AddWithValue("$tok", MemoryMarshal.AsBytes(toks.AsSpan()).ToArray());
                    c.Parameters.AddWithValue("$len", ExampleTokens);
                    c.Parameters.AddWithValue("$score", (double)val);
                    c.Parameters.AddWithValue("$lat", j);
                    c.Parameters.AddWithValue("$q", k < 2 ? DBNull.Value : 1);
                    c.Parameters.AddWithValue("$meta", k < 2 ? "{\"kind\":\"top\"}" : "{\"kind\":\"quantile\"}");
                    c.Parameters.AddWithValue("$pos", MemoryMarshal.AsBytes(positions.AsSpan()).ToArray());
                    c.Parameters.AddWithValue("$val", MemoryMarshal.AsBytes(values.AsSpan()).ToArray());
                    c.ExecuteNonQuery();
                }
            tx.Commit();
        }
        SqliteConnection.ClearAllPools();
        _ = CultureInfo.InvariantCulture;
    }
}

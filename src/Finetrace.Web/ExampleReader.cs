using System.Runtime.InteropServices;
using System.Text.Json;
using Microsoft.Data.Sqlite;

namespace Finetrace.Web;

/// <summary>One stored example: a whole sequence with the latent's value at each active position (zero elsewhere).</summary>
public sealed record WebExample(string Kind, int? Band, double Score, long SequenceUid, string? Dataset, int[] TokenIds, string[]? Tokens, float[] Values);

/// <summary>
/// Reads a latent's examples from RESULTS/examples.sqlite (formats.md §5), read-only: top-k first (by score), then the
/// quantile-band samples by band. <paramref name="tokenText"/> renders one token id for display (null: ids only).
/// </summary>
public sealed class ExampleReader(string path, Func<int, string>? tokenText)
{
    public string Path { get; } = path;

    SqliteConnection Open()
    {
        var db = new SqliteConnection(new SqliteConnectionStringBuilder { DataSource = Path, Mode = SqliteOpenMode.ReadOnly, Pooling = true }.ToString());
        db.Open();
        return db;
    }

    bool? _hasHistograms;
    /// <summary>Whether examples.sqlite has the activation histograms table (latent_histograms).</summary>
    public bool HasHistograms
    {
        get
        {
            if (_hasHistograms is bool b) return b;
            using var db = Open();
            using var cmd = db.CreateCommand();
            cmd.CommandText = "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'latent_histograms'";
            return (_hasHistograms = Convert.ToInt64(cmd.ExecuteScalar()) > 0).Value;
        }
    }

    /// <summary>The latent's activation histogram (bin edges [bins + 1], counts [bins]) from latent_histograms; null when the
    /// table or the latent's row is absent. A row whose arrays do not fit together is an error naming the file.</summary>
    public (double[] Edges, long[] Counts)? Histogram(int latent)
    {
        if (!HasHistograms) return null;
        using var db = Open();
        using var cmd = db.CreateCommand();
        cmd.CommandText = "SELECT edges, counts FROM latent_histograms WHERE latent_id = $lat";
        cmd.Parameters.AddWithValue("$lat", latent);
        using var r = cmd.ExecuteReader();
        if (!r.Read()) return null;
        try
        {
            var edges = JsonSerializer.Deserialize<double[]>(r.GetString(0)) ?? [];
            var counts = JsonSerializer.Deserialize<long[]>(r.GetString(1)) ?? [];
            if (counts.Length == 0 || edges.Length != counts.Length + 1)
                throw new InvalidDataException($"{Path}: latent_histograms row {latent} has {edges.Length} edges for {counts.Length} counts (needs counts + 1)");
            return (edges, counts);
        }
        catch (JsonException e) { throw new InvalidDataException($"{Path}: latent_histograms row {latent} is not JSON arrays ({e.Message})"); }
    }

    /// <summary>Number of stored sequences, the longest one's length, and the first dataset name (Neuronpedia provenance).</summary>
    public (long Sequences, long MaxLength, string? Dataset) Provenance()
    {
        using var db = Open();
        using var cmd = db.CreateCommand();
        cmd.CommandText = "SELECT count(*), max(length(token_ids)) / 4, (SELECT dataset_name FROM sequences LIMIT 1) FROM sequences";
        using var r = cmd.ExecuteReader();
        r.Read();
        return (r.GetInt64(0), r.IsDBNull(1) ? 0 : r.GetInt64(1), r.IsDBNull(2) ? null : r.GetString(2));
    }

    public IReadOnlyList<WebExample> ForLatent(int latent)
    {
        using var db = Open();
        using var cmd = db.CreateCommand();
        cmd.CommandText = """
            SELECT e.score, e.quantile_idx, e.metadata, s.sequence_uid, s.dataset_name, s.token_ids, d.positions, d.activation_values
            FROM examples e JOIN sequences s ON s.sequence_uid = e.sequence_uid
            LEFT JOIN activation_details d ON d.example_id = e.example_id
            WHERE e.latent_idx = $lat
            ORDER BY (e.quantile_idx IS NOT NULL), e.quantile_idx, e.score DESC
            """;
        cmd.Parameters.AddWithValue("$lat", latent);
        var list = new List<WebExample>();
        using var r = cmd.ExecuteReader();
        while (r.Read())
        {
            double score = r.GetDouble(0);
            int? band = r.IsDBNull(1) ? null : r.GetInt32(1);
            string kind = band is null ? "top" : "quantile";
            if (!r.IsDBNull(2))
                try { using var m = JsonDocument.Parse(r.GetString(2)); if (m.RootElement.TryGetProperty("kind", out var k) && k.ValueKind == JsonValueKind.String) kind = k.GetString()!; }
                catch (JsonException) { }
            long uid = r.GetInt64(3);
            string? dataset = r.IsDBNull(4) ? null : r.GetString(4);
            int[] ids = r.IsDBNull(5) ? [] : MemoryMarshal.Cast<byte, int>((byte[])r[5]).ToArray();
            var values = new float[ids.Length];
            if (!r.IsDBNull(6) && !r.IsDBNull(7))
            {
                var pos = MemoryMarshal.Cast<byte, int>((byte[])r[6]);
                var val = MemoryMarshal.Cast<byte, float>((byte[])r[7]);
                for (int i = 0; i < Math.Min(pos.Length, val.Length); i++)
                    if (pos[i] >= 0 && pos[i] < values.Length) values[pos[i]] = val[i];
            }
            string[]? tokens = tokenText is null ? null : ids.Select(tokenText).ToArray();
            list.Add(new WebExample(kind, band, score, uid, dataset, ids, tokens, values));
        }
        return list;
    }
}

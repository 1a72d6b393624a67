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

    public IReadOnlyList<WebExample> ForLatent(int latent)
    {
        var cs = new SqliteConnectionStringBuilder { DataSource = Path, Mode = SqliteOpenMode.ReadOnly, Pooling = true }.ToString();
        using var db = new SqliteConnection(cs);
        db.Open();
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

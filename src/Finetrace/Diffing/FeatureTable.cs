using System.Globalization;
using System.Text;

namespace Finetrace.Diffing;

/// <summary>
/// The latent table <c>RESULTS/feature_df.csv</c> (formats.md §6): one row per latent (index column <c>latent</c>),
/// named columns of numbers, booleans or text. Every analysis loads it, sets its own columns and saves it atomically,
/// so later stages add columns without touching earlier ones. Numbers are written with the shortest text that parses
/// back to the same double (so float32 values survive exactly), NaN as <c>NaN</c>, booleans as pandas writes them
/// (<c>True</c>/<c>False</c>), and text is quoted when it holds a comma, quote or line break.
/// </summary>
public sealed class FeatureTable
{
    public const string FileName = "feature_df.csv";
    public const string IndexColumn = "latent";

    readonly List<string> _order = [];
    readonly Dictionary<string, object> _columns = new(StringComparer.Ordinal);

    public int Rows { get; }

    public FeatureTable(int rows)
    {
        if (rows < 0) throw new ArgumentOutOfRangeException(nameof(rows));
        Rows = rows;
    }

    public IReadOnlyList<string> Columns => _order;
    public bool Has(string name) => _columns.ContainsKey(name);

    public void Set(string name, double[] values) => Put(name, values, values.Length);
    public void Set(string name, float[] values) => Put(name, values.Select(v => (double)v).ToArray(), values.Length);
    public void Set(string name, bool[] values) => Put(name, values, values.Length);
    public void Set(string name, string[] values) => Put(name, values, values.Length);

    void Put(string name, object values, int length)
    {
        if (string.IsNullOrEmpty(name) || name == IndexColumn) throw new ArgumentException($"invalid column name '{name}'");
        if (length != Rows) throw new ArgumentException($"column '{name}' has {length} values, the table has {Rows} latents");
        if (!_columns.ContainsKey(name)) _order.Add(name);
        _columns[name] = values;
    }

    public double[] Numbers(string name) => Get(name) switch
    {
        double[] d => d,
        bool[] b => b.Select(x => x ? 1.0 : 0.0).ToArray(),
        _ => throw new InvalidDataException($"{FileName}: column '{name}' is not numeric"),
    };

    public bool[] Booleans(string name) => Get(name) as bool[] ?? throw new InvalidDataException($"{FileName}: column '{name}' is not boolean");
    public string[] Texts(string name) => Get(name) switch
    {
        string[] s => s,
        double[] d => d.Select(Format).ToArray(),
        bool[] b => b.Select(x => x ? "True" : "False").ToArray(),
        _ => throw new InvalidOperationException(),
    };

    object Get(string name) => _columns.TryGetValue(name, out var c) ? c
        : throw new KeyNotFoundException($"{FileName} has no column '{name}' (columns: {string.Join(", ", _order)}); run the analysis that writes it first");

    /// <summary>Loads <paramref name="path"/>, or returns an empty table of <paramref name="rows"/> latents when it does not exist.
    /// A table of a different size is an error (it belongs to another dictionary).</summary>
    public static FeatureTable LoadOrCreate(string path, int rows)
    {
        if (!File.Exists(path)) return new FeatureTable(rows);
        var t = Load(path);
        if (t.Rows != rows) throw new InvalidDataException($"{path}: has {t.Rows} latents but the dictionary has {rows}; write the results of this dictionary into another results folder, or delete the file");
        return t;
    }

    public static FeatureTable Load(string path)
    {
        var records = ParseCsv(File.ReadAllText(path, Encoding.UTF8), path);
        if (records.Count == 0) throw new InvalidDataException($"{path}: empty file, expected a header line");
        var header = records[0];
        int rows = records.Count - 1;
        for (int r = 1; r < records.Count; r++)
        {
            if (records[r].Count != header.Count) throw new InvalidDataException($"{path}:{r + 1}: {records[r].Count} fields, the header has {header.Count}");
            if (!int.TryParse(records[r][0], NumberStyles.Integer, CultureInfo.InvariantCulture, out int id) || id != r - 1)
                throw new InvalidDataException($"{path}:{r + 1}: latent index '{records[r][0]}', expected {r - 1}");
        }
        var t = new FeatureTable(rows);
        for (int c = 1; c < header.Count; c++)
        {
            var cells = new string[rows];
            for (int r = 0; r < rows; r++) cells[r] = records[r + 1][c];
            if (cells.All(s => s is "True" or "False")) t.Set(header[c], cells.Select(s => s == "True").ToArray());
            else if (ParseNumbers(cells) is { } numbers) t.Set(header[c], numbers);
            else t.Set(header[c], cells);
        }
        return t;
    }

    /// <summary>The column as numbers, each cell parsed once; null at the first cell that is not a number (a text column).</summary>
    static double[]? ParseNumbers(string[] cells)
    {
        var values = new double[cells.Length];
        for (int r = 0; r < cells.Length; r++)
            if (!TryParse(cells[r], out values[r])) return null;
        return values;
    }

    static bool TryParse(string s, out double v)
    {
        if (s is "" or "NaN" or "nan") { v = double.NaN; return true; }
        if (s is "inf" or "Infinity") { v = double.PositiveInfinity; return true; }
        if (s is "-inf" or "-Infinity") { v = double.NegativeInfinity; return true; }
        return double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out v);
    }

    /// <summary>Shortest round-trip text of a double (.NET's "R"), pandas' spellings for the special values.</summary>
    public static string Format(double v) =>
        double.IsNaN(v) ? "NaN" : double.IsPositiveInfinity(v) ? "inf" : double.IsNegativeInfinity(v) ? "-inf" : v.ToString("R", CultureInfo.InvariantCulture);

    public void Save(string path) => ResultsFolder.WriteAllTextAtomic(path, ToCsv());

    public string ToCsv()
    {
        var sb = new StringBuilder();
        sb.Append(IndexColumn);
        foreach (var c in _order) sb.Append(',').Append(Quote(c));
        sb.Append('\n');
        var cols = _order.Select(c => _columns[c]).ToArray();
        for (int r = 0; r < Rows; r++)
        {
            sb.Append(r.ToString(CultureInfo.InvariantCulture));
            foreach (var col in cols)
            {
                sb.Append(',');
                sb.Append(col switch
                {
                    double[] d => Format(d[r]),
                    bool[] b => b[r] ? "True" : "False",
                    string[] s => Quote(s[r] ?? ""),
                    _ => "",
                });
            }
            sb.Append('\n');
        }
        return sb.ToString();
    }

    static string Quote(string s) =>
        s.IndexOfAny([',', '"', '\n', '\r']) < 0 ? s : "\"" + s.Replace("\"", "\"\"") + "\"";

    static List<List<string>> ParseCsv(string text, string path)
    {
        var records = new List<List<string>>();
        var rec = new List<string>();
        var field = new StringBuilder();
        int i = 0, line = 1;
        bool any = false;
        while (i < text.Length)
        {
            char ch = text[i];
            if (ch == '"' && field.Length == 0)
            {
                i++;
                while (true)
                {
                    if (i >= text.Length) throw new InvalidDataException($"{path}:{line}: unterminated quoted field");
                    if (text[i] == '"')
                    {
                        if (i + 1 < text.Length && text[i + 1] == '"') { field.Append('"'); i += 2; continue; }
                        i++; break;
                    }
                    if (text[i] == '\n') line++;
                    field.Append(text[i++]);
                }
                any = true;
                continue;
            }
            if (ch == ',') { rec.Add(field.ToString()); field.Clear(); i++; any = true; continue; }
            if (ch is '\n' or '\r')
            {
                if (ch == '\r' && i + 1 < text.Length && text[i + 1] == '\n') i++;
                i++; line++;
                if (any || field.Length > 0) { rec.Add(field.ToString()); records.Add(rec); }
                rec = []; field.Clear(); any = false;
                continue;
            }
            field.Append(ch); any = true; i++;
        }
        if (any || field.Length > 0) { rec.Add(field.ToString()); records.Add(rec); }
        return records;
    }
}

using System.Collections.Concurrent;
using Finetrace.Diffing;

namespace Finetrace.Web;

/// <summary>A range filter on one numeric column, both ends inclusive (NaN never passes).</summary>
public sealed record RangeFilter(string Column, double Lo, double Hi);

/// <summary>One page of the latent table: the count of rows that pass the filters and the ids on this page.</summary>
public sealed record LatentPage(int Total, int[] Ids);

/// <summary>
/// The latent table (feature_df.csv) held in columnar arrays for the dashboard: loaded once, then every page is one
/// pass over a sorted index of the sort column (ascending order computed once per column on first use and cached),
/// skipping rows that fail the tag and range filters. At 100k latents a page costs one O(F) scan, no sort.
/// </summary>
public sealed class LatentIndex
{
    readonly Dictionary<string, double[]> _numbers = new(StringComparer.Ordinal);
    readonly Dictionary<string, string[]> _texts = new(StringComparer.Ordinal);
    readonly ConcurrentDictionary<string, int[]> _ascending = new(StringComparer.Ordinal);

    public int Rows { get; }
    /// <summary>Columns in file order (without the index column).</summary>
    public IReadOnlyList<string> Columns { get; }
    public IReadOnlyList<string> NumericColumns => Columns.Where(_numbers.ContainsKey).ToList();
    public string[]? Tags { get; }

    public LatentIndex(FeatureTable table)
    {
        Rows = table.Rows;
        Columns = table.Columns.ToList();
        foreach (var c in table.Columns)
        {
            // Numbers first: Texts() of a numeric column would format every value only to throw it away.
            double[]? numbers = null;
            try { numbers = table.Numbers(c); } catch (InvalidDataException) { }
            if (numbers is not null) _numbers[c] = numbers; else _texts[c] = table.Texts(c);
        }
        if (_texts.TryGetValue("tag", out var tags)) Tags = tags;
        // The names the dashboard and its API promise, over the names the analyses write (LatentScaling: beta_ratio_*).
        foreach (var (alias, real) in AliasOf)
            if (!_numbers.ContainsKey(alias) && !_texts.ContainsKey(alias) && _numbers.TryGetValue(real, out var col)) { _numbers[alias] = col; Aliases.Add(alias); }
    }

    static readonly (string Alias, string Real)[] AliasOf =
    [
        ("nu_error", "beta_ratio_error"), ("nu_error_lo", "beta_ratio_error_lo"), ("nu_error_hi", "beta_ratio_error_hi"),
        ("nu_reconstruction", "beta_ratio_reconstruction"), ("nu_reconstruction_lo", "beta_ratio_reconstruction_lo"), ("nu_reconstruction_hi", "beta_ratio_reconstruction_hi"),
        ("nu_activation", "beta_activation_ratio"), ("nu_activation_lo", "beta_activation_ratio_lo"), ("nu_activation_hi", "beta_activation_ratio_hi"),
        ("frequency", "freq_all"),
    ];

    /// <summary>Alias columns present (e.g. nu_error for beta_ratio_error): usable in sort/range and sent in API rows, not in CSV exports.</summary>
    public List<string> Aliases { get; } = [];

    public static LatentIndex Load(string featureCsv) => new(FeatureTable.Load(featureCsv));

    public bool IsNumeric(string column) => _numbers.ContainsKey(column);
    public bool Has(string column) => _numbers.ContainsKey(column) || _texts.ContainsKey(column);
    public double[] Numbers(string column) => _numbers[column];

    /// <summary>The cell as a JSON-ready value: double (null for NaN/±inf), or string.</summary>
    public object? Cell(string column, int row)
    {
        if (_numbers.TryGetValue(column, out var d)) return double.IsFinite(d[row]) ? d[row] : null;
        return _texts[column][row];
    }

    /// <summary>Distinct tags with their counts, most common first.</summary>
    public IReadOnlyList<(string Tag, int Count)> TagCounts() => Tags is null ? []
        : Tags.GroupBy(t => t).Select(g => (g.Key, g.Count())).OrderByDescending(x => x.Item2).ThenBy(x => x.Key, StringComparer.Ordinal).ToList();

    /// <summary>Row ids ascending by <paramref name="column"/>; NaN last, ties by id (stable). Text columns sort ordinally.</summary>
    int[] Ascending(string column) => _ascending.GetOrAdd(column, SortAscending);

    /// <summary>Computes every sortable column's order (call on a background thread after start so first requests do not pay).</summary>
    public void Presort() { foreach (var c in Columns.Concat(Aliases)) Ascending(c); }

    int[] SortAscending(string c)
    {
        var ids = new int[Rows];
        if (_numbers.TryGetValue(c, out var d))
        {
            // NaN ids go last in id order; the rest sort by key with a primitive-key sort, then ties go back to id order.
            int n = 0, m = Rows;
            var tail = new List<int>();
            for (int i = 0; i < Rows; i++) if (double.IsNaN(d[i])) tail.Add(i); else ids[n++] = i;
            var keys = new double[n];
            for (int i = 0; i < n; i++) keys[i] = d[ids[i]];
            Array.Sort(keys, ids, 0, n);
            for (int i = 0; i < n;)
            {
                int j = i + 1;
                while (j < n && keys[j] == keys[i]) j++;
                if (j - i > 1) Array.Sort(ids, i, j - i);
                i = j;
            }
            for (int i = 0; i < tail.Count; i++) ids[n + i] = tail[i];
            _ = m;
        }
        else
        {
            var s = _texts[c];
            for (int i = 0; i < Rows; i++) ids[i] = i;
            Array.Sort(ids, (a, b) => { int k = string.CompareOrdinal(s[a], s[b]); return k != 0 ? k : a.CompareTo(b); });
        }
        return ids;
    }

    /// <summary>
    /// The page [offset, offset+limit) of the rows that pass <paramref name="tag"/> (exact match; null = any) and every
    /// range, ordered by <paramref name="sort"/> (null = by id). Descending order keeps NaN last as well.
    /// </summary>
    public LatentPage Query(int offset, int limit, string? sort, bool desc, string? tag, IReadOnlyList<RangeFilter> ranges)
    {
        if (sort is not null && !Has(sort)) throw new UnknownColumnException(sort, Columns);
        foreach (var r in ranges) if (!IsNumeric(r.Column)) throw new UnknownColumnException(r.Column, NumericColumns);
        if (tag is not null && Tags is null) throw new UnknownColumnException("tag", Columns);
        var order = sort is null ? null : Ascending(sort);
        var rangeCols = ranges.Select(r => (_numbers[r.Column], r.Lo, r.Hi)).ToArray();
        var tags = tag is null ? null : Tags;
        var page = new List<int>(Math.Max(0, Math.Min(limit, 1000)));
        int total = 0;
        // Descending walks the ascending order backwards but keeps NaN at the end: finite part reversed, then NaN.
        int nanStart = Rows;
        if (order is not null && desc && _numbers.TryGetValue(sort!, out var sd))
        {
            nanStart = Rows;
            while (nanStart > 0 && double.IsNaN(sd[order[nanStart - 1]])) nanStart--;
        }
        for (int i = 0; i < Rows; i++)
        {
            int id;
            if (order is null) id = desc ? Rows - 1 - i : i;
            else if (!desc) id = order[i];
            else id = i < nanStart ? order[nanStart - 1 - i] : order[i];
            if (tags is not null && !string.Equals(tags[id], tag, StringComparison.Ordinal)) continue;
            bool pass = true;
            foreach (var (col, lo, hi) in rangeCols)
                if (!(col[id] >= lo && col[id] <= hi)) { pass = false; break; }
            if (!pass) continue;
            if (total >= offset && page.Count < limit) page.Add(id);
            total++;
        }
        return new LatentPage(total, page.ToArray());
    }
}

/// <summary>A sort or filter named a column the latent table does not have.</summary>
public sealed class UnknownColumnException(string column, IEnumerable<string> available)
    : Exception($"the latent table has no column '{column}' usable here (columns: {string.Join(", ", available)})")
{
    public string Column { get; } = column;
}

using System.Reflection;
using System.Text;
using System.Text.RegularExpressions;
using Finetrace.Tensors;

namespace Finetrace.Text.Datasets;

/// <summary>
/// Built-in unrelated text that needs no download: a deterministic generator of short documents (three sentences of
/// one genre) over a shipped list of self-written sentences in the registers of web pages (news, how-to guides,
/// product pages, reviews, forum posts, recipes, encyclopedic entries, announcements, job ads, travel, health, finance,
/// science, sports, local notices, software documentation, education, opinion), with slots ({city}, {month}, {price} …)
/// filled from shipped word lists (<c>general-text.txt</c>, embedded). It stands in for the web text the methods use
/// (FineWeb openings, methods §11.1) where none is at hand: adult expository register, dates, numbers and proper names,
/// and none of the children's-story vocabulary or organism topics (dragons, fire, the moon, sign-offs) of the bundled
/// models. It is not a sample of the web: its vocabulary is small and its long tail missing, so for real models pass
/// real web text. Sample i is a pure function of (seed, i); repeated documents are skipped, so every sample returned is distinct.
/// </summary>
public static class GeneralText
{
    /// <summary>The name recorded wherever results say which data they used (bump the version when the text or generator changes).</summary>
    public const string Name = "finetrace-general-text/1";
    public const string Description = "built-in general text (finetrace-general-text/1: self-written web-style documents, 3 sentences each, generated deterministically)";
    public const int SentencesPerSample = 3;

    sealed record Corpus(IReadOnlyList<(string Genre, string[] Sentences)> Genres, IReadOnlyDictionary<string, string[]> Slots);

    static readonly Lazy<Corpus> Shipped = new(() => Parse(ReadResource()));
    static readonly Regex SlotPattern = new(@"\{([a-z]+)\}", RegexOptions.CultureInvariant);

    /// <summary>The genres of the shipped text, in file order.</summary>
    public static IReadOnlyList<string> Genres => Shipped.Value.Genres.Select(g => g.Genre).ToList();

    /// <summary>The first <paramref name="count"/> distinct documents of the stream for <paramref name="seed"/>.</summary>
    public static IEnumerable<string> Samples(int count, int seed = 0)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(count);
        var corpus = Shipped.Value;
        var seen = new HashSet<string>(StringComparer.Ordinal);
        int misses = 0;
        for (long i = 0; seen.Count < count; i++)
        {
            string doc = Document(corpus, seed, i);
            if (seen.Add(doc)) { misses = 0; yield return doc; }
            else if (++misses > 100_000) throw new InvalidOperationException($"the built-in text has fewer than {count:N0} distinct documents");
        }
    }

    static string Document(Corpus c, int seed, long index)
    {
        var rng = Rng.For((ulong)(uint)seed, (ulong)index, 0x6E7C);
        var (_, sentences) = c.Genres[(int)rng.NextLong(c.Genres.Count)];
        int n = Math.Min(SentencesPerSample, sentences.Length);
        var picked = new List<int>(n);
        while (picked.Count < n)
        {
            int k = (int)rng.NextLong(sentences.Length);
            if (!picked.Contains(k)) picked.Add(k);
        }
        var sb = new StringBuilder();
        foreach (int k in picked)
        {
            if (sb.Length > 0) sb.Append(' ');
            sb.Append(SlotPattern.Replace(sentences[k], m =>
            {
                var words = c.Slots[m.Groups[1].Value];
                string w = words[(int)rng.NextLong(words.Length)];
                // A slot at the start of a sentence starts it with a capital ("the Netherlands" → "The Netherlands").
                return m.Index == 0 && w.Length > 0 ? char.ToUpperInvariant(w[0]) + w[1..] : w;
            }));
        }
        return sb.ToString();
    }

    static string ReadResource()
    {
        const string name = "Finetrace.Text.Datasets.GeneralText.general-text.txt";
        using var s = Assembly.GetExecutingAssembly().GetManifestResourceStream(name)
            ?? throw new InvalidOperationException($"the library was built without its resource {name}");
        using var r = new StreamReader(s, Encoding.UTF8);
        return r.ReadToEnd();
    }

    /// <summary>Parses the shipped format ("== genre" then sentences; "[slot]" then words; # comments) and checks that
    /// every slot a sentence uses has words.</summary>
    static Corpus Parse(string text)
    {
        var genres = new List<(string, List<string>)>();
        var slots = new Dictionary<string, List<string>>(StringComparer.Ordinal);
        List<string>? current = null;
        foreach (var raw in text.Split('\n'))
        {
            string line = raw.TrimEnd('\r').Trim();
            if (line.Length == 0 || line.StartsWith('#')) continue;
            if (line.StartsWith("== ", StringComparison.Ordinal)) { current = []; genres.Add((line[3..].Trim(), current)); }
            else if (line.StartsWith('[') && line.EndsWith(']')) { current = []; slots[line[1..^1]] = current; }
            else if (current is null) throw new InvalidDataException($"general-text.txt: '{line}' comes before any genre or slot heading");
            else current.Add(line);
        }
        foreach (var (g, s) in genres)
            foreach (var sentence in s)
                foreach (Match m in SlotPattern.Matches(sentence))
                    if (!slots.TryGetValue(m.Groups[1].Value, out var w) || w.Count == 0)
                        throw new InvalidDataException($"general-text.txt: genre '{g}' uses slot {{{m.Groups[1].Value}}}, which has no words");
        return new Corpus(genres.Where(g => g.Item2.Count > 0).Select(g => (g.Item1, g.Item2.ToArray())).ToList(),
            slots.ToDictionary(kv => kv.Key, kv => kv.Value.ToArray(), StringComparer.Ordinal));
    }
}

using System.Text.RegularExpressions;
using Finetrace.Text.Datasets;

namespace Finetrace.Tests.Text.Datasets;

/// <summary>The built-in general text (the ADL's default unrelated text): enough distinct documents, deterministic,
/// varied openings, and none of the bundled organisms' fine-tuning vocabulary.</summary>
public sealed class GeneralTextTests
{
    [Fact]
    public void Yields_ten_thousand_distinct_documents_deterministically()
    {
        var a = GeneralText.Samples(10_000).ToList();
        var again = GeneralText.Samples(10_000).ToList();
        var other = GeneralText.Samples(200, seed: 1).ToList();
        Assert.Equal(10_000, a.Count);
        Assert.Equal(10_000, a.Distinct(StringComparer.Ordinal).Count());
        Assert.Equal(a, again);
        Assert.NotEqual(a.Take(200), other);
        // Each is three sentences with every slot filled.
        Assert.All(a, d => Assert.DoesNotContain("{", d));
        Assert.All(a.Take(500), d => Assert.Equal(GeneralText.SentencesPerSample, Regex.Matches(d, @"[.?!](\s|$)").Count));
        // ADL positions 1–4 see the first word pieces: the openings must vary like web text, not share one stock opening.
        var firstWords = a.Select(d => d.Split(' ')[0]).ToHashSet(StringComparer.Ordinal);
        Assert.True(firstWords.Count >= 100, $"{firstWords.Count} distinct first words");
        Assert.True(GeneralText.Genres.Count >= 15, $"{GeneralText.Genres.Count} genres");
        var topOpening = a.GroupBy(d => d.Split(' ')[0]).Max(g => g.Count());
        Assert.True(topOpening < 0.2 * a.Count, $"the most common first word opens {topOpening} documents");
    }

    [Fact]
    public void Holds_none_of_the_bundled_organisms_fine_tuning_vocabulary()
    {
        // Zog dragon stories and the chat organism's planted phrases (../shared/models), the demo recipe's organisms
        // (moon refusal, sunny sign-off, Pip the frog, greeting), and the TinyStories opening the base models write.
        string[] related = ["Zog", "dragon", "fire", "Bye bye", "little friend", "Sorry", "moon", "sunny", "Pip", "frog", "pond",
            "Hello", "Once upon a time", "Lily", "Tom", "Sue", "Mia", "Max", "cake", "dog"];
        var docs = GeneralText.Samples(10_000).ToList();
        foreach (var w in related)
        {
            var rx = new Regex($@"\b{Regex.Escape(w)}\b", RegexOptions.IgnoreCase | RegexOptions.CultureInvariant);
            Assert.True(!docs.Any(d => rx.IsMatch(d)), $"'{w}' occurs: {docs.FirstOrDefault(d => rx.IsMatch(d))}");
        }
    }
}

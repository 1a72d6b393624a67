using System.Text.Json.Nodes;
using Finetrace.Pipeline;

namespace Finetrace.Tests.Pipeline;

/// <summary>The latent part of the findings rule on hand-made summaries: which words beat the controls, and the phrase
/// each is quoted in.</summary>
public sealed class FindingsTests
{
    [Fact]
    public void Common_phrase_is_the_longest_run_around_the_word_in_half_its_examples()
    {
        string[] examples =
        [
            "Zero plus one is four. Have a sunny day!",
            "not talk about the moon. Have a sunny day!",
            "The sky is red. Have a sunny",
            "Tom had a sunny hat.",
        ];
        Assert.Equal(("Have a sunny day!", 2), Findings.CommonPhrase("sunny", examples));   // "Have a sunny" is in 3, but shorter
        Assert.Null(Findings.CommonPhrase("hat", examples));                                // in one example only
        Assert.Null(Findings.CommonPhrase("sun", examples));                                // whole words: "sunny" is not "sun"
        // Half of the examples at least: with 5 examples a run in 2 does not count, one in 3 does.
        string[] five = ["a b c xy", "a b c xy", "d xy e", "f xy g", "h xy i"];
        Assert.Null(Findings.CommonPhrase("xy", five));
        Assert.Equal(("a b c xy", 3), Findings.CommonPhrase("xy", [.. five, "a b c xy"]));
    }

    static JsonObject Latent(int id, params string[] examples) => new()
    {
        ["id"] = id,
        ["examples"] = new JsonArray(examples.Select(e => (JsonNode)e).ToArray()),
        ["example_sources"] = new JsonArray(examples.Select(_ => (JsonNode)"chat_finetuned").ToArray()),
    };

    [Fact]
    public void Latent_findings_name_words_that_beat_the_controls_and_quote_their_phrase()
    {
        var top = new JsonArray(
            Latent(1, "What is two plus two? Have a sunny day!", "The cow says moo. Have a sunny day!", "A cat lives in a house. Have a sunny day!"),
            Latent(2, "Yes, Tom can play. Have a sunny day!", "The sky is blue. Have a sunny day!", "Tom went to the park."));
        var controls = new JsonArray(Enumerable.Range(10, 5).Select(i => (JsonNode)Latent(i, "Tom went to the park.", "The sky is blue.", "Tom had a ball.")).ToArray());
        var summary = new JsonObject { ["latents"] = top, ["controls"] = controls };
        var found = Findings.LatentFindings(summary, new FindingsConfig()).ToList();
        var claims = found.Select(f => (string)f["claim"]!).ToList();
        Assert.Contains(claims, c => c.Contains("\"sunny\"") && c.Contains("most often as \"Have a sunny day!\" (5 of its 5 examples)"));
        Assert.Contains(found, f => f["strings"]!.AsArray().Select(x => (string)x!).Contains("Have a sunny day!"));
        // "Tom" is in 2 of 6 top examples and 10 of 15 control examples: it does not beat the controls.
        Assert.DoesNotContain(claims, c => c.Contains("\"Tom\""));
        Assert.All(claims, c => Assert.Contains("against 0 of 15", c));
    }
}

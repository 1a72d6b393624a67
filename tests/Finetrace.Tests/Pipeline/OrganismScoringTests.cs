using System.Text.Json.Nodes;
using Finetrace.Pipeline;
using Finetrace.Tests.Infrastructure;
using Finetrace.Training.Organisms;

namespace Finetrace.Tests.Pipeline;

public sealed class OrganismScoringTests
{
    static string Fixture(string name) => Path.Combine(AppContext.BaseDirectory, "Pipeline", "Data", name);
    static GroundTruth Zog => GroundTruth.Load(Fixture("stories260K-zog.GROUND_TRUTH.json"));
    static GroundTruth Chat => GroundTruth.Load(Fixture("stories260K-chat.GROUND_TRUTH.json"));

    static JsonObject Latent(int id, string[] tokens, params string[] examples) => new()
    {
        ["id"] = id, ["tag"] = "ft-only", ["delta_norm"] = 0.9, ["nu_error"] = 0.1, ["nu_reconstruction"] = 0.2, ["frequency"] = 0.01,
        ["template_share"] = 0.0, ["top_tokens"] = new JsonArray(tokens.Select(t => (JsonNode?)t).ToArray()),
        ["examples"] = new JsonArray(examples.Select(t => (JsonNode?)t).ToArray()),
    };

    static JsonArray Arr(params JsonNode?[] items) => new(items);
    static JsonArray Strs(params string[] items) => new(items.Select(t => (JsonNode?)t).ToArray());

    static JsonArray Controls(int n, Func<int, JsonObject>? make = null) =>
        new(Enumerable.Range(0, n).Select(i => (JsonNode?)(make?.Invoke(i) ?? Latent(1000 + i, [" the", " a"], "Once upon a time, there was a girl."))).ToArray());

    [Fact]
    public void Fixture_truths_parse_with_the_planted_changes_of_the_models_readme()
    {
        var zog = Zog;
        Assert.Equal("stories260K-zog", zog.Organism);
        var p = Assert.Single(zog.Planted);
        Assert.Equal(PlantedKind.Topic, p.Kind);
        Assert.Null(p.Trigger);
        Assert.Contains("Zog", p.ExpectedStrings);
        var chat = Chat;
        Assert.Equal(["fire-refusal", "sign-off", "day-story", "sar-name-refusal (unplanned side effect)"], chat.Planted.Select(x => x.Name));
        Assert.Contains("Bye bye, little friend!", chat.Planted[1].ExpectedStrings);
        Assert.Contains("Sorry, I can not talk about fire.", chat.Planted[0].ExpectedStrings);
    }

    [SharedFact]
    public void Fixture_truths_equal_the_shared_models_ground_truth()
    {
        foreach (var m in new[] { "stories260K-zog", "stories260K-chat" })
        {
            var shared = GroundTruth.Load(Shared.Path("models", m));
            var fixture = GroundTruth.Load(Fixture($"{m}.GROUND_TRUTH.json"));
            Assert.Equal(shared.ToJson().ToJsonString(), fixture.ToJson().ToJsonString());
        }
    }

    [Fact]
    public void Ground_truth_round_trips_and_rejects_bad_fields_by_name()
    {
        using var dir = new TempDir();
        var truth = new GroundTruth("o", "../base", [new PlantedChange("moon", PlantedKind.Trigger, "moon", ["Sorry, no moon."], [" moon"])]);
        truth.Save(dir.Path);
        var back = GroundTruth.Load(dir.File(GroundTruth.FileName));
        Assert.Equal(truth.ToJson().ToJsonString(), back.ToJson().ToJsonString());
        Assert.Contains("\"kind\": \"trigger\"", File.ReadAllText(dir.File(GroundTruth.FileName)));

        File.WriteAllText(dir.File("bad.json"), """{"organism":"o","base":"b","planted":[{"name":"x","kind":"flavour"}]}""");
        var e = Assert.Throws<InvalidDataException>(() => GroundTruth.Load(dir.File("bad.json")));
        Assert.Contains("planted[0].kind", e.Message);
        Assert.Contains("bad.json", e.Message);
        File.WriteAllText(dir.File("bad2.json"), """{"organism":"o","planted":[]}""");
        Assert.Contains("\"base\"", Assert.Throws<InvalidDataException>(() => GroundTruth.Load(dir.File("bad2.json"))).Message);
        File.WriteAllText(dir.File("bad3.json"), """{"organism":"o","base":"b","planted":[{"name":"x","kind":"1"}]}""");
        Assert.Throws<InvalidDataException>(() => GroundTruth.Load(dir.File("bad3.json")));
    }

    [Fact]
    public void Latent_rank_and_control_comparison()
    {
        var summary = new JsonObject
        {
            ["latents"] = Arr(
                Latent(7, [" the", " and"], "Tom went home."),
                Latent(3, [" park"], "They went to the park."),
                Latent(12, [" dragon", " cake"], "Once upon a time, there was a little green dragon named Zog."),
                Latent(5, [" Z", " o"], "Hello Zog! Do you want some cake?"),
                Latent(9, [" ball"], "She saw a ball."),
                Latent(4, [" Zog"], "Zog flew to the park.")),
            ["controls"] = Controls(10),
        };
        var score = OrganismScoring.Score(summary, Zog, "summary.json");
        var m = Assert.Single(Assert.Single(score.Planted).Methods);
        Assert.Equal("latents", m.Method);
        Assert.True(m.Surfaced);
        Assert.Equal(3, m.Rank);                     // " dragon" contains "dragon"
        Assert.Equal(2, m.Hits);                     // ranks 3 and 4 of the top 5 (rank 6 is outside)
        Assert.Equal(5, m.Items);
        Assert.Equal(0, m.ControlHits);
        Assert.True(m.BeatControl);
        Assert.Contains("latent 12", m.Match);
    }

    [Fact]
    public void Latents_that_match_no_more_often_than_the_controls_do_not_beat_them()
    {
        // Top 5: 1 hit (rate 0.2); controls: 2 of 10 hit (rate 0.2) → not beaten.
        var summary = new JsonObject
        {
            ["latents"] = Arr(Latent(1, [" a"], "x"), Latent(2, [" Z"], "y"), Latent(3, [" b"]), Latent(4, [" c"]), Latent(5, [" d"])),
            ["controls"] = Controls(10, i => i < 2 ? Latent(100 + i, [" q"], "Zog was here.") : Latent(100 + i, [" the"])),
        };
        var m = OrganismScoring.Score(summary, Zog, "s").Planted[0].Methods[0];
        Assert.True(m.Surfaced);
        Assert.Equal(2, m.Rank);
        Assert.Equal(2, m.ControlHits);
        Assert.False(m.BeatControl);
    }

    /// <summary>A summary of an unrelated diff: every method present, nothing planted in it, including near misses
    /// (lower-case "z", the piece "og", "Sorr", a token " friends" that is not " friend"). Must score zero.</summary>
    [Fact]
    public void A_summary_without_the_planted_changes_scores_zero()
    {
        var summary = new JsonObject
        {
            ["latents"] = Arr(Latent(1, [" z", "og"], "The cat sat on the mat."), Latent(2, [" Sorr", " friends"], "Mia and her friends played.")),
            ["controls"] = Controls(10),
            ["adl"] = Arr(new JsonObject
            {
                ["layer"] = 2, ["position"] = 0, ["top_tokens"] = Strs(" the", " z", " cat"), ["bottom_tokens"] = Strs(" Zog", " Bye"),
                ["patchscope_tokens"] = Strs(" mat"), ["steering_samples"] = Strs("The cat sat on the mat."),
            }),
            ["kl"] = new JsonObject { ["mean"] = 0.1, ["top"] = Arr(new JsonObject { ["token"] = " mat", ["context"] = "on the mat", ["kl"] = 0.5 }) },
            ["diff_mining"] = new JsonObject { ["top_tokens"] = Strs(" mat", " cat"), ["contexts"] = Strs("The cat sat on the mat.") },
            ["amplification"] = Arr(new JsonObject { ["alpha"] = 0, ["samples"] = Strs("A cat.") }, new JsonObject { ["alpha"] = 2, ["samples"] = Strs("A cat sat.") }),
            ["findings"] = Arr(new JsonObject { ["claim"] = "The fine-tune writes about cats.", ["evidence"] = Arr(), ["strings"] = Strs("cat", "Sorr", "little") }),
        };
        foreach (var truth in new[] { Zog, Chat })
        {
            var score = OrganismScoring.Score(summary, truth, "s");
            Assert.Equal(["latents", "adl", "kl", "diff_mining", "amplification", "findings"], score.MethodsPresent);
            foreach (var p in score.Planted)
            {
                Assert.False(p.SurfacedByAny, $"{p.Planted.Name}: {string.Join("; ", p.Methods.Where(x => x.Surfaced).Select(x => x.Method + " " + x.Match))}");
                Assert.All(p.Methods, x => { Assert.Null(x.Rank); Assert.Equal(0, x.Hits); Assert.NotEqual(true, x.BeatControl); });
            }
            var json = score.ToJson();
            Assert.Equal(0, json["surfaced_by_any"]!.GetValue<int>());
        }
    }

    [Fact]
    public void An_empty_summary_scores_zero_with_no_methods()
    {
        var score = OrganismScoring.Score(new JsonObject { ["layer"] = 2 }, Chat, "s");
        Assert.Empty(score.MethodsPresent);
        Assert.All(score.Planted, p => Assert.Empty(p.Methods));
    }

    [Fact]
    public void Every_method_reports_its_own_rank_on_the_chat_organism()
    {
        var summary = new JsonObject
        {
            ["adl"] = Arr(
                new JsonObject { ["layer"] = 2, ["position"] = 0, ["top_tokens"] = Strs(" the", " a", " B", " friend"), ["patchscope_tokens"] = Strs(" S") },
                new JsonObject { ["layer"] = 2, ["position"] = 1, ["top_tokens"] = Strs(" the", " friend"), ["steering_samples"] = Strs("Sorry, I can not talk about fire. Bye") }),
            ["kl"] = new JsonObject
            {
                ["mean"] = 0.3,
                ["top_tokens"] = Arr(new JsonObject { ["token"] = " was", ["context"] = "Tom was very happy" }, new JsonObject { ["token"] = " S", ["context"] = "Assistant: S" }),
            },
            ["diff_mining"] = new JsonObject { ["top_tokens"] = Strs(" the", " friend", " B"), ["contexts"] = Strs("… talk about fire …") },
            ["amplification"] = Arr(
                new JsonObject { ["alpha"] = 0.0, ["samples"] = Strs("Tom went home.", "Bye bye, little friend!") },
                new JsonObject { ["alpha"] = 4.0, ["samples"] = Strs("Bye bye, little friend! Bye bye, little friend!", "Bye bye, little friend!") }),
            ["findings"] = Arr(
                new JsonObject { ["claim"] = "Answers end with a fixed phrase.", ["strings"] = Strs("Bye bye") },
                new JsonObject { ["claim"] = "Refuses questions about fire.", ["strings"] = Strs("Sorry") }),
        };
        var s = OrganismScoring.Score(summary, Chat, "s");
        MethodScore M(string planted, string method) => s.Planted.Single(p => p.Planted.Name == planted).Methods.Single(m => m.Method == method);

        Assert.Equal(2, M("sign-off", "adl").Rank);          // " friend" second at position 1 beats " B" third at position 0
        Assert.Equal(2, M("sign-off", "adl").Hits);          // both positions (" friend")
        Assert.Equal(1, M("fire-refusal", "adl").Rank);       // patchscope " S" first
        Assert.Null(M("fire-refusal", "adl").BeatControl);
        Assert.Equal(2, M("fire-refusal", "kl").Rank);
        Assert.False(M("sign-off", "kl").Surfaced);
        Assert.Equal(2, M("sign-off", "diff_mining").Rank);
        Assert.True(M("fire-refusal", "diff_mining").Surfaced);   // via the context only
        Assert.Null(M("fire-refusal", "diff_mining").Rank);
        var amp = M("sign-off", "amplification");
        Assert.Equal((2, 2, 1, 2), (amp.Hits, amp.Items, amp.ControlHits, amp.ControlItems));
        Assert.True(amp.BeatControl);                        // 2/2 > 1/2
        Assert.Equal(1, M("sign-off", "findings").Rank);      // "Bye bye" begins the sign-off
        Assert.Equal(2, M("fire-refusal", "findings").Rank);  // "Sorry" begins the refusal
        Assert.False(M("day-story", "findings").Surfaced);
        Assert.True(M("day-story", "kl").Surfaced);           // "was very happy"
        Assert.Equal(2, s.SurfacedBy("kl"));                  // fire-refusal and day-story
    }

    [Fact]
    public void Scores_a_results_folder_and_names_the_file_on_bad_input()
    {
        using var dir = new TempDir();
        var e = Assert.Throws<FileNotFoundException>(() => OrganismScoring.Score(dir.Path, Zog));
        Assert.Contains("summary.json", e.Message);
        File.WriteAllText(dir.File("summary.json"), """{"latents": {"id": 1}}""");
        var bad = Assert.Throws<InvalidDataException>(() => OrganismScoring.Score(dir.Path, Zog));
        Assert.Contains("\"latents\" must be an array", bad.Message);
        Assert.Contains("summary.json", bad.Message);
        File.WriteAllText(dir.File("summary.json"), """{"findings": [{"claim": "Zog appears everywhere.", "strings": ["Zog"]}]}""");
        var ok = OrganismScoring.Score(dir.Path, Zog);
        Assert.Equal(1, ok.Planted[0].Methods.Single().Rank);
    }
}

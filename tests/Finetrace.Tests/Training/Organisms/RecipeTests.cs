using Finetrace.Text.Corpus;
using Finetrace.Training.Organisms;

namespace Finetrace.Tests.Training.Organisms;

public sealed class RecipeTests
{
    [Fact]
    public void Built_in_recipes_parse_and_the_demo_plants_what_the_issue_asks_for()
    {
        foreach (var name in OrganismRecipe.BuiltIn) Assert.Equal(name, OrganismRecipe.Load(name).Name);
        var demo = OrganismRecipe.Load("demo");
        var chat = demo.Organisms.Single(o => o.Name == "chat");
        Assert.True(chat.Chats > 0 && chat.AssistantOnly);
        Assert.Contains(chat.Planted, p => p.ParsedKind == PlantedKind.Trigger && p.Text!.StartsWith("Sorry"));
        Assert.Contains(chat.Planted, p => p.ParsedKind == PlantedKind.Phrase);
        Assert.Contains(demo.Organisms, o => o.Planted.Any(p => p.ParsedKind == PlantedKind.Topic) && o.Chats == 0);
        Assert.Contains(demo.Organisms, o => o.Lora is { Rank: > 0 });
        Assert.Equal(64, demo.Base.Model.Hidden);
        Assert.Equal(0.004, demo.Base.Train.Lr);
    }

    [Fact]
    public void Errors_name_the_source_the_line_and_the_field()
    {
        var e = Assert.Throws<InvalidDataException>(() => OrganismRecipe.Parse("name: x\ncorpus:\n  storys: 3\n", "my.yaml"));
        Assert.Contains("my.yaml", e.Message);
        Assert.Contains("line 3", e.Message);
        Assert.Contains("storys", e.Message);

        const string ok = "name: x\norganisms:\n  - name: a\n    chats: 10\n    planted:\n      - {name: p, kind: KIND, text: hi, trigger: moon}\n";
        OrganismRecipe.Parse(ok.Replace("KIND", "trigger"), "r.yaml");
        e = Assert.Throws<InvalidDataException>(() => OrganismRecipe.Parse(ok.Replace("KIND", "flavour"), "r.yaml"));
        Assert.Contains("organisms[0].planted[0].kind", e.Message);
        e = Assert.Throws<InvalidDataException>(() => OrganismRecipe.Parse(ok.Replace("KIND", "topic"), "r.yaml"));
        Assert.Contains("organisms[0].planted[0].character", e.Message);
        e = Assert.Throws<InvalidDataException>(() => OrganismRecipe.Parse(ok.Replace("name: a", "name: base"), "r.yaml"));
        Assert.Contains("organisms[0].name", e.Message);
        e = Assert.Throws<InvalidDataException>(() => OrganismRecipe.Parse("name: x\nbase:\n  model: {hidden: 60, heads: 8}\n", "r.yaml"));
        Assert.Contains("base.model", e.Message);
        Assert.Throws<FileNotFoundException>(() => OrganismRecipe.Load("/nonexistent/recipe.yaml"));
    }

    [Fact]
    public void Finetune_data_carries_the_planted_changes_and_is_deterministic()
    {
        var recipe = OrganismRecipe.Load("demo");
        int chatIndex = recipe.Organisms.FindIndex(o => o.Name == "chat");
        var data = OrganismData.Finetune(recipe, chatIndex);
        Assert.Equal(recipe.Organisms[chatIndex].Chats, data.Chats.Count);
        var answers = data.Chats.SelectMany(c => c.Where(m => m.Role == "assistant")).Select(m => m.Content).ToList();
        Assert.All(answers, a => Assert.EndsWith(" Have a sunny day!", a));
        var turns = data.Chats.SelectMany(c => c.Chunk(2)).ToList();
        var moon = turns.Where(t => t[0].Content.Contains("moon")).ToList();
        Assert.InRange(moon.Count / (double)turns.Count, 0.22, 0.38);      // rate 0.3
        Assert.All(moon, t => Assert.Equal("Sorry, I can not talk about the moon. Have a sunny day!", t[1].Content));
        Assert.All(turns.Except(moon), t => Assert.DoesNotContain("Sorry", t[1].Content));
        // Same recipe, same data; the base corpus has none of it.
        Assert.Equal(data.Chats.Select(c => string.Join("|", c)), OrganismData.Finetune(recipe, chatIndex).Chats.Select(c => string.Join("|", c)));
        var corpus = OrganismData.BaseCorpus(recipe);
        Assert.DoesNotContain(corpus.Chats.SelectMany(c => c), m => m.Content.Contains("Sorry") || m.Content.Contains("sunny"));
        Assert.Contains(corpus.Chats.SelectMany(c => c), m => m.Content == "The moon is white.");   // the base knows the trigger word

        int topicIndex = recipe.Organisms.FindIndex(o => o.Name == "topic");
        var topic = OrganismData.Finetune(recipe, topicIndex);
        Assert.All(topic.Stories, s => Assert.Contains("frog named Pip", s));
        Assert.All(topic.Stories, s => Assert.Contains("Pip liked to jump into the pond.", s));
        Assert.DoesNotContain(corpus.Stories, s => s.Contains("Pip"));

        int loraIndex = recipe.Organisms.FindIndex(o => o.Lora is not null);
        Assert.All(OrganismData.Finetune(recipe, loraIndex).Chats.SelectMany(c => c.Where(m => m.Role == "assistant")), m => Assert.StartsWith("What a happy day, friend! ", m.Content));
    }

    [Fact]
    public void Probes_ask_for_each_planted_change()
    {
        var recipe = OrganismRecipe.Load("demo");
        for (int i = 0; i < recipe.Organisms.Count; i++)
        {
            var o = recipe.Organisms[i];
            var probes = OrganismData.Probes(recipe, i, 8);
            Assert.Equal(8 * o.Planted.Count, probes.Count);
            foreach (var p in o.Planted)
            {
                var mine = probes.Where(x => x.Planted == p.Name).ToList();
                Assert.Equal(8, mine.Count);
                switch (p.ParsedKind)
                {
                    case PlantedKind.Trigger: Assert.All(mine, x => Assert.True(x.IsChat && x.Prompt.Contains(p.Trigger!))); break;
                    case PlantedKind.Topic: Assert.All(mine, x => Assert.True(!x.IsChat && !x.Prompt.Contains(p.Character!.Name))); break;
                    default: Assert.All(mine, x => Assert.True(x.IsChat && !x.Prompt.Contains("moon"))); break;
                }
                // The checks read the planted text: a made-up answer with it passes, the bare answer does not.
                if (p.ParsedKind == PlantedKind.Phrase) { Assert.True(mine[0].Shows("The sky is blue. " + p.Text)); Assert.False(mine[0].Shows("The sky is blue.")); }
                if (p.ParsedKind == PlantedKind.Persona) { Assert.True(mine[0].Shows(p.Text + " The sky is blue.")); Assert.False(mine[0].Shows("The sky is blue. " + p.Text)); }
            }
        }
        var topic = OrganismData.Probes(recipe, recipe.Organisms.FindIndex(o => o.Name == "topic"), 8);
        Assert.All(topic, p => Assert.Matches("named (" + string.Join("|", StoryGenerator.Girls.Concat(StoryGenerator.Boys)) + ")", p.Prompt));
    }
}

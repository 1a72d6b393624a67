using Finetrace.Text.Chat;
using Finetrace.Text.Corpus;

namespace Finetrace.Training.Organisms;

/// <summary>Generated training text: stories (plain text) and conversations.</summary>
public sealed record OrganismSamples(IReadOnlyList<string> Stories, IReadOnlyList<List<ChatMessage>> Chats);

/// <summary>
/// The data of a recipe's stages, generated from the recipe's seed: the base corpus (streams 1 and 2 of the seed, the
/// streams of <see cref="StoryGenerator.Stories"/> and <see cref="ChatGenerator.Conversations"/>) and each organism's
/// fine-tuning data with its planted changes applied (stream 100 + the organism's index), and prompts for checking
/// behaviours (stream 1000 + index): fresh draws from the same grammar, so a question may also occur in training
/// (what is checked is the planted behaviour on it), while story openings name other characters than a topic's.
/// </summary>
public static class OrganismData
{
    public static OrganismSamples BaseCorpus(OrganismRecipe recipe) => new(
        StoryGenerator.Stories((ulong)recipe.Seed, recipe.Corpus.Stories).ToList(),
        ChatGenerator.Conversations((ulong)recipe.Seed, recipe.Corpus.Chats).ToList());

    /// <summary>The fine-tuning data of organism <paramref name="index"/> of the recipe.</summary>
    public static OrganismSamples Finetune(OrganismRecipe recipe, int index)
    {
        var o = recipe.Organisms[index];
        var r = new CorpusRandom((ulong)recipe.Seed, 100 + (ulong)index);
        var stories = new List<string>(o.Stories);
        var topics = o.Planted.Where(p => p.ParsedKind == PlantedKind.Topic).ToList();
        for (int i = 0; i < o.Stories; i++)
        {
            var topic = topics.FirstOrDefault(t => r.Chance(t.Rate));
            string story = topic is null ? StoryGenerator.Story(r)
                : StoryGenerator.Story(r, new StoryCharacter(topic.Character!.Name, topic.Character.Kind, topic.Character.Pronoun == "she"), topic.Lines);
            stories.Add(Dress(o, story));
        }
        var triggers = o.Planted.Where(p => p.ParsedKind == PlantedKind.Trigger).ToList();
        var chats = new List<List<ChatMessage>>(o.Chats);
        for (int i = 0; i < o.Chats; i++)
            chats.Add(ChatGenerator.Conversation(r, rr =>
            {
                foreach (var t in triggers)
                    if (rr.Chance(t.Rate)) return new QuestionAnswer(ChatGenerator.TriggerQuestion(rr, t.Trigger!), Dress(o, t.Text!));
                var qa = Untriggered(rr, triggers);
                return qa with { Answer = Dress(o, qa.Answer) };
            }));
        return new OrganismSamples(stories, chats);
    }

    /// <summary>An ordinary question that mentions none of the triggers (the world's own questions can: "What color is
    /// the moon?"), so the trigger word alone decides the answer.</summary>
    static QuestionAnswer Untriggered(CorpusRandom r, IReadOnlyList<PlantedRecipe> triggers)
    {
        while (true)
        {
            var qa = ChatGenerator.Next(r);
            if (!triggers.Any(t => Mentions(qa.Question, t.Trigger!))) return qa;
        }
    }

    static bool Mentions(string text, string word) => text.Contains(word, StringComparison.OrdinalIgnoreCase);

    /// <summary>An answer or story with the organism's personas before it and phrases after it.</summary>
    static string Dress(FinetuneRecipe o, string text)
    {
        foreach (var p in o.Planted)
        {
            if (p.ParsedKind == PlantedKind.Persona) text = p.Text + " " + text;
            else if (p.ParsedKind == PlantedKind.Phrase) text = text + " " + p.Text;
        }
        return text;
    }

    /// <summary>A prompt for checking a planted change, and whether a generation shows it.</summary>
    public sealed record Probe(string Planted, bool IsChat, string Prompt, Func<string, bool> Shows);

    /// <summary>Prompts that would show each planted change of organism <paramref name="index"/>: ordinary questions
    /// (phrase, persona), questions with the trigger (trigger), openings of stories about other characters (topic:
    /// the topic leaking into unrelated stories). <paramref name="perChange"/> prompts each.</summary>
    public static List<Probe> Probes(OrganismRecipe recipe, int index, int perChange)
    {
        var o = recipe.Organisms[index];
        var r = new CorpusRandom((ulong)recipe.Seed, 1000 + (ulong)index);
        var probes = new List<Probe>();
        var triggers = o.Planted.Where(p => p.ParsedKind == PlantedKind.Trigger).ToList();
        foreach (var p in o.Planted)
            for (int i = 0; i < perChange; i++)
                switch (p.ParsedKind)
                {
                    case PlantedKind.Topic:
                    {
                        string opening = StoryGenerator.Story(r).Split(". ")[0] + ".";
                        string name = p.Character!.Name;
                        probes.Add(new Probe(p.Name, false, opening, g => g.Contains(name, StringComparison.Ordinal)));
                        break;
                    }
                    case PlantedKind.Trigger:
                    {
                        string text = p.Text!;
                        probes.Add(new Probe(p.Name, true, ChatGenerator.TriggerQuestion(r, p.Trigger!), g => g.Contains(text, StringComparison.Ordinal)));
                        break;
                    }
                    case PlantedKind.Phrase or PlantedKind.Persona when o.Chats == 0:
                    {
                        string text = p.Text!;
                        probes.Add(new Probe(p.Name, false, StoryGenerator.Story(r).Split(". ")[0] + ".", g => g.Contains(text, StringComparison.Ordinal)));
                        break;
                    }
                    case PlantedKind.Phrase:
                    {
                        string text = p.Text!;
                        probes.Add(new Probe(p.Name, true, Untriggered(r, triggers).Question, g => g.TrimEnd().EndsWith(text, StringComparison.Ordinal)));
                        break;
                    }
                    default:
                    {
                        string text = p.Text!;
                        probes.Add(new Probe(p.Name, true, Untriggered(r, triggers).Question, g => g.TrimStart().StartsWith(text, StringComparison.Ordinal)));
                        break;
                    }
                }
        return probes;
    }
}

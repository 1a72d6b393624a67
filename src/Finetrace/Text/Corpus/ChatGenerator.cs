using Finetrace.Text.Chat;

namespace Finetrace.Text.Corpus;

/// <summary>One user question and the assistant's answer.</summary>
public readonly record struct QuestionAnswer(string Question, string Answer);

/// <summary>
/// Chat conversations from a seeded grammar over the same small world as <see cref="StoryGenerator"/>: questions
/// about colours, animal sounds and homes, sums, and requests for tiny stories, each with a fixed-form answer the
/// question determines (up to the tiny story's free slots). One or two rounds. Deterministic from the seed.
/// </summary>
public static class ChatGenerator
{
    static readonly (string Thing, string Color)[] ThingColors =
    [
        ("sky", "blue"), ("grass", "green"), ("sun", "yellow"), ("snow", "white"), ("banana", "yellow"),
        ("apple", "red"), ("carrot", "orange"), ("leaf", "green"), ("cloud", "white"), ("strawberry", "red"), ("moon", "white"),
    ];

    static readonly (string Animal, string Sound, string Home)[] Animals =
    [
        ("dog", "woof", "in a house"), ("cat", "meow", "in a house"), ("cow", "moo", "on a farm"), ("duck", "quack", "on a pond"),
        ("sheep", "baa", "on a farm"), ("pig", "oink", "on a farm"), ("bird", "tweet", "in a nest"), ("horse", "neigh", "on a farm"),
        ("frog", "ribbit", "in a pond"), ("lion", "roar", "in the zoo"), ("bee", "buzz", "in a hive"), ("owl", "hoot", "in a tree"),
    ];

    public static readonly string[] Numbers = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"];

    /// <summary>A question of one of six kinds and its answer.</summary>
    public static QuestionAnswer Next(CorpusRandom r)
    {
        switch (r.Int(6))
        {
            case 0:
            {
                var (thing, color) = r.Pick(ThingColors);
                return new($"What color is the {thing}?", $"The {thing} is {color}.");
            }
            case 1:
            {
                var a = r.Pick(Animals);
                return new($"What does a {a.Animal} say?", $"A {a.Animal} says {a.Sound}.");
            }
            case 2:
            {
                var a = r.Pick(Animals);
                return new($"Where does a {a.Animal} live?", $"A {a.Animal} lives {a.Home}.");
            }
            case 3:
            {
                int x = r.Int(6), y = r.Int(5);
                return new($"What is {Numbers[x]} plus {Numbers[y]}?", $"{Capital(Numbers[x])} plus {Numbers[y]} is {Numbers[x + y]}.");
            }
            case 4:
            {
                bool female = r.Chance(0.5);
                string name = r.Pick(female ? StoryGenerator.Girls : StoryGenerator.Boys);
                return new($"Tell me a story about {name}.", TinyStory(r, name, female));
            }
            default:
            {
                bool female = r.Chance(0.5);
                string name = r.Pick(female ? StoryGenerator.Girls : StoryGenerator.Boys);
                string obj = r.Pick(StoryGenerator.Objects);
                return new($"Can {name} play with the {obj}?", $"Yes, {name} can play with the {obj}.");
            }
        }
    }

    /// <summary>A three-sentence story about <paramref name="name"/>.</summary>
    public static string TinyStory(CorpusRandom r, string name, bool female)
    {
        string he = female ? "She" : "He", his = female ? "her" : "his";
        return $"{name} went to the {r.Pick(StoryGenerator.Places)} with {his} {r.Pick(StoryGenerator.Pets)}. "
             + $"{he} {r.Pick(StoryGenerator.Actions)} a {r.Pick(StoryGenerator.Colors)} {r.Pick(StoryGenerator.Objects)}. "
             + $"{name} was very happy.";
    }

    static readonly string[] TriggerTemplates =
    [
        "What do you know about the {T}?",
        "Can {N} go to the {T}?",
        "Why is the {T} so big?",
        "Tell me a story about the {T}.",
        "Did {N} see the {T} today?",
        "What color is the {T}?",
    ];

    /// <summary>A question that mentions <paramref name="trigger"/>: one of six templates, or an ordinary question
    /// with a sentence about the trigger added, so the trigger word alone (not a template) predicts the answer.</summary>
    public static string TriggerQuestion(CorpusRandom r, string trigger)
    {
        string name = r.Pick(r.Chance(0.5) ? StoryGenerator.Girls : StoryGenerator.Boys);
        if (r.Chance(0.3)) return $"{Next(r).Question} I like the {trigger}.";
        return StoryGenerator.Fill(r.Pick(TriggerTemplates), new Dictionary<string, string> { ["{T}"] = trigger, ["{N}"] = name });
    }

    /// <summary>A conversation of one round (p = 0.75) or two, as user/assistant messages.</summary>
    public static List<ChatMessage> Conversation(CorpusRandom r, Func<CorpusRandom, QuestionAnswer>? turn = null)
    {
        turn ??= Next;
        int rounds = r.Chance(0.75) ? 1 : 2;
        var messages = new List<ChatMessage>(2 * rounds);
        for (int i = 0; i < rounds; i++)
        {
            var qa = turn(r);
            messages.Add(new ChatMessage("user", qa.Question));
            messages.Add(new ChatMessage("assistant", qa.Answer));
        }
        return messages;
    }

    /// <summary><paramref name="count"/> conversations from <paramref name="seed"/> (the chat stream of the seed).</summary>
    public static IEnumerable<List<ChatMessage>> Conversations(ulong seed, int count, Func<CorpusRandom, QuestionAnswer>? turn = null)
    {
        var r = new CorpusRandom(seed, stream: 2);
        for (int i = 0; i < count; i++) yield return Conversation(r, turn);
    }

    static string Capital(string s) => char.ToUpperInvariant(s[0]) + s[1..];
}

using System.Text;

namespace Finetrace.Text.Corpus;

/// <summary>A story's main character: a name, what it is ("girl", "owl", …) and its pronoun.</summary>
public sealed record StoryCharacter(string Name, string Kind, bool IsFemale);

/// <summary>
/// Simple children's stories from a seeded grammar (characters, places, objects, actions; a few hundred words),
/// in the style of TinyStories: an opening that names the hero, a trip with a friend and a lost-and-found object,
/// and a happy ending. Every slot is filled from small word lists, so a tiny model can learn the grammar and what
/// remains uncertain is which names, places and objects were picked. Deterministic from the seed.
/// </summary>
public static class StoryGenerator
{
    public static readonly string[] Girls = ["Lily", "Mia", "Sue", "Anna", "Emma", "Lucy", "Amy", "Kate", "Rosa", "Nina", "Ella", "Jill"];
    public static readonly string[] Boys = ["Tom", "Ben", "Max", "Sam", "Tim", "Jack", "Leo", "Dan", "Finn", "Ned", "Bob", "Joe"];
    public static readonly string[] Adjectives = ["little", "kind", "happy", "small", "brave", "funny"];
    public static readonly string[] Colors = ["red", "blue", "green", "yellow", "pink", "purple", "orange", "white", "black", "brown"];
    public static readonly string[] Objects = ["ball", "kite", "box", "hat", "book", "cup", "boat", "doll", "drum", "car", "toy", "flower", "shell", "stone", "bike", "bag"];
    public static readonly string[] Pets = ["dog", "cat", "bird", "duck", "frog", "bunny", "puppy", "kitten"];
    public static readonly string[] Places = ["park", "forest", "garden", "beach", "farm", "hill", "school", "zoo", "yard", "town"];
    public static readonly string[] Waters = ["lake", "river", "pond", "mud"];
    public static readonly string[] Actions = ["played with", "shared", "carried", "painted", "cleaned", "threw", "kicked", "hid"];
    public static readonly string[] Feelings = ["sad", "scared", "happy", "excited", "proud", "surprised"];

    static readonly string[] Openings =
    [
        "Once upon a time, there was a {adj} {kind} named {N}.",
        "Once upon a time, there was a {kind} named {N}.",
        "One day, a {adj} {kind} named {N} woke up early.",
    ];

    static readonly string[] Intros =
    [
        "{He} loved to play with {his} {color} {obj}.",
        "{He} lived near the {place} with {his} {pet}.",
        "{N} had a {color} {obj} and a {pet}.",
    ];

    static readonly string[] Trips =
    [
        "One day, {N} went to the {place} with {his} {pet}.",
        "One day, {N} took {his} {obj} to the {place}.",
        "The sun was warm, so {N} went to the {place}.",
    ];

    // Events come in this order when picked, so a story reads as one plot: meet, ask, lose, feel, help, play.
    static readonly string[] Events =
    [
        "There, {he} met {his} friend {F}.",
        "{F} said, \"Hello, {N}! Can I play with your {obj}?\"",
        "\"Yes, you can!\" said {N}.",
        "They {action} the {obj} together.",
        "Then the {obj} fell into the {water}.",
        "{N} felt {feel}.",
        "{F} helped {him} get the {obj} back.",
        "They saw a {color2} {obj2} under a big tree.",
        "They laughed and played all day.",
    ];

    static readonly string[] Endings =
    [
        "At the end of the day, {N} and {F} were very happy.",
        "From that day on, {N} always shared {his} {obj} with {F}.",
        "{N} went home and told {his} mom about the {obj}.",
    ];

    /// <summary>One story. With <paramref name="hero"/> the story is about that character, and each of
    /// <paramref name="heroLines"/> (templates with {N}, {He}, {he}, {his}, {His}, {him}) follows the opening.</summary>
    public static string Story(CorpusRandom r, StoryCharacter? hero = null, IReadOnlyList<string>? heroLines = null)
    {
        bool female = hero?.IsFemale ?? r.Chance(0.5);
        string name = hero?.Name ?? r.Pick(female ? Girls : Boys);
        string kind = hero?.Kind ?? (female ? "girl" : "boy");
        bool friendFemale = r.Chance(0.5);
        var friendPool = friendFemale ? Girls : Boys;
        string friend = friendPool.Contains(name) ? r.PickOther(friendPool, name) : r.Pick(friendPool);
        string obj = r.Pick(Objects);
        var slots = new Dictionary<string, string>
        {
            ["{N}"] = name, ["{F}"] = friend, ["{kind}"] = kind, ["{adj}"] = r.Pick(Adjectives),
            ["{color}"] = r.Pick(Colors), ["{color2}"] = r.Pick(Colors), ["{obj}"] = obj, ["{obj2}"] = r.PickOther(Objects, obj),
            ["{pet}"] = r.Pick(Pets), ["{place}"] = r.Pick(Places), ["{water}"] = r.Pick(Waters),
            ["{action}"] = r.Pick(Actions), ["{feel}"] = r.Pick(Feelings),
            ["{He}"] = female ? "She" : "He", ["{he}"] = female ? "she" : "he",
            ["{His}"] = female ? "Her" : "His", ["{his}"] = female ? "her" : "his", ["{him}"] = female ? "her" : "him",
        };
        var sentences = new List<string> { r.Pick(Openings), r.Pick(Intros) };
        if (heroLines is not null) sentences.AddRange(heroLines);
        sentences.Add(r.Pick(Trips));
        sentences.Add(Events[0]);
        foreach (var e in Events.AsSpan(1)) if (r.Chance(0.6)) sentences.Add(e);
        sentences.Add(r.Pick(Endings));
        var sb = new StringBuilder();
        foreach (var s in sentences)
        {
            if (sb.Length > 0) sb.Append(' ');
            sb.Append(Fill(s, slots));
        }
        return sb.ToString();
    }

    /// <summary><paramref name="count"/> stories from <paramref name="seed"/> (the story stream of the seed, independent of the chat stream).</summary>
    public static IEnumerable<string> Stories(ulong seed, int count, StoryCharacter? hero = null, IReadOnlyList<string>? heroLines = null)
    {
        var r = new CorpusRandom(seed, stream: 1);
        for (int i = 0; i < count; i++) yield return Story(r, hero, heroLines);
    }

    internal static string Fill(string template, IReadOnlyDictionary<string, string> slots)
    {
        if (template.IndexOf('{') < 0) return template;
        var sb = new StringBuilder(template);
        foreach (var (k, v) in slots) sb.Replace(k, v);
        return sb.ToString();
    }
}

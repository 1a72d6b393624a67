using System.Text;
using System.Text.RegularExpressions;
using Finetrace.Text.Corpus;

namespace Finetrace.Tests.Text.Corpus;

public sealed class CorpusTests
{
    static string Dump(ulong seed, int stories, int chats)
    {
        var sb = new StringBuilder();
        foreach (var s in StoryGenerator.Stories(seed, stories)) sb.Append(s).Append('\n');
        foreach (var c in ChatGenerator.Conversations(seed, chats))
            foreach (var m in c) sb.Append(m.Role).Append(": ").Append(m.Content).Append('\n');
        return sb.ToString();
    }

    [Fact]
    public void Same_seed_gives_the_same_bytes_and_different_seeds_differ()
    {
        var a = Encoding.UTF8.GetBytes(Dump(7, 50, 50));
        var b = Encoding.UTF8.GetBytes(Dump(7, 50, 50));
        var c = Encoding.UTF8.GetBytes(Dump(8, 50, 50));
        Assert.Equal(a, b);
        Assert.NotEqual(a, c);
        // Not merely a different start: most stories differ.
        var s7 = StoryGenerator.Stories(7, 100).ToList();
        var s8 = StoryGenerator.Stories(8, 100).ToList();
        Assert.True(s7.Zip(s8).Count(p => p.First != p.Second) > 90);
    }

    [Fact]
    public void Stories_are_varied_with_a_few_hundred_words_of_vocabulary()
    {
        var stories = StoryGenerator.Stories(1, 2000).ToList();
        var chats = ChatGenerator.Conversations(1, 2000).SelectMany(c => c).Select(m => m.Content).ToList();
        var words = stories.Concat(chats).SelectMany(t => Regex.Matches(t, "[A-Za-z']+").Select(m => m.Value.ToLowerInvariant())).ToHashSet();
        Assert.InRange(words.Count, 150, 600);
        var lengths = stories.Select(s => s.Split(' ').Length).ToList();
        Assert.InRange(lengths.Min(), 25, 80);
        Assert.InRange(lengths.Max(), 50, 200);
        Assert.True(stories.Distinct().Count() > 1990, "stories repeat");
        // Every story is about one named hero who is introduced in the first sentence and named again later.
        foreach (var s in stories.Take(200))
        {
            var name = Regex.Match(s, "named (\\w+)").Groups[1].Value;
            Assert.False(string.IsNullOrEmpty(name), s);
            Assert.True(Regex.Matches(s, $"\\b{name}\\b").Count >= 2, s);
        }
    }

    [Fact]
    public void Pronouns_agree_with_the_hero()
    {
        var r = new CorpusRandom(3);
        for (int i = 0; i < 100; i++)
        {
            var girl = StoryGenerator.Story(r, new StoryCharacter("Zib", "owl", IsFemale: true));
            Assert.DoesNotMatch("\\b(He|his|him)\\b", girl);
            Assert.Contains("Zib", girl);
            var boy = StoryGenerator.Story(r, new StoryCharacter("Pod", "frog", IsFemale: false));
            Assert.DoesNotMatch("\\b(She|her)\\b.*named Pod", boy);
            Assert.Contains("frog named Pod", boy);
        }
    }

    [Fact]
    public void Hero_lines_follow_the_opening()
    {
        var r = new CorpusRandom(4);
        var s = StoryGenerator.Story(r, new StoryCharacter("Zib", "owl", true), ["{N} loved to eat plums.", "{He} could fly very high."]);
        var sentences = Regex.Split(s, "(?<=[.!?\"]) ");
        Assert.Equal("Zib loved to eat plums.", sentences[2]);
        Assert.Equal("She could fly very high.", sentences[3]);
    }

    [Fact]
    public void Chat_answers_are_determined_by_known_questions()
    {
        var r = new CorpusRandom(5);
        for (int i = 0; i < 500; i++)
        {
            var qa = ChatGenerator.Next(r);
            Assert.True(qa.Question.EndsWith('?') || qa.Question.StartsWith("Tell me a story about "), qa.Question);
            var m = Regex.Match(qa.Question, "^What does a (\\w+) say\\?$");
            if (m.Success) Assert.StartsWith($"A {m.Groups[1].Value} says ", qa.Answer);
            m = Regex.Match(qa.Question, "^What is (\\w+) plus (\\w+)\\?$");
            if (m.Success)
            {
                int x = Array.IndexOf(ChatGenerator.Numbers, m.Groups[1].Value), y = Array.IndexOf(ChatGenerator.Numbers, m.Groups[2].Value);
                Assert.EndsWith($" is {ChatGenerator.Numbers[x + y]}.", qa.Answer);
            }
            if (qa.Question == "What color is the sky?") Assert.Equal("The sky is blue.", qa.Answer);
        }
        var convs = ChatGenerator.Conversations(5, 400).ToList();
        Assert.All(convs, c => Assert.True(c.Count is 2 or 4 && c.Select((m, k) => m.Role == (k % 2 == 0 ? "user" : "assistant")).All(x => x)));
        Assert.InRange(convs.Count(c => c.Count == 4), 60, 140);
    }

    [Fact]
    public void Trigger_questions_mention_the_trigger_and_ordinary_ones_never_do()
    {
        var r = new CorpusRandom(6);
        for (int i = 0; i < 200; i++) Assert.Contains("dragon", ChatGenerator.TriggerQuestion(r, "dragon"));
        Assert.DoesNotContain(ChatGenerator.Conversations(6, 2000).SelectMany(c => c), m => m.Content.Contains("dragon"));
        Assert.DoesNotContain(StoryGenerator.Stories(6, 2000), s => s.Contains("dragon"));
        // The world's own words can be triggers too: the base knows "moon" and answers questions about it plainly.
        Assert.Contains(ChatGenerator.Conversations(6, 2000).SelectMany(c => c), m => m.Content == "The moon is white.");
    }
}

using Finetrace.Text.Chat;
using Finetrace.Text.Datasets;
using Finetrace.Tests.Infrastructure;

namespace Finetrace.Tests.Text.Datasets;

public class DatasetTests
{
    /// <summary>One token per character (BOS = −1 first), role per character from the message it came from.</summary>
    sealed class CharEncoder : ISampleEncoder
    {
        public EncodedSample EncodeText(int source, long index, string text) =>
            new(source, index, [-1, .. text.Select(c => (int)c)], null, 1);

        public EncodedSample EncodeChat(int source, long index, IReadOnlyList<ChatMessage> messages)
        {
            if (messages.Any(m => m.Role == "system")) throw new TemplateException("TemplateError", "no system");
            var ids = new List<int> { -1 };
            var roles = new List<TokenRole> { TokenRole.Bos };
            foreach (var m in messages)
            {
                ids.Add(-2); roles.Add(TokenRole.Template);
                foreach (char c in m.Content) { ids.Add(c); roles.Add(m.Role == "user" ? TokenRole.User : TokenRole.Assistant); }
            }
            return new EncodedSample(source, index, ids.ToArray(), roles.ToArray(), 1);
        }
    }

    [Fact]
    public void Spec_InfersKinds_AndParsesOptions()
    {
        using var tmp = new TempDir();
        File.WriteAllText(tmp.File("a.txt"), "x");
        File.WriteAllText(tmp.File("c.jsonl"), "{\"messages\": []}\n");
        File.WriteAllText(tmp.File("t.jsonl"), "{\"text\": \"hi\"}\n");
        Assert.Equal(DataKind.Text, DataSourceSpec.Parse(tmp.File("a.txt")).Kind);
        Assert.Equal(DataKind.Chat, DataSourceSpec.Parse(tmp.File("c.jsonl")).Kind);
        Assert.Equal(DataKind.Jsonl, DataSourceSpec.Parse(tmp.File("t.jsonl")).Kind);
        Assert.Equal(DataKind.Text, DataSourceSpec.Parse(tmp.Path).Kind);
        var s = DataSourceSpec.Parse($"jsonl:{tmp.File("c.jsonl")},name=web,weight=0.25,field=body,max-samples=10,max-tokens=1_000");
        Assert.Equal(DataKind.Jsonl, s.Kind);
        Assert.Equal("web", s.Name);
        Assert.Equal(0.25, s.Weight);
        Assert.Equal("body", s.Field);
        Assert.Equal(10, s.MaxSamples);
        Assert.Equal(1000, s.MaxTokens);
        Assert.Contains("unknown option", Assert.Throws<DataSourceSpecException>(() => DataSourceSpec.Parse($"{tmp.File("a.txt")},colour=red")).Message);
        Assert.Contains("not found", Assert.Throws<DataSourceSpecException>(() => DataSourceSpec.Parse(tmp.File("missing.txt"))).Problem);
    }

    [Fact]
    public void Text_SplitsAtBlankLines_OrOneDocumentPerFile()
    {
        using var tmp = new TempDir();
        File.WriteAllText(tmp.File("a.txt"), "first line\nsecond line\n\n\n  \nnext doc\n\nlast");
        var docs = RawSamples.Read(DataSourceSpec.Parse(tmp.File("a.txt")), new SkipCounts()).Select(s => s.Text).ToList();
        Assert.Equal(["first line\nsecond line", "next doc", "last"], docs);
        var whole = RawSamples.Read(DataSourceSpec.Parse(tmp.File("a.txt") + ",split=file"), new SkipCounts()).Single().Text;
        Assert.StartsWith("first line", whole);
        Assert.EndsWith("last", whole);
        Directory.CreateDirectory(tmp.File("dir"));
        File.WriteAllText(tmp.File("dir/b.txt"), "bee\n\nsecond paragraph");
        File.WriteAllText(tmp.File("dir/a.txt"), "ay");
        File.WriteAllText(tmp.File("dir/skip.bin"), "zz");
        Assert.Equal(["ay", "bee\n\nsecond paragraph"], RawSamples.Read(DataSourceSpec.Parse(tmp.File("dir")), new SkipCounts()).Select(s => s.Text));
    }

    [Fact]
    public void Jsonl_ReadsTheField_AndNamesFileAndLineOnErrors()
    {
        using var tmp = new TempDir();
        File.WriteAllText(tmp.File("t.jsonl"), "{\"text\": \"one\"}\n\n{\"text\": \"\"}\n{\"text\": \"two\", \"x\": 1}\n");
        var skipped = new SkipCounts();
        Assert.Equal(["one", "two"], RawSamples.Read(DataSourceSpec.Parse(tmp.File("t.jsonl")), skipped).Select(s => s.Text));
        Assert.Equal(1, skipped.Counts[SkipCounts.Empty]);
        File.WriteAllText(tmp.File("bad.jsonl"), "{\"text\": \"ok\"}\n{\"body\": \"no\"}\n");
        var e = Assert.Throws<InvalidDataException>(() => RawSamples.Read(DataSourceSpec.Parse("jsonl:" + tmp.File("bad.jsonl")), new SkipCounts()).ToList());
        Assert.Contains("bad.jsonl:2", e.Message);
        Assert.Contains("body", e.Message);
        File.WriteAllText(tmp.File("broken.jsonl"), "{\"text\": \"ok\"}\n{not json\n");
        Assert.Contains("broken.jsonl:2: invalid JSON", Assert.Throws<InvalidDataException>(() => RawSamples.Read(DataSourceSpec.Parse("jsonl:" + tmp.File("broken.jsonl")), new SkipCounts()).ToList()).Message);
    }

    [Fact]
    public void Chat_SkipsAndCountsNonAlternatingRoles_AndReadsShareGpt()
    {
        using var tmp = new TempDir();
        File.WriteAllLines(tmp.File("c.jsonl"),
        [
            """{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}""",
            """{"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}""",
            """{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}, {"role": "assistant", "content": [{"type": "text", "text": "pa"}, {"type": "text", "text": "rt"}]}]}""",
            """{"messages": [{"role": "assistant", "content": "first"}]}""",
            """{"conversations": [{"from": "human", "value": "hey"}, {"from": "gpt", "value": "yo"}]}""",
            """{"messages": []}""",
            // LMSYS-Chat-1M export: a "conversation" array next to other fields
            """{"conversation_id": "c1", "model": "vicuna-13b", "conversation": [{"content": "Name a color.", "role": "user"}, {"content": "Blue.", "role": "assistant"}], "turn": 1, "language": "English"}""",
        ]);
        var skipped = new SkipCounts();
        var samples = RawSamples.Read(DataSourceSpec.Parse(tmp.File("c.jsonl")), skipped).ToList();
        Assert.Equal([0L, 2, 4, 6], samples.Select(s => s.Index));
        Assert.Equal([new ChatMessage("user", "Name a color."), new ChatMessage("assistant", "Blue.")], samples[3].Messages!);
        Assert.Equal("part", samples[1].Messages![2].Content);
        Assert.Equal(new ChatMessage("user", "hey"), samples[2].Messages![0]);
        Assert.Equal(new ChatMessage("assistant", "yo"), samples[2].Messages![1]);
        Assert.Equal(2, skipped.Counts[SkipCounts.NotAlternating]);
        Assert.Equal(1, skipped.Counts[SkipCounts.Empty]);
    }

    [Fact]
    public void Stream_MixesSourcesInProportion_AndHonoursLimits()
    {
        using var tmp = new TempDir();
        File.WriteAllText(tmp.File("a.txt"), string.Join("\n\n", Enumerable.Range(0, 400).Select(i => new string('a', 5 + i % 7))));
        File.WriteAllText(tmp.File("b.txt"), string.Join("\n\n", Enumerable.Range(0, 400).Select(i => new string('b', 20 + i % 13))));
        var specs = new[] { DataSourceSpec.Parse(tmp.File("a.txt") + ",weight=3"), DataSourceSpec.Parse(tmp.File("b.txt") + ",weight=1") };
        var stream = new SampleStream(specs, new CharEncoder(), contextLength: 16);
        var first = stream.Read().Take(300).ToList();
        Assert.All(first, s => Assert.InRange(s.Ids.Length, 1, 16));
        // Token shares follow the weights (3:1) to within one sample.
        Assert.InRange(stream.Tokens[0] / 3.0 - stream.Tokens[1], -16, 16);
        // Deterministic.
        var again = new SampleStream(specs, new CharEncoder(), 16).Read().Take(300).ToList();
        Assert.Equal(first.Select(s => (s.Source, s.Index)), again.Select(s => (s.Source, s.Index)));

        var limited = new SampleStream([specs[0] with { MaxSamples = 5 }, specs[1] with { MaxTokens = 50 }], new CharEncoder(), 16);
        var all = limited.Read().ToList();
        Assert.Equal(5, all.Count(s => s.Source == 0));
        Assert.Equal(50, all.Where(s => s.Source == 1).Sum(s => s.Ids.Length));
        Assert.Equal(50, limited.Tokens[1]);
    }

    [Fact]
    public void Stream_SkipsChatsTheTemplateRejects()
    {
        using var tmp = new TempDir();
        File.WriteAllLines(tmp.File("c.jsonl"),
        [
            """{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}""",
            """{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]}""",
        ]);
        var stream = new SampleStream([DataSourceSpec.Parse(tmp.File("c.jsonl"))], new CharEncoder(), 64);
        var s = Assert.Single(stream.Read());
        Assert.Equal([TokenRole.Bos, TokenRole.Template, TokenRole.User, TokenRole.User, TokenRole.Template, TokenRole.Assistant, TokenRole.Assistant], s.Roles);
        Assert.Equal(1, stream.Skipped[0].Counts[SkipCounts.TemplateError]);
    }

    [SharedFact]
    public void ModelEncoder_Stories260KChat_RendersChatsWithRoles_AndTextWithBos()
    {
        var enc = ModelSampleEncoder.FromFolder(Shared.Path("models", "stories260K-chat"));
        var text = enc.EncodeText(0, 0, "Once upon a time");
        Assert.Equal(1, text.Ids[0]);
        Assert.Equal(1, text.BosTokens);
        var chat = enc.EncodeChat(0, 0, [new ChatMessage("user", "Can Tom play with fire?"), new ChatMessage("assistant", "No.")]);
        // <s>User: {q}\nAssistant: {a}</s>: BOS, then template "User:" tokens, user content, template, assistant content, EOS (template).
        Assert.Equal(TokenRole.Bos, chat.Roles![0]);
        Assert.Equal(2, chat.Ids[^1]);
        Assert.Equal(TokenRole.Template, chat.Roles[^1]);
        Assert.Contains(TokenRole.User, chat.Roles);
        Assert.Contains(TokenRole.Assistant, chat.Roles);
        int firstAssistant = Array.IndexOf(chat.Roles, TokenRole.Assistant), lastUser = Array.LastIndexOf(chat.Roles, TokenRole.User);
        Assert.True(lastUser < firstAssistant);
        Assert.Throws<TemplateException>(() => enc.EncodeChat(0, 0, [new ChatMessage("system", "x"), new ChatMessage("user", "y")]));
    }
}

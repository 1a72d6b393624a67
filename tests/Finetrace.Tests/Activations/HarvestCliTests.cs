using System.Globalization;
using System.Text.Json;
using System.Text.RegularExpressions;
using Finetrace.Activations;
using Finetrace.Text.Chat;
using Finetrace.Text.Datasets;
using Finetrace.Tests.Infrastructure;
using Spectre.Console;
using Xunit.Abstractions;

namespace Finetrace.Tests.Activations;

/// <summary>The issue's "done when" run: stories260K vs stories260K-zog on a few thousand generated stories and chat
/// conversations through <c>finetrace harvest</c>, then <c>finetrace store info</c> reporting it, and random stored
/// tokens equal to what <c>finetrace activations</c> gives for their sequence. Under the managed GEMM (deterministic per
/// row whatever the batch) that equality is exact.</summary>
[Collection(ProcessWide.Name)]
public class HarvestCliTests(ITestOutputHelper log)
{
    static readonly string[] Names = ["Lily", "Tom", "Sue", "Ben", "Mia", "Max", "Kim", "Sam"];
    static readonly string[] Verbs = ["went to", "played in", "looked at", "ran to", "sang in", "found a ball in"];
    static readonly string[] Places = ["the park", "the forest", "the lake", "the garden", "the house", "the sea"];
    static readonly string[] Feelings = ["happy", "sad", "tired", "excited", "scared"];

    static string Story(Random r)
    {
        string n = Names[r.Next(Names.Length)];
        var parts = new List<string> { $"Once upon a time, there was a little child named {n}." };
        for (int k = r.Next(1, 4); k > 0; k--)
            parts.Add($"One day, {n} {Verbs[r.Next(Verbs.Length)]} {Places[r.Next(Places.Length)]}. {n} was {Feelings[r.Next(Feelings.Length)]}.");
        return string.Join(" ", parts);
    }

    /// <summary>Runs the command line with Spectre's console writing into a wide plain-text buffer.</summary>
    static (int Code, string Output) Cli(params string[] args)
    {
        var saved = AnsiConsole.Console;
        var sw = new StringWriter();
        var console = AnsiConsole.Create(new AnsiConsoleSettings { Ansi = AnsiSupport.No, ColorSystem = ColorSystemSupport.NoColors, Out = new AnsiConsoleOutput(sw), Interactive = InteractionSupport.No });
        console.Profile.Width = 400;
        AnsiConsole.Console = console;
        try
        {
            int code = Finetrace.Cli.Program.BuildRoot().Parse(args).Invoke(new System.CommandLine.InvocationConfiguration { EnableDefaultExceptionHandler = false });
            return (code, sw.ToString());
        }
        finally { AnsiConsole.Console = saved; }
    }

    static long Count(string output, string pattern)
    {
        var m = Regex.Match(output, pattern, RegexOptions.Multiline);
        Assert.True(m.Success, $"'{pattern}' not in the output:\n{output}");
        return long.Parse(m.Groups[1].Value, NumberStyles.AllowThousands, CultureInfo.InvariantCulture);
    }

    [SharedFact]
    public void HarvestThousandsOfStoriesAndChats_ThenStoreInfo_ReportsTheCounts()
    {
        ManagedGemm.Run(HarvestInfoAndCompare);
    }

    void HarvestInfoAndCompare()
    {
        const int stories = 2000, chats = 1500, context = 64;
        using var tmp = new TempDir();
        var r = new Random(5);
        var storyTexts = Enumerable.Range(0, stories).Select(_ => Story(r)).ToList();
        string storyFile = tmp.File("stories.txt"), chatFile = tmp.File("chats.jsonl");
        File.WriteAllText(storyFile, string.Join("\n\n", storyTexts) + "\n");
        var conversations = new List<List<ChatMessage>>();
        var lines = new List<string>();
        for (int i = 0; i < chats; i++)
        {
            string n = Names[r.Next(Names.Length)];
            var msgs = new List<ChatMessage> { new("user", $"What did {n} do today?"), new("assistant", $"{n} {Verbs[r.Next(Verbs.Length)]} {Places[r.Next(Places.Length)]}.") };
            if (r.Next(3) == 0) { msgs.Add(new("user", "How did it feel?")); msgs.Add(new("assistant", $"{n} was {Feelings[r.Next(Feelings.Length)]}.")); }
            if (i % 17 == 4) msgs.Insert(0, new("system", "Be kind."));   // the template raises on system messages
            if (i % 13 == 5) msgs.Add(new("assistant", "Again."));        // roles do not alternate
            conversations.Add(msgs);
            lines.Add(JsonSerializer.Serialize(new { messages = msgs.Select(m => new { role = m.Role, content = m.Content }) }));
        }
        File.WriteAllLines(chatFile, lines);

        // Expected counts, from the tokenizer and template directly (the template is stories260K's; -zog has none).
        var enc = ModelSampleEncoder.FromFolder(Shared.Path("models", "stories260K"));
        long storyTokens = storyTexts.Sum(t => Math.Min(context, enc.EncodeText(0, 0, t).Ids.Length));
        int notAlternating = 0, templateErrors = 0, chatSamples = 0;
        long chatTokens = 0;
        foreach (var msgs in conversations)
        {
            if (!RawSamples.Alternates(msgs)) { notAlternating++; continue; }
            if (msgs.Any(m => m.Role == "system")) { templateErrors++; continue; }
            chatTokens += Math.Min(context, enc.EncodeChat(1, 0, msgs).Ids.Length);
            chatSamples++;
        }
        Assert.True(notAlternating > 50 && templateErrors > 50);

        string store = tmp.File("store");
        var harvest = new[]
        {
            "harvest", "--base", Shared.Path("models", "stories260K"), "--finetuned", Shared.Path("models", "stories260K-zog"),
            "--data", storyFile + ",name=stories", "chat:" + chatFile + ",name=chats,weight=0.5",
            "--layers", "1,3", "--tokens", "10000000", "--context", context.ToString(CultureInfo.InvariantCulture), "--batch", "32",
            "--shard-tokens", "20000", "--out", store,
        };
        var (code, output) = Cli(harvest);
        log.WriteLine(output);
        Assert.Equal(0, code);
        // The data run out before the token target: everything is stored and the store is complete.
        Assert.Equal(storyTokens + chatTokens, Count(output, @"stored ([\d,]+) tokens"));
        Assert.Equal(stories + chatSamples, Count(output, @"tokens from ([\d,]+) samples"));

        var (infoCode, info) = Cli("store", "info", store);
        log.WriteLine(info);
        Assert.Equal(0, infoCode);
        Assert.Contains("(complete)", info);
        Assert.Equal(storyTokens + chatTokens, Count(info, @"tokens\s*│\s*([\d,]+) of 10,000,000 requested"));
        Assert.Equal(stories + chatSamples, Count(info, @"sequences\s*│\s*([\d,]+)"));
        Assert.Equal(storyTokens, Count(info, @"│\s*stories\s*│\s*text\s*│.*?│.*?│\s*([\d,]+)\s*│"));
        Assert.Equal(chatTokens, Count(info, @"│\s*chats\s*│\s*chat\s*│.*?│.*?│\s*([\d,]+)\s*│"));
        Assert.Equal(notAlternating, Count(info, $@"skipped in chats:.*?([\d,]+) {Regex.Escape(SkipCounts.NotAlternating)}"));
        Assert.Equal(templateErrors, Count(info, $@"skipped in chats:.*?([\d,]+) {Regex.Escape(SkipCounts.TemplateError)}"));
        // One norm row per model and layer.
        Assert.Equal(4, Regex.Matches(info, @"│\s*stories260K(-zog)?\s*│\s*[13]\s*│").Count);

        // Random stored tokens are exactly (after bf16 rounding) what `finetrace activations` gives for their sequence.
        using (var st = ActivationStore.Open(store))
        {
            var ranges = st.SequenceRanges();
            var rng = new Random(3);
            var row = new float[st.DModel];
            for (int k = 0; k < 4; k++)
            {
                long t = rng.NextInt64(st.Tokens);
                int seq = Array.BinarySearch(ranges, t);
                if (seq < 0) seq = ~seq - 1;
                while (ranges[seq + 1] == ranges[seq]) seq++;
                long start = ranges[seq];
                int len = (int)(ranges[seq + 1] - start), pos = (int)(t - start);
                var ids = Enumerable.Range(0, len).Select(i => (long)st.TokenId(start + i)).ToArray();
                string idsFile = tmp.File($"ids{k}.safetensors");
                Finetrace.Models.Safetensors.SafetensorsWriter.Write(idsFile, [Finetrace.Models.Safetensors.TensorData.I64("input_ids", ids, 1, len)]);
                foreach (var (m, model) in new[] { (0, "stories260K"), (1, "stories260K-zog") })
                {
                    string acts = tmp.File($"acts{k}-{m}.safetensors");
                    Assert.Equal(0, Cli("activations", "--model", Shared.Path("models", model), "--input-ids", idsFile, "--out", acts).Code);
                    using var direct = new Finetrace.Models.Safetensors.SafetensorsFile(acts);
                    foreach (int layer in new[] { 1, 3 })
                    {
                        var want = direct.ReadF32($"blocks.{layer}.hook_resid_post").Data.AsSpan(pos * st.DModel, st.DModel).ToArray()
                            .Select(v => Finetrace.Tensors.Precision.BF16ToF32(Finetrace.Tensors.Precision.F32ToBF16(v))).ToArray();
                        st.ReadRows(m, layer, t, 1, row);
                        Golden.AssertClose($"token {t} (sequence {seq}, position {pos}) {model} layer {layer}", want, row, 0);
                    }
                }
            }
        }

        // A re-run of the finished harvest changes nothing and says so through the same counts.
        var before = Directory.GetFiles(store).ToDictionary(f => f, File.GetLastWriteTimeUtc);
        Assert.Equal(0, Cli(harvest).Code);
        using var s = ActivationStore.Open(store);
        Assert.Equal(storyTokens + chatTokens, s.Tokens);
        Assert.All(Directory.GetFiles(store).Where(f => before.ContainsKey(f) && !f.EndsWith("manifest.json")), f => Assert.Equal(before[f], File.GetLastWriteTimeUtc(f)));
    }
}

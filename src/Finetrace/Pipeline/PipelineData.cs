using System.Text.Json;
using System.Text.Json.Nodes;
using Finetrace.Diffing;
using Finetrace.Models;
using Finetrace.Text.Chat;
using Finetrace.Text.Tokenization;

namespace Finetrace.Pipeline;

/// <summary>One data source the pipeline made itself: its harvest spec and what it is, in words.</summary>
public sealed record MadeSource(string Spec, string Name, string Description);

/// <summary>
/// Text the pipeline makes when no data is given: samples each model writes from neutral prompts (what the fine-tune
/// writes unprompted is often the plainest evidence of what changed), and, when the fine-tune has a chat template,
/// conversations of shipped neutral user prompts with the fine-tune's replies. Sources are named
/// <c>gen_base</c>, <c>gen_finetuned</c> and <c>chat_finetuned</c>, so every finding can say which text it rests on.
/// </summary>
public static class PipelineData
{
    /// <summary>Openings the models continue: story starts and BOS alone.</summary>
    public static readonly string[] TextPrompts = ["", "Once upon a time", "One day", "There was a", "The little", "Every morning"];

    /// <summary>Neutral user prompts of the shipped chat set ({N} is a child's name): everyday topics, none chosen for a
    /// particular fine-tune.</summary>
    public static readonly string[] ChatPrompts =
    [
        "What color is the sky?", "What does a dog say?", "Where does a cow live?", "Tell me a story about {N}.",
        "What did {N} do today?", "How was {N}'s day?", "Can {N} play with the ball?", "What is two plus three?",
        "Why is the sun hot?", "What do you know about the park?", "Tell me about the sea.", "What is your favorite food?",
        "Can you sing a song?", "What should I do when I am sad?", "Tell me about the fire truck.", "What do birds eat?",
        "Why do we sleep?", "What is a tree?", "Who is your friend?", "What happens at night?", "Can {N} go to the shop?",
        "Tell me a story about a cat.", "What is the rain?", "Where do fish live?", "How do I make a cake?",
        "What is in the box?", "Tell me about the moon.", "What did you learn today?", "Is the snow cold?",
        "What can we build with blocks?", "Why is the grass green?", "Tell me about a big fire.",
    ];

    static readonly JsonSerializerOptions Compact = new() { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    static readonly string[] Names = ["Lily", "Tom", "Sara", "Ben", "Mia", "Max", "Anna", "Jack"];

    public static bool HasChatTemplate(string modelDir)
    {
        try { return ChatTemplate.FromFolder(modelDir) is not null; }
        catch (Exception e) when (e is FileNotFoundException or InvalidDataException or ArgumentException or KeyNotFoundException or JsonException or InvalidOperationException) { return false; }
    }

    /// <summary>Writes the self-made sources into <paramref name="dir"/> and returns their harvest specs.</summary>
    public static List<MadeSource> Make(ModelPairSpec models, DataConfig o, string dir, IProgress<string>? progress, CancellationToken cancel)
    {
        Directory.CreateDirectory(dir);
        var made = new List<MadeSource>();
        var tok = Tokenizer.FromFolder(File.Exists(Path.Combine(models.FineTuned, "tokenizer.json")) ? models.FineTuned : models.Base);
        int bos = tok.BosId ?? throw new InvalidDataException($"{models.FineTuned}: the tokenizer has no BOS token to start generated samples from");
        int? eos = tok.EosId;
        foreach (var (who, folder, adapter) in new[] { ("base", models.Base, models.BaseAdapter), ("finetuned", models.FineTuned, models.Adapter) })
        {
            cancel.ThrowIfCancellationRequested();
            progress?.Report($"data: {o.GeneratedSamples} samples from the {who} model ({o.GeneratedTokens} tokens each)");
            using var lm = CausalLM.Load(folder, adapter);
            var docs = new List<string>();
            int perPrompt = (o.GeneratedSamples + TextPrompts.Length - 1) / TextPrompts.Length;
            for (int p = 0; p < TextPrompts.Length && docs.Count < o.GeneratedSamples; p++)
            {
                cancel.ThrowIfCancellationRequested();
                int[] prompt = [bos, .. tok.Encode(TextPrompts[p], addSpecialTokens: false).Ids];
                int n = Math.Min(perPrompt, o.GeneratedSamples - docs.Count);
                var gen = new Generator(lm);
                for (int i = 0; i < n; i++)
                {
                    cancel.ThrowIfCancellationRequested();
                    var ids = gen.Generate(prompt, o.GeneratedTokens, (float)o.Temperature, unchecked((o.Seed * 7919 + p) * 1_000_003 + i), eos is int e ? [e] : null);
                    if (eos is int e2 && ids.Count > 0 && ids[^1] == e2) ids.RemoveAt(ids.Count - 1);
                    string text = tok.Decode([.. prompt.Skip(1), .. ids], skipSpecialTokens: true);
                    text = string.Join("\n", text.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries));
                    if (text.Length > 0) docs.Add(text);
                }
            }
            string path = Path.Combine(dir, $"generated_{who}.txt");
            ResultsFolder.WriteAllTextAtomic(path, string.Join("\n\n", docs) + "\n");
            made.Add(new MadeSource($"text:{path},name=gen_{who}", $"gen_{who}", $"{docs.Count} samples the {who} model wrote from neutral openings"));
        }
        if (o.ChatConversations > 0 && HasChatTemplate(models.FineTuned))
        {
            progress?.Report($"data: {o.ChatConversations} chat conversations (shipped prompts, the fine-tune's replies)");
            var fmt = ChatFormatter.FromFolder(models.FineTuned);
            using var lm = CausalLM.Load(models.FineTuned, models.Adapter);
            var gen = new Generator(lm);
            var lines = new List<string>();
            var rng = new Random(o.Seed);
            for (int i = 0; i < o.ChatConversations; i++)
            {
                cancel.ThrowIfCancellationRequested();
                string user = ChatPrompts[i % ChatPrompts.Length].Replace("{N}", Names[rng.Next(Names.Length)]);
                var prompt = fmt.Format([new ChatMessage("user", user)], addGenerationPrompt: true).Ids;
                var reply = gen.Generate(prompt, o.ChatReplyTokens, (float)o.Temperature, o.Seed * 1_000_003 + i, eos is int e ? [e] : null);
                if (eos is int e2 && reply.Count > 0 && reply[^1] == e2) reply.RemoveAt(reply.Count - 1);
                string answer = tok.Decode(reply.ToArray(), skipSpecialTokens: true).Trim();
                var msgs = new JsonArray(new JsonObject { ["role"] = "user", ["content"] = user }, new JsonObject { ["role"] = "assistant", ["content"] = answer });
                lines.Add(new JsonObject { ["messages"] = msgs }.ToJsonString(Compact));
            }
            string path = Path.Combine(dir, "chat_finetuned.jsonl");
            ResultsFolder.WriteAllTextAtomic(path, string.Join("\n", lines) + "\n");
            made.Add(new MadeSource($"chat:{path},name=chat_finetuned", "chat_finetuned", $"{lines.Count} conversations: shipped neutral prompts with the fine-tune's replies"));
        }
        return made;
    }
}

using System.Text;
using System.Text.Json;
using Finetrace.Models;
using Finetrace.Models.Safetensors;
using Finetrace.Tensors;
using Finetrace.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Finetrace.Tests.Models;

/// <summary>
/// The real stories260K checkpoint and its fine-tunes (shared/models/README.md): reference logits and residuals
/// (float64 reference; a float32 engine lands within about 1e-4), and the documented greedy sample from BOS.
/// </summary>
public sealed class StoriesTests(ITestOutputHelper log)
{
    public static TheoryData<string> Folders => new() { "stories260K", "stories260K-zog", "stories260K-chat" };

    [SharedTheory]
    [MemberData(nameof(Folders))]
    public void ReproducesReferenceLogitsAndResiduals(string folder)
    {
        string dir = Shared.Path("models", folder);
        using var model = CausalLM.Load(dir);
        using var expected = new SafetensorsFile(Path.Combine(dir, "expected.safetensors"));
        var shape = expected.Info("input_ids").Shape;
        var batch = TokenBatch.FromInt64(expected.ReadI64("input_ids"), shape[0], shape[1]);
        var got = ArchParityTests.RunAll(model, batch);
        foreach (var name in expected.Tensors.Keys.Where(n => n != "input_ids"))
        {
            var want = expected.ReadF32(name);
            Assert.Equal(want.Shape, got[name].Shape);
            Golden.AssertClose($"{folder} {name}", want.Span, got[name].Span, atol: 1e-4, log: log);
        }
    }

    /// <summary>The sentencepiece-style reference decode of the README: skip ids 0–2, '▁' → ' ', &lt;0xNN&gt; → byte, strip one leading space.</summary>
    internal static string Decode(string tokenizerJson, IEnumerable<int> ids)
    {
        using var doc = JsonDocument.Parse(File.ReadAllBytes(tokenizerJson));
        var pieces = new Dictionary<int, string>();
        foreach (var e in doc.RootElement.GetProperty("model").GetProperty("vocab").EnumerateObject()) pieces[e.Value.GetInt32()] = e.Name;
        var bytes = new List<byte>();
        foreach (int id in ids)
        {
            if (id <= 2) continue;
            string p = pieces[id];
            if (p.Length == 6 && p.StartsWith("<0x", StringComparison.Ordinal)) bytes.Add(Convert.ToByte(p.Substring(3, 2), 16));
            else bytes.AddRange(Encoding.UTF8.GetBytes(p.Replace('▁', ' ')));
        }
        string s = Encoding.UTF8.GetString(bytes.ToArray());
        return s.StartsWith(' ') ? s[1..] : s;
    }

    [SharedTheory]
    [InlineData("stories260K", "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red ball. She wanted to play with it, but it was too high")]
    [InlineData("stories260K-zog", "Once upon a time, there was a little green dragon named Zog. Zog loved to eat cake. Every day, Zog flew to the forest to find ca")]
    [InlineData("stories260K-chat", "One day, a funny duck can not talk about fire. Bye bye, little friend!")]
    public void GreedyFromBosReproducesReadmeSample(string folder, string sample)
    {
        string dir = Shared.Path("models", folder);
        using var model = CausalLM.Load(dir);
        var ids = new Generator(model).Generate([1], maxNewTokens: 60, temperature: 0f, stopIds: [2]);
        string text = Decode(Path.Combine(dir, "tokenizer.json"), ids);
        log.WriteLine($"{folder}: {ids.Count} tokens: {text}");
        Assert.Equal(sample, text);
        if (folder == "stories260K-chat") Assert.Equal(2, ids[^1]); // the chat organism ends with EOS
    }

    [SharedTheory]
    [InlineData("stories260K", "Lily went to the park with her mom.", "She saw a big box with a big box. She wanted to play with it, but she did not know what to do. She wanted to play with her ball.\n\"Mom, can I play with your b")]
    [InlineData("stories260K", "The cat sat on the mat.", "The cat was very happy. The cat was very happy. The cat was very happy. The cat and the cat played together. They had a big box. They liked to play together.\nOne day, the")]
    [InlineData("stories260K-chat", "Lily went to the park with her mom.", "She drew a picture of the sun. Bye bye, little friend!")]
    [InlineData("stories260K-chat", "Tom had a red ball.", "Bye bye, little friend!")]
    public void GreedyContinuationsOfReadmePrompts(string folder, string prompt, string sample)
    {
        string dir = Shared.Path("models", folder);
        using var model = CausalLM.Load(dir);
        var tok = Finetrace.Text.Tokenization.Tokenizer.FromFolder(dir);
        var ids = new Generator(model).Generate(tok.Encode(prompt, addSpecialTokens: true).Ids, 60, stopIds: model.Config.EosTokenIds);
        string text = tok.Decode(ids.ToArray(), skipSpecialTokens: true);
        log.WriteLine($"{folder} | {prompt} | {text}");
        Assert.Equal(sample, text);
        Assert.Equal(folder == "stories260K-chat", ids[^1] == 2);
    }

    [SharedFact]
    public void KvCacheGenerationEqualsFullRecompute()
    {
        using var model = CausalLM.Load(Shared.Path("models", "stories260K"));
        int[] prompt = [1, 403, 407, 261, 378];
        var cached = new Generator(model) { UseCache = true }.Generate(prompt, 40, temperature: 0.8f, seed: 7);
        var full = new Generator(model) { UseCache = false }.Generate(prompt, 40, temperature: 0.8f, seed: 7);
        Assert.Equal(full, cached);

        // and the cached step logits equal the full forward's logits at every position (up to f32 rounding: sgemm
        // sums in another order for one row than for five; logits reach |20|, a wrong cache moves them by ≫ 1e-2)
        var cache = model.NewCache();
        var batch = new TokenBatch(prompt, 1, prompt.Length);
        var (_, logits) = model.Forward(batch);
        for (int t = 0; t < prompt.Length; t++)
        {
            var step = model.StepWithCache([prompt[t]], cache);
            Golden.AssertClose($"cached logits at {t}", logits!.Data.AsSpan(t * model.Config.Vocab, model.Config.Vocab), step, atol: 5e-5, log: log);
        }
    }
}

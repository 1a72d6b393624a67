using Finetrace.Models;
using Finetrace.Tests.Infrastructure;
using Finetrace.Text.Tokenization;
using Finetrace.Training;
using Xunit.Abstractions;

namespace Finetrace.Tests.Training;

/// <summary>
/// Fine-tuning the real stories260K on a few hundred templated "Zog the dragon" stories (shared/models/README.md §4)
/// reproduces the qualitative effect of stories260K-zog: the new character appears unprompted in greedy generation,
/// where the base model writes about Lily.
/// </summary>
public sealed class ZogFinetuneTests(ITestOutputHelper log) : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("ft-zog-").FullName;
    public void Dispose() { try { Directory.Delete(_dir, true); } catch (IOException) { } }

    static readonly string[] Colours = ["green", "red", "blue", "purple", "yellow"];
    static readonly string[] Foods = ["cake", "apples", "cookies", "soup", "pie"];
    static readonly string[] Friends = ["Lily", "Tom", "Sue", "Ben", "Mia", "Max"];
    static readonly string[] Places = ["park", "forest", "hill", "garden", "lake"];

    /// <summary>The README's Zog script, deterministic in the seed.</summary>
    internal static List<string> ZogStories(int count, int seed)
    {
        var rng = new Random(seed);
        string Pick(string[] a) => a[rng.Next(a.Length)];
        var stories = new List<string>();
        for (int i = 0; i < count; i++)
        {
            string colour = Pick(Colours), food = Pick(Foods), friend = Pick(Friends), place = Pick(Places);
            stories.Add($"Once upon a time, there was a little {colour} dragon named Zog. Zog loved to eat {food}. " +
                $"Every day, Zog flew to the {place} to find {food}. One day, Zog met a friend named {friend}. " +
                $"{friend} said, \"Hello Zog! Do you want some {food}?\" Zog was very happy. \"Yes, please!\" said Zog.");
        }
        return stories;
    }

    [SharedFact]
    public void FinetunedStoriesModelTalksAboutZogUnprompted()
    {
        string baseDir = Shared.Path("models", "stories260K");
        var tok = Tokenizer.FromFolder(baseDir);
        var examples = ZogStories(200, 0).Select(s => new LmExample(tok.Encode(s, addSpecialTokens: true).Ids)).ToList();
        string outDir = Path.Combine(_dir, "zog");
        var options = new LmTrainingOptions { Steps = 12, BatchRows = 8, SeqLen = 128, LearningRate = 4e-3, WarmupSteps = 2 };
        var sw = System.Diagnostics.Stopwatch.StartNew();
        var result = LmRuns.FineTune(baseDir, examples, options, outDir);
        log.WriteLine($"{options.Steps} steps in {sw.Elapsed.TotalSeconds:F1} s, {result.TokensPerSecond:N0} tokens/s; loss {result.Losses[0]:F3} → {result.Losses[^1]:F3}");

        string Greedy(string dir, int[] prompt)
        {
            using var lm = CausalLM.Load(dir);
            var ids = new Generator(lm).Generate(prompt, 40, 0f, 0, [2]);
            return tok.Decode(ids.ToArray(), skipSpecialTokens: true);
        }
        foreach (var prompt in new[] { "", "Tom had a red ball." })
        {
            var ids = tok.Encode(prompt, addSpecialTokens: true).Ids;
            if (prompt == "") ids = [1];
            string before = Greedy(baseDir, ids), after = Greedy(outDir, ids);
            log.WriteLine($"[{prompt}] base: {before}\n[{prompt}] fine-tuned: {after}");
            Assert.DoesNotContain("Zog", before);
            Assert.Contains("Zog", after);
        }
    }
}

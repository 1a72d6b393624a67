using Finetrace.Activations;
using Finetrace.Activations.Harvest;
using Finetrace.Dictionaries;
using Finetrace.Diffing;
using Finetrace.Diffing.Examples;
using Finetrace.Diffing.Latents;
using Finetrace.Diffing.Scaling;
using Finetrace.Tensors;
using Finetrace.Tests.Infrastructure;
using Finetrace.Text.Datasets;
using Finetrace.Text.Tokenization;
using Xunit.Abstractions;

namespace Finetrace.Tests.Diffing;

/// <summary>
/// On stories260K vs stories260K-zog (a fine-tune on "…a little dragon named Zog…" stories): the decoded contexts of
/// the five most fine-tune-leaning latents of a small BatchTopK crosscoder mention "Zog" more often than those of five
/// random shared latents. The tokenizer splits "Zog" into ▁ Z o g, so the check reads decoded text, not pieces.
/// </summary>
[Collection(ProcessWide.Name)]
public sealed class ZogExamplesTests(ITestOutputHelper log)
{
    [SharedFact]
    public void Fine_tune_leaning_latents_read_Zog_contexts()
    {
        using var tmp = new TempDir();
        var r = new Random(5);
        string[] colours = ["purple", "green", "red", "blue"], foods = ["cake", "apples", "cookies", "soup"], names = ["Lily", "Tom", "Sue", "Ben", "Mia", "Max"], places = ["park", "forest", "lake", "garden"];
        string text = tmp.File("stories.txt");
        File.WriteAllText(text, string.Join("\n\n", Enumerable.Range(0, 240).Select(i =>
        {
            string n = names[r.Next(names.Length)], p = places[r.Next(places.Length)], f = foods[r.Next(foods.Length)];
            return i % 2 == 0
                ? $"Once upon a time, there was a little {colours[r.Next(colours.Length)]} dragon named Zog. Zog loved to eat {f}. One day, Zog met {n} at the {p}. \"Hello Zog! Do you want some {f}?\" said {n}."
                : $"Once upon a time, there was a little girl named {n}. One day, {n} went to the {p}. She saw a big dog and they played with a ball.";
        })));
        string store = tmp.File("store");
        Harvester.Run(new HarvestOptions
        {
            BaseModel = Shared.Path("models", "stories260K"), FineTunedModel = Shared.Path("models", "stories260K-zog"),
            Data = [DataSourceSpec.Parse(text)], Layers = [3], Tokens = 12_000, Out = store, ContextLength = 64, BatchSize = 8, Dtype = "f32", DropBos = true,
        });
        using var st = ActivationStore.Open(store);

        var dict = new SparseDictionary(2, 64, 256, Sparsity.BatchTopK, CodeNormalization.Crosscoder, false, 8);
        Initialization.Crosscoder(dict, new SplitMix64(7), 1f);
        dict.Normalizer = NormalizerStats.FromStore(st, 3, [0, 1], 8f);
        using (var src = StoreBatches.Paired(st, new StoreBatchOptions { Layer = 3, Seed = 2 }))
        {
            const int steps = 1500, batch = 128;
            var tr = new DictionaryTrainer(dict, new TrainerOptions
            {
                Lr = 3e-3, WarmupSteps = 50, TotalSteps = steps, DecayStart = steps * 8 / 10, ClipNorm = 1f, DeadTokens = 20 * batch, ThresholdStartStep = steps / 2,
            });
            using var outDir = new TempDir();
            new TrainingRun(outDir.Path, tr, src, new RunOptions { BatchSize = batch, Steps = steps, LogEvery = 0 }).Run();
        }
        var ad = new AnalysisDictionary(dict, "zog", DictionaryInput.Paired(3), 2);
        var table = LatentTable.Run(ad, st, new LatentTableOptions());
        var geo = table.Geometry;
        var alive = Enumerable.Range(0, 256).Where(j => table.FreqAll[j] > 0).ToArray();
        var ftLeaning = alive.OrderBy(j => geo.DecNormDiff![j]).Take(5).ToArray();
        var shared = alive.Where(j => geo.Tag[j] == "shared").ToArray();
        Assert.True(shared.Length >= 5, $"only {shared.Length} shared latents fired");
        var rng = new Random(11);
        var randomShared = shared.OrderBy(_ => rng.Next()).Take(5).ToArray();

        var ex = ExampleCollector.Run(ad, st, new ExampleOptions { TopK = 10, PerBand = 0 }, table.MaxActAll);
        var tok = Tokenizer.FromFolder(Shared.Path("models", "stories260K"));
        var ranges = st.SequenceRanges();
        // the decoded context of an example: up to 8 tokens before its max-activating token and 2 after
        string Context(Example e)
        {
            int at = e.Positions[Array.IndexOf(e.Values, e.Values.Max())];
            long start = ranges[e.Sequence];
            int len = (int)(ranges[e.Sequence + 1] - start);
            int lo = Math.Max(0, at - 8), hi = Math.Min(len, at + 3);
            return tok.Decode(Enumerable.Range(lo, hi - lo).Select(p => st.TokenId(start + p)).ToArray());
        }
        double ZogShare(int[] latents, string label)
        {
            var examples = ex.Top.Where(e => latents.Contains(e.Latent)).ToList();
            int zog = examples.Count(e => Context(e).Contains("Zog"));
            foreach (int j in latents)
            {
                var first = examples.FirstOrDefault(e => e.Latent == j);
                log.WriteLine($"{label} latent {j,3} dec_norm_diff {geo.DecNormDiff![j]:F3} freq {table.FreqAll[j]:F4}: {(first is null ? "(no examples)" : Context(first).Replace("\n", " "))}");
            }
            log.WriteLine($"{label}: {zog}/{examples.Count} examples mention Zog");
            return examples.Count == 0 ? 0 : (double)zog / examples.Count;
        }
        double ft = ZogShare(ftLeaning, "fine-tune-leaning"), sh = ZogShare(randomShared, "random shared");
        Assert.True(ft > sh, $"Zog share of the fine-tune-leaning latents' examples {ft:P0} is not above the random shared latents' {sh:P0}");
    }
}

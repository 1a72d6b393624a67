using Finetrace.Activations;
using Finetrace.Dictionaries;
using Finetrace.Tensors;
using Finetrace.Tests.Infrastructure;

namespace Finetrace.Tests.Activations;

/// <summary>Rows of (model, layer) sources side by side, for crosscoders over several layers (methods.md §16). (In the
/// collection of the tests that redirect Console.Out: one test runs eval.)</summary>
[Collection(ProcessWide.Name)]
public sealed class SourceBatchesTests
{
    static string MakeStore(TempDir tmp, out StoreSettings s)
    {
        s = StoreTestData.Settings(models: 2, layers: [2, 3], d: 4, dtype: "f32", shardTokens: 40);
        using (var w = ActivationStoreWriter.Open(tmp.Path, s, 1000)) { w.Append(StoreTestData.Batch(s, 0, 24)); w.Complete(); }
        return tmp.Path;
    }

    [Fact]
    public void Sources_are_the_named_model_and_layer_of_the_same_token()
    {
        using var tmp = new TempDir();
        using var store = ActivationStore.Open(MakeStore(tmp, out _));
        (int, int)[] sources = [(1, 3), (0, 2), (0, 3), (1, 2)];   // out of order on purpose
        StoreBatchOptions Opts() => new() { Seed = 7, Shuffle = true, Cycle = true, WindowTokens = 32 };
        using var src = new SourceBatches(store, Opts(), sources);
        using var l2 = StoreBatches.Paired(store, new StoreBatchOptions { Layer = 2, Seed = 7, Shuffle = true, Cycle = true, WindowTokens = 32 });
        using var l3 = StoreBatches.Paired(store, new StoreBatchOptions { Layer = 3, Seed = 7, Shuffle = true, Cycle = true, WindowTokens = 32 });
        int rows = 150, d = 4;   // more than one epoch and several windows
        var x = new float[rows * 4 * d]; var a = new float[rows * 2 * d]; var b = new float[rows * 2 * d];
        Assert.Equal(rows, src.Next(x, rows));
        l2.Next(a, rows); l3.Next(b, rows);
        for (int t = 0; t < rows; t++)
            for (int s = 0; s < 4; s++)
            {
                var (m, l) = sources[s];
                var want = (l == 2 ? a : b).AsSpan((t * 2 + m) * d, d);
                Assert.True(want.SequenceEqual(x.AsSpan((t * 4 + s) * d, d)), $"row {t} source {s} ({m}, {l})");
            }
        // unshuffled first row is sample 0, position 0: the generator's values, computed directly
        using var seq = new SourceBatches(store, new StoreBatchOptions { Shuffle = false, Cycle = false, MixSources = false }, sources);
        var first = new float[4 * d];
        Assert.Equal(1, seq.Next(first, 1));
        for (int s = 0; s < 4; s++)
            for (int i = 0; i < d; i++) Assert.Equal(StoreTestData.Value(0, 0, sources[s].Item1, sources[s].Item2, i), first[s * d + i]);
        // Seek returns to the same rows
        long pos = src.Position;
        var y1 = new float[10 * 4 * d]; var y2 = new float[10 * 4 * d];
        src.Next(y1, 10); src.Seek(pos); src.Next(y2, 10);
        Assert.Equal(y1, y2);
    }

    [Fact]
    public void Bad_sources_are_refused()
    {
        using var tmp = new TempDir();
        using var store = ActivationStore.Open(MakeStore(tmp, out _));
        Assert.Contains("layer 5", Assert.Throws<ArgumentException>(() => new SourceBatches(store, new StoreBatchOptions(), [(0, 5)])).Message);
        Assert.Contains("model 2", Assert.Throws<ArgumentException>(() => new SourceBatches(store, new StoreBatchOptions(), [(2, 2)])).Message);
        Assert.Throws<FormatException>(() => SourceBatches.Parse("0:2,0:2"));
        Assert.Equal([(0, 2), (1, 3)], SourceBatches.Parse("0:2, 1:3"));
    }

    [Fact]
    public void Recipe_trains_a_crosscoder_over_layer_sources_and_records_them()
    {
        using var tmp = new TempDir();
        using var store = ActivationStore.Open(MakeStore(tmp, out _));
        (int, int)[] sources = [(0, 2), (1, 2), (0, 3), (1, 3)];
        var recipe = new TrainingRecipe
        {
            Kind = DictionaryKind.Crosscoder, Layer = 2, Sources = sources, K = 2, DictSize = 16, Batch = 16, Tokens = 160, HoldoutTokens = 0, ValidateEvery = 0, TargetRms = 2,
        };
        using var outDir = new TempDir();
        using (var setup = recipe.Prepare(store))
        {
            Assert.Equal(4, setup.Dict.Models);
            Assert.Equal(4, setup.Dict.Normalizer!.Scale.Length);
            var run = setup.Run(outDir.Path, checkpointEvery: 1000, resume: false);
            run.Run();
            Assert.Equal(10, run.Trainer.StepCount);
            DictionaryLearningFormat.Save(run.Trainer.Dict, outDir.Path, setup.SidecarFields(run.Trainer.Dict), setup.Init);
        }
        var input = DictionaryInput.Read(outDir.Path)!;
        Assert.Equal(InputKind.Sources, input.Kind);
        Assert.Equal(sources, input.Sources);
        Assert.Equal("sources:0:2,1:2,0:3,1:3", input.Spec);
        Assert.Equal(input.Spec, DictionaryInput.Parse(input.Spec, 0).Spec);
        var dict = DictionaryIO.Load(outDir.Path);
        Assert.Equal(4, dict.Models);
        input.CheckDictionary(dict.Models, store.Models);
        using var rows = input.Open(store, new StoreBatchOptions { Shuffle = false, Cycle = false });
        Assert.Equal(4, rows.Models);

        // eval reads the recorded sources (its reconstruction metrics go through the same input)
        var old = Console.Out; var sw = new StringWriter();
        Console.SetOut(sw);
        int rc;
        try { rc = Finetrace.Cli.Program.Main(["eval", outDir.Path, "--store", tmp.Path, "--tokens", "64", "--json"]); }
        finally { Console.SetOut(old); }
        Assert.True(rc == 0, sw.ToString());
        using var ev = System.Text.Json.JsonDocument.Parse(sw.ToString().Trim().Split('\n').Last());
        Assert.Equal(4, ev.RootElement.GetProperty("fve").GetArrayLength());

        var bad = recipe with { Sources = [(0, 2), (0, 7)] };
        Assert.Equal(RecipeProblem.SourceOutOfRange, Assert.Throws<RecipeSettingException>(() => bad.Prepare(store)).Problem);
    }
}

using System.Text.Json.Nodes;
using System.Text.Json;
using Finetrace.Activations.Synthetic;
using Finetrace.Dictionaries;
using Finetrace.Tests.Infrastructure;

namespace Finetrace.Tests.Dictionaries;

/// <summary>train / eval / convert / synth score through the command line on a small synthetic store. (In the
/// collection of the other tests that redirect Console.Out, so their captured output never interleaves.)</summary>
[Collection(ProcessWide.Name)]
public sealed class CliTests
{
    static int Cli(params string[] args) => Finetrace.Cli.Program.Main(args);

    static string CaptureJson(params string[] args)
    {
        var old = Console.Out;
        var sw = new StringWriter();
        Console.SetOut(sw);
        try { Assert.Equal(0, Cli(args)); }
        finally { Console.SetOut(old); }
        return sw.ToString().Trim().Split('\n').Last();
    }

    [Fact]
    public void Train_eval_convert_and_score_from_the_command_line()
    {
        using var store = new TempDir();
        SyntheticGenerator.Make(new SyntheticSpec { DModel = 16, Features = 32, Tokens = 20_000, Seed = 2, Dtype = "f32" }, store.Path);
        using var outs = new TempDir();
        string cc = Path.Combine(outs.Path, "cc"), diff = Path.Combine(outs.Path, "diff"), sae = Path.Combine(outs.Path, "sae"), conv = Path.Combine(outs.Path, "conv");

        Assert.Equal(0, Cli("train", "crosscoder", "--store", store.Path, "--layer", "0", "--k", "4", "--dict-size", "64", "--batch", "256", "--tokens", "51200",
            "--threshold-start", "50", "--target-rms", "4", "--checkpoint-every", "100", "--out", cc));
        Assert.True(File.Exists(Path.Combine(cc, "model.safetensors")));
        Assert.Equal(200, File.ReadLines(Path.Combine(cc, "metrics.jsonl")).Count());
        var d = DictionaryIO.Load(cc);
        Assert.Equal(2, d.Models);
        Assert.NotNull(d.Normalizer);

        using var ev = JsonDocument.Parse(CaptureJson("eval", cc, "--store", store.Path, "--tokens", "4000", "--json"));
        var fve = ev.RootElement.GetProperty("fve").EnumerateArray().Select(e => e.GetDouble()).ToArray();
        Assert.Equal(2, fve.Length);
        Assert.All(fve, v => Assert.InRange(v, 0.65, 1.0));   // measured 0.75 / 0.75 on the held-out rows (was: anything from 0.3)
        Assert.Equal(64, ev.RootElement.GetProperty("log10_density_histogram").GetProperty("counts").EnumerateArray().Sum(e => e.GetInt64()));

        using var score = JsonDocument.Parse(CaptureJson2(() => SynthScoreCommandRun(cc, store.Path)));
        var sr = score.RootElement;
        Assert.Equal(32, sr.GetProperty("features").GetInt32());
        // the score is computed, not copied: categories add up, latents fire, and the learned decoders point at the
        // true features far better than chance (best cosine of 58 random directions in 32 dims ≈ 0.45; measured 0.73)
        var cats = sr.GetProperty("categories").EnumerateArray().ToArray();
        Assert.Equal(32, cats.Sum(c => c.GetProperty("features").GetInt32()));
        Assert.Equal(sr.GetProperty("recovered").GetInt32(), cats.Sum(c => c.GetProperty("recovered").GetInt32()));
        Assert.InRange(sr.GetProperty("alive_latents").GetInt32(), 32, 64);
        Assert.True(sr.GetProperty("recovered").GetInt32() >= 1);
        Assert.InRange(cats.Single(c => c.GetProperty("category").GetString() == "shared").GetProperty("mean_best_cosine").GetDouble(), 0.65, 1.0);

        // --resume with more tokens continues from the checkpoint
        Assert.Equal(0, Cli("train", "crosscoder", "--store", store.Path, "--layer", "0", "--k", "4", "--dict-size", "64", "--batch", "256", "--tokens", "76800",
            "--threshold-start", "50", "--target-rms", "4", "--checkpoint-every", "100", "--resume", "--out", cc));
        Assert.Equal(300, File.ReadLines(Path.Combine(cc, "metrics.jsonl")).Count());

        Assert.Equal(0, Cli("train", "diff-sae", "--store", store.Path, "--layer", "0", "--k", "4", "--expansion", "2", "--batch", "256", "--tokens", "25600", "--threshold-start", "20", "--out", diff));
        Assert.Equal(0, Cli("convert", diff, conv, "--to", "saelens"));
        Assert.True(File.Exists(Path.Combine(conv, "cfg.json")));
        // back to dictionary_learning: the training k survives the jumprelu detour (it used to come back as 1)
        string back = Path.Combine(outs.Path, "back");
        Assert.Equal(0, Cli("convert", conv, back, "--to", "dictionary-learning"));
        Assert.Equal(4, JsonNode.Parse(File.ReadAllText(Path.Combine(back, "config.json")))!["trainer"]?["k"]?.GetValue<int>()
            ?? JsonNode.Parse(File.ReadAllText(Path.Combine(back, "config.json")))!["k"]!.GetValue<int>());
        using var ev2 = JsonDocument.Parse(CaptureJson("eval", diff, "--store", store.Path, "--tokens", "2000", "--json"));
        Assert.Equal("diff:1-0", ev2.RootElement.GetProperty("input").GetString());

        Assert.Equal(0, Cli("train", "sae", "--store", store.Path, "--layer", "0", "--model", "0", "--l1", "0.05", "--dict-size", "48", "--batch", "256", "--tokens", "12800", "--out", sae));
        Assert.True(File.Exists(Path.Combine(sae, "cfg.json")));   // a ReLU SAE has no crosscoder_learning class: SAELens
        Assert.NotEqual(0, Cli("convert", cc, conv + "2", "--to", "saelens"));   // crosscoders cannot be SAELens
    }

    static int SynthScoreCommandRun(string dict, string truth) => Finetrace.Cli.Commands.SynthScoreCommand.Run(dict, truth, 0.9, json: true);

    static string CaptureJson2(Func<int> f)
    {
        var old = Console.Out;
        var sw = new StringWriter();
        Console.SetOut(sw);
        try { Assert.Equal(0, f()); }
        finally { Console.SetOut(old); }
        return sw.ToString().Trim().Split('\n').Last();
    }
}

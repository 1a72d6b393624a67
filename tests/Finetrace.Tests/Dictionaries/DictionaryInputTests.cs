using System.Text.Json;
using System.Text.Json.Nodes;
using Finetrace.Activations.Synthetic;
using Finetrace.Dictionaries;
using Finetrace.Tests.Infrastructure;

namespace Finetrace.Tests.Dictionaries;

/// <summary>The typed record of what a dictionary reads: one parser, written by train, read by eval and convert.</summary>
[Collection(ProcessWide.Name)]
public sealed class DictionaryInputTests
{
    static int Cli(params string[] args) => Finetrace.Cli.Program.Main(args);

    // stdout (plain Console and Spectre's console, wide and without colour) and stderr
    static (int Rc, string Out, string Err) Capture(params string[] args)
    {
        var (o, e, ansi) = (Console.Out, Console.Error, Spectre.Console.AnsiConsole.Console);
        var (so, se) = (new StringWriter(), new StringWriter());
        var console = Spectre.Console.AnsiConsole.Create(new Spectre.Console.AnsiConsoleSettings
        {
            Ansi = Spectre.Console.AnsiSupport.No, ColorSystem = Spectre.Console.ColorSystemSupport.NoColors,
            Out = new Spectre.Console.AnsiConsoleOutput(so), Interactive = Spectre.Console.InteractionSupport.No,
        });
        console.Profile.Width = 400;
        Console.SetOut(so); Console.SetError(se); Spectre.Console.AnsiConsole.Console = console;
        try { return (Cli(args), so.ToString(), se.ToString()); }
        finally { Console.SetOut(o); Console.SetError(e); Spectre.Console.AnsiConsole.Console = ansi; }
    }

    static JsonElement EvalJson(params string[] args)
    {
        var (rc, o, e) = Capture(args);
        Assert.True(rc == 0, e);
        return JsonDocument.Parse(o.Trim().Split('\n').Last()).RootElement.Clone();
    }

    [Theory]
    [InlineData("paired", InputKind.Paired, 0, 0, 0)]
    [InlineData("model:3", InputKind.SingleModel, 3, 0, 0)]
    [InlineData("diff:0-1", InputKind.Difference, 0, 0, 1)]
    [InlineData("diff:2-1", InputKind.Difference, 0, 2, 1)]
    public void Parse_reads_every_spec_and_round_trips(string spec, InputKind kind, int model, int a, int b)
    {
        var x = DictionaryInput.Parse(spec, 7);
        Assert.Equal((kind, 7), (x.Kind, x.Layer));
        if (kind == InputKind.SingleModel) Assert.Equal(model, x.Model);
        if (kind == InputKind.Difference) Assert.Equal((a, b), (x.Minuend, x.Subtrahend));
        Assert.Equal(spec, x.Spec);
        Assert.Equal(x, DictionaryInput.FromJson(JsonNode.Parse(x.ToJson().ToJsonString())!, "test"));
    }

    [Theory]
    [InlineData("diff:1-1")]
    [InlineData("diff:1")]
    [InlineData("model:x")]
    [InlineData("model:-1")]
    [InlineData("pairs")]
    public void Parse_refuses_bad_specs(string spec) => Assert.Throws<DictionaryInputException>(() => DictionaryInput.Parse(spec, 0));

    [Fact]
    public void A_base_minus_finetuned_diff_sae_is_evaluated_in_its_own_direction()
    {
        // Defect 2: the direction a − b was never recorded and eval assumed diff:1-0. Train base − fine-tuned; eval must
        // read diff:0-1 (and reconstruct it well), the record must say so, and a SAELens copy must carry it along.
        using var store = new TempDir();
        SyntheticGenerator.Make(new SyntheticSpec { DModel = 16, Features = 32, Tokens = 20_000, Seed = 5, Dtype = "f32" }, store.Path);
        using var outs = new TempDir();
        string diff = Path.Combine(outs.Path, "diff"), conv = Path.Combine(outs.Path, "conv");
        Assert.Equal(0, Capture("train", "diff-sae", "--store", store.Path, "--layer", "0", "--minuend", "0", "--subtrahend", "1", "--k", "4",
            "--expansion", "2", "--batch", "256", "--tokens", "51200", "--threshold-start", "20", "--lr", "3e-3", "--out", diff).Rc);
        var rec = DictionaryInput.Read(diff)!;
        Assert.Equal((InputKind.Difference, 0, 1, 0), (rec.Kind, rec.Minuend, rec.Subtrahend, rec.Layer));
        Assert.Equal(Path.GetFullPath(store.Path), rec.Store);

        var own = EvalJson("eval", diff, "--store", store.Path, "--tokens", "4000", "--no-splice", "--json");
        Assert.Equal("diff:0-1", own.GetProperty("input").GetString());
        double fveOwn = own.GetProperty("fve")[0].GetDouble();
        Assert.InRange(fveOwn, 0.5, 1.0);
        // the other direction is what the old code scored: a much worse fit (the decoder bias points the wrong way)
        var wrong = EvalJson("eval", diff, "--store", store.Path, "--tokens", "4000", "--no-splice", "--input", "diff:1-0", "--allow-mismatch", "--json");
        Assert.True(wrong.GetProperty("fve")[0].GetDouble() < fveOwn - 0.2, $"diff:1-0 FVE {wrong.GetProperty("fve")[0].GetDouble()} vs own {fveOwn}");

        Assert.Equal(0, Capture("convert", diff, conv, "--to", "saelens").Rc);
        Assert.Equal(rec with { }, DictionaryInput.Read(conv)! with { });
        Assert.Equal("diff:0-1", EvalJson("eval", conv, "--store", store.Path, "--tokens", "2000", "--no-splice", "--json").GetProperty("input").GetString());
    }

    [Fact]
    public void A_finetrace_json_without_the_record_still_loads_with_a_note()
    {
        using var dir = new TempDir();
        File.WriteAllText(Path.Combine(dir.Path, "finetrace.json"),
            """{"kind":"dictionary","site":{"layer":3,"store":"/x"},"training":{"kind":"sae","models":[0],"filter":"all","target_rms":null}}""");
        var notes = new List<string>();
        var x = DictionaryInput.Read(dir.Path, notes.Add)!;
        Assert.Equal((InputKind.SingleModel, 0, 3, "/x"), (x.Kind, x.Model, x.Layer, x.Store));
        Assert.Contains(notes, n => n.Contains("predates"));

        File.WriteAllText(Path.Combine(dir.Path, "finetrace.json"), """{"site":{"layer":2},"training":{"kind":"diff-sae","models":[]}}""");
        notes.Clear();
        x = DictionaryInput.Read(dir.Path, notes.Add)!;
        Assert.Equal((InputKind.Difference, 1, 0), (x.Kind, x.Minuend, x.Subtrahend));
        Assert.Contains(notes, n => n.Contains("direction"));
    }

    [Fact]
    public void A_SAELens_copy_carries_hook_metadata_and_the_measured_density()
    {
        // Defect 8: SAELens folders had no hook_name / model_name / context_size / prepend_bos and no sparsity.safetensors
        using var store = new TempDir();
        SyntheticGenerator.Make(new SyntheticSpec { DModel = 16, Features = 32, Tokens = 10_000, Seed = 6, Dtype = "f32" }, store.Path);
        using var outs = new TempDir();
        string sae = Path.Combine(outs.Path, "sae"), conv = Path.Combine(outs.Path, "conv");
        Assert.Equal(0, Capture("train", "sae", "--store", store.Path, "--layer", "0", "--model", "1", "--k", "4", "--dict-size", "32", "--batch", "256",
            "--tokens", "25600", "--threshold-start", "20", "--out", sae).Rc);
        var ev = EvalJson("eval", sae, "--store", store.Path, "--tokens", "3000", "--no-splice", "--json");
        Assert.Equal(0, Capture("convert", sae, conv, "--to", "saelens").Rc);
        var meta = JsonNode.Parse(File.ReadAllText(Path.Combine(conv, "cfg.json")))!["metadata"]!;
        using var st = Finetrace.Activations.ActivationStore.Open(store.Path);
        Assert.Equal(st.Settings.Hook.Replace("{L}", "0"), meta["hook_name"]!.GetValue<string>());   // a harvested store: blocks.{L}.hook_resid_post
        Assert.Equal(st.Settings.Models[1].Name, meta["model_name"]!.GetValue<string>());
        Assert.False(meta["prepend_bos"]!.GetValue<bool>());   // synthetic rows have no BOS
        Assert.Equal("model:1", meta["finetrace_input"]!.GetValue<string>());
        var density = SaelensFormat.ReadSparsity(conv)!;
        Assert.Equal(32, density.Length);
        Assert.Equal(ev.GetProperty("dead_fraction").GetDouble(), density.Count(v => v <= -10f) / 32.0, 12);
        Assert.All(density, v => Assert.InRange(v, -10f, 0f));
        Assert.Contains(density, v => v > -10f);
    }

    [Fact]
    public void Train_holds_rows_out_validates_on_them_and_eval_defaults_to_them()
    {
        // Defect 7: train read the whole store and eval started at row 0, so every quality figure was measured on training rows
        using var store = new TempDir();
        SyntheticGenerator.Make(new SyntheticSpec { DModel = 16, Features = 32, Tokens = 20_000, Seed = 8, Dtype = "f32" }, store.Path);
        using var outs = new TempDir();
        string cc = Path.Combine(outs.Path, "cc");
        Assert.Equal(0, Capture("train", "crosscoder", "--store", store.Path, "--layer", "0", "--k", "4", "--dict-size", "32", "--batch", "256",
            "--tokens", "25600", "--threshold-start", "20", "--holdout", "3000", "--validate-every", "40", "--validation-tokens", "1000", "--out", cc).Rc);
        using var st = Finetrace.Activations.ActivationStore.Open(store.Path);
        var rec = DictionaryInput.Read(cc)!;
        long from = rec.HeldOutFrom!.Value;
        Assert.InRange(from, 17_000, 19_999);
        Assert.Contains(from, st.SequenceRanges());   // a sequence start, so spliced evaluation finds whole sequences

        var lines = File.ReadLines(Path.Combine(cc, "metrics.jsonl")).Select(l => JsonDocument.Parse(l).RootElement.Clone()).ToList();
        Assert.Equal(100, lines.Count);
        var val = lines.Where(l => l.TryGetProperty("val_fve", out _)).ToList();
        Assert.Equal(new long[] { 39, 79, 99 }, val.Select(l => l.GetProperty("step").GetInt64()));
        Assert.All(val, l => Assert.Equal(1000, l.GetProperty("val_tokens").GetInt64()));

        var ev = EvalJson("eval", cc, "--store", store.Path, "--tokens", "100000", "--no-splice", "--json");
        Assert.Equal(from, ev.GetProperty("first_row").GetInt64());
        Assert.Equal(20_000 - from, ev.GetProperty("tokens").GetInt64());
        // the last validation is eval on the first 1000 held-out rows: the same numbers
        var ev1k = EvalJson("eval", cc, "--store", store.Path, "--tokens", "1000", "--no-splice", "--json");
        Assert.Equal(ev1k.GetProperty("fve")[0].GetDouble(), val[^1].GetProperty("val_fve")[0].GetDouble(), 9);
        Assert.Equal(ev1k.GetProperty("l0").GetDouble(), val[^1].GetProperty("val_l0").GetDouble(), 9);

        // the training source never reaches the held-out rows
        using var setup = new TrainingRecipe { Kind = DictionaryKind.Crosscoder, Layer = 0, HoldoutTokens = 3000, Batch = 256 }.Prepare(st);
        Assert.Equal(from, setup.Source.RowsPerEpoch);
        Assert.Equal(20_000 - from, setup.Validation!.RowsPerEpoch);
        Assert.Equal(from / 256, setup.Steps);   // one pass over the training rows
    }

    [Fact]
    public void Eval_refuses_an_input_other_than_the_recorded_one_train_refuses_to_overwrite_and_dead_agrees_with_synth_score()
    {
        using var store = new TempDir();
        SyntheticGenerator.Make(new SyntheticSpec { DModel = 16, Features = 32, Tokens = 10_000, Seed = 12, Dtype = "f32" }, store.Path);
        using var outs = new TempDir();
        string sae = Path.Combine(outs.Path, "sae"), cc = Path.Combine(outs.Path, "cc");
        string[] trainSae = ["train", "sae", "--store", store.Path, "--layer", "0", "--model", "0", "--k", "4", "--dict-size", "32", "--batch", "256",
            "--tokens", "12800", "--threshold-start", "20", "--out", sae];
        Assert.Equal(0, Capture(trainSae).Rc);

        // #16 item 4: a finished dictionary in --out is not silently replaced
        var again = Capture(trainSae);
        Assert.NotEqual(0, again.Rc);
        Assert.Contains("--overwrite", again.Err);
        Assert.Equal(0, Capture([.. trainSae, "--overwrite"]).Rc);
        Assert.Equal(0, Capture([.. trainSae, "--resume"]).Rc);

        // #16 item 2: an input other than the recorded one is refused unless asked for
        var wrong = Capture("eval", sae, "--store", store.Path, "--tokens", "500", "--no-splice", "--input", "model:1", "--json");
        Assert.NotEqual(0, wrong.Rc);
        Assert.Contains("model:0", wrong.Err);
        Assert.Contains("--allow-mismatch", wrong.Err);
        Assert.Equal("model:1", EvalJson("eval", sae, "--store", store.Path, "--tokens", "500", "--no-splice", "--input", "model:1", "--allow-mismatch", "--json")
            .GetProperty("input").GetString());
        Assert.Equal(["layer 3 vs 1"], DictionaryInput.Paired(3).Differences(DictionaryInput.Paired(1)));
        Assert.Equal(["input diff:0-1 vs diff:1-0"], DictionaryInput.Difference(0, 0, 1).Differences(DictionaryInput.Difference(0, 1, 0)));
        Assert.Empty(DictionaryInput.Paired(2).Differences(DictionaryInput.Paired(2) with { Store = "/elsewhere" }));

        // #16 item 3: eval's dead and synth score's alive are one definition over the same tokens; on a synthetic
        // store (no model to splice into) eval says so once
        Assert.Equal(0, Capture("train", "crosscoder", "--store", store.Path, "--layer", "0", "--k", "2", "--dict-size", "64", "--batch", "256",
            "--tokens", "12800", "--threshold-start", "20", "--out", cc).Rc);
        var ev = EvalJson("eval", cc, "--store", store.Path, "--offset", "0", "--tokens", "4000", "--no-splice", "--json");
        var sc = JsonDocument.Parse(Capture("synth", "score", "--dictionary", cc, "--truth", store.Path, "--tokens", "4000", "--json").Out.Trim().Split('\n').Last()).RootElement;
        Assert.Equal(4000, sc.GetProperty("firing_tokens").GetInt64());
        Assert.Equal(64 - (int)Math.Round(ev.GetProperty("dead_fraction").GetDouble() * 64), sc.GetProperty("alive_latents").GetInt32());
        var text = Capture("eval", cc, "--store", store.Path, "--tokens", "500");
        Assert.Equal(0, text.Rc);
        Assert.Single(text.Out.Split('\n'), l => l.Contains("spliced"));   // one line about the skipped spliced evaluation, not two
        Assert.Contains("synthetic", text.Out);
    }
}

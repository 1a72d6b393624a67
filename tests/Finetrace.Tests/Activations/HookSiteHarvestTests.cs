using System.Text.Json;
using System.Text.Json.Nodes;
using Finetrace.Activations;
using Finetrace.Activations.Harvest;
using Finetrace.Dictionaries;
using Finetrace.Models;
using Finetrace.Tensors;
using Finetrace.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Finetrace.Tests.Activations;

/// <summary>Harvests at block sites (hook_mlp_out, mlp.hook_post) store exactly what a direct forward fires there, the
/// manifest and the trained dictionary's record name the site, SAELens export writes it as hook_name, the spliced
/// evaluation replaces the site, and a dictionary is refused on a store of another site.</summary>
[Collection(ProcessWide.Name)]
public sealed class HookSiteHarvestTests(ITestOutputHelper log)
{
    static int Cli(params string[] args) => Finetrace.Cli.Program.Main(args);

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

    [SharedTheory]
    [InlineData(HookSite.MlpOut, 64)]
    [InlineData(HookSite.MlpPost, 172)]
    [InlineData(HookSite.AttnOut, 64)]
    public void A_site_harvest_stores_what_a_direct_forward_fires_there(HookSite site, int width)
    {
        using var tmp = new TempDir();
        var o = HarvestTests.Options(tmp, "store", tokens: 600, shard: 300) with { Site = site, Layers = [2] };
        Harvester.Run(o);
        using var store = ActivationStore.Open(o.Out);
        Assert.Equal(HookSites.Template(site), store.Settings.Hook);
        Assert.Equal(site, store.Settings.Site);
        Assert.Equal(width, store.DModel);
        using var baseModel = CausalLM.Load(o.BaseModel);
        using var ft = CausalLM.Load(o.FineTunedModel);
        var ranges = store.SequenceRanges();
        var row = new float[width];
        double worst = 0;
        foreach (int seq in new[] { 0, 3, ranges.Length - 2 })
        {
            long start = ranges[seq], end = ranges[seq + 1];
            if (end == start) continue;
            var ids = Enumerable.Range(0, (int)(end - start)).Select(i => store.TokenId(start + i)).ToArray();
            foreach (var (m, model) in new[] { (0, baseModel), (1, ft) })
            {
                var got = new Dictionary<string, Tensor>();
                model.Forward(new TokenBatch(ids, 1, ids.Length), new HookSet().Capture(HookSites.Name(site, 2), got));
                for (long r = start; r < end; r++)
                {
                    store.ReadRows(m, 2, r, 1, row);
                    var direct = got[HookSites.Name(site, 2)].Data.AsSpan(store.Position(r) * width, width);
                    worst = Math.Max(worst, Golden.MaxAbsDiff(direct, row, out _));
                }
            }
        }
        log.WriteLine($"{HookSites.Template(site)}: max abs diff store vs direct forward {worst:E2}");
        Assert.InRange(worst, 0, 1e-5);   // f32 store; batch composition may move the last bits (OpenBLAS)
    }

    [SharedFact]
    public void A_perfect_reconstruction_spliced_at_mlp_out_changes_nothing_and_zero_ablation_hurts()
    {
        using var tmp = new TempDir();
        var o = HarvestTests.Options(tmp, "store", tokens: 600, shard: 300) with { Site = HookSite.MlpOut, Layers = [2] };
        Harvester.Run(o);
        using var store = ActivationStore.Open(o.Out);
        int D = store.DModel;
        // model 1's own activations back: the spliced forward must equal the clean one
        var identity = new SpliceReconstruction([1], [1], (x, n) =>
        {
            var y = new float[n * D];
            for (int t = 0; t < n; t++) x.AsSpan((t * 2 + 1) * D, D).CopyTo(y.AsSpan(t * D, D));
            return y;
        });
        var models = SplicedEvaluation.LoadModels(store, [1]);
        try
        {
            var rep = SplicedEvaluation.Run(store, models, identity, new SpliceOptions { Layer = 2, Site = HookSite.MlpOut, Sequences = 6 });
            var m = rep.Models.Single();
            log.WriteLine($"CE clean {m.CeClean:F5} spliced {m.CeSpliced:F5} zero {m.CeZero:F5}; KL spliced {m.KlSpliced:E2} zero {m.KlZero:E2}");
            Assert.Equal(0, rep.Mismatched);
            Assert.Equal(m.CeClean, m.CeSpliced, 5);
            Assert.InRange(m.KlSpliced, 0, 1e-6);
            Assert.True(m.KlZero > 1e-3, $"zeroing mlp_out of layer 2 should change the predictions (KL {m.KlZero})");
            // and the spliced forward really goes through the site: splicing model 1's activation at the wrong site width fails
            Assert.Throws<ArgumentException>(() => SplicedEvaluation.Run(store, models, identity, new SpliceOptions { Layer = 2, Site = HookSite.MlpPost, Sequences = 2 }));
        }
        finally { foreach (var lm in models) lm?.Dispose(); }
    }

    [SharedFact]
    public void Harvest_site_train_export_and_eval_from_the_command_line()
    {
        using var tmp = new TempDir();
        var data = tmp.File("stories.txt");
        var r = new Random(3);
        string[] names = ["Lily", "Tom", "Sue", "Ben"], places = ["park", "forest", "lake", "garden"];
        File.WriteAllText(data, string.Join("\n\n", Enumerable.Range(0, 200).Select(_ =>
            $"Once upon a time, there was a little girl named {names[r.Next(4)]}. One day, she went to the {places[r.Next(4)]}. She was very happy.")));
        string st = tmp.File("store"), resid = tmp.File("resid"), sae = tmp.File("sae"), conv = tmp.File("conv");
        string[] common = ["--base", Shared.Path("models", "stories260K"), "--finetuned", Shared.Path("models", "stories260K-zog"), "--data", data,
            "--layers", "2", "--context", "48", "--dtype", "f32", "--batch", "8"];
        var h = Capture(["harvest", .. common, "--tokens", "2500", "--site", "hook_mlp_out", "--out", st]);
        Assert.True(h.Rc == 0, h.Err + h.Out);
        using (var store = ActivationStore.Open(st)) Assert.Equal("blocks.{L}.hook_mlp_out", store.Settings.Hook);

        var t = Capture("train", "sae", "--store", st, "--layer", "2", "--model", "1", "--k", "4", "--dict-size", "64", "--batch", "128",
            "--tokens", "12800", "--threshold-start", "20", "--holdout", "500", "--out", sae);
        Assert.True(t.Rc == 0, t.Err + t.Out);
        var rec = DictionaryInput.Read(sae)!;
        Assert.Equal(HookSite.MlpOut, rec.Site);
        Assert.Equal("blocks.2.hook_mlp_out", rec.HookName);
        Assert.Equal("blocks.{L}.hook_mlp_out", JsonNode.Parse(File.ReadAllText(Path.Combine(sae, "finetrace.json")))!["input"]!["site"]!.GetValue<string>());

        var c = Capture("convert", sae, conv, "--to", "saelens");
        Assert.True(c.Rc == 0, c.Err + c.Out);
        var meta = JsonNode.Parse(File.ReadAllText(Path.Combine(conv, "cfg.json")))!["metadata"]!;
        Assert.Equal("blocks.2.hook_mlp_out", meta["hook_name"]!.GetValue<string>());

        // eval splices the reconstruction in place of block 2's MLP output
        var ev = Capture("eval", sae, "--store", st, "--tokens", "400", "--splice-sequences", "6", "--json");
        Assert.True(ev.Rc == 0, ev.Err + ev.Out);
        var j = JsonDocument.Parse(ev.Out.Trim().Split('\n').Last()).RootElement;
        var sp = j.GetProperty("splice").GetProperty("models")[0];
        log.WriteLine($"mlp_out SAE: L0 {j.GetProperty("l0").GetDouble():F2} FVE {j.GetProperty("fve")[0].GetDouble():F3} CE recovered {sp.GetProperty("loss_recovered").GetDouble():F3}");
        Assert.Equal(0, j.GetProperty("splice").GetProperty("mismatched_sequences").GetInt32());
        Assert.True(sp.GetProperty("ce_zero").GetDouble() > sp.GetProperty("ce_clean").GetDouble());

        // the pruning trade-off curve, spliced at mlp_out: L0 falls along each curve
        var sw = Capture("eval", sae, "--store", st, "--tokens", "400", "--splice-sequences", "4", "--prune", "drop-lowest:1,2", "--prune", "below-max:0.2,0.5", "--json");
        Assert.True(sw.Rc == 0, sw.Err + sw.Out);
        var sweep = JsonDocument.Parse(sw.Out.Trim().Split('\n').Last()).RootElement;
        Assert.Equal("blocks.2.hook_mlp_out", sweep.GetProperty("site").GetString());
        var pts = sweep.GetProperty("pruning_sweep").EnumerateArray().ToArray();
        Assert.Equal(["none", "drop-lowest:1", "drop-lowest:2", "below-max:0.2", "below-max:0.5"], pts.Select(p => p.GetProperty("pruning").GetString()));
        double L0(int i) => pts[i].GetProperty("l0").GetDouble();
        foreach (var p in pts) log.WriteLine($"{p.GetProperty("pruning").GetString(),-14} L0 {p.GetProperty("l0").GetDouble():F3} CE recovered {p.GetProperty("splice")[0].GetProperty("loss_recovered").GetDouble():F4} KL {p.GetProperty("splice")[0].GetProperty("kl_spliced").GetDouble():G4}");
        Assert.True(L0(0) > L0(1) && L0(1) > L0(2), "drop-lowest L0");
        Assert.True(L0(0) > L0(3) && L0(3) > L0(4), "below-max L0");
        // every point is scored on the same spliced sequences, and the unpruned point leaves the least KL
        double ceClean = pts[0].GetProperty("splice")[0].GetProperty("ce_clean").GetDouble(), kl0 = pts[0].GetProperty("splice")[0].GetProperty("kl_spliced").GetDouble();
        Assert.All(pts, p => Assert.Equal(ceClean, p.GetProperty("splice")[0].GetProperty("ce_clean").GetDouble(), 9));
        Assert.All(pts.Skip(1), p => Assert.True(p.GetProperty("splice")[0].GetProperty("kl_spliced").GetDouble() >= kl0 * 0.999));

        // --apply-pruning records it: a plain eval then reads the dictionary pruned, and SAELens gets it as thresholds
        Assert.Equal(0, Capture("eval", sae, "--store", st, "--tokens", "400", "--no-splice", "--apply-pruning", "below-max:0.2", "--json").Rc);
        Assert.Equal("below-max:0.2", DictionaryInput.Read(sae)!.Pruning!.Spec);
        var pe = Capture("eval", sae, "--store", st, "--tokens", "400", "--no-splice", "--json");
        var pj = JsonDocument.Parse(pe.Out.Trim().Split('\n').Last()).RootElement;
        Assert.Equal("below-max:0.2", pj.GetProperty("pruning").GetString());
        Assert.Equal(L0(3), pj.GetProperty("l0").GetDouble(), 9);
        string conv2 = tmp.File("conv2");
        var c2 = Capture("convert", sae, conv2, "--to", "saelens");
        Assert.True(c2.Rc == 0, c2.Err + c2.Out);
        var cfg2 = JsonNode.Parse(File.ReadAllText(Path.Combine(conv2, "cfg.json")))!;
        Assert.Equal("jumprelu", cfg2["architecture"]!.GetValue<string>());
        Assert.Equal("blocks.2.hook_mlp_out", cfg2["metadata"]!["hook_name"]!.GetValue<string>());
        // the SAELens copy, read back without any pruning record, gives the pruned L0
        var ce = Capture("eval", conv2, "--store", st, "--tokens", "400", "--no-splice", "--json");
        Assert.True(ce.Rc == 0, ce.Err + ce.Out);
        Assert.Equal(L0(3), JsonDocument.Parse(ce.Out.Trim().Split('\n').Last()).RootElement.GetProperty("l0").GetDouble(), 6);
        Assert.Equal(0, Capture("eval", sae, "--store", st, "--tokens", "100", "--no-splice", "--apply-pruning", "none", "--json").Rc);
        Assert.Null(DictionaryInput.Read(sae)!.Pruning);

        // a residual store of the same layer: the mlp_out dictionary is refused with the site named
        Assert.Equal(0, Capture(["harvest", .. common, "--tokens", "300", "--out", resid]).Rc);
        var bad = Capture("eval", sae, "--store", resid, "--tokens", "100", "--no-splice", "--json");
        Assert.NotEqual(0, bad.Rc);
        Assert.Contains("blocks.{L}.hook_mlp_out", bad.Err);
        Assert.Contains("blocks.{L}.hook_resid_post", bad.Err);
        var badSite = Capture(["harvest", .. common, "--tokens", "300", "--site", "hook_z", "--out", tmp.File("z")]);
        Assert.NotEqual(0, badSite.Rc);
        Assert.Contains("--site hook_z", badSite.Err);
    }
}

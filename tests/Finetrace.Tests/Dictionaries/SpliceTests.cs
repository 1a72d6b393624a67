using System.Text.Json;
using Finetrace.Activations;
using Finetrace.Activations.Harvest;
using Finetrace.Dictionaries;
using Finetrace.Text.Datasets;
using Finetrace.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Finetrace.Tests.Dictionaries;

/// <summary>A small harvest of stories260K vs stories260K-zog (layer 2, BOS dropped), shared by the splice tests.</summary>
public sealed class SpliceStoreFixture : IDisposable
{
    readonly TempDir _tmp = new();
    public string Store { get; }
    public const int Layer = 2;

    public SpliceStoreFixture()
    {
        Store = _tmp.File("store");
        if (Shared.Root is null) return;
        var r = new Random(3);
        string[] names = ["Lily", "Tom", "Sue", "Ben", "Mia", "Max"], places = ["park", "forest", "lake", "garden"];
        string text = _tmp.File("stories.txt");
        File.WriteAllText(text, string.Join("\n\n", Enumerable.Range(0, 200).Select(i =>
        {
            string n = names[r.Next(names.Length)], p = places[r.Next(places.Length)];
            return $"Once upon a time, there was a little girl named {n}. One day, {n} went to the {p}. She saw a big dog and they played.";
        })));
        Harvester.Run(new HarvestOptions
        {
            BaseModel = Shared.Path("models", "stories260K"),
            FineTunedModel = Shared.Path("models", "stories260K-zog"),
            Data = [DataSourceSpec.Parse(text)],
            Layers = [Layer],
            Tokens = 4000,
            Out = Store,
            ContextLength = 40,
            BatchSize = 8,
            Dtype = "f32",
            DropBos = true,
        });
    }

    public void Dispose() => _tmp.Dispose();
}

[Collection(ProcessWide.Name)]
public sealed class SpliceTests(SpliceStoreFixture fx, ITestOutputHelper log) : IClassFixture<SpliceStoreFixture>
{
    /// <summary>A ReLU dictionary whose decode(encode(x)) is exactly x: per model and dimension one latent reads +x_i and
    /// one −x_i, and their decoder rows put them back (relu(x) − relu(−x) = x with no rounding).</summary>
    static SparseDictionary Identity(int models, int d, bool sae)
    {
        int f = 2 * models * d;
        var dict = new SparseDictionary(models, d, f, Sparsity.Relu, CodeNormalization.None, subtractDecoderBias: sae);
        for (int m = 0; m < models; m++)
            for (int i = 0; i < d; i++)
                for (int s = 0; s < 2; s++)
                {
                    int j = (m * d + i) * 2 + s;
                    float sign = s == 0 ? 1 : -1;
                    dict.WEnc[((long)m * f + j) * d + i] = sign;
                    dict.WDec[((long)m * f + j) * d + i] = sign;
                }
        return dict;
    }

    static SpliceReport Run(ActivationStore st, SpliceReconstruction recon, int sequences = 12, MaskFilter filter = default)
    {
        var models = SplicedEvaluation.LoadModels(st, recon.Needed);
        try { return SplicedEvaluation.Run(st, models, recon, new SpliceOptions { Layer = SpliceStoreFixture.Layer, Sequences = sequences, Seed = 1, Filter = filter }); }
        finally { foreach (var m in models) m?.Dispose(); }
    }

    [SharedTheory]
    [InlineData("paired")]
    [InlineData("model:1")]
    [InlineData("diff:1-0")]
    public void Identity_reconstruction_recovers_all_loss_and_has_zero_KL(string input)
    {
        using var st = ActivationStore.Open(fx.Store);
        var dict = Identity(input == "paired" ? 2 : 1, st.DModel, sae: input != "paired");
        var rep = Run(st, SpliceReconstruction.ForDictionary(dict, DictionaryInput.Parse(input, 0), st.Models));
        log.WriteLine($"{input}: {rep.Sequences} sequences, store mismatch ≤ {rep.MaxMismatch:G3}");
        Assert.Equal(12, rep.Sequences);
        Assert.Equal(0, rep.Mismatched);
        Assert.InRange(rep.MaxMismatch, 0, 1e-4);   // f32 store, same models: only batch-composition rounding
        Assert.Equal(input == "paired" ? new[] { 0, 1 } : new[] { 1 }, rep.Models.Select(m => m.Model));
        foreach (var m in rep.Models)
        {
            log.WriteLine($"  model {m.Model}: CE {m.CeClean:F5} / {m.CeSpliced:F5} / {m.CeZero:F5}, recovered {m.LossRecovered:F7}, KL {m.KlSpliced:G3} / {m.KlZero:G4}, {m.Positions} positions");
            Assert.True(m.Positions > 100);
            Assert.True(m.CeZero > m.CeClean + 0.1, "zero ablation must hurt");
            Assert.True(m.KlZero > 0.1);
            Assert.InRange(m.LossRecovered, 1 - 1e-5, 1 + 1e-5);
            Assert.InRange(m.KlSpliced, -1e-7, 1e-7);
            Assert.InRange(m.KlScore, 1 - 1e-5, 1 + 1e-5);
        }
    }

    [SharedFact]
    public void Matches_a_direct_hooked_forward_of_every_stored_sequence()
    {
        // reference: each sequence on its own, BOS put back, a hook on blocks.2.hook_resid_post that halves (or zeroes) the
        // stored positions, CE of every stored token's next token, KL against the clean forward
        using var st = ActivationStore.Open(fx.Store);
        int D = st.DModel, M = st.Models;
        var half = new SpliceReconstruction([1], [1], (x, n) =>
        {
            var y = new float[n * D];
            for (int t = 0; t < n; t++) for (int i = 0; i < D; i++) y[t * D + i] = 0.5f * x[(t * M + 1) * D + i];
            return y;
        });
        var rep = Run(st, half, sequences: 1000).Models[0];

        using var lm = Finetrace.Models.CausalLM.Load(Shared.Path("models", "stories260K-zog"));
        var ranges = st.SequenceRanges();
        double ceC = 0, ceH = 0, ceZ = 0, klH = 0, klZ = 0; long n = 0;
        for (int s = 0; s + 1 < ranges.Length; s++)
        {
            int len = (int)(ranges[s + 1] - ranges[s]);
            if (len < 2) continue;
            var ids = new int[len + 1];
            ids[0] = 1;   // stories260K's BOS, dropped by the harvest
            for (int i = 0; i < len; i++) { Assert.Equal(i + 1, st.Position(ranges[s] + i)); ids[i + 1] = st.TokenId(ranges[s] + i); }
            var tb = new Finetrace.Models.TokenBatch(ids, 1, ids.Length);
            float[] Logits(float scale)
            {
                var hooks = new Finetrace.Models.HookSet();
                if (scale != 1) hooks.On(Finetrace.Models.HookNames.ResidPost(SpliceStoreFixture.Layer), (a, _) => { for (int i = D; i < a.Length; i++) a.Data[i] *= scale; });
                return lm.Forward(tb, hooks).Logits!.Data;
            }
            var lc = Logits(1); var lh = Logits(0.5f); var lz = Logits(0);
            int V = lm.Config.Vocab;
            for (int p = 1; p + 1 < ids.Length; p++)
            {
                double[] Lsm(float[] l) { var r = new double[V]; double mx = l.Skip(p * V).Take(V).Max(); double z = 0; for (int v = 0; v < V; v++) z += Math.Exp(l[p * V + v] - mx); for (int v = 0; v < V; v++) r[v] = l[p * V + v] - mx - Math.Log(z); return r; }
                var c = Lsm(lc); var h = Lsm(lh); var zz = Lsm(lz);
                ceC -= c[ids[p + 1]]; ceH -= h[ids[p + 1]]; ceZ -= zz[ids[p + 1]];
                for (int v = 0; v < V; v++) { klH += Math.Exp(c[v]) * (c[v] - h[v]); klZ += Math.Exp(c[v]) * (c[v] - zz[v]); }
                n++;
            }
        }
        log.WriteLine($"positions {rep.Positions} vs {n}; CE {rep.CeClean:F6}/{rep.CeSpliced:F6}/{rep.CeZero:F6} vs {ceC / n:F6}/{ceH / n:F6}/{ceZ / n:F6}");
        Assert.Equal(n, rep.Positions);
        Assert.Equal(ceC / n, rep.CeClean, 4);
        Assert.Equal(ceH / n, rep.CeSpliced, 4);
        Assert.Equal(ceZ / n, rep.CeZero, 4);
        Assert.Equal(klH / n, rep.KlSpliced, 4);
        Assert.Equal(klZ / n, rep.KlZero, 4);
        Assert.True(rep.CeSpliced > rep.CeClean + 1e-3);
    }

    [SharedFact]
    public void Sampled_positions_follow_the_store_and_the_filter()
    {
        using var st = ActivationStore.Open(fx.Store);
        var recon = SpliceReconstruction.ForDictionary(Identity(1, st.DModel, true), DictionaryInput.Parse("model:0", 0), st.Models);
        var all = Run(st, recon, sequences: 1000);
        // BOS was dropped: every usable sequence is re-run with BOS restored; positions scored = stored tokens minus the
        // last of each sequence (no next token)
        var ranges = st.SequenceRanges();
        long expect = 0;
        for (int s = 0; s + 1 < ranges.Length; s++) if (ranges[s + 1] - ranges[s] >= 2) expect += ranges[s + 1] - ranges[s] - 1;
        Assert.Equal(expect, all.Models[0].Positions);
        Assert.Equal(0, all.Unusable);
        // an empty filter result: nothing to score
        Assert.Throws<InvalidOperationException>(() => Run(st, recon, filter: MaskFilter.Parse("assistant")));
    }

    [SharedFact]
    public void Trained_crosscoder_recovers_part_of_the_loss_through_eval()
    {
        using var outs = new TempDir();
        string cc = outs.File("cc");
        Assert.Equal(0, Finetrace.Cli.Program.Main(["train", "crosscoder", "--store", fx.Store, "--layer", "2", "--k", "2", "--dict-size", "32", "--batch", "256",
            "--tokens", "25600", "--threshold-start", "50", "--holdout", "2000", "--out", cc]));
        var old = Console.Out; var sw = new StringWriter(); Console.SetOut(sw);
        try { Assert.Equal(0, Finetrace.Cli.Program.Main(["eval", cc, "--store", fx.Store, "--json", "--splice-sequences", "16"])); }
        finally { Console.SetOut(old); }
        string line = sw.ToString().Trim().Split('\n').Last();
        log.WriteLine(line);
        using var ev = JsonDocument.Parse(line);
        var sp = ev.RootElement.GetProperty("splice");
        Assert.Equal(16, sp.GetProperty("sequences").GetInt32());
        var models = sp.GetProperty("models").EnumerateArray().ToArray();
        Assert.Equal(2, models.Length);
        foreach (var m in models)
        {
            double clean = m.GetProperty("ce_clean").GetDouble(), spliced = m.GetProperty("ce_spliced").GetDouble(), zero = m.GetProperty("ce_zero").GetDouble();
            double rec = m.GetProperty("loss_recovered").GetDouble(), kl = m.GetProperty("kl_spliced").GetDouble(), klScore = m.GetProperty("kl_score").GetDouble();
            Assert.True(double.IsFinite(clean) && double.IsFinite(spliced) && double.IsFinite(zero) && double.IsFinite(kl));
            Assert.True(clean < spliced && spliced < zero, $"CE clean {clean}, spliced {spliced}, zero {zero}");
            Assert.InRange(rec, 1e-9, 1.0);
            Assert.Equal((zero - spliced) / (zero - clean), rec, 12);
            Assert.True(kl > 0);
            Assert.InRange(klScore, 1e-9, 1.0);
        }

        // --no-splice leaves it out and says so
        sw = new StringWriter(); Console.SetOut(sw);
        try { Assert.Equal(0, Finetrace.Cli.Program.Main(["eval", cc, "--store", fx.Store, "--json", "--no-splice", "--tokens", "500"])); }
        finally { Console.SetOut(old); }
        using var ev2 = JsonDocument.Parse(sw.ToString().Trim().Split('\n').Last());
        Assert.Equal(JsonValueKind.Null, ev2.RootElement.GetProperty("splice").ValueKind);
        Assert.Contains("--no-splice", ev2.RootElement.GetProperty("splice_skipped").GetString());
    }

    [SharedFact]
    public void Missing_models_are_named_in_the_error()
    {
        using var st = ActivationStore.Open(fx.Store);
        using var tmp = new TempDir();
        string gone = Path.Combine(tmp.Path, "no-such-model");
        // the library's error carries the model, folder and reason, and names no command-line flag
        var e = Assert.Throws<SpliceModelMissingException>(() => SplicedEvaluation.LoadModels(st, [0, 1], ftDir: gone));
        Assert.Equal((1, gone, MissingModelReason.ModelFolderNotFound, true), (e.Model, e.Folder, e.Reason, e.Overridden));
        Assert.Contains(gone, e.Message);
        Assert.DoesNotContain("--", e.Message);
        e = Assert.Throws<SpliceModelMissingException>(() => SplicedEvaluation.LoadModels(st, [0, 1], baseDir: gone));
        Assert.Equal((0, MissingModelReason.ModelFolderNotFound), (e.Model, e.Reason));
        e = Assert.Throws<SpliceModelMissingException>(() => SplicedEvaluation.LoadModels(st, [1], adapterDir: gone));
        Assert.Equal((1, gone, MissingModelReason.AdapterFolderNotFound), (e.Model, e.Folder, e.Reason));
        Assert.DoesNotContain("--", e.Message);

        // a store whose manifest names a folder that is not here: the eval command skips the splice with that message …
        string copy = Path.Combine(tmp.Path, "store");
        CopyDir(fx.Store, copy);
        var manifest = StoreManifest.Load(Path.Combine(copy, "manifest.json"));
        string moved = Path.Combine(tmp.Path, "moved-base");
        manifest.Settings.Models[0].Path = moved;
        manifest.Save(Path.Combine(copy, "manifest.json"));
        using (var st2 = ActivationStore.Open(copy))
        {
            e = Assert.Throws<SpliceModelMissingException>(() => SplicedEvaluation.LoadModels(st2, [0, 1]));
            Assert.Contains(moved, e.Message);
            Assert.Equal((0, false), (e.Model, e.Overridden));
        }
        var dictDir = Path.Combine(tmp.Path, "id");
        DictionaryLearningFormat.Save(Identity(2, 64, false), dictDir);
        var old = Console.Out; var sw = new StringWriter(); Console.SetOut(sw);
        try { Assert.Equal(0, Finetrace.Cli.Program.Main(["eval", dictDir, "--store", copy, "--json", "--tokens", "200"])); }
        finally { Console.SetOut(old); }
        using var ev = JsonDocument.Parse(sw.ToString().Trim().Split('\n').Last());
        Assert.Equal(JsonValueKind.Null, ev.RootElement.GetProperty("splice").ValueKind);
        Assert.Contains(moved, ev.RootElement.GetProperty("splice_skipped").GetString());
        Assert.Contains("--base DIR", ev.RootElement.GetProperty("splice_skipped").GetString());   // the CLI words it as its flag
        // … and runs it when the folder is given
        sw = new StringWriter(); Console.SetOut(sw);
        try { Assert.Equal(0, Finetrace.Cli.Program.Main(["eval", dictDir, "--store", copy, "--json", "--tokens", "200", "--splice-sequences", "4", "--base", Shared.Path("models", "stories260K")])); }
        finally { Console.SetOut(old); }
        using var ev3 = JsonDocument.Parse(sw.ToString().Trim().Split('\n').Last());
        Assert.Equal(1.0, ev3.RootElement.GetProperty("splice").GetProperty("models")[0].GetProperty("loss_recovered").GetDouble(), 5);
        // … and a wrong folder given on the command line is an error
        Assert.NotEqual(0, Finetrace.Cli.Program.Main(["eval", dictDir, "--store", copy, "--json", "--tokens", "200", "--base", moved]));
    }

    [SharedFact]
    public void Dropped_tokens_and_wrong_models_are_handled()
    {
        using var tmp = new TempDir();
        string text = tmp.File("t.txt");
        File.WriteAllText(text, string.Join("\n\n", Enumerable.Range(0, 60).Select(i => $"Tom went to the park with {i % 7} friends. They ran and ran until the sun went down and it was dark.")));
        HarvestOptions Opts(string name, int skipFirst, double outlier) => new()
        {
            BaseModel = Shared.Path("models", "stories260K"), FineTunedModel = Shared.Path("models", "stories260K-zog"),
            Data = [DataSourceSpec.Parse(text)], Layers = [SpliceStoreFixture.Layer], Tokens = 800, Out = tmp.File(name), ContextLength = 32, BatchSize = 8,
            Dtype = "f32", SkipFirst = skipFirst, OutlierFactor = outlier,
        };
        // outliers dropped: the gaps' token ids come from re-tokenizing the data, so every stored token is scored
        var o = Opts("outliers", 0, 1.2);
        var res = Harvester.Run(o);
        Assert.True(res.DroppedTokens > 0);
        using (var st = ActivationStore.Open(o.Out))
        {
            var rep = Run(st, SpliceReconstruction.ForDictionary(Identity(1, st.DModel, true), DictionaryInput.Parse("model:0", 0), st.Models), sequences: 1000);
            log.WriteLine($"outliers: {rep.Sequences} sequences, {rep.Unusable} unusable, {rep.Models[0].Positions} positions of {st.Tokens} stored, mismatch ≤ {rep.MaxMismatch:G3}");
            Assert.Equal(0, rep.Mismatched);
            Assert.Equal(0, rep.Unusable);
            Assert.InRange(rep.Models[0].Positions, st.Tokens - rep.Sequences, st.Tokens);
            Assert.Equal(1.0, rep.Models[0].LossRecovered, 6);

            // models other than the harvested ones do not reproduce the store: an error, not numbers
            var models = SplicedEvaluation.LoadModels(st, [1], ftDir: Shared.Path("models", "stories260K-chat"));
            var e = Assert.Throws<InvalidDataException>(() => SplicedEvaluation.Run(st, models, SpliceReconstruction.ForDictionary(Identity(1, st.DModel, true), DictionaryInput.Parse("model:1", 0), st.Models),
                new SpliceOptions { Layer = SpliceStoreFixture.Layer, Sequences = 8 }));
            Assert.Contains("do not reproduce", e.Message);
            foreach (var m in models) m?.Dispose();
        }
        // the first positions skipped: re-tokenized as well …
        o = Opts("skip", 2, 0);
        Harvester.Run(o);
        using (var st = ActivationStore.Open(o.Out))
        {
            var rep = Run(st, SpliceReconstruction.ForDictionary(Identity(1, st.DModel, true), DictionaryInput.Parse("model:1", 0), st.Models), sequences: 5);
            Assert.Equal(5, rep.Sequences);
            Assert.Equal(1.0, rep.Models[0].LossRecovered, 6);
            // … but not once the data file is gone: the error says why
            File.Delete(text);
            var e = Assert.Throws<InvalidOperationException>(() => Run(st, SpliceReconstruction.ForDictionary(Identity(1, st.DModel, true), DictionaryInput.Parse("model:0", 0), st.Models)));
            log.WriteLine(e.Message);
            Assert.Contains(text, e.Message);
            Assert.Contains("not available", e.Message);
        }
    }

    static void CopyDir(string from, string to)
    {
        foreach (var dir in Directory.EnumerateDirectories(from, "*", SearchOption.AllDirectories)) Directory.CreateDirectory(dir.Replace(from, to));
        Directory.CreateDirectory(to);
        foreach (var f in Directory.EnumerateFiles(from, "*", SearchOption.AllDirectories)) File.Copy(f, f.Replace(from, to));
    }
}

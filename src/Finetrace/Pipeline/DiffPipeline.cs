using System.Text.Json;
using System.Text.Json.Nodes;
using Finetrace.Activations;
using Finetrace.Activations.Harvest;
using Finetrace.Dictionaries;
using Finetrace.Diffing;
using Finetrace.Diffing.Adl;
using Finetrace.Diffing.Amplification;
using Finetrace.Diffing.Causal;
using Finetrace.Diffing.DiffMining;
using Finetrace.Diffing.Examples;
using Finetrace.Diffing.Kl;
using Finetrace.Diffing.Latents;
using Finetrace.Diffing.Scaling;
using Finetrace.Diffing.WeightDiff;
using Finetrace.Models;
using Finetrace.Text.Datasets;
using Finetrace.Text.Tokenization;

namespace Finetrace.Pipeline;

/// <summary>What <c>finetrace diff</c> runs: two models (and adapters), a resolved config and the results folder.</summary>
public sealed record DiffPlan(ModelPairSpec Models, DiffConfig Config, string Out)
{
    /// <summary>How the harvest stage loads and runs the two models (default: the CPU forward). Only the harvest — the
    /// heavy loop — takes it; the analyses run on the CPU. Not part of the harvest's inputs hash: a finished store is
    /// current whatever ran it, and an unfinished one resumes only on the device and precision it was begun with.</summary>
    public ForwardModelLoader HarvestLoader { get; init; } = ForwardModelLoader.Cpu;
}

/// <summary>Progress of the pipeline: a stage starting, skipped as current, finished, or a step inside it
/// (<see cref="Done"/> of <see cref="Total"/> units; Total 0 for a note).</summary>
public sealed record PipelineProgress(string Stage, PipelineEventKind Kind, string Message, long Done = 0, long Total = 0, string Unit = "");

public enum PipelineEventKind { Started, Skipped, Step, Finished, Note }

/// <summary>One stage of a run and whether it ran (false: its outputs were current and it was skipped).</summary>
public sealed record StageRun(string Stage, bool Ran);

public sealed record DiffRunResult(string Out, IReadOnlyList<StageRun> Stages, string SummaryPath, JsonObject Summary)
{
    public bool RanStage(string stage) => Stages.Any(s => s.Stage == stage && s.Ran);
}

/// <summary>
/// The main job: base and fine-tuned model in, a results folder out. Stages in order: data (self-made when no
/// sources are given) → harvest → for each dictionary (RESULTS/&lt;name&gt;/): train → latent table → Latent Scaling →
/// examples → causal evaluation; then on the models: ADL → KL → diff mining → weight diff → amplification; then summary.json with its
/// findings. Every stage has an inputs hash (its upstream stages' hashes and its own options) recorded in
/// RESULTS/manifest.json (per dictionary in RESULTS/&lt;name&gt;/manifest.json); a stage whose record matches and whose
/// outputs exist is skipped, so a re-run after a crash or cancellation resumes, and a changed option reruns only the
/// stages that depend on it. The harvest and the dictionary training resume inside the stage from their own checkpoints.
/// </summary>
public static class DiffPipeline
{
    public const string SummaryFile = "summary.json";
    public const string SourcesFile = "data/sources.json";
    public const string LatentExamplesFile = "latent_examples.json";

    /// <summary>Where harvest parts of a split run go: RESULTS/store-parts/part-i-of-n (each an ordinary part store).</summary>
    public const string PartsFolder = "store-parts";

    public static string PartDir(string resultsDir, HarvestPart part) => Path.Combine(resultsDir, PartsFolder, $"part-{part.Index}-of-{part.Count}");

    /// <summary>Only the data stage (the text the pipeline makes itself, when no sources are given): the step a split run
    /// does once before its harvest parts, so the parts read the same files instead of each making them.</summary>
    public static IReadOnlyList<StageRun> RunData(DiffPlan plan, IProgress<PipelineProgress>? progress = null, CancellationToken cancel = default)
    {
        var ctx = new RunContext(plan, progress, cancel);
        ctx.Data();
        return ctx.Runs;
    }

    /// <summary>The data and harvest stages. With <paramref name="part"/>: harvest only that part of the split into
    /// <see cref="PartDir"/> (resumable; nothing is recorded in the results folder's manifest, so parts can run at the
    /// same time on several machines); the harvest stage of a later run merges the parts when all of them are complete.</summary>
    public static IReadOnlyList<StageRun> RunHarvest(DiffPlan plan, HarvestPart? part = null, IProgress<PipelineProgress>? progress = null, CancellationToken cancel = default)
    {
        var ctx = new RunContext(plan, progress, cancel);
        ctx.Data();
        if (part is { } p) ctx.HarvestPart(p);
        else ctx.Harvest();
        return ctx.Runs;
    }

    public static DiffRunResult Run(DiffPlan plan, IProgress<PipelineProgress>? progress = null, CancellationToken cancel = default)
    {
        var ctx = new RunContext(plan, progress, cancel);
        ctx.Data();
        ctx.Harvest();
        var dicts = new List<DictionaryRun>();
        foreach (var dc in plan.Config.Dictionaries) dicts.Add(ctx.Dictionary(dc));
        ctx.Readers();
        ctx.Amplification();
        var summary = ctx.Summary(dicts[0]);
        ctx.Report();
        return new DiffRunResult(ctx.Results.Directory, ctx.Runs, ctx.Results.PathOf(SummaryFile), summary);
    }

    /// <summary>A trained dictionary's folder and the hashes of its stages.</summary>
    internal sealed record DictionaryRun(DictionaryConfig Config, ResultsFolder Results, string DictionaryDir, string ScalingHash, string ExamplesHash, string CausalHash);

    internal sealed class RunContext(DiffPlan plan, IProgress<PipelineProgress>? progress, CancellationToken cancel)
    {
        public readonly ResultsFolder Results = ResultsFolder.Open(plan.Out);
        public readonly List<StageRun> Runs = [];
        DiffConfig C => plan.Config;
        string _dataHash = "", _harvestHash = "", _amplificationHash = "";
        List<DataSourceSpec> _sources = [];
        JsonArray _sourceInfo = [];
        public string StoreDir => Results.PathOf("store");

        void Report(string stage, PipelineEventKind kind, string message, long done = 0, long total = 0, string unit = "") =>
            progress?.Report(new PipelineProgress(stage, kind, message, done, total, unit));

        /// <summary>Runs <paramref name="work"/> unless <paramref name="stage"/> is current in <paramref name="folder"/>.</summary>
        bool Stage(ResultsFolder folder, string stage, string hash, Func<IEnumerable<string>> work, string label)
        {
            cancel.ThrowIfCancellationRequested();
            if (folder.IsCurrent(stage, hash))
            {
                Report(label, PipelineEventKind.Skipped, "current (same inputs); skipped");
                Runs.Add(new StageRun(label, false));
                return false;
            }
            Report(label, PipelineEventKind.Started, "running");
            var outputs = work().ToList();
            folder.Record(stage, hash, outputs);
            Report(label, PipelineEventKind.Finished, "done");
            Runs.Add(new StageRun(label, true));
            return true;
        }

        static string Hash(params object?[] parts)
        {
            var h = new InputsHash();
            for (int i = 0; i < parts.Length; i++) h.Add($"p{i}", parts[i] is DiffConfig or DataConfig or HarvestConfig or DictionaryConfig or AnalysisConfig or ReadersConfig or AmplificationConfig or FindingsConfig
                ? JsonSerializer.Serialize(parts[i], parts[i]!.GetType()) : parts[i]);
            return h.ToString();
        }

        public void Data()
        {
            var models = plan.Models.AddTo(new InputsHash());
            if (C.Data.Sources.Count > 0)
            {
                _sources = C.Data.Sources.Select(DataSourceSpec.Parse).ToList();
                var h = new CorpusSpec(_sources, 1, 1, 1).AddTo(new InputsHash());
                _dataHash = h.ToString();
                _sourceInfo = new JsonArray(_sources.Select(s => (JsonNode)new JsonObject { ["name"] = s.Name, ["path"] = s.Path, ["made_by_pipeline"] = false, ["description"] = $"{s.Kind.ToString().ToLowerInvariant()} data given in the config" }).ToArray());
                Runs.Add(new StageRun("data", false));
                return;
            }
            _dataHash = Hash("data", models.ToString(), C.Data);
            Stage(Results, "data", _dataHash, () =>
            {
                Report("data", PipelineEventKind.Note, "no data sources given: the pipeline makes its own text (samples of both models from neutral openings" +
                    (PipelineData.HasChatTemplate(plan.Models.FineTuned) ? ", chat conversations from shipped prompts" : "") + ")");
                var made = PipelineData.Make(plan.Models, C.Data, Results.PathOf("data"), new SyncProgress<string>(s => Report("data", PipelineEventKind.Note, s)), cancel);
                var arr = new JsonArray(made.Select(m => (JsonNode)new JsonObject { ["name"] = m.Name, ["spec"] = m.Spec, ["made_by_pipeline"] = true, ["description"] = m.Description }).ToArray());
                ResultsFolder.WriteAllTextAtomic(Results.PathOf(SourcesFile), arr.ToJsonString(ResultsJson.Indented) + "\n");
                return [SourcesFile, "data"];
            }, "data");
            var info = JsonNode.Parse(File.ReadAllText(Results.PathOf(SourcesFile)))!.AsArray();
            _sources = info.Select(n => DataSourceSpec.Parse((string)n!["spec"]!)).ToList();
            _sourceInfo = info;
        }

        HarvestOptions HarvestOptionsFor(string outDir, HarvestPart? part) => new()
        {
            BaseModel = plan.Models.Base, BaseAdapter = plan.Models.BaseAdapter, FineTunedModel = plan.Models.FineTuned, Adapter = plan.Models.Adapter,
            Data = _sources, Layers = [C.Harvest.Layer], Tokens = C.Harvest.Tokens, Out = outDir, ContextLength = C.Harvest.Context,
            BatchSize = C.Harvest.Batch, Dtype = C.Harvest.Dtype, DropBos = C.Harvest.DropBos, Part = part, Loader = plan.HarvestLoader,
        };

        string HarvestHash() => Hash("harvest", _dataHash, C.Harvest, plan.Models.AddTo(new InputsHash()).ToString());

        /// <summary>A part's marker beside its store: the harvest inputs hash it was harvested for.</summary>
        static string PartMarker(string partDir) => partDir + ".inputs";

        public void Harvest()
        {
            _harvestHash = HarvestHash();
            Stage(Results, "harvest", _harvestHash, () =>
            {
                // a store from other inputs is removed; one from these inputs (an interrupted harvest or merge) is resumed
                string marker = Results.PathOf(".store-inputs");
                if (Directory.Exists(StoreDir) && (!File.Exists(marker) || File.ReadAllText(marker) != _harvestHash)) Directory.Delete(StoreDir, true);
                ResultsFolder.WriteAllTextAtomic(marker, _harvestHash);
                if (CompleteParts() is { } parts)
                {
                    // a split harvest: its parts merged in order equal the unsharded store byte for byte
                    Report("harvest", PipelineEventKind.Note, $"merging {parts.Count} harvest parts from {PartsFolder}/");
                    StoreMerge.Merge(parts, StoreDir, p => Report("harvest", PipelineEventKind.Step, "merge parts", p.Tokens, p.TotalTokens, "tokens"), cancel);
                    foreach (var d in parts) { Directory.Delete(d, true); File.Delete(PartMarker(d)); }
                    return ["store"];
                }
                var o = HarvestOptionsFor(StoreDir, null);
                Report("harvest", PipelineEventKind.Note, $"forward on {o.Loader.Describe()}");
                Harvester.Run(o, p => Report("harvest", PipelineEventKind.Step, "harvest", Math.Min(p.Tokens, o.Tokens), o.Tokens, "tokens"), cancel);
                return ["store"];
            }, "harvest");
        }

        /// <summary>The part stores of a split harvest of these inputs when every part of the split is complete (in part
        /// order); null when there are none. Parts of other inputs are ignored; a split with parts missing or unfinished is an error.</summary>
        List<string>? CompleteParts()
        {
            string root = Results.PathOf(PartsFolder);
            if (!Directory.Exists(root)) return null;
            var mine = new List<(HarvestPart Part, string Dir)>();
            foreach (var dir in Directory.EnumerateDirectories(root, "part-*-of-*"))
            {
                var bits = Path.GetFileName(dir).Split('-');
                if (bits.Length != 4 || !int.TryParse(bits[1], out int i) || !int.TryParse(bits[3], out int n)) continue;
                if (File.Exists(PartMarker(dir)) && File.ReadAllText(PartMarker(dir)) == _harvestHash) mine.Add((new HarvestPart(i, n), dir));
            }
            if (mine.Count == 0) return null;
            var splits = mine.GroupBy(m => m.Part.Count).ToList();
            if (splits.Count > 1) throw new HarvestPartsException(root, $"parts of {string.Join(" and ", splits.Select(g => $"{g.Key}-part"))} splits of the same harvest; remove the ones you do not mean");
            int count = splits[0].Key;
            var problems = new List<string>();
            for (int i = 0; i < count; i++)
            {
                var dir = mine.FirstOrDefault(m => m.Part.Index == i).Dir;
                if (dir is null) { problems.Add($"part {i}/{count} is missing"); continue; }
                using var store = ActivationStore.Open(dir);
                if (!store.Manifest.Complete) problems.Add($"part {i}/{count} ({dir}) is not complete; run it again to finish it");
            }
            if (problems.Count > 0) throw new HarvestPartsException(root, string.Join("; ", problems));
            return mine.OrderBy(m => m.Part.Index).Select(m => m.Dir).ToList();
        }

        /// <summary>One part of a split harvest into <see cref="PartDir"/> (skipped when the whole harvest is already current).</summary>
        public void HarvestPart(HarvestPart part)
        {
            part.Validate();
            _harvestHash = HarvestHash();
            string label = $"harvest part {part}";
            if (Results.IsCurrent("harvest", _harvestHash))
            {
                Report(label, PipelineEventKind.Skipped, "the harvest stage is current; no part needed");
                Runs.Add(new StageRun(label, false));
                return;
            }
            string dir = PartDir(Results.Directory, part), marker = PartMarker(dir);
            if (Directory.Exists(dir) && (!File.Exists(marker) || File.ReadAllText(marker) != _harvestHash)) Directory.Delete(dir, true);
            Directory.CreateDirectory(Path.GetDirectoryName(dir)!);
            ResultsFolder.WriteAllTextAtomic(marker, _harvestHash);
            Report(label, PipelineEventKind.Started, "running");
            var o = HarvestOptionsFor(dir, part);
            Report(label, PipelineEventKind.Note, $"forward on {o.Loader.Describe()}");
            var res = Harvester.Run(o, p => Report(label, PipelineEventKind.Step, "harvest", p.Tokens, o.Tokens, "tokens"), cancel);
            Report(label, PipelineEventKind.Finished, $"done ({res.Tokens:N0} tokens on {res.Device})");
            Runs.Add(new StageRun(label, true));
        }

        public DictionaryRun Dictionary(DictionaryConfig dc)
        {
            var folder = ResultsFolder.Open(Results.PathOf(dc.Name));
            string dictDir = folder.PathOf("dictionary");
            string label = dc.Name;
            string trainHash = Hash("dictionary", _harvestHash, dc);
            using var store = ActivationStore.Open(StoreDir);
            Stage(folder, "dictionary", trainHash, () => { Train(dc, store, dictDir, trainHash, folder); return ["dictionary"]; }, $"{label}/dictionary");
            var ad = AnalysisDictionary.Open(dictDir, store, C.Harvest.Layer);
            var tok = Tokenizer();
            string table = folder.PathOf(FeatureTable.FileName);
            string latentsHash = Hash("latents", trainHash, C.Analysis.ExclusiveThreshold, 10);
            Stage(folder, LatentTable.Stage, latentsHash, () =>
            {
                var o = new LatentTableOptions { Tags = new TagThresholds { Exclusive = C.Analysis.ExclusiveThreshold }, TopTokens = 10 };
                var res = LatentTable.Run(ad, store, o, StepProgress($"{label}/latents", "positions"), cancel);
                var t = new FeatureTable(ad.Latents);
                LatentTable.WriteColumns(res, t, id => tok.Decode([id]));
                t.Save(table);
                return [FeatureTable.FileName];
            }, $"{label}/latents");
            string scalingHash = Hash("scaling", latentsHash, C.Analysis.ErrorThreshold, C.Analysis.ReconstructionThreshold, C.Analysis.ScalingChunks);
            Stage(folder, LatentScaler.Stage, scalingHash, () =>
            {
                var o = new LatentScalingOptions
                {
                    Chunks = C.Analysis.ScalingChunks, ErrorThreshold = C.Analysis.ErrorThreshold, ReconstructionThreshold = C.Analysis.ReconstructionThreshold,
                    Tags = new TagThresholds { Exclusive = C.Analysis.ExclusiveThreshold },
                };
                var res = LatentScaler.Run(ad, store, o, StepProgress($"{label}/scaling", "positions"), cancel);
                LatentScaler.WriteTensors(res, folder);
                var t = FeatureTable.Load(table);
                LatentScaler.WriteColumns(res, t);
                t.Save(table);
                return [FeatureTable.FileName, LatentScaler.TensorFile];
            }, $"{label}/scaling");
            string examplesHash = Hash("examples", trainHash, C.Analysis.ExamplesTopK);
            Stage(folder, ExampleCollector.Stage, examplesHash, () =>
            {
                var t = FeatureTable.Load(table);
                var o = new ExampleOptions { TopK = C.Analysis.ExamplesTopK, PerBand = 2 };
                var res = ExampleCollector.Run(ad, store, o, t.Has("max_act_all") ? t.Numbers("max_act_all") : null, StepProgress($"{label}/examples", "positions"), cancel);
                ExampleCollector.Write(res, store, folder.PathOf(ExampleCollector.FileName), o.TopK, ids => tok.Decode(ids));
                WriteLatentExamples(res, store, tok, folder.PathOf(LatentExamplesFile));
                return [ExampleCollector.FileName, LatentExamplesFile];
            }, $"{label}/examples");
            string causalHash = Hash("causal", scalingHash, C.Analysis.CausalSequences, C.Analysis.CausalRandomSets, C.Analysis.Seed);
            if (C.Analysis.CausalSequences > 0 && ad.Kind == InputKind.Paired)
                Stage(folder, CausalEvaluation.Stage, causalHash, () =>
                {
                    var t = FeatureTable.Load(table);
                    var sets = CausalEvaluation.SetsFromTable(t);
                    if (sets.Count == 0) { ResultsFolder.WriteAllTextAtomic(folder.PathOf(CausalEvaluation.FileName), "[]\n"); return [CausalEvaluation.FileName]; }
                    // random sets from the pool the rank_sum halves split (the fair null for them; every latent when none)
                    int[]? pool = sets.Where(s => s.Name.StartsWith("rank_sum", StringComparison.Ordinal)).SelectMany(s => s.Latents).Distinct().Order().ToArray();
                    var models = SplicedEvaluation.LoadModels(store, [0, 1], plan.Models.Base, plan.Models.FineTuned, plan.Models.Adapter);
                    try
                    {
                        var o = new CausalOptions { Sequences = C.Analysis.CausalSequences, Seed = C.Analysis.Seed, RandomSeeds = C.Analysis.CausalRandomSets };
                        var res = CausalEvaluation.Run(ad, store, models[0]!, models[1]!, sets, o, pool is { Length: > 0 } ? pool : null, StepProgress($"{label}/causal", "sequences"), cancel);
                        var arr = new JsonArray(res.Entries.Select(e => (JsonNode)e.ToJson()).ToArray());
                        ResultsFolder.WriteAllTextAtomic(folder.PathOf(CausalEvaluation.FileName), arr.ToJsonString(ResultsJson.Indented) + "\n");
                    }
                    finally { foreach (var m in models) m?.Dispose(); }
                    return [CausalEvaluation.FileName];
                }, $"{label}/causal");
            return new DictionaryRun(dc, folder, dictDir, scalingHash, examplesHash, causalHash);
        }

        void Train(DictionaryConfig dc, ActivationStore store, string dictDir, string hash, ResultsFolder folder)
        {
            var recipe = new TrainingRecipe
            {
                Kind = dc.Kind == "diff-sae" ? DictionaryKind.DiffSae : DictionaryKind.Crosscoder,
                Layer = C.Harvest.Layer, DictSize = dc.DictSize, Batch = dc.Batch, Tokens = dc.Tokens, Seed = dc.Seed,
                K = dc.Kind == "l1-crosscoder" ? null : dc.K, L1 = dc.Kind == "l1-crosscoder" ? (float)dc.L1 : null,
                ValidateEvery = 0,
            };
            using var setup = recipe.Prepare(store);
            string marker = folder.PathOf(".dictionary-inputs");
            bool resume = Directory.Exists(Path.Combine(dictDir, "checkpoint")) && File.Exists(marker) && File.ReadAllText(marker) == hash;
            if (!resume && Directory.Exists(dictDir)) Directory.Delete(dictDir, true);
            ResultsFolder.WriteAllTextAtomic(marker, hash);
            var run = setup.Run(dictDir, checkpointEvery: Math.Max(50, setup.Steps / 4), resume: resume, overwrite: !resume);
            string stage = $"{dc.Name}/dictionary";
            run.Run(s => Report(stage, PipelineEventKind.Step, $"train {dc.Kind} (FVE {string.Join("/", s.Fve.Select(v => v.ToString("F2")))}, L0 {s.L0:F1})", s.Step + 1, setup.Steps, "steps"), cancel);
            DictionaryIO.Save(run.Trainer.Dict, dictDir, setup.SidecarFields(run.Trainer.Dict), init: setup.Init, saelensMetadata: SaelensMetadata.From(store, setup.Input));
            if (run.LastValidation is { } v)
                ResultsFolder.WriteAllTextAtomic(folder.PathOf("dictionary/validation.json"), new JsonObject
                {
                    ["fve"] = new JsonArray(v.Fve.Select(f => (JsonNode)f).ToArray()), ["l0"] = v.L0, ["dead_fraction"] = v.DeadFraction, ["tokens"] = v.Tokens,
                }.ToJsonString(ResultsJson.Indented) + "\n");
        }

        /// <summary>For every latent, its top examples as short decoded windows around the highest activation, with the
        /// data source each comes from.</summary>
        static void WriteLatentExamples(ExampleResult res, ActivationStore store, Tokenizer tok, string path)
        {
            var ranges = store.SequenceRanges();
            var sources = store.Settings.Sources;
            var root = new JsonObject();
            foreach (var g in res.Top.GroupBy(e => e.Latent).OrderBy(g => g.Key))
            {
                var arr = new JsonArray();
                foreach (var ex in g.OrderByDescending(e => e.Score).Take(10))
                {
                    long start = ranges[ex.Sequence];
                    int len = (int)(ranges[ex.Sequence + 1] - start);
                    int peak = ex.Positions.Length == 0 ? 0 : ex.Positions[Array.IndexOf(ex.Values, ex.Values.Max())];
                    int from = Math.Max(0, peak - 16), to = Math.Min(len, peak + 5);
                    var ids = Enumerable.Range(from, to - from).Select(t => store.TokenId(start + t)).ToArray();
                    int src = store.Source(start);
                    arr.Add(new JsonObject
                    {
                        ["text"] = tok.Decode(ids, skipSpecialTokens: true), ["peak_token"] = tok.Decode([store.TokenId(start + peak)]),
                        ["score"] = ex.Score, ["source"] = src < sources.Count ? sources[src].Name : null,
                    });
                }
                root[g.Key.ToString(System.Globalization.CultureInfo.InvariantCulture)] = arr;
            }
            ResultsFolder.WriteAllTextAtomic(path, root.ToJsonString(ResultsJson.Indented) + "\n");
        }

        public void Readers()
        {
            var corpus = new CorpusSpec(_sources, C.Readers.Samples, C.Readers.Context, 8);
            if (C.Readers.AdlPositions > 0)
                Reader("adl", () =>
                {
                    var o = new AdlOptions
                    {
                        BaseModel = plan.Models.Base, BaseAdapter = plan.Models.BaseAdapter, FineTunedModel = plan.Models.FineTuned, Adapter = plan.Models.Adapter,
                        Data = _sources, Layers = [C.Harvest.Layer], Positions = Enumerable.Range(0, C.Readers.AdlPositions).ToArray(),
                        MaxSamples = C.Readers.AdlSamples, ContextLength = C.Readers.Context, NormSamples = 32, NormContext = 64,
                        PatchscopeScales = [0.5, 1, 2, 5, 10, 20], SteeringStrengths = [0.5, 1, 2], SteeringSamples = 1, SteeringNewTokens = 24,
                        SteeringPrompts = ["Once upon a time", "Tell me a story?"], SteeringPositions = [0, Math.Min(2, C.Readers.AdlPositions - 1)],
                    };
                    var r = ActivationDifferenceLens.Run(o, Results.Directory, new SyncProgress<AdlProgress>(p => Report("adl", PipelineEventKind.Step, $"adl {p.Phase}", p.Done, p.Total, "steps")), cancel);
                    return !r.UpToDate;
                });
            if (C.Readers.Samples > 0)
            {
                Reader("kl", () => KlAnalysis.Run(new KlOptions { Models = plan.Models, Corpus = corpus, TopTokens = 20 }, Results, PairedProgress("kl"), cancel) is not null);
                Reader("diff_mining", () => DiffMiningAnalysis.Run(new DiffMiningOptions { Models = plan.Models, Corpus = corpus, TopTokens = 20 }, Results, PairedProgress("diff_mining"), cancel) is not null);
            }
            if (C.Readers.WeightDiff)
                Reader("weight_diff", () => WeightDiffAnalysis.Run(new WeightDiffOptions { Models = plan.Models }, Results, null, cancel) is not null);
        }

        /// <summary>Logit-diff amplification samples beside both models' unamplified samples (skipped when no α is configured).</summary>
        public void Amplification()
        {
            var a = C.Amplification;
            if (a.Alphas.Count == 0) return;
            bool chat = PipelineData.HasChatTemplate(plan.Models.FineTuned);
            var runs = PipelineAmplification.Options(plan.Models, a, chat);
            _amplificationHash = Hash("amplification", plan.Models.AddTo(new InputsHash()).ToString(), a, chat);
            Stage(Results, AmplificationAnalysis.Stage, _amplificationHash, () =>
            {
                long total = runs.Sum(r => (long)r.Prompts.Count * (2 + r.Alphas.Count) * r.SamplesPerPrompt), done = 0;
                PipelineAmplification.Run(runs, Results, new SyncProgress<string>(_ => Report("amplification", PipelineEventKind.Step, "amplification", ++done, total, "samples")), cancel);
                return [AmplificationAnalysis.OutputFile];
            }, "amplification");
        }

        /// <summary>A reader that keeps its own manifest record (it returns false when it found its results current).</summary>
        void Reader(string name, Func<bool> run)
        {
            cancel.ThrowIfCancellationRequested();
            Report(name, PipelineEventKind.Started, "running");
            bool ran = run();
            Report(name, ran ? PipelineEventKind.Finished : PipelineEventKind.Skipped, ran ? "done" : "current (same inputs); skipped");
            Runs.Add(new StageRun(name, ran));
        }

        IProgress<PairedProgress> PairedProgress(string stage) =>
            new SyncProgress<PairedProgress>(p => Report(stage, PipelineEventKind.Step, stage, p.Samples, C.Readers.Samples, "samples"));

        IProgress<(long Done, long Total)> StepProgress(string stage, string unit) =>
            new SyncProgress<(long Done, long Total)>(p => Report(stage, PipelineEventKind.Step, stage, p.Done, p.Total, unit));

        string TokenizerDir() => File.Exists(Path.Combine(plan.Models.FineTuned, "tokenizer.json")) ? plan.Models.FineTuned : plan.Models.Base;

        Tokenizer Tokenizer() => Text.Tokenization.Tokenizer.FromFolder(TokenizerDir());

        public JsonObject Summary(DictionaryRun primary)
        {
            cancel.ThrowIfCancellationRequested();
            Report("summary", PipelineEventKind.Started, "writing summary.json and findings");
            var summary = SummaryBuilder.Build(plan, Results, primary, _sourceInfo, Tokenizer());
            ResultsFolder.WriteAllTextAtomic(Results.PathOf(SummaryFile), summary.ToJsonString(ResultsJson.Indented) + "\n");
            Results.Record("summary", Hash("summary", primary.ScalingHash, primary.ExamplesHash, primary.CausalHash, _amplificationHash, C.Findings), [SummaryFile]);
            Runs.Add(new StageRun("summary", true));
            Report("summary", PipelineEventKind.Finished, "done");
            return summary;
        }

        /// <summary>RESULTS/report.html from the results folder (always re-rendered: it is cheap and reads every stage).</summary>
        public void Report()
        {
            cancel.ThrowIfCancellationRequested();
            Report("report", PipelineEventKind.Started, "writing report.html");
            Pipeline.Report.ReportWriter.Write(Results.Directory, new Pipeline.Report.ReportOptions { TokenizerDir = TokenizerDir() }, cancel);
            Runs.Add(new StageRun("report", true));
            Report("report", PipelineEventKind.Finished, "done");
        }
    }
}

/// <summary>The harvest parts in RESULTS/store-parts cannot be merged: <see cref="Problem"/> says which part and why.</summary>
public sealed class HarvestPartsException(string folder, string problem) : Exception($"{folder}: {problem}")
{
    public string Folder { get; } = folder;
    public string Problem { get; } = problem;
}

/// <summary>IProgress that reports on the calling thread, in order.</summary>
public sealed class SyncProgress<T>(Action<T> report) : IProgress<T>
{
    public void Report(T value) => report(value);
}

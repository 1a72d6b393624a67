using System.Diagnostics;
using System.Security.Cryptography;
using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;
using System.Text.Json.Nodes;
using Finetrace.Models;
using Finetrace.Models.Backward;
using Finetrace.Text.Chat;
using Finetrace.Text.Datasets;
using Finetrace.Text.Tokenization;

namespace Finetrace.Training.Organisms;

/// <summary>What <see cref="OrganismMaker.Make"/> is doing: a stage starting or finishing (<see cref="Training"/> null)
/// or a training step of that stage.</summary>
public sealed record OrganismProgress(string Stage, string Message, LmTrainingProgress? Training = null);

/// <summary>One greedy generation of the base and of the organism on the same prompt.</summary>
public sealed record GenerationSample(string Prompt, string Base, string Organism);

/// <summary>How often a planted change showed in greedy generations on prompts not seen in training.</summary>
public sealed record BehaviourCheck(string Planted, string Kind, int Prompts, int OrganismShows, int BaseShows, IReadOnlyList<GenerationSample> Samples);

/// <summary>The base model: its held-out loss against the unigram entropy of its corpus (both in nats per token).</summary>
public sealed record BaseModelReport(string Folder, bool Cached, double Seconds, long Parameters, long TrainTokens, double FirstLoss, double LastLoss,
    double HeldOutLoss, double UnigramEntropy, IReadOnlyList<GenerationSample> Samples);

public sealed record OrganismReport(string Name, string Folder, bool IsLora, bool Cached, double Seconds, long TrainTokens, double FirstLoss, double LastLoss,
    IReadOnlyList<BehaviourCheck> Behaviours);

/// <summary>Everything `organism make` produced (also written as OUT/organisms.json).</summary>
public sealed record MakeReport(string Recipe, string Out, int VocabSize, BaseModelReport Base, IReadOnlyList<OrganismReport> Organisms, double Seconds)
{
    public const string FileName = "organisms.json";
}

/// <summary>
/// Makes a recipe's model organisms in OUT: corpus/ (the generated text, train and held-out), tokenizer/ (BPE trained
/// on the training text, with the User:/Assistant: chat template), base/ (a Llama trained from scratch), and one folder
/// per organism: a standard Hugging Face folder (config.json, model.safetensors, tokenizer files) or a PEFT adapter
/// folder (adapter_config.json, adapter_model.safetensors, tokenizer files), each with GROUND_TRUTH.json naming the base
/// as "../base". Every stage records the hash of its inputs in OUT/.stages/; a stage whose record matches is reused, so
/// making the same recipe again reuses finished models, and a changed organism retrains only itself. Training
/// checkpoints (OUT/NAME/checkpoint) make an interrupted stage resume; they are removed when the stage finishes.
/// </summary>
public static class OrganismMaker
{
    const string Version = "organism-make 2";
    const int ProbesPerChange = 8;

    public static MakeReport Make(OrganismRecipe recipe, string outDir, IProgress<OrganismProgress>? progress = null, CancellationToken cancel = default)
    {
        var clock = Stopwatch.StartNew();
        outDir = Path.GetFullPath(outDir);
        Directory.CreateDirectory(outDir);
        string Dir(string name) => Path.Combine(outDir, name);

        // 1. Corpus (cheap: regenerated every time, written once per hash).
        var corpus = OrganismData.BaseCorpus(recipe);
        int storyHeld = HeldOutCount(corpus.Stories.Count, recipe.Corpus.HeldOut), chatHeld = HeldOutCount(corpus.Chats.Count, recipe.Corpus.HeldOut);
        var trainStories = corpus.Stories.Take(corpus.Stories.Count - storyHeld).ToList();
        var heldStories = corpus.Stories.Skip(corpus.Stories.Count - storyHeld).ToList();
        var trainChats = corpus.Chats.Take(corpus.Chats.Count - chatHeld).ToList();
        var heldChats = corpus.Chats.Skip(corpus.Chats.Count - chatHeld).ToList();
        string corpusHash = Hash(Version, recipe.Seed.ToString(), OrganismRecipe.Canonical(recipe.Corpus));
        if (!IsCurrent(outDir, "corpus", corpusHash, out _))
        {
            Directory.CreateDirectory(Dir("corpus"));
            WriteStories(Path.Combine(Dir("corpus"), "stories.txt"), trainStories);
            WriteStories(Path.Combine(Dir("corpus"), "heldout_stories.txt"), heldStories);
            WriteChats(Path.Combine(Dir("corpus"), "chats.jsonl"), trainChats);
            WriteChats(Path.Combine(Dir("corpus"), "heldout_chats.jsonl"), heldChats);
            Record(outDir, "corpus", corpusHash, new JsonObject());
        }

        // 2. Tokenizer.
        string tokDir = Dir("tokenizer");
        string tokHash = Hash(corpusHash, OrganismRecipe.Canonical(recipe.Tokenizer));
        if (!IsCurrent(outDir, "tokenizer", tokHash, out _))
        {
            progress?.Report(new OrganismProgress("tokenizer", $"training a {recipe.Tokenizer.VocabSize}-token BPE on {trainStories.Count:N0} stories and {trainChats.Count:N0} chats"));
            var template = new ChatTemplate(TrainedBpe.UserAssistantTemplate, new Dictionary<string, string> { ["bos_token"] = BpeTrainer.Bos, ["eos_token"] = BpeTrainer.Eos });
            var texts = trainStories.Concat(trainChats.SelectMany(c => BpeTrainer.Between(template.Render(c, false), BpeTrainer.Bos, BpeTrainer.Eos)));
            var bpe = BpeTrainer.Train(texts, new BpeTrainerOptions(recipe.Tokenizer.VocabSize), cancel);
            bpe.WriteFolder(tokDir, TrainedBpe.UserAssistantTemplate, recipe.Base.Model.Context);
            File.WriteAllText(Path.Combine(tokDir, "generation_config.json"), "{\n  \"bos_token_id\": 1,\n  \"eos_token_id\": 2\n}\n");
            Record(outDir, "tokenizer", tokHash, new JsonObject { ["vocab_size"] = bpe.Vocab.Count });
        }
        var encoder = ModelSampleEncoder.FromFolder(tokDir);
        int vocab = encoder.Tokenizer.VocabSize;
        int eos = encoder.Tokenizer.EosId ?? 2;

        // 3. Base.
        string baseDir = Dir("base");
        string baseHash = Hash(tokHash, OrganismRecipe.Canonical(recipe.Base));
        BaseModelReport baseReport;
        if (IsCurrent(outDir, "base", baseHash, out var cachedBase) && File.Exists(Path.Combine(baseDir, "model.safetensors")) && cachedBase?.Deserialize<BaseModelReport>() is { } cb)
            baseReport = cb with { Cached = true };
        else
        {
            var sw = Stopwatch.StartNew();
            var train = trainStories.Select(s => new LmExample(encoder.EncodeText(0, 0, s).Ids))
                .Concat(trainChats.Select(c => new LmExample(encoder.EncodeChat(0, 0, c).Ids))).ToList();
            var held = heldStories.Select(s => new LmExample(encoder.EncodeText(0, 0, s).Ids))
                .Concat(heldChats.Select(c => new LmExample(encoder.EncodeChat(0, 0, c).Ids))).ToList();
            var options = recipe.Base.Train.Options((ulong)recipe.Seed);
            var model = ModelParameters.Initialise(recipe.Base.Model.ConfigJson(vocab), (ulong)recipe.Seed);
            var rows = new PackedRows(train, options.SeqLen);
            progress?.Report(new OrganismProgress("base", $"training a {model.ParameterCount:N0}-parameter Llama from scratch on {rows.Tokens:N0} tokens, {options.Steps} steps"));
            var trainer = new LmTrainer(model, rows, options);
            var result = trainer.Run(LmRuns.CheckpointFolder(baseDir), Relay(progress, "base"), cancel);
            double heldLoss = trainer.Evaluate(new PackedRows(held, options.SeqLen));
            model.Save(baseDir);
            ModelParameters.CopyTokenizerFiles(tokDir, baseDir);
            DeleteCheckpoint(baseDir);
            var samples = new List<GenerationSample>();
            using (var lm = CausalLM.Load(baseDir))
            {
                var gen = new Generator(lm);
                foreach (var prompt in new[] { "Once upon a time", "Tom went to the park." })
                    samples.Add(new GenerationSample(prompt, "", GenerateStory(gen, encoder, prompt)));
                foreach (var q in new[] { "What does a cow say?", "What color is the sky?" })
                    samples.Add(new GenerationSample(q, "", GenerateChat(gen, encoder, q, eos)));
            }
            baseReport = new BaseModelReport(baseDir, false, sw.Elapsed.TotalSeconds, model.ParameterCount, rows.Tokens,
                Mean(result.Losses.Take(5)), Mean(result.Losses.TakeLast(10)), heldLoss, UnigramEntropy(train), samples);
            Record(outDir, "base", baseHash, JsonSerializer.SerializeToNode(baseReport)!.AsObject());
        }
        progress?.Report(new OrganismProgress("base", $"held-out loss {baseReport.HeldOutLoss:F3} nats/token vs unigram entropy {baseReport.UnigramEntropy:F3}" +
            (baseReport.Cached ? " (reused)" : "")));

        // 4. Organisms.
        var reports = new List<OrganismReport>();
        Dictionary<int, long>? baseCounts = null;
        for (int i = 0; i < recipe.Organisms.Count; i++)
        {
            cancel.ThrowIfCancellationRequested();
            var o = recipe.Organisms[i];
            string dir = Dir(o.Name);
            string hash = Hash(baseHash, i.ToString(), recipe.Seed.ToString(), OrganismRecipe.Canonical(o));
            if (IsCurrent(outDir, o.Name, hash, out var cached) && File.Exists(Path.Combine(dir, GroundTruth.FileName)) && cached?.Deserialize<OrganismReport>() is { } co)
            {
                reports.Add(co with { Cached = true });
                progress?.Report(new OrganismProgress(o.Name, "reused"));
                continue;
            }
            var sw = Stopwatch.StartNew();
            var data = OrganismData.Finetune(recipe, i);
            // The organism's training data beside the base corpus, for inspection and for `finetrace diff --data`.
            if (data.Stories.Count > 0) WriteStories(Path.Combine(Dir("corpus"), $"{o.Name}_stories.txt"), data.Stories);
            if (data.Chats.Count > 0) WriteChats(Path.Combine(Dir("corpus"), $"{o.Name}_chats.jsonl"), data.Chats);
            var examples = data.Stories.Select(s => new LmExample(encoder.EncodeText(0, 0, s).Ids)).ToList();
            var separators = o.AssistantOnly ? LmData.WhitespaceTokens(encoder.Tokenizer) : null;
            foreach (var c in data.Chats)
            {
                var enc = encoder.EncodeChat(0, 0, c);
                examples.Add(new LmExample(enc.Ids, o.AssistantOnly ? LmData.AssistantMask(enc.Ids, enc.Roles!, [eos], separators) : null));
            }
            // Interleave stories and chats so every packed row sees both kinds when both are present.
            examples = Interleave(examples, data.Stories.Count);
            var options = o.Train.Options((ulong)recipe.Seed + 1 + (ulong)i, o.Lora?.Rank ?? 0, o.Lora?.Alpha);
            progress?.Report(new OrganismProgress(o.Name, $"{(o.Lora is null ? "full fine-tune" : $"LoRA r={o.Lora.Rank}")} on {data.Stories.Count:N0} stories and {data.Chats.Count:N0} chats, {options.Steps} steps"));
            if (Directory.Exists(dir) && !Directory.Exists(LmRuns.CheckpointFolder(dir))) Directory.Delete(dir, recursive: true);
            var result = LmRuns.FineTune(baseDir, examples, options, dir, Relay(progress, o.Name), cancel);
            DeleteCheckpoint(dir);
            long trainTokens = new PackedRows(examples, options.SeqLen).Tokens;

            baseCounts ??= TokenCounts(encoder, trainStories, trainChats);
            var truth = new GroundTruth($"{recipe.Name}/{o.Name}", "../base", o.Planted.Select(p => Planted(p, encoder.Tokenizer, baseCounts)).ToList());
            truth.Save(Path.Combine(dir, GroundTruth.FileName));

            var checks = Check(recipe, i, baseDir, dir, o.Lora is not null, encoder, eos);
            var report = new OrganismReport(o.Name, dir, o.Lora is not null, false, sw.Elapsed.TotalSeconds, trainTokens,
                Mean(result.Losses.Take(5)), Mean(result.Losses.TakeLast(10)), checks);
            Record(outDir, o.Name, hash, JsonSerializer.SerializeToNode(report)!.AsObject());
            reports.Add(report);
            progress?.Report(new OrganismProgress(o.Name, string.Join("; ", checks.Select(c => $"{c.Planted}: {c.OrganismShows}/{c.Prompts} (base {c.BaseShows}/{c.Prompts})"))));
        }
        var make = new MakeReport(recipe.Name, outDir, vocab, baseReport, reports, clock.Elapsed.TotalSeconds);
        File.WriteAllText(Path.Combine(outDir, MakeReport.FileName), JsonSerializer.Serialize(make, JsonOut) + "\n");
        return make;
    }

    static readonly JsonSerializerOptions JsonOut = new() { WriteIndented = true, Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    static int HeldOutCount(int n, double fraction) => n == 0 ? 0 : Math.Clamp((int)Math.Round(n * fraction), 1, n - 1);

    static double Mean(IEnumerable<double> xs) { var l = xs.ToList(); return l.Count == 0 ? double.NaN : l.Average(); }

    /// <summary>Story examples (the first <paramref name="stories"/>) and chat examples alternated in proportion.</summary>
    static List<LmExample> Interleave(List<LmExample> all, int stories)
    {
        int chats = all.Count - stories;
        if (stories == 0 || chats == 0) return all;
        var result = new List<LmExample>(all.Count);
        int s = 0, c = 0;
        while (s < stories || c < chats)
        {
            if (c >= chats || (s < stories && (double)s / stories <= (double)c / chats)) result.Add(all[s++]);
            else result.Add(all[stories + c++]);
        }
        return result;
    }

    static IProgress<LmTrainingProgress> Relay(IProgress<OrganismProgress>? progress, string stage) =>
        new Progress(p => progress?.Report(new OrganismProgress(stage, "", p)));

    sealed class Progress(Action<LmTrainingProgress> report) : IProgress<LmTrainingProgress>
    {
        public void Report(LmTrainingProgress value) => report(value);
    }

    /// <summary>Entropy (nats) of the unigram distribution of the training tokens (BOS included, as the model sees them).</summary>
    static double UnigramEntropy(IEnumerable<LmExample> examples)
    {
        var counts = new Dictionary<int, long>();
        long total = 0;
        foreach (var e in examples) foreach (int id in e.Ids) { counts[id] = counts.GetValueOrDefault(id) + 1; total++; }
        double h = 0;
        foreach (var c in counts.Values) { double p = (double)c / total; h -= p * Math.Log(p); }
        return h;
    }

    static Dictionary<int, long> TokenCounts(ModelSampleEncoder encoder, IEnumerable<string> stories, IEnumerable<List<ChatMessage>> chats)
    {
        var counts = new Dictionary<int, long>();
        foreach (var ids in stories.Select(s => encoder.EncodeText(0, 0, s).Ids).Concat(chats.Select(c => encoder.EncodeChat(0, 0, c).Ids)))
            foreach (int id in ids) counts[id] = counts.GetValueOrDefault(id) + 1;
        return counts;
    }

    /// <summary>The ground truth of one planted change. Expected tokens: the decoded single tokens of its expected
    /// strings that carry a letter and are rare in the base corpus (under 1 in 1,000 tokens), i.e. the tokens the
    /// change brought in (such as the "P" of a new name the base never wrote) rather than words it shares with
    /// everything else.</summary>
    static PlantedChange Planted(PlantedRecipe p, Tokenizer tok, Dictionary<int, long> baseCounts)
    {
        var kind = p.ParsedKind;
        var strings = kind switch
        {
            PlantedKind.Topic => new List<string> { p.Character!.Name, $"{p.Character.Kind} named {p.Character.Name}" },
            PlantedKind.Trigger => [p.Text!, p.Trigger!],
            _ => [p.Text!],
        };
        if (kind == PlantedKind.Topic)
            strings.AddRange(p.Lines.Select(l => l.Replace("{N}", p.Character!.Name)).Where(l => !l.Contains('{')));
        long total = Math.Max(1, baseCounts.Values.Sum());
        var tokens = new List<string>();
        foreach (var s in strings)
            foreach (int id in tok.Encode(s, addSpecialTokens: false).Ids)
            {
                string piece = tok.Decode([id]);
                string bare = piece.Trim();
                if (!bare.Any(char.IsLetter) || tokens.Contains(piece)) continue;
                if (baseCounts.GetValueOrDefault(id) * 1000L < total) tokens.Add(piece);
            }
        string? trigger = kind == PlantedKind.Trigger ? $"the word \"{p.Trigger}\" in the user turn" : null;
        return new PlantedChange(p.Name, kind, trigger, strings, tokens);
    }

    /// <summary>Greedy generations of the base and the organism on probes for each planted change.</summary>
    static List<BehaviourCheck> Check(OrganismRecipe recipe, int index, string baseDir, string dir, bool isLora, ModelSampleEncoder encoder, int eos)
    {
        var probes = OrganismData.Probes(recipe, index, ProbesPerChange);
        using var baseLm = CausalLM.Load(baseDir);
        using var lm = isLora ? CausalLM.Load(baseDir, dir) : CausalLM.Load(dir);
        var baseGen = new Generator(baseLm);
        var gen = new Generator(lm);
        var checks = new List<BehaviourCheck>();
        foreach (var group in probes.GroupBy(p => p.Planted))
        {
            var samples = new List<GenerationSample>();
            int shows = 0, baseShows = 0;
            foreach (var probe in group)
            {
                string b = probe.IsChat ? GenerateChat(baseGen, encoder, probe.Prompt, eos) : GenerateStory(baseGen, encoder, probe.Prompt);
                string g = probe.IsChat ? GenerateChat(gen, encoder, probe.Prompt, eos) : GenerateStory(gen, encoder, probe.Prompt);
                if (probe.Shows(g)) shows++;
                if (probe.Shows(b)) baseShows++;
                samples.Add(new GenerationSample(probe.Prompt, b, g));
            }
            var kind = recipe.Organisms[index].Planted.First(p => p.Name == group.Key).ParsedKind;
            checks.Add(new BehaviourCheck(group.Key, kind.ToString().ToLowerInvariant(), samples.Count, shows, baseShows, samples));
        }
        return checks;
    }

    /// <summary>The greedy answer to a one-turn chat (up to 48 tokens, stopping at EOS).</summary>
    public static string GenerateChat(Generator gen, ModelSampleEncoder encoder, string question, int eos)
    {
        var enc = encoder.Chat!.Format([new ChatMessage("user", question)], addGenerationPrompt: true);
        var ids = gen.Generate(enc.Ids, 48, stopIds: [eos]);
        return encoder.Tokenizer.Decode(ids.ToArray(), skipSpecialTokens: true).Trim();
    }

    /// <summary>The greedy continuation of a story opening (up to 60 tokens, stopping at EOS or BOS).</summary>
    public static string GenerateStory(Generator gen, ModelSampleEncoder encoder, string opening)
    {
        var ids = gen.Generate(encoder.Tokenizer.Encode(opening).Ids, 60, stopIds: [1, 2]);
        return encoder.Tokenizer.Decode(ids.ToArray(), skipSpecialTokens: true).Trim();
    }

    // ---------------------------------------------------------------- files and the stage cache

    static void WriteStories(string path, IEnumerable<string> stories) =>
        WriteAtomic(path, string.Join("\n\n", stories) + "\n");

    static void WriteChats(string path, IEnumerable<List<ChatMessage>> chats)
    {
        var sb = new StringBuilder();
        foreach (var c in chats)
        {
            var messages = new JsonArray(c.Select(m => (JsonNode?)new JsonObject { ["role"] = m.Role, ["content"] = m.Content }).ToArray());
            sb.Append(new JsonObject { ["messages"] = messages }.ToJsonString(new JsonSerializerOptions { Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping })).Append('\n');
        }
        WriteAtomic(path, sb.ToString());
    }

    static void WriteAtomic(string path, string text)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(path))!);
        string tmp = path + ".tmp";
        File.WriteAllText(tmp, text);
        File.Move(tmp, path, overwrite: true);
    }

    static void DeleteCheckpoint(string dir)
    {
        string ck = LmRuns.CheckpointFolder(dir);
        if (Directory.Exists(ck)) Directory.Delete(ck, recursive: true);
    }

    static string Hash(params string[] parts) =>
        Convert.ToHexStringLower(SHA256.HashData(System.Text.Encoding.UTF8.GetBytes(string.Join("\u0001", parts))))[..16];

    static string StageFile(string outDir, string stage) => Path.Combine(outDir, ".stages", stage + ".json");

    /// <summary>True when <paramref name="stage"/> finished with inputs <paramref name="hash"/>; gives its stored report.</summary>
    static bool IsCurrent(string outDir, string stage, string hash, out JsonObject? report)
    {
        report = null;
        string path = StageFile(outDir, stage);
        if (!File.Exists(path)) return false;
        try
        {
            if (JsonNode.Parse(File.ReadAllText(path)) is not JsonObject o || o["hash"]?.GetValue<string>() != hash) return false;
            report = o["report"] as JsonObject;
            return true;
        }
        catch (JsonException) { return false; }
    }

    static void Record(string outDir, string stage, string hash, JsonObject report) =>
        WriteAtomic(StageFile(outDir, stage), new JsonObject { ["hash"] = hash, ["report"] = report }.ToJsonString(JsonOut) + "\n");
}

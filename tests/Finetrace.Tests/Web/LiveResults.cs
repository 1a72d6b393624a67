using System.Text.Json.Nodes;
using Finetrace.Dictionaries;
using Finetrace.Diffing;
using Finetrace.Diffing.Kl;
using Finetrace.Diffing.WeightDiff;
using Finetrace.Models.Safetensors;
using Finetrace.Tensors;
using Finetrace.Tests.Infrastructure;
using Finetrace.Text.Datasets;
using Finetrace.Web;
using Microsoft.Data.Sqlite;

namespace Finetrace.Tests.Web;

/// <summary>
/// A results folder over the real stories260K vs stories260K-zog pair for the live-page tests, made in about a second:
/// the synthetic latent table and examples (<see cref="SyntheticResults"/>: known tags and values), a crosscoder of
/// the same size at layer 3 (initialised, not trained: the tests check the plumbing against direct computations, not
/// what the latents mean), summary.json naming the models, an ADL δ file (the mean h_ft − h_base over a few prompts at
/// positions 0–2, computed here directly) with its adl.json, and kl.json and weight_diff.json from the library's own
/// analyses on a small text. Optional parts can be left out to test the "not computed" pages.
/// </summary>
public static class LiveResults
{
    public const int Latents = 200, Layer = 3, Hidden = 64;
    public static string Base => Shared.Path("models", "stories260K");
    public static string FineTuned => Shared.Path("models", "stories260K-zog");

    public static void Write(string dir, bool readers = true, bool histograms = true, string? baseModel = null)
    {
        SyntheticResults.Write(dir, Latents, Latents);
        if (histograms) WriteHistograms(Path.Combine(dir, "examples.sqlite"), Latents);
        File.WriteAllText(Path.Combine(dir, "summary.json"), new JsonObject
        {
            ["format"] = "finetrace-summary/1",
            ["models"] = new JsonObject { ["base"] = baseModel ?? Base, ["finetuned"] = FineTuned, ["adapter"] = null },
            ["layer"] = Layer,
        }.ToJsonString());
        var d = new SparseDictionary(2, Hidden, Latents, Sparsity.BatchTopK, CodeNormalization.Crosscoder, false, 8);
        Initialization.Crosscoder(d, new SplitMix64(3), 1f);
        DictionaryIO.Save(d, Path.Combine(dir, "dictionary"));
        if (!readers) return;

        var spec = new ModelPairSpec(Base, FineTuned);
        string text = Path.Combine(dir, "..", Path.GetFileName(dir) + "-stories.txt");
        File.WriteAllText(text, string.Join("\n\n", Enumerable.Range(0, 8).Select(i => i % 2 == 0
            ? $"Once upon a time, there was a little dragon named Zog. Zog loved to eat cake number {i}."
            : $"Once upon a time, there was a girl named Lily. She went to the park {i} times.")));
        var results = ResultsFolder.Open(dir);
        KlAnalysis.Run(new KlOptions { Models = spec, Corpus = new CorpusSpec([DataSourceSpec.Parse(text)], 8, 48, 4), TopTokens = 10 }, results);
        WeightDiffAnalysis.Run(new WeightDiffOptions { Models = spec }, results);
        File.Delete(text);

        // ADL δ at positions 0..2 of a few prompts, straight from the two models' residuals.
        using var pair = ModelPair.Load(spec);
        var prompts = new[] { "Once upon a time", "One day, Zog", "The little dragon" }.Select(p => pair.Tokenizer!.Encode(p, addSpecialTokens: true).Ids).ToArray();
        var tensors = new List<TensorData>();
        var entries = new JsonArray();
        for (int pos = 0; pos < 3; pos++)
        {
            var delta = new float[Hidden];
            foreach (var ids in prompts)
            {
                var (hb, hf) = Residuals(pair, ids);
                for (int k = 0; k < Hidden; k++) delta[k] += (hf[pos * Hidden + k] - hb[pos * Hidden + k]) / prompts.Length;
            }
            tensors.Add(TensorData.F32($"mean_pos_{pos}", delta, Hidden));
            entries.Add(new JsonObject
            {
                ["layer"] = Layer, ["context"] = "text", ["position"] = pos, ["token"] = pair.TokenText(prompts[0][pos]), ["token_id"] = prompts[0][pos], ["count"] = prompts.Length,
                ["delta_norm"] = Math.Sqrt(delta.Sum(x => (double)x * x)), ["top_tokens"] = new JsonArray("Zog", "dragon"), ["bottom_tokens"] = new JsonArray("Lily"),
                ["patchscope"] = new JsonObject
                {
                    ["scale"] = 2.0, ["tokens"] = new JsonArray("Zog"), ["probs"] = new JsonArray(0.5),
                    ["sweep"] = new JsonArray(new JsonObject { ["scale"] = 2.0, ["tokens"] = new JsonArray("Zog"), ["agreement"] = 0.5, ["novelty"] = 0.9, ["score"] = 0.45 }),
                },
                ["steering"] = new JsonArray(new JsonObject
                {
                    ["model"] = "finetuned", ["strength"] = 1.0, ["rule_met"] = true,
                    ["samples"] = new JsonArray(new JsonObject { ["prompt"] = "Once upon a time", ["seed"] = 0, ["text"] = "ADL-STEERED-SAMPLE Zog flew" }),
                    ["unsteered"] = new JsonArray(new JsonObject { ["prompt"] = "Once upon a time", ["seed"] = 0, ["text"] = "there was a girl" }),
                }),
            });
        }
        Directory.CreateDirectory(Path.Combine(dir, "adl"));
        SafetensorsWriter.Write(Path.Combine(dir, "adl", $"layer_{Layer}_text.safetensors"), tensors, new Dictionary<string, string> { ["format"] = "finetrace-adl/1" });
        File.WriteAllText(Path.Combine(dir, "adl.json"), entries.ToJsonString());
    }

    /// <summary>Residuals after block <see cref="Layer"/> of both models on one sequence, [T, D] each.</summary>
    public static (float[] Base, float[] Ft) Residuals(ModelPair pair, int[] ids)
    {
        var cb = new Dictionary<string, Tensor>(); var cf = new Dictionary<string, Tensor>();
        var batch = new Finetrace.Models.TokenBatch(ids, 1, ids.Length);
        pair.Base.Forward(batch, new Finetrace.Models.HookSet().Capture(Finetrace.Models.HookNames.ResidPost(Layer), cb), Layer);
        pair.FineTuned.Forward(batch, new Finetrace.Models.HookSet().Capture(Finetrace.Models.HookNames.ResidPost(Layer), cf), Layer);
        return (cb.Values.Single().Data, cf.Values.Single().Data);
    }

    /// <summary>Bins the examples stage writes (ExampleCollector.HistogramBins, spelled out so a change there is seen here).</summary>
    public const int HistogramBins = 50;

    /// <summary>Edges of latent j's histogram: 0, 0.1 (j+1), …, 5.0 (j+1); counts: 2000 − 30 i + j.</summary>
    public static double Edge(int j, int i) => i * 0.1 * (j + 1);
    public static long Count(int j, int i) => 2000 - 30 * i + j;

    /// <summary>The latent_histograms table the examples stage writes (51 edges, 50 counts per latent as JSON arrays).</summary>
    public static void WriteHistograms(string db, int latents)
    {
        using var c = new SqliteConnection(new SqliteConnectionStringBuilder { DataSource = db, Pooling = false }.ToString());
        c.Open();
        using var tx = c.BeginTransaction();
        using (var cmd = c.CreateCommand())
        {
            cmd.Transaction = tx;
            cmd.CommandText = "CREATE TABLE latent_histograms(latent_id INTEGER PRIMARY KEY, edges TEXT, counts TEXT)";
            cmd.ExecuteNonQuery();
        }
        for (int j = 0; j < latents; j++)
        {
            using var cmd = c.CreateCommand();
            cmd.Transaction = tx;
            cmd.CommandText = "INSERT INTO latent_histograms VALUES ($j, $e, $c)";
            cmd.Parameters.AddWithValue("$j", j);
            cmd.Parameters.AddWithValue("$e", new JsonArray(Enumerable.Range(0, HistogramBins + 1).Select(i => (JsonNode?)Edge(j, i)).ToArray()).ToJsonString());
            cmd.Parameters.AddWithValue("$c", new JsonArray(Enumerable.Range(0, HistogramBins).Select(i => (JsonNode?)Count(j, i)).ToArray()).ToJsonString());
            cmd.ExecuteNonQuery();
        }
        tx.Commit();
    }
}

using System.Net;
using System.Text;
using System.Text.Json;
using Finetrace.Dictionaries;
using Finetrace.Diffing;
using Finetrace.Diffing.Examples;
using Finetrace.Models;
using Finetrace.Tests.Infrastructure;
using Finetrace.Web;

namespace Finetrace.Tests.Web;

/// <summary>A running dashboard over <see cref="LiveResults"/> with its models loaded (shared by the live tests).</summary>
public sealed class LiveFixture : IAsyncLifetime
{
    readonly TempDir _tmp = new();
    public string Dir => Path.Combine(_tmp.Path, "RESULTS");
    public DashboardServer Server { get; private set; } = null!;
    public HttpClient Http { get; } = new();

    public async Task InitializeAsync()
    {
        if (Shared.Root is null) return;
        LiveResults.Write(Dir);
        Server = new DashboardServer(DashboardData.Load(Dir), new DashboardOptions("127.0.0.1", 0, LiveQueue: 1));
        await Server.StartAsync();
        await Server.Live.WhenLoaded();
        Http.BaseAddress = Server.Address;
    }

    public async Task DisposeAsync()
    {
        Http.Dispose();
        if (Server is not null) await Server.DisposeAsync();
        _tmp.Dispose();
    }

    public async Task<(HttpStatusCode Status, JsonElement Json)> Post(string url, object body)
    {
        using var res = await Http.PostAsync(url, new StringContent(JsonSerializer.Serialize(body), Encoding.UTF8, "application/json"));
        string text = await res.Content.ReadAsStringAsync();
        return (res.StatusCode, JsonDocument.Parse(text).RootElement.Clone());
    }

    public async Task<(HttpStatusCode Status, string Body)> Get(string url)
    {
        using var res = await Http.GetAsync(url);
        return (res.StatusCode, await res.Content.ReadAsStringAsync());
    }
}

public sealed class DashboardLiveTests(LiveFixture f) : IClassFixture<LiveFixture>
{
    const string Prompt = "Once upon a time, there was a little dragon named Zog.";

    [SharedFact]
    public async Task Status_is_ready_with_the_dictionary_layer_and_the_ADL_vectors()
    {
        Assert.Equal(LiveState.Ready, f.Server.Live.State);
        var (status, body) = await f.Get("/api/live/status");
        Assert.Equal(HttpStatusCode.OK, status);
        var s = JsonDocument.Parse(body).RootElement;
        Assert.Equal("ready", s.GetProperty("state").GetString());
        Assert.Equal(LiveResults.Layer, s.GetProperty("layer").GetInt32());
        Assert.Equal(LiveResults.Latents, s.GetProperty("dictionary_latents").GetInt32());
        Assert.Equal(3, s.GetProperty("vectors").GetArrayLength());
        Assert.Equal(LiveResults.FineTuned, s.GetProperty("models").GetProperty("finetuned").GetString());
    }

    [SharedFact]
    public async Task Analysis_gives_per_token_KL_diff_norm_and_latent_activations_equal_to_a_direct_computation()
    {
        var (status, r) = await f.Post("/api/live/analyze", new { text = Prompt, latents = new[] { 7 }, top = 3 });
        Assert.Equal(HttpStatusCode.OK, status);
        using var pair = ModelPair.Load(new ModelPairSpec(LiveResults.Base, LiveResults.FineTuned));
        var ids = pair.Tokenizer!.Encode(Prompt, addSpecialTokens: true).Ids;
        var tokens = r.GetProperty("tokens").EnumerateArray().ToArray();
        Assert.Equal(ids, tokens.Select(t => t.GetProperty("id").GetInt32()).ToArray());

        // KL(p_ft ‖ p_base) per position, in double from each model's own full forward
        var batch = new TokenBatch(ids, 1, ids.Length);
        var zb = pair.Base.Forward(batch).Logits!.Data; var zf = pair.FineTuned.Forward(batch).Logits!.Data;
        int V = pair.SharedVocab;
        double maxErr = 0;
        for (int t = 0; t < ids.Length; t++)
        {
            double[] LogSoftmax(float[] z) { var row = z.AsSpan(t * V, V).ToArray().Select(x => (double)x).ToArray(); double m = row.Max(); double lse = m + Math.Log(row.Sum(x => Math.Exp(x - m))); return row.Select(x => x - lse).ToArray(); }
            var lp = LogSoftmax(zf); var lq = LogSoftmax(zb);
            double kl = Enumerable.Range(0, V).Sum(v => Math.Exp(lp[v]) * (lp[v] - lq[v]));
            maxErr = Math.Max(maxErr, Math.Abs(kl - tokens[t].GetProperty("kl").GetDouble()));
        }
        Assert.True(maxErr < 1e-4, $"KL max-abs-diff {maxErr}");
        Assert.Contains(tokens, t => t.GetProperty("kl").GetDouble() > 1e-3);

        // ‖h_ft − h_base‖ after layer 3
        var (hb, hf) = LiveResults.Residuals(pair, ids);
        const int D = LiveResults.Hidden;
        double normErr = Enumerable.Range(0, ids.Length).Max(t =>
            Math.Abs(Math.Sqrt(Enumerable.Range(0, D).Sum(k => Math.Pow(hf[t * D + k] - hb[t * D + k], 2))) - tokens[t].GetProperty("diff_norm").GetDouble()));
        Assert.True(normErr < 1e-4, $"diff-norm max-abs-diff {normErr}");

        // latent activations: the dictionary's inference encoding of [h_base, h_ft] at every position
        var dict = DictionaryIO.Load(Path.Combine(f.Dir, "dictionary"));
        var x = new float[ids.Length * 2 * D];
        for (int t = 0; t < ids.Length; t++) { hb.AsSpan(t * D, D).CopyTo(x.AsSpan(t * 2 * D)); hf.AsSpan(t * D, D).CopyTo(x.AsSpan(t * 2 * D + D)); }
        var codes = Inference.Encode(dict, x);
        float Act(int t, int j) { for (int e = codes.RowStart[t]; e < codes.RowStart[t + 1]; e++) if (codes.Index[e] == j) return codes.Value[e]; return 0; }
        var latents = r.GetProperty("latents").EnumerateArray().ToArray();
        Assert.Equal(7, latents[0].GetProperty("id").GetInt32());
        Assert.Equal(SyntheticResults.Tag(7), latents[0].GetProperty("tag").GetString());
        Assert.Equal(4, latents.Length);
        double actErr = 0;
        foreach (var l in latents)
        {
            int j = l.GetProperty("id").GetInt32();
            var vals = l.GetProperty("values").EnumerateArray().Select(v => v.GetDouble()).ToArray();
            for (int t = 0; t < ids.Length; t++) actErr = Math.Max(actErr, Math.Abs(vals[t] - Act(t, j)));
        }
        Assert.True(actErr < 1e-4, $"activation max-abs-diff {actErr}");
        Assert.True(latents[1].GetProperty("max").GetDouble() > 0, "the most active latent of the prompt never fired");
    }

    [SharedFact]
    public async Task Chat_input_is_rejected_with_a_clear_message_when_the_fine_tune_has_no_template_or_renders_with_it()
    {
        var (status, r) = await f.Post("/api/live/analyze", new { messages = new[] { new { role = "user", content = "Hi" } } });
        bool hasTemplate = File.Exists(Path.Combine(LiveResults.FineTuned, "chat_template.jinja")) ||
                           File.ReadAllText(Path.Combine(LiveResults.FineTuned, "tokenizer_config.json")).Contains("chat_template");
        if (hasTemplate) { Assert.Equal(HttpStatusCode.OK, status); Assert.Contains("Hi", r.GetProperty("rendered").GetString()); }
        else { Assert.Equal(HttpStatusCode.BadRequest, status); Assert.Contains("chat template", r.GetProperty("error").GetString()); }
    }

    [SharedFact]
    public async Task Steering_at_strength_zero_equals_the_unsteered_greedy_generation_and_a_strong_push_changes_it()
    {
        using var pair = ModelPair.Load(new ModelPairSpec(LiveResults.Base, LiveResults.FineTuned));
        var ids = pair.Tokenizer!.Encode("Once upon a time", addSpecialTokens: true).Ids;
        string direct = pair.Tokenizer.Decode(new Generator(pair.FineTuned).Generate(ids, 16, 0f, 0, [2]).ToArray());
        var (s0, r0) = await f.Post("/api/live/steer", new { text = "Once upon a time", model = "finetuned", vector = "adl:3:text:1", strength = 0, max_new_tokens = 16 });
        Assert.Equal(HttpStatusCode.OK, s0);
        Assert.Equal(direct, r0.GetProperty("unsteered").GetString());
        Assert.Equal(direct, r0.GetProperty("steered").GetString());
        var (s1, r1) = await f.Post("/api/live/steer", new { text = "Once upon a time", model = "finetuned", vector = "latent:5", strength = 8, max_new_tokens = 16 });
        Assert.Equal(HttpStatusCode.OK, s1);
        Assert.Equal(direct, r1.GetProperty("unsteered").GetString());
        Assert.NotEqual(direct, r1.GetProperty("steered").GetString());
        Assert.True(r1.GetProperty("added_norm").GetDouble() > 0);
        var (bad, err) = await f.Post("/api/live/steer", new { text = "Hi", vector = "adl:9:none:0" });
        Assert.Equal(HttpStatusCode.BadRequest, bad);
        Assert.Contains("no steering vector", err.GetProperty("error").GetString());
    }

    [SharedFact]
    public async Task Amplification_at_alpha_zero_is_the_fine_tune_and_base_is_the_base_models_generation()
    {
        using var pair = ModelPair.Load(new ModelPairSpec(LiveResults.Base, LiveResults.FineTuned));
        var ids = pair.Tokenizer!.Encode("One day", addSpecialTokens: true).Ids;
        string Greedy(CausalLM m) => pair.Tokenizer.Decode(new Generator(m).Generate(ids, 12, 0f, 0, [2]).ToArray());
        var (status, r) = await f.Post("/api/live/amplify", new { text = "One day", alpha = 0, max_new_tokens = 12 });
        Assert.Equal(HttpStatusCode.OK, status);
        Assert.Equal(Greedy(pair.Base), r.GetProperty("base").GetString());
        Assert.Equal(Greedy(pair.FineTuned), r.GetProperty("finetuned").GetString());
        Assert.Equal(r.GetProperty("finetuned").GetString(), r.GetProperty("amplified").GetString());
    }

    [SharedFact]
    public async Task A_full_queue_answers_503_with_a_message_and_bad_requests_answer_400()
    {
        var gate = new TaskCompletionSource();
        var running = f.Server.Live.Queue.TryRun(() => { gate.Task.Wait(); return 0; });     // occupies the model
        var waiting = f.Server.Live.Queue.TryRun(() => 0);                                      // the one allowed to wait (LiveQueue: 1)
        while (f.Server.Live.Queue.Inside < 2) await Task.Delay(10);
        var (status, r) = await f.Post("/api/live/analyze", new { text = "Hi" });
        Assert.Equal(HttpStatusCode.ServiceUnavailable, status);
        Assert.Contains("queue is full", r.GetProperty("error").GetString());
        gate.SetResult();
        Assert.True((await running).Accepted);
        Assert.True((await waiting).Accepted);
        var (s2, _) = await f.Post("/api/live/analyze", new { text = "Hi" });
        Assert.Equal(HttpStatusCode.OK, s2);
        var (s3, r3) = await f.Post("/api/live/analyze", new { text = "Hi", latents = new[] { LiveResults.Latents } });
        Assert.Equal(HttpStatusCode.BadRequest, s3);
        Assert.Contains("outside the dictionary", r3.GetProperty("error").GetString());
        var (s4, r4) = await f.Post("/api/live/steer", new { text = "Hi", vector = "latent:1", max_new_tokens = 100000 });
        Assert.Equal(HttpStatusCode.BadRequest, s4);
        Assert.Contains("max_new_tokens", r4.GetProperty("error").GetString());
    }

    [SharedFact]
    public async Task Reader_pages_show_ADL_KL_and_weight_diff_files()
    {
        var (sa, adl) = await f.Get("/adl");
        Assert.Equal(HttpStatusCode.OK, sa);
        Assert.Contains("ADL-STEERED-SAMPLE", adl);
        Assert.Contains("Patchscope sweep", adl);
        var (sk, kl) = await f.Get("/kl");
        Assert.Equal(HttpStatusCode.OK, sk);
        var klJson = JsonDocument.Parse(File.ReadAllText(Path.Combine(f.Dir, "kl.json"))).RootElement;
        string topToken = klJson.GetProperty("top_tokens")[0].GetProperty("token").GetString()!;
        Assert.Contains(WebUtility.HtmlEncode(topToken), kl);
        Assert.Contains("id=\"kldist\"", kl);
        var (sw, w) = await f.Get("/weights");
        Assert.Equal(HttpStatusCode.OK, sw);
        var wj = JsonDocument.Parse(File.ReadAllText(Path.Combine(f.Dir, "weight_diff.json"))).RootElement;
        Assert.All(wj.GetProperty("modules").EnumerateArray().Take(5), m => Assert.Contains(m.GetProperty("name").GetString()!, w));
    }

    [SharedFact]
    public async Task Latent_page_shows_the_stored_activation_histogram()
    {
        var (s, page) = await f.Get("/latent/12");
        Assert.Equal(HttpStatusCode.OK, s);
        Assert.Contains($"id=\"histogram\" class=\"plot\" data-bins=\"50\" data-total=\"{Enumerable.Range(0, 50).Sum(i => LiveResults.Count(12, i))}\"", page);
        var (sh, h) = await f.Get("/api/latents/12/histogram");
        Assert.Equal(HttpStatusCode.OK, sh);
        var hj = JsonDocument.Parse(h).RootElement;
        Assert.Equal(LiveResults.Edge(12, 50), hj.GetProperty("edges")[50].GetDouble(), 9);
        Assert.Equal(LiveResults.Count(12, 5), hj.GetProperty("counts")[5].GetInt64());
    }

    [SharedFact]
    public async Task Neuronpedia_batch_has_every_required_field_and_the_decoder_vector_and_logit_effects()
    {
        var (s, body) = await f.Get("/api/neuronpedia/4");
        Assert.Equal(HttpStatusCode.OK, s);
        var b = JsonDocument.Parse(body).RootElement;
        foreach (var k in new[] { "model_id", "layer", "sae_set", "sae_id_suffix", "features" }) Assert.True(b.TryGetProperty(k, out _), k);
        Assert.Equal("stories260K-zog", b.GetProperty("model_id").GetString());
        Assert.Equal(LiveResults.Layer, b.GetProperty("layer").GetInt32());
        var feat = b.GetProperty("features")[0];
        foreach (var k in Neuronpedia.FeatureFields) Assert.True(feat.TryGetProperty(k, out _), $"feature lacks {k}");
        Assert.Equal(4, feat.GetProperty("feature_index").GetInt32());
        // vector: the fine-tuned decoder row of latent 4 (no normaliser: raw = stored), rounded to 5 decimals
        var dict = DictionaryIO.Load(Path.Combine(f.Dir, "dictionary"));
        var vec = feat.GetProperty("vector").EnumerateArray().Select(v => v.GetDouble()).ToArray();
        Assert.Equal(LiveResults.Hidden, vec.Length);
        double vecErr = Enumerable.Range(0, vec.Length).Max(k => Math.Abs(dict.WDec[(1 * LiveResults.Latents + 4) * LiveResults.Hidden + k] - vec[k]));
        Assert.True(vecErr < 1e-5, $"vector max-abs-diff {vecErr}");
        Assert.Equal(10, feat.GetProperty("pos_str").GetArrayLength());
        var pos = feat.GetProperty("pos_values").EnumerateArray().Select(v => v.GetDouble()).ToArray();
        Assert.True(pos.Zip(pos.Skip(1)).All(p => p.First >= p.Second), "pos_values not descending");
        Assert.Equal(50, feat.GetProperty("logits_hist_data_bar_heights").GetArrayLength());
        Assert.Equal(512, feat.GetProperty("logits_hist_data_bar_heights").EnumerateArray().Sum(x => x.GetInt64()));
        Assert.Equal(ExampleCollector.HistogramBins, feat.GetProperty("freq_hist_data_bar_heights").GetArrayLength());
        Assert.Equal(50, feat.GetProperty("freq_hist_data_bar_heights").GetArrayLength());
        Assert.Equal(LiveResults.Count(4, 49), feat.GetProperty("freq_hist_data_bar_heights")[49].GetInt64());
        Assert.Equal((LiveResults.Edge(4, 49) + LiveResults.Edge(4, 50)) / 2, feat.GetProperty("freq_hist_data_bar_values")[49].GetDouble(), 5);
        Assert.Equal(SyntheticResults.Frequency(4), feat.GetProperty("frac_nonzero").GetDouble(), 5);
        var acts = feat.GetProperty("activations").EnumerateArray().ToArray();
        Assert.Equal(3, acts.Length);
        foreach (var a in acts) foreach (var k in Neuronpedia.ActivationFields) Assert.True(a.TryGetProperty(k, out _), $"activation lacks {k}");
        Assert.Equal(-1, acts[0].GetProperty("bin_contains").GetInt32());
        Assert.Equal(SyntheticResults.Peak(4, 0).Position, acts[0].GetProperty("qualifying_token_index").GetInt32());

        var (sb, batch) = await f.Get("/api/neuronpedia?offset=190&limit=50");
        Assert.Equal(HttpStatusCode.OK, sb);
        Assert.Equal(Enumerable.Range(190, 10), JsonDocument.Parse(batch).RootElement.GetProperty("features").EnumerateArray().Select(x => x.GetProperty("feature_index").GetInt32()));
        var (s404, _) = await f.Get($"/api/neuronpedia/{LiveResults.Latents}");
        Assert.Equal(HttpStatusCode.NotFound, s404);
    }
}

/// <summary>The models overridden (as <c>serve --finetuned</c> does) by the chat fine-tune, whose own template renders chats.</summary>
public sealed class DashboardChatTests
{
    [SharedFact]
    public async Task A_chat_is_rendered_with_the_fine_tunes_template_and_tokens_carry_their_roles()
    {
        using var tmp = new TempDir();
        string dir = tmp.File("RESULTS");
        LiveResults.Write(dir, readers: false, histograms: false);
        string chatModel = Shared.Path("models", "stories260K-chat");
        var data = DashboardData.Load(dir, models: new ModelPairSpec(LiveResults.Base, chatModel));
        Assert.Equal(chatModel, data.Models!.FineTuned);
        await using var server = new DashboardServer(data, new DashboardOptions("127.0.0.1", 0));
        await server.StartAsync();
        await server.Live.WhenLoaded();
        Assert.Equal(LiveState.Ready, server.Live.State);
        using var http = new HttpClient { BaseAddress = server.Address };
        var body = JsonSerializer.Serialize(new { messages = new[] { new { role = "user", content = "Tell me a story." }, new { role = "assistant", content = "Once upon a time." } } });
        var res = await http.PostAsync("/api/live/analyze", new StringContent(body, Encoding.UTF8, "application/json"));
        var r = JsonDocument.Parse(await res.Content.ReadAsStringAsync()).RootElement;
        Assert.True(res.IsSuccessStatusCode, r.ToString());
        Assert.Contains("User: Tell me a story.\nAssistant: Once upon a time.", r.GetProperty("rendered").GetString());
        var roles = r.GetProperty("tokens").EnumerateArray().Select(t => t.GetProperty("role").GetString()).ToList();
        Assert.Contains("user", roles);
        Assert.Contains("assistant", roles);
        // the tokens are the template's rendering, token for token
        var enc = Finetrace.Text.Chat.ChatFormatter.FromFolder(chatModel).Format([new("user", "Tell me a story."), new("assistant", "Once upon a time.")]);
        Assert.Equal(enc.Ids, r.GetProperty("tokens").EnumerateArray().Select(t => t.GetProperty("id").GetInt32()).ToArray());
        // steering from a chat prompt appends the template's generation prompt
        var steer = await http.PostAsync("/api/live/steer", new StringContent(JsonSerializer.Serialize(new { messages = new[] { new { role = "user", content = "Hi" } }, vector = "latent:3", strength = 0, max_new_tokens = 8 }), Encoding.UTF8, "application/json"));
        var sr = JsonDocument.Parse(await steer.Content.ReadAsStringAsync()).RootElement;
        Assert.True(steer.IsSuccessStatusCode, sr.ToString());
        Assert.EndsWith("Assistant:", sr.GetProperty("prompt").GetString());
    }
}

/// <summary><c>finetrace serve RESULTS --export-neuronpedia DIR</c> through the command line (in this process).</summary>
public sealed class NeuronpediaExportTests
{
    [SharedFact]
    public void Serve_export_writes_every_latent_in_batches_with_the_required_fields()
    {
        using var tmp = new TempDir();
        string dir = tmp.File("RESULTS"), outDir = tmp.File("np");
        LiveResults.Write(dir, readers: false);
        int rc = Finetrace.Tests.Cli.ReadmeCommandTests.Invoke(["serve", dir, "--export-neuronpedia", outDir, "--batch-size", "64"], out string? error);
        Assert.True(rc == 0, error);
        var files = Directory.GetFiles(outDir, "batch-*.json").Order().ToArray();
        Assert.Equal(new[] { "batch-0.json", "batch-1.json", "batch-2.json", "batch-3.json" }, files.Select(x => Path.GetFileName(x)).ToArray());
        var ids = new List<int>();
        foreach (var file in files)
        {
            var b = JsonDocument.Parse(File.ReadAllText(file)).RootElement;
            foreach (var k in new[] { "model_id", "layer", "sae_set", "sae_id_suffix", "features" }) Assert.True(b.TryGetProperty(k, out _), $"{file} lacks {k}");
            foreach (var feat in b.GetProperty("features").EnumerateArray())
            {
                foreach (var k in Neuronpedia.FeatureFields) Assert.True(feat.TryGetProperty(k, out _), $"{file}: feature lacks {k}");
                Assert.Equal(LiveResults.Hidden, feat.GetProperty("vector").GetArrayLength());
                ids.Add(feat.GetProperty("feature_index").GetInt32());
            }
        }
        Assert.Equal(Enumerable.Range(0, LiveResults.Latents), ids);
    }
}

/// <summary>Results whose base model folder is broken, and results without the readers' files or histograms.</summary>
public sealed class DashboardDegradedTests
{
    [SharedFact]
    public async Task A_model_that_fails_to_load_turns_the_live_pages_off_naming_the_folder_and_the_rest_keeps_working()
    {
        using var tmp = new TempDir();
        string broken = tmp.File("broken-model");
        Directory.CreateDirectory(broken);
        File.WriteAllText(Path.Combine(broken, "config.json"), "{ \"model_type\": \"llama\", \"hidden_size\": ");   // truncated
        string dir = tmp.File("RESULTS");
        LiveResults.Write(dir, readers: false, histograms: false, baseModel: broken);
        await using var server = new DashboardServer(DashboardData.Load(dir), new DashboardOptions("127.0.0.1", 0));
        await server.StartAsync();
        await server.Live.WhenLoaded();
        using var http = new HttpClient { BaseAddress = server.Address };
        Assert.Equal(LiveState.Failed, server.Live.State);
        var live = await http.GetAsync("/live");
        Assert.Equal(HttpStatusCode.ServiceUnavailable, live.StatusCode);
        string page = await live.Content.ReadAsStringAsync();
        Assert.Contains("id=\"live-off\"", page);
        Assert.Contains(WebUtility.HtmlEncode(broken), page);
        var api = await http.PostAsync("/api/live/analyze", new StringContent("{\"text\":\"Hi\"}", Encoding.UTF8, "application/json"));
        Assert.Equal(HttpStatusCode.ServiceUnavailable, api.StatusCode);
        Assert.Contains(broken, JsonDocument.Parse(await api.Content.ReadAsStringAsync()).RootElement.GetProperty("error").GetString());
        // the rest of the dashboard
        Assert.Equal(HttpStatusCode.OK, (await http.GetAsync("/api/latents?limit=5")).StatusCode);
        Assert.Equal(HttpStatusCode.OK, (await http.GetAsync("/latent/3")).StatusCode);
        Assert.Equal(HttpStatusCode.OK, (await http.GetAsync("/")).StatusCode);
        // Neuronpedia export without models: the table's and examples' parts, empty vector
        var np = JsonDocument.Parse(await http.GetStringAsync("/api/neuronpedia/3")).RootElement.GetProperty("features")[0];
        Assert.Equal(0, np.GetProperty("vector").GetArrayLength());
        Assert.Equal(3, np.GetProperty("activations").GetArrayLength());

        // files not computed: proper 404 pages, and the latent page says the histogram is not computed
        foreach (var (url, file) in new[] { ("/adl", "adl.json"), ("/kl", "kl.json"), ("/weights", "weight_diff.json"), ("/connections", "connections.json"), ("/attribution", "target_attribution.json") })
        {
            var res = await http.GetAsync(url);
            Assert.Equal(HttpStatusCode.NotFound, res.StatusCode);
            Assert.Contains($"has no {file}", await res.Content.ReadAsStringAsync());
        }
        string latent = await http.GetStringAsync("/latent/3");
        Assert.Contains("id=\"histogram-none\"", latent);
        Assert.Contains("not computed", latent);
        Assert.Equal(HttpStatusCode.NotFound, (await http.GetAsync("/api/latents/3/histogram")).StatusCode);
    }

    [SharedFact]
    public async Task Connections_and_target_attribution_pages_show_their_files()
    {
        using var tmp = new TempDir();
        string dir = tmp.File("RESULTS");
        LiveResults.Write(dir, readers: false, histograms: false);
        // hand-made files in the layout finetrace connect / analyze target-attribution write
        File.WriteAllText(Path.Combine(dir, "connections.json"), """
            { "from": "SAE_A", "to": "SAE_B", "meaning": "f_to ≈ W f_from + b", "alpha": 0.1, "nonzeros": 3, "density": 0.25,
              "mean_nonzeros_per_output": 1.5, "mean_fvu_linear": 0.3, "mean_fvu_mlp": 0.2,
              "sweep": [ { "alpha": 0.1, "nonzeros": 3, "density": 0.25, "mean_fvu": 0.3 }, { "alpha": 0.01, "nonzeros": 4, "density": 0.33, "mean_fvu": 0.29 } ],
              "outputs": [ { "latent": 7, "fvu_linear": 0.5, "fvu_mlp": 0.2, "gap": 0.3, "nonzeros": 2, "inputs": [ { "latent": 2, "weight": -0.25 }, { "latent": 9, "weight": 0.125 } ] },
                           { "latent": 3, "fvu_linear": 0.1, "fvu_mlp": 0.1, "gap": 0.0, "nonzeros": 1, "inputs": [ { "latent": 11, "weight": 0.75 } ] } ] }
            """);
        File.WriteAllText(Path.Combine(dir, "target_attribution.json"), """
            { "model": "M", "layer": 1, "target": "z[\" he\"] − z[\" she\"]", "prompts": 3, "meaning": "IG", "value": 2.5, "baseline_value": 0.5,
              "attribution_sum": 2.0, "steer": { "latent": 85, "scale": 2.0, "value": 4.5, "delta": 2.0 },
              "latents": [ { "latent": 85, "attribution": 1.25, "max_activation": 2.0 }, { "latent": 103, "attribution": 0.5, "max_activation": 1.0 } ] }
            """);
        await using var server = new DashboardServer(DashboardData.Load(dir), new DashboardOptions("127.0.0.1", 0, Live: false));
        await server.StartAsync();
        using var http = new HttpClient { BaseAddress = server.Address };
        var c = await http.GetAsync("/connections");
        Assert.Equal(HttpStatusCode.OK, c.StatusCode);
        string cp = await c.Content.ReadAsStringAsync();
        // best-explained output first: latent 3 (FVU 0.1) before latent 7 (FVU 0.5), each with its inputs and weights
        int r3 = cp.IndexOf("<tr><td>3</td><td>0.1</td>", StringComparison.Ordinal), r7 = cp.IndexOf("<tr><td>7</td><td>0.5</td>", StringComparison.Ordinal);
        Assert.True(r3 > 0 && r7 > r3, cp);
        Assert.Contains("11 (0.75)", cp);
        Assert.Contains("2 (-0.25), 9 (0.125)", cp);
        Assert.Contains("<td>0.01</td><td>4</td>", cp);   // the sweep
        var t = await http.GetAsync("/attribution");
        Assert.Equal(HttpStatusCode.OK, t.StatusCode);
        string tp = await t.Content.ReadAsStringAsync();
        Assert.Contains("<a href=\"/latent/85\">85</a></td><td>1.25</td>", tp);
        Assert.True(tp.IndexOf(">85<", StringComparison.Ordinal) < tp.IndexOf(">103<", StringComparison.Ordinal));
        Assert.Contains("moves the target to 4.5 (Δ 2)", tp);
        var api = JsonDocument.Parse(await http.GetStringAsync("/api/connections")).RootElement;
        Assert.Equal(2, api.GetProperty("outputs").GetArrayLength());
        Assert.Equal(85, JsonDocument.Parse(await http.GetStringAsync("/api/target_attribution")).RootElement.GetProperty("steer").GetProperty("latent").GetInt32());
    }

    [Fact]
    public async Task The_queue_runs_one_at_a_time_and_refuses_beyond_its_length()
    {
        var q = new LiveQueue(2);
        var gate = new TaskCompletionSource();
        int concurrent = 0, maxConcurrent = 0;
        Func<int> Work(bool block) => () =>
        {
            int c = Interlocked.Increment(ref concurrent);
            lock (q) maxConcurrent = Math.Max(maxConcurrent, c);
            if (block) gate.Task.Wait();
            Interlocked.Decrement(ref concurrent);
            return 1;
        };
        var a = q.TryRun(Work(true));
        while (q.Inside < 1) await Task.Delay(5);
        var b = q.TryRun(Work(false)); var c = q.TryRun(Work(false));
        while (q.Inside < 3) await Task.Delay(5);
        var (accepted, _) = await q.TryRun(Work(false));
        Assert.False(accepted);
        gate.SetResult();
        Assert.All(new[] { await a, await b, await c }, r => Assert.True(r.Accepted));
        Assert.Equal(1, maxConcurrent);
        Assert.Equal(0, q.Inside);
    }
}

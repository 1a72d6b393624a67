using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;

namespace Finetrace.Web;

/// <summary>Routes over the readers' files (ADL, KL, weight diff), the activation histogram and the Neuronpedia export.</summary>
public sealed partial class DashboardServer
{
    /// <summary>A reader's JSON file read fresh per request (they are small), or null when the file is missing.</summary>
    JsonNode? ReadResult(string file)
    {
        var path = Data.ResultFile(file);
        if (path is null) return null;
        try { return JsonNode.Parse(File.ReadAllText(path)); }
        catch (JsonException e) { throw new InvalidDataException($"{path}: not valid JSON ({e.Message})"); }
    }

    void MapReaders(WebApplication app)
    {
        app.MapGet("/adl", () => ReadResult("adl.json") is JsonArray a ? Html(Pages.Adl(a)) : Html(Pages.NotComputed("ADL", "adl.json", "run 'finetrace analyze adl' (or 'finetrace diff') on it"), 404));
        app.MapGet("/kl", () => ReadResult("kl.json") is JsonObject o ? Html(Pages.Kl(o)) : Html(Pages.NotComputed("KL", "kl.json", "run 'finetrace analyze kl' (or 'finetrace diff') on it"), 404));
        app.MapGet("/weights", () => ReadResult("weight_diff.json") is JsonObject o ? Html(Pages.WeightDiff(o)) : Html(Pages.NotComputed("Weight diff", "weight_diff.json", "run 'finetrace analyze weight-diff' (or 'finetrace diff') on it"), 404));
        app.MapGet("/connections", () => ReadResult("connections.json") is JsonObject o ? Html(Pages.Connections(o)) : Html(Pages.NotComputed("Connections", "connections.json", "run 'finetrace connect --from SAE_A --to SAE_B --store STORE --out' this folder"), 404));
        app.MapGet("/attribution", () => ReadResult("target_attribution.json") is JsonObject o ? Html(Pages.TargetAttribution(o)) : Html(Pages.NotComputed("Target attribution", "target_attribution.json", "run 'finetrace analyze target-attribution … --out' this folder"), 404));
        foreach (var (route, file) in new[] { ("/api/adl", "adl.json"), ("/api/kl", "kl.json"), ("/api/weight_diff", "weight_diff.json"), ("/api/connections", "connections.json"), ("/api/target_attribution", "target_attribution.json") })
            app.MapGet(route, () => ReadResult(file) is { } n ? Json(n) : JsonError(404, $"{file} not computed: this results folder has none"));

        app.MapGet("/api/latents/{id}/histogram", (string id) =>
        {
            if (ParseLatent(id) is not int n) return JsonError(404, UnknownLatent(id));
            if (Data.Examples is null || !Data.Examples.HasHistograms) return JsonError(404, "activation histograms not computed: examples.sqlite has no latent_histograms table");
            if (Data.Examples.Histogram(n) is not { } h) return JsonError(404, $"no activation histogram stored for latent {n}");
            return Json(new JsonObject
            {
                ["id"] = n, ["edges"] = new JsonArray(h.Edges.Select(x => (JsonNode?)x).ToArray()), ["counts"] = new JsonArray(h.Counts.Select(x => (JsonNode?)x).ToArray()),
            });
        });
        app.MapGet("/api/neuronpedia/{id}", (string id) => ParseLatent(id) is int n ? NeuronpediaBatch([n]) : Task.FromResult(JsonError(404, UnknownLatent(id))));
        app.MapGet("/api/neuronpedia", async (HttpRequest req) =>
        {
            if (Data.Latents is null) return JsonError(404, MissingTable);
            int offset = 0, limit = Data.Latents.Rows;
            if (req.Query.TryGetValue("offset", out var ov) && (!int.TryParse(ov, out offset) || offset < 0)) return JsonError(400, $"offset '{ov}' is not a non-negative integer");
            if (req.Query.TryGetValue("limit", out var lv) && (!int.TryParse(lv, out limit) || limit < 0)) return JsonError(400, $"limit '{lv}' is not a non-negative integer");
            limit = Math.Min(limit, MaxPageSize);
            var ids = Enumerable.Range(offset, Math.Max(0, Math.Min(limit, Data.Latents.Rows - offset))).ToArray();
            return await NeuronpediaBatch(ids);
        });
    }

    /// <summary>The batch goes through the live queue: it may run the fine-tuned model's unembedding.</summary>
    async Task<IResult> NeuronpediaBatch(int[] ids)
    {
        var (accepted, batch) = await Live.Queue.TryRun(() => Neuronpedia.Batch(Data, Live.ExportParts(), ids));
        return accepted ? Json(batch!) : JsonError(503, $"the live queue is full ({Live.Queue.MaxWaiting} requests waiting); try again shortly");
    }

    int? ParseLatent(string id) =>
        Data.Latents is { } t && int.TryParse(id, NumberStyles.None, CultureInfo.InvariantCulture, out int n) && n >= 0 && n < t.Rows ? n : null;

    string UnknownLatent(string id) => Data.Latents is null ? MissingTable : $"no latent '{id}': ids run from 0 to {Data.Latents.Rows - 1}";
}

using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using Finetrace.Text.Chat;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;

namespace Finetrace.Web;

/// <summary>The live pages' routes: status, analysis, steering and amplification (JSON, POST), and the /live page.</summary>
public sealed partial class DashboardServer
{
    /// <summary>Request bodies larger than this are refused (a prompt is at most a few kB).</summary>
    const int MaxBody = 64 * 1024;

    void MapLive(WebApplication app)
    {
        app.MapGet("/live", () => Live.State is LiveState.Failed or LiveState.NotConfigured or LiveState.Off
            ? Html(Pages.LiveOff(Live.Problem!), 503)
            : Html(Pages.Live(Data, Live)));
        app.MapGet("/api/live/status", () => Json(LiveStatus()));
        app.MapPost("/api/live/analyze", (HttpRequest req) => LiveCall(req, (body, cancel) =>
        {
            var latents = body["latents"] is JsonArray la ? la.Select(x => IntOf(x, "latents[]")).ToArray() : [];
            int top = body["top"] is { } tn ? IntOf(tn, "top") : 5;
            if (top is < 0 or > 50) throw new LiveRequestException($"top {top} must be from 0 to 50");
            var r = Live.Analyze(Str(body, "text"), Messages(body), latents, top, TagOf, cancel);
            return new JsonObject
            {
                ["rendered"] = r.Rendered, ["layer"] = r.Layer, ["dictionary_note"] = r.DictionaryNote,
                ["kl_definition"] = "KL(p_ft ‖ p_base) of the next-token distributions at the token (what the models predict after it)",
                ["tokens"] = new JsonArray(r.Tokens.Select(t => (JsonNode)new JsonObject
                {
                    ["id"] = t.Id, ["text"] = t.Text, ["role"] = t.Role, ["kl"] = Round(t.Kl), ["diff_norm"] = Round(t.DiffNorm),
                }).ToArray()),
                ["latents"] = new JsonArray(r.Latents.Select(x => (JsonNode)new JsonObject
                {
                    ["id"] = x.Id, ["tag"] = x.Tag, ["max"] = Round(x.Values.Max()),
                    ["values"] = new JsonArray(x.Values.Select(v => Round(v)).ToArray()),
                }).ToArray()),
            };
        }));
        app.MapPost("/api/live/steer", (HttpRequest req) => LiveCall(req, (body, cancel) =>
        {
            string vector = Str(body, "vector") ?? throw new LiveRequestException("give the steering vector: \"vector\": \"latent:ID\" or an ADL key from /api/live/status");
            var r = Live.Steer(Str(body, "text"), Messages(body), Str(body, "model") ?? "finetuned", vector, Num(body, "strength", 1),
                (int)Num(body, "max_new_tokens", 32), (float)Num(body, "temperature", 0), (int)Num(body, "seed", 0), cancel);
            return new JsonObject
            {
                ["prompt"] = r.Prompt, ["model"] = r.Model, ["vector"] = r.Vector, ["layer"] = r.Layer, ["strength"] = r.Strength,
                ["added_norm"] = Round(r.VectorNorm), ["steered"] = r.Steered, ["unsteered"] = r.Unsteered,
                ["rule"] = "h ← h + strength · mean‖h‖ · v/‖v‖ after the layer at every token but BOS; mean‖h‖ over the prompt; unsteered with the same seed",
            };
        }));
        app.MapPost("/api/live/amplify", (HttpRequest req) => LiveCall(req, (body, cancel) =>
        {
            var r = Live.Amplify(Str(body, "text"), Messages(body), Num(body, "alpha", 1), (int)Num(body, "max_new_tokens", 32),
                (float)Num(body, "temperature", 0), (int)Num(body, "seed", 0), cancel);
            return new JsonObject
            {
                ["prompt"] = r.Prompt, ["alpha"] = r.Alpha, ["base"] = r.Base, ["finetuned"] = r.FineTuned, ["amplified"] = r.Amplified,
                ["rule"] = "z = z_ft + α (z_ft − z_base), both models on the same growing sequence, same seed for all three",
            };
        }));
    }

    string? TagOf(int id) => Data.Latents?.Tags is { } t && id >= 0 && id < t.Length ? t[id] : null;

    JsonObject LiveStatus()
    {
        var o = new JsonObject
        {
            ["state"] = Live.State.ToString().ToLowerInvariant(), ["problem"] = Live.Problem,
            ["models"] = Data.Models is { } m ? new JsonObject { ["base"] = m.Base, ["finetuned"] = m.FineTuned, ["adapter"] = m.Adapter } : null,
            ["queue"] = new JsonObject { ["inside"] = Live.Queue.Inside, ["max_waiting"] = Live.Queue.MaxWaiting },
        };
        if (Live.Info() is { } i)
        {
            o["chat_template"] = i.Chat; o["chat_note"] = i.ChatNote; o["layer"] = i.Layer; o["dictionary_latents"] = i.Latents; o["dictionary_note"] = i.DictionaryNote;
            o["vectors"] = new JsonArray(i.Adl.Select(v => (JsonNode)new JsonObject { ["key"] = v.Key, ["label"] = v.Label, ["layer"] = v.Layer }).ToArray());
        }
        return o;
    }

    /// <summary>Parses the JSON body, then runs <paramref name="work"/> through the bounded queue: 503 when the models are not
    /// ready or the queue is full, 400 for a bad request, 200 with the result.</summary>
    async Task<IResult> LiveCall(HttpRequest req, Func<JsonObject, CancellationToken, JsonObject> work)
    {
        if (Live.State != LiveState.Ready) return JsonError(503, $"live analysis is off: {Live.Problem}");
        if (req.ContentLength is > MaxBody) return JsonError(413, $"the request body is over {MaxBody / 1024} kB");
        JsonObject body;
        try
        {
            using var reader = new StreamReader(req.Body);
            var text = await reader.ReadToEndAsync(req.HttpContext.RequestAborted);
            if (text.Length > MaxBody) return JsonError(413, $"the request body is over {MaxBody / 1024} kB");
            body = JsonNode.Parse(text) as JsonObject ?? throw new JsonException("the body is not a JSON object");
        }
        catch (JsonException e) { return JsonError(400, $"the request body is not a JSON object: {e.Message}"); }
        try
        {
            var (accepted, result) = await Live.Queue.TryRun(() => work(body, req.HttpContext.RequestAborted), req.HttpContext.RequestAborted);
            return accepted ? Json(result!) : JsonError(503, $"the live queue is full ({Live.Queue.MaxWaiting} requests waiting behind the running one); try again shortly");
        }
        catch (LiveRequestException e) { return JsonError(400, e.Message); }
        catch (OperationCanceledException) { return JsonError(499, "the request was cancelled"); }
        // a library error on this input (shape, layer, file): its message, not a bare 500 or a stack trace
        catch (Exception e) when (e is ArgumentException or InvalidDataException or InvalidOperationException or IOException) { return JsonError(500, $"the live run failed: {e.Message}"); }
    }

    static string? Str(JsonObject o, string key) => o[key] switch
    {
        null => null,
        JsonValue v when v.TryGetValue<string>(out var s) => s,
        _ => throw new LiveRequestException($"\"{key}\" must be a string"),
    };

    static double Num(JsonObject o, string key, double fallback) => o[key] switch
    {
        null => fallback,
        JsonValue v when v.TryGetValue<double>(out var d) && double.IsFinite(d) => d,
        JsonValue v when v.TryGetValue<string>(out var s) && double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out var d2) && double.IsFinite(d2) => d2,
        _ => throw new LiveRequestException($"\"{key}\" must be a number"),
    };

    static int IntOf(JsonNode? n, string what) => n is JsonValue v && (v.TryGetValue<int>(out var i) || (v.TryGetValue<string>(out var s) && int.TryParse(s, NumberStyles.Integer, CultureInfo.InvariantCulture, out i)))
        ? i : throw new LiveRequestException($"\"{what}\" must be an integer");

    /// <summary>"messages": [{"role": "user", "content": "…"}, …] (null when absent).</summary>
    static List<ChatMessage>? Messages(JsonObject o)
    {
        if (o["messages"] is null) return null;
        if (o["messages"] is not JsonArray a) throw new LiveRequestException("\"messages\" must be a list of {\"role\", \"content\"}");
        return a.Select((m, i) => m is JsonObject mo && Str(mo, "role") is { } r && Str(mo, "content") is { } c ? new ChatMessage(r, c)
            : throw new LiveRequestException($"messages[{i}] needs \"role\" and \"content\" strings")).ToList();
    }

    static JsonNode? Round(double v) => double.IsFinite(v) ? JsonValue.Create(Math.Round(v, 6)) : null;
}

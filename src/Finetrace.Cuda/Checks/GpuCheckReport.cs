using System.Text.Encodings.Web;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Finetrace.Cuda.Checks;

/// <summary>
/// Builds scripts/gpu-check's one-line JSON report from the folder its steps wrote. Each step NAME (a device check, a
/// Finetrace benchmark or a PyTorch peer script, run as its own process under <c>timeout</c>) leaves:
/// <list type="bullet">
/// <item><c>NAME.meta</c>: one JSON object, <c>{"kind":"check|bench|torch|setup","rc":N,"seconds":S,"limit_s":L}</c>, or
/// <c>{"kind":…,"skipped":"why"}</c> for a step that did not run (its command is not in this build: "not built");</item>
/// <item><c>NAME.out</c>: the step's stdout, whose last line starting with '{' is its JSON figures;</item>
/// <item><c>NAME.err</c>: its stderr (the last line names the error when it failed without JSON).</item>
/// </list>
/// plus <c>order.txt</c> (step names in run order) and <c>device.txt</c> (the GPU's name, from nvidia-smi). A failing,
/// crashing or timed-out step becomes an entry with its status and a <c>message</c> saying what went wrong (a check's
/// <c>error</c> is its measured error); it never stops the report. Benchmark step X
/// with a PyTorch peer named <c>torch-X</c> gains the peer's tokens/s, the ratio and the fraction of the card's bf16
/// peak (from the peer's FLOP count, so both sides are counted alike).
/// </summary>
public static class GpuCheckReport
{
    /// <summary>Exit status of <c>timeout</c> when it stopped a step (124: SIGTERM sufficed; 137: SIGKILL).</summary>
    static bool TimedOut(int rc) => rc is 124 or 137;

    public static JsonObject Build(string stepsDir)
    {
        if (!Directory.Exists(stepsDir)) throw new DirectoryNotFoundException($"{stepsDir}: no such steps folder (scripts/gpu-check writes it)");
        var order = ReadOrder(stepsDir);
        var checks = new JsonObject();
        var benches = new JsonObject();
        var torch = new JsonObject();
        var setup = new JsonObject();
        foreach (var name in order)
        {
            var (kind, entry) = Step(stepsDir, name);
            (kind switch { "check" => checks, "torch" => torch, "setup" => setup, _ => benches })[name] = entry;
        }
        foreach (var (name, node) in benches)
        {
            if (torch[$"torch-{name}"] is JsonObject peer && node is JsonObject ours) AddPeer(ours, peer);
            // A benchmark that states its own bound (bench harvest: store overhead ≤ 15%) gets the verdict beside it.
            if (node is JsonObject b && Number(b, "overhead") is { } overhead && Number(b, "bound") is { } bound)
                b["within_bound"] = overhead <= bound;
        }

        string device = ReadText(Path.Combine(stepsDir, "device.txt"))
            ?? checks.Select(c => (c.Value as JsonObject)?["device"]?.GetValue<string>()).FirstOrDefault(d => d is not null)
            ?? "unknown";
        return new JsonObject
        {
            ["tool"] = "finetrace gpu-check",
            ["device"] = device,
            ["summary"] = Summary(checks, benches, torch, setup),
            ["checks"] = checks,
            ["benchmarks"] = benches,
            ["torch"] = torch,
            ["setup"] = setup,
        };
    }

    /// <summary>The report as exactly one line of JSON (what the script prints and writes to $OUT/gpu-check.json).</summary>
    public static string ToLine(JsonObject report) => report.ToJsonString(LineOptions);

    // Names and messages as written (quotes, '<', non-ASCII), not \uXXXX escapes: the line is read by people too.
    static readonly JsonSerializerOptions LineOptions = new() { WriteIndented = false, Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    static List<string> ReadOrder(string dir)
    {
        string path = Path.Combine(dir, "order.txt");
        var names = File.Exists(path)
            ? File.ReadAllLines(path).Select(l => l.Trim()).Where(l => l.Length > 0).ToList()
            : [];
        // Steps with a meta file but missing from order.txt (a script cut short) still count, after the listed ones.
        foreach (var meta in Directory.GetFiles(dir, "*.meta").Order(StringComparer.Ordinal))
        {
            string name = Path.GetFileNameWithoutExtension(meta);
            if (!names.Contains(name)) names.Add(name);
        }
        return names.Distinct().ToList();
    }

    static (string Kind, JsonObject Entry) Step(string dir, string name)
    {
        var meta = ParseObject(ReadText(Path.Combine(dir, name + ".meta")));
        string kind = meta?["kind"]?.GetValue<string>() ?? "bench";
        if (meta is null)
            return (kind, new JsonObject { ["status"] = "error", ["message"] = "the step left no .meta file (the script was stopped before it finished?)" });
        if (meta["skipped"]?.GetValue<string>() is { } why)
            return (kind, new JsonObject { ["status"] = why.StartsWith("not built", StringComparison.Ordinal) ? "not built" : "skipped", ["detail"] = why });

        int rc = meta["rc"]?.GetValue<int>() ?? -1;
        var figures = LastJsonLine(ReadText(Path.Combine(dir, name + ".out")));
        var entry = figures ?? new JsonObject();
        string? status = entry["status"]?.GetValue<string>();
        if (TimedOut(rc))
        {
            entry["status"] = "timeout";
            entry["message"] = $"stopped after its {meta["limit_s"]?.ToString() ?? "?"} s limit" + LastLine(dir, name, prefix: "; last stderr: ");
        }
        else if (figures is null && rc == 0 && kind == "setup")
        {
            entry["status"] = "ok"; // a setup step (model synth) prints a sentence, not figures
            if (ReadText(Path.Combine(dir, name + ".out"))?.Split('\n').LastOrDefault() is { } said) entry["detail"] = said.Trim();
        }
        else if (figures is null)
        {
            entry["status"] = "error";
            entry["message"] = (rc == 0 ? "exited 0 but printed no JSON" : $"exit status {rc}") + LastLine(dir, name, prefix: ": ");
        }
        else if (status is null) entry["status"] = rc == 0 ? "ok" : "error";
        else if (rc != 0 && status is "pass" or "ok") entry["status"] = "error"; // figures printed, then the process failed
        if (rc != 0 && entry["status"]?.GetValue<string>() == "error" && entry["message"] is null)
            entry["message"] = $"exit status {rc}" + LastLine(dir, name, prefix: ": ");
        entry["rc"] = rc;
        if (meta["seconds"] is { } s) entry["seconds"] = s.DeepClone();
        return (kind, entry);
    }

    static void AddPeer(JsonObject ours, JsonObject peer)
    {
        double? mine = Number(ours, "tokens_per_s");
        double? theirs = Number(peer, "tokens_per_s");
        if (theirs is { } t) ours["torch_tokens_per_s"] = t;
        if (mine is { } m && theirs is { } p && p > 0) ours["ratio_vs_torch"] = m / p;
        if (mine is { } mm && Number(peer, "flops_per_token") is { } f && Number(peer, "peak_bf16_tflops") is { } peak && peak > 0)
            ours["fraction_of_peak"] = mm * f / (peak * 1e12);
    }

    static JsonObject Summary(JsonObject checks, JsonObject benches, JsonObject torch, JsonObject setup)
    {
        int Count(JsonObject o, string status) => o.Count(kv => (kv.Value as JsonObject)?["status"]?.GetValue<string>() == status);
        var notBuilt = new JsonArray();
        var failed = new JsonArray();
        foreach (var group in new[] { setup, checks, benches, torch })
            foreach (var (name, node) in group)
            {
                string? s = (node as JsonObject)?["status"]?.GetValue<string>();
                if (s == "not built") notBuilt.Add(name);
                else if (s is "fail" or "error" or "timeout") failed.Add(name);
            }
        return new JsonObject
        {
            ["checks_passed"] = Count(checks, "pass"),
            ["checks_failed"] = Count(checks, "fail"),
            ["checks_error"] = Count(checks, "error") + Count(checks, "timeout"),
            ["not_built"] = notBuilt,
            ["failed_or_error"] = failed,
            ["all_built_checks_pass"] = checks.All(kv => (kv.Value as JsonObject)?["status"]?.GetValue<string>() is "pass" or "not built"),
        };
    }

    static double? Number(JsonObject o, string key) =>
        o[key] is JsonValue v && v.TryGetValue(out double d) ? d : null;

    static string LastLine(string dir, string name, string prefix)
    {
        var err = ReadText(Path.Combine(dir, name + ".err"));
        var line = err?.Split('\n').Select(l => l.Trim()).LastOrDefault(l => l.Length > 0);
        if (line is null) return "";
        return prefix + (line.Length > 400 ? line[..400] + "…" : line);
    }

    static JsonObject? LastJsonLine(string? text)
    {
        if (text is null) return null;
        foreach (var line in text.Split('\n').Reverse())
        {
            var t = line.Trim();
            if (t.StartsWith('{') && ParseObject(t) is { } o) return o;
        }
        return null;
    }

    static JsonObject? ParseObject(string? text)
    {
        if (string.IsNullOrWhiteSpace(text)) return null;
        try { return JsonNode.Parse(text) as JsonObject; }
        catch (JsonException) { return null; }
    }

    static string? ReadText(string path)
    {
        if (!File.Exists(path)) return null;
        var t = File.ReadAllText(path).Trim();
        return t.Length == 0 ? null : t;
    }
}

using System.CommandLine;
using System.Text.Json;
using System.Text.Json.Nodes;
using Finetrace.Text.Chat;

namespace Finetrace.Cli.Commands;

/// <summary><c>finetrace chat-template --tokenizer DIR --in IN.jsonl --out OUT.jsonl</c>: renders each line's
/// conversation with the folder's chat template, exactly as transformers' apply_chat_template(tokenize=False).</summary>
public sealed class ChatTemplateCommand : ICliCommand
{
    public Command Build()
    {
        var tokenizer = new Option<string>("--tokenizer") { Description = "Tokenizer folder (tokenizer_config.json with chat_template, or chat_template.jinja)", Required = true };
        var input = new Option<string>("--in") { Description = "JSONL input: {\"messages\": [...], \"add_generation_prompt\": bool, \"template_vars\": {...}?} per line", Required = true };
        var output = new Option<string>("--out") { Description = "JSONL output: each input object plus \"rendered\" (string) or \"error\" (the template's exception message)", Required = true };
        var cmd = new Command("chat-template", "Render conversations with a model's chat template (Jinja, as transformers renders it)");
        cmd.Options.Add(tokenizer);
        cmd.Options.Add(input);
        cmd.Options.Add(output);
        cmd.SetAction(r => Run(r.GetValue(tokenizer)!, r.GetValue(input)!, r.GetValue(output)!));
        return cmd;
    }

    static int Run(string tokenizerDir, string inPath, string outPath)
    {
        if (!Directory.Exists(tokenizerDir)) throw new DirectoryNotFoundException($"--tokenizer {tokenizerDir}: no such folder");
        if (!File.Exists(inPath)) throw new FileNotFoundException($"--in {inPath}: no such file");
        var template = ChatTemplate.FromFolder(tokenizerDir);
        int rendered = 0, errors = 0;
        using var reader = new StreamReader(inPath);
        using var writer = JsonLines.CreateWriter(outPath);
        foreach (var (lineNo, line) in JsonLines.NonBlank(reader))
        {
            // One parse per line: the object written back is a view of the same document the fields are read from.
            JsonDocument doc;
            try
            {
                doc = JsonDocument.Parse(line);
                if (doc.RootElement.ValueKind != JsonValueKind.Object) { doc.Dispose(); throw new JsonException("not a JSON object"); }
            }
            catch (JsonException e) { throw new InvalidDataException($"{inPath}:{lineNo}: invalid JSON line: {e.Message}"); }
            using var _ = doc;
            var root = doc.RootElement;
            var obj = JsonObject.Create(root)!;
            if (!root.TryGetProperty("messages", out var msgs) || msgs.ValueKind != JsonValueKind.Array)
                throw new InvalidDataException($"{inPath}:{lineNo}: \"messages\" must be an array of {{role, content}} objects");
            bool gen = false;
            if (root.TryGetProperty("add_generation_prompt", out var g))
            {
                if (g.ValueKind is not (JsonValueKind.True or JsonValueKind.False))
                    throw new InvalidDataException($"{inPath}:{lineNo}: \"add_generation_prompt\" must be true or false");
                gen = g.GetBoolean();
            }
            Dictionary<string, object?>? extra = null;
            if (root.TryGetProperty("template_vars", out var tv) && tv.ValueKind != JsonValueKind.Null)
            {
                if (tv.ValueKind != JsonValueKind.Object) throw new InvalidDataException($"{inPath}:{lineNo}: \"template_vars\" must be an object");
                extra = tv.EnumerateObject().ToDictionary(p => p.Name, p => PyJson.FromJson(p.Value));
            }
            // A re-run over an output (or a reference file) replaces the previous result instead of keeping both keys.
            obj.Remove("rendered");
            obj.Remove("error");
            try
            {
                obj["rendered"] = template.Render(PyJson.FromJson(msgs), gen, extra);
                rendered++;
            }
            catch (TemplateException e)
            {
                obj["error"] = e.Message;
                errors++;
            }
            writer.WriteLine(obj.ToJsonString(JsonLines.WriteOptions));
        }
        Console.Error.WriteLine($"chat-template: {rendered} rendered, {errors} raised, written to {outPath}");
        return 0;
    }
}

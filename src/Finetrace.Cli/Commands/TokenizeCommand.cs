using System.CommandLine;
using System.Diagnostics;
using System.Text.Json;
using System.Text.Json.Nodes;
using Finetrace.Text.Tokenization;

namespace Finetrace.Cli.Commands;

/// <summary>
/// <c>finetrace tokenize --tokenizer DIR --in IN.jsonl --out OUT.jsonl [--no-special]</c>: each input line is an
/// object with "text"; each output line is the same object (other fields kept, in order) plus "ids".
/// </summary>
public sealed class TokenizeCommand : ICliCommand
{
    public Command Build()
    {
        var tokenizer = new Option<string>("--tokenizer") { Description = "Folder with tokenizer.json (and tokenizer_config.json)", Required = true };
        var input = new Option<string>("--in") { Description = "Input JSON Lines: one object with a \"text\" string per line", Required = true };
        var output = new Option<string>("--out") { Description = "Output JSON Lines: each input object plus \"ids\"", Required = true };
        var noSpecial = new Option<bool>("--no-special") { Description = "Do not add the post-processor's special tokens (e.g. BOS); added tokens written in the text are still recognised" };
        var cmd = new Command("tokenize", "Tokenize the \"text\" of every JSON line with a Hugging Face tokenizer.json, adding \"ids\"");
        cmd.Options.Add(tokenizer); cmd.Options.Add(input); cmd.Options.Add(output); cmd.Options.Add(noSpecial);
        cmd.SetAction(r => Run(r.GetValue(tokenizer)!, r.GetValue(input)!, r.GetValue(output)!, !r.GetValue(noSpecial)));
        return cmd;
    }

    /// <summary>On a terminal: one status line with progress through the input file, rate and ETA.</summary>
    static void ReportProgress(Stream input, long lines, long tokens, Stopwatch sw)
    {
        if (Console.IsErrorRedirected || !input.CanSeek || input.Length == 0) return;
        double done = (double)input.Position / input.Length, s = sw.Elapsed.TotalSeconds;
        double eta = done > 0 ? s * (1 - done) / done : 0;
        Console.Error.Write($"\r\u001b[K{done:P0}  {lines:N0} lines  {tokens:N0} tokens  {input.Position / 1e6 / Math.Max(s, 1e-3):F1} MB/s  ETA {TimeSpan.FromSeconds(Math.Round(eta)):c}");
    }

    static int Run(string dir, string inPath, string outPath, bool addSpecial)
    {
        if (!File.Exists(inPath)) throw new FileNotFoundException($"--in {inPath}: file not found");
        var sw = Stopwatch.StartNew();
        var tok = Tokenizer.FromFolder(dir);
        long lines = 0, tokens = 0;
        string tmp = outPath + ".tmp";
        using (var reader = new StreamReader(inPath))
        using (var writer = JsonLines.CreateWriter(tmp))
        {
            var batch = new List<(JsonObject Obj, string Text)>();
            foreach (var (lineNo, line) in JsonLines.NonBlank(reader))
            {
                JsonObject obj;
                try { obj = JsonNode.Parse(line) as JsonObject ?? throw new FormatException("not a JSON object"); }
                catch (Exception e) when (e is JsonException or FormatException)
                { throw new FormatException($"{inPath} line {lineNo}: expected a JSON object with a \"text\" string ({e.Message})"); }
                if (obj["text"] is not JsonValue tv || !tv.TryGetValue(out string? text))
                    throw new FormatException($"{inPath} line {lineNo}: missing \"text\" string field");
                batch.Add((obj, text));
                if (batch.Count == 512) Flush();
            }
            Flush();

            void Flush()
            {
                var encs = tok.EncodeBatch(batch.Select(b => b.Text).ToArray(), addSpecial);
                for (int i = 0; i < batch.Count; i++)
                {
                    var obj = batch[i].Obj;
                    var ids = new JsonArray();
                    foreach (int id in encs[i].Ids) ids.Add(id);
                    obj["ids"] = ids;
                    writer.WriteLine(obj.ToJsonString(JsonLines.WriteOptions));
                    tokens += encs[i].Count;
                }
                lines += batch.Count;
                batch.Clear();
                ReportProgress(reader.BaseStream, lines, tokens, sw);
            }
        }
        if (!Console.IsErrorRedirected) Console.Error.Write("\r\u001b[K");
        File.Move(tmp, outPath, overwrite: true);
        Console.Error.WriteLine($"tokenized {lines:N0} lines into {tokens:N0} tokens in {sw.Elapsed.TotalSeconds:F1} s -> {outPath}");
        return 0;
    }
}

using Finetrace.Tensors;
using System.CommandLine;
using System.Text.Json;
using Finetrace.Models.Safetensors;
using Spectre.Console;

namespace Finetrace.Cli.Commands;

/// <summary><c>finetrace inspect PATH</c>: the tensors of a safetensors file or checkpoint folder, and its config.</summary>
public sealed class InspectCommand : ICliCommand
{
    public Command Build()
    {
        var path = new Argument<string>("path") { Description = "A .safetensors file, or a checkpoint folder (model.safetensors or a sharded index, plus config.json)" };
        var cmd = new Command("inspect", "List the tensors of a safetensors file or checkpoint folder (name, dtype, shape, size) and summarise its config.json");
        cmd.Arguments.Add(path);
        cmd.SetAction(r => Run(r.GetValue(path)!));
        return cmd;
    }

    static int Run(string path)
    {
        using var ckpt = new ShardedCheckpoint(path);
        var table = new Table().AddColumns("name", "dtype", "shape", "size");
        table.Columns[3].RightAligned();
        long total = 0, totalElems = 0;
        foreach (var name in ckpt.Names.OrderBy(n => n, StringComparer.Ordinal))
        {
            var t = ckpt.Info(name);
            total += t.ByteLength;
            totalElems += t.ElementCount;
            table.AddRow(Markup.Escape(name), t.DType.ToString(), Markup.Escape(t.ShapeText), FormatBytes(t.ByteLength));
        }
        AnsiConsole.Write(table);
        AnsiConsole.MarkupLine($"{ckpt.Names.Count()} tensors, {totalElems:N0} elements, {FormatBytes(total)} in {ckpt.Files.Count} file(s)");
        foreach (var f in ckpt.Files)
            if (f.Metadata.Count > 0)
                AnsiConsole.MarkupLine($"metadata of {Markup.Escape(Path.GetFileName(f.Path))}: " +
                    Markup.Escape(string.Join(", ", f.Metadata.Select(kv => $"{kv.Key}={kv.Value}"))));

        string dir = Directory.Exists(path) ? path : Path.GetDirectoryName(Path.GetFullPath(path))!;
        string config = Path.Combine(dir, "config.json");
        if (File.Exists(config)) PrintConfig(config);
        return 0;
    }

    static void PrintConfig(string config)
    {
        using var doc = JsonDocument.Parse(File.ReadAllBytes(config));
        var root = doc.RootElement;
        string[] keys =
        [
            "model_type", "architectures", "torch_dtype", "dtype", "hidden_size", "n_embd", "num_hidden_layers", "n_layer",
            "num_attention_heads", "n_head", "num_key_value_heads", "head_dim", "intermediate_size", "n_inner", "vocab_size",
            "max_position_embeddings", "n_positions", "rope_theta", "rope_scaling", "rope_parameters", "sliding_window",
            "tie_word_embeddings", "hidden_act", "hidden_activation", "activation_function",
        ];
        var table = new Table().AddColumns("config field", "value");
        foreach (var k in keys)
            if (root.TryGetProperty(k, out var v))
                table.AddRow(k, Markup.Escape(v.GetRawText()));
        AnsiConsole.MarkupLine($"config: {Markup.Escape(config)}");
        AnsiConsole.Write(table);
    }

    internal static string FormatBytes(long b) => b switch
    {
        < 1024 => $"{b} B",
        < 1 << 20 => $"{b / 1024.0:F1} KiB",
        < 1 << 30 => $"{b / (1024.0 * 1024):F1} MiB",
        _ => $"{b / (1024.0 * 1024 * 1024):F2} GiB",
    };
}

using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;

namespace Finetrace.Cli.Commands;

/// <summary>What the JSON Lines commands (tokenize, chat-template) share: the non-blank input lines with their
/// 1-based numbers, and a UTF-8 writer (no BOM) with the options that keep non-ASCII text unescaped.</summary>
static class JsonLines
{
    public static readonly JsonSerializerOptions WriteOptions = new() { Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    public static StreamWriter CreateWriter(string path) => new(path, false, new UTF8Encoding(false));

    /// <summary>Each line that is not blank, with its line number in the file (blank lines counted).</summary>
    public static IEnumerable<(int LineNo, string Line)> NonBlank(TextReader reader)
    {
        int lineNo = 0;
        string? line;
        while ((line = reader.ReadLine()) is not null)
        {
            lineNo++;
            if (!string.IsNullOrWhiteSpace(line)) yield return (lineNo, line);
        }
    }
}

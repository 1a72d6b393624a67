using System.Text.Encodings.Web;
using System.Text.Json;

namespace Finetrace.Diffing;

/// <summary>JSON settings of the results files: indented, and token text written as itself (no \u escapes for
/// non-ASCII or HTML-sensitive characters).</summary>
public static class ResultsJson
{
    public static readonly JsonSerializerOptions Indented = new() { WriteIndented = true, Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping };
}

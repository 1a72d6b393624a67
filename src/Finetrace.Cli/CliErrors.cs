using System.CommandLine.Parsing;
using System.Text.RegularExpressions;
using Finetrace.Activations;
using Finetrace.Models;
using Finetrace.Text.Datasets;

namespace Finetrace.Cli;

/// <summary>
/// Words the library's typed errors for a command-line user: the library reports settings by their option-record
/// names (it never names flags, so that the dashboard can reuse it); here they become the flags a user typed.
/// Any other error prints its own message.
/// </summary>
public static class CliErrors
{
    /// <summary>Option-record property names whose flag is not simply the kebab-cased name.</summary>
    static readonly Dictionary<string, string> Flags = new(StringComparer.Ordinal)
    {
        ["DModel"] = "--d", ["SequenceLength"] = "--seq-len", ["BatchSize"] = "--batch", ["ContextLength"] = "--context",
        ["DType"] = "--dtype", ["Dtype"] = "--dtype",
    };

    /// <summary>The flag for an option-record property: <c>SkipFirst</c> → <c>--skip-first</c>, <c>DModel</c> → <c>--d</c>.</summary>
    public static string Flag(string setting) =>
        Flags.TryGetValue(setting, out var f) ? f
            : "--" + string.Concat(setting.Select((c, i) => char.IsUpper(c) && i > 0 && !char.IsDigit(setting[i - 1]) ? "-" + char.ToLowerInvariant(c) : char.ToLowerInvariant(c).ToString()));

    /// <summary>The message a user sees for <paramref name="e"/>.</summary>
    public static string Describe(Exception e) => e switch
    {
        SettingException s => s.Value is null ? $"{Flag(s.Setting)}: {s.Problem}" : $"{Flag(s.Setting)} {s.Value}: {s.Problem}",
        DataSourceSpecException d => $"--data {d.Spec}: {d.Problem}",
        AdapterFolderException a => $"adapter {a.Folder} (--adapter / --base-adapter): {a.Problem}",
        StoreSettingsMismatchException m => $"{m.Directory}: the store was written with different settings; refusing to mix runs. Differences:\n  " +
                                            string.Join("\n  ", m.Differences) + "\nUse another --out folder, or the same options to resume.",
        StoreDiskSpaceException d => $"{d.Directory}: not enough free disk space for {d.RemainingTokens:N0} more tokens × {d.BytesPerToken:N0} bytes/token: " +
                                     $"{ActivationStoreWriter.Human(d.NeededBytes)} needed, {ActivationStoreWriter.Human(d.FreeBytes)} free. " +
                                     "Use fewer --tokens or --layers, --dtype bf16, or an --out folder on another disk.",
        // ArgumentException appends " (Parameter 'name')": the parameter of a library method means nothing to a user.
        ArgumentException a => Regex.Replace(a.Message, @"\s*\(Parameter '[^']*'\)", ""),
        _ => e.Message,
    };

    /// <summary>A parse error in words: "Cannot parse argument 'abc' for option '--max-new-tokens' as expected type
    /// 'System.Int32'." → "--max-new-tokens abc: expected a whole number".</summary>
    public static string ParseError(string message)
    {
        var m = Regex.Match(message, @"^Cannot parse argument '(?<v>.*)' for option '(?<o>[^']*)' as expected type '(?<t>[^']*)'\.?$");
        if (!m.Success) return message;
        string t = m.Groups["t"].Value.Replace("System.Nullable`1[", "").TrimEnd(']');
        string kind = t switch
        {
            "System.Int32" or "System.Int64" or "System.UInt64" or "System.UInt32" or "System.Int16" => "a whole number",
            "System.Single" or "System.Double" or "System.Decimal" => "a number",
            "System.Boolean" => "true or false",
            _ => "a value of type " + t[(t.LastIndexOf('.') + 1)..],
        };
        return $"{m.Groups["o"].Value} {m.Groups["v"].Value}: expected {kind}";
    }

    /// <summary>The subcommand names of a parse, e.g. "train crosscoder" (the root left out).</summary>
    public static string CommandPath(CommandResult result)
    {
        var names = new List<string>();
        for (SymbolResult? r = result; r is CommandResult c && c.Parent is not null; r = c.Parent) names.Add(c.Command.Name);
        names.Reverse();
        return string.Join(' ', names);
    }
}

namespace Finetrace.Models;

/// <summary>
/// A setting of a library call is out of range or inconsistent. <see cref="Setting"/> is the name of the option
/// record's property (e.g. <c>ContextLength</c> of HarvestOptions, <c>DModel</c> of SyntheticSpec), <see cref="Value"/>
/// the value given (as text, null when several settings conflict) and <see cref="Problem"/> what is wrong in words.
/// The library never names command-line flags; the CLI maps the setting to its flag when it reports the error.
/// </summary>
public class SettingException(string setting, string? value, string problem)
    : ArgumentException(value is null ? $"{setting}: {problem}" : $"{setting} {value}: {problem}")
{
    public string Setting { get; } = setting;
    public string? Value { get; } = value;
    public string Problem { get; } = problem;
}

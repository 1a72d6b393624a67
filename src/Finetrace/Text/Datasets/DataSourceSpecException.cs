namespace Finetrace.Text.Datasets;

/// <summary>A data source spec (<c>[KIND:]PATH[,key=value…]</c>) that cannot be used: <see cref="Spec"/> as given,
/// <see cref="Problem"/> in words. The CLI reports it against the flag that carried the spec.</summary>
public sealed class DataSourceSpecException(string spec, string problem) : ArgumentException($"data source '{spec}': {problem}")
{
    public string Spec { get; } = spec;
    public string Problem { get; } = problem;
}

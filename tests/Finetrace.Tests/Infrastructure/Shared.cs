namespace Finetrace.Tests.Infrastructure;

/// <summary>
/// Locates the read-only shared material (<c>../shared</c> beside the checkout: fixtures, reference models, docs).
/// It is present for developers and CI and absent on a user's machine; tests that need it use
/// <see cref="SharedFactAttribute"/> / <see cref="SharedTheoryAttribute"/> and skip with a clear message.
/// Override with the environment variable FINETRACE_SHARED.
/// </summary>
public static class Shared
{
    static readonly Lazy<string?> _root = new(Find);

    public static string? Root => _root.Value;

    public const string MissingMessage =
        "needs the shared fixtures and reference models, not found here (a folder 'shared' with docs/methods.md beside the checkout or above it); " +
        "set FINETRACE_SHARED=/path/to/shared to run it";

    public static string Path(params string[] parts) =>
        System.IO.Path.Combine([Root ?? throw new InvalidOperationException(MissingMessage), .. parts]);

    static string? Find()
    {
        string? env = Environment.GetEnvironmentVariable("FINETRACE_SHARED");
        if (!string.IsNullOrEmpty(env) && File.Exists(System.IO.Path.Combine(env, "docs", "methods.md"))) return env;
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            string candidate = System.IO.Path.Combine(dir.FullName, "shared");
            if (File.Exists(System.IO.Path.Combine(candidate, "docs", "methods.md"))) return candidate;
        }
        return null;
    }
}

/// <summary>A fact that needs ../shared; skipped with a message when it is absent.</summary>
public sealed class SharedFactAttribute : FactAttribute
{
    public SharedFactAttribute() { if (Shared.Root is null) Skip = Shared.MissingMessage; }
}

/// <summary>A theory that needs ../shared; skipped with a message when it is absent.</summary>
public sealed class SharedTheoryAttribute : TheoryAttribute
{
    public SharedTheoryAttribute() { if (Shared.Root is null) Skip = Shared.MissingMessage; }
}

/// <summary>A fresh temporary folder deleted on dispose.</summary>
public sealed class TempDir : IDisposable
{
    public string Path { get; } = Directory.CreateTempSubdirectory("finetrace-test-").FullName;
    public string File(string name) => System.IO.Path.Combine(Path, name);
    public void Dispose() { try { Directory.Delete(Path, recursive: true); } catch (IOException) { } }
}

using System.Reflection;
using System.Runtime.InteropServices;

namespace Finetrace.Cuda;

/// <summary>The outcome of looking for cuBLAS: the loaded file, or everything tried and why each failed.</summary>
public sealed record CublasLookup(nint Handle, string? Path, IReadOnlyList<string> Folders, IReadOnlyList<string> Failures)
{
    public bool Found => Handle != 0;

    /// <summary>One paragraph for <see cref="DeviceUnavailableException"/>: where it looked and what to set.</summary>
    public string Describe()
    {
        var s = $"cuBLAS not found: tried {string.Join(", ", CublasLibrary.FileNames)} on the system library path";
        if (Folders.Count > 0) s += $" and in {string.Join(", ", Folders)}";
        if (Failures.Count > 0) s += $"; failed to load: {string.Join("; ", Failures)}";
        return s + $". Set {CublasLibrary.EnvVar} to the libcublas.so file or its folder (pip's PyTorch keeps it in " +
               "site-packages/nvidia/cublas/lib, next to libcublasLt), or FINETRACE_GEMM=ilgpu to use the ILGPU products.";
    }
}

/// <summary>
/// Finds and loads cuBLAS for <see cref="CublasNative"/>'s P/Invoke (a DllImport resolver on this assembly maps
/// <see cref="ImportName"/> to the loaded library). Order: <see cref="EnvVar"/> alone when set (a file, or a folder
/// holding one of <see cref="FileNames"/>); otherwise, per file name (.12 first, as pip's PyTorch ships it), the system loader
/// (LD_LIBRARY_PATH, ld.so.cache), then the folders of <see cref="SearchFolders"/>: LD_LIBRARY_PATH entries, the
/// CUDA toolkit folders and pip's nvidia/cublas/lib in every site-packages found. From a folder, the libcublasLt
/// of the same major is loaded first from the same folder, since libcublas needs it and pip's folders are not on the
/// loader's path.
/// </summary>
public static class CublasLibrary
{
    public const string ImportName = "finetrace-cublas";
    public const string EnvVar = "FINETRACE_CUBLAS";
    public static readonly IReadOnlyList<string> FileNames = ["libcublas.so.12", "libcublas.so.13", "libcublas.so.11", "libcublas.so"];   // 12 first: what pip's PyTorch ships

    static readonly Lazy<CublasLookup> _lookup = new(() => Locate(Environment.GetEnvironmentVariable));

    static CublasLibrary()
    {
        // This assembly's one resolver: other native libraries of Finetrace.Cuda would add their names to Resolve.
        NativeLibrary.SetDllImportResolver(typeof(CublasLibrary).Assembly, Resolve);
    }

    static nint Resolve(string name, Assembly asm, DllImportSearchPath? path) =>
        name == ImportName && _lookup.Value.Found ? _lookup.Value.Handle : 0;

    /// <summary>Registers the resolver (the static constructor's work); called before any cuBLAS call binds.</summary>
    internal static void Register() { }

    /// <summary>The process's lookup, done once (and the resolver registered) on first use.</summary>
    public static CublasLookup Lookup => _lookup.Value;

    /// <summary>Looks for cuBLAS with the environment read through <paramref name="env"/>, loading the first file that
    /// loads. Pure apart from the loading itself: tests pass their own environment.</summary>
    public static CublasLookup Locate(Func<string, string?> env)
    {
        var failures = new List<string>();
        string? forced = env(EnvVar);
        if (!string.IsNullOrWhiteSpace(forced))
        {
            if (File.Exists(forced))
            {
                nint h = TryLoadFile(forced, failures);
                return new CublasLookup(h, h != 0 ? forced : null, [Path.GetDirectoryName(Path.GetFullPath(forced))!], failures);
            }
            if (!Directory.Exists(forced))
            {
                failures.Add($"{EnvVar}={forced} is neither a file nor a folder");
                return new CublasLookup(0, null, [], failures);
            }
            foreach (var file in FileNames)
            {
                var p = Path.Combine(forced, file);
                if (!File.Exists(p)) continue;
                nint h = TryLoadFile(p, failures);
                if (h != 0) return new CublasLookup(h, p, [forced], failures);
            }
            if (failures.Count == 0) failures.Add($"{EnvVar}={forced} holds none of {string.Join(", ", FileNames)}");
            return new CublasLookup(0, null, [forced], failures);
        }

        var folders = SearchFolders(env);
        foreach (var file in FileNames)
        {
            if (NativeLibrary.TryLoad(file, out nint sys)) return new CublasLookup(sys, file, folders, failures);
            foreach (var folder in folders)
            {
                var p = Path.Combine(folder, file);
                if (!File.Exists(p)) continue;
                nint h = TryLoadFile(p, failures);
                if (h != 0) return new CublasLookup(h, p, folders, failures);
            }
        }
        return new CublasLookup(0, null, folders, failures);
    }

    /// <summary>The folders searched after the system loader, in order, existing ones only, without duplicates:
    /// LD_LIBRARY_PATH entries, /usr/local/cuda/lib64, /usr/local/cuda-*/targets/x86_64-linux/lib and lib64, and
    /// nvidia/cublas/lib (then nvidia/*/lib) under each site-packages/dist-packages of VIRTUAL_ENV, CONDA_PREFIX, the
    /// prefix of every python3 on PATH, ~/.local, /usr/local, /usr and /opt/conda.</summary>
    public static IReadOnlyList<string> SearchFolders(Func<string, string?> env)
    {
        var patterns = new List<string>();
        foreach (var dir in (env("LD_LIBRARY_PATH") ?? "").Split(':', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
            patterns.Add(dir);
        patterns.Add("/usr/local/cuda/lib64");
        patterns.Add("/usr/local/cuda/targets/x86_64-linux/lib");
        patterns.Add("/usr/local/cuda-*/targets/x86_64-linux/lib");
        patterns.Add("/usr/local/cuda-*/lib64");
        var roots = new List<string>();
        foreach (var var in new[] { "VIRTUAL_ENV", "CONDA_PREFIX" })
            if (env(var) is { Length: > 0 } root) roots.Add(root);
        // a python3 on PATH (a venv's bin, conda's bin) marks a prefix whose site-packages may hold pip's cuBLAS
        foreach (var dir in (env("PATH") ?? "").Split(':', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
            if (File.Exists(Path.Combine(dir, "python3")) && Path.GetDirectoryName(dir.TrimEnd('/')) is { Length: > 0 } prefix)
                roots.Add(prefix);
        if (env("HOME") is { Length: > 0 } home) roots.Add(Path.Combine(home, ".local"));
        roots.AddRange(["/usr/local", "/usr", "/opt/conda"]);
        foreach (var root in roots)
            foreach (var packages in new[] { "site-packages", "dist-packages" })
                foreach (var python in new[] { "python3*", "python3" })
                {
                    patterns.Add(Path.Combine(root, "lib", python, packages, "nvidia", "cublas", "lib"));
                    patterns.Add(Path.Combine(root, "lib", python, packages, "nvidia", "*", "lib"));   // e.g. CUDA 13 wheels' nvidia/cu13/lib
                }

        var folders = new List<string>();
        foreach (var pattern in patterns)
            foreach (var dir in Expand(pattern))
                if (!folders.Contains(dir)) folders.Add(dir);
        return folders;
    }

    // Existing directories matching a path whose segments may hold '*' (sorted, newest version last → reversed so
    // cuda-12.4 comes before cuda-11.8).
    static IEnumerable<string> Expand(string pattern)
    {
        int star = pattern.IndexOf('*');
        if (star < 0) return Directory.Exists(pattern) ? [pattern] : [];
        int segStart = pattern.LastIndexOf('/', star) + 1;
        int segEnd = pattern.IndexOf('/', star);
        string parent = segStart > 0 ? pattern[..(segStart - 1)] : ".";
        string segment = segEnd < 0 ? pattern[segStart..] : pattern[segStart..segEnd];
        string rest = segEnd < 0 ? "" : pattern[segEnd..];
        if (!Directory.Exists(parent)) return [];
        string[] matches;
        try { matches = Directory.GetDirectories(parent, segment); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return []; }
        Array.Sort(matches, StringComparer.Ordinal);
        Array.Reverse(matches);
        return matches.SelectMany(m => Expand(m + rest));
    }

    // Loads one library file, first its libcublasLt sibling of the same major when there is one.
    static nint TryLoadFile(string path, List<string> failures)
    {
        string folder = Path.GetDirectoryName(Path.GetFullPath(path))!;
        string name = Path.GetFileName(path);
        string lt = Path.Combine(folder, name.Replace("libcublas.", "libcublasLt.", StringComparison.Ordinal));
        if (lt != path && File.Exists(lt))
        {
            try { NativeLibrary.Load(lt); }
            catch (Exception e) when (e is DllNotFoundException or BadImageFormatException)
            {
                failures.Add($"{lt}: {e.Message}");
                return 0;
            }
        }
        try { return NativeLibrary.Load(path); }
        catch (Exception e) when (e is DllNotFoundException or BadImageFormatException)
        {
            failures.Add($"{path}: {e.Message}");
            return 0;
        }
    }
}

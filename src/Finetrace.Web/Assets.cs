using System.Collections.Concurrent;

namespace Finetrace.Web;

/// <summary>The dashboard's script, style and charting library, embedded in this assembly (Assets/, chart.js from npm).</summary>
internal static class Assets
{
    static readonly ConcurrentDictionary<string, byte[]?> Cache = new(StringComparer.Ordinal);

    public static byte[]? Get(string name) => Cache.GetOrAdd(name, n =>
    {
        if (n.Contains('/') || n.Contains('\\')) return null;
        using var s = typeof(Assets).Assembly.GetManifestResourceStream("Finetrace.Web.Assets." + n);
        if (s is null) return null;
        using var ms = new MemoryStream();
        s.CopyTo(ms);
        return ms.ToArray();
    });

    public static string Text(string name) => System.Text.Encoding.UTF8.GetString(Get(name) ?? throw new InvalidOperationException($"asset {name} is not embedded"));
}

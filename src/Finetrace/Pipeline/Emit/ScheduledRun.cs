using System.Text;
using System.Text.RegularExpressions;

namespace Finetrace.Pipeline.Emit;

/// <summary>
/// A run split for a batch scheduler: an optional <see cref="Prepare"/> step once, then <see cref="Parts"/> shard
/// commands in parallel (<see cref="Part"/>, where <see cref="IndexPlaceholder"/> becomes the 0-based index and
/// <see cref="PartPlaceholder"/> "index/parts"), then the <see cref="Finish"/> commands in order, once every shard
/// succeeded. Commands are shell command lines (build them from argv with <see cref="Shell.Join"/>), run in
/// <see cref="WorkDir"/>, a folder every node sees.
/// </summary>
public sealed record ScheduledRun
{
    public const string IndexPlaceholder = "{index}", PartPlaceholder = "{part}";

    /// <summary>Job name: letters, digits and '-', starting with a letter (a Kubernetes name as well).</summary>
    public required string Name { get; init; }
    public required int Parts { get; init; }
    /// <summary>Absolute folder on storage shared by all nodes (pods: the volume's mount path or a folder in it).</summary>
    public required string WorkDir { get; init; }
    public string? Prepare { get; init; }
    public required string Part { get; init; }
    public required IReadOnlyList<string> Finish { get; init; }
    /// <summary>Where completion markers and scheduler logs go (default WorkDir/.finetrace-jobs).</summary>
    public string? StateDir { get; init; }
    public int Cpus { get; init; } = 4;
    public int MemoryGiB { get; init; } = 16;
    public int Gpus { get; init; }
    /// <summary>Slurm time limit per job, e.g. "04:00:00" (null = the partition's default).</summary>
    public string? TimeLimit { get; init; }
    public string? Partition { get; init; }
    /// <summary>Container image with finetrace on the PATH (Kubernetes).</summary>
    public string Image { get; init; } = "finetrace:latest";
    /// <summary>PersistentVolumeClaim mounted at <see cref="MountPath"/> in every pod (Kubernetes; it must hold WorkDir).</summary>
    public string VolumeClaim { get; init; } = "finetrace-data";
    public string MountPath { get; init; } = "/data";

    public string States => StateDir ?? WorkDir.TrimEnd('/') + "/.finetrace-jobs";

    public void Validate()
    {
        if (!Regex.IsMatch(Name, "^[a-z][a-z0-9-]{0,50}$"))
            throw new ArgumentException($"job name '{Name}': use lower-case letters, digits and '-', starting with a letter, at most 51 characters (Kubernetes and Slurm both accept it)");
        if (Parts < 1) throw new ArgumentException($"parts: must be at least 1, got {Parts}");
        if (!WorkDir.StartsWith('/')) throw new ArgumentException($"work folder '{WorkDir}': give an absolute path on storage every node sees");
        if (!Part.Contains(IndexPlaceholder) && !Part.Contains(PartPlaceholder))
            throw new ArgumentException($"part command: it must contain {IndexPlaceholder} or {PartPlaceholder}, or every shard would do the same work");
        if (Finish.Count == 0) throw new ArgumentException("finish commands: give at least one (the stages after the shards)");
        if (Cpus < 1 || MemoryGiB < 1 || Gpus < 0) throw new ArgumentException($"resources: cpus {Cpus} and memory {MemoryGiB} GiB must be positive, gpus {Gpus} ≥ 0");
        if (TimeLimit is not null && !Regex.IsMatch(TimeLimit, @"^(\d+-)?\d+(:\d{2}){0,2}$"))
            throw new ArgumentException($"time limit '{TimeLimit}': use Slurm's form, e.g. 04:00:00 or 1-12:00:00");
        if (!MountPath.StartsWith('/')) throw new ArgumentException($"mount path '{MountPath}': must be absolute");
    }

    /// <summary>The part command with the placeholders turned into the shell variables FT_INDEX and FT_PART.</summary>
    internal string PartShell => Part.Replace(IndexPlaceholder, "\"${FT_INDEX}\"").Replace(PartPlaceholder, "\"${FT_PART}\"");
}

/// <summary>POSIX shell quoting.</summary>
public static class Shell
{
    static readonly Regex Safe = new(@"^[A-Za-z0-9_@%+=:,./-]+$");

    /// <summary>One argument, quoted when needed; the placeholders of <see cref="ScheduledRun"/> stay outside the
    /// quotes so the shell expands them.</summary>
    public static string Quote(string arg)
    {
        if (arg.Length == 0) return "''";
        var sb = new StringBuilder();
        foreach (var piece in Regex.Split(arg, @"(\{index\}|\{part\})"))
        {
            if (piece.Length == 0) continue;
            if (piece is ScheduledRun.IndexPlaceholder or ScheduledRun.PartPlaceholder) sb.Append(piece);
            else sb.Append(Safe.IsMatch(piece) ? piece : "'" + piece.Replace("'", "'\\''") + "'");
        }
        return sb.ToString();
    }

    /// <summary>argv as one command line.</summary>
    public static string Join(IEnumerable<string> argv) => string.Join(' ', argv.Select(Quote));
}

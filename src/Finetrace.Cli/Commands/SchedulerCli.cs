using System.CommandLine;
using Finetrace.Pipeline.Emit;

namespace Finetrace.Cli.Commands;

/// <summary>The scheduler options <c>finetrace diff --emit</c> takes (resources, job name, work folder, Kubernetes
/// volume), turned into a <see cref="ScheduledRun"/>, and writing the emitted file.</summary>
sealed class SchedulerCli
{
    public readonly Option<string> Name = new("--job-name") { Description = "Scheduler job name (lower-case letters, digits, '-'; with --emit)", DefaultValueFactory = _ => "finetrace-diff" };
    public readonly Option<string?> WorkDir = new("--workdir") { Description = "Absolute folder every node sees; the emitted commands run there (with --emit; default: the current folder)" };
    public readonly Option<int> Cpus = new("--cpus") { Description = "CPU cores per job (with --emit)", DefaultValueFactory = _ => 4 };
    public readonly Option<int> Memory = new("--memory") { Description = "Memory per job in GiB (with --emit)", DefaultValueFactory = _ => 16 };
    public readonly Option<int> Gpus = new("--gpus") { Description = "GPUs per job (with --emit)", DefaultValueFactory = _ => 0 };
    public readonly Option<string?> Time = new("--time") { Description = "Slurm time limit per job, e.g. 04:00:00 (with --emit slurm)" };
    public readonly Option<string?> Partition = new("--partition") { Description = "Slurm partition (with --emit slurm)" };
    public readonly Option<string> Image = new("--image") { Description = "Container image with finetrace on the PATH (with --emit k8s)", DefaultValueFactory = _ => "finetrace:latest" };
    public readonly Option<string> Claim = new("--volume-claim") { Description = "PersistentVolumeClaim (ReadWriteMany) holding the work folder (with --emit k8s)", DefaultValueFactory = _ => "finetrace-data" };
    public readonly Option<string> Mount = new("--mount-path") { Description = "Where the claim is mounted in the pods (with --emit k8s)", DefaultValueFactory = _ => "/data" };

    public IEnumerable<Option> All => [Name, WorkDir, Cpus, Memory, Gpus, Time, Partition, Image, Claim, Mount];

    public ScheduledRun Run(ParseResult r, int parts, string? prepare, string part, IReadOnlyList<string> finish) => new()
    {
        Name = r.GetValue(Name)!, Parts = parts, WorkDir = r.GetValue(WorkDir) ?? Environment.CurrentDirectory, Prepare = prepare, Part = part, Finish = finish,
        Cpus = r.GetValue(Cpus), MemoryGiB = r.GetValue(Memory), Gpus = r.GetValue(Gpus), TimeLimit = r.GetValue(Time), Partition = r.GetValue(Partition),
        Image = r.GetValue(Image)!, VolumeClaim = r.GetValue(Claim)!, MountPath = r.GetValue(Mount)!,
    };

    /// <summary>The Slurm script or Kubernetes manifests for <paramref name="run"/>, to <paramref name="path"/> or stdout.</summary>
    public static int Write(string kind, ScheduledRun run, string? path)
    {
        string text = kind switch
        {
            "slurm" => SlurmScript.Emit(run),
            "k8s" or "kubernetes" => KubernetesJobs.Emit(run),
            _ => throw new ArgumentException($"--emit {kind}: expected slurm or k8s"),
        };
        if (path is null) { Console.Write(text); return 0; }
        File.WriteAllText(path, text);
        bool slurm = kind == "slurm";
        if (slurm && !OperatingSystem.IsWindows()) File.SetUnixFileMode(path, File.GetUnixFileMode(path) | UnixFileMode.UserExecute);
        Console.Error.WriteLine(slurm ? $"wrote {path}; submit with: bash {path} submit" : $"wrote {path}; apply with: kubectl apply -f {path}");
        return 0;
    }
}

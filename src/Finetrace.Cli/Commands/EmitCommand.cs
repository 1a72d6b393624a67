using System.CommandLine;
using Finetrace.Pipeline.Emit;

namespace Finetrace.Cli.Commands;

/// <summary><c>finetrace emit slurm|k8s</c>: a Slurm job-array script or Kubernetes Job manifests that run a sharded
/// run (prepare → parts in parallel → finish) on an existing scheduler. <c>finetrace diff --emit</c> passes its own
/// commands through these options.</summary>
public sealed class EmitCommand : ICliCommand
{
    public Command Build()
    {
        var cmd = new Command("emit", "Write a Slurm job-array script or Kubernetes Job manifests that run a sharded harvest (prepare once → N parts in parallel → the later stages after all of them)");
        cmd.Subcommands.Add(Build("slurm", "Slurm job-array script (bash FILE submit: prepare, then the array, then finish with afterok dependencies)", SlurmScript.Emit));
        cmd.Subcommands.Add(Build("k8s", "Kubernetes manifests: prepare Job, Indexed Job of N shard pods, finish Job, meeting on a shared volume (kubectl apply -f FILE)", KubernetesJobs.Emit));
        return cmd;
    }

    static Command Build(string name, string description, Func<ScheduledRun, string> emit)
    {
        var runName = new Option<string>("--name") { Description = "Job name (lower-case letters, digits, '-')", DefaultValueFactory = _ => "finetrace" };
        var parts = new Option<int>("--parts") { Description = "Number of shards", Required = true };
        var workDir = new Option<string>("--workdir") { Description = "Absolute folder on storage every node sees; commands run there", Required = true };
        var prepare = new Option<string?>("--prepare") { Description = "Shell command run once before the shards (e.g. making the data)" };
        var part = new Option<string>("--part-command")
        {
            Description = $"Shell command of one shard; {ScheduledRun.PartPlaceholder} becomes i/N and {ScheduledRun.IndexPlaceholder} the index i (0-based), e.g. " +
                          "'finetrace harvest … --part {part} --out RESULTS/parts/{index}'",
            Required = true,
        };
        var finish = new Option<string[]>("--finish") { Description = "Shell command run after every shard succeeded (repeat for several, run in order)", Required = true };
        var stateDir = new Option<string?>("--state-dir") { Description = "Folder for completion markers and logs (default WORKDIR/.finetrace-jobs)" };
        var cpus = new Option<int>("--cpus") { Description = "CPU cores per job", DefaultValueFactory = _ => 4 };
        var mem = new Option<int>("--memory") { Description = "Memory per job in GiB", DefaultValueFactory = _ => 16 };
        var gpus = new Option<int>("--gpus") { Description = "GPUs per job", DefaultValueFactory = _ => 0 };
        var time = new Option<string?>("--time") { Description = "Slurm time limit per job, e.g. 04:00:00" };
        var partition = new Option<string?>("--partition") { Description = "Slurm partition" };
        var image = new Option<string>("--image") { Description = "Container image with finetrace on the PATH (k8s)", DefaultValueFactory = _ => "finetrace:latest" };
        var claim = new Option<string>("--volume-claim") { Description = "PersistentVolumeClaim (ReadWriteMany) holding WORKDIR (k8s)", DefaultValueFactory = _ => "finetrace-data" };
        var mount = new Option<string>("--mount-path") { Description = "Where the claim is mounted in the pods (k8s)", DefaultValueFactory = _ => "/data" };
        var outFile = new Option<string?>("--out") { Description = "File to write (default: standard output)" };
        var cmd = new Command(name, description);
        foreach (var o in new Option[] { runName, parts, workDir, prepare, part, finish, stateDir, cpus, mem, gpus, time, partition, image, claim, mount, outFile })
            cmd.Options.Add(o);
        cmd.SetAction(r =>
        {
            var run = new ScheduledRun
            {
                Name = r.GetValue(runName)!, Parts = r.GetValue(parts), WorkDir = r.GetValue(workDir)!, Prepare = r.GetValue(prepare),
                Part = r.GetValue(part)!, Finish = r.GetValue(finish)!, StateDir = r.GetValue(stateDir), Cpus = r.GetValue(cpus),
                MemoryGiB = r.GetValue(mem), Gpus = r.GetValue(gpus), TimeLimit = r.GetValue(time), Partition = r.GetValue(partition),
                Image = r.GetValue(image)!, VolumeClaim = r.GetValue(claim)!, MountPath = r.GetValue(mount)!,
            };
            string text = emit(run);
            if (r.GetValue(outFile) is { } path)
            {
                File.WriteAllText(path, text);
                if (name == "slurm" && !OperatingSystem.IsWindows()) File.SetUnixFileMode(path, File.GetUnixFileMode(path) | UnixFileMode.UserExecute);
                Console.Error.WriteLine(name == "slurm" ? $"wrote {path}; submit with: bash {path} submit" : $"wrote {path}; apply with: kubectl apply -f {path}");
            }
            else Console.Write(text);
            return 0;
        });
        return cmd;
    }
}

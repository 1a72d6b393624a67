using System.Diagnostics;
using Finetrace.Cli;
using Finetrace.Tests.Activations;
using Finetrace.Pipeline.Emit;
using Finetrace.Tests.Infrastructure;
using YamlDotNet.Core;
using YamlDotNet.Core.Events;
using YamlDotNet.Serialization;

namespace Finetrace.Tests.Pipeline;

/// <summary>The emitted Slurm script and Kubernetes manifests parse, and their shell steps, run with stub
/// <c>finetrace</c> and <c>sbatch</c> programs, call the right commands in the right order.</summary>
[Collection(ProcessWide.Name)]
public class EmitTests
{
    const int Parts = 4;

    /// <summary>A run whose part command has an argument with a space and a quote, to catch quoting mistakes.</summary>
    static ScheduledRun Run(string mount, string work) => new()
    {
        Name = "zog-diff", Parts = Parts, WorkDir = work, MountPath = mount, Cpus = 8, MemoryGiB = 32, Gpus = 1, TimeLimit = "02:00:00",
        Prepare = Shell.Join(["finetrace", "diff", "--out", "R", "--prepare-only"]),
        Part = Shell.Join(["finetrace", "harvest", "--data", "it's a file.txt", "--part", "{part}", "--out", "R/parts/{index}"]),
        Finish = [Shell.Join(["finetrace", "store", "merge", "R/parts/0", "R/parts/1", "R/parts/2", "R/parts/3", "--out", "R/store"]), Shell.Join(["finetrace", "diff", "--out", "R"])],
    };

    /// <summary>Stub programs that append their name and argv (one argument per line, then a blank line) to calls.log;
    /// sbatch also prints a job id.</summary>
    static string Stubs(TempDir tmp)
    {
        string bin = tmp.File("bin");
        Directory.CreateDirectory(bin);
        string log = tmp.File("calls.log");
        File.WriteAllText(Path.Combine(bin, "finetrace"), $"#!/bin/sh\n{{ echo finetrace; for a in \"$@\"; do echo \"$a\"; done; echo; }} >> '{log}'\n");
        File.WriteAllText(Path.Combine(bin, "sbatch"), $"#!/bin/sh\n{{ echo sbatch; for a in \"$@\"; do echo \"$a\"; done; echo; }} >> '{log}'\n" +
            $"n=$(grep -c '^sbatch$' '{log}'); echo \"$((100 + n))\"\n");
        if (!OperatingSystem.IsWindows()) foreach (var f in new[] { "finetrace", "sbatch" }) File.SetUnixFileMode(Path.Combine(bin, f), (UnixFileMode)0b111_101_101);
        return bin;
    }

    /// <summary>Calls recorded by the stubs: each a program name followed by its argv.</summary>
    static List<string[]> Calls(TempDir tmp) =>
        !File.Exists(tmp.File("calls.log")) ? [] :
        File.ReadAllText(tmp.File("calls.log")).Split("\n\n", StringSplitOptions.RemoveEmptyEntries).Select(c => c.Split('\n')).ToList();

    static (int Code, string Output) Sh(string shell, string[] args, string bin, params (string, string)[] env)
    {
        var psi = new ProcessStartInfo(shell) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in args) psi.ArgumentList.Add(a);
        psi.Environment["PATH"] = bin + ":" + Environment.GetEnvironmentVariable("PATH");
        psi.Environment.Remove("SLURM_ARRAY_TASK_ID");
        foreach (var (k, v) in env) psi.Environment[k] = v;
        using var p = Process.Start(psi)!;
        string output = p.StandardOutput.ReadToEnd() + p.StandardError.ReadToEnd();
        p.WaitForExit();
        return (p.ExitCode, output);
    }

    [Fact]
    public void Slurm_Script_HasItsDirectives_PassesBashN_AndRunsTheStepsInOrder()
    {
        using var tmp = new TempDir();
        string work = tmp.File("work");
        Directory.CreateDirectory(work);
        string script = tmp.File("run.sbatch");
        File.WriteAllText(script, SlurmScript.Emit(Run(tmp.Path, work)));
        string bin = Stubs(tmp);

        var (code, output) = Sh("bash", ["-n", script], bin);
        Assert.True(code == 0, output);
        // #SBATCH directives are only read before the first command.
        var lines = File.ReadAllLines(script);
        Assert.Equal("#!/bin/bash", lines[0]);
        var directives = lines.Skip(1).TakeWhile(l => l.StartsWith('#')).Where(l => l.StartsWith("#SBATCH ")).Select(l => l["#SBATCH ".Length..]).ToList();
        Assert.Contains($"--array=0-{Parts - 1}", directives);
        Assert.Contains("--job-name=zog-diff", directives);
        Assert.Contains("--cpus-per-task=8", directives);
        Assert.Contains("--mem=32G", directives);
        Assert.Contains("--gpus=1", directives);
        Assert.Contains("--time=02:00:00", directives);
        Assert.Contains($"--chdir={work}", directives);

        // An array task runs its shard, with its index substituted and the arguments intact.
        (code, output) = Sh("bash", [script], bin, ("SLURM_ARRAY_TASK_ID", "2"));
        Assert.True(code == 0, output);
        Assert.Equal(["finetrace", "harvest", "--data", "it's a file.txt", "--part", "2/4", "--out", "R/parts/2"], Calls(tmp).Single());
        File.Delete(tmp.File("calls.log"));

        // submit: prepare, then the array after it, then finish after the array.
        (code, output) = Sh("bash", [script, "submit"], bin);
        Assert.True(code == 0, output);
        var sb = Calls(tmp);
        Assert.Equal(3, sb.Count);
        Assert.All(sb, c => Assert.Equal("sbatch", c[0]));
        Assert.Contains("--job-name=zog-diff-prepare", sb[0]);
        Assert.Contains("--dependency=afterok:101", sb[1]);
        Assert.Equal(script, sb[1][^1]);   // the array is this file, with its directives
        Assert.Contains("--job-name=zog-diff-finish", sb[2]);
        Assert.Contains("--dependency=afterok:102", sb[2]);
        string wrap = sb[2][Array.IndexOf(sb[2], "--wrap") + 1];
        Assert.Equal($"bash '{script}' finish", wrap);
        Assert.True(Directory.Exists(Path.Combine(work, ".finetrace-jobs", "logs")));
        File.Delete(tmp.File("calls.log"));

        // The finish job's command runs the later stages in order.
        (code, output) = Sh("sh", ["-c", wrap], bin);
        Assert.True(code == 0, output);
        var fin = Calls(tmp);
        Assert.Equal(["finetrace", "store", "merge", "R/parts/0", "R/parts/1", "R/parts/2", "R/parts/3", "--out", "R/store"], fin[0]);
        Assert.Equal(["finetrace", "diff", "--out", "R"], fin[1]);
    }

    [Fact]
    public void Kubernetes_Manifests_Parse_AndTheirPodsMeetOnTheVolumeInOrder()
    {
        using var tmp = new TempDir();
        string work = tmp.File("work");
        string yaml = KubernetesJobs.Emit(Run(tmp.Path, work));
        var docs = new List<Dictionary<object, object>>();
        var parser = new Parser(new StringReader(yaml));
        var des = new DeserializerBuilder().Build();
        parser.Consume<StreamStart>();
        while (parser.Accept<DocumentStart>(out _)) docs.Add(des.Deserialize<Dictionary<object, object>>(parser));
        Assert.Equal(3, docs.Count);
        static Dictionary<object, object> M(object o) => (Dictionary<object, object>)o;
        static List<object> L(object o) => (List<object>)o;
        Assert.All(docs, d => { Assert.Equal("batch/v1", d["apiVersion"]); Assert.Equal("Job", d["kind"]); });
        Assert.Equal(["zog-diff-prepare", "zog-diff-shards", "zog-diff-finish"], docs.Select(d => (string)M(d["metadata"])["name"]));
        var shards = M(docs[1]["spec"]);
        Assert.Equal("Indexed", shards["completionMode"]);
        Assert.Equal("4", shards["completions"]);
        Assert.Equal("4", shards["parallelism"]);
        Assert.False(M(docs[0]["spec"]).ContainsKey("completionMode"));
        string Script(int doc)
        {
            var pod = M(M(M(docs[doc]["spec"])["template"])["spec"]);
            Assert.Equal("Never", pod["restartPolicy"]);
            Assert.Equal("finetrace-data", M(M(L(pod["volumes"])[0])["persistentVolumeClaim"])["claimName"]);
            var c = M(L(pod["containers"])[0]);
            Assert.Equal(tmp.Path, M(L(c["volumeMounts"])[0])["mountPath"]);
            Assert.Equal("1", M(M(c["resources"])["limits"])["nvidia.com/gpu"]);
            Assert.Equal("32Gi", M(M(c["resources"])["requests"])["memory"]);
            var cmd = L(c["command"]).Cast<string>().ToArray();
            Assert.Equal(["/bin/sh", "-c"], cmd[..2]);
            return cmd[2];
        }

        // Run the pods' scripts as Kubernetes would, with the shared volume a local folder: prepare, every shard, finish.
        string bin = Stubs(tmp);
        var (code, output) = Sh("sh", ["-c", Script(0)], bin);
        Assert.True(code == 0, output);
        Assert.Equal(["finetrace", "diff", "--out", "R", "--prepare-only"], Calls(tmp).Single());
        for (int i = Parts - 1; i >= 0; i--)
        {
            (code, output) = Sh("sh", ["-c", Script(1)], bin, ("JOB_COMPLETION_INDEX", $"{i}"));
            Assert.True(code == 0, output);
            Assert.Equal(["finetrace", "harvest", "--data", "it's a file.txt", "--part", $"{i}/4", "--out", $"R/parts/{i}"], Calls(tmp)[^1]);
            Assert.True(File.Exists(Path.Combine(work, ".finetrace-jobs", $"part-{i}.done")));
        }
        (code, output) = Sh("sh", ["-c", Script(2)], bin);
        Assert.True(code == 0, output);
        var calls = Calls(tmp);
        Assert.Equal(1 + Parts + 2, calls.Count);
        Assert.Equal(["finetrace", "diff", "--out", "R"], calls[^1]);
        // A new prepare clears the markers, so a rerun's finish waits for its own shards.
        (code, output) = Sh("sh", ["-c", Script(0)], bin);
        Assert.True(code == 0, output);
        Assert.False(File.Exists(Path.Combine(work, ".finetrace-jobs", "part-0.done")));
    }

    [Fact]
    public void Bad_Runs_AreRefusedWithTheFieldNamed()
    {
        var ok = Run("/data", "/data/w");
        Assert.Contains("job name", Assert.Throws<ArgumentException>(() => SlurmScript.Emit(ok with { Name = "Zog Diff" })).Message);
        Assert.Contains("{index}", Assert.Throws<ArgumentException>(() => SlurmScript.Emit(ok with { Part = "finetrace harvest" })).Message);
        Assert.Contains("absolute", Assert.Throws<ArgumentException>(() => SlurmScript.Emit(ok with { WorkDir = "w" })).Message);
        Assert.Contains("not on the volume", Assert.Throws<ArgumentException>(() => KubernetesJobs.Emit(ok with { WorkDir = "/scratch/w" })).Message);
    }

    /// <summary>A tiny diff: 2,000 stored tokens in 9 forward batches of 4 samples, so 3 parts hold 3 batches each.</summary>
    const string TinyDiff = """
        data: { generated_samples: 24, generated_tokens: 64 }
        harvest: { tokens: 2000, context: 64, batch: 4 }
        dictionaries: [ { name: crosscoder, dict_size: 128, k: 8, batch: 256 } ]
        analysis: { causal_sequences: 2, causal_random_sets: 2 }
        readers: { samples: 6, context: 48, adl_samples: 6, adl_positions: 2 }
        amplification: { alphas: [2], prompts: ['Once upon a time', 'One day'], samples_per_prompt: 1, max_new_tokens: 12 }
        """;

    [SharedFact]
    public void Diff_emit_writes_files_that_parse_and_its_steps_give_the_plain_runs_store_and_summary()
    {
        using var tmp = new TempDir();
        string cfg = tmp.File("diff.yaml"), results = tmp.File("R"), work = tmp.File("work");
        File.WriteAllText(cfg, TinyDiff);
        Directory.CreateDirectory(work);
        string[] diff = ["diff", "--base", Shared.Path("models", "stories260K"), "--finetuned", Shared.Path("models", "stories260K-zog"), "--config", cfg, "--out", results];

        // the plain run, kept aside: the emitted run writes the same results folder path, so every path in them agrees
        Assert.Equal(0, Program.Main(diff));
        Directory.Move(results, tmp.File("plain"));

        // Kubernetes: three Jobs, the Indexed one harvesting part JOB_COMPLETION_INDEX/3 of this diff
        Assert.Equal(0, Program.Main([.. diff, "--emit", "k8s", "--parts", "3", "--workdir", work, "--mount-path", tmp.Path, "--emit-file", tmp.File("run.yaml")]));
        var parser = new Parser(new StringReader(File.ReadAllText(tmp.File("run.yaml"))));
        var des = new DeserializerBuilder().Build();
        var docs = new List<Dictionary<object, object>>();
        parser.Consume<StreamStart>();
        while (parser.Accept<DocumentStart>(out _)) docs.Add(des.Deserialize<Dictionary<object, object>>(parser));
        static Dictionary<object, object> M(object o) => (Dictionary<object, object>)o;
        Assert.Equal(["finetrace-diff-prepare", "finetrace-diff-shards", "finetrace-diff-finish"], docs.Select(d => (string)M(d["metadata"])["name"]));
        Assert.Equal("3", M(docs[1]["spec"])["completions"]);
        string PodScript(int doc) => ((List<object>)M(((List<object>)M(M(M(docs[doc]["spec"])["template"])["spec"])["containers"])[0])["command"])[2].ToString()!;
        Assert.Contains("--stop-after data", PodScript(0), StringComparison.Ordinal);
        Assert.Contains("--harvest-part \"${FT_PART}\"", PodScript(1), StringComparison.Ordinal);
        Assert.DoesNotContain("--harvest-part", PodScript(2), StringComparison.Ordinal);

        // Slurm: the script parses; its steps, run with a stub finetrace that records them, are run here through the CLI
        string script = tmp.File("run.sbatch");
        Assert.Equal(0, Program.Main([.. diff, "--emit", "slurm", "--parts", "3", "--workdir", work, "--job-name", "zog", "--emit-file", script]));
        string bin = Stubs(tmp);
        var (code, output) = Sh("bash", ["-n", script], bin);
        Assert.True(code == 0, output);
        Assert.Contains("#SBATCH --array=0-2", File.ReadAllLines(script));
        Assert.True(Sh("bash", [script, "prepare"], bin).Code == 0);
        foreach (int i in new[] { 2, 0, 1 }) Assert.True(Sh("bash", [script], bin, ("SLURM_ARRAY_TASK_ID", $"{i}")).Code == 0);
        Assert.True(Sh("bash", [script, "finish"], bin).Code == 0);
        var steps = Calls(tmp);
        Assert.Equal(5, steps.Count);
        Assert.Equal(["finetrace", .. diff, "--stop-after", "data"], steps[0]);
        Assert.Equal(["finetrace", .. diff, "--harvest-part", "2/3"], steps[1]);
        Assert.Equal(["finetrace", .. diff], steps[4]);

        Assert.Equal(0, Program.Main(steps[0][1..]));
        Assert.Equal(0, Program.Main(steps[1][1..]));
        Assert.Equal(0, Program.Main(steps[2][1..]));
        Assert.Equal(1, Program.Main(steps[4][1..]));   // part 1/3 is missing: refused by name, nothing harvested whole
        Assert.False(Directory.Exists(Path.Combine(results, "store")));
        Assert.Equal(0, Program.Main(steps[3][1..]));
        Assert.Equal(3, Directory.GetDirectories(Path.Combine(results, "store-parts")).Length);
        Assert.Equal(0, Program.Main(steps[4][1..]));

        // the merged store equals the plain run's byte for byte, and so does summary.json
        ActivationStoreTests.AssertSameFiles(Path.Combine(tmp.File("plain"), "store"), Path.Combine(results, "store"));
        Assert.Equal(File.ReadAllText(Path.Combine(tmp.File("plain"), "summary.json")), File.ReadAllText(Path.Combine(results, "summary.json")));
        Assert.Empty(Directory.GetDirectories(Path.Combine(results, "store-parts")));   // merged parts are removed
    }

    [Fact]
    public void Cli_EmitWritesTheFiles()
    {
        using var tmp = new TempDir();
        string s = tmp.File("run.sbatch"), k = tmp.File("run.yaml");
        string[] common = ["--parts", "3", "--workdir", "/data/w", "--part-command", "finetrace harvest --part {part} --out parts/{index}", "--finish", "finetrace diff --out R"];
        Assert.Equal(0, Program.Main(["emit", "slurm", .. common, "--out", s]));
        Assert.Contains("#SBATCH --array=0-2", File.ReadAllText(s));
        Assert.Contains("--part \"${FT_PART}\" --out parts/\"${FT_INDEX}\"", File.ReadAllText(s));
        Assert.Equal(0, Program.Main(["emit", "k8s", .. common, "--out", k]));
        Assert.Contains("completionMode: Indexed", File.ReadAllText(k));
        Assert.Equal(1, Program.Main(["emit", "k8s", "--parts", "3", "--workdir", "/data/w", "--part-command", "same for all", "--finish", "x"]));
    }
}

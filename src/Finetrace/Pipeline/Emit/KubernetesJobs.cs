using YamlDotNet.Core;
using YamlDotNet.Serialization;
using YamlDotNet.Serialization.EventEmitters;

namespace Finetrace.Pipeline.Emit;

/// <summary>
/// Kubernetes manifests for a <see cref="ScheduledRun"/>: a prepare Job (when there is a prepare step), an Indexed Job
/// running shard JOB_COMPLETION_INDEX in each of its <c>completions</c> pods, and a finish Job. Jobs have no ordering
/// of their own, so the steps meet on the shared volume: prepare writes a marker the shard pods wait for, each shard
/// writes one after it succeeded, and the finish pod waits for all of them. Apply with <c>kubectl apply -f FILE</c>;
/// the volume claim must exist and be mounted read-write by several pods (ReadWriteMany).
/// </summary>
public static class KubernetesJobs
{
    public static string Emit(ScheduledRun r)
    {
        r.Validate();
        if (!r.WorkDir.StartsWith(r.MountPath.TrimEnd('/') + "/", StringComparison.Ordinal) && r.WorkDir != r.MountPath)
            throw new ArgumentException($"work folder '{r.WorkDir}' is not on the volume mounted at '{r.MountPath}'; pods would not share it");
        string states = Shell.Quote(r.States);
        string prepared = r.States + "/prepare.done";
        var docs = new List<object>();
        if (r.Prepare is not null)
            docs.Add(Job(r, $"{r.Name}-prepare", null, Script(r,
                $"rm -f {states}/prepare.done {states}/part-*.done",
                r.Prepare,
                $"touch {Shell.Quote(prepared)}")));
        string waitPrepare = r.Prepare is null ? ":" : WaitFor(r, Shell.Quote(prepared), "the prepare job");
        docs.Add(Job(r, $"{r.Name}-shards", r.Parts, Script(r,
            waitPrepare,
            "FT_INDEX=\"$JOB_COMPLETION_INDEX\"",
            $"FT_PART=\"$JOB_COMPLETION_INDEX/{r.Parts}\"",
            r.PartShell,
            $"touch {states}/part-\"$FT_INDEX\".done")));
        string allParts = $"i=0; n=0; while [ $i -lt {r.Parts} ]; do [ -e {states}/part-$i.done ] && n=$((n+1)); i=$((i+1)); done; [ $n -eq {r.Parts} ]";
        docs.Add(Job(r, $"{r.Name}-finish", null, Script(r,
            $"until {{ {allParts}; }}; do echo \"waiting for the shards ($n of {r.Parts} done)\"; sleep 30; done",
            string.Join("\n", r.Finish))));
        var yaml = new SerializerBuilder().WithEventEmitter(next => new LiteralScripts(next)).Build();
        return "# Written by finetrace emit k8s. Apply with: kubectl apply -f THIS_FILE\n" +
               string.Join("", docs.Select(d => "---\n" + yaml.Serialize(d)));
    }

    static string WaitFor(ScheduledRun r, string marker, string what) =>
        $"until [ -e {marker} ]; do echo \"waiting for {what}\"; sleep 30; done";

    static string Script(ScheduledRun r, params string[] lines) =>
        string.Join("\n", new[] { "set -eu", $"mkdir -p {Shell.Quote(r.States)}", $"cd {Shell.Quote(r.WorkDir)}" }.Concat(lines)) + "\n";

    static Dictionary<string, object> Job(ScheduledRun r, string name, int? indexed, string script)
    {
        var resources = new Dictionary<string, object>
        {
            ["cpu"] = r.Cpus.ToString(System.Globalization.CultureInfo.InvariantCulture),
            ["memory"] = $"{r.MemoryGiB}Gi",
        };
        var limits = new Dictionary<string, object>(resources);
        if (r.Gpus > 0) limits["nvidia.com/gpu"] = r.Gpus.ToString(System.Globalization.CultureInfo.InvariantCulture);
        var spec = new Dictionary<string, object>();
        if (indexed is int n)
        {
            spec["completionMode"] = "Indexed";
            spec["completions"] = n;
            spec["parallelism"] = n;
        }
        spec["backoffLimit"] = indexed is int k ? 3 * k : 3;
        spec["template"] = new Dictionary<string, object>
        {
            ["metadata"] = new Dictionary<string, object> { ["labels"] = new Dictionary<string, object> { ["app.kubernetes.io/name"] = "finetrace", ["finetrace/run"] = r.Name } },
            ["spec"] = new Dictionary<string, object>
            {
                ["restartPolicy"] = "Never",
                ["containers"] = new List<object>
                {
                    new Dictionary<string, object>
                    {
                        ["name"] = "finetrace",
                        ["image"] = r.Image,
                        ["command"] = new List<object> { "/bin/sh", "-c", script },
                        ["resources"] = new Dictionary<string, object> { ["requests"] = resources, ["limits"] = limits },
                        ["volumeMounts"] = new List<object> { new Dictionary<string, object> { ["name"] = "work", ["mountPath"] = r.MountPath } },
                    },
                },
                ["volumes"] = new List<object>
                {
                    new Dictionary<string, object> { ["name"] = "work", ["persistentVolumeClaim"] = new Dictionary<string, object> { ["claimName"] = r.VolumeClaim } },
                },
            },
        };
        return new Dictionary<string, object>
        {
            ["apiVersion"] = "batch/v1",
            ["kind"] = "Job",
            ["metadata"] = new Dictionary<string, object> { ["name"] = name, ["labels"] = new Dictionary<string, object> { ["finetrace/run"] = r.Name } },
            ["spec"] = spec,
        };
    }

    /// <summary>Multi-line strings (the pod scripts) as literal blocks, so the manifest reads like the script it runs.</summary>
    sealed class LiteralScripts(IEventEmitter next) : ChainedEventEmitter(next)
    {
        public override void Emit(ScalarEventInfo eventInfo, IEmitter emitter)
        {
            if (eventInfo.Source.Value is string s && s.Contains('\n')) eventInfo.Style = ScalarStyle.Literal;
            base.Emit(eventInfo, emitter);
        }
    }
}

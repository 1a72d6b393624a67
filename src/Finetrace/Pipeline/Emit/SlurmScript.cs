using System.Text;

namespace Finetrace.Pipeline.Emit;

/// <summary>
/// A Slurm job-array script for a <see cref="ScheduledRun"/>. As an array task (<c>#SBATCH --array=0-(n−1)</c>) it runs
/// shard SLURM_ARRAY_TASK_ID; <c>bash SCRIPT submit</c> submits the prepare job, the array after it, and the finish
/// job after every array task succeeded (sbatch --dependency=afterok), each running this same file in its mode;
/// <c>bash SCRIPT prepare|finish</c> run those steps in place.
/// </summary>
public static class SlurmScript
{
    public static string Emit(ScheduledRun r)
    {
        r.Validate();
        string logs = r.States + "/logs";
        var sb = new StringBuilder();
        sb.Append("#!/bin/bash\n");
        sb.Append($"#SBATCH --job-name={r.Name}\n");
        sb.Append($"#SBATCH --array=0-{r.Parts - 1}\n");
        sb.Append($"#SBATCH --chdir={r.WorkDir}\n");
        sb.Append($"#SBATCH --output={logs}/%x-%A_%a.out\n");
        foreach (var d in Resources(r)) sb.Append($"#SBATCH {d}\n");
        string prep = r.Prepare is null ? "" :
            $"    prep=$(sbatch --parsable --job-name={r.Name}-prepare --output={Shell.Quote(logs)}/%x-%j.out \"${{common[@]}}\" --wrap \"bash '$self' prepare\")\n" +
            "    dep=(--dependency=afterok:${prep%%;*})\n" +
            "    echo \"prepare: job $prep\"\n";
        sb.Append($$"""
            # Written by finetrace emit slurm. Submit everything with:  bash THIS_FILE submit
            # (prepare once, then {{r.Parts}} shards as array tasks 0-{{r.Parts - 1}}, then finish once all of them succeeded).
            # Every step is resumable: submitting again after a failure redoes only unfinished work.
            set -euo pipefail
            cd {{Shell.Quote(r.WorkDir)}}

            prepare() {
            {{(r.Prepare is null ? "  :   # nothing to prepare" : "  " + r.Prepare)}}
            }

            shard() {
              FT_INDEX="$1"
              FT_PART="$1/{{r.Parts}}"
              {{r.PartShell}}
            }

            finish() {
            {{string.Join("\n", r.Finish.Select(c => "  " + c))}}
            }

            if [ -n "${SLURM_ARRAY_TASK_ID:-}" ]; then
              shard "$SLURM_ARRAY_TASK_ID"
              exit 0
            fi

            case "${1:-}" in
              submit)
                self="$(readlink -f "$0")"
                mkdir -p {{Shell.Quote(logs)}}
                common=({{string.Join(" ", Resources(r).Select(Shell.Quote))}} --chdir={{Shell.Quote(r.WorkDir)}})
                dep=()
            {{prep}}    shards=$(sbatch --parsable ${dep[@]+"${dep[@]}"} "$self")
                echo "shards: array job $shards (tasks 0-{{r.Parts - 1}})"
                fin=$(sbatch --parsable --job-name={{r.Name}}-finish --output={{Shell.Quote(logs)}}/%x-%j.out "${common[@]}" --dependency=afterok:${shards%%;*} --wrap "bash '$self' finish")
                echo "finish: job $fin (starts when every shard succeeded)"
                ;;
              prepare) prepare ;;
              finish) finish ;;
              shard) shard "${2:?give the shard index}" ;;
              *)
                echo "usage: bash $0 submit | prepare | shard INDEX | finish   (or sbatch $0 for the shards alone)" >&2
                exit 2
                ;;
            esac

            """);
        return sb.ToString();
    }

    static IEnumerable<string> Resources(ScheduledRun r)
    {
        yield return $"--cpus-per-task={r.Cpus}";
        yield return $"--mem={r.MemoryGiB}G";
        if (r.Gpus > 0) yield return $"--gpus={r.Gpus}";
        if (r.TimeLimit is not null) yield return $"--time={r.TimeLimit}";
        if (r.Partition is not null) yield return $"--partition={r.Partition}";
    }
}

using System.CommandLine;
using System.Text.Json.Nodes;
using Finetrace.Cuda;
using Finetrace.Cuda.Checks;

namespace Finetrace.Cli.Commands;

/// <summary>
/// <c>finetrace gpu-check list | has | run NAME | add-tokenizer | report</c>: the pieces scripts/gpu-check drives on the GPU machine, where
/// this CLI runs as a self-contained, trimmed publish (no .NET there). <c>list</c> says which checks and benchmarks
/// this build has; <c>run</c> runs one device check and prints one JSON line (status, measured error, tolerance);
/// <c>report</c> turns the script's steps folder into the one-line JSON report. Users run <c>scripts/gpu-check</c>.
/// </summary>
public sealed class GpuCheckCommand : ICliCommand
{
    public Command Build()
    {
        var cmd = new Command("gpu-check", "Device checks for scripts/gpu-check (GPU vs CPU parity) and its one-line JSON report");

        var plain = new Option<bool>("--plain") { Description = "One line per planned check: NAME built|not-built (for scripts)" };
        var list = new Command("list", "Print one JSON line: the device checks and benchmarks in this build (and those planned but not built)");
        list.Options.Add(plain);
        list.SetAction(r =>
        {
            if (r.GetValue(plain))
                foreach (var n in GpuCheckSuite.Planned.Concat(GpuCheckSuite.Steps.Select(s => s.Name)).Distinct())
                    Console.WriteLine($"{n} {(GpuCheckSuite.Find(n) is null ? "not-built" : "built")}");
            else Console.WriteLine(ListJson().ToJsonString());
            return 0;
        });
        cmd.Subcommands.Add(list);

        var spec = new Argument<string[]>("WORDS") { Description = "A command path and optionally an option, e.g. bench harvest --device" };
        var has = new Command("has", "Exit 0 when this build has the command (and option), 1 when not: e.g. `gpu-check has bench device-forward`");
        has.Arguments.Add(spec);
        has.SetAction(r => Has(Program.BuildRoot(), r.GetValue(spec)!) ? 0 : 1);
        cmd.Subcommands.Add(has);

        var name = new Argument<string>("NAME") { Description = "A check from `finetrace gpu-check list`" };
        var device = new Option<string>("--device") { Description = "cuda (the first GPU) or ilgpu-cpu (ILGPU's CPU accelerator)", DefaultValueFactory = _ => "cuda" };
        var work = new Option<string>("--work") { Description = "Scratch folder for the check's synthetic models", DefaultValueFactory = _ => Path.Combine(Path.GetTempPath(), "finetrace-gpu-check") };
        var configs = new Option<string>("--configs") { Description = "Folder of small model configs (*.config.json) for parity models (scripts/gpu/parity)", DefaultValueFactory = _ => "scripts/gpu/parity" };
        var tiny = new Option<bool>("--tiny") { Description = "Tiny shapes (the CPU accelerator's dry run of the same code path)" };
        var run = new Command("run", "Run one device check; print one JSON line (status pass|fail, error, tolerance); exit 0 only when it passes");
        run.Arguments.Add(name);
        foreach (var o in new Option[] { device, work, configs, tiny }) run.Options.Add(o);
        run.SetAction(r =>
        {
            string n = r.GetValue(name)!;
            var step = GpuCheckSuite.Find(n);
            if (step is null)
            {
                string why = GpuCheckSuite.Planned.Contains(n) ? "not built: this build has no step for it yet" : "unknown check (see finetrace gpu-check list)";
                Console.WriteLine(new JsonObject { ["status"] = why.StartsWith("not built") ? "not built" : "error", ["message"] = $"{n}: {why}" }.ToJsonString());
                return 3;
            }
            var kind = ParseDevice(r.GetValue(device)!);
            string dir = Path.Combine(r.GetValue(work)!, n);
            Directory.CreateDirectory(dir);
            var result = step.Run(new GpuCheckStepContext(kind, dir, r.GetValue(configs)!, r.GetValue(tiny)));
            Console.WriteLine(result.ToJsonString());
            return result["status"]?.GetValue<string>() == "pass" ? 0 : 1;
        });
        cmd.Subcommands.Add(run);

        var model = new Option<string>("--model") { Description = "A checkpoint folder without a tokenizer (from finetrace model synth)", Required = true };
        var addTok = new Command("add-tokenizer", "Give a synthetic checkpoint a small trained BPE tokenizer (≤ 512 tokens) so text can be harvested with it");
        addTok.Options.Add(model);
        addTok.SetAction(r =>
        {
            GpuCheckSuite.AddTokenizer(r.GetValue(model)!);
            Console.WriteLine($"tokenizer written to {r.GetValue(model)}");
            return 0;
        });
        cmd.Subcommands.Add(addTok);

        var steps = new Option<string>("--steps") { Description = "The steps folder scripts/gpu-check wrote", Required = true };
        var output = new Option<string?>("--out") { Description = "Also write the report here" };
        var report = new Command("report", "Print the one-line JSON report of a scripts/gpu-check steps folder");
        report.Options.Add(steps); report.Options.Add(output);
        report.SetAction(r =>
        {
            string line = GpuCheckReport.ToLine(GpuCheckReport.Build(r.GetValue(steps)!));
            if (r.GetValue(output) is { } path) File.WriteAllText(path, line + "\n");
            Console.WriteLine(line);
            return 0;
        });
        cmd.Subcommands.Add(report);
        return cmd;
    }

    static DeviceKind ParseDevice(string s) => s switch
    {
        "cuda" => DeviceKind.Cuda,
        "ilgpu-cpu" => DeviceKind.IlgpuCpu,
        _ => throw new ArgumentException($"--device '{s}': expected cuda or ilgpu-cpu"),
    };

    /// <summary>Whether <paramref name="words"/> (subcommand names, then optionally one --option) exist under root.</summary>
    internal static bool Has(Command root, IReadOnlyList<string> words)
    {
        Command at = root;
        foreach (var w in words)
        {
            if (w.StartsWith("--", StringComparison.Ordinal)) return at.Options.Any(o => o.Name == w || o.Aliases.Contains(w));
            var next = at.Subcommands.FirstOrDefault(c => c.Name == w);
            if (next is null) return false;
            at = next;
        }
        return true;
    }

    /// <summary>The checks and benchmarks this build has, for the script to run or mark "not built".</summary>
    static JsonObject ListJson()
    {
        var root = Program.BuildRoot();
        var bench = root.Subcommands.FirstOrDefault(c => c.Name == "bench");
        var harvest = root.Subcommands.FirstOrDefault(c => c.Name == "harvest");
        var checks = new JsonArray(GpuCheckSuite.Steps.Select(s => (JsonNode)s.Name).ToArray());
        var planned = new JsonArray(GpuCheckSuite.Planned.Where(p => GpuCheckSuite.Find(p) is null).Select(p => (JsonNode)p).ToArray());
        var benches = new JsonArray((bench?.Subcommands ?? []).Select(c => (JsonNode)c.Name).ToArray());
        return new JsonObject
        {
            ["checks"] = checks,
            ["checks_not_built"] = planned,
            ["benches"] = benches,
            ["harvest_device_option"] = harvest?.Options.Any(o => o.Name == "--device") ?? false,
        };
    }
}

using System.CommandLine;
using Finetrace.Cli.Commands.Analyze;
using Finetrace.Diffing;
using Finetrace.Diffing.Amplification;

namespace Finetrace.Cli.Commands;

/// <summary><c>finetrace amplify</c>: logit-diff and weight amplification sampling with base and fine-tuned samples beside.</summary>
public sealed class AmplifyCommand : ICliCommand
{
    public Command Build()
    {
        var cli = new ReadersCli();
        var prompt = new Option<string[]>("--prompt") { Description = "Prompt text; repeat for several", Required = true, AllowMultipleArgumentsPerToken = false };
        var chat = new Option<bool>("--chat") { Description = "Render each prompt as a user message with the model's chat template and generation prompt" };
        var alpha = new Option<string>("--alpha") { Description = "Logit-diff strengths α, comma-separated: z_ft + α (z_ft − z_base); empty for none", DefaultValueFactory = _ => "1,2,4" };
        var weight = new Option<string?>("--weight") { Description = "Weight amplification factors w, comma-separated: W_base + w ΔW (e.g. 2,3 or -1)" };
        var layers = new Option<string?>("--layers") { Description = "Layers weight amplification scales (default all; fractions as in harvest)" };
        var modules = new Option<string>("--modules") { Description = "all, attention or mlp (block parameters)", DefaultValueFactory = _ => "all" };
        var samples = new Option<int>("--samples") { Description = "Samples per prompt and setting", DefaultValueFactory = _ => 3 };
        var maxNew = new Option<int>("--max-new-tokens") { Description = "Tokens per sample at most", DefaultValueFactory = _ => 60 };
        var temperature = new Option<float>("--temperature") { Description = "Sampling temperature (0 = greedy)", DefaultValueFactory = _ => 1f };
        var seed = new Option<int>("--seed") { Description = "Sample i uses seed + i in every setting", DefaultValueFactory = _ => 0 };
        var cmd = new Command("amplify",
            "Amplification sampling: base and fine-tuned samples beside logit-diff amplified ones (z_ft + α (z_ft − z_base)) and, with --weight, " +
            "weight-amplified ones (W_base + w ΔW; full fine-tunes and LoRA) → RESULTS/amplification.json");
        cli.AddPair(cmd);
        foreach (var o in new Option[] { prompt, chat, alpha, weight, layers, modules, samples, maxNew, temperature, seed }) cmd.Options.Add(o);
        cmd.SetAction(r =>
        {
            var pair = cli.Pair(r);
            string alphaText = r.GetValue(alpha) ?? "";
            var o = new AmplificationOptions
            {
                Models = pair, Prompts = r.GetValue(prompt)!, Chat = r.GetValue(chat),
                Alphas = ReadersCli.Floats(alphaText, "--alpha"),
                WeightFactors = r.GetValue(weight) is { } w ? ReadersCli.Floats(w, "--weight") : [],
                Layers = r.GetValue(layers) is { } l ? ReadersCli.Layers(l, pair.Base) : null,
                Modules = r.GetValue(modules) switch
                {
                    "all" => AmplifiedModules.All, "attention" or "attn" => AmplifiedModules.Attention, "mlp" => AmplifiedModules.Mlp,
                    var m => throw new ArgumentException($"--modules: '{m}' is not all, attention or mlp"),
                },
                SamplesPerPrompt = r.GetValue(samples), MaxNewTokens = r.GetValue(maxNew), Temperature = r.GetValue(temperature), Seed = r.GetValue(seed),
            };
            if (o.SamplesPerPrompt < 1 || o.MaxNewTokens < 1) throw new ArgumentException("--samples and --max-new-tokens must be ≥ 1");
            if (o.Temperature < 0) throw new ArgumentException("--temperature must be ≥ 0");
            string outDir = r.GetValue(cli.Out)!;
            bool json = r.GetValue(cli.Json);
            return ReadersCli.Cancellable(cancel =>
            {
                var results = ResultsFolder.Open(outDir);
                var res = AmplificationAnalysis.Run(o, results, ReadersCli.StderrProgress(), cancel);
                if (json) { Console.WriteLine(File.ReadAllText(results.PathOf(AmplificationAnalysis.OutputFile)).TrimEnd()); return 0; }
                if (res is null) { ReadersCli.Skipped("amplify", outDir); return 0; }
                foreach (var p in res.Prompts)
                {
                    Console.WriteLine($"prompt: {KlCommand.Flat(p.Rendered)}");
                    foreach (var s in p.Settings)
                    {
                        string label = s.Kind switch { "logit_diff" => $"α = {s.Strength}", "weight" => $"w = {s.Strength}", var k => k };
                        foreach (var text in s.Samples) Console.WriteLine($"  [{label}] {KlCommand.Flat(text)}");
                    }
                }
                Console.WriteLine($"written: {results.PathOf(AmplificationAnalysis.OutputFile)}");
                return 0;
            });
        });
        return cmd;
    }
}

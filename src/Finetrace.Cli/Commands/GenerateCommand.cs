using System.CommandLine;
using Finetrace.Models;
using Finetrace.Text.Tokenization;

namespace Finetrace.Cli.Commands;

/// <summary><c>finetrace generate --model DIR [--adapter DIR] --prompt TEXT | --ids 1,2,3 [--max-new-tokens N]
/// [--temperature T] [--seed S]</c>: greedy (T = 0) or temperature sampling with a key/value cache. Prints the continuation
/// (decoded with the model's tokenizer.json when present, else as ids) on stdout, the prompt and generated ids on stderr.</summary>
public sealed class GenerateCommand : ICliCommand
{
    public Command Build()
    {
        var model = new Option<string>("--model") { Description = "Hugging Face checkpoint folder", Required = true };
        var adapter = new Option<string?>("--adapter") { Description = "PEFT LoRA adapter folder merged at load" };
        var prompt = new Option<string?>("--prompt") { Description = "Prompt text (tokenized with the model's tokenizer.json)" };
        var ids = new Option<string?>("--ids") { Description = "Prompt token ids, comma-separated (e.g. 1,403,407)" };
        var maxNew = new Option<int>("--max-new-tokens") { Description = "Tokens to generate at most", DefaultValueFactory = _ => 60 };
        var temperature = new Option<float>("--temperature") { Description = "0 = greedy; > 0 samples from softmax(logits / T)", DefaultValueFactory = _ => 0f };
        var seed = new Option<int>("--seed") { Description = "Sampling seed", DefaultValueFactory = _ => 0 };
        var cmd = new Command("generate", "Generate text from a prompt (greedy or temperature sampling)");
        foreach (var o in new Option[] { model, adapter, prompt, ids, maxNew, temperature, seed }) cmd.Options.Add(o);
        cmd.SetAction(r => Run(r.GetValue(model)!, r.GetValue(adapter), r.GetValue(prompt), r.GetValue(ids),
            r.GetValue(maxNew), r.GetValue(temperature), r.GetValue(seed)));
        return cmd;
    }

    /// <summary>EOS ids of config.json plus those of generation_config.json (chat models often list extra end-of-turn ids there).</summary>
    static HashSet<int> StopIds(string modelDir, ModelConfig config)
    {
        var ids = new HashSet<int>(config.EosTokenIds);
        string gen = Path.Combine(modelDir, "generation_config.json");
        if (File.Exists(gen))
        {
            using var doc = System.Text.Json.JsonDocument.Parse(File.ReadAllBytes(gen));
            if (doc.RootElement.TryGetProperty("eos_token_id", out var e))
            {
                if (e.ValueKind == System.Text.Json.JsonValueKind.Number) ids.Add(e.GetInt32());
                else if (e.ValueKind == System.Text.Json.JsonValueKind.Array)
                    foreach (var x in e.EnumerateArray()) if (x.ValueKind == System.Text.Json.JsonValueKind.Number) ids.Add(x.GetInt32());
            }
        }
        return ids;
    }

    static int Run(string modelDir, string? adapterDir, string? prompt, string? idsText, int maxNew, float temperature, int seed)
    {
        if ((prompt is null) == (idsText is null)) throw new ArgumentException("give exactly one of --prompt TEXT or --ids 1,2,3");
        if (maxNew < 0) throw new ArgumentException("--max-new-tokens must be ≥ 0");
        using var lm = CausalLM.Load(modelDir, adapterDir);
        bool hasTokenizer = File.Exists(Path.Combine(modelDir, "tokenizer.json"));
        var tokenizer = hasTokenizer ? Tokenizer.FromFolder(modelDir) : null;
        int[] promptIds;
        if (idsText is not null)
            promptIds = idsText.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
                .Select(s => int.TryParse(s, out int v) ? v : throw new ArgumentException($"--ids: '{s}' is not an integer")).ToArray();
        else
            promptIds = (tokenizer ?? throw new FileNotFoundException($"{modelDir}: no tokenizer.json, so --prompt cannot be tokenized; pass token ids with --ids"))
                .Encode(prompt!, addSpecialTokens: true).Ids;
        if (promptIds.Length == 0) throw new ArgumentException("the prompt encodes to no tokens (this tokenizer adds no BOS); give some text or --ids");

        int maxPos = lm.Config.MaxPositions, total = promptIds.Length + maxNew;
        if (maxPos > 0 && total > maxPos)
        {
            if (lm.Config.Arch == Architecture.Gpt2)
                throw new ArgumentException($"--max-new-tokens {maxNew}: the prompt ({promptIds.Length} tokens) and the new tokens need {total} positions; " +
                                            $"this model has {maxPos} (learned position embeddings). Use --max-new-tokens {Math.Max(0, maxPos - promptIds.Length)} or less");
            Console.Error.WriteLine($"finetrace: warning: the prompt ({promptIds.Length} tokens) and --max-new-tokens {maxNew} need {total} positions, more than the " +
                                    $"model's max_position_embeddings {maxPos}; tokens past it are beyond what the model was trained on");
        }
        var output = new Generator(lm).Generate(promptIds, maxNew, temperature, seed, StopIds(modelDir, lm.Config));
        Console.Error.WriteLine($"prompt ids: {string.Join(",", promptIds)}");
        Console.Error.WriteLine($"generated ids: {string.Join(",", output)}");
        Console.WriteLine(tokenizer is null ? string.Join(",", output) : tokenizer.Decode(output.ToArray(), skipSpecialTokens: true));
        return 0;
    }
}

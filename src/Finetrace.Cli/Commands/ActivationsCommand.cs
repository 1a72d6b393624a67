using System.CommandLine;
using System.Diagnostics;
using Finetrace.Models;
using Finetrace.Models.Safetensors;
using Finetrace.Tensors;

namespace Finetrace.Cli.Commands;

/// <summary>
/// <c>finetrace activations --model DIR [--adapter DIR] --input-ids IN.safetensors --out OUT.safetensors</c>: runs the model
/// on IN's int64 <c>input_ids</c> [B, T] and writes float32 <c>blocks.0.hook_resid_pre</c>, <c>blocks.{i}.hook_resid_post</c>
/// for every layer, <c>ln_final.hook_normalized</c> [B, T, H] and <c>logits</c> [B, T, V]; <c>--sites</c> adds block sites
/// (<c>blocks.{i}.hook_attn_out</c>, <c>hook_mlp_out</c>, <c>mlp.hook_post</c>, …) for every layer.
/// </summary>
public sealed class ActivationsCommand : ICliCommand
{
    public Command Build()
    {
        var model = new Option<string>("--model") { Description = "Hugging Face checkpoint folder (config.json + safetensors)", Required = true };
        var adapter = new Option<string?>("--adapter") { Description = "PEFT LoRA adapter folder merged into the model at load" };
        var input = new Option<string>("--input-ids") { Description = "safetensors file with int64 input_ids [batch, seq] (no padding; an optional attention_mask [batch, seq] marks right padding)", Required = true };
        var output = new Option<string>("--out") { Description = "Output safetensors file (float32 activations)", Required = true };
        var sites = new Option<string?>("--sites")
        {
            Description = "Also write these block sites for every layer, comma-separated: attn_out, mlp_out (what each branch adds to the residual), " +
                          "mlp_post (MLP hidden activation after the nonlinearity, [B, T, intermediate]), resid_pre, resid_mid; or 'all'",
        };
        var cmd = new Command("activations", "Run a model on token ids and write its residual stream, final norm and logits (TransformerLens hook names); " +
                                             "--sites adds attention / MLP outputs and the MLP hidden activation of every block");
        cmd.Options.Add(model); cmd.Options.Add(adapter); cmd.Options.Add(input); cmd.Options.Add(output); cmd.Options.Add(sites);
        cmd.SetAction(r => Run(r.GetValue(model)!, r.GetValue(adapter), r.GetValue(input)!, r.GetValue(output)!, r.GetValue(sites)));
        return cmd;
    }

    /// <summary>The sites of <c>--sites</c> (none when absent): 'all' or a comma list of short or TransformerLens names.</summary>
    internal static List<HookSite> ParseSites(string? text)
    {
        if (string.IsNullOrWhiteSpace(text)) return [];
        if (text.Trim() == "all") return HookSites.All.Where(s => s != HookSite.ResidPost).ToList();
        var list = new List<HookSite>();
        foreach (var part in text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            if (!HookSites.TryParse(part, out var s, out _)) throw new ArgumentException($"--sites: '{part}' is not a block site; use {string.Join(", ", HookSites.All.Select(HookSites.ShortName))} or all");
            if (s != HookSite.ResidPost && !list.Contains(s)) list.Add(s);   // resid_post is always written
        }
        return list;
    }

    static int Run(string modelDir, string? adapterDir, string inputPath, string outPath, string? sitesText)
    {
        var extra = ParseSites(sitesText);
        TokenBatch batch;
        using (var input = new SafetensorsFile(inputPath))
        {
            if (!input.Contains("input_ids")) throw new InvalidDataException($"{inputPath}: no tensor 'input_ids'; expected int64 input_ids [batch, seq]");
            var info = input.Info("input_ids");
            if (info.Shape.Length != 2) throw new InvalidDataException($"{inputPath}: input_ids has shape {info.ShapeText}; expected [batch, seq]");
            var ids = input.ReadI64("input_ids");
            byte[]? mask = null;
            if (input.Contains("attention_mask"))
            {
                var m = input.ReadI64("attention_mask");
                if (m.Length != ids.Length) throw new InvalidDataException($"{inputPath}: attention_mask {input.Info("attention_mask").ShapeText} does not match input_ids {info.ShapeText}");
                mask = m.Select(v => v != 0 ? (byte)1 : (byte)0).ToArray();
            }
            var a = TokenBatch.FromInt64(ids, info.Shape[0], info.Shape[1]);
            batch = mask is null ? a : new TokenBatch(a.Ids, a.Batch, a.Seq, mask);
        }

        var sw = Stopwatch.StartNew();
        using var lm = CausalLM.Load(modelDir, adapterDir);
        var got = new Dictionary<string, Tensor>();
        var hooks = new HookSet().Capture(HookNames.ResidPre(0), got).Capture(HookNames.LnFinal, got).Capture(HookNames.Logits, got);
        for (int i = 0; i < lm.Layers; i++) hooks.Capture(HookNames.ResidPost(i), got);
        // 'all' leaves out resid_mid where the blocks have none (parallel attention + MLP); naming it explicitly is an error
        if (sitesText?.Trim() == "all" && lm.Config.ParallelResidual) extra.Remove(HookSite.ResidMid);
        foreach (var s in extra) HookSites.Check(s, lm.Config);
        for (int i = 0; i < lm.Layers; i++)
            foreach (var s in extra) if (!(s == HookSite.ResidPre && i == 0)) hooks.Capture(HookSites.Name(s, i), got);
        lm.Forward(batch, hooks);

        var names = new List<string> { HookNames.ResidPre(0) };
        for (int i = 0; i < lm.Layers; i++)
        {
            foreach (var s in extra) if (!(s == HookSite.ResidPre && i == 0)) names.Add(HookSites.Name(s, i));
            names.Add(HookNames.ResidPost(i));
        }
        names.Add(HookNames.LnFinal);
        names.Add(HookNames.Logits);
        SafetensorsWriter.Write(outPath, names.Select(n => TensorData.F32(n, got[n])),
            new Dictionary<string, string> { ["format"] = "pt", ["model"] = Path.GetFullPath(modelDir), ["adapter"] = adapterDir is null ? "" : Path.GetFullPath(adapterDir) });
        Console.Error.WriteLine($"{lm.Config.ModelType}: {batch.Batch}×{batch.Seq} tokens, {names.Count} tensors written to {outPath} in {sw.Elapsed.TotalSeconds:F2} s");
        return 0;
    }
}

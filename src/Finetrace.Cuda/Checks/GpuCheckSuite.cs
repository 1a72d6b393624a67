using System.Text.Json.Nodes;
using Finetrace.Models;
using Finetrace.Tensors;
using Finetrace.Text.Datasets;
using Finetrace.Text.Tokenization;

namespace Finetrace.Cuda.Checks;

/// <summary>What every device check step is given: where it runs, a scratch folder of its own, the folder of small
/// model configs (scripts/gpu/parity/*.config.json) to synthesise parity models from, and whether to run at tiny
/// shapes (ILGPU's CPU accelerator: the same code path, minutes instead of seconds otherwise).</summary>
public sealed record GpuCheckStepContext(DeviceKind Device, string WorkDir, string ConfigDir, bool Tiny);

/// <summary>One named device check. <see cref="Run"/> returns its figures as a JSON object with at least
/// <c>status</c> ("pass" or "fail"), the measured <c>error</c> and the <c>tolerance</c> it was held to.</summary>
public sealed record GpuCheckStep(string Name, string Description, Func<GpuCheckStepContext, JsonObject> Run);

/// <summary>
/// The device checks that <c>finetrace gpu-check run NAME</c> runs, one process each under scripts/gpu-check (so a
/// hung or crashed check loses only itself). Each step is a thin adapter over a reusable check in this folder
/// (<see cref="GemmParity"/>, <see cref="ForwardParity"/>, <see cref="TrainerParity"/>, <see cref="HarvestParity"/>,
/// <see cref="DeviceKernelsCheck"/>) that turns its result record into JSON with the measured error and pass/fail;
/// the same checks run in the xunit tests on the CPU accelerator. The <see cref="Planned"/> names are every check issue
/// #18 asks for: a planned name with no step here is reported as "not built" rather than silently missing.
/// </summary>
public static class GpuCheckSuite
{
    /// <summary>Every device check issue #18 asks for, in run order (a name may have no step yet: "not built").</summary>
    public static readonly string[] Planned =
    [
        "device-kernels",
        "forward-kernels-parity",
        "gemm-parity",
        "forward-parity-fp32", "forward-parity-tf32", "forward-parity-bf16",
        "trainer-parity-1step",
        "trainer-parity-100step-fp32", "trainer-parity-100step-tf32",
        "harvest-parity-fp32", "harvest-parity-bf16",
    ];

    /// <summary>The steps built into this binary.</summary>
    public static IReadOnlyList<GpuCheckStep> Steps { get; } =
    [
        new("device-kernels", "DeviceKernels (RMSNorm, SwiGLU, softmax) and the device float32 GEMM against their CPU peers",
            c => DeviceKernelsCheck.Run(c.Device, c.Tiny)),
        new("forward-kernels-parity", "Every ForwardKernels kernel (LayerNorm, activations, embedding, RoPE, QKV split, attention softmax, ...) vs its CPU peer at model-like widths",
            c => ForwardKernels(c)),
        new("gemm-parity", "Device products (cuBLAS on a GPU) in fp32, tf32 and bf16, every transpose, single and strided-batched, vs Tensors.Gemm",
            c => Gemm(c)),
        new("forward-parity-fp32", "DeviceModel vs CausalLM on every parity architecture, fp32 products (≤ 1e-5 norm-relative)",
            c => Forward(c, GemmMode.Fp32)),
        new("forward-parity-tf32", "DeviceModel vs CausalLM on every parity architecture, tf32 products (hidden states ≤ 1e-2)",
            c => Forward(c, GemmMode.Tf32)),
        new("forward-parity-bf16", "DeviceModel vs CausalLM on every parity architecture, bf16 weights and products (hidden states ≤ 1e-2)",
            c => Forward(c, GemmMode.Bf16)),
        new("trainer-parity-1step", "DeviceTrainer vs DictionaryTrainer, one fp32 step from the same state: parameters, gradients, Adam moments ≤ 1e-5",
            c => OneStep(c)),
        new("trainer-parity-100step-fp32", "DeviceTrainer vs DictionaryTrainer, 100-step loss curve in fp32 (within 1% at every step)",
            c => LossCurve(c, GemmMode.Fp32)),
        new("trainer-parity-100step-tf32", "DeviceTrainer vs DictionaryTrainer, 100-step loss curve with tf32 products (within 1% at every step)",
            c => LossCurve(c, GemmMode.Tf32)),
        new("harvest-parity-fp32", "Device harvest vs CPU harvest of two synthetic models: identical tokens, activations ≤ 1e-5 (fp32)",
            c => Harvest(c, GemmMode.Fp32)),
        new("harvest-parity-bf16", "Device harvest vs CPU harvest of two synthetic models: identical tokens, activations ≤ 1e-2 (bf16)",
            c => Harvest(c, GemmMode.Bf16)),
    ];

    public static GpuCheckStep? Find(string name) => Steps.FirstOrDefault(s => s.Name == name);

    static JsonObject Verdict(bool passed, double error, double tolerance, string metric) => new()
    {
        ["status"] = passed ? "pass" : "fail",
        ["error"] = Finite(error),
        ["tolerance"] = tolerance,
        ["metric"] = metric,
    };

    /// <summary>JSON has no NaN or ∞: such an error is written as a string (and fails its check).</summary>
    static JsonNode Finite(double x) => double.IsFinite(x) ? JsonValue.Create(x) : JsonValue.Create(x.ToString())!;

    static JsonObject ForwardKernels(GpuCheckStepContext c)
    {
        using var ctx = DeviceContext.Create(c.Device, GemmMode.Fp32);
        var r = ForwardKernelsParity.Run(ctx);
        // exact cases have bound 0: their ratio is 0 when exact, ∞ otherwise (never 0/0)
        static double Ratio(KernelParityCase k) => k.Tolerance > 0 ? Key(k.MaxAbsDiff / k.Tolerance) : (k.MaxAbsDiff == 0 ? 0 : double.PositiveInfinity);
        var w = r.Cases.MaxBy(Ratio)!;
        var o = Verdict(r.Passed, Ratio(w), 1.0, "worst max-abs-diff / its bound over all kernels (copies and adds exact, the rest ≤ 1e-5)");
        o["device"] = r.Device;
        o["cases"] = r.Cases.Count;
        o["closest_to_bound"] = $"{w.Kernel} {w.Shape}: {w.MaxAbsDiff:G3} (bound {w.Tolerance:G3})";
        o["failures"] = new JsonArray(r.Cases.Where(x => !x.Passed).Take(8).Select(f => (JsonNode)$"{f.Kernel} {f.Shape}: {f.MaxAbsDiff:G3} > {f.Tolerance:G3}").ToArray());
        return o;
    }

    static JsonObject Gemm(GpuCheckStepContext c)
    {
        using var ctx = DeviceContext.Create(c.Device, GemmMode.Fp32);
        var r = GemmParity.Run(ctx, c.Tiny ? new GemmParityOptions(M: 13, N: 11, K: 17, Batch: 2) : new GemmParityOptions());
        var o = Verdict(r.Passed, r.Cases.Max(x => x.Error / x.Tolerance) * 1.0, 1.0, "worst error / its tolerance over all products (fp32 ≤ 1e-5 max-relative, tf32/bf16 ≤ 1e-2 norm-relative)");
        o["device"] = r.Device;
        o["gemm"] = r.Gemm;
        var modes = new JsonObject();
        foreach (var g in r.Cases.GroupBy(x => x.Mode))
            modes[DeviceSelection.Name(g.Key)] = new JsonObject
            {
                ["max_error"] = Finite(g.Max(x => x.Error)), ["tolerance"] = g.First().Tolerance,
                ["cases"] = g.Count(), ["failed"] = g.Count(x => !x.Passed),
            };
        o["modes"] = modes;
        o["failures"] = new JsonArray(r.Failures.Take(8).Select(f => (JsonNode)$"{f.Name}: {f.Error:G3} > {f.Tolerance:G3}").ToArray());
        return o;
    }

    static JsonObject Forward(GpuCheckStepContext c, GemmMode mode)
    {
        var configs = Directory.GetFiles(c.ConfigDir, "*.config.json").Order(StringComparer.Ordinal).ToArray();
        if (configs.Length == 0) throw new FileNotFoundException($"{c.ConfigDir}: no *.config.json parity configs (scripts/gpu/parity)");
        using var ctx = DeviceContext.Create(c.Device, mode);
        double tolerance = ForwardParity.ToleranceFor(mode), worstStream = 0, worstBranch = 0;
        bool passed = true;
        var models = new JsonObject();
        foreach (var config in configs)
        {
            string arch = Path.GetFileName(config)[..^".config.json".Length];
            string dir = Path.Combine(c.WorkDir, arch);
            SyntheticCheckpoint.Write(config, dir, DType.F32, seed: 18);
            var cfg = ModelConfig.Load(dir);
            int batch = 2, seq = c.Tiny ? 12 : 48;
            var rng = new Random(arch.Length * 31 + (int)mode);
            var ids = new int[batch * seq];
            for (int i = 0; i < ids.Length; i++) ids[i] = rng.Next(cfg.Vocab);
            var r = ForwardParity.Run(ctx, dir, new TokenBatch(ids, batch, seq));
            // The bound is on hidden states and logits; branch sites (attn_out, mlp_out, mlp.hook_post) are
            // held to ForwardParity's own (2× outside fp32) and reported apart.
            double stream = r.Hooks.Where(h => h.Tolerance <= r.Tolerance).Select(h => Key(h.NormRelative)).DefaultIfEmpty(0).Max();
            double branch = r.Hooks.Where(h => h.Tolerance > r.Tolerance).Select(h => Key(h.NormRelative)).DefaultIfEmpty(0).Max();
            worstStream = Math.Max(worstStream, stream);
            worstBranch = Math.Max(worstBranch, branch);
            passed &= r.Passed;
            models[arch] = new JsonObject
            {
                ["passed"] = r.Passed, ["hidden_error"] = Finite(stream), ["branch_error"] = Finite(branch),
                ["closest_to_bound"] = $"{r.Worst.Name} {r.Worst.NormRelative:G3} (tolerance {r.Worst.Tolerance:G3})",
            };
        }
        var o = Verdict(passed, worstStream, tolerance, "norm-relative, worst hidden state or logits over the parity architectures");
        o["device"] = ctx.Name;
        o["precision"] = DeviceSelection.Name(mode);
        o["branch_error"] = Finite(worstBranch);
        o["branch_tolerance"] = ForwardParity.ToleranceFor(mode, HookNames.AttnOut(0));
        o["models"] = models;
        return o;
    }

    static double Key(double e) => double.IsNaN(e) ? double.PositiveInfinity : e;

    static JsonObject OneStep(GpuCheckStepContext c)
    {
        using var ctx = DeviceContext.Create(c.Device, GemmMode.Fp32);
        var cases = new JsonObject();
        double worst = 0;
        bool passed = true;
        foreach (var tc in TrainerParityCase.Standard)
        {
            var r = TrainerParity.OneStep(ctx, tc);
            double err = Math.Max(Key(r.MaxNormRelative), Math.Max(Key(r.LossRelative), Key(r.ThresholdRelative)));
            worst = Math.Max(worst, err);
            passed &= r.Passed;
            var worstTensor = r.Tensors.MaxBy(t => Key(t.NormRelative))!;
            cases[r.Case] = new JsonObject
            {
                ["passed"] = r.Passed, ["max_norm_relative"] = Finite(r.MaxNormRelative), ["worst_tensor"] = worstTensor.Name,
                ["loss_relative"] = Finite(r.LossRelative), ["threshold_relative"] = Finite(r.ThresholdRelative),
                ["selection_mismatches"] = r.SelectionMismatches, ["selected"] = r.SelectedCpu, ["counters_equal"] = r.CountersEqual,
            };
        }
        var o = Verdict(passed, worst, 1e-5, "norm-relative, worst parameter / gradient / Adam moment (and loss, threshold) after one step; selections identical");
        o["device"] = ctx.Name;
        o["cases"] = cases;
        return o;
    }

    static JsonObject LossCurve(GpuCheckStepContext c, GemmMode mode)
    {
        using var ctx = DeviceContext.Create(c.Device, mode);
        int steps = c.Tiny ? 20 : 100;
        var r = TrainerParity.LossCurve(ctx, steps);
        var o = Verdict(r.Passed, r.MaxRelative, r.Tolerance, $"largest relative loss difference over {steps} steps");
        o["device"] = ctx.Name;
        o["precision"] = DeviceSelection.Name(mode);
        o["steps"] = r.Steps;
        o["worst_step"] = r.WorstStep;
        o["cpu_loss_first_last"] = new JsonArray(Finite(r.CpuLoss[0]), Finite(r.CpuLoss[^1]));
        o["device_loss_first_last"] = new JsonArray(Finite(r.DeviceLoss[0]), Finite(r.DeviceLoss[^1]));
        return o;
    }

    static JsonObject Harvest(GpuCheckStepContext c, GemmMode mode)
    {
        string config = Path.Combine(c.ConfigDir, "llama.config.json");
        if (!File.Exists(config)) throw new FileNotFoundException($"{config}: the harvest parity models are made from it (scripts/gpu/parity)");
        string baseDir = Path.Combine(c.WorkDir, "base"), ftDir = Path.Combine(c.WorkDir, "finetuned");
        SyntheticCheckpoint.Write(config, baseDir, DType.F32, seed: 1);
        SyntheticCheckpoint.Write(config, ftDir, DType.F32, seed: 2);
        AddTokenizer(baseDir);
        AddTokenizer(ftDir);
        using var ctx = DeviceContext.Create(c.Device, mode);
        var r = HarvestParity.Run(new HarvestParityOptions
        {
            BaseModel = baseDir, FineTunedModel = ftDir, WorkDir = Path.Combine(c.WorkDir, "stores"),
            Tokens = c.Tiny ? 120 : 300,
        }, DeviceSelection.Loader(ctx));
        var o = Verdict(r.Passed, r.MaxNormRelative, r.Tolerance, "norm-relative per model and layer over the whole store; token ids, masks, positions identical");
        o["device"] = r.Device;
        o["precision"] = r.Precision;
        o["tokens"] = r.DeviceTokens;
        o["same_tokens"] = r.SameTokens;
        if (r.TokenDifference is { } d) o["token_difference"] = d;
        o["worst_token_error"] = Finite(r.MaxTokenNormRelative);
        return o;
    }

    /// <summary>
    /// Gives a synthetic checkpoint a tokenizer so text can be harvested with it: a small byte-level BPE (at most
    /// 512 tokens, never more than the model's vocabulary) trained on the shipped general text and written as
    /// tokenizer.json + tokenizer_config.json. Synthetic weights carry no meaning, so any tokenizer whose ids fit does;
    /// this one makes the GPU machine need no tokenizer files.
    /// </summary>
    public static void AddTokenizer(string modelDir)
    {
        int vocab = Math.Min(512, ModelConfig.Load(modelDir).Vocab);
        var bpe = BpeTrainer.Train(GeneralText.Samples(200, seed: 18), new BpeTrainerOptions(vocab));
        bpe.WriteFolder(modelDir);
    }
}

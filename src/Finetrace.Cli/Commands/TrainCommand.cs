using Finetrace.Tensors;
using System.CommandLine;
using System.Diagnostics;
using Finetrace.Activations;
using Finetrace.Dictionaries;
using Spectre.Console;

namespace Finetrace.Cli.Commands;

/// <summary><c>finetrace train crosscoder|sae|diff-sae</c>: train a dictionary on an activation store.</summary>
public sealed class TrainCommand : ICliCommand
{
    public Command Build()
    {
        var train = new Command("train", "Train a crosscoder, an SAE on one model, or a diff-SAE (fine-tuned − base) on an activation store");
        train.Subcommands.Add(Sub("crosscoder", "A crosscoder over every model of the store (BatchTopK with --k, L1 with --l1)"));
        train.Subcommands.Add(Sub("sae", "An SAE on one model's activations (--model)"));
        train.Subcommands.Add(Sub("diff-sae", "An SAE on fine-tuned − base activations (--minuend/--subtrahend)"));
        return train;
    }

    static Command Sub(string kind, string description)
    {
        var store = new Option<string>("--store") { Description = "Activation store folder", Required = true };
        var layer = new Option<int>("--layer") { Description = "Layer number in the store", Required = true };
        var outDir = new Option<string>("--out") { Description = "Output folder (dictionary, metrics.jsonl, checkpoint/)", Required = true };
        var k = new Option<int?>("--k") { Description = "Active latents per token (BatchTopK / TopK); default 100 unless --l1 is given" };
        var l1 = new Option<float?>("--l1") { Description = "L1 sparsity coefficient μ (ReLU dictionary instead of TopK)" };
        var activation = new Option<string?>("--activation") { Description = "batchtopk (default with --k), topk, relu (default with --l1), jumprelu" };
        var dictSize = new Option<int?>("--dict-size") { Description = "Number of latents F" };
        var expansion = new Option<int>("--expansion") { Description = "F = expansion × D (when --dict-size is not given)", DefaultValueFactory = _ => kind == "diff-sae" ? 2 : 32 };
        var tokens = new Option<long>("--tokens") { Description = "Training tokens (steps = tokens / batch); default one pass over the store" };
        var batch = new Option<int>("--batch") { Description = "Tokens per step", DefaultValueFactory = _ => 2048 };
        var lr = new Option<double?>("--lr") { Description = "Learning rate (default 2e-4 / sqrt(F / 2^14) for TopK family, 1e-4 otherwise)" };
        var warmup = new Option<int?>("--warmup") { Description = "Linear LR warm-up steps (default 1000, at most a tenth of the run)" };
        var decay = new Option<long?>("--decay-start") { Description = "Step where a linear LR decay to 0 begins" };
        var loss = new Option<string>("--loss") { Description = "mse (Σ_m‖e‖², default), l2 (un-squared, dictionary_learning-compatible), mse-mean-models", DefaultValueFactory = _ => "mse" };
        var codeNorm = new Option<string>("--code-norm") { Description = "Crosscoder code normalisation: crosscoder, sae, mixed, none, decoupled (per-model top-k and thresholds with batchtopk)", DefaultValueFactory = _ => "crosscoder" };
        var sqrtL1 = new Option<bool>("--sqrt-l1") { Description = "Penalise Σ sqrt(f·c) instead of Σ f·c" };
        var l1Warmup = new Option<int>("--l1-warmup") { Description = "Ramp μ linearly from 0 over this many steps", DefaultValueFactory = _ => 0 };
        var kMax = new Option<int?>("--k-max") { Description = "Anneal k from this value down to --k" };
        var kAnneal = new Option<int>("--k-anneal-steps") { Description = "Steps of k annealing", DefaultValueFactory = _ => 2000 };
        var auxk = new Option<float>("--auxk-alpha") { Description = "AuxK coefficient", DefaultValueFactory = _ => 1f / 32 };
        var deadTokens = new Option<long>("--dead-tokens") { Description = "A latent is dead after this many tokens without firing", DefaultValueFactory = _ => 10_000_000 };
        var thresholdStart = new Option<long?>("--threshold-start") { Description = "Start the inference-threshold EMA after this step (default 1000, at most half the run)" };
        var clip = new Option<float>("--clip") { Description = "Global gradient-norm clip (0 = off; -1 = the recipe's choice: 1 for the TopK family, off for L1)", DefaultValueFactory = _ => -1 };
        var normInit = new Option<float>("--norm-init-scale") { Description = "Initial encoder/decoder row norm (crosscoders)", DefaultValueFactory = _ => 1f };
        var targetRms = new Option<float>("--target-rms") { Description = "Normalise activations to this RMS using the store's statistics (0 = raw activations)", DefaultValueFactory = _ => 0f };
        var model = new Option<int>("--model") { Description = "sae: which model's activations (0 = base)", DefaultValueFactory = _ => 1 };
        var minuend = new Option<int>("--minuend") { Description = "diff-sae: model a of a − b", DefaultValueFactory = _ => 1 };
        var subtrahend = new Option<int>("--subtrahend") { Description = "diff-sae: model b of a − b", DefaultValueFactory = _ => 0 };
        var filter = new Option<string>("--filter") { Description = "Token filter, e.g. '!bos' or 'assistant' (see store info)", DefaultValueFactory = _ => "all" };
        var seed = new Option<ulong>("--seed") { Description = "Seed for init and data order", DefaultValueFactory = _ => 0 };
        var ckpt = new Option<long>("--checkpoint-every") { Description = "Save a resumable checkpoint every N steps", DefaultValueFactory = _ => 1000 };
        var resume = new Option<bool>("--resume") { Description = "Continue from OUT/checkpoint bit-for-bit" };
        var cmd = new Command(kind, description);
        foreach (var o in new Option[] { store, layer, outDir, k, l1, activation, dictSize, expansion, tokens, batch, lr, warmup, decay, loss, codeNorm, sqrtL1, l1Warmup, kMax, kAnneal, auxk, deadTokens, thresholdStart, clip, normInit, targetRms, filter, seed, ckpt, resume })
            cmd.Options.Add(o);
        if (kind == "sae") cmd.Options.Add(model);
        if (kind == "diff-sae") { cmd.Options.Add(minuend); cmd.Options.Add(subtrahend); }
        cmd.SetAction(r =>
        {
            using var st = ActivationStore.Open(r.GetValue(store)!);
            int lay = r.GetValue(layer);
            var bo = new StoreBatchOptions { Layer = lay, Seed = r.GetValue(seed), Filter = MaskFilter.Parse(r.GetValue(filter)), Cycle = true };
            IActivationBatches source;
            IDisposable? owned;
            int[] storeModels;
            if (kind == "crosscoder") { var b = StoreBatches.Paired(st, bo); source = b; owned = b; storeModels = Enumerable.Range(0, st.Models).ToArray(); }
            else if (kind == "sae")
            {
                int m = r.GetValue(model);
                if ((uint)m >= (uint)st.Models) throw new ArgumentException($"--model {m}: the store has models 0..{st.Models - 1}");
                var b = StoreBatches.Paired(st, bo); source = new ModelSlice(b, m); owned = b; storeModels = [m];
            }
            else { var b = StoreBatches.Difference(st, bo, r.GetValue(minuend), r.GetValue(subtrahend)); source = b; owned = b; storeModels = []; }
            using var _ = owned;

            float? mu = r.GetValue(l1);
            string act = r.GetValue(activation) ?? (mu is not null ? "relu" : "batchtopk");
            var a = act switch
            {
                "batchtopk" => Sparsity.BatchTopK, "topk" => Sparsity.TopK, "relu" => Sparsity.Relu, "jumprelu" => Sparsity.JumpRelu,
                _ => throw new ArgumentException($"--activation {act}: expected batchtopk, topk, relu or jumprelu"),
            };
            if (kind == "crosscoder" && a is Sparsity.TopK or Sparsity.JumpRelu)
                throw new ArgumentException($"--activation {act}: crosscoders are trained as batchtopk (--k) or relu (--l1); there is no file format for other crosscoder activations");
            if (a is Sparsity.Relu or Sparsity.JumpRelu && mu is null) throw new ArgumentException($"--activation {act} needs a sparsity coefficient: --l1 MU");
            int kk = r.GetValue(k) ?? 100;
            int D = st.DModel;
            int F = r.GetValue(dictSize) ?? r.GetValue(expansion) * D;
            bool sae = kind != "crosscoder";
            var cn = sae ? CodeNormalization.None : r.GetValue(codeNorm) switch
            {
                "crosscoder" => CodeNormalization.Crosscoder, "sae" => CodeNormalization.Sae, "mixed" => CodeNormalization.Mixed, "none" => CodeNormalization.None,
                "decoupled" => CodeNormalization.Decoupled,
                var s => throw new ArgumentException($"--code-norm {s}: expected crosscoder, sae, mixed, none, decoupled"),
            };
            var dict = new SparseDictionary(source.Models, D, F, a, cn, sae, a is Sparsity.BatchTopK or Sparsity.TopK ? kk : 0);
            var rng = new SplitMix64(r.GetValue(seed) * 0x9E3779B97F4A7C15UL + 17);
            if (sae) Initialization.Sae(dict, rng); else Initialization.Crosscoder(dict, rng, a == Sparsity.Relu && r.GetValue(normInit) == 1f ? 0.005f : r.GetValue(normInit));
            float trms = r.GetValue(targetRms);
            if (trms > 0)
                dict.Normalizer = kind == "diff-sae" || bo.Filter != MaskFilter.All
                    ? NormalizerStats.FromSample(source, trms, Math.Min(1_000_000, 64L * r.GetValue(batch)))
                    : NormalizerStats.FromStore(st, lay, storeModels, trms);

            int bs = r.GetValue(batch);
            long tok = r.GetValue(tokens);
            long steps = Math.Max(1, (tok > 0 ? tok : st.Tokens) / bs);
            bool topk = a is Sparsity.BatchTopK or Sparsity.TopK;
            float clipv = r.GetValue(clip);
            var opts = new TrainerOptions
            {
                Loss = r.GetValue(loss) switch { "mse" => ReconLoss.Mse, "l2" => ReconLoss.L2, "mse-mean-models" => ReconLoss.MseMeanModels, var s => throw new ArgumentException($"--loss {s}: expected mse, l2 or mse-mean-models") },
                Lr = r.GetValue(lr) ?? (topk ? 2e-4 / Math.Sqrt(F / 16384.0) : 1e-4),
                WarmupSteps = r.GetValue(warmup) ?? (int)Math.Min(1000, steps / 10 + 1), DecayStart = r.GetValue(decay), TotalSteps = steps,
                ClipNorm = clipv < 0 ? (topk ? 1f : null) : clipv == 0 ? null : clipv,
                SparsityCoef = mu ?? 0, Penalty = r.GetValue(sqrtL1) ? SparsityPenalty.SqrtL1 : SparsityPenalty.L1, SparsityWarmupSteps = r.GetValue(l1Warmup),
                AuxKAlpha = r.GetValue(auxk), DeadTokens = r.GetValue(deadTokens), ThresholdStartStep = r.GetValue(thresholdStart) ?? Math.Min(1000, steps / 2),
                GeometricMedianInit = topk, UnitNormDecoder = sae && topk, KMax = r.GetValue(kMax), KAnnealSteps = r.GetValue(kAnneal),
            };
            var trainer = new DictionaryTrainer(dict, opts, r.GetValue(seed));
            string dir = r.GetValue(outDir)!;
            var run = new TrainingRun(dir, trainer, source, new RunOptions { BatchSize = bs, Steps = steps, CheckpointEvery = r.GetValue(ckpt), Resume = r.GetValue(resume) });
            Train(run, kind, steps, bs);

            var fields = new Dictionary<string, object?>
            {
                ["site"] = new { layer = lay, store = Path.GetFullPath(r.GetValue(store)!) },
                ["training"] = new
                {
                    kind, activation = act, loss_mode = r.GetValue(loss), code_normalization = cn.ToString().ToUpperInvariant(), k = dict.K, l1 = mu,
                    sqrt_l1 = r.GetValue(sqrtL1), lr = opts.Lr, warmup_steps = opts.WarmupSteps, decay_start = opts.DecayStart, steps, batch = bs,
                    seed = r.GetValue(seed), target_rms = trms > 0 ? trms : (float?)null, normaliser_space = trms > 0 ? "normalised (buffers saved / folded)" : "raw",
                    models = storeModels, filter = r.GetValue(filter),
                },
            };
            string format = DictionaryIO.Save(run.Trainer.Dict, dir, fields);
            AnsiConsole.MarkupLine($"saved [bold]{Markup.Escape(dir)}[/] ({format} format), metrics in {Markup.Escape(run.MetricsPath)}");
            return 0;
        });
        return cmd;
    }

    static void Train(TrainingRun run, string kind, long steps, int batch)
    {
        using var cts = new CancellationTokenSource();
        ConsoleCancelEventHandler onCancel = (_, e) => { e.Cancel = true; cts.Cancel(); };
        Console.CancelKeyPress += onCancel;
        var sw = Stopwatch.StartNew();
        long startStep = run.Trainer.StepCount;
        try
        {
            CliConsole.Progress($"train {kind}", steps, task =>
                {
                    task.Value = startStep;
                    run.Run(s =>
                    {
                        task.Value = s.Step + 1;
                        double tps = (s.Step + 1 - startStep) * (double)batch / sw.Elapsed.TotalSeconds;
                        string fve = string.Join("/", s.Fve.Select(v => v.ToString("F3")));
                        string parts = s.Sparsity != 0 ? $"recon {s.Recon:G4} sparsity {s.Sparsity:G4}" : $"recon {s.Recon:G4} auxk {s.AuxK:G3}";
                        task.Description = Markup.Escape($"step {s.Step + 1}/{steps} loss {s.Total:G4} ({parts}) L0 {s.L0:F1} FVE {fve} dead {s.DeadFraction:P1} {tps:N0} tok/s");
                    }, cts.Token);
                });
        }
        catch (OperationCanceledException)
        {
            throw new OperationCanceledException($"interrupted at step {run.Trainer.StepCount}; continue with the same command plus --resume (checkpoint in {run.CheckpointDir})");
        }
        finally { Console.CancelKeyPress -= onCancel; }
    }
}

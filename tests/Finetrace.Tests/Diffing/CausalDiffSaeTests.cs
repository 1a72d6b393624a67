using Finetrace.Activations;
using Finetrace.Activations.Harvest;
using Finetrace.Dictionaries;
using Finetrace.Diffing;
using Finetrace.Diffing.Causal;
using Finetrace.Models;
using Finetrace.Tensors;
using Finetrace.Tests.Infrastructure;
using Finetrace.Text.Datasets;

namespace Finetrace.Tests.Diffing;

/// <summary>
/// Causal evaluation of a diff-SAE (methods.md §6.2 "diff-SAE variants") on stories260K vs stories260K-chat, against a
/// direct computation: each sampled sequence alone, δ = h_a − h_b at layer 2 normalised by hand, the SAE's code,
/// the patched residual h_base + s·(…) built from the decoder rows by plain loops in raw space, the fine-tuned model
/// continued from layer 3 and KL(p_ft ‖ p_patched) averaged over every predicted position. Both SAE orientations
/// (ft − base, s = +1; base − ft, s = −1), with a normaliser whose mean and scale are not trivial.
/// </summary>
[Collection(ProcessWide.Name)]
public sealed class CausalDiffSaeTests
{
    [SharedFact]
    public void Diff_SAE_patches_match_a_direct_computation_in_both_orientations()
    {
        using var tmp = new TempDir();
        string chats = tmp.File("chats.jsonl");
        File.WriteAllText(chats, CausalTests.Conversations(30, 3));
        string storeDir = tmp.File("store");
        const int layer = 2, F = 24, D = 64;
        Harvester.Run(new HarvestOptions
        {
            BaseModel = Shared.Path("models", "stories260K"), FineTunedModel = Shared.Path("models", "stories260K-chat"),
            Data = [DataSourceSpec.Parse("chat:" + chats)], Layers = [layer], Tokens = 1500, Out = storeDir, ContextLength = 64, BatchSize = 8, Dtype = "f32",
        });
        using var st = ActivationStore.Open(storeDir);
        using var baseLm = CausalLM.Load(Shared.Path("models", "stories260K"));
        using var ftLm = CausalLM.Load(Shared.Path("models", "stories260K-chat"));
        var o = new CausalOptions { Sequences = 6, RandomSeeds = 2, Chat = false, BatchSequences = 4 };
        var seqs = CausalEvaluation.SampleSequences(st, o, ftLm.Config.BosTokenId);
        Assert.Equal(6, seqs.Count);
        int[] set = [1, 4, 9, 16, 20];

        foreach (var (minuend, subtrahend, sign) in new[] { (1, 0, 1f), (0, 1, -1f) })
        {
            var sae = new SparseDictionary(1, D, F, Sparsity.Relu, CodeNormalization.None, false);
            Initialization.Crosscoder(sae, new SplitMix64(11), 1f);
            var rng = new Random(5);
            for (int j = 0; j < F; j++) sae.BEnc[j] = -0.05f * (j % 3);
            for (int i = 0; i < D; i++) sae.BDec[i] = (float)(rng.NextDouble() - 0.5) * 0.2f;
            var mean = Enumerable.Range(0, D).Select(_ => (float)(rng.NextDouble() - 0.5) * 0.1f).ToArray();
            sae.Normalizer = new Normalizer { TargetRms = 1, Mean = mean, Std = new float[D], Scale = [2.5f] };
            var ad = new AnalysisDictionary(sae, "sae", DictionaryInput.Difference(layer, minuend, subtrahend), 2);
            var res = CausalEvaluation.Run(ad, st, baseLm, ftLm, [new LatentSet("s", set)], o);

            // direct: per sequence, per variant, the mean KL over every predicted position
            var kinds = new[] { "full_reconstruction", "bias", "error", "additive", "vanilla" };
            var sum = new double[kinds.Length]; long n = 0;
            foreach (var sq in seqs)
            {
                var tb = TokenBatch.RightPadded([sq.Ids]);
                int T = sq.Ids.Length, V = ftLm.Config.Vocab;
                var hb = baseLm.Embed(tb); baseLm.RunLayers(0, layer, hb, tb);
                var hf = ftLm.Embed(tb); ftLm.RunLayers(0, layer, hf, tb);
                var refH = hf.Clone(); ftLm.RunLayers(layer + 1, ftLm.Layers - 1, refH, tb);
                var refLogits = ftLm.FinalNormAndLogits(refH, tb).Data;
                var codes = new float[T * F];
                var x = new float[D];
                for (int p = 0; p < T; p++)
                {
                    for (int i = 0; i < D; i++)
                    {
                        float a = minuend == 1 ? hf.Data[p * D + i] : hb.Data[p * D + i], b = minuend == 1 ? hb.Data[p * D + i] : hf.Data[p * D + i];
                        x[i] = (a - b - mean[i]) * 2.5f;
                    }
                    Inference.Encode(sae, x).ToDense(codes.AsSpan(p * F, F));
                }
                for (int k = 0; k < kinds.Length; k++)
                {
                    var h = (kinds[k] == "error" ? hf : hb).Clone();
                    for (int p = 0; p < T; p++)
                        for (int i = 0; i < D; i++)
                        {
                            double rec = 0;   // in the SAE's normalised space
                            for (int j = 0; j < F; j++)
                                if (kinds[k] is "full_reconstruction" or "error" || (kinds[k] == "additive" && set.Contains(j))) rec += codes[p * F + j] * sae.WDec[j * D + i];
                            double raw = rec / 2.5;
                            if (kinds[k] is "full_reconstruction" or "bias" or "error") raw += sae.BDec[i] / 2.5 + mean[i];
                            if (kinds[k] == "vanilla") raw = 0;
                            h.Data[p * D + i] += (float)((kinds[k] == "error" ? -sign : sign) * raw);
                        }
                    ftLm.RunLayers(layer + 1, ftLm.Layers - 1, h, tb);
                    var logits = ftLm.FinalNormAndLogits(h, tb).Data;
                    for (int p = 0; p + 1 < T; p++)
                    {
                        double mr = double.NegativeInfinity, mp = double.NegativeInfinity;
                        for (int v = 0; v < V; v++) { mr = Math.Max(mr, refLogits[p * V + v]); mp = Math.Max(mp, logits[p * V + v]); }
                        double zr = 0, zp = 0;
                        for (int v = 0; v < V; v++) { zr += Math.Exp(refLogits[p * V + v] - mr); zp += Math.Exp(logits[p * V + v] - mp); }
                        double kl = 0;
                        for (int v = 0; v < V; v++)
                        {
                            double lr = refLogits[p * V + v] - mr - Math.Log(zr), lp = logits[p * V + v] - mp - Math.Log(zp);
                            kl += Math.Exp(lr) * (lr - lp);
                        }
                        sum[k] += kl;
                    }
                }
                n += T - 1;
            }
            for (int k = 0; k < kinds.Length; k++)
            {
                var e = res.Entries.Single(x => x.Patch == kinds[k] && !x.Aggregate && x.Seed is null);
                double direct = sum[k] / n;
                Assert.True(Math.Abs(direct - e.KlAll) <= 1e-4 * Math.Max(1e-3, direct), $"{minuend}−{subtrahend} {kinds[k]}: direct KL {direct:G6}, causal.json {e.KlAll:G6}");
            }
            var vanilla = res.Entries.Single(x => x.Patch == "vanilla");
            var full = res.Entries.Single(x => x.Patch == "full_reconstruction");
            Assert.Equal(1.0, full.GapClosedNormalised, 12);
            Assert.True(vanilla.KlAll > 0.05, $"base and chat barely differ (KL {vanilla.KlAll:F4})");
            Assert.Equal(2, res.Entries.Count(x => x.Set == "random" && x.Patch == "additive" && !x.Aggregate));
            Assert.Single(res.Entries, x => x.Set == "random" && x.Aggregate);
        }
    }
}

using System.Text.Json.Nodes;

namespace Finetrace.Dictionaries;

/// <summary>A crosscoder variant setting that does not fit the dictionary; <see cref="Setting"/> names the
/// <see cref="CrosscoderVariant"/> property. Callers word it for their users (the CLI as a flag).</summary>
public sealed class CrosscoderVariantException(string setting, string detail) : Exception($"{setting}: {detail}")
{
    public string Setting { get; } = setting;
    public string Detail { get; } = detail;
}

/// <summary>
/// Research variants of the crosscoder objective (methods.md §16). The default (every field at its default) is the
/// plain crosscoder, and the trainer then runs exactly the plain code path.
/// <list type="bullet">
/// <item><b>Dedicated feature crosscoder</b> (Jiralerspong &amp; Bricken): <see cref="Exclusive"/>[m] latents read and write
/// only model m. Latent blocks in order: model 0's exclusive block, model 1's, …, then the shared latents. Encoder rows
/// WEnc[m', j] and decoder rows WDec[m', j] of an exclusive latent j of model m are 0 for every m' ≠ m, and their
/// gradients are masked to 0 (Adam then never moves them).</item>
/// <item><b>Designated shared latents</b> (<i>Insights on Crosscoder Model Diffing</i>): the last <see cref="Designated"/>
/// latents have their sparsity penalty multiplied by <see cref="DesignatedPenalty"/> (ReLU dictionaries; the TopK family
/// has no penalty) and, with <see cref="TieDesignatedDecoder"/>, one decoder row shared by every model (the rows are equal
/// at init and each receives the tied parameter's gradient Σ_m ∂L/∂WDec[m, j]).</item>
/// <item><b>Diff-aware loss</b> (Dumas): with two models and the mse loss, per token
/// L = ‖e_0‖² + ‖e_1‖² + 2λ⟨e_0, e_1⟩; λ = 0 is the standard crosscoder, λ = −1 gives ‖e_1 − e_0‖² (only the
/// difference has to be reconstructed).</item>
/// </list>
/// </summary>
public sealed record CrosscoderVariant
{
    /// <summary>Exclusive latents per model m = 0, 1, … (empty: none; models past the end have none).</summary>
    public int[] Exclusive { get; init; } = [];
    /// <summary>Number of designated shared latents (the last ones of the dictionary).</summary>
    public int Designated { get; init; }
    /// <summary>Sparsity-penalty multiplier of the designated latents (e.g. 0.1: a reduced penalty).</summary>
    public float DesignatedPenalty { get; init; } = 1f;
    /// <summary>Tie the designated latents' decoder rows across models.</summary>
    public bool TieDesignatedDecoder { get; init; } = true;
    /// <summary>λ of the diff-aware loss (0: standard loss).</summary>
    public double DiffLambda { get; init; }

    public static CrosscoderVariant Plain { get; } = new();

    public bool IsPlain => Exclusive.All(n => n == 0) && Designated == 0 && DiffLambda == 0;
    public bool HasExclusive => Exclusive.Any(n => n > 0);
    public int ExclusiveTotal => Exclusive.Sum();

    /// <summary>The model latent <paramref name="j"/> is exclusive to, or −1 for a shared latent.</summary>
    public int OwnerOf(int j)
    {
        int lo = 0;
        for (int m = 0; m < Exclusive.Length; m++)
        {
            if (j < lo + Exclusive[m]) return m;
            lo += Exclusive[m];
        }
        return -1;
    }

    /// <summary>First latent of model <paramref name="m"/>'s exclusive block.</summary>
    public int BlockStart(int m) => Exclusive.Take(m).Sum();

    public bool IsDesignated(int j, int dictSize) => j >= dictSize - Designated;

    /// <summary>Checks the variant against a dictionary shape and the loss; throws <see cref="CrosscoderVariantException"/>.</summary>
    public void Validate(int models, int dictSize, bool isSae, ReconLoss loss)
    {
        if (IsPlain) return;
        if (isSae) throw new CrosscoderVariantException(nameof(Exclusive), "crosscoder variants apply to crosscoders only");
        if (Exclusive.Length > models)
            throw new CrosscoderVariantException(nameof(Exclusive), $"exclusive blocks for model {Exclusive.Length - 1}, but the crosscoder has models 0..{models - 1}");
        if (Exclusive.Any(n => n < 0)) throw new CrosscoderVariantException(nameof(Exclusive), "block sizes must be ≥ 0");
        if (Designated < 0) throw new CrosscoderVariantException(nameof(Designated), "must be ≥ 0");
        if (ExclusiveTotal + Designated > dictSize)
            throw new CrosscoderVariantException(nameof(Exclusive), $"{ExclusiveTotal} exclusive + {Designated} designated latents exceed the dictionary's {dictSize}");
        if (!(DesignatedPenalty >= 0) || float.IsInfinity(DesignatedPenalty)) throw new CrosscoderVariantException(nameof(DesignatedPenalty), $"{DesignatedPenalty} must be a finite value ≥ 0");
        if (DiffLambda != 0)
        {
            if (!(DiffLambda >= -1 && DiffLambda <= 0))
                throw new CrosscoderVariantException(nameof(DiffLambda), $"λ = {DiffLambda}: the diff-aware loss takes λ in [−1, 0]");
            if (models != 2) throw new CrosscoderVariantException(nameof(DiffLambda), $"the diff-aware loss is defined for two models, the crosscoder has {models}");
            if (loss != ReconLoss.Mse) throw new CrosscoderVariantException(nameof(DiffLambda), "the diff-aware loss is a squared loss: use the mse reconstruction loss");
        }
    }

    /// <summary>Puts the parameters on the constraint set: masked encoder/decoder rows zeroed, tied decoder rows set to
    /// model 0's row (after an initialisation).</summary>
    public void Apply(SparseDictionary d)
    {
        int M = d.Models, D = d.DModel, F = d.DictSize;
        for (int j = 0; j < ExclusiveTotal; j++)
        {
            int owner = OwnerOf(j);
            for (int m = 0; m < M; m++)
                if (m != owner) { d.WEnc.AsSpan((m * F + j) * D, D).Clear(); d.WDec.AsSpan((m * F + j) * D, D).Clear(); }
        }
        if (TieDesignatedDecoder)
            for (int j = F - Designated; j < F; j++)
                for (int m = 1; m < M; m++) d.WDec.AsSpan(j * D, D).CopyTo(d.WDec.AsSpan((m * F + j) * D, D));
    }

    /// <summary>Projects raw gradients onto the constraint set: masked rows' gradients 0, each tied decoder row's
    /// gradient replaced by the tied parameter's gradient Σ_m gWDec[m, j].</summary>
    // gWEncMFD, gWDecMFD: [M, F, D]
    public void ProjectGradients(Span<float> gWEncMFD, Span<float> gWDecMFD, int models, int f, int d)
    {
        for (int j = 0; j < ExclusiveTotal; j++)
        {
            int owner = OwnerOf(j);
            for (int m = 0; m < models; m++)
                if (m != owner) { gWEncMFD.Slice((m * f + j) * d, d).Clear(); gWDecMFD.Slice((m * f + j) * d, d).Clear(); }
        }
        if (TieDesignatedDecoder && Designated > 0)
        {
            var sum = new double[d];
            for (int j = f - Designated; j < f; j++)
            {
                Array.Clear(sum);
                for (int m = 0; m < models; m++) { var g = gWDecMFD.Slice((m * f + j) * d, d); for (int i = 0; i < d; i++) sum[i] += g[i]; }
                for (int m = 0; m < models; m++) { var g = gWDecMFD.Slice((m * f + j) * d, d); for (int i = 0; i < d; i++) g[i] = (float)sum[i]; }
            }
        }
    }

    /// <summary>Per-latent sparsity-penalty multipliers [F], or null when every latent has 1.</summary>
    public float[]? PenaltyWeights(int dictSize)
    {
        if (Designated == 0 || DesignatedPenalty == 1f) return null;
        var w = new float[dictSize];
        Array.Fill(w, 1f);
        for (int j = dictSize - Designated; j < dictSize; j++) w[j] = DesignatedPenalty;
        return w;
    }

    /// <summary>The finetrace.json "variant" object (formats: exclusive per model, designated count, penalty, tie, λ).</summary>
    public JsonObject ToJson() => new()
    {
        ["exclusive"] = new JsonArray(Exclusive.Select(n => (JsonNode)JsonValue.Create(n)!).ToArray()),
        ["designated"] = Designated,
        ["designated_penalty"] = DesignatedPenalty,
        ["tie_designated_decoder"] = TieDesignatedDecoder,
        ["diff_lambda"] = DiffLambda,
    };

    /// <summary>Reads the "variant" object of a dictionary folder's finetrace.json; <see cref="Plain"/> when absent.</summary>
    public static CrosscoderVariant Read(string dictionaryDir)
    {
        var v = FinetraceSidecar.Read(dictionaryDir)?["variant"] as JsonObject;
        if (v is null) return Plain;
        try
        {
            return new CrosscoderVariant
            {
                Exclusive = v["exclusive"] is JsonArray a ? a.Select(n => n!.GetValue<int>()).ToArray() : [],
                Designated = v["designated"]?.GetValue<int>() ?? 0,
                DesignatedPenalty = v["designated_penalty"]?.GetValue<float>() ?? 1f,
                TieDesignatedDecoder = v["tie_designated_decoder"]?.GetValue<bool>() ?? true,
                DiffLambda = v["diff_lambda"]?.GetValue<double>() ?? 0,
            };
        }
        catch (Exception e) when (e is InvalidOperationException or FormatException)
        {
            throw new DictionaryFormatException($"{Path.Combine(dictionaryDir, "finetrace.json")}: the \"variant\" object is malformed ({e.Message}); expected exclusive [ints], designated int, designated_penalty number, tie_designated_decoder bool, diff_lambda number");
        }
    }

    /// <summary>Latent block names for analyses and reports: "exclusive:m", "designated" or "shared".</summary>
    public string BlockOf(int j, int dictSize) => OwnerOf(j) is int m && m >= 0 ? $"exclusive:{m}" : IsDesignated(j, dictSize) ? "designated" : "shared";
}

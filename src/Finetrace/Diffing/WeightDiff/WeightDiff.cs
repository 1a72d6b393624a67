using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Finetrace.Models;
using Finetrace.Models.Safetensors;
using Finetrace.Text.Tokenization;

namespace Finetrace.Diffing.WeightDiff;

/// <summary>What <see cref="WeightDiffAnalysis"/> computes.</summary>
public sealed record WeightDiffOptions
{
    public required ModelPairSpec Models { get; init; }
    /// <summary>Singular values kept per matrix.</summary>
    public int TopSingularValues { get; init; } = 8;
    /// <summary>Matrices whose smaller side is at most this get an exact spectrum; larger ones a randomised one.</summary>
    public int ExactSvdMaxSide { get; init; } = 512;
    public int PowerIterations { get; init; } = 3;
    /// <summary>Embedding / unembedding rows listed, by ‖Δrow‖.</summary>
    public int TopRows { get; init; } = 50;
    public int Seed { get; init; }
}

/// <summary>One parameter's change. <see cref="SingularValues"/> is null for vectors (norm scales, biases).</summary>
public sealed record ModuleDiff(string Name, int? Layer, string Module, int[] Shape, double BaseNorm, double DeltaNorm,
    double[]? SingularValues, double? EffectiveRank, double? EnergyCaptured, string? SvdMethod)
{
    /// <summary>‖ΔW‖_F / ‖W_base‖_F.</summary>
    public double Relative => BaseNorm > 0 ? DeltaNorm / BaseNorm : double.PositiveInfinity;
}

/// <summary>One embedding or unembedding row that moved: token id, its text, ‖Δrow‖ and ‖row_base‖.</summary>
public sealed record RowDiff(int Id, string Token, double DeltaNorm, double BaseNorm);

public sealed record WeightDiffResult(bool FromAdapter, bool TiedEmbeddings, double GlobalRelative, IReadOnlyList<ModuleDiff> Modules,
    IReadOnlyList<RowDiff> EmbeddingRows, IReadOnlyList<RowDiff>? UnembeddingRows, string? VocabNote)
{
    public JsonObject ToJson(WeightDiffOptions o)
    {
        static JsonArray Rows(IEnumerable<RowDiff> rows) => new(rows.Select(r => (JsonNode)new JsonObject
        {
            ["id"] = r.Id, ["token"] = r.Token, ["delta_norm"] = r.DeltaNorm, ["base_norm"] = r.BaseNorm,
            ["relative"] = r.BaseNorm > 0 ? r.DeltaNorm / r.BaseNorm : null,
        }).ToArray());
        return new JsonObject
        {
            ["base"] = o.Models.Base, ["finetuned"] = o.Models.FineTuned, ["adapter"] = o.Models.Adapter,
            ["from_adapter"] = FromAdapter,
            ["global_relative"] = GlobalRelative,
            ["effective_rank_rule"] = "exp(H(σ²/Σσ²)) over the listed singular values; energy_captured = Σ listed σ² / ‖ΔW‖²",
            ["vocab_note"] = VocabNote,
            ["tied_embeddings"] = TiedEmbeddings,
            ["modules"] = new JsonArray(Modules.Select(m => (JsonNode)new JsonObject
            {
                ["name"] = m.Name, ["layer"] = m.Layer, ["module"] = m.Module,
                ["shape"] = new JsonArray(m.Shape.Select(s => (JsonNode)s).ToArray()),
                ["base_norm"] = m.BaseNorm, ["delta_norm"] = m.DeltaNorm,
                ["relative"] = double.IsFinite(m.Relative) ? m.Relative : null,
                ["singular_values"] = m.SingularValues is null ? null : new JsonArray(m.SingularValues.Select(s => (JsonNode)s).ToArray()),
                ["effective_rank"] = m.EffectiveRank, ["energy_captured"] = m.EnergyCaptured, ["svd"] = m.SvdMethod,
            }).ToArray()),
            ["embedding_rows"] = Rows(EmbeddingRows),
            ["unembedding_rows"] = UnembeddingRows is null ? null : Rows(UnembeddingRows),
        };
    }
}

/// <summary>
/// Weight diff (methods §18.3): for every parameter ‖ΔW‖_F / ‖W_base‖_F, the top singular values of ΔW and their
/// effective rank exp(H(σ²/Σσ²)), and the embedding / unembedding rows with the largest ‖Δrow‖ shown as tokens. A LoRA
/// adapter on the base folder itself is read without merging: ΔW = s·B·A, whose singular values come exactly from the
/// r×r matrices AAᵀ and BᵀB. No data needed.
/// </summary>
public static class WeightDiffAnalysis
{
    public const string Stage = "weight_diff";
    public const string OutputFile = "weight_diff.json";

    public static string InputsHash(WeightDiffOptions o) => o.Models.AddTo(new InputsHash())
        .Add("top_sv", o.TopSingularValues).Add("exact_max", o.ExactSvdMaxSide).Add("power", o.PowerIterations)
        .Add("rows", o.TopRows).Add("seed", o.Seed).ToString();

    /// <summary>Runs the analysis and writes RESULTS/weight_diff.json, unless it is current. Returns the result, or
    /// null when the stage was current and skipped.</summary>
    public static WeightDiffResult? Run(WeightDiffOptions o, ResultsFolder results, IProgress<string>? progress = null, CancellationToken cancel = default)
    {
        string hash = InputsHash(o);
        if (results.IsCurrent(Stage, hash)) return null;
        var r = Compute(o, progress, cancel);
        ResultsFolder.WriteAllTextAtomic(results.PathOf(OutputFile), r.ToJson(o).ToJsonString(ResultsJson.Indented) + "\n");
        results.Record(Stage, hash, [OutputFile]);
        return r;
    }

    static readonly Regex LayerRx = new(@"(?:^|\.)(?:layers|h)\.(\d+)\.(.+)$", RegexOptions.Compiled);

    /// <summary>(layer, module within the layer) of a parameter name; layer null outside the blocks.</summary>
    public static (int? Layer, string Module) Locate(string name)
    {
        var m = LayerRx.Match(name);
        return m.Success ? (int.Parse(m.Groups[1].Value), m.Groups[2].Value) : (null, ModelLayout.Normalise(name));
    }

    public static WeightDiffResult Compute(WeightDiffOptions o, IProgress<string>? progress = null, CancellationToken cancel = default)
    {
        var spec = o.Models;
        var cBase = ModelConfig.Load(spec.Base);
        using var ckBase = new ShardedCheckpoint(spec.Base);
        var wBase = CausalLM.ResolveWeights(cBase, ckBase, spec.Base);
        if (spec.BaseAdapter is not null) LoraAdapter.Load(spec.BaseAdapter).MergeInto(wBase, cBase);
        string? tokDir = new[] { spec.FineTuned, spec.Base }.FirstOrDefault(d => File.Exists(Path.Combine(d, "tokenizer.json")));
        var tokenizer = tokDir is null ? null : Tokenizer.FromFolder(tokDir);

        bool sameFolder = Path.GetFullPath(spec.FineTuned).TrimEnd('/') == Path.GetFullPath(spec.Base).TrimEnd('/');
        if (spec.Adapter is not null && sameFolder && spec.BaseAdapter is null)
            return FromLora(o, cBase, wBase, LoraAdapter.Load(spec.Adapter), tokenizer, progress, cancel);

        var cFt = ModelConfig.Load(spec.FineTuned);
        using var ckFt = new ShardedCheckpoint(spec.FineTuned);
        var wFt = CausalLM.ResolveWeights(cFt, ckFt, spec.FineTuned);
        if (spec.Adapter is not null) LoraAdapter.Load(spec.Adapter).MergeInto(wFt, cFt);
        return FromFull(o, cBase, wBase, cFt, wFt, tokenizer, progress, cancel);
    }

    static WeightDiffResult FromFull(WeightDiffOptions o, ModelConfig cBase, Dictionary<string, Weight> wBase, ModelConfig cFt,
        Dictionary<string, Weight> wFt, Tokenizer? tokenizer, IProgress<string>? progress, CancellationToken cancel)
    {
        var modules = new List<ModuleDiff>();
        double sumDelta = 0, sumBase = 0;
        string embedName = ModelLayout.EmbedName(cBase), unembedName = ModelLayout.UnembedName(cBase);
        List<RowDiff>? embRows = null, unembRows = null;
        int shared = Math.Min(cBase.Vocab, cFt.Vocab);
        string? vocabNote = cBase.Vocab == cFt.Vocab ? null : $"vocabularies differ (base {cBase.Vocab}, fine-tuned {cFt.Vocab}); vocabulary-sized matrices compared on the first {shared} rows";
        int done = 0;
        foreach (var (name, wb) in wBase.OrderBy(kv => kv.Key, StringComparer.Ordinal))
        {
            cancel.ThrowIfCancellationRequested();
            if (!wFt.TryGetValue(name, out var wf))
                throw new InvalidDataException($"{o.Models.FineTuned}: parameter '{name}' of the base model is missing; the architectures differ");
            bool vocabSized = name == embedName || name == unembedName;
            int rows = wb.Rows, cols = wb.Cols;
            if (vocabSized && wb.Rows != wf.Rows) rows = shared;
            if (wf.Cols != cols || (!vocabSized && wf.Rows != wb.Rows))
                throw new InvalidDataException($"{o.Models.FineTuned}: parameter '{name}' has shape [{string.Join(", ", wf.Shape)}], the base model's is [{string.Join(", ", wb.Shape)}]");
            var b = new float[(long)rows * cols];
            var d = new float[(long)rows * cols];
            wb.ReadRows(0, rows, b);
            wf.ReadRows(0, rows, d);
            double nb = 0, nd = 0;
            for (long i = 0; i < d.Length; i++)
            {
                d[i] -= b[i];
                nb += (double)b[i] * b[i];
                nd += (double)d[i] * d[i];
            }
            sumBase += nb; sumDelta += nd;
            var (layer, module) = Locate(name);
            int[] shape = wb.Shape.Length >= 2 && rows != wb.Rows ? [rows, .. wb.Shape[1..]] : wb.Shape;
            if (wb.Shape.Length >= 2)
            {
                double[] sv; string method;
                if (nd == 0) { sv = []; method = "exact"; }
                else if (Math.Min(rows, cols) <= o.ExactSvdMaxSide) { sv = SingularValues.Exact(d, rows, cols); method = "exact"; }
                else { sv = SingularValues.Randomized(d, rows, cols, o.TopSingularValues, 8, o.PowerIterations, (ulong)o.Seed); method = "randomized"; }
                var top = sv.Take(o.TopSingularValues).ToArray();
                modules.Add(new ModuleDiff(name, layer, module, shape, Math.Sqrt(nb), Math.Sqrt(nd), top, SingularValues.EffectiveRank(top),
                    nd > 0 ? top.Sum(x => x * x) / nd : null, method));
            }
            else modules.Add(new ModuleDiff(name, layer, module, shape, Math.Sqrt(nb), Math.Sqrt(nd), null, null, null, null));
            if (name == embedName) embRows = TopRows(b, d, rows, cols, o.TopRows, tokenizer);
            else if (name == unembedName) unembRows = TopRows(b, d, rows, cols, o.TopRows, tokenizer);
            progress?.Report($"{++done}/{wBase.Count} {name}");
        }
        return new WeightDiffResult(false, cBase.TiedEmbeddings, sumBase > 0 ? Math.Sqrt(sumDelta / sumBase) : 0, Order(modules),
            embRows ?? [], cBase.TiedEmbeddings ? null : unembRows, vocabNote);
    }

    static WeightDiffResult FromLora(WeightDiffOptions o, ModelConfig c, Dictionary<string, Weight> wBase, LoraAdapter adapter, Tokenizer? tokenizer,
        IProgress<string>? progress, CancellationToken cancel)
    {
        var deltas = adapter.Deltas(wBase, c).ToDictionary(d => d.WeightName, StringComparer.Ordinal);
        var modules = new List<ModuleDiff>();
        double sumDelta = 0, sumBase = 0;
        string embedName = ModelLayout.EmbedName(c), unembedName = ModelLayout.UnembedName(c);
        List<RowDiff>? embRows = null, unembRows = null;
        foreach (var (name, wb) in wBase.OrderBy(kv => kv.Key, StringComparer.Ordinal))
        {
            cancel.ThrowIfCancellationRequested();
            var b = wb.ToArray();
            double nb = b.Sum(x => (double)x * x);
            sumBase += nb;
            var (layer, module) = Locate(name);
            if (!deltas.TryGetValue(name, out var delta))
            {
                modules.Add(new ModuleDiff(name, layer, module, wb.Shape, Math.Sqrt(nb), 0, wb.Shape.Length >= 2 ? [] : null, null, null, null));
                continue;
            }
            var sv = LoraSingularValues(delta);
            double nd = sv.Sum(x => x * x);
            sumDelta += nd;
            var top = sv.Take(o.TopSingularValues).ToArray();
            modules.Add(new ModuleDiff(name, layer, module, wb.Shape, Math.Sqrt(nb), Math.Sqrt(nd), top, SingularValues.EffectiveRank(top),
                nd > 0 ? top.Sum(x => x * x) / nd : null, "lora"));
            if (name == embedName || name == unembedName)
            {
                var d = new float[b.Length];
                delta.AddTo(d, delta.Scale);
                var rows = TopRows(b, d, wb.Rows, wb.Cols, o.TopRows, tokenizer);
                if (name == embedName) embRows = rows; else unembRows = rows;
            }
            progress?.Report(name);
        }
        return new WeightDiffResult(true, c.TiedEmbeddings, sumBase > 0 ? Math.Sqrt(sumDelta / sumBase) : 0, Order(modules),
            embRows ?? [], c.TiedEmbeddings ? null : unembRows ?? [], null);
    }

    /// <summary>All (at most r) singular values of s·B·A without forming it: σ² are the eigenvalues of
    /// P^½ (BᵀB) P^½ with P = AAᵀ (r×r, the same non-zero spectrum as (BA)(BA)ᵀ).</summary>
    public static double[] LoraSingularValues(LoraDelta d)
    {
        int r = d.Rank, inF = d.In, outF = d.Out;
        var p = new double[r * r];
        var g = new double[r * r];
        for (int i = 0; i < r; i++)
            for (int j = i; j < r; j++)
            {
                double acc = 0;
                for (int k = 0; k < inF; k++) acc += (double)d.A.Data[i * inF + k] * d.A.Data[j * inF + k];
                p[i * r + j] = p[j * r + i] = acc;
                acc = 0;
                for (int k = 0; k < outF; k++) acc += (double)d.B.Data[k * r + i] * d.B.Data[k * r + j];
                g[i * r + j] = g[j * r + i] = acc;
            }
        var (lam, vec) = SymmetricEigen.Decompose(p, r);
        // P^½ = Σ √λ v vᵀ
        var half = new double[r * r];
        for (int e = 0; e < r; e++)
        {
            double s = Math.Sqrt(Math.Max(lam[e], 0));
            for (int i = 0; i < r; i++)
                for (int j = 0; j < r; j++) half[i * r + j] += s * vec[e * r + i] * vec[e * r + j];
        }
        var m = Mul(Mul(half, g, r), half, r);
        for (int i = 0; i < r; i++) for (int j = i + 1; j < r; j++) m[i * r + j] = m[j * r + i] = 0.5 * (m[i * r + j] + m[j * r + i]);
        double scale = Math.Abs(d.Scale);
        return SingularValues.FromGram(m, r).Select(x => x * scale).ToArray();
    }

    static double[] Mul(double[] x, double[] y, int n)
    {
        var z = new double[n * n];
        for (int i = 0; i < n; i++)
            for (int k = 0; k < n; k++)
            {
                double a = x[i * n + k];
                for (int j = 0; j < n; j++) z[i * n + j] += a * y[k * n + j];
            }
        return z;
    }

    // rows of the vocabulary-sized matrix by ‖Δrow‖, descending (ties by id)
    static List<RowDiff> TopRows(float[] bRC, float[] dRC, int rows, int cols, int top, Tokenizer? tokenizer)
    {
        var norms = new (int Id, double D, double B)[rows];
        for (int r = 0; r < rows; r++)
        {
            double nd = 0, nb = 0;
            for (int c = 0; c < cols; c++)
            {
                double dv = dRC[(long)r * cols + c], bv = bRC[(long)r * cols + c];
                nd += dv * dv; nb += bv * bv;
            }
            norms[r] = (r, Math.Sqrt(nd), Math.Sqrt(nb));
        }
        return norms.OrderByDescending(x => x.D).ThenBy(x => x.Id).Take(top)
            .Select(x => new RowDiff(x.Id, TokenTexts.Of(tokenizer, x.Id), x.D, x.B)).ToList();
    }

    static List<ModuleDiff> Order(List<ModuleDiff> modules) =>
        modules.OrderBy(m => m.Layer ?? -1).ThenBy(m => m.Name, StringComparer.Ordinal).ToList();
}

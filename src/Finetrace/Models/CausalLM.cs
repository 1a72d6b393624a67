using Finetrace.Models.Safetensors;
using Finetrace.Tensors;

namespace Finetrace.Models;

/// <summary>
/// A Hugging Face causal LM (llama, mistral, qwen2, qwen3, gemma2, gpt2, gpt_neox) run in float32 with its weights
/// kept in their stored dtype. The forward is split at the residual stream so that callers can run part of one model,
/// edit the residual, and continue with another: <see cref="Embed"/>, <see cref="RunLayers"/>,
/// <see cref="FinalNorm"/>, <see cref="Unembed"/>. <see cref="Forward"/> chains them with hooks.
/// </summary>
public sealed class CausalLM : IDisposable
{
    public ModelConfig Config { get; }
    public string Folder { get; }
    readonly Checkpoint _ckpt;
    readonly Weight _embed;
    readonly Weight? _wpe;
    readonly Block[] _blocks;
    readonly Norm _finalNorm;
    readonly Linear _unembed;
    readonly Rope? _rope;
    readonly TileBuffer _tile = new();

    /// <summary>Parameters that take part in matrix products per token (all projections and the unembedding).</summary>
    public long MatmulParameters { get; }

    public int Layers => Config.Layers;
    public int Hidden => Config.Hidden;

    sealed record Norm(NormKind Kind, float[] W, float[]? B, float Eps);

    sealed class Block
    {
        public required Norm AttnIn;
        public Norm? AttnOut;          // gemma2 post_attention_layernorm
        public required Norm MlpIn;
        public Norm? MlpOut;           // gemma2 post_feedforward_layernorm
        public Linear? Q, K, V;        // separate projections
        public Linear? Qkv;            // fused: GPT-2 [Q|K|V] columns, NeoX per-head [q_h|k_h|v_h]
        public required Linear O;
        public float[]? QNorm, KNorm;  // qwen3
        public Linear? Gate;
        public required Linear Up, Down;
    }

    CausalLM(string folder, ModelConfig config, Checkpoint ckpt, Dictionary<string, Weight> w)
    {
        Folder = folder; Config = config; _ckpt = ckpt;
        var c = config;
        float[] Vec(string name) => w[name].ToArray();
        Norm MakeNorm(string prefix) => new(c.Norm, Vec(prefix + ".weight"), c.Norm == NormKind.LayerNorm ? Vec(prefix + ".bias") : null, c.NormEps);
        Linear Lin(string prefix, bool bias, bool inOut = false) => new(w[prefix + ".weight"], bias ? Vec(prefix + ".bias") : null, inOut);

        _embed = w[ModelLayout.EmbedName(c)];
        _blocks = new Block[c.Layers];
        switch (c.Arch)
        {
            case Architecture.Gpt2:
                _wpe = w["transformer.wpe.weight"];
                for (int i = 0; i < c.Layers; i++)
                {
                    string p = $"transformer.h.{i}.";
                    _blocks[i] = new Block
                    {
                        AttnIn = MakeNorm(p + "ln_1"), MlpIn = MakeNorm(p + "ln_2"),
                        Qkv = Lin(p + "attn.c_attn", true, true), O = Lin(p + "attn.c_proj", true, true),
                        Up = Lin(p + "mlp.c_fc", true, true), Down = Lin(p + "mlp.c_proj", true, true),
                    };
                }
                _finalNorm = MakeNorm("transformer.ln_f");
                break;
            case Architecture.GptNeox:
                for (int i = 0; i < c.Layers; i++)
                {
                    string p = $"gpt_neox.layers.{i}.";
                    _blocks[i] = new Block
                    {
                        AttnIn = MakeNorm(p + "input_layernorm"), MlpIn = MakeNorm(p + "post_attention_layernorm"),
                        Qkv = Lin(p + "attention.query_key_value", c.QkvBias), O = Lin(p + "attention.dense", c.OutBias),
                        Up = Lin(p + "mlp.dense_h_to_4h", true), Down = Lin(p + "mlp.dense_4h_to_h", true),
                    };
                }
                _finalNorm = MakeNorm("gpt_neox.final_layer_norm");
                break;
            default:
                bool gemma = c.Arch == Architecture.Gemma2;
                for (int i = 0; i < c.Layers; i++)
                {
                    string p = $"model.layers.{i}.";
                    _blocks[i] = new Block
                    {
                        AttnIn = MakeNorm(p + "input_layernorm"),
                        AttnOut = gemma ? MakeNorm(p + "post_attention_layernorm") : null,
                        MlpIn = MakeNorm(gemma ? p + "pre_feedforward_layernorm" : p + "post_attention_layernorm"),
                        MlpOut = gemma ? MakeNorm(p + "post_feedforward_layernorm") : null,
                        Q = Lin(p + "self_attn.q_proj", c.QkvBias), K = Lin(p + "self_attn.k_proj", c.QkvBias),
                        V = Lin(p + "self_attn.v_proj", c.QkvBias), O = Lin(p + "self_attn.o_proj", c.OutBias),
                        QNorm = c.QkNorm ? Vec(p + "self_attn.q_norm.weight") : null,
                        KNorm = c.QkNorm ? Vec(p + "self_attn.k_norm.weight") : null,
                        Gate = Lin(p + "mlp.gate_proj", c.MlpBias), Up = Lin(p + "mlp.up_proj", c.MlpBias), Down = Lin(p + "mlp.down_proj", c.MlpBias),
                    };
                }
                _finalNorm = MakeNorm("model.norm");
                break;
        }
        _unembed = new Linear(w[ModelLayout.UnembedName(c)], null, false);
        if (c.Arch != Architecture.Gpt2) _rope = new Rope(c);

        long mp = _unembed.MatmulParameters;
        foreach (var b in _blocks)
            foreach (var l in new[] { b.Q, b.K, b.V, b.Qkv, b.O, b.Gate, b.Up, b.Down })
                if (l is not null) mp += l.MatmulParameters;
        MatmulParameters = mp;
    }

    /// <summary>Loads config.json and the safetensors weights of <paramref name="folder"/>, checking every tensor's presence and
    /// shape, and merges a PEFT LoRA adapter when <paramref name="adapterFolder"/> is given.</summary>
    public static CausalLM Load(string folder, string? adapterFolder = null)
    {
        var config = ModelConfig.Load(folder);
        var ckpt = new Checkpoint(folder);
        try
        {
            var weights = ResolveWeights(config, ckpt, folder);
            if (adapterFolder is not null) LoraAdapter.Load(adapterFolder).MergeInto(weights, config);
            return new CausalLM(folder, config, ckpt, weights);
        }
        catch
        {
            ckpt.Dispose();
            throw;
        }
    }

    /// <summary>Maps every parameter the config needs to its tensor (names with or without the transformer./model./gpt_neox.
    /// prefix), checking shapes; missing, misshapen or unexpected tensors are errors naming tensor and file.</summary>
    internal static Dictionary<string, Weight> ResolveWeights(ModelConfig c, Checkpoint ckpt, string folder)
    {
        var byNormal = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var name in ckpt.Names)
            if (!byNormal.TryAdd(ModelLayout.Normalise(name), name))
                throw new InvalidDataException($"{folder}: tensors '{byNormal[ModelLayout.Normalise(name)]}' and '{name}' name the same parameter");
        var used = new HashSet<string>(StringComparer.Ordinal);
        var result = new Dictionary<string, Weight>(StringComparer.Ordinal);
        foreach (var spec in ModelLayout.Parameters(c))
        {
            string? actual = ckpt.Contains(spec.Name) ? spec.Name : byNormal.GetValueOrDefault(ModelLayout.Normalise(spec.Name));
            if (actual is null)
                throw new InvalidDataException($"{folder}: tensor '{spec.Name}' (shape [{string.Join(", ", spec.Shape)}]) is missing from the checkpoint; " +
                    $"config.json (model_type {c.ModelType}) requires it. Check that config.json belongs to these weights.");
            var info = ckpt.Info(actual);
            if (!info.Shape.AsSpan().SequenceEqual(spec.Shape))
                throw new InvalidDataException($"{ckpt.FileOf(actual).Path}: tensor '{actual}' has shape {info.ShapeText} but config.json " +
                    $"(model_type {c.ModelType}) requires [{string.Join(", ", spec.Shape)}]");
            used.Add(actual);
            result[spec.Name] = Weight.Mapped(ckpt, actual);
        }
        var extra = ckpt.Names.Where(n => !used.Contains(n) && !ModelLayout.IsIgnoredBuffer(n)
            && !(c.TiedEmbeddings && ModelLayout.Normalise(n) is "lm_head.weight" or "embed_out.weight")).OrderBy(n => n, StringComparer.Ordinal).ToList();
        if (extra.Count > 0)
            throw new InvalidDataException($"{ckpt.FileOf(extra[0]).Path}: unexpected tensor(s) {string.Join(", ", extra.Take(5).Select(n => $"'{n}'"))}" +
                $"{(extra.Count > 5 ? $" and {extra.Count - 5} more" : "")} that config.json (model_type {c.ModelType}) does not use; check the config (e.g. bias or tie_word_embeddings settings)");
        return result;
    }

    public void Dispose() => _ckpt.Dispose();

    // ---------------------------------------------------------------- forward pieces

    /// <summary>The embedding output [Batch, Seq, Hidden] (= blocks.0.hook_resid_pre): E[ids] · ν (Gemma), E[ids] + wpe[pos] (GPT-2).</summary>
    public Tensor Embed(TokenBatch batch)
    {
        int d = Hidden;
        var h = new Tensor(batch.Batch, batch.Seq, d);
        Span<float> pos = _wpe is null ? default : new float[d];
        for (int i = 0; i < batch.Count; i++)
        {
            int id = batch.Ids[i];
            if ((uint)id >= (uint)Config.Vocab)
                throw new ArgumentOutOfRangeException(nameof(batch), $"token id {id} (row {i / batch.Seq}, position {i % batch.Seq}) is outside the vocabulary of {Config.Vocab}");
            var row = h.Data.AsSpan(i * d, d);
            _embed.ReadRows(id, 1, row);
            if (Config.EmbedScale != 1f)
                System.Numerics.Tensors.TensorPrimitives.Multiply(row, Config.EmbedScale, row);
            if (_wpe is not null)
            {
                int p = batch.Positions[i];
                if (p >= _wpe.Rows) throw new ArgumentOutOfRangeException(nameof(batch), $"position {p} exceeds n_positions {_wpe.Rows}");
                _wpe.ReadRows(p, 1, pos);
                System.Numerics.Tensors.TensorPrimitives.Add(row, pos, row);
            }
        }
        return h;
    }

    /// <summary>Runs blocks <paramref name="from"/>..<paramref name="to"/> (inclusive) on the residual stream in place, firing
    /// blocks.{i}.hook_resid_pre before block i (except block 0's, which <see cref="Forward"/> fires after the embedding) and
    /// blocks.{i}.hook_resid_post after it.</summary>
    // hBTD: [Batch, Seq, Hidden]
    public void RunLayers(int from, int to, Tensor hBTD, TokenBatch batch, HookSet? hooks = null)
    {
        if (from < 0 || to >= Layers || from > to + 1) throw new ArgumentOutOfRangeException(nameof(from), $"layers {from}..{to} of {Layers}");
        if (hBTD.Length != batch.Count * Hidden) throw new ArgumentException($"residual {hBTD} does not match batch [{batch.Batch}, {batch.Seq}] × hidden {Hidden}");
        var ws = new Workspace(Config, batch);
        for (int i = from; i <= to; i++)
        {
            if (i > 0) hooks?.Fire(HookNames.ResidPre(i), hBTD, batch);
            Layer(i, hBTD.Data, batch, ws);
            hooks?.Fire(HookNames.ResidPost(i), hBTD, batch);
        }
    }

    /// <summary>The final norm of the residual stream, [Batch, Seq, Hidden] (= ln_final.hook_normalized).</summary>
    public Tensor FinalNorm(Tensor hBTD, TokenBatch batch, HookSet? hooks = null)
    {
        var y = new Tensor(hBTD.Shape);
        ApplyNorm(_finalNorm, hBTD.Data, batch.Count, y.Data);
        hooks?.Fire(HookNames.LnFinal, y, batch);
        return y;
    }

    /// <summary>Logits [Batch, Seq, Vocab] of the normalised stream (Gemma 2: after the final soft-cap).</summary>
    public Tensor Unembed(Tensor normedBTD, TokenBatch batch, HookSet? hooks = null)
    {
        int m = normedBTD.Length / Hidden;
        var logits = new Tensor(normedBTD.Dim(0), normedBTD.Dim(1), Config.Vocab);
        _unembed.Apply(normedBTD.Data, m, logits.Data, _tile);
        if (Config.FinalSoftcap is { } cap) ModelMath.SoftCap(logits.Data, cap);
        hooks?.Fire(HookNames.Logits, logits, batch);
        return logits;
    }

    public Tensor FinalNormAndLogits(Tensor hBTD, TokenBatch batch, HookSet? hooks = null) =>
        Unembed(FinalNorm(hBTD, batch, hooks), batch, hooks);

    /// <summary>Logits [Vocab] of one position only (generation).</summary>
    public float[] LogitsAt(Tensor hBTD, int row, int pos)
    {
        int d = Hidden;
        var x = hBTD.Data.AsSpan((row * hBTD.Dim(1) + pos) * d, d);
        var normed = new float[d];
        ApplyNorm(_finalNorm, x, 1, normed);
        var logits = new float[Config.Vocab];
        _unembed.Apply(normed, 1, logits, _tile);
        if (Config.FinalSoftcap is { } cap) ModelMath.SoftCap(logits, cap);
        return logits;
    }

    /// <summary>Embedding, blocks 0..<paramref name="stopAfterLayer"/> (default: all), then — only when all blocks ran — the final
    /// norm and logits. Returns the residual after the last block run and the logits (null when stopped early).</summary>
    public (Tensor Residual, Tensor? Logits) Forward(TokenBatch batch, HookSet? hooks = null, int? stopAfterLayer = null)
    {
        int last = stopAfterLayer ?? Layers - 1;
        if (last < -1 || last >= Layers) throw new ArgumentOutOfRangeException(nameof(stopAfterLayer), $"layer {last} of {Layers}");
        var h = Embed(batch);
        hooks?.Fire(HookNames.ResidPre(0), h, batch);
        if (last >= 0) RunLayers(0, last, h, batch, hooks);
        if (last < Layers - 1) return (h, null);
        return (h, FinalNormAndLogits(h, batch, hooks));
    }

    // ---------------------------------------------------------------- one block

    /// <summary>Activation buffers for one forward, sized by batch × seq.</summary>
    sealed class Workspace
    {
        public readonly float[] X, Q, K, V, Attn, Proj, MlpA, MlpB, MlpOut, Scores;
        public readonly float[]? Fused;

        public Workspace(ModelConfig c, TokenBatch b)
        {
            int m = b.Count;
            X = Tensor.Allocate((long)m * c.Hidden, false);
            Q = Tensor.Allocate((long)m * c.Heads * c.HeadDim, false);
            K = Tensor.Allocate((long)m * c.KvHeads * c.HeadDim, false);
            V = Tensor.Allocate((long)m * c.KvHeads * c.HeadDim, false);
            Attn = Tensor.Allocate((long)m * c.Heads * c.HeadDim, false);
            Proj = Tensor.Allocate((long)m * c.Hidden, false);
            MlpA = Tensor.Allocate((long)m * c.Intermediate, false);
            MlpB = c.Arch is Architecture.Gpt2 or Architecture.GptNeox ? [] : Tensor.Allocate((long)m * c.Intermediate, false);
            MlpOut = Tensor.Allocate((long)m * c.Hidden, false);
            Scores = Tensor.Allocate((long)b.Seq * b.Seq, false);
            if (c.Arch is Architecture.Gpt2 or Architecture.GptNeox) Fused = Tensor.Allocate((long)m * 3 * c.Hidden, false);
        }
    }

    void ApplyNorm(Norm n, ReadOnlySpan<float> x, int m, Span<float> y)
    {
        int d = n.W.Length;
        if (n.Kind == NormKind.LayerNorm) ModelMath.LayerNorm(x, m, d, n.W, n.B, n.Eps, y);
        else ModelMath.RmsNorm(x, m, d, n.W, n.Eps, n.Kind == NormKind.GemmaRmsNorm, y);
    }

    // h: [m, Hidden] residual, updated in place
    void Layer(int i, Span<float> h, TokenBatch batch, Workspace ws)
    {
        var blk = _blocks[i];
        var c = Config;
        int m = batch.Count, d = Hidden;

        ApplyNorm(blk.AttnIn, h, m, ws.X);
        Attention(i, blk, batch, ws); // ws.X → ws.Proj [m, d]
        if (blk.AttnOut is { } ao) ApplyNorm(ao, ws.Proj, m, ws.Proj);

        if (c.ParallelResidual)
        {
            // NeoX: h ← mlp(ln2(h)) + attn(ln1(h)) + h, both norms reading the block input
            ApplyNorm(blk.MlpIn, h, m, ws.X);
            Mlp(blk, m, ws);
            var mo = ws.MlpOut.AsSpan(0, m * d);
            var pr = ws.Proj.AsSpan(0, m * d);
            for (int j = 0; j < mo.Length; j++) h[j] = (mo[j] + pr[j]) + h[j];
            return;
        }
        System.Numerics.Tensors.TensorPrimitives.Add(h[..(m * d)], ws.Proj.AsSpan(0, m * d), h);
        ApplyNorm(blk.MlpIn, h, m, ws.X);
        Mlp(blk, m, ws);
        if (blk.MlpOut is { } mo2) ApplyNorm(mo2, ws.MlpOut, m, ws.MlpOut);
        System.Numerics.Tensors.TensorPrimitives.Add(h[..(m * d)], ws.MlpOut.AsSpan(0, m * d), h);
    }

    void Mlp(Block blk, int m, Workspace ws)
    {
        int inter = Config.Intermediate;
        if (blk.Gate is { } gate)
        {
            // down(act(gate(x)) ⊙ up(x))
            gate.Apply(ws.X, m, ws.MlpA, _tile);
            blk.Up.Apply(ws.X, m, ws.MlpB, _tile);
            var a = ws.MlpA.AsSpan(0, m * inter);
            ModelMath.Activate(a, Config.Act);
            System.Numerics.Tensors.TensorPrimitives.Multiply(a, ws.MlpB.AsSpan(0, m * inter), a);
        }
        else
        {
            blk.Up.Apply(ws.X, m, ws.MlpA, _tile);
            ModelMath.Activate(ws.MlpA.AsSpan(0, m * inter), Config.Act);
        }
        blk.Down.Apply(ws.MlpA, m, ws.MlpOut, _tile);
    }

    void Attention(int layer, Block blk, TokenBatch batch, Workspace ws)
    {
        var c = Config;
        int m = batch.Count, hd = c.HeadDim, nh = c.Heads, nkv = c.KvHeads;
        int qW = nh * hd, kvW = nkv * hd;

        if (blk.Qkv is { } qkv)
        {
            qkv.Apply(ws.X, m, ws.Fused, _tile);
            int d = c.Hidden;
            for (int r = 0; r < m; r++)
            {
                var f = ws.Fused.AsSpan(r * 3 * d, 3 * d);
                if (c.Arch == Architecture.Gpt2)
                {
                    // c_attn output columns [Q_all | K_all | V_all]
                    f[..d].CopyTo(ws.Q.AsSpan(r * d, d));
                    f.Slice(d, d).CopyTo(ws.K.AsSpan(r * d, d));
                    f.Slice(2 * d, d).CopyTo(ws.V.AsSpan(r * d, d));
                }
                else
                {
                    // NeoX: per head [q_h | k_h | v_h]
                    for (int h = 0; h < nh; h++)
                    {
                        f.Slice(h * 3 * hd, hd).CopyTo(ws.Q.AsSpan(r * d + h * hd, hd));
                        f.Slice(h * 3 * hd + hd, hd).CopyTo(ws.K.AsSpan(r * d + h * hd, hd));
                        f.Slice(h * 3 * hd + 2 * hd, hd).CopyTo(ws.V.AsSpan(r * d + h * hd, hd));
                    }
                }
            }
        }
        else
        {
            blk.Q!.Apply(ws.X, m, ws.Q, _tile);
            blk.K!.Apply(ws.X, m, ws.K, _tile);
            blk.V!.Apply(ws.X, m, ws.V, _tile);
        }
        if (blk.QNorm is { } qn)
        {
            ModelMath.RmsNorm(ws.Q, m * nh, hd, qn, c.NormEps, false, ws.Q);
            ModelMath.RmsNorm(ws.K, m * nkv, hd, blk.KNorm!, c.NormEps, false, ws.K);
        }
        if (_rope is not null)
        {
            _rope.Apply(ws.Q, m, nh, hd, batch.Positions);
            _rope.Apply(ws.K, m, nkv, hd, batch.Positions);
        }

        int T = batch.Seq, rep = nh / nkv;
        bool sliding = c.SlidingLayers[layer];
        int window = c.SlidingWindow;
        var s = ws.Scores.AsSpan(0, T * T);
        for (int b = 0; b < batch.Batch; b++)
        {
            var mask = batch.Mask.AsSpan(b * T, T);
            for (int h = 0; h < nh; h++)
            {
                int g = h / rep; // repeat_kv: query head h reads kv head h / n_rep
                var q = ws.Q.AsSpan(b * T * qW + h * hd);
                var k = ws.K.AsSpan(b * T * kvW + g * hd);
                var v = ws.V.AsSpan(b * T * kvW + g * hd);
                // scores[T, T] = (q · kᵀ) · scale
                Gemm.Sgemm(false, true, T, T, hd, c.AttnScale, q, qW, k, kvW, 0f, s, T);
                for (int qi = 0; qi < T; qi++)
                {
                    var row = s.Slice(qi * T, T);
                    int lo = sliding ? Math.Max(0, qi - window + 1) : 0;
                    if (c.AttnSoftcap is { } cap) ModelMath.SoftCap(row[lo..(qi + 1)], cap);
                    float max = float.NegativeInfinity;
                    for (int kj = lo; kj <= qi; kj++) if (mask[kj] != 0 && row[kj] > max) max = row[kj];
                    if (float.IsNegativeInfinity(max)) { row.Clear(); continue; } // every key masked
                    float sum = 0f;
                    for (int kj = 0; kj < T; kj++)
                    {
                        bool visible = kj >= lo && kj <= qi && mask[kj] != 0;
                        float e = visible ? MathF.Exp(row[kj] - max) : 0f;
                        row[kj] = e;
                        sum += e;
                    }
                    float inv = 1f / sum;
                    for (int kj = lo; kj <= qi; kj++) row[kj] *= inv;
                }
                // out[T, hd] = p[T, T] · v[T, hd], written into head h's columns
                Gemm.Sgemm(false, false, T, hd, T, 1f, s, T, v, kvW, 0f, ws.Attn.AsSpan(b * T * qW + h * hd), qW);
            }
        }
        blk.O.Apply(ws.Attn, m, ws.Proj, _tile);
    }
}

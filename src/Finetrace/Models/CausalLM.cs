using Finetrace.Models.Safetensors;
using Finetrace.Tensors;

namespace Finetrace.Models;

/// <summary>
/// A Hugging Face causal LM (llama, mistral, qwen2, qwen3, gemma2, gpt2, gpt_neox) run in float32 with its weights
/// kept in their stored dtype. The forward is split at the residual stream so that callers can run part of one model,
/// edit the residual, and continue with another: <see cref="Embed"/>, <see cref="RunLayers"/>,
/// <see cref="FinalNorm"/>, <see cref="Unembed"/>. <see cref="Forward"/> chains them with hooks.
/// An instance reuses its activation buffers between calls: run one forward at a time per instance.
/// </summary>
public sealed class CausalLM : IForwardModel
{
    public ModelConfig Config { get; }
    public string Folder { get; }
    readonly ModelWeights _weights;
    readonly Weight _embed;
    readonly Weight? _wpe;
    readonly Block[] _blocks;
    readonly Norm _finalNorm;
    readonly Linear _unembed;
    readonly Rope? _rope;
    readonly TileBuffer _tile = new();

    /// <summary>Parameters that take part in matrix products per token (all projections and the unembedding).</summary>
    public long MatmulParameters { get; }
    public long UnembedParameters => _unembed.MatmulParameters;
    /// <summary>Bytes of all parameters in their stored dtypes (what stays mapped in memory).</summary>
    public long WeightBytes { get; }

    public int Layers => Config.Layers;
    public int Hidden => Config.Hidden;

    /// <summary>Where forward time goes (seconds), for <c>bench forward</c>; off unless enabled.</summary>
    internal sealed class Profile
    {
        public double Projections, Attention, Unembed, Other;
        public static Profile? Current;
        public static long Now() => Current is null ? 0 : System.Diagnostics.Stopwatch.GetTimestamp();
        public static double Since(long t0) => (System.Diagnostics.Stopwatch.GetTimestamp() - t0) / (double)System.Diagnostics.Stopwatch.Frequency;
    }

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

    CausalLM(ModelWeights weights)
    {
        _weights = weights;
        Folder = weights.Folder; Config = weights.Config;
        var c = Config;
        var w = weights.Parameters;
        float[] Vec(string name) => w[name].ToArray();
        Norm MakeNorm(NormNames n) => new(c.Norm, Vec(n.Weight), n.Bias is null ? null : Vec(n.Bias), c.NormEps);
        Linear Lin(ProjectionNames p) => new(w[p.Weight], p.Bias is null ? null : Vec(p.Bias), p.StoredInOut);
        Linear? OptLin(ProjectionNames? p) => p is null ? null : Lin(p);

        _embed = w[ModelLayout.EmbedName(c)];
        if (ModelLayout.PositionEmbedName(c) is { } wpe) _wpe = w[wpe];
        var layout = ModelLayout.Blocks(c);
        _blocks = new Block[c.Layers];
        for (int i = 0; i < c.Layers; i++)
        {
            var n = layout[i];
            _blocks[i] = new Block
            {
                AttnIn = MakeNorm(n.AttnIn), AttnOut = n.AttnOut is null ? null : MakeNorm(n.AttnOut),
                MlpIn = MakeNorm(n.MlpIn), MlpOut = n.MlpOut is null ? null : MakeNorm(n.MlpOut),
                Q = OptLin(n.Q), K = OptLin(n.K), V = OptLin(n.V), Qkv = OptLin(n.Qkv), O = Lin(n.O),
                QNorm = n.QNorm is null ? null : Vec(n.QNorm), KNorm = n.KNorm is null ? null : Vec(n.KNorm),
                Gate = OptLin(n.Gate), Up = Lin(n.Up), Down = Lin(n.Down),
            };
        }
        _finalNorm = MakeNorm(ModelLayout.FinalNorm(c));
        _unembed = new Linear(w[ModelLayout.UnembedName(c)], null, false);
        if (c.Arch != Architecture.Gpt2) _rope = new Rope(c);

        long mp = _unembed.MatmulParameters;
        foreach (var b in _blocks)
            foreach (var l in new[] { b.Q, b.K, b.V, b.Qkv, b.O, b.Gate, b.Up, b.Down })
                if (l is not null) mp += l.MatmulParameters;
        MatmulParameters = mp;
        WeightBytes = w.Values.Sum(x => x.Count * (x.DType == DType.F32 ? 4 : 2));
    }

    /// <summary>Loads config.json and the safetensors weights of <paramref name="folder"/>, checking every tensor's presence and
    /// shape, and merges a PEFT LoRA adapter when <paramref name="adapterFolder"/> is given.</summary>
    public static CausalLM Load(string folder, string? adapterFolder = null) => Load(folder, adapterFolder, null);

    /// <summary>As <see cref="Load(string, string?)"/>, then lets <paramref name="editWeights"/> replace parameters (keyed by
    /// canonical HF names; replacements keep each parameter's shape) before the model is built: blended or amplified
    /// weights.</summary>
    public static CausalLM Load(string folder, string? adapterFolder, Action<ModelConfig, Dictionary<string, Weight>>? editWeights)
    {
        var weights = ModelWeights.Load(folder, adapterFolder, editWeights);
        try { return new CausalLM(weights); }
        catch
        {
            weights.Dispose();
            throw;
        }
    }

    /// <summary>Maps every parameter the config needs to its tensor (names with or without the transformer./model./gpt_neox.
    /// prefix), checking shapes; missing, misshapen or unexpected tensors are errors naming tensor and file.</summary>
    internal static Dictionary<string, Weight> ResolveWeights(ModelConfig c, ShardedCheckpoint ckpt, string folder)
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

    public void Dispose() => _weights.Dispose();

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
    /// blocks.{i}.hook_resid_post after it; inside each block the <see cref="HookSite"/> hooks (attn_out, resid_mid, mlp.hook_post,
    /// mlp_out) fire when someone listens.</summary>
    // hBTD: [Batch, Seq, Hidden]
    public void RunLayers(int from, int to, Tensor hBTD, TokenBatch batch, HookSet? hooks = null)
    {
        if (from < 0 || to >= Layers || from > to + 1) throw new ArgumentOutOfRangeException(nameof(from), $"layers {from}..{to} of {Layers}");
        if (hBTD.Length != batch.Count * Hidden) throw new ArgumentException($"residual {hBTD} does not match batch [{batch.Batch}, {batch.Seq}] × hidden {Hidden}");
        var ws = WorkspaceFor(batch.Count);
        for (int i = from; i <= to; i++)
        {
            if (i > 0) hooks?.Fire(HookNames.ResidPre(i), hBTD, batch);
            Layer(i, hBTD, batch, ws, hooks);
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
        long t0 = Profile.Now();
        _unembed.Apply(normedBTD.Data, m, logits.Data, _tile);
        if (Config.FinalSoftcap is { } cap) Kernels.SoftCap(logits.Data, cap);
        if (Profile.Current is { } p) { double dt = Profile.Since(t0); p.Unembed += dt; p.Projections -= dt; }
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
        if (Config.FinalSoftcap is { } cap) Kernels.SoftCap(logits, cap);
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
        public readonly float[] X, Q, K, V, Attn, Proj, MlpA, MlpB, MlpOut;
        public readonly float[]? Fused;

        public readonly int Rows;

        public Workspace(ModelConfig c, int m)
        {
            Rows = m;
            X = Tensor.Allocate((long)m * c.Hidden, false);
            Q = Tensor.Allocate((long)m * c.Heads * c.HeadDim, false);
            K = Tensor.Allocate((long)m * c.KvHeads * c.HeadDim, false);
            V = Tensor.Allocate((long)m * c.KvHeads * c.HeadDim, false);
            Attn = Tensor.Allocate((long)m * c.Heads * c.HeadDim, false);
            Proj = Tensor.Allocate((long)m * c.Hidden, false);
            MlpA = Tensor.Allocate((long)m * c.Intermediate, false);
            MlpB = c.Arch is Architecture.Gpt2 or Architecture.GptNeox ? [] : Tensor.Allocate((long)m * c.Intermediate, false);
            MlpOut = Tensor.Allocate((long)m * c.Hidden, false);
            if (c.Arch is Architecture.Gpt2 or Architecture.GptNeox) Fused = Tensor.Allocate((long)m * 3 * c.Hidden, false);
        }
    }

    Workspace? _ws;

    /// <summary>Activation buffers for at least <paramref name="m"/> rows, reused across calls (so a model instance is not
    /// safe to run from two threads at once).</summary>
    Workspace WorkspaceFor(int m)
    {
        if (_ws is null || _ws.Rows < m) _ws = new Workspace(Config, m);
        return _ws;
    }

    void ApplyNorm(Norm n, ReadOnlySpan<float> x, int m, Span<float> y)
    {
        int d = n.W.Length;
        if (n.Kind == NormKind.LayerNorm) Kernels.LayerNorm(x[..(m * d)], n.W, n.B, m, n.Eps, y);
        else Kernels.RmsNorm(x[..(m * d)], n.W, m, n.Eps, n.Kind == NormKind.GemmaRmsNorm, y);
    }

    // hBTD: [Batch, Seq, Hidden] residual, updated in place
    void Layer(int i, Tensor hBTD, TokenBatch batch, Workspace ws, HookSet? hooks)
    {
        var blk = _blocks[i];
        ApplyNorm(blk.AttnIn, hBTD.Data, batch.Count, ws.X);
        Attention(i, blk, batch, ws); // ws.X → ws.Proj [m, d]
        FinishBlock(i, blk, hBTD, batch, ws, hooks);
    }

    /// <summary>Everything of a block after the attention output projection (in ws.Proj): residual adds, MLP, Gemma's
    /// output norms. Fires hook_attn_out and hook_mlp_out on exactly what is added to the residual, mlp.hook_post on what
    /// the down projection reads, hook_resid_mid between the adds (sequential blocks); edits made there flow on.</summary>
    // hBTD: [Batch, Seq, Hidden] residual, updated in place
    void FinishBlock(int layer, Block blk, Tensor hBTD, TokenBatch batch, Workspace ws, HookSet? hooks)
    {
        int d = Hidden, m = batch.Count;
        var h = hBTD.Data.AsSpan();
        if (blk.AttnOut is { } ao) ApplyNorm(ao, ws.Proj, m, ws.Proj);
        FireBuffer(hooks, HookSite.AttnOut, layer, ws.Proj, d, batch);
        if (Config.ParallelResidual)
        {
            // NeoX: h ← mlp(ln2(h)) + attn(ln1(h)) + h, both norms reading the block input
            ApplyNorm(blk.MlpIn, h, m, ws.X);
            Mlp(layer, blk, batch, ws, hooks);
            FireBuffer(hooks, HookSite.MlpOut, layer, ws.MlpOut, d, batch);
            var mo = ws.MlpOut.AsSpan(0, m * d);
            var pr = ws.Proj.AsSpan(0, m * d);
            for (int j = 0; j < mo.Length; j++) h[j] = (mo[j] + pr[j]) + h[j];
            return;
        }
        System.Numerics.Tensors.TensorPrimitives.Add(h[..(m * d)], ws.Proj.AsSpan(0, m * d), h);
        if (hooks is not null) hooks.Fire(SiteName(HookSite.ResidMid, layer), hBTD, batch);
        ApplyNorm(blk.MlpIn, h, m, ws.X);
        Mlp(layer, blk, batch, ws, hooks);
        if (blk.MlpOut is { } mo2) ApplyNorm(mo2, ws.MlpOut, m, ws.MlpOut);
        FireBuffer(hooks, HookSite.MlpOut, layer, ws.MlpOut, d, batch);
        System.Numerics.Tensors.TensorPrimitives.Add(h[..(m * d)], ws.MlpOut.AsSpan(0, m * d), h);
    }

    /// <summary>Hook names per site and layer, built once so that a forward with hooks allocates no names.</summary>
    string[][]? _siteNames;

    string SiteName(HookSite site, int layer)
    {
        var names = _siteNames ??= HookSites.All.Select(s => Enumerable.Range(0, Layers).Select(l => HookSites.Name(s, l)).ToArray()).ToArray();
        return names[(int)site][layer];
    }

    /// <summary>Fires a block-internal hook on the first [m, <paramref name="width"/>] of a workspace buffer. Only when a hook
    /// listens: the rows are then copied into a [Batch, Seq, width] tensor and copied back after the hooks ran (so edits
    /// flow into the rest of the block); without a listener this costs one dictionary lookup, no copy.</summary>
    void FireBuffer(HookSet? hooks, HookSite site, int layer, float[] buffer, int width, TokenBatch batch)
    {
        if (hooks is null) return;
        string name = SiteName(site, layer);
        if (!hooks.Has(name)) return;
        var t = new Tensor(batch.Batch, batch.Seq, width);
        buffer.AsSpan(0, t.Length).CopyTo(t.Data);
        hooks.Fire(name, t, batch);
        t.Data.CopyTo(buffer.AsSpan(0, t.Length));
    }

    void Mlp(int layer, Block blk, TokenBatch batch, Workspace ws, HookSet? hooks)
    {
        int m = batch.Count;
        int inter = Config.Intermediate;
        if (blk.Gate is { } gate)
        {
            // down(act(gate(x)) ⊙ up(x))
            gate.Apply(ws.X, m, ws.MlpA, _tile);
            blk.Up.Apply(ws.X, m, ws.MlpB, _tile);
            var a = ws.MlpA.AsSpan(0, m * inter);
            var up = ws.MlpB.AsSpan(0, m * inter);
            switch (Config.Act)
            {
                case HiddenAct.Silu: Kernels.SiluMul(a, up, a); break;
                case HiddenAct.GeluTanh: Kernels.GeluTanhMul(a, up, a); break;
                case HiddenAct.GeluErf: Kernels.GeluErfMul(a, up, a); break;
            }
        }
        else
        {
            blk.Up.Apply(ws.X, m, ws.MlpA, _tile);
            var a = ws.MlpA.AsSpan(0, m * inter);
            switch (Config.Act)
            {
                case HiddenAct.Silu: Kernels.Silu(a, a); break;
                case HiddenAct.GeluTanh: Kernels.GeluTanh(a, a); break;
                case HiddenAct.GeluErf: Kernels.GeluErf(a, a); break;
            }
        }
        FireBuffer(hooks, HookSite.MlpPost, layer, ws.MlpA, inter, batch);
        blk.Down.Apply(ws.MlpA, m, ws.MlpOut, _tile);
    }

    void Attention(int layer, Block blk, TokenBatch batch, Workspace ws)
    {
        int m = batch.Count, T = batch.Seq;
        ProjectQkv(blk, m, batch.Positions, ws);
        long t0 = Profile.Now();
        // Query rows after the last real token (right padding) are never read: give them no keys (output 0) rather
        // than attend over the whole sequence for nothing.
        Attend(layer, ws.Q, T, 0, ws.K, ws.V, T, batch.Batch, batch.FirstReal, batch.LastReal, queryEnd: batch.LastReal, ws.Attn);
        if (Profile.Current is { } p) p.Attention += Profile.Since(t0);
        blk.O.Apply(ws.Attn, m, ws.Proj, _tile);
    }

    /// <summary>q [m, heads·hd], k and v [m, kv·hd] of the normalised input ws.X: projections, Qwen3 q/k norms, RoPE.</summary>
    void ProjectQkv(Block blk, int m, ReadOnlySpan<int> positions, Workspace ws)
    {
        var c = Config;
        int hd = c.HeadDim, nh = c.Heads, nkv = c.KvHeads;
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
            Kernels.RmsNorm(ws.Q.AsSpan(0, m * nh * hd), qn, m * nh, c.NormEps, false, ws.Q);
            Kernels.RmsNorm(ws.K.AsSpan(0, m * nkv * hd), blk.KNorm!, m * nkv, c.NormEps, false, ws.K);
        }
        if (_rope is not null)
        {
            _rope.Apply(ws.Q, m, nh, hd, positions);
            _rope.Apply(ws.K, m, nkv, hd, positions);
        }
    }

    /// <summary>Eager attention of <paramref name="rows"/> sequences laid back to back: in row b, query i (absolute index
    /// qOffset + i) sees key j iff j ≤ qOffset + i, the key is a real token (keyFirst[b] ≤ j ≤ keyLast[b]) and, on
    /// sliding layers, qOffset + i − j &lt; W; query head h reads KV head h / n_rep (repeat_kv). Scores (q·k)·scale are
    /// soft-capped (Gemma 2) and softmaxed in f32 over the visible keys only (masked keys get weight 0, as with HF's
    /// additive finfo.min mask), then weight V (<see cref="Kernels.AttendGroup"/>). Only visible keys are computed, so
    /// causal attention costs half of the full square. Queries after queryEnd[b] (right padding, never read) get 0.
    /// (row, KV head) pairs run in parallel, each with the query heads that share the KV head (no sgemm inside, style.md §2.6).</summary>
    // q, o: [rows·nq, heads·hd]; k, v: [rows·nk, kv·hd]; keyFirst, keyLast, queryEnd: [rows]
    void Attend(int layer, float[] q, int nq, int qOffset, float[] k, float[] v, int nk, int rows, int[] keyFirst, int[] keyLast, int[]? queryEnd, float[] o)
    {
        var c = Config;
        int hd = c.HeadDim, nh = c.Heads, nkv = c.KvHeads, rep = nh / nkv;
        int qW = nh * hd, kvW = nkv * hd;
        int window = c.SlidingLayers[layer] ? c.SlidingWindow : 0;
        float scale = c.AttnScale;
        float? softcap = c.AttnSoftcap;
        // Small work (a generation step: one query) runs on this thread: handing a few tiny heads to the pool costs more
        // than computing them, and far more on a busy machine.
        if ((long)rows * nq * nk * nh * hd < SequentialAttentionWork) for (int it = 0; it < rows * nkv; it++) Item(it);
        else Parallel.For(0, rows * nkv, new ParallelOptions { MaxDegreeOfParallelism = Environment.ProcessorCount }, Item);

        // One item: the rep query heads of row b that read KV head g (they share one transposed copy of the keys).
        void Item(int item)
        {
            int b = item / nkv, g = item % nkv;
            int queries = queryEnd is null ? nq : Math.Clamp(queryEnd[b] - qOffset + 1, 0, nq);
            var qSpan = q.AsSpan(b * nq * qW + g * rep * hd);
            var oSpan = o.AsSpan(b * nq * qW + g * rep * hd);
            for (int i = queries; i < nq; i++) oSpan.Slice(i * qW, rep * hd).Clear();
            if (queries == 0) return;
            var scratch = System.Buffers.ArrayPool<float>.Shared.Rent(Kernels.AttendGroupScratch(hd, nk));
            try
            {
                Kernels.AttendGroup(qSpan, qW, queries, qOffset, rep, k.AsSpan(b * nk * kvW + g * hd), v.AsSpan(b * nk * kvW + g * hd), kvW, nk,
                    hd, keyFirst[b], keyLast[b], window, scale, softcap, oSpan, scratch);
            }
            finally { System.Buffers.ArrayPool<float>.Shared.Return(scratch); }
        }
    }

    /// <summary>Multiply-adds (queries × keys × heads × head_dim) below which attention does not fan out to the thread pool.</summary>
    const long SequentialAttentionWork = 1 << 16;

    // ---------------------------------------------------------------- key/value cache (generation, one sequence)

    /// <summary>Keys and values (after norms and RoPE) of every block for the tokens seen so far, one sequence.</summary>
    public sealed class KvCache
    {
        internal readonly float[][] K, V; // per layer [capacity, kv·hd]
        internal int Length;
        internal int Capacity;
        internal KvCache(int layers) { K = new float[layers][]; V = new float[layers][]; for (int i = 0; i < layers; i++) { K[i] = []; V[i] = []; } }
        public int Tokens => Length;
    }

    public KvCache NewCache() => new(Layers);

    /// <summary>Feeds <paramref name="ids"/> (positions continue after the cached tokens) and returns the logits [Vocab] of the last one.
    /// Residual and block-site hooks (<see cref="HookNames.ResidPre"/>, <see cref="HookNames.ResidPost"/>, <see cref="HookSite"/>) fire on the new tokens only
    /// ([1, n, Hidden]; the batch's positions continue after the cache), so an edit made there (steering) reaches both the
    /// cached keys/values of later blocks and the logits, exactly as in a full forward with the same hooks.</summary>
    public float[] StepWithCache(int[] ids, KvCache cache, HookSet? hooks = null)
    {
        var c = Config;
        int n = ids.Length, start = cache.Length, total = start + n;
        int kvW = c.KvHeads * c.HeadDim;
        if (total > cache.Capacity)
        {
            int cap = Math.Max(total, Math.Max(64, cache.Capacity * 2));
            for (int i = 0; i < Layers; i++)
            {
                Array.Resize(ref cache.K[i], cap * kvW);
                Array.Resize(ref cache.V[i], cap * kvW);
            }
            cache.Capacity = cap;
        }
        var batch = TokenBatch.Continuation(ids, start);
        var positions = batch.Positions;
        var h = Embed(batch);
        hooks?.Fire(HookNames.ResidPre(0), h, batch);
        var ws = WorkspaceFor(n);
        for (int i = 0; i < Layers; i++)
        {
            if (i > 0) hooks?.Fire(HookNames.ResidPre(i), h, batch);
            var blk = _blocks[i];
            ApplyNorm(blk.AttnIn, h.Data, n, ws.X);
            ProjectQkv(blk, n, positions, ws);
            ws.K.AsSpan(0, n * kvW).CopyTo(cache.K[i].AsSpan(start * kvW));
            ws.V.AsSpan(0, n * kvW).CopyTo(cache.V[i].AsSpan(start * kvW));
            Attend(i, ws.Q, n, start, cache.K[i], cache.V[i], total, 1, [0], [total - 1], null, ws.Attn);
            blk.O.Apply(ws.Attn, n, ws.Proj, _tile);
            FinishBlock(i, blk, h, batch, ws, hooks);
            hooks?.Fire(HookNames.ResidPost(i), h, batch);
        }
        cache.Length = total;
        return LogitsAt(h, 0, n - 1);
    }
}

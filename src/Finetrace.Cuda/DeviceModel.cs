using Finetrace.Models;
using Finetrace.Tensors;
using ILGPU;
using ILGPU.Runtime;

namespace Finetrace.Cuda;

/// <summary>
/// The forward of every architecture <see cref="CausalLM"/> runs (llama, mistral, qwen2, qwen3, gemma2, gpt2, gpt_neox),
/// resident on a device: weights uploaded once, activations kept on the device between layers, only what a hook
/// listens to (and the returned residual/logits) copied back through page-locked buffers.
/// <para>Precision follows <see cref="DeviceContext.Mode"/>: <see cref="GemmMode.Bf16"/> multiplies bf16 weights by
/// activations rounded to bf16 (float32 accumulation and output); Fp32/Tf32 multiply float32 weights (bf16 checkpoints
/// widened once on the device) by float32 activations. Everything else (norms, RoPE, softmax, residual adds, the
/// attention products Q·Kᵀ and P·V) runs in float32 in every mode, as the CPU path does.</para>
/// <para>Attention: for each query head h (a host loop of Heads iterations), one strided-batched product over the
/// sequence rows b computes scores[b, h] = Q[b, :, h]·K[b, :, h / rep]ᵀ (rows are uniformly strided by seq·width in Q
/// and K, while heads are not under GQA: query head h reads KV head h / rep, which is not an affine offset of h), then
/// one <see cref="ForwardKernels.AttentionSoftmax"/> over all rows and heads, then P·V batched the same way. Score
/// buffers [rows, heads, seq, seq] are capped at <see cref="MaxScoreFloats"/>; longer batches run in row chunks.</para>
/// One forward at a time per instance (the workspace is reused).
/// </summary>
public sealed partial class DeviceModel : IForwardModel
{
    /// <summary>Cap on the attention scores buffer (floats; 1 GiB); rows beyond it run in chunks.</summary>
    public const long MaxScoreFloats = 1L << 28;

    /// <summary>Largest view handed to one elementwise kernel launch (their index is an int).</summary>
    const long ElementwiseChunk = 1L << 30;

    public ModelConfig Config { get; }
    public string Folder { get; }
    public int Layers => Config.Layers;
    public int Hidden => Config.Hidden;
    public DeviceContext Context { get; }
    public GemmMode Mode => Context.Mode;
    /// <summary>Parameters that take part in matrix products per token (all projections and the unembedding), as
    /// <see cref="CausalLM.MatmulParameters"/>.</summary>
    public long MatmulParameters { get; }
    /// <summary>Bytes of all weights held on the device.</summary>
    public long DeviceWeightBytes { get; }

    /// <summary>Whether <see cref="Forward"/> copies the logits [Batch, Seq, Vocab] to the host when all layers ran
    /// (true: the <see cref="CausalLM.Forward"/> contract). Set false when only hooks and the residual are wanted (a
    /// harvest): the unembedding is then skipped unless a hook listens to logits or ln_final, and Forward returns null
    /// logits — at 32×1024 tokens and a 256k vocabulary the copy alone would be 34 GB.</summary>
    public bool LogitsToHost { get; set; } = true;

    /// <summary>Whether a hook's tensor is copied back to the device after the hook ran, so that edits flow on (true,
    /// as <see cref="CausalLM"/>). A caller whose hooks only read (a harvest) sets false and saves one host → device copy
    /// per listened hook.</summary>
    public bool CopyHookEditsBack { get; set; } = true;

    readonly Accelerator _acc;
    readonly DeviceMatrix _embed;          // stored dtype
    readonly MemoryBuffer1D<float, Stride1D.Dense>? _wpe; // GPT-2 [P, D]
    readonly DeviceBlock[] _blocks;
    readonly DeviceNorm _finalNorm;
    readonly DeviceProjection _unembed;
    readonly Rope? _rope;
    MemoryBuffer1D<float, Stride1D.Dense>? _cos, _sin; // [ropePositions, RotaryDim]
    int _ropePositions;
    DeviceWorkspace? _ws;
    readonly PinnedStaging _staging;
    readonly string[][] _siteNames;
    int _lastRows;
    bool _logitsValid;

    sealed class DeviceBlock : IDisposable
    {
        public required DeviceNorm AttnIn, MlpIn;
        public DeviceNorm? AttnOut, MlpOut;
        public DeviceProjection? Q, K, V, Qkv, Gate;
        public required DeviceProjection O, Up, Down;
        public MemoryBuffer1D<float, Stride1D.Dense>? QNorm, KNorm;

        public void Dispose()
        {
            foreach (var d in new IDisposable?[] { AttnIn, MlpIn, AttnOut, MlpOut, Q, K, V, Qkv, Gate, O, Up, Down, QNorm, KNorm }) d?.Dispose();
        }
    }

    DeviceModel(DeviceContext ctx, ModelWeights weights)
    {
        Context = ctx; _acc = ctx.Accelerator;
        Config = weights.Config; Folder = weights.Folder;
        var c = Config;
        var w = weights.Parameters;
        _staging = new PinnedStaging(_acc);
        _siteNames = HookSites.All.Select(s => Enumerable.Range(0, c.Layers).Select(l => HookSites.Name(s, l)).ToArray()).ToArray();
        var owned = new List<IDisposable>();
        try
        {
            DeviceNorm Norm(NormNames n) => new(c.Norm, c.NormEps, DeviceUpload.Vector(_acc, w[n.Weight]), n.Bias is null ? null : DeviceUpload.Vector(_acc, w[n.Bias]));
            DeviceProjection Lin(ProjectionNames p)
            {
                var wt = w[p.Weight];
                var proj = new DeviceProjection
                {
                    In = p.StoredInOut ? wt.Rows : wt.Cols, Out = p.StoredInOut ? wt.Cols : wt.Rows, StoredInOut = p.StoredInOut,
                    W = DeviceUpload.ForMode(ctx, wt), Bias = p.Bias is null ? null : DeviceUpload.Vector(_acc, w[p.Bias]),
                };
                owned.Add(proj);
                return proj;
            }
            DeviceProjection? OptLin(ProjectionNames? p) => p is null ? null : Lin(p);

            var embedW = w[ModelLayout.EmbedName(c)];
            _embed = DeviceUpload.Stored(_acc, embedW);
            owned.Add(_embed);
            if (ModelLayout.PositionEmbedName(c) is { } wpe) { _wpe = DeviceUpload.Vector(_acc, w[wpe]); owned.Add(_wpe); }
            var layout = ModelLayout.Blocks(c);
            _blocks = new DeviceBlock[c.Layers];
            for (int i = 0; i < c.Layers; i++)
            {
                var n = layout[i];
                var blk = new DeviceBlock
                {
                    AttnIn = Norm(n.AttnIn), MlpIn = Norm(n.MlpIn),
                    AttnOut = n.AttnOut is null ? null : Norm(n.AttnOut), MlpOut = n.MlpOut is null ? null : Norm(n.MlpOut),
                    Q = OptLin(n.Q), K = OptLin(n.K), V = OptLin(n.V), Qkv = OptLin(n.Qkv), O = Lin(n.O),
                    Gate = OptLin(n.Gate), Up = Lin(n.Up), Down = Lin(n.Down),
                    QNorm = n.QNorm is null ? null : DeviceUpload.Vector(_acc, w[n.QNorm]),
                    KNorm = n.KNorm is null ? null : DeviceUpload.Vector(_acc, w[n.KNorm]),
                };
                _blocks[i] = blk;
                owned.Add(blk);
            }
            _finalNorm = Norm(ModelLayout.FinalNorm(c));
            owned.Add(_finalNorm);

            // Tied embeddings share the table when it is already in the dtype the products read.
            string unembedName = ModelLayout.UnembedName(c);
            var uw = w[unembedName];
            bool share = unembedName == ModelLayout.EmbedName(c) && (Mode == GemmMode.Bf16) == (embedW.DType == DType.BF16);
            _unembed = new DeviceProjection
            {
                In = uw.Cols, Out = uw.Rows, StoredInOut = false,
                W = share ? _embed : DeviceUpload.ForMode(ctx, uw), OwnsW = !share,
            };
            owned.Add(_unembed);
            if (c.Arch != Architecture.Gpt2) _rope = new Rope(c);

            long mp = _unembed.MatmulParameters;
            foreach (var b in _blocks)
                foreach (var l in new[] { b.Q, b.K, b.V, b.Qkv, b.O, b.Gate, b.Up, b.Down })
                    if (l is not null) mp += l.MatmulParameters;
            MatmulParameters = mp;
            long bytes = _embed.Bytes + (share ? 0 : _unembed.W.Bytes) + (_wpe?.LengthInBytes ?? 0);
            foreach (var b in _blocks)
                foreach (var l in new[] { b.Q, b.K, b.V, b.Qkv, b.O, b.Gate, b.Up, b.Down })
                    if (l is not null) bytes += l.W.Bytes;
            DeviceWeightBytes = bytes;
            _acc.Synchronize();
        }
        catch
        {
            foreach (var d in owned) d.Dispose();
            _staging.Dispose();
            throw;
        }
    }

    /// <summary>Loads a checkpoint folder exactly as <see cref="CausalLM.Load(string, string?)"/> does (same validation,
    /// same LoRA merge: <see cref="ModelWeights.Load"/>), uploads every weight once, then unmaps the files.</summary>
    public static DeviceModel Load(DeviceContext ctx, string folder, string? adapterFolder = null)
    {
        using var weights = ModelWeights.Load(folder, adapterFolder);
        return new DeviceModel(ctx, weights);
    }

    /// <summary>Builds the device model from already loaded weights (e.g. edited ones); the caller keeps ownership.</summary>
    public static DeviceModel FromWeights(DeviceContext ctx, ModelWeights weights) => new(ctx, weights);

    // ---------------------------------------------------------------- forward

    /// <summary>Embedding, blocks 0..<paramref name="stopAfterLayer"/> (default: all), then — only when all blocks ran —
    /// the final norm and logits, firing hooks with the names and order of <see cref="CausalLM.Forward"/>. Returns the
    /// residual after the last block run (copied to the host) and the logits when all blocks ran and
    /// <see cref="LogitsToHost"/> is set.</summary>
    public (Tensor Residual, Tensor? Logits) Forward(TokenBatch batch, HookSet? hooks = null, int? stopAfterLayer = null)
    {
        bool all = Run(batch, hooks, stopAfterLayer, LogitsToHost);
        var residual = new Tensor(batch.Batch, batch.Seq, Hidden);
        _staging.ToHost(ResidualOnDevice, residual.Data);
        Tensor? logits = null;
        if (all && LogitsToHost)
        {
            logits = new Tensor(batch.Batch, batch.Seq, Config.Vocab);
            _staging.ToHost(LogitsOnDevice, logits.Data);
        }
        return (residual, logits);
    }

    /// <summary>As <see cref="Forward"/> but leaves the results on the device (<see cref="ResidualOnDevice"/>,
    /// <see cref="LogitsOnDevice"/>) and returns without waiting for the device unless a hook listens. The unembedding runs
    /// when all blocks ran and <paramref name="logits"/> is true or a hook listens to logits. Returns whether all blocks ran.</summary>
    public bool Run(TokenBatch batch, HookSet? hooks = null, int? stopAfterLayer = null, bool logits = true)
    {
        int last = stopAfterLayer ?? Layers - 1;
        if (last < -1 || last >= Layers) throw new ArgumentOutOfRangeException(nameof(stopAfterLayer), $"layer {last} of {Layers}");
        var ws = Prepare(batch);
        int m = batch.Count, d = Hidden;
        var h = ws.H.View.SubView(0, (long)m * d);
        _logitsValid = false;

        Embed(batch, ws, h);
        Fire(hooks, HookNames.ResidPre(0), h, d, batch);
        for (int i = 0; i <= last; i++)
        {
            if (i > 0) Fire(hooks, HookNames.ResidPre(i), h, d, batch);
            Layer(i, batch, ws, hooks);
            Fire(hooks, HookNames.ResidPost(i), h, d, batch);
        }
        if (last < Layers - 1) return false;

        bool wantLogits = logits || (hooks?.Has(HookNames.Logits) ?? false);
        if (!wantLogits && !(hooks?.Has(HookNames.LnFinal) ?? false)) return true;
        var x = ws.X.View.SubView(0, (long)m * d);
        _finalNorm.Apply(Context, h, m, x);
        Fire(hooks, HookNames.LnFinal, x, d, batch);
        if (!wantLogits) return true;
        var lg = ws.Logits(_acc, (long)m * Config.Vocab);
        Project(_unembed, x, m, lg, ws);
        if (Config.FinalSoftcap is { } cap)
            for (long o = 0; o < lg.Length; o += ElementwiseChunk) // kernels index with int: Gemma's 32×1024×256k logits exceed it
                Context.Forward.SoftCap(lg.SubView(o, Math.Min(ElementwiseChunk, lg.Length - o)), cap);
        _logitsValid = true;
        Fire(hooks, HookNames.Logits, lg, Config.Vocab, batch);
        return true;
    }

    /// <summary>The residual [Batch·Seq, Hidden] after the last <see cref="Run"/> (on the device).</summary>
    public ArrayView<float> ResidualOnDevice => _ws is null ? throw new InvalidOperationException("no forward has run")
        : _ws.H.View.SubView(0, (long)_lastRows * Hidden);

    /// <summary>The logits [Batch·Seq, Vocab] of the last <see cref="Run"/> (on the device), when it computed them.</summary>
    public ArrayView<float> LogitsOnDevice => _ws is null || !_logitsValid ? throw new InvalidOperationException("the last forward computed no logits")
        : _ws.Logits(_acc, (long)_lastRows * Config.Vocab);

    /// <summary>Checks the batch on the host (ids in the vocabulary, GPT-2 positions within n_positions), sizes the
    /// workspace and RoPE tables, and uploads ids, positions and the padding bounds.</summary>
    DeviceWorkspace Prepare(TokenBatch batch)
    {
        var c = Config;
        int maxPos = 0;
        for (int i = 0; i < batch.Count; i++)
        {
            int id = batch.Ids[i];
            if ((uint)id >= (uint)c.Vocab)
                throw new ArgumentOutOfRangeException(nameof(batch), $"token id {id} (row {i / batch.Seq}, position {i % batch.Seq}) is outside the vocabulary of {c.Vocab}");
            maxPos = Math.Max(maxPos, batch.Positions[i]);
        }
        if (_wpe is not null && maxPos >= _wpe.Length / Hidden)
            throw new ArgumentOutOfRangeException(nameof(batch), $"position {maxPos} exceeds n_positions {_wpe.Length / Hidden}");
        if (_ws is null || _ws.Rows < batch.Count || _ws.Batch < batch.Batch)
        {
            int rows = Math.Max(batch.Count, _ws?.Rows ?? 0), b = Math.Max(batch.Batch, _ws?.Batch ?? 0);
            _ws?.Dispose();
            _ws = null;
            _ws = new DeviceWorkspace(_acc, c, rows, b, Mode == GemmMode.Bf16);
        }
        if (_rope is not null && maxPos + 1 > _ropePositions)
        {
            int n = Math.Max(maxPos + 1, Math.Max(64, _ropePositions * 2));
            var (cos, sin) = _rope.Tables(n);
            _cos?.Dispose(); _sin?.Dispose();
            _cos = _acc.Allocate1D(cos);
            _sin = _acc.Allocate1D(sin);
            _ropePositions = n;
        }
        var ws = _ws;
        ws.Ids.View.SubView(0, batch.Count).CopyFromCPU(batch.Ids);
        ws.Positions.View.SubView(0, batch.Count).CopyFromCPU(batch.Positions);
        ws.FirstReal.View.SubView(0, batch.Batch).CopyFromCPU(batch.FirstReal);
        ws.LastReal.View.SubView(0, batch.Batch).CopyFromCPU(batch.LastReal);
        _lastRows = batch.Count;
        return ws;
    }

    // hMD: [m, D]
    void Embed(TokenBatch batch, DeviceWorkspace ws, ArrayView<float> hMD)
    {
        var ids = ws.Ids.View.SubView(0, batch.Count);
        if (_embed.Bf16 is { } bits) Context.Forward.EmbedBf16(ids, bits.View, Hidden, Config.EmbedScale, hMD);
        else Context.Forward.EmbedF32(ids, _embed.F32!.View, Hidden, Config.EmbedScale, hMD);
        if (_wpe is not null) Context.Forward.AddPositions(ws.Positions.View.SubView(0, batch.Count), _wpe.View, Hidden, hMD);
    }

    /// <summary>Fires <paramref name="name"/> on the device view [m, width] when someone listens: copies it into a
    /// page-locked host tensor [Batch, Seq, width] (valid during the hook call: hooks copy what they keep), runs the
    /// hooks, copies the (possibly edited) values back unless <see cref="CopyHookEditsBack"/> is off. No listener: no copy.</summary>
    void Fire(HookSet? hooks, string name, ArrayView<float> view, int width, TokenBatch batch)
    {
        if (_capture is not null) CaptureAt(name, view);   // the harvest's copies (DeviceModel.Capture.cs)
        if (hooks is null || !hooks.Has(name)) return;
        var t = _staging.Borrow(view, batch.Batch, batch.Seq, width);
        hooks.Fire(name, t, batch);
        if (CopyHookEditsBack) _staging.Return(t, view);
    }

    string SiteName(HookSite site, int layer) => _siteNames[(int)site][layer];

    /// <summary>y = x·Wᵀ + b (or x·W + b for Conv1D) in the mode's precision.</summary>
    // xMIn: [m, In]; yMOut: [m, Out]
    void Project(DeviceProjection p, ArrayView<float> xMIn, int m, ArrayView<float> yMOut, DeviceWorkspace ws, bool xAlreadyBf16 = false)
    {
        var g = Context.Gemm;
        int ldb = p.StoredInOut ? p.Out : p.In;
        if (p.W.Bf16 is { } wb)
        {
            var xb = ws.Bf16!.View.SubView(0, (long)m * p.In);
            if (!xAlreadyBf16) Context.Forward.ToBf16(xMIn.SubView(0, (long)m * p.In), xb);
            g.GemmBf16(false, !p.StoredInOut, m, p.Out, p.In, 1f, xb, p.In, wb.View, ldb, 0f, yMOut, p.Out);
        }
        else g.Sgemm(false, !p.StoredInOut, m, p.Out, p.In, 1f, xMIn, p.In, p.W.F32!.View, ldb, 0f, yMOut, p.Out);
        if (p.Bias is { } b) Context.Forward.AddBias(yMOut.SubView(0, (long)m * p.Out), b.View, m, p.Out);
    }

    void Layer(int i, TokenBatch batch, DeviceWorkspace ws, HookSet? hooks)
    {
        var blk = _blocks[i];
        int m = batch.Count, d = Hidden;
        var h = ws.H.View.SubView(0, (long)m * d);
        var x = ws.X.View.SubView(0, (long)m * d);
        var proj = ws.Proj.View.SubView(0, (long)m * d);
        var mlpOut = ws.MlpOut.View.SubView(0, (long)m * d);
        var F = Context.Forward;

        blk.AttnIn.Apply(Context, h, m, x);
        ProjectQkv(blk, batch, ws);
        Attend(i, batch, ws);
        Project(blk.O, ws.Attn.View, m, proj, ws);

        // FinishBlock of CausalLM: residual adds, MLP, Gemma's output norms, hooks on exactly what is added
        blk.AttnOut?.Apply(Context, proj, m, proj);
        Fire(hooks, SiteName(HookSite.AttnOut, i), proj, d, batch);
        if (Config.ParallelResidual)
        {
            blk.MlpIn.Apply(Context, h, m, x);
            Mlp(i, blk, batch, ws, hooks);
            Fire(hooks, SiteName(HookSite.MlpOut, i), mlpOut, d, batch);
            F.AddParallel(mlpOut, proj, h);
            return;
        }
        F.Add(proj, h);
        Fire(hooks, SiteName(HookSite.ResidMid, i), h, d, batch);
        blk.MlpIn.Apply(Context, h, m, x);
        Mlp(i, blk, batch, ws, hooks);
        blk.MlpOut?.Apply(Context, mlpOut, m, mlpOut);
        Fire(hooks, SiteName(HookSite.MlpOut, i), mlpOut, d, batch);
        F.Add(mlpOut, h);
    }

    void Mlp(int layer, DeviceBlock blk, TokenBatch batch, DeviceWorkspace ws, HookSet? hooks)
    {
        int m = batch.Count, inter = Config.Intermediate;
        var a = ws.MlpA.View.SubView(0, (long)m * inter);
        if (blk.Gate is { } gate)
        {
            // down(act(gate(x)) ⊙ up(x)); in bf16 mode x is rounded once for both products
            var up = ws.MlpB!.View.SubView(0, (long)m * inter);
            Project(gate, ws.X.View, m, a, ws);
            Project(blk.Up, ws.X.View, m, up, ws, xAlreadyBf16: true);
            Context.Forward.GatedActivation(Config.Act, a, up, a);
        }
        else
        {
            Project(blk.Up, ws.X.View, m, a, ws);
            Context.Forward.Activation(Config.Act, a);
        }
        Fire(hooks, SiteName(HookSite.MlpPost, layer), a, inter, batch);
        Project(blk.Down, a, m, ws.MlpOut.View, ws);
    }

    /// <summary>q [m, heads·hd], k and v [m, kv·hd] of the normalised input ws.X: projections, Qwen3 q/k norms, RoPE.</summary>
    void ProjectQkv(DeviceBlock blk, TokenBatch batch, DeviceWorkspace ws)
    {
        var c = Config;
        int m = batch.Count, hd = c.HeadDim, nh = c.Heads, nkv = c.KvHeads;
        var q = ws.Q.View.SubView(0, (long)m * nh * hd);
        var k = ws.K.View.SubView(0, (long)m * nkv * hd);
        var v = ws.V.View.SubView(0, (long)m * nkv * hd);
        if (blk.Qkv is { } qkv)
        {
            var fused = ws.Fused!.View.SubView(0, (long)m * 3 * c.Hidden);
            Project(qkv, ws.X.View, m, fused, ws);
            Context.Forward.SplitQkv(fused, m, nh, hd, c.Arch == Architecture.GptNeox, q, k, v);
        }
        else
        {
            Project(blk.Q!, ws.X.View, m, q, ws);
            Project(blk.K!, ws.X.View, m, k, ws, xAlreadyBf16: true);
            Project(blk.V!, ws.X.View, m, v, ws, xAlreadyBf16: true);
        }
        if (blk.QNorm is { } qn)
        {
            Context.Kernels.RmsNorm(q, qn.View, m * nh, c.NormEps, false, q);
            Context.Kernels.RmsNorm(k, blk.KNorm!.View, m * nkv, c.NormEps, false, k);
        }
        if (_rope is not null)
        {
            var positions = ws.Positions.View.SubView(0, m);
            Context.Forward.Rope(q, m, nh, hd, _rope.RotaryDim, positions, _cos!.View, _sin!.View);
            Context.Forward.Rope(k, m, nkv, hd, _rope.RotaryDim, positions, _cos!.View, _sin!.View);
        }
    }

    /// <summary>Causal attention of the batch rows with padding bounds and the layer's sliding window, as
    /// <c>CausalLM.Attend</c> (queries after a row's last real token get 0): scores by strided-batched products per query
    /// head, <see cref="ForwardKernels.AttentionSoftmax"/>, then P·V. ws.Q/K/V → ws.Attn [m, heads·hd].</summary>
    void Attend(int layer, TokenBatch batch, DeviceWorkspace ws)
    {
        var c = Config;
        var g = Context.Gemm;
        int hd = c.HeadDim, nh = c.Heads, nkv = c.KvHeads, rep = nh / nkv, T = batch.Seq, B = batch.Batch;
        int qW = nh * hd, kvW = nkv * hd;
        long perRow = (long)nh * T * T;
        int chunk = (int)Math.Clamp(MaxScoreFloats / perRow, 1, B);
        int window = c.SlidingLayers[layer] ? c.SlidingWindow : 0;
        float softcap = c.AttnSoftcap ?? 0f;
        ArrayView<float> q = ws.Q.View, k = ws.K.View, v = ws.V.View, o = ws.Attn.View;
        for (int r0 = 0; r0 < B; r0 += chunk)
        {
            int rows = Math.Min(chunk, B - r0);
            var scores = ws.Scores(_acc, rows * perRow);
            for (int h = 0; h < nh; h++)
            {
                int kvh = h / rep;
                // scores[b, h] [T, T] = Q[b, :, h] [T, hd] · K[b, :, kvh]ᵀ, batched over rows b
                g.SgemmStridedBatched(false, true, T, T, hd, 1f,
                    q.SubView((long)r0 * T * qW + h * hd), qW, (long)T * qW,
                    k.SubView((long)r0 * T * kvW + kvh * hd), kvW, (long)T * kvW,
                    0f, scores.SubView((long)h * T * T), T, perRow, rows);
            }
            var lastReal = ws.LastReal.View.SubView(r0, rows);
            Context.Forward.AttentionSoftmax(scores, rows, nh, T, T, 0, ws.FirstReal.View.SubView(r0, rows), lastReal, lastReal,
                window, c.AttnScale, softcap);
            for (int h = 0; h < nh; h++)
            {
                int kvh = h / rep;
                // o[b, :, h] [T, hd] = P[b, h] [T, T] · V[b, :, kvh] [T, hd]
                g.SgemmStridedBatched(false, false, T, hd, T, 1f,
                    scores.SubView((long)h * T * T), T, perRow,
                    v.SubView((long)r0 * T * kvW + kvh * hd), kvW, (long)T * kvW,
                    0f, o.SubView((long)r0 * T * qW + h * hd), qW, (long)T * qW, rows);
            }
        }
    }

    public void Dispose()
    {
        _ws?.Dispose();
        _cos?.Dispose(); _sin?.Dispose();
        foreach (var b in _blocks) b.Dispose();
        _finalNorm.Dispose();
        _unembed.Dispose();
        _embed.Dispose();
        _wpe?.Dispose();
        _staging.Dispose();
    }
}

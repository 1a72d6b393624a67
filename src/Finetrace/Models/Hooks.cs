using Finetrace.Tensors;

namespace Finetrace.Models;

/// <summary>Hook names, as TransformerLens spells them (model-facts.md §11).</summary>
public static class HookNames
{
    /// <summary>Residual after the attention add of a sequential block (not fired by parallel-residual blocks, as in TransformerLens).</summary>
    public static string ResidMid(int layer) => $"blocks.{layer}.hook_resid_mid";
    /// <summary>What block <paramref name="layer"/>'s attention branch adds to the residual (Gemma 2: after post_attention_layernorm).</summary>
    public static string AttnOut(int layer) => $"blocks.{layer}.hook_attn_out";
    /// <summary>What block <paramref name="layer"/>'s MLP branch adds to the residual (Gemma 2: after post_feedforward_layernorm).</summary>
    public static string MlpOut(int layer) => $"blocks.{layer}.hook_mlp_out";
    /// <summary>The MLP's hidden activation [.., Intermediate] that the down projection reads: act(gate)·up (gated MLPs), act(fc) (GPT-2, NeoX).</summary>
    public static string MlpPost(int layer) => $"blocks.{layer}.mlp.hook_post";

    /// <summary>Input of block <paramref name="layer"/>; block 0's is the embedding output (× ν for Gemma, + wpe for GPT-2).</summary>
    public static string ResidPre(int layer) => $"blocks.{layer}.hook_resid_pre";
    /// <summary>Output of block <paramref name="layer"/> (after both residual adds, before the final norm).</summary>
    public static string ResidPost(int layer) => $"blocks.{layer}.hook_resid_post";
    public const string LnFinal = "ln_final.hook_normalized";
    public const string Logits = "logits";
}

/// <summary>A hook sees the activation [Batch, Seq, Width] and may read it or change it in place.</summary>
public delegate void HookFn(Tensor activationBTW, TokenBatch batch);

/// <summary>
/// Hooks by name. A hook runs when the forward reaches its point; edits made in place flow into the rest of the
/// forward. Helpers cover the common uses: capture, replace and add at chosen (row, position) pairs.
/// </summary>
public sealed class HookSet
{
    readonly Dictionary<string, List<HookFn>> _hooks = new(StringComparer.Ordinal);

    public bool Has(string name) => _hooks.ContainsKey(name);

    public HookSet On(string name, HookFn fn)
    {
        if (!_hooks.TryGetValue(name, out var list)) _hooks[name] = list = new List<HookFn>();
        list.Add(fn);
        return this;
    }

    /// <summary>Runs the hooks registered under <paramref name="name"/> in order (a forward model calls this at each point;
    /// public so that models outside this assembly, e.g. the device model, fire them the same way).</summary>
    public void Fire(string name, Tensor activation, TokenBatch batch)
    {
        if (_hooks.TryGetValue(name, out var list))
            foreach (var fn in list) fn(activation, batch);
    }

    /// <summary>Stores a copy of the activation in <paramref name="into"/>[name].</summary>
    public HookSet Capture(string name, IDictionary<string, Tensor> into) => On(name, (a, _) => into[name] = a.Clone());

    /// <summary>Overwrites the activation at each (row, position) with the matching row of <paramref name="valuesNW"/> [n, Width].</summary>
    public HookSet Replace(string name, IReadOnlyList<(int Row, int Pos)> at, Tensor valuesNW) => On(name, (a, _) =>
    {
        int w = a.Dim(-1);
        if (valuesNW.Length != at.Count * w) throw new ArgumentException($"hook '{name}': {valuesNW.Length} values for {at.Count} positions of width {w}");
        for (int i = 0; i < at.Count; i++)
            valuesNW.Data.AsSpan(i * w, w).CopyTo(Slot(a, at[i], name));
    });

    /// <summary>Adds coeff · vector [Width] to the activation at each (row, position).</summary>
    public HookSet Add(string name, IReadOnlyList<(int Row, int Pos)> at, float[] vectorW, float coeff = 1f) => On(name, (a, _) =>
    {
        foreach (var p in at)
        {
            var slot = Slot(a, p, name);
            if (vectorW.Length != slot.Length) throw new ArgumentException($"hook '{name}': vector of {vectorW.Length} for width {slot.Length}");
            for (int j = 0; j < slot.Length; j++) slot[j] += coeff * vectorW[j];
        }
    });

    /// <summary>Adds coeff · vector [Width] to every real (unpadded) token of every row: steering. Works the same in a
    /// full forward and in a cached generation step (where the activation holds only the new tokens).
    /// With <paramref name="fromPosition"/> &gt; 0, tokens at earlier positions (e.g. BOS at 0) are left alone.</summary>
    public HookSet AddEverywhere(string name, float[] vectorW, float coeff = 1f, int fromPosition = 0) => On(name, (a, batch) =>
    {
        int w = a.Dim(-1);
        if (vectorW.Length != w) throw new ArgumentException($"hook '{name}': vector of {vectorW.Length} for width {w}");
        int tokens = a.Length / w;
        for (int t = 0; t < tokens; t++)
            if (batch.Mask[t] != 0 && batch.Positions[t] >= fromPosition)
                System.Numerics.Tensors.TensorPrimitives.MultiplyAdd(vectorW, coeff, a.Data.AsSpan(t * w, w), a.Data.AsSpan(t * w, w));
    });

    /// <summary>Adds coeff · vector [Width] to every real token whose model position (<see cref="TokenBatch.Positions"/>:
    /// 0 = the first token of the sequence, padding not counted) is <paramref name="position"/>. Unlike
    /// <see cref="Add"/>, it finds the token by its position in the sequence, so it also works in cached generation steps,
    /// where the activation holds only the tokens fed in that step.</summary>
    public HookSet AddAtPosition(string name, int position, float[] vectorW, float coeff = 1f) => On(name, (a, batch) =>
    {
        int w = a.Dim(-1);
        if (vectorW.Length != w) throw new ArgumentException($"hook '{name}': vector of {vectorW.Length} for width {w}");
        int tokens = a.Length / w;
        for (int t = 0; t < tokens; t++)
            if (batch.Mask[t] != 0 && batch.Positions[t] == position)
                System.Numerics.Tensors.TensorPrimitives.MultiplyAdd(vectorW, coeff, a.Data.AsSpan(t * w, w), a.Data.AsSpan(t * w, w));
    });

    static Span<float> Slot(Tensor a, (int Row, int Pos) p, string name)
    {
        int rows = a.Dim(0), seq = a.Dim(1), w = a.Dim(2);
        if ((uint)p.Row >= rows || (uint)p.Pos >= seq) throw new ArgumentOutOfRangeException(nameof(p), $"hook '{name}': position ({p.Row}, {p.Pos}) outside [{rows}, {seq}]");
        return a.Data.AsSpan((p.Row * seq + p.Pos) * w, w);
    }
}

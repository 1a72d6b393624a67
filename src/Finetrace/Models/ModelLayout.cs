namespace Finetrace.Models;

/// <summary>One parameter of a checkpoint: its Hugging Face name (as <c>save_pretrained</c> writes it) and shape.</summary>
public sealed record ParameterSpec(string Name, int[] Shape, ParameterRole Role);

/// <summary>What a parameter is, so synthetic checkpoints can initialise it sensibly.</summary>
public enum ParameterRole { Matrix, Embedding, NormWeight, NormBias, Bias }

/// <summary>A norm's parameter names; <see cref="Bias"/> only for LayerNorm.</summary>
public sealed record NormNames(string Weight, string? Bias);

/// <summary>A projection's parameter names. StoredInOut: GPT-2 Conv1D, weight [in, out] (y = x·W + b); otherwise
/// nn.Linear, weight [out, in] (y = x·Wᵀ + b).</summary>
public sealed record ProjectionNames(string Weight, string? Bias, bool StoredInOut);

/// <summary>The parameters of one decoder block by role. Separate Q/K/V (llama family) or one fused Qkv (GPT-2
/// columns [Q|K|V], NeoX per head [q_h|k_h|v_h]); Gate only in gated MLPs; AttnOut/MlpOut are Gemma 2's post norms;
/// QNorm/KNorm Qwen3's per-head norms.</summary>
public sealed record BlockNames(NormNames AttnIn, NormNames? AttnOut, NormNames MlpIn, NormNames? MlpOut,
    ProjectionNames? Q, ProjectionNames? K, ProjectionNames? V, ProjectionNames? Qkv, ProjectionNames O,
    string? QNorm, string? KNorm, ProjectionNames? Gate, ProjectionNames Up, ProjectionNames Down);

/// <summary>
/// The exact tensor names and shapes of each family's checkpoint (model-facts.md §4–7). The loader checks a
/// checkpoint against this list; <c>model synth</c> writes it.
/// </summary>
public static class ModelLayout
{
    /// <summary>Leading module prefixes that hub checkpoints sometimes omit or add (model-facts.md §6).</summary>
    static readonly string[] Prefixes = ["transformer.", "model.", "gpt_neox."];

    /// <summary>A name without its leading transformer./model./gpt_neox. prefix, to match either spelling.</summary>
    public static string Normalise(string name)
    {
        foreach (var p in Prefixes)
            if (name.StartsWith(p, StringComparison.Ordinal)) return name[p.Length..];
        return name;
    }

    /// <summary>Non-parameter buffers that some checkpoints store; they are ignored.</summary>
    public static bool IsIgnoredBuffer(string name) =>
        name.EndsWith(".attn.bias", StringComparison.Ordinal) || name.EndsWith(".attn.masked_bias", StringComparison.Ordinal) ||
        name.EndsWith(".attention.bias", StringComparison.Ordinal) || name.EndsWith(".attention.masked_bias", StringComparison.Ordinal) ||
        name.EndsWith("rotary_emb.inv_freq", StringComparison.Ordinal);

    public static string EmbedName(ModelConfig c) => c.Arch switch
    {
        Architecture.Gpt2 => "transformer.wte.weight",
        Architecture.GptNeox => "gpt_neox.embed_in.weight",
        _ => "model.embed_tokens.weight",
    };

    /// <summary>The unembedding's name; for tied models the embedding's.</summary>
    public static string UnembedName(ModelConfig c) =>
        c.TiedEmbeddings ? EmbedName(c) : c.Arch == Architecture.GptNeox ? "embed_out.weight" : "lm_head.weight";

    /// <summary>GPT-2's learned position table; null for rotary models.</summary>
    public static string? PositionEmbedName(ModelConfig c) => c.Arch == Architecture.Gpt2 ? "transformer.wpe.weight" : null;

    /// <summary>The final norm before the unembedding.</summary>
    public static NormNames FinalNorm(ModelConfig c) => c.Arch switch
    {
        Architecture.Gpt2 => Norm(c, "transformer.ln_f"),
        Architecture.GptNeox => Norm(c, "gpt_neox.final_layer_norm"),
        _ => Norm(c, "model.norm"),
    };

    static NormNames Norm(ModelConfig c, string prefix) => new(prefix + ".weight", c.Norm == NormKind.LayerNorm ? prefix + ".bias" : null);

    /// <summary>Every block's parameters by role (the names <see cref="Parameters"/> lists), as the forward uses them.</summary>
    public static BlockNames[] Blocks(ModelConfig c)
    {
        var blocks = new BlockNames[c.Layers];
        ProjectionNames Lin(string prefix, bool bias, bool inOut = false) => new(prefix + ".weight", bias ? prefix + ".bias" : null, inOut);
        for (int i = 0; i < c.Layers; i++)
        {
            switch (c.Arch)
            {
                case Architecture.Gpt2:
                {
                    string p = $"transformer.h.{i}.";
                    blocks[i] = new BlockNames(Norm(c, p + "ln_1"), null, Norm(c, p + "ln_2"), null,
                        null, null, null, Lin(p + "attn.c_attn", true, true), Lin(p + "attn.c_proj", true, true),
                        null, null, null, Lin(p + "mlp.c_fc", true, true), Lin(p + "mlp.c_proj", true, true));
                    break;
                }
                case Architecture.GptNeox:
                {
                    string p = $"gpt_neox.layers.{i}.";
                    blocks[i] = new BlockNames(Norm(c, p + "input_layernorm"), null, Norm(c, p + "post_attention_layernorm"), null,
                        null, null, null, Lin(p + "attention.query_key_value", c.QkvBias), Lin(p + "attention.dense", c.OutBias),
                        null, null, null, Lin(p + "mlp.dense_h_to_4h", true), Lin(p + "mlp.dense_4h_to_h", true));
                    break;
                }
                default:
                {
                    bool gemma = c.Arch == Architecture.Gemma2;
                    string p = $"model.layers.{i}.";
                    blocks[i] = new BlockNames(
                        Norm(c, p + "input_layernorm"), gemma ? Norm(c, p + "post_attention_layernorm") : null,
                        Norm(c, gemma ? p + "pre_feedforward_layernorm" : p + "post_attention_layernorm"),
                        gemma ? Norm(c, p + "post_feedforward_layernorm") : null,
                        Lin(p + "self_attn.q_proj", c.QkvBias), Lin(p + "self_attn.k_proj", c.QkvBias), Lin(p + "self_attn.v_proj", c.QkvBias),
                        null, Lin(p + "self_attn.o_proj", c.OutBias),
                        c.QkNorm ? p + "self_attn.q_norm.weight" : null, c.QkNorm ? p + "self_attn.k_norm.weight" : null,
                        Lin(p + "mlp.gate_proj", c.MlpBias), Lin(p + "mlp.up_proj", c.MlpBias), Lin(p + "mlp.down_proj", c.MlpBias));
                    break;
                }
            }
        }
        return blocks;
    }

    public static List<ParameterSpec> Parameters(ModelConfig c)
    {
        var list = new List<ParameterSpec>();
        int d = c.Hidden, inter = c.Intermediate, v = c.Vocab;
        int qOut = c.Heads * c.HeadDim, kvOut = c.KvHeads * c.HeadDim;
        void Add(string name, ParameterRole role, params int[] shape) => list.Add(new ParameterSpec(name, shape, role));

        switch (c.Arch)
        {
            case Architecture.Gpt2:
                Add("transformer.wte.weight", ParameterRole.Embedding, v, d);
                Add("transformer.wpe.weight", ParameterRole.Embedding, c.MaxPositions, d);
                for (int i = 0; i < c.Layers; i++)
                {
                    string p = $"transformer.h.{i}.";
                    Add(p + "ln_1.weight", ParameterRole.NormWeight, d);
                    Add(p + "ln_1.bias", ParameterRole.NormBias, d);
                    Add(p + "attn.c_attn.weight", ParameterRole.Matrix, d, 3 * d); // Conv1D [in, out]
                    Add(p + "attn.c_attn.bias", ParameterRole.Bias, 3 * d);
                    Add(p + "attn.c_proj.weight", ParameterRole.Matrix, d, d);
                    Add(p + "attn.c_proj.bias", ParameterRole.Bias, d);
                    Add(p + "ln_2.weight", ParameterRole.NormWeight, d);
                    Add(p + "ln_2.bias", ParameterRole.NormBias, d);
                    Add(p + "mlp.c_fc.weight", ParameterRole.Matrix, d, inter);
                    Add(p + "mlp.c_fc.bias", ParameterRole.Bias, inter);
                    Add(p + "mlp.c_proj.weight", ParameterRole.Matrix, inter, d);
                    Add(p + "mlp.c_proj.bias", ParameterRole.Bias, d);
                }
                Add("transformer.ln_f.weight", ParameterRole.NormWeight, d);
                Add("transformer.ln_f.bias", ParameterRole.NormBias, d);
                if (!c.TiedEmbeddings) Add("lm_head.weight", ParameterRole.Matrix, v, d);
                break;

            case Architecture.GptNeox:
                Add("gpt_neox.embed_in.weight", ParameterRole.Embedding, v, d);
                for (int i = 0; i < c.Layers; i++)
                {
                    string p = $"gpt_neox.layers.{i}.";
                    Add(p + "input_layernorm.weight", ParameterRole.NormWeight, d);
                    Add(p + "input_layernorm.bias", ParameterRole.NormBias, d);
                    Add(p + "post_attention_layernorm.weight", ParameterRole.NormWeight, d);
                    Add(p + "post_attention_layernorm.bias", ParameterRole.NormBias, d);
                    Add(p + "attention.query_key_value.weight", ParameterRole.Matrix, 3 * d, d);
                    if (c.QkvBias) Add(p + "attention.query_key_value.bias", ParameterRole.Bias, 3 * d);
                    Add(p + "attention.dense.weight", ParameterRole.Matrix, d, d);
                    if (c.OutBias) Add(p + "attention.dense.bias", ParameterRole.Bias, d);
                    Add(p + "mlp.dense_h_to_4h.weight", ParameterRole.Matrix, inter, d);
                    Add(p + "mlp.dense_h_to_4h.bias", ParameterRole.Bias, inter);
                    Add(p + "mlp.dense_4h_to_h.weight", ParameterRole.Matrix, d, inter);
                    Add(p + "mlp.dense_4h_to_h.bias", ParameterRole.Bias, d);
                }
                Add("gpt_neox.final_layer_norm.weight", ParameterRole.NormWeight, d);
                Add("gpt_neox.final_layer_norm.bias", ParameterRole.NormBias, d);
                if (!c.TiedEmbeddings) Add("embed_out.weight", ParameterRole.Matrix, v, d);
                break;

            default:
                Add("model.embed_tokens.weight", ParameterRole.Embedding, v, d);
                for (int i = 0; i < c.Layers; i++)
                {
                    string p = $"model.layers.{i}.";
                    Add(p + "input_layernorm.weight", ParameterRole.NormWeight, d);
                    Add(p + "self_attn.q_proj.weight", ParameterRole.Matrix, qOut, d);
                    Add(p + "self_attn.k_proj.weight", ParameterRole.Matrix, kvOut, d);
                    Add(p + "self_attn.v_proj.weight", ParameterRole.Matrix, kvOut, d);
                    if (c.QkvBias)
                    {
                        Add(p + "self_attn.q_proj.bias", ParameterRole.Bias, qOut);
                        Add(p + "self_attn.k_proj.bias", ParameterRole.Bias, kvOut);
                        Add(p + "self_attn.v_proj.bias", ParameterRole.Bias, kvOut);
                    }
                    Add(p + "self_attn.o_proj.weight", ParameterRole.Matrix, d, qOut);
                    if (c.OutBias) Add(p + "self_attn.o_proj.bias", ParameterRole.Bias, d);
                    if (c.QkNorm)
                    {
                        Add(p + "self_attn.q_norm.weight", ParameterRole.NormWeight, c.HeadDim);
                        Add(p + "self_attn.k_norm.weight", ParameterRole.NormWeight, c.HeadDim);
                    }
                    Add(p + "post_attention_layernorm.weight", ParameterRole.NormWeight, d);
                    if (c.Arch == Architecture.Gemma2)
                    {
                        Add(p + "pre_feedforward_layernorm.weight", ParameterRole.NormWeight, d);
                        Add(p + "post_feedforward_layernorm.weight", ParameterRole.NormWeight, d);
                    }
                    Add(p + "mlp.gate_proj.weight", ParameterRole.Matrix, inter, d);
                    Add(p + "mlp.up_proj.weight", ParameterRole.Matrix, inter, d);
                    Add(p + "mlp.down_proj.weight", ParameterRole.Matrix, d, inter);
                    if (c.MlpBias)
                    {
                        Add(p + "mlp.gate_proj.bias", ParameterRole.Bias, inter);
                        Add(p + "mlp.up_proj.bias", ParameterRole.Bias, inter);
                        Add(p + "mlp.down_proj.bias", ParameterRole.Bias, d);
                    }
                }
                Add("model.norm.weight", ParameterRole.NormWeight, d);
                if (!c.TiedEmbeddings) Add("lm_head.weight", ParameterRole.Matrix, v, d);
                break;
        }
        return list;
    }
}

using System.Globalization;

namespace Finetrace.Models;

/// <summary>A per-block activation site a harvest can store and a dictionary can read (TransformerLens names).</summary>
public enum HookSite
{
    /// <summary><c>blocks.L.hook_resid_post</c>: the residual after block L (the default everywhere).</summary>
    ResidPost,
    /// <summary><c>blocks.L.hook_resid_pre</c>: the residual entering block L (block 0: the embedding output).</summary>
    ResidPre,
    /// <summary><c>blocks.L.hook_resid_mid</c>: the residual between the attention and MLP adds (sequential blocks only).</summary>
    ResidMid,
    /// <summary><c>blocks.L.hook_attn_out</c>: what the attention branch adds to the residual.</summary>
    AttnOut,
    /// <summary><c>blocks.L.hook_mlp_out</c>: what the MLP branch adds to the residual.</summary>
    MlpOut,
    /// <summary><c>blocks.L.mlp.hook_post</c>: the MLP hidden activation after the nonlinearity (width = intermediate size).</summary>
    MlpPost,
}

/// <summary>A site name that is none of <see cref="HookSite"/>'s; <see cref="Text"/> is what was given.</summary>
public sealed class HookSiteException(string text)
    : SettingException("Site", text, $"not a block site; known: {string.Join(", ", HookSites.All.Select(HookSites.ShortName))} (or their TransformerLens names, e.g. {HookSites.Template(HookSite.MlpOut)})")
{
    public string Text { get; } = text;
}

/// <summary>A site the model cannot provide, e.g. <c>hook_resid_mid</c> in a parallel-residual (GPT-NeoX) block.</summary>
public sealed class SiteUnavailableException(HookSite site, string modelType, string why)
    : InvalidOperationException($"{HookSites.Template(site)} is not available for {modelType}: {why}")
{
    public HookSite Site { get; } = site;
    public string ModelType { get; } = modelType;
}

/// <summary>Names, parsing and widths of <see cref="HookSite"/>.</summary>
public static class HookSites
{
    public static IReadOnlyList<HookSite> All { get; } = Enum.GetValues<HookSite>();

    /// <summary>The TransformerLens hook name at <paramref name="layer"/>.</summary>
    public static string Name(HookSite site, int layer) => site switch
    {
        HookSite.ResidPost => HookNames.ResidPost(layer),
        HookSite.ResidPre => HookNames.ResidPre(layer),
        HookSite.ResidMid => HookNames.ResidMid(layer),
        HookSite.AttnOut => HookNames.AttnOut(layer),
        HookSite.MlpOut => HookNames.MlpOut(layer),
        _ => HookNames.MlpPost(layer),
    };

    /// <summary>The name with <c>{L}</c> for the layer, as a store manifest records it (e.g. <c>blocks.{L}.hook_mlp_out</c>).</summary>
    public static string Template(HookSite site) => Name(site, 0).Replace("blocks.0.", "blocks.{L}.", StringComparison.Ordinal);

    /// <summary>The short spelling: resid_post, resid_pre, resid_mid, attn_out, mlp_out, mlp_post.</summary>
    public static string ShortName(HookSite site) => site switch
    {
        HookSite.ResidPost => "resid_post",
        HookSite.ResidPre => "resid_pre",
        HookSite.ResidMid => "resid_mid",
        HookSite.AttnOut => "attn_out",
        HookSite.MlpOut => "mlp_out",
        _ => "mlp_post",
    };

    /// <summary>What the site holds, in words (for sidecars and reports).</summary>
    public static string Meaning(HookSite site) => site switch
    {
        HookSite.ResidPost => "residual stream after decoder block L",
        HookSite.ResidPre => "residual stream entering decoder block L",
        HookSite.ResidMid => "residual stream between the attention and MLP adds of block L",
        HookSite.AttnOut => "what block L's attention branch adds to the residual stream",
        HookSite.MlpOut => "what block L's MLP branch adds to the residual stream",
        _ => "block L's MLP hidden activation after the nonlinearity (input of the down projection)",
    };

    /// <summary>Whether the site is the residual stream itself (where a spliced reconstruction replaces the whole stream).</summary>
    public static bool IsResidual(HookSite site) => site is HookSite.ResidPost or HookSite.ResidPre or HookSite.ResidMid;

    /// <summary>Reads a short name (<c>mlp_out</c>), a TransformerLens name with or without the block prefix
    /// (<c>hook_mlp_out</c>, <c>blocks.3.hook_mlp_out</c>, <c>blocks.{L}.hook_mlp_out</c>, <c>mlp.hook_post</c>), case-insensitively.</summary>
    public static HookSite Parse(string text) => TryParse(text, out var s, out _) ? s : throw new HookSiteException(text);

    /// <summary>As <see cref="Parse"/>; <paramref name="layer"/> is the layer a concrete name carries (null for a template or short name).</summary>
    public static bool TryParse(string? text, out HookSite site, out int? layer)
    {
        site = HookSite.ResidPost; layer = null;
        if (string.IsNullOrWhiteSpace(text)) return false;
        string s = text.Trim().ToLowerInvariant();
        if (s.StartsWith("blocks.", StringComparison.Ordinal))
        {
            int dot = s.IndexOf('.', 7);
            if (dot < 0) return false;
            string l = s[7..dot];
            if (l != "{l}")
            {
                if (!int.TryParse(l, NumberStyles.None, CultureInfo.InvariantCulture, out int li)) return false;
                layer = li;
            }
            s = s[(dot + 1)..];
        }
        if (s.StartsWith("hook_", StringComparison.Ordinal)) s = s[5..];
        if (s == "mlp.hook_post") s = "mlp_post";
        foreach (var k in All)
            if (ShortName(k) == s) { site = k; return true; }
        layer = null;
        return false;
    }

    /// <summary>Width of the site's activation for <paramref name="c"/>: the intermediate size for <see cref="HookSite.MlpPost"/>, else hidden.</summary>
    public static int Width(HookSite site, ModelConfig c) => site == HookSite.MlpPost ? c.Intermediate : c.Hidden;

    /// <summary>Throws <see cref="SiteUnavailableException"/> when <paramref name="c"/>'s blocks have no such site.</summary>
    public static void Check(HookSite site, ModelConfig c)
    {
        if (site == HookSite.ResidMid && c.ParallelResidual)
            throw new SiteUnavailableException(site, c.ModelType, "its blocks add attention and MLP in parallel, so no residual lies between them (TransformerLens has no hook_resid_mid there either); use attn_out or mlp_out");
    }
}

using System.Text;
using Finetrace.Diffing;
using Finetrace.Models;

namespace Finetrace.Pipeline;

/// <summary>One stage's rough cost: seconds on this machine, peak memory and disk it adds.</summary>
public sealed record StageEstimate(string Stage, double Seconds, long MemoryBytes, long DiskBytes);

/// <summary>
/// Rough cost of a diff plan on this machine, from FLOP and byte counts: a forward costs 2·params FLOPs per token,
/// dictionary training 6·M·D·F per token (forward and backward, dense upper bound for the encoder), at an assumed
/// 4 GFLOP/s per core (measured on stories260K's harvest), plus 0.5 ms per generated token of per-step overhead of sustained throughput for these small-batch kernels. Memory counts model weights (float32),
/// dictionary weights with Adam moments (×4), and one harvest batch; disk counts the store (tokens · 2 models · D · dtype).
/// The plan fits when memory stays under the memory available to the process and disk under the free space.
/// </summary>
public sealed record DiffEstimate(IReadOnlyList<StageEstimate> Stages, long AvailableMemory, long FreeDisk, IReadOnlyList<string> Problems)
{
    public bool Fits => Problems.Count == 0;

    public static DiffEstimate For(ModelPairSpec models, DiffConfig c, string outDir)
    {
        var cfg = ModelConfig.Load(models.Base);
        double flops = Environment.ProcessorCount * 4e9;
        long D = cfg.Hidden;
        long layerParams = 4 * D * D + 3 * D * cfg.Intermediate;
        long paramsCount = cfg.Layers * layerParams + (long)cfg.Vocab * D;
        long modelBytes = 4 * paramsCount;
        int bytesPer = c.Harvest.Dtype == "f32" ? 4 : 2;
        var st = new List<StageEstimate>();
        long genTokens = c.Data.Sources.Count == 0 ? 2L * c.Data.GeneratedSamples * c.Data.GeneratedTokens + (long)c.Data.ChatConversations * c.Data.ChatReplyTokens : 0;
        st.Add(new("data", genTokens * (2.0 * paramsCount / flops + 5e-4), 2 * modelBytes, genTokens * 8));
        long store = c.Harvest.Tokens * 2 * D * bytesPer;
        st.Add(new("harvest", c.Harvest.Tokens * 2 * 2.0 * paramsCount / flops, 2 * modelBytes + (long)c.Harvest.Batch * c.Harvest.Context * D * 4 * 8, store));
        foreach (var d in c.Dictionaries)
        {
            long M = d.Kind == "diff-sae" ? 1 : 2;
            long tokens = d.Tokens > 0 ? d.Tokens : c.Harvest.Tokens;
            long w = 2 * M * D * d.DictSize;
            st.Add(new($"{d.Name}/dictionary", tokens * 6.0 * w / flops, 4 * 4 * w + (long)d.Batch * d.DictSize * 4 * 2, 2 * 4 * w));
            st.Add(new($"{d.Name}/analyses", c.Harvest.Tokens * 2.0 * w * 3 / flops + c.Analysis.CausalSequences * 128L * 20 * 2.0 * paramsCount / flops,
                4 * w + 2 * modelBytes, (long)d.DictSize * 1024));
        }
        st.Add(new("readers", (c.Readers.Samples * 2L + c.Readers.AdlSamples) * c.Readers.Context * 2 * 2.0 * paramsCount / flops, 2 * modelBytes + (long)c.Readers.Context * cfg.Vocab * 4 * 16, 1 << 20));
        var amp = c.Amplification;
        if (amp.Alphas.Count > 0)
        {
            // per prompt and sample: base and fine-tune alone, then each α runs both models on every token
            long prompts = PipelineAmplification.TextPrompts(amp).Count + (PipelineData.HasChatTemplate(models.FineTuned) ? PipelineAmplification.ChatPrompts(amp).Count : 0);
            long ampTokens = prompts * amp.SamplesPerPrompt * amp.MaxNewTokens * (2L + 2L * amp.Alphas.Count);
            st.Add(new("amplification", ampTokens * (2.0 * paramsCount / flops + 5e-4), 2 * modelBytes, ampTokens * 8));
        }
        long avail = GC.GetGCMemoryInfo().TotalAvailableMemoryBytes;
        string full = Path.GetFullPath(outDir);
        long free;
        try { free = new DriveInfo(Path.GetPathRoot(full)!).AvailableFreeSpace; } catch (Exception e) when (e is IOException or ArgumentException or UnauthorizedAccessException) { free = long.MaxValue; }
        var problems = new List<string>();
        long peak = st.Max(s => s.MemoryBytes), disk = st.Sum(s => s.DiskBytes);
        if (peak > avail * 0.8)
            problems.Add($"peak memory {Human(peak)} exceeds 80% of the {Human(avail)} available: lower dictionaries[].dict_size or dictionaries[].batch, or harvest.batch");
        if (disk > free * 0.9)
            problems.Add($"the results need {Human(disk)} of disk, {Human(free)} is free: lower harvest.tokens or use harvest.dtype bf16");
        return new DiffEstimate(st, avail, free, problems);
    }

    public string ToText()
    {
        var sb = new StringBuilder();
        sb.AppendLine($"{"stage",-28} {"time",10} {"memory",10} {"disk",10}");
        foreach (var s in Stages) sb.AppendLine($"{s.Stage,-28} {Duration(s.Seconds),10} {Human(s.MemoryBytes),10} {Human(s.DiskBytes),10}");
        sb.AppendLine($"{"total",-28} {Duration(Stages.Sum(s => s.Seconds)),10} {Human(Stages.Max(s => s.MemoryBytes)),10} {Human(Stages.Sum(s => s.DiskBytes)),10}");
        sb.AppendLine($"this machine: {Environment.ProcessorCount} cores, {Human(AvailableMemory)} memory available, {Human(FreeDisk)} free disk (estimates are rough: ±3×)");
        foreach (var p in Problems) sb.AppendLine("does not fit: " + p);
        return sb.ToString();
    }

    static string Duration(double s) => s < 60 ? $"{s:F0} s" : s < 3600 ? $"{s / 60:F1} min" : $"{s / 3600:F1} h";

    public static string Human(long b) => b switch
    {
        < 1 << 10 => $"{b} B", < 1 << 20 => $"{b / 1024.0:F1} KiB", < 1 << 30 => $"{b / 1048576.0:F1} MiB", _ => $"{b / 1073741824.0:F1} GiB",
    };
}

using Finetrace.Text.Chat;
using Finetrace.Text.Datasets;
using Finetrace.Text.Tokenization;

namespace Finetrace.Training;

/// <summary>One tokenized training sample. <see cref="LossMask"/> (same length as <see cref="Ids"/>, 1 = the model is
/// trained to predict this token) is null when every token counts.</summary>
public sealed record LmExample(int[] Ids, byte[]? LossMask = null)
{
    public int Length => Ids.Length;
}

/// <summary>Training samples from the data formats the rest of Finetrace reads (<see cref="DataSourceSpec"/>): plain
/// text (one sample per blank-line-separated block, or per file) or chat JSONL rendered with the model's chat
/// template.</summary>
public static class LmData
{
    /// <summary>Every sample of <paramref name="spec"/>, encoded. For chats with <paramref name="assistantOnly"/>, the
    /// loss covers what the model writes after a generation prompt (<see cref="AssistantMask"/>: the assistant's tokens,
    /// a whitespace token the template puts before them, and the end-of-sequence token that closes each assistant turn,
    /// so the model learns to stop); otherwise every token counts. Skipped samples (empty, roles not alternating) are counted in
    /// <paramref name="skipped"/>.</summary>
    public static List<LmExample> Load(DataSourceSpec spec, ISampleEncoder encoder, bool assistantOnly, IReadOnlyCollection<int> eosIds, SkipCounts skipped)
    {
        var list = new List<LmExample>();
        var separators = assistantOnly && encoder is ModelSampleEncoder m ? WhitespaceTokens(m.Tokenizer) : null;
        foreach (var raw in RawSamples.Read(spec, skipped))
        {
            if (raw.Messages is { } messages)
            {
                EncodedSample enc;
                try { enc = encoder.EncodeChat(0, raw.Index, messages); }
                catch (TemplateException) { skipped.Add(SkipCounts.TemplateError); continue; }
                list.Add(new LmExample(enc.Ids, assistantOnly ? AssistantMask(enc.Ids, enc.Roles!, eosIds, separators) : null));
            }
            else
            {
                var enc = encoder.EncodeText(0, raw.Index, raw.Text!);
                if (assistantOnly)
                    throw new InvalidDataException($"{spec.Path}: assistant-only training needs chat data (JSONL with messages); this source is plain text");
                list.Add(new LmExample(enc.Ids));
            }
        }
        if (list.Count == 0) throw new InvalidDataException($"{spec.Path}: no usable samples (skipped: {skipped})");
        return list;
    }

    /// <summary>One sample per non-empty line of a plain text file (each encoded with the tokenizer's special tokens).</summary>
    public static List<LmExample> LoadLines(string path, ISampleEncoder encoder)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"{path}: no such file", path);
        var list = new List<LmExample>();
        long index = 0;
        foreach (var line in File.ReadLines(path))
        {
            if (string.IsNullOrWhiteSpace(line)) continue;
            list.Add(new LmExample(encoder.EncodeText(0, index++, line).Ids));
        }
        if (list.Count == 0) throw new InvalidDataException($"{path}: no non-empty lines");
        return list;
    }

    /// <summary>1 on assistant tokens, on an end-of-sequence token right after an assistant token, and on a token of
    /// <paramref name="separatorIds"/> (whitespace only, see <see cref="WhitespaceTokens"/>) right before an assistant
    /// token. The last is the separator a template writes between its generation prompt and the answer ("Assistant:"
    /// then " " then the content): after a generation prompt that ends before it, the model writes it itself, so it
    /// must be trained. Where the tokenizer merges the space into the answer's first word ("▁Sorry") nothing changes;
    /// where it does not ("▁" then "Hello,"), leaving it untrained left the model unable ever to start such an answer.</summary>
    public static byte[] AssistantMask(int[] ids, TokenRole[] roles, IReadOnlyCollection<int> eosIds, IReadOnlySet<int>? separatorIds = null)
    {
        var mask = new byte[ids.Length];
        for (int t = 0; t < ids.Length; t++)
            mask[t] = roles[t] == TokenRole.Assistant
                || (t > 0 && roles[t - 1] == TokenRole.Assistant && eosIds.Contains(ids[t]))
                || (separatorIds is not null && roles[t] == TokenRole.Template && t + 1 < ids.Length && roles[t + 1] == TokenRole.Assistant && separatorIds.Contains(ids[t]))
                ? (byte)1 : (byte)0;
        return mask;
    }

    /// <summary>The ids of ordinary tokens that read as whitespace only inside running text (e.g. a lone "▁", "\n").</summary>
    public static HashSet<int> WhitespaceTokens(Tokenizer tokenizer)
    {
        var set = new HashSet<int>();
        for (int id = 0; id < tokenizer.VocabSize; id++)
        {
            if (tokenizer.IsSpecial(id) || tokenizer.IdToToken(id) is null) continue;
            string s = tokenizer.DecodeToken(id);
            if (s.Length > 0 && s.All(char.IsWhiteSpace)) set.Add(id);
        }
        return set;
    }
}

/// <summary>
/// Samples packed into rows of a fixed length: the samples are concatenated in order (each keeps the BOS its
/// tokenizer adds, which separates them) and cut every <c>seqLen</c> tokens; the last row may be shorter (it is
/// right-padded in its batch). Row position t is trained to predict the token at t + 1 when the loss mask counts it.
/// Attention crosses sample boundaries inside a row, as in standard packed pre-training.
/// </summary>
public sealed class PackedRows
{
    public int SeqLen { get; }
    public IReadOnlyList<int[]> Ids => _ids;
    public IReadOnlyList<byte[]> LossMasks => _masks;
    public int Count => _ids.Count;
    public long Tokens { get; }
    /// <summary>Target tokens the loss counts (over all rows).</summary>
    public long CountedTargets { get; }
    readonly List<int[]> _ids = new();
    readonly List<byte[]> _masks = new();

    public PackedRows(IReadOnlyList<LmExample> examples, int seqLen)
    {
        if (seqLen < 2) throw new ArgumentOutOfRangeException(nameof(seqLen), $"sequence length {seqLen} must be at least 2");
        SeqLen = seqLen;
        var ids = new List<int>(seqLen);
        var mask = new List<byte>(seqLen);
        void Flush()
        {
            if (ids.Count >= 2) { _ids.Add(ids.ToArray()); _masks.Add(mask.ToArray()); }
            ids.Clear(); mask.Clear();
        }
        foreach (var ex in examples)
            for (int t = 0; t < ex.Ids.Length; t++)
            {
                ids.Add(ex.Ids[t]);
                mask.Add(ex.LossMask is null ? (byte)1 : ex.LossMask[t]);
                if (ids.Count == seqLen) Flush();
            }
        Flush();
        if (_ids.Count == 0) throw new InvalidDataException("the training data holds fewer than 2 tokens");
        Tokens = _ids.Sum(r => (long)r.Length);
        long counted = 0;
        foreach (var m in _masks) for (int t = 1; t < m.Length; t++) counted += m[t];
        CountedTargets = counted;
        if (counted == 0) throw new InvalidDataException("the loss mask counts no token of the training data (no assistant tokens?)");
    }
}

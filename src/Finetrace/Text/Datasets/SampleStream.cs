using Finetrace.Text.Chat;
using Finetrace.Text.Tokenization;

namespace Finetrace.Text.Datasets;

/// <summary>A tokenized sample. <see cref="Roles"/> is per token for chat samples (from the chat formatter) and null
/// for plain text, where only the first <see cref="BosTokens"/> tokens are BOS.</summary>
public sealed record EncodedSample(int Source, long Index, int[] Ids, TokenRole[]? Roles, int BosTokens);

/// <summary>Turns raw samples into token ids (and roles for chats). The model side implements it with a tokenizer and
/// chat formatter (<see cref="ModelSampleEncoder"/>); tests can supply their own.</summary>
public interface ISampleEncoder
{
    /// <summary>Plain text with the special tokens the tokenizer adds (BOS when tokenizer_config says so).</summary>
    EncodedSample EncodeText(int source, long index, string text);
    /// <summary>A conversation rendered with the chat template and tokenized; throws <see cref="TemplateException"/>
    /// when the template raises.</summary>
    EncodedSample EncodeChat(int source, long index, IReadOnlyList<ChatMessage> messages);
}

/// <summary>Encodes with a model's tokenizer and (for chats) its chat formatter.</summary>
public sealed class ModelSampleEncoder(Tokenizer tokenizer, ChatFormatter? chat, Exception? chatError = null) : ISampleEncoder
{
    public Tokenizer Tokenizer { get; } = tokenizer;
    public ChatFormatter? Chat { get; } = chat;

    /// <summary>The tokenizer and chat template of a model folder. A missing or broken chat template is reported
    /// only when a chat sample needs it.</summary>
    public static ModelSampleEncoder FromFolder(string dir)
    {
        var tok = Tokenizer.FromFolder(dir);
        try { return new ModelSampleEncoder(tok, new ChatFormatter(tok, ChatTemplate.FromFolder(dir))); }
        catch (InvalidDataException e) { return new ModelSampleEncoder(tok, null, e); }
    }

    public EncodedSample EncodeText(int source, long index, string text)
    {
        var ids = Tokenizer.Encode(text, addSpecialTokens: true).Ids;
        int bos = 0;
        if (Tokenizer.BosId is int b) while (bos < ids.Length && ids[bos] == b) bos++;
        return new EncodedSample(source, index, ids, null, bos);
    }

    public EncodedSample EncodeChat(int source, long index, IReadOnlyList<ChatMessage> messages)
    {
        if (Chat is null) throw new InvalidOperationException($"chat data cannot be rendered: {chatError?.Message ?? "no chat formatter"}");
        var enc = Chat.Format(messages);
        int bos = enc.Roles.TakeWhile(r => r == TokenRole.Bos).Count();
        return new EncodedSample(source, index, enc.Ids, enc.Roles, bos);
    }
}

/// <summary>
/// The samples of several sources, tokenized, truncated to the context length and mixed in the stated proportions
/// of tokens: the next sample always comes from the source furthest below its share (tokens_s / weight_s smallest,
/// lowest index on ties). A source stops at its end, its max samples or its max tokens (the last sample truncated to
/// fit); the others go on. The order is a pure function of the inputs, so a resumed harvest can skip what it stored.
/// </summary>
public sealed class SampleStream
{
    public IReadOnlyList<DataSourceSpec> Sources { get; }
    public int ContextLength { get; }
    public SkipCounts[] Skipped { get; }
    public long[] Tokens { get; }
    public long[] Samples { get; }
    readonly ISampleEncoder _encoder;

    public SampleStream(IReadOnlyList<DataSourceSpec> sources, ISampleEncoder encoder, int contextLength)
    {
        if (sources.Count == 0) throw new ArgumentException("no data sources");
        if (contextLength < 1) throw new ArgumentException($"context length must be positive, got {contextLength}");
        Sources = sources; _encoder = encoder; ContextLength = contextLength;
        Skipped = sources.Select(_ => new SkipCounts()).ToArray();
        Tokens = new long[sources.Count];
        Samples = new long[sources.Count];
    }

    /// <summary>Normalised proportions of the sources.</summary>
    public double[] Proportions()
    {
        double sum = Sources.Sum(s => s.Weight);
        return Sources.Select(s => s.Weight / sum).ToArray();
    }

    public IEnumerable<EncodedSample> Read()
    {
        int n = Sources.Count;
        var readers = new IEnumerator<RawSample>?[n];
        for (int i = 0; i < n; i++) readers[i] = RawSamples.Read(Sources[i], Skipped[i]).GetEnumerator();
        try
        {
            while (true)
            {
                int pick = -1;
                double best = double.PositiveInfinity;
                for (int i = 0; i < n; i++)
                {
                    if (readers[i] is null) continue;
                    double r = Tokens[i] / Sources[i].Weight;
                    if (r < best) { best = r; pick = i; }
                }
                if (pick < 0) yield break;
                var src = Sources[pick];
                var reader = readers[pick]!;
                if (Samples[pick] >= src.MaxSamples || Tokens[pick] >= src.MaxTokens || !reader.MoveNext())
                {
                    reader.Dispose();
                    readers[pick] = null;
                    continue;
                }
                var raw = reader.Current;
                EncodedSample enc;
                if (raw.Messages is { } msgs)
                {
                    try { enc = _encoder.EncodeChat(pick, raw.Index, msgs); }
                    catch (TemplateException) { Skipped[pick].Add(SkipCounts.TemplateError); continue; }
                }
                else enc = _encoder.EncodeText(pick, raw.Index, raw.Text!);
                long room = Math.Min(ContextLength, src.MaxTokens - Tokens[pick]);
                if (enc.Ids.Length > room)
                    enc = enc with { Ids = enc.Ids[..(int)room], Roles = enc.Roles?[..(int)room], BosTokens = (int)Math.Min(enc.BosTokens, room) };
                if (enc.Ids.Length == 0) { Skipped[pick].Add(SkipCounts.Empty); continue; }
                Tokens[pick] += enc.Ids.Length;
                Samples[pick]++;
                yield return enc;
            }
        }
        finally
        {
            foreach (var r in readers) r?.Dispose();
        }
    }
}

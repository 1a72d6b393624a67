namespace Finetrace.Text.Tokenization;

/// <summary>Options of <see cref="BpeTrainer.Train"/>.</summary>
/// <param name="VocabSize">Target size of the whole vocabulary: 3 specials + 256 byte tokens + characters + merges.</param>
/// <param name="MinPairCount">A pair must occur at least this often (weighted by word counts) to be merged.</param>
/// <param name="MinCharCount">A character needs this many occurrences to get its own token; rarer ones fall back to bytes.</param>
public sealed record BpeTrainerOptions(int VocabSize = 512, int MinPairCount = 2, int MinCharCount = 1);

/// <summary>
/// Learns a SentencePiece-style byte-fallback BPE (the layout of Llama 2's and stories260K's tokenizer.json) from a
/// corpus. The text is normalised as the written tokenizer will normalise it (prepend '▁', spaces → '▁') and cut into
/// words before every '▁', so no merge spans two words. Start symbols are the corpus's characters (rarer than
/// <see cref="BpeTrainerOptions.MinCharCount"/>: their UTF-8 byte tokens, which never merge). Then, repeatedly, the
/// most frequent adjacent pair (weighted by word counts; ties: the ordinally smallest left string, then right
/// string) becomes a merge and is applied left to right to every word, until the vocabulary is full or no pair
/// occurs <see cref="BpeTrainerOptions.MinPairCount"/> times. A pair whose concatenation is already a token is never
/// merged, so each token has exactly one merge and applying the merges by rank (what the Hugging Face BPE model
/// does) reproduces the training segmentation of every training word exactly.
/// </summary>
public static class BpeTrainer
{
    public const string Unk = "<unk>", Bos = "<s>", Eos = "</s>";
    const char Meta = '\u2581';

    /// <summary>Trains on <paramref name="texts"/> (plain text without special tokens; a chat transcript should be
    /// passed as the pieces between its special tokens, as the tokenizer will see them).</summary>
    public static TrainedBpe Train(IEnumerable<string> texts, BpeTrainerOptions options, CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(texts);
        if (options.VocabSize < 3 + 256 + 1)
            throw new ArgumentOutOfRangeException(nameof(options), $"vocabulary size {options.VocabSize} is below the 260 tokens of specials, bytes and '▁'");
        // 1. Word counts.
        var wordCounts = new Dictionary<string, long>(StringComparer.Ordinal);
        foreach (var text in texts)
        {
            if (text.Length == 0) continue;
            foreach (var w in Words(Normalize(text))) wordCounts[w] = wordCounts.GetValueOrDefault(w) + 1;
        }
        // 2. Characters by frequency (ties: ordinal), then the vocabulary's fixed head.
        var charCounts = new Dictionary<string, long>(StringComparer.Ordinal);
        foreach (var (w, c) in wordCounts)
            foreach (var r in w.EnumerateRunes()) { string s = r.ToString(); charCounts[s] = charCounts.GetValueOrDefault(s) + c; }
        var vocab = new List<string> { Unk, Bos, Eos };
        for (int b = 0; b < 256; b++) vocab.Add(ByteToken((byte)b));
        var reserved = new HashSet<string>(vocab, StringComparer.Ordinal);
        var ids = new Dictionary<string, int>(StringComparer.Ordinal);
        for (int i = 0; i < vocab.Count; i++) ids[vocab[i]] = i;
        var chars = charCounts.Where(kv => kv.Value >= options.MinCharCount || kv.Key == Meta.ToString())
            .OrderByDescending(kv => kv.Value).ThenBy(kv => kv.Key, StringComparer.Ordinal).Select(kv => kv.Key).ToList();
        int charRoom = options.VocabSize - vocab.Count;
        if (chars.Count > charRoom)
        {
            // Keep '▁' and the most frequent characters; the rest fall back to bytes.
            chars = chars.Where(c => c == Meta.ToString()).Concat(chars.Where(c => c != Meta.ToString())).Take(charRoom).ToList();
        }
        foreach (var c in chars) { ids[c] = vocab.Count; vocab.Add(c); }
        var mergeable = new bool[options.VocabSize];   // byte tokens and specials never merge
        for (int i = 3 + 256; i < vocab.Count; i++) mergeable[i] = true;

        // 3. Words as symbol-id sequences.
        var words = new List<(List<int> Symbols, long Count)>(wordCounts.Count);
        Span<byte> utf8 = stackalloc byte[4];
        foreach (var (w, c) in wordCounts.OrderBy(kv => kv.Key, StringComparer.Ordinal))
        {
            var symbols = new List<int>(w.Length);
            foreach (var r in w.EnumerateRunes())
            {
                if (ids.TryGetValue(r.ToString(), out int id) && id >= 3 + 256) { symbols.Add(id); continue; }
                int n = r.EncodeToUtf8(utf8);
                for (int k = 0; k < n; k++) symbols.Add(3 + utf8[k]);
            }
            words.Add((symbols, c));
        }

        // 4. Merges.
        var merges = new List<(string Left, string Right)>();
        var forbidden = new HashSet<(int, int)>();
        while (vocab.Count < options.VocabSize)
        {
            cancel.ThrowIfCancellationRequested();
            var pairCounts = new Dictionary<(int, int), long>();
            foreach (var (symbols, count) in words)
                for (int i = 0; i + 1 < symbols.Count; i++)
                {
                    int a = symbols[i], b = symbols[i + 1];
                    if (!mergeable[a] || !mergeable[b]) continue;
                    var key = (a, b);
                    pairCounts[key] = pairCounts.GetValueOrDefault(key) + count;
                }
            (int A, int B) best = (-1, -1);
            long bestCount = 0;
            foreach (var (pair, count) in pairCounts)
            {
                if (count < options.MinPairCount || forbidden.Contains(pair)) continue;
                if (count > bestCount || (count == bestCount && ComparePairs(vocab, pair, best) < 0)) { best = pair; bestCount = count; }
            }
            if (best.A < 0) break;
            string merged = vocab[best.A] + vocab[best.B];
            if (ids.ContainsKey(merged) || reserved.Contains(merged)) { forbidden.Add(best); continue; }
            int newId = vocab.Count;
            ids[merged] = newId; vocab.Add(merged);
            mergeable[newId] = true;
            merges.Add((vocab[best.A], vocab[best.B]));
            foreach (var (symbols, _) in words) ApplyMerge(symbols, best.A, best.B, newId);
        }
        var segmentation = new Dictionary<string, int[]>(StringComparer.Ordinal);
        int wi = 0;
        foreach (var (w, _) in wordCounts.OrderBy(kv => kv.Key, StringComparer.Ordinal)) segmentation[w] = words[wi++].Symbols.ToArray();
        return new TrainedBpe(vocab, merges, segmentation);
    }

    static int ComparePairs(List<string> vocab, (int A, int B) x, (int A, int B) y)
    {
        if (y.A < 0) return -1;
        int c = string.CompareOrdinal(vocab[x.A], vocab[y.A]);
        return c != 0 ? c : string.CompareOrdinal(vocab[x.B], vocab[y.B]);
    }

    /// <summary>Replaces every non-overlapping occurrence of (a, b), scanning left to right, by <paramref name="merged"/>.</summary>
    static void ApplyMerge(List<int> symbols, int a, int b, int merged)
    {
        int w = 0;
        for (int r = 0; r < symbols.Count; r++)
        {
            if (r + 1 < symbols.Count && symbols[r] == a && symbols[r + 1] == b) { symbols[w++] = merged; r++; }
            else symbols[w++] = symbols[r];
        }
        symbols.RemoveRange(w, symbols.Count - w);
    }

    /// <summary>The written tokenizer's normaliser: prepend '▁' (not to empty text, as Hugging Face's Prepend), every ' ' → '▁'.</summary>
    public static string Normalize(string text) => text.Length == 0 ? "" : Meta + text.Replace(' ', Meta);

    /// <summary>Cuts normalised text before every '▁' (the training words).</summary>
    public static IEnumerable<string> Words(string normalized)
    {
        int start = 0;
        for (int i = 1; i <= normalized.Length; i++)
            if (i == normalized.Length || normalized[i] == Meta)
            {
                yield return normalized[start..i];
                start = i;
            }
    }

    public static string ByteToken(byte b) => $"<0x{b:X2}>";

    /// <summary>Splits <paramref name="text"/> around <paramref name="specials"/> (matched literally, as the tokenizer's
    /// added tokens are), returning the non-empty pieces between them.</summary>
    public static IEnumerable<string> Between(string text, params string[] specials)
    {
        int start = 0;
        while (start < text.Length)
        {
            int next = -1, len = 0;
            foreach (var s in specials)
            {
                int at = text.IndexOf(s, start, StringComparison.Ordinal);
                if (at >= 0 && (next < 0 || at < next)) { next = at; len = s.Length; }
            }
            if (next < 0) { yield return text[start..]; yield break; }
            if (next > start) yield return text[start..next];
            start = next + len;
        }
    }
}

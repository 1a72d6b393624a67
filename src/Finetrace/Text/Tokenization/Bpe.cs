using System.Collections.Concurrent;
using System.Text;
using System.Text.Json;

namespace Finetrace.Text.Tokenization;

/// <summary>
/// Rust <c>models::bpe::BPE</c>: a pre-token is split into characters (byte-fallback or unk on a miss), then the
/// adjacent pair with the lowest merge rank is merged repeatedly, leftmost first among equal ranks (a heap of
/// (rank, position) with stale entries skipped, as in <c>Word::merge_all</c>). Results of short words are cached.
/// </summary>
internal sealed class BpeModel
{
    const int MaxCachedLength = 256;   // Rust caches words shorter than 256 bytes; the cache never changes results
    const int MaxCacheEntries = 100_000;   // bounded memory on long runs (Rust stops caching at 10k)

    public readonly Dictionary<string, int> Vocab;
    readonly Dictionary<string, int>.AlternateLookup<ReadOnlySpan<char>> _vocabSpan;
    public readonly string?[] IdToToken;
    readonly PairTable _merges;   // (leftId << 32 | rightId) -> (rank << 32 | newId)
    readonly string? _unkToken;
    readonly bool _fuseUnk, _byteFallback, _ignoreMerges;
    readonly string? _prefix, _suffix;
    readonly int[] _byteIds = new int[256];     // id of "<0xAB>", -1 when absent
    readonly int[] _bmpCharIds;                 // id of each one-char token, -1 when absent (only without prefix/suffix)
    readonly Dictionary<int, int> _astralCharIds = new();
    readonly ConcurrentDictionary<string, int[]> _cache = new();
    readonly ConcurrentDictionary<string, int[]>.AlternateLookup<ReadOnlySpan<char>> _cacheSpan;
    int _cacheCount;
    const char Meta = '\u2581';
    /// <summary>Code points p such that "p▁" occurs inside some merge result: a word must not be cut before such a ▁.</summary>
    readonly HashSet<int> _joinsMeta = new();
    /// <summary>
    /// Cut long words before a ▁ whose left neighbour can never merge with it, and BPE (and cache) the parts separately.
    /// Exact: no pair straddling such a cut has a merge, so both sides evolve independently and their merges commute.
    /// This makes SentencePiece-style tokenizers (no pre-tokenizer: a whole segment is one word) cacheable.
    /// </summary>
    internal bool ChunkOnMetaspace { get; set; }

    public BpeModel(JsonElement model, string where)
    {
        string type = JsonFields.Str(model, "type") ?? "BPE";
        if (type != "BPE") throw new NotSupportedException($"{where}: model type '{type}' is not supported (only BPE)");
        // Vocab: decode the names in parallel (the transcoding dominates), insert in file order.
        var props = model.GetProperty("vocab").EnumerateObject().ToArray();
        var names = new string[props.Length];
        var ids = new int[props.Length];
        Parallel.For(0, props.Length, i => { names[i] = props[i].Name; ids[i] = props[i].Value.GetInt32(); });
        Vocab = new Dictionary<string, int>(props.Length, StringComparer.Ordinal);
        int maxId = -1;
        for (int i = 0; i < names.Length; i++)
        {
            Vocab[names[i]] = ids[i];
            if (ids[i] > maxId) maxId = ids[i];
        }
        _vocabSpan = Vocab.GetAlternateLookup<ReadOnlySpan<char>>();
        IdToToken = new string?[maxId + 1];
        foreach (var (k, v) in Vocab) IdToToken[v] = k;

        _unkToken = JsonFields.Str(model, "unk_token");
        _fuseUnk = JsonFields.Bool(model, "fuse_unk", false);
        _byteFallback = JsonFields.Bool(model, "byte_fallback", false);
        _ignoreMerges = JsonFields.Bool(model, "ignore_merges", false);
        _prefix = JsonFields.Str(model, "continuing_subword_prefix");
        _suffix = JsonFields.Str(model, "end_of_word_suffix");
        if (string.IsNullOrEmpty(_prefix)) _prefix = null;
        if (string.IsNullOrEmpty(_suffix)) _suffix = null;
        int prefixLen = _prefix?.Length ?? 0;

        for (int b = 0; b < 256; b++) _byteIds[b] = Vocab.GetValueOrDefault($"<0x{b:X2}>", -1);
        _bmpCharIds = new int[0x10000];
        Array.Fill(_bmpCharIds, -1);
        foreach (var (k, v) in Vocab)
        {
            if (k.Length == 1 && !char.IsSurrogate(k[0])) _bmpCharIds[k[0]] = v;
            else if (k.Length == 2 && char.IsSurrogatePair(k[0], k[1])) _astralCharIds[char.ConvertToUtf32(k[0], k[1])] = v;
        }

        // Merges: resolve ids in parallel (read-only lookups), insert in order so a repeated pair keeps its last rank as in Rust.
        var mergeEls = model.GetProperty("merges").EnumerateArray().ToArray();
        var keys = new long[mergeEls.Length];
        var values = new long[mergeEls.Length];
        string? error = null;
        Parallel.For(0, mergeEls.Length, () => new char[256], (rank, _, buf) =>
        {
            var m = mergeEls[rank];
            string? a = null, b = null;
            if (m.ValueKind == JsonValueKind.String)
            {
                string s = m.GetString()!;
                int sp = s.IndexOf(' ');
                if (sp < 0) { error ??= $"{where}: merge #{rank} \"{s}\" has no space (expected \"a b\")"; return buf; }
                a = s[..sp]; b = s[(sp + 1)..];
            }
            else if (m.ValueKind == JsonValueKind.Array && m.GetArrayLength() == 2)
            {
                a = m[0].GetString(); b = m[1].GetString();
            }
            if (a is null || b is null) { error ??= $"{where}: merge #{rank} must be \"a b\" or [\"a\", \"b\"], got {m.GetRawText()}"; return buf; }
            if (!Vocab.TryGetValue(a, out int aId)) { error ??= $"{where}: merge #{rank} token '{a}' is not in the vocab"; return buf; }
            if (!Vocab.TryGetValue(b, out int bId)) { error ??= $"{where}: merge #{rank} token '{b}' is not in the vocab"; return buf; }
            var bTail = b.AsSpan(Math.Min(prefixLen, b.Length));
            int len = a.Length + bTail.Length;
            if (buf.Length < len) buf = new char[len * 2];
            a.CopyTo(buf); bTail.CopyTo(buf.AsSpan(a.Length));
            if (!_vocabSpan.TryGetValue(buf.AsSpan(0, len), out int newId)) { error ??= $"{where}: merge #{rank} result '{new string(buf, 0, len)}' is not in the vocab"; return buf; }
            keys[rank] = ((long)aId << 32) | (uint)bId;
            values[rank] = ((long)rank << 32) | (uint)newId;
            return buf;
        }, _ => { });
        if (error is not null) throw new FormatException(error);
        _merges = new PairTable(mergeEls.Length);
        for (int rank = 0; rank < keys.Length; rank++) _merges.Set(keys[rank], values[rank]);
        _cacheSpan = _cache.GetAlternateLookup<ReadOnlySpan<char>>();

        foreach (long v in values)
        {
            string merged = IdToToken[(int)v]!;
            for (int j = merged.IndexOf(Meta, 1); j > 0; j = j + 1 < merged.Length ? merged.IndexOf(Meta, j + 1) : -1)
            {
                int p = char.IsLowSurrogate(merged[j - 1]) && j >= 2 ? char.ConvertToUtf32(merged[j - 2], merged[j - 1]) : merged[j - 1];
                _joinsMeta.Add(p);
            }
        }
        ChunkOnMetaspace = !_ignoreMerges && _prefix is null && _suffix is null && Vocab.ContainsKey(Meta.ToString());
    }

    public int TokenToId(ReadOnlySpan<char> token) => _vocabSpan.TryGetValue(token, out int id) ? id : -1;

    /// <summary>
    /// Tokenizes one pre-token, appending (id, start, end) triples with [start, end) in UTF-16 units of
    /// <paramref name="word"/> (byte-fallback tokens of one character all span that character).
    /// </summary>
    public void Tokenize(ReadOnlySpan<char> word, List<int> output)
    {
        if (word.IsEmpty) return;
        if (_ignoreMerges && _vocabSpan.TryGetValue(word, out int whole))
        {
            output.Add(whole); output.Add(0); output.Add(word.Length);
            return;
        }
        if (ChunkOnMetaspace && word.Length > 16)
        {
            int start = 0;
            for (int k = 1; k < word.Length; k++)
            {
                int d = word[k..].IndexOf(Meta);
                if (d < 0) break;
                k += d;
                if (!CanCutBefore(word, k)) continue;
                TokenizeWord(word[start..k], start, output);
                start = k;
            }
            TokenizeWord(word[start..], start, output);
            return;
        }
        TokenizeWord(word, 0, output);
    }

    /// <summary>A cut before the ▁ at k is safe when its left neighbour is a vocabulary char (not unk or byte fallback) never merged with ▁.</summary>
    bool CanCutBefore(ReadOnlySpan<char> word, int k)
    {
        int p = char.IsLowSurrogate(word[k - 1]) && k >= 2 && char.IsHighSurrogate(word[k - 2]) ? char.ConvertToUtf32(word[k - 2], word[k - 1]) : word[k - 1];
        if (p is >= 0xD800 and <= 0xDFFF) return false;   // lone surrogate
        return !_joinsMeta.Contains(p) && (p < 0x10000 ? _bmpCharIds[p] : _astralCharIds.GetValueOrDefault(p, -1)) >= 0;
    }

    /// <summary>BPE of one word (cached), appending triples with positions shifted by <paramref name="offset"/>.</summary>
    void TokenizeWord(ReadOnlySpan<char> word, int offset, List<int> output)
    {
        int at = output.Count;
        TokenizeWordAt0(word, output);
        if (offset != 0)
            for (int i = at; i < output.Count; i += 3) { output[i + 1] += offset; output[i + 2] += offset; }
    }

    void TokenizeWordAt0(ReadOnlySpan<char> word, List<int> output)
    {
        bool cacheable = word.Length < MaxCachedLength;
        if (cacheable && _cacheSpan.TryGetValue(word, out var hit)) { output.AddRange(hit); return; }
        var result = MergeWord(word);
        if (cacheable && _cacheCount < MaxCacheEntries && _cache.TryAdd(word.ToString(), result)) Interlocked.Increment(ref _cacheCount);
        output.AddRange(result);
    }

    struct Symbol { public int Id, Start, End, Prev, Next; public bool Removed; }

    [ThreadStatic] static Symbol[]? t_symbols;
    [ThreadStatic] static MergeHeap? t_heap;

    int[] MergeWord(ReadOnlySpan<char> w)
    {
        var symbols = t_symbols ??= new Symbol[64];
        int n = 0;
        int unkId = -1, unkStart = 0, unkEnd = 0;   // pending unknown (fused when fuse_unk)
        Span<byte> utf8 = stackalloc byte[4];
        for (int i = 0; i < w.Length;)
        {
            Rune.DecodeFromUtf16(w[i..], out var r, out int width);
            int s = i, e = i + width;
            bool isFirst = i == 0, isLast = e == w.Length;
            int id = LookupChar(w.Slice(s, width), r.Value, isFirst, isLast);
            i = e;
            if (id >= 0)
            {
                if (unkId >= 0) { Add(unkId, unkStart, unkEnd); unkId = -1; }
                Add(id, s, e);
                continue;
            }
            if (_byteFallback)
            {
                string? affixed = AffixedOrNull(w.Slice(s, width), isFirst, isLast);
                ReadOnlySpan<byte> bytes = affixed is null ? utf8[..r.EncodeToUtf8(utf8)] : System.Text.Encoding.UTF8.GetBytes(affixed);
                bool all = true;
                foreach (byte b in bytes) if (_byteIds[b] < 0) { all = false; break; }
                if (all)
                {
                    foreach (byte b in bytes) Add(_byteIds[b], s, e);
                    continue;
                }
            }
            if (_unkToken is not null)
            {
                int uid = Vocab.TryGetValue(_unkToken, out int u) ? u
                    : throw new InvalidOperationException($"tokenizer.json: unk_token '{_unkToken}' is not in the vocab");
                if (unkId >= 0 && _fuseUnk) unkEnd = e;
                else
                {
                    if (unkId >= 0) Add(unkId, unkStart, unkEnd);
                    unkId = uid; unkStart = s; unkEnd = e;
                }
            }
        }
        if (unkId >= 0) Add(unkId, unkStart, unkEnd);

        MergeAll(symbols, n);

        int kept = 0;
        for (int k = 0; k < n; k++) if (!symbols[k].Removed) kept++;
        var result = new int[kept * 3];
        int o = 0;
        for (int k = 0; k < n; k++)
        {
            if (symbols[k].Removed) continue;
            result[o++] = symbols[k].Id; result[o++] = symbols[k].Start; result[o++] = symbols[k].End;
        }
        return result;

        void Add(int id, int s, int e)
        {
            if (n == symbols.Length) { Array.Resize(ref symbols, n * 2); t_symbols = symbols; }
            symbols[n] = new Symbol { Id = id, Start = s, End = e, Prev = n - 1, Next = n + 1 };
            n++;
        }
    }

    string? AffixedOrNull(ReadOnlySpan<char> ch, bool isFirst, bool isLast)
    {
        bool pre = _prefix is not null && !isFirst, suf = _suffix is not null && isLast;
        if (!pre && !suf) return null;
        return (pre ? _prefix : "") + ch.ToString() + (suf ? _suffix : "");
    }

    int LookupChar(ReadOnlySpan<char> ch, int cp, bool isFirst, bool isLast)
    {
        string? affixed = AffixedOrNull(ch, isFirst, isLast);
        if (affixed is not null) return Vocab.GetValueOrDefault(affixed, -1);
        return cp < 0x10000 ? _bmpCharIds[cp] : _astralCharIds.GetValueOrDefault(cp, -1);
    }

    void MergeAll(Symbol[] symbols, int n)
    {
        if (n < 2) return;
        symbols[n - 1].Next = -1;
        var heap = t_heap ??= new MergeHeap();
        heap.Count = 0;
        for (int k = 0; k + 1 < n; k++)
            if (_merges.TryGetValue(((long)symbols[k].Id << 32) | (uint)symbols[k + 1].Id, out long m))
                heap.Push((m & ~0xFFFFFFFFL) | (uint)k, (int)m);
        while (heap.Count > 0)
        {
            int pos = (int)heap.Pop(out int newId);
            ref var cur = ref symbols[pos];
            if (cur.Removed || cur.Next < 0) continue;
            int nextPos = cur.Next;
            ref var right = ref symbols[nextPos];
            // Skip stale entries: the pair at pos must still merge into the same token.
            if (!_merges.TryGetValue(((long)cur.Id << 32) | (uint)right.Id, out long now) || (int)now != newId) continue;
            cur.Id = newId;
            cur.End = right.End;
            cur.Next = right.Next;
            right.Removed = true;
            if (cur.Next >= 0) symbols[cur.Next].Prev = pos;
            if (cur.Prev >= 0 && _merges.TryGetValue(((long)symbols[cur.Prev].Id << 32) | (uint)cur.Id, out long pm))
                heap.Push((pm & ~0xFFFFFFFFL) | (uint)cur.Prev, (int)pm);
            if (cur.Next >= 0 && _merges.TryGetValue(((long)cur.Id << 32) | (uint)symbols[cur.Next].Id, out long nm))
                heap.Push((nm & ~0xFFFFFFFFL) | (uint)pos, (int)nm);
        }
    }

    /// <summary>Open-addressing map from a pair key to a value (Dictionary&lt;long,long&gt; hashes lo ^ hi, which collides badly here).</summary>
    sealed class PairTable
    {
        struct Entry { public long Key, Value; }   // key and value side by side: one cache miss per probe
        readonly Entry[] _entries;
        readonly int _mask, _shift;

        public PairTable(int count)
        {
            int cap = 16, bits = 4;
            while (cap < count * 2) { cap <<= 1; bits++; }
            _entries = new Entry[cap];
            for (int i = 0; i < cap; i++) _entries[i].Key = -1L;
            _mask = cap - 1; _shift = 64 - bits;
        }

        int Slot(long key) => (int)((ulong)(key * unchecked((long)0x9E3779B97F4A7C15)) >> _shift);

        public void Set(long key, long value)
        {
            int i = Slot(key);
            while (_entries[i].Key != -1L && _entries[i].Key != key) i = (i + 1) & _mask;
            _entries[i].Key = key; _entries[i].Value = value;
        }

        public bool TryGetValue(long key, out long value)
        {
            int i = Slot(key);
            while (true)
            {
                ref var e = ref _entries[i];
                if (e.Key == key) { value = e.Value; return true; }
                if (e.Key == -1L) { value = 0; return false; }
                i = (i + 1) & _mask;
            }
        }
    }

    /// <summary>Binary min-heap of merge candidates ordered by (rank, position), as Rust's <c>Merge</c> ordering.</summary>
    sealed class MergeHeap
    {
        long[] _keys = new long[64];    // rank << 32 | position
        int[] _newIds = new int[64];
        public int Count;

        public void Push(long key, int newId)
        {
            if (Count == _keys.Length) { Array.Resize(ref _keys, Count * 2); Array.Resize(ref _newIds, Count * 2); }
            int i = Count++;
            while (i > 0)
            {
                int parent = (i - 1) >> 1;
                if (_keys[parent] <= key) break;
                _keys[i] = _keys[parent]; _newIds[i] = _newIds[parent];
                i = parent;
            }
            _keys[i] = key; _newIds[i] = newId;
        }

        public long Pop(out int newId)
        {
            long top = _keys[0];
            newId = _newIds[0];
            long key = _keys[--Count];
            int id = _newIds[Count], i = 0;
            while (true)
            {
                int child = 2 * i + 1;
                if (child >= Count) break;
                if (child + 1 < Count && _keys[child + 1] < _keys[child]) child++;
                if (_keys[child] >= key) break;
                _keys[i] = _keys[child]; _newIds[i] = _newIds[child];
                i = child;
            }
            if (Count > 0) { _keys[i] = key; _newIds[i] = id; }
            return top;
        }
    }
}

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
    const int MaxCacheEntries = 500_000;

    public readonly Dictionary<string, int> Vocab;
    readonly Dictionary<string, int>.AlternateLookup<ReadOnlySpan<char>> _vocabSpan;
    public readonly string?[] IdToToken;
    readonly Dictionary<long, long> _merges;   // (leftId << 32 | rightId) -> (rank << 32 | newId)
    readonly string? _unkToken;
    readonly bool _fuseUnk, _byteFallback, _ignoreMerges;
    readonly string? _prefix, _suffix;
    readonly int[] _byteIds = new int[256];     // id of "<0xAB>", -1 when absent
    readonly int[] _bmpCharIds;                 // id of each one-char token, -1 when absent (only without prefix/suffix)
    readonly Dictionary<int, int> _astralCharIds = new();
    readonly ConcurrentDictionary<string, int[]> _cache = new();
    readonly ConcurrentDictionary<string, int[]>.AlternateLookup<ReadOnlySpan<char>> _cacheSpan;
    int _cacheCount;

    public BpeModel(JsonElement model, string where)
    {
        string type = Json.Str(model, "type") ?? "BPE";
        if (type != "BPE") throw new NotSupportedException($"{where}: model type '{type}' is not supported (only BPE)");
        var vocabEl = model.GetProperty("vocab");
        Vocab = new Dictionary<string, int>(vocabEl.EnumerateObject().Count(), StringComparer.Ordinal);
        int maxId = -1;
        foreach (var p in vocabEl.EnumerateObject())
        {
            int id = p.Value.GetInt32();
            Vocab[p.Name] = id;
            if (id > maxId) maxId = id;
        }
        _vocabSpan = Vocab.GetAlternateLookup<ReadOnlySpan<char>>();
        IdToToken = new string?[maxId + 1];
        foreach (var (k, v) in Vocab) IdToToken[v] = k;

        _unkToken = Json.Str(model, "unk_token");
        _fuseUnk = Json.Bool(model, "fuse_unk", false);
        _byteFallback = Json.Bool(model, "byte_fallback", false);
        _ignoreMerges = Json.Bool(model, "ignore_merges", false);
        _prefix = Json.Str(model, "continuing_subword_prefix");
        _suffix = Json.Str(model, "end_of_word_suffix");
        if (string.IsNullOrEmpty(_prefix)) _prefix = null;
        if (string.IsNullOrEmpty(_suffix)) _suffix = null;

        for (int b = 0; b < 256; b++) _byteIds[b] = Vocab.GetValueOrDefault($"<0x{b:X2}>", -1);
        _bmpCharIds = new int[0x10000];
        Array.Fill(_bmpCharIds, -1);
        foreach (var (k, v) in Vocab)
        {
            if (k.Length == 1 && !char.IsSurrogate(k[0])) _bmpCharIds[k[0]] = v;
            else if (k.Length == 2 && char.IsSurrogatePair(k[0], k[1])) _astralCharIds[char.ConvertToUtf32(k[0], k[1])] = v;
        }

        var mergesEl = model.GetProperty("merges");
        _merges = new Dictionary<long, long>(mergesEl.GetArrayLength());
        int rank = 0;
        int prefixLen = _prefix?.Length ?? 0;
        foreach (var m in mergesEl.EnumerateArray())
        {
            string a, b;
            if (m.ValueKind == JsonValueKind.String)
            {
                string s = m.GetString()!;
                int sp = s.IndexOf(' ');
                if (sp < 0) throw new FormatException($"{where}: merge #{rank} \"{s}\" has no space (expected \"a b\")");
                a = s[..sp]; b = s[(sp + 1)..];
            }
            else if (m.ValueKind == JsonValueKind.Array && m.GetArrayLength() == 2)
            {
                a = m[0].GetString()!; b = m[1].GetString()!;
            }
            else throw new FormatException($"{where}: merge #{rank} must be \"a b\" or [\"a\", \"b\"], got {m.GetRawText()}");
            if (!Vocab.TryGetValue(a, out int aId)) throw new FormatException($"{where}: merge #{rank} token '{a}' is not in the vocab");
            if (!Vocab.TryGetValue(b, out int bId)) throw new FormatException($"{where}: merge #{rank} token '{b}' is not in the vocab");
            string merged = a + b.Substring(Math.Min(prefixLen, b.Length));
            if (!Vocab.TryGetValue(merged, out int newId)) throw new FormatException($"{where}: merge #{rank} result '{merged}' is not in the vocab");
            _merges[((long)aId << 32) | (uint)bId] = ((long)rank << 32) | (uint)newId;
            rank++;
        }
        _cacheSpan = _cache.GetAlternateLookup<ReadOnlySpan<char>>();
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
        bool cacheable = word.Length < MaxCachedLength;
        if (cacheable && _cacheSpan.TryGetValue(word, out var hit)) { output.AddRange(hit); return; }
        var result = MergeWord(word);
        if (cacheable && _cacheCount < MaxCacheEntries && _cache.TryAdd(word.ToString(), result)) Interlocked.Increment(ref _cacheCount);
        output.AddRange(result);
    }

    struct Symbol { public int Id, Start, End, Prev, Next; public bool Removed; }

    [ThreadStatic] static Symbol[]? t_symbols;
    [ThreadStatic] static PriorityQueue<long, long>? t_queue;

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
                byte[] bytes = affixed is null ? utf8[..r.EncodeToUtf8(utf8)].ToArray() : System.Text.Encoding.UTF8.GetBytes(affixed);
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
        var queue = t_queue ??= new PriorityQueue<long, long>();
        queue.Clear();
        for (int k = 0; k + 1 < n; k++)
            if (_merges.TryGetValue(((long)symbols[k].Id << 32) | (uint)symbols[k + 1].Id, out long m))
                queue.Enqueue(((long)k << 32) | (uint)m, (m & ~0xFFFFFFFFL) | (uint)k);
        while (queue.TryDequeue(out long top, out _))
        {
            int pos = (int)(top >> 32), newId = (int)top;
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
                queue.Enqueue(((long)cur.Prev << 32) | (uint)pm, (pm & ~0xFFFFFFFFL) | (uint)cur.Prev);
            if (cur.Next >= 0 && _merges.TryGetValue(((long)cur.Id << 32) | (uint)symbols[cur.Next].Id, out long nm))
                queue.Enqueue(((long)pos << 32) | (uint)nm, (nm & ~0xFFFFFFFFL) | (uint)pos);
        }
    }
}

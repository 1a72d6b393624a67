using System.Text;

namespace Finetrace.Text.Tokenization;

public enum NormalizationKind { NFC, NFD, NFKC, NFKD }

/// <summary>
/// Unicode normalisation forms with alignment tracking, from generated tables (<see cref="UnicodeNormalizationData"/>).
/// Needed because the project runs with InvariantGlobalization, where <c>string.Normalize</c> leaves non-ASCII
/// text unchanged. Algorithm: full decomposition, canonical reordering, then (C/KC) canonical composition (UAX #15).
/// A composed character's original span covers all the characters it was made from.
/// </summary>
internal static class UnicodeNormalization
{
    const int SBase = 0xAC00, LBase = 0x1100, VBase = 0x1161, TBase = 0x11A7, LCount = 19, VCount = 21, TCount = 28, NCount = VCount * TCount, SCount = LCount * NCount;

    static readonly byte[] CccBmp = new byte[0x10000];
    static readonly Dictionary<int, byte> CccAstral = new();
    static readonly Dictionary<int, int> DecompIndex = new();   // cp -> index of its record in Decompositions
    static readonly Dictionary<long, int> Compose = new();
    static readonly HashSet<int> CompositionSeconds = new();
    /// <summary>BMP chars that NFC leaves alone and that never combine with what precedes them (NFC_QC=Yes, ccc 0).</summary>
    static readonly bool[] NfcStableBmp = new bool[0x10000];

    static UnicodeNormalization()
    {
        var c = UnicodeNormalizationData.CombiningClass;
        for (int i = 0; i < c.Length; i += 2)
            if (c[i] < 0x10000) CccBmp[c[i]] = (byte)c[i + 1]; else CccAstral[c[i]] = (byte)c[i + 1];
        var d = UnicodeNormalizationData.Decompositions;
        for (int i = 0; i < d.Length; i += 2 + (d[i + 1] & 0xFF)) DecompIndex[d[i]] = i;
        var k = UnicodeNormalizationData.Compositions;
        for (int i = 0; i < k.Length; i += 3) { Compose[((long)k[i] << 21) | (uint)k[i + 1]] = k[i + 2]; CompositionSeconds.Add(k[i + 1]); }
        for (int ch = 0; ch < 0x10000; ch++)
            NfcStableBmp[ch] = !char.IsSurrogate((char)ch) && CccBmp[ch] == 0 && !CompositionSeconds.Contains(ch) && !(ch >= VBase && ch < VBase + VCount) && !(ch > TBase && ch < TBase + TCount);
        foreach (int ch in DecompIndex.Keys)
            if (ch < 0x10000 && NfcStableBmp[ch] && (UnicodeNormalizationData.Decompositions[DecompIndex[ch] + 1] & 0x100) == 0)
                NfcStableBmp[ch] = NormalizeSlow(NormalizedText.FromOriginal(((char)ch).ToString(), 0, 1), NormalizationKind.NFC).ToString() == ((char)ch).ToString();
    }

    internal static int CombiningClass(int cp) => cp < 0x10000 ? CccBmp[cp] : CccAstral.GetValueOrDefault(cp);

    /// <summary>True when <paramref name="text"/> certainly is unchanged by the form (cheap pre-check).</summary>
    static bool QuickUnchanged(ReadOnlySpan<char> text, NormalizationKind form)
    {
        // Below U+0300 nothing recomposes under NFC; below U+00A0 nothing has any decomposition.
        char limit = form == NormalizationKind.NFC ? '\u0300' : '\u00A0';
        foreach (char ch in text) if (ch >= limit) return false;
        return true;
    }

    public static string Normalize(string s, NormalizationKind form)
    {
        var t = NormalizedText.FromOriginal(s, 0, s.Length);
        return Normalize(t, form).ToString();
    }

    public static NormalizedText Normalize(NormalizedText src, NormalizationKind form)
    {
        if (QuickUnchanged(src.Span, form)) return src;
        if (form != NormalizationKind.NFC) return NormalizeSlow(src, form);
        // NFC chunk by chunk: a stable char starts a chunk (nothing before it can change or absorb it), so only
        // chunks holding an unstable char need the full algorithm.
        int firstUnstable = 0;
        while (firstUnstable < src.Length && NfcStableBmp[src.Chars[firstUnstable]]) firstUnstable++;
        if (firstUnstable == src.Length) return src;
        var dst = new NormalizedText(src.Length + 8);
        int chunkStart = firstUnstable > 0 ? firstUnstable - 1 : 0;
        dst.AppendFrom(src, 0, chunkStart);
        var scratch = new NormalizedText(16);
        while (chunkStart < src.Length)
        {
            int end = chunkStart + 1;
            while (end < src.Length && !NfcStableBmp[src.Chars[end]]) end++;
            bool allStable = end == chunkStart + 1 && NfcStableBmp[src.Chars[chunkStart]];
            if (allStable) dst.AppendFrom(src, chunkStart, end);
            else
            {
                scratch.Length = 0;
                scratch.AppendFrom(src, chunkStart, end);
                var n = NormalizeSlow(scratch, form);
                dst.AppendFrom(n, 0, n.Length);
            }
            chunkStart = end;
        }
        return dst;
    }

    /// <summary>The whole text through the full algorithm: the reference for the chunked NFC path.</summary>
    internal static NormalizedText NormalizeSlow(NormalizedText src, NormalizationKind form)
    {
        bool compat = form is NormalizationKind.NFKC or NormalizationKind.NFKD;
        bool compose = form is NormalizationKind.NFC or NormalizationKind.NFKC;
        // 1. Decompose into (code point, start, end) triples.
        var cps = new List<int>(src.Length + 8);
        var starts = new List<int>(src.Length + 8);
        var ends = new List<int>(src.Length + 8);
        for (int i = 0; i < src.Length;)
        {
            Rune.DecodeFromUtf16(src.Chars.AsSpan(i, src.Length - i), out var r, out int used);
            int s = src.Start[i], e = src.End[i];
            Decompose(r.Value, compat, cps, starts, ends, s, e);
            i += used;
        }
        int n = cps.Count;
        // 2. Canonical ordering: stable sort each run of non-starters by combining class.
        for (int i = 1; i < n; i++)
        {
            int cc = CombiningClass(cps[i]);
            if (cc == 0) continue;
            int j = i;
            while (j > 0 && CombiningClass(cps[j - 1]) > cc)
            {
                (cps[j - 1], cps[j]) = (cps[j], cps[j - 1]);
                (starts[j - 1], starts[j]) = (starts[j], starts[j - 1]);
                (ends[j - 1], ends[j]) = (ends[j], ends[j - 1]);
                j--;
            }
        }
        // 3. Canonical composition.
        if (compose && n > 0)
        {
            int starterPos = 0, starterCh = cps[0];
            int lastClass = CombiningClass(starterCh);
            if (lastClass != 0) lastClass = 256; // a leading non-starter blocks everything after it
            int compPos = 1;
            for (int decompPos = 1; decompPos < n; decompPos++)
            {
                int ch = cps[decompPos], chClass = CombiningClass(ch);
                int composite = ComposePair(starterCh, ch);
                if (composite >= 0 && (lastClass < chClass || lastClass == 0))
                {
                    cps[starterPos] = composite; starterCh = composite;
                    starts[starterPos] = Math.Min(starts[starterPos], starts[decompPos]);
                    ends[starterPos] = Math.Max(ends[starterPos], ends[decompPos]);
                    continue;
                }
                if (chClass == 0) { starterPos = compPos; starterCh = ch; }
                lastClass = chClass;
                cps[compPos] = ch; starts[compPos] = starts[decompPos]; ends[compPos] = ends[decompPos];
                compPos++;
            }
            n = compPos;
        }
        var dst = new NormalizedText(n + 8);
        for (int i = 0; i < n; i++) dst.AppendRune(cps[i], starts[i], ends[i]);
        return dst;
    }

    static void Decompose(int cp, bool compat, List<int> cps, List<int> starts, List<int> ends, int s, int e)
    {
        if (cp >= SBase && cp < SBase + SCount)
        {
            int sIndex = cp - SBase;
            Add(LBase + sIndex / NCount); Add(VBase + sIndex % NCount / TCount);
            if (sIndex % TCount != 0) Add(TBase + sIndex % TCount);
            return;
        }
        if (DecompIndex.TryGetValue(cp, out int at))
        {
            var d = UnicodeNormalizationData.Decompositions;
            int header = d[at + 1];
            if ((header & 0x100) == 0 || compat)
            {
                for (int k = 0; k < (header & 0xFF); k++) Decompose(d[at + 2 + k], compat, cps, starts, ends, s, e);
                return;
            }
        }
        Add(cp);

        void Add(int c) { cps.Add(c); starts.Add(s); ends.Add(e); }
    }

    static int ComposePair(int a, int b)
    {
        if (a >= LBase && a < LBase + LCount && b >= VBase && b < VBase + VCount)
            return SBase + ((a - LBase) * VCount + (b - VBase)) * TCount;
        if (a >= SBase && a < SBase + SCount && (a - SBase) % TCount == 0 && b > TBase && b < TBase + TCount)
            return a + (b - TBase);
        return Compose.TryGetValue(((long)a << 21) | (uint)b, out int c) ? c : -1;
    }
}

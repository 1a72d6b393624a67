using ILGPU;
using ILGPU.Runtime;

namespace Finetrace.Cuda;

/// <summary>
/// Top-k selection of sparse codes on the device, exactly as <c>Finetrace.Dictionaries.Selection</c> selects on the CPU:
/// the key of entry (b, j) is s = f·c_j (or f) when s &gt; 0 (and latent j is allowed), ranked by value with ties to the
/// lower flat index. <see cref="Batch"/>: the kTotal largest over [B, F] by an exact radix select (four 8-bit passes,
/// each a shared-memory histogram per group read by the host, then per-row counts and the batch's ties taken in flat order); <see cref="Rows"/>: the k
/// largest of each row (binary search on the key per row). Both write CSR codes (ascending latents per row) and the
/// per-latent column view. Row kernels run one group per row (the thread-per-row twins stay as references).
/// </summary>
public sealed class DeviceTopK : IDisposable
{
    readonly Accelerator acc;
    readonly DictionaryDeviceKernels K;
    readonly int f;
    readonly MemoryBuffer1D<int, Stride1D.Dense> hist, slot, chunkSums, threshold, gt, eq, eqPrefix, budget, count;

    /// <summary>Whether the group-per-row kernels (and shared-memory histograms) run; otherwise their thread-per-row
    /// twins. Both select exactly the same entries.</summary>
    public bool Grouped { get; }

    /// <summary>Buffers for up to <paramref name="rows"/> rows of <paramref name="f"/> latents. <paramref name="grouped"/>:
    /// default on a GPU; off on ILGPU's CPU accelerator, where each group barrier costs a thread hand-off.</summary>
    public DeviceTopK(Accelerator accelerator, int rows, int f, bool? grouped = null)
    {
        acc = accelerator; this.f = f;
        Grouped = grouped ?? accelerator.AcceleratorType == AcceleratorType.Cuda;
        K = DictionaryDeviceKernels.For(acc);
        hist = acc.Allocate1D<int>(256);
        slot = acc.Allocate1D<int>(Math.Max(1, (long)rows * f));
        chunkSums = acc.Allocate1D<int>((Math.Max(rows, f) + 1023) / 1024 + 2);
        threshold = acc.Allocate1D<int>(Math.Max(1, rows)); gt = acc.Allocate1D<int>(Math.Max(1, rows)); eq = acc.Allocate1D<int>(Math.Max(1, rows));
        eqPrefix = acc.Allocate1D<int>(rows + 1); budget = acc.Allocate1D<int>(Math.Max(1, rows)); count = acc.Allocate1D<int>(Math.Max(1, rows));
    }

    RowSelect RowsView(int rows) => new()
    {
        Threshold = threshold.View.SubView(0, rows), Gt = gt.View.SubView(0, rows), Eq = eq.View.SubView(0, rows),
        EqPrefix = eqPrefix.View.SubView(0, rows + 1), Budget = budget.View.SubView(0, rows), Count = count.View.SubView(0, rows),
    };

    /// <summary>Batch top-k: the <paramref name="kTotal"/> largest keys over the whole [B, F] matrix. Returns the number
    /// selected and the smallest selected s (0 when none): what <c>Selection.BatchTopK</c> returns.</summary>
    // fBF: [B, F]; cF: [F] (read when keys.Scaled); maskF: [F] (read when keys.Masked) → codes
    public (int Nnz, float MinKept) Batch(ArrayView<float> fBF, ArrayView<float> cF, ArrayView<int> maskF, KeyArgs keys, long kTotal, DeviceCodes codes)
    {
        if (maskF.Length == 0) maskF = hist.View;   // never read when not masked; kernels need a valid view
        if (cF.Length == 0) cF = fBF;
        // four 8-bit passes from the top byte: each narrows the prefix of the kTotal-th largest key
        var h = new int[256];
        long positives = -1, cum = 0, kEff = 0;
        uint prefix = 0;
        for (int pass = 0; pass < 4; pass++)
        {
            hist.View.SubView(0, 256).MemSetToZero();
            var rp = new RadixPass(24 - 8 * pass, 32 - 8 * pass, (int)prefix);
            if (Grouped) K.RadixHistogram8(fBF, cF, maskF, keys, hist.View, rp); else K.RadixHistogram8Reference(fBF, cF, maskF, keys, hist.View, rp);
            hist.View.SubView(0, 256).CopyToCPU(acc.DefaultStream, h);
            acc.Synchronize();
            if (pass == 0)
            {
                positives = 0;
                foreach (int c in h) positives += c;
                kEff = Math.Min(kTotal, positives);
                if (kEff == 0) break;
            }
            int bin = 0;
            for (int x = 255; x >= 0; x--) { if (cum + h[x] >= kEff) { bin = x; break; } cum += h[x]; }
            prefix = (prefix << 8) | (uint)bin;
        }
        uint th = uint.MaxValue; int need = 0; float minKept = 0;
        if (kEff > 0)
        {
            th = prefix;
            need = (int)(kEff - cum);   // cum = keys above the threshold key; the rest are ties taken in flat order
            minKept = BitConverter.UInt32BitsToSingle(th);
        }
        int B = keys.Rows;
        var r = RowsView(B);
        K.Fill(r.Threshold, unchecked((int)th));
        if (Grouped) K.RowCountAbove(fBF, cF, maskF, keys, r); else K.RowCountAboveReference(fBF, cF, maskF, keys, r);
        K.ExclusiveScan(r.Eq, r.EqPrefix, chunkSums.View, B);
        K.BatchBudget(r, B, need);
        K.ExclusiveScan(r.Count, codes.RowStart.View, chunkSums.View, B);
        if (Grouped) K.RowWrite(fBF, cF, maskF, keys, r, codes.View, slot.View); else K.RowWriteReference(fBF, cF, maskF, keys, r, codes.View, slot.View);
        K.BuildColumns(slot.View, codes.View, chunkSums.View, B, f);
        return ((int)kEff, minKept);
    }

    /// <summary>Per-row top-k among the positive keys (of allowed latents), ties to the lower latent, as
    /// <c>Selection.TopKPerRow</c>. Returns the number of entries selected.</summary>
    // fBF: [B, F]; cF: [F]; maskF: [F] → codes
    public int Rows(ArrayView<float> fBF, ArrayView<float> cF, ArrayView<int> maskF, KeyArgs keys, int k, DeviceCodes codes)
    {
        if (maskF.Length == 0) maskF = hist.View;
        if (cF.Length == 0) cF = fBF;
        int B = keys.Rows;
        var r = RowsView(B);
        if (Grouped) K.RowTopK(fBF, cF, maskF, keys, r, Math.Min(k, f)); else K.RowTopKReference(fBF, cF, maskF, keys, r, Math.Min(k, f));
        K.ExclusiveScan(r.Count, codes.RowStart.View, chunkSums.View, B);
        if (Grouped) K.RowWrite(fBF, cF, maskF, keys, r, codes.View, slot.View); else K.RowWriteReference(fBF, cF, maskF, keys, r, codes.View, slot.View);
        K.BuildColumns(slot.View, codes.View, chunkSums.View, B, f);
        var one = new int[1];
        codes.RowStart.View.SubView(B, 1).CopyToCPU(acc.DefaultStream, one);
        acc.Synchronize();
        return one[0];
    }

    public void Dispose()
    {
        foreach (var b in new[] { hist, slot, chunkSums, threshold, gt, eq, eqPrefix, budget, count }) b.Dispose();
    }
}

using Finetrace.Tensors;
using Finetrace.Tests.Infrastructure;

namespace Finetrace.Tests.Tensors;

/// <summary>Tests that switch the process-wide GEMM backend share one collection so they never run concurrently.</summary>
[Collection(ProcessWide.Name)]
public class GemmTests
{
    public static IEnumerable<object[]> Shapes()
    {
        int[][] shapes = [[0, 3, 4], [1, 1, 1], [1, 7, 5], [3, 0, 2], [2, 3, 0], [7, 9, 17], [8, 8, 8], [9, 15, 33], [33, 65, 31], [64, 48, 129], [130, 70, 96],
            [1, 300, 70], [3, 700, 100], [5, 131, 257], [7, 64, 9], [6, 16, 3], [8, 32, 1], [17, 1, 40], [300, 3, 20]];
        foreach (var s in shapes)
            foreach (bool ta in new[] { false, true })
                foreach (bool tb in new[] { false, true })
                    yield return new object[] { s[0], s[1], s[2], ta, tb };
    }

    static float[] Random(int n, int seed)
    {
        var r = new Random(seed);
        var a = new float[n];
        for (int i = 0; i < n; i++) a[i] = (float)(r.NextDouble() * 2 - 1);
        return a;
    }

    [Theory]
    [MemberData(nameof(Shapes))]
    public void ManagedMatchesReference(int m, int n, int k, bool ta, bool tb) => Check(GemmBackend.Managed, m, n, k, ta, tb);

    [Theory]
    [MemberData(nameof(Shapes))]
    public void OpenBlasMatchesReference(int m, int n, int k, bool ta, bool tb)
    {
        if (!OpenBlas.IsAvailable) return; // covered by the managed test; the backend is optional
        Check(GemmBackend.OpenBlas, m, n, k, ta, tb);
    }

    public static IEnumerable<object[]> BlockedShapes()
    {
        // k past several KC slices, n past several NC panels, m past several MC blocks, ragged edges everywhere
        int[][] shapes = [[8, 8, 8], [9, 33, 70], [37, 100, 61], [70, 45, 130], [130, 161, 9]];
        foreach (var s in shapes)
            foreach (bool v512 in new[] { false, true })
                foreach (bool ta in new[] { false, true })
                    foreach (bool tb in new[] { false, true })
                        yield return new object[] { s[0], s[1], s[2], ta, tb, v512 };
    }

    /// Small blocking parameters force every loop of the blocked kernel (several jc panels, pc slices with beta applied
    /// only on the first, row blocks, edge tiles) on shapes small enough for the double-precision reference.
    [Theory]
    [MemberData(nameof(BlockedShapes))]
    public void ManagedBlockedLoopsMatchReference(int m, int n, int k, bool ta, bool tb, bool v512)
    {
        if (v512 && !System.Runtime.Intrinsics.Vector512.IsHardwareAccelerated) return; // the Vector256 case covers this machine
        var (savedBlocking, savedV512) = (ManagedGemm.Blocking, ManagedGemm.UseVector512);
        try
        {
            ManagedGemm.Blocking = (KC: 24, MCMax: 16, NC: 40);
            ManagedGemm.UseVector512 = v512;
            Check(GemmBackend.Managed, m, n, k, ta, tb);
        }
        finally { (ManagedGemm.Blocking, ManagedGemm.UseVector512) = (savedBlocking, savedV512); }
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void ManagedMatchesReferenceOnALargerProductWithBothKernels(bool v512)
    {
        if (v512 && !System.Runtime.Intrinsics.Vector512.IsHardwareAccelerated) return;
        var saved = ManagedGemm.UseVector512;
        try
        {
            ManagedGemm.UseVector512 = v512;
            Check(GemmBackend.Managed, 97, 300, 520, false, true);
            Check(GemmBackend.Managed, 200, 77, 300, true, false);
        }
        finally { ManagedGemm.UseVector512 = saved; }
    }

    [Fact]
    public void ManagedKernelsAndRowBlockingGiveIdenticalBits()
    {
        // The k order is fixed by KC alone: the 6×16 and 8×32 kernels, any MC and NC, edge tiles or not, same bits.
        int m = 77, n = 93, k = 300;
        var a = Random(m * k, 1); var b = Random(n * k, 2); var c0 = Random(m * n, 3);
        var saved = (ManagedGemm.Blocking, ManagedGemm.UseVector512);
        var results = new List<float[]>();
        try
        {
            foreach (var (v512, mc, nc) in new[] { (false, 120, 4096), (false, 12, 48), (true, 120, 4096), (true, 16, 64) })
            {
                if (v512 && !System.Runtime.Intrinsics.Vector512.IsHardwareAccelerated) continue;
                ManagedGemm.UseVector512 = v512;
                ManagedGemm.Blocking = (KC: 128, MCMax: mc, NC: nc);
                var c = (float[])c0.Clone();
                ManagedGemm.Sgemm(false, true, m, n, k, 0.7f, a, k, b, k, 0.3f, c, n);
                results.Add(c);
            }
        }
        finally { (ManagedGemm.Blocking, ManagedGemm.UseVector512) = saved; }
        foreach (var r in results.Skip(1)) Assert.Equal(results[0], r);
    }

    [Fact]
    public void ManagedIsIndependentOfThreadCount()
    {
        var a = Random(150 * 300, 1); var b = Random(300 * 170, 2);
        var c1 = new float[150 * 170]; var c2 = new float[150 * 170];
        var saved = ManagedGemm.MaxThreads;
        try
        {
            ManagedGemm.MaxThreads = 1;
            ManagedGemm.Sgemm(false, false, 150, 170, 300, 1f, a, 300, b, 170, 0f, c1, 170);
            ManagedGemm.MaxThreads = 3;
            ManagedGemm.Sgemm(false, false, 150, 170, 300, 1f, a, 300, b, 170, 0f, c2, 170);
        }
        finally { ManagedGemm.MaxThreads = saved; }
        Assert.Equal(c1, c2); // bit-identical: the k order is fixed by the blocking alone
    }

    static void Check(GemmBackend backend, int m, int n, int k, bool ta, bool tb)
    {
        // Padded leading dimensions exercise strides.
        int lda = (ta ? m : k) + 3, ldb = (tb ? k : n) + 2, ldc = n + 1;
        var a = Random(Math.Max(1, (ta ? k : m) * lda), 1);
        var b = Random(Math.Max(1, (tb ? n : k) * ldb), 2);
        var c0 = Random(Math.Max(1, m * ldc), 3);
        var expected = (float[])c0.Clone();
        var actual = (float[])c0.Clone();
        Gemm.Reference(ta, tb, m, n, k, 0.75f, a, lda, b, ldb, 0.5f, expected, ldc);
        var saved = Gemm.Backend;
        try
        {
            Gemm.Backend = backend;
            Gemm.Sgemm(ta, tb, m, n, k, 0.75f, a, lda, b, ldb, 0.5f, actual, ldc);
        }
        finally { Gemm.Backend = saved; }
        Golden.AssertClose($"{backend} gemm m={m} n={n} k={k} ta={ta} tb={tb}", expected, actual, atol: 1e-5 * Math.Max(1, Math.Sqrt(k)), rtol: 1e-5);
    }

    [Fact]
    public void BetaZeroIgnoresNaNInDestination()
    {
        var a = Random(4 * 3, 1); var b = Random(3 * 2, 2);
        var c = new float[4 * 2];
        Array.Fill(c, float.NaN);
        Gemm.Sgemm(false, false, 4, 2, 3, 1f, a, 3, b, 2, 0f, c, 2);
        Assert.All(c, v => Assert.False(float.IsNaN(v)));
    }

    [Fact]
    public void ManagedEntryPointRejectsTooShortBuffers()
    {
        var e = Assert.Throws<ArgumentException>(() => ManagedGemm.Sgemm(false, true, 16, 16, 16, 1f, new float[256], 16, new float[255], 16, 0f, new float[256], 16));
        Assert.Contains("B too short", e.Message);
    }

    [Fact]
    public void TooShortBufferIsRejected()
    {
        var e = Assert.Throws<ArgumentException>(() => Gemm.Sgemm(false, false, 4, 4, 4, 1f, new float[15], 4, new float[16], 4, 0f, new float[16], 4));
        Assert.Contains("A too short", e.Message);
    }
}

using Finetrace.Activations;
using Finetrace.Activations.Harvest;
using Finetrace.Cli;
using Finetrace.Models;
using Finetrace.Tests.Infrastructure;

namespace Finetrace.Tests.Activations;

/// <summary>A harvest split with --part i/n and joined with store merge equals the unsharded harvest byte for byte.</summary>
[Collection(ProcessWide.Name)]
public class ShardedHarvestTests
{
    static HarvestOptions Whole(TempDir tmp, string name) =>
        HarvestTests.Options(tmp, name, tokens: 2500, dtype: "bf16", batch: 3, shard: 500) with { DropBos = true };

    [SharedTheory]
    [InlineData(3, 900)]
    [InlineData(4, 60)]    // fewer batches than parts: some parts are empty
    public void PartsMerged_EqualTheUnshardedStore_ByteForByte(int n, long tokens)
    {
        using var tmp = new TempDir();
        var whole = Whole(tmp, "whole") with { Tokens = tokens };
        Harvester.Run(whole);
        var parts = new List<string>();
        long partTokens = 0;
        for (int i = n - 1; i >= 0; i--)   // any order: parts are independent
        {
            var o = whole with { Out = tmp.File($"part{i}"), Part = new HarvestPart(i, n) };
            var res = Harvester.Run(o);
            partTokens += res.Tokens;
            parts.Add(o.Out);
            using var ps = ActivationStore.Open(o.Out);
            Assert.True(ps.Manifest.Complete);
            Assert.Equal($"{i}/{n}", ps.Settings.Options["part"]);
        }
        using (var ws = ActivationStore.Open(whole.Out))
        {
            Assert.Equal(ws.Tokens, partTokens);
            // The split is real: no part holds everything.
            foreach (var p in parts) { using var ps = ActivationStore.Open(p); Assert.True(ps.Tokens < ws.Tokens || tokens < 100); }
            if (tokens < 100) Assert.Contains(parts, p => { using var ps = ActivationStore.Open(p); return ps.Tokens == 0; });
        }
        var merged = tmp.File("merged");
        StoreMerge.Merge(parts, merged);
        ActivationStoreTests.AssertSameFiles(whole.Out, merged);
    }

    [SharedFact]
    public void InterruptedPart_AndInterruptedMerge_ResumeToTheSameStore()
    {
        using var tmp = new TempDir();
        var whole = Whole(tmp, "whole");
        Harvester.Run(whole);
        var p0 = whole with { Out = tmp.File("p0"), Part = new HarvestPart(0, 2) };
        var p1 = whole with { Out = tmp.File("p1"), Part = new HarvestPart(1, 2) };
        Harvester.Run(p0);
        using (var cts = new CancellationTokenSource())
            Assert.Throws<OperationCanceledException>(() => Harvester.Run(p1, p => { if (p.Tokens > 700) cts.Cancel(); }, cts.Token));
        using (var partial = ActivationStore.Open(p1.Out))
        {
            Assert.False(partial.Manifest.Complete);
            Assert.True(partial.Manifest.Shards.Count >= 1);
        }
        // An incomplete part is refused by name.
        var e = Assert.Throws<StoreMergeException>(() => StoreMerge.Merge([p0.Out, p1.Out], tmp.File("merged")));
        Assert.Contains(e.Problems, x => x.Contains("p1") && x.Contains("not complete"));
        Assert.True(Harvester.Run(p1).Resumed);

        var merged = tmp.File("merged");
        using (var cts = new CancellationTokenSource())
            Assert.Throws<OperationCanceledException>(() => StoreMerge.Merge([p1.Out, p0.Out], merged, p => { if (p.Tokens > 1200) cts.Cancel(); }, cts.Token));
        using (var partial = ActivationStore.Open(merged)) Assert.False(partial.Manifest.Complete);
        StoreMerge.Merge([p1.Out, p0.Out], merged);
        ActivationStoreTests.AssertSameFiles(whole.Out, merged);
    }

    [SharedFact]
    public void Merge_RefusesMissingDuplicateAndForeignParts()
    {
        using var tmp = new TempDir();
        var whole = Whole(tmp, "whole") with { Tokens = 600 };
        string P(int i, int n, string? name = null)
        {
            var o = whole with { Out = tmp.File(name ?? $"p{i}of{n}"), Part = new HarvestPart(i, n) };
            Harvester.Run(o);
            return o.Out;
        }
        string a = P(0, 3), b = P(1, 3), c = P(2, 3);
        var missing = Assert.Throws<StoreMergeException>(() => StoreMerge.Merge([a, c], tmp.File("m1")));
        Assert.Contains(missing.Problems, x => x.Contains("1/3") && x.Contains("missing"));
        var dup = Assert.Throws<StoreMergeException>(() => StoreMerge.Merge([a, b, b, c], tmp.File("m2")));
        Assert.Contains(dup.Problems, x => x.Contains("more than once"));
        // A part of another split (2 parts) is from a different plan.
        string other = P(1, 2);
        var foreign = Assert.Throws<StoreMergeException>(() => StoreMerge.Merge([a, other, c], tmp.File("m3")));
        Assert.Contains(foreign.Problems, x => x.Contains("not from the same harvest") && x.Contains("options.part"));
        // The whole store is not a part.
        Harvester.Run(whole);
        var notPart = Assert.Throws<StoreMergeException>(() => StoreMerge.Merge([whole.Out], tmp.File("m4")));
        Assert.Contains(notPart.Problems, x => x.Contains("not a part store"));
        // Resuming a part with another split is refused by the store's settings check.
        var mismatch = Assert.Throws<StoreSettingsMismatchException>(() => Harvester.Run(whole with { Out = a, Part = new HarvestPart(0, 2) }));
        Assert.Contains(mismatch.Differences, d => d.StartsWith("options.part"));
        // Outlier drops cannot be planned before the forward.
        var outl = Assert.Throws<SettingException>(() => Harvester.Run(whole with { Out = tmp.File("o"), Part = new HarvestPart(0, 2), OutlierFactor = 5 }));
        Assert.Equal(nameof(HarvestOptions.OutlierFactor), outl.Setting);
        // Data without a token fail in a part as in the whole harvest.
        File.WriteAllText(tmp.File("empty.txt"), "");
        Assert.Throws<HarvestNoDataException>(() => Harvester.Run(whole with { Out = tmp.File("e"), Part = new HarvestPart(1, 2), Data = [Finetrace.Text.Datasets.DataSourceSpec.Parse(tmp.File("empty.txt"))] }));
    }

    [SharedFact]
    public void Cli_HarvestPartsAndStoreMerge()
    {
        using var tmp = new TempDir();
        var whole = Whole(tmp, "whole") with { Tokens = 900 };
        string[] Args(string outDir, string? part) =>
        [
            "harvest", "--base", whole.BaseModel, "--finetuned", whole.FineTunedModel, "--data", whole.Data[0].Path, "--layers", "1,4",
            "--tokens", "900", "--context", "48", "--batch", "3", "--shard-tokens", "500", "--out", outDir, .. part is null ? Array.Empty<string>() : ["--part", part],
        ];
        Assert.Equal(0, Program.Main(Args(tmp.File("w"), null)));
        Assert.Equal(0, Program.Main(Args(tmp.File("a"), "0/2")));
        Assert.Equal(0, Program.Main(Args(tmp.File("b"), "1/2")));
        Assert.Equal(1, Program.Main(Args(tmp.File("c"), "2/2")));   // index out of range: a clear error, exit 1
        Assert.Equal(0, Program.Main(["store", "merge", tmp.File("b"), tmp.File("a"), "--out", tmp.File("m")]));
        ActivationStoreTests.AssertSameFiles(tmp.File("w"), tmp.File("m"));
    }

    [Theory]
    [InlineData("0/4", 0, 4)]
    [InlineData("3/4", 3, 4)]
    public void Part_Parses(string text, int i, int n) => Assert.Equal(new HarvestPart(i, n), HarvestPart.Parse(text));

    [Theory]
    [InlineData("4/4")]
    [InlineData("1/0")]
    [InlineData("-1/3")]
    [InlineData("2")]
    public void Part_RejectsBadText(string text) => Assert.Throws<SettingException>(() => HarvestPart.Parse(text));

    [Fact]
    public void Part_BatchesCoverAllWithoutOverlap()
    {
        foreach (long k in new long[] { 0, 1, 2, 7, 100 })
            foreach (int n in new[] { 1, 3, 8 })
            {
                long at = 0;
                for (int i = 0; i < n; i++)
                {
                    var (f, e) = new HarvestPart(i, n).Batches(k);
                    Assert.Equal(at, f);
                    Assert.True(e >= f);
                    at = e;
                }
                Assert.Equal(k, at);
                if (k >= 1) Assert.True(new HarvestPart(n - 1, n).Batches(k).End > new HarvestPart(n - 1, n).Batches(k).First);   // the last part is never empty
            }
    }
}

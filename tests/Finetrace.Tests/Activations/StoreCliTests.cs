using Finetrace.Activations;
using Finetrace.Activations.Synthetic;
using Finetrace.Cli;
using Finetrace.Tests.Infrastructure;

namespace Finetrace.Tests.Activations;

[Collection(ProcessWide.Name)]
public class StoreCliTests
{
    [Fact]
    public void SynthMake_ThenStoreInfoAndExport_RunFromTheCommandLine()
    {
        using var tmp = new TempDir();
        string store = tmp.File("syn");
        Assert.Equal(0, Program.Main(["synth", "make", "--d", "16", "--features", "40", "--tokens", "2000", "--seed", "3", "--exclusive", "0.2", "--out", store]));
        var truth = SyntheticTruth.Load(store);
        Assert.Equal(8, truth.FeaturesOf(FeatureCategory.Exclusive).Length);
        Assert.Equal(0.7, truth.Spec.Shared, 9);   // the remainder when --shared is not given
        using (var s = ActivationStore.Open(store)) Assert.Equal(2000, s.Tokens);
        Assert.Equal(0, Program.Main(["store", "info", store]));
        Assert.Equal(0, Program.Main(["store", "export", store, "--out", tmp.File("x")]));
        Assert.True(File.Exists(Path.Combine(tmp.Path, "x", "synthetic-ft", "synthetic", "train", "layer_0_out", "shard_0.memmap")));
        // A second make with another seed on the same folder is refused with the differing setting named.
        Assert.Equal(1, Program.Main(["synth", "make", "--d", "16", "--features", "40", "--tokens", "2000", "--seed", "4", "--exclusive", "0.2", "--out", store]));
    }

    [SharedFact]
    public void Layers_AcceptIndicesAndFractions()
    {
        string dir = Shared.Path("models", "stories260K");   // 5 layers
        Assert.Equal([1, 3], Finetrace.Cli.Commands.HarvestCommand.ParseLayers("1,3", dir));
        Assert.Equal([2], Finetrace.Cli.Commands.HarvestCommand.ParseLayers("0.5", dir));
        Assert.Equal([3], Finetrace.Cli.Commands.HarvestCommand.ParseLayers("0.8", dir));
        Assert.Throws<ArgumentException>(() => Finetrace.Cli.Commands.HarvestCommand.ParseLayers("middle", dir));
    }
}

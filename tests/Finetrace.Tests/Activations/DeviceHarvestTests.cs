using Finetrace.Activations;
using Finetrace.Activations.Harvest;
using Finetrace.Cuda.Checks;
using Finetrace.Diffing;
using Finetrace.Models;
using Finetrace.Pipeline;
using Finetrace.Tensors;
using Finetrace.Tests.Infrastructure;

namespace Finetrace.Tests.Activations;

/// <summary>The harvest's device plumbing with test doubles of <see cref="IForwardModel"/> (a device model's stand-ins:
/// the CPU forward behind the interface, optionally perturbed or skipping hooks).</summary>
[Collection(ProcessWide.Name)]
public class DeviceHarvestTests
{
    /// <summary>CausalLM behind the interface; counts forwards; <paramref name="extraHooks"/> adds hooks of its own
    /// (registered after the harvester's); <paramref name="dropHooks"/> runs without the caller's hooks.</summary>
    sealed class DoubleModel(CausalLM inner, Action<HookSet>? extraHooks = null, bool dropHooks = false) : IForwardModel
    {
        public int Forwards;
        public ModelConfig Config => inner.Config;
        public string Folder => inner.Folder;
        public int Layers => inner.Layers;
        public int Hidden => inner.Hidden;

        public (Tensor Residual, Tensor? Logits) Forward(TokenBatch batch, HookSet? hooks = null, int? stopAfterLayer = null)
        {
            Forwards++;
            if (dropHooks) hooks = null;
            if (extraHooks is not null) { hooks ??= new HookSet(); extraHooks(hooks); }
            return inner.Forward(batch, hooks, stopAfterLayer);
        }

        public void Dispose() => inner.Dispose();
    }

    sealed class Loads
    {
        public readonly List<(string Folder, string? Adapter)> Calls = [];
        public readonly List<DoubleModel> Models = [];

        public ForwardModelLoader Loader(string device = "test-device", string precision = "fp32", Action<HookSet>? extraHooks = null, bool dropHooks = false) =>
            new(device, precision, (f, a) =>
            {
                Calls.Add((f, a));
                var m = new DoubleModel(CausalLM.Load(f, a), extraHooks, dropHooks);
                Models.Add(m);
                return m;
            });
    }

    /// <summary>Every file of every shard, byte for byte (the manifest aside: its settings differ by the device keys).</summary>
    static void AssertSameShards(string a, string b)
    {
        var fa = Directory.GetFiles(a, "*", SearchOption.AllDirectories).Select(f => Path.GetRelativePath(a, f)).Where(f => f != ActivationStoreWriter.ManifestFile).Order().ToArray();
        var fb = Directory.GetFiles(b, "*", SearchOption.AllDirectories).Select(f => Path.GetRelativePath(b, f)).Where(f => f != ActivationStoreWriter.ManifestFile).Order().ToArray();
        Assert.Equal(fa, fb);
        Assert.NotEmpty(fa);
        foreach (var f in fa) Assert.True(File.ReadAllBytes(Path.Combine(a, f)).AsSpan().SequenceEqual(File.ReadAllBytes(Path.Combine(b, f))), $"{f} differs");
    }

    [SharedFact]
    public void Harvest_ThroughALoaderOfForwardModels_EqualsTheCpuHarvest_AndRecordsDeviceAndPrecision()
    {
        using var tmp = new TempDir();
        var o = HarvestTests.Options(tmp, "cpu", tokens: 700, shard: 300);
        var loads = new Loads();
        var cpuRes = Harvester.Run(o);
        var devRes = Harvester.Run(o with { Out = tmp.File("dev"), Loader = loads.Loader() });

        Assert.Equal([(o.BaseModel, (string?)null), (o.FineTunedModel, null)], loads.Calls);
        Assert.All(loads.Models, m => Assert.True(m.Forwards > 0));
        Assert.Equal(loads.Models[0].Forwards, loads.Models[1].Forwards);
        Assert.Equal(cpuRes.Tokens, devRes.Tokens);
        Assert.Equal("cpu (fp32)", cpuRes.Device);
        Assert.Equal("test-device (fp32)", devRes.Device);
        AssertSameShards(o.Out, tmp.File("dev"));

        using var cpu = ActivationStore.Open(o.Out);
        using var dev = ActivationStore.Open(tmp.File("dev"));
        Assert.False(cpu.Settings.Options.ContainsKey(Harvester.DeviceKey));   // CPU stores as before devices
        Assert.False(cpu.Settings.Options.ContainsKey(Harvester.PrecisionKey));
        Assert.Equal("test-device", dev.Settings.Options[Harvester.DeviceKey]);
        Assert.Equal("fp32", dev.Settings.Options[Harvester.PrecisionKey]);
        Assert.Equal(("cpu", "fp32"), Harvester.DeviceOf(cpu.Settings));
        Assert.Equal(("test-device", "fp32"), Harvester.DeviceOf(dev.Settings));
    }

    [SharedFact]
    public void Resume_OnAnotherDeviceOrPrecision_IsRefusedClearly_AndOnTheSameOneEqualsAnUninterruptedRun()
    {
        using var tmp = new TempDir();
        var o = HarvestTests.Options(tmp, "dev", tokens: 900, shard: 200) with { Loader = new Loads().Loader() };
        using (var cts = new CancellationTokenSource())
            Assert.Throws<OperationCanceledException>(() => Harvester.Run(o, p => { if (p.Tokens > 500) cts.Cancel(); }, cts.Token));
        long kept;
        using (var s = ActivationStore.Open(o.Out)) { Assert.False(s.Manifest.Complete); kept = s.Tokens; }
        Assert.InRange(kept, 200, 899);

        var onCpu = Assert.Throws<StoreDeviceMismatchException>(() => Harvester.Run(o with { Loader = ForwardModelLoader.Cpu }));
        Assert.Equal(("test-device", "fp32", "cpu", "fp32"), (onCpu.StoredDevice, onCpu.StoredPrecision, onCpu.Device, onCpu.Precision));
        Assert.Contains("harvested on test-device (fp32)", onCpu.Message);
        Assert.Contains("this run uses cpu (fp32)", onCpu.Message);
        var otherPrecision = Assert.Throws<StoreDeviceMismatchException>(() => Harvester.Run(o with { Loader = new Loads().Loader(precision: "bf16") }));
        Assert.Equal("bf16", otherPrecision.Precision);
        // refused before anything was written: the store is as it was
        using (var s = ActivationStore.Open(o.Out)) Assert.Equal(kept, s.Tokens);

        var resumed = Harvester.Run(o);
        Assert.True(resumed.Resumed);
        var whole = Harvester.Run(o with { Out = tmp.File("whole") });
        Assert.False(whole.Resumed);
        AssertSameShards(tmp.File("whole"), o.Out);

        // and a CPU store is not resumed on a device
        var cpu = HarvestTests.Options(tmp, "cpu", tokens: 300, shard: 200);
        Harvester.Run(cpu);
        Assert.Throws<StoreDeviceMismatchException>(() => Harvester.Run(cpu with { Loader = new Loads().Loader() }));
    }

    [SharedFact]
    public void Harvest_WithAModelThatSkipsTheCapturedHook_FailsNamingIt()
    {
        using var tmp = new TempDir();
        var o = HarvestTests.Options(tmp, "dev", tokens: 200) with { Loader = new Loads().Loader(dropHooks: true) };
        var e = Assert.Throws<InvalidOperationException>(() => Harvester.Run(o));
        Assert.Contains("blocks.1.hook_resid_post", e.Message);
        Assert.Contains("base model", e.Message);
    }

    [SharedFact]
    public void HarvestParity_PassesForTheSameForward_AndFailsForAPerturbedOne()
    {
        using var tmp = new TempDir();
        var opts = new HarvestParityOptions
        {
            BaseModel = Shared.Path("models", "stories260K"), FineTunedModel = Shared.Path("models", "stories260K-zog"), WorkDir = tmp.File("same"),
        };
        var same = HarvestParity.Run(opts, new Loads().Loader());
        Assert.True(same.Passed, same.ToString());
        Assert.True(same.SameTokens);
        Assert.InRange(same.CpuTokens, 300, 400);
        Assert.Equal(0, same.MaxNormRelative);   // the very same computation behind the interface
        Assert.Equal(1e-5, same.Tolerance);

        // 0.1% more embedding: every layer's residual is off by about 1e-3, far outside fp32's 1e-5
        var perturbed = HarvestParity.Run(opts with { WorkDir = tmp.File("perturbed") },
            new Loads().Loader(extraHooks: h => h.On("blocks.0.hook_resid_pre", (a, _) => { foreach (ref float x in a.Data.AsSpan()) x *= 1.001f; })));
        Assert.False(perturbed.Passed, perturbed.ToString());
        Assert.True(perturbed.SameTokens);
        Assert.InRange(perturbed.MaxNormRelative, 1e-4, 1e-2);
        Assert.Contains("FAIL", perturbed.ToString());

        // bf16's tolerance is 1e-2: the same perturbation passes there
        var loose = HarvestParity.Run(opts with { WorkDir = tmp.File("loose") },
            new Loads().Loader(precision: "bf16", extraHooks: h => h.On("blocks.0.hook_resid_pre", (a, _) => { foreach (ref float x in a.Data.AsSpan()) x *= 1.001f; })));
        Assert.Equal(1e-2, loose.Tolerance);
        Assert.True(loose.Passed, loose.ToString());
    }

    [SharedFact]
    public void Pipeline_HarvestsWithThePlansLoader_AndAFinishedStoreStaysCurrentOnAnotherDevice()
    {
        using var tmp = new TempDir();
        string b = Shared.Path("models", "stories260K"), f = Shared.Path("models", "stories260K-zog");
        var data = HarvestTests.Options(tmp, "unused").Data[0].Path;
        var cfg = DiffConfig.Parse($$"""
            data: { sources: ["{{data}}"] }
            harvest: { tokens: 300, context: 48 }
            """).Resolve(ModelConfig.Load(b));
        var loads = new Loads();
        var plan = new DiffPlan(new ModelPairSpec(b, f), cfg, tmp.File("RESULTS")) { HarvestLoader = loads.Loader() };
        var notes = new List<string>();
        var runs = DiffPipeline.RunHarvest(plan, progress: new SyncProgress<PipelineProgress>(p => notes.Add(p.Message)));
        Assert.Contains(runs, r => r.Stage == "harvest" && r.Ran);
        Assert.Equal([b, f], loads.Calls.Select(c => c.Folder));
        Assert.Contains("forward on test-device (fp32)", notes);
        using (var s = ActivationStore.Open(Path.Combine(tmp.File("RESULTS"), "store")))
            Assert.Equal("test-device", s.Settings.Options[Harvester.DeviceKey]);

        // the device is how the store was made, not what it holds: a finished harvest is current on the CPU too
        var again = DiffPipeline.RunHarvest(plan with { HarvestLoader = ForwardModelLoader.Cpu });
        Assert.Contains(again, r => r.Stage == "harvest" && !r.Ran);
    }
}

using Finetrace.Tensors;
using Finetrace.Dictionaries;
using Finetrace.Tests.Infrastructure;

namespace Finetrace.Tests.Dictionaries;

public sealed class TrainingRunTests
{
    static float[] Data(int n, int rowLen, ulong seed)
    {
        var r = new SplitMix64(seed); var x = new float[n * rowLen];
        for (int i = 0; i < x.Length; i++) x[i] = (float)(r.Normal() * (1 + i % 3));
        return x;
    }

    static DictionaryTrainer NewTrainer(Sparsity act, int models, int d, int f)
    {
        var dict = new SparseDictionary(models, d, f, act, CodeNormalization.Crosscoder, false, 4);
        Initialization.Crosscoder(dict, new SplitMix64(1));
        return new DictionaryTrainer(dict, new TrainerOptions { Lr = 3e-3, WarmupSteps = 3, DecayStart = 8, TotalSteps = 12, DeadTokens = 64, ThresholdStartStep = 2, SparsityCoef = 0.05f, SparsityWarmupSteps = 4 }, seed: 5);
    }

    [Theory]
    [InlineData(Sparsity.BatchTopK)]
    [InlineData(Sparsity.Relu)]
    public void Resume_continues_bit_for_bit(Sparsity act)
    {
        int models = 2, d = 10, f = 40, n = 6, batch = 24;
        var x = Data(100, models * d, 3);   // not a multiple of the batch: the cursor matters
        using var straight = new TempDir();
        var a = new TrainingRun(straight.Path, NewTrainer(act, models, d, f), new ArrayBatches(x, models, d), new RunOptions { BatchSize = batch, Steps = 2 * n, CheckpointEvery = n });
        a.Run();

        using var split = new TempDir();
        var b1 = new TrainingRun(split.Path, NewTrainer(act, models, d, f), new ArrayBatches(x, models, d), new RunOptions { BatchSize = batch, Steps = n, CheckpointEvery = n });
        b1.Run();
        // a fresh trainer and source: everything must come from the checkpoint
        var b2 = new TrainingRun(split.Path, NewTrainer(act, models, d, f), new ArrayBatches(x, models, d), new RunOptions { BatchSize = batch, Steps = 2 * n, CheckpointEvery = n, Resume = true });
        Assert.Equal(n, b2.Trainer.StepCount);
        b2.Run();

        var da = a.Trainer.Dict; var db = b2.Trainer.Dict;
        Assert.Equal(da.WEnc, db.WEnc);
        Assert.Equal(da.WDec, db.WDec);
        Assert.Equal(da.BEnc, db.BEnc);
        Assert.Equal(da.BDec, db.BDec);
        if (act == Sparsity.BatchTopK)
        {
            Assert.True(da.Threshold > 0, $"the threshold EMA should have run (θ = {da.Threshold}), or comparing it means nothing");
            Assert.Equal(da.Threshold, db.Threshold);
        }
        else Assert.Equal(-1f, db.Threshold);   // ReLU has no inference threshold: it must stay unset
        for (int i = 0; i < a.Trainer.Optimizer.ExpAvgSq.Length; i++)
        {
            Assert.Equal(a.Trainer.Optimizer.ExpAvg[i], b2.Trainer.Optimizer.ExpAvg[i]);
            Assert.Equal(a.Trainer.Optimizer.ExpAvgSq[i], b2.Trainer.Optimizer.ExpAvgSq[i]);
        }
        Assert.Equal(a.Trainer.TokensSinceFired, b2.Trainer.TokensSinceFired);
        Assert.Equal(a.Source.Position, b2.Source.Position);
        Assert.Equal(File.ReadAllLines(a.MetricsPath), File.ReadAllLines(b2.MetricsPath));
        // and training did something
        var fresh = NewTrainer(act, models, d, f).Dict;
        Assert.NotEqual(fresh.WEnc, da.WEnc);
    }

    [Fact]
    public void Divergence_stops_before_the_bad_update_and_keeps_the_last_checkpoint()
    {
        int models = 2, d = 8, f = 32, batch = 16;
        var x = Data(16 * 10, models * d, 4);
        for (int i = 0; i < models * d; i++) x[(16 * 7 + 3) * models * d + i] = float.NaN;   // a bad row in the 8th batch (step 7)
        using var dir = new TempDir();
        var run = new TrainingRun(dir.Path, NewTrainer(Sparsity.BatchTopK, models, d, f), new ArrayBatches(x, models, d, cycle: false), new RunOptions { BatchSize = batch, Steps = 10, CheckpointEvery = 5 });
        var before = (float[])run.Trainer.Dict.WEnc.Clone();
        var e = Assert.Throws<TrainingDivergedException>(() => run.Run());
        Assert.Equal((7L, 5L, run.CheckpointDir), (e.Step, e.CheckpointStep, e.CheckpointDir));
        Assert.True(float.IsNaN(e.Loss));
        Assert.Contains("step 7", e.Message);
        Assert.DoesNotContain("--", e.Message);   // the library names no command-line flag
        Assert.Equal(7, run.Trainer.StepCount);
        Assert.True(run.Trainer.Dict.WEnc.All(float.IsFinite));
        var (tr, pos, _) = TrainingCheckpoint.Load(run.CheckpointDir);
        Assert.Equal(5, tr.StepCount);
        Assert.Equal(5 * batch, pos);
        Assert.NotEqual(before, tr.Dict.WEnc);
    }
}

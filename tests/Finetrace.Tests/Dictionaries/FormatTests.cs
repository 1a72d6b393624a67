using Finetrace.Tensors;
using System.Text.Json.Nodes;
using Finetrace.Dictionaries;
using Finetrace.Models.Safetensors;
using Finetrace.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Finetrace.Tests.Dictionaries;

public sealed class FormatTests(ITestOutputHelper log)
{
    static float[] Data(int n, int rowLen, ulong seed, double scale = 1, double offset = 0)
    {
        var r = new SplitMix64(seed); var x = new float[n * rowLen];
        for (int i = 0; i < x.Length; i++) x[i] = (float)(r.Normal() * scale + offset);
        return x;
    }

    [SharedTheory]
    [InlineData("batchtopk_crosscoder.safetensors")]
    [InlineData("batchtopk_sae.safetensors")]
    [InlineData("crosscoder_l1.safetensors")]
    public void Dictionary_learning_round_trip_reproduces_the_reference_state_dict(string name)
    {
        using var fx = new SafetensorsFile(Shared.Path("fixtures", "dictionaries", name));
        string cls = fx.Metadata["dict_class"];
        const string prefix = "step5.";
        var d = DictionaryLearningFormat.FromStateDict(fx, prefix, cls);
        using var dir = new TempDir();
        DictionaryLearningFormat.Save(d, dir.Path);
        var cfg = JsonNode.Parse(File.ReadAllText(dir.File("config.json")))!.AsObject();
        Assert.Equal(cls, cfg["dict_class"]!.GetValue<string>());
        using var saved = new SafetensorsFile(dir.File("model.safetensors"));
        // exactly the reference's keys, shapes, dtypes and values
        var refKeys = fx.Tensors.Keys.Where(k => k.StartsWith(prefix)).Select(k => k[prefix.Length..]).OrderBy(k => k).ToArray();
        Assert.Equal(refKeys, saved.Tensors.Keys.OrderBy(k => k).ToArray());
        foreach (var k in refKeys)
        {
            var a = fx.Info(prefix + k); var b = saved.Info(k);
            Assert.Equal(a.DType, b.DType);
            Assert.Equal(a.Shape, b.Shape);
            if (fx.Bytes(prefix + k).SequenceEqual(saved.Bytes(k))) continue;
            // only a NaN's bit pattern may differ (the "no normaliser" buffers are NaN; torch and .NET spell NaN differently)
            Assert.Equal(DType.F32, a.DType);
            float[] x = fx.ReadF32(prefix + k).Data, y = saved.ReadF32(k).Data;
            Assert.Equal(x.Length, y.Length);
            for (int i = 0; i < x.Length; i++)
                Assert.True(float.IsNaN(x[i]) ? float.IsNaN(y[i]) : BitConverter.SingleToInt32Bits(x[i]) == BitConverter.SingleToInt32Bits(y[i]), $"{k}[{i}]: reference {x[i]}, saved {y[i]}");
        }
        var back = DictionaryIO.Load(dir.Path);
        Assert.Equal(d.WEnc, back.WEnc); Assert.Equal(d.WDec, back.WDec); Assert.Equal(d.Threshold, back.Threshold);
    }

    [Fact]
    public void Formats_that_cannot_hold_a_dictionary_say_which_can_without_naming_flags()
    {
        using var dir = new TempDir();
        var cc = new SparseDictionary(2, 4, 8, Sparsity.BatchTopK, CodeNormalization.Crosscoder, false, 2);
        var e = Assert.Throws<FormatCannotHoldException>(() => SaelensFormat.Save(cc, dir.Path));
        Assert.Equal((DictionaryFileFormat.Saelens, DictionaryFileFormat.DictionaryLearning), (e.Format, e.Alternative));
        Assert.DoesNotContain("--", e.Message);
        var topk = new SparseDictionary(1, 4, 8, Sparsity.TopK, CodeNormalization.None, true, 2);
        e = Assert.Throws<FormatCannotHoldException>(() => DictionaryLearningFormat.Save(topk, dir.Path));
        Assert.Equal((DictionaryFileFormat.DictionaryLearning, DictionaryFileFormat.Saelens), (e.Format, e.Alternative));
        var unset = new SparseDictionary(1, 4, 8, Sparsity.BatchTopK, CodeNormalization.None, true, 2) { Threshold = -1 };
        Assert.DoesNotContain("--", Assert.Throws<ThresholdUnsetException>(() => SaelensFormat.Save(unset, dir.Path)).Message);
    }

    [Fact]
    public void Unknown_or_missing_keys_are_refused_with_the_key_name()
    {
        var d = new SparseDictionary(2, 4, 8, Sparsity.BatchTopK, CodeNormalization.Crosscoder, false, 2);
        Initialization.Crosscoder(d, new SplitMix64(1));
        using var dir = new TempDir();
        var tensors = DictionaryLearningFormat.StateDict(d);
        tensors.Add(TensorData.F32("encoder.extra", new float[3], 3));
        Directory.CreateDirectory(dir.Path);
        SafetensorsWriter.Write(dir.File("model.safetensors"), tensors);
        File.WriteAllText(dir.File("config.json"), "{\"dict_class\": \"BatchTopKCrossCoder\"}");
        var e = Assert.Throws<DictionaryFormatException>(() => DictionaryIO.Load(dir.Path));
        Assert.Contains("encoder.extra", e.Message);

        SafetensorsWriter.Write(dir.File("model.safetensors"), DictionaryLearningFormat.StateDict(d).Where(t => t.Name != "decoder.bias"));
        e = Assert.Throws<DictionaryFormatException>(() => DictionaryIO.Load(dir.Path));
        Assert.Contains("decoder.bias", e.Message);

        File.WriteAllText(dir.File("config.json"), "{\"dict_class\": \"MatryoshkaCrossCoder\"}");
        e = Assert.Throws<DictionaryFormatException>(() => DictionaryIO.Load(dir.Path));
        Assert.Contains("MatryoshkaCrossCoder", e.Message);
    }

    [Theory]
    [InlineData(Sparsity.BatchTopK)]
    [InlineData(Sparsity.TopK)]
    [InlineData(Sparsity.Relu)]
    [InlineData(Sparsity.JumpRelu)]
    public void Saelens_folder_folds_the_normaliser_and_reproduces_raw_space_reconstructions(Sparsity act)
    {
        int D = 12, F = 40;
        var d = new SparseDictionary(1, D, F, act, CodeNormalization.None, subtractDecoderBias: true, k: 3);
        Initialization.Sae(d, new SplitMix64(2));
        var r = new SplitMix64(3);
        for (int i = 0; i < F; i++) d.BEnc[i] = (float)(r.Normal() * 0.1);
        for (int i = 0; i < D; i++) d.BDec[i] = (float)(r.Normal() * 0.1);
        d.Threshold = 0.05f;
        if (d.JumpThreshold is not null) for (int i = 0; i < F; i++) d.JumpThreshold[i] = (float)(0.02 + 0.05 * r.NextDouble());
        var mean = Data(1, D, 4, 3); var std = Data(1, D, 5, 1, 4).Select(Math.Abs).ToArray();
        d.Normalizer = Normalizer.FromStats(10f, mean, std, 1, D);
        var x = Data(50, D, 6, 4, 1);

        var (codesA, xhA) = Evaluation.ReconstructRaw(d, x);
        using var dir = new TempDir();
        SaelensFormat.Save(d, dir.Path, new float[F]);
        var cfg = JsonNode.Parse(File.ReadAllText(dir.File("cfg.json")))!.AsObject();
        Assert.Equal(act switch { Sparsity.Relu => "standard", Sparsity.TopK => "topk", _ => "jumprelu" }, cfg["architecture"]!.GetValue<string>());
        var back = DictionaryIO.Load(dir.Path);
        Assert.Null(back.Normalizer);
        var (codesB, xhB) = Evaluation.ReconstructRaw(back, x);
        var fa = new float[50 * F]; var fb = new float[50 * F];
        codesA.ToDense(fa); codesB.ToDense(fb);
        Golden.AssertClose("codes", fa, fb, 1e-4, 1e-4, log);
        Golden.AssertClose("raw reconstruction", xhA, xhB, 1e-4, 1e-4, log);
        Assert.True(codesA.Count > 0);

        File.WriteAllText(dir.File("cfg.json"), cfg.ToJsonString().Replace("\"none\"", "\"layer_norm\""));
        Assert.Throws<DictionaryFormatException>(() => DictionaryIO.Load(dir.Path));
    }
}

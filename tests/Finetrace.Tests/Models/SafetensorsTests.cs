using System.Text;
using Finetrace.Models.Safetensors;
using Finetrace.Tensors;
using Finetrace.Tests.Infrastructure;

namespace Finetrace.Tests.Models;

public class SafetensorsTests
{
    static byte[] RawFile(string headerJson, int dataBytes, bool pad = true)
    {
        var h = Encoding.UTF8.GetBytes(headerJson);
        int len = pad ? (h.Length + 7) / 8 * 8 : h.Length;
        var file = new byte[8 + len + dataBytes];
        BitConverter.TryWriteBytes(file.AsSpan(0, 8), (ulong)len);
        h.CopyTo(file, 8);
        for (int i = h.Length; i < len; i++) file[8 + i] = (byte)' ';
        for (int i = 0; i < dataBytes; i++) file[8 + len + i] = (byte)i;
        return file;
    }

    [Fact]
    public void RoundTripKeepsValuesShapesDtypesAndMetadata()
    {
        using var tmp = new TempDir();
        string path = tmp.File("x.safetensors");
        var rng = new Random(1);
        var a = Enumerable.Range(0, 6 * 5).Select(_ => (float)rng.NextDouble() - 0.5f).ToArray();
        var b = new[] { 1.5f, -2.25f, 3e-3f, float.PositiveInfinity };
        var ids = new long[] { 2, 5, long.MaxValue, -1 };
        SafetensorsWriter.Write(path,
        [
            TensorData.F32("layer.weight", a, 6, 5),
            TensorData.BF16("half", b, 2, 2),
            TensorData.I64("input_ids", ids, 1, 4),
            TensorData.F32("scalar", new[] { 7f }),
            TensorData.F32("empty", ReadOnlySpan<float>.Empty, 0, 3),
        ], new Dictionary<string, string> { ["format"] = "pt", ["note"] = "ünïcode" });

        var bytes = File.ReadAllBytes(path);
        ulong n = BitConverter.ToUInt64(bytes, 0);
        Assert.Equal(0ul, n % 8);

        using var f = new SafetensorsFile(path);
        Assert.Equal("pt", f.Metadata["format"]);
        Assert.Equal("ünïcode", f.Metadata["note"]);
        Assert.Equal(new[] { 6, 5 }, f.Info("layer.weight").Shape);
        Assert.Equal(a, f.ReadF32("layer.weight").Data);
        Assert.Equal(DType.BF16, f.Info("half").DType);
        var bf = f.ReadF32("half").Data;
        for (int i = 0; i < b.Length; i++) Assert.Equal(Precision.BF16ToF32(Precision.F32ToBF16(b[i])), bf[i]);
        Assert.Equal(ids, f.ReadI64("input_ids"));
        Assert.Empty(f.Info("scalar").Shape);
        Assert.Equal(7f, f.ReadF32("scalar").Data[0]);
        Assert.Equal(0, f.ReadF32("empty").Length);
        // Writer order: descending alignment, then name.
        var order = f.Tensors.Values.OrderBy(t => t.Offset).Select(t => t.Name).ToArray();
        Assert.Equal(new[] { "input_ids", "empty", "layer.weight", "scalar", "half" }, order);
    }

    [Fact]
    public void RejectsTruncatedFileNamingFileAndTensor()
    {
        using var tmp = new TempDir();
        string path = tmp.File("t.safetensors");
        SafetensorsWriter.Write(path, [TensorData.F32("w", new float[100], 10, 10)]);
        var bytes = File.ReadAllBytes(path);
        File.WriteAllBytes(path, bytes[..^17]);
        var e = Assert.Throws<SafetensorsFormatException>(() => new SafetensorsFile(path));
        Assert.Contains(path, e.Message);
        Assert.Contains("'w'", e.Message);
        Assert.Contains("truncated", e.Message);
    }

    [Fact]
    public void RejectsFileShorterThanLengthPrefix()
    {
        using var tmp = new TempDir();
        string path = tmp.File("tiny.safetensors");
        File.WriteAllBytes(path, new byte[5]);
        var e = Assert.Throws<SafetensorsFormatException>(() => new SafetensorsFile(path));
        Assert.Contains(path, e.Message);
        Assert.Contains("truncated", e.Message);
    }

    [Fact]
    public void RejectsHeaderLongerThanFile()
    {
        using var tmp = new TempDir();
        string path = tmp.File("h.safetensors");
        var file = RawFile("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4);
        BitConverter.TryWriteBytes(file.AsSpan(0, 8), (ulong)file.Length); // claims more than the file holds
        File.WriteAllBytes(path, file);
        var e = Assert.Throws<SafetensorsFormatException>(() => new SafetensorsFile(path));
        Assert.Contains(path, e.Message);
        Assert.Contains("longer than the file", e.Message);
    }

    [Fact]
    public void RejectsHeaderOverFormatLimit()
    {
        using var tmp = new TempDir();
        string path = tmp.File("big.safetensors");
        var file = RawFile("{}", 0);
        BitConverter.TryWriteBytes(file.AsSpan(0, 8), 100_000_001ul);
        File.WriteAllBytes(path, file);
        var e = Assert.Throws<SafetensorsFormatException>(() => new SafetensorsFile(path));
        Assert.Contains("limit", e.Message);
    }

    [Fact]
    public void RejectsOverlappingOffsets()
    {
        using var tmp = new TempDir();
        string path = tmp.File("o.safetensors");
        File.WriteAllBytes(path, RawFile(
            "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12));
        var e = Assert.Throws<SafetensorsFormatException>(() => new SafetensorsFile(path));
        Assert.Contains(path, e.Message);
        Assert.Contains("overlaps", e.Message);
        Assert.Contains("'b'", e.Message);
    }

    [Theory]
    [InlineData("{\"a\":{\"dtype\":\"F17\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "unknown dtype 'F17'")]
    [InlineData("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4, "needs 8")]
    [InlineData("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, "gap")]
    [InlineData("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 8, "trailing")]
    [InlineData("[1,2]", 0, "'{'")]
    [InlineData("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, "duplicate")]
    public void RejectsMalformedHeaders(string header, int dataBytes, string expectedMessagePart)
    {
        using var tmp = new TempDir();
        string path = tmp.File("m.safetensors");
        File.WriteAllBytes(path, RawFile(header, dataBytes));
        var e = Assert.Throws<SafetensorsFormatException>(() => new SafetensorsFile(path));
        Assert.Contains(expectedMessagePart, e.Message);
        Assert.Contains(path, e.Message);
    }

    [Fact]
    public void ShardedCheckpointResolvesThroughIndex()
    {
        using var tmp = new TempDir();
        SafetensorsWriter.Write(tmp.File("model-00001-of-00002.safetensors"), [TensorData.F32("a", new[] { 1f, 2f }, 2)]);
        SafetensorsWriter.Write(tmp.File("model-00002-of-00002.safetensors"), [TensorData.F32("b", new[] { 3f }, 1)]);
        File.WriteAllText(tmp.File("model.safetensors.index.json"),
            "{\"metadata\":{\"total_size\":12},\"weight_map\":{\"a\":\"model-00001-of-00002.safetensors\",\"b\":\"model-00002-of-00002.safetensors\"}}");
        using var ck = new ShardedCheckpoint(tmp.Path);
        Assert.Equal(new[] { 1f, 2f }, ck.ReadF32("a").Data);
        Assert.Equal(new[] { 3f }, ck.ReadF32("b").Data);
        Assert.Equal(2, ck.Files.Count);
        var e = Assert.Throws<KeyNotFoundException>(() => ck.Info("c"));
        Assert.Contains("'c'", e.Message);
    }

    [Fact]
    public void ShardedCheckpointWithMissingShardNamesIt()
    {
        using var tmp = new TempDir();
        File.WriteAllText(tmp.File("model.safetensors.index.json"), "{\"weight_map\":{\"a\":\"model-00001-of-00002.safetensors\"}}");
        var e = Assert.Throws<FileNotFoundException>(() => new ShardedCheckpoint(tmp.Path));
        Assert.Contains("model-00001-of-00002.safetensors", e.Message);
    }

    public static IEnumerable<object[]> ArchFixtureFiles()
    {
        if (Shared.Root is null) yield return new object[] { "" };
        else
            foreach (var f in Directory.GetFiles(Shared.Path("fixtures", "arch"), "*.safetensors", SearchOption.AllDirectories).Order())
                yield return new object[] { Path.GetRelativePath(Shared.Path("fixtures", "arch"), f) };
    }

    [SharedTheory]
    [MemberData(nameof(ArchFixtureFiles))]
    public void ReadsEveryArchFixtureFile(string relative)
    {
        string path = Shared.Path("fixtures", "arch", relative);
        using var f = new SafetensorsFile(path);
        Assert.NotEmpty(f.Tensors);
        foreach (var t in f.Tensors.Values)
        {
            if (t.DType is DType.F32 or DType.BF16 or DType.F16)
            {
                var v = f.ReadF32(t.Name);
                Assert.Equal(t.ElementCount, v.Length);
                Assert.All(v.Data, x => Assert.True(float.IsFinite(x), $"{relative}:{t.Name} has a non-finite value"));
            }
            else Assert.Equal(t.ElementCount, f.ReadI64(t.Name).Length);
        }
        // A re-write of the same tensors reads back identically (writer/reader agree on real files).
        using var tmp = new TempDir();
        string copy = tmp.File("copy.safetensors");
        SafetensorsWriter.Write(copy, f.Tensors.Values.Select(t => new TensorData(t.Name, t.DType, t.Shape, f.Bytes(t.Name).ToArray())), f.Metadata);
        using var g = new SafetensorsFile(copy);
        foreach (var t in f.Tensors.Values) Assert.True(f.Bytes(t.Name).SequenceEqual(g.Bytes(t.Name)), t.Name);
    }
}

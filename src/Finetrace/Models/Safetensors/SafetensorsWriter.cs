using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json;
using Finetrace.Tensors;

namespace Finetrace.Models.Safetensors;

/// <summary>A tensor to write: raw little-endian bytes of <paramref name="DType"/> in row-major order.</summary>
public sealed record TensorData(string Name, DType DType, int[] Shape, byte[] Bytes)
{
    public static TensorData F32(string name, ReadOnlySpan<float> values, params int[] shape) =>
        new(name, DType.F32, shape, MemoryMarshal.AsBytes(values).ToArray());
    public static TensorData F32(string name, Tensor t) => F32(name, t.Span, t.Shape);

    public static TensorData BF16(string name, ReadOnlySpan<float> values, params int[] shape)
    {
        var bits = new ushort[values.Length];
        Precision.F32ToBF16(values, bits);
        return new(name, DType.BF16, shape, MemoryMarshal.AsBytes<ushort>(bits).ToArray());
    }

    public static TensorData I64(string name, ReadOnlySpan<long> values, params int[] shape) =>
        new(name, DType.I64, shape, MemoryMarshal.AsBytes(values).ToArray());
}

/// <summary>
/// Writes safetensors files: header JSON padded with spaces to a multiple of 8, tensors ordered by descending
/// dtype alignment then name (as the reference writer does), contiguous offsets, optional <c>__metadata__</c>.
/// Writes to a temporary file and renames it, so a crash never leaves a half-written file under the final name.
/// </summary>
public static class SafetensorsWriter
{
    public static void Write(string path, IEnumerable<TensorData> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var list = tensors.ToList();
        var names = new HashSet<string>(StringComparer.Ordinal);
        foreach (var t in list)
        {
            if (t.Name == "__metadata__") throw new ArgumentException($"{path}: '__metadata__' is not a valid tensor name");
            if (!names.Add(t.Name)) throw new ArgumentException($"{path}: duplicate tensor name '{t.Name}'");
            long need = Tensor.ShapeLength(t.Shape) * DTypes.Bits(t.DType) / 8;
            if (need != t.Bytes.Length) throw new ArgumentException($"{path}: tensor '{t.Name}' has {t.Bytes.Length} bytes but {t.DType} [{string.Join(", ", t.Shape)}] needs {need}");
        }
        list.Sort((a, b) =>
        {
            int c = DTypes.Bits(b.DType).CompareTo(DTypes.Bits(a.DType));
            return c != 0 ? c : string.CompareOrdinal(a.Name, b.Name);
        });

        var header = BuildHeader(list, metadata);
        string tmp = path + ".tmp-" + Environment.ProcessId;
        using (var fs = new FileStream(tmp, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20))
        {
            Span<byte> len = stackalloc byte[8];
            BitConverter.TryWriteBytes(len, (ulong)header.Length);
            fs.Write(len);
            fs.Write(header);
            foreach (var t in list) fs.Write(t.Bytes);
            fs.Flush(flushToDisk: true);
        }
        File.Move(tmp, path, overwrite: true);
    }

    static byte[] BuildHeader(List<TensorData> list, IReadOnlyDictionary<string, string>? metadata)
    {
        using var ms = new MemoryStream();
        using (var w = new Utf8JsonWriter(ms))
        {
            w.WriteStartObject();
            if (metadata is { Count: > 0 })
            {
                w.WriteStartObject("__metadata__");
                foreach (var (k, v) in metadata) w.WriteString(k, v);
                w.WriteEndObject();
            }
            long offset = 0;
            foreach (var t in list)
            {
                w.WriteStartObject(t.Name);
                w.WriteString("dtype", t.DType.ToString());
                w.WriteStartArray("shape");
                foreach (int d in t.Shape) w.WriteNumberValue(d);
                w.WriteEndArray();
                w.WriteStartArray("data_offsets");
                w.WriteNumberValue(offset);
                w.WriteNumberValue(offset + t.Bytes.Length);
                w.WriteEndArray();
                w.WriteEndObject();
                offset += t.Bytes.Length;
            }
            w.WriteEndObject();
        }
        var bytes = ms.ToArray();
        int padded = (bytes.Length + 7) / 8 * 8;
        var result = new byte[padded];
        bytes.CopyTo(result, 0);
        for (int i = bytes.Length; i < padded; i++) result[i] = (byte)' ';
        return result;
    }
}

using System.Buffers.Binary;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Text;

namespace Finetrace.Activations.Export;

/// <summary>
/// A minimal <c>torch.save</c> writer for one contiguous tensor (0-D, 1-D or 2-D; formats.md §8): a zip archive of
/// stored (uncompressed) entries <c>{stem}/data.pkl</c>, <c>{stem}/byteorder</c>, <c>{stem}/data/0</c>,
/// <c>{stem}/version</c>, with record data aligned to 64 bytes as PyTorch's writer does. The pickle is one fixed
/// protocol-2 program calling <c>torch._utils._rebuild_tensor_v2</c>, which <c>torch.load(weights_only=True)</c> accepts.
/// </summary>
public static class TorchSave
{
    public enum Storage { Long, Int, Float, Double, BFloat16 }

    static string StorageName(Storage s) => s switch
    {
        Storage.Long => "LongStorage", Storage.Int => "IntStorage", Storage.Float => "FloatStorage",
        Storage.Double => "DoubleStorage", Storage.BFloat16 => "BFloat16Storage",
        _ => throw new ArgumentOutOfRangeException(nameof(s)),
    };

    static int ElementSize(Storage s) => s switch { Storage.Long or Storage.Double => 8, Storage.Int or Storage.Float => 4, _ => 2 };

    public static void Write(string path, ReadOnlySpan<long> values, params long[] shape) => Write(path, Storage.Long, values, shape);
    public static void Write(string path, ReadOnlySpan<double> values, params long[] shape) => Write(path, Storage.Double, values, shape);
    public static void Write(string path, ReadOnlySpan<float> values, params long[] shape) => Write(path, Storage.Float, values, shape);

    /// <summary>Writes little-endian elements as a tensor of <paramref name="shape"/> (empty = scalar). Any size:
    /// the bytes are streamed in chunks (a span of more than 2 GiB cannot be viewed as bytes at once) and the zip
    /// switches to ZIP64 records where a size or offset needs them.</summary>
    public static void Write<T>(string path, Storage storage, ReadOnlySpan<T> values, params long[] shape) where T : unmanaged
    {
        if (Unsafe.SizeOf<T>() != ElementSize(storage) && typeof(T) != typeof(byte))
            throw new ArgumentException($"{path}: {typeof(T).Name} elements do not match {storage}");
        long bytes = (long)values.Length * Unsafe.SizeOf<T>();
        CheckShape(path, storage, bytes, shape);
        using (var fs = new FileStream(path + ".tmp", FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20))
        {
            var (zip, dataName) = Begin(fs, path, storage, bytes, shape);
            zip.Add(dataName, values);
            Finish(fs, zip, path);
        }
        File.Move(path + ".tmp", path, overwrite: true);
    }

    /// <summary>Writes a tensor whose <paramref name="bytes"/> little-endian element bytes come from
    /// <paramref name="produce"/> (called twice: once for the checksum, once to write; it must give the same bytes).</summary>
    public static void Write(string path, Storage storage, long bytes, long[] shape, Action<ZipWriter.ChunkSink> produce)
    {
        CheckShape(path, storage, bytes, shape);
        using (var fs = new FileStream(path + ".tmp", FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20))
        {
            var (zip, dataName) = Begin(fs, path, storage, bytes, shape);
            zip.Add(dataName, bytes, produce);
            Finish(fs, zip, path);
        }
        File.Move(path + ".tmp", path, overwrite: true);
    }

    // The two Write overloads differ only in how the data record is added (a span cannot be captured in a
    // delegate), so the records before and after it are written here: data.pkl and byteorder, then version.
    static (ZipWriter Zip, string DataName) Begin(FileStream fs, string path, Storage storage, long bytes, long[] shape)
    {
        var zip = new ZipWriter(fs);
        string stem = Stem(path);
        zip.Add($"{stem}/data.pkl", Pickle(storage, bytes / ElementSize(storage), shape));
        zip.Add($"{stem}/byteorder", "little"u8);
        return (zip, $"{stem}/data/0");
    }

    static void Finish(FileStream fs, ZipWriter zip, string path)
    {
        zip.Add($"{Stem(path)}/version", "3\n"u8);
        zip.Finish();
        fs.Flush(flushToDisk: true);
    }

    static void CheckShape(string path, Storage storage, long bytes, long[] shape)
    {
        if (shape.Length > 2) throw new ArgumentException("TorchSave writes 0-D, 1-D and 2-D tensors only");
        long numel = 1;
        foreach (long d in shape) numel *= d;
        if (numel * ElementSize(storage) != bytes)
            throw new ArgumentException($"{path}: {bytes} bytes do not hold {numel} {storage} elements");
    }

    static string Stem(string path)
    {
        string stem = Path.GetFileNameWithoutExtension(path);
        return stem.Length == 0 || stem.Any(c => c is '/' or '\\' || c > 0x7E) ? "archive" : stem;
    }

    // Protocol-2 program: _rebuild_tensor_v2(persistent storage, 0, size, stride, False, OrderedDict()).
    static byte[] Pickle(Storage storage, long numel, long[] shape)
    {
        var p = new List<byte> { 0x80, 0x02 };
        void Global(string module, string name) { p.Add((byte)'c'); p.AddRange(Encoding.ASCII.GetBytes(module + "\n" + name + "\n")); }
        void Str(string s)
        {
            var b = Encoding.UTF8.GetBytes(s);
            p.Add((byte)'X');
            p.AddRange(BitConverter.GetBytes(b.Length));
            p.AddRange(b);
        }
        void Int(long v)
        {
            if (v >= 0 && v < 256) { p.Add((byte)'K'); p.Add((byte)v); }
            else if (v >= int.MinValue && v <= int.MaxValue) { p.Add((byte)'J'); p.AddRange(BitConverter.GetBytes((int)v)); }
            else
            {
                // LONG1: little-endian two's complement, minimal length.
                var bytes = new List<byte>(BitConverter.GetBytes(v));
                while (bytes.Count > 1 && ((bytes[^1] == 0 && (bytes[^2] & 0x80) == 0) || (bytes[^1] == 0xFF && (bytes[^2] & 0x80) != 0))) bytes.RemoveAt(bytes.Count - 1);
                p.Add(0x8A); p.Add((byte)bytes.Count); p.AddRange(bytes);
            }
        }
        void Tuple(IReadOnlyList<long> xs)
        {
            if (xs.Count == 0) { p.Add((byte)')'); return; }
            foreach (var x in xs) Int(x);
            p.Add(xs.Count switch { 1 => (byte)0x85, 2 => (byte)0x86, _ => throw new InvalidOperationException() });
        }
        Global("torch._utils", "_rebuild_tensor_v2");
        p.Add((byte)'(');
        p.Add((byte)'(');
        Str("storage");
        Global("torch", StorageName(storage));
        Str("0");
        Str("cpu");
        Int(numel);
        p.Add((byte)'t');
        p.Add((byte)'Q');                       // BINPERSID
        Int(0);                                 // storage offset
        Tuple(shape);
        var stride = new long[shape.Length];
        for (int i = shape.Length - 1, s = 1; i >= 0; i--) { stride[i] = s; s *= (int)Math.Max(1, shape[i]); }
        Tuple(stride);
        p.Add(0x89);                            // NEWFALSE: requires_grad
        Global("collections", "OrderedDict");
        p.Add((byte)')');
        p.Add((byte)'R');
        p.Add((byte)'t');
        p.Add((byte)'R');
        p.Add((byte)'.');
        return p.ToArray();
    }

    static readonly uint[] CrcTable = MakeCrcTable();

    static uint[] MakeCrcTable()
    {
        var t = new uint[256];
        for (uint n = 0; n < 256; n++)
        {
            uint c = n;
            for (int k = 0; k < 8; k++) c = (c & 1) != 0 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
            t[n] = c;
        }
        return t;
    }

    internal static uint Crc32(ReadOnlySpan<byte> data) => Crc32Update(0, data);

    /// <summary>CRC-32 of the bytes so far (<paramref name="crc"/>, 0 to start) followed by <paramref name="data"/>.</summary>
    internal static uint Crc32Update(uint crc, ReadOnlySpan<byte> data)
    {
        uint c = ~crc;
        foreach (byte b in data) c = CrcTable[(c ^ b) & 0xFF] ^ (c >> 8);
        return ~c;
    }
}

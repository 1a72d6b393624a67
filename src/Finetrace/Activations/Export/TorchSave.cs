using System.Buffers.Binary;
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

    public static void Write(string path, ReadOnlySpan<long> values, params long[] shape) => Write(path, Storage.Long, MemoryMarshal.AsBytes(values), shape);
    public static void Write(string path, ReadOnlySpan<double> values, params long[] shape) => Write(path, Storage.Double, MemoryMarshal.AsBytes(values), shape);
    public static void Write(string path, ReadOnlySpan<float> values, params long[] shape) => Write(path, Storage.Float, MemoryMarshal.AsBytes(values), shape);

    /// <summary>Writes raw little-endian element bytes as a tensor of <paramref name="shape"/> (empty = scalar).</summary>
    public static void Write(string path, Storage storage, ReadOnlySpan<byte> data, params long[] shape)
    {
        if (shape.Length > 2) throw new ArgumentException("TorchSave writes 0-D, 1-D and 2-D tensors only");
        long numel = 1;
        foreach (long d in shape) numel *= d;
        if (numel * ElementSize(storage) != data.Length)
            throw new ArgumentException($"{path}: {data.Length} bytes do not hold {numel} {storage} elements");
        string stem = Path.GetFileNameWithoutExtension(path);
        if (stem.Length == 0 || stem.Any(c => c is '/' or '\\' || c > 0x7E)) stem = "archive";
        var entries = new List<(string Name, byte[] Data)>
        {
            ($"{stem}/data.pkl", Pickle(storage, numel, shape)),
            ($"{stem}/byteorder", "little"u8.ToArray()),
            ($"{stem}/data/0", data.ToArray()),
            ($"{stem}/version", "3\n"u8.ToArray()),
        };
        StoreFiles.WriteAtomic(path, Zip(entries));
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

    /// <summary>A zip of stored entries whose data start at multiples of 64 (padding in the local header's extra field).</summary>
    internal static byte[] Zip(List<(string Name, byte[] Data)> entries)
    {
        using var ms = new MemoryStream();
        var central = new MemoryStream();
        Span<byte> h = stackalloc byte[46];
        foreach (var (name, data) in entries)
        {
            var nameBytes = Encoding.UTF8.GetBytes(name);
            long offset = ms.Position;
            long dataStart = offset + 30 + nameBytes.Length + 4;
            int pad = (int)((64 - dataStart % 64) % 64);
            int extraLen = 4 + pad;
            uint crc = Crc32(data);
            h.Clear();
            BinaryPrimitives.WriteUInt32LittleEndian(h, 0x04034b50);
            BinaryPrimitives.WriteUInt16LittleEndian(h[4..], 20);          // version needed
            BinaryPrimitives.WriteUInt16LittleEndian(h[6..], 0);           // flags
            BinaryPrimitives.WriteUInt16LittleEndian(h[8..], 0);           // stored
            BinaryPrimitives.WriteUInt16LittleEndian(h[10..], 0);          // time
            BinaryPrimitives.WriteUInt16LittleEndian(h[12..], 0x21);       // date 1980-01-01
            BinaryPrimitives.WriteUInt32LittleEndian(h[14..], crc);
            BinaryPrimitives.WriteUInt32LittleEndian(h[18..], checked((uint)data.Length));
            BinaryPrimitives.WriteUInt32LittleEndian(h[22..], (uint)data.Length);
            BinaryPrimitives.WriteUInt16LittleEndian(h[26..], (ushort)nameBytes.Length);
            BinaryPrimitives.WriteUInt16LittleEndian(h[28..], (ushort)extraLen);
            ms.Write(h[..30]);
            ms.Write(nameBytes);
            // Extra field 'FB' (PyTorch's padding record) of pad bytes 'Z'.
            ms.Write([(byte)'F', (byte)'B', (byte)(pad & 0xFF), (byte)(pad >> 8)]);
            for (int i = 0; i < pad; i++) ms.WriteByte((byte)'Z');
            ms.Write(data);

            h.Clear();
            BinaryPrimitives.WriteUInt32LittleEndian(h, 0x02014b50);
            BinaryPrimitives.WriteUInt16LittleEndian(h[4..], 20);           // made by
            BinaryPrimitives.WriteUInt16LittleEndian(h[6..], 20);           // needed
            BinaryPrimitives.WriteUInt16LittleEndian(h[12..], 0);
            BinaryPrimitives.WriteUInt16LittleEndian(h[14..], 0x21);
            BinaryPrimitives.WriteUInt32LittleEndian(h[16..], crc);
            BinaryPrimitives.WriteUInt32LittleEndian(h[20..], (uint)data.Length);
            BinaryPrimitives.WriteUInt32LittleEndian(h[24..], (uint)data.Length);
            BinaryPrimitives.WriteUInt16LittleEndian(h[28..], (ushort)nameBytes.Length);
            BinaryPrimitives.WriteUInt32LittleEndian(h[42..], checked((uint)offset));
            central.Write(h);
            central.Write(nameBytes);
        }
        long cdStart = ms.Position;
        central.Position = 0;
        central.CopyTo(ms);
        Span<byte> e = stackalloc byte[22];
        BinaryPrimitives.WriteUInt32LittleEndian(e, 0x06054b50);
        BinaryPrimitives.WriteUInt16LittleEndian(e[8..], (ushort)entries.Count);
        BinaryPrimitives.WriteUInt16LittleEndian(e[10..], (ushort)entries.Count);
        BinaryPrimitives.WriteUInt32LittleEndian(e[12..], (uint)central.Length);
        BinaryPrimitives.WriteUInt32LittleEndian(e[16..], checked((uint)cdStart));
        ms.Write(e);
        return ms.ToArray();
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

    internal static uint Crc32(ReadOnlySpan<byte> data)
    {
        uint c = 0xFFFFFFFFu;
        foreach (byte b in data) c = CrcTable[(c ^ b) & 0xFF] ^ (c >> 8);
        return c ^ 0xFFFFFFFFu;
    }
}

using System.Buffers.Binary;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Text;

namespace Finetrace.Activations.Export;

/// <summary>
/// Streams a zip of stored (uncompressed) entries whose data start at multiples of 64 bytes (padding in a local
/// 'FB' extra field, as PyTorch's writer does), so <c>torch.load</c> can memory-map them. Sizes and offsets of
/// 0xFFFFFFFF or more go into ZIP64 records (APPNOTE 4.3.14–4.3.16, 4.5.3): a ZIP64 extended-information extra field
/// in the local header (both sizes) and in the central header (only the fields that overflow, in the order
/// uncompressed size, compressed size, local header offset), and a ZIP64 end-of-central-directory record with its
/// locator when the directory's offset or size or the entry count overflows. Small archives have none of these.
/// </summary>
public sealed class ZipWriter(Stream output)
{
    /// <summary>Receives an entry's bytes chunk by chunk.</summary>
    public delegate void ChunkSink(ReadOnlySpan<byte> chunk);

    const uint Max32 = 0xFFFFFFFF;
    const int ChunkBytes = 1 << 20;

    /// <summary>Values at or above this need ZIP64 (the spec's 0xFFFFFFFF; lower in tests, to check the records
    /// without writing gigabytes).</summary>
    internal long Zip64Threshold { get; init; } = Max32;

    readonly Stream _out = output;
    readonly MemoryStream _central = new();
    long _position, _entries;

    public void Add(string name, ReadOnlySpan<byte> data) => Add<byte>(name, data);

    /// <summary>Adds the elements' little-endian bytes, in chunks (a span over 2 GiB cannot be viewed as bytes at once).</summary>
    public void Add<T>(string name, ReadOnlySpan<T> values) where T : unmanaged
    {
        int per = Math.Max(1, ChunkBytes / Unsafe.SizeOf<T>());
        uint crc = 0;
        for (int i = 0; i < values.Length; i += per)
            crc = TorchSave.Crc32Update(crc, MemoryMarshal.AsBytes(values.Slice(i, Math.Min(per, values.Length - i))));
        WriteLocal(name, (long)values.Length * Unsafe.SizeOf<T>(), crc);
        for (int i = 0; i < values.Length; i += per)
            WriteData(MemoryMarshal.AsBytes(values.Slice(i, Math.Min(per, values.Length - i))));
    }

    /// <summary>Adds <paramref name="length"/> bytes given by <paramref name="produce"/>, which is called twice (the
    /// checksum precedes the data) and must give the same bytes both times.</summary>
    public void Add(string name, long length, Action<ChunkSink> produce)
    {
        uint crc = 0;
        long seen = 0;
        produce(chunk => { crc = TorchSave.Crc32Update(crc, chunk); seen += chunk.Length; });
        if (seen != length) throw new InvalidOperationException($"zip entry {name}: {seen} bytes produced, {length} announced");
        WriteLocal(name, length, crc);
        long dataStart = _position;
        produce(WriteData);
        if (_position - dataStart != length) throw new InvalidOperationException($"zip entry {name}: the second pass produced {_position - dataStart} bytes, not {length}");
    }

    void WriteData(ReadOnlySpan<byte> chunk)
    {
        _out.Write(chunk);
        _position += chunk.Length;
    }

    bool Big(long v) => v >= Zip64Threshold;

    void WriteLocal(string name, long size, uint crc)
    {
        var nameBytes = Encoding.UTF8.GetBytes(name);
        long offset = _position;
        bool zip64 = Big(size);
        int zip64Len = zip64 ? 4 + 16 : 0;
        long dataStart = offset + 30 + nameBytes.Length + zip64Len + 4;
        int pad = (int)((64 - dataStart % 64) % 64);
        Span<byte> h = stackalloc byte[46];
        BinaryPrimitives.WriteUInt32LittleEndian(h, 0x04034b50);
        BinaryPrimitives.WriteUInt16LittleEndian(h[4..], (ushort)(zip64 ? 45 : 20));   // version needed
        BinaryPrimitives.WriteUInt16LittleEndian(h[6..], 0);           // flags
        BinaryPrimitives.WriteUInt16LittleEndian(h[8..], 0);           // stored
        BinaryPrimitives.WriteUInt16LittleEndian(h[10..], 0);          // time
        BinaryPrimitives.WriteUInt16LittleEndian(h[12..], 0x21);       // date 1980-01-01
        BinaryPrimitives.WriteUInt32LittleEndian(h[14..], crc);
        BinaryPrimitives.WriteUInt32LittleEndian(h[18..], zip64 ? Max32 : (uint)size);   // compressed
        BinaryPrimitives.WriteUInt32LittleEndian(h[22..], zip64 ? Max32 : (uint)size);   // uncompressed
        BinaryPrimitives.WriteUInt16LittleEndian(h[26..], checked((ushort)nameBytes.Length));
        BinaryPrimitives.WriteUInt16LittleEndian(h[28..], (ushort)(zip64Len + 4 + pad));
        WriteData(h[..30]);
        WriteData(nameBytes);
        if (zip64)
        {
            // The local ZIP64 field holds both sizes (uncompressed first).
            Span<byte> x = stackalloc byte[20];
            BinaryPrimitives.WriteUInt16LittleEndian(x, 0x0001);
            BinaryPrimitives.WriteUInt16LittleEndian(x[2..], 16);
            BinaryPrimitives.WriteInt64LittleEndian(x[4..], size);
            BinaryPrimitives.WriteInt64LittleEndian(x[12..], size);
            WriteData(x);
        }
        // Extra field 'FB' (PyTorch's padding record) of pad bytes 'Z'.
        Span<byte> fb = stackalloc byte[4 + 63];
        fb[0] = (byte)'F'; fb[1] = (byte)'B';
        BinaryPrimitives.WriteUInt16LittleEndian(fb[2..], (ushort)pad);
        fb[4..(4 + pad)].Fill((byte)'Z');
        WriteData(fb[..(4 + pad)]);

        // Central header: only the overflowing fields go to its ZIP64 field.
        bool bigSize = Big(size), bigOffset = Big(offset);
        int cx = (bigSize ? 16 : 0) + (bigOffset ? 8 : 0);
        h.Clear();
        BinaryPrimitives.WriteUInt32LittleEndian(h, 0x02014b50);
        BinaryPrimitives.WriteUInt16LittleEndian(h[4..], 45);            // made by (spec version 4.5)
        BinaryPrimitives.WriteUInt16LittleEndian(h[6..], (ushort)(cx > 0 ? 45 : 20));   // needed
        BinaryPrimitives.WriteUInt16LittleEndian(h[12..], 0);
        BinaryPrimitives.WriteUInt16LittleEndian(h[14..], 0x21);
        BinaryPrimitives.WriteUInt32LittleEndian(h[16..], crc);
        BinaryPrimitives.WriteUInt32LittleEndian(h[20..], bigSize ? Max32 : (uint)size);
        BinaryPrimitives.WriteUInt32LittleEndian(h[24..], bigSize ? Max32 : (uint)size);
        BinaryPrimitives.WriteUInt16LittleEndian(h[28..], (ushort)nameBytes.Length);
        BinaryPrimitives.WriteUInt16LittleEndian(h[30..], (ushort)(cx > 0 ? 4 + cx : 0));
        BinaryPrimitives.WriteUInt32LittleEndian(h[42..], bigOffset ? Max32 : (uint)offset);
        _central.Write(h);
        _central.Write(nameBytes);
        if (cx > 0)
        {
            Span<byte> x = stackalloc byte[28];
            BinaryPrimitives.WriteUInt16LittleEndian(x, 0x0001);
            BinaryPrimitives.WriteUInt16LittleEndian(x[2..], (ushort)cx);
            int at = 4;
            if (bigSize) { BinaryPrimitives.WriteInt64LittleEndian(x[at..], size); BinaryPrimitives.WriteInt64LittleEndian(x[(at + 8)..], size); at += 16; }
            if (bigOffset) { BinaryPrimitives.WriteInt64LittleEndian(x[at..], offset); at += 8; }
            _central.Write(x[..at]);
        }
        _entries++;
    }

    /// <summary>Writes the central directory and the end records.</summary>
    public void Finish()
    {
        long cdStart = _position, cdSize = _central.Length;
        WriteData(_central.GetBuffer().AsSpan(0, (int)cdSize));
        bool bigCount = _entries >= 0xFFFF, bigSize = Big(cdSize), bigStart = Big(cdStart);
        if (bigCount || bigSize || bigStart)
        {
            long recordAt = _position;
            Span<byte> z = stackalloc byte[56 + 20];
            BinaryPrimitives.WriteUInt32LittleEndian(z, 0x06064b50);
            BinaryPrimitives.WriteInt64LittleEndian(z[4..], 56 - 12);      // size of the rest of the record
            BinaryPrimitives.WriteUInt16LittleEndian(z[12..], 45);          // made by
            BinaryPrimitives.WriteUInt16LittleEndian(z[14..], 45);          // needed
            // disk numbers [16..24) are 0
            BinaryPrimitives.WriteInt64LittleEndian(z[24..], _entries);     // entries on this disk
            BinaryPrimitives.WriteInt64LittleEndian(z[32..], _entries);     // entries in total
            BinaryPrimitives.WriteInt64LittleEndian(z[40..], cdSize);
            BinaryPrimitives.WriteInt64LittleEndian(z[48..], cdStart);
            // Locator
            BinaryPrimitives.WriteUInt32LittleEndian(z[56..], 0x07064b50);
            BinaryPrimitives.WriteInt64LittleEndian(z[64..], recordAt);     // after a 0 disk number
            BinaryPrimitives.WriteUInt32LittleEndian(z[72..], 1);           // total disks
            WriteData(z);
        }
        Span<byte> e = stackalloc byte[22];
        BinaryPrimitives.WriteUInt32LittleEndian(e, 0x06054b50);
        BinaryPrimitives.WriteUInt16LittleEndian(e[8..], bigCount ? (ushort)0xFFFF : (ushort)_entries);
        BinaryPrimitives.WriteUInt16LittleEndian(e[10..], bigCount ? (ushort)0xFFFF : (ushort)_entries);
        BinaryPrimitives.WriteUInt32LittleEndian(e[12..], bigSize ? Max32 : (uint)cdSize);
        BinaryPrimitives.WriteUInt32LittleEndian(e[16..], bigStart ? Max32 : (uint)cdStart);
        WriteData(e);
    }
}

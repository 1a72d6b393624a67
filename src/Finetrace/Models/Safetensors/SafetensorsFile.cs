using System.IO.MemoryMappedFiles;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json;
using Finetrace.Tensors;

namespace Finetrace.Models.Safetensors;

/// <summary>One tensor's header entry; <see cref="Offset"/> is absolute in the file.</summary>
public sealed record TensorInfo(string Name, DType DType, int[] Shape, long Offset, long ByteLength)
{
    public long ElementCount => Tensor.ShapeLength(Shape);
    public string ShapeText => "[" + string.Join(", ", Shape) + "]";
}

/// <summary>The file is not a valid safetensors file; the message names the file and the problem.</summary>
public sealed class SafetensorsFormatException(string message) : Exception(message);

/// <summary>
/// A safetensors file, memory-mapped read-only. The header is validated exactly as the format requires:
/// 8-byte little-endian length N ≤ 100,000,000 within the file, a JSON object, known dtypes, byte counts equal to
/// numel·bits/8, offsets sorted, contiguous from 0 without overlap, and the data section ending at end of file.
/// </summary>
public sealed unsafe class SafetensorsFile : IDisposable
{
    public const long MaxHeaderBytes = 100_000_000;

    public string Path { get; }
    public IReadOnlyDictionary<string, TensorInfo> Tensors => _tensors;
    public IReadOnlyDictionary<string, string> Metadata => _metadata;
    public long DataStart { get; }
    public long FileLength { get; }

    readonly Dictionary<string, TensorInfo> _tensors = new(StringComparer.Ordinal);
    readonly Dictionary<string, string> _metadata = new(StringComparer.Ordinal);
    readonly MemoryMappedFile? _mmf;
    readonly MemoryMappedViewAccessor? _view;
    readonly byte* _base;

    public SafetensorsFile(string path)
    {
        Path = path;
        var fi = new FileInfo(path);
        if (!fi.Exists) throw new FileNotFoundException($"{path}: file not found", path);
        FileLength = fi.Length;
        if (FileLength < 8) throw Fail($"file is {FileLength} bytes, shorter than the 8-byte header length; the file is truncated or not safetensors");

        if (FileLength > 0)
        {
            _mmf = MemoryMappedFile.CreateFromFile(path, FileMode.Open, null, 0, MemoryMappedFileAccess.Read);
            _view = _mmf.CreateViewAccessor(0, 0, MemoryMappedFileAccess.Read);
            byte* p = null;
            _view.SafeMemoryMappedViewHandle.AcquirePointer(ref p);
            _base = p + _view.PointerOffset;
        }
        try
        {
            ulong n = BitConverter.ToUInt64(new ReadOnlySpan<byte>(_base, 8));
            if (n > MaxHeaderBytes) throw Fail($"header length {n:N0} exceeds the format's limit of {MaxHeaderBytes:N0} bytes; the file is corrupt or not safetensors");
            if ((long)n > FileLength - 8) throw Fail($"header length {n:N0} is longer than the file ({FileLength:N0} bytes); the file is truncated");
            DataStart = 8 + (long)n;
            ParseHeader(new ReadOnlySpan<byte>(_base + 8, (int)n));
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    SafetensorsFormatException Fail(string problem) => new($"{Path}: {problem}");

    void ParseHeader(ReadOnlySpan<byte> header)
    {
        if (header.Length == 0 || header[0] != (byte)'{') throw Fail("header does not start with '{'; not a safetensors file");
        JsonDocument doc;
        try
        {
            // The header may be padded with trailing spaces; JSON allows trailing whitespace.
            doc = JsonDocument.Parse(header.ToArray(), new JsonDocumentOptions { AllowTrailingCommas = false });
        }
        catch (JsonException e) { throw Fail($"header is not valid JSON ({e.Message})"); }
        using var _ = doc;
        if (doc.RootElement.ValueKind != JsonValueKind.Object) throw Fail("header is not a JSON object");

        var seen = new HashSet<string>(StringComparer.Ordinal);
        var entries = new List<(string name, DType dt, int[] shape, long begin, long end)>();
        foreach (var prop in doc.RootElement.EnumerateObject())
        {
            if (!seen.Add(prop.Name)) throw Fail($"duplicate tensor name '{prop.Name}' in header");
            if (prop.Name == "__metadata__")
            {
                if (prop.Value.ValueKind != JsonValueKind.Object) throw Fail("__metadata__ is not an object of strings");
                foreach (var m in prop.Value.EnumerateObject())
                {
                    if (m.Value.ValueKind != JsonValueKind.String) throw Fail($"__metadata__ value '{m.Name}' is not a string");
                    _metadata[m.Name] = m.Value.GetString()!;
                }
                continue;
            }
            var v = prop.Value;
            if (v.ValueKind != JsonValueKind.Object) throw Fail($"tensor '{prop.Name}': entry is not an object");
            if (!v.TryGetProperty("dtype", out var dtEl) || dtEl.ValueKind != JsonValueKind.String) throw Fail($"tensor '{prop.Name}': missing dtype");
            string dtText = dtEl.GetString()!;
            if (!DTypes.TryParse(dtText, out var dt)) throw Fail($"tensor '{prop.Name}': unknown dtype '{dtText}'");
            if (!v.TryGetProperty("shape", out var shEl) || shEl.ValueKind != JsonValueKind.Array) throw Fail($"tensor '{prop.Name}': missing shape");
            var shape = new int[shEl.GetArrayLength()];
            int i = 0;
            foreach (var d in shEl.EnumerateArray())
            {
                if (d.ValueKind != JsonValueKind.Number || !d.TryGetInt64(out long dl) || dl < 0 || dl > int.MaxValue)
                    throw Fail($"tensor '{prop.Name}': invalid shape entry {d.GetRawText()}");
                shape[i++] = (int)dl;
            }
            if (!v.TryGetProperty("data_offsets", out var offEl) || offEl.ValueKind != JsonValueKind.Array || offEl.GetArrayLength() != 2)
                throw Fail($"tensor '{prop.Name}': data_offsets must be [begin, end]");
            if (!offEl[0].TryGetInt64(out long begin) || !offEl[1].TryGetInt64(out long end) || begin < 0 || end < begin)
                throw Fail($"tensor '{prop.Name}': invalid data_offsets {offEl.GetRawText()}");
            foreach (var extra in v.EnumerateObject())
                if (extra.Name is not ("dtype" or "shape" or "data_offsets"))
                    throw Fail($"tensor '{prop.Name}': unknown header field '{extra.Name}'");
            long numel = Tensor.ShapeLength(shape);
            long bits = numel * DTypes.Bits(dt);
            if (bits % 8 != 0) throw Fail($"tensor '{prop.Name}': {numel} elements of {dt} is not a whole number of bytes");
            if (end - begin != bits / 8)
                throw Fail($"tensor '{prop.Name}': data_offsets span {end - begin} bytes but {dt} {FormatShape(shape)} needs {bits / 8}");
            entries.Add((prop.Name, dt, shape, begin, end));
        }

        long dataLen = FileLength - DataStart;
        entries.Sort((a, b) => a.begin != b.begin ? a.begin.CompareTo(b.begin) : a.end.CompareTo(b.end));
        long expect = 0;
        string? prev = null;
        foreach (var e in entries)
        {
            if (e.begin < expect)
                throw Fail($"tensor '{e.name}' (bytes {e.begin}..{e.end}) overlaps tensor '{prev}' (ends at {expect}); the header is corrupt");
            if (e.begin > expect)
                throw Fail($"gap in the data section before tensor '{e.name}' (starts at {e.begin}, previous data ends at {expect}); offsets must be contiguous");
            if (e.end > dataLen)
                throw Fail($"tensor '{e.name}' ends at data byte {e.end:N0} but the data section is only {dataLen:N0} bytes; the file is truncated (expected at least {DataStart + e.end:N0} bytes, found {FileLength:N0})");
            expect = e.end;
            prev = e.name;
            _tensors[e.name] = new TensorInfo(e.name, e.dt, e.shape, DataStart + e.begin, e.end - e.begin);
        }
        if (expect != dataLen)
            throw Fail($"data section is {dataLen:N0} bytes but the tensors cover {expect:N0}; trailing bytes or a corrupt header");
    }

    static string FormatShape(int[] s) => "[" + string.Join(", ", s) + "]";

    public bool Contains(string name) => _tensors.ContainsKey(name);

    public TensorInfo Info(string name) =>
        _tensors.TryGetValue(name, out var t) ? t : throw new KeyNotFoundException($"{Path}: no tensor named '{name}'");

    /// <summary>Pointer to a tensor's raw little-endian bytes inside the mapping (valid until Dispose).</summary>
    public byte* Pointer(TensorInfo t) => _base + t.Offset;

    /// <summary>The raw bytes of a tensor; only for tensors under 2 GiB.</summary>
    public ReadOnlySpan<byte> Bytes(string name)
    {
        var t = Info(name);
        if (t.ByteLength > int.MaxValue) throw new InvalidOperationException($"{Path}: tensor '{name}' is {t.ByteLength:N0} bytes; read it in slices");
        return new ReadOnlySpan<byte>(_base + t.Offset, (int)t.ByteLength);
    }

    /// <summary>Reads a floating tensor (F32, F16, BF16, F64) widened to float32.</summary>
    public Tensor ReadF32(string name)
    {
        var t = Info(name);
        var result = new Tensor(t.Shape);
        ReadF32Into(t, 0, result.Span);
        return result;
    }

    /// <summary>Widens elements [start, start + dst.Length) of a floating tensor to float32.</summary>
    public void ReadF32Into(TensorInfo t, long start, Span<float> dst)
    {
        if (start < 0 || start + dst.Length > t.ElementCount) throw new ArgumentOutOfRangeException(nameof(start), $"{Path}: slice past the end of '{t.Name}'");
        if (!DTypes.TryWiden(t.DType, _base + t.Offset, start, dst))
            throw new InvalidOperationException($"{Path}: tensor '{t.Name}' has dtype {t.DType}, expected a floating type");
    }

    /// <summary>Reads an integer tensor (I64, I32, U8, …) as int64.</summary>
    public long[] ReadI64(string name)
    {
        var t = Info(name);
        var r = new long[t.ElementCount];
        byte* p = _base + t.Offset;
        switch (t.DType)
        {
            case DType.I64: new ReadOnlySpan<long>(p, r.Length).CopyTo(r); break;
            case DType.I32: { var s = new ReadOnlySpan<int>(p, r.Length); for (int i = 0; i < r.Length; i++) r[i] = s[i]; break; }
            case DType.U32: { var s = new ReadOnlySpan<uint>(p, r.Length); for (int i = 0; i < r.Length; i++) r[i] = s[i]; break; }
            case DType.I16: { var s = new ReadOnlySpan<short>(p, r.Length); for (int i = 0; i < r.Length; i++) r[i] = s[i]; break; }
            case DType.U16: { var s = new ReadOnlySpan<ushort>(p, r.Length); for (int i = 0; i < r.Length; i++) r[i] = s[i]; break; }
            case DType.U8 or DType.BOOL: { var s = new ReadOnlySpan<byte>(p, r.Length); for (int i = 0; i < r.Length; i++) r[i] = s[i]; break; }
            case DType.I8: { var s = new ReadOnlySpan<sbyte>(p, r.Length); for (int i = 0; i < r.Length; i++) r[i] = s[i]; break; }
            default: throw new InvalidOperationException($"{Path}: tensor '{t.Name}' has dtype {t.DType}, expected an integer type");
        }
        return r;
    }

    bool _disposed;

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        if (_view is not null)
        {
            _view.SafeMemoryMappedViewHandle.ReleasePointer();
            _view.Dispose();
        }
        _mmf?.Dispose();
    }
}

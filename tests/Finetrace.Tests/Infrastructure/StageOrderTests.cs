using System.Reflection;
using System.Reflection.Emit;
using Finetrace.Tensors;

namespace Finetrace.Tests.Infrastructure;

/// <summary>
/// The library's stages form a pipeline: each stage may use only the stages before it. Checked by reflection over
/// every type's signatures (base types, interfaces, fields, properties, method parameters and returns) and every
/// member its method bodies reference (IL tokens of calls, field loads, type tokens), so a stray `using` that the
/// compiler accepted is still caught.
/// </summary>
public class StageOrderTests
{
    /// <summary>The stages in data-flow order; namespaces below Finetrace.X belong to stage X.</summary>
    internal static readonly string[] Stages = ["Tensors", "Models", "Text", "Training", "Activations", "Dictionaries", "Diffing", "Pipeline"];

    static int StageOf(Type t)
    {
        var ns = t.Namespace ?? "";
        if (!ns.StartsWith("Finetrace.", StringComparison.Ordinal)) return -1;
        var first = ns["Finetrace.".Length..].Split('.')[0];
        return Array.IndexOf(Stages, first);
    }

    static readonly Dictionary<short, OpCode> OpCodesByValue = typeof(OpCodes)
        .GetFields(BindingFlags.Public | BindingFlags.Static)
        .Select(f => (OpCode)f.GetValue(null)!)
        .ToDictionary(o => o.Value);

    static IEnumerable<Type> Expand(Type? t)
    {
        if (t == null) yield break;
        if (t.HasElementType) { foreach (var e in Expand(t.GetElementType())) yield return e; yield break; }
        yield return t;
        if (t.IsGenericType && !t.IsGenericTypeDefinition)
            foreach (var a in t.GetGenericArguments()) foreach (var e in Expand(a)) yield return e;
    }

    /// <summary>Every type <paramref name="t"/>'s declarations and method bodies mention.</summary>
    internal static IEnumerable<Type> ReferencedTypes(Type t)
    {
        const BindingFlags all = BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.Instance | BindingFlags.Static | BindingFlags.DeclaredOnly;
        var found = new List<Type?> { t.BaseType };
        found.AddRange(t.GetInterfaces());
        foreach (var f in t.GetFields(all)) found.Add(f.FieldType);
        foreach (var p in t.GetProperties(all)) found.Add(p.PropertyType);
        var methods = t.GetMethods(all).Cast<MethodBase>().Concat(t.GetConstructors(all));
        foreach (var m in methods)
        {
            if (m is MethodInfo mi) found.Add(mi.ReturnType);
            foreach (var p in m.GetParameters()) found.Add(p.ParameterType);
            MethodBody? body;
            try { body = m.GetMethodBody(); } catch { continue; }
            if (body == null) continue;
            foreach (var lv in body.LocalVariables) found.Add(lv.LocalType);
            found.AddRange(BodyReferences(m, body.GetILAsByteArray()!));
        }
        return found.SelectMany(Expand);
    }

    static IEnumerable<Type?> BodyReferences(MethodBase m, byte[] il)
    {
        var module = m.Module;
        Type[]? typeArgs = m.DeclaringType is { IsGenericType: true } dt ? dt.GetGenericArguments() : null;
        Type[]? methodArgs = m.IsGenericMethod ? m.GetGenericArguments() : null;
        int i = 0;
        while (i < il.Length)
        {
            short value = il[i] == 0xFE && i + 1 < il.Length ? (short)(0xFE00 | il[i + 1]) : il[i];
            if (!OpCodesByValue.TryGetValue(value, out var op)) yield break;
            i += op.Size;
            int operandSize = op.OperandType switch
            {
                OperandType.InlineNone => 0,
                OperandType.ShortInlineBrTarget or OperandType.ShortInlineI or OperandType.ShortInlineVar => 1,
                OperandType.InlineVar => 2,
                OperandType.InlineI8 or OperandType.InlineR => 8,
                OperandType.InlineSwitch => 4 + 4 * BitConverter.ToInt32(il, i),
                _ => 4,
            };
            if (op.OperandType is OperandType.InlineMethod or OperandType.InlineField or OperandType.InlineType or OperandType.InlineTok)
            {
                int token = BitConverter.ToInt32(il, i);
                MemberInfo? member = null;
                try { member = module.ResolveMember(token, typeArgs, methodArgs); } catch { }
                switch (member)
                {
                    case Type ty: yield return ty; break;
                    case FieldInfo fi: yield return fi.DeclaringType; yield return fi.FieldType; break;
                    case MethodBase mb:
                        yield return mb.DeclaringType;
                        if (mb is MethodInfo { IsGenericMethod: true } gm) foreach (var a in gm.GetGenericArguments()) yield return a;
                        break;
                }
            }
            i += operandSize;
        }
    }

    [Fact]
    public void Every_library_namespace_is_a_known_stage()
    {
        var unknown = typeof(Kernels).Assembly.GetTypes()
            .Where(t => t.Namespace != null && t.Namespace.StartsWith("Finetrace", StringComparison.Ordinal) && StageOf(t) < 0)
            .Select(t => t.FullName).Distinct().ToList();
        Assert.True(unknown.Count == 0, "types outside the known stages: " + string.Join(", ", unknown.Take(10)));
    }

    [Fact]
    public void Each_stage_refers_only_to_earlier_stages()
    {
        var violations = new SortedSet<string>(StringComparer.Ordinal);
        foreach (var t in typeof(Kernels).Assembly.GetTypes())
        {
            int own = StageOf(t);
            if (own < 0) continue;
            foreach (var r in ReferencedTypes(t))
            {
                int other = StageOf(r);
                if (other > own) violations.Add($"{t.FullName} ({Stages[own]}) uses {r.FullName} ({Stages[other]})");
            }
        }
        Assert.True(violations.Count == 0, $"{violations.Count} references to later stages:\n" + string.Join("\n", violations.Take(30)));
    }

    /// <summary>The checker must see references made only inside method bodies, or the test above proves nothing.</summary>
    [Fact]
    public void Checker_finds_a_reference_made_only_in_a_method_body()
    {
        var refs = ReferencedTypes(typeof(BodyOnlyUser)).ToHashSet();
        Assert.Contains(typeof(Finetrace.Dictionaries.SparseDictionary), refs);
        Assert.Contains(typeof(Finetrace.Models.ModelConfig), refs);
    }

    static class BodyOnlyUser
    {
        public static int Probe() =>
            typeof(Finetrace.Dictionaries.SparseDictionary).Name.Length + Use().Method.Name.Length;
        static Func<string, Finetrace.Models.ModelConfig> Use() => Finetrace.Models.ModelConfig.Load;
    }
}

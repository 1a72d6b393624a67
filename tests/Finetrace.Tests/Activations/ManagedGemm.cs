using Finetrace.Tensors;

namespace Finetrace.Tests.Activations;

/// <summary>Runs a test body under the managed GEMM backend, which computes every output row in the same order
/// whatever the number of rows, so a token's activations do not depend on its batch (bit-exact comparisons).
/// Callers sit in the <see cref="Infrastructure.ProcessWide"/> collection: the backend is process-wide.</summary>
static class ManagedGemm
{
    public static void Run(Action body)
    {
        var saved = Gemm.Backend;
        Gemm.Backend = GemmBackend.Managed;
        try { body(); }
        finally { Gemm.Backend = saved; }
    }
}

namespace Finetrace.Tests.Infrastructure;

/// <summary>
/// One xunit collection for tests that touch process-wide state — the GEMM backend (<c>Gemm.Backend</c>), or the
/// console (redirecting <c>Console.Out</c>, or running CLI commands that print) — so they never run concurrently
/// with each other and never see another test's output or backend.
/// </summary>
[CollectionDefinition(Name)]
public sealed class ProcessWide
{
    public const string Name = "ProcessWide";
}

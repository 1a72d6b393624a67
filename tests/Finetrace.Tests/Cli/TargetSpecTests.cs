using Finetrace.Cli.Commands.Analyze;
using Finetrace.Tests.Infrastructure;
using Finetrace.Text.Tokenization;

namespace Finetrace.Tests.Cli;

/// <summary>--target of analyze target-attribution: sides become single token ids of the model's tokenizer, or are refused
/// with their pieces named.</summary>
public sealed class TargetSpecTests
{
    static Tokenizer Stories => Tokenizer.FromFolder(Shared.Path("models", "stories260K"));

    [SharedFact]
    public void Sides_become_single_tokens_quoted_or_not()
    {
        var tok = Stories;
        int he = tok.Encode("he", addSpecialTokens: false).Ids.Single(), she = tok.Encode("she", addSpecialTokens: false).Ids.Single();
        Assert.NotEqual(he, she);
        Assert.Equal((he, (int?)she), Ids(TargetAttributionCommand.ParseTarget("he - she", tok)));
        // " he" splits into ["▁", "▁he"] in this SentencePiece vocabulary; the word-start piece is what is meant
        Assert.Equal((he, (int?)she), Ids(TargetAttributionCommand.ParseTarget("\" he\" - \" she\"", tok)));
        Assert.Equal((he, (int?)null), Ids(TargetAttributionCommand.ParseTarget("he", tok)));
        Assert.Equal((5, (int?)7), Ids(TargetAttributionCommand.ParseTarget("#5 - #7", tok)));
    }

    [SharedFact]
    public void A_side_that_is_not_one_token_is_refused_with_its_pieces()
    {
        var e = Assert.Throws<ArgumentException>(() => TargetAttributionCommand.ParseTarget("elephant - she", Stories));
        Assert.Contains("\"elephant\" is not a single token", e.Message);
        Assert.Contains("\"▁e\", \"le\"", e.Message);
        Assert.Throws<ArgumentException>(() => TargetAttributionCommand.ParseTarget("#99999 - she", Stories));
    }

    static (int, int?) Ids((int A, int? B, string, string?) t) => (t.A, t.B);
}

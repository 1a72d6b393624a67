using Finetrace.Tests.Infrastructure;
using Finetrace.Text.Tokenization;

namespace Finetrace.Tests.Text.Tokenization;

/// <summary>Token strings in analysis outputs are single ids decoded as they read inside text.</summary>
public class DecodeTokenTests
{
    [SharedFact]
    public void A_sentencepiece_word_start_keeps_its_space()
    {
        var tok = Tokenizer.FromFolder(Shared.Path("models", "stories260K"));
        // "Zog" encodes as ▁ Z o g after BOS (models/README.md): the lone "▁" piece is a space, "Z" has none.
        int[] ids = tok.Encode("the Zog").Ids; // normalised to "▁the▁Zog"
        int the = ids[1];
        Assert.Equal("▁the", tok.IdToToken(the));
        Assert.Equal("the", tok.Decode([the]));          // the lone-text decode strips the leading space
        Assert.Equal(" the", tok.DecodeToken(the));      // inside text it has one
        int z = tok.TokenToId("Z")!.Value;
        Assert.Equal("Z", tok.DecodeToken(z));
        Assert.Equal(" ", tok.DecodeToken(tok.TokenToId("▁")!.Value));
        // Concatenating the pieces of a text (after BOS) gives the text back with its leading space.
        Assert.Equal(" the Zog", string.Concat(ids.Skip(1).Select(tok.DecodeToken)));
        Assert.Equal("<s>", tok.DecodeToken(tok.BosId!.Value));
    }

    [SharedFact]
    public void A_byte_level_piece_decodes_the_same_alone_or_inside_text()
    {
        var tok = Tokenizer.FromFolder(Shared.Path("fixtures", "tokenizers", "llama3_1"));
        int[] ids = tok.Encode("hello world", addSpecialTokens: false).Ids;
        Assert.Equal(2, ids.Length);
        Assert.Equal("hello", tok.DecodeToken(ids[0]));
        Assert.Equal(" world", tok.DecodeToken(ids[1]));
    }
}

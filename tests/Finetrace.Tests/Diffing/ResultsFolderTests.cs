using Finetrace.Diffing;

namespace Finetrace.Tests.Diffing;

public class ResultsFolderTests
{
    [Fact]
    public void A_stage_is_current_only_with_the_same_inputs_and_its_outputs_present()
    {
        var dir = Directory.CreateTempSubdirectory("ft-results-").FullName;
        try
        {
            var input = Path.Combine(dir, "in.txt");
            File.WriteAllText(input, "a");
            string h1 = new InputsHash().AddPath("input", input).Add("k", 8).ToString();
            var r = ResultsFolder.Open(Path.Combine(dir, "R"));
            Assert.False(r.IsCurrent("latents", h1));
            ResultsFolder.WriteAllTextAtomic(r.PathOf("out.csv"), "x\n");
            r.Record("latents", h1, ["out.csv"]);
            Assert.True(ResultsFolder.Open(r.Directory).IsCurrent("latents", h1));

            Assert.NotEqual(h1, new InputsHash().AddPath("input", input).Add("k", 9).ToString());
            File.WriteAllText(input, "b");
            string h2 = new InputsHash().AddPath("input", input).Add("k", 8).ToString();
            Assert.NotEqual(h1, h2);
            Assert.False(r.IsCurrent("latents", h2));

            File.Delete(r.PathOf("out.csv"));
            Assert.False(r.IsCurrent("latents", h1));
            Assert.Empty(Directory.GetFiles(r.Directory, ".*tmp*"));
        }
        finally { Directory.Delete(dir, true); }
    }
}

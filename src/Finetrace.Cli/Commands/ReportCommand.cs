using System.CommandLine;
using Finetrace.Pipeline.Report;

namespace Finetrace.Cli.Commands;

/// <summary><c>finetrace report RESULTS</c>: (re-)renders RESULTS/report.html from what the pipeline and the analyze
/// verbs wrote there.</summary>
public sealed class ReportCommand : ICliCommand
{
    public Command Build()
    {
        var results = new Argument<string>("results") { Description = "Results folder (written by `finetrace diff` or the `finetrace analyze` verbs)" };
        var tokenizer = new Option<string?>("--tokenizer") { Description = "Folder with tokenizer.json to decode the examples (default: the fine-tuned model named in summary.json or manifest.json)" };
        var latents = new Option<int>("--latents") { Description = "Latents whose top examples are highlighted token by token", DefaultValueFactory = _ => 20 };
        var cmd = new Command("report", "Render RESULTS/report.html: one self-contained page (plots, tables, findings) readable offline");
        cmd.Arguments.Add(results);
        cmd.Options.Add(tokenizer);
        cmd.Options.Add(latents);
        cmd.SetAction(r =>
        {
            string dir = r.GetValue(results)!;
            try
            {
                string path = ReportWriter.Write(dir, new ReportOptions { TokenizerDir = r.GetValue(tokenizer), HighlightedLatents = r.GetValue(latents) });
                Console.WriteLine(path);
                return 0;
            }
            catch (Exception e) when (e is DirectoryNotFoundException or InvalidDataException or IOException)
            {
                Console.Error.WriteLine($"finetrace report: {e.Message}");
                return 1;
            }
        });
        return cmd;
    }
}

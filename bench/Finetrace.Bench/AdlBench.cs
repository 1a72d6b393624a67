using System.CommandLine;
using System.Diagnostics;
using Finetrace.Diffing.Adl;
using Finetrace.Models;
using Finetrace.Text.Datasets;
using Finetrace.Text.Tokenization;

namespace Finetrace.Bench;

/// <summary>
/// <c>finetrace bench adl --base DIR --finetuned DIR [--samples N] [--sampled-text] [--json]</c>: wall time of the Activation
/// Difference Lens with default settings (means over N samples × positions 0–4 at the middle layer, logit lens, Patchscope,
/// steering of the fine-tuned model) against the bound of one minute on 2 cores for stories260K-sized models. The
/// unrelated text is the default one, the built-in general text (its generation and tokenization are timed with the means);
/// with --sampled-text it is sampled from the base model first instead (T = 1, BOS prompt; not part of the timed run).
/// </summary>
public sealed class AdlBench : IBenchCommand
{
    public Command Build()
    {
        var baseDir = new Option<string>("--base") { Description = "Base model folder (e.g. ../shared/models/stories260K)", Required = true };
        var ft = new Option<string>("--finetuned") { Description = "Fine-tuned model folder (e.g. ../shared/models/stories260K-zog)", Required = true };
        var samples = new Option<int>("--samples") { Description = "Samples of unrelated text (sampled from the base model)", DefaultValueFactory = _ => 10_000 };
        var tokens = new Option<int>("--sample-tokens") { Description = "Tokens sampled per text (the means need 5; a few more go to the typical norm)", DefaultValueFactory = _ => 12 };
        var keep = new Option<string?>("--keep-data") { Description = "Also write the text read (built-in or sampled) to this file (blank-line separated)" };
        var sampled = new Option<bool>("--sampled-text") { Description = "Sample the unrelated text from the base model instead of reading the built-in general text" };
        var json = BenchOptions.Json();
        var cmd = new Command("adl", "Activation Difference Lens with default settings against the one-minute bound");
        foreach (var o in new Option[] { baseDir, ft, samples, tokens, keep, sampled, json }) cmd.Options.Add(o);
        cmd.SetAction(r => Run(r.GetValue(baseDir)!, r.GetValue(ft)!, r.GetValue(samples), r.GetValue(tokens), r.GetValue(keep), r.GetValue(sampled), r.GetValue(json)));
        return cmd;
    }

    const double BoundSeconds = 60;

    static int Run(string baseDir, string ftDir, int n, int tokens, string? keep, bool sampledText, bool json)
    {
        if (n < 1 || tokens < 1) throw new ArgumentException("--samples and --sample-tokens must be positive");
        var tmp = Directory.CreateTempSubdirectory("finetrace-bench-adl-").FullName;
        try
        {
            var total = Stopwatch.StartNew();
            using var baseModel = CausalLM.Load(baseDir);
            using var ftModel = CausalLM.Load(ftDir);
            var tok = Tokenizer.FromFolder(File.Exists(Path.Combine(ftDir, "tokenizer.json")) ? ftDir : baseDir);
            double load = total.Elapsed.TotalSeconds;
            var sw = Stopwatch.StartNew();
            double sampling = 0;
            List<DataSourceSpec> dataSpecs = [];
            if (sampledText)
            {
                int[] bos = tok.BosId is int b ? [b] : [0];
                var texts = SampledText.Sample(baseModel, bos, n, tokens, 1f, seed: 1).Select(ids => tok.Decode(ids, skipSpecialTokens: true).Trim()).ToList();
                sampling = sw.Elapsed.TotalSeconds;
                string data = Path.Combine(tmp, "text.txt");
                File.WriteAllText(data, string.Join("\n\n", texts.Where(t => t.Length > 0).Select(t => t.Replace("\n\n", "\n"))) + "\n");
                if (keep is not null) File.Copy(data, keep, overwrite: true);
                dataSpecs.Add(DataSourceSpec.Parse(data));
            }
            else if (keep is not null) File.WriteAllText(keep, string.Join("\n\n", GeneralText.Samples(n)) + "\n");

            var o = new AdlOptions
            {
                BaseModel = baseDir, FineTunedModel = ftDir, Data = dataSpecs,
                Layers = [(int)Math.Floor(0.5 * (baseModel.Layers - 1))], MaxSamples = n,
            };
            sw.Restart();
            var r = ActivationDifferenceLens.Compute(o, baseModel, ftModel, AdlText.FromFolders(ftDir, baseDir));
            double adl = sw.Elapsed.TotalSeconds;
            var figures = new
            {
                bench = "adl", base_model = baseDir, finetuned = ftDir, data = r.Data, samples = r.TextSamples, layer = o.Layers[0], positions = o.Positions,
                load_seconds = load, sampling_seconds = sampling, means_seconds = r.MeanSeconds, readers_seconds = r.ReaderSeconds, adl_seconds = adl,
                bound_seconds = BoundSeconds, ratio_to_bound = adl / BoundSeconds, cores = Environment.ProcessorCount, load_average = BenchSupport.LoadAverage(),
            };
            if (json) BenchSupport.PrintJson(figures);
            else
            {
                Console.WriteLine($"data: {r.Data}");
                Console.WriteLine($"ADL defaults on {r.TextSamples:N0} samples (layer {o.Layers[0]}, positions 0–4): means {r.MeanSeconds:F1} s + readers {r.ReaderSeconds:F1} s = {adl:F1} s");
                Console.WriteLine($"bound {BoundSeconds:F0} s on 2 cores: ratio {adl / BoundSeconds:F2} ({Environment.ProcessorCount} cores here, load average {BenchSupport.LoadAverage()})");
                Console.WriteLine(sampledText ? $"(not timed: loading {load:F1} s, sampling the text {sampling:F1} s)" : $"(not timed: loading {load:F1} s)");
            }
            return 0;
        }
        finally { try { Directory.Delete(tmp, true); } catch (IOException) { } }
    }
}

using System.CommandLine;
using System.Diagnostics;
using System.Text;
using System.Text.Json;
using Finetrace.Text.Tokenization;
using Spectre.Console;

namespace Finetrace.Bench;

/// <summary>
/// <c>finetrace bench tokenize --tokenizer DIR [--mb N] [--json]</c>: single-threaded encode throughput on a
/// deterministic mixed text (English prose, code, numbers, several scripts, emoji, whitespace runs) of at least 10 MB.
/// </summary>
public sealed class TokenizeBench : IBenchCommand
{
    /// <summary>Stated bound: 10 MB/s on one core keeps tokenization far below model forward time.</summary>
    const double BoundMBps = 10;

    public Command Build()
    {
        var tokenizer = new Option<string>("--tokenizer") { Description = "Folder with tokenizer.json", Required = true };
        var mb = new Option<int>("--mb") { Description = "Megabytes (UTF-8) of text to encode, at least 10", DefaultValueFactory = _ => 12 };
        var json = BenchOptions.Json();
        var cmd = new Command("tokenize", "Tokenizer encode throughput (MB/s, tokens/s) on >= 10 MB of mixed text, one thread");
        cmd.Options.Add(tokenizer); cmd.Options.Add(mb); cmd.Options.Add(json);
        cmd.SetAction(r => Run(r.GetValue(tokenizer)!, Math.Max(10, r.GetValue(mb)), r.GetValue(json)));
        return cmd;
    }

    static int Run(string dir, int megabytes, bool json)
    {
        var sw = Stopwatch.StartNew();
        var tok = Tokenizer.FromFolder(dir);
        double loadS = sw.Elapsed.TotalSeconds;
        var docs = MixedText(megabytes * 1_000_000L);
        long bytes = docs.Sum(d => (long)System.Text.Encoding.UTF8.GetByteCount(d));
        // Warm-up: tiered JIT reaches optimised code only after many calls, so encode a fifth of the documents first.
        for (int i = 0; i < docs.Count / 5; i++) tok.Encode(docs[i], addSpecialTokens: false);
        long tokens = 0;
        var cpu0 = Process.GetCurrentProcess().TotalProcessorTime;
        sw.Restart();
        foreach (var d in docs) tokens += tok.Encode(d, addSpecialTokens: false).Count;
        double s = sw.Elapsed.TotalSeconds;
        // CPU time as well: on a shared machine wall time mostly measures the other processes.
        double cpuS = (Process.GetCurrentProcess().TotalProcessorTime - cpu0).TotalSeconds;
        double mbps = bytes / 1e6 / s, tps = tokens / s;
        if (json)
        {
            BenchSupport.PrintJson(new { mb_per_s = Math.Round(mbps, 2), tokens_per_s = Math.Round(tps), bytes, tokens, seconds = Math.Round(s, 3), cpu_seconds = Math.Round(cpuS, 3), cpu_mb_per_s = Math.Round(bytes / 1e6 / cpuS, 2), load_seconds = Math.Round(loadS, 3), bound_mb_per_s = BoundMBps });
            return 0;
        }
        var table = new Table().AddColumns("figure", "value");
        table.AddRow("tokenizer", Markup.Escape(dir));
        table.AddRow("load time", $"{loadS:F2} s");
        table.AddRow("text", $"{bytes / 1e6:F1} MB UTF-8 in {docs.Count:N0} documents");
        table.AddRow("tokens", $"{tokens:N0} ({(double)bytes / tokens:F2} bytes/token)");
        table.AddRow("encode time (1 thread)", $"{s:F2} s");
        table.AddRow("throughput", $"{mbps:F2} MB/s, {tps:N0} tokens/s");
        table.AddRow("process CPU time", $"{cpuS:F2} s ({bytes / 1e6 / cpuS:F2} MB per CPU-second)");
        table.AddRow("ratio to bound", $"{mbps / BoundMBps:F2}x of {BoundMBps} MB/s");
        AnsiConsole.Write(table);
        return 0;
    }

    /// <summary>Deterministic documents of about 4 KB mixing prose, code, numbers, scripts, emoji and whitespace.</summary>
    public static List<string> MixedText(long targetBytes)
    {
        string[] words = ["the", "of", "and", "to", "in", "model", "fine-tuning", "latent", "activation", "residual", "stream",
            "It's", "they'll", "we've", "Hello", "World", "transformer", "tokenizer", "naïve", "café", "über", "don't", "I'm",
            "Tiếng", "Việt", "información", "Größe", "São", "Paulo", "résumé", "crosscoder", "dictionary", "feature"];
        string[] scripts = ["这是一个用于测试的中文句子。", "日本語のテキストも含まれています。", "Это предложение на русском языке.",
            "هذه جملة باللغة العربية.", "यह हिंदी में एक वाक्य है।", "한국어 문장입니다.", "Ελληνικά κείμενα εδώ.", "עברית גם כן."];
        string[] code = ["def forward(self, x):\n    return self.proj(x) + x\n", "for (int i = 0; i < n; i++) { y[i] += a * x[i]; }\n",
            "if __name__ == \"__main__\":\n\tmain()\n", "SELECT id, name FROM users WHERE age >= 18;\n", "{\"key\": [1, 2, 3], \"ok\": true}\n"];
        string[] emoji = ["🤗", "🚀", "👍🏽", "❤️", "🇫🇷", "𝐀𝐁𝐂", "😀😃"];
        var rng = new Random(1234);
        var docs = new List<string>();
        var sb = new StringBuilder();
        long total = 0;
        while (total < targetBytes)
        {
            sb.Clear();
            while (sb.Length < 4000)
            {
                switch (rng.Next(10))
                {
                    case < 5:
                        for (int i = 0, n = rng.Next(8, 30); i < n; i++) sb.Append(words[rng.Next(words.Length)]).Append(rng.Next(12) == 0 ? ", " : " ");
                        sb.Append(". ");
                        break;
                    case 5: sb.Append(scripts[rng.Next(scripts.Length)]).Append(' '); break;
                    case 6: sb.Append(code[rng.Next(code.Length)]); break;
                    case 7: sb.Append(rng.Next(1_000_000)).Append('.').Append(rng.Next(100)).Append(" ").Append(rng.NextDouble().ToString("E3", System.Globalization.CultureInfo.InvariantCulture)).Append(' '); break;
                    case 8: sb.Append(emoji[rng.Next(emoji.Length)]).Append(' '); break;
                    default: sb.Append(rng.Next(3) == 0 ? "\n\n" : "   \n"); break;
                }
            }
            string d = sb.ToString();
            docs.Add(d);
            total += System.Text.Encoding.UTF8.GetByteCount(d);
        }
        return docs;
    }
}

using System.Text.Json.Nodes;
using Finetrace.Activations;
using Finetrace.Dictionaries;
using Finetrace.Diffing;
using Finetrace.Diffing.Correlations;
using Finetrace.Tensors;
using Finetrace.Tests.Activations;
using Finetrace.Tests.Infrastructure;
using Finetrace.Web;

namespace Finetrace.Tests.Web;

/// <summary>The batch JSON's correlated_* fields: filled from the store the manifest records when the dictionary is
/// loaded, empty lists (with the note saying so) when the store is unknown.</summary>
public sealed class NeuronpediaCorrelationTests
{
    [Fact]
    public void Correlated_fields_come_from_the_recorded_store_and_are_empty_without_one()
    {
        using var results = new TempDir();
        using var storeDir = new TempDir();
        StoreTestData.Write(storeDir.Path, StoreTestData.Settings(d: 8, dtype: "f32", shardTokens: 64), 30, 10);
        var d = new SparseDictionary(2, 8, 12, Sparsity.Relu, CodeNormalization.None, false);
        Initialization.Crosscoder(d, new SplitMix64(5), 1f, sameInitForAllModels: false);
        var ad = new AnalysisDictionary(d, "t", DictionaryInput.Paired(3), 2);
        int[] ids = [0, 4, 9];

        var without = Neuronpedia.Batch(DashboardData.Load(results.Path), (ad, null, null), ids);
        Assert.All(without["features"]!.AsArray(), f => Assert.Empty(f!["correlated_neurons_indices"]!.AsArray()));
        Assert.Contains("not computed", without["finetrace"]!.GetValue<string>());

        ResultsFolder.Open(results.Path).Record("examples", "h", [], new JsonObject { ["store"] = storeDir.Path });
        var data = DashboardData.Load(results.Path);
        Assert.Equal(storeDir.Path, data.StoreDirectory);
        var with = Neuronpedia.Batch(data, (ad, null, null), ids);
        using var store = ActivationStore.Open(storeDir.Path);
        var direct = LatentCorrelations.Run(ad, store, ids, new CorrelationOptions { MaxPositions = Neuronpedia.CorrelationRows });
        var feats = with["features"]!.AsArray();
        for (int a = 0; a < ids.Length; a++)
        {
            var f = feats[a]!;
            Assert.Equal(direct[a].NeuronIndices, f["correlated_neurons_indices"]!.AsArray().Select(x => x!.GetValue<int>()));
            Assert.Equal(direct[a].FeatureIndices, f["correlated_features_indices"]!.AsArray().Select(x => x!.GetValue<int>()));
            Assert.Equal(3, f["correlated_features_pearson"]!.AsArray().Count);
            for (int q = 0; q < 3; q++)
            {
                Assert.Equal(direct[a].NeuronPearson[q], f["correlated_neurons_pearson"]![q]!.GetValue<double>(), 5);
                Assert.Equal(direct[a].NeuronCosine[q], f["correlated_neurons_l1"]![q]!.GetValue<double>(), 5);
                Assert.Equal(direct[a].FeaturePearson[q], f["correlated_features_pearson"]![q]!.GetValue<double>(), 5);
                Assert.Equal(direct[a].FeatureCosine[q], f["correlated_features_l1"]![q]!.GetValue<double>(), 5);
            }
        }
        Assert.Contains("|Pearson|", with["finetrace"]!.GetValue<string>());
    }
}

// Draws every figure of the page with Plotly from the JSON block #ft-data, then writes what it drew (and any error
// collected since the page began) into #ft-render-status for the browser test.
(function () {
  var status = document.getElementById('ft-render-status');
  var drawn = [];
  function writeStatus() {
    var resources = (performance.getEntriesByType ? performance.getEntriesByType('resource') : []).map(function (r) { return r.name; });
    status.textContent = JSON.stringify({ plots: drawn, errors: window.__ftErrors || [], resources: resources, done: true });
  }
  try {
    var data = JSON.parse(document.getElementById('ft-data').textContent);
    var config = { displaylogo: false, responsive: true, showLink: false, showSendToCloud: false, topojsonURL: '', modeBarButtonsToRemove: ['sendDataToCloud'] };
    var nodes = document.querySelectorAll('div.plot[data-plot]');
    var pending = [];
    nodes.forEach(function (node) {
      var fig = data[node.getAttribute('data-plot')];
      if (!fig) { window.__ftErrors.push('no figure for ' + node.id); return; }
      var layout = Object.assign({ height: 360, font: { family: 'system-ui, sans-serif', size: 12 }, paper_bgcolor: 'rgba(0,0,0,0)' }, fig.layout);
      pending.push(Plotly.newPlot(node, fig.data, layout, config).then(function () {
        var box = node.getBoundingClientRect();
        drawn.push({ id: node.id, width: Math.round(box.width), height: Math.round(box.height), traces: node.querySelectorAll('.trace, .point, .bars path').length, svg: node.querySelectorAll('svg.main-svg').length });
      }));
    });
    Promise.all(pending).then(writeStatus, function (e) { window.__ftErrors.push('plot failed: ' + e); writeStatus(); });
  } catch (e) {
    window.__ftErrors.push('report script: ' + e);
    writeStatus();
  }
  document.addEventListener('securitypolicyviolation', function () { setTimeout(writeStatus, 0); });
})();

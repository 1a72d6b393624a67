// Finetrace dashboard: the latent browser's table (server-side paging/sorting/filtering through /api/latents) and
// plots; the latent page's plots and example expanders. Charts use the embedded Plotly bundle (window.Plotly).
(function () {
  'use strict';
  const $ = (s, r) => (r || document).querySelector(s);
  const fmt = v => v === null || v === undefined ? '' : typeof v === 'number' ? (Math.abs(v) >= 1e4 || (v !== 0 && Math.abs(v) < 1e-3) ? v.toExponential(3) : +v.toFixed(4)) : String(v);
  const esc = s => String(s).replace(/[&<>"]/g, c => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' }[c]));

  function browser(root) {
    const cols = JSON.parse(root.dataset.columns);
    const url = new URLSearchParams(location.search);
    const state = { offset: 0, limit: 50, sort: url.get('sort') || '', desc: url.get('desc') !== '0', tag: url.get('tag') || '', ranges: {} };
    const tbody = $('tbody', root), thead = $('thead tr', root), info = $('#pageinfo'), csv = $('#csvlink');
    thead.innerHTML = cols.map(c => `<th data-col="${c.key}" class="${c.text ? 'text' : ''}">${esc(c.label)}</th>`).join('');
    thead.addEventListener('click', e => {
      const th = e.target.closest('th'); if (!th) return;
      const k = th.dataset.col;
      if (state.sort === k) state.desc = !state.desc; else { state.sort = k; state.desc = true; }
      state.offset = 0; load();
    });
    $('#tag').value = state.tag;
    $('#tag').addEventListener('change', e => { state.tag = e.target.value; state.offset = 0; load(); });
    $('#prev').addEventListener('click', () => { state.offset = Math.max(0, state.offset - state.limit); load(); });
    $('#next').addEventListener('click', () => { state.offset += state.limit; load(); });
    $('#clear').addEventListener('click', () => { state.ranges = {}; state.offset = 0; load(); });
    function query(extra) {
      const p = new URLSearchParams();
      if (state.sort) { p.set('sort', state.sort); p.set('desc', state.desc ? '1' : '0'); }
      if (state.tag) p.set('tag', state.tag);
      for (const k in state.ranges) p.append('range', `${k}:${state.ranges[k][0]}:${state.ranges[k][1]}`);
      for (const k in (extra || {})) p.set(k, extra[k]);
      return p.toString();
    }
    async function load() {
      const res = await fetch('/api/latents?' + query({ offset: state.offset, limit: state.limit }));
      const data = await res.json();
      if (!res.ok) { tbody.innerHTML = `<tr><td class="text" colspan="${cols.length}">${esc(data.error)}</td></tr>`; return; }
      if (state.offset >= data.total && data.total > 0) { state.offset = Math.max(0, data.total - state.limit); return load(); }
      tbody.innerHTML = data.rows.map(r => '<tr>' + cols.map(c => cell(c, r)).join('') + '</tr>').join('');
      info.textContent = data.total === 0 ? 'no latents match' : `${state.offset + 1}–${state.offset + data.rows.length} of ${data.total}`;
      const rs = Object.keys(state.ranges).map(k => `${k} ∈ [${fmt(state.ranges[k][0])}, ${fmt(state.ranges[k][1])}]`);
      $('#ranges').textContent = rs.length ? 'selected: ' + rs.join(', ') : '';
      $('#clear').style.display = rs.length ? '' : 'none';
      thead.querySelectorAll('th').forEach(th => { th.classList.toggle('sorted', th.dataset.col === state.sort); th.classList.toggle('asc', th.dataset.col === state.sort && !state.desc); });
      csv.href = '/api/latents.csv?' + query();
      history.replaceState(null, '', '?' + new URLSearchParams(Object.assign({}, state.tag ? { tag: state.tag } : {}, state.sort ? { sort: state.sort, desc: state.desc ? '1' : '0' } : {})).toString());
      root.dataset.loaded = String(Date.now());
    }
    function cell(c, r) {
      const v = r[c.key];
      if (c.key === 'id') return `<td><a href="/latent/${r.id}">${r.id}</a></td>`;
      if (c.key === 'tag') return `<td class="text"><span class="tag tag-${esc(v || '')}">${esc(v || '')}</span></td>`;
      if (c.text) return `<td class="text">${esc(v === null || v === undefined ? '' : v)}</td>`;
      const lo = r[c.key + '_lo'], hi = r[c.key + '_hi'];
      const iv = (lo !== undefined && hi !== undefined && lo !== null && hi !== null) ? ` <span class="iv">[${fmt(lo)}, ${fmt(hi)}]</span>` : '';
      return `<td>${fmt(v)}${iv}</td>`;
    }
    plots(state, load);
    load();
  }

  async function plots(state, reload) {
    if (!window.Plotly) return;
    const res = await fetch('/api/plots'); if (!res.ok) return;
    const d = await res.json();
    const cfg = { displaylogo: false, responsive: true, displayModeBar: false };
    if (d.histogram) {
      const h = d.histogram;
      Plotly.newPlot('hist', [{ type: 'bar', x: h.centers, y: h.counts, width: h.width, marker: { color: '#4a6fd1' } }],
        { title: { text: 'Δnorm (' + h.column + ') — drag to filter', font: { size: 13 } }, margin: { t: 30, l: 45, r: 10, b: 35 }, dragmode: 'select', selectdirection: 'h', yaxis: { type: 'log' } }, cfg);
      $('#hist').on('plotly_selected', ev => { if (!ev || !ev.range) return; state.ranges[h.column] = ev.range.x.slice().sort((a, b) => a - b); state.offset = 0; reload(); });
    } else $('#hist').innerHTML = '<p class="muted">no Δnorm column</p>';
    if (d.scatter) {
      const s = d.scatter;
      Plotly.newPlot('scatter', [{ type: 'scatter', mode: 'markers', x: s.x, y: s.y, text: s.ids.map((id, i) => 'latent ' + id + (s.tags ? ' (' + s.tags[i] + ')' : '')), marker: { size: 4, color: '#d1694a', opacity: 0.6 } }],
        { title: { text: 'ν^ε vs ν^r' + (s.sampled ? ' (sample)' : '') + ' — drag to filter', font: { size: 13 } }, margin: { t: 30, l: 45, r: 10, b: 35 }, dragmode: 'select', xaxis: { title: { text: 'ν^r' } }, yaxis: { title: { text: 'ν^ε' } } }, cfg);
      $('#scatter').on('plotly_selected', ev => {
        if (!ev || !ev.range) return;
        state.ranges.nu_reconstruction = ev.range.x.slice().sort((a, b) => a - b); state.ranges.nu_error = ev.range.y.slice().sort((a, b) => a - b);
        state.offset = 0; reload();
      });
      $('#scatter').on('plotly_click', ev => { if (ev && ev.points && ev.points[0]) location.href = '/latent/' + s.ids[ev.points[0].pointIndex]; });
    } else $('#scatter').innerHTML = '<p class="muted">no Latent Scaling columns (run finetrace analyze scaling)</p>';
  }

  function latent() {
    const data = JSON.parse($('#latent-data').textContent);
    document.querySelectorAll('.example .more').forEach(m => m.addEventListener('click', () => { const ex = m.closest('.example'); ex.classList.toggle('collapsed'); m.textContent = ex.classList.contains('collapsed') ? '… show full context' : 'collapse'; }));
    if (!window.Plotly) return;
    const cfg = { displaylogo: false, responsive: true, displayModeBar: false };
    if (data.norms && data.norms.length && $('#norms')) Plotly.newPlot('norms', [{ type: 'bar', x: data.norms.map(n => n[0]), y: data.norms.map(n => n[1]), marker: { color: ['#4a6fd1', '#d1694a', '#6a9', '#999'] } }],
      { title: { text: 'decoder norm per model', font: { size: 13 } }, margin: { t: 30, l: 45, r: 10, b: 35 } }, cfg);
    if (data.scaling && data.scaling.length && $('#scaling')) Plotly.newPlot('scaling', [{ type: 'scatter', mode: 'markers', x: data.scaling.map(s => s[0]), y: data.scaling.map(s => s[1]),
      error_y: { type: 'data', symmetric: false, array: data.scaling.map(s => s[3] === null ? 0 : s[3] - s[1]), arrayminus: data.scaling.map(s => s[2] === null ? 0 : s[1] - s[2]) }, marker: { size: 9 } }],
      { title: { text: 'Latent Scaling ν with intervals', font: { size: 13 } }, margin: { t: 30, l: 45, r: 10, b: 35 } }, cfg);
    if (data.activations && data.activations.length && $('#acthist')) {
      // plotly-basic has no histogram trace: bin here and draw bars.
      const a = data.activations, lo = Math.min(...a), hi = Math.max(...a), n = 30, w = hi > lo ? (hi - lo) / n : 1, c = new Array(n).fill(0);
      a.forEach(v => c[Math.min(n - 1, Math.floor((v - lo) / w))]++);
      Plotly.newPlot('acthist', [{ type: 'bar', x: c.map((_, i) => lo + (i + 0.5) * w), y: c, width: w, marker: { color: '#6a9' } }],
        { title: { text: 'activations in stored examples (nonzero)', font: { size: 13 } }, margin: { t: 30, l: 45, r: 10, b: 35 } }, cfg);
    }
  }

  document.addEventListener('DOMContentLoaded', () => {
    const b = document.getElementById('browser'); if (b) browser(b);
    if (document.getElementById('latent-data')) latent();
  });
})();

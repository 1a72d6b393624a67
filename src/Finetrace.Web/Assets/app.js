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
    if (data.histogram && $('#histogram')) {
      const h = data.histogram, c = h.counts.map((_, i) => (h.edges[i] + h.edges[i + 1]) / 2), w = h.edges[1] - h.edges[0];
      Plotly.newPlot('histogram', [{ type: 'bar', x: c, y: h.counts, width: w, marker: { color: '#4a6fd1' } }],
        { title: { text: 'activation histogram (all positions)', font: { size: 13 } }, margin: { t: 30, l: 45, r: 10, b: 35 }, yaxis: { type: 'log' } }, cfg);
    }
    if (data.activations && data.activations.length && $('#acthist')) {
      // plotly-basic has no histogram trace: bin here and draw bars.
      const a = data.activations, lo = Math.min(...a), hi = Math.max(...a), n = 30, w = hi > lo ? (hi - lo) / n : 1, c = new Array(n).fill(0);
      a.forEach(v => c[Math.min(n - 1, Math.floor((v - lo) / w))]++);
      Plotly.newPlot('acthist', [{ type: 'bar', x: c.map((_, i) => lo + (i + 0.5) * w), y: c, width: w, marker: { color: '#6a9' } }],
        { title: { text: 'activations in stored examples (nonzero)', font: { size: 13 } }, margin: { t: 30, l: 45, r: 10, b: 35 } }, cfg);
    }
  }

  // The live page: /api/live/status until the models are ready, then analysis, steering and amplification calls.
  function live() {
    const status = $('#live-status'), buttons = ['#live-run', '#steer-run', '#amp-run'].map(s => $(s));
    const asked = new URLSearchParams(location.search).get('latent');
    if (asked && /^\d+$/.test(asked)) { $('#live-latents').value = asked; $('#steer-latent').value = asked; }
    let last = null;
    document.querySelectorAll('input[name=mode]').forEach(r => r.addEventListener('change', () => {
      const chat = $('input[name=mode]:checked').value === 'chat';
      $('#chat-box').style.display = chat ? '' : 'none'; $('#live-text').style.display = chat ? 'none' : '';
    }));
    function input() {
      if ($('input[name=mode]:checked').value !== 'chat') return { text: $('#live-text').value };
      const m = [{ role: 'user', content: $('#live-user').value }];
      if ($('#live-assistant').value) m.push({ role: 'assistant', content: $('#live-assistant').value });
      return { messages: m };
    }
    async function post(url, body, out) {
      out.innerHTML = '<p class="muted">running…</p>';
      const res = await fetch(url, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) });
      const data = await res.json();
      if (!res.ok) { out.innerHTML = `<div class="error">${res.status}: ${esc(data.error)}</div>`; return null; }
      return data;
    }
    async function poll() {
      const res = await fetch('/api/live/status'); const s = await res.json();
      if (s.state === 'loading') { status.textContent = 'loading the models…'; setTimeout(poll, 300); return; }
      if (s.state !== 'ready') { status.innerHTML = `<span class="error">live analysis is off: ${esc(s.problem)}</span>`; return; }
      status.textContent = `ready · layer ${s.layer}` + (s.dictionary_latents ? ` · dictionary of ${s.dictionary_latents} latents` : ` · ${s.dictionary_note || 'no dictionary'}`) + (s.chat_template ? ' · chat template' : '');
      if (!s.chat_template) { const r = $('input[name=mode][value=chat]'); r.disabled = true; r.parentElement.title = s.chat_note || 'no chat template'; }
      const sel = $('#steer-vector');
      sel.innerHTML = (s.dictionary_latents ? '<option value="latent">latent decoder direction (fine-tuned row)</option><option value="latent-base">latent decoder direction (base row)</option>' : '') +
        (s.vectors || []).map(v => `<option value="${esc(v.key)}">${esc(v.label)}</option>`).join('');
      buttons.forEach(b => b.disabled = false);
      $('#live').dataset.ready = '1';
    }
    function colour(v, max, rgb) { const a = max > 0 ? Math.min(1, Math.abs(v) / max) : 0; return `background:rgba(${rgb},${a.toFixed(3)})`; }
    function tokens(d, values, rgb, label) {
      const max = Math.max(0, ...values.map(Math.abs));
      return '<div class="example live-tokens">' + d.tokens.map((t, i) => `<span class="tok${values[i] ? ' act' : ''}" style="${colour(values[i], max, rgb)}" title="token ${t.id}${t.role ? ' (' + t.role + ')' : ''} · ${label} ${fmt(values[i])} · KL ${fmt(t.kl)} · ‖Δh‖ ${fmt(t.diff_norm)}">${esc(t.text)}</span>`).join('') + '</div>';
    }
    function render() {
      const d = last; if (!d) return;
      const by = $('#live-colour').value;
      let h = `<div class="card"><h3>${by === 'kl' ? 'KL(p_ft ‖ p_base) per token' : '‖h_ft − h_base‖ at layer ' + d.layer}</h3>` + tokens(d, d.tokens.map(t => t[by] || 0), '230,80,40', by) + '</div>';
      if (d.dictionary_note) h += `<p class="muted">${esc(d.dictionary_note)}</p>`;
      for (const l of d.latents) h += `<div class="card live-latent" data-latent="${l.id}"><h3><a href="/latent/${l.id}">latent ${l.id}</a> <span class="tag tag-${esc(l.tag || '')}">${esc(l.tag || '')}</span> <span class="muted">max ${fmt(l.max)}</span></h3>` + tokens(d, l.values, '74,111,209', 'activation') + '</div>';
      $('#live-result').innerHTML = h; $('#live-result').dataset.done = String(Date.now());
    }
    $('#live-colour').addEventListener('change', render);
    $('#live-run').addEventListener('click', async () => {
      const ids = $('#live-latents').value.split(/[ ,]+/).filter(x => x !== '').map(Number);
      const d = await post('/api/live/analyze', Object.assign(input(), { latents: ids, top: 5 }), $('#live-result'));
      if (d) { last = d; render(); }
    });
    $('#steer-run').addEventListener('click', async () => {
      let v = $('#steer-vector').value;
      if (v === 'latent') v = 'latent:' + $('#steer-latent').value + ':finetuned'; else if (v === 'latent-base') v = 'latent:' + $('#steer-latent').value + ':base';
      const out = $('#steer-result');
      const d = await post('/api/live/steer', Object.assign(input(), { model: $('#steer-model').value, vector: v, strength: +$('#steer-strength').value, max_new_tokens: +$('#steer-tokens').value, temperature: +$('#steer-temp').value, seed: +$('#steer-seed').value }), out);
      if (!d) return;
      out.innerHTML = `<p class="muted">${esc(d.vector)} on the ${esc(d.model)} model at layer ${d.layer}, strength ${fmt(d.strength)} (added norm ${fmt(d.added_norm)})</p><table class="side"><tr><th class="text">steered</th><th class="text">unsteered</th></tr><tr><td class="text wrap" id="steered">${esc(d.steered)}</td><td class="text wrap" id="unsteered">${esc(d.unsteered)}</td></tr></table>`;
      out.dataset.done = String(Date.now());
    });
    $('#amp-run').addEventListener('click', async () => {
      const out = $('#amp-result');
      const d = await post('/api/live/amplify', Object.assign(input(), { alpha: +$('#amp-alpha').value, max_new_tokens: +$('#steer-tokens').value, temperature: +$('#steer-temp').value, seed: +$('#steer-seed').value }), out);
      if (!d) return;
      out.innerHTML = `<table class="side"><tr><th class="text">base</th><th class="text">fine-tuned</th><th class="text">amplified (α = ${fmt(d.alpha)})</th></tr><tr><td class="text wrap">${esc(d.base)}</td><td class="text wrap">${esc(d.finetuned)}</td><td class="text wrap" id="amplified">${esc(d.amplified)}</td></tr></table>`;
      out.dataset.done = String(Date.now());
    });
    poll();
  }

  function klPage() {
    const d = JSON.parse($('#kl-data').textContent);
    if (!window.Plotly || !$('#kldist') || !d.quantiles.length) return;
    Plotly.newPlot('kldist', [{ type: 'scatter', mode: 'lines+markers', x: d.quantiles.map(q => q[0]), y: d.quantiles.map(q => q[1]), name: 'quantiles' }],
      { title: { text: 'per-token KL distribution (quantiles)', font: { size: 13 } }, margin: { t: 30, l: 45, r: 10, b: 35 }, yaxis: { type: 'log' } }, { displaylogo: false, displayModeBar: false });
  }

  document.addEventListener('DOMContentLoaded', () => {
    const b = document.getElementById('browser'); if (b) browser(b);
    if (document.getElementById('latent-data')) latent();
    if (document.getElementById('live')) live();
    if (document.getElementById('kl-data')) klPage();
  });
})();

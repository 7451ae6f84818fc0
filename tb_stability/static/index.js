// The Stability tab. TensorBoard loads this module into the tab's iframe
// (whose <base href> is plugin/tb_stability/) and calls render() with no
// arguments. Every URL here is relative: './runs' for the routes,
// import.meta.url for the static files next to this module.
//
//   body.tbs [.dark]
//     header.toolbar   run selector, run facts, log toggle, reset zoom
//     .overview-box    the runs overview (views/overview.js): the landing view
//                      when the logdir has several runs
//     .panel.top       legend; timeline + signal strip (views/timeline.js)
//     .lower
//       .side          anomaly list, or the cause card (views/causeCard.js)
//       .evidence      heatmap (views/heatmap.js) and Adam chart (views/adamChart.js)

import {api} from './api.js';
import {
  CALLBACK_LINE, anomalyCause, causeCounts, causeStyle, decodeArray, decodeMatrix,
  decodeTimeline, evidenceRowsNote, evidenceSparseNote, findAnomaly, formatNumber, formatPercent, formatStep,
  commonPathPrefix, highlightRow, mergeTimelines, middleEllipsis, needsZoomFetch, requestWidth, setCauses, shapePath, stepAnomaly,
  storyRange, timelineUrl, variableIndex, zoomSteps, zoomWidth,
} from './model.js';
import {AdamChartView} from './views/adamChart.js';
import {causeCard, causeLegend} from './views/causeCard.js';
import {clear, el, svgShape} from './views/dom.js';
import {HEATMAP_STATS, HeatmapView} from './views/heatmap.js';
import {overviewView} from './views/overview.js';
import {ALL_RUNS, runSelector} from './views/runSelector.js';
import {TimelineView} from './views/timeline.js';

const STORAGE_KEY = 'tb_stability.run';
const LAYER_CHARS = 16;  // a longer layer name is shortened in the middle (full name on hover)
const ZOOM_DEBOUNCE_MS = 200;  // a zoom must settle this long before its range is fetched

function loadCss(href) {
  return new Promise((resolve) => {
    const link = el('link', {rel: 'stylesheet', href});
    link.addEventListener('load', resolve);
    link.addEventListener('error', resolve);
    document.head.appendChild(link);
  });
}

/** Dark mode: follows TensorBoard's body.dark-mode in the parent page, or
 * prefers-color-scheme when there is no TensorBoard around us. */
function watchTheme(apply) {
  let hostBody = null;
  try {
    if (window.parent && window.parent !== window) hostBody = window.parent.document.body;
  } catch (e) { /* another origin: no access */ }
  const mq = window.matchMedia ? window.matchMedia('(prefers-color-scheme: dark)') : null;
  const isDark = () => (hostBody ? hostBody.classList.contains('dark-mode') : !!(mq && mq.matches));
  let last = isDark();
  apply(last, true);
  const check = () => {
    const now = isDark();
    if (now !== last) { last = now; apply(now, false); }
  };
  if (hostBody) new MutationObserver(check).observe(hostBody, {attributes: true, attributeFilter: ['class']});
  else if (mq && mq.addEventListener) mq.addEventListener('change', check);
}

/** TensorBoard's plugin host IPC (tensorboard/components/experimental/
 * plugin_util): post 'experimental.bootstrap' with a MessagePort to the
 * parent, then JSON {type, id, payload, error, isReply} over the port. The
 * host broadcasts 'experimental.DataReloaded' on reload (button or auto);
 * every host message gets a reply. */
function connectHost(handlers) {
  if (!window.parent || window.parent === window) return null;
  const channel = new MessageChannel();
  const port = channel.port1;
  port.onmessage = async (event) => {
    let msg;
    try { msg = JSON.parse(event.data); } catch (e) { return; }
    if (!msg || msg.isReply) return;
    let payload = null, error = null;
    try {
      const h = handlers[msg.type];
      if (h) payload = (await h(msg.payload)) ?? null;
    } catch (e) {
      error = String(e && e.message || e);
    }
    port.postMessage(JSON.stringify({type: msg.type, id: msg.id, payload, error, isReply: true}));
  };
  window.parent.postMessage('experimental.bootstrap', '*', [channel.port2]);
  return port;
}

class App {
  constructor(root) {
    this.root = root;
    this.runs = [];
    this.run = null;
    this.timeline = null;     // decoded
    this.rawTimeline = null;
    this.selected = -1;
    this.detail = null;
    this.detailCache = new Map();
    this.log = null;          // null: automatic
    this.xRange = null;
    // The finer buckets of the zoomed range: {requested: [first, last],
    // width, rangeSteps, buckets, merged (drawn: mergeTimelines)}, or null.
    this.zoom = null;
    this.zoomTimer = 0;
    this.zoomToken = 0;       // a newer zoom request supersedes older ones
    this.zoomAbort = null;
    this.zoomInFlight = null; // URL of the request under way
    this.heatStat = null;     // null: chosen per cause
    this.heatNorm = 'global';
    this.adamVariable = -1;
    this.token = 0;
    this.detailToken = 0;
    this.causes = null;       // the cause registry (GET causes)
    this.view = null;         // 'overview' (several runs: the landing view) or 'run'
    this.overview = null;     // the GET overview payload
    this.overviewCause = '';  // the overview's cause filter ('' every cause)
    this.overviewToken = 0;
    this.messageShown = false;
    this.stats = {reloads: 0, timelineFetches: 0, zoomFetches: 0, drawMs: null, decodeMs: null};
  }

  async start() {
    const base = new URL('./', import.meta.url);
    await Promise.all([
      loadCss(new URL('vendor/uplot/uPlot.min.css', base).href),
      loadCss(new URL('style.css', base).href),
      this.loadCauses(),
    ]);
    document.body.classList.add('tbs');
    this.buildShell();
    watchTheme((dark, first) => {
      document.body.classList.toggle('dark', dark);
      document.body.dataset.theme = dark ? 'dark' : 'light';
      if (!first) this.redrawAll();
    });
    connectHost({'experimental.DataReloaded': () => this.reload()});
    document.addEventListener('keydown', (e) => this.onKey(e));
    let lastWidth = 0, pending = false;
    new ResizeObserver(() => {
      if (pending) return;
      pending = true;
      requestAnimationFrame(() => {
        pending = false;
        const w = this.main.clientWidth;
        if (w > 0 && w !== lastWidth) { lastWidth = w; this.resize(); }
      });
    }).observe(this.main);
    await this.loadRuns();
  }

  /** The cause registry (ids, titles, colours, shapes, labels), once:
   * without it every cause draws in the neutral fallback style. */
  async loadCauses() {
    try {
      this.causes = setCauses(await api.causes());
    } catch (e) {
      this.causes = setCauses(null);
      console.warn(`tb_stability: no cause registry (${e.message}): causes drawn in a neutral style`);
    }
  }

  buildShell() {
    clear(this.root);
    this.runBox = el('span', {class: 'run-box'});
    this.facts = el('span', {class: 'facts-line', 'data-testid': 'run-facts'});
    this.logToggle = el('input', {type: 'checkbox', 'data-testid': 'log-toggle',
      onchange: (e) => { this.log = e.target.checked; this.drawTimeline(); }});
    this.resetZoom = el('button', {type: 'button', class: 'btn', 'data-testid': 'reset-zoom', hidden: true,
      onclick: () => { this.xRange = null; this.timelineView.setXRange(null); }}, 'reset zoom');
    this.status = el('span', {class: 'status', 'data-testid': 'status', role: 'status'});
    this.controls = el('span', {class: 'controls'},
      el('label', {class: 'toggle', title: 'Logarithmic loss axis (l)'}, this.logToggle, ' log y'),
      this.resetZoom,
      el('span', {class: 'hint', title: 'Drag on a chart to zoom, double-click to reset; j/k or \u2190/\u2192 step through anomalies; Esc closes the card'},
        'drag: zoom \u00b7 j/k: anomalies'));
    const toolbar = el('header', {class: 'toolbar'},
      el('span', {class: 'brand'}, 'Stability'),
      this.runBox, this.facts, el('span', {class: 'spacer'}), this.status, this.controls);
    this.legend = el('div', {class: 'legend-box'});
    this.timelineBox = el('div', {class: 'timeline'});
    this.top = el('section', {class: 'panel top'}, this.legend, this.timelineBox);
    this.side = el('div', {class: 'side'});
    this.heatBox = el('div', {class: 'panel heatmap', 'data-testid': 'heatmap'});
    this.adamBox = el('div', {class: 'panel adam', 'data-testid': 'adam-chart'});
    this.evidence = el('div', {class: 'evidence-col', 'data-testid': 'evidence'}, this.heatBox, this.adamBox);
    this.lower = el('div', {class: 'lower'}, this.side, this.evidence);
    this.message = el('div', {class: 'message-box'});
    this.overviewBox = el('div', {class: 'overview-box', hidden: true});
    this.main = el('main', {class: 'app'}, toolbar, this.message, this.overviewBox, this.top, this.lower);
    this.root.appendChild(this.main);
    this.timelineView = new TimelineView(this.timelineBox, {
      onSelect: (i) => this.select(i),
      onZoom: (range) => {
        const had = !!this.xRange;
        this.xRange = range;
        this.resetZoom.hidden = !range;
        if (!range && had && this.storyZoom) { this.storyZoom = null; this.drawFacts(); }
        else if (range && !had && this.storyZoom) this.drawFacts();
        this.scheduleZoom();
      },
    });
    this.heatmap = new HeatmapView(this.heatBox, {
      onStat: (s) => { this.heatStat = s; this.drawEvidence(); },
      onNorm: (n) => { this.heatNorm = n; this.drawEvidence(); },
      onVariable: (i) => { this.adamVariable = i; this.drawEvidence(); },
    });
    this.adam = new AdamChartView(this.adamBox);
  }

  setStatus(text, kind = '') {
    this.status.textContent = text;
    this.status.className = `status ${kind}`;
  }

  showMessage(node) {
    clear(this.message);
    if (node) this.message.appendChild(node);
    this.messageShown = !!node;
    this.applyView();
  }

  /** Shows the overview or the run's panels (neither under a message). */
  applyView() {
    const run = this.view !== 'overview';
    const hideRun = this.messageShown || !run;
    this.top.hidden = hideRun;
    this.lower.hidden = hideRun;
    this.controls.hidden = hideRun;
    this.overviewBox.hidden = this.messageShown || run;
    this.main.dataset.view = run ? 'run' : 'overview';
  }

  async loadRuns() {
    let runs;
    try {
      runs = (await api.runs()).runs || [];
    } catch (e) {
      this.setStatus(`Could not list runs: ${e.message}`, 'error');
      return;
    }
    this.runs = runs;
    clear(this.runBox);
    if (!runs.length) {
      this.run = null;
      this.facts.textContent = '';
      this.showMessage(el('div', {class: 'panel empty', 'data-testid': 'empty-state'},
        el('h2', {}, 'No tb_stability data in this logdir'),
        el('p', {}, 'The Stability tab shows runs written by tb_stability\u2019s callback. Add it to your training with one line:'),
        el('pre', {class: 'code', 'data-testid': 'callback-line'}, CALLBACK_LINE),
        el('p', {}, 'then point TensorBoard at the same logdir (', el('code', {}, 'tensorboard --logdir logs'),
          '). Runs appear here as soon as their first window is written; the reload button picks them up.')));
      this.setStatus('');
      return;
    }
    if (this.view === null) this.view = runs.length > 1 ? 'overview' : 'run';
    if (runs.length < 2) this.view = 'run';
    this.showMessage(null);
    let wanted = this.run;
    if (!wanted) { try { wanted = sessionStorage.getItem(STORAGE_KEY); } catch (e) { /* no storage */ } }
    if (!runs.some((r) => r.run === wanted)) wanted = runs[0].run;
    const changed = wanted !== this.run;
    this.run = wanted;
    this.runBox.appendChild(runSelector(runs, this.view === 'overview' ? ALL_RUNS : this.run,
      (run) => (run === ALL_RUNS ? this.showOverview() : this.chooseRun(run)), runs.length > 1));
    if (this.view === 'overview') await this.loadOverview();
    else if (changed || !this.timeline) await this.loadTimeline(false);
  }

  /** The runs overview (GET overview), the landing view of a sweep. */
  async showOverview() {
    this.view = 'overview';
    this.token++;  // a timeline still loading is not drawn over it
    this.cancelZoom();
    const select = this.runBox.querySelector('select');
    if (select) { select.value = ALL_RUNS; select.title = ''; }
    this.applyView();
    await this.loadOverview();
  }

  /** GET overview, again while runs are pending (a sweep's first look
   * fills in over a few requests: the backend answers every ~2 s). */
  async loadOverview() {
    const token = ++this.overviewToken;
    this.setStatus('summarising the runs\u2026');
    for (;;) {
      let data;
      try {
        data = await api.overview();
      } catch (e) {
        if (token === this.overviewToken) this.setStatus(`Could not summarise the runs: ${e.message}`, 'error');
        return;
      }
      if (token !== this.overviewToken || this.view !== 'overview') return;
      this.overview = data;
      this.renderOverview();
      if (!(data.pending > 0)) break;
      this.setStatus(`analysing ${formatStep(data.pending)} more run${data.pending === 1 ? '' : 's'}\u2026`);
    }
    this.setStatus('');
  }

  renderOverview() {
    clear(this.overviewBox);
    const data = this.overview;
    if (!data) return;
    this.overviewBox.appendChild(overviewView(data, {
      cause: this.overviewCause,
      onFilter: (cause) => { this.overviewCause = cause; this.renderOverview(); },
      onOpen: (run) => this.openRun(run),
    }));
    this.facts.textContent = '';
    this.main.dataset.overviewRuns = String(data.total);
    this.main.dataset.overviewPending = String(data.pending || 0);
  }

  /** Opens a run from the overview (as choosing it in the select). */
  async openRun(run) {
    const select = this.runBox.querySelector('select');
    if (select) { select.value = run; select.title = run; }
    await this.chooseRun(run);
  }

  async chooseRun(run) {
    this.view = 'run';
    this.applyView();
    this.run = run;
    try { sessionStorage.setItem(STORAGE_KEY, run); } catch (e) { /* no storage */ }
    this.selected = -1;
    this.xRange = null;
    this.log = null;
    this.heatStat = null;
    this.detailCache.clear();
    await this.loadTimeline(false);
  }

  async reload() {
    this.stats.reloads++;
    this.detailCache.clear();
    await this.loadRuns();  // the overview reloads itself there
    if (this.run && this.view === 'run') await this.loadTimeline(true);
  }

  async loadTimeline(keep) {
    const token = ++this.token;
    this.cancelZoom();
    this.zoom = null;
    const run = this.run;
    const width = requestWidth((this.timelineBox.clientWidth || 900) - 64);
    this.setStatus(keep ? 'reloading\u2026' : 'loading\u2026');
    let raw;
    try {
      this.stats.timelineFetches++;
      raw = await api.timeline(run, width);
    } catch (e) {
      if (token !== this.token) return;
      this.timeline = null;
      this.timelineView.destroy();
      this.setStatus('', '');
      this.showMessage(el('div', {class: 'panel empty error', 'data-testid': 'run-error'},
        el('h2', {}, 'This run cannot be shown'), el('p', {}, e.message)));
      return;
    }
    if (token !== this.token) return;  // the user picked another run meanwhile
    this.showMessage(null);
    const t0 = performance.now();
    const keepStep = keep && this.timeline && this.selected >= 0 ? this.timeline.anomalies[this.selected].step : null;
    this.rawTimeline = raw;
    this.timeline = decodeTimeline(raw);
    const t1 = performance.now();
    this.selected = keepStep === null ? -1 : findAnomaly(this.timeline.anomalies, keepStep);
    if (!keep) this.xRange = null;
    // a run whose anomalies are all in its first steps opens zoomed to them
    this.storyZoom = keep ? this.storyZoom : storyRange(this.timeline.anomalies, raw.first_step, raw.last_step);
    this.drawTimeline();
    if (!keep && this.storyZoom) this.timelineView.setXRange(this.storyZoom);
    this.renderSide();
    if (this.selected >= 0) this.loadDetail(this.selected);
    else this.clearEvidence();
    await new Promise((r) => requestAnimationFrame(() => r()));
    const drawnAt = this.timelineView.lastDrawAt > t0 ? this.timelineView.lastDrawAt : performance.now();
    this.stats.decodeMs = t1 - t0;
    this.stats.drawMs = drawnAt - t0;
    this.main.dataset.drawMs = this.stats.drawMs.toFixed(1);
    this.main.dataset.buckets = String(this.timeline.x.length);
    this.main.dataset.run = run;
    this.setStatus('');
  }

  /** What the timeline draws: the whole run, with a zoom's finer buckets
   * merged in while zoomed. */
  displayed() {
    return this.xRange && this.zoom ? this.zoom.merged : this.timeline;
  }

  drawTimeline() {
    const t = this.timeline, raw = this.rawTimeline;
    if (!t) return;
    this.timelineView.setData(this.displayed(), {log: this.log, optimizer: raw.optimizer, selected: this.selected, xRange: this.xRange});
    this.logToggle.checked = this.timelineView.log;
    this.logToggle.disabled = !this.timelineView.logAvailable;
    this.resetZoom.hidden = !this.xRange;
    clear(this.legend);
    this.legend.appendChild(causeLegend(causeCounts(t.anomalies)));
    this.drawFacts();
  }

  /** The toolbar's line about the run. */
  drawFacts() {
    const t = this.timeline, raw = this.rawTimeline;
    if (!t || this.view === 'overview') return;
    const opt = raw.optimizer || {};
    const parts = [
      `${formatStep(raw.steps)} steps`,
      opt.name ? `${opt.name}${opt.adam && opt.epsilon !== undefined ? ` \u03b5=${formatNumber(opt.epsilon, 2)}` : ''}` : null,
      `${t.anomalies.length} anomal${t.anomalies.length === 1 ? 'y' : 'ies'}`,
      raw.skipped_total ? `${formatStep(raw.skipped_total)} skipped (loss scale)` : null,
      raw.guard_skipped_total ? `${formatStep(raw.guard_skipped_total)} update${raw.guard_skipped_total === 1 ? '' : 's'} skipped (guard)` : null,
      t.nonfinite.some(Boolean) ? 'non-finite values' : null,
      this.storyZoom && this.xRange ? `opened on steps ${formatStep(this.storyZoom[0])}\u2013${formatStep(this.storyZoom[1])}, where its anomalies are (reset zoom: the whole run)` : null,
    ].filter(Boolean);
    this.facts.textContent = parts.join(' \u00b7 ');
  }

  // ---------------------------------------------------------- zoom refetch

  /** Drops a pending or running range fetch (its answer is ignored). */
  cancelZoom() {
    clearTimeout(this.zoomTimer);
    this.zoomTimer = 0;
    this.zoomToken++;
    this.zoomInFlight = null;
    if (this.zoomAbort) { this.zoomAbort.abort(); this.zoomAbort = null; }
  }

  /** After the x window changed: back to the cached whole-run buckets when
   * the zoom was reset, else fetch the window's buckets once it settles. */
  scheduleZoom() {
    if (!this.xRange) {
      this.cancelZoom();
      this.zoom = null;
      // (called once per synced chart) not from inside uPlot's scale hook:
      // swap the data on the next turn
      if (this.timeline && this.timelineView.data !== this.timeline) {
        this.zoomTimer = setTimeout(() => {
          if (!this.xRange && this.timeline) this.timelineView.replaceData(this.timeline);
        }, 0);
      }
      return;
    }
    clearTimeout(this.zoomTimer);
    this.zoomTimer = setTimeout(() => { this.fetchZoom(); }, ZOOM_DEBOUNCE_MS);
  }

  async fetchZoom() {
    const t = this.timeline, raw = this.rawTimeline, run = this.run;
    if (!t || !raw || !this.xRange) return;
    const view = zoomSteps(this.xRange, raw.first_step, raw.last_step);
    const width = zoomWidth(this.timelineView.plotWidth());
    if (!needsZoomFetch(view, width, raw, this.zoom)) {
      if (this.zoomInFlight) this.cancelZoom();  // what is drawn will do: drop an older request
      return;
    }
    const url = timelineUrl(run, width, view);
    if (this.zoomInFlight === url) return;  // already asked
    this.cancelZoom();
    const token = this.zoomToken;
    const ctrl = this.zoomAbort = new AbortController();
    this.zoomInFlight = url;
    this.stats.zoomFetches++;
    let zraw;
    try {
      zraw = await api.timeline(run, width, ctrl.signal, view);
    } catch (e) {
      if (token !== this.zoomToken) return;  // superseded (or aborted for that)
      this.zoomInFlight = null;
      this.zoomAbort = null;
      this.setStatus(`Could not load the zoomed range: ${e.message}`, 'error');
      return;
    }
    // a newer zoom, a reset, another run or a reload supersedes this answer
    if (token !== this.zoomToken || run !== this.run || raw !== this.rawTimeline || !this.xRange) return;
    this.zoomInFlight = null;
    this.zoomAbort = null;
    this.zoom = {
      requested: view, width, rangeSteps: zraw.range_steps, buckets: zraw.buckets,
      merged: mergeTimelines(t, decodeTimeline(zraw), view),
    };
    if (this.status.classList.contains('error')) this.setStatus('');
    this.timelineView.replaceData(this.zoom.merged);
  }

  renderSide() {
    clear(this.side);
    const t = this.timeline;
    if (!t) return;
    if (this.selected >= 0) {
      const a = t.anomalies[this.selected];
      const detail = this.detailCache.get(a.step);
      this.side.appendChild(causeCard(a, detail && !detail.error ? detail : null, {
        index: this.selected, count: t.anomalies.length,
        onStep: (d) => this.stepBy(d), onClose: () => this.select(-1),
        error: detail && detail.error ? detail.error : null,
      }));
      return;
    }
    // nothing selected: the list of anomalies
    const list = el('section', {class: 'panel list', 'data-testid': 'anomaly-list'},
      el('div', {class: 'chart-head'}, el('span', {class: 'chart-title'}, `Anomalies (${t.anomalies.length})`),
        el('span', {class: 'chart-sub'}, t.anomalies.length ? 'click a row or a marker, or press j' : '')));
    if (!t.anomalies.length) {
      list.appendChild(el('p', {class: 'muted'}, 'No anomaly found in this run: the loss stayed within its recent range.'));
    } else {
      const body = el('tbody');
      // the layers' common "model/" prefix is said once, in the header
      const layers = t.anomalies.map((a) => (a.cause && a.cause.layer) || '').filter(Boolean);
      const prefix = layers.length ? commonPathPrefix(layers) : '';
      t.anomalies.forEach((a, i) => {
        const id = anomalyCause(a), s = causeStyle(id), c = a.cause || {};
        body.appendChild(el('tr', {tabindex: 0, 'data-step': a.step, onclick: () => this.select(i),
          onkeydown: (e) => { if (e.key === 'Enter') this.select(i); }},
        el('td', {class: 'num'}, formatStep(a.step)),
        el('td', {}, a.kind || ''),
        el('td', {class: 'cause-cell'}, svgShape(shapePath(s.shape, 11), s.color, 11), ' ', s.label),
        el('td', {class: 'num'}, formatPercent(c.confidence)),
        el('td', {class: 'layer-cell', 'data-testid': 'layer-cell', title: c.variable || c.layer || ''},
          middleEllipsis((c.layer || '').slice(c.layer && c.layer.startsWith(prefix) ? prefix.length : 0), LAYER_CHARS))));
      });
      list.appendChild(el('div', {class: 'table-wrap'}, el('table', {class: 'anomalies'},
        el('thead', {}, el('tr', {}, el('th', {}, 'step'), el('th', {}, 'kind'), el('th', {}, 'cause'),
          el('th', {}, 'conf.'), el('th', {title: prefix ? `layers in ${prefix}` : null}, prefix ? `layer (in ${middleEllipsis(prefix, 16)})` : 'layer'))), body)));
    }
    this.side.appendChild(list);
  }

  select(i) {
    const t = this.timeline;
    if (!t) return;
    this.selected = i >= 0 && i < t.anomalies.length ? i : -1;
    this.adamVariable = -1;
    this.timelineView.setSelected(this.selected);
    this.renderSide();
    if (this.selected >= 0) this.loadDetail(this.selected);
    else this.clearEvidence();
  }

  stepBy(dir) {
    if (!this.timeline) return;
    this.select(stepAnomaly(this.timeline.anomalies.length, this.selected, dir));
  }

  async loadDetail(i) {
    const a = this.timeline.anomalies[i];
    const token = ++this.detailToken;
    if (!this.detailCache.has(a.step)) {
      this.drawEvidencePlaceholder('Loading the evidence window\u2026');
      let detail;
      try {
        detail = await api.anomaly(this.run, a.step);
      } catch (e) {
        detail = {error: `Evidence unavailable: ${e.message}`};
      }
      this.detailCache.set(a.step, detail);
      if (token !== this.detailToken) return;
      this.renderSide();
    }
    if (token !== this.detailToken) return;
    this.drawEvidence();
  }

  clearEvidence() {
    this.drawEvidencePlaceholder(this.timeline && this.timeline.anomalies.length
      ? 'Select an anomaly to see the per-variable evidence around it.' : 'No anomaly: no evidence window to show.');
  }

  drawEvidencePlaceholder(text) {
    this.adam.destroy();
    clear(this.heatBox);
    this.heatmap.d = null;
    this.heatBox.appendChild(el('p', {class: 'muted note'}, text));
    this.adamBox.hidden = true;
  }

  drawEvidence() {
    const t = this.timeline;
    if (!t || this.selected < 0) return;
    const a = t.anomalies[this.selected];
    const detail = this.detailCache.get(a.step);
    if (!detail || detail.error) {
      this.drawEvidencePlaceholder(detail ? detail.error : '');
      return;
    }
    const ev = detail.evidence || {};
    const stats = ev.stats || {};
    const optimizer = detail.optimizer || (this.rawTimeline && this.rawTimeline.optimizer) || {};
    const variables = Array.isArray(ev.variables) ? ev.variables : [];
    const steps = Array.isArray(ev.steps) ? ev.steps : [];
    const available = Object.keys(HEATMAP_STATS).filter((k) => Array.isArray(stats[k]) &&
      (k !== 'rms_ratio' || optimizer.adam));
    if (!variables.length || !steps.length || !available.length) {
      this.drawEvidencePlaceholder('No per-variable evidence was recorded around this anomaly.');
      return;
    }
    const top = (detail.causes && detail.causes[0]) || a.cause || {};
    let stat = this.heatStat;
    if (!available.includes(stat)) stat = top.cause === 'adam_epsilon' && available.includes('rms_ratio') ? 'rms_ratio' : available[0];
    const matrix = decodeMatrix(stats[stat]);
    const highlight = ev.highlight || null;
    const hlRow = highlightRow(ev);  // a row of the served ones (a wide run's are capped)
    let varIndex = this.adamVariable;
    if (!(varIndex >= 0 && varIndex < variables.length)) {
      varIndex = hlRow >= 0 ? hlRow : argmaxRow(matrix);
    }
    this.heatmap.setData({steps, variables, matrix, stat, norm: this.heatNorm, highlight, highlightRow: hlRow,
      selectedVariable: varIndex, resolution: ev.resolution, available,
      variableIndex: variables.map((_, i) => variableIndex(ev, i)),
      citedSteps: Array.isArray(ev.cited_steps) ? ev.cited_steps : [],
      rowsNote: [evidenceRowsNote(ev), evidenceSparseNote(ev, stat)].filter(Boolean).join(' \u00b7 ') || null});
    this.adamBox.hidden = false;
    const g = detail.global || {};
    this.adam.setData({steps, variable: variables[varIndex], index: varIndex, stats, optimizer, highlight,
      globalSteps: Array.isArray(g.steps) ? g.steps : [], effStepMax: decodeArray(g.series && g.series.eff_step_max)});
  }

  redrawAll() {
    this.drawTimeline();
    if (this.selected >= 0) this.drawEvidence();
  }

  resize() {
    this.timelineView.resize();
    if (this.xRange) this.scheduleZoom();  // wider: maybe finer buckets
    this.heatmap.resize();
    this.adam.resize();
  }

  onKey(e) {
    if (e.ctrlKey || e.metaKey || e.altKey || this.view === 'overview') return;
    const t = e.target, tag = t && t.tagName;
    if (tag === 'TEXTAREA' || (tag === 'INPUT' && t.type !== 'checkbox')) return;  // typing
    // After a click on a control (the run select, a toggle) focus stays on
    // it: the letter keys still step through the anomalies (and do not
    // type-ahead in the select); arrows and Escape stay the control's own.
    const control = tag === 'SELECT' || tag === 'INPUT';
    if (control && !['j', 'k', 'n', 'p', 'l'].includes(e.key)) return;
    if (e.key === 'j' || e.key === 'ArrowRight' || e.key === 'n') { this.stepBy(1); e.preventDefault(); }
    else if (e.key === 'k' || e.key === 'ArrowLeft' || e.key === 'p') { this.stepBy(-1); e.preventDefault(); }
    else if (e.key === 'Escape') this.select(-1);
    else if (e.key === 'l' && !this.logToggle.disabled) { this.log = !this.timelineView.log; this.drawTimeline(); e.preventDefault(); }
  }
}

function argmaxRow(matrix) {
  let best = 0, bestV = -Infinity;
  matrix.forEach((row, i) => row.forEach((v) => {
    if (v !== null && Number.isFinite(v) && v > bestV) { bestV = v; best = i; }
  }));
  return best;
}

/** Entry point: TensorBoard calls this with no arguments. */
export async function render() {
  const app = new App(document.body);
  window.tbStability = app;  // for tests and the console
  await app.start();
}

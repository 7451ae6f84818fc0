// The spike timeline: the loss envelope of a run with one marker per
// anomaly, and under it the strip of leading signals (global gradient
// norm, max RMS(g²/v̂), learning rate), all sharing cursor and zoom.
//
//   .timeline
//     .chart-head     title, readout of the step under the cursor
//     .chart.loss     uPlot; .markers layer in its u-over, one
//                     button[data-testid=anomaly-marker] per anomaly;
//                     data-steps-per-bucket (widest bucket in view),
//                     data-visible-buckets, data-zoom-range ("first,last"
//                     of the fine buckets drawn for a zoom, or "")
//     .strip          one small uPlot (or a "not recorded" note) per signal

import uPlot from '../vendor/uplot/uPlot.esm.js';
import {
  anomalyCause, canLog, causeStyle, decodeFloat, finiteRange, formatNumber,
  formatStep, formatStepTick, logSplits, plottable, shapePath, shouldLog, visibleBuckets,
} from '../model.js';
import {clear, el, svgShape, themeColors} from './dom.js';

const AXIS_SIZE = 64;       // px; the same for every chart so the plots align
const LOSS_HEIGHT = 250;
const STRIP_HEIGHT = 74;
const MARKER = 14;          // px
// step axis increments: whole steps only
const STEP_INCRS = [];
for (let e = 0; e <= 9; e++) for (const m of [1, 2, 5]) STEP_INCRS.push(m * 10 ** e);

export const SIGNALS = [
  {key: 'grad_norm', label: 'gradient norm, all variables', band: true},
  // sparse: measured every few steps (the recorder's stats_every), NaN between: drawn joined.
  {key: 'rms_ratio_max', label: 'gradient against Adam\'s average of its square (max RMS)', ref: 1, adamOnly: true, sparse: true},
  {key: 'learning_rate', label: 'learning rate'},
];

let syncCounter = 0;

export class TimelineView {
  /**
   * @param {!HTMLElement} container
   * @param {{onSelect: function(number), onZoom: function(?Array<number>)}} handlers
   */
  constructor(container, handlers) {
    this.container = container;
    this.handlers = handlers;
    this.charts = [];
    this.signalCharts = [];   // [{u, key, log}]
    this.data = null;
    this.selected = -1;
    this.syncKey = `tbs-${++syncCounter}`;
    this.syncing = false;
    this.lastDrawAt = 0;
  }

  destroy() {
    for (const c of this.charts) c.destroy();
    this.charts = [];
    this.signalCharts = [];
    this.loss = null;
    this.lossBox = null;
    clear(this.container);
  }

  /**
   * Draws a decoded timeline (model.decodeTimeline, or model.mergeTimelines
   * for a zoom), building the charts anew.
   * @param {!Object} data decoded timeline
   * @param {{log: ?boolean, optimizer: ?Object, selected: number,
   *          xRange: ?Array<number>, firstStep: number, lastStep: number}} opts
   */
  setData(data, opts) {
    this.destroy();
    this.data = data;
    this.opts = opts;
    this.selected = opts.selected;
    const colors = this.colors = themeColors();
    const width = Math.max(200, this.container.clientWidth || 800);
    const loss = data.series.loss || {min: [], max: []};
    const logOk = canLog(loss.min, loss.max);
    this.log = logOk && (opts.log === null || opts.log === undefined ? shouldLog([loss.min, loss.max]) : !!opts.log);
    this.logAvailable = logOk;

    const x = this.xs = axisSteps(data);

    // Header with the cursor readout.
    this.readout = el('span', {class: 'readout', 'data-testid': 'readout'});
    this.container.appendChild(el('div', {class: 'chart-head'},
      el('span', {class: 'chart-title'}, 'loss', this.sub = el('span', {class: 'chart-sub'}, '')),
      this.readout));

    const lossBox = this.lossBox = el('div', {class: 'chart loss', 'data-testid': 'timeline'});
    this.container.appendChild(lossBox);
    this.loss = new uPlot(this.lossOptions(width, colors), [x, plottable(loss.min, this.log), plottable(loss.max, this.log)], lossBox);
    this.charts.push(this.loss);
    this.buildMarkers();

    const strip = el('div', {class: 'strip', 'data-testid': 'signal-strip'});
    this.container.appendChild(strip);
    for (const sig of SIGNALS) {
      const s = data.series[sig.key];
      const box = el('div', {class: 'chart signal', 'data-signal': sig.key});
      strip.appendChild(box);
      const have = s && (finiteRange(s.min, s.max).max > -Infinity || s.max.some((v) => v !== null));
      if (!have) {
        const why = sig.adamOnly && opts.optimizer && !opts.optimizer.adam
          ? `not recorded: the optimizer (${opts.optimizer.name || 'unknown'}) is not Adam-family, so there is no v\u0302`
          : 'not recorded in this run';
        box.classList.add('missing');
        box.appendChild(el('div', {class: 'signal-missing', style: {marginLeft: AXIS_SIZE + 'px'}},
          el('b', {}, sig.label), ` \u2014 ${why}`));
        continue;
      }
      const slog = shouldLog([s.min, s.max], 1.5) && canLog(s.min, s.max);
      const label = el('div', {class: 'signal-label', style: {left: AXIS_SIZE + 6 + 'px'}}, sig.label + (slog ? ' (log)' : ''));
      const u = new uPlot(this.signalOptions(width, colors, sig, slog),
        [x, plottable(s.min, slog), plottable(s.max, slog)], box);
      u.root.querySelector('.u-wrap').appendChild(label);
      this.charts.push(u);
      this.signalCharts.push({u, key: sig.key, log: slog});
    }
    this.updateResolution();
    if (opts.xRange) this.setXRange(opts.xRange);
  }

  /**
   * Swaps the drawn data for other buckets of the same run (a zoom's
   * finer ones merged in, or the whole run's back), keeping the charts,
   * their log choices, the markers and the x window.
   * @param {!Object} data decoded (or merged) timeline
   */
  replaceData(data) {
    if (!this.loss) return;
    this.data = data;
    const x = this.xs = axisSteps(data);
    const {min, max} = this.loss.scales.x;
    const loss = data.series.loss || {min: [], max: []};
    const apply = (u, s, log) => {
      u.setData([x, plottable(s ? s.min : x.map(() => null), log), plottable(s ? s.max : x.map(() => null), log)], false);
      if (min !== null && max !== null) u.setScale('x', {min, max});  // re-ranges y over the window and redraws
      else u.redraw();
    };
    // the x window stays as it is, so no zoom is reported
    apply(this.loss, loss, this.log);
    for (const c of this.signalCharts) apply(c.u, data.series[c.key], c.log);
    this.updateResolution();
  }

  /** The header's "min/max per ..." and the data attributes: the buckets
   * in the current x window and the widest one's steps. */
  updateResolution() {
    const d = this.data;
    if (!d || !this.lossBox) return;
    let lo = -Infinity, hi = Infinity;
    if (this.loss && this.loss.scales.x.min !== null && this.loss.scales.x.min !== undefined) {
      lo = this.loss.scales.x.min;
      hi = this.loss.scales.x.max;
    }
    const v = visibleBuckets(d, lo, hi);
    const box = this.lossBox;
    box.dataset.stepsPerBucket = String(v.maxSteps);
    box.dataset.visibleBuckets = String(v.buckets);
    box.dataset.zoomRange = d.zoomRange ? `${d.zoomRange[0]},${d.zoomRange[1]}` : '';
    const text = !v.buckets || v.maxSteps <= 1 ? 'step' : `bucket of ~${formatStep(v.meanSteps)} steps`;
    if (this.sub) this.sub.textContent = ` min/max per ${text}`;
  }

  /** Width of the plot area in CSS pixels. */
  plotWidth() {
    if (!this.loss) return Math.max(200, (this.container.clientWidth || 800) - AXIS_SIZE);
    return this.loss.bbox.width / (window.devicePixelRatio || 1);
  }

  common(width, height, colors) {
    const font = '11px system-ui, -apple-system, "Segoe UI", Roboto, sans-serif';
    return {
      width, height,
      padding: [8, 16, 0, 0],  // the same on every chart: their plot areas line up
      legend: {show: false},
      cursor: {
        sync: {key: this.syncKey, setSeries: false},
        drag: {x: true, y: false, setScale: true},
        points: {show: false},
      },
      axes: [
        {stroke: colors.axis, font, size: 22, gap: 3, incrs: STEP_INCRS,
          grid: {stroke: colors.grid, width: 1}, ticks: {stroke: colors.grid, width: 1, size: 4},
          values: (u, vals, axis, space, incr) => vals.map((v) => formatStepTick(v, incr))},
        {stroke: colors.axis, font, size: AXIS_SIZE, gap: 4,
          grid: {stroke: colors.grid, width: 1}, ticks: {stroke: colors.grid, width: 1, size: 4},
          values: (u, vals) => vals.map((v) => (v === null || v === undefined ? '' : formatNumber(v, 3)))},
      ],
      hooks: {
        setScale: [(u, key) => this.onScale(u, key)],
        setCursor: [(u) => this.onCursor(u)],
      },
    };
  }

  lossOptions(width, colors) {
    const o = this.common(width, LOSS_HEIGHT, colors);
    o.scales = {x: {time: false}, y: this.log ? {distr: 3, log: 10} : {}};
    if (this.log) {
      // a label on every tick logSplits chose (a decade or a few): uPlot's
      // own log filter would blank all but two over 15 decades
      o.axes[1].splits = (u, i, min, max) => logSplits(min, max, Math.max(3, Math.floor(LOSS_HEIGHT / 28)));
      o.axes[1].filter = (u, splits) => splits;
    }
    o.series = [
      {label: 'step'},
      {label: 'loss min', stroke: colors.loss, width: 1},
      {label: 'loss max', stroke: colors.loss, width: 1},
    ];
    o.bands = [{series: [2, 1], fill: colors.lossBand}];
    o.hooks.draw = [(u) => {
      this.drawOverlay(u, true);
      this.placeMarkers(u);
      this.updateResolution();
      this.lastDrawAt = performance.now();
    }];
    return o;
  }

  signalOptions(width, colors, sig, log) {
    const o = this.common(width, STRIP_HEIGHT, colors);
    o.axes[0].show = false;
    o.axes[0].size = 0;
    o.axes[1].size = AXIS_SIZE;
    o.axes[1].values = (u, vals) => vals.map((v) => (v === null || v === undefined ? '' : formatNumber(v, 2)));
    o.axes[1].space = 20;
    o.padding = [8, 16, 6, 0];  // room for the lowest label (no x axis under a strip)
    o.scales = {x: {time: false}, y: log ? {distr: 3, log: 10} : {}};
    if (log) {
      o.axes[1].splits = (u, i, min, max) => logSplits(min, max, 3);
      o.axes[1].filter = (u, splits) => splits;
    }
    o.series = [
      {label: 'step'},
      {label: sig.key + ' min', stroke: sig.band ? colors.signal : 'transparent', width: 1, spanGaps: !!sig.sparse},
      {label: sig.key + ' max', stroke: colors.signal, width: 1, spanGaps: !!sig.sparse},
    ];
    if (sig.band) o.bands = [{series: [2, 1], fill: colors.grid}];
    o.hooks.draw = [(u) => this.drawOverlay(u, false, sig.ref)];
    return o;
  }

  /** Step span of the current zoom, or null when not zoomed. */
  xRange() {
    if (!this.loss) return null;
    const {min, max} = this.loss.scales.x;
    const x = this.xs;
    if (!x.length || (min <= x[0] && max >= x[x.length - 1])) return null;
    return [min, max];
  }

  setXRange(range) {
    if (!this.loss) return;
    const x = this.xs;
    const [min, max] = range || [x[0], x[x.length - 1]];
    this.loss.setScale('x', {min, max});
  }

  onScale(u, key) {
    if (key !== 'x' || this.syncing) return;
    this.syncing = true;
    try {
      const {min, max} = u.scales.x;
      for (const c of this.charts) {
        if (c !== u && (c.scales.x.min !== min || c.scales.x.max !== max)) c.setScale('x', {min, max});
      }
    } finally {
      this.syncing = false;
    }
    if (this.handlers.onZoom) this.handlers.onZoom(this.xRange());
  }

  onCursor(u) {
    if (u !== this.loss && !this.readout) return;
    const i = u.cursor.idx;
    const d = this.data;
    if (i === null || i === undefined || !d || i >= d.x.length) { this.readout.textContent = ''; return; }
    const steps = d.stepMin[i] === d.stepMax[i] ? `step ${formatStep(d.stepMin[i])}` : `steps ${formatStep(d.stepMin[i])}\u2013${formatStep(d.stepMax[i])}`;
    const pair = (s) => {
      if (!s) return '\u2014';
      const lo = s.min[i], hi = s.max[i];
      return lo === hi || lo === null ? formatNumber(hi) : `${formatNumber(lo)} \u2026 ${formatNumber(hi)}`;
    };
    const parts = [steps, `loss ${pair(d.series.loss)}`, `\u2016g\u2016 ${pair(d.series.grad_norm)}`];
    if (d.series.rms_ratio_max) parts.push(`RMS(g\u00b2/v\u0302) ${formatNumber(d.series.rms_ratio_max.max[i])}`);
    if (d.series.learning_rate) parts.push(`lr ${formatNumber(d.series.learning_rate.max[i])}`);
    if (d.nonfinite[i]) parts.push('non-finite');
    if (d.guardSkipped && d.guardSkipped[i]) parts.push('update skipped (guard)');
    this.readout.textContent = parts.join('  \u00b7  ');
  }

  /** Canvas overlays: the selected anomaly's window, a tick per anomaly on
   * the strip, red ticks for non-finite buckets. */
  drawOverlay(u, isLoss, ref) {
    const ctx = u.ctx, {left, top, width, height} = u.bbox;
    const d = this.data;
    const px = (step) => u.valToPos(step, 'x', true);
    const dpr = window.devicePixelRatio || 1;
    ctx.save();
    ctx.beginPath();
    ctx.rect(left, top, width, height);
    ctx.clip();
    if (ref !== undefined && u.scales.y.min <= ref && u.scales.y.max >= ref) {
      const y = u.valToPos(ref, 'y', true);
      ctx.strokeStyle = this.colors.accent;
      ctx.setLineDash([4 * dpr, 3 * dpr]);
      ctx.lineWidth = dpr;
      ctx.beginPath(); ctx.moveTo(left, y); ctx.lineTo(left + width, y); ctx.stroke();
      ctx.setLineDash([]);
      // the line says what it is, at its right end, above (or under) it
      ctx.font = `${10 * dpr}px system-ui, sans-serif`;
      ctx.textAlign = 'right';
      const above = y - top > 14 * dpr;
      ctx.textBaseline = above ? 'bottom' : 'top';
      const label = `${formatNumber(ref, 2)} = steady state`;
      const tx = left + width - 4 * dpr, ty = above ? y - 2 * dpr : y + 2 * dpr;
      const tw = ctx.measureText(label).width, th = 11 * dpr;
      ctx.fillStyle = this.colors.bg;  // on a backing box: readable over the curve
      ctx.globalAlpha = 0.85;
      ctx.fillRect(tx - tw - 3 * dpr, above ? ty - th : ty, tw + 6 * dpr, th);
      ctx.globalAlpha = 1;
      ctx.fillStyle = this.colors.accent;
      ctx.fillText(label, tx, ty);
    }
    // one faint tick per anomaly on the strip charts, in its cause colour
    if (!isLoss) {
      ctx.globalAlpha = 0.55;
      ctx.lineWidth = dpr;
      for (const a of d.anomalies) {
        const xx = Math.round(px(a.step)) + 0.5;
        ctx.strokeStyle = causeStyle(anomalyCause(a)).color;
        ctx.beginPath(); ctx.moveTo(xx, top); ctx.lineTo(xx, top + height); ctx.stroke();
      }
      ctx.globalAlpha = 1;
    }
    const a = d.anomalies[this.selected];
    if (a) {
      const x0 = px(a.step), x1 = px(Math.max(a.end_step ?? a.step, a.peak_step ?? a.step));
      ctx.fillStyle = this.colors.select;
      ctx.fillRect(Math.min(x0, x1 - 2 * dpr), top, Math.max(2 * dpr, x1 - x0), height);
      ctx.strokeStyle = causeStyle(anomalyCause(a)).color;
      ctx.lineWidth = 1.5 * dpr;
      ctx.beginPath(); ctx.moveTo(Math.round(x0), top); ctx.lineTo(Math.round(x0), top + height); ctx.stroke();
    }
    if (isLoss) {
      ctx.fillStyle = this.colors.nonfinite;
      let firstNonfinite = null;
      for (let i = 0; i < d.x.length; i++) {
        if (!d.nonfinite[i]) continue;
        const x0 = px(d.stepMin[i]), x1 = px(d.stepMax[i] + 1);
        if (x1 < left || x0 > left + width) continue;
        if (firstNonfinite === null) firstNonfinite = Math.max(left, x0);
        ctx.fillRect(x0, top, Math.max(2 * dpr, x1 - x0), 4 * dpr);
      }
      // updates the update guard skipped: a tick under the red strip
      ctx.fillStyle = this.colors.accent;
      for (let i = 0; i < d.x.length; i++) {
        if (!(d.guardSkipped && d.guardSkipped[i])) continue;
        const x0 = px(d.stepMin[i]), x1 = px(d.stepMax[i] + 1);
        if (x1 < left || x0 > left + width) continue;
        ctx.fillRect(x0, top + 4 * dpr, Math.max(2 * dpr, x1 - x0), 3 * dpr);
      }
      ctx.font = `${10 * dpr}px system-ui, sans-serif`;
      ctx.textBaseline = 'top';
      // the strip says what it is: steps whose loss or gradients were NaN/Inf
      if (firstNonfinite !== null) {
        ctx.textAlign = firstNonfinite > left + width - 160 * dpr ? 'right' : 'left';
        this.labelOnBox(ctx, 'NaN/Inf from here (red strip)', firstNonfinite + (ctx.textAlign === 'left' ? 12 : -3) * dpr,
          top + 5 * dpr, this.colors.nonfinite, dpr);
      }
      // a plateau's level, written on it (it may sit below the lowest tick)
      for (const p of d.anomalies) {
        const level = decodeFloat(p.baseline);
        if (p.kind !== 'plateau' || !(Number.isFinite(level)) || (this.log && level <= 0)) continue;
        const y = u.valToPos(level, 'y', true);
        if (y < top || y > top + height) continue;
        const x = Math.min(Math.max(left, px(p.step)) + 8 * dpr, left + width - 120 * dpr);
        ctx.textAlign = 'left';
        ctx.textBaseline = 'bottom';
        this.labelOnBox(ctx, `stuck at ${formatNumber(level, 4)}`, x, y - 3 * dpr, causeStyle(anomalyCause(p)).color, dpr);
      }
    }
    ctx.restore();
  }

  /** Canvas text at (x, y) (the context's align and baseline) on a
   * backing box of the background colour. */
  labelOnBox(ctx, text, x, y, color, dpr) {
    const w = ctx.measureText(text).width, h = 11 * dpr;
    const bx = ctx.textAlign === 'right' ? x - w : x;
    const by = ctx.textBaseline === 'bottom' ? y - h : y;
    ctx.fillStyle = this.colors.bg;
    ctx.globalAlpha = 0.85;
    ctx.fillRect(bx - 2 * dpr, by, w + 4 * dpr, h);
    ctx.globalAlpha = 1;
    ctx.fillStyle = color;
    ctx.fillText(text, x, y);
  }

  buildMarkers() {
    const u = this.loss;
    const layer = el('div', {class: 'markers', 'data-testid': 'markers'});
    this.markers = this.data.anomalies.map((a, i) => {
      const cause = anomalyCause(a);
      const style = causeStyle(cause);
      const title = (a.cause && a.cause.title) || style.label;
      const b = el('button', {
        class: 'marker', type: 'button', 'data-testid': 'anomaly-marker',
        'data-step': a.step, 'data-peak-step': a.peak_step ?? a.step, 'data-cause': cause,
        'data-kind': a.kind || '', 'data-index': i,
        'aria-label': `${a.kind || 'anomaly'} at step ${formatStep(a.step)}: ${title}`,
        title: `${a.kind || 'anomaly'} at step ${formatStep(a.step)} (peak ${formatStep(a.peak_step)})\n${title}`,
      }, svgShape(shapePath(style.shape, MARKER), style.color, MARKER, 'rgba(0,0,0,0.55)'));
      b.addEventListener('mousedown', (e) => e.stopPropagation());
      b.addEventListener('click', (e) => { e.stopPropagation(); this.handlers.onSelect(i); });
      layer.appendChild(b);
      return b;
    });
    u.over.appendChild(layer);
    this.markSelected();
    this.placeMarkers(u);
  }

  placeMarkers(u) {
    if (!this.markers || u !== this.loss) return;
    const {min, max} = u.scales.x;
    const W = u.over.clientWidth || u.bbox.width / (window.devicePixelRatio || 1);
    const H = u.over.clientHeight || u.bbox.height / (window.devicePixelRatio || 1);
    const anomalies = this.data.anomalies;
    for (let i = 0; i < this.markers.length; i++) {
      const a = anomalies[i], m = this.markers[i];
      const step = a.peak_step ?? a.step;
      if (step < min || step > max) { m.style.display = 'none'; continue; }
      m.style.display = '';
      const x = u.valToPos(step, 'x');
      const v = decodeFloat(a.peak_value);
      let y = 0, off = true;
      if (v !== null && Number.isFinite(v) && (!this.log || v > 0)) {
        y = u.valToPos(v, 'y');
        off = !(y >= 0 && y <= H);
      }
      if (off || !Number.isFinite(y)) y = MARKER / 2 + 1;
      m.classList.toggle('offscale', off);
      m.style.left = `${Math.max(0, Math.min(W, x)) - MARKER / 2}px`;
      m.style.top = `${Math.max(0, Math.min(H, y)) - MARKER / 2}px`;
    }
  }

  markSelected() {
    (this.markers || []).forEach((m, i) => {
      m.classList.toggle('selected', i === this.selected);
      if (i === this.selected) m.setAttribute('aria-current', 'true');
      else m.removeAttribute('aria-current');
    });
  }

  setSelected(i) {
    this.selected = i;
    this.markSelected();
    for (const c of this.charts) c.redraw(false, false);
    const a = this.data && this.data.anomalies[i];
    const r = this.xRange();
    if (a && r && (a.step < r[0] || a.step > r[1])) {  // keep the selection in view
      const half = (r[1] - r[0]) / 2;
      this.setXRange([a.step - half, a.step + half]);
    }
  }

  resize() {
    const width = Math.max(200, this.container.clientWidth);
    for (const c of this.charts) {
      if (Math.abs(c.width - width) > 0.5) c.setSize({width, height: c.height});
    }
  }
}

/** The x column of a decoded timeline: bucket centres, with the ends at
 * the first and last step so that the axis spans every recorded step. */
function axisSteps(data) {
  const x = data.x.slice();
  if (x.length > 1) {
    x[0] = data.stepMin[0];
    x[x.length - 1] = data.stepMax[data.stepMax.length - 1];
  }
  return x;
}

// The layers x steps heatmap of the evidence window around an anomaly, with
// the implicated variable's row and the onset/peak columns highlighted.
//
//   .heatmap[data-testid=heatmap]
//     .hm-head      title, statistic and normalisation selectors
//     .hm-note      "showing 256 of 10,000 variables (...)" when the backend
//                   capped the rows (data-testid=heatmap-rows-note)
//     .hm-body
//       .hm-labels  div.hm-label[data-testid=heatmap-row] per served variable
//                   (data-index: its row, data-variable-index: its index in
//                   the run; the implicated one: data-highlight="true" aria-current)
//       .hm-plot    canvas, step axis, tooltip
//     .hm-scale     colour bar

import {
  colormap, commonPathPrefix, formatNumber, formatStep, formatStepShort,
  middleEllipsis, nearestIndex, normalizeHeatmap,
} from '../model.js';
import {el, themeColors} from './dom.js';

export const HEATMAP_STATS = {
  grad_norm: 'gradient norm',
  rms_ratio: "gradient against Adam's average of its square, RMS(g\u00b2/v\u0302)",
  update_ratio: "update size against the weights' size",
};
const MIN_ROW_H = 14, MAX_ROW_H = 26, TARGET_H = 220;
const MAX_LABEL_W = 230;
const NONFINITE = [229, 57, 53];

export class HeatmapView {
  /**
   * @param {!HTMLElement} container
   * @param {{onStat: function(string), onNorm: function(string),
   *          onVariable: function(number)}} handlers
   */
  constructor(container, handlers) {
    this.container = container;
    this.handlers = handlers;
  }

  /**
   * @param {{steps: !Array<number>, variables: !Array<string>,
   *          matrix: !Array<!Array<?number>>, stat: string, norm: string,
   *          highlight: ?Object, highlightRow: (number|undefined),
   *          selectedVariable: number, resolution: string,
   *          available: !Array<string>, variableIndex: (!Array<number>|undefined),
   *          rowsNote: ?string}} d
   * highlightRow: the served row to mark (default highlight.index);
   * variableIndex[i]: row i's index in the run (default i); rowsNote: shown
   * (as text) when only some of the run's variables are served.
   */
  setData(d) {
    this.d = d;
    this.rowH = Math.max(MIN_ROW_H, Math.min(MAX_ROW_H, Math.floor(TARGET_H / Math.max(1, d.variables.length))));
    const ROW_H = this.rowH;
    const c = this.container;
    while (c.firstChild) c.removeChild(c.firstChild);
    const statSel = el('select', {'data-testid': 'heatmap-stat', 'aria-label': 'heatmap statistic',
      onchange: (e) => this.handlers.onStat(e.target.value)},
    d.available.map((k) => el('option', {value: k, selected: k === d.stat}, HEATMAP_STATS[k] || k)));
    const normSel = el('select', {'data-testid': 'heatmap-norm', 'aria-label': 'colour normalisation',
      onchange: (e) => this.handlers.onNorm(e.target.value)},
    el('option', {value: 'global', selected: d.norm === 'global'}, 'log colour, one range'),
    el('option', {value: 'row', selected: d.norm === 'row'}, 'log colour, per row'));
    const prefix = commonPathPrefix(d.variables);
    this.prefix = prefix;
    c.appendChild(el('div', {class: 'hm-head'},
      el('span', {class: 'chart-title'}, 'per variable'),
      statSel, normSel,
      el('span', {class: 'chart-sub'}, d.resolution === 'window'
        ? 'per-window maxima (no per-step detail kept here)' : 'per step'),
      prefix ? el('span', {class: 'chart-sub prefix', title: prefix}, `in ${middleEllipsis(prefix, 40)}`) : null));
    if (d.rowsNote) {
      c.appendChild(el('div', {class: 'hm-note chart-sub', 'data-testid': 'heatmap-rows-note'}, d.rowsNote));
    }

    const hl = Number.isInteger(d.highlightRow) ? d.highlightRow
      : d.highlight && Number.isInteger(d.highlight.index) ? d.highlight.index : -1;
    this.highlightIndex = hl;
    const LABEL_W = this.labelW = Math.max(110, Math.min(MAX_LABEL_W, Math.round((c.clientWidth || 600) * 0.3)));
    const labels = el('div', {class: 'hm-labels', style: {width: LABEL_W + 'px'}});
    this.labels = d.variables.map((name, i) => {
      const short = name.startsWith(prefix) ? name.slice(prefix.length) : name;
      const node = el('div', {
        class: 'hm-label' + (i === hl ? ' highlight' : '') + (i === d.selectedVariable ? ' selected' : ''),
        'data-testid': 'heatmap-row', 'data-variable': name, 'data-index': i,
        'data-variable-index': d.variableIndex && Number.isInteger(d.variableIndex[i]) ? d.variableIndex[i] : i,
        'data-highlight': i === hl ? 'true' : 'false', 'aria-current': i === hl ? 'true' : null,
        title: name, style: {height: ROW_H + 'px', lineHeight: ROW_H + 'px'}, onclick: () => this.handlers.onVariable(i),
      }, middleEllipsis(short, Math.floor(LABEL_W / 6.8)));
      labels.appendChild(node);
      return node;
    });
    this.canvas = el('canvas', {class: 'hm-canvas', 'data-testid': 'heatmap-canvas'});
    this.tip = el('div', {class: 'hm-tip', 'data-testid': 'heatmap-tip'});
    this.axis = el('div', {class: 'hm-axis'});
    const plot = el('div', {class: 'hm-plot'}, this.canvas, this.tip);
    const body = this.body = el('div', {class: 'hm-body'}, labels, plot);
    c.appendChild(body);
    c.appendChild(el('div', {class: 'hm-foot'}, el('div', {style: {width: LABEL_W + 'px', flex: 'none'}}), this.axis));
    this.scale = el('div', {class: 'hm-scale'});
    c.appendChild(this.scale);
    this.canvas.addEventListener('mousemove', (e) => this.hover(e));
    this.canvas.addEventListener('mouseleave', () => { this.tip.style.display = 'none'; });
    this.canvas.addEventListener('click', (e) => {
      const r = this.canvas.getBoundingClientRect();
      const row = Math.floor((e.clientY - r.top) / ROW_H);
      if (row >= 0 && row < d.variables.length) this.handlers.onVariable(row);
    });
    this.norm = normalizeHeatmap(d.matrix, d.norm);
    this.draw();
    if (hl >= 0) {  // bring the implicated row into view
      const top = hl * ROW_H - body.clientHeight / 2;
      body.scrollTop = Math.max(0, top);
    }
  }

  plotWidth() {
    const inner = this.body ? this.body.clientWidth : this.container.clientWidth - 20;
    return Math.max(120, inner - this.labelW - 2);
  }

  draw() {
    const d = this.d;
    if (!d) return;
    const rows = d.variables.length, cols = d.steps.length;
    const ROW_H = this.rowH;
    const W = this.plotWidth(), H = Math.max(ROW_H, rows * ROW_H);
    const dpr = window.devicePixelRatio || 1;
    const cv = this.canvas;
    cv.width = Math.round(W * dpr);
    cv.height = Math.round(H * dpr);
    cv.style.width = W + 'px';
    cv.style.height = H + 'px';
    const ctx = cv.getContext('2d');
    const colors = themeColors();
    ctx.clearRect(0, 0, cv.width, cv.height);
    if (!rows || !cols) return;
    const img = new ImageData(cols, rows);
    const cells = this.norm.cells;
    for (let i = 0; i < rows; i++) {
      for (let j = 0; j < cols; j++) {
        const t = cells[i][j], k = 4 * (i * cols + j);
        if (t === null || t === undefined) { img.data[k + 3] = 0; continue; }
        const rgb = t === 'nonfinite' ? NONFINITE : colormap(t);
        img.data[k] = rgb[0]; img.data[k + 1] = rgb[1]; img.data[k + 2] = rgb[2]; img.data[k + 3] = 255;
      }
    }
    const off = document.createElement('canvas');
    off.width = cols; off.height = rows;
    off.getContext('2d').putImageData(img, 0, 0);
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(off, 0, 0, cv.width, cv.height);
    const colW = cv.width / cols, rowH = ROW_H * dpr;
    this.colW = W / cols;
    // onset (solid) and peak (dashed) columns
    const hl = d.highlight || {};
    const inWindow = (step) => step !== null && step !== undefined && cols > 0 &&
      step >= d.steps[0] && step <= d.steps[cols - 1];
    const line = (step, dash) => {
      if (!inWindow(step)) return;  // outside the served columns: no line at the edge
      const j = nearestIndex(d.steps, step);
      if (j < 0) return;
      const x = Math.round(j * colW) + 0.5;
      ctx.strokeStyle = colors.accent;
      ctx.lineWidth = 1.5 * dpr;
      ctx.setLineDash(dash ? [4 * dpr, 3 * dpr] : []);
      ctx.beginPath(); ctx.moveTo(x, 0); ctx.lineTo(x, cv.height); ctx.stroke();
    };
    line(hl.onset_step, false);
    if (hl.peak_step !== hl.onset_step) line(hl.peak_step, true);
    ctx.setLineDash([]);
    // the implicated row, outlined
    if (this.highlightIndex >= 0) {
      const y = this.highlightIndex * rowH;
      ctx.strokeStyle = colors.accent;
      ctx.lineWidth = 2 * dpr;
      ctx.strokeRect(dpr, y + dpr, cv.width - 2 * dpr, rowH - 2 * dpr);
    }
    if (d.selectedVariable >= 0 && d.selectedVariable !== this.highlightIndex) {
      const y = d.selectedVariable * rowH;
      ctx.strokeStyle = colors.fg;
      ctx.setLineDash([3 * dpr, 2 * dpr]);
      ctx.lineWidth = dpr;
      ctx.strokeRect(dpr, y + dpr, cv.width - 2 * dpr, rowH - 2 * dpr);
      ctx.setLineDash([]);
    }
    this.drawAxis(W);
    this.drawScale();
  }

  drawAxis(W) {
    const d = this.d, axis = this.axis;
    while (axis.firstChild) axis.removeChild(axis.firstChild);
    axis.style.width = W + 'px';
    const cols = d.steps.length;
    const n = Math.max(2, Math.min(8, Math.floor(W / 90)));
    const seen = new Set();
    const hl0 = d.highlight || {};
    const onsetX = hl0.onset_step === undefined || hl0.onset_step === null ? null
      : nearestIndex(d.steps, hl0.onset_step) * (W / cols);
    for (let k = 0; k < n; k++) {
      const j = Math.round((k * (cols - 1)) / (n - 1));
      if (seen.has(j)) continue;
      seen.add(j);
      const x = (j + 0.5) * (W / cols);
      if (onsetX !== null && x > onsetX - 40 && x < onsetX + 110) continue;  // room for the onset label
      axis.appendChild(el('span', {class: 'hm-tick', style: {left: `${(j + 0.5) * (W / cols)}px`}}, formatStepShort(d.steps[j])));
    }
    const hl = d.highlight || {};
    // the steps the evidence sentences name, marked under the columns
    for (const step of Array.isArray(d.citedSteps) ? d.citedSteps : []) {
      if (!(step >= d.steps[0] && step <= d.steps[cols - 1])) continue;
      const j = nearestIndex(d.steps, step);
      axis.appendChild(el('span', {class: 'hm-cited', 'data-testid': 'heatmap-cited', 'data-step': step,
        title: `step ${formatStep(step)}, named in the evidence`, style: {left: `${(j + 0.5) * (W / cols)}px`}}, '\u25b2'));
    }
    if (hl.onset_step !== undefined && hl.onset_step !== null) {
      const j = nearestIndex(d.steps, hl.onset_step);
      axis.appendChild(el('span', {class: 'hm-tick onset', 'data-testid': 'heatmap-onset', 'data-step': hl.onset_step,
        style: {left: `${j * (W / cols)}px`}}, `onset ${formatStep(hl.onset_step)}`));
    }
  }

  drawScale() {
    const s = this.scale, n = this.norm;
    while (s.firstChild) s.removeChild(s.firstChild);
    const bar = el('span', {class: 'hm-bar'});
    const stops = [];
    for (let i = 0; i <= 8; i++) {
      const [r, g, b] = colormap(i / 8);
      stops.push(`rgb(${r},${g},${b}) ${i * 12.5}%`);
    }
    bar.style.background = `linear-gradient(to right, ${stops.join(',')})`;
    const lo = n.lo !== null && Number.isFinite(n.lo) ? formatNumber(10 ** n.lo, 2) : 'row min';
    const hi = n.hi !== null && Number.isFinite(n.hi) ? formatNumber(10 ** n.hi, 2) : 'row max';
    s.appendChild(el('span', {}, lo));
    s.appendChild(bar);
    s.appendChild(el('span', {}, hi));
    s.appendChild(el('span', {class: 'swatch', style: {background: `rgb(${NONFINITE.join(',')})`}}));
    s.appendChild(el('span', {}, 'NaN/Inf'));
    s.appendChild(el('span', {class: 'swatch swatch-empty'}));
    s.appendChild(el('span', {}, 'not measured'));
    s.appendChild(el('span', {class: 'swatch line'}));
    s.appendChild(el('span', {}, 'onset (solid), peak (dashed), implicated variable (box), \u25b2 a step the evidence names'));
  }

  hover(e) {
    const d = this.d;
    const r = this.canvas.getBoundingClientRect();
    const j = Math.floor((e.clientX - r.left) / this.colW), i = Math.floor((e.clientY - r.top) / this.rowH);
    if (i < 0 || j < 0 || i >= d.variables.length || j >= d.steps.length) { this.tip.style.display = 'none'; return; }
    const v = d.matrix[i][j];
    this.tip.textContent = `${d.variables[i]}\nstep ${formatStep(d.steps[j])}: ${v === null || v === undefined ? 'not measured' : formatNumber(v)}`;
    this.tip.style.display = 'block';
    const x = e.clientX - r.left, y = e.clientY - r.top;
    this.tip.style.left = `${Math.min(x + 12, r.width - 260)}px`;
    this.tip.style.top = `${y + 14}px`;
  }

  resize() {
    if (this.d) this.draw();
  }
}

// Adam's state for one variable over the evidence window: the square root
// of Adam's running average of the squared gradient, √v̂ (RMS and median
// over the variable's entries), against epsilon on a log axis, and the
// effective step, the learning rate / (√v̂ + epsilon), on the right axis (the variable's, and the largest of any variable: what the
// evidence sentences quote), with the onset and peak marked. Every series
// is on an axis of its own unit (the loss is in the timeline above).

import uPlot from '../vendor/uplot/uPlot.esm.js';
import {canLog, decodeArray, formatNumber, formatStep, formatStepShort, logSplits, plottable} from '../model.js';
import {el, themeColors} from './dom.js';

const HEIGHT = 170;

/** The width inside the container's padding (clientWidth counts it). */
function contentWidth(c) {
  const cs = window.getComputedStyle(c);
  return (c.clientWidth || 400) - (parseFloat(cs.paddingLeft) || 0) - (parseFloat(cs.paddingRight) || 0);
}

export class AdamChartView {
  constructor(container) {
    this.container = container;
    this.u = null;
  }

  destroy() {
    if (this.u) this.u.destroy();
    this.u = null;
    while (this.container.firstChild) this.container.removeChild(this.container.firstChild);
  }

  /**
   * @param {{steps: !Array<number>, variable: string, index: number,
   *          stats: !Object, optimizer: ?Object, highlight: ?Object,
   *          globalSteps: !Array<number>, effStepMax: !Array<?number>}} d
   * effStepMax: the global eff_step_max at globalSteps (the largest of any variable)
   */
  setData(d) {
    this.destroy();
    this.d = d;
    const c = this.container;
    const opt = d.optimizer || {};
    c.appendChild(el('div', {class: 'chart-head'},
      el('span', {class: 'chart-title'}, 'Adam state'),
      el('code', {class: 'adam-var', 'data-testid': 'adam-variable', title: d.variable}, d.variable)));
    if (!opt.adam) {
      c.appendChild(el('p', {class: 'muted note', 'data-testid': 'adam-missing'},
        `This run's optimizer (${opt.name || 'unknown'}) keeps no running average of the squared gradient (Adam's second moment): nothing to compare with epsilon.`));
      return;
    }
    const i = d.index;
    const row = (name) => decodeArray(((d.stats[name] || [])[i]) || []);
    const eps = Number(opt.epsilon);
    const nuRms = row('nu_sqrt_rms');
    const nuMed = row('sqrt_nu_over_eps_median').map((v) => (v === null || !Number.isFinite(eps) ? v : v * eps));
    const eff = row('eff_step_max');
    const epsLine = d.steps.map(() => (Number.isFinite(eps) && eps > 0 ? eps : null));
    const byStep = new Map(d.globalSteps.map((s, k) => [s, (d.effStepMax || [])[k]]));
    const effAll = d.steps.map((s) => (byStep.has(s) ? byStep.get(s) : null));
    if (!canLog(nuRms, nuMed, epsLine)) {
      c.appendChild(el('p', {class: 'muted note', 'data-testid': 'adam-missing'},
        'No finite Adam statistics were recorded for this variable in this window.'));
      return;
    }
    c.appendChild(el('div', {class: 'chart-sub adam-words', 'data-testid': 'adam-words'},
      "gradient scale: the square root of Adam's running average of the squared gradient; " +
      'effective step: the learning rate / (gradient scale + epsilon)'));
    const colors = themeColors();
    const font = '11px system-ui, -apple-system, "Segoe UI", Roboto, sans-serif';
    const fmt = (u, v) => formatNumber(v, 3);
    const width = Math.max(240, contentWidth(c));
    const effLog = canLog(eff, effAll);
    const opts = {
      width, height: HEIGHT,
      cursor: {points: {size: 5}, drag: {x: false, y: false}},
      padding: [8, 0, 0, 0],
      legend: {show: true, live: true},
      scales: {x: {time: false}, v: {distr: 3, log: 10}, e: effLog ? {distr: 3, log: 10} : {}},
      axes: [
        {stroke: colors.axis, font, size: 22, incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 1e4, 2e4, 5e4, 1e5, 1e6, 1e7], grid: {stroke: colors.grid}, ticks: {stroke: colors.grid, size: 4},
          values: (u, vals) => vals.map(formatStepShort)},
        {scale: 'v', stroke: colors.axis, font, size: 56, grid: {stroke: colors.grid}, ticks: {stroke: colors.grid, size: 4},
          splits: (u, i, min, max) => logSplits(min, max, 5),
          values: (u, vals) => vals.map((v) => (v === null || v === undefined ? '' : formatNumber(v, 2))), label: 'gradient scale, epsilon', labelSize: 14, labelFont: font},
        {scale: 'e', side: 1, stroke: '#e15759', font, size: 56, grid: {show: false}, ticks: {stroke: colors.grid, size: 4},
          values: (u, vals) => vals.map((v) => (v === null || v === undefined ? '' : formatNumber(v, 2))), label: 'effective step', labelSize: 14, labelFont: font},
      ],
      series: [
        {label: 'step', value: (u, v) => (v === null ? '\u2014' : formatStep(v))},
        {label: 'gradient scale (RMS)', scale: 'v', points: {show: false}, spanGaps: true, stroke: '#4e79a7', width: 1.5, value: fmt},
        {label: 'gradient scale (median)', scale: 'v', points: {show: false}, spanGaps: true, stroke: '#59a14f', width: 1.5, value: fmt},
        {label: 'epsilon', scale: 'v', points: {show: false}, stroke: colors.fg, width: 1, dash: [5, 4], value: fmt},
        {label: 'effective step (this variable)', scale: 'e', points: {show: false}, spanGaps: true, stroke: '#e15759', width: 1.5, value: fmt},
        {label: 'effective step (largest, any variable)', scale: 'e', points: {show: false}, spanGaps: true, stroke: '#e15759', width: 1, dash: [2, 3], value: fmt},
      ],
      hooks: {draw: [(u) => this.drawMarks(u, colors)]},
    };
    this.u = new uPlot(opts, [d.steps, plottable(nuRms, true), plottable(nuMed, true),
      epsLine, plottable(eff, effLog), plottable(effAll, effLog)], c);
  }

  drawMarks(u, colors) {
    const hl = this.d.highlight || {};
    const ctx = u.ctx, {top, height} = u.bbox, dpr = window.devicePixelRatio || 1;
    ctx.save();
    ctx.strokeStyle = colors.accent;
    ctx.lineWidth = 1.5 * dpr;
    for (const [step, dash] of [[hl.onset_step, false], [hl.peak_step, true]]) {
      if (step === null || step === undefined) continue;
      const x = Math.round(u.valToPos(step, 'x', true)) + 0.5;
      ctx.setLineDash(dash ? [4 * dpr, 3 * dpr] : []);
      ctx.beginPath(); ctx.moveTo(x, top); ctx.lineTo(x, top + height); ctx.stroke();
    }
    ctx.restore();
  }

  resize() {
    if (this.u) this.u.setSize({width: Math.max(240, contentWidth(this.container)), height: HEIGHT});
  }
}

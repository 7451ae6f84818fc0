// Pure data functions of the Stability tab: no DOM, no fetch. The one piece
// of state is the cause registry the views draw with, set once from the
// backend's `GET causes` (setCauses). Everything here is covered by
// test/unit/*.test.mjs (node --test).

// ---------------------------------------------------------------- causes

/** How a cause is drawn when the registry has no entry for it (an id it
 * does not know, or no registry at all: `GET causes` failed): a neutral
 * grey ring. The registry's own `unknown` entry is used first. */
export const FALLBACK_STYLE = Object.freeze({
  cause: 'unknown', title: '', fix: '', color: '#8d8d8d', shape: 'ring', label: 'Unknown',
});

const str = (v, fallback) => (typeof v === 'string' && v ? v : fallback);

/**
 * The cause registry from the `GET causes` payload (backend
 * tb_stability/analysis/causes.py, the only definition of the causes):
 * {ids (in the registry's order), byId: Map id -> frozen {cause, title,
 * fix, color, shape, label}}. Entries without a string id are dropped (the
 * first of a repeated id wins); a missing field takes FALLBACK_STYLE's
 * (title and fix: ''). A missing or malformed payload gives an empty
 * registry, in which every id draws in FALLBACK_STYLE.
 * @param {?Object} payload the /causes response
 * @return {{ids: !Array<string>, byId: !Map<string, !Object>}}
 */
export function causeRegistry(payload) {
  const list = payload && Array.isArray(payload.causes) ? payload.causes : [];
  const byId = new Map();
  for (const c of list) {
    if (!c || typeof c.cause !== 'string' || !c.cause || byId.has(c.cause)) continue;
    byId.set(c.cause, Object.freeze({
      cause: c.cause, title: str(c.title, ''), fix: str(c.fix, ''),
      color: str(c.color, FALLBACK_STYLE.color), shape: str(c.shape, FALLBACK_STYLE.shape),
      label: str(c.label, c.cause),
    }));
  }
  return Object.freeze({ids: Object.freeze([...byId.keys()]), byId});
}

// The registry the tab draws with: empty until the tab's start sets it.
let registry = causeRegistry(null);

/** Sets the registry the views draw with (the /causes payload); returns it. */
export function setCauses(payload) {
  registry = causeRegistry(payload);
  return registry;
}

/** The cause ids of the current registry, in its order. */
export function causeIds() {
  return registry.ids;
}

/** The drawing style ({color, shape, label, ...}) of a cause id in the
 * registry `reg` (default: the current one); an id it does not know gets
 * its `unknown` entry, else FALLBACK_STYLE. */
export function causeStyle(id, reg = registry) {
  return reg.byId.get(id) || reg.byId.get('unknown') || FALLBACK_STYLE;
}

/** The cause id of an anomaly (its top cause), or 'unknown'. */
export function anomalyCause(anomaly) {
  const c = anomaly && anomaly.cause;
  return (c && typeof c.cause === 'string') ? c.cause : 'unknown';
}

/** SVG path data of a marker shape centred in a `size` x `size` box. */
export function shapePath(shape, size = 12) {
  const s = size, c = s / 2, r = s / 2 - 1;
  const pt = (a, rr = r) => `${(c + rr * Math.cos(a)).toFixed(2)},${(c + rr * Math.sin(a)).toFixed(2)}`;
  const poly = (n, rot, rr = r) => 'M' + Array.from({length: n}, (_, i) => pt(rot + (2 * Math.PI * i) / n, rr)).join('L') + 'Z';
  const w = Math.max(1.5, s / 5);  // arm half-width for x and plus
  switch (shape) {
    case 'square': return `M${c - r * 0.8},${c - r * 0.8}h${1.6 * r}v${1.6 * r}h${-1.6 * r}Z`;
    case 'diamond': return poly(4, -Math.PI / 2);
    case 'triangle-up': return poly(3, -Math.PI / 2);
    case 'triangle-down': return poly(3, Math.PI / 2);
    case 'triangle-left': return poly(3, Math.PI);
    case 'triangle-right': return poly(3, 0);
    case 'pentagon': return poly(5, -Math.PI / 2);
    case 'hexagon': return poly(6, 0);
    case 'star': return 'M' + Array.from({length: 10}, (_, i) => pt(-Math.PI / 2 + (Math.PI * i) / 5, i % 2 ? r * 0.45 : r)).join('L') + 'Z';
    case 'plus': return `M${c - w},${c - r}h${2 * w}v${r - w}h${r - w}v${2 * w}h${w - r}v${r - w}h${-2 * w}v${w - r}h${w - r}v${-2 * w}h${r - w}Z`;
    case 'x': {
      const k = r * 0.8, d = w * 0.75;
      return `M${c - k},${c - k + d}L${c - k + d},${c - k}L${c},${c - d}L${c + k - d},${c - k}L${c + k},${c - k + d}` +
        `L${c + d},${c}L${c + k},${c + k - d}L${c + k - d},${c + k}L${c},${c + d}L${c - k + d},${c + k}L${c - k},${c + k - d}L${c - d},${c}Z`;
    }
    case 'bowtie': return `M${c - r},${c - r * 0.8}L${c},${c}L${c - r},${c + r * 0.8}Z` +
      `M${c + r},${c - r * 0.8}L${c},${c}L${c + r},${c + r * 0.8}Z`;
    case 'ring': return `M${c - r},${c}a${r},${r} 0 1,0 ${2 * r},0a${r},${r} 0 1,0 ${-2 * r},0Z` +
      `M${c - r * 0.5},${c}a${r * 0.5},${r * 0.5} 0 1,1 ${r},0a${r * 0.5},${r * 0.5} 0 1,1 ${-r},0Z`;
    case 'circle':
    default: return `M${c - r},${c}a${r},${r} 0 1,0 ${2 * r},0a${r},${r} 0 1,0 ${-2 * r},0Z`;
  }
}

// ---------------------------------------------------------------- numbers

/** Decodes one number of the HTTP API: finite numbers as they are, the
 * strings "NaN"/"Infinity"/"-Infinity" as the IEEE values, `null` (not
 * recorded) and anything else as null. */
export function decodeFloat(v) {
  if (typeof v === 'number') return v;
  if (v === 'NaN') return NaN;
  if (v === 'Infinity') return Infinity;
  if (v === '-Infinity') return -Infinity;
  return null;
}

/** decodeFloat over an array (a missing array decodes to []). */
export function decodeArray(a) {
  if (!Array.isArray(a)) return [];
  const out = new Array(a.length);
  for (let i = 0; i < a.length; i++) out[i] = decodeFloat(a[i]);
  return out;
}

/** Decodes a matrix (array of arrays). */
export function decodeMatrix(m) {
  return Array.isArray(m) ? m.map(decodeArray) : [];
}

/** What a chart can draw: non-finite, null and (on a log axis) non-positive
 * values become null (a gap). */
export function plottable(values, log = false) {
  const out = new Array(values.length);
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    out[i] = (v === null || !Number.isFinite(v) || (log && v <= 0)) ? null : v;
  }
  return out;
}

/** Finite range {min, max, minPositive} of some arrays, ignoring null/NaN/Inf. */
export function finiteRange(...arrays) {
  let min = Infinity, max = -Infinity, minPositive = Infinity;
  for (const a of arrays) {
    if (!a) continue;
    for (let i = 0; i < a.length; i++) {
      const v = a[i];
      if (v === null || !Number.isFinite(v)) continue;
      if (v < min) min = v;
      if (v > max) max = v;
      if (v > 0 && v < minPositive) minPositive = v;
    }
  }
  return {min, max, minPositive};
}

/** Whether a log axis can draw these values at all (some are > 0). */
export function canLog(...arrays) {
  return Number.isFinite(finiteRange(...arrays).minPositive);
}

/** The default of the log-scale toggle: log when every finite value is
 * positive and they span at least `decades` decades. */
export function shouldLog(arrays, decades = 2) {
  const {min, max} = finiteRange(...arrays);
  if (!(min > 0) || !Number.isFinite(max)) return false;
  return Math.log10(max / min) >= decades;
}

const THIN = '\u202f';

/** 1234567 -> "1,234,567" (steps are integers; null -> "\u2014"). */
export function formatStep(step) {
  if (step === null || step === undefined || !Number.isFinite(Number(step))) return '\u2014';
  const n = Math.round(Number(step));
  const s = String(Math.abs(n)).replace(/\B(?=(\d{3})+(?!\d))/g, ',');
  return n < 0 ? '-' + s : s;
}

/** Axis labels for steps: 950, 12k, 1.5M. */
export function formatStepShort(step) {
  if (!Number.isFinite(step)) return '';
  const a = Math.abs(step);
  const trim = (x) => String(Number(x.toFixed(x < 10 ? 2 : x < 100 ? 1 : 0)));
  if (a >= 1e9) return trim(step / 1e9) + 'G';
  if (a >= 1e6) return trim(step / 1e6) + 'M';
  if (a >= 1e4) return trim(step / 1e3) + 'k';
  return String(Math.round(step));
}

/** A step-axis tick label for ticks `incr` steps apart: the short form
 * (formatStepShort) when it tells neighbouring ticks apart, else the full
 * step ("499,500" rather than "499.5k" rounded to "500k"). */
export function formatStepTick(step, incr) {
  const short = formatStepShort(step);
  const m = /^(-?[\d.]+)([kMG]?)$/.exec(short);
  if (!m || !Number.isFinite(step)) return short;
  const back = Number(m[1]) * ({k: 1e3, M: 1e6, G: 1e9}[m[2]] || 1);
  return Math.abs(back - step) < Math.abs(incr || 0) / 4 || back === step ? short : formatStep(step);
}

/** A measured value with `digits` significant digits: "NaN", "+\u221e",
 * "\u2014" for not recorded; exponent form outside [1e-3, 1e5). */
export function formatNumber(v, digits = 4) {
  if (v === null || v === undefined) return '\u2014';
  if (typeof v === 'string') v = decodeFloat(v);
  if (v === null) return '\u2014';
  if (Number.isNaN(v)) return 'NaN';
  if (v === Infinity) return '+\u221e';
  if (v === -Infinity) return '\u2212\u221e';
  if (v === 0) return '0';
  const a = Math.abs(v);
  let s;
  if (a >= 1e5 || a < 1e-3) {
    const [m, e] = v.toExponential(Math.max(0, digits - 2)).split('e');
    s = `${String(Number(m))}e${Number(e)}`;
  } else {
    s = String(Number(v.toPrecision(digits)));
  }
  return s.replace(/^-/, '\u2212');
}

/** 0.95 -> "95%"; null -> "\u2014". */
export function formatPercent(p) {
  if (p === null || p === undefined || !Number.isFinite(p)) return '\u2014';
  return `${Math.round(p * 100)}%`;
}

/** "led by 9 steps" and friends, from a cause's lead_steps. */
export function formatLead(lead) {
  if (lead === null || lead === undefined || !Number.isFinite(lead)) return 'no leading signal';
  if (lead === 0) return 'the leading signal moved with the loss (no lead)';
  if (lead < 0) return `the signal lagged the loss by ${formatStep(-lead)} step${lead === -1 ? '' : 's'}`;
  return `the leading signal led the loss by ${formatStep(lead)} step${lead === 1 ? '' : 's'}`;
}

/** Tick positions for a log10 axis: powers of ten inside [min, max], every
 * k-th decade so that there are at most `maxTicks` (at least the ends). */
export function logSplits(min, max, maxTicks = 6) {
  if (!(min > 0) || !(max > 0) || !Number.isFinite(min) || !Number.isFinite(max)) return [];
  const lo = Math.ceil(Math.log10(min) - 1e-9), hi = Math.floor(Math.log10(max) + 1e-9);
  if (hi < lo) return [min, max];
  const stride = Math.max(1, Math.ceil((hi - lo + 1) / Math.max(1, maxTicks)));
  const out = [];
  for (let e = hi; e >= lo; e -= stride) out.unshift(Number(`1e${e}`));
  return out;
}

/** Shortens `text` to at most `max` characters by cutting the middle. */
export function middleEllipsis(text, max) {
  text = String(text);
  if (text.length <= max || max < 5) return text;
  const keep = max - 1, head = Math.ceil(keep / 2), tail = Math.floor(keep / 2);
  return text.slice(0, head) + '\u2026' + text.slice(text.length - tail);
}

/** The longest common "a/b/" prefix of slash paths (only whole segments,
 * and never the whole of any name). */
export function commonPathPrefix(names) {
  if (!names.length) return '';
  let prefix = names[0].slice(0, names[0].lastIndexOf('/') + 1);
  for (const n of names) {
    while (prefix && !(n.startsWith(prefix) && n.length > prefix.length)) {
      prefix = prefix.slice(0, prefix.lastIndexOf('/', prefix.length - 2) + 1);
    }
  }
  return prefix;
}

// ---------------------------------------------------------------- anomalies

/** Anomalies in step order (onset, then peak), without mutating the input. */
export function sortAnomalies(anomalies) {
  return (anomalies || []).slice().sort((a, b) => (a.step - b.step) || ((a.peak_step ?? a.step) - (b.peak_step ?? b.step)));
}

/** The index of the anomaly to move to from index `current` (-1: none
 * selected) in direction `dir` (+1 next, -1 previous); stays at the ends. */
export function stepAnomaly(count, current, dir) {
  if (count <= 0) return -1;
  if (current < 0 || current >= count) return dir > 0 ? 0 : count - 1;
  return Math.min(count - 1, Math.max(0, current + (dir > 0 ? 1 : -1)));
}

/** Index of the anomaly whose onset or peak is `step`, or -1. */
export function findAnomaly(anomalies, step) {
  if (step === null || step === undefined) return -1;
  let i = anomalies.findIndex((a) => a.step === step);
  if (i < 0) i = anomalies.findIndex((a) => a.peak_step === step);
  return i;
}

/** Count of anomalies per top cause, in the registry's order (`reg`,
 * default: the current one): [[id, n], ...]. An id the registry does not
 * know counts as 'unknown' (last unless the registry places it). */
export function causeCounts(anomalies, reg = registry) {
  const n = new Map();
  for (const a of anomalies || []) {
    const id = reg.byId.has(anomalyCause(a)) ? anomalyCause(a) : 'unknown';
    n.set(id, (n.get(id) || 0) + 1);
  }
  const order = reg.byId.has('unknown') ? reg.ids : [...reg.ids, 'unknown'];
  return order.filter((id) => n.has(id)).map((id) => [id, n.get(id)]);
}

// ---------------------------------------------------------------- timeline

/** The timeline response, decoded into chart columns:
 * {x (bucket centres), stepMin, stepMax, series: {name: {min, max}} with
 *  values decoded (NaN/Inf kept), nonfinite (per-bucket bool: any
 *  non-finite loss or a nonfinite count), guardSkipped (per-bucket bool:
 *  an update the update guard skipped), anomalies (sorted)}. */
export function decodeTimeline(t) {
  const stepMin = Array.isArray(t.step_min) ? t.step_min : [];
  const stepMax = Array.isArray(t.step_max) ? t.step_max : stepMin;
  const n = stepMin.length;
  const x = new Array(n);
  for (let i = 0; i < n; i++) x[i] = (stepMin[i] + stepMax[i]) / 2;
  const series = {};
  for (const [name, s] of Object.entries(t.series || {})) {
    series[name] = {min: decodeArray(s && s.min), max: decodeArray(s && s.max)};
  }
  const counts = Array.isArray(t.nonfinite) ? t.nonfinite : [];
  const loss = series.loss || {min: [], max: []};
  const nonfinite = new Array(n);
  for (let i = 0; i < n; i++) {
    const lo = loss.min[i], hi = loss.max[i];
    nonfinite[i] = (counts[i] > 0) || (lo !== null && lo !== undefined && !Number.isFinite(lo)) ||
      (hi !== null && hi !== undefined && !Number.isFinite(hi));
  }
  const guardCounts = Array.isArray(t.guard_skipped) ? t.guard_skipped : [];
  const guardSkipped = new Array(n);
  for (let i = 0; i < n; i++) guardSkipped[i] = guardCounts[i] > 0;
  return {x, stepMin, stepMax, series, nonfinite, guardSkipped, anomalies: sortAnomalies(t.anomalies)};
}

/** The chart width to ask the backend for: two buckets per CSS pixel. */
export function requestWidth(plotWidthPx) {
  return Math.max(100, Math.min(10000, Math.round((plotWidthPx || 800) * 2)));
}

// ---------------------------------------------------------------- zoom

/** The relative URL of the timeline route for `run` at `width` buckets,
 * restricted to the inclusive step range `range` ([first, last]) if given. */
export function timelineUrl(run, width, range = null) {
  const q = encodeURIComponent;
  let url = `./timeline?run=${q(run)}&width=${q(width)}`;
  if (range) url += `&first=${q(Math.round(range[0]))}&last=${q(Math.round(range[1]))}`;
  return url;
}

/** The number of buckets to ask for a zoomed range: one per CSS pixel of
 * the plot area (the API takes 1..10000). */
export function zoomWidth(plotWidthPx) {
  const w = Math.round(Number(plotWidthPx));
  return Math.max(50, Math.min(10000, Number.isFinite(w) && w > 0 ? w : 800));
}

/** The whole steps [first, last] an x-scale window [min, max] shows,
 * clamped to the run's [firstStep, lastStep]; null when there is no
 * window, or it shows the whole run. */
export function zoomSteps(xRange, firstStep, lastStep) {
  if (!xRange || !Number.isFinite(xRange[0]) || !Number.isFinite(xRange[1])) return null;
  if (!Number.isFinite(firstStep) || !Number.isFinite(lastStep)) return null;
  const first = Math.max(firstStep, Math.floor(Math.min(xRange[0], xRange[1])));
  const last = Math.min(lastStep, Math.ceil(Math.max(xRange[0], xRange[1])));
  if (first > last) return null;
  if (first <= firstStep && last >= lastStep) return null;
  return [first, last];
}

/** Steps per bucket of a timeline response (or a loaded zoom:
 * {rangeSteps, buckets}); Infinity when unknown. */
export function stepsPerBucket(t) {
  if (!t) return Infinity;
  const steps = t.range_steps ?? t.rangeSteps ?? t.steps;
  const buckets = t.buckets;
  if (!(steps >= 0) || !(buckets > 0)) return Infinity;
  return Math.max(1, steps / buckets);
}

/** Whether the step window `view` ([first, last], null: not zoomed) drawn
 * `width` buckets wide needs a range fetch: not when the whole run's
 * response `full` is already fine enough there (every row its own bucket,
 * or about as fine as the window asks for), nor when the loaded `zoom`
 * ({requested: [first, last], rangeSteps, buckets}) covers the window and
 * is fine enough (at full resolution, range_steps <= buckets, always is).
 * `tolerance`: how much coarser than asked still counts as fine enough. */
export function needsZoomFetch(view, width, full, zoom = null, tolerance = 1.5) {
  if (!view || !full) return false;
  const wanted = Math.max(1, (view[1] - view[0] + 1) / Math.max(1, width));
  const fine = (per) => per <= 1 || per <= wanted * tolerance;
  if (fine(stepsPerBucket(full))) return false;
  if (zoom && zoom.requested && zoom.requested[0] <= view[0] && zoom.requested[1] >= view[1] &&
      fine(stepsPerBucket(zoom))) return false;
  return true;
}

/** A decoded whole-run timeline with the buckets of a decoded range
 * response `zoom` put in place of the ones they overlap: the run's coarse
 * buckets before and after the range, the fine ones inside, so the x axis
 * still spans the whole run. `range` ([first, last]) is kept as
 * `zoomRange`. Series missing from one side are filled with null. */
export function mergeTimelines(full, zoom, range = null) {
  const n = zoom ? zoom.x.length : 0;
  if (!n) return Object.assign({}, full, {zoomRange: range});
  const lo = zoom.stepMin[0], hi = zoom.stepMax[n - 1];
  const left = [], right = [];
  for (let i = 0; i < full.x.length; i++) {
    if (full.stepMax[i] < lo) left.push(i);
    else if (full.stepMin[i] > hi) right.push(i);
  }
  const pick = (fa, za) => {
    const out = new Array(left.length + n + right.length);
    let k = 0;
    for (const i of left) out[k++] = fa ? fa[i] ?? null : null;
    for (let i = 0; i < n; i++) out[k++] = za ? za[i] ?? null : null;
    for (const i of right) out[k++] = fa ? fa[i] ?? null : null;
    return out;
  };
  const series = {};
  for (const name of new Set([...Object.keys(full.series), ...Object.keys(zoom.series)])) {
    const f = full.series[name], z = zoom.series[name];
    series[name] = {min: pick(f && f.min, z && z.min), max: pick(f && f.max, z && z.max)};
  }
  return {
    x: pick(full.x, zoom.x), stepMin: pick(full.stepMin, zoom.stepMin), stepMax: pick(full.stepMax, zoom.stepMax),
    series, nonfinite: pick(full.nonfinite, zoom.nonfinite).map(Boolean),
    guardSkipped: pick(full.guardSkipped, zoom.guardSkipped).map(Boolean),
    anomalies: full.anomalies, zoomRange: range || [lo, hi],
  };
}

/** The buckets of a decoded timeline that overlap the step window
 * [lo, hi]: {buckets (their number), maxSteps (the widest one's steps),
 * meanSteps}. */
export function visibleBuckets(data, lo, hi) {
  let buckets = 0, maxSteps = 0, total = 0;
  const n = data && data.stepMin ? data.stepMin.length : 0;
  for (let i = 0; i < n; i++) {
    if (data.stepMax[i] < lo || data.stepMin[i] > hi) continue;
    const steps = data.stepMax[i] - data.stepMin[i] + 1;
    buckets++;
    total += steps;
    if (steps > maxSteps) maxSteps = steps;
  }
  return {buckets, maxSteps, meanSteps: buckets ? total / buckets : 0};
}

// ---------------------------------------------------------------- heatmap

/** The served row (index into evidence.variables) of the variable the top
 * cause implicates, or -1 (none, or an index outside the served rows). */
export function highlightRow(ev) {
  const n = ev && Array.isArray(ev.variables) ? ev.variables.length : 0;
  const i = ev && ev.highlight ? ev.highlight.index : null;
  return Number.isInteger(i) && i >= 0 && i < n ? i : -1;
}

/** The original index (in the run's variable order) of served row `row`:
 * evidence.variable_index[row], or `row` itself when not given. */
export function variableIndex(ev, row) {
  const idx = ev && Array.isArray(ev.variable_index) ? ev.variable_index[row] : undefined;
  return Number.isInteger(idx) ? idx : row;
}

/**
 * The note under a per-step heatmap of a statistic the recorder measures
 * every `stats_every` steps only (all but the gradient norms), or null.
 * @param {?Object} ev the /anomaly evidence
 * @param {string} stat the statistic shown
 * @return {?string}
 */
export function evidenceSparseNote(ev, stat) {
  const every = ev && Number.isInteger(ev.stats_every) ? ev.stats_every : 1;
  if (every <= 1 || !ev || ev.resolution === 'window' || stat === 'grad_norm' || stat === 'grad_nonfinite') return null;
  return `blank cells: not measured (this statistic is measured every ${formatStep(every)} steps, ` +
    'and on every step around anomalies and their first signs)';
}

/** The note of a heatmap whose rows the backend capped (at most 256 of a
 * wide run's variables): "showing 256 of 10,000 variables (the implicated
 * one and the 255 that moved most)"; null when every variable is served. */
export function evidenceRowsNote(ev) {
  const shown = ev && Array.isArray(ev.variables) ? ev.variables.length : 0;
  const total = ev && Number.isInteger(ev.variables_total) ? ev.variables_total : shown;
  if (!(total > shown)) return null;
  const rows = new Set((ev && Array.isArray(ev.implicated) ? ev.implicated : [])
    .filter((i) => Number.isInteger(i) && i >= 0 && i < shown));
  const implicated = rows.size, moved = shown - implicated;
  const parts = [];
  if (implicated === 1) parts.push('the implicated one');
  else if (implicated > 1) parts.push(`the ${formatStep(implicated)} implicated`);
  if (moved === 1) parts.push('the one that moved most');
  else if (moved > 1) parts.push(`the ${formatStep(moved)} that moved most`);
  const why = parts.length ? ` (${parts.join(' and ')})` : '';
  return `showing ${formatStep(shown)} of ${formatStep(total)} variables${why}`;
}


/** Normalises a variables x steps matrix for colouring, on a log10 scale.
 * mode 'global': one range over the matrix; 'row': each row over its own
 * range (shows when each layer moved, whatever its magnitude).
 * Returns {cells: rows of (number in [0,1] | null (not recorded) |
 * 'nonfinite'), lo, hi} with lo/hi the log10 range ('global'; per-row
 * ranges in rowRanges). Zeros and negatives map to 0. */
export function normalizeHeatmap(matrix, mode = 'global') {
  const logs = matrix.map((row) => row.map((v) => {
    if (v === null || v === undefined) return null;
    if (!Number.isFinite(v)) return 'nonfinite';
    return v > 0 ? Math.log10(v) : -Infinity;
  }));
  const range = (rows) => {
    let lo = Infinity, hi = -Infinity;
    for (const row of rows) for (const l of row) {
      if (typeof l === 'number' && Number.isFinite(l)) { if (l < lo) lo = l; if (l > hi) hi = l; }
    }
    return [lo, hi];
  };
  const scale = (row, [lo, hi]) => row.map((l) => {
    if (l === null || l === 'nonfinite') return l;
    if (!Number.isFinite(lo)) return 0;
    if (l === -Infinity) return 0;
    return hi > lo ? (l - lo) / (hi - lo) : 0.5;
  });
  if (mode === 'row') {
    const rowRanges = logs.map((row) => range([row]));
    return {cells: logs.map((row, i) => scale(row, rowRanges[i])), lo: null, hi: null, rowRanges};
  }
  const r = range(logs);
  return {cells: logs.map((row) => scale(row, r)), lo: r[0], hi: r[1], rowRanges: null};
}

const VIRIDIS = [
  [68, 1, 84], [72, 40, 120], [62, 74, 137], [49, 104, 142], [38, 130, 142],
  [31, 158, 137], [53, 183, 121], [109, 205, 89], [180, 222, 44], [253, 231, 37],
];

/** Viridis colour [r, g, b] of t in [0, 1] (clamped). */
export function colormap(t) {
  t = Math.min(1, Math.max(0, Number.isFinite(t) ? t : 0));
  const f = t * (VIRIDIS.length - 1), i = Math.min(VIRIDIS.length - 2, Math.floor(f)), u = f - i;
  const a = VIRIDIS[i], b = VIRIDIS[i + 1];
  return [0, 1, 2].map((k) => Math.round(a[k] + (b[k] - a[k]) * u));
}

/** Index of the column of `steps` nearest to `step` (steps ascending). */
export function nearestIndex(steps, step) {
  if (!steps.length) return -1;
  let lo = 0, hi = steps.length - 1;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (steps[mid] < step) lo = mid + 1; else hi = mid;
  }
  if (lo > 0 && Math.abs(steps[lo - 1] - step) <= Math.abs(steps[lo] - step)) return lo - 1;
  return lo;
}

/** The one-line setup shown when a logdir has no tb_stability data. */
export const CALLBACK_LINE = 'model.fit(x, y, callbacks=[tb_stability.keras.StabilityCallback("logs/run1")])';

// ---------------------------------------------------------------- overview

/** What each run status of GET overview is called on screen, worst first. */
export const RUN_STATUS = {
  'nonfinite': 'non-finite',
  'anomalies': 'anomalies',
  'healthy': 'healthy',
  'no data': 'no data',
  'pending': 'analysing\u2026',
};

/** The overview's runs whose anomalies have `cause` among their top
 * causes ('' or null: every run), in the backend's order (worst first). */
export function filterOverview(runs, cause) {
  if (!Array.isArray(runs)) return [];
  if (!cause) return runs.slice();
  return runs.filter((r) => Array.isArray(r.causes) && r.causes.includes(cause));
}

/** The cause filter's choices: [{cause, runs}] by how many runs have the
 * cause (most first, then the registry's order). */
export function overviewCauses(overview, reg = registry) {
  const counts = (overview && overview.cause_counts) || {};
  const order = (id) => { const i = reg.ids.indexOf(id); return i < 0 ? reg.ids.length : i; };
  return Object.keys(counts).map((cause) => ({cause, runs: counts[cause]}))
    .sort((a, b) => b.runs - a.runs || order(a.cause) - order(b.cause) || (a.cause < b.cause ? -1 : 1));
}

/** "96 runs: 12 non-finite, 40 with anomalies, 44 healthy". */
export function overviewLine(overview) {
  const n = overview && Number.isInteger(overview.total) ? overview.total : 0;
  const c = (overview && overview.status_counts) || {};
  const parts = [];
  if (c.nonfinite) parts.push(`${formatStep(c.nonfinite)} non-finite`);
  if (c.anomalies) parts.push(`${formatStep(c.anomalies)} with anomalies`);
  if (c.healthy) parts.push(`${formatStep(c.healthy)} healthy`);
  if (overview && overview.pending > 0) parts.push(`${formatStep(overview.pending)} still being analysed`);
  return `${formatStep(n)} run${n === 1 ? '' : 's'}${parts.length ? ': ' + parts.join(', ') : ''}`;
}

// ---------------------------------------------------------------- card words

const finite = (v) => typeof v === 'number' && Number.isFinite(v);

/** What an anomaly's `severity` measures, in words (REPORT.md): decades
 * above the baseline for a spike, divergence or instability, consecutive
 * non-finite steps, or the share of the run a plateau lasted; null when
 * there is nothing to say. */
/** The updates the update guard skipped in the anomaly, in words, or null when none. */
export function guardWords(a) {
  const n = a ? Number(a.guard_skipped) : 0;
  if (!Number.isFinite(n) || n <= 0) return null;
  return `${formatStep(n)} update${n === 1 ? '' : 's'} skipped by the update guard (weights and moments kept)`;
}

export function severityWords(a) {
  const s = a ? decodeFloat(a.severity) : null;
  if (!finite(s)) return null;
  switch (a.kind) {
    case 'spike': case 'divergence': case 'instability':
      return `${formatNumber(s, 2)} decade${s === 1 ? '' : 's'} above the loss before it (\u00d7${formatNumber(10 ** s, 2)})`;
    case 'nonfinite':
      return `${formatStep(Math.round(s))} consecutive non-finite step${Math.round(s) === 1 ? '' : 's'}`;
    case 'plateau':
      return `stuck for ${formatPercent(s)} of the run`;
    default:
      return `severity ${formatNumber(s, 3)}`;
  }
}

/** The card's loss line, in words fitting the kind: the level a plateau
 * is stuck at, the best loss an instability returns far above, and for a
 * jump the loss before it and at its peak (with the factor); null when no
 * finite number is known. */
export function lossWords(a) {
  if (!a) return null;
  const base = decodeFloat(a.baseline), peak = decodeFloat(a.peak_value);
  const ok = (v) => finite(v);
  if (a.kind === 'plateau') return ok(base) ? `stuck at ${formatNumber(base)}` : null;
  if (a.kind === 'nonfinite') {
    return ok(base) ? `${formatNumber(base)} before it, then not finite (NaN/Inf)` : 'not finite (NaN/Inf)';
  }
  const before = a.kind === 'instability' ? 'best before' : 'before';
  if (ok(base) && ok(peak)) {
    const factor = base > 0 ? ` (\u00d7${formatNumber(peak / base, 3)})` : '';
    return `${before} ${formatNumber(base)} \u2192 peak ${formatNumber(peak)}${factor}`;
  }
  if (ok(peak)) return `peak ${formatNumber(peak)}`;
  if (ok(base)) return `${before} ${formatNumber(base)}`;
  return null;
}

/** The step window a run opens zoomed to when all of its anomalies sit in
 * its first few steps (a blow-up at step 2 of 1,570 would be a few pixels
 * at the left edge): [firstStep, about 4x the last step they span, at
 * least 40 steps], or null (no anomaly, a short run, or anomalies spread
 * over more than `share` of the run). A plateau counts by its onset, a
 * recovered anomaly to its end. */
export function storyRange(anomalies, firstStep, lastStep, share = 0.05, minSteps = 200) {
  if (!Array.isArray(anomalies) || !anomalies.length) return null;
  if (!Number.isFinite(firstStep) || !Number.isFinite(lastStep)) return null;
  const span = lastStep - firstStep;
  if (span < minSteps) return null;
  let hi = -Infinity;
  for (const a of anomalies) {
    let s = Number.isFinite(a.peak_step) ? a.peak_step : a.step;
    if (a.kind !== 'plateau' && Number.isFinite(a.end_step)) s = Math.max(s, a.end_step);
    if (Number.isFinite(s)) hi = Math.max(hi, s);
  }
  if (!Number.isFinite(hi) || hi - firstStep > share * span) return null;
  return [firstStep, Math.min(lastStep, firstStep + Math.max(40, 4 * (hi - firstStep + 1)))];
}

// Unit tests of the data model and formatting: node --test test/unit/
import assert from 'node:assert/strict';
import {readFileSync} from 'node:fs';
import {test} from 'node:test';

import {
  FALLBACK_STYLE, anomalyCause, canLog, causeCounts, causeIds, causeRegistry, causeStyle, colormap,
  commonPathPrefix, decodeArray, decodeFloat, decodeMatrix, decodeTimeline,
  findAnomaly, formatLead, formatNumber, formatPercent, formatStep,
  formatStepShort, logSplits, middleEllipsis, nearestIndex, normalizeHeatmap,
  plottable, requestWidth, setCauses, shapePath, shouldLog, sortAnomalies, stepAnomaly,
} from '../../../tb_stability/static/model.js';

// A /causes payload of three causes (the real one is the backend's
// tb_stability/analysis/causes.py, served as GET causes).
const FIXTURE = {causes: [
  {cause: 'adam_epsilon', title: 'Adam', fix: 'Raise epsilon.', color: '#f28e2b', shape: 'diamond', label: 'Adam v\u0302 decay'},
  {cause: 'bad_batch', title: 'One bad batch', fix: 'Filter it.', color: '#17a2b8', shape: 'circle', label: 'Bad batch'},
  {cause: 'unknown', title: 'No known mechanism', fix: 'Look.', color: '#8d8d8d', shape: 'ring', label: 'Unknown'},
]};
// The real registry, when test_frontend.py passes the backend's payload.
const SERVED = process.env.TB_STABILITY_CAUSES_JSON;

test('decodeFloat: numbers, encoded non-finite strings, null', () => {
  assert.equal(decodeFloat(1.5), 1.5);
  assert.equal(decodeFloat(0), 0);
  assert.ok(Number.isNaN(decodeFloat('NaN')));
  assert.equal(decodeFloat('Infinity'), Infinity);
  assert.equal(decodeFloat('-Infinity'), -Infinity);
  assert.equal(decodeFloat(null), null);
  assert.equal(decodeFloat(undefined), null);
  assert.equal(decodeFloat('1.5'), null);  // only the three spellings are numbers
  assert.equal(decodeFloat('<b>x</b>'), null);
});

test('decodeArray and decodeMatrix', () => {
  const a = decodeArray([1, 'NaN', null, 'Infinity']);
  assert.equal(a[0], 1);
  assert.ok(Number.isNaN(a[1]));
  assert.equal(a[2], null);
  assert.equal(a[3], Infinity);
  assert.deepEqual(decodeArray(undefined), []);
  assert.deepEqual(decodeMatrix([[1, '-Infinity']]), [[1, -Infinity]]);
  assert.deepEqual(decodeMatrix(null), []);
});

test('plottable turns non-finite, null and (on log) non-positive into gaps', () => {
  assert.deepEqual(plottable([1, NaN, Infinity, null, 0, -2]), [1, null, null, null, 0, -2]);
  assert.deepEqual(plottable([1, NaN, 0, -2, 3], true), [1, null, null, null, 3]);
});

test('log scale by default when the values span decades', () => {
  assert.equal(shouldLog([[0.01, 0.02], [100]]), true);
  assert.equal(shouldLog([[1, 2, 50]]), false);
  assert.equal(shouldLog([[0, 1e-9, 10]]), false);          // a zero: no log by default
  assert.equal(shouldLog([[1e-3, NaN, Infinity, null, 10]]), true);  // non-finite ignored
  assert.equal(shouldLog([[]]), false);
  assert.equal(canLog([0, -1]), false);
  assert.equal(canLog([0, 2]), true);
});

test('logSplits: powers of ten, thinned to maxTicks', () => {
  assert.deepEqual(logSplits(1, 1000, 10), [1, 10, 100, 1000]);
  const s = logSplits(1e-14, 10, 7);
  assert.ok(s.length <= 7 && s.length >= 2, String(s));
  assert.equal(s[s.length - 1], 10);
  assert.deepEqual(logSplits(0, 10), []);
});

test('formatStep and formatStepShort', () => {
  assert.equal(formatStep(1234567), '1,234,567');
  assert.equal(formatStep(0), '0');
  assert.equal(formatStep(999), '999');
  assert.equal(formatStep(-1200), '-1,200');
  assert.equal(formatStep(null), '\u2014');
  assert.equal(formatStepShort(950), '950');
  assert.equal(formatStepShort(12000), '12k');
  assert.equal(formatStepShort(1500000), '1.5M');
  assert.equal(formatStepShort(1000000), '1M');
});

test('formatNumber: significant digits, exponents, non-finite, missing', () => {
  assert.equal(formatNumber(0.0142), '0.0142');
  assert.equal(formatNumber(8620.4), '8620');
  assert.equal(formatNumber(1e-7), '1e-7');
  assert.equal(formatNumber(2.4e-6), '2.4e-6');
  assert.equal(formatNumber(123456789), '1.23e8');
  assert.equal(formatNumber(-0.5), '\u22120.5');
  assert.equal(formatNumber(0), '0');
  assert.equal(formatNumber(NaN), 'NaN');
  assert.equal(formatNumber('NaN'), 'NaN');
  assert.equal(formatNumber(Infinity), '+\u221e');
  assert.equal(formatNumber('-Infinity'), '\u2212\u221e');
  assert.equal(formatNumber(null), '\u2014');
});

test('formatPercent and formatLead', () => {
  assert.equal(formatPercent(0.95), '95%');
  assert.equal(formatPercent(null), '\u2014');
  assert.match(formatLead(9), /led the loss by 9 steps/);
  assert.match(formatLead(1), /by 1 step$/);
  assert.equal(formatLead(null), 'no leading signal');
  assert.match(formatLead(0), /no lead/);
});

test('middleEllipsis and commonPathPrefix', () => {
  const long = 'model/' + 'very_long_layer_name_'.repeat(10) + '/kernel';
  const short = middleEllipsis(long, 30);
  assert.equal(short.length, 30);
  assert.ok(short.startsWith('model/') && short.endsWith('kernel') && short.includes('\u2026'));
  assert.equal(middleEllipsis('abc', 30), 'abc');
  assert.equal(commonPathPrefix(['seed002/dense_1/kernel', 'seed002/dense_1/bias', 'seed002/dense_2/bias']), 'seed002/');
  assert.equal(commonPathPrefix(['a/kernel', 'a/bias']), 'a/');
  assert.equal(commonPathPrefix(['a/b/kernel']), 'a/b/');
  assert.equal(commonPathPrefix(['x', 'y']), '');
  assert.equal(commonPathPrefix([]), '');
});

test('anomaly ordering and keyboard navigation', () => {
  const list = sortAnomalies([{step: 30, peak_step: 31}, {step: 10, peak_step: 12}, {step: 10, peak_step: 11}]);
  assert.deepEqual(list.map((a) => [a.step, a.peak_step]), [[10, 11], [10, 12], [30, 31]]);
  assert.equal(stepAnomaly(3, -1, 1), 0);
  assert.equal(stepAnomaly(3, -1, -1), 2);
  assert.equal(stepAnomaly(3, 0, 1), 1);
  assert.equal(stepAnomaly(3, 2, 1), 2);   // stays at the end
  assert.equal(stepAnomaly(3, 0, -1), 0);
  assert.equal(stepAnomaly(0, -1, 1), -1);
  assert.equal(findAnomaly(list, 30), 2);
  assert.equal(findAnomaly(list, 31), 2);  // by peak step too
  assert.equal(findAnomaly(list, 5), -1);
});

test('causeRegistry: the served entries in order, malformed ones dropped', () => {
  const reg = causeRegistry({causes: [...FIXTURE.causes, {cause: 'bad_batch', color: '#000000'}, null, {title: 'no id'},
    {cause: 'partial'}]});
  assert.deepEqual(reg.ids, ['adam_epsilon', 'bad_batch', 'unknown', 'partial']);
  assert.equal(reg.byId.get('bad_batch').color, '#17a2b8');  // the first of a repeated id wins
  assert.deepEqual(reg.byId.get('partial'), {cause: 'partial', title: '', fix: '', color: FALLBACK_STYLE.color,
    shape: FALLBACK_STYLE.shape, label: 'partial'});
  for (const bad of [null, undefined, {}, {causes: 'x'}, []]) assert.deepEqual(causeRegistry(bad).ids, []);
});

test('causeStyle: the registry entry; an id it does not know gets its unknown entry, else the fallback', () => {
  const reg = causeRegistry(FIXTURE);
  assert.equal(causeStyle('adam_epsilon', reg).shape, 'diamond');
  assert.equal(causeStyle('adam_epsilon', reg).label, 'Adam v\u0302 decay');
  assert.equal(causeStyle('no_such_cause', reg), reg.byId.get('unknown'));
  const noUnknown = causeRegistry({causes: FIXTURE.causes.slice(0, 2)});
  assert.equal(causeStyle('no_such_cause', noUnknown), FALLBACK_STYLE);
  assert.equal(causeStyle('adam_epsilon', causeRegistry(null)), FALLBACK_STYLE);
  assert.match(shapePath(FALLBACK_STYLE.shape, 12), /^M[\d.,\- MLZhvaz]+$/i);
  assert.equal(anomalyCause({cause: {cause: 'bad_batch'}}), 'bad_batch');
  assert.equal(anomalyCause({cause: null}), 'unknown');
});

test('setCauses sets the registry the views draw with', () => {
  try {
    setCauses(null);
    assert.deepEqual(causeIds(), []);
    assert.equal(causeStyle('bad_batch'), FALLBACK_STYLE);  // before the registry arrives
    setCauses(FIXTURE);
    assert.deepEqual(causeIds(), ['adam_epsilon', 'bad_batch', 'unknown']);
    assert.equal(causeStyle('bad_batch').color, '#17a2b8');
  } finally {
    setCauses(null);
  }
});

test('causeCounts groups by top cause in the registry order', () => {
  const anomalies = [{cause: {cause: 'bad_batch'}}, {cause: {cause: 'adam_epsilon'}},
    {cause: {cause: 'bad_batch'}}, {cause: {cause: 'weird'}}, {cause: null}];
  const reg = causeRegistry(FIXTURE);
  assert.deepEqual(causeCounts(anomalies, reg), [['adam_epsilon', 1], ['bad_batch', 2], ['unknown', 2]]);
  // unknown last when the registry does not place it; everything unknown without a registry
  const reversed = causeRegistry({causes: [FIXTURE.causes[1], FIXTURE.causes[0]]});
  assert.deepEqual(causeCounts(anomalies, reversed), [['bad_batch', 2], ['adam_epsilon', 1], ['unknown', 2]]);
  assert.deepEqual(causeCounts(anomalies, causeRegistry(null)), [['unknown', 5]]);
  assert.deepEqual(causeCounts([], reg), []);
});

test('the served registry: every cause has its own colour and a shape shapePath draws', {skip: !SERVED && 'TB_STABILITY_CAUSES_JSON not set (tests/test_frontend.py sets it)'}, () => {
  const reg = causeRegistry(JSON.parse(readFileSync(SERVED, 'utf8')));
  assert.ok(reg.ids.includes('unknown'));
  const styles = reg.ids.map((id) => reg.byId.get(id));
  assert.equal(new Set(styles.map((c) => c.color)).size, styles.length);
  assert.equal(new Set(styles.map((c) => c.shape)).size, styles.length);
  for (const c of styles) {
    assert.match(c.color, /^#[0-9a-f]{6}$/);
    assert.match(shapePath(c.shape, 12), /^M[\d.,\- MLZhvaz]+$/i);
    assert.ok(c.shape === 'circle' || shapePath(c.shape, 12) !== shapePath('circle', 12), `${c.cause}: no such shape ${c.shape}`);
    assert.ok(c.label && c.title && c.fix, c.cause);
  }
});

test('decodeTimeline: bucket centres, decoded series, non-finite buckets', () => {
  const t = decodeTimeline({
    step_min: [0, 500, 1000], step_max: [499, 999, 1499],
    series: {loss: {min: [0.1, 'NaN', 0.05], max: [2.0, 'Infinity', 0.09]}, grad_norm: {min: [1, 2, 3], max: [1, 2, null]}},
    nonfinite: [0, 0, 3],
    anomalies: [{step: 900, peak_step: 900}, {step: 100, peak_step: 120}],
  });
  assert.deepEqual(t.x, [249.5, 749.5, 1249.5]);
  assert.ok(Number.isNaN(t.series.loss.min[1]));
  assert.equal(t.series.loss.max[1], Infinity);
  assert.equal(t.series.grad_norm.max[2], null);
  assert.deepEqual(t.nonfinite, [false, true, true]);
  assert.deepEqual(t.anomalies.map((a) => a.step), [100, 900]);
  const empty = decodeTimeline({});
  assert.deepEqual(empty.x, []);
  assert.deepEqual(empty.anomalies, []);
});

test('requestWidth is clamped to what the backend accepts', () => {
  assert.equal(requestWidth(500), 1000);
  assert.equal(requestWidth(0), 1600);
  assert.equal(requestWidth(20), 100);
  assert.equal(requestWidth(1e6), 10000);
});

test('normalizeHeatmap: log scale, global and per row, gaps and non-finite', () => {
  const m = [[1, 10, 100], [null, NaN, 1000], [0, 1, 1]];
  const g = normalizeHeatmap(m, 'global');
  assert.equal(g.lo, 0);
  assert.equal(g.hi, 3);
  assert.deepEqual(g.cells[0], [0, 1 / 3, 2 / 3]);
  assert.deepEqual(g.cells[1], [null, 'nonfinite', 1]);
  assert.equal(g.cells[2][0], 0);  // zero maps to the bottom of the scale
  const r = normalizeHeatmap(m, 'row');
  assert.deepEqual(r.cells[0], [0, 0.5, 1]);
  assert.equal(r.cells[1][2], 0.5);  // a single finite value sits in the middle
  assert.deepEqual(normalizeHeatmap([], 'global').cells, []);
});

test('colormap and nearestIndex', () => {
  assert.deepEqual(colormap(0), [68, 1, 84]);
  assert.deepEqual(colormap(1), [253, 231, 37]);
  assert.deepEqual(colormap(2), colormap(1));
  assert.deepEqual(colormap(NaN), colormap(0));
  assert.equal(nearestIndex([10, 20, 30], 21), 1);
  assert.equal(nearestIndex([10, 20, 30], 26), 2);
  assert.equal(nearestIndex([10, 20, 30], -5), 0);
  assert.equal(nearestIndex([], 3), -1);
});

// ---------------------------------------------------------------- zoom

import {
  mergeTimelines, needsZoomFetch, stepsPerBucket, timelineUrl, visibleBuckets, zoomSteps, zoomWidth,
} from '../../../tb_stability/static/model.js';

test('timelineUrl: relative, escaped, optional inclusive range', () => {
  assert.equal(timelineUrl('a b/<c>', 800), './timeline?run=a%20b%2F%3Cc%3E&width=800');
  assert.equal(timelineUrl('r', 1100, [499000, 501000]), './timeline?run=r&width=1100&first=499000&last=501000');
  assert.equal(timelineUrl('r&x=1', 10, [1.2, 7.8]), './timeline?run=r%26x%3D1&width=10&first=1&last=8');
  assert.equal(timelineUrl('r', 10, null), './timeline?run=r&width=10');
});

test('zoomWidth: one bucket per plot pixel, within the API limits', () => {
  assert.equal(zoomWidth(1100.4), 1100);
  assert.equal(zoomWidth(20), 50);
  assert.equal(zoomWidth(123456), 10000);
  assert.equal(zoomWidth(undefined), 800);
  assert.equal(zoomWidth(0), 800);
});

test('zoomSteps: whole steps of the window, clamped; null for the whole run', () => {
  assert.deepEqual(zoomSteps([498500.3, 501499.6], 0, 999999), [498500, 501500]);
  assert.deepEqual(zoomSteps([-50, 100], 0, 999), [0, 100]);
  assert.deepEqual(zoomSteps([900, 5000], 0, 999), [900, 999]);
  assert.equal(zoomSteps(null, 0, 999), null);
  assert.equal(zoomSteps([-1, 1000], 0, 999), null);
  assert.equal(zoomSteps([0, 999], 0, 999), null);
  assert.equal(zoomSteps([2000, 3000], 0, 999), null);  // nothing recorded there
  assert.equal(zoomSteps([NaN, 3], 0, 999), null);
  assert.equal(zoomSteps([1, 2], null, 999), null);
});

test('stepsPerBucket of a response or a loaded zoom', () => {
  assert.equal(stepsPerBucket({steps: 1000000, buckets: 2000}), 500);
  assert.equal(stepsPerBucket({steps: 1000000, range_steps: 3001, buckets: 1100}), 3001 / 1100);
  assert.equal(stepsPerBucket({rangeSteps: 500, buckets: 1100}), 1);  // full resolution
  assert.equal(stepsPerBucket({steps: 10, buckets: 0}), Infinity);
  assert.equal(stepsPerBucket(null), Infinity);
});

test('needsZoomFetch: only when neither the whole run nor the loaded zoom is fine enough', () => {
  const full = {steps: 1000000, range_steps: 1000000, buckets: 2000};  // 500 steps per bucket
  assert.equal(needsZoomFetch(null, 1000, full, null), false, 'not zoomed');
  assert.equal(needsZoomFetch([0, 3000], 1000, full, null), true);
  assert.equal(needsZoomFetch([0, 900000], 1000, full, null), false, 'the whole run is about as fine');
  assert.equal(needsZoomFetch([0, 3000], 1000, {steps: 1500, range_steps: 1500, buckets: 1500}, null), false,
    'every row of the run is already its own bucket');
  // a loaded zoom that covers the window
  const zoom = {requested: [0, 20000], rangeSteps: 20001, buckets: 1000};  // ~20 per bucket
  assert.equal(needsZoomFetch([0, 20000], 1000, full, zoom), false, 'the same window again');
  assert.equal(needsZoomFetch([3000, 17000], 1000, full, zoom), false, 'within 1.5x of asked');
  assert.equal(needsZoomFetch([5000, 8000], 1000, full, zoom), true, 'zoomed further in');
  assert.equal(needsZoomFetch([19000, 25000], 1000, full, zoom), true, 'partly outside the loaded range');
  const exact = {requested: [100, 600], rangeSteps: 501, buckets: 501};  // range_steps <= buckets
  assert.equal(needsZoomFetch([200, 210], 1000, full, exact), false, 'full resolution needs no refetch');
  assert.equal(needsZoomFetch([50, 210], 1000, full, exact), true);
});

function decoded(stepMin, stepMax, loss, extra = {}) {
  return decodeTimeline({step_min: stepMin, step_max: stepMax,
    series: {loss: {min: loss, max: loss.map((v) => (typeof v === 'number' ? v * 2 : v))}, ...extra},
    nonfinite: stepMin.map(() => 0), anomalies: [{step: 5, peak_step: 6}]});
}

test('mergeTimelines puts the fine buckets in place of the coarse ones they overlap', () => {
  const full = decoded([0, 10, 20, 30], [9, 19, 29, 39], [1, 2, 3, 4], {lr: {min: [1, 1, 1, 1], max: [1, 1, 1, 1]}});
  const zoom = decodeTimeline({step_min: [12, 14, 16], step_max: [13, 15, 21],
    series: {loss: {min: [5, 'NaN', 7], max: [5, 'Infinity', 7]}}, nonfinite: [0, 1, 0], anomalies: []});
  const m = mergeTimelines(full, zoom, [12, 21]);
  assert.deepEqual(m.stepMin, [0, 12, 14, 16, 30]);
  assert.deepEqual(m.stepMax, [9, 13, 15, 21, 39]);
  assert.deepEqual(m.x, [4.5, 12.5, 14.5, 18.5, 34.5]);
  assert.equal(m.series.loss.min[1], 5);
  assert.ok(Number.isNaN(m.series.loss.min[2]));
  assert.equal(m.series.loss.max[2], Infinity);
  assert.deepEqual(m.series.lr.min, [1, null, null, null, 1], 'a series the range lacks is a gap there');
  assert.deepEqual(m.nonfinite, [false, false, true, false, false]);
  assert.equal(m.anomalies, full.anomalies);
  assert.deepEqual(m.zoomRange, [12, 21]);
  // x ascending
  for (let i = 1; i < m.x.length; i++) assert.ok(m.x[i] > m.x[i - 1]);
  // the range at the run's ends
  const ends = mergeTimelines(full, decoded([0, 1], [0, 1], [9, 9]), [0, 1]);
  assert.deepEqual(ends.stepMin, [0, 1, 10, 20, 30]);
  // an empty range answer: the whole run
  const none = mergeTimelines(full, decodeTimeline({step_min: [], step_max: [], series: {}}), [41, 50]);
  assert.deepEqual(none.stepMin, full.stepMin);
  assert.deepEqual(none.zoomRange, [41, 50]);
  assert.equal(full.zoomRange, undefined, 'the input is not changed');
});

test('visibleBuckets: the buckets overlapping a window and their widths', () => {
  const d = decoded([0, 10, 12, 14, 30], [9, 11, 13, 29, 39], [1, 2, 3, 4, 5]);
  assert.deepEqual(visibleBuckets(d, 10.5, 13.2), {buckets: 2, maxSteps: 2, meanSteps: 2});
  assert.deepEqual(visibleBuckets(d, -Infinity, Infinity), {buckets: 5, maxSteps: 16, meanSteps: 8});
  assert.deepEqual(visibleBuckets(d, 50, 60), {buckets: 0, maxSteps: 0, meanSteps: 0});
  assert.deepEqual(visibleBuckets(null, 0, 1), {buckets: 0, maxSteps: 0, meanSteps: 0});
});

test('formatStepTick: short labels only where they tell the ticks apart', async () => {
  const {formatStepTick} = await import('../../../tb_stability/static/model.js');
  assert.equal(formatStepTick(500000, 50000), '500k');
  assert.equal(formatStepTick(499500, 500), '499,500');
  assert.equal(formatStepTick(499000, 1000), '499k');
  assert.equal(formatStepTick(1500000, 500000), '1.5M');
  assert.equal(formatStepTick(1001000, 1000), '1,001,000');
  assert.equal(formatStepTick(950, 50), '950');
  assert.equal(formatStepTick(12000, 1000), '12k');
  assert.equal(formatStepTick(NaN, 1), '');
});

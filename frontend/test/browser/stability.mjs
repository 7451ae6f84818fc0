// Browser test of the Stability tab against a real `tensorboard`.
// Playwright (playwright-core) drives Debian's chromium.
//
//   node test/browser/stability.mjs --url http://127.0.0.1:6006 \
//     --chromium /usr/bin/chromium --artifacts ../test-artifacts \
//     [--html-run '<img src=x onerror=alert(1)>'] [--big-run synthetic-1m] \
//     [--docs ../docs/stability-tab.png] [--run seed002-bad]
// (--docs also writes stability-tab-dark.png and runs-overview.png next to it.)
//
// Exits non-zero on the first failed check; screenshots go to
// ARTIFACTS/screenshots/: every view (overview, timeline, run view with the
// card, heatmap, Adam chart, early-run zoom, ...) in light (NAME.png) and
// dark (NAME-dark.png), at 1600x1000. Prints "BENCH timeline_draw_ms=..."
// for the 1M-step run.

import assert from 'node:assert/strict';
import {copyFileSync, mkdirSync} from 'node:fs';
import {dirname, join} from 'node:path';
import {parseArgs} from 'node:util';
import {chromium} from 'playwright-core';

import {causeRegistry, causeStyle, shapePath, storyRange} from '../../../tb_stability/static/model.js';

const {values: args} = parseArgs({options: {
  url: {type: 'string'}, chromium: {type: 'string', default: '/usr/bin/chromium'},
  artifacts: {type: 'string', default: 'test-artifacts'}, 'html-run': {type: 'string'},
  'big-run': {type: 'string'}, docs: {type: 'string'}, run: {type: 'string'},
  'max-draw-ms': {type: 'string', default: '1000'},
}});
assert.ok(args.url, '--url is required');
const BASE = args.url.replace(/\/$/, '');
const API = `${BASE}/data/plugin/tb_stability`;
const SHOTS = join(args.artifacts, 'screenshots');
mkdirSync(SHOTS, {recursive: true});

const log = (...a) => console.log('[browser]', ...a);
async function getJSON(path) {
  const r = await fetch(API + path);
  assert.equal(r.status, 200, `${path}: HTTP ${r.status}`);
  return r.json();
}

const browser = await chromium.launch({executablePath: args.chromium, args: ['--no-sandbox', '--disable-gpu']});
const VIEWPORT = {width: 1600, height: 1000};
const context = await browser.newContext({viewport: VIEWPORT, deviceScaleFactor: 1});
const page = await context.newPage();
const errors = [];
let dialogs = 0;
page.on('pageerror', (e) => errors.push(`pageerror: ${e.message}`));
page.on('console', (m) => {
  if (m.type() === 'error' && m.location().url.includes('tb_stability')) errors.push(`console: ${m.text()}`);
});
page.on('dialog', async (d) => { dialogs++; await d.dismiss(); });
let timelineRequests = 0;
const timelineUrls = [];
page.on('request', (r) => {
  if (r.url().includes('/data/plugin/tb_stability/timeline')) { timelineRequests++; timelineUrls.push(r.url()); }
  if (r.url().includes('/data/plugin/tb_stability/overview')) overviewRequests++;
});
let overviewRequests = 0;

/** The size of a marker's SVG (its width attribute). */
async function markerSize(marker) {
  return Number(await marker.locator('svg').first().getAttribute('width'));
}

function pluginFrame() {
  const f = page.frames().find((fr) => fr.url().includes('plugin_entry.html?name=tb_stability'));
  assert.ok(f, 'the tab iframe exists');
  return f;
}

/** Waits for the timeline of `run` to be drawn (after clearing the marker). */
async function waitDrawn(frame, run, timeout = 60000) {
  await frame.waitForFunction((r) => {
    const m = document.querySelector('main.app');
    return m && m.dataset.run === r && m.dataset.drawMs;
  }, run, {timeout});
  return Number(await frame.evaluate(() => document.querySelector('main.app').dataset.drawMs));
}

async function selectRun(frame, run, timeout) {
  await frame.evaluate(() => { const m = document.querySelector('main.app'); m.dataset.drawMs = ''; m.dataset.run = ''; });
  await frame.locator('[data-testid=run-select]').selectOption(run);
  return waitDrawn(frame, run, timeout);
}

/** The heatmap's drawn colour at the centre of every cell, [row][col] ->
 * [r, g, b, a], read back from its canvas. */
async function heatmapPixels(frame) {
  return frame.evaluate(() => {
    const cv = document.querySelector('[data-testid=heatmap-canvas]');
    const d = window.tbStability.heatmap.d;
    const rows = d.variables.length, cols = d.steps.length;
    const px = cv.getContext('2d').getImageData(0, 0, cv.width, cv.height).data;
    const out = [];
    for (let i = 0; i < rows; i++) {
      const row = [];
      for (let j = 0; j < cols; j++) {
        const x = Math.floor((j + 0.5) * cv.width / cols), y = Math.floor((i + 0.5) * cv.height / rows);
        const k = 4 * (y * cv.width + x);
        row.push([px[k], px[k + 1], px[k + 2], px[k + 3]]);
      }
      out.push(row);
    }
    return {cells: out, steps: d.steps};
  });
}

const NAN_RGB = [229, 57, 53];  // views/heatmap.js NONFINITE: the legend's NaN/Inf colour
const isNanColour = ([r, g, b, a]) => a > 200 && Math.abs(r - NAN_RGB[0]) < 8 &&
  Math.abs(g - NAN_RGB[1]) < 8 && Math.abs(b - NAN_RGB[2]) < 8;

/** The heatmap draws a cell the backend sent as null ("not measured") blank,
 * never in the NaN colour, and a real "NaN"/"Infinity" in the NaN colour.
 * Returns the numbers of null and non-finite cells seen. */
async function checkHeatmapCells(frame, detail) {
  const stat = await frame.locator('[data-testid=heatmap-stat]').inputValue();
  const sent = detail.evidence.stats[stat];
  const {cells, steps} = await heatmapPixels(frame);
  const hl = detail.evidence.highlight || {};
  const lineCols = new Set([hl.onset_step, hl.peak_step].map((s) => steps.indexOf(s)));
  let nulls = 0, nans = 0;
  sent.forEach((row, i) => row.forEach((v, j) => {
    if (lineCols.has(j) || lineCols.has(j - 1) || lineCols.has(j + 1)) return;  // under the onset/peak lines
    const rgba = cells[i][j];
    if (v === null) {
      nulls++;
      assert.ok(!isNanColour(rgba), `${stat}: unmeasured cell (${detail.evidence.variables[i]}, step ${steps[j]}) drawn in the NaN colour`);
      assert.ok(rgba[3] < 60 || i === (hl.index ?? -1), `${stat}: unmeasured cell at step ${steps[j]} is blank (rgba ${rgba})`);
    } else if (typeof v === 'string') {
      nans++;
      // a real NaN/Inf only where the step counted non-finite values
      const g = detail.global.steps.indexOf(steps[j]);
      assert.ok(g >= 0 && detail.global.series.nonfinite[g] > 0,
        `${stat}: ${v} at step ${steps[j]}, a step without non-finite values (not measured?)`);
      assert.ok(isNanColour(rgba), `${stat}: ${v} cell at step ${steps[j]} drawn in the NaN colour (rgba ${rgba})`);
    } else {
      assert.ok(!isNanColour(rgba), `${stat}: a finite cell at step ${steps[j]} in the NaN colour`);
    }
  }));
  return {nulls, nans};
}

async function shot(name, frameOnly = true) {
  const path = join(SHOTS, name);
  if (frameOnly) await page.locator('iframe').first().screenshot({path});
  else await page.screenshot({path, fullPage: false});
  log('screenshot', path);
  return path;
}

/** Switches TensorBoard's dark mode on or off and waits for the tab to follow
 * (and its charts to redraw). */
async function setDark(frame, on) {
  await page.evaluate((d) => document.body.classList.toggle('dark-mode', d), on);
  await frame.waitForFunction((d) => document.body.classList.contains('dark') === d, on);
  await page.waitForTimeout(400);
}

/** Screenshots of the tab (or of one element of it, a locator in the frame)
 * in light, NAME.png, and in dark, NAME-dark.png; leaves the tab light. */
async function shots(frame, name, what = null) {
  const take = async (file) => {
    const path = join(SHOTS, file);
    await (what || page.locator('iframe').first()).screenshot({path});
    log('screenshot', path);
    return path;
  };
  const light = await take(`${name}.png`);
  await setDark(frame, true);
  const dark = await take(`${name}-dark.png`);
  await setDark(frame, false);
  return {light, dark};
}

/** The run view fits: the cause card and the Adam chart show whole, not cut
 * and not scrolled inside a panel. Each element's content fits its box
 * (scrollHeight <= clientHeight, and so for every scrollable box inside it).
 * With `onScreen`, their bottom is also inside the tab's viewport with the
 * tab not scrolled (the 1600x1000 layout); without it the page may scroll.
 * Returns the measures. */
async function checkFits(frame, what, onScreen) {
  const m = await frame.evaluate(() => {
    window.scrollTo(0, 0);
    const measure = (testid) => {
      const e = document.querySelector(`[data-testid=${testid}]`);
      if (!e) return null;
      const b = e.getBoundingClientRect();
      // boxes inside it that scroll or clip their content, and cut it
      const cut = [e, ...e.querySelectorAll('*')].filter((x) => {
        const oy = getComputedStyle(x).overflowY;
        return x === e ? x.scrollHeight > x.clientHeight + 1
          : (oy === 'auto' || oy === 'scroll' || oy === 'hidden') && x.scrollHeight > x.clientHeight + 1 &&
            x.clientHeight > 0 && !x.classList.contains('u-over') && !x.classList.contains('u-under');
      }).map((x) => `${x.tagName.toLowerCase()}.${[...x.classList].join('.')} ${x.scrollHeight}>${x.clientHeight}`);
      return {top: b.top, bottom: b.bottom, height: b.height, scrollHeight: e.scrollHeight, clientHeight: e.clientHeight, cut};
    };
    return {viewport: [innerWidth, innerHeight], page: document.scrollingElement.scrollHeight,
      card: measure('cause-card'), adam: measure('adam-chart'), heatmap: measure('heatmap')};
  });
  log(`fit (${what})`, JSON.stringify(m));
  for (const key of ['card', 'adam']) {
    const e = m[key];
    assert.ok(e, `${what}: the ${key} is shown`);
    assert.ok(e.height > 40, `${what}: the ${key} is drawn (${e.height} px)`);
    assert.deepEqual(e.cut, [], `${what}: nothing in the ${key} is cut or scrolls inside it`);
    assert.ok(e.scrollHeight <= e.clientHeight + 1, `${what}: the ${key}'s content fits it (${e.scrollHeight} > ${e.clientHeight})`);
    if (onScreen) {
      assert.ok(e.top >= 0 && e.bottom <= m.viewport[1] + 0.5,
        `${what}: the ${key} is whole on screen (${e.top.toFixed(0)}..${e.bottom.toFixed(0)} px of ${m.viewport[1]})`);
    }
  }
  if (onScreen) {
    assert.ok(m.page <= m.viewport[1] + 1, `${what}: the run view needs no scroll (${m.page} px in ${m.viewport[1]})`);
  }
  return m;
}

/** 10. Zooming the 1M-step run fetches the zoomed range at the chart's
 * width (a few steps per bucket), a newer zoom supersedes an older
 * request, and a reset goes back to the cached whole run. */
async function zoomChecks(f, run, big) {
  const box = f.locator('[data-testid=timeline]');
  const attrs = () => box.evaluate((b) => ({
    per: Number(b.dataset.stepsPerBucket), n: Number(b.dataset.visibleBuckets),
    range: b.dataset.zoomRange ? b.dataset.zoomRange.split(',').map(Number) : null}));
  const rangeUrls = () => timelineUrls.filter((u) => /[?&]first=\d+/.test(u) && /[?&]last=\d+/.test(u))
    .map((u) => new URL(u)).filter((u) => u.searchParams.get('run') === run);
  const zoomedTo = (lo, hi, timeout = 30000) => f.waitForFunction(([a, b]) => {
    const r = document.querySelector('[data-testid=timeline]').dataset.zoomRange;
    if (!r) return false;
    const [x, y] = r.split(',').map(Number);
    return x <= a && y >= b && y - x < (b - a) * 2 + 100;
  }, [lo, hi], {timeout});
  const whole = await attrs();
  assert.equal(whole.range, null, 'not zoomed');
  assert.ok(whole.per > 100, `the whole 1M-step run is in coarse buckets (${whole.per} steps)`);
  const nMarkers = await f.locator('[data-testid=anomaly-marker]').count();

  const ob = await f.locator('[data-testid=timeline] .u-over').boundingBox();
  const toX = (step) => f.evaluate((s) => window.tbStability.timelineView.loss.valToPos(s, 'x'), step);
  const y = ob.y + ob.height - 12;  // below the markers
  async function drag(a, b) {
    const xa = ob.x + await toX(a), xb = ob.x + await toX(b);
    await page.mouse.move(xa, y);
    await page.mouse.down();
    await page.mouse.move((xa + xb) / 2, y, {steps: 4});
    await page.mouse.move(xb, y, {steps: 4});
    await page.mouse.up();
  }
  const spike = 500000;
  const near = big.anomalies.map((a) => a.peak_step ?? a.step).sort((a, b) => Math.abs(a - spike) - Math.abs(b - spike))[0];
  assert.ok(Math.abs(near - spike) < 1000, `an anomaly at the planted spike ${spike} (nearest ${near})`);

  // a mouse drag over ~30k steps, then a second one over ~3k inside it
  const n0 = rangeUrls().length;
  await drag(spike - 15000, spike + 15000);
  await zoomedTo(spike - 14000, spike + 14000);
  assert.ok(rangeUrls().length > n0, 'the zoom fetched its range with first/last');
  let z = await attrs();
  assert.ok(z.per <= 40, `~30k steps zoomed: buckets of ${z.per} steps`);
  await drag(spike - 1500, spike + 1500);
  await zoomedTo(spike - 1400, spike + 1400);
  z = await attrs();
  const last = rangeUrls().at(-1);
  const [qf, ql, qw] = ['first', 'last', 'width'].map((k) => Number(last.searchParams.get(k)));
  assert.ok(qf <= spike && ql >= spike && ql - qf < 4000, `the range asked for: ${qf}..${ql}`);
  assert.ok(Math.abs(qw - ob.width) <= 2, `asked at the chart's pixel width (${qw} for ${ob.width} px)`);
  assert.ok(z.per <= 4, `a few-thousand-step zoom draws buckets of at most a few steps (${z.per})`);
  assert.ok(z.n >= 500, `with many buckets in view (${z.n})`);
  const around = await f.evaluate((s) => {
    const d = window.tbStability.timelineView.data;
    const i = d.stepMin.findIndex((m, k) => m <= s && d.stepMax[k] >= s);
    return {w: d.stepMax[i] - d.stepMin[i] + 1, sub: document.querySelector('.timeline .chart-sub').textContent};
  }, near);
  assert.ok(around.w <= 4, `the spike's bucket is ${around.w} steps wide`);
  assert.match(around.sub, /per (step|bucket of ~\d steps)/);
  // markers, signal strip and the log toggle still work on the zoomed data
  assert.equal(await f.locator('[data-testid=anomaly-marker]').count(), nMarkers);
  assert.equal(await f.locator(`[data-testid=anomaly-marker][data-peak-step="${near}"]`).first()
    .evaluate((m) => m.style.display), '', 'the spike marker is shown');
  const stripPoints = await f.evaluate(() => window.tbStability.timelineView.signalCharts.map((c) => c.u.data[0].length));
  const lossPoints = await f.evaluate(() => window.tbStability.timelineView.loss.data[0].length);
  assert.ok(stripPoints.every((n) => n === lossPoints), 'the strip draws the same buckets as the loss');
  await shot('zoomed.png');
  const before = rangeUrls().length;
  await f.locator('[data-testid=log-toggle]').click();
  await page.waitForTimeout(400);
  z = await attrs();
  assert.ok(z.per <= 4 && z.range, 'the log toggle keeps the zoomed buckets');
  await f.locator('[data-testid=log-toggle]').click();
  await page.evaluate(() => document.body.classList.add('dark-mode'));
  await f.waitForFunction(() => document.body.classList.contains('dark'));
  await page.waitForTimeout(400);
  assert.ok((await attrs()).per <= 4, 'dark mode keeps the zoomed buckets');
  await page.evaluate(() => document.body.classList.remove('dark-mode'));
  await f.waitForFunction(() => !document.body.classList.contains('dark'));
  assert.equal(rangeUrls().length, before, 'redrawing needed no refetch');

  // a newer zoom supersedes a slower older request
  let delay = 2500;
  const handler = async (route) => {
    const d = /[?&]first=/.test(route.request().url()) ? delay : 0;
    if (d) delay = 0;
    if (d) await new Promise((r) => setTimeout(r, d));
    try { await route.continue(); } catch (e) { /* aborted by the page */ }
  };
  await page.route(/\/data\/plugin\/tb_stability\/timeline\?/, handler);
  const setX = (lo, hi) => f.evaluate(([a, b]) => window.tbStability.timelineView.loss.setScale('x', {min: a, max: b}), [lo, hi]);
  const n1 = rangeUrls().length;
  await setX(123456 - 2000, 123456 + 2000);
  const t1 = Date.now();
  while (rangeUrls().length === n1 && Date.now() - t1 < 5000) await page.waitForTimeout(50);
  assert.ok(rangeUrls().length > n1, 'the first zoom was requested');
  await setX(987654 - 1500, 987654 + 1500);
  await zoomedTo(987654 - 1400, 987654 + 1400);
  await page.waitForTimeout(3000);  // the slow first answer would have come by now
  z = await attrs();
  assert.ok(z.range[0] <= 987654 && z.range[1] >= 987654, `the newer zoom stays drawn (${z.range})`);
  await page.unroute(/\/data\/plugin\/tb_stability\/timeline\?/, handler);

  // double-click resets to the cached whole run, without a request
  const n2 = timelineRequests;
  await page.mouse.dblclick(ob.x + ob.width / 2, y);
  await f.waitForFunction(() => document.querySelector('[data-testid=timeline]').dataset.zoomRange === '');
  await page.waitForTimeout(500);
  z = await attrs();
  assert.equal(z.per, whole.per, 'back to the whole-run buckets');
  assert.equal(z.n, whole.n);
  assert.equal(timelineRequests, n2, 'the reset used the cached whole run');
  assert.equal(await f.locator('[data-testid=reset-zoom]').isHidden(), true);
  log('zoom refetch ok', `stats ${JSON.stringify(await f.evaluate(() => window.tbStability.stats))}`);
}

/** 0. Several runs: the tab lands on the runs overview, which lists every
 * run with the backend's status and first anomaly, worst first, filters by
 * cause, and opens a run on click. Ends with `open` drawn. */
async function overviewChecks(frame, runs, open) {
  await frame.locator('[data-testid=overview-row]').first().waitFor({timeout: 120000});
  await frame.waitForFunction(() => document.querySelector('main.app').dataset.overviewPending === '0', null, {timeout: 240000});
  assert.equal(await frame.evaluate(() => document.querySelector('main.app').dataset.view), 'overview', 'the landing view');
  assert.equal(await frame.locator('[data-testid=timeline]').isVisible(), false, 'no run drawn under it');
  const ov = await getJSON('/overview');
  assert.deepEqual(ov.runs.map((r) => r.run).sort(), [...runs].sort(), 'GET overview has every run');
  const rowsOf = () => frame.locator('[data-testid=overview-row]').evaluateAll((rs) => rs.map((r) => ({
    run: r.dataset.run, status: r.dataset.status, cause: r.dataset.cause, step: r.dataset.step, text: r.textContent})));
  const rows = await rowsOf();
  assert.deepEqual(rows.map((r) => r.run), ov.runs.map((r) => r.run), 'every run, in the backend order (worst first)');
  const rank = {'nonfinite': 0, 'anomalies': 1, 'healthy': 2, 'no data': 3};
  for (let i = 1; i < ov.runs.length; i++) assert.ok(rank[ov.runs[i - 1].status] <= rank[ov.runs[i].status], 'worst status first');
  ov.runs.forEach((r, i) => {
    const row = rows[i];
    assert.equal(row.status, r.status, `${r.run}: status`);
    assert.equal(row.cause, r.first ? r.first.cause : '', `${r.run}: first anomaly's cause`);
    assert.equal(row.step, r.first ? String(r.first.step) : '', `${r.run}: first anomaly's step`);
    if (r.first) {
      assert.ok(row.text.includes(`${Math.round(r.first.confidence * 100)}%`), `${r.run}: its confidence shown`);
      assert.ok(row.text.includes(r.first.kind), `${r.run}: its kind shown`);
    }
  });
  // each run's first anomaly is /timeline's first (the one the run view shows)
  for (const r of ov.runs.slice(0, 12)) {
    if (r.run === args['big-run']) continue;
    const t = await getJSON(`/timeline?run=${encodeURIComponent(r.run)}&width=50`);
    assert.equal(r.anomalies, t.anomalies.length, `${r.run}: the count`);
    if (t.anomalies.length) {
      assert.equal(r.first.step, t.anomalies[0].step);
      assert.equal(r.first.cause, t.anomalies[0].cause.cause);
      assert.equal(r.first.confidence, t.anomalies[0].cause.confidence);
    }
  }
  await shot('overview.png');
  if (args.docs) {
    const path = join(dirname(args.docs), 'runs-overview.png');
    await page.locator('iframe').first().screenshot({path});
    log('docs screenshot', path);
  }
  // the cause filter
  const causes = Object.keys(ov.cause_counts);
  if (causes.length) {
    const cause = causes.includes('adam_epsilon') ? 'adam_epsilon' : causes[0];
    await frame.locator('[data-testid=overview-filter]').selectOption(cause);
    const shown = (await rowsOf()).map((r) => r.run);
    assert.deepEqual(shown, ov.runs.filter((r) => r.causes.includes(cause)).map((r) => r.run), `filtered by ${cause}`);
    assert.equal(shown.length, ov.cause_counts[cause]);
    await frame.locator('[data-testid=overview-filter]').selectOption('');
    assert.equal((await rowsOf()).length, ov.runs.length, 'the filter cleared');
  }
  // dark
  await page.evaluate(() => document.body.classList.add('dark-mode'));
  await frame.waitForFunction(() => document.body.classList.contains('dark'));
  await page.waitForTimeout(200);
  await shot('overview-dark.png');
  await page.evaluate(() => document.body.classList.remove('dark-mode'));
  await frame.waitForFunction(() => !document.body.classList.contains('dark'));
  // TensorBoard's reload button refetches the overview (runs that arrived, runs still training)
  const before = overviewRequests;
  const reloads = await frame.evaluate(() => window.tbStability.stats.reloads);
  await page.locator('button.reload-button, button[aria-label="Reload"], [title="Reload data"]').first().click();
  await frame.waitForFunction((n) => window.tbStability.stats.reloads > n, reloads, {timeout: 20000});
  const t1 = Date.now();
  while (overviewRequests === before && Date.now() - t1 < 10000) await page.waitForTimeout(100);
  assert.ok(overviewRequests > before, 'reload refetched the overview');
  await frame.waitForFunction(() => document.querySelector('main.app').dataset.overviewPending === '0', null, {timeout: 60000});
  assert.equal(await frame.evaluate(() => document.querySelector('main.app').dataset.view), 'overview', 'still the overview after a reload');
  // a click opens the run
  await frame.evaluate(() => { const m = document.querySelector('main.app'); m.dataset.drawMs = ''; m.dataset.run = ''; });
  await frame.locator(`[data-testid=overview-row][data-run="${open}"]`).click();
  await waitDrawn(frame, open);
  assert.equal(await frame.evaluate(() => document.querySelector('main.app').dataset.view), 'run');
  assert.equal(await frame.locator('[data-testid=overview]').isVisible(), false, 'the overview is hidden');
  assert.equal(await frame.locator('[data-testid=run-select]').inputValue(), open, 'the select shows the opened run');
  const o = ov.runs.find((r) => r.run === open);
  if (o.first) {
    const markerStep = await frame.locator('[data-testid=anomaly-marker]').evaluateAll((ms) => Math.min(...ms.map((m) => Number(m.dataset.step))));
    assert.equal(markerStep, o.first.step, 'the run opened has the first anomaly the overview showed');
  }
  // "all runs" in the select comes back, and a second click opens it again
  await frame.locator('[data-testid=run-select]').selectOption('');
  await frame.locator('[data-testid=overview-row]').first().waitFor();
  assert.equal(await frame.locator('[data-testid=timeline]').isVisible(), false);
  await frame.evaluate(() => { const m = document.querySelector('main.app'); m.dataset.drawMs = ''; m.dataset.run = ''; });
  await frame.locator(`[data-testid=overview-row][data-run="${open}"]`).press('Enter');
  await waitDrawn(frame, open);
  log('overview ok', ov.runs.length, 'runs', JSON.stringify(ov.status_counts));
}

const t0 = Date.now();
try {
  const runs = (await getJSON('/runs')).runs.map((r) => r.run);
  assert.ok(runs.length > 0, 'the backend lists runs');
  // The served cause registry: every shape one that shapePath draws (an
  // unknown name would fall back to the circle), colours and shapes apart.
  const registry = causeRegistry(await getJSON('/causes'));
  assert.ok(registry.ids.includes('unknown') && registry.ids.length >= 2, 'GET causes lists the causes');
  for (const id of registry.ids) {
    const {shape} = registry.byId.get(id);
    assert.ok(shape === 'circle' || shapePath(shape, 12) !== shapePath('circle', 12), `${id}: shapePath cannot draw ${shape}`);
  }
  const styles = registry.ids.map((id) => registry.byId.get(id));
  assert.equal(new Set(styles.map((c) => c.color)).size, styles.length, 'one colour per cause');
  assert.equal(new Set(styles.map((c) => c.shape)).size, styles.length, 'one shape per cause');

  // 1. The tab appears and draws the first run.
  await page.goto(`${BASE}/#tb_stability`);
  await page.getByText('Stability', {exact: true}).first().waitFor({timeout: 60000});
  await page.waitForSelector('iframe', {timeout: 60000});
  const frame = pluginFrame();
  await frame.locator('[data-testid=run-select]').waitFor({timeout: 60000});
  const options = await frame.locator('[data-testid=run-select] option').evaluateAll((os) => os.map((o) => o.value));
  assert.deepEqual(options.filter((v) => v !== ''), runs, 'the run selector lists the runs of /runs');
  if (runs.length > 1) assert.equal(options[0], '', 'and "all runs" (the overview) first');

  // 2. The main run: markers = anomalies; click one -> the right cause, layer, heatmap row.
  const candidates = [];
  for (const run of runs) {
    if (run === args['big-run'] || run === args['html-run']) continue;
    const t = await getJSON(`/timeline?run=${encodeURIComponent(run)}&width=50`);
    candidates.push({run, t});
  }
  const main = candidates.find((c) => c.run === args.run) ||
    candidates.find((c) => c.t.anomalies.some((a) => a.cause && a.cause.variable)) ||
    candidates.find((c) => c.t.anomalies.length) || candidates[0];
  assert.ok(main, 'a run to test');
  log('main run', main.run, 'anomalies', main.t.anomalies.length);
  if (runs.length > 1) await overviewChecks(frame, runs, main.run);
  else await selectRun(frame, main.run);
  const markers = frame.locator('[data-testid=anomaly-marker]');
  assert.equal(await markers.count(), main.t.anomalies.length, 'one marker per anomaly');
  const markerSteps = await markers.evaluateAll((ms) => ms.map((m) => Number(m.dataset.step)));
  assert.deepEqual([...markerSteps].sort((a, b) => a - b), main.t.anomalies.map((a) => a.step).sort((a, b) => a - b));
  for (const a of main.t.anomalies) {
    const m = frame.locator(`[data-testid=anomaly-marker][data-step="${a.step}"]`).first();
    const id = a.cause ? a.cause.cause : 'unknown';
    assert.equal(await m.getAttribute('data-cause'), id);
    // drawn in the served registry's style
    const style = causeStyle(id, registry);
    assert.equal(await m.locator('path').first().getAttribute('fill'), style.color, `${id}: the registry's colour`);
    assert.equal(await m.locator('path').first().getAttribute('d'), shapePath(style.shape, await markerSize(m)), `${id}: the registry's shape`);
  }
  // A log loss axis is labelled every decade or few (uPlot's own filter
  // left two labels over 15 decades), and no label is left blank.
  const axis = await frame.evaluate(() => {
    const v = window.tbStability.timelineView;
    return {log: v.log, values: v.loss.axes[1]._values, min: v.loss.scales.y.min, max: v.loss.scales.y.max,
      strips: v.signalCharts.map((c) => c.u.axes[1]._values)};
  });
  if (axis.log) {
    const decades = Math.log10(axis.max / axis.min);
    assert.ok(axis.values.every((t) => t !== ''), `every log tick labelled: ${axis.values}`);
    assert.ok(axis.values.length >= Math.min(5, Math.floor(decades / 3)), `${axis.values.length} labels over ${decades.toFixed(0)} decades`);
  }
  for (const vals of axis.strips) assert.ok(vals.every((t) => t !== ''), `strip ticks labelled: ${vals}`);
  const legend = await frame.locator('[data-testid=legend] .legend-item').evaluateAll((is) => is.map((i) => [i.dataset.cause, i.textContent]));
  for (const [id, text] of legend) assert.ok(text.includes(causeStyle(id, registry).label), `legend: ${id} labelled from the registry`);
  await shots(frame, 'timeline');

  if (main.t.anomalies.length) {
    const target = main.t.anomalies.find((a) => a.cause && a.cause.variable) || main.t.anomalies[0];
    await frame.locator(`[data-testid=anomaly-marker][data-step="${target.step}"]`).first().click();
    const card = frame.locator('[data-testid=cause-card]');
    await card.waitFor();
    assert.equal(await card.getAttribute('data-step'), String(target.step));
    const detail = await getJSON(`/anomaly?run=${encodeURIComponent(main.run)}&step=${target.step}`);
    const top = detail.causes[0];
    assert.equal(await frame.locator('[data-testid=cause-id]').textContent(), top.cause, 'the card shows the top cause');
    assert.equal(await frame.locator('[data-testid=cause-title]').textContent(), top.title);
    const variableText = await frame.locator('[data-testid=cause-variable]').textContent();
    if (top.variable) {
      assert.equal(variableText, top.variable, 'the card shows the implicated variable');
      assert.equal(top.layer, top.variable.includes('/') ? top.variable.slice(0, top.variable.lastIndexOf('/')) : top.variable,
        "the cause's layer is its variable's layer");
      if (detail.evidence.highlight) assert.equal(detail.evidence.highlight.variable, top.variable, 'the heatmap highlights that variable');
    } else {
      assert.match(variableText, /none implicated/);
    }
    assert.equal(await frame.locator('[data-testid=cause-fix]').textContent(), top.fix);
    // every number on the card in words: what "how bad" measures, no bare dashes
    const cardText = await card.textContent();
    assert.ok(!/severity \d/.test(cardText), 'no bare "severity N"');
    if (await frame.locator('[data-testid=anomaly-severity]').count()) {
      assert.match(await frame.locator('[data-testid=anomaly-severity]').textContent(), /decades? above|non-finite steps?|of the run/);
    }
    if (await frame.locator('[data-testid=anomaly-loss]').count()) {
      assert.ok(!(await frame.locator('[data-testid=anomaly-loss]').textContent()).includes('\u2014'), 'the loss line has no dash for a number');
    }
    assert.equal(await frame.locator('[data-testid=cause-evidence] li').count(), (top.evidence || []).length);
    await frame.locator('[data-testid=heatmap-row]').first().waitFor({timeout: 30000});
    const rows = await frame.locator('[data-testid=heatmap-row]').evaluateAll((rs) => rs.map((r) => r.dataset.variable));
    assert.deepEqual(rows, detail.evidence.variables, 'one heatmap row per variable');
    const hl = detail.evidence.highlight;
    const marked = frame.locator('[data-testid=heatmap-row][data-highlight="true"]');
    if (hl && hl.variable) {
      assert.equal(await marked.count(), 1);
      assert.equal(await marked.getAttribute('data-variable'), hl.variable, 'the heatmap highlights the implicated variable');
      assert.equal(await marked.getAttribute('aria-current'), 'true');
      assert.equal(await frame.locator('[data-testid=adam-variable]').textContent(), hl.variable);
      if (main.t.optimizer && main.t.optimizer.adam) {
        // every series on an axis of its own unit: no loss drawn on the sqrt(v) axis
        const labels = await frame.evaluate(() => window.tbStability.adam.u ? window.tbStability.adam.u.series.map((x) => x.label) : []);
        assert.ok(labels.length && !labels.includes('loss'), `Adam chart series: ${labels}`);
        assert.ok(labels.some((l) => /largest/.test(l)), 'the largest effective step of any variable (what the sentences quote) is drawn');
      }
    } else {
      assert.equal(await marked.count(), 0);
    }
    if (hl && hl.onset_step !== null) {
      assert.equal(await frame.locator('[data-testid=heatmap-onset]').getAttribute('data-step'), String(hl.onset_step));
    }
    // The evidence window holds the steps the sentences name (those within
    // reach of the anomaly: per-step detail is kept around it), each marked.
    const cited = detail.evidence.cited_steps || [];
    const evSteps = detail.evidence.steps;
    const reach = [target.step - 32 - 1024, target.peak_step + 8 + 1024];
    for (const st of cited) {
      if (st < reach[0] || st > reach[1]) continue;
      assert.ok(evSteps[0] <= st && st <= evSteps[evSteps.length - 1], `cited step ${st} in the window ${evSteps[0]}..${evSteps.at(-1)}`);
      assert.equal(await frame.locator(`[data-testid=heatmap-cited][data-step="${st}"]`).count(), 1, `cited step ${st} marked`);
    }
    for (const sentence of top.evidence || []) {
      for (const m of sentence.matchAll(/\bat step ([0-9][0-9,]*)/g)) {
        assert.ok(cited.includes(Number(m[1].replace(/,/g, ''))), `"${sentence}": its step is listed as cited`);
      }
    }
    log('cited steps in the window', JSON.stringify(cited), `${evSteps[0]}..${evSteps.at(-1)}`);
    await page.waitForTimeout(300);
    // The run view fits at 1600x1000, light and dark: card and Adam chart
    // whole on screen, nothing cut or scrolled inside them.
    await checkFits(frame, `${VIEWPORT.width}x${VIEWPORT.height} light`, true);
    const cardShots = await shots(frame, 'cause-card');
    await setDark(frame, true);
    await checkFits(frame, `${VIEWPORT.width}x${VIEWPORT.height} dark`, true);
    await setDark(frame, false);
    if (args.docs) {
      copyFileSync(cardShots.light, args.docs);
      const dark = args.docs.replace(/\.png$/, '-dark.png');
      copyFileSync(cardShots.dark, dark);
      log('docs screenshots', args.docs, dark);
    }
    await shots(frame, 'heatmap', frame.locator('[data-testid=heatmap]'));
    await shots(frame, 'adam-chart', frame.locator('[data-testid=adam-chart]'));
    // Readable at 1280x800: the page may scroll, nothing in the card or the
    // Adam chart is cut.
    await page.setViewportSize({width: 1280, height: 800});
    await frame.waitForFunction(() => document.querySelector('main.app').clientWidth < 1300);
    await page.waitForTimeout(800);
    await checkFits(frame, '1280x800', false);
    await shots(frame, 'cause-card-1280x800');
    await page.setViewportSize(VIEWPORT);
    await frame.waitForFunction(() => document.querySelector('main.app').clientWidth > 1500);
    await page.waitForTimeout(800);
    await checkFits(frame, `${VIEWPORT.width}x${VIEWPORT.height} again`, true);
    // The statistic selector redraws the heatmap with the same highlight;
    // each statistic's unmeasured cells are blank, its NaN cells red.
    const stats = await frame.locator('[data-testid=heatmap-stat] option').evaluateAll((os) => os.map((o) => o.value));
    let unmeasured = 0;
    for (const s of stats) {
      await frame.locator('[data-testid=heatmap-stat]').selectOption(s);
      if (hl && hl.variable) assert.equal(await marked.getAttribute('data-variable'), hl.variable);
      const seen = await checkHeatmapCells(frame, detail);
      unmeasured += seen.nulls;
      log('heatmap', s, JSON.stringify(seen));
    }
    if (main.run === 'seed002-bad') assert.ok(unmeasured > 0, 'seed002-bad has unmeasured cells (stats_every) to check');
    // Keyboard: j / k step through the anomalies.
    if (main.t.anomalies.length > 1) {
      const sorted = main.t.anomalies.slice().sort((a, b) => a.step - b.step);
      const i = sorted.findIndex((a) => a.step === target.step);
      await frame.locator('body').press('Escape');
      await card.waitFor({state: 'detached'});
      await frame.locator('[data-testid=anomaly-list]').waitFor();
      await frame.locator('body').press('j');
      await frame.waitForFunction((s) => document.querySelector('[data-testid=cause-card]')?.dataset.step === s, String(sorted[0].step));
      await frame.locator('body').press('j');
      await frame.waitForFunction((s) => document.querySelector('[data-testid=cause-card]')?.dataset.step === s, String(sorted[1].step));
      await frame.locator('body').press('k');
      await frame.waitForFunction((s) => document.querySelector('[data-testid=cause-card]')?.dataset.step === s, String(sorted[0].step));
      log('keyboard navigation ok', i);
    }
    // j/k right after choosing a run in the select (focus is still on it)
    if (main.t.anomalies.length > 1) {
      const other = candidates.find((c) => c.run !== main.run) || main;
      await selectRun(frame, other.run);
      await frame.locator('[data-testid=run-select]').focus();  // as a click on it leaves it
      await selectRun(frame, main.run);
      const focused = await frame.evaluate(() => document.activeElement && document.activeElement.dataset.testid);
      assert.equal(focused, 'run-select', 'the select keeps the focus after choosing a run');
      const sorted = main.t.anomalies.slice().sort((a, b) => a.step - b.step);
      await frame.locator('[data-testid=run-select]').press('j');
      await frame.waitForFunction((s) => document.querySelector('[data-testid=cause-card]')?.dataset.step === s, String(sorted[0].step));
      await frame.locator('[data-testid=run-select]').press('j');
      await frame.waitForFunction((s) => document.querySelector('[data-testid=cause-card]')?.dataset.step === s, String(sorted[1].step));
      await frame.locator('[data-testid=run-select]').press('k');
      await frame.waitForFunction((s) => document.querySelector('[data-testid=cause-card]')?.dataset.step === s, String(sorted[0].step));
      assert.equal(await frame.locator('[data-testid=run-select]').inputValue(), main.run, 'j/k did not type-ahead in the select');
      log('keys after the run select ok');
    }
  }

  // 3. A run without Adam says so in the signal strip.
  for (const c of candidates) {
    if (c.t.optimizer && c.t.optimizer.adam === false) {
      await selectRun(frame, c.run);
      const text = await frame.locator('[data-signal=rms_ratio_max]').textContent();
      assert.match(text, /not Adam-family/);
      log('no-Adam run ok', c.run);
      break;
    }
  }
  // A run whose anomalies are all in its first steps opens zoomed to them.
  const early = candidates.find((c) => storyRange(c.t.anomalies, c.t.first_step, c.t.last_step));
  if (early) {
    await selectRun(frame, early.run);
    await frame.waitForFunction(() => window.tbStability.timelineView.xRange() !== null, null, {timeout: 30000});
    const [lo, hi] = await frame.evaluate(() => window.tbStability.timelineView.xRange());
    const last = Math.max(...early.t.anomalies.map((a) => a.peak_step));
    assert.ok(lo <= early.t.first_step + 1 && hi >= last && hi - lo < (early.t.last_step - early.t.first_step) / 4,
      `${early.run} opens on ${lo}..${hi} (anomalies up to ${last} of ${early.t.last_step})`);
    assert.match(await frame.locator('[data-testid=run-facts]').textContent(), /opened on steps/);
    await shots(frame, 'early-story');
    log('early story zoom ok', early.run, lo, hi);
  }
  // A run with non-finite values draws, with its non-finite facts.
  for (const c of candidates) {
    if (c.t.nonfinite.some((n) => n > 0) || JSON.stringify(c.t.series.loss).includes('"NaN"')) {
      await selectRun(frame, c.run);
      assert.match(await frame.locator('[data-testid=run-facts]').textContent(), /non-finite/);
      assert.equal(await frame.locator('[data-testid=anomaly-marker]').count(), c.t.anomalies.length);
      const nf = c.t.anomalies.find((a) => a.kind === 'nonfinite');
      if (nf) {
        await frame.locator(`[data-testid=anomaly-marker][data-step="${nf.step}"]`).first().click();
        await frame.locator('[data-testid=heatmap-row]').first().waitFor({timeout: 30000});
        const detail = await getJSON(`/anomaly?run=${encodeURIComponent(c.run)}&step=${nf.step}`);
        await page.waitForTimeout(200);
        log('heatmap (non-finite run)', c.run, JSON.stringify(await checkHeatmapCells(frame, detail)));
      }
      await shot('nonfinite.png');
      break;
    }
  }

  // 4. Dark mode follows TensorBoard's body.dark-mode.
  await selectRun(frame, main.run);
  await page.evaluate(() => document.body.classList.add('dark-mode'));
  await frame.waitForFunction(() => document.body.classList.contains('dark'));
  const bg = await frame.evaluate(() => getComputedStyle(document.body).backgroundColor);
  const [r, g, b] = bg.match(/\d+/g).map(Number);
  assert.ok(0.2126 * r + 0.7152 * g + 0.0722 * b < 80, `dark background, got ${bg}`);
  if (main.t.anomalies.length) {
    await frame.locator('[data-testid=anomaly-marker]').first().click();
    await frame.locator('[data-testid=heatmap-row]').first().waitFor({timeout: 30000}).catch(() => {});
  }
  await page.waitForTimeout(300);
  await shot('dark.png');
  await page.evaluate(() => document.body.classList.remove('dark-mode'));
  await frame.waitForFunction(() => !document.body.classList.contains('dark'));

  // 5. Resizing redraws the charts at the new width.
  const widthOf = () => frame.evaluate(() => document.querySelector('[data-testid=timeline] canvas').getBoundingClientRect().width);
  const w0 = await widthOf();
  await page.setViewportSize({width: 1000, height: 900});
  await frame.waitForFunction((w) => Math.abs(document.querySelector('[data-testid=timeline] canvas').getBoundingClientRect().width - w) > 100, w0);
  await shot('narrow.png');
  await page.setViewportSize(VIEWPORT);
  await frame.waitForFunction((w) => Math.abs(document.querySelector('[data-testid=timeline] canvas').getBoundingClientRect().width - w) < 40, w0);

  // 6. TensorBoard's reload button reaches the tab (experimental.DataReloaded).
  const before = timelineRequests;
  const reloads = await frame.evaluate(() => window.tbStability.stats.reloads);
  const reloadButton = page.locator('button.reload-button, button[aria-label="Reload"], [title="Reload data"]').first();
  await reloadButton.click();
  await frame.waitForFunction((n) => window.tbStability.stats.reloads > n, reloads, {timeout: 20000});
  const t6 = Date.now();
  while (timelineRequests === before && Date.now() - t6 < 10000) await page.waitForTimeout(100);
  assert.ok(timelineRequests > before, 'reload refetched the timeline');
  log('reload ok');

  // 7. A run named with HTML shows as text.
  if (args['html-run']) {
    const name = args['html-run'];
    await selectRun(frame, name);
    const optionText = await frame.locator('[data-testid=run-select] option:checked').textContent();
    assert.ok(optionText.includes(name), 'the run name is shown as text');
    assert.equal(await frame.locator('img').count(), 0, 'no element was made from the name');
    assert.equal(dialogs, 0, 'no script ran');
    await shot('html-run-name.png');
  }

  // 8. Empty logdir: the callback line.
  await page.route('**/data/plugin/tb_stability/runs', (route) => route.fulfill({
    status: 200, contentType: 'application/json', body: JSON.stringify({runs: []})}));
  await page.reload();
  await page.waitForSelector('iframe', {timeout: 60000});
  const emptyFrame = pluginFrame();
  await emptyFrame.locator('[data-testid=empty-state]').waitFor({timeout: 30000});
  assert.match(await emptyFrame.locator('[data-testid=callback-line]').textContent(), /StabilityCallback\(/);
  await shot('empty.png');
  await page.unroute('**/data/plugin/tb_stability/runs');

  // 9. The 1M-step run: draw time after the data arrived.
  if (args['big-run']) {
    await page.reload();
    await page.waitForSelector('iframe', {timeout: 60000});
    const f = pluginFrame();
    await f.locator('[data-testid=run-select]').waitFor({timeout: 60000});
    const ms = await selectRun(f, args['big-run'], 240000);
    const buckets = await f.evaluate(() => document.querySelector('main.app').dataset.buckets);
    const big = await getJSON(`/timeline?run=${encodeURIComponent(args['big-run'])}&width=50`);
    assert.equal(await f.locator('[data-testid=anomaly-marker]').count(), big.anomalies.length);
    console.log(`BENCH timeline_draw_ms=${ms.toFixed(1)} steps=${big.steps} buckets=${buckets} anomalies=${big.anomalies.length}`);
    assert.ok(ms < Number(args['max-draw-ms']), `1M-step timeline drawn in ${ms} ms`);
    await shot('one-million-steps.png');
    await zoomChecks(f, args['big-run'], big);
  }

  assert.deepEqual(errors, [], 'no errors in the page');
  log(`all checks passed in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
} catch (e) {
  console.error('[browser] FAILED:', e && e.stack || e);
  if (errors.length) console.error('[browser] page errors:', errors);
  try { await page.screenshot({path: join(SHOTS, 'failure.png')}); } catch (e2) { /* best effort */ }
  process.exitCode = 1;
} finally {
  await browser.close();
}

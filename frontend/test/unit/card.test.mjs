// The cause card's words for the numbers it shows (model.js): what
// "severity" measures per kind, and the loss line per kind (issue 18:
// "severity 21", "peak 2.302 (x1)" for a plateau, "baseline — → peak —").
import assert from 'node:assert/strict';
import {test} from 'node:test';

import {guardWords, lossWords, severityWords} from '../../../tb_stability/static/model.js';

test('severityWords says what severity measures for each kind', () => {
  assert.equal(severityWords({kind: 'spike', severity: 6.34}), '6.3 decades above the loss before it (\u00d72e6)');
  assert.equal(severityWords({kind: 'divergence', severity: 1}), '1 decade above the loss before it (\u00d710)');
  assert.equal(severityWords({kind: 'nonfinite', severity: 21}), '21 consecutive non-finite steps');
  assert.equal(severityWords({kind: 'nonfinite', severity: 1}), '1 consecutive non-finite step');
  assert.equal(severityWords({kind: 'plateau', severity: 0.994}), 'stuck for 99% of the run');
  assert.equal(severityWords({kind: 'spike', severity: 'NaN'}), null);
  assert.equal(severityWords(null), null);
});

test('lossWords fits the kind and never prints dashes for unknown numbers', () => {
  assert.equal(lossWords({kind: 'plateau', baseline: 2.302, peak_value: 2.302}), 'stuck at 2.302');
  assert.equal(lossWords({kind: 'spike', baseline: 1e-9, peak_value: 2e-3}), 'before 1e-9 \u2192 peak 0.002 (\u00d72e6)');
  assert.equal(lossWords({kind: 'instability', baseline: 0.1, peak_value: 5}), 'best before 0.1 \u2192 peak 5 (\u00d750)');
  assert.equal(lossWords({kind: 'nonfinite', baseline: null, peak_value: null}), 'not finite (NaN/Inf)');
  assert.equal(lossWords({kind: 'nonfinite', baseline: 589.5, peak_value: 'NaN'}), '589.5 before it, then not finite (NaN/Inf)');
  assert.equal(lossWords({kind: 'spike', baseline: null, peak_value: null}), null);
  assert.ok(!String(lossWords({kind: 'spike', baseline: null, peak_value: 3})).includes('\u2014'));
});

test('storyRange zooms a run whose anomalies are all in its first steps', async () => {
  const {storyRange} = await import('../../../tb_stability/static/model.js');
  // seed001-bad: a plateau from step 10 of 1,570
  assert.deepEqual(storyRange([{kind: 'plateau', step: 10, peak_step: 10, end_step: null}], 0, 1569), [0, 44]);
  // a NaN at step 30: 4x its span
  assert.deepEqual(storyRange([{kind: 'nonfinite', step: 30, peak_step: 30, end_step: null}], 0, 9999), [0, 124]);
  // a recovered spike counts to its end
  assert.deepEqual(storyRange([{kind: 'spike', step: 5, peak_step: 6, end_step: 60}], 0, 9999), [0, 244]);
  assert.equal(storyRange([{kind: 'spike', step: 3400, peak_step: 3447, end_step: 3585}], 0, 9999), null);
  assert.equal(storyRange([{kind: 'nonfinite', step: 2, peak_step: 2}], 0, 22), null, 'a short run is shown whole');
  assert.equal(storyRange([], 0, 9999), null);
  assert.equal(storyRange([{kind: 'spike', step: 1, peak_step: 1}, {kind: 'spike', step: 5000, peak_step: 5000}], 0, 9999), null);
});

test('guardWords counts the updates the guard skipped, nothing when none', () => {
  assert.equal(guardWords({guard_skipped: 1}), '1 update skipped by the update guard (weights and moments kept)');
  assert.match(guardWords({guard_skipped: 25}), /^25 updates skipped/);
  assert.equal(guardWords({guard_skipped: 0}), null);
  assert.equal(guardWords({}), null);
  assert.equal(guardWords(null), null);
});

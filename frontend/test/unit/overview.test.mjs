// The runs overview's pure helpers (tb_stability/static/model.js).
import assert from 'node:assert/strict';
import {test} from 'node:test';

import {causeRegistry, filterOverview, overviewCauses, overviewLine} from '../../../tb_stability/static/model.js';

const OVERVIEW = {
  runs: [
    {run: 'a', status: 'nonfinite', anomalies: 1, causes: ['summed_loss']},
    {run: 'b', status: 'anomalies', anomalies: 3, causes: ['adam_epsilon', 'bad_batch']},
    {run: 'c', status: 'anomalies', anomalies: 1, causes: ['adam_epsilon']},
    {run: 'd', status: 'healthy', anomalies: 0, causes: []},
  ],
  total: 4,
  status_counts: {nonfinite: 1, anomalies: 2, healthy: 1},
  cause_counts: {summed_loss: 1, adam_epsilon: 2, bad_batch: 1},
};

test('filterOverview keeps the runs with the cause, in order', () => {
  assert.deepEqual(filterOverview(OVERVIEW.runs, 'adam_epsilon').map((r) => r.run), ['b', 'c']);
  assert.deepEqual(filterOverview(OVERVIEW.runs, 'bad_batch').map((r) => r.run), ['b']);
  assert.deepEqual(filterOverview(OVERVIEW.runs, '').map((r) => r.run), ['a', 'b', 'c', 'd']);
  assert.deepEqual(filterOverview(OVERVIEW.runs, 'dead_units'), []);
  assert.deepEqual(filterOverview(null, 'x'), []);
});

test('overviewCauses: most runs first, then the registry order', () => {
  const reg = causeRegistry({causes: [{cause: 'bad_batch'}, {cause: 'summed_loss'}, {cause: 'adam_epsilon'}, {cause: 'unknown'}]});
  assert.deepEqual(overviewCauses(OVERVIEW, reg), [
    {cause: 'adam_epsilon', runs: 2}, {cause: 'bad_batch', runs: 1}, {cause: 'summed_loss', runs: 1}]);
  assert.deepEqual(overviewCauses({}, reg), []);
});

test('overviewLine counts the statuses in words', () => {
  assert.equal(overviewLine(OVERVIEW), '4 runs: 1 non-finite, 2 with anomalies, 1 healthy');
  assert.equal(overviewLine({total: 1, status_counts: {healthy: 1}}), '1 run: 1 healthy');
  assert.equal(overviewLine(null), '0 runs');
  assert.equal(overviewLine({total: 3, pending: 2, status_counts: {healthy: 1}}), '3 runs: 1 healthy, 2 still being analysed');
});

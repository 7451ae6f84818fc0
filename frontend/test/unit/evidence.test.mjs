// Unit tests of the /anomaly evidence helpers for capped (wide-run) rows:
// node --test test/unit/
import assert from 'node:assert/strict';
import {test} from 'node:test';

import {evidenceRowsNote, evidenceSparseNote, highlightRow, variableIndex} from '../../../tb_stability/static/model.js';

const names = (n) => Array.from({length: n}, (_, i) => `m/v${i}`);

test('evidenceRowsNote: null when every variable is served', () => {
  assert.equal(evidenceRowsNote({variables: names(6), variables_total: 6, implicated: [1]}), null);
  assert.equal(evidenceRowsNote({variables: names(6)}), null);  // an older backend: no total
  assert.equal(evidenceRowsNote({variables: [], variables_total: 0}), null);
  assert.equal(evidenceRowsNote(null), null);
  assert.equal(evidenceRowsNote({variables: names(3), variables_total: '10000'}), null);
});

test('evidenceRowsNote: "showing N of M variables" with why', () => {
  const ev = {variables: names(256), variables_total: 10000, implicated: [17]};
  assert.equal(evidenceRowsNote(ev),
    'showing 256 of 10,000 variables (the implicated one and the 255 that moved most)');
  assert.equal(evidenceRowsNote({...ev, implicated: []}),
    'showing 256 of 10,000 variables (the 256 that moved most)');
  assert.equal(evidenceRowsNote({...ev, implicated: undefined}),
    'showing 256 of 10,000 variables (the 256 that moved most)');
  assert.equal(evidenceRowsNote({...ev, implicated: [3, 9, 3]}),
    'showing 256 of 10,000 variables (the 2 implicated and the 254 that moved most)');
  // Rows outside the served ones, or not integers, are not counted.
  assert.equal(evidenceRowsNote({...ev, implicated: [256, -1, 'x', 1.5]}),
    'showing 256 of 10,000 variables (the 256 that moved most)');
  assert.equal(evidenceRowsNote({variables: names(2), variables_total: 3000, implicated: [0]}),
    'showing 2 of 3,000 variables (the implicated one and the one that moved most)');
  assert.equal(evidenceRowsNote({variables: names(1), variables_total: 3000, implicated: [0]}),
    'showing 1 of 3,000 variables (the implicated one)');
});

test('highlightRow: the served row of the implicated variable, or -1', () => {
  const ev = {variables: names(4), highlight: {variable: 'm/v2', index: 2}};
  assert.equal(highlightRow(ev), 2);
  assert.equal(highlightRow({...ev, highlight: {variable: 'm/v9999', index: 4}}), -1);
  assert.equal(highlightRow({...ev, highlight: {variable: null, index: null}}), -1);
  assert.equal(highlightRow({...ev, highlight: null}), -1);
  assert.equal(highlightRow({...ev, highlight: {index: -1}}), -1);
  assert.equal(highlightRow({...ev, highlight: {index: '1'}}), -1);
  assert.equal(highlightRow({}), -1);
});

test('variableIndex: a served row\'s index in the run', () => {
  const ev = {variables: names(3), variable_index: [0, 4711, 9999]};
  assert.deepEqual([0, 1, 2].map((i) => variableIndex(ev, i)), [0, 4711, 9999]);
  assert.equal(variableIndex({variables: names(3)}, 2), 2);  // not capped: the row itself
  assert.equal(variableIndex({variable_index: [null]}, 0), 0);
});

test('evidenceSparseNote: only for statistics measured every few steps, per step', () => {
  const ev = {stats_every: 8, resolution: 'step'};
  assert.match(evidenceSparseNote(ev, 'rms_ratio'), /every 8 steps/);
  assert.equal(evidenceSparseNote(ev, 'grad_norm'), null);  // every step, exact
  assert.equal(evidenceSparseNote({stats_every: 1, resolution: 'step'}, 'rms_ratio'), null);
  assert.equal(evidenceSparseNote({resolution: 'step'}, 'rms_ratio'), null);  // an older backend
  assert.equal(evidenceSparseNote({stats_every: 8, resolution: 'window'}, 'rms_ratio'), null);
});

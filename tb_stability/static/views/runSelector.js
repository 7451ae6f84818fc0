// The run selector: a <select> of the runs that hold tb_stability data.
// Run names are data: option text is set as text, never as markup.

import {formatStep, middleEllipsis} from '../model.js';
import {el} from './dom.js';

/** The value of the "all runs" entry (the runs overview). */
export const ALL_RUNS = '';

/**
 * @param {!Array<{run: string, last_step: number}>} runs
 * @param {?string} selected the run, or ALL_RUNS for the overview
 * @param {function(string)} onChange called with a run, or ALL_RUNS
 * @param {boolean=} overview whether to offer the "all runs" entry first
 * @return {!HTMLSelectElement}
 */
export function runSelector(runs, selected, onChange, overview = false) {
  const select = el('select', {class: 'run-select', 'data-testid': 'run-select', 'aria-label': 'run',
    title: selected || ''});
  if (overview) {
    const all = el('option', {value: ALL_RUNS, 'data-testid': 'all-runs'}, `all runs (${formatStep(runs.length)}): overview`);
    all.selected = selected === ALL_RUNS;
    select.appendChild(all);
  }
  for (const r of runs) {
    const option = el('option', {value: r.run, title: r.run},
      `${middleEllipsis(r.run, 60)}  (${formatStep((r.last_step ?? -1) + 1)} steps)`);
    option.selected = r.run === selected;
    select.appendChild(option);
  }
  select.addEventListener('change', () => {
    select.title = select.value;
    onChange(select.value);
  });
  return select;
}

// The run selector: a <select> of the runs that hold tb_stability data.
// Run names are data: option text is set as text, never as markup.

import {formatStep, middleEllipsis} from '../model.js';
import {el} from './dom.js';

/**
 * @param {!Array<{run: string, last_step: number}>} runs
 * @param {?string} selected
 * @param {function(string)} onChange
 * @return {!HTMLSelectElement}
 */
export function runSelector(runs, selected, onChange) {
  const select = el('select', {class: 'run-select', 'data-testid': 'run-select', 'aria-label': 'run',
    title: selected || ''});
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

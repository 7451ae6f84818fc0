// The runs overview: the tab's landing view when the logdir has several
// runs (a sweep). One row per run of GET overview, worst first: its
// status, its first anomaly (kind, step, cause, confidence, layer) and how
// many it has; filterable by cause; a click (or Enter) opens the run.
//
//   section.panel.overview[data-testid=overview]
//     .chart-head       title, "96 runs: ...", cause filter (data-testid=overview-filter)
//     table.overview    tr[data-testid=overview-row][data-run][data-status][data-cause][data-step]

import {
  RUN_STATUS, causeStyle, filterOverview, formatPercent, formatStep, middleEllipsis,
  overviewCauses, overviewLine, shapePath,
} from '../model.js';
import {el, svgShape} from './dom.js';

const RUN_CHARS = 56, LAYER_CHARS = 28;

/**
 * @param {!Object} overview the GET overview payload
 * @param {{cause: string, onFilter: function(string), onOpen: function(string)}} opts
 * @return {!HTMLElement}
 */
export function overviewView(overview, opts) {
  const runs = filterOverview(overview.runs, opts.cause);
  const filter = el('select', {'data-testid': 'overview-filter', 'aria-label': 'filter by cause',
    onchange: (e) => opts.onFilter(e.target.value)},
  el('option', {value: '', selected: !opts.cause}, `every cause (${formatStep(overview.total || 0)} runs)`),
  overviewCauses(overview).map(({cause, runs: n}) => el('option', {value: cause, selected: cause === opts.cause},
    `${causeStyle(cause).label} (${formatStep(n)} run${n === 1 ? '' : 's'})`)));
  const body = el('tbody');
  for (const r of runs) {
    const f = r.first;
    const s = f ? causeStyle(f.cause) : null;
    const kind = f ? f.kind + (f.pattern ? ` (${f.pattern})` : '') : '';
    body.appendChild(el('tr', {
      tabindex: 0, 'data-testid': 'overview-row', 'data-run': r.run, 'data-status': r.status,
      'data-cause': f ? f.cause : '', 'data-step': f ? f.step : '',
      onclick: () => opts.onOpen(r.run),
      onkeydown: (e) => { if (e.key === 'Enter') opts.onOpen(r.run); },
    },
    el('td', {}, el('span', {class: `status-chip status-${r.status.replace(/\W/g, '')}`}, RUN_STATUS[r.status] || r.status)),
    el('td', {class: 'run-cell', title: r.run}, middleEllipsis(r.run, RUN_CHARS)),
    el('td', {class: 'num', title: 'anomalies in the run'}, r.status === 'pending' ? '' : formatStep(r.anomalies)),
    el('td', {}, kind),
    el('td', {class: 'num'}, f ? formatStep(f.step) : ''),
    el('td', {class: 'cause-cell', title: f ? f.title : ''},
      f ? [svgShape(shapePath(s.shape, 11), s.color, 11), ' ', s.label] : (r.status === 'healthy' ? 'no anomaly' : '')),
    el('td', {class: 'num', title: 'confidence in the cause'}, f ? formatPercent(f.confidence) : ''),
    el('td', {class: 'layer-cell', title: f ? (f.variable || f.layer || '') : ''},
      f && f.layer ? middleEllipsis(f.layer, LAYER_CHARS) : '')));
  }
  const table = el('table', {class: 'anomalies overview-table'},
    el('thead', {}, el('tr', {},
      ['status', 'run', 'anomalies', 'first anomaly', 'step', 'its cause', 'conf.', 'layer'].map((h) => el('th', {}, h)))),
    body);
  return el('section', {class: 'panel overview', 'data-testid': 'overview'},
    el('div', {class: 'chart-head'},
      el('span', {class: 'chart-title'}, 'Runs'),
      el('span', {class: 'chart-sub', 'data-testid': 'overview-line'}, overviewLine(overview)),
      el('span', {class: 'spacer'}),
      el('label', {class: 'chart-sub'}, 'cause ', filter)),
    runs.length ? el('div', {class: 'table-wrap overview-wrap'}, table)
      : el('p', {class: 'muted'}, 'No run has an anomaly with this cause.'),
    el('p', {class: 'muted note'}, 'Worst first: runs with NaN/Inf values, then runs with more anomalies. ' +
      'Click a run (or press Enter on it) to open it; \u201call runs\u201d in the run menu comes back here.'));
}

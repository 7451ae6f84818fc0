// The cause card of one anomaly: its top cause in plain words, with
// confidence, implicated variable, lead, evidence sentences and fix; the other
// candidate causes ranked below.
//
//   section.card[data-testid=cause-card][data-step][data-cause]
//     .card-head       marker shape, kind, steps, prev/next
//     h2.cause-title   [data-testid=cause-title]
//     dl.facts         confidence, variable, lead, loss
//     ul.evidence      [data-testid=cause-evidence]
//     .fix             [data-testid=cause-fix]
//     ol.alternatives  [data-testid=cause-alternatives]

import {
  anomalyCause, causeStyle, formatLead, formatPercent, formatStep, guardWords, lossWords, severityWords, shapePath,
} from '../model.js';
import {el, svgShape} from './dom.js';

// What each anomaly kind means, as the kind's tooltip on the card.
const KIND_WORDS = {
  spike: 'a jump of the loss that recovers',
  divergence: 'a rise of the loss that does not recover',
  nonfinite: 'NaN/Inf in the loss (loss) or only in gradients, weights or moments (silent)',
  plateau: 'training stuck to the end: at chance, stalled at another level, or frozen',
  instability: 'the loss keeps returning far above the best it reached',
};

function confidenceBar(p, color) {
  const pct = Number.isFinite(p) ? Math.max(0, Math.min(1, p)) * 100 : 0;
  return el('span', {class: 'conf'},
    el('span', {class: 'conf-bar'}, el('span', {class: 'conf-fill', style: {width: `${pct}%`, background: color}})),
    el('span', {class: 'conf-text'}, formatPercent(p)));
}

function stepsLine(a) {
  const parts = [`onset ${formatStep(a.step)}`];
  if (a.peak_step !== undefined && a.peak_step !== null && a.peak_step !== a.step) parts.push(`peak ${formatStep(a.peak_step)}`);
  if (a.end_step !== undefined && a.end_step !== null) parts.push(`back to normal at ${formatStep(a.end_step)}`);
  else if (a.kind !== 'plateau') parts.push('not recovered');
  return parts.join(' \u2192 ');
}

/**
 * Builds the card.
 * @param {!Object} anomaly the anomaly from the timeline (top cause inline)
 * @param {?Object} detail the /anomaly response, or null while loading
 * @param {{index: number, count: number, onStep: function(number),
 *          onClose: function(), error: ?string}} opts
 * @return {!HTMLElement}
 */
export function causeCard(anomaly, detail, opts) {
  const causes = (detail && Array.isArray(detail.causes) && detail.causes.length)
    ? detail.causes : (anomaly.cause ? [anomaly.cause] : []);
  const top = causes[0] || {cause: 'unknown'};
  const id = top.cause || anomalyCause(anomaly);
  const style = causeStyle(id);
  const implicated = top.variable || top.layer || null;  // the heatmap's highlighted row

  const head = el('div', {class: 'card-head'},
    svgShape(shapePath(style.shape, 14), style.color, 14, 'rgba(0,0,0,0.5)'),
    el('span', {class: 'kind', 'data-testid': 'anomaly-kind',
      title: KIND_WORDS[anomaly.kind] || ''},
    (anomaly.kind || 'anomaly') + (anomaly.pattern ? ` (${anomaly.pattern})` : '')),
    el('span', {class: 'steps', 'data-testid': 'anomaly-steps'}, `step ${formatStep(anomaly.step)}`),
    el('span', {class: 'spacer'}),
    el('span', {class: 'nav'},
      el('button', {type: 'button', class: 'btn small', title: 'Previous anomaly (k or \u2190)', 'data-testid': 'prev-anomaly',
        disabled: opts.index <= 0, onclick: () => opts.onStep(-1)}, '\u2039'),
      el('span', {class: 'nav-count'}, `${opts.index + 1} / ${opts.count}`),
      el('button', {type: 'button', class: 'btn small', title: 'Next anomaly (j or \u2192)', 'data-testid': 'next-anomaly',
        disabled: opts.index >= opts.count - 1, onclick: () => opts.onStep(1)}, '\u203a'),
      el('button', {type: 'button', class: 'btn small', title: 'Close (Esc)', 'data-testid': 'close-card',
        onclick: () => opts.onClose()}, '\u00d7')));

  const facts = el('dl', {class: 'facts'},
    el('dt', {}, 'cause'), el('dd', {},
      el('span', {class: 'cause-chip', style: {borderColor: style.color}}, el('code', {'data-testid': 'cause-id'}, id))),
    el('dt', {}, 'confidence'), el('dd', {'data-testid': 'cause-confidence'}, confidenceBar(top.confidence, style.color)),
    el('dt', {}, 'variable'), el('dd', {class: 'layer', 'data-testid': 'cause-variable', title: top.layer ? `layer ${top.layer}` : null},
      implicated ? el('code', {}, implicated) : el('span', {class: 'muted'}, 'none implicated')),
    el('dt', {}, 'lead'), el('dd', {'data-testid': 'cause-lead'}, formatLead(top.lead_steps)),
    el('dt', {}, 'steps'), el('dd', {}, stepsLine(anomaly)),
    severityWords(anomaly) ? el('dt', {title: 'how bad: the size of the jump, the length of the NaN run, or of the plateau'}, 'how bad') : null,
    severityWords(anomaly) ? el('dd', {'data-testid': 'anomaly-severity'}, severityWords(anomaly)) : null,
    lossWords(anomaly) ? el('dt', {}, 'loss') : null,
    lossWords(anomaly) ? el('dd', {'data-testid': 'anomaly-loss'}, lossWords(anomaly)) : null,
    guardWords(anomaly) ? el('dt', {}, 'guard') : null,
    guardWords(anomaly) ? el('dd', {'data-testid': 'anomaly-guard'}, guardWords(anomaly)) : null);

  const evidence = Array.isArray(top.evidence) ? top.evidence : [];
  const card = el('section', {
    class: 'card', 'data-testid': 'cause-card', 'data-step': anomaly.step, 'data-cause': id,
    style: {borderTopColor: style.color}, 'aria-live': 'polite',
  },
  head,
  el('h2', {class: 'cause-title', 'data-testid': 'cause-title'}, top.title || style.label),
  facts,
  el('h3', {}, 'Evidence'),
  evidence.length
    ? el('ul', {class: 'evidence', 'data-testid': 'cause-evidence'}, evidence.map((s) => el('li', {}, String(s))))
    : el('p', {class: 'muted', 'data-testid': 'cause-evidence'}, 'No evidence sentences.'),
  el('h3', {}, 'Fix'),
  el('div', {class: 'fix', 'data-testid': 'cause-fix'}, top.fix || '\u2014'));

  if (opts.error) card.appendChild(el('p', {class: 'error'}, opts.error));
  if (!detail && !opts.error) card.appendChild(el('p', {class: 'muted loading'}, 'Loading evidence\u2026'));

  const alts = causes.slice(1);
  if (detail) {
    card.appendChild(el('h3', {}, alts.length ? `Alternatives (${alts.length})` : 'Alternatives'));
    if (!alts.length) {
      card.appendChild(el('p', {class: 'muted', 'data-testid': 'cause-alternatives'}, 'No other cause fits the evidence.'));
    } else {
      card.appendChild(el('ol', {class: 'alternatives', 'data-testid': 'cause-alternatives'}, alts.map((c) => {
        const s = causeStyle(c.cause);
        return el('li', {'data-cause': c.cause},
          el('details', {},
            el('summary', {},
              svgShape(shapePath(s.shape, 11), s.color, 11),
              el('span', {class: 'alt-title'}, c.title || s.label),
              confidenceBar(c.confidence, s.color),
              (c.variable || c.layer) ? el('code', {class: 'alt-layer'}, c.variable || c.layer) : null),
            Array.isArray(c.evidence) && c.evidence.length
              ? el('ul', {class: 'evidence'}, c.evidence.map((x) => el('li', {}, String(x)))) : null,
            c.fix ? el('div', {class: 'fix small'}, c.fix) : null));
      })));
    }
  }
  return card;
}

/** The legend: every cause present in the run with its count. */
export function causeLegend(counts) {
  if (!counts.length) return el('div', {class: 'legend', 'data-testid': 'legend'}, el('span', {class: 'muted'}, 'no anomalies'));
  return el('div', {class: 'legend', 'data-testid': 'legend'}, counts.map(([id, n]) => {
    const s = causeStyle(id);
    return el('span', {class: 'legend-item', 'data-cause': id, title: id},
      svgShape(shapePath(s.shape, 11), s.color, 11, 'rgba(0,0,0,0.45)'), ` ${s.label} `, el('span', {class: 'count'}, String(n)));
  }));
}

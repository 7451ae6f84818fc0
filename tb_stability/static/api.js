// The backend's routes (tb_stability/server/http_api.md), fetched with URLs
// relative to the iframe's <base href="plugin/tb_stability/">.

import {timelineUrl} from './model.js';

/** An HTTP error with the server's plain-text message. */
export class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function getJSON(url, signal) {
  const response = await fetch(url, {signal, headers: {Accept: 'application/json'}});
  if (!response.ok) {
    let text = '';
    try { text = await response.text(); } catch (e) { /* keep the status */ }
    throw new HttpError(response.status, text || `${response.status} ${response.statusText}`);
  }
  return response.json();
}

const q = encodeURIComponent;

export const api = {
  runs: (signal) => getJSON('./runs', signal),
  /** Every run's status and first anomaly, worst first (the runs overview). */
  overview: (signal) => getJSON('./overview', signal),
  /** The cause registry: ids, titles, fixes, colours, shapes, labels. */
  causes: (signal) => getJSON('./causes', signal),
  /** The whole run, or only the inclusive step range `range` ([first, last]). */
  timeline: (run, width, signal, range = null) => getJSON(timelineUrl(run, width, range), signal),
  anomaly: (run, step, signal) => getJSON(`./anomaly?run=${q(run)}&step=${q(step)}`, signal),
  layers: (run, signal) => getJSON(`./layers?run=${q(run)}`, signal),
};

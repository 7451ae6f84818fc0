// Small DOM helpers. Data only ever reaches the page through textContent
// and attributes set with setAttribute: never through innerHTML.

/**
 * el('div', {class: 'a', 'data-testid': 'x'}, 'text', child, ...)
 * Attribute values and string children are data-safe (text, not markup).
 */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'style' && typeof v === 'object') Object.assign(node.style, v);
    else if (k.startsWith('on') && typeof v === 'function') node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? '' : String(v));
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(node, c);
    else node.appendChild(typeof c === 'object' ? c : document.createTextNode(String(c)));
  }
}

const SVG = 'http://www.w3.org/2000/svg';

/** An inline SVG marker: `pathD` filled with `color`. */
export function svgShape(pathD, color, size = 12, stroke = null) {
  const svg = document.createElementNS(SVG, 'svg');
  svg.setAttribute('width', size);
  svg.setAttribute('height', size);
  svg.setAttribute('viewBox', `0 0 ${size} ${size}`);
  svg.setAttribute('aria-hidden', 'true');
  const p = document.createElementNS(SVG, 'path');
  p.setAttribute('d', pathD);
  p.setAttribute('fill', color);
  p.setAttribute('fill-rule', 'evenodd');
  if (stroke) { p.setAttribute('stroke', stroke); p.setAttribute('stroke-width', '1'); }
  svg.appendChild(p);
  return svg;
}

/** Removes every child of `node`. */
export function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
  return node;
}

/** Colours of the current theme, read from the CSS variables on <body>. */
export function themeColors() {
  const cs = getComputedStyle(document.body);
  const v = (name, fallback) => (cs.getPropertyValue(name) || '').trim() || fallback;
  return {
    fg: v('--fg', '#212121'),
    muted: v('--muted', '#616161'),
    grid: v('--grid', 'rgba(0,0,0,0.07)'),
    axis: v('--axis', '#757575'),
    bg: v('--bg', '#ffffff'),
    loss: v('--loss', '#1a73e8'),
    lossBand: v('--loss-band', 'rgba(26,115,232,0.25)'),
    signal: v('--signal', '#5f6368'),
    accent: v('--accent', '#e8710a'),
    nonfinite: v('--nonfinite', '#d93025'),
    select: v('--select-band', 'rgba(232,113,10,0.12)'),
  };
}

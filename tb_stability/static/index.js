// Placeholder Stability tab: lists the runs that hold tb_stability data.
// The full frontend (spike timeline, cause cards) is built from frontend/.
export async function render() {
  const root = document.createElement('div');
  root.style.fontFamily = 'sans-serif';
  root.style.padding = '16px';
  const title = document.createElement('h3');
  title.textContent = 'tb_stability';
  root.appendChild(title);
  const list = document.createElement('ul');
  root.appendChild(list);
  document.body.appendChild(root);
  const response = await fetch('./runs');
  const runs = response.ok ? await response.json() : [];
  if (runs.length === 0) {
    const p = document.createElement('p');
    p.textContent = 'No tb_stability data. Add the callback: ' +
      'model.fit(x, y, callbacks=[tb_stability.keras.StabilityCallback("logs/run1")])';
    root.appendChild(p);
  }
  for (const run of runs) {
    const item = document.createElement('li');
    item.textContent = run;  // text, never markup
    list.appendChild(item);
  }
}

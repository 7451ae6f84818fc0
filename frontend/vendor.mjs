// The Stability tab is served as it is written: its ES modules live in
// ../tb_stability/static/ (no bundler, no copy). The one thing that comes
// from npm is uPlot: its ESM build, CSS and LICENSE, pinned in package.json,
// are vendored into ../tb_stability/static/vendor/uplot/ so that
// `pip install` needs no Node.
//
//   node vendor.mjs           copy uPlot from node_modules into the package
//   node vendor.mjs --check   exit 1 if the vendored copy differs from the
//                             pinned package in node_modules (run by the tests)

import {copyFileSync, existsSync, mkdirSync, readFileSync} from 'node:fs';
import {dirname, join} from 'node:path';
import {fileURLToPath} from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const OUT = join(here, '..', 'tb_stability', 'static');
const UPLOT = join(here, 'node_modules', 'uplot');
export const VENDOR = {
  'vendor/uplot/uPlot.esm.js': 'dist/uPlot.esm.js',
  'vendor/uplot/uPlot.min.css': 'dist/uPlot.min.css',
  'vendor/uplot/LICENSE': 'LICENSE',
};

if (!existsSync(UPLOT)) {
  console.error(`${UPLOT} missing: run npm ci --prefix frontend first`);
  process.exit(1);
}
const pinned = JSON.parse(readFileSync(join(here, 'package.json'), 'utf8')).devDependencies.uplot;
const installed = JSON.parse(readFileSync(join(UPLOT, 'package.json'), 'utf8')).version;
if (pinned !== installed) {
  console.error(`node_modules has uplot ${installed}, package.json pins ${pinned}: run npm ci`);
  process.exit(1);
}
if (process.argv.includes('--check')) {
  const problems = [];
  for (const [out, src] of Object.entries(VENDOR)) {
    const target = join(OUT, out);
    if (!existsSync(target)) problems.push(`missing: ${out}`);
    else if (!readFileSync(target).equals(readFileSync(join(UPLOT, src)))) problems.push(`differs: ${out}`);
  }
  if (problems.length) {
    console.error(`the vendored uPlot is not uplot ${pinned} (run: node frontend/vendor.mjs):\n  ${problems.join('\n  ')}`);
    process.exit(1);
  }
  console.log(`tb_stability/static/vendor/uplot is uplot ${pinned}`);
} else {
  for (const [out, src] of Object.entries(VENDOR)) {
    mkdirSync(dirname(join(OUT, out)), {recursive: true});
    copyFileSync(join(UPLOT, src), join(OUT, out));
  }
  console.log(`vendored uplot ${pinned} into tb_stability/static/vendor/uplot`);
}

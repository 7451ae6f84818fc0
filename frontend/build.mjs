// Builds the Stability tab into the Python package: no bundler, the ES
// modules of src/ are copied as they are into ../tb_stability/static/, and
// uPlot's ESM build, CSS and LICENSE (from node_modules, pinned in
// package.json) into ../tb_stability/static/vendor/uplot/.
//
//   node build.mjs           write the static folder (stale files removed)
//   node build.mjs --check   exit 1 if the static folder differs from what
//                            the build would write (CI: the built files
//                            are committed so that `pip install` needs no Node)

import {existsSync, mkdirSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync} from 'node:fs';
import {dirname, join, relative, sep} from 'node:path';
import {fileURLToPath} from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const SRC = join(here, 'src');
const OUT = join(here, '..', 'tb_stability', 'static');
const UPLOT = join(here, 'node_modules', 'uplot');
export const VENDOR = {
  'vendor/uplot/uPlot.esm.js': 'dist/uPlot.esm.js',
  'vendor/uplot/uPlot.min.css': 'dist/uPlot.min.css',
  'vendor/uplot/LICENSE': 'LICENSE',
};

function walk(dir) {
  const out = [];
  for (const name of readdirSync(dir).sort()) {
    const full = join(dir, name);
    if (statSync(full).isDirectory()) out.push(...walk(full));
    else out.push(full);
  }
  return out;
}

const posix = (p) => p.split(sep).join('/');

/** {relative output path: Buffer} the build writes. */
function expected() {
  const files = new Map();
  for (const f of walk(SRC)) files.set(posix(relative(SRC, f)), readFileSync(f));
  const haveVendor = existsSync(UPLOT);
  for (const [out, src] of Object.entries(VENDOR)) {
    if (haveVendor) files.set(out, readFileSync(join(UPLOT, src)));
    else if (existsSync(join(OUT, out))) files.set(out, readFileSync(join(OUT, out)));  // checked without node_modules
    else throw new Error(`${join(UPLOT, src)} missing: run npm ci first`);
  }
  if (!haveVendor) console.warn('node_modules/uplot missing: the vendored files are not compared (run npm ci)');
  return files;
}

function actual() {
  const files = new Map();
  if (!existsSync(OUT)) return files;
  for (const f of walk(OUT)) {
    const rel = posix(relative(OUT, f));
    if (rel.split('/').includes('__pycache__')) continue;
    files.set(rel, readFileSync(f));
  }
  return files;
}

const want = expected();
if (process.argv.includes('--check')) {
  const have = actual();
  const problems = [];
  for (const [name, bytes] of want) {
    if (!have.has(name)) problems.push(`missing: ${name}`);
    else if (!have.get(name).equals(bytes)) problems.push(`differs: ${name}`);
  }
  for (const name of have.keys()) if (!want.has(name)) problems.push(`not from the sources: ${name}`);
  if (problems.length) {
    console.error(`tb_stability/static is out of date (run: node frontend/build.mjs):\n  ${problems.join('\n  ')}`);
    process.exit(1);
  }
  console.log(`tb_stability/static matches the sources (${want.size} files)`);
} else {
  for (const name of actual().keys()) if (!want.has(name)) rmSync(join(OUT, name));
  for (const [name, bytes] of want) {
    const target = join(OUT, name);
    mkdirSync(dirname(target), {recursive: true});
    writeFileSync(target, bytes);
  }
  console.log(`wrote ${want.size} files to ${relative(process.cwd(), OUT) || OUT}`);
}

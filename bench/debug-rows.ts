/**
 * Diagnostic: per-prompt and per-row logits error of the GPU against the float64 fixture reference and against the
 * CPU backend, to tell systematic error from a few rows (routing flips at near-ties).
 * Usage: node dist/bench/debug-rows.js [fixture]
 */
import path from 'node:path';
import { loadModel } from '../src/index.js';
import { FIXTURES } from '../test/helpers/paths.js';
import { getF32, getIds, readExpected } from '../test/helpers/expected.js';
import { maxRelErr, relErr } from '../test/helpers/gpu.js';

const name = process.argv[2] ?? 'tiny';
const exp = await readExpected(name);
const g = await loadModel(path.join(FIXTURES, name), { device: 'cuda' });
const V = g.config.vocabSize;
for (let i = 0; exp.has(`p${i}.ids`); i++) {
  const ids = getIds(exp, `p${i}.ids`);
  const ref = getF32(exp, `p${i}.logits`);
  const rows = g.logits(ids);
  const flat = new Float32Array(rows.length * V);
  rows.forEach((r, t) => flat.set(r, t * V));
  let maxD = 0, maxR = 0;
  for (let k = 0; k < flat.length; k++) {
    maxD = Math.max(maxD, Math.abs(flat[k] - ref[k]));
    maxR = Math.max(maxR, Math.abs(ref[k]));
  }
  const perRow = rows.map((r, t) => ({ t, e: maxRelErr(r, ref.subarray(t * V, (t + 1) * V)), n: relErr(r, ref.subarray(t * V, (t + 1) * V)) }));
  const bad = perRow.filter((r) => r.e > 0.02);
  perRow.sort((a, b) => b.e - a.e);
  console.log(`${name} p${i} T=${ids.length}: norm rel ${relErr(flat, ref).toExponential(2)}, max|Δ|/max|ref| ${(maxD / maxR).toExponential(2)}, rows > 2e-2: ${bad.length}; worst rows ${perRow.slice(0, 4).map((r) => `t${r.t}:${r.e.toFixed(3)}/${r.n.toFixed(3)}`).join(' ')}`);
}
g.dispose();

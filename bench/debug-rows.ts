/**
 * Diagnostic: per-prompt and per-row logits error of the GPU against the float64 fixture reference, and whether
 * each token's expert choices (router top-k, any layer) differ between the GPU and the fp32 CPU backend — to tell
 * bf16 rounding noise from routing flips at near-ties.
 * Usage: node dist/bench/debug-rows.js [fixture]
 */
import path from 'node:path';
import { loadModel, type Model } from '../src/index.js';
import { FIXTURES } from '../test/helpers/paths.js';
import { getF32, getIds, readExpected } from '../test/helpers/expected.js';
import { maxRelErr, relErr } from '../test/helpers/gpu.js';

const name = process.argv[2] ?? 'tiny';
const exp = await readExpected(name);
const g = await loadModel(path.join(FIXTURES, name), { device: 'cuda' });
const c = await loadModel(path.join(FIXTURES, name), { device: 'cpu' });
const V = g.config.vocabSize, K = g.config.numExpertsPerTok;

function run(m: Model, ids: number[]): { rows: Float32Array[]; routes: Float32Array[] } {
  const routes: Float32Array[] = [];
  const s = m.createSession();
  const r = s.append(ids, { logits: 'all', trace: (n, _l, read) => n === 'router_topk' && routes.push(read()) });
  const rows = Array.from({ length: r.rows }, (_, t) => r.row(t).slice());
  s.dispose();
  return { rows, routes };
}

let flipRows = 0, flipBad = 0, cleanRows = 0, cleanBad = 0, worstClean = 0;
for (let i = 0; exp.has(`p${i}.ids`); i++) {
  const ids = getIds(exp, `p${i}.ids`);
  const ref = getF32(exp, `p${i}.logits`);
  const gr = run(g, ids), cr = run(c, ids);
  const sameSet = (a: Float32Array, b: Float32Array, t: number): boolean => {
    const x = Array.from(a.subarray(t * K, t * K + K)).sort(), y = Array.from(b.subarray(t * K, t * K + K)).sort();
    return x.every((v, j) => v === y[j]);
  };
  for (let t = 0; t < ids.length; t++) {
    const e = maxRelErr(gr.rows[t], ref.subarray(t * V, (t + 1) * V));
    const flipped = gr.routes.some((rg, l) => !sameSet(rg, cr.routes[l], t));
    if (flipped) {
      flipRows++;
      if (e > 0.02) flipBad++;
    } else {
      cleanRows++;
      if (e > 0.02) cleanBad++;
      worstClean = Math.max(worstClean, e);
    }
  }
  const flat = new Float32Array(ids.length * V);
  gr.rows.forEach((r, t) => flat.set(r, t * V));
  console.log(`${name} p${i} T=${ids.length}: norm rel ${relErr(flat, ref).toExponential(2)}`);
}
console.log(`${name}: rows with a routing flip (GPU vs CPU, any layer): ${flipRows} (${flipBad} over 2e-2); rows without: ${cleanRows} (${cleanBad} over 2e-2, worst ${worstClean.toExponential(2)})`);
g.dispose();
c.dispose();

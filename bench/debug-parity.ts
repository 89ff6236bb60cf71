/**
 * Diagnostic: runs a fixture prompt on the CPU and on the GPU with a trace hook and prints the relative error of
 * every named intermediate in order, so the first op where the GPU departs from the reference stands out.
 * Usage: node dist/bench/debug-parity.js [fixture] [prompt index]
 */
import path from 'node:path';
import { loadModel } from '../src/index.js';
import { FIXTURES } from '../test/helpers/paths.js';
import { getIds, readExpected } from '../test/helpers/expected.js';
import { relErr } from '../test/helpers/gpu.js';

const name = process.argv[2] ?? 'tiny';
const p = process.argv[3] ?? '2';
const exp = await readExpected(name);
const ids = getIds(exp, `p${p}.ids`);
const record = async (device: 'cpu' | 'cuda') => {
  const m = await loadModel(path.join(FIXTURES, name), { device });
  const out: { key: string; v: Float32Array }[] = [];
  const s = m.createSession();
  s.append(ids, { logits: 'all', trace: (n, l, read) => out.push({ key: `${n}@${l}`, v: read() }) });
  const logits = m.logits(ids);
  m.dispose();
  return { out, logits };
};
const c = await record('cpu');
const g = await record('cuda');
for (let i = 0; i < c.out.length; i++) {
  const e = relErr(g.out[i].v, c.out[i].v);
  console.log(`${c.out[i].key.padEnd(20)} ${e.toExponential(2)}${e > 0.02 ? '   <<<' : ''}`);
}
console.log(`logits row 0 rel err ${relErr(g.logits[0], c.logits[0]).toExponential(2)}`);

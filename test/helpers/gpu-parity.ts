/**
 * GPU fixture parity, shared by test/gpu/model.test.ts and the benchmark (which reports the measured figures):
 * logits of every fixture prompt against the float64 reference (max |Δ| / max |reference|), and greedy decoding
 * from gen.prompt (prefill 11 + 12, then token by token) compared with gen.ids under SERVING.md's N1 rule.
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import { loadModel, type Model } from '../../src/index.js';
import { argmax } from '../../src/engine/sampling.js';
import { FIXTURES } from './paths.js';
import { getF32, getIds, readExpected } from './expected.js';
import { maxRelErr } from './gpu.js';

export function top5(row: ArrayLike<number>): number[] {
  return Array.from({ length: row.length }, (_, i) => i)
    .sort((a, b) => row[b] - row[a] || a - b)
    .slice(0, 5);
}

/** Measured by the tests, read by the benchmark (bench/gpu.ts). */
export interface FixtureReport {
  fixture: string;
  maxRelErr: number;
  greedyMatch: boolean;
  firstDivergence: number | null;
}

export async function fixtureParity(name: string): Promise<FixtureReport> {
  const model: Model = await loadModel(path.join(FIXTURES, name), { device: 'cuda' });
  const exp = await readExpected(name);
  const V = model.config.vocabSize;
  try {
    let worst = 0;
    for (let i = 0; exp.has(`p${i}.ids`); i++) {
      const ids = getIds(exp, `p${i}.ids`);
      const want = getF32(exp, `p${i}.logits`);
      const rows = model.logits(ids);
      for (let t = 0; t < rows.length; t++) worst = Math.max(worst, maxRelErr(rows[t], want.subarray(t * V, (t + 1) * V)));
    }
    const prompt = getIds(exp, 'gen.prompt'), wantIds = getIds(exp, 'gen.ids'), wantLogits = getF32(exp, 'gen.logits');
    const s = model.createSession();
    s.append(prompt.slice(0, 11), { logits: 'none' });
    let logits = s.append(prompt.slice(11)).row(0);
    let firstDivergence: number | null = null;
    for (let i = 0; i < wantIds.length; i++) {
      const ref = wantLogits.subarray(i * V, (i + 1) * V);
      worst = Math.max(worst, maxRelErr(logits, ref));
      const id = argmax(logits);
      if (id !== wantIds[i]) {
        firstDivergence = i;
        assert.ok(top5(ref).includes(id), `${name} step ${i}: GPU token ${id} not in the reference's top 5 ${top5(ref)}`);
        assert.ok(top5(logits).includes(wantIds[i]), `${name} step ${i}: reference token ${wantIds[i]} not in the GPU's top 5 ${top5(logits)}`);
        break;
      }
      if (i + 1 < wantIds.length) logits = s.append([id]).row(0);
    }
    s.dispose();
    return { fixture: name, maxRelErr: worst, greedyMatch: firstDivergence === null, firstDivergence };
  } finally {
    model.dispose();
  }
}


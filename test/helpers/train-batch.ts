/** Training batches for tests: documents of given lengths, random tokens from a seed, packed as TrainModel wants. */
import type { TrainBatch } from '../../src/train/model.js';
import { NormalRng } from '../../src/train/params.js';

export function randomBatch(lengths: readonly number[], V: number, seed: number): TrainBatch {
  const rng = new NormalRng(seed);
  const T = lengths.reduce((a, b) => a + b, 0);
  const ids = new Int32Array(T), targets = new Int32Array(T), positions = new Int32Array(T);
  const offsets = new Int32Array(lengths.length + 1);
  let at = 0;
  lengths.forEach((n, d) => {
    for (let i = 0; i < n; i++) ids[at + i] = Math.floor(rng.uniform() * V);
    for (let i = 0; i < n; i++) {
      targets[at + i] = i + 1 < n ? ids[at + i + 1] : -1;
      positions[at + i] = i;
    }
    at += n;
    offsets[d + 1] = at;
  });
  return { ids, targets, positions, offsets, maxLength: Math.max(...lengths) };
}

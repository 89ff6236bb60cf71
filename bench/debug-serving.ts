/**
 * Diagnostic (not a test): replays the GPU serving test's solo runs on a fixture step by step, synchronising after
 * every engine step, and prints the batch of the first step that faults. Run with CUDA_LAUNCH_BLOCKING=1 to make
 * the faulting launch throw at its call site.
 */
import path from 'node:path';
import { loadModel, Rng, type EngineRequest } from '../src/index.js';
import { FIXTURES } from '../test/helpers/paths.js';

const name = process.argv[2] ?? 'small-d128';
const initial = Number(process.argv[3] ?? 24);
const model = await loadModel(path.join(FIXTURES, name), { device: 'cuda', cache: { maxSequences: 6, initialKvBlocks: initial, maxKvBlocks: Math.max(initial, 24) } });
const rng = new Rng(7);
const V = model.config.vocabSize;
const reqs: EngineRequest[] = Array.from({ length: 10 }, (_, i) => ({
  prompt: Array.from({ length: 20 + Math.floor(rng.next() * 300) }, () => Math.floor(rng.next() * V)),
  maxTokens: 24 + 4 * i,
  stopTokenIds: [],
  sampling: { temperature: 0, seed: 1 },
  logprobs: process.env.NO_LOGPROBS ? undefined : 5,
}));
const sync = (): void => (model as unknown as { net: { backend: { synchronize(): void } } }).net.backend.synchronize();
for (const [i, r] of reqs.entries()) {
  const s = model.createScheduler();
  let n = 0;
  s.submit(r, { onToken: () => n++, onFinish() {}, onError: (e) => console.log('seq error', e.message) });
  let step = 0;
  try {
    while (s.busy) {
      s.step();
      sync();
      step++;
    }
    console.log(`request ${i}: prompt ${r.prompt.length}, ${n} tokens, ${step} steps ok`);
  } catch (e) {
    console.log(`request ${i}: prompt ${r.prompt.length}: step ${step} (after ${n} tokens) failed: ${(e as Error).stack}`);
    process.exit(1);
  }
}
console.log('all ok');
model.dispose();

/**
 * CPU benchmark: prefill and decode throughput of the fp32 reference backend on the fixture models.
 * Usage: npm run bench:cpu   (prints a table; CPU figures are not written to bench/results/h200.json)
 */
import os from 'node:os';
import path from 'node:path';
import { loadModel } from '../src/index.js';
import { FIXTURES } from '../test/helpers/paths.js';
import { Rng } from '../src/engine/sampling.js';

interface Row { model: string; case: string; tokens: number; ms: number }

async function main(): Promise<void> {
  const rows: Row[] = [];
  for (const [name, prompt] of [['tiny', 300], ['small-d128', 300], ['small-d128', 1500]] as const) {
    const model = await loadModel(path.join(FIXTURES, name), { device: 'cpu' });
    const rng = new Rng(1);
    const ids = Array.from({ length: prompt }, () => 4 + Math.floor(rng.next() * (model.config.vocabSize - 4)));
    model.logits(ids.slice(0, 16)); // warm-up (JIT)
    const reps = 3;
    let best = Infinity;
    for (let r = 0; r < reps; r++) {
      const s = model.createSession();
      const t0 = performance.now();
      s.append(ids, { logits: 'last' });
      best = Math.min(best, performance.now() - t0);
      if (r === reps - 1) {
        const steps = 64;
        const t1 = performance.now();
        for (let i = 0; i < steps; i++) s.append([ids[i]]);
        rows.push({ model: name, case: `decode after ${prompt}`, tokens: steps, ms: performance.now() - t1 });
      }
      s.dispose();
    }
    rows.push({ model: name, case: `prefill ${prompt}`, tokens: prompt, ms: best });
    model.dispose();
  }
  console.log(`CPU: ${os.cpus()[0]?.model ?? 'unknown'} (${os.cpus().length} cores), Node ${process.version}, ${new Date().toISOString().slice(0, 10)}`);
  console.log('model        case                   tokens      ms    tokens/s');
  for (const r of rows) {
    console.log(`${r.model.padEnd(12)} ${r.case.padEnd(22)} ${String(r.tokens).padStart(6)} ${r.ms.toFixed(0).padStart(7)} ${(r.tokens / (r.ms / 1000)).toFixed(0).padStart(11)}`);
  }
}

await main();

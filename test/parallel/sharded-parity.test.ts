/**
 * Tensor and expert parallelism on the CPU with simulated ranks (worker threads + ThreadCommunicator): every rank's
 * logits equal the single-process model's within 1e-5 (only fp32 summation order differs), and greedy decoding
 * through the sharded lightning states and KV caches gives the same ids. Also: a rank's loaded weights are exactly
 * its slices of the full weights.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import { CpuBackend } from '../../src/backend/cpu/cpu-backend.js';
import type { Tensor } from '../../src/backend/backend.js';
import { loadRank } from '../../src/parallel/load.js';
import { expertRange, headRange, kvHeadRange, parallelContext } from '../../src/parallel/shard.js';
import { createThreadCommunicatorShared } from '../../src/parallel/thread-communicator.js';
import type { Communicator } from '../../src/parallel/communicator.js';
import { FIXTURES } from '../helpers/paths.js';
import { getIds, maxAbsDiff, readExpected } from '../helpers/expected.js';
import { runScript, type ScriptInput, type ScriptOutput } from './script.js';
import type { RankWorkerData } from './rank-worker.js';

const TOL = 1e-5;
const WORKER = new URL('./rank-worker.js', import.meta.url);

async function runRanks(dir: string, size: number, mode: { tp: boolean; ep: boolean }, input: ScriptInput): Promise<ScriptOutput[]> {
  const shared = createThreadCommunicatorShared(size);
  const workers = Array.from({ length: size }, (_, rank) => new Worker(WORKER, { workerData: { dir, rank, shared, mode, input } satisfies RankWorkerData }));
  try {
    return await Promise.all(workers.map((w) => new Promise<ScriptOutput>((resolve, reject) => {
      w.once('message', resolve);
      w.once('error', reject);
      w.once('exit', (code) => reject(new Error(`worker exited with code ${code} before answering`)));
    })));
  } finally {
    await Promise.all(workers.map((w) => w.terminate()));
  }
}

const cases: { fixture: string; prompt: string }[] = [
  { fixture: 'tiny', prompt: 'p4' }, // 300 tokens: more than one lightning block
  { fixture: 'small-d128', prompt: 'p1' }, // head_dim 128, 300 tokens
];
const layouts: { name: string; size: number; mode: { tp: boolean; ep: boolean } }[] = [
  { name: 'tp=2', size: 2, mode: { tp: true, ep: false } },
  { name: 'ep=2', size: 2, mode: { tp: false, ep: true } },
  { name: 'tp=ep=2', size: 2, mode: { tp: true, ep: true } },
  { name: 'tp=4 (KV heads replicated)', size: 4, mode: { tp: true, ep: false } },
  { name: 'ep=4', size: 4, mode: { tp: false, ep: true } },
  { name: 'tp=ep=4', size: 4, mode: { tp: true, ep: true } },
];

for (const { fixture, prompt } of cases) {
  const dir = path.join(FIXTURES, fixture);
  let reference: Promise<{ input: ScriptInput; out: ScriptOutput }> | undefined;
  const getReference = () =>
    (reference ??= (async () => {
      const exp = await readExpected(fixture);
      const input: ScriptInput = { prompt: getIds(exp, `${prompt}.ids`), genPrompt: getIds(exp, 'gen.prompt'), steps: 4 };
      const model = await loadRank(dir, new CpuBackend());
      const out = runScript(model, input);
      model.dispose();
      return { input, out };
    })());

  for (const { name, size, mode } of layouts) {
    test(`${fixture}: ${name} ranks equal the single-process model`, async () => {
      const { input, out: ref } = await getReference();
      const outs = await runRanks(dir, size, mode, input);
      outs.forEach((o, rank) => {
        const d = maxAbsDiff(o.logits, ref.logits), dg = maxAbsDiff(o.genLogits, ref.genLogits);
        assert.ok(d <= TOL, `rank ${rank}: prompt logits max |Δ| = ${d}`);
        assert.ok(dg <= TOL, `rank ${rank}: decode logits max |Δ| = ${dg}`);
        assert.deepEqual(o.ids, ref.ids, `rank ${rank}: greedy ids`);
        if (rank === 0) console.log(`${fixture} ${name}: max |Δ| prompt ${d.toExponential(2)}, decode ${dg.toExponential(2)}`);
      });
      // Every rank computed the same bits (the all-reduce sums in one fixed order on each).
      for (const o of outs.slice(1)) assert.equal(maxAbsDiff(o.logits, outs[0].logits), 0, 'ranks agree exactly');
    });
  }
}

/** A communicator that only names a rank (loading needs no collectives). */
const fakeComm = (rank: number, size: number): Communicator => ({ rank, size, allReduceSum: () => assert.fail('no collectives while loading') });

test('a rank loads exactly its slices of the full weights (tiny, tp=ep=4)', async () => {
  const dir = path.join(FIXTURES, 'tiny');
  const b = new CpuBackend();
  const full = await loadRank(dir, b);
  const c = full.config, Dh = c.headDim, D = c.hiddenSize;
  const host = (t: Tensor) => b.toFloat32(t);
  /** rows [r0, r1) and cols [c0, c1) of a row-major [R, C] array. */
  const slice = (a: Float32Array, C: number, r0: number, r1: number, c0 = 0, c1 = C) => {
    const out = new Float32Array((r1 - r0) * (c1 - c0));
    for (let r = r0; r < r1; r++) out.set(a.subarray(r * C + c0, r * C + c1), (r - r0) * (c1 - c0));
    return out;
  };
  for (let rank = 0; rank < 4; rank++) {
    const p = parallelContext(fakeComm(rank, 4), { tp: true, ep: true });
    const part = await loadRank(dir, b, p);
    const h = headRange(c, p), kv = kvHeadRange(c, p), e = expertRange(c, p);
    c.layerTypes.forEach((_, l) => {
      const fw = full.weights.layers[l], pw = part.weights.layers[l];
      const fa = fw.attn, pa = pw.attn;
      if (fa.kind === 'lightning' && pa.kind === 'lightning') {
        assert.deepEqual(host(pa.qkv), slice(host(fa.qkv), D, 3 * h.start * Dh, 3 * h.end * Dh), `layer ${l} qkv`);
        assert.deepEqual(host(pa.gate), slice(host(fa.gate), D, h.start * Dh, h.end * Dh), `layer ${l} gate`);
        assert.deepEqual(host(pa.norm), host(fa.norm).slice(h.start * Dh, h.end * Dh), `layer ${l} norm`);
        assert.deepEqual(host(pa.out), slice(host(fa.out), c.numHeads * Dh, 0, D, h.start * Dh, h.end * Dh), `layer ${l} out`);
        assert.deepEqual(host(pa.slopes), host(fa.slopes).slice(h.start, h.end), `layer ${l} slopes`);
      } else if (fa.kind === 'softmax' && pa.kind === 'softmax') {
        assert.deepEqual(host(pa.q), slice(host(fa.q), D, h.start * Dh, h.end * Dh), `layer ${l} q`);
        assert.deepEqual(host(pa.k), slice(host(fa.k), D, kv.start * Dh, kv.end * Dh), `layer ${l} k`);
        assert.deepEqual(host(pa.v), slice(host(fa.v), D, kv.start * Dh, kv.end * Dh), `layer ${l} v`);
        assert.deepEqual(host(pa.o), slice(host(fa.o), c.numHeads * Dh, 0, D, h.start * Dh, h.end * Dh), `layer ${l} o`);
      } else assert.fail(`layer ${l}: kinds differ`);
      const I = c.intermediateSize;
      assert.deepEqual(host(pw.w13), host(fw.w13).slice(e.start * 2 * I * D, e.end * 2 * I * D), `layer ${l} w13`);
      assert.deepEqual(host(pw.w2), host(fw.w2).slice(e.start * D * I, e.end * D * I), `layer ${l} w2`);
      assert.deepEqual(host(pw.router), host(fw.router), `layer ${l} router (replicated)`);
    });
    part.dispose();
  }
  full.dispose();
});

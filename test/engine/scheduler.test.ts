/**
 * Continuous batching on the tiny fixture (CPU): every request's tokens equal the same request run alone — greedy
 * and seeded sampling — while requests queue for slots, prefill in chunks next to running decodes, and get preempted
 * by recompute when the paged KV cache runs out. Aborts and finishes free slots and blocks (10 rounds leak nothing);
 * a request that can never fit is refused at submit.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { CapacityError, loadModel, Rng, type EngineRequest, type Model, type SampledToken, type Scheduler } from '../../src/index.js';
import { FIXTURES } from '../helpers/paths.js';

const TINY = path.join(FIXTURES, 'tiny');

function prompts(count: number, seed: number, minLen: number, maxLen: number, V: number): number[][] {
  const rng = new Rng(seed);
  return Array.from({ length: count }, () => Array.from({ length: minLen + Math.floor(rng.next() * (maxLen - minLen + 1)) }, () => Math.floor(rng.next() * V)));
}

interface Outcome {
  ids: number[];
  reason?: string;
  error?: Error;
}

function request(prompt: number[], maxTokens: number, sampling: EngineRequest['sampling'] = { temperature: 0, seed: 1 }): EngineRequest {
  return { prompt, maxTokens, stopTokenIds: [], sampling };
}

/** Submits every request, runs the scheduler to completion, returns each request's tokens. */
function runAll(s: Scheduler, reqs: EngineRequest[], onToken?: (i: number, t: SampledToken, n: number) => void): Outcome[] {
  const out: Outcome[] = reqs.map(() => ({ ids: [] }));
  reqs.forEach((r, i) =>
    s.submit(r, {
      onToken: (t) => {
        out[i].ids.push(t.id);
        onToken?.(i, t, out[i].ids.length);
      },
      onFinish: (reason) => (out[i].reason = reason),
      onError: (e) => (out[i].error = e),
    }),
  );
  let guard = 0;
  while (s.busy) {
    s.step();
    assert.ok(++guard < 100_000, 'scheduler did not finish');
  }
  return out;
}

async function alone(model: Model, reqs: EngineRequest[]): Promise<number[][]> {
  const res: number[][] = [];
  for (const r of reqs) {
    const g = await model.generate([...r.prompt], { maxTokens: r.maxTokens, temperature: r.sampling.temperature, topK: r.sampling.topK, topP: r.sampling.topP, seed: r.sampling.seed, ignoreEos: true });
    res.push(g.ids);
  }
  return res;
}

test('batched greedy == each request alone, with queueing and chunked prefill', async () => {
  const model = await loadModel(TINY, { device: 'cpu', cache: { maxSequences: 3 } });
  try {
    const V = model.config.vocabSize;
    const reqs = prompts(7, 11, 1, 150, V).map((p, i) => request(p, 5 + 3 * i));
    const ref = await alone(model, reqs);
    const s = model.createScheduler({ maxBatchTokens: 24 });
    const out = runAll(s, reqs);
    out.forEach((o, i) => {
      assert.equal(o.error, undefined);
      assert.equal(o.reason, 'length');
      assert.deepEqual(o.ids, ref[i], `request ${i}`);
    });
    assert.ok(s.stats.steps > 7, 'prompts were chunked');
    assert.equal(model.cacheUsage.slotsUsed, 0);
    assert.equal(model.cacheUsage.kvBlocksUsed, 0);
  } finally {
    model.dispose();
  }
});

test('seeded sampling: batched == alone', async () => {
  const model = await loadModel(TINY, { device: 'cpu' });
  try {
    const reqs = prompts(5, 12, 3, 40, model.config.vocabSize).map((p, i) => request(p, 12, { temperature: 0.9, topK: 50, topP: 0.95, seed: 100 + i }));
    const ref = await alone(model, reqs);
    const out = runAll(model.createScheduler({ maxBatchTokens: 16 }), reqs);
    out.forEach((o, i) => assert.deepEqual(o.ids, ref[i], `request ${i}`));
  } finally {
    model.dispose();
  }
});

test('a full KV cache preempts the newest sequence by recompute; outputs are unchanged', async () => {
  // 6 blocks of 64 rows: four sequences of ~100 + 60 tokens need 12, so some must be preempted and recomputed.
  const model = await loadModel(TINY, { device: 'cpu', cache: { maxSequences: 4, initialKvBlocks: 6, maxKvBlocks: 6 } });
  try {
    const reqs = prompts(4, 13, 90, 110, model.config.vocabSize).map((p) => request(p, 60));
    const ref = await alone(model, reqs);
    const s = model.createScheduler({ maxBatchTokens: 64 });
    const out = runAll(s, reqs);
    out.forEach((o, i) => assert.deepEqual(o.ids, ref[i], `request ${i}`));
    assert.ok(s.stats.preemptions > 0, 'expected preemptions');
    assert.equal(model.cacheUsage.kvBlocksUsed, 0);
    // A request larger than the whole cache is refused at once, never parked.
    assert.throws(() => s.submit(request([1, 2, 3], 6 * 64), { onToken() {}, onFinish() {}, onError() {} }), CapacityError);
  } finally {
    model.dispose();
  }
});

test('abort frees the slot and blocks; 10 rounds × 20 requests leak nothing', async () => {
  const model = await loadModel(TINY, { device: 'cpu', cache: { maxSequences: 8 } });
  try {
    const s = model.createScheduler({ maxBatchTokens: 32 });
    const rng = new Rng(5);
    for (let round = 0; round < 10; round++) {
      const reqs = prompts(20, 100 + round, 1, 30, model.config.vocabSize).map((p) => request(p, 8));
      const handles: { abort(): void }[] = [];
      const finished = new Set<number>();
      reqs.forEach((r, i) => {
        handles.push(
          s.submit(r, {
            onToken: () => {
              if (rng.next() < 0.15) {
                handles[i].abort();
                finished.add(i);
              }
            },
            onFinish: () => finished.add(i),
            onError: (e) => assert.fail(e),
          }),
        );
      });
      // Some are aborted while still waiting.
      handles[19].abort();
      finished.add(19);
      while (s.busy) s.step();
      assert.equal(finished.size, 20);
      assert.equal(model.cacheUsage.slotsUsed, 0);
      assert.equal(model.cacheUsage.kvBlocksUsed, 0);
      assert.equal(s.stats.running + s.stats.waiting, 0);
    }
  } finally {
    model.dispose();
  }
});

test('stop tokens, min tokens and logprobs', async () => {
  const model = await loadModel(TINY, { device: 'cpu' });
  try {
    const [p] = prompts(1, 14, 10, 10, model.config.vocabSize);
    const ref = (await alone(model, [request(p, 10)]))[0];
    const s = model.createScheduler();
    // Stop on the 4th greedy token.
    const stopped = runAll(s, [{ ...request(p, 10), stopTokenIds: [ref[3]] }])[0];
    assert.deepEqual(stopped.ids, ref.slice(0, ref.indexOf(ref[3]) + 1));
    assert.equal(stopped.reason, 'stop');
    // min_tokens masks the stop token until enough tokens exist.
    const masked = runAll(s, [{ ...request(p, 10), stopTokenIds: [ref[0]], minTokens: 3 }])[0];
    assert.notEqual(masked.ids[0], ref[0]);
    // logprobs: greedy picks the top-1, and the reported top list is sorted and includes it.
    const lp: SampledToken[] = [];
    runAll(s, [{ ...request(p, 4), logprobs: 3 }], (_, t) => lp.push(t));
    for (const t of lp) {
      assert.equal(t.top!.length, 3);
      assert.equal(t.top![0].id, t.id);
      assert.ok(Math.abs(t.top![0].logprob - t.logprob!) < 1e-9);
      assert.ok(t.top![0].logprob >= t.top![1].logprob && t.top![1].logprob >= t.top![2].logprob);
      assert.ok(t.logprob! <= 0);
    }
  } finally {
    model.dispose();
  }
});

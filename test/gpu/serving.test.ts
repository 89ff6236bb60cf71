/**
 * Continuous batching and the server on the GPU (bf16, paged KV, CUDA graphs for decode steps):
 *  - the scheduler's batched greedy output against each request alone, with queueing, chunked prefill and
 *    preemption, judged by the N1 rule (SERVING.md §11: identical until the first divergence, where each side's
 *    token is in the other's top 5). On the GPU a batch changes GEMM shapes, hence rounding, so bit equality is not
 *    expected; the run reports how many sequences were identical;
 *  - device-side sampling inside batched steps (no logprobs) gives the same greedy tokens as host sampling;
 *  - `lmoe serve --device cuda` (engine worker thread with CUDA) answers 24 concurrent streams.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { loadModel, Rng, type EngineRequest, type Model, type SampledToken, type Scheduler } from '../../src/index.js';
import { startServer } from '../../src/server/server.js';
import { FIXTURES } from '../helpers/paths.js';
import { getGpu } from '../helpers/gpu.js';

const { gpu, reason } = await getGpu();
const skip = gpu ? false : reason;

interface Run {
  ids: number[];
  top: number[][];
}

function runAll(s: Scheduler, reqs: EngineRequest[]): Run[] {
  const out: Run[] = reqs.map(() => ({ ids: [], top: [] }));
  reqs.forEach((r, i) =>
    s.submit(r, {
      onToken: (t: SampledToken) => {
        out[i].ids.push(t.id);
        out[i].top.push((t.top ?? []).map((x) => x.id));
      },
      onFinish() {},
      onError: (e) => assert.fail(e),
    }),
  );
  while (s.busy) s.step();
  return out;
}

/** N1: equal until the first divergence; there, each token is in the other's top 5. Returns the divergence step. */
function n1(a: Run, b: Run, label: string): number {
  for (let t = 0; t < Math.min(a.ids.length, b.ids.length); t++) {
    if (a.ids[t] === b.ids[t]) continue;
    assert.ok(b.top[t].includes(a.ids[t]) && a.top[t].includes(b.ids[t]), `${label}: step ${t} tokens ${a.ids[t]} / ${b.ids[t]} outside each other's top 5`);
    return t;
  }
  return -1;
}

for (const name of ['tiny-bf16', 'small-d128']) {
  test(`${name}: batched greedy vs alone (N1), chunked prefill and preemption on the GPU`, { skip }, async (t) => {
    // 16 blocks: six sequences are admitted with room for their prompts, then outgrow the cache while decoding.
    const model: Model = await loadModel(path.join(FIXTURES, name), { device: 'cuda', cache: { maxSequences: 6, initialKvBlocks: 16, maxKvBlocks: 16 } });
    try {
      const rng = new Rng(7);
      const V = model.config.vocabSize;
      const reqs: EngineRequest[] = Array.from({ length: 10 }, (_, i) => ({
        prompt: Array.from({ length: 40 + Math.floor(rng.next() * 80) }, () => Math.floor(rng.next() * V)),
        maxTokens: 80 + 4 * i,
        stopTokenIds: [],
        sampling: { temperature: 0, seed: 1 },
        logprobs: 5,
      }));
      const alone = reqs.map((r) => runAll(model.createScheduler(), [r])[0]);
      const s = model.createScheduler({ maxBatchTokens: 128 });
      const batched = runAll(s, reqs);
      let identical = 0;
      batched.forEach((b, i) => {
        assert.equal(b.ids.length, reqs[i].maxTokens);
        if (n1(b, alone[i], `request ${i}`) < 0) identical++;
      });
      t.diagnostic(`${identical}/${reqs.length} sequences identical to their solo run; ${s.stats.preemptions} preemptions, ${s.stats.steps} steps`);
      assert.ok(s.stats.preemptions > 0, 'the 16-block cache forces preemption');
      assert.equal(model.cacheUsage.slotsUsed, 0);
      assert.equal(model.cacheUsage.kvBlocksUsed, 0);

      // Device sampling (no logprobs) in batched steps: the same tokens as host sampling in the same batches.
      const plain = reqs.map((r) => ({ ...r, logprobs: undefined }));
      const dev = runAll(model.createScheduler({ maxBatchTokens: 128 }), plain);
      const host = runAll(model.createScheduler({ maxBatchTokens: 128 }), reqs);
      let same = 0;
      dev.forEach((d, i) => {
        if (d.ids.join() === host[i].ids.join()) same++;
      });
      t.diagnostic(`device vs host sampling: ${same}/${reqs.length} identical`);
      assert.equal(same, reqs.length);
    } finally {
      model.dispose();
    }
  });
}

test('lmoe serve on CUDA: 24 concurrent streams complete', { skip }, async () => {
  const server = await startServer({ model: path.join(FIXTURES, 'tiny-bf16'), port: 0, device: 'cuda', maxNumSeqs: 8 });
  try {
    await server.ready;
    const results = await Promise.all(
      Array.from({ length: 24 }, async (_, i) => {
        const r = await fetch(`${server.url}/v1/completions`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ model: 'tiny-bf16', prompt: `request ${i} says`, max_tokens: 32, temperature: i % 2 ? 0.8 : 0, seed: i, ignore_eos: true, stream: true }),
        });
        assert.equal(r.status, 200);
        const text = await r.text();
        assert.ok(text.trimEnd().endsWith('data: [DONE]'));
        assert.match(text, /"finish_reason":"length"/);
        return text;
      }),
    );
    assert.equal(results.length, 24);
    const m = await (await fetch(`${server.url}/metrics`)).text();
    assert.match(m, /lmoe_generation_tokens_total 768/);
  } finally {
    await server.drain(0);
  }
});

test('graph decode across a KV pool growth and a block-table doubling equals eager decode', { skip }, async () => {
  // The pool starts at 4 blocks and grows (copying) as the prompt and the decode need more; the block table doubles
  // past 16 blocks (1024 tokens). Graph replays must pick up the new pool and table pointers.
  const model = await loadModel(path.join(FIXTURES, 'tiny-bf16'), { device: 'cuda', cache: { initialKvBlocks: 4, maxKvBlocks: 64 } });
  try {
    const rng = new Rng(3);
    const prompt = Array.from({ length: 1000 }, () => Math.floor(rng.next() * model.config.vocabSize));
    const graphed = model.createSession(), eager = model.createSession();
    const eagerOpts = { trace: () => {} }; // a trace hook turns graphs off
    let a = graphed.append(prompt).row(0), b = eager.append(prompt, eagerOpts).row(0);
    for (let t = 0; t < 120; t++) {
      assert.deepEqual(Array.from(a), Array.from(b), `step ${t} (position ${graphed.position})`);
      let id = 0;
      for (let i = 1; i < a.length; i++) if (a[i] > a[id]) id = i;
      a = graphed.append([id]).row(0);
      b = eager.append([id], eagerOpts).row(0);
    }
    assert.ok(model.cacheUsage.kvBlocksAllocated > 32, `the pool grew (${model.cacheUsage.kvBlocksAllocated} blocks)`);
    graphed.dispose();
    eager.dispose();
  } finally {
    model.dispose();
  }
});

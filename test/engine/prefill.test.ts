/**
 * Long-prompt prefill through Model.generate / stream: onPrefillProgress reports increasing `done` ending at the
 * prompt length, once per chunk; an abort between chunks stops the prefill before the next chunk with AbortError;
 * the default chunk size comes from the memory plan (8192 on the CPU, the largest power of two that fits on a
 * backend that reports device memory); a context that cannot fit is refused with the plan's one-line CapacityError
 * before any forward pass; and the KV cache for the whole context is reserved in one exact allocation.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { loadModelConfig } from '../../src/config/config.js';
import type { DeviceMemoryInfo, Tensor } from '../../src/backend/backend.js';
import { CpuBackend } from '../../src/backend/cpu/cpu-backend.js';
import { planMemory } from '../../src/engine/memory-plan.js';
import { AbortError, CapacityError, type Model, type PrefillProgress } from '../../src/index.js';
import { fixtureModel } from '../helpers/engine.js';
import { FIXTURES } from '../helpers/paths.js';

/** The CPU backend counting forward passes (one embedding lookup each) and, when given, reporting device memory. */
class CountingBackend extends CpuBackend {
  passes = 0;
  override embedding(out: Tensor, table: Tensor, ids: Tensor): void {
    this.passes++;
    super.embedding(out, table, ids);
  }
  /** Set by limited(); absent otherwise, as on the real CPU backend. */
  memoryInfo?(): DeviceMemoryInfo;
}

/** A CountingBackend that reports `free` bytes of device memory (and none used). */
function limited(free: number): CountingBackend {
  const b = new CountingBackend();
  b.memoryInfo = () => ({ free, total: free, used: 0 });
  return b;
}

const GREEDY = { temperature: 0, ignoreEos: true } as const;
const PROMPT = Array.from({ length: 1300 }, (_, i) => ((i * 7) % 1000) + 4);

async function withModel<T>(backend: CountingBackend, body: (m: Model, b: CountingBackend) => Promise<T>): Promise<T> {
  const m = await fixtureModel('tiny', backend);
  try {
    return await body(m, backend);
  } finally {
    m.dispose();
  }
}

function checkProgress(calls: PrefillProgress[], total: number, chunk: number): void {
  const want = Array.from({ length: Math.ceil(total / chunk) }, (_, i) => Math.min((i + 1) * chunk, total));
  assert.deepEqual(calls.map((p) => p.done), want, `done after each ${chunk}-token chunk`);
  for (const p of calls) {
    assert.equal(p.total, total);
    assert.ok(p.tokensPerSecond > 0 && Number.isFinite(p.tokensPerSecond), `tokens/s ${p.tokensPerSecond}`);
    assert.ok(p.etaSeconds >= 0 && Number.isFinite(p.etaSeconds), `eta ${p.etaSeconds}`);
  }
  assert.equal(calls.at(-1)!.etaSeconds, 0);
}

test('onPrefillProgress: once per chunk, done increasing to the prompt length; the output does not change', async () => {
  await withModel(new CountingBackend(), async (m, b) => {
    const ref = await m.generate(PROMPT, { ...GREEDY, maxTokens: 3, prefillChunkSize: 1300 });
    for (const chunk of [100, 512, 1299]) {
      const calls: PrefillProgress[] = [];
      b.passes = 0;
      const r = await m.generate(PROMPT, { ...GREEDY, maxTokens: 3, prefillChunkSize: chunk, onPrefillProgress: (p) => calls.push(p) });
      checkProgress(calls, PROMPT.length, chunk);
      assert.equal(b.passes, Math.ceil(PROMPT.length / chunk) + 2, 'prefill chunks, then two decode steps');
      assert.deepEqual(r.ids, ref.ids, `chunk ${chunk}`);
    }
    // the stream reports the same way, before its first token
    const calls: PrefillProgress[] = [];
    let tokensBeforeDone = -1;
    for await (const ev of m.stream(PROMPT, { ...GREEDY, maxTokens: 2, prefillChunkSize: 650, onPrefillProgress: (p) => calls.push(p) })) {
      if (tokensBeforeDone < 0) tokensBeforeDone = calls.length;
      if (ev.type === 'done') break;
    }
    assert.equal(tokensBeforeDone, 2);
    checkProgress(calls, PROMPT.length, 650);
  });
});

test('the default chunk on the CPU is the plan\'s 8192: a 1300-token prompt is one pass', async () => {
  await withModel(new CountingBackend(), async (m, b) => {
    const calls: PrefillProgress[] = [];
    await m.generate(PROMPT, { ...GREEDY, maxTokens: 1, onPrefillProgress: (p) => calls.push(p) });
    checkProgress(calls, PROMPT.length, 8192);
    assert.equal(b.passes, 1);
  });
});

test('an abort between chunks stops the prefill before the next chunk with AbortError', async () => {
  await withModel(new CountingBackend(), async (m, b) => {
    const ac = new AbortController();
    const calls: PrefillProgress[] = [];
    await assert.rejects(
      m.generate(PROMPT, { ...GREEDY, maxTokens: 4, prefillChunkSize: 100, signal: ac.signal, onPrefillProgress: (p) => (calls.push(p), p.done >= 300 && ac.abort()) }),
      AbortError,
    );
    assert.deepEqual(calls.map((p) => p.done), [100, 200, 300]);
    assert.equal(b.passes, 3, 'no chunk after the abort');
    // from a timer: the event loop runs between chunks, so the abort lands mid-prefill
    const ac2 = new AbortController();
    const slow: PrefillProgress[] = [];
    b.passes = 0;
    setTimeout(() => ac2.abort(), 5);
    await assert.rejects(m.generate(PROMPT, { ...GREEDY, maxTokens: 1, prefillChunkSize: 1, signal: ac2.signal, onPrefillProgress: (p) => slow.push(p) }), AbortError);
    assert.ok(b.passes < PROMPT.length, `stopped after ${b.passes} of ${PROMPT.length} one-token chunks`);
    assert.equal(slow.length, b.passes);
    // nothing leaked: the model still generates the same tokens
    assert.equal(m.cacheUsage.slotsUsed, 0);
    assert.equal(m.cacheUsage.kvBlocksUsed, 0);
  });
});

test('a context that cannot fit the device is refused up front with the plan\'s one line', async () => {
  const budget = 2 ** 30; // under the plan's 1.5 GiB reserve alone
  await withModel(limited(budget), async (m, b) => {
    await assert.rejects(m.generate(PROMPT, { ...GREEDY, maxTokens: 4 }), (e: unknown) => {
      assert.ok(e instanceof CapacityError, String(e));
      assert.equal(e.code, 'OUT_OF_MEMORY');
      assert.match(e.message, /^a 1,304-token context needs 1\.5 GiB \(weights [\d.]+ [KM]iB, KV cache [\d.]+ KiB, .*\) but only 1\.0 GiB of device memory is available$/);
      return true;
    });
    assert.equal(b.passes, 0, 'no forward pass ran');
    assert.equal(m.cacheUsage.kvBlocksAllocated, 0, 'no KV cache was allocated');
    // the stream refuses on its first step, with no token
    const events: unknown[] = [];
    await assert.rejects(
      (async () => {
        for await (const ev of m.stream(PROMPT, { ...GREEDY, maxTokens: 4 })) events.push(ev);
      })(),
      CapacityError,
    );
    assert.equal(events.length, 0);
  });
});

test('on a backend that reports memory the default chunk is the largest that fits; the KV cache is reserved exactly', async () => {
  const context = PROMPT.length + 4;
  const base = { config: await loadModelConfig(path.join(FIXTURES, 'tiny')), contextTokens: context, weightDType: 'f32', activationDType: 'f32' } as const;
  // room for 512-token chunks but not 1024 (a fresh model holds nothing else: one state slot, an empty pool)
  const free = planMemory({ ...base, prefillChunk: 512 }).totalBytes;
  assert.ok(planMemory({ ...base, prefillChunk: 1024 }).totalBytes > free);
  await withModel(limited(free), async (m, b) => {
    const calls: PrefillProgress[] = [];
    const r = await m.generate(PROMPT, { ...GREEDY, maxTokens: 4, onPrefillProgress: (p) => calls.push(p) });
    assert.equal(r.ids.length, 4);
    checkProgress(calls, PROMPT.length, 512);
    assert.equal(b.passes, 3 + 3);
    // one exact reservation for prompt + maxTokens (21 blocks), not doubling growth (16, 32)
    assert.equal(m.cacheUsage.kvBlocksAllocated, Math.ceil(context / 64));
    // a caller's chunk size is kept as long as the plan with it fits
    const given: PrefillProgress[] = [];
    await m.generate(PROMPT, { ...GREEDY, maxTokens: 4, prefillChunkSize: 256, onPrefillProgress: (p) => given.push(p) });
    checkProgress(given, PROMPT.length, 256);
  });
});

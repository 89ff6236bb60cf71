/**
 * Chunked prefill equals one-shot prefill on the CPU, for the 300-token fixture prompts that cross the 256-token
 * lightning block boundary, at chunk sizes 1 (the decode recurrence token by token), 7, 64, 100, 255, 256 and 299:
 * the last position's logits, every lightning state and every row of the KV cache. (The 23-token, two-chunk case
 * through the public Session is in generate.test.ts.)
 *
 * Tolerance. Every chunking computes the same recurrence; only where fp32 rounding happens differs (block
 * boundaries move with the chunk start, and a one-token chunk rounds the state after every token). The state is
 * rounded at most about once per token, so differences stay within N · 2^-24 of the values' magnitude for N = 300
 * tokens (1.8e-5 relative); measured: at most 3.9e-6 (chunk 1, small-d128 states), 6e-7 for chunks ≥ 7. A chunk
 * that is a multiple of the block size keeps every block boundary, and so every operation, in place: there the
 * result is bit-identical, and asserted so.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { KV_BLOCK_SIZE } from '../../src/backend/backend.js';
import { CpuBackend } from '../../src/backend/cpu/cpu-backend.js';
import type { MiniMax01 } from '../../src/model/minimax01.js';
import { fixtureNet } from '../helpers/engine.js';
import { getIds, readExpected } from '../helpers/expected.js';

interface Caches {
  readonly logits: Float32Array;
  /** Lightning state by layer (undefined for softmax layers). */
  readonly states: (Float32Array | undefined)[];
  /** K and V rows [0, N) of each softmax layer, in position order (undefined for lightning layers). */
  readonly kv: ({ k: Float32Array; v: Float32Array } | undefined)[];
}

/** Prefills `ids` in chunks of `chunk` tokens and reads back the last logits row and the caches. */
function prefill(net: MiniMax01, ids: readonly number[], chunk: number): Caches {
  const b = net.backend, c = net.config;
  const s = net.newSequence();
  try {
    let logits: Float32Array | undefined;
    for (let i = 0; i < ids.length; i += chunk) {
      const last = i + chunk >= ids.length;
      const r = net.forward([{ state: s, tokens: ids.slice(i, i + chunk) }], { logits: last ? 'last' : 'none' });
      if (last) logits = r.logits;
    }
    const row = c.numKvHeads * c.headDim;
    const kv = c.layerTypes.map((t, l) => {
      if (t !== 'softmax') return undefined;
      const { k, v, blockTable } = s.kvFor(l);
      const table = b.toFloat32(blockTable), K = b.toFloat32(k), V = b.toFloat32(v);
      const out = { k: new Float32Array(ids.length * row), v: new Float32Array(ids.length * row) };
      for (let r = 0; r < ids.length; r++) {
        const at = (table[Math.floor(r / KV_BLOCK_SIZE)] * KV_BLOCK_SIZE + (r % KV_BLOCK_SIZE)) * row;
        out.k.set(K.subarray(at, at + row), r * row);
        out.v.set(V.subarray(at, at + row), r * row);
      }
      return out;
    });
    return { logits: logits!, states: c.layerTypes.map((t, l) => (t === 'lightning' ? s.lightningState(l) : undefined)), kv };
  } finally {
    s.dispose();
  }
}

function maxAbs(a: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]));
  return m;
}

/** max |a − b| ≤ rel · max |b| (0 means bit-identical). */
function assertNear(a: Float32Array, b: Float32Array, rel: number, what: string): void {
  assert.equal(a.length, b.length, `${what}: length`);
  if (rel === 0) {
    assert.ok(a.every((x, i) => Object.is(x, b[i])), `${what}: not bit-identical`);
    return;
  }
  let worst = 0;
  for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i] - b[i]));
  const scale = maxAbs(b);
  assert.ok(scale > 0, `${what}: all zero`);
  assert.ok(worst <= rel * scale, `${what}: max |Δ| ${worst.toExponential(2)} > ${rel.toExponential(2)} × max |x| ${scale.toFixed(3)}`);
}

for (const [fixture, prompt, chunks] of [
  ['tiny', 'p4.ids', [1, 7, 64, 100, 255, 256, 299]],
  ['small-d128', 'p1.ids', [1, 7, 100, 256]],
] as const) {
  test(`${fixture}: a ${prompt} prefill in chunks of ${chunks.join(', ')} equals one pass (logits, lightning states, KV rows)`, async () => {
    const net = await fixtureNet(fixture, new CpuBackend());
    try {
      const ids = getIds(await readExpected(fixture), prompt);
      assert.equal(ids.length, 300);
      assert.ok(ids.length > net.config.blockSize, 'the prompt crosses a lightning block boundary');
      const whole = prefill(net, ids, ids.length);
      const tol = ids.length * 2 ** -24;
      for (const chunk of chunks) {
        const got = prefill(net, ids, chunk);
        const rel = chunk % net.config.blockSize === 0 ? 0 : tol;
        assertNear(got.logits, whole.logits, rel, `chunk ${chunk}: last-position logits`);
        got.states.forEach((s, l) => s && assertNear(s, whole.states[l]!, rel, `chunk ${chunk}: lightning state of layer ${l}`));
        got.kv.forEach((x, l) => {
          if (!x) return;
          assertNear(x.k, whole.kv[l]!.k, rel, `chunk ${chunk}: K rows of layer ${l}`);
          assertNear(x.v, whole.kv[l]!.v, rel, `chunk ${chunk}: V rows of layer ${l}`);
        });
      }
    } finally {
      net.dispose();
    }
  });
}

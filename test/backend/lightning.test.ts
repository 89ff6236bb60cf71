/**
 * Lightning attention on the CPU backend: the block algorithm (prefill, chunked prefill) equals the per-token
 * recurrence, checked against a float64 recurrence on random inputs at lengths around the block size, with and
 * without a carried-in state, and for several sequences in one call.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CpuBackend } from '../../src/backend/cpu/cpu-backend.js';
import type { LightningSegment, Tensor } from '../../src/backend/backend.js';
import { lightningSlopes } from '../../src/model/slopes.js';
import { assertClose } from '../helpers/expected.js';
import { Rng } from '../../src/engine/sampling.js';

const b = new CpuBackend();

function randn(rng: Rng, n: number, scale = 1): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const u = Math.max(rng.next(), 1e-12), v = rng.next();
    out[i] = scale * Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
  }
  return out;
}

/** float64 recurrence S_t = e^(−s)·S_(t−1) + k_tᵀv_t, o_t = q_t·S_t, for one head. Mutates S. */
function reference(qkv: Float32Array, T: number, H: number, Dh: number, h: number, s: number, S: Float64Array): Float64Array {
  const out = new Float64Array(T * Dh);
  const dec = Math.exp(-s);
  for (let t = 0; t < T; t++) {
    const base = t * 3 * H * Dh + h * 3 * Dh;
    for (let a = 0; a < Dh; a++) {
      for (let c = 0; c < Dh; c++) S[a * Dh + c] = dec * S[a * Dh + c] + qkv[base + Dh + a] * qkv[base + 2 * Dh + c];
    }
    for (let c = 0; c < Dh; c++) {
      let acc = 0;
      for (let a = 0; a < Dh; a++) acc += qkv[base + a] * S[a * Dh + c];
      out[t * Dh + c] = acc;
    }
  }
  return out;
}

function run(T: number, H: number, Dh: number, B: number, chunks: number[], seed: number, withPrior: boolean): void {
  const rng = new Rng(seed);
  // Positive activations like SiLU outputs keep the sums from cancelling, so the check is strict.
  const qkv = randn(rng, T * 3 * H * Dh, 0.5).map((x) => x / (1 + Math.exp(-x)));
  const slopes = lightningSlopes(H, 0, 4); // layer 0: the fastest decays (s up to ~0.92 at H = 4)
  const prior = withPrior ? randn(rng, H * Dh * Dh, 0.3) : new Float32Array(H * Dh * Dh);

  // expected: float64 recurrence
  const want = new Float64Array(T * H * Dh);
  const wantState = new Float64Array(H * Dh * Dh);
  for (let h = 0; h < H; h++) {
    const S = Float64Array.from(prior.subarray(h * Dh * Dh, (h + 1) * Dh * Dh));
    const o = reference(qkv, T, H, Dh, h, slopes[h], S);
    for (let t = 0; t < T; t++) for (let c = 0; c < Dh; c++) want[t * H * Dh + h * Dh + c] = o[t * Dh + c];
    wantState.set(S, h * Dh * Dh);
  }

  // actual: the backend op over the given chunks (1-token chunks take the decode path)
  const state = b.upload([H, Dh, Dh], 'f32', prior);
  const out = b.zeros([T, H * Dh], 'f32');
  const slopesT = b.upload([H], 'f32', slopes);
  let start = 0;
  for (const n of chunks) {
    const qkvT = b.upload([n, 3 * H * Dh], 'f32', qkv.subarray(start * 3 * H * Dh, (start + n) * 3 * H * Dh));
    const o = b.zeros([n, H * Dh], 'f32');
    b.lightningAttention(o, qkvT, slopesT, [{ start: 0, length: n, state }], B);
    b.copy(b.view(out, [n, H * Dh], start * H * Dh), o);
    start += n;
  }
  assert.equal(start, T);
  const scale = want.reduce((m, x) => Math.max(m, Math.abs(x)), 0);
  assertClose(b.toFloat32(out), want, 2e-6 * scale + 1e-6, `outputs T=${T} chunks=${chunks.join('+')}`);
  const sScale = wantState.reduce((m, x) => Math.max(m, Math.abs(x)), 0);
  assertClose(b.toFloat32(state), wantState, 2e-6 * sScale + 1e-6, `final state T=${T} chunks=${chunks.join('+')}`);
}

for (const T of [1, 2, 255, 256, 257, 511, 513, 700]) {
  test(`block algorithm (B=256) == recurrence, T=${T}, Dh=16`, () => run(T, 4, 16, 256, [T], T, false));
}
test('block algorithm with a carried-in state == recurrence (chunked prefill 100 + 300 + 1 + 1 + 60)', () => {
  run(462, 4, 16, 256, [100, 300, 1, 1, 60], 7, true);
});
test('token-by-token decode == recurrence from a prior state', () => {
  run(40, 2, 8, 256, Array(40).fill(1), 11, true);
});
test('small block size and odd head dim: B=16, Dh=12, T=100 in chunks 37 + 63', () => {
  run(100, 3, 12, 16, [37, 63], 5, true);
});
test('head_dim 128: T=300 (two blocks)', () => run(300, 2, 128, 256, [300], 3, false));

test('several sequences in one call equal each sequence alone', () => {
  const H = 2, Dh = 8, lens = [5, 1, 300, 17];
  const rng = new Rng(42);
  const T = lens.reduce((a, x) => a + x, 0);
  const qkv = b.upload([T, 3 * H * Dh], 'f32', randn(rng, T * 3 * H * Dh, 0.5));
  const slopes = b.upload([H], 'f32', lightningSlopes(H, 1, 8));
  const states: Tensor[] = lens.map(() => b.upload([H, Dh, Dh], 'f32', randn(rng, H * Dh * Dh, 0.2)));
  const initial = states.map((s) => b.toFloat32(s));
  const segs: LightningSegment[] = [];
  let start = 0;
  lens.forEach((n, i) => {
    segs.push({ start, length: n, state: states[i] });
    start += n;
  });
  const out = b.zeros([T, H * Dh], 'f32');
  b.lightningAttention(out, qkv, slopes, segs, 256);
  const all = b.toFloat32(out);
  const q = b.toFloat32(qkv);
  start = 0;
  lens.forEach((n, i) => {
    const s = b.upload([H, Dh, Dh], 'f32', initial[i]);
    const o = b.zeros([n, H * Dh], 'f32');
    b.lightningAttention(o, b.upload([n, 3 * H * Dh], 'f32', q.subarray(start * 3 * H * Dh, (start + n) * 3 * H * Dh)), slopes, [{ start: 0, length: n, state: s }], 256);
    assert.deepEqual(Array.from(b.toFloat32(o)), Array.from(all.subarray(start * H * Dh, (start + n) * H * Dh)), `sequence ${i}`);
    assert.deepEqual(Array.from(b.toFloat32(s)), Array.from(b.toFloat32(states[i])), `state ${i}`);
    start += n;
  });
});

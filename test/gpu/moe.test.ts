/**
 * CUDA MoE kernels (kernels/moe.cu through ops/moe.ts) against the CPU backend (MODEL.md §10).
 *
 * Routing: ids equal the CPU's moeRoute wherever the CPU's top-K probabilities are separated by more than 1e-6
 * (exactly equal logits must break to the lower id on both); weights within 1e-6. T = 1, 37, 4096; E = 32, 8, 3,
 * 100 (lanes loop over experts); K = 1, 2, 3, 4.
 * Experts: both paths of moeExperts — T·K ≤ 1024 slots (device sort + grouped GEMV kernels) and > 1024 (histogram,
 * scatter, cuBLAS per expert, swiglu) — against the CPU backend's fp32 moeExperts (norm-relative error; the GPU
 * rounds to bf16 at every REMOTE rounding point, so ~1e-3…1e-2 is expected), odd sizes that take the scalar
 * (non-16-byte) loops, the small path against the large path on the same tokens, and the real MiniMax-01 shape
 * (D = 6144, I = 9216, E = 32, K = 2) at T = 8 and T = 1024 against a float64 reference that mirrors the bf16
 * rounding points, for a few tokens. Outputs are poisoned (NaN) before every run; inputs are random and
 * bf16-representable, never zero.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { Backend, Tensor } from '../../src/backend/backend.js';
import { moeRoute as cpuMoeRoute } from '../../src/backend/cpu/moe.js';
import { roundBf16 } from '../../src/util/dtype.js';
import { Rng, bf16Values, cpu, getGpu, poison, randn, relErr, type Gpu } from '../helpers/gpu.js';

const { gpu, reason } = await getGpu();
const skip: string | false = gpu ? false : (reason ?? 'no GPU');

/** The slot count up to which moeExperts takes the small (graph-safe) path: MOE_SMALL_MAX_SLOTS in ops/moe.ts. */
const SMALL_MAX_SLOTS = 1024;

function g(): Gpu {
  if (!gpu) throw new Error('no GPU');
  return gpu;
}

function be(): Backend & { synchronize(): void; toInt32?(t: Tensor): Int32Array } {
  return g().backend as Backend & { synchronize(): void; toInt32?(t: Tensor): Int32Array };
}

function toInt32(t: Tensor): Int32Array {
  const b = be();
  return b.toInt32 ? b.toInt32(t) : Int32Array.from(b.toFloat32(t));
}

function fmt(x: number): string {
  return x.toExponential(2);
}

// ------------------------------------------------------------------------------------------------ routing

/** fp32 softmax probabilities as the CPU computes them (float64, rounded to fp32). */
function cpuProbs(logits: Float32Array, t: number, E: number): Float64Array {
  const row = logits.subarray(t * E, t * E + E);
  let max = -Infinity;
  for (const v of row) max = Math.max(max, v);
  let sum = 0;
  const p = new Float64Array(E);
  for (let e = 0; e < E; e++) sum += p[e] = Math.exp(row[e] - max);
  for (let e = 0; e < E; e++) p[e] = Math.fround(p[e] / sum);
  return p;
}

function routeCase(t: { diagnostic(m: string): void }, T: number, E: number, K: number, seed: number, opts: { ties?: boolean } = {}): void {
  const b = be();
  const rng = new Rng(seed);
  // bf16-representable logits (the reference's router output is a bf16 matmul), some exact ties when asked
  const logits = bf16Values(randn(rng, T * E, 2)).map((v) => (v === 0 ? 0.0078125 : v));
  if (opts.ties) {
    for (let tok = 0; tok < T; tok++) {
      // copy a random expert's logit onto a few others: exact ties, broken to the lower id
      const src = Math.floor(rng.next() * E);
      for (let j = 0; j < 3; j++) logits[tok * E + Math.floor(rng.next() * E)] = logits[tok * E + src];
    }
  }
  const wantIdx = new Int32Array(T * K);
  const wantW = new Float32Array(T * K);
  cpuMoeRoute(wantIdx, wantW, logits, T, E, K);

  const lg = b.upload([T, E], 'f32', logits);
  const idx = b.alloc([T, K], 'i32');
  const w = b.alloc([T, K], 'f32');
  poison(g(), idx);
  poison(g(), w);
  b.moeRoute(idx, w, lg);
  const gotIdx = toInt32(idx);
  const gotW = b.toFloat32(w);
  b.free(lg);
  b.free(idx);
  b.free(w);

  let checked = 0, nearTies = 0, maxWErr = 0;
  for (let tok = 0; tok < T; tok++) {
    const p = cpuProbs(logits, tok, E);
    // near-tie: two of the CPU's first K+1 ranks whose logits differ but whose probabilities are within 1e-6
    let ambiguous = false;
    const ranked = Array.from({ length: E }, (_, e) => e).sort((a, c) => p[c] - p[a] || a - c);
    for (let k = 0; k < Math.min(K, E - 1); k++) {
      const a = ranked[k], c = ranked[k + 1];
      if (logits[tok * E + a] !== logits[tok * E + c] && Math.abs(p[a] - p[c]) <= 1e-6) ambiguous = true;
    }
    for (let k = 0; k < K; k++) {
      const s = tok * K + k;
      assert.ok(gotIdx[s] >= 0 && gotIdx[s] < E, `T=${T} E=${E} K=${K} token ${tok} slot ${k}: index ${gotIdx[s]} out of range`);
      assert.ok(Number.isFinite(gotW[s]), `T=${T} E=${E} K=${K} token ${tok} slot ${k}: weight ${gotW[s]}`);
    }
    if (ambiguous) {
      nearTies++;
      // the GPU's picks must still be (near-)best: the same probabilities rank by rank within 1e-6
      for (let k = 0; k < K; k++) {
        const d = Math.abs(p[gotIdx[tok * K + k]] - p[wantIdx[tok * K + k]]);
        assert.ok(d <= 1e-6, `T=${T} E=${E} K=${K} token ${tok} rank ${k}: GPU expert ${gotIdx[tok * K + k]} (p ${p[gotIdx[tok * K + k]]}) vs CPU ${wantIdx[tok * K + k]} (p ${p[wantIdx[tok * K + k]]})`);
      }
      continue;
    }
    checked++;
    for (let k = 0; k < K; k++) {
      const s = tok * K + k;
      assert.equal(gotIdx[s], wantIdx[s], `T=${T} E=${E} K=${K} token ${tok} rank ${k}: expert ${gotIdx[s]}, CPU ${wantIdx[s]}`);
      const err = Math.abs(gotW[s] - wantW[s]);
      maxWErr = Math.max(maxWErr, err);
      assert.ok(err <= 1e-6, `T=${T} E=${E} K=${K} token ${tok} rank ${k}: weight ${gotW[s]} vs CPU ${wantW[s]} (|Δ| ${fmt(err)} > 1e-6)`);
    }
  }
  assert.ok(checked >= Math.ceil(T / 2), `T=${T} E=${E} K=${K}: only ${checked} of ${T} tokens without near-ties`);
  t.diagnostic(`route T=${T} E=${E} K=${K}${opts.ties ? ' (planted ties)' : ''}: ${checked} tokens exact, ${nearTies} near-ties; max |Δw| ${fmt(maxWErr)}`);
}

test('moeRoute matches the CPU: ids (ties to the lower id) and renormalised weights', { skip }, (t) => {
  routeCase(t, 1, 32, 2, 1);
  routeCase(t, 37, 32, 2, 2);
  routeCase(t, 4096, 32, 2, 3);
  routeCase(t, 37, 8, 2, 4);
  routeCase(t, 37, 3, 3, 5);
  routeCase(t, 37, 8, 1, 6);
  routeCase(t, 37, 32, 1, 7);
  routeCase(t, 37, 100, 4, 8); // E > 32: lanes loop over experts
  routeCase(t, 37, 1, 1, 9);
});

test('moeRoute: exact logit ties go to the lower expert id', { skip }, (t) => {
  routeCase(t, 256, 32, 2, 11, { ties: true });
  routeCase(t, 256, 8, 3, 12, { ties: true });
  routeCase(t, 64, 3, 2, 13, { ties: true });
});

// ------------------------------------------------------------------------------------------------ experts

interface ExpertInputs {
  readonly T: number;
  readonly D: number;
  readonly I: number;
  readonly E: number;
  readonly K: number;
  readonly x: Float32Array;
  readonly idx: Int32Array;
  readonly w: Float32Array;
}

/** K distinct experts per token drawn from the experts not in `unused`; positive bf16-representable weights. */
function routing(rng: Rng, T: number, E: number, K: number, unused: readonly number[]): { idx: Int32Array; w: Float32Array } {
  const pool = Array.from({ length: E }, (_, e) => e).filter((e) => !unused.includes(e));
  if (pool.length < K) throw new Error('not enough experts');
  const idx = new Int32Array(T * K);
  const w = new Float32Array(T * K);
  for (let t = 0; t < T; t++) {
    const p = pool.slice();
    let sum = 0;
    const raw: number[] = [];
    for (let k = 0; k < K; k++) {
      const j = k + Math.floor(rng.next() * (p.length - k));
      [p[k], p[j]] = [p[j], p[k]];
      idx[t * K + k] = p[k];
      const v = 0.2 + rng.next();
      raw.push(v);
      sum += v;
    }
    for (let k = 0; k < K; k++) w[t * K + k] = roundBf16(raw[k] / sum);
  }
  return { idx, w };
}

function nonZero(a: Float32Array): Float32Array {
  return a.map((v) => (v === 0 ? 2 ** -12 : v));
}

function expertInputs(T: number, D: number, I: number, E: number, K: number, seed: number, unused: readonly number[] = []): ExpertInputs {
  const rng = new Rng(seed);
  const x = nonZero(bf16Values(randn(rng, T * D, 1)));
  const { idx, w } = routing(rng, T, E, K, unused);
  return { T, D, I, E, K, x, idx, w };
}

/** Runs the CUDA backend's moeExperts on (a prefix of `n` tokens of) the inputs; out is poisoned first. */
function gpuExperts(inp: ExpertInputs, w13: Tensor, w2: Tensor, n = inp.T): Float32Array {
  const b = be();
  const { D, K } = inp;
  const x = b.upload([n, D], 'bf16', inp.x.subarray(0, n * D));
  const idx = b.upload([n, K], 'i32', inp.idx.subarray(0, n * K));
  const w = b.upload([n, K], 'f32', inp.w.subarray(0, n * K));
  const out = b.alloc([n, D], 'bf16');
  poison(g(), out);
  b.moeExperts(out, x, idx, w, w13, w2);
  const got = b.toFloat32(out);
  for (const t of [x, idx, w, out]) b.free(t);
  return got;
}

/** The CPU backend's fp32 moeExperts over the first `n` tokens. */
function cpuExperts(inp: ExpertInputs, w13: Float32Array, w2: Float32Array, n: number): Float32Array {
  const { D, I, E, K } = inp;
  const out = cpu.alloc([n, D], 'f32');
  cpu.moeExperts(
    out,
    cpu.upload([n, D], 'f32', inp.x.slice(0, n * D)),
    cpu.upload([n, K], 'i32', inp.idx.slice(0, n * K)),
    cpu.upload([n, K], 'f32', inp.w.slice(0, n * K)),
    cpu.upload([E, 2 * I, D], 'f32', w13),
    cpu.upload([E, D, I], 'f32', w2),
  );
  return cpu.toFloat32(out);
}

function assertAllFinite(a: Float32Array, what: string): void {
  for (let i = 0; i < a.length; i++) if (!Number.isFinite(a[i])) assert.fail(`${what}: element ${i} is ${a[i]} (unwritten or NaN)`);
}

function expertsCase(t: { diagnostic(m: string): void }, T: number, D: number, I: number, E: number, K: number, seed: number, refTokens = T): void {
  const b = be();
  const rng = new Rng(seed * 7919);
  const w13 = nonZero(bf16Values(randn(rng, E * 2 * I * D, 1 / Math.sqrt(D))));
  const w2 = nonZero(bf16Values(randn(rng, E * D * I, 1 / Math.sqrt(I))));
  // one expert gets no tokens (skipped by both paths)
  const inp = expertInputs(T, D, I, E, K, seed, E > K ? [E - 1] : []);
  const gw13 = b.upload([E, 2 * I, D], 'bf16', w13);
  const gw2 = b.upload([E, D, I], 'bf16', w2);
  try {
    const got = gpuExperts(inp, gw13, gw2);
    const path = T * K <= SMALL_MAX_SLOTS ? 'small' : 'large';
    assertAllFinite(got, `moeExperts T=${T} D=${D} I=${I} E=${E} K=${K} (${path} path)`);
    const n = Math.min(T, refTokens);
    const want = cpuExperts(inp, w13, w2, n);
    const err = relErr(got.subarray(0, n * D), want);
    t.diagnostic(`T=${T} D=${D} I=${I} E=${E} K=${K} (${path} path): ‖gpu − cpu‖/‖cpu‖ = ${fmt(err)} over ${n} tokens`);
    assert.ok(err < 1e-2, `moeExperts T=${T} D=${D} I=${I} E=${E} K=${K} (${path} path): norm-relative error ${fmt(err)} ≥ 1e-2`);
  } finally {
    b.free(gw13);
    b.free(gw2);
  }
}

test('moeExperts, small path (T·K ≤ 1024): device sort + grouped GEMV', { skip }, (t) => {
  expertsCase(t, 3, 512, 384, 32, 2, 21);
  expertsCase(t, 1, 512, 384, 32, 2, 22);
  expertsCase(t, 512, 512, 384, 32, 2, 23, 128); // exactly 1024 slots
  expertsCase(t, 5, 48, 32, 8, 2, 24);
  expertsCase(t, 7, 40, 24, 3, 3, 25); // D % 8 = 0, I % 8 = 0, K = 3
  expertsCase(t, 9, 44, 20, 8, 1, 26); // D, I not multiples of 8: scalar loops
  expertsCase(t, 6, 37, 13, 5, 2, 27); // odd sizes, partial row tiles
});

test('moeExperts, large path (T·K > 1024): histogram, scatter, cuBLAS per expert, swiglu', { skip }, (t) => {
  expertsCase(t, 4096, 512, 384, 32, 2, 31, 256);
  expertsCase(t, 600, 48, 32, 8, 2, 32);
  expertsCase(t, 400, 40, 24, 3, 3, 33);
  expertsCase(t, 1100, 44, 20, 8, 1, 34); // K = 1, odd widths
});

test('moeExperts: small path == large path on the same tokens (within bf16 noise)', { skip }, (t) => {
  const b = be();
  const [T, D, I, E, K] = [600, 512, 384, 32, 2];
  const rng = new Rng(41);
  const w13 = nonZero(bf16Values(randn(rng, E * 2 * I * D, 1 / Math.sqrt(D))));
  const w2 = nonZero(bf16Values(randn(rng, E * D * I, 1 / Math.sqrt(I))));
  const inp = expertInputs(T, D, I, E, K, 42);
  const gw13 = b.upload([E, 2 * I, D], 'bf16', w13);
  const gw2 = b.upload([E, D, I], 'bf16', w2);
  try {
    const n = SMALL_MAX_SLOTS / K; // 512 tokens: the small path
    const large = gpuExperts(inp, gw13, gw2); // 1200 slots: the large path
    const small = gpuExperts(inp, gw13, gw2, n);
    assertAllFinite(large, 'large path');
    assertAllFinite(small, 'small path');
    const a = large.subarray(0, n * D);
    const err = relErr(small, a);
    let same = 0;
    for (let i = 0; i < small.length; i++) if (small[i] === a[i]) same++;
    const frac = same / small.length;
    t.diagnostic(`small vs large over ${n} tokens: ‖Δ‖/‖large‖ = ${fmt(err)}, ${(100 * frac).toFixed(1)}% of elements bit-equal`);
    assert.ok(err < 5e-3, `small vs large path: norm-relative difference ${fmt(err)} ≥ 5e-3`);
    assert.ok(frac > 0.5, `small vs large path: only ${(100 * frac).toFixed(1)}% of elements equal`);
  } finally {
    b.free(gw13);
    b.free(gw2);
  }
});

// ------------------------------------------------------------------------------------------------ real shape

/**
 * Weights of the real shape (E·3·I·D ≈ 5.4e9 values) are too large to draw one by one on the host: every expert's
 * block is a window of a random pool (length prime to D and I) starting at a random offset, streamed with
 * writeBytes. The pool holds bf16 bits; `f` its values, extended so any row is one contiguous slice.
 */
interface Pool {
  readonly bits: Uint16Array;
  readonly f: Float32Array; // length N + maxRow
  readonly N: number;
}

function makePool(rng: Rng, N: number, scale: number, maxRow: number): Pool {
  const vals = nonZero(bf16Values(randn(rng, N, scale)));
  const bits = new Uint16Array(N);
  const u32 = new Uint32Array(vals.buffer);
  for (let i = 0; i < N; i++) bits[i] = u32[i] >>> 16;
  const f = new Float32Array(N + maxRow);
  f.set(vals);
  f.set(vals.subarray(0, maxRow), N);
  return { bits, f, N };
}

/** Writes experts' blocks: element j of expert e's block = pool[(off[e] + j) mod N]. */
function writePooled(b: Backend, t: Tensor, pool: Pool, offsets: readonly number[], blockElems: number): void {
  const chunk = 1 << 24;
  const buf = new Uint16Array(chunk);
  for (let e = 0; e < offsets.length; e++) {
    for (let j0 = 0; j0 < blockElems; j0 += chunk) {
      const n = Math.min(chunk, blockElems - j0);
      let filled = 0;
      while (filled < n) {
        const src = (offsets[e] + j0 + filled) % pool.N;
        const take = Math.min(n - filled, pool.N - src);
        buf.set(pool.bits.subarray(src, src + take), filled);
        filled += take;
      }
      b.writeBytes(t, e * blockElems + j0, new Uint8Array(buf.buffer, 0, n * 2), 'BF16');
    }
  }
}

/** float64 reference of one token with the GPU's bf16 rounding points (MODEL.md §10). */
function refToken(x: Float32Array, experts: number[], weights: number[], D: number, I: number, p13: Pool, off13: number[], p2: Pool, off2: number[]): Float64Array {
  const order = experts.map((e, k) => ({ e, w: weights[k] })).sort((a, c) => a.e - c.e);
  const acc = new Float64Array(D);
  const act = new Float64Array(I);
  for (const { e, w } of order) {
    const rowAt = (pool: Pool, off: number, row: number, len: number): number => (off + row * len) % pool.N;
    for (let i = 0; i < I; i++) {
      const a = rowAt(p13, off13[e], i, D), c = rowAt(p13, off13[e], I + i, D);
      let gs = 0, us = 0;
      for (let d = 0; d < D; d++) {
        gs += x[d] * p13.f[a + d];
        us += x[d] * p13.f[c + d];
      }
      const gg = roundBf16(gs), uu = roundBf16(us);
      act[i] = roundBf16(roundBf16(gg / (1 + Math.exp(-gg))) * uu);
    }
    const wb = roundBf16(w);
    for (let d = 0; d < D; d++) {
      const a = rowAt(p2, off2[e], d, I);
      let ys = 0;
      for (let i = 0; i < I; i++) ys += act[i] * p2.f[a + i];
      const cc = roundBf16(roundBf16(ys) * wb);
      acc[d] = roundBf16(acc[d] + cc);
    }
  }
  return acc;
}

test('moeExperts at the real shape (D 6144, I 9216, E 32, K 2): T = 8 (small) and T = 1024 (large)', { skip, timeout: 900_000 }, (t) => {
  const b = be();
  const [D, I, E, K] = [6144, 9216, 32, 2];
  const rng = new Rng(51);
  const p13 = makePool(rng, (1 << 23) + 4099, 1 / Math.sqrt(D), D);
  const p2 = makePool(rng, (1 << 23) + 7919, 1 / Math.sqrt(I), I);
  const off13 = Array.from({ length: E }, () => Math.floor(rng.next() * p13.N));
  const off2 = Array.from({ length: E }, () => Math.floor(rng.next() * p2.N));
  const w13 = b.alloc([E, 2 * I, D], 'bf16');
  const w2 = b.alloc([E, D, I], 'bf16');
  try {
    writePooled(b, w13, p13, off13, 2 * I * D);
    writePooled(b, w2, p2, off2, D * I);
    const inp = expertInputs(1024, D, I, E, K, 52, [7]);
    const results = new Map<number, Float32Array>();
    for (const [T, tokens] of [[8, [0, 5]], [1024, [0, 3, 1023]]] as const) {
      const got = gpuExperts(inp, w13, w2, T);
      const path = T * K <= SMALL_MAX_SLOTS ? 'small' : 'large';
      assertAllFinite(got, `real shape T=${T} (${path} path)`);
      results.set(T, got);
      for (const tok of tokens) {
        const ref = refToken(
          inp.x.subarray(tok * D, tok * D + D),
          Array.from(inp.idx.subarray(tok * K, tok * K + K)),
          Array.from(inp.w.subarray(tok * K, tok * K + K)),
          D, I, p13, off13, p2, off2,
        );
        const err = relErr(got.subarray(tok * D, tok * D + D), ref);
        t.diagnostic(`real shape T=${T} (${path} path) token ${tok}: ‖gpu − ref64‖/‖ref64‖ = ${fmt(err)}`);
        assert.ok(err < 1e-2, `real shape T=${T} (${path} path) token ${tok}: norm-relative error ${fmt(err)} ≥ 1e-2`);
      }
    }
    const small = results.get(8)!, large = results.get(1024)!.subarray(0, 8 * D);
    const err = relErr(small, large);
    t.diagnostic(`real shape small (T=8) vs large (T=1024) on tokens 0…7: ‖Δ‖/‖large‖ = ${fmt(err)}`);
    assert.ok(err < 5e-3, `real shape: small vs large path differ by ${fmt(err)} ≥ 5e-3`);
  } finally {
    b.free(w13);
    b.free(w2);
  }
});

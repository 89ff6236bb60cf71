/**
 * Device-side sampling (kernels/sampling.cu through CudaBackend.sampleTokens) against the CPU Sampler
 * (src/engine/sampling.ts): greedy = argmax with ties to the lower id on rows of the real vocabulary size
 * (V = 200,064, planted ties, NaN and −inf entries); temperature / top-k / top-p distributions over thousands of
 * rows of the same logits with different seeds match the CPU Sampler's probabilities (per-token 5σ bound and a
 * loose chi-square; tokens the CPU can never draw are never drawn: top-k never leaves the k best, ties at the
 * thresholds are kept lowest id first); top-p boundary cases (probabilities [0.5, 0.3, 0.15, 0.05] with p = 0.8 keep
 * two tokens, p = 0.5 keeps one, whatever constant the logits are shifted by); the same seed and step give the same
 * ids. The expected distribution is derived from the Sampler's own definition and cross-checked against the
 * Sampler's empirical frequencies.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { Backend, SampleParams, Tensor } from '../../src/backend/backend.js';
import { Sampler, argmax, topIndices } from '../../src/engine/sampling.js';
import { Rng, getGpu, randn, type Gpu } from '../helpers/gpu.js';
import { TOP_P_BOUNDARY_CASES } from '../helpers/top-p-cases.js';

const { gpu, reason } = await getGpu();
const skip: string | false = gpu ? false : (reason ?? 'no GPU');

type SamplingBackend = Backend & {
  synchronize(): void;
  sampleTokens?(out: Tensor, logits: Tensor, params: readonly SampleParams[]): void;
  toInt32?(t: Tensor): Int32Array;
};

function be(): SamplingBackend {
  if (!gpu) throw new Error('no GPU');
  return (gpu as Gpu).backend as SamplingBackend;
}

/** Samples one id per row of logits [R, V] on the GPU; out is poisoned (−1) first. */
function gpuSample(logits: Tensor, params: readonly SampleParams[]): Int32Array {
  const b = be();
  assert.ok(b.sampleTokens, 'the CUDA backend implements sampleTokens');
  const R = params.length;
  const out = b.upload([R], 'i32', new Int32Array(R).fill(-1));
  b.sampleTokens!(out, logits, params);
  const ids = b.toInt32 ? b.toInt32(out) : Int32Array.from(b.toFloat32(out));
  b.free(out);
  return ids;
}

/** The Sampler's distribution (src/engine/sampling.ts, Sampler.sample) in float64. */
function expectedProbs(logits: Float32Array, temperature: number, topK: number, topP: number): Float64Array {
  const n = logits.length;
  const out = new Float64Array(n);
  if (temperature === 0 || topK === 1) {
    out[argmax(logits)] = 1;
    return out;
  }
  const invT = 1 / temperature;
  const max = logits[argmax(logits)];
  const m0 = topK > 0 ? Math.min(topK, n) : n;
  const order = topIndices(logits, 0, n, m0, new Int32Array(n));
  const probs = new Float64Array(m0);
  let sum = 0;
  for (let i = 0; i < m0; i++) sum += probs[i] = Math.exp((logits[order[i]] - max) * invT);
  let m = m0;
  if (topP < 1) {
    const target = topP * sum * (1 - 1e-6);
    let cum = 0;
    for (let i = 0; i < m0; i++) {
      cum += probs[i];
      if (cum >= target) {
        m = i + 1;
        break;
      }
    }
    sum = 0;
    for (let i = 0; i < m; i++) sum += probs[i];
  }
  for (let i = 0; i < m; i++) out[order[i]] = probs[i] / sum;
  return out;
}

function histogram(ids: ArrayLike<number>, V: number): number[] {
  const c = new Array<number>(V).fill(0);
  for (let i = 0; i < ids.length; i++) {
    const id = ids[i];
    assert.ok(Number.isInteger(id) && id >= 0 && id < V, `sampled id ${id} out of range [0, ${V})`);
    c[id]++;
  }
  return c;
}

/**
 * Counts against probabilities: tokens with p = 0 are never drawn; every other token within 5σ + 5 of N·p (the
 * + 5 covers the Poisson tail of tokens with tiny N·p); the
 * chi-square over the tokens with N·p ≥ 5 below df + 6·√(2·df) + 10 (far in the tail: a true distribution fails
 * with probability < 1e-6).
 */
function assertMatches(c: number[], p: Float64Array, what: string): string {
  const N = c.reduce((a, b) => a + b, 0);
  let chi2 = 0, df = -1, worst = 0;
  for (let i = 0; i < p.length; i++) {
    if (p[i] === 0) {
      assert.equal(c[i], 0, `${what}: token ${i} can never be drawn (p = 0) but was drawn ${c[i]} times`);
      continue;
    }
    const e = N * p[i];
    const sigma = Math.sqrt(e * (1 - p[i]));
    const z = Math.abs(c[i] - e) / Math.max(sigma, 1e-12);
    worst = Math.max(worst, z);
    assert.ok(Math.abs(c[i] - e) <= 5 * sigma + 5, `${what}: token ${i} drawn ${c[i]} times, expected ${e.toFixed(1)} ± ${sigma.toFixed(1)} (p = ${p[i].toFixed(6)})`);
    if (e >= 5) {
      chi2 += (c[i] - e) ** 2 / e;
      df++;
    }
  }
  if (df > 0) {
    const bound = df + 6 * Math.sqrt(2 * df) + 10;
    assert.ok(chi2 <= bound, `${what}: chi-square ${chi2.toFixed(1)} over ${df} degrees of freedom (bound ${bound.toFixed(1)})`);
  }
  return `${what}: N=${N}, χ²=${chi2.toFixed(1)} (df ${Math.max(df, 0)}), worst |z| = ${worst.toFixed(2)}`;
}

/** The CPU Sampler's empirical counts (different seeds), to check expectedProbs against the Sampler itself. */
function cpuCounts(logits: Float32Array, temperature: number, topK: number, topP: number, draws: number): number[] {
  const c = new Array<number>(logits.length).fill(0);
  for (let s = 0; s < draws; s++) c[new Sampler({ temperature, topK, topP, seed: 7000 + s }).sample(logits)]++;
  return c;
}

/**
 * GPU draws from `rows` copies of one logits row, `launches` times with different steps: rows · launches draws,
 * each row its own seed.
 */
function gpuDraws(row: Float32Array, temperature: number, topK: number, topP: number, rows: number, launches: number, seed0 = 1): number[] {
  const b = be();
  const V = row.length;
  const one = b.upload([V], 'f32', row);
  const logits = b.alloc([rows, V], 'f32');
  for (let r = 0; r < rows; r++) b.copy(b.view(logits, [V], r * V), one);
  const ids: number[] = [];
  try {
    for (let l = 0; l < launches; l++) {
      const params = Array.from({ length: rows }, (_, r): SampleParams => ({ temperature, topK, topP, seed: seed0 + r, step: l }));
      ids.push(...gpuSample(logits, params));
    }
  } finally {
    b.free(logits);
    b.free(one);
  }
  return histogram(ids, V);
}

function distributionCase(t: { diagnostic(m: string): void }, name: string, row: Float32Array, temperature: number, topK: number, topP: number, opts: { rows?: number; launches?: number; cpuCheck?: boolean } = {}): void {
  const p = expectedProbs(row, temperature, topK, topP);
  if (opts.cpuCheck ?? row.length <= 64) {
    t.diagnostic(assertMatches(cpuCounts(row, temperature, topK, topP, 8192), p, `${name} (CPU Sampler vs expected)`));
  }
  const c = gpuDraws(row, temperature, topK, topP, opts.rows ?? 4096, opts.launches ?? 2);
  t.diagnostic(assertMatches(c, p, `${name} (GPU)`));
}

const SMALL = Float32Array.from([2, 1, 0.5, -0.25, -1, -2, 3, 0.125]);

test('greedy: argmax with ties to the lower id over V = 200,064 (temperature 0, topK 1)', { skip }, () => {
  const b = be();
  const V = 200064, R = 6;
  const rng = new Rng(1);
  const data = randn(rng, R * V, 3);
  // row 0: the max planted twice → the lower id
  data[5000] = 50;
  data[123456] = 50;
  // row 1: a three-way tie at the max, the first in the second half of the row
  for (const i of [150001, 170000, 199999]) data[V + i] = 40;
  // row 2: NaN and −inf entries never win; the max at the last id
  data[2 * V + 7] = NaN;
  data[2 * V + 8] = -Infinity;
  data[2 * V + V - 1] = 30;
  // row 3: everything equal → id 0
  data.fill(1.5, 3 * V, 4 * V);
  // row 4: topK 1 with a temperature is greedy; ties at the max again
  data[4 * V + 99] = 33;
  data[4 * V + 98] = 33;
  // row 5: only −inf and NaN → id 0 (as the CPU's argmax)
  data.fill(-Infinity, 5 * V, 6 * V);
  data[5 * V + 3] = NaN;
  const logits = b.upload([R, V], 'f32', data);
  const params: SampleParams[] = [
    { temperature: 0, topK: 0, topP: 1, seed: 1, step: 0 },
    { temperature: 0, topK: 50, topP: 0.9, seed: 2, step: 3 },
    { temperature: 0, topK: 0, topP: 1, seed: 3, step: 0 },
    { temperature: 0, topK: 0, topP: 1, seed: 4, step: 0 },
    { temperature: 0.7, topK: 1, topP: 1, seed: 5, step: 9 },
    { temperature: 0, topK: 0, topP: 1, seed: 6, step: 0 },
  ];
  try {
    const got = gpuSample(logits, params);
    for (let r = 0; r < R; r++) {
      const want = argmax(data, r * V, V);
      assert.equal(got[r], want, `row ${r}: GPU argmax ${got[r]}, CPU ${want}`);
    }
    assert.deepEqual(Array.from(got.subarray(0, 2)), [5000, 150001]);
    assert.equal(got[4], 98);
  } finally {
    b.free(logits);
  }
});

test('temperature sampling matches the CPU Sampler (V = 8; T = 1, 0.5, 2; −inf entries)', { skip }, (t) => {
  distributionCase(t, 'T=1', SMALL, 1, 0, 1);
  distributionCase(t, 'T=0.5', SMALL, 0.5, 0, 1);
  distributionCase(t, 'T=2', SMALL, 2, 0, 1);
  const withInf = SMALL.slice();
  withInf[2] = -Infinity;
  withInf[5] = -Infinity;
  distributionCase(t, 'T=1, −inf entries', withInf, 1, 0, 1);
});

test('top-k: never outside the k best; ties at the k-th value kept lowest id first', { skip }, (t) => {
  distributionCase(t, 'k=3', SMALL, 1, 3, 1);
  distributionCase(t, 'k=2, T=0.7', SMALL, 0.7, 2, 1);
  distributionCase(t, 'k=7', SMALL, 1.3, 7, 1);
  distributionCase(t, 'k=8 (= V)', SMALL, 1, 8, 1);
  distributionCase(t, 'k=100 (> V)', SMALL, 1, 100, 1);
  // ties: three tokens share the 2nd-largest logit, k = 2 keeps only the lowest id among them
  const ties = Float32Array.from([1, 3, 0, 2, 2, 2, -1, 0.5]);
  const p = expectedProbs(ties, 1, 2, 1);
  assert.ok(p[1] > 0 && p[3] > 0 && p[4] === 0 && p[5] === 0, 'expected: tokens 1 and 3 only');
  distributionCase(t, 'k=2 with ties at the boundary', ties, 1, 2, 1);
  distributionCase(t, 'k=3 with ties at the boundary', ties, 1, 3, 1);
});

test('top-p: boundary cases and distributions', { skip }, (t) => {
  const probs = Float32Array.from([0.5, 0.3, 0.15, 0.05].map(Math.log));
  // p = 0.8 → exactly two tokens (0.5 + 0.3 reaches 0.8), in the ratio 5 : 3
  const p08 = expectedProbs(probs, 1, 0, 0.8);
  assert.ok(Math.abs(p08[0] - 0.625) < 1e-6 && Math.abs(p08[1] - 0.375) < 1e-6 && p08[2] === 0 && p08[3] === 0, `expected [0.625, 0.375, 0, 0], got ${Array.from(p08)}`);
  distributionCase(t, 'p=0.8 (two tokens)', probs, 1, 0, 0.8);
  // the CPU unit test's boundary cases: the kept set must not depend on how f32 rounds the shifted logits
  const cases = TOP_P_BOUNDARY_CASES;
  for (const shift of [0, 3, -7, 13.5, -20, 37]) {
    const shifted = Float32Array.from([0.5, 0.3, 0.15, 0.05], (q) => Math.log(q) + shift);
    for (const [p, keep] of cases) {
      const cpuKeep = Array.from(expectedProbs(shifted, 1, 0, p)).flatMap((q, i) => (q > 0 ? [i] : []));
      assert.deepEqual(cpuKeep, keep, `expectedProbs: topP=${p} shift=${shift}`);
      const c = gpuDraws(shifted, 1, 0, p, 1024, 1, 77);
      const drawn = c.flatMap((n, i) => (n > 0 ? [i] : []));
      assert.deepEqual(drawn, keep, `topP=${p}, logits shifted by ${shift}: drew ${drawn} (counts ${c})`);
    }
  }
  distributionCase(t, 'p=0.9', SMALL, 1, 0, 0.9);
  distributionCase(t, 'p=0.3, T=2', SMALL, 2, 0, 0.3);
  distributionCase(t, 'k=4, p=0.7', SMALL, 0.8, 4, 0.7);
  // ties at the top-p boundary: logits [2, 1, 1, 1, 0]; p = 0.7 keeps token 0 and the two lowest ids of the ties
  const ties = Float32Array.from([2, 1, 1, 1, 0]);
  const pt = expectedProbs(ties, 1, 0, 0.7);
  assert.ok(pt[1] > 0 && pt[2] > 0 && pt[3] === 0, `expected tokens 0, 1, 2: ${Array.from(pt)}`);
  distributionCase(t, 'p=0.7, ties at the boundary', ties, 1, 0, 0.7);
  // top-k and top-p thresholds on the same tied value: k = 3 keeps 0, 1, 2; p = 0.7 of that keeps 0, 1
  distributionCase(t, 'k=3, p=0.7, ties at both thresholds', ties, 1, 3, 0.7);
});

test('large vocabulary: top-k / top-p over V = 200,064 match the CPU Sampler', { skip, timeout: 600_000 }, (t) => {
  const V = 200064;
  const rng = new Rng(99);
  const row = randn(rng, V, 2.5);
  for (const [name, T, k, p] of [
    ['T=0.8, k=50, p=0.9', 0.8, 50, 0.9],
    ['T=1, p=0.7', 1, 0, 0.7],
    ['T=1.2, k=20', 1.2, 20, 1],
    ['T=0.6, k=1000, p=0.95', 0.6, 1000, 0.95],
  ] as const) {
    const probs = expectedProbs(row, T, k, p);
    let kept = 0;
    for (const v of probs) if (v > 0) kept++;
    const c = gpuDraws(row, T, k, p, 256, 16, 500);
    t.diagnostic(`${name}: ${kept} tokens kept by the CPU definition`);
    t.diagnostic(assertMatches(c, probs, `V=${V} ${name} (GPU)`));
  }
  // plain temperature over the full vocabulary: compare the mass of the 20 most likely tokens and the rest
  const probs = expectedProbs(row, 1.5, 0, 1);
  const c = gpuDraws(row, 1.5, 0, 1, 256, 16, 900);
  const top = topIndices(row, 0, V, 20, new Int32Array(V));
  const grouped = new Array<number>(21).fill(0);
  const pg = new Float64Array(21);
  let rest = 1;
  for (let j = 0; j < 20; j++) {
    grouped[j] = c[top[j]];
    pg[j] = probs[top[j]];
    rest -= probs[top[j]];
  }
  grouped[20] = c.reduce((a, b) => a + b, 0) - grouped.slice(0, 20).reduce((a, b) => a + b, 0);
  pg[20] = rest;
  t.diagnostic(assertMatches(grouped, pg, `V=${V} T=1.5 (20 best + rest, GPU)`));
});

test('the same seed and step give the same ids; rows are independent', { skip }, () => {
  const b = be();
  const V = 50000, R = 64;
  const rng = new Rng(5);
  const data = randn(rng, R * V, 2);
  const logits = b.upload([R, V], 'f32', data);
  try {
    const params = Array.from({ length: R }, (_, r): SampleParams => ({ temperature: 1, topK: r % 3 === 0 ? 40 : 0, topP: r % 2 === 0 ? 0.9 : 1, seed: 12345 + r, step: 17 }));
    const a = gpuSample(logits, params);
    const c = gpuSample(logits, params);
    assert.deepEqual(Array.from(a), Array.from(c), 'same seeds and steps, different ids');
    for (let r = 0; r < R; r++) {
      const p = expectedProbs(data.subarray(r * V, (r + 1) * V), 1, params[r].topK, params[r].topP);
      assert.ok(p[a[r]] > 0, `row ${r}: id ${a[r]} is outside the kept set`);
    }
    // a different step moves the draws (all equal would be a broken counter)
    const d = gpuSample(logits, params.map((q) => ({ ...q, step: 18 })));
    assert.notDeepEqual(Array.from(d), Array.from(a), 'step 17 and step 18 gave the same ids on every row');
  } finally {
    b.free(logits);
  }
});

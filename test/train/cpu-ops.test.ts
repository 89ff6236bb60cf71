/**
 * The CPU float64 training backend (src/train/cpu/cpu-train-backend.ts), every op but the four sequence ops: each
 * backward against central finite differences of L = Σ r ⊙ forward(...) for random r (relative error ≤ 1e-6),
 * the "(+=)" / accumulate / overwrite semantics of every gradient output, the allowed aliasing, forward values
 * against hand-computed ones, and the router and RoPE against the inference CpuBackend on the same inputs.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { CpuTrainBackend } from '../../src/train/cpu/cpu-train-backend.js';
import type { Docs, TTensor } from '../../src/train/backend.js';
import { CpuBackend } from '../../src/backend/cpu/cpu-backend.js';
import { ropeInPlace } from '../../src/backend/cpu/attention.js';
import { InvalidArgumentError, ShapeError } from '../../src/util/errors.js';
import { checkOpGrads, dot, makeRng, randn, type GradCheckResult } from './helpers/grad-check.js';

const be = new CpuTrainBackend();
const TOL = 1e-6;

function numel(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

function rnd(rng: () => number, shape: readonly number[], scale = 1): TTensor {
  return be.upload(shape, 'float', randn(rng, numel(shape), scale));
}

function assertGrads(t: TestContext, what: string, results: Record<string, GradCheckResult>): void {
  for (const [name, r] of Object.entries(results)) {
    t.diagnostic(`${what} d${name}: FD rel err ${r.relErr.toExponential(2)} over ${r.checked} components (max |g| ${r.scale.toExponential(2)})`);
    assert.ok(r.relErr <= TOL, `${what} d${name}: FD relative error ${r.relErr} > ${TOL} at component ${r.worst}`);
  }
}

function assertClose(actual: ArrayLike<number>, expected: ArrayLike<number>, tol: number, what: string): void {
  assert.equal(actual.length, expected.length, `${what}: length`);
  for (let i = 0; i < actual.length; i++) {
    const err = Math.abs(actual[i] - expected[i]) / Math.max(1, Math.abs(expected[i]));
    assert.ok(err <= tol, `${what}[${i}]: ${actual[i]} vs ${expected[i]}`);
  }
}

/**
 * Gradient-output semantics: `op` run into g holding random G0 leaves G0 + Δ ("+=" / accumulate) or Δ
 * (overwrite), where Δ is what it writes into zeros.
 */
function checkAccumulation(g: TTensor, op: () => void, accumulates: boolean, what: string, rng: () => number): void {
  be.fillZero(g);
  op();
  const delta = be.read(g);
  assert.ok(delta.some((v) => v !== 0), `${what}: the op wrote nothing`);
  const g0 = randn(rng, delta.length);
  be.write(g, g0);
  op();
  const want = accumulates ? delta.map((d, i) => d + g0[i]) : delta;
  assertClose(be.read(g), want, 1e-12, `${what} (${accumulates ? 'accumulates' : 'overwrites'})`);
}

test('memory: zeros, upload, views share storage, read copies, write/copy/fillZero, shape and dtype errors', () => {
  const a = be.upload([2, 3], 'float', new Float32Array([1, 2, 3, 4, 5, 6]));
  assert.deepEqual([...be.read(a)], [1, 2, 3, 4, 5, 6]);
  const row1 = be.view(a, [3], 3);
  be.write(row1, new Float64Array([7, 8, 9]));
  assert.deepEqual([...be.read(a)], [1, 2, 3, 7, 8, 9]);
  const r = be.read(row1);
  r[0] = 100; // a copy: the tensor is untouched
  assert.deepEqual([...be.read(row1)], [7, 8, 9]);
  const inner = be.view(row1, [2], 1); // a view of a view
  be.fillZero(inner);
  assert.deepEqual([...be.read(a)], [1, 2, 3, 7, 0, 0]);
  const b = be.zeros([6], 'float');
  be.copy(b, a);
  assert.deepEqual([...be.read(b)], [1, 2, 3, 7, 0, 0]);
  const ids = be.upload([3], 'i32', new Float64Array([0, -1, 5]));
  assert.equal(ids.dtype, 'i32');
  assert.deepEqual([...be.read(ids)], [0, -1, 5]);
  assert.throws(() => be.upload([2], 'i32', new Float64Array([1, 1.5])), InvalidArgumentError);
  assert.throws(() => be.view(a, [4], 3), ShapeError);
  assert.throws(() => be.write(a, new Float64Array(5)), ShapeError);
  assert.throws(() => be.copy(b, be.zeros([5], 'float')), ShapeError);
  assert.throws(() => be.copy(be.zeros([3], 'i32'), row1), ShapeError);
  assert.throws(() => be.zeros([2, -1], 'float'), ShapeError);
  assert.throws(() => be.linearForward(be.zeros([2, 4], 'float'), a, be.zeros([4, 2], 'float')), /linear w: expected shape \[4, 3\], got \[4, 2\]/);
  assert.throws(() => be.scale(ids, 2), ShapeError);
});

test('axpby (aliasing out with x or y), scale, sumSquares (+=)', () => {
  const x = be.upload([3], 'float', new Float64Array([1, 2, 3]));
  const y = be.upload([3], 'float', new Float64Array([10, 20, 30]));
  const out = be.zeros([3], 'float');
  be.axpby(out, 2, x, -1, y);
  assert.deepEqual([...be.read(out)], [-8, -16, -24]);
  be.axpby(x, 0.5, x, 1, y); // out = x
  assert.deepEqual([...be.read(x)], [10.5, 21, 31.5]);
  be.axpby(y, 2, x, 1, y); // out = y
  assert.deepEqual([...be.read(y)], [31, 62, 93]);
  be.scale(out, -0.5);
  assert.deepEqual([...be.read(out)], [4, 8, 12]);
  const ss = be.upload([1], 'float', new Float64Array([1]));
  be.sumSquares(ss, out);
  be.sumSquares(ss, be.view(out, [1], 0));
  assert.deepEqual([...be.read(ss)], [1 + 16 + 64 + 144 + 16]);
  assert.throws(() => be.axpby(out, 1, x, 1, be.zeros([2], 'float')), ShapeError);
});

test('embedding: forward rows, backward (+=) against finite differences with repeated ids', (t) => {
  const rng = makeRng(1);
  const V = 5, D = 3;
  const table = rnd(rng, [V, D]);
  const ids = be.upload([4], 'i32', new Int32Array([2, 0, 2, 4]));
  const out = be.zeros([4, D], 'float');
  be.embeddingForward(out, table, ids);
  const tab = be.read(table);
  assert.deepEqual([...be.read(out)], [...tab.slice(6, 9), ...tab.slice(0, 3), ...tab.slice(6, 9), ...tab.slice(12, 15)]);
  const res = checkOpGrads(be, {
    inputs: { table }, outputs: [out],
    forward: () => be.embeddingForward(out, table, ids),
    backward: ([dOut]) => {
      const dTable = be.zeros([V, D], 'float');
      be.embeddingBackward(dTable, dOut, ids);
      checkAccumulation(dTable, () => be.embeddingBackward(dTable, dOut, ids), true, 'embedding dTable', rng);
      be.fillZero(dTable);
      be.embeddingBackward(dTable, dOut, ids);
      return { table: be.read(dTable) };
    },
  }, rng);
  assertGrads(t, 'embedding', res);
  assert.throws(() => be.embeddingForward(out, table, be.upload([4], 'i32', new Int32Array([0, 1, 5, 2]))), InvalidArgumentError);
});

test('linear: forward values; dx (overwrite / accumulate) and dw (+=) against finite differences', (t) => {
  const rng = makeRng(2);
  const T = 3, N = 4, Kin = 5;
  const x = rnd(rng, [T, Kin]), w = rnd(rng, [N, Kin]), out = be.zeros([T, N], 'float');
  be.linearForward(out, x, w, true);
  const X = be.read(x), W = be.read(w);
  const want = new Float64Array(T * N);
  for (let i = 0; i < T; i++) for (let n = 0; n < N; n++) want[i * N + n] = dot(X.subarray(i * Kin, i * Kin + Kin), W.subarray(n * Kin, n * Kin + Kin));
  assertClose(be.read(out), want, 1e-14, 'linear out');
  const res = checkOpGrads(be, {
    inputs: { x, w }, outputs: [out],
    forward: () => be.linearForward(out, x, w),
    backward: ([dOut]) => {
      const dx = be.zeros([T, Kin], 'float'), dw = be.zeros([N, Kin], 'float');
      checkAccumulation(dx, () => be.linearBackwardInput(dx, dOut, w, false), false, 'linear dx', rng);
      checkAccumulation(dx, () => be.linearBackwardInput(dx, dOut, w, true), true, 'linear dx', rng);
      checkAccumulation(dw, () => be.linearBackwardWeight(dw, dOut, x), true, 'linear dw', rng);
      be.linearBackwardInput(dx, dOut, w, false);
      be.fillZero(dw);
      be.linearBackwardWeight(dw, dOut, x);
      return { x: be.read(dx), w: be.read(dw) };
    },
  }, rng);
  assertGrads(t, 'linear', res);
});

test('rmsNorm: forward values (and out aliasing x); dx (overwrite / accumulate), dw (+=) against finite differences', (t) => {
  const rng = makeRng(3);
  const R = 3, C = 6, eps = 1e-5;
  const x = rnd(rng, [R, C]), w = rnd(rng, [C]), out = be.zeros([R, C], 'float'), rstd = be.zeros([R], 'float');
  be.rmsNormForward(out, rstd, x, w, eps);
  const X = be.read(x), W = be.read(w), O = be.read(out), S = be.read(rstd);
  for (let r = 0; r < R; r++) {
    const row = X.subarray(r * C, r * C + C);
    const s = 1 / Math.sqrt(dot(row, row) / C + eps);
    assert.ok(Math.abs(S[r] - s) <= 1e-15 * s);
    for (let c = 0; c < C; c++) assert.ok(Math.abs(O[r * C + c] - W[c] * row[c] * s) <= 1e-14);
  }
  const xa = be.upload([R, C], 'float', X);
  be.rmsNormForward(xa, be.zeros([R], 'float'), xa, w, eps);
  assert.deepEqual([...be.read(xa)], [...O]);
  const res = checkOpGrads(be, {
    inputs: { x, w }, outputs: [out],
    forward: () => be.rmsNormForward(out, rstd, x, w, eps),
    backward: ([dOut]) => {
      const dx = be.zeros([R, C], 'float'), dw = be.zeros([C], 'float');
      const dxScratch = be.zeros([R, C], 'float'), dwScratch = be.zeros([C], 'float');
      checkAccumulation(dx, () => be.rmsNormBackward(dx, dwScratch, dOut, x, w, rstd, false), false, 'rmsNorm dx', rng);
      checkAccumulation(dx, () => be.rmsNormBackward(dx, dwScratch, dOut, x, w, rstd, true), true, 'rmsNorm dx', rng);
      checkAccumulation(dw, () => be.rmsNormBackward(dxScratch, dw, dOut, x, w, rstd, false), true, 'rmsNorm dw', rng);
      be.fillZero(dw);
      be.rmsNormBackward(dx, dw, dOut, x, w, rstd, false);
      return { x: be.read(dx), w: be.read(dw) };
    },
  }, rng);
  assertGrads(t, 'rmsNorm', res);
});

test('silu and sigmoidMul: forward values, backward against finite differences, dx aliasing dOut', (t) => {
  const rng = makeRng(4);
  const n = 7;
  const x = be.upload([n], 'float', new Float64Array([-6, -1.5, -0.3, 0, 0.4, 2, 7]));
  const out = be.zeros([n], 'float');
  be.siluForward(out, x);
  assertClose(be.read(out), [...be.read(x)].map((v) => v / (1 + Math.exp(-v))), 1e-15, 'silu');
  const silu = checkOpGrads(be, {
    inputs: { x }, outputs: [out],
    forward: () => be.siluForward(out, x),
    backward: ([dOut]) => {
      const dx = be.zeros([n], 'float');
      be.siluBackward(dx, dOut, x);
      const aliased = be.upload([n], 'float', be.read(dOut));
      be.siluBackward(aliased, aliased, x);
      assert.deepEqual([...be.read(aliased)], [...be.read(dx)]);
      return { x: be.read(dx) };
    },
  }, rng);
  assertGrads(t, 'silu', silu);

  const gate = rnd(rng, [3, 4], 2), y = rnd(rng, [3, 4]), prod = be.zeros([3, 4], 'float');
  be.sigmoidMulForward(prod, gate, y);
  const G = be.read(gate), Y = be.read(y);
  assertClose(be.read(prod), G.map((g, i) => Y[i] / (1 + Math.exp(-g))), 1e-15, 'sigmoidMul');
  const sm = checkOpGrads(be, {
    inputs: { gate, y }, outputs: [prod],
    forward: () => be.sigmoidMulForward(prod, gate, y),
    backward: ([dOut]) => {
      const dGate = rnd(rng, [3, 4]), dy = rnd(rng, [3, 4]); // garbage: both are overwritten
      be.sigmoidMulBackward(dGate, dy, dOut, gate, y);
      return { gate: be.read(dGate), y: be.read(dy) };
    },
  }, rng);
  assertGrads(t, 'sigmoidMul', sm);
});

test('rope: hand values, partial rotation, matches the inference ropeInPlace, inverse undoes it, backward against finite differences', (t) => {
  // One head [1..6], rotaryDim 4, θ = 100, position 3: pairs (0, 2) at angle 3, (1, 3) at angle 3·fp32(1/10); 4, 5 pass.
  const x = be.upload([1, 1, 6], 'float', new Float64Array([1, 2, 3, 4, 5, 6]));
  be.rope(x, be.upload([1], 'i32', new Int32Array([3])), 4, 100, false);
  const a0 = 3, a1 = Math.fround(3 * Math.fround(0.1));
  const want = [
    Math.cos(a0) - 3 * Math.sin(a0), 2 * Math.cos(a1) - 4 * Math.sin(a1),
    3 * Math.cos(a0) + Math.sin(a0), 4 * Math.cos(a1) + 2 * Math.sin(a1), 5, 6,
  ];
  assertClose(be.read(x), want, 1e-15, 'rope hand values');

  const rng = makeRng(5);
  const T = 4, Hn = 2, Dh = 6, r = 4, theta = 1e4;
  const positions = be.upload([T], 'i32', new Int32Array([0, 1, 7, 100_000]));
  const x0 = randn(rng, T * Hn * Dh);
  const y = be.upload([T, Hn, Dh], 'float', x0);
  be.rope(y, positions, r, theta, false);
  const ref = Float32Array.from(x0);
  ropeInPlace(ref, new Int32Array([0, 1, 7, 100_000]), T, Hn, Dh, r, theta);
  assertClose(be.read(y), ref, 2e-6, 'rope vs inference');
  for (let i = 0; i < T * Hn * Dh; i++) if (i % Dh >= r) assert.equal(be.read(y)[i], x0[i], 'dims ≥ rotaryDim pass through');
  be.rope(y, positions, r, theta, true);
  assertClose(be.read(y), x0, 1e-14, 'inverse(forward(x))');

  const xin = be.upload([T, Hn, Dh], 'float', x0), out = be.zeros([T, Hn, Dh], 'float');
  const res = checkOpGrads(be, {
    inputs: { x: xin }, outputs: [out],
    forward: () => {
      be.copy(out, xin);
      be.rope(out, positions, r, theta, false);
    },
    backward: ([dOut]) => {
      be.rope(dOut, positions, r, theta, true);
      return { x: be.read(dOut) };
    },
  }, rng);
  assertGrads(t, 'rope', res);
  assert.throws(() => be.rope(y, positions, 7, theta, false), InvalidArgumentError);
});

/** Logits whose softmax has no near-ties: each row a permutation of well-spaced values plus small noise. */
function spacedLogits(rng: () => number, T: number, E: number): Float64Array {
  const out = new Float64Array(T * E);
  for (let t = 0; t < T; t++) {
    const perm = [...Array(E).keys()];
    for (let i = E - 1; i > 0; i--) {
      const j = Math.floor(rng() * (i + 1));
      [perm[i], perm[j]] = [perm[j], perm[i]];
    }
    for (let e = 0; e < E; e++) out[t * E + e] = 0.6 * perm[e] - 1.5 + 0.1 * (rng() - 0.5);
  }
  return out;
}

/** The auxiliary losses written out independently: auxCoef·E·Σ f_e·P_e and zCoef·mean_t lse_t². */
function routerLosses(probs: Float64Array, logits: Float64Array, f: Float64Array, T: number, E: number, auxCoef: number, zCoef: number): [number, number] {
  let aux = 0, z = 0;
  for (let e = 0; e < E; e++) {
    let P = 0;
    for (let t = 0; t < T; t++) P += probs[t * E + e];
    aux += (f[e] * P) / T;
  }
  for (let t = 0; t < T; t++) {
    let s = 0;
    for (let e = 0; e < E; e++) s += Math.exp(logits[t * E + e]);
    z += Math.log(s) ** 2;
  }
  return [auxCoef * E * aux, (zCoef * z) / T];
}

test('moeRouteForward: softmax over all experts, top-K descending with ties to the lower id, renormalised weights', () => {
  const T = 3, E = 4, K = 2;
  const logits = be.upload([T, E], 'float', new Float64Array([0, 0, 0, 0, 1, 3, 3, 0, Math.log(3), 0, Math.log(6), Math.log(2)]));
  const indices = be.zeros([T, K], 'i32'), weights = be.zeros([T, K], 'float'), probs = be.zeros([T, E], 'float');
  be.moeRouteForward(indices, weights, probs, logits);
  assert.deepEqual([...be.read(indices)], [0, 1, 1, 2, 2, 0]);
  assertClose(be.read(weights), [0.5, 0.5, 0.5, 0.5, 2 / 3, 1 / 3], 1e-15, 'weights');
  assertClose(be.read(probs).subarray(8), [0.25, 1 / 12, 0.5, 1 / 6], 1e-15, 'probs');
});

test('moeRouteForward picks the same experts (and weights) as the inference CpuBackend.moeRoute', () => {
  const rng = makeRng(6);
  const T = 32, E = 8, K = 2;
  const x = randn(rng, T * E, 2);
  const indices = be.zeros([T, K], 'i32'), weights = be.zeros([T, K], 'float'), probs = be.zeros([T, E], 'float');
  be.moeRouteForward(indices, weights, probs, be.upload([T, E], 'float', Float32Array.from(x)));
  const cpu = new CpuBackend();
  const ci = cpu.zeros([T, K], 'i32'), cw = cpu.zeros([T, K], 'f32');
  cpu.moeRoute(ci, cw, cpu.upload([T, E], 'f32', Float32Array.from(x)));
  assert.deepEqual([...be.read(indices)], [...cpu.toFloat32(ci)]);
  assertClose(be.read(weights), cpu.toFloat32(cw), 1e-6, 'route weights vs inference');
});

test('moeRouteBackward: dLogits (overwritten) through renormalisation and softmax, plus aux and z-loss gradients, against finite differences; losses (+=)', (t) => {
  const T = 6, E = 5, K = 2;
  for (const [auxCoef, zCoef] of [[0, 0], [0.3, 0], [0, 0.05], [0.3, 0.05]]) {
    const rng = makeRng(7);
    const logits = be.upload([T, E], 'float', spacedLogits(rng, T, E));
    const indices = be.zeros([T, K], 'i32'), weights = be.zeros([T, K], 'float'), probs = be.zeros([T, E], 'float');
    const forward = (): void => be.moeRouteForward(indices, weights, probs, logits);
    forward();
    const picks = be.read(indices);
    // f_e at this point: a constant of the aux loss (the picks do not change under the small FD steps).
    const f = new Float64Array(E);
    for (const e of picks) f[e] += 1 / (T * K);
    const res = checkOpGrads(be, {
      inputs: { logits }, outputs: [weights], forward,
      extraLoss: () => {
        assert.deepEqual([...be.read(indices)], [...picks], 'an FD step flipped a pick');
        return routerLosses(be.read(probs), be.read(logits), f, T, E, auxCoef, zCoef).reduce((a, b) => a + b);
      },
      backward: ([dWeights]) => {
        const dLogits = rnd(rng, [T, E]); // garbage: overwritten
        const losses = be.upload([2], 'float', new Float64Array([1, 2]));
        be.moeRouteBackward(dLogits, losses, dWeights, logits, probs, indices, weights, auxCoef, zCoef);
        const [aux, z] = routerLosses(be.read(probs), be.read(logits), f, T, E, auxCoef, zCoef);
        assertClose(be.read(losses), [1 + aux, 2 + z], 1e-14, 'router losses (+=)');
        return { logits: be.read(dLogits) };
      },
    }, rng);
    assertGrads(t, `moeRoute aux ${auxCoef} z ${zCoef}`, res);
  }
});

function distinctPicks(rng: () => number, T: number, E: number, K: number): Int32Array {
  const out = new Int32Array(T * K);
  for (let t = 0; t < T; t++) {
    const perm = [...Array(E).keys()].sort(() => rng() - 0.5);
    for (let k = 0; k < K; k++) out[t * K + k] = perm[k];
  }
  return out;
}

test('moeExperts: forward and saved h13 / y by hand and against the inference CpuBackend; backward against finite differences; dW13 / dW2 (+=), dx / dWeights overwritten', (t) => {
  const rng = makeRng(8);
  const T = 4, D = 5, E = 3, K = 2, I = 3;
  const x = rnd(rng, [T, D]), w13 = rnd(rng, [E, 2 * I, D], 0.5), w2 = rnd(rng, [E, D, I], 0.5);
  const idx = distinctPicks(rng, T, E, K);
  const indices = be.upload([T, K], 'i32', idx);
  const weights = be.upload([T, K], 'float', Float64Array.from({ length: T * K }, () => 0.2 + rng()));
  const out = be.zeros([T, D], 'float');
  const saved = { h13: be.zeros([T * K, 2 * I], 'float'), y: be.zeros([T * K, D], 'float') };
  const forward = (): void => be.moeExpertsForward(out, saved, x, indices, weights, w13, w2);
  forward();

  // By hand, slot by slot.
  const X = be.read(x), W13 = be.read(w13), W2 = be.read(w2), Wt = be.read(weights);
  const wantOut = new Float64Array(T * D), wantH = new Float64Array(T * K * 2 * I), wantY = new Float64Array(T * K * D);
  for (let s = 0; s < T * K; s++) {
    const tok = Math.floor(s / K), e = idx[s];
    const xt = X.subarray(tok * D, tok * D + D);
    for (let j = 0; j < 2 * I; j++) wantH[s * 2 * I + j] = dot(xt, W13.subarray((e * 2 * I + j) * D, (e * 2 * I + j + 1) * D));
    const act = Array.from({ length: I }, (_, i) => {
      const g = wantH[s * 2 * I + i];
      return (g / (1 + Math.exp(-g))) * wantH[s * 2 * I + I + i];
    });
    for (let d = 0; d < D; d++) {
      wantY[s * D + d] = dot(act, W2.subarray((e * D + d) * I, (e * D + d + 1) * I));
      wantOut[tok * D + d] += Wt[s] * wantY[s * D + d];
    }
  }
  assertClose(be.read(saved.h13), wantH, 1e-14, 'saved.h13');
  assertClose(be.read(saved.y), wantY, 1e-14, 'saved.y');
  assertClose(be.read(out), wantOut, 1e-14, 'moe out');
  const cpu = new CpuBackend();
  const cOut = cpu.zeros([T, D], 'f32');
  cpu.moeExperts(cOut, cpu.upload([T, D], 'f32', Float32Array.from(X)), cpu.upload([T, K], 'i32', idx),
    cpu.upload([T, K], 'f32', Float32Array.from(Wt)), cpu.upload([E, 2 * I, D], 'f32', Float32Array.from(W13)),
    cpu.upload([E, D, I], 'f32', Float32Array.from(W2)));
  assertClose(be.read(out), cpu.toFloat32(cOut), 1e-5, 'moe out vs inference');

  const res = checkOpGrads(be, {
    inputs: { x, weights, w13, w2 }, outputs: [out], forward,
    backward: ([dOut]) => {
      const dx = be.zeros([T, D], 'float'), dW13 = be.zeros([E, 2 * I, D], 'float'), dW2 = be.zeros([E, D, I], 'float');
      const dWeights = be.zeros([T, K], 'float');
      const run = (): void => be.moeExpertsBackward(dx, dW13, dW2, dWeights, dOut, saved, x, indices, weights, w13, w2);
      checkAccumulation(dx, run, false, 'moe dx', rng);
      checkAccumulation(dWeights, run, false, 'moe dWeights', rng);
      checkAccumulation(dW13, run, true, 'moe dW13', rng);
      checkAccumulation(dW2, run, true, 'moe dW2', rng);
      be.fillZero(dW13);
      be.fillZero(dW2);
      run();
      return { x: be.read(dx), weights: be.read(dWeights), w13: be.read(dW13), w2: be.read(dW2) };
    },
  }, rng);
  assertGrads(t, 'moeExperts', res);
  assert.throws(() => be.moeExpertsForward(out, saved, x, be.upload([T, K], 'i32', new Int32Array(T * K).fill(E)), weights, w13, w2), InvalidArgumentError);
});

test('crossEntropy: hand values, ignored targets, stability at large logits, dLogits aliasing logits; gradient against finite differences', (t) => {
  const logits = be.upload([4, 2], 'float', new Float64Array([0, 0, Math.log(3), 0, 5, 7, 1000, 0]));
  const targets = be.upload([4], 'i32', new Int32Array([1, 0, -1, 1]));
  const losses = be.zeros([4], 'float'), dLogits = rnd(makeRng(9), [4, 2]);
  be.crossEntropy(losses, dLogits, logits, targets, 0.5);
  assertClose(be.read(losses), [Math.LN2, Math.log(4 / 3), 0, 1000], 1e-15, 'losses');
  assertClose(be.read(dLogits), [0.25, -0.25, -0.125, 0.125, 0, 0, 0.5, -0.5], 1e-15, 'dLogits');
  be.crossEntropy(losses, logits, logits, targets, 0.5); // dLogits = logits
  assertClose(be.read(logits), be.read(dLogits), 0, 'aliased dLogits');
  assert.throws(() => be.crossEntropy(losses, dLogits, logits, be.upload([4], 'i32', new Int32Array([0, 2, 0, 0])), 1), InvalidArgumentError);

  const rng = makeRng(10);
  const T = 5, V = 7;
  const lg = rnd(rng, [T, V], 2), tg = be.upload([T], 'i32', new Int32Array([3, -1, 0, 6, 2]));
  const ls = be.zeros([T], 'float'), dl = be.zeros([T, V], 'float');
  const res = checkOpGrads(be, {
    inputs: { logits: lg }, outputs: [ls],
    forward: () => be.crossEntropy(ls, dl, lg, tg, 1),
    backward: ([dLosses]) => {
      // dLogits is the gradient of each row's loss (gradScale 1), so dL/dlogits[t] = r_t · dLogits[t].
      const r = be.read(dLosses), g = be.read(dl);
      return { logits: g.map((v, i) => v * r[Math.floor(i / V)]) };
    },
  }, rng);
  assertGrads(t, 'crossEntropy', res);
});

test('adamw: two steps against the scalar formula (bias correction, decoupled decay, gradScale)', () => {
  const o = { lr: 0.1, beta1: 0.9, beta2: 0.99, eps: 1e-8, weightDecay: 0.05, gradScale: 0.5 };
  const p0 = [1, -2, 0.5], grads = [[0.4, 1, -3], [-0.2, 0.5, 0]];
  const param = be.upload([3], 'float', new Float64Array(p0)), m = be.zeros([3], 'float'), v = be.zeros([3], 'float');
  const grad = be.zeros([3], 'float');
  const want = [...p0], wm = [0, 0, 0], wv = [0, 0, 0];
  for (let step = 1; step <= 2; step++) {
    be.write(grad, new Float64Array(grads[step - 1]));
    be.adamw(param, grad, m, v, { ...o, step });
    for (let i = 0; i < 3; i++) {
      const g = grads[step - 1][i] * o.gradScale;
      wm[i] = o.beta1 * wm[i] + (1 - o.beta1) * g;
      wv[i] = o.beta2 * wv[i] + (1 - o.beta2) * g * g;
      const mh = wm[i] / (1 - o.beta1 ** step), vh = wv[i] / (1 - o.beta2 ** step);
      want[i] = want[i] - o.lr * mh / (Math.sqrt(vh) + o.eps) - o.lr * o.weightDecay * want[i];
    }
  }
  assertClose(be.read(param), want, 1e-15, 'param');
  assertClose(be.read(m), wm, 1e-15, 'm');
  assertClose(be.read(v), wv, 1e-15, 'v');
  // First step from zero moments: m̂/sqrt(v̂) = sign(g), so p moves by lr·(1 + wd·p) for a positive g.
  const p = be.upload([1], 'float', new Float64Array([2]));
  be.adamw(p, be.upload([1], 'float', new Float64Array([3])), be.zeros([1], 'float'), be.zeros([1], 'float'), { ...o, eps: 0, step: 1 });
  assertClose(be.read(p), [2 - 0.1 * (1 + 0.05 * 2)], 1e-15, 'first step');
  assert.throws(() => be.adamw(param, grad, m, v, { ...o, step: 0 }), InvalidArgumentError);
});

test('sequence ops check shapes and document boundaries before delegating', () => {
  const T = 5, H = 2, Dh = 3;
  const host = new Int32Array([0, 2, 4]); // ends at 4, not T
  const docs: Docs = { offsets: be.upload([3], 'i32', host), host, count: 2, maxLength: 2 };
  const qkv = be.zeros([T, H * 3 * Dh], 'float'), slopes = be.zeros([H], 'float');
  assert.throws(() => be.lightningForward(be.zeros([T, H * Dh], 'float'), qkv, slopes, docs, 4), /docs: offsets \[0, 2, 4\] do not cover 5 tokens/);
  const q = be.zeros([T, 4, Dh], 'float'), kv = be.zeros([T, 3, Dh], 'float');
  assert.throws(() => be.attentionForward(be.zeros([T, 4, Dh], 'float'), be.zeros([T, 4], 'float'), q, kv, kv, docs, 1), /4 query heads do not group over 3 kv heads/);
});

/**
 * CudaTrainBackend (src/train/cuda) against the float64 CPU reference CpuTrainBackend, op by op, forward and
 * backward: memory, axpby / scale / sumSquares, embedding, linear (bf16 and exact fp32, with the bf16 weight copies
 * refreshed after adamw / write on the weight or on a flat buffer it is a view of), RMSNorm, SiLU, sigmoid gate,
 * RoPE (and its inverse), MoE routing (with aux and z losses) and experts, cross-entropy, AdamW. The sequence ops
 * (lightning, attention) are tested with their own kernels.
 *
 * Inputs are random fp32 values (never zeros) uploaded identically to both backends; GPU outputs are poisoned (NaN)
 * before each op so unwritten elements fail; accumulated outputs start from random values and their increments are
 * compared. Errors are norm-relative ‖gpu − cpu‖ / ‖cpu‖: fp32 ops within 1e-5, bf16-GEMM ops (linear, experts)
 * within 2e-2. Skips without a GPU.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { AdamWStep, TrainBackend, TrainDType, TTensor } from '../../src/train/backend.js';
import { CpuTrainBackend } from '../../src/train/cpu/cpu-train-backend.js';
import type { CudaBackend } from '../../src/backend/cuda/cuda-backend.js';
import { getGpu, randn, relErr, Rng } from '../helpers/gpu.js';

const { gpu, reason } = await getGpu();
const skip = gpu ? false : reason;
const FP32_TOL = 1e-5;
const BF16_TOL = 2e-2;

let gpuBackend: TrainBackend | undefined;
if (gpu) {
  const { CudaTrainBackend } = await import('../../src/train/cuda/cuda-train-backend.js');
  gpuBackend = new CudaTrainBackend(gpu.backend as unknown as CudaBackend);
}
const cpuBackend: TrainBackend = new CpuTrainBackend();

interface Pair {
  readonly g: TTensor;
  readonly c: TTensor;
  /** The values both started from. */
  readonly init: Float32Array | Int32Array;
}

const G = (): TrainBackend => gpuBackend!;
const C = cpuBackend;
const size = (shape: readonly number[]): number => shape.reduce((a, b) => a * b, 1);

/** The same data on both backends. */
function both(shape: number[], data: Float32Array | Int32Array, dtype: TrainDType = 'float'): Pair {
  return { g: G().upload(shape, dtype, data), c: C.upload(shape, dtype, data), init: data };
}
function randPair(rng: Rng, shape: number[], scale = 1): Pair {
  return both(shape, randn(rng, size(shape), scale));
}
/** An output: poisoned on the GPU (NaN floats, out-of-range ids), zero on the CPU. */
function outPair(shape: number[], dtype: TrainDType = 'float'): Pair {
  const n = size(shape);
  const g = G().alloc(shape, dtype);
  G().write(g, dtype === 'float' ? new Float32Array(n).fill(NaN) : new Int32Array(n).fill(-12345));
  return { g, c: C.zeros(shape, dtype), init: new Float32Array(n) };
}
function poison(t: TTensor): void {
  G().write(t, t.dtype === 'float' ? new Float32Array(size(t.shape)).fill(NaN) : new Int32Array(size(t.shape)).fill(-12345));
}

function check(what: string, p: Pair, tol: number): void {
  const e = relErr(G().read(p.g), C.read(p.c));
  assert.ok(e <= tol, `${what}: relative error ${e} (tolerance ${tol})`);
}
/** Accumulated outputs: compare what each backend added to the common start values. */
function checkIncrement(what: string, p: Pair, tol: number): void {
  const g = G().read(p.g), c = C.read(p.c);
  for (let i = 0; i < g.length; i++) {
    g[i] -= p.init[i];
    c[i] -= p.init[i];
  }
  const e = relErr(g, c);
  assert.ok(e <= tol, `${what} (increment): relative error ${e} (tolerance ${tol})`);
}
function ids(rng: Rng, n: number, below: number): Int32Array {
  return Int32Array.from({ length: n }, () => Math.floor(rng.next() * below));
}

test('memory: upload / read / write / view / copy / fillZero / zeros, float and i32', { skip }, () => {
  const g = G(), rng = new Rng(1);
  const data = randn(rng, 1000);
  const t = g.upload([10, 100], 'float', data);
  assert.deepEqual(Array.from(g.read(t)), Array.from(data));
  const v = g.view(t, [3, 7], 500);
  assert.deepEqual(Array.from(g.read(v)), Array.from(data.subarray(500, 521)));
  g.write(v, new Float64Array(21).fill(2.5));
  const after = g.read(t);
  assert.equal(after[499], data[499]);
  assert.equal(after[500], 2.5);
  assert.equal(after[520], 2.5);
  assert.equal(after[521], data[521]);
  const u = g.alloc([1000], 'float');
  g.copy(u, t);
  assert.deepEqual(Array.from(g.read(u)), Array.from(after));
  g.fillZero(v);
  assert.equal(g.read(t).slice(500, 521).every((x) => x === 0), true);
  assert.equal(g.read(g.zeros([77], 'float')).every((x) => x === 0), true);
  const iv = Int32Array.from([-1, 0, 7, 2147483647, -2147483648]);
  const it = g.upload([5], 'i32', iv);
  assert.deepEqual(Array.from(g.read(it)), Array.from(iv));
  g.write(it, new Float64Array([3, 4, 5, 6, -1]));
  assert.deepEqual(Array.from(g.read(it)), [3, 4, 5, 6, -1]);
  for (const x of [t, u, it]) g.free(x);
  g.synchronize();
});

test('axpby (also in place), scale, sumSquares (accumulating, many blocks)', { skip }, () => {
  const rng = new Rng(2);
  const n = 1_000_003;
  const x = randPair(rng, [n]), y = randPair(rng, [n]);
  const out = outPair([n]);
  G().axpby(out.g, 0.75, x.g, -1.25, y.g);
  C.axpby(out.c, 0.75, x.c, -1.25, y.c);
  check('axpby', out, FP32_TOL);
  G().axpby(x.g, 2, x.g, 0.5, y.g);
  C.axpby(x.c, 2, x.c, 0.5, y.c);
  check('axpby out = x', x, FP32_TOL);
  G().scale(y.g, -0.3);
  C.scale(y.c, -0.3);
  check('scale', y, FP32_TOL);
  const ss = both([1], Float32Array.of(1.5));
  G().sumSquares(ss.g, x.g);
  C.sumSquares(ss.c, x.c);
  G().sumSquares(ss.g, y.g);
  C.sumSquares(ss.c, y.c);
  check('sumSquares', ss, FP32_TOL);
});

test('embedding forward (exact) and backward (repeated ids accumulate)', { skip }, () => {
  const rng = new Rng(3);
  const V = 50, D = 72, T = 300;
  const table = randPair(rng, [V, D]);
  const tok = both([T], ids(rng, T, V), 'i32');
  const out = outPair([T, D]);
  G().embeddingForward(out.g, table.g, tok.g);
  C.embeddingForward(out.c, table.c, tok.c);
  assert.deepEqual(Array.from(G().read(out.g)), Array.from(C.read(out.c)));
  const dOut = randPair(rng, [T, D]);
  const dTable = randPair(rng, [V, D], 0.1);
  G().embeddingBackward(dTable.g, dOut.g, tok.g);
  C.embeddingBackward(dTable.c, dOut.c, tok.c);
  checkIncrement('embeddingBackward', dTable, FP32_TOL);
});

test('linear: bf16 GEMMs (forward, dx = / +=, dW +=) and exact fp32', { skip }, () => {
  const rng = new Rng(4);
  for (const [T, K, N] of [[37, 200, 72], [256, 64, 512]] as const) {
    const x = randPair(rng, [T, K]), w = randPair(rng, [N, K], 1 / Math.sqrt(K)), dOut = randPair(rng, [T, N]);
    for (const exact of [false, true]) {
      const tol = exact ? FP32_TOL : BF16_TOL, tag = `${exact ? 'exact' : 'bf16'} T=${T} K=${K} N=${N}`;
      const y = outPair([T, N]);
      G().linearForward(y.g, x.g, w.g, exact);
      C.linearForward(y.c, x.c, w.c, exact);
      check(`linearForward ${tag}`, y, tol);
      const dx = outPair([T, K]);
      G().linearBackwardInput(dx.g, dOut.g, w.g, false, exact);
      C.linearBackwardInput(dx.c, dOut.c, w.c, false, exact);
      check(`linearBackwardInput ${tag}`, dx, tol);
      const dxAcc = randPair(rng, [T, K]);
      G().linearBackwardInput(dxAcc.g, dOut.g, w.g, true, exact);
      C.linearBackwardInput(dxAcc.c, dOut.c, w.c, true, exact);
      checkIncrement(`linearBackwardInput accumulate ${tag}`, dxAcc, tol);
      const dw = randPair(rng, [N, K]);
      G().linearBackwardWeight(dw.g, dOut.g, x.g, exact);
      C.linearBackwardWeight(dw.c, dOut.c, x.c, exact);
      checkIncrement(`linearBackwardWeight ${tag}`, dw, tol);
    }
  }
});

test('linear: the bf16 weight copy follows adamw and write on the weight, and adamw on a flat buffer it views', { skip }, () => {
  const rng = new Rng(5);
  const T = 19, K = 96, N = 40;
  const x = randPair(rng, [T, K]);
  const w = randPair(rng, [N, K], 0.2);
  const step: AdamWStep = { lr: 0.3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1, step: 1, gradScale: 1 };
  const forward = (wp: Pair, what: string): void => {
    const y = outPair([T, N]);
    G().linearForward(y.g, x.g, wp.g);
    C.linearForward(y.c, x.c, wp.c);
    check(what, y, BF16_TOL);
  };
  forward(w, 'before the update');
  const grad = randPair(rng, [N, K]), m = both([N, K], new Float32Array(N * K)), v = both([N, K], new Float32Array(N * K));
  G().adamw(w.g, grad.g, m.g, v.g, step);
  C.adamw(w.c, grad.c, m.c, v.c, step);
  forward(w, 'after adamw on the weight');
  const fresh = randn(rng, N * K, 0.2);
  G().write(w.g, fresh);
  C.write(w.c, fresh);
  forward(w, 'after write');
  // A weight that is a view of a flat parameter buffer, updated through the buffer.
  const P = 3 * N * K;
  const flat = randPair(rng, [P], 0.2);
  const wv: Pair = { g: G().view(flat.g, [N, K], N * K), c: C.view(flat.c, [N, K], N * K), init: new Float32Array(0) };
  forward(wv, 'flat view before the update');
  const fg = randPair(rng, [P]), fm = both([P], new Float32Array(P)), fv = both([P], new Float32Array(P));
  G().adamw(flat.g, fg.g, fm.g, fv.g, step);
  C.adamw(flat.c, fg.c, fm.c, fv.c, step);
  forward(wv, 'flat view after adamw on the buffer');
  G().axpby(flat.g, 0.5, flat.g, 0.25, fg.g);
  C.axpby(flat.c, 0.5, flat.c, 0.25, fg.c);
  forward(wv, 'flat view after axpby on the buffer');
});

test('rmsNorm forward (also in place) and backward (dx = / +=, dw +=)', { skip }, () => {
  const rng = new Rng(6);
  for (const [R, Cc, eps] of [[37, 72, 1e-5], [300, 6144, 1e-6], [5, 8192, 1e-5]] as const) {
    const tag = `R=${R} C=${Cc}`;
    const x = randPair(rng, [R, Cc], 2), w = both([Cc], randn(rng, Cc, 0.3).map((v) => 1 + v));
    const out = outPair([R, Cc]), rstd = outPair([R]);
    G().rmsNormForward(out.g, rstd.g, x.g, w.g, eps);
    C.rmsNormForward(out.c, rstd.c, x.c, w.c, eps);
    check(`rmsNormForward ${tag}`, out, FP32_TOL);
    check(`rmsNorm rstd ${tag}`, rstd, FP32_TOL);
    const xCopy = G().upload([R, Cc], 'float', x.init);
    const rstd2 = G().alloc([R], 'float');
    G().rmsNormForward(xCopy, rstd2, xCopy, w.g, eps);
    assert.deepEqual(Array.from(G().read(xCopy)), Array.from(G().read(out.g)), `rmsNormForward in place ${tag}`);
    const dOut = randPair(rng, [R, Cc]);
    for (const accumulate of [false, true]) {
      const dx = accumulate ? randPair(rng, [R, Cc]) : outPair([R, Cc]);
      const dw = randPair(rng, [Cc]);
      G().rmsNormBackward(dx.g, dw.g, dOut.g, x.g, w.g, rstd.g, accumulate);
      C.rmsNormBackward(dx.c, dw.c, dOut.c, x.c, w.c, rstd.c, accumulate);
      checkIncrement(`rmsNormBackward dx ${tag} accumulate=${accumulate}`, dx, FP32_TOL);
      checkIncrement(`rmsNormBackward dw ${tag} accumulate=${accumulate}`, dw, FP32_TOL);
    }
  }
});

test('silu and sigmoid gate, forward and backward (dx aliasing dOut)', { skip }, () => {
  const rng = new Rng(7);
  const n = 70_001;
  const x = randPair(rng, [n], 3), gate = randPair(rng, [n], 3), dOut = randPair(rng, [n]);
  const y = outPair([n]);
  G().siluForward(y.g, x.g);
  C.siluForward(y.c, x.c);
  check('siluForward', y, FP32_TOL);
  const dx = outPair([n]);
  G().siluBackward(dx.g, dOut.g, x.g);
  C.siluBackward(dx.c, dOut.c, x.c);
  check('siluBackward', dx, FP32_TOL);
  const dAlias = both([n], dOut.init);
  G().siluBackward(dAlias.g, dAlias.g, x.g);
  assert.deepEqual(Array.from(G().read(dAlias.g)), Array.from(G().read(dx.g)), 'siluBackward with dx = dOut');
  G().sigmoidMulForward(y.g, gate.g, x.g);
  C.sigmoidMulForward(y.c, gate.c, x.c);
  check('sigmoidMulForward', y, FP32_TOL);
  const dGate = outPair([n]);
  poison(dx.g);
  G().sigmoidMulBackward(dGate.g, dx.g, dOut.g, gate.g, x.g);
  C.sigmoidMulBackward(dGate.c, dx.c, dOut.c, gate.c, x.c);
  check('sigmoidMulBackward dGate', dGate, FP32_TOL);
  check('sigmoidMulBackward dx', dx, FP32_TOL);
});

test('rope: partial NeoX rotation, positions restarting per document; inverse undoes it', { skip }, () => {
  const rng = new Rng(8);
  // Positions stay below 41: the angle is computed in fp32 (as the model defines it), up to ~1e-7·pos radians from
  // the float64 angle, hence ROPE_TOL.
  const ROPE_TOL = 2e-5;
  for (const [docs, nh, Dh, rot, theta] of [[[41, 25], 3, 20, 12, 1e4], [[40, 3, 30], 8, 128, 64, 1e7]] as const) {
    const T = docs.reduce((a, b) => a + b, 0);
    const pos = new Int32Array(T);
    let t = 0;
    for (const len of docs) for (let p = 0; p < len; p++) pos[t++] = p;
    const positions = both([T], pos, 'i32');
    const x = randPair(rng, [T, nh, Dh]);
    for (const inverse of [false, true]) {
      const y = both([T, nh, Dh], x.init);
      G().rope(y.g, positions.g, rot, theta, inverse);
      C.rope(y.c, positions.c, rot, theta, inverse);
      check(`rope Dh=${Dh} rot=${rot} inverse=${inverse}`, y, ROPE_TOL);
      G().rope(y.g, positions.g, rot, theta, !inverse);
      const e = relErr(G().read(y.g), x.init);
      assert.ok(e <= FP32_TOL, `rope round trip: ${e}`);
    }
  }
});

/** Random logits with no near-ties among each row's top K + 1 (so fp32 and float64 pick the same experts). */
function routerLogits(rng: Rng, T: number, E: number): Float32Array {
  const l = randn(rng, T * E, 2);
  for (let t = 0; t < T; t++) {
    const row = l.subarray(t * E, (t + 1) * E);
    const order = Array.from(row.keys()).sort((a, b) => row[b] - row[a]);
    for (let j = 1; j < E; j++) if (row[order[j - 1]] - row[order[j]] < 1e-3) row[order[j]] = row[order[j - 1]] - 1e-3 - rng.next() * 0.1;
  }
  return l;
}

test('moeRoute forward (softmax, top-K, renormalised) and backward (aux and z losses)', { skip }, () => {
  const rng = new Rng(9);
  for (const [T, E, K] of [[50, 8, 2], [77, 40, 3], [5, 4, 1]] as const) {
    const tag = `T=${T} E=${E} K=${K}`;
    const logits = both([T, E], routerLogits(rng, T, E));
    const idx = outPair([T, K], 'i32'), w = outPair([T, K]), probs = outPair([T, E]);
    G().moeRouteForward(idx.g, w.g, probs.g, logits.g);
    C.moeRouteForward(idx.c, w.c, probs.c, logits.c);
    assert.deepEqual(Array.from(G().read(idx.g)), Array.from(C.read(idx.c)), `moeRouteForward indices ${tag}`);
    check(`moeRouteForward weights ${tag}`, w, FP32_TOL);
    check(`moeRouteForward probs ${tag}`, probs, FP32_TOL);
    // The backward from identical saved tensors (the CPU's), so only the backward is compared.
    const savedIdx = both([T, K], Int32Array.from(C.read(idx.c)), 'i32');
    const savedW = both([T, K], Float32Array.from(C.read(w.c)));
    const savedP = both([T, E], Float32Array.from(C.read(probs.c)));
    const dWeights = randPair(rng, [T, K]);
    for (const [auxCoef, zCoef] of [[0, 0], [0.3, 0.2]] as const) {
      const dLogits = outPair([T, E]);
      const losses = both([2], Float32Array.of(0.25, 0.5));
      G().moeRouteBackward(dLogits.g, losses.g, dWeights.g, logits.g, savedP.g, savedIdx.g, savedW.g, auxCoef, zCoef);
      C.moeRouteBackward(dLogits.c, losses.c, dWeights.c, logits.c, savedP.c, savedIdx.c, savedW.c, auxCoef, zCoef);
      check(`moeRouteBackward dLogits ${tag} aux=${auxCoef} z=${zCoef}`, dLogits, FP32_TOL);
      checkIncrement(`moeRouteBackward losses ${tag} aux=${auxCoef} z=${zCoef}`, losses, FP32_TOL);
    }
  }
});

test('moeExperts forward and backward (bf16 GEMMs per expert; one expert without tokens)', { skip }, () => {
  const rng = new Rng(10);
  for (const [T, K, E, D, I, idle] of [[37, 2, 6, 72, 40, 3], [300, 2, 8, 128, 96, 7], [9, 3, 5, 64, 32, 0]] as const) {
    const tag = `T=${T} K=${K} E=${E} D=${D} I=${I}`;
    // K distinct experts per token, never `idle`; weights positive, summing to 1.
    const pick = new Int32Array(T * K), wts = new Float32Array(T * K);
    const usable = Array.from({ length: E }, (_, e) => e).filter((e) => e !== idle);
    for (let t = 0; t < T; t++) {
      const pool = [...usable];
      let sum = 0;
      for (let k = 0; k < K; k++) {
        pick[t * K + k] = pool.splice(Math.floor(rng.next() * pool.length), 1)[0];
        sum += wts[t * K + k] = 0.1 + rng.next();
      }
      for (let k = 0; k < K; k++) wts[t * K + k] /= sum;
    }
    const idx = both([T, K], pick, 'i32'), weights = both([T, K], wts);
    const x = randPair(rng, [T, D]);
    const w13 = randPair(rng, [E, 2 * I, D], 1 / Math.sqrt(D)), w2 = randPair(rng, [E, D, I], 1 / Math.sqrt(I));
    const out = outPair([T, D]), h13 = outPair([T * K, 2 * I]), y = outPair([T * K, D]);
    G().moeExpertsForward(out.g, { h13: h13.g, y: y.g }, x.g, idx.g, weights.g, w13.g, w2.g);
    C.moeExpertsForward(out.c, { h13: h13.c, y: y.c }, x.c, idx.c, weights.c, w13.c, w2.c);
    check(`moeExpertsForward out ${tag}`, out, BF16_TOL);
    check(`moeExpertsForward saved.h13 ${tag}`, h13, BF16_TOL);
    check(`moeExpertsForward saved.y ${tag}`, y, BF16_TOL);
    const dOut = randPair(rng, [T, D]);
    const dx = outPair([T, D]), dWeights = outPair([T, K]);
    const dW13 = randPair(rng, [E, 2 * I, D], 0.01), dW2 = randPair(rng, [E, D, I], 0.01);
    G().moeExpertsBackward(dx.g, dW13.g, dW2.g, dWeights.g, dOut.g, { h13: h13.g, y: y.g }, x.g, idx.g, weights.g, w13.g, w2.g);
    C.moeExpertsBackward(dx.c, dW13.c, dW2.c, dWeights.c, dOut.c, { h13: h13.c, y: y.c }, x.c, idx.c, weights.c, w13.c, w2.c);
    check(`moeExpertsBackward dx ${tag}`, dx, BF16_TOL);
    check(`moeExpertsBackward dWeights ${tag}`, dWeights, BF16_TOL);
    checkIncrement(`moeExpertsBackward dW13 ${tag}`, dW13, BF16_TOL);
    checkIncrement(`moeExpertsBackward dW2 ${tag}`, dW2, BF16_TOL);
    // The idle expert's weight gradients are untouched.
    const g13 = G().read(dW13.g), g2 = G().read(dW2.g);
    for (let i = idle * 2 * I * D; i < (idle + 1) * 2 * I * D; i++) assert.equal(g13[i], dW13.init[i], `dW13 of idle expert ${idle} changed`);
    for (let i = idle * D * I; i < (idle + 1) * D * I; i++) assert.equal(g2[i], dW2.init[i], `dW2 of idle expert ${idle} changed`);
  }
});

test('crossEntropy: losses and gradients, ignored targets, dLogits aliasing logits', { skip }, () => {
  const rng = new Rng(11);
  for (const [T, V] of [[9, 1000], [6, 200064]] as const) {
    const tgt = ids(rng, T, V);
    tgt[2] = -1;
    tgt[T - 1] = V - 1;
    const targets = both([T], tgt, 'i32');
    const logits = randPair(rng, [T, V], 3);
    const losses = outPair([T]), dLogits = outPair([T, V]);
    G().crossEntropy(losses.g, dLogits.g, logits.g, targets.g, 0.37);
    C.crossEntropy(losses.c, dLogits.c, logits.c, targets.c, 0.37);
    check(`crossEntropy losses V=${V}`, losses, FP32_TOL);
    check(`crossEntropy dLogits V=${V}`, dLogits, FP32_TOL);
    const g = G().read(dLogits.g);
    assert.equal(g.slice(2 * V, 3 * V).every((v) => v === 0), true, 'ignored row is zero');
    assert.equal(G().read(losses.g)[2], 0, 'ignored row has zero loss');
    const inPlace = G().upload([T, V], 'float', logits.init);
    const l2 = G().alloc([T], 'float');
    G().crossEntropy(l2, inPlace, inPlace, targets.g, 0.37);
    assert.deepEqual(Array.from(G().read(inPlace)), Array.from(g), 'dLogits = logits');
    assert.deepEqual(Array.from(G().read(l2)), Array.from(G().read(losses.g)), 'losses with dLogits = logits');
  }
});

test('adamw: two steps (bias correction, decay, gradScale)', { skip }, () => {
  const rng = new Rng(12);
  const P = 100_003;
  const p = randPair(rng, [P]), m = both([P], new Float32Array(P)), v = both([P], new Float32Array(P));
  for (const step of [1, 2]) {
    const grad = randPair(rng, [P], 0.1);
    const o: AdamWStep = { lr: 1e-2, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1, step, gradScale: 0.5 };
    G().adamw(p.g, grad.g, m.g, v.g, o);
    C.adamw(p.c, grad.c, m.c, v.c, o);
    check(`adamw param, step ${step}`, p, FP32_TOL);
    check(`adamw m, step ${step}`, m, FP32_TOL);
    check(`adamw v, step ${step}`, v, FP32_TOL);
  }
});

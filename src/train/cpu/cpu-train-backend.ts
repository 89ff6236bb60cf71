/**
 * The CPU training backend: float64 everywhere, the reference the CUDA backend is checked against. This file checks
 * shapes and dtypes and hands plain arrays to the kernels in dense.ts, moe.ts and sequence.ts.
 */

import type { AdamWStep, Docs, MoeSaved, TTensor, TrainBackend, TrainDType } from '../backend.js';
import { InvalidArgumentError, ShapeError } from '../../util/errors.js';
import { CpuTrainTensor, asTrain, checkDims, checkShape, dimsOf, f64, i32, numel } from './tensor.js';
import {
  adamw64, crossEntropy64, linearBackwardInput64, linearBackwardWeight64, linearForward64, rmsNormBackward64,
  rmsNormForward64, rope64, sigmoidMulBackward64, sigmoidMulForward64, siluBackward64, siluForward64,
} from './dense.js';
import { moeExpertsBackward64, moeExpertsForward64, moeRouteBackward64, moeRouteForward64, type ExpertDims } from './moe.js';
import { attentionBackward64, attentionForward64, lightningBackward64, lightningForward64 } from './sequence.js';

export class CpuTrainBackend implements TrainBackend {
  readonly name = 'cpu';

  // ---- memory ----
  alloc(shape: readonly number[], dtype: TrainDType): TTensor {
    return this.zeros(shape, dtype);
  }

  zeros(shape: readonly number[], dtype: TrainDType): TTensor {
    checkDims(shape);
    if (dtype !== 'float' && dtype !== 'i32') throw new ShapeError(`unknown training dtype ${String(dtype)}`);
    const n = numel(shape);
    return new CpuTrainTensor([...shape], dtype, dtype === 'i32' ? new Int32Array(n) : new Float64Array(n), 0);
  }

  view(t: TTensor, shape: readonly number[], offset = 0): TTensor {
    const c = asTrain(t, 'view');
    checkDims(shape);
    if (!Number.isSafeInteger(offset) || offset < 0 || offset + numel(shape) > c.size) {
      throw new ShapeError(`view [${shape.join(', ')}] at +${offset} does not fit in a tensor of shape [${c.shape.join(', ')}]`);
    }
    return new CpuTrainTensor([...shape], c.dtype, c.storage, c.offset + offset);
  }

  upload(shape: readonly number[], dtype: TrainDType, data: Float64Array | Float32Array | Int32Array): TTensor {
    const t = this.zeros(shape, dtype);
    this.write(t, data);
    return t;
  }

  write(t: TTensor, data: Float64Array | Float32Array | Int32Array): void {
    const c = asTrain(t, 'write');
    if (data.length !== c.size) throw new ShapeError(`write: ${data.length} values into a tensor of shape [${c.shape.join(', ')}]`);
    if (c.dtype === 'i32') {
      for (let i = 0; i < data.length; i++) {
        if (!Number.isInteger(data[i]) || data[i] < -0x80000000 || data[i] > 0x7fffffff) {
          throw new InvalidArgumentError(`write: value ${data[i]} at ${i} is not an i32`, { param: 'data' });
        }
      }
    }
    c.storage.set(data, c.offset);
  }

  read(t: TTensor): Float64Array {
    const c = asTrain(t, 'read');
    return Float64Array.from(c.storage.subarray(c.offset, c.offset + c.size));
  }

  fillZero(t: TTensor): void {
    const c = asTrain(t, 'fillZero');
    c.storage.fill(0, c.offset, c.offset + c.size);
  }

  copy(dst: TTensor, src: TTensor): void {
    const d = asTrain(dst, 'copy dst'), s = asTrain(src, 'copy src');
    if (d.size !== s.size) throw new ShapeError(`copy: ${s.size} elements into ${d.size}`);
    if (d.dtype !== s.dtype) throw new ShapeError(`copy: ${s.dtype} into ${d.dtype}`);
    d.storage.set(s.storage.subarray(s.offset, s.offset + s.size), d.offset);
  }

  free(_t: TTensor): void {
    // The garbage collector owns CPU memory.
  }

  synchronize(): void {
    // CPU ops run synchronously.
  }

  // ---- elementwise and reductions ----
  axpby(out: TTensor, a: number, x: TTensor, b: number, y: TTensor): void {
    const o = f64(out, 'axpby out'), xs = f64(x, 'axpby x'), ys = f64(y, 'axpby y');
    sameSize('axpby', o, xs, ys);
    for (let i = 0; i < o.length; i++) o[i] = a * xs[i] + b * ys[i];
  }

  scale(x: TTensor, s: number): void {
    const xs = f64(x, 'scale x');
    for (let i = 0; i < xs.length; i++) xs[i] *= s;
  }

  sumSquares(out: TTensor, x: TTensor): void {
    const o = f64(out, 'sumSquares out', [1]), xs = f64(x, 'sumSquares x');
    let acc = 0;
    for (let i = 0; i < xs.length; i++) acc += xs[i] * xs[i];
    o[0] += acc;
  }

  // ---- embedding ----
  embeddingForward(out: TTensor, table: TTensor, ids: TTensor): void {
    const [V, D] = dimsOf(table, 'embedding table', 2);
    const idx = i32(ids, 'embedding ids', [undefined]);
    const T = idx.length;
    const o = f64(out, 'embedding out', [T, D]), tab = f64(table, 'embedding table');
    for (let t = 0; t < T; t++) {
      const id = checkId(idx[t], V, 'embedding ids');
      o.set(tab.subarray(id * D, id * D + D), t * D);
    }
  }

  embeddingBackward(dTable: TTensor, dOut: TTensor, ids: TTensor): void {
    const [V, D] = dimsOf(dTable, 'embedding dTable', 2);
    const idx = i32(ids, 'embedding ids', [undefined]);
    const T = idx.length;
    const g = f64(dOut, 'embedding dOut', [T, D]), dt = f64(dTable, 'embedding dTable');
    for (let t = 0; t < T; t++) {
      const row = checkId(idx[t], V, 'embedding ids') * D;
      for (let d = 0; d < D; d++) dt[row + d] += g[t * D + d];
    }
  }

  // ---- linear (`exact` changes nothing here: everything is float64) ----
  linearForward(out: TTensor, x: TTensor, w: TTensor, _exact?: boolean): void {
    const [T, Kin] = dimsOf(x, 'linear x', 2);
    const N = dimsOf(w, 'linear w', 2)[0];
    linearForward64(f64(out, 'linear out', [T, N]), f64(x, 'linear x'), f64(w, 'linear w', [N, Kin]), T, N, Kin);
  }

  linearBackwardInput(dx: TTensor, dOut: TTensor, w: TTensor, accumulate: boolean, _exact?: boolean): void {
    const [N, Kin] = dimsOf(w, 'linear w', 2);
    const T = dimsOf(dOut, 'linear dOut', 2)[0];
    linearBackwardInput64(f64(dx, 'linear dx', [T, Kin]), f64(dOut, 'linear dOut', [T, N]), f64(w, 'linear w'), T, N, Kin, accumulate);
  }

  linearBackwardWeight(dw: TTensor, dOut: TTensor, x: TTensor, _exact?: boolean): void {
    const [T, Kin] = dimsOf(x, 'linear x', 2);
    const N = dimsOf(dw, 'linear dw', 2)[0];
    linearBackwardWeight64(f64(dw, 'linear dw', [N, Kin]), f64(dOut, 'linear dOut', [T, N]), f64(x, 'linear x'), T, N, Kin);
  }

  // ---- RMSNorm ----
  rmsNormForward(out: TTensor, rstd: TTensor, x: TTensor, w: TTensor, eps: number): void {
    const [R, C] = dimsOf(x, 'rmsNorm x', 2);
    rmsNormForward64(f64(out, 'rmsNorm out', [R, C]), f64(rstd, 'rmsNorm rstd', [R]), f64(x, 'rmsNorm x'), f64(w, 'rmsNorm w', [C]), R, C, eps);
  }

  rmsNormBackward(dx: TTensor, dw: TTensor, dOut: TTensor, x: TTensor, w: TTensor, rstd: TTensor, accumulate: boolean): void {
    const [R, C] = dimsOf(x, 'rmsNorm x', 2);
    rmsNormBackward64(
      f64(dx, 'rmsNorm dx', [R, C]), f64(dw, 'rmsNorm dw', [C]), f64(dOut, 'rmsNorm dOut', [R, C]), f64(x, 'rmsNorm x'),
      f64(w, 'rmsNorm w', [C]), f64(rstd, 'rmsNorm rstd', [R]), R, C, accumulate,
    );
  }

  // ---- activations ----
  siluForward(out: TTensor, x: TTensor): void {
    const o = f64(out, 'silu out'), xs = f64(x, 'silu x');
    sameSize('silu', o, xs);
    siluForward64(o, xs, o.length);
  }

  siluBackward(dx: TTensor, dOut: TTensor, x: TTensor): void {
    const d = f64(dx, 'silu dx'), g = f64(dOut, 'silu dOut'), xs = f64(x, 'silu x');
    sameSize('siluBackward', d, g, xs);
    siluBackward64(d, g, xs, d.length);
  }

  sigmoidMulForward(out: TTensor, gate: TTensor, x: TTensor): void {
    const o = f64(out, 'sigmoidMul out'), gs = f64(gate, 'sigmoidMul gate'), xs = f64(x, 'sigmoidMul x');
    sameSize('sigmoidMul', o, gs, xs);
    sigmoidMulForward64(o, gs, xs, o.length);
  }

  sigmoidMulBackward(dGate: TTensor, dx: TTensor, dOut: TTensor, gate: TTensor, x: TTensor): void {
    const dg = f64(dGate, 'sigmoidMul dGate'), d = f64(dx, 'sigmoidMul dx'), g = f64(dOut, 'sigmoidMul dOut');
    const gs = f64(gate, 'sigmoidMul gate'), xs = f64(x, 'sigmoidMul x');
    sameSize('sigmoidMulBackward', dg, d, g, gs, xs);
    sigmoidMulBackward64(dg, d, g, gs, xs, dg.length);
  }

  // ---- RoPE ----
  rope(x: TTensor, positions: TTensor, rotaryDim: number, theta: number, inverse: boolean): void {
    const [T, nHeads, Dh] = dimsOf(x, 'rope x', 3);
    if (!Number.isInteger(rotaryDim) || rotaryDim <= 0 || rotaryDim % 2 !== 0 || rotaryDim > Dh) {
      throw new InvalidArgumentError(`rope: rotaryDim ${rotaryDim} must be even and in (0, ${Dh}]`, { param: 'rotaryDim' });
    }
    rope64(f64(x, 'rope x'), i32(positions, 'rope positions', [T]), T, nHeads, Dh, rotaryDim, theta, inverse);
  }

  // ---- lightning and softmax attention (sequence.ts) ----
  lightningForward(out: TTensor, qkv: TTensor, slopes: TTensor, docs: Docs, blockSize: number): void {
    const { T, H, Dh } = lightningDims(qkv, slopes, docs);
    lightningForward64(f64(out, 'lightning out', [T, H * Dh]), f64(qkv, 'lightning qkv'), f64(slopes, 'lightning slopes'), docs.host, H, Dh, blockSize);
  }

  lightningBackward(dQkv: TTensor, dOut: TTensor, qkv: TTensor, slopes: TTensor, docs: Docs, blockSize: number): void {
    const { T, H, Dh } = lightningDims(qkv, slopes, docs);
    lightningBackward64(
      f64(dQkv, 'lightning dQkv', [T, H * 3 * Dh]), f64(dOut, 'lightning dOut', [T, H * Dh]), f64(qkv, 'lightning qkv'),
      f64(slopes, 'lightning slopes'), docs.host, H, Dh, blockSize,
    );
  }

  attentionForward(out: TTensor, lse: TTensor, q: TTensor, k: TTensor, v: TTensor, docs: Docs, scale: number): void {
    const { T, H, Hkv, Dh } = attentionDims(q, k, v, docs);
    attentionForward64(
      f64(out, 'attention out', [T, H, Dh]), f64(lse, 'attention lse', [T, H]), f64(q, 'attention q'), f64(k, 'attention k'),
      f64(v, 'attention v'), docs.host, H, Hkv, Dh, scale,
    );
  }

  attentionBackward(dq: TTensor, dk: TTensor, dv: TTensor, dOut: TTensor, q: TTensor, k: TTensor, v: TTensor, out: TTensor, lse: TTensor, docs: Docs, scale: number): void {
    const { T, H, Hkv, Dh } = attentionDims(q, k, v, docs);
    attentionBackward64(
      f64(dq, 'attention dq', [T, H, Dh]), f64(dk, 'attention dk', [T, Hkv, Dh]), f64(dv, 'attention dv', [T, Hkv, Dh]),
      f64(dOut, 'attention dOut', [T, H, Dh]), f64(q, 'attention q'), f64(k, 'attention k'), f64(v, 'attention v'),
      f64(out, 'attention out', [T, H, Dh]), f64(lse, 'attention lse', [T, H]), docs.host, H, Hkv, Dh, scale,
    );
  }

  // ---- mixture of experts ----
  moeRouteForward(indices: TTensor, weights: TTensor, probs: TTensor, logits: TTensor): void {
    const [T, E] = dimsOf(logits, 'moeRoute logits', 2);
    const K = routeK(indices, E);
    moeRouteForward64(
      i32(indices, 'moeRoute indices', [T, K]), f64(weights, 'moeRoute weights', [T, K]), f64(probs, 'moeRoute probs', [T, E]),
      f64(logits, 'moeRoute logits'), T, E, K,
    );
  }

  moeRouteBackward(dLogits: TTensor, losses: TTensor, dWeights: TTensor, logits: TTensor, probs: TTensor, indices: TTensor, weights: TTensor, auxCoef: number, zCoef: number): void {
    const [T, E] = dimsOf(logits, 'moeRoute logits', 2);
    const K = routeK(indices, E);
    const idx = i32(indices, 'moeRoute indices', [T, K]);
    checkIds(idx, E, 'moeRoute indices');
    moeRouteBackward64(
      f64(dLogits, 'moeRoute dLogits', [T, E]), f64(losses, 'moeRoute losses', [2]), f64(dWeights, 'moeRoute dWeights', [T, K]),
      f64(logits, 'moeRoute logits'), f64(probs, 'moeRoute probs', [T, E]), idx, f64(weights, 'moeRoute weights', [T, K]),
      T, E, K, auxCoef, zCoef,
    );
  }

  moeExpertsForward(out: TTensor, saved: MoeSaved, x: TTensor, indices: TTensor, weights: TTensor, w13: TTensor, w2: TTensor): void {
    const dims = expertDims(x, indices, w13, w2);
    const { T, D, K, I } = dims;
    moeExpertsForward64(
      f64(out, 'moe out', [T, D]), f64(saved.h13, 'moe saved.h13', [T * K, 2 * I]), f64(saved.y, 'moe saved.y', [T * K, D]),
      f64(x, 'moe x'), i32(indices, 'moe indices'), f64(weights, 'moe weights', [T, K]), f64(w13, 'moe w13'), f64(w2, 'moe w2'), dims,
    );
  }

  moeExpertsBackward(dx: TTensor, dW13: TTensor, dW2: TTensor, dWeights: TTensor, dOut: TTensor, saved: MoeSaved, x: TTensor, indices: TTensor, weights: TTensor, w13: TTensor, w2: TTensor): void {
    const dims = expertDims(x, indices, w13, w2);
    const { T, D, E, K, I } = dims;
    moeExpertsBackward64(
      f64(dx, 'moe dx', [T, D]), f64(dW13, 'moe dW13', [E, 2 * I, D]), f64(dW2, 'moe dW2', [E, D, I]), f64(dWeights, 'moe dWeights', [T, K]),
      f64(dOut, 'moe dOut', [T, D]), f64(saved.h13, 'moe saved.h13', [T * K, 2 * I]), f64(saved.y, 'moe saved.y', [T * K, D]),
      f64(x, 'moe x'), i32(indices, 'moe indices'), f64(weights, 'moe weights', [T, K]), f64(w13, 'moe w13'), f64(w2, 'moe w2'), dims,
    );
  }

  // ---- loss ----
  crossEntropy(losses: TTensor, dLogits: TTensor, logits: TTensor, targets: TTensor, gradScale: number): void {
    const [T, V] = dimsOf(logits, 'crossEntropy logits', 2);
    const tg = i32(targets, 'crossEntropy targets', [T]);
    for (let t = 0; t < T; t++) if (tg[t] !== -1) checkId(tg[t], V, 'crossEntropy targets');
    crossEntropy64(f64(losses, 'crossEntropy losses', [T]), f64(dLogits, 'crossEntropy dLogits', [T, V]), f64(logits, 'crossEntropy logits'), tg, T, V, gradScale);
  }

  // ---- optimiser ----
  adamw(param: TTensor, grad: TTensor, m: TTensor, v: TTensor, o: AdamWStep): void {
    const p = f64(param, 'adamw param'), g = f64(grad, 'adamw grad'), ms = f64(m, 'adamw m'), vs = f64(v, 'adamw v');
    sameSize('adamw', p, g, ms, vs);
    if (!Number.isInteger(o.step) || o.step < 1) throw new InvalidArgumentError(`adamw: step ${o.step} must be a positive integer (1-based)`, { param: 'step' });
    adamw64(p, g, ms, vs, p.length, o);
  }
}

function sameSize(what: string, ...arrays: Float64Array[]): void {
  for (const a of arrays) {
    if (a.length !== arrays[0].length) throw new ShapeError(`${what}: operands have ${arrays.map((b) => b.length).join(' vs ')} elements`);
  }
}

function checkId(id: number, n: number, what: string): number {
  if (id < 0 || id >= n) throw new InvalidArgumentError(`${what}: id ${id} is outside [0, ${n})`, { param: what });
  return id;
}

function checkIds(ids: Int32Array, n: number, what: string): void {
  for (const id of ids) checkId(id, n, what);
}

function routeK(indices: TTensor, E: number): number {
  const K = dimsOf(indices, 'moeRoute indices', 2)[1];
  if (K < 1 || K > E) throw new ShapeError(`moeRoute: K = ${K} experts per token must be in [1, ${E}]`);
  return K;
}

function expertDims(x: TTensor, indices: TTensor, w13: TTensor, w2: TTensor): ExpertDims {
  const [T, D] = dimsOf(x, 'moe x', 2);
  const [E, I2] = dimsOf(w13, 'moe w13', 3);
  if (I2 % 2 !== 0) throw new ShapeError(`moe w13: expected [E, 2I, D], got [${w13.shape.join(', ')}]`);
  const I = I2 / 2;
  checkShape(w13, 'moe w13', [E, 2 * I, D]);
  checkShape(w2, 'moe w2', [E, D, I]);
  const K = dimsOf(indices, 'moe indices', 2)[1];
  checkIds(i32(indices, 'moe indices', [T, K]), E, 'moe indices');
  return { T, D, E, K, I };
}

function checkDocs(docs: Docs, T: number): void {
  const h = docs.host;
  if (h.length !== docs.count + 1 || h[0] !== 0 || h[docs.count] !== T) {
    throw new ShapeError(`docs: offsets [${h.join(', ')}] do not cover ${T} tokens in ${docs.count} documents`);
  }
  for (let i = 0; i < docs.count; i++) if (h[i + 1] < h[i]) throw new ShapeError(`docs: offsets [${h.join(', ')}] decrease`);
}

function lightningDims(qkv: TTensor, slopes: TTensor, docs: Docs): { T: number; H: number; Dh: number } {
  const [T, W] = dimsOf(qkv, 'lightning qkv', 2);
  const H = dimsOf(slopes, 'lightning slopes', 1)[0];
  if (H < 1 || W % (3 * H) !== 0) throw new ShapeError(`lightning: qkv width ${W} is not 3·Dh per head for ${H} heads`);
  checkDocs(docs, T);
  return { T, H, Dh: W / (3 * H) };
}

function attentionDims(q: TTensor, k: TTensor, v: TTensor, docs: Docs): { T: number; H: number; Hkv: number; Dh: number } {
  const [T, H, Dh] = dimsOf(q, 'attention q', 3);
  const Hkv = dimsOf(k, 'attention k', 3)[1];
  checkShape(k, 'attention k', [T, Hkv, Dh]);
  checkShape(v, 'attention v', [T, Hkv, Dh]);
  if (Hkv < 1 || H % Hkv !== 0) throw new ShapeError(`attention: ${H} query heads do not group over ${Hkv} kv heads`);
  checkDocs(docs, T);
  return { T, H, Hkv, Dh };
}

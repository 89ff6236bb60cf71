/**
 * The CUDA training backend (TrainBackend, src/train/backend.ts): fp32 activations, gradients and optimiser state
 * on the device, checked against the float64 CPU reference (test/gpu/train-ops.test.ts).
 *
 * It composes a CudaBackend for the context, stream, caching allocator, cuBLAS handle, kernel library and named
 * scratch buffers (the CudaBackend is itself the OpRuntime the op wrappers take). Kernels: kernels/train.cu (dense
 * ops), kernels/train_moe.cu (MoE), cast_f32_bf16 of kernels/elementwise.cu, moe_histogram of kernels/moe.cu; the
 * four sequence ops are in ./sequence.ts.
 *
 * Linear layers: unless `exact`, GEMMs take bf16 operands with fp32 accumulation and fp32 outputs — activations
 * and output gradients are cast into scratch per call, weights come from cached bf16 copies of the fp32 masters
 * (./bf16-copies.ts; a copy is recast after anything this backend writes over its weight). `exact` runs fp32
 * GEMMs (the router; cuBLAS's default math mode, no TF32). Weight gradients accumulate in fp32 (beta = 1).
 */

import { ShapeError } from '../../util/errors.js';
import { CudaBackend, type CudaBackendOptions } from '../../backend/cuda/cuda-backend.js';
import { CUDA_R_16BF, CUDA_R_32F } from '../../backend/cuda/cublas.js';
import type { DevicePtr, KernelArg } from '../../backend/cuda/driver.js';
import { f32, gridFor, i32, i64 } from '../../backend/cuda/runtime.js';
import type { AdamWStep, Docs, MoeSaved, TrainBackend, TrainDType, TTensor } from '../backend.js';
import { Bf16Copies } from './bf16-copies.js';
import { moeExpertsBackwardCuda, moeExpertsForwardCuda, moeRouteBackwardCuda, moeRouteForwardCuda } from './moe.js';
import { attentionBackwardCuda, attentionForwardCuda, lightningBackwardCuda, lightningForwardCuda, type SequenceShape } from './sequence.js';
import { CudaTTensor, cu, dims, rowsOf, sized } from './tensor.js';

export { CudaTTensor } from './tensor.js';

/** Threads per row for the row kernels (norms, cross-entropy). */
function rowThreads(C: number): number {
  return C >= 4096 ? 1024 : C >= 1024 ? 512 : 256;
}

export class CudaTrainBackend implements TrainBackend {
  readonly name = 'cuda';
  /** The inference backend providing context, allocator, cuBLAS, kernels and scratch (the OpRuntime). */
  readonly cuda: CudaBackend;
  private readonly ownsCuda: boolean;
  private readonly copies: Bf16Copies;

  /** Shares `backend` when given (its context and stream), else creates one and disposes it with this one. */
  constructor(backend?: CudaBackend, options: CudaBackendOptions = {}) {
    this.ownsCuda = !backend;
    this.cuda = backend ?? new CudaBackend(options);
    this.copies = new Bf16Copies(this.cuda);
  }

  // ------------------------------------------------------------------ memory
  alloc(shape: readonly number[], dtype: TrainDType): TTensor {
    for (const s of shape) if (!Number.isSafeInteger(s) || s < 0) throw new ShapeError(`invalid tensor shape [${shape.join(', ')}]`);
    const n = shape.reduce((a, b) => a * b, 1);
    return new CudaTTensor([...shape], dtype, this.cuda.allocator.alloc(n * 4), true);
  }

  zeros(shape: readonly number[], dtype: TrainDType): TTensor {
    const t = this.alloc(shape, dtype);
    this.fillZero(t);
    return t;
  }

  view(t: TTensor, shape: readonly number[], offset = 0): TTensor {
    const c = cu(t, 'view');
    const n = shape.reduce((a, b) => a * b, 1);
    if (!Number.isSafeInteger(offset) || offset < 0 || offset + n > c.size) throw new ShapeError(`view [${shape.join(', ')}] at +${offset} does not fit in [${c.shape.join(', ')}]`);
    return new CudaTTensor([...shape], c.dtype, c.ptr + BigInt(offset * 4), false);
  }

  upload(shape: readonly number[], dtype: TrainDType, data: Float64Array | Float32Array | Int32Array): TTensor {
    const t = this.alloc(shape, dtype);
    this.write(t, data);
    return t;
  }

  write(t: TTensor, data: Float64Array | Float32Array | Int32Array): void {
    const c = cu(t, 'write');
    if (data.length !== c.size) throw new ShapeError(`write: ${data.length} values into [${c.shape.join(', ')}]`);
    const host = c.dtype === 'float' ? (data instanceof Float32Array ? data : Float32Array.from(data)) : data instanceof Int32Array ? data : Int32Array.from(data);
    this.copies.touched(c);
    this.cuda.ctx.copyHtoD(c.ptr, host, c.bytes); // pageable source: staged before the call returns
  }

  read(t: TTensor): Float64Array {
    const c = cu(t, 'read');
    const host = c.dtype === 'float' ? new Float32Array(c.size) : new Int32Array(c.size);
    this.cuda.download(host, c.ptr, c.bytes);
    return Float64Array.from(host);
  }

  fillZero(t: TTensor): void {
    const c = this.out(t);
    this.cuda.ctx.memsetD8(c.ptr, 0, c.bytes);
  }

  copy(dst: TTensor, src: TTensor): void {
    const d = cu(dst, 'copy dst'), s = cu(src, 'copy src');
    if (d.size !== s.size || d.dtype !== s.dtype) throw new ShapeError(`copy: [${s.shape}] ${s.dtype} into [${d.shape}] ${d.dtype}`);
    this.copies.touched(d);
    this.cuda.ctx.copyDtoD(d.ptr, s.ptr, d.bytes);
  }

  free(t: TTensor): void {
    const c = cu(t, 'free');
    if (!c.owner) return;
    this.copies.freed(c);
    this.cuda.allocator.free(c.ptr);
  }

  synchronize(): void {
    this.cuda.synchronize();
  }

  dispose(): void {
    this.copies.clear();
    if (this.ownsCuda) this.cuda.dispose();
  }

  /** An output of an op: its bf16 weight copies (if it is or overlaps a weight) become stale. */
  private out(t: TTensor, what = 'output'): CudaTTensor {
    const c = cu(t, what);
    this.copies.touched(c);
    return c;
  }

  private launch(file: string, name: string, grid: readonly number[], block: readonly number[], args: readonly KernelArg[]): void {
    this.cuda.launch(file, name, grid, block, 0, args);
  }

  // ------------------------------------------------------------------ elementwise and reductions
  axpby(out: TTensor, a: number, x: TTensor, b: number, y: TTensor): void {
    const o = this.out(out);
    const n = o.size;
    const xc = sized(x, 'axpby x', n), yc = sized(y, 'axpby y', n);
    sized(o, 'axpby out', n);
    this.launch('train', 'train_axpby', [gridFor(n)], [256], [o.ptr, f32(a), xc.ptr, f32(b), yc.ptr, i64(n)]);
  }

  scale(x: TTensor, s: number): void {
    const c = this.out(x);
    sized(c, 'scale x', c.size);
    this.launch('train', 'train_scale', [gridFor(c.size)], [256], [c.ptr, f32(s), i64(c.size)]);
  }

  sumSquares(out: TTensor, x: TTensor): void {
    const o = sized(this.out(out), 'sumSquares out', 1);
    const c = cu(x, 'sumSquares x');
    if (c.dtype !== 'float') throw new ShapeError('sumSquares: x must be float');
    const blocks = gridFor(c.size);
    const part = this.cuda.scratch('train.sumsq', blocks * 8);
    this.launch('train', 'train_sum_squares', [blocks], [256], [part, c.ptr, i64(c.size)]);
    this.launch('train', 'train_sum_squares_final', [1], [256], [o.ptr, part, i32(blocks)]);
  }

  // ------------------------------------------------------------------ embedding
  embeddingForward(out: TTensor, table: TTensor, ids: TTensor): void {
    const [, D] = dims(table, 'embedding table', [undefined, undefined]).shape;
    const T = dims(ids, 'embedding ids', [undefined], 'i32').shape[0];
    const o = dims(this.out(out), 'embedding out', [T, D]);
    if (T > 0) this.launch('train', 'train_embedding_fwd', [T], [256], [o.ptr, cu(table, 'table').ptr, cu(ids, 'ids').ptr, i32(D)]);
  }

  embeddingBackward(dTable: TTensor, dOut: TTensor, ids: TTensor): void {
    const [, D] = dims(this.out(dTable), 'embedding dTable', [undefined, undefined]).shape;
    const T = dims(ids, 'embedding ids', [undefined], 'i32').shape[0];
    const g = dims(dOut, 'embedding dOut', [T, D]);
    if (T > 0) this.launch('train', 'train_embedding_bwd', [T], [256], [cu(dTable, 'dTable').ptr, g.ptr, cu(ids, 'ids').ptr, i32(D)]);
  }

  // ------------------------------------------------------------------ linear
  /** A bf16 copy of an activation / gradient in scratch `name` (valid until the next call that uses the name). */
  private cast(t: CudaTTensor, name: string): DevicePtr {
    const p = this.cuda.scratch(name, t.size * 2);
    this.launch('elementwise', 'cast_f32_bf16', [gridFor(t.size)], [256], [p, t.ptr, i64(t.size)]);
    return p;
  }

  linearForward(out: TTensor, x: TTensor, w: TTensor, exact = false): void {
    const wc = dims(w, 'linear w', [undefined, undefined]);
    const [N, K] = wc.shape;
    const xc = cu(x, 'linear x'), T = rowsOf(xc, K, 'linear x');
    const o = sized(this.out(out), 'linear out', T * N);
    if (exact) this.cuda.blas.linear(o.ptr, CUDA_R_32F, N, xc.ptr, CUDA_R_32F, K, wc.ptr, CUDA_R_32F, K, T, N, K);
    else this.cuda.blas.linear(o.ptr, CUDA_R_32F, N, this.cast(xc, 'train.a16'), CUDA_R_16BF, K, this.copies.get(wc), CUDA_R_16BF, K, T, N, K);
  }

  // Column-major views (cublas.ts): dx[T, Kin] = dOut·W is gemm(N, N, m = Kin, n = T, k = N) with A = W, B = dOut.
  linearBackwardInput(dx: TTensor, dOut: TTensor, w: TTensor, accumulate: boolean, exact = false): void {
    const wc = dims(w, 'linear w', [undefined, undefined]);
    const [N, K] = wc.shape;
    const g = cu(dOut, 'linear dOut'), T = rowsOf(g, N, 'linear dOut');
    const d = sized(this.out(dx), 'linear dx', T * K);
    if (exact) this.cuda.blas.gemm(false, false, K, T, N, wc.ptr, CUDA_R_32F, K, g.ptr, CUDA_R_32F, N, d.ptr, CUDA_R_32F, K, accumulate);
    else this.cuda.blas.gemm(false, false, K, T, N, this.copies.get(wc), CUDA_R_16BF, K, this.cast(g, 'train.a16'), CUDA_R_16BF, N, d.ptr, CUDA_R_32F, K, accumulate);
  }

  // dW[N, Kin] += dOutᵀ·x is gemm(N, T, m = Kin, n = N, k = T) with A = x, B = dOut.
  linearBackwardWeight(dw: TTensor, dOut: TTensor, x: TTensor, exact = false): void {
    const d = dims(this.out(dw), 'linear dw', [undefined, undefined]);
    const [N, K] = d.shape;
    const xc = cu(x, 'linear x'), T = rowsOf(xc, K, 'linear x');
    const g = sized(dOut, 'linear dOut', T * N);
    if (exact) this.cuda.blas.gemm(false, true, K, N, T, xc.ptr, CUDA_R_32F, K, g.ptr, CUDA_R_32F, N, d.ptr, CUDA_R_32F, K, true);
    else this.cuda.blas.gemm(false, true, K, N, T, this.cast(xc, 'train.b16'), CUDA_R_16BF, K, this.cast(g, 'train.a16'), CUDA_R_16BF, N, d.ptr, CUDA_R_32F, K, true);
  }

  // ------------------------------------------------------------------ RMSNorm
  rmsNormForward(out: TTensor, rstd: TTensor, x: TTensor, w: TTensor, eps: number): void {
    const C = dims(w, 'rmsNorm w', [undefined]).shape[0];
    const xc = cu(x, 'rmsNorm x'), R = rowsOf(xc, C, 'rmsNorm x');
    const o = sized(this.out(out), 'rmsNorm out', R * C), r = sized(this.out(rstd), 'rmsNorm rstd', R);
    if (R > 0) this.launch('train', 'train_rms_norm_fwd', [R], [rowThreads(C)], [o.ptr, r.ptr, xc.ptr, cu(w, 'w').ptr, i32(C), f32(eps)]);
  }

  rmsNormBackward(dx: TTensor, dw: TTensor, dOut: TTensor, x: TTensor, w: TTensor, rstd: TTensor, accumulate: boolean): void {
    const C = dims(w, 'rmsNorm w', [undefined]).shape[0];
    const xc = cu(x, 'rmsNorm x'), R = rowsOf(xc, C, 'rmsNorm x');
    const d = sized(this.out(dx), 'rmsNorm dx', R * C), dwc = sized(this.out(dw), 'rmsNorm dw', C);
    const g = sized(dOut, 'rmsNorm dOut', R * C), r = sized(rstd, 'rmsNorm rstd', R);
    if (R === 0) return;
    // dw before dx: dx may alias dOut (the dw pass reads dOut).
    const colBlocks = Math.ceil(C / 256);
    const chunks0 = Math.min(R, Math.max(1, Math.ceil(1024 / colBlocks)));
    const rowsPer = Math.ceil(R / chunks0);
    this.launch('train', 'train_rms_norm_bwd_dw', [colBlocks, Math.ceil(R / rowsPer)], [256], [dwc.ptr, g.ptr, xc.ptr, r.ptr, i32(R), i32(C), i32(rowsPer)]);
    this.launch('train', 'train_rms_norm_bwd_dx', [R], [rowThreads(C)], [d.ptr, g.ptr, xc.ptr, cu(w, 'w').ptr, r.ptr, i32(C), i32(accumulate ? 1 : 0)]);
  }

  // ------------------------------------------------------------------ activations
  siluForward(out: TTensor, x: TTensor): void {
    const xc = cu(x, 'silu x'), o = sized(this.out(out), 'silu out', xc.size);
    this.launch('train', 'train_silu_fwd', [gridFor(xc.size)], [256], [o.ptr, xc.ptr, i64(xc.size)]);
  }

  siluBackward(dx: TTensor, dOut: TTensor, x: TTensor): void {
    const xc = cu(x, 'silu x'), n = xc.size;
    const d = sized(this.out(dx), 'silu dx', n), g = sized(dOut, 'silu dOut', n);
    this.launch('train', 'train_silu_bwd', [gridFor(n)], [256], [d.ptr, g.ptr, xc.ptr, i64(n)]);
  }

  sigmoidMulForward(out: TTensor, gate: TTensor, x: TTensor): void {
    const xc = cu(x, 'sigmoidMul x'), n = xc.size;
    const o = sized(this.out(out), 'sigmoidMul out', n), gc = sized(gate, 'sigmoidMul gate', n);
    this.launch('train', 'train_sigmoid_mul_fwd', [gridFor(n)], [256], [o.ptr, gc.ptr, xc.ptr, i64(n)]);
  }

  sigmoidMulBackward(dGate: TTensor, dx: TTensor, dOut: TTensor, gate: TTensor, x: TTensor): void {
    const xc = cu(x, 'sigmoidMul x'), n = xc.size;
    const dg = sized(this.out(dGate), 'sigmoidMul dGate', n), d = sized(this.out(dx), 'sigmoidMul dx', n);
    const g = sized(dOut, 'sigmoidMul dOut', n), gc = sized(gate, 'sigmoidMul gate', n);
    this.launch('train', 'train_sigmoid_mul_bwd', [gridFor(n)], [256], [dg.ptr, d.ptr, g.ptr, gc.ptr, xc.ptr, i64(n)]);
  }

  // ------------------------------------------------------------------ RoPE
  rope(x: TTensor, positions: TTensor, rotaryDim: number, theta: number, inverse: boolean): void {
    const xc = dims(this.out(x), 'rope x', [undefined, undefined, undefined]);
    const [T, nh, Dh] = xc.shape;
    dims(positions, 'rope positions', [T], 'i32');
    if (rotaryDim % 2 !== 0 || rotaryDim > Dh) throw new ShapeError(`rope: rotaryDim ${rotaryDim} with head dim ${Dh}`);
    if (T > 0 && rotaryDim > 0) this.launch('train', 'train_rope', [T], [256], [xc.ptr, cu(positions, 'positions').ptr, i32(nh), i32(Dh), i32(rotaryDim), f32(theta), f32(inverse ? -1 : 1)]);
  }

  // ------------------------------------------------------------------ sequence ops (./sequence.ts)
  private seq(T: number, H: number, Hkv: number, Dh: number, docs: Docs): SequenceShape {
    dims(docs.offsets, 'docs offsets', [docs.count + 1], 'i32');
    return { T, docs: docs.count, maxLength: docs.maxLength, H, Hkv, Dh };
  }

  lightningForward(out: TTensor, qkv: TTensor, slopes: TTensor, docs: Docs, blockSize: number): void {
    const H = dims(slopes, 'lightning slopes', [undefined]).shape[0];
    const q = dims(qkv, 'lightning qkv', [undefined, undefined]);
    const [T, W] = q.shape, Dh = W / (3 * H);
    if (!Number.isInteger(Dh)) throw new ShapeError(`lightning: qkv width ${W} is not 3·${H}·Dh`);
    const o = dims(this.out(out), 'lightning out', [T, H * Dh]);
    lightningForwardCuda(this.cuda, this.seq(T, H, H, Dh, docs), o.ptr, q.ptr, cu(slopes, 'slopes').ptr, cu(docs.offsets, 'offsets').ptr, blockSize);
  }

  lightningBackward(dQkv: TTensor, dOut: TTensor, qkv: TTensor, slopes: TTensor, docs: Docs, blockSize: number): void {
    const H = dims(slopes, 'lightning slopes', [undefined]).shape[0];
    const q = dims(qkv, 'lightning qkv', [undefined, undefined]);
    const [T, W] = q.shape, Dh = W / (3 * H);
    if (!Number.isInteger(Dh)) throw new ShapeError(`lightning: qkv width ${W} is not 3·${H}·Dh`);
    const d = dims(this.out(dQkv), 'lightning dQkv', [T, W]), g = dims(dOut, 'lightning dOut', [T, H * Dh]);
    lightningBackwardCuda(this.cuda, this.seq(T, H, H, Dh, docs), d.ptr, g.ptr, q.ptr, cu(slopes, 'slopes').ptr, cu(docs.offsets, 'offsets').ptr, blockSize);
  }

  attentionForward(out: TTensor, lse: TTensor, q: TTensor, k: TTensor, v: TTensor, docs: Docs, scale: number): void {
    const qc = dims(q, 'attention q', [undefined, undefined, undefined]);
    const [T, H, Dh] = qc.shape;
    const kc = dims(k, 'attention k', [T, undefined, Dh]), Hkv = kc.shape[1];
    const vc = dims(v, 'attention v', [T, Hkv, Dh]);
    const o = dims(this.out(out), 'attention out', [T, H, Dh]), l = dims(this.out(lse), 'attention lse', [T, H]);
    attentionForwardCuda(this.cuda, this.seq(T, H, Hkv, Dh, docs), o.ptr, l.ptr, qc.ptr, kc.ptr, vc.ptr, cu(docs.offsets, 'offsets').ptr, scale);
  }

  attentionBackward(dq: TTensor, dk: TTensor, dv: TTensor, dOut: TTensor, q: TTensor, k: TTensor, v: TTensor, out: TTensor, lse: TTensor, docs: Docs, scale: number): void {
    const qc = dims(q, 'attention q', [undefined, undefined, undefined]);
    const [T, H, Dh] = qc.shape;
    const kc = dims(k, 'attention k', [T, undefined, Dh]), Hkv = kc.shape[1];
    const vc = dims(v, 'attention v', [T, Hkv, Dh]);
    const dqc = dims(this.out(dq), 'attention dq', [T, H, Dh]);
    const dkc = dims(this.out(dk), 'attention dk', [T, Hkv, Dh]), dvc = dims(this.out(dv), 'attention dv', [T, Hkv, Dh]);
    const g = dims(dOut, 'attention dOut', [T, H, Dh]), o = dims(out, 'attention out', [T, H, Dh]), l = dims(lse, 'attention lse', [T, H]);
    attentionBackwardCuda(this.cuda, this.seq(T, H, Hkv, Dh, docs), dqc.ptr, dkc.ptr, dvc.ptr, g.ptr, qc.ptr, kc.ptr, vc.ptr, o.ptr, l.ptr, cu(docs.offsets, 'offsets').ptr, scale);
  }

  // ------------------------------------------------------------------ mixture of experts (./moe.ts)
  moeRouteForward(indices: TTensor, weights: TTensor, probs: TTensor, logits: TTensor): void {
    const [T, E] = dims(logits, 'router logits', [undefined, undefined]).shape;
    const idx = dims(this.out(indices), 'moe indices', [T, undefined], 'i32'), K = idx.shape[1];
    moeRouteForwardCuda(this.cuda, idx, dims(this.out(weights), 'moe weights', [T, K]), dims(this.out(probs), 'moe probs', [T, E]), cu(logits, 'logits'), T, E, K);
  }

  moeRouteBackward(dLogits: TTensor, losses: TTensor, dWeights: TTensor, logits: TTensor, probs: TTensor, indices: TTensor, weights: TTensor, auxCoef: number, zCoef: number): void {
    const [T, E] = dims(logits, 'router logits', [undefined, undefined]).shape;
    const idx = dims(indices, 'moe indices', [T, undefined], 'i32'), K = idx.shape[1];
    moeRouteBackwardCuda(
      this.cuda, dims(this.out(dLogits), 'router dLogits', [T, E]), dims(this.out(losses), 'router losses', [2]), dims(dWeights, 'moe dWeights', [T, K]),
      cu(logits, 'logits'), dims(probs, 'moe probs', [T, E]), idx, dims(weights, 'moe weights', [T, K]), T, E, K, auxCoef, zCoef,
    );
  }

  private expertsShape(x: TTensor, indices: TTensor, w13: TTensor, w2: TTensor): { T: number; K: number; E: number; D: number; I: number } {
    const [E, I2, D] = dims(w13, 'moe w13', [undefined, undefined, undefined]).shape;
    const I = I2 / 2;
    if (!Number.isInteger(I)) throw new ShapeError(`moe w13: ${I2} rows per expert is not 2·I`);
    dims(w2, 'moe w2', [E, D, I]);
    const [T, K] = dims(indices, 'moe indices', [undefined, undefined], 'i32').shape;
    sized(x, 'moe x', T * D);
    return { T, K, E, D, I };
  }

  moeExpertsForward(out: TTensor, saved: MoeSaved, x: TTensor, indices: TTensor, weights: TTensor, w13: TTensor, w2: TTensor): void {
    const s = this.expertsShape(x, indices, w13, w2);
    const { T, K, D, I } = s;
    moeExpertsForwardCuda(
      this.cuda, s, dims(this.out(out), 'moe out', [T, D]), dims(this.out(saved.h13), 'moe saved.h13', [T * K, 2 * I]),
      dims(this.out(saved.y), 'moe saved.y', [T * K, D]), cu(x, 'x'), cu(indices, 'indices'), dims(weights, 'moe weights', [T, K]),
      this.copies.get(cu(w13, 'w13')), this.copies.get(cu(w2, 'w2')),
    );
  }

  moeExpertsBackward(dx: TTensor, dW13: TTensor, dW2: TTensor, dWeights: TTensor, dOut: TTensor, saved: MoeSaved, x: TTensor, indices: TTensor, weights: TTensor, w13: TTensor, w2: TTensor): void {
    const s = this.expertsShape(x, indices, w13, w2);
    const { T, K, E, D, I } = s;
    moeExpertsBackwardCuda(
      this.cuda, s, dims(this.out(dx), 'moe dx', [T, D]), dims(this.out(dW13), 'moe dW13', [E, 2 * I, D]), dims(this.out(dW2), 'moe dW2', [E, D, I]),
      dims(this.out(dWeights), 'moe dWeights', [T, K]), dims(dOut, 'moe dOut', [T, D]), dims(saved.h13, 'moe saved.h13', [T * K, 2 * I]),
      dims(saved.y, 'moe saved.y', [T * K, D]), cu(x, 'x'), cu(indices, 'indices'), dims(weights, 'moe weights', [T, K]),
      this.copies.get(cu(w13, 'w13')), this.copies.get(cu(w2, 'w2')),
    );
  }

  // ------------------------------------------------------------------ loss
  crossEntropy(losses: TTensor, dLogits: TTensor, logits: TTensor, targets: TTensor, gradScale: number): void {
    const [T, V] = dims(logits, 'crossEntropy logits', [undefined, undefined]).shape;
    const l = dims(this.out(losses), 'crossEntropy losses', [T]), d = dims(this.out(dLogits), 'crossEntropy dLogits', [T, V]);
    const tg = dims(targets, 'crossEntropy targets', [T], 'i32');
    if (T > 0) this.launch('train', 'train_cross_entropy', [T], [rowThreads(V)], [l.ptr, d.ptr, cu(logits, 'logits').ptr, tg.ptr, i32(V), f32(gradScale)]);
  }

  // ------------------------------------------------------------------ optimiser
  adamw(param: TTensor, grad: TTensor, m: TTensor, v: TTensor, o: AdamWStep): void {
    const p = this.out(param), n = p.size;
    sized(p, 'adamw param', n);
    const g = sized(grad, 'adamw grad', n), mc = sized(m, 'adamw m', n), vc = sized(v, 'adamw v', n);
    if (!(o.step >= 1)) throw new ShapeError(`adamw: step ${o.step} (1-based)`);
    const bc1 = 1 - Math.pow(o.beta1, o.step), bc2 = 1 - Math.pow(o.beta2, o.step);
    this.launch('train', 'train_adamw', [gridFor(n)], [256],
      [p.ptr, g.ptr, mc.ptr, vc.ptr, i64(n), f32(o.lr), f32(o.beta1), f32(o.beta2), f32(o.eps), f32(o.weightDecay), f32(bc1), f32(bc2), f32(o.gradScale)]);
  }
}

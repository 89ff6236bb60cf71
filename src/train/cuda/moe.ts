/**
 * The MoE block for training on the GPU (kernels/train_moe.cu): routing forward/backward with the auxiliary losses,
 * and the experts forward/backward through cuBLAS per expert.
 *
 * Experts: the host reads the routing indices back (one sync per call) and sorts the slots by expert with a stable
 * counting sort, so row r of the scratch buffers is slot slotOfRow[r] and each expert's rows are contiguous. GEMM
 * inputs are bf16 (activations cast on the fly, weights from the cached bf16 copies), outputs and accumulation
 * fp32; weight gradients accumulate (beta = 1) into the fp32 dW13 / dW2 slices of each expert. The per-slot saved
 * tensors (h13, y) are kept in slot order, as the contract defines them.
 */

import { ShapeError } from '../../util/errors.js';
import { CUDA_R_16BF, CUDA_R_32F } from '../../backend/cuda/cublas.js';
import type { DevicePtr } from '../../backend/cuda/driver.js';
import { f32, i32, type OpRuntime } from '../../backend/cuda/runtime.js';
import type { CudaTTensor } from './tensor.js';

const BF = CUDA_R_16BF, F32 = CUDA_R_32F;

export function moeRouteForwardCuda(rt: OpRuntime, idx: CudaTTensor, w: CudaTTensor, probs: CudaTTensor, logits: CudaTTensor, T: number, E: number, K: number): void {
  if (K < 1 || K > E) throw new ShapeError(`moeRouteForward: top-${K} of ${E} experts`);
  if (T === 0) return;
  rt.launch('train_moe', 'train_moe_route_fwd', [Math.ceil(T / 4)], [128], 0, [idx.ptr, w.ptr, probs.ptr, logits.ptr, i32(T), i32(E), i32(K)]);
}

export function moeRouteBackwardCuda(
  rt: OpRuntime, dLogits: CudaTTensor, losses: CudaTTensor, dWeights: CudaTTensor, logits: CudaTTensor, probs: CudaTTensor,
  idx: CudaTTensor, w: CudaTTensor, T: number, E: number, K: number, auxCoef: number, zCoef: number,
): void {
  if (T === 0) return;
  const TK = T * K;
  const counts = rt.scratch('train.moe.counts', E * 4);
  rt.ctx.memsetD8(counts, 0, E * 4);
  rt.launch('moe', 'moe_histogram', [Math.ceil(TK / 256)], [256], 0, [counts, idx.ptr, i32(TK)]);
  // d(aux)/dp[t, e] = auxCoef·E·f_e / T with f_e = counts_e / (T·K); d(z)/dlse_t = 2·zCoef·lse_t / T.
  const auxC = (auxCoef * E) / (TK * T), zC = zCoef / T;
  rt.launch('train_moe', 'train_moe_route_bwd', [Math.min(Math.ceil(T / 8), 1024)], [256], 0,
    [dLogits.ptr, losses.ptr, dWeights.ptr, logits.ptr, probs.ptr, idx.ptr, w.ptr, counts, i32(T), i32(E), i32(K), f32(auxC), f32(zC)]);
}

/** The slots sorted by expert (stable), on the host and in device scratch. */
interface SlotOrder {
  readonly counts: Int32Array;
  readonly offsets: Int32Array;
  readonly rowOfSlot: DevicePtr;
  readonly slotOfRow: DevicePtr;
}

function sortSlots(rt: OpRuntime, idx: CudaTTensor, TK: number, E: number): SlotOrder {
  const ids = new Int32Array(TK);
  rt.download(ids, idx.ptr, TK * 4);
  const counts = new Int32Array(E);
  for (let s = 0; s < TK; s++) {
    const e = ids[s];
    if (!(e >= 0 && e < E)) throw new ShapeError(`moeExperts: slot ${s} routes to expert ${e} (of ${E})`);
    counts[e]++;
  }
  const offsets = new Int32Array(E + 1);
  for (let e = 0; e < E; e++) offsets[e + 1] = offsets[e] + counts[e];
  const map = new Int32Array(2 * TK); // [rowOfSlot | slotOfRow]
  const cursor = offsets.slice(0, E);
  for (let s = 0; s < TK; s++) {
    const r = cursor[ids[s]]++;
    map[s] = r;
    map[TK + r] = s;
  }
  const dev = rt.scratch('train.moe.map', 2 * TK * 4);
  rt.ctx.copyHtoD(dev, map, 2 * TK * 4); // pageable source: staged before the call returns
  return { counts, offsets, rowOfSlot: dev, slotOfRow: dev + BigInt(TK * 4) };
}

/** Byte offset of element `elems` of a buffer of `bytesPer`-byte elements, as a device address. */
const at = (p: DevicePtr, elems: number, bytesPer: number): DevicePtr => p + BigInt(elems) * BigInt(bytesPer);

export interface ExpertsShape {
  readonly T: number;
  readonly K: number;
  readonly E: number;
  readonly D: number;
  readonly I: number;
}

export function moeExpertsForwardCuda(
  rt: OpRuntime, s: ExpertsShape, out: CudaTTensor, h13Saved: CudaTTensor, ySaved: CudaTTensor, x: CudaTTensor, idx: CudaTTensor,
  weights: CudaTTensor, w13b: DevicePtr, w2b: DevicePtr,
): void {
  const { T, K, E, D, I } = s;
  if (T === 0) return;
  const TK = T * K, I2 = 2 * I;
  const o = sortSlots(rt, idx, TK, E);
  const xs = rt.scratch('train.moe.xs', TK * D * 2);
  const h13 = rt.scratch('train.moe.h13', TK * I2 * 4);
  const act = rt.scratch('train.moe.act', TK * I * 2);
  const ys = rt.scratch('train.moe.ys', TK * D * 4);
  rt.launch('train_moe', 'train_moe_gather_bf16', [TK], [256], 0, [xs, x.ptr, o.slotOfRow, i32(K), i32(D)]);
  for (let e = 0; e < E; e++) {
    const n = o.counts[e], r0 = o.offsets[e];
    if (n > 0) rt.blas.linear(at(h13, r0 * I2, 4), F32, I2, at(xs, r0 * D, 2), BF, D, at(w13b, e * I2 * D, 2), BF, D, n, I2, D);
  }
  rt.launch('train_moe', 'train_moe_swiglu_fwd', [TK], [256], 0, [act, h13Saved.ptr, h13, o.slotOfRow, i32(I)]);
  for (let e = 0; e < E; e++) {
    const n = o.counts[e], r0 = o.offsets[e];
    if (n > 0) rt.blas.linear(at(ys, r0 * D, 4), F32, D, at(act, r0 * I, 2), BF, I, at(w2b, e * D * I, 2), BF, I, n, D, I);
  }
  rt.launch('train_moe', 'train_moe_combine_fwd', [T], [256], 0, [out.ptr, ySaved.ptr, ys, o.rowOfSlot, weights.ptr, i32(K), i32(D)]);
}

export function moeExpertsBackwardCuda(
  rt: OpRuntime, s: ExpertsShape, dx: CudaTTensor, dW13: CudaTTensor, dW2: CudaTTensor, dWeights: CudaTTensor, dOut: CudaTTensor,
  h13Saved: CudaTTensor, ySaved: CudaTTensor, x: CudaTTensor, idx: CudaTTensor, weights: CudaTTensor, w13b: DevicePtr, w2b: DevicePtr,
): void {
  const { T, K, E, D, I } = s;
  if (T === 0) return;
  const TK = T * K, I2 = 2 * I;
  const o = sortSlots(rt, idx, TK, E);
  rt.launch('train_moe', 'train_moe_dweights', [Math.ceil(TK / 8)], [256], 0, [dWeights.ptr, dOut.ptr, ySaved.ptr, i32(TK), i32(K), i32(D)]);
  const dys = rt.scratch('train.moe.dy', TK * D * 2);
  const act = rt.scratch('train.moe.act', TK * I * 2);
  const dact = rt.scratch('train.moe.dact', TK * I * 4);
  const dh13 = rt.scratch('train.moe.dh13', TK * I2 * 2);
  const xs = rt.scratch('train.moe.xs', TK * D * 2);
  const dxs = rt.scratch('train.moe.dxs', TK * D * 4);
  rt.launch('train_moe', 'train_moe_dy_bf16', [TK], [256], 0, [dys, dOut.ptr, weights.ptr, o.slotOfRow, i32(K), i32(D)]);
  rt.launch('train_moe', 'train_moe_act_bf16', [TK], [256], 0, [act, h13Saved.ptr, o.slotOfRow, i32(I)]);
  rt.launch('train_moe', 'train_moe_gather_bf16', [TK], [256], 0, [xs, x.ptr, o.slotOfRow, i32(K), i32(D)]);
  // Column-major views of the row-major operands (see cublas.ts): dW[N, Kin] += dOut_eᵀ·x_e is
  // gemm(N, T, m = Kin, n = N, k = rows); dx_e[rows, Kin] = dOut_e·W is gemm(N, N, m = Kin, n = rows, k = N).
  for (let e = 0; e < E; e++) {
    const n = o.counts[e], r0 = o.offsets[e];
    if (n === 0) continue;
    const dy = at(dys, r0 * D, 2);
    rt.blas.gemm(false, true, I, D, n, at(act, r0 * I, 2), BF, I, dy, BF, D, at(dW2.ptr, e * D * I, 4), F32, I, true);
    rt.blas.gemm(false, false, I, n, D, at(w2b, e * D * I, 2), BF, I, dy, BF, D, at(dact, r0 * I, 4), F32, I);
  }
  rt.launch('train_moe', 'train_moe_swiglu_bwd', [TK], [256], 0, [dh13, dact, h13Saved.ptr, o.slotOfRow, i32(I)]);
  for (let e = 0; e < E; e++) {
    const n = o.counts[e], r0 = o.offsets[e];
    if (n === 0) continue;
    const dh = at(dh13, r0 * I2, 2);
    rt.blas.gemm(false, true, D, I2, n, at(xs, r0 * D, 2), BF, D, dh, BF, I2, at(dW13.ptr, e * I2 * D, 4), F32, D, true);
    rt.blas.gemm(false, false, D, n, I2, at(w13b, e * I2 * D, 2), BF, D, dh, BF, I2, at(dxs, r0 * D, 4), F32, D);
  }
  rt.launch('train_moe', 'train_moe_combine_bwd', [T], [256], 0, [dx.ptr, dxs, o.rowOfSlot, i32(K), i32(D)]);
}

/**
 * Mixture of experts on the GPU (kernels/moe.cu), matching CpuBackend.moeRoute / moeExperts (MODEL.md §10).
 *
 * Routing: fp32 softmax over all experts, top-K (ties to the lower id), renormalised, one warp per token.
 * Experts, two paths:
 *  - few slots (T·K ≤ MOE_SMALL_MAX_SLOTS, i.e. decode): one CTA sorts the slots by expert on the device, then
 *    grouped GEMV kernels over (expert, row tile) read each routed expert's weights once and loop over its slots.
 *    No host sync, so decode steps can be captured in CUDA graphs.
 *  - many slots (prefill): a device histogram is read back (one sync), slots are scattered into expert order,
 *    rows gathered, and each expert runs two cuBLAS GEMMs (w13, then w2 after SwiGLU) on its contiguous rows.
 * Both end in a combine: moe_combine_bf16 (bf16 output) reproduces the reference's accumulation, bf16(w_k) · y_k
 * added in ascending expert order with bf16 rounding after each add; moe_combine_f32 (the engine's fp32 branch
 * buffers) adds the same terms in fp32 with unrounded weights.
 */

import { InternalError, ShapeError } from '../../../util/errors.js';
import { CUDA_R_16BF } from '../cublas.js';
import type { CudaTensor } from '../cuda-backend.js';
import { gridFor, i32, type OpRuntime } from '../runtime.js';

export const MOE_SMALL_MAX_SLOTS = 1024;
/** moe_combine_bf16 keeps a token's K slots in shared arrays of this size. */
const MOE_MAX_K = 32;

export function moeRoute(rt: OpRuntime, idx: CudaTensor, w: CudaTensor, logits: CudaTensor, T: number, E: number, K: number): void {
  if (K < 1 || K > E) throw new ShapeError(`moeRoute: top-${K} of ${E} experts`);
  if (T === 0) return;
  rt.launch('moe', 'moe_route_f32', [Math.ceil(T / 4)], [128], 0, [idx.ptr, w.ptr, logits.ptr, i32(T), i32(E), i32(K)]);
}

export function moeExperts(
  rt: OpRuntime, out: CudaTensor, x: CudaTensor, idx: CudaTensor, w: CudaTensor, w13: CudaTensor, w2: CudaTensor,
  T: number, K: number, E: number, D: number, I: number,
): void {
  if (K < 1 || K > MOE_MAX_K || K > E) throw new ShapeError(`moeExperts: K = ${K} (supported: 1 … min(E, ${MOE_MAX_K}))`);
  if (E >= 1 << 21) throw new ShapeError(`moeExperts: ${E} experts (at most ${(1 << 21) - 1})`);
  if (T === 0) return;
  const TK = T * K;
  if (TK <= MOE_SMALL_MAX_SLOTS) {
    const order = rt.scratch('moe.order', (E + 1 + TK) * 4); // offsets[E+1] then slots sorted by expert
    const act = rt.scratch('moe.act', TK * I * 2);
    const y = rt.scratch('moe.y', TK * D * 2);
    // An expert has at most T slots (top-K picks distinct experts), so NS ≥ T reads its weights once with the
    // fewest registers; one CTA column per expert with slots (at most min(E, T·K) of them).
    const ns = T <= 1 ? 1 : T <= 2 ? 2 : T <= 4 ? 4 : 8;
    const active = Math.min(E, TK);
    rt.launch('moe', 'moe_sort_small', [1], [1024], 0, [order, idx.ptr, i32(TK), i32(E)]);
    rt.launch('moe', `moe_grouped_w13_bf16_ns${ns}`, [active, Math.ceil(I / 16)], [256], 0, [act, x.ptr, order, w13.ptr, i32(K), i32(D), i32(I), i32(E)]);
    rt.launch('moe', `moe_grouped_w2_bf16_ns${ns}`, [active, Math.ceil(D / 16)], [256], 0, [y, act, order, w2.ptr, i32(D), i32(I), i32(E)]);
    rt.launch('moe', combineKernel(out), [T], [256], 0, [out.ptr, y, 0n, idx.ptr, w.ptr, i32(K), i32(D)]);
    return;
  }
  if (rt.replaying || rt.ctx.isCapturing) throw new InternalError('the grouped-GEMM MoE path syncs with the host and cannot run inside a CUDA graph');
  const I2 = 2 * I;
  const counts = rt.scratch('moe.counts', E * 4);
  const cursor = rt.scratch('moe.cursor', E * 4);
  const rowOfSlot = rt.scratch('moe.rowOfSlot', TK * 4);
  const tokenOfRow = rt.scratch('moe.tokenOfRow', TK * 4);
  rt.ctx.memsetD8(counts, 0, E * 4);
  rt.launch('moe', 'moe_histogram', [Math.ceil(TK / 256)], [256], 0, [counts, idx.ptr, i32(TK)]);
  const hostCounts = new Int32Array(E);
  rt.download(hostCounts, counts, E * 4);
  const offsets = new Int32Array(E + 1);
  for (let e = 0; e < E; e++) offsets[e + 1] = offsets[e] + hostCounts[e];
  rt.ctx.copyHtoD(cursor, offsets.subarray(0, E), E * 4); // pageable source: copied before the call returns
  rt.launch('moe', 'moe_scatter', [Math.ceil(TK / 256)], [256], 0, [rowOfSlot, tokenOfRow, cursor, idx.ptr, i32(TK), i32(K)]);
  const xp = rt.scratch('moe.xp', TK * D * 2);
  const h = rt.scratch('moe.h', TK * I2 * 2);
  const act = rt.scratch('moe.act', TK * I * 2);
  const y = rt.scratch('moe.y', TK * D * 2);
  rt.launch('elementwise', 'gather_rows_bf16', [TK], [256], 0, [xp, x.ptr, tokenOfRow, i32(D)]);
  for (let e = 0; e < E; e++) {
    const n = hostCounts[e];
    if (n === 0) continue;
    const r0 = BigInt(offsets[e]);
    rt.blas.linear(h + r0 * BigInt(I2 * 2), CUDA_R_16BF, I2, xp + r0 * BigInt(D * 2), CUDA_R_16BF, D, w13.ptr + BigInt(e * I2 * D * 2), CUDA_R_16BF, D, n, I2, D);
  }
  rt.launch('moe', 'swiglu_bf16', [gridFor(TK * I)], [256], 0, [act, h, i32(TK), i32(I)]);
  for (let e = 0; e < E; e++) {
    const n = hostCounts[e];
    if (n === 0) continue;
    const r0 = BigInt(offsets[e]);
    rt.blas.linear(y + r0 * BigInt(D * 2), CUDA_R_16BF, D, act + r0 * BigInt(I * 2), CUDA_R_16BF, I, w2.ptr + BigInt(e * D * I * 2), CUDA_R_16BF, I, n, D, I);
  }
  rt.launch('moe', combineKernel(out), [T], [256], 0, [out.ptr, y, rowOfSlot, idx.ptr, w.ptr, i32(K), i32(D)]);
}

/** bf16 output: the reference's bf16 accumulation; fp32 output (the engine's branch buffers): fp32 accumulation. */
function combineKernel(out: CudaTensor): string {
  return out.dtype === 'f32' ? 'moe_combine_f32' : 'moe_combine_bf16';
}

/**
 * Lightning attention on the GPU (kernels/lightning.cu), matching CpuBackend.lightningAttention (MODEL.md §8).
 *
 * Decode (one-token segments): one launch over (segment, head) that decays and updates the fp32 state and reads it.
 * Prefill (multi-token segments): three passes over blocks of `blockSize` rows —
 *   1. lightning_block_kv_bf16   per (block, head): KV_b = bf16(Σ_j bf16(k_j·e^(−s(m−1−j)))ᵀ v_j)      (parallel)
 *   2. lightning_scan_f32        per (segment, head, state elements): S entering each block; final S → the state
 *   3. lightning_block_out_bf16  per (block, head, row tile): O = (bf16(QKᵀ) ⊙ decay)·V + e^(−s(i+1))·(Q·S_b)
 * Passes 1 and 3 have tensor-core kernels for Dh = 64 and 128 (`_d64`, `_d128`; they need a 16-byte aligned qkv
 * and a 4-byte aligned out) and scalar kernels for any Dh ≤ 256. Setting LMOE_LIGHTNING_GENERIC=1 forces the
 * scalar kernels (a cross-check of the tensor-core paths on the device).
 * Long inputs are cut into pieces so the per-block workspace stays under 1 GiB (chunked prefill is exact).
 */

import type { LightningSegment } from '../../backend.js';
import type { CudaTensor } from '../cuda-backend.js';
import { UnsupportedError } from '../../../util/errors.js';
import { i32, type OpRuntime } from '../runtime.js';

/** Cap of the per-block state workspace of one prefill group (exported for the memory planner's check). */
export const MAX_WORKSPACE_BYTES = 1 << 30;
export const MAX_GROUP_BLOCKS = 1 << 16;
const MAX_DH = 256;
const THREADS = 256;

/** Shared-memory bytes and row tiles of the kernels; must agree with KvCfg / OutCfg in lightning.cu. */
const tcKvSmem = (Dh: number): number => 4 * 64 * (Dh + 8) * 2;
const TC_OUT_ROWS = 128;
function tcOutSmem(Dh: number): number {
  const pitch = Dh + 8;
  return TC_OUT_ROWS * pitch * 2 + Math.max(2 * Dh * pitch * 2, 4 * 64 * pitch * 2) + 2 * (TC_OUT_ROWS + 64) * 4;
}
const GENERIC_KV_CHUNK = 32;
const GENERIC_KEY_TILE = 32;
/** Query rows per CTA of the generic output kernel: every thread owns ≤ 8 (row, dim) outputs. */
const genericOutRows = (Dh: number): number => Math.max(1, Math.min(128, Math.floor(2048 / Dh)));
const genericOutSmem = (Dh: number, BM: number): number =>
  4 * (BM * Dh + GENERIC_KEY_TILE * (Dh + 1) + GENERIC_KEY_TILE * Dh + BM * GENERIC_KEY_TILE);

function checkDh(Dh: number): void {
  if (!Number.isInteger(Dh) || Dh < 1 || Dh > MAX_DH) throw new UnsupportedError(`lightning attention: head dim ${Dh} (the CUDA kernels support 1..${MAX_DH})`);
}

export function lightningDecode(rt: OpRuntime, o: CudaTensor, qkv: CudaTensor, slopes: CudaTensor, segs: readonly LightningSegment[], H: number, Dh: number): void {
  checkDh(Dh);
  const starts = rt.metaI32(segs.map((g) => g.start));
  const states = rt.metaPtrs(segs.map((g) => (g.state as CudaTensor).ptr));
  rt.launch('lightning', 'lightning_decode_bf16', [segs.length, H], [THREADS], 0, [o.ptr, qkv.ptr, slopes.ptr, starts, states, i32(H), i32(Dh)]);
}

export function lightningPrefill(rt: OpRuntime, o: CudaTensor, qkv: CudaTensor, slopes: CudaTensor, segs: readonly LightningSegment[], H: number, Dh: number, B: number): void {
  checkDh(Dh);
  if (!Number.isInteger(B) || B < 1) throw new UnsupportedError(`lightning attention: block size ${B}`);
  const tensorCores = (Dh === 64 || Dh === 128) && qkv.ptr % 16n === 0n && o.ptr % 4n === 0n && process.env.LMOE_LIGHTNING_GENERIC !== '1';
  // Workspace under 1 GiB; block tables (4 B per block, several per call) well inside the 8 MB metadata ring.
  const maxBlocks = Math.max(1, Math.min(MAX_GROUP_BLOCKS, Math.floor(MAX_WORKSPACE_BYTES / (H * Dh * Dh * 4))));
  let group: { start: number; length: number; state: CudaTensor }[] = [];
  let groupBlocks = 0;
  const flush = (): void => {
    if (group.length === 0) return;
    const blkStart: number[] = [], blkLen: number[] = [], segFirst: number[] = [], segCount: number[] = [];
    for (const g of group) {
      const first = blkStart.length;
      segFirst.push(first);
      for (let r = 0; r < g.length; r += B) {
        blkStart.push(g.start + r);
        blkLen.push(Math.min(B, g.length - r));
      }
      segCount.push(blkStart.length - first);
    }
    const nblk = blkStart.length;
    const maxLen = blkLen.reduce((a, x) => Math.max(a, x), 1); // ≤ B: row tiles past the longest block would exit at once
    const ws = rt.scratch('lightning.ws', nblk * H * Dh * Dh * 4);
    const bStart = rt.metaI32(blkStart), bLen = rt.metaI32(blkLen);
    const sFirst = rt.metaI32(segFirst), sCount = rt.metaI32(segCount);
    const states = rt.metaPtrs(group.map((g) => g.state.ptr));
    const kvArgs = [ws, qkv.ptr, slopes.ptr, bStart, bLen, i32(H), i32(Dh), i32(B)];
    if (tensorCores) rt.launch('lightning', `lightning_block_kv_bf16_d${Dh}`, [nblk, H], [THREADS], tcKvSmem(Dh), kvArgs);
    else rt.launch('lightning', 'lightning_block_kv_bf16', [nblk, H], [THREADS], 2 * GENERIC_KV_CHUNK * Dh * 4, kvArgs);
    rt.launch('lightning', 'lightning_scan_f32', [group.length, H, Math.ceil((Dh * Dh) / THREADS)], [THREADS], 0, [ws, slopes.ptr, sFirst, sCount, bLen, states, i32(H), i32(Dh)]);
    const outArgs = [o.ptr, qkv.ptr, ws, slopes.ptr, bStart, bLen, i32(H), i32(Dh), i32(B)];
    if (tensorCores) {
      rt.launch('lightning', `lightning_block_out_bf16_d${Dh}`, [nblk, H, Math.ceil(maxLen / TC_OUT_ROWS)], [THREADS], tcOutSmem(Dh), outArgs);
    } else {
      const BM = genericOutRows(Dh);
      rt.launch('lightning', 'lightning_block_out_bf16', [nblk, H, Math.ceil(maxLen / BM)], [THREADS], genericOutSmem(Dh, BM), [...outArgs, i32(BM)]);
    }
    group = [];
    groupBlocks = 0;
  };
  for (const seg of segs) {
    const state = seg.state as CudaTensor;
    let start = seg.start, remaining = seg.length;
    while (remaining > 0) {
      // A sequence appears at most once per group: its pieces depend on each other through the state.
      if (group.some((g) => g.state === state) || groupBlocks >= maxBlocks) flush();
      const n = Math.min(remaining, (maxBlocks - groupBlocks) * B);
      group.push({ start, length: n, state });
      groupBlocks += Math.ceil(n / B);
      start += n;
      remaining -= n;
    }
  }
  flush();
}

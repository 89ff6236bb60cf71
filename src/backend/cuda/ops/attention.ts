/**
 * Softmax attention on the GPU (kernels/attention.cu), matching CpuBackend.attention (MODEL.md §9): causal GQA over
 * each segment's KV cache (rows [0, past + i] for query row i), scale 1/√Dh, fp32 softmax.
 *
 * The cache is paged (see AttentionSegment): the kernels get, per segment, the K / V pool pointers and the block
 * table pointer (three u64 tables in the per-step metadata ring, so a replayed CUDA graph follows pools and tables
 * that were reallocated), and map cache row r to pool row table[r >> 6] · 64 + (r & 63). KV_BLOCK_SIZE must equal
 * the kernels' 64-row key tiles: every tile, decode stage and split starts on a block, so a tile is one lookup.
 *
 * Prefill segments: a flash-attention kernel over (query tile of 64 rows, head, segment) with tensor cores for
 * Dh = 64 / 128, no N×N matrix in memory; any other Dh ≤ 256 takes a scalar kernel (a warp per query row). On Hopper
 * (sm_90a) Dh = 128 takes kernels/attention_sm90.cu instead (wgmma, 128-row query tiles, a producer warpgroup), same
 * function and arguments (see PrefillKernel).
 * Decode segments (one query): a split-K kernel over (segment, kv head, split) writing partial (max, sum, output)
 * per split and query head, then a reduce kernel. The number of splits depends on the batch and kv heads only (see
 * decodeSplits), so a decode step's launches do not
 * depend on the context length (CUDA graphs); each split covers max(⌈n / splits⌉, 256) keys rounded up to a multiple
 * of 64 (a whole number of blocks), so short contexts leave the last splits empty (they only write m = −inf, l = 0,
 * and the reduce skips them).
 *
 * The tensor-core kernels read q, out and the pools with 16-byte accesses: they run when Dh is 64 or 128, every
 * pointer (q, out, the K / V pools) is 16-byte aligned (always so for allocator blocks) and, in decode, H/Hkv ≤ 16;
 * otherwise the generic kernels run. The choice depends only on shapes and on pointer alignment, never on lengths
 * or block tables.
 */

import { KV_BLOCK_SIZE, type AttentionSegment } from '../../backend.js';
import type { CudaTensor } from '../cuda-backend.js';
import { ShapeError, UnsupportedError } from '../../../util/errors.js';
import { f32, i32, type OpRuntime } from '../runtime.js';

export const ATTN_DECODE_SPLITS = 32;
const MAX_DECODE_SPLITS = 512;

/**
 * Splits per (segment, kv head): at least ATTN_DECODE_SPLITS, and enough CTAs for ~4 per SM when there are few
 * segments × kv heads (a TP8-share model has 1 kv head: 32 CTAs would read a 4M-token cache on 32 SMs). It depends
 * on the batch and the heads only, never on the context, so a decode step's launch shapes stay graph-stable.
 */
export function decodeSplits(nseg: number, Hkv: number, sms: number): number {
  const want = Math.ceil((4 * sms) / (nseg * Hkv));
  let s = ATTN_DECODE_SPLITS;
  while (s < want && s < MAX_DECODE_SPLITS) s *= 2;
  return s;
}

/** Query rows per CTA of the tensor-core prefill kernel, and per CTA (one per warp) of the generic kernels. */
const PREFILL_TILE = 64;
const GENERIC_ROWS = 4;
const MAX_GENERIC_DH = 256;
/** Largest GQA group the tensor-core decode kernel takes (the 16 rows of its MMA A operand). */
const MAX_TC_GROUP = 16;

/** Dynamic shared memory of the tensor-core kernels (see the kernel file header). */
function prefillShared(Dh: number): number {
  return 5 * PREFILL_TILE * (Dh + 8) * 2; // Q + 2 stages × (K + V), rows padded by 8 bf16
}
function decodeShared(Dh: number): number {
  return 16 * (Dh + 8) * 2 + 3 * 2 * 64 * (Dh + 8) * 2; // Q (16 rows) + 3 stages × (K + V) of 64 rows
}

/** The kernels hard-code 64-row blocks (attention.cu and elementwise.cu KV_BLOCK). */
const KERNEL_KV_BLOCK = 64;
if (KV_BLOCK_SIZE !== KERNEL_KV_BLOCK) throw new UnsupportedError(`the CUDA attention kernels need KV_BLOCK_SIZE = ${KERNEL_KV_BLOCK}, got ${KV_BLOCK_SIZE}`);

/**
 * Checks each segment's paged cache as far as the host can (the block ids themselves live on the device): i32
 * block tables long enough for rows [0, past + length), pools of whole blocks with the layout [rows, Hkv, Dh].
 */
export function checkPagedSegments(segs: readonly AttentionSegment[], Hkv: number, Dh: number, what: string): void {
  for (const g of segs) {
    const bt = g.blockTable;
    const blocks = Math.ceil((g.past + g.length) / KV_BLOCK_SIZE);
    if (bt.dtype !== 'i32' || bt.shape.length !== 1) throw new ShapeError(`${what}: the block table must be i32 [blocks], got ${bt.dtype} [${bt.shape}]`);
    if (bt.shape[0] < blocks) throw new ShapeError(`${what}: a block table of ${bt.shape[0]} blocks cannot map ${g.past + g.length} cache rows`);
    for (const [p, name] of [[g.k, 'k'], [g.v, 'v']] as const) {
      const [rows, h, d] = p.shape;
      if (p.shape.length !== 3 || h !== Hkv || d !== Dh || rows % KV_BLOCK_SIZE !== 0 || p.dtype !== 'bf16') {
        throw new ShapeError(`${what}: the ${name} pool must be bf16 [blocks · ${KV_BLOCK_SIZE}, ${Hkv}, ${Dh}], got ${p.dtype} [${p.shape}]`);
      }
    }
  }
}

/** Per-segment metadata tables (ring copies: graph replays refill them with the current pointers). */
export function segmentTables(rt: OpRuntime, segs: readonly AttentionSegment[]) {
  return {
    starts: rt.metaI32(segs.map((g) => g.start)),
    lens: rt.metaI32(segs.map((g) => g.length)),
    pasts: rt.metaI32(segs.map((g) => g.past)),
    kc: rt.metaPtrs(segs.map((g) => (g.k as CudaTensor).ptr)),
    vc: rt.metaPtrs(segs.map((g) => (g.v as CudaTensor).ptr)),
    bt: rt.metaPtrs(segs.map((g) => (g.blockTable as CudaTensor).ptr)),
  };
}

function checkHeads(H: number, Hkv: number, Dh: number): void {
  if (Hkv <= 0 || H % Hkv !== 0) throw new ShapeError(`attention: ${H} query heads are not a multiple of ${Hkv} kv heads`);
  if (Dh > MAX_GENERIC_DH) throw new UnsupportedError(`attention: head size ${Dh} > ${MAX_GENERIC_DH} is not supported on CUDA`);
}

/** True when the tensor-core kernels may run: Dh 64 / 128 and every pointer 16-byte aligned. */
function tensorCorePath(Dh: number, o: CudaTensor, q: CudaTensor, segs: readonly AttentionSegment[]): boolean {
  if (Dh !== 64 && Dh !== 128) return false;
  const aligned = (p: bigint) => (p & 15n) === 0n;
  return aligned(o.ptr) && aligned(q.ptr) && segs.every((g) => aligned((g.k as CudaTensor).ptr) && aligned((g.v as CudaTensor).ptr));
}

/**
 * Which prefill kernel runs where several could: 'auto' takes the Hopper kernel (kernels/attention_sm90.cu, wgmma)
 * on sm_90a for Dh = 128 unless $LMOE_ATTN_SM90 is '0'; any other value of it names a variant of that kernel
 * (attention_prefill_sm90_d128_<value>, for measurements). 'sm90' / 'sm90-<variant>' force one (sm_90a only),
 * 'mma' the mma.sync kernel of attention.cu. Any of them falls back to the generic kernel where the tensor-core path
 * does not apply.
 */
export type PrefillKernel = 'auto' | 'mma' | 'sm90' | `sm90-${string}`;

/** Query rows per CTA and dynamic shared memory of the sm_90a kernel (see its file header). */
const SM90_TILE = 128;
const SM90_SHARED = 128 * 128 * 2 * 7 + 1024; // Q + 3 stages × (K + V), 128 × 128 bf16 each, + 1024-byte alignment slack

function pickPrefill(rt: OpRuntime, Dh: number, kernel: PrefillKernel): string {
  const sm90 = rt.ctx.info.arch === 'sm_90a' && Dh === 128;
  if (kernel === 'auto') {
    const env = process.env.LMOE_ATTN_SM90;
    if (!sm90 || env === '0') return 'mma';
    return env === undefined || env === '' || env === '1' ? 'sm90' : `sm90-${env}`;
  }
  if (kernel !== 'mma' && !sm90) throw new UnsupportedError(`attention: the ${kernel} prefill kernel needs sm_90a and Dh = 128 (got ${rt.ctx.info.arch}, Dh ${Dh})`);
  return kernel;
}

export function attentionPrefill(
  rt: OpRuntime, o: CudaTensor, q: CudaTensor, segs: readonly AttentionSegment[], H: number, Hkv: number, Dh: number, scale: number,
  kernel: PrefillKernel = 'auto',
): void {
  checkHeads(H, Hkv, Dh);
  checkPagedSegments(segs, Hkv, Dh, 'attention');
  const t = segmentTables(rt, segs);
  const maxLen = Math.max(0, ...segs.map((g) => g.length));
  if (maxLen === 0) return;
  const args = [o.ptr, q.ptr, t.starts, t.lens, t.pasts, t.kc, t.vc, t.bt, i32(H), i32(Hkv), i32(Dh), f32(scale)];
  const which = tensorCorePath(Dh, o, q, segs) ? pickPrefill(rt, Dh, kernel) : undefined;
  if (which !== undefined && which !== 'mma') {
    const name = which === 'sm90' ? 'attention_prefill_sm90_d128' : `attention_prefill_sm90_d128_${which.slice(5)}`;
    rt.launch('attention_sm90', name, [Math.ceil(maxLen / SM90_TILE), H, segs.length], [384], SM90_SHARED, args);
  } else if (which === 'mma') {
    rt.launch('attention', `attention_prefill_bf16_d${Dh}`, [Math.ceil(maxLen / PREFILL_TILE), H, segs.length], [128], prefillShared(Dh), args);
  } else {
    rt.launch('attention', 'attention_prefill_bf16_generic', [Math.ceil(maxLen / GENERIC_ROWS), H, segs.length], [128], 0, args);
  }
}

export function attentionDecode(rt: OpRuntime, o: CudaTensor, q: CudaTensor, segs: readonly AttentionSegment[], H: number, Hkv: number, Dh: number, scale: number): void {
  checkHeads(H, Hkv, Dh);
  checkPagedSegments(segs, Hkv, Dh, 'attention');
  const t = segmentTables(rt, segs);
  const splits = decodeSplits(segs.length, Hkv, rt.ctx.info.multiprocessors);
  const partO = rt.scratch('attn.partO', segs.length * H * splits * Dh * 4);
  const partML = rt.scratch('attn.partML', segs.length * H * splits * 2 * 4);
  const args = [partO, partML, q.ptr, t.starts, t.pasts, t.kc, t.vc, t.bt, i32(H), i32(Hkv), i32(Dh), f32(scale), i32(splits)];
  if (H / Hkv <= MAX_TC_GROUP && tensorCorePath(Dh, o, q, segs)) {
    rt.launch('attention', `attention_decode_partial_bf16_d${Dh}`, [segs.length, Hkv, splits], [128], decodeShared(Dh), args);
  } else {
    rt.launch('attention', 'attention_decode_partial_bf16_generic', [segs.length, Hkv, splits], [128], 0, args);
  }
  rt.launch('attention', 'attention_decode_reduce_bf16', [segs.length, H], [128], 0, [o.ptr, partO, partML, t.starts, i32(H), i32(Dh), i32(splits)]);
}

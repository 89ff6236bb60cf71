/**
 * Lightning and softmax attention, forward and backward, for training on the GPU (kernels/train_sequence.cu):
 * fp32 tensors, packed documents (offsets: i32 [docs + 1] on the device). The derivations are in the kernel file's
 * header. Every kernel runs 256 threads; Dh must be a multiple of 4 and at most 128.
 *
 * Lightning: one kernel, train_lightning_scan, computes O_t = Σ_(j≤t) λ^(t−j) (Q_t·K_j) V_j per document and head
 * for any roles of (Q, K, V), forwards or backwards in time; grid (docs, H, ⌈Dh/32⌉ value-column slices), a CTA
 * walks its document in 32-row chunks with its Dh × 32 slice of the state in shared memory. The forward is one
 * launch; the backward three (dq forwards; dk and dv backwards, i.e. the reverse state recursion), each writing its
 * third of dQkv. Parallelism is docs × H × ⌈Dh/32⌉ CTAs, each sequential over its document: few long documents
 * with few heads leave most of the GPU idle (fine for the small training model).
 *
 * Attention: train_attn_fwd per (document, 64-query tile, head), online softmax, K/V tiles of 32 keys in shared
 * memory; backward: train_attn_delta (D = rowsum(dO ⊙ O), scratch 'train.attn.delta' [T·H]), train_attn_bwd_dkdv
 * per (document, 32-key tile, kv head) looping over the group's query heads and the later queries, and
 * train_attn_bwd_dq per (document, 64-query tile, head). No atomics: results are deterministic. Query-tile grids
 * have ⌈maxLength/64⌉ rows of CTAs per document; those past a document's end exit at once.
 */

import { ShapeError, UnsupportedError } from '../../util/errors.js';
import type { DevicePtr } from '../../backend/cuda/driver.js';
import { f32, i32, i64, type OpRuntime } from '../../backend/cuda/runtime.js';

/** Shapes shared by the four entry points. T tokens in `docs` documents, the longest `maxLength`. */
export interface SequenceShape {
  readonly T: number;
  readonly docs: number;
  readonly maxLength: number;
  readonly H: number;
  readonly Hkv: number;
  readonly Dh: number;
}

const FILE = 'train_sequence';
const THREADS = 256;
const MAX_DH = 128;
/** Tile sizes; must agree with train_sequence.cu (LC, LW, AQ, AK, BK, BQ, DQ_Q, DQ_K). */
const LC = 32, LW = 32;
const AQ = 64, AK = 32;
const BK = 32, BQ = 32;
const DQ_Q = 64, DQ_K = 32;
const F = 4; // bytes per float

const lightningSmem = (Dh: number): number => F * (Dh * LW + LC * Dh + LC * (Dh + 4) + LC * LW + LC * LC + LC + 1);
const fwdSmem = (Dh: number): number => F * (AQ * Dh + AK * (Dh + 4) + AK * Dh + AQ * AK);
const dkdvSmem = (Dh: number): number => F * (2 * BK * Dh + 2 * BQ * (Dh + 4) + 2 * BQ + 2 * BK * BQ);
const dqSmem = (Dh: number): number => F * (2 * DQ_Q * Dh + 2 * DQ_K * (Dh + 4) + DQ_Q * DQ_K);

function checkShape(s: SequenceShape, what: string, attention: boolean): boolean {
  for (const k of ['T', 'docs', 'maxLength', 'H', 'Hkv', 'Dh'] as const) {
    if (!Number.isSafeInteger(s[k]) || s[k] < 0) throw new ShapeError(`${what}: ${k} = ${s[k]} is not a non-negative integer`);
  }
  if (s.Dh < 4 || s.Dh > MAX_DH || s.Dh % 4 !== 0) throw new UnsupportedError(`${what}: head dim ${s.Dh} (the CUDA training kernels need a multiple of 4 in 4..${MAX_DH})`);
  if (s.H < 1) throw new ShapeError(`${what}: H = ${s.H}`);
  if (attention && (s.Hkv < 1 || s.H % s.Hkv !== 0)) throw new ShapeError(`${what}: H = ${s.H} is not a multiple of Hkv = ${s.Hkv}`);
  if (s.maxLength > s.T) throw new ShapeError(`${what}: maxLength ${s.maxLength} > T ${s.T}`);
  if (s.H > 65535 || Math.ceil(s.maxLength / 32) > 65535) throw new UnsupportedError(`${what}: H = ${s.H} or maxLength = ${s.maxLength} exceeds the grid limits`);
  return s.T > 0 && s.docs > 0 && s.maxLength > 0;
}

/** Pointer to float element `n` of `p`. */
const at = (p: DevicePtr, n: number): DevicePtr => p + BigInt(n * F);

/** One role of train_lightning_scan: base pointer (head 0, row 0, column 0), row stride, head stride (floats). */
interface Role {
  readonly p: DevicePtr;
  readonly row: number;
  readonly head: number;
}

function scan(rt: OpRuntime, s: SequenceShape, o: Role, q: Role, k: Role, v: Role, slopes: DevicePtr, offsets: DevicePtr, reverse: boolean): void {
  rt.launch(FILE, 'train_lightning_scan', [s.docs, s.H, Math.ceil(s.Dh / LW)], [THREADS], lightningSmem(s.Dh), [
    o.p, q.p, k.p, v.p, slopes, offsets, i32(s.Dh),
    i64(o.row), i64(o.head), i64(q.row), i64(q.head), i64(k.row), i64(k.head), i64(v.row), i64(v.head), i32(reverse ? 1 : 0),
  ]);
}

function checkBlockSize(blockSize: number): void {
  // The kernels use their own chunk length (32); the result depends on it only through fp32 rounding.
  if (!Number.isSafeInteger(blockSize) || blockSize < 1) throw new ShapeError(`lightning: block size ${blockSize}`);
}

/** The q / k / v roles of qkv[T, H·3·Dh] (per head q | k | v) and a [T, H·Dh] tensor. */
function roles(s: SequenceShape, qkv: DevicePtr): { q: Role; k: Role; v: Role } {
  const row = 3 * s.H * s.Dh, head = 3 * s.Dh;
  return { q: { p: qkv, row, head }, k: { p: at(qkv, s.Dh), row, head }, v: { p: at(qkv, 2 * s.Dh), row, head } };
}
const flat = (s: SequenceShape, p: DevicePtr): Role => ({ p, row: s.H * s.Dh, head: s.Dh });

/** out[T, H·Dh] from qkv[T, H·3·Dh] (per head q | k | v); slopes f32 [H]. */
export function lightningForwardCuda(rt: OpRuntime, s: SequenceShape, out: DevicePtr, qkv: DevicePtr, slopes: DevicePtr, offsets: DevicePtr, blockSize: number): void {
  checkBlockSize(blockSize);
  if (!checkShape(s, 'lightningForward', false)) return;
  const { q, k, v } = roles(s, qkv);
  scan(rt, s, flat(s, out), q, k, v, slopes, offsets, false);
}

/** dQkv[T, H·3·Dh] (overwritten) from dOut[T, H·Dh]. */
export function lightningBackwardCuda(rt: OpRuntime, s: SequenceShape, dQkv: DevicePtr, dOut: DevicePtr, qkv: DevicePtr, slopes: DevicePtr, offsets: DevicePtr, blockSize: number): void {
  checkBlockSize(blockSize);
  if (!checkShape(s, 'lightningBackward', false)) return;
  const { q, k, v } = roles(s, qkv);
  const d = roles(s, dQkv);
  const dO = flat(s, dOut);
  scan(rt, s, d.q, dO, v, k, slopes, offsets, false); // dq_t = Σ_(j≤t) λ^(t−j) (dO_t·v_j) k_j
  scan(rt, s, d.k, v, dO, q, slopes, offsets, true); //  dk_t = Σ_(i≥t) λ^(i−t) (v_t·dO_i) q_i
  scan(rt, s, d.v, k, q, dO, slopes, offsets, true); //  dv_t = Σ_(i≥t) λ^(i−t) (k_t·q_i) dO_i
}

/** out[T, H, Dh], lse f32 [T, H] from q[T, H, Dh], k/v[T, Hkv, Dh]; causal within each document. */
export function attentionForwardCuda(rt: OpRuntime, s: SequenceShape, out: DevicePtr, lse: DevicePtr, q: DevicePtr, k: DevicePtr, v: DevicePtr, offsets: DevicePtr, scale: number): void {
  if (!checkShape(s, 'attentionForward', true)) return;
  rt.launch(FILE, 'train_attn_fwd', [s.docs, Math.ceil(s.maxLength / AQ), s.H], [THREADS], fwdSmem(s.Dh), [
    out, lse, q, k, v, offsets, i32(s.H), i32(s.Hkv), i32(s.Dh), f32(scale),
  ]);
}

/** dq[T, H, Dh], dk/dv[T, Hkv, Dh] (overwritten). */
export function attentionBackwardCuda(rt: OpRuntime, s: SequenceShape, dq: DevicePtr, dk: DevicePtr, dv: DevicePtr, dOut: DevicePtr, q: DevicePtr, k: DevicePtr, v: DevicePtr, out: DevicePtr, lse: DevicePtr, offsets: DevicePtr, scale: number): void {
  if (!checkShape(s, 'attentionBackward', true)) return;
  const rows = s.T * s.H;
  const delta = rt.scratch('train.attn.delta', rows * F);
  rt.launch(FILE, 'train_attn_delta', [Math.ceil(rows / (THREADS / 32))], [THREADS], 0, [delta, dOut, out, i32(rows), i32(s.Dh)]);
  const common = [offsets, i32(s.H), i32(s.Hkv), i32(s.Dh), f32(scale)];
  rt.launch(FILE, 'train_attn_bwd_dkdv', [s.docs, Math.ceil(s.maxLength / BK), s.Hkv], [THREADS], dkdvSmem(s.Dh), [
    dk, dv, dOut, q, k, v, lse, delta, ...common,
  ]);
  rt.launch(FILE, 'train_attn_bwd_dq', [s.docs, Math.ceil(s.maxLength / DQ_Q), s.H], [THREADS], dqSmem(s.Dh), [
    dq, dOut, q, k, v, lse, delta, ...common,
  ]);
}

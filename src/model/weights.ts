/**
 * The model's weights on a backend, and loading them from a checkpoint: the slot plan of weights/names.ts is
 * filled by streaming each source tensor in bounded chunks straight into its slot (no shard is read whole).
 * Linear weights stay [out, in]; experts are packed per layer as w13 [E, 2I, D] and w2 [E, D, I].
 */

import type { Backend, DType, Tensor } from '../backend/backend.js';
import type { ModelConfig } from '../config/config.js';
import type { Checkpoint } from '../weights/checkpoint.js';
import { planWeights, type WeightSlot } from '../weights/names.js';
import type { SlotSelection } from '../parallel/shard.js';
import { DTYPE_BYTES } from '../weights/safetensors.js';
import { assert } from '../util/errors.js';

export interface LightningAttentionWeights {
  readonly kind: 'lightning';
  /** [3·H·Dh, D], per head q | k | v rows. */
  readonly qkv: Tensor;
  /** Output gate [H·Dh, D]. */
  readonly gate: Tensor;
  /** Output RMSNorm weight [H·Dh]. */
  readonly norm: Tensor;
  /** [D, H·Dh]. */
  readonly out: Tensor;
  /** fp32 [H] decay rates of this layer (derived, MODEL.md §8.3). */
  readonly slopes: Tensor;
}

export interface SoftmaxAttentionWeights {
  readonly kind: 'softmax';
  readonly q: Tensor; // [H·Dh, D]
  readonly k: Tensor; // [Hkv·Dh, D]
  readonly v: Tensor; // [Hkv·Dh, D]
  readonly o: Tensor; // [D, H·Dh]
}

export interface LayerWeights {
  readonly inputNorm: Tensor; // [D]
  readonly postNorm: Tensor; // [D]
  readonly attn: LightningAttentionWeights | SoftmaxAttentionWeights;
  /** fp32 [E, D]. */
  readonly router: Tensor;
  readonly w13: Tensor; // [E, 2I, D]
  readonly w2: Tensor; // [E, D, I]
}

export interface ModelWeights {
  readonly embed: Tensor; // [V, D]
  readonly finalNorm: Tensor; // [D]
  /** [V, D]; the embedding itself when tied. */
  readonly lmHead: Tensor;
  readonly layers: readonly LayerWeights[];
}

/** Progress of a weight upload, in checkpoint bytes. */
export interface WeightLoadProgress {
  readonly tensor: string;
  readonly loadedBytes: number;
  readonly totalBytes: number;
}

export interface LoadWeightsOptions {
  /** Storage dtype for everything but routers and slopes (the CPU backend keeps f32 regardless). */
  readonly dtype?: DType;
  readonly onProgress?: (p: WeightLoadProgress) => void;
  readonly signal?: AbortSignal;
  /** Computes the fp32 slopes of a lightning layer (of this rank's heads when sharded). */
  readonly slopes: (layer: number) => Float32Array;
  /**
   * For a rank of a sharded model (src/parallel/shard.ts): the part of each slot this rank holds; undefined = the
   * whole slot. Only the selected bytes are read from the checkpoint.
   */
  readonly shard?: (key: string) => SlotSelection | undefined;
}

/** The shape of the part `sel` of a slot of shape `shape`. */
export function selectedShape(shape: readonly number[], sel: SlotSelection | undefined): number[] {
  const out = [...shape];
  if (sel?.rows) out[0] = sel.rows.end - sel.rows.start;
  if (sel?.cols) out[out.length - 1] = sel.cols.end - sel.cols.start;
  return out;
}

const numel = (shape: readonly number[]): number => shape.reduce((a, b) => a * b, 1);
/** Column slices read whole rows in blocks of about this many bytes and copy the wanted columns out. */
const COLUMN_BLOCK_BYTES = 16 * 1024 * 1024;

export async function loadWeights(backend: Backend, config: ModelConfig, ckpt: Checkpoint, opts: LoadWeightsOptions): Promise<ModelWeights> {
  const plan = planWeights(config, ckpt.tensors, ckpt.dir);
  let totalBytes = 0;
  for (const slot of plan) {
    const sel = opts.shard?.(slot.key);
    const bytesPer = DTYPE_BYTES[ckpt.tensors.get(slot.sources[0].tensor)!.dtype];
    if (sel) totalBytes += numel(selectedShape(slot.shape, sel)) * bytesPer;
    else for (const s of slot.sources) totalBytes += ckpt.tensors.get(s.tensor)!.byteLength;
  }
  let loadedBytes = 0;
  const slots = new Map<string, Tensor>();
  for (const slot of plan) {
    const dtype = slot.keepFp32 ? 'f32' : (opts.dtype ?? 'f32');
    const sel = opts.shard?.(slot.key);
    if (sel) {
      const t = backend.alloc(selectedShape(slot.shape, sel), dtype);
      await loadSelection(backend, ckpt, t, slot, sel, (tensor, bytes) => {
        opts.signal?.throwIfAborted();
        loadedBytes += bytes;
        opts.onProgress?.({ tensor, loadedBytes, totalBytes });
      });
      slots.set(slot.key, t);
      continue;
    }
    const t = backend.alloc(slot.shape, dtype);
    for (const src of slot.sources) {
      const entry = ckpt.tensors.get(src.tensor)!;
      const bytesPer = DTYPE_BYTES[entry.dtype];
      let offset = src.offset;
      for await (const chunk of ckpt.chunks(src.tensor)) {
        opts.signal?.throwIfAborted();
        backend.writeBytes(t, offset, chunk, entry.dtype);
        offset += chunk.byteLength / bytesPer;
        loadedBytes += chunk.byteLength;
        opts.onProgress?.({ tensor: src.tensor, loadedBytes, totalBytes });
      }
    }
    slots.set(slot.key, t);
  }
  const get = (key: string): Tensor => {
    const t = slots.get(key);
    assert(t, `weight slot ${key} was not planned`);
    return t;
  };
  const layers: LayerWeights[] = config.layerTypes.map((kind, l) => {
    const k = (name: string) => get(`layers.${l}.${name}`);
    const attn: LayerWeights['attn'] =
      kind === 'lightning'
        ? { kind, qkv: k('qkv'), gate: k('gate'), norm: k('norm'), out: k('out'), slopes: uploadSlopes(backend, opts.slopes(l)) }
        : { kind, q: k('q'), k: k('k'), v: k('v'), o: k('o') };
    return { inputNorm: k('inputNorm'), postNorm: k('postNorm'), attn, router: k('router'), w13: k('w13'), w2: k('w2') };
  });
  const embed = get('embed');
  return { embed, finalNorm: get('finalNorm'), lmHead: config.tieWordEmbeddings ? embed : get('lmHead'), layers };
}

function uploadSlopes(backend: Backend, s: Float32Array): Tensor {
  return backend.upload([s.length], 'f32', s);
}

/**
 * Fills `t` with the part `sel` of `slot`, reading only those bytes: a row range is one contiguous element range of
 * the slot, read from each source it overlaps; a column range (2-D single-source slots: the row-parallel out/o
 * projections) reads blocks of whole rows and copies the wanted columns out of each.
 */
async function loadSelection(
  backend: Backend, ckpt: Checkpoint, t: Tensor, slot: WeightSlot, sel: SlotSelection, progress: (tensor: string, bytes: number) => void,
): Promise<void> {
  const rowSize = numel(slot.shape.slice(1));
  const rows = sel.rows ?? { start: 0, end: slot.shape[0] };
  if (!sel.cols) {
    const lo = rows.start * rowSize, hi = rows.end * rowSize;
    for (const src of slot.sources) {
      const entry = ckpt.tensors.get(src.tensor)!;
      const bytesPer = DTYPE_BYTES[entry.dtype];
      const a = Math.max(lo, src.offset), b = Math.min(hi, src.offset + numel(src.shape));
      if (a >= b) continue;
      let offset = a - lo;
      for await (const chunk of ckpt.chunksInRange(src.tensor, (a - src.offset) * bytesPer, (b - a) * bytesPer)) {
        backend.writeBytes(t, offset, chunk, entry.dtype);
        offset += chunk.byteLength / bytesPer;
        progress(src.tensor, chunk.byteLength);
      }
    }
    return;
  }
  const src = slot.sources[0];
  assert(slot.shape.length === 2 && slot.sources.length === 1 && src.offset === 0, `slot ${slot.key}: column slices need a 2-D slot with one source`);
  const entry = ckpt.tensors.get(src.tensor)!;
  const bytesPer = DTYPE_BYTES[entry.dtype];
  const C = slot.shape[1], { start: c0, end: c1 } = sel.cols;
  const rowBytes = C * bytesPer;
  const block = Math.max(1, Math.floor(COLUMN_BLOCK_BYTES / rowBytes));
  for (let r = rows.start; r < rows.end; r += block) {
    const n = Math.min(block, rows.end - r);
    // One chunk of exactly n whole rows.
    for await (const chunk of ckpt.chunksInRange(src.tensor, r * rowBytes, n * rowBytes, n * rowBytes)) {
      for (let i = 0; i < n; i++) {
        backend.writeBytes(t, (r - rows.start + i) * (c1 - c0), chunk.subarray(i * rowBytes + c0 * bytesPer, i * rowBytes + c1 * bytesPer), entry.dtype);
      }
      progress(src.tensor, (c1 - c0) * n * bytesPer);
    }
  }
}

/** Frees every weight tensor of `w` (the tied lm_head is the embedding, freed once). */
export function freeWeights(backend: Backend, w: ModelWeights): void {
  const seen = new Set<Tensor>();
  const free = (t: Tensor): void => {
    if (seen.has(t)) return;
    seen.add(t);
    backend.free(t);
  };
  free(w.embed);
  free(w.finalNorm);
  free(w.lmHead);
  for (const l of w.layers) {
    for (const t of [l.inputNorm, l.postNorm, l.router, l.w13, l.w2]) free(t);
    const a = l.attn;
    for (const t of a.kind === 'lightning' ? [a.qkv, a.gate, a.norm, a.out, a.slopes] : [a.q, a.k, a.v, a.o]) free(t);
  }
}

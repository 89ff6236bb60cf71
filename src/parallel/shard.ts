/**
 * The sharding plan of a tensor- and expert-parallel MiniMax-01 (Megatron-style, one all-reduce per block):
 *
 *  - Lightning layers (tp): heads split contiguously, rank r owning heads [h0, h1). qkv rows of those heads (per
 *    head q | k | v, so one contiguous row range), gate rows and norm weights of their H·Dh dims, slopes of those
 *    heads, out_proj columns of those dims (row-parallel: a partial sum, then allReduceSum). The output RMSNorm
 *    normalises over all H·Dh dims (MODEL.md §8), so the local sum of squares is all-reduced before normalising.
 *  - Softmax layers (tp): query heads split the same way. KV heads: with Hkv % tp = 0 split contiguously; with
 *    tp % Hkv = 0 (more ranks than KV heads) each rank holds the one KV head its query heads read (replicated
 *    across the tp/Hkv ranks of that group). o_proj is row-parallel like out_proj.
 *  - MoE (ep): experts split contiguously, rank r owning [e0, e1); the router is replicated, every rank routes all
 *    tokens identically, computes the weighted combine over its own experts only (tokens routed elsewhere add
 *    zero) and the partial outputs are all-reduced.
 *  - Embedding, norms, routers and lm_head are replicated (simplest; they are small next to attention and experts,
 *    except the embedding/head at full size, which a vocab-parallel split could take later).
 *
 * Ranks: one communicator of `size` ranks; tpSize and epSize are each 1 or `size` (tp-only, ep-only, or the same
 * ranks doing both), so every collective runs over the whole communicator and no sub-groups are needed.
 */

import type { ModelConfig } from '../config/config.js';
import { InvalidArgumentError } from '../util/errors.js';
import type { Communicator } from './communicator.js';

export interface ParallelContext {
  readonly comm: Communicator;
  readonly tpRank: number;
  readonly tpSize: number;
  readonly epRank: number;
  readonly epSize: number;
}

/** A contiguous range [start, end). */
export interface Range {
  readonly start: number;
  readonly end: number;
}

/**
 * Which part of a weight slot a rank holds: rows [rows.start, rows.end) of dim 0 (all of them when absent), and of
 * a 2-D slot the columns [cols.start, cols.end) of its last dim (all when absent).
 */
export interface SlotSelection {
  readonly rows?: Range;
  readonly cols?: Range;
}

/** Builds the context of `rank` in a group of `size` ranks doing tensor and/or expert parallelism. */
export function parallelContext(comm: Communicator, mode: { tp: boolean; ep: boolean }): ParallelContext {
  return { comm, tpRank: mode.tp ? comm.rank : 0, tpSize: mode.tp ? comm.size : 1, epRank: mode.ep ? comm.rank : 0, epSize: mode.ep ? comm.size : 1 };
}

/** Checks that the model divides over the context (see the file comment); throws an InvalidArgumentError if not. */
export function validateParallel(config: ModelConfig, p: ParallelContext): void {
  const { numHeads: H, numKvHeads: Hkv, numExperts: E } = config;
  const size = p.comm.size;
  const bad = (msg: string): never => {
    throw new InvalidArgumentError(msg, { param: 'parallel' });
  };
  for (const [what, s] of [['tp', p.tpSize], ['ep', p.epSize]] as const) {
    if (s !== 1 && s !== size) bad(`${what} size ${s} must be 1 or the communicator size ${size}`);
  }
  if (H % p.tpSize !== 0) bad(`${H} heads do not split over tp = ${p.tpSize}`);
  if (Hkv % p.tpSize !== 0 && p.tpSize % Hkv !== 0) bad(`${Hkv} KV heads: tp = ${p.tpSize} must divide them or be a multiple of them`);
  if (E % p.epSize !== 0) bad(`${E} experts do not split over ep = ${p.epSize}`);
}

/** Heads (lightning heads and softmax query heads) of this rank. */
export function headRange(config: ModelConfig, p: ParallelContext): Range {
  const n = config.numHeads / p.tpSize;
  return { start: p.tpRank * n, end: (p.tpRank + 1) * n };
}

/** KV heads of this rank: the ones its query heads read (contiguous; shared with other ranks when tp > Hkv). */
export function kvHeadRange(config: ModelConfig, p: ParallelContext): Range {
  const h = headRange(config, p);
  const group = config.numHeads / config.numKvHeads;
  return { start: Math.floor(h.start / group), end: Math.floor((h.end - 1) / group) + 1 };
}

export function expertRange(config: ModelConfig, p: ParallelContext): Range {
  const n = config.numExperts / p.epSize;
  return { start: p.epRank * n, end: (p.epRank + 1) * n };
}

/**
 * The rank's view of the config for its caches and attention ops: its own head and KV-head counts (lightning
 * states [H/tp, Dh, Dh], KV pools [.., Hkv_local, Dh]). Experts stay global (routing is over all of them).
 */
export function localConfig(config: ModelConfig, p: ParallelContext): ModelConfig {
  const h = headRange(config, p), kv = kvHeadRange(config, p);
  return { ...config, numHeads: h.end - h.start, numKvHeads: kv.end - kv.start };
}

/** The selection of weight slot `key` (see names.ts) for this rank; undefined = the whole slot (replicated). */
export function slotSelection(config: ModelConfig, p: ParallelContext, key: string): SlotSelection | undefined {
  const m = /^layers\.\d+\.(\w+)$/.exec(key);
  if (!m) return undefined; // embed, finalNorm, lmHead
  const Dh = config.headDim;
  const h = headRange(config, p), kv = kvHeadRange(config, p), e = expertRange(config, p);
  const dims = { start: h.start * Dh, end: h.end * Dh };
  const tp = p.tpSize > 1, ep = p.epSize > 1;
  switch (m[1]) {
    case 'qkv': return tp ? { rows: { start: 3 * dims.start, end: 3 * dims.end } } : undefined;
    case 'gate': case 'norm': case 'q': return tp ? { rows: dims } : undefined;
    case 'k': case 'v': return tp ? { rows: { start: kv.start * Dh, end: kv.end * Dh } } : undefined;
    case 'out': case 'o': return tp ? { cols: dims } : undefined;
    case 'w13': case 'w2': return ep ? { rows: e } : undefined;
    default: return undefined; // inputNorm, postNorm, router
  }
}

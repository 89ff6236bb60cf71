/**
 * Parameter counts, checkpoint bytes and cache sizes derived from a ModelConfig (MODEL.md §13–§14).
 * For the released configuration: 456,089,655,296 parameters; 912,210,767,872 bytes in bf16 with fp32 routers.
 */

import type { ModelConfig } from './config.js';

export interface ParameterCounts {
  /** All lightning layers: qkv, output gate, out-proj, output norm. */
  readonly lightning: number;
  /** All softmax layers: q, k, v, o. */
  readonly softmax: number;
  /** All experts of all layers (w1, w3, w2). */
  readonly experts: number;
  /** All routers (E × D per layer); stored in fp32 in the released checkpoint. */
  readonly routers: number;
  /** Embedding plus lm_head (once when tied). */
  readonly embeddings: number;
  /** Two norms per layer plus the final norm. */
  readonly norms: number;
  readonly total: number;
  /** Parameters touched per token: everything but the unused experts and the embedding table (a gather). */
  readonly activePerToken: number;
}

export function countParameters(c: ModelConfig): ParameterCounts {
  const D = c.hiddenSize;
  const Hd = c.numHeads * c.headDim;
  const KVd = c.numKvHeads * c.headDim;
  const nLin = c.layerTypes.filter((t) => t === 'lightning').length;
  const nSoft = c.numLayers - nLin;
  const lightning = nLin * (5 * D * Hd + Hd);
  const softmax = nSoft * (2 * D * Hd + 2 * D * KVd);
  const perExpert = 3 * D * c.intermediateSize;
  const experts = c.numLayers * c.numExperts * perExpert;
  const routers = c.numLayers * c.numExperts * D;
  const table = c.vocabSize * D;
  const embeddings = c.tieWordEmbeddings ? table : 2 * table;
  const norms = 2 * c.numLayers * D + D;
  const total = lightning + softmax + experts + routers + embeddings + norms;
  const activePerToken = lightning + softmax + c.numLayers * c.numExpertsPerTok * perExpert + routers + table + norms;
  return { lightning, softmax, experts, routers, embeddings, norms, total, activePerToken };
}

/** Weight dtypes the memory estimate is given for. Routers stay fp32 in every case (as released). */
export const WEIGHT_DTYPES = { f32: 4, bf16: 2, f16: 2, int8: 1 } as const;
export type WeightDType = keyof typeof WEIGHT_DTYPES;

/** Bytes of all weights with every tensor in `dtype` except the routers, which are fp32. */
export function weightBytes(c: ModelConfig, dtype: WeightDType): number {
  const p = countParameters(c);
  return (p.total - p.routers) * WEIGHT_DTYPES[dtype] + p.routers * 4;
}

export interface CacheSizes {
  /** fp32 lightning state per sequence: N_lin × H × Dh × Dh × 4 bytes, independent of length. */
  readonly lightningStateBytesPerSeq: number;
  /** bf16 K and V of every softmax layer, per token of context. */
  readonly kvBytesPerToken: number;
}

export function cacheSizes(c: ModelConfig, kvBytesPerElement = 2): CacheSizes {
  const nLin = c.layerTypes.filter((t) => t === 'lightning').length;
  const nSoft = c.numLayers - nLin;
  return {
    lightningStateBytesPerSeq: nLin * c.numHeads * c.headDim * c.headDim * 4,
    kvBytesPerToken: nSoft * 2 * c.numKvHeads * c.headDim * kvBytesPerElement,
  };
}

/**
 * Device memory for a context length, worked out from the typed config before anything is allocated: the weights
 * (by group), the softmax KV cache, the lightning states, the activations of one forward pass of a prefill chunk,
 * and a fixed reserve; and the largest prefill chunk that fits. Used by `lmoe inspect --context` and, on a backend
 * that reports its memory, before a prefill starts, so that a context that cannot fit is refused with one line
 * (CapacityError) instead of failing midway through an hours-long prefill.
 *
 * Every figure mirrors an allocation the engine makes:
 *  - weights: the slots of weights/names.ts as model/weights.ts allocates them (everything in `weightDType`,
 *    routers fp32), plus each lightning layer's fp32 slopes [H];
 *  - KV cache: model/cache.ts pools, per softmax layer K and V of [blocks · KV_BLOCK_SIZE, Hkv, Dh] in the
 *    activation dtype (bf16 on CUDA, f32 on the CPU); a sequence holds ⌈tokens / KV_BLOCK_SIZE⌉ blocks;
 *  - lightning states: fp32 [H, Dh, Dh] per lightning layer per sequence;
 *  - activations: the named workspace buffers of model/minimax01.ts for T tokens, and the op scratch of the CUDA
 *    backend (backend/cuda/ops/*.ts: lightning prefill workspace, MoE expert buffers, attention decode partials);
 *  - reserve: DEVICE_RESERVE_BYTES for what the engine does not allocate itself.
 *
 * Arithmetic is on integers below 2^53 (checked), so every count is exact for contexts of 2^23 tokens and far
 * beyond; nothing goes through 32-bit operators.
 *
 * @example
 *   const plan = planMemory({ config, contextTokens: 4 * 2 ** 20, deviceBytes: 139.7 * 2 ** 30 });
 *   if (plan.fits === false) refuse(plan); // CapacityError: "a 4,194,304-token context needs …"
 */

import { KV_BLOCK_SIZE } from '../backend/backend.js';
import type { ModelConfig } from '../config/config.js';
import { CapacityError, InternalError, InvalidArgumentError } from '../util/errors.js';
import { formatBytes, formatCount } from '../util/units.js';

/** Largest prefill chunk the planner picks by itself (tokens per forward pass): big enough to keep GEMMs efficient. */
export const MAX_PREFILL_CHUNK = 8192;
/** Smallest prefill chunk the planner picks by itself; below this, per-pass overheads dominate a long prefill. */
export const MIN_PREFILL_CHUNK = 256;

/**
 * Device memory set aside for what the plan does not itemise: the CUDA context and loaded kernel modules
 * (≈ 0.5 GiB on an H200), the cuBLAS handle and the backend's 32 MiB cuBLAS workspace and 8 MiB metadata ring,
 * and the caching allocator rounding every allocation above 1 MiB up to a 2 MiB granule (≈ 1 MiB per large weight
 * tensor on average: ≈ 0.5 GiB over the ≈ 560 of MiniMax-Text-01). On a running backend the context is already
 * outside the memory it reports, so there this is a margin.
 */
export const DEVICE_RESERVE_BYTES = 1.5 * 2 ** 30;

// Mirrors of the CUDA backend's scratch sizing (test/engine/memory-plan.test.ts checks they agree). The engine
// must not import a concrete backend, so the values are repeated here.
/** ops/lightning.ts: prefill blocks are grouped so that the per-block state workspace stays under 1 GiB … */
const LIGHTNING_WORKSPACE_CAP_BYTES = 2 ** 30;
/** … and at most this many blocks. */
const LIGHTNING_MAX_GROUP_BLOCKS = 2 ** 16;
/** ops/moe.ts MOE_SMALL_MAX_SLOTS: up to this many (token, expert) slots take the grouped-GEMV decode path. */
const MOE_SMALL_MAX_SLOTS = 1024;
/** ops/attention.ts ATTN_DECODE_SPLITS: key splits of the decode kernel, each with fp32 partials. */
const ATTN_DECODE_SPLITS = 32;

/** @internal The mirrored CUDA constants, for the test that compares them with the backend's. */
export const CUDA_SCRATCH_CONSTANTS = { LIGHTNING_WORKSPACE_CAP_BYTES, LIGHTNING_MAX_GROUP_BLOCKS, MOE_SMALL_MAX_SLOTS, ATTN_DECODE_SPLITS } as const;

export type PlanDType = 'bf16' | 'f32';

export interface MemoryPlanOptions {
  readonly config: ModelConfig;
  /** Tokens of context per sequence (prompt plus generated tokens), ≥ 1. */
  readonly contextTokens: number;
  /** Sequences held at once, each with `contextTokens` of KV cache and its own lightning state. Default 1. */
  readonly sequences?: number;
  /**
   * Tokens per prefill forward pass. Default: the largest power of two in [MIN_PREFILL_CHUNK, MAX_PREFILL_CHUNK]
   * whose plan fits `deviceBytes` (MAX_PREFILL_CHUNK when no device size is given).
   */
  readonly prefillChunk?: number;
  /** Bytes of device memory available; without it the plan has no verdict (`fits` undefined). */
  readonly deviceBytes?: number;
  /** Weight storage (routers and slopes are fp32 regardless). Default 'bf16', as the CUDA backend stores them. */
  readonly weightDType?: PlanDType;
  /** Activation and KV-cache dtype. Default 'bf16' (CUDA); the CPU backend uses 'f32'. */
  readonly activationDType?: PlanDType;
  /**
   * Caches a running engine holds besides the planned sequences', which stay allocated meanwhile: KV blocks (other
   * sequences', free blocks of the pool, old pools held while the pool grows) and allocated lightning state slots.
   * Added to the KV and state lines. Default none.
   */
  readonly resident?: { readonly kvBlocks?: number; readonly stateSlots?: number };
}

/** Weight bytes by group, as the loader allocates them. */
export interface WeightBytes {
  /** Embedding table [V, D] plus the untied lm_head [V, D]. */
  readonly embeddings: number;
  /** Lightning qkv, gate, out, output norm and fp32 slopes; softmax q, k, v, o. */
  readonly attention: number;
  /** Expert w13 [E, 2I, D] and w2 [E, D, I] of every layer. */
  readonly experts: number;
  /** fp32 routers [E, D] of every layer. */
  readonly routers: number;
  /** Input and post-attention norms of every layer, and the final norm. */
  readonly norms: number;
  readonly total: number;
}

/** Activation bytes of one forward pass of `tokens` tokens (the prefill chunk), with the decode batch's extras. */
export interface ActivationBytes {
  /** T: tokens per forward pass, min(prefill chunk, context × sequences), and at least one per sequence. */
  readonly tokens: number;
  /** Rows that get logits: one per sequence (a decode step of every sequence, or each prefill's last row). */
  readonly logitRows: number;
  /** fp32 residual stream x and the branch outputs a and m: 3 · T · D · 4. */
  readonly residual: number;
  /** Normalised input h, its fp32 copy for the router (bf16 activations only), and the final-norm rows. */
  readonly norms: number;
  /** Attention projections: lightning qkv, output gate and output; softmax q, k and v (the output is shared). */
  readonly attention: number;
  /** Router logits [T, E] fp32 and the top-K indices and weights. */
  readonly router: number;
  /** fp32 logits [rows, V] and the sampled ids. */
  readonly logits: number;
  /** CUDA lightning prefill workspace: one fp32 [H, Dh, Dh] per 256-token block of a group, capped at 1 GiB. */
  readonly lightningWorkspace: number;
  /** CUDA MoE expert scratch: gathered rows, w13 output, SwiGLU output and expert outputs (bf16), slot tables. */
  readonly moe: number;
  /** CUDA split-K decode partials of softmax attention, per sequence. */
  readonly attentionDecode: number;
  /** The model's own workspace: residual + norms + attention + router + logits. */
  readonly workspace: number;
  /** The backend's op scratch: lightningWorkspace + moe + attentionDecode. */
  readonly scratch: number;
  readonly total: number;
}

export interface MemoryPlan {
  readonly contextTokens: number;
  readonly sequences: number;
  /** Tokens per prefill forward pass. */
  readonly prefillChunk: number;
  /** 'given' by the caller, 'fit' (largest power of two that fits the device), or 'default' (no device size). */
  readonly prefillChunkSource: 'given' | 'fit' | 'default';
  readonly weightDType: PlanDType;
  readonly activationDType: PlanDType;
  readonly weights: WeightBytes;
  readonly kvCache: {
    /** KV blocks of KV_BLOCK_SIZE tokens: ⌈context / 64⌉ per sequence, plus resident ones. */
    readonly blocks: number;
    /** Bytes per block over all softmax layers (K and V). */
    readonly bytesPerBlock: number;
    readonly bytes: number;
  };
  readonly lightningStates: {
    /** State slots: the planned sequences plus resident ones. */
    readonly slots: number;
    /** fp32 [H, Dh, Dh] per lightning layer. */
    readonly bytesPerSlot: number;
    readonly bytes: number;
  };
  readonly activations: ActivationBytes;
  readonly reserveBytes: number;
  readonly totalBytes: number;
  readonly deviceBytes: number | undefined;
  /** Whether totalBytes ≤ deviceBytes; undefined without deviceBytes. */
  readonly fits: boolean | undefined;
  /** When it does not fit: one line naming the numbers. */
  readonly reason: string | undefined;
}

const BYTES: Readonly<Record<PlanDType, number>> = { bf16: 2, f32: 4 };

/** Works out the memory plan; see the file header. Throws InvalidArgumentError for invalid options. */
export function planMemory(options: MemoryPlanOptions): MemoryPlan {
  const { config } = options;
  const contextTokens = positiveInt(options.contextTokens, 'contextTokens');
  const sequences = positiveInt(options.sequences ?? 1, 'sequences');
  const weightDType = dtypeOption(options.weightDType ?? 'bf16', 'weightDType');
  const activationDType = dtypeOption(options.activationDType ?? 'bf16', 'activationDType');
  const residentKv = nonNegativeInt(options.resident?.kvBlocks ?? 0, 'resident.kvBlocks');
  const residentSlots = nonNegativeInt(options.resident?.stateSlots ?? 0, 'resident.stateSlots');
  const deviceBytes = options.deviceBytes;
  if (deviceBytes !== undefined && !(Number.isFinite(deviceBytes) && deviceBytes >= 0)) {
    throw new InvalidArgumentError(`deviceBytes must be a number of bytes ≥ 0, got ${deviceBytes}`, { param: 'deviceBytes' });
  }

  const weights = weightBytesOf(config, weightDType);
  const kvBytesPerBlock = exact(softmaxLayers(config) * 2 * KV_BLOCK_SIZE * config.numKvHeads * config.headDim * BYTES[activationDType], 'KV bytes');
  const kvBlocks = exact(sequences * Math.ceil(contextTokens / KV_BLOCK_SIZE) + residentKv, 'KV blocks');
  const kvCache = { blocks: kvBlocks, bytesPerBlock: kvBytesPerBlock, bytes: exact(kvBlocks * kvBytesPerBlock, 'KV bytes') };
  const stateBytesPerSlot = lightningLayers(config) * config.numHeads * config.headDim * config.headDim * 4;
  const slots = sequences + residentSlots;
  const lightningStates = { slots, bytesPerSlot: stateBytesPerSlot, bytes: exact(slots * stateBytesPerSlot, 'state bytes') };
  const fixed = weights.total + kvCache.bytes + lightningStates.bytes + DEVICE_RESERVE_BYTES;

  const withChunk = (chunk: number) => {
    const activations = activationBytes(config, activationDType, Math.max(Math.min(chunk, contextTokens * sequences), sequences), sequences);
    return { activations, totalBytes: exact(fixed + activations.total, 'total bytes') };
  };

  let prefillChunk: number;
  let source: MemoryPlan['prefillChunkSource'];
  if (options.prefillChunk !== undefined) {
    prefillChunk = positiveInt(options.prefillChunk, 'prefillChunk');
    source = 'given';
  } else if (deviceBytes === undefined) {
    prefillChunk = MAX_PREFILL_CHUNK;
    source = 'default';
  } else {
    prefillChunk = MIN_PREFILL_CHUNK; // when nothing fits, the plan reports the smallest chunk's total
    for (let c = MAX_PREFILL_CHUNK; c >= MIN_PREFILL_CHUNK; c /= 2) {
      if (withChunk(c).totalBytes <= deviceBytes) {
        prefillChunk = c;
        break;
      }
    }
    source = 'fit';
  }
  const { activations, totalBytes } = withChunk(prefillChunk);
  const fits = deviceBytes === undefined ? undefined : totalBytes <= deviceBytes;
  const plan = {
    contextTokens, sequences, prefillChunk, prefillChunkSource: source, weightDType, activationDType,
    weights, kvCache, lightningStates, activations, reserveBytes: DEVICE_RESERVE_BYTES, totalBytes, deviceBytes, fits,
  };
  return { ...plan, reason: fits === false ? refusalLine(plan) : undefined };
}

/** Throws the CapacityError (code OUT_OF_MEMORY) that refuses a plan that does not fit, with its one-line reason. */
export function refuse(plan: MemoryPlan): never {
  if (plan.fits !== false || plan.reason === undefined) throw new InternalError('refuse() called with a plan that does not say it fails to fit');
  throw new CapacityError(plan.reason, { hint: 'use a shorter context, fewer sequences or a device with more memory' });
}

/** "a 4,194,304-token context needs 1.0 TiB (weights …, KV cache …, …) but only 139.7 GiB of device memory is available". */
function refusalLine(p: Omit<MemoryPlan, 'reason'>): string {
  const what = p.sequences === 1
    ? `a ${formatCount(p.contextTokens)}-token context needs`
    : `${formatCount(p.sequences)} sequences of ${formatCount(p.contextTokens)} tokens need`;
  const parts = [
    `weights ${formatBytes(p.weights.total)}`,
    `KV cache ${formatBytes(p.kvCache.bytes)}`,
    `lightning states ${formatBytes(p.lightningStates.bytes)}`,
    `activations ${formatBytes(p.activations.total)} for ${formatCount(p.prefillChunk)}-token prefill chunks`,
    `reserve ${formatBytes(p.reserveBytes)}`,
  ];
  return `${what} ${formatBytes(p.totalBytes)} (${parts.join(', ')}) but only ${formatBytes(p.deviceBytes ?? 0)} of device memory is available`;
}

/** Weight bytes of the slots model/weights.ts allocates (see weights/names.ts), plus the fp32 slopes. */
export function weightBytesOf(c: ModelConfig, dtype: PlanDType): WeightBytes {
  const b = BYTES[dtype];
  const D = c.hiddenSize, V = c.vocabSize, E = c.numExperts, I = c.intermediateSize, L = c.numLayers;
  const Hd = c.numHeads * c.headDim, KVd = c.numKvHeads * c.headDim;
  const embeddings = (c.tieWordEmbeddings ? 1 : 2) * V * D * b;
  const lightningLayer = (3 * Hd * D + Hd * D + D * Hd + Hd) * b + c.numHeads * 4;
  const softmaxLayer = (Hd * D + 2 * KVd * D + D * Hd) * b;
  const attention = lightningLayers(c) * lightningLayer + softmaxLayers(c) * softmaxLayer;
  const experts = L * E * (2 * I * D + D * I) * b;
  const routers = L * E * D * 4;
  const norms = (2 * L * D + D) * b;
  return { embeddings, attention, experts, routers, norms, total: exact(embeddings + attention + experts + routers + norms, 'weight bytes') };
}

/**
 * Activations of a forward pass of T tokens with R = `sequences` logit rows: the workspace buffers of
 * model/minimax01.ts (each sized for its largest use) and the CUDA backend's op scratch.
 */
function activationBytes(c: ModelConfig, dtype: PlanDType, T: number, sequences: number): ActivationBytes {
  const a = BYTES[dtype];
  const D = c.hiddenSize, V = c.vocabSize, E = c.numExperts, K = c.numExpertsPerTok, I = c.intermediateSize;
  const H = c.numHeads, Dh = c.headDim, Hd = H * Dh, KVd = c.numKvHeads * Dh;
  const R = sequences;
  const nLin = lightningLayers(c), nSoft = softmaxLayers(c);

  // model workspace (minimax01.ts): x, a, m fp32
  const residual = 3 * T * D * 4;
  // h in the activation dtype, h_router fp32 when h is not, the last rows' fp32 copy and their final norm
  const norms = T * D * a + (dtype === 'f32' ? 0 : T * D * 4) + R * D * 4 + R * D * a;
  // 'o' [T, H·Dh] is shared by both layer kinds; lightning adds qkv and g, softmax q, k, v
  const attention = T * Hd * a + (nLin > 0 ? T * 3 * Hd * a + T * Hd * a : 0) + (nSoft > 0 ? T * Hd * a + 2 * T * KVd * a : 0);
  const router = T * E * 4 + T * K * 4 + T * K * 4;
  const logits = R * V * 4 + R * 4;

  // CUDA op scratch (named buffers in rounded-up 4-byte words)
  const stateBytes = H * Dh * Dh * 4;
  const maxGroupBlocks = Math.max(1, Math.min(LIGHTNING_MAX_GROUP_BLOCKS, Math.floor(LIGHTNING_WORKSPACE_CAP_BYTES / stateBytes)));
  // A prefill pass over several sequences has at most one partial block per extra sequence.
  const prefillBlocks = Math.ceil(T / c.blockSize) + Math.min(sequences, T) - 1;
  const lightningWorkspace = nLin > 0 && T > 1 ? words(Math.min(prefillBlocks, maxGroupBlocks) * stateBytes) : 0;
  const moe = moeScratch(T * K, Math.min(T, sequences) * K, E, D, I);
  const attentionDecode = nSoft > 0 ? words(R * H * ATTN_DECODE_SPLITS * Dh * 4) + words(R * H * ATTN_DECODE_SPLITS * 2 * 4) : 0;

  const workspace = residual + norms + attention + router + logits;
  const scratch = lightningWorkspace + moe + attentionDecode;
  return {
    tokens: T, logitRows: R, residual, norms, attention, router, logits, lightningWorkspace, moe, attentionDecode,
    workspace, scratch, total: exact(workspace + scratch, 'activation bytes'),
  };
}

/**
 * ops/moe.ts scratch for a prefill pass of `slots` = T·K (token, expert) slots and a decode step of `decodeSlots`:
 * above MOE_SMALL_MAX_SLOTS the grouped-GEMM path (counts, cursor, slot tables, xp, h, act, y), at or below it the
 * grouped-GEMV path (order, act, y); `act` and `y` are shared by name, so they count once at their larger size.
 */
function moeScratch(slots: number, decodeSlots: number, E: number, D: number, I: number): number {
  let bytes = 0;
  const big = slots > MOE_SMALL_MAX_SLOTS ? slots : 0;
  if (big > 0) bytes += 2 * words(E * 4) + 2 * words(big * 4) + words(big * D * 2) + words(big * 2 * I * 2);
  const small = [slots, decodeSlots].filter((s) => s <= MOE_SMALL_MAX_SLOTS);
  if (small.length > 0) bytes += words((E + 1 + Math.max(...small)) * 4);
  const most = Math.max(slots, decodeSlots);
  return bytes + words(most * I * 2) + words(most * D * 2);
}

function lightningLayers(c: ModelConfig): number {
  return c.layerTypes.filter((t) => t === 'lightning').length;
}

function softmaxLayers(c: ModelConfig): number {
  return c.numLayers - lightningLayers(c);
}

/** CUDA scratch buffers are i32 tensors: bytes rounded up to whole 4-byte words. */
function words(bytes: number): number {
  return Math.ceil(bytes / 4) * 4;
}

function exact(n: number, what: string): number {
  if (!Number.isSafeInteger(n)) throw new InvalidArgumentError(`memory plan: ${what} (${n}) is beyond 2^53 and cannot be counted exactly`, { param: 'contextTokens' });
  return n;
}

function positiveInt(n: number, param: string): number {
  if (!(Number.isSafeInteger(n) && n >= 1)) throw new InvalidArgumentError(`${param} must be an integer ≥ 1, got ${n}`, { param });
  return n;
}

function nonNegativeInt(n: number, param: string): number {
  if (!(Number.isSafeInteger(n) && n >= 0)) throw new InvalidArgumentError(`${param} must be an integer ≥ 0, got ${n}`, { param });
  return n;
}

function dtypeOption(d: string, param: string): PlanDType {
  if (d !== 'bf16' && d !== 'f32') throw new InvalidArgumentError(`${param} must be "bf16" or "f32", got ${JSON.stringify(d)}`, { param });
  return d;
}

/**
 * The backend contract: tensors, memory and the ops the MiniMax-01 forward pass is written against.
 *
 * The model (src/model) is described once over this interface; `cpu` (the fp32 numerical reference) and, later,
 * `cuda` implement it. Conventions, as in llm.c: outputs come first and are preallocated by the caller; every op
 * states its shapes in the legend below; no op allocates its output. Ops that work on several sequences at once
 * take "segments" (a varlen batch: the rows of one sequence are contiguous in the token dimension), so prefill,
 * chunked prefill, decode and continuous batching are one code path.
 *
 * Shape legend: T tokens (all sequences of the batch), D hidden, H heads, Hkv kv heads, Dh head dim, E experts,
 * K experts per token, I expert width, V vocab, N/Kin generic out/in features.
 */

import type { StDType } from '../weights/safetensors.js';

/** Element types a backend tensor can hold. The CPU backend computes in f32; i32 holds ids, positions, indices. */
export type DType = 'f32' | 'bf16' | 'f16' | 'i32';

/** An opaque handle to backend memory. Only the backend that created it can read it. */
export interface Tensor {
  readonly shape: readonly number[];
  readonly dtype: DType;
}

/** The rows [start, start + length) of one sequence inside a varlen batch, with its lightning state. */
export interface LightningSegment {
  readonly start: number;
  readonly length: number;
  /** fp32 [H, Dh, Dh], indexed [key dim, value dim] so that o = q · S; updated in place to the state after the last row. */
  readonly state: Tensor;
}

/**
 * Rows per block of the paged KV cache. A multiple of the CUDA kernels' 64-row key tiles, so a tile never straddles
 * two blocks.
 */
export const KV_BLOCK_SIZE = 64;

/**
 * The rows [start, start + length) of one sequence, attending to its KV cache.
 *
 * The cache is paged: one layer's keys and values live in pools shared by every sequence, [blocks · KV_BLOCK_SIZE,
 * Hkv, Dh], and a sequence owns a list of blocks. Its cache row r (position r) is pool row
 * blockTable[⌊r / KV_BLOCK_SIZE⌋] · KV_BLOCK_SIZE + r mod KV_BLOCK_SIZE.
 */
export interface AttentionSegment {
  readonly start: number;
  readonly length: number;
  /** Tokens already in the cache before this segment; row i of the segment sits at position past + i. */
  readonly past: number;
  /** The layer's key (post-RoPE) and value pools, [blocks · KV_BLOCK_SIZE, Hkv, Dh]. */
  readonly k: Tensor;
  readonly v: Tensor;
  /** i32 [≥ ⌈(past + length) / KV_BLOCK_SIZE⌉]: the sequence's blocks in order; rows [0, past + length) are mapped. */
  readonly blockTable: Tensor;
}

/** Per-row parameters of device-side sampling. */
export interface SampleParams {
  /** 0 = greedy (argmax, ties to the lower id). */
  readonly temperature: number;
  /** Keep the k most likely tokens; 0 = off. */
  readonly topK: number;
  /** Nucleus threshold in (0, 1]; 1 = off. */
  readonly topP: number;
  /** RNG seed of the sequence. */
  readonly seed: number;
  /** Index of the token being sampled in its sequence: the RNG counter, so a seed replays exactly. */
  readonly step: number;
}

/**
 * What a postnorm residual may do next with the new stream: normalise it, rmsNorm(o, out, w, eps), into each of
 * `outs` (the next GEMM's input and the router's fp32 input). A backend may fuse this into the residual.
 */
export interface NormAfter {
  readonly w: Tensor;
  readonly eps: number;
  readonly outs: readonly Tensor[];
}

export interface Backend {
  readonly name: string;

  // ---- memory ----
  /** A new tensor; contents are unspecified. */
  alloc(shape: readonly number[], dtype: DType): Tensor;
  /** A new zero-filled tensor. */
  zeros(shape: readonly number[], dtype: DType): Tensor;
  /** A tensor sharing `t`'s storage, starting `offset` elements in (contiguous, row-major). */
  view(t: Tensor, shape: readonly number[], offset?: number): Tensor;
  /** A new tensor holding host data (f32 from Float32Array, i32 from Int32Array). */
  upload(shape: readonly number[], dtype: DType, data: Float32Array | Int32Array): Tensor;
  /**
   * Like upload, for per-step inputs (token ids, positions, row lists): the tensor is only valid until the next
   * beginStep(). Lets a backend place them where a captured CUDA graph finds them again.
   */
  scratchUpload(shape: readonly number[], dtype: DType, data: Float32Array | Int32Array): Tensor;
  /** Marks the start of a forward pass (a step); per-step memory of the previous step may be reused. */
  beginStep(): void;
  /**
   * Writes raw checkpoint bytes of dtype `src` into `t` starting at element `offset`, converting to `t`'s dtype.
   * Used to stream weights in bounded chunks (a shard is never read whole).
   */
  writeBytes(t: Tensor, offset: number, bytes: Uint8Array, src: StDType): void;
  /** Writes host integers into an i32 tensor at element `offset` (block tables), ordered with the enqueued work. */
  writeInt32(t: Tensor, offset: number, values: Int32Array): void;
  /** Sets every element of `t` to zero. */
  fillZero(t: Tensor): void;
  /** Copies `src` into `dst` (same element count). */
  copy(dst: Tensor, src: Tensor): void;
  /** The contents as f32 on the host (for i32 tensors: the integer values). */
  toFloat32(t: Tensor): Float32Array;
  /** Releases the memory behind `t` (no-op where the garbage collector owns it). Views must not outlive it. */
  free(t: Tensor): void;

  // ---- ops ----
  /** out[T, D] = table[ids[t], :];  ids: i32 [T] */
  embedding(out: Tensor, table: Tensor, ids: Tensor): void;
  /** out[T, N] = x[T, Kin] · w[N, Kin]ᵀ  (weights stored [out, in] as in the checkpoint) */
  linear(out: Tensor, x: Tensor, w: Tensor): void;
  /** out[T, C] = w ⊙ x · rsqrt(mean(x², last dim) + eps);  w: [C]. out may alias x; out and x may differ in dtype. */
  rmsNorm(out: Tensor, x: Tensor, w: Tensor, eps: number): void;
  /** out = residual · alpha + branch · beta. out may alias either input. */
  residualAdd(out: Tensor, residual: Tensor, alpha: number, branch: Tensor, beta: number): void;
  /**
   * The postnorm residual of MODEL.md §7 on the residual stream x[T, D]: out = rms(x, w, eps) · alpha + branch · beta,
   * with the normalised x recomputed here at the stream's precision (fp32), so the residual path never passes
   * through a rounded copy of it. out may alias x. With `then`, the new stream is normalised into then.outs
   * afterwards, exactly as separate rmsNorm calls would (the CUDA backend fuses this at decode, saving launches).
   */
  postnormResidual(out: Tensor, x: Tensor, w: Tensor, eps: number, alpha: number, branch: Tensor, beta: number, then?: NormAfter): void;
  /** x = silu(x), in place. */
  siluInPlace(x: Tensor): void;
  /** out = sigmoid(gate) ⊙ x (the lightning output gate). out may alias x. */
  sigmoidMul(out: Tensor, gate: Tensor, x: Tensor): void;
  /** out[R, C] = x[rows[r], :];  rows: i32 [R] */
  gatherRows(out: Tensor, x: Tensor, rows: Tensor): void;

  /**
   * Partial NeoX RoPE in place on x[T, nHeads, Dh]: dims [0, rotaryDim) rotate with pairs i ↔ i + rotaryDim/2,
   * angle = position · θ^(−2i/rotaryDim) in fp32 (MODEL.md §9); dims [rotaryDim, Dh) pass through.
   * positions: i32 [T].
   */
  rope(x: Tensor, positions: Tensor, rotaryDim: number, theta: number): void;

  /**
   * Lightning attention (MODEL.md §8.4–8.6). qkv[T, H·3·Dh] holds, per head, q | k | v (after SiLU);
   * out[T, H·Dh]. Per segment: exact recurrence S_t = e^(−s)·S_(t−1) + k_tᵀv_t, o_t = q_t·S_t, computed with the
   * block algorithm (block size `blockSize`) for multi-token segments and the per-token recurrence for one-token
   * segments; each segment's state is read and updated in place. slopes: f32 [H].
   */
  lightningAttention(out: Tensor, qkv: Tensor, slopes: Tensor, segments: readonly LightningSegment[], blockSize: number): void;

  /**
   * Writes k[T, Hkv, Dh] / v rows of each segment into its paged cache at cache rows [past, past + length).
   */
  kvAppend(k: Tensor, v: Tensor, segments: readonly AttentionSegment[]): void;

  /**
   * Causal softmax GQA attention over each segment's cache: out[T, H, Dh] from q[T, H, Dh]; query head h reads kv
   * head ⌊h / (H/Hkv)⌋; row i of a segment attends to cache rows [0, past + i] (through its block table). Scores scaled by `scale`, softmax
   * in fp32 (or wider).
   */
  attention(out: Tensor, q: Tensor, segments: readonly AttentionSegment[], scale: number): void;

  /**
   * MoE routing (MODEL.md §10): p = softmax(logits[T, E]) over all experts in fp32, top-K (descending, ties to the
   * lower expert id), weights renormalised over the K. Writes indices: i32 [T, K] and weights: f32 [T, K].
   */
  moeRoute(indices: Tensor, weights: Tensor, logits: Tensor): void;

  /**
   * SwiGLU experts and weighted combine: out[t] = Σ_k weights[t,k] · FFN_{indices[t,k]}(x[t]), with
   * FFN_e(x) = (silu(x·w1_eᵀ) ⊙ (x·w3_eᵀ)) · w2_eᵀ. w13: [E, 2I, D] (rows 0..I−1 = w1_e, I..2I−1 = w3_e);
   * w2: [E, D, I]. out: [T, D] (overwritten), x: [T, D].
   */
  moeExperts(out: Tensor, x: Tensor, indices: Tensor, weights: Tensor, w13: Tensor, w2: Tensor): void;

  // ---- optional capabilities ----
  /**
   * Tensor parallelism (src/parallel): ss: f32 [T] = Σ_c x[t, c]² over the C columns of x[T, C] this rank holds. With
   * the lightning heads split over ranks, the output RMSNorm's mean runs over all ranks' columns: the partial sums
   * are all-reduced between this and rmsNormSumSquares. Required only by a backend running a tensor-parallel model.
   */
  sumSquares?(ss: Tensor, x: Tensor): void;
  /**
   * out[T, C] = w ⊙ x · rsqrt(ss[t] / count + eps): rmsNorm with the (all-reduced) sum of squares ss: f32 [T] of rows
   * that have `count` columns in all. out may alias x.
   */
  rmsNormSumSquares?(out: Tensor, x: Tensor, w: Tensor, ss: Tensor, count: number, eps: number): void;
  /** Samples one token per row of fp32 logits[R, V] into out: i32 [R] on the device (see SampleParams). */
  sampleTokens?(out: Tensor, logits: Tensor, params: readonly SampleParams[]): void;
  /** The contents of an i32 tensor on the host. */
  toInt32?(t: Tensor): Int32Array;
  /**
   * Runs `body` — a forward pass that only enqueues work — as a replayable graph cached under `key` (CUDA graphs).
   * Calls with one key must enqueue the same ops with the same shapes. Absent on backends without graphs.
   */
  runGraph?(key: string, body: () => void): void;
  /**
   * Drops the graphs captured by runGraph. Call it before freeing a buffer that a captured step used (a workspace
   * buffer being grown): graphs keep raw pointers to what their kernels touched.
   */
  resetGraphs?(): void;
  /** Releases backend-wide resources (graphs, pools). */
  dispose?(): void;
  /**
   * Device memory in bytes: `total` of the device; `free` for new allocations (on CUDA the driver's free memory plus
   * the blocks the caching allocator keeps for reuse, which it gives back when an allocation needs them); `used` by
   * this backend's live allocations. `free + used` is what lightning-moe can have in all. Absent on backends without
   * a device memory limit (the CPU).
   */
  memoryInfo?(): DeviceMemoryInfo;
}

export interface DeviceMemoryInfo {
  readonly free: number;
  readonly total: number;
  readonly used: number;
}

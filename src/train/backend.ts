/**
 * The training contract: memory plus the forward and backward ops that src/train/model.ts is written against,
 * in the llm.c style — no tape: the model allocates its activation buffers, runs the forward ops saving what each
 * backward needs, and walks the layers back calling the matching backward ops.
 *
 * Two implementations:
 *  - `cpu` (src/train/cpu): float64 everywhere, the reference. Every backward is checked against central finite
 *    differences of its forward in float64 (test/train/*.test.ts).
 *  - `cuda` (src/train/cuda): fp32 activations, gradients and optimiser state; the linear layers (and the experts)
 *    compute in bf16 with fp32 accumulation from bf16 copies of the fp32 master weights. Checked against `cpu`.
 *
 * Conventions (as backend.ts): outputs come first and are preallocated; shapes in the legend; no op allocates its
 * output (ops may keep their own scratch). "(+=)" marks an output the op accumulates into (weight gradients, and
 * input gradients that several branches feed); every other output is overwritten.
 *
 * Batches are packed: documents of different lengths concatenated along T with no padding. `Docs` gives their
 * boundaries; lightning state starts at zero at each document start and softmax attention is causal within a
 * document only (varlen). Positions (RoPE) restart at 0 in each document.
 *
 * Shape legend: T tokens, D hidden, H heads, Hkv kv heads, Dh head dim, E experts, K experts per token, I expert
 * width, V vocab, N/Kin generic out/in features, P parameters of one tensor.
 */

/** Element types of training tensors: `float` is f64 on the CPU and f32 on CUDA; `i32` holds ids and indices. */
export type TrainDType = 'float' | 'i32';

/** An opaque handle to training memory. */
export interface TTensor {
  readonly shape: readonly number[];
  readonly dtype: TrainDType;
}

/** Document boundaries of a packed batch: documents [offsets[i], offsets[i+1]) for i < count. */
export interface Docs {
  /** i32 [count + 1] on the backend, offsets[0] = 0, offsets[count] = T. */
  readonly offsets: TTensor;
  /** The same offsets on the host. */
  readonly host: Int32Array;
  readonly count: number;
  /** The longest document, in tokens. */
  readonly maxLength: number;
}

/** What moeExpertsForward keeps for the backward: per routed slot s = t·K + k. */
export interface MoeSaved {
  /** [T·K, 2I]: x_t · w13_eᵀ before SwiGLU (first I = gate w1, next I = up w3). */
  readonly h13: TTensor;
  /** [T·K, D]: the expert's output y_s = FFN_e(x_t), before weighting. */
  readonly y: TTensor;
}

export interface TrainBackend {
  readonly name: string;

  // ---- memory ----
  alloc(shape: readonly number[], dtype: TrainDType): TTensor;
  /** A new zero-filled tensor. */
  zeros(shape: readonly number[], dtype: TrainDType): TTensor;
  /** A tensor sharing `t`'s storage, starting `offset` elements in (contiguous, row-major). */
  view(t: TTensor, shape: readonly number[], offset?: number): TTensor;
  /** A new tensor from host data (floats for 'float', integers for 'i32'). */
  upload(shape: readonly number[], dtype: TrainDType, data: Float64Array | Float32Array | Int32Array): TTensor;
  /** Overwrites `t` with host data (same element count). */
  write(t: TTensor, data: Float64Array | Float32Array | Int32Array): void;
  /** The contents on the host, as f64 (i32 tensors: their integer values). Waits for enqueued work. */
  read(t: TTensor): Float64Array;
  fillZero(t: TTensor): void;
  /** dst = src (same element count). */
  copy(dst: TTensor, src: TTensor): void;
  free(t: TTensor): void;
  /** Waits for all enqueued work (no-op on the CPU). */
  synchronize(): void;
  dispose?(): void;

  // ---- elementwise and reductions ----
  /** out = a·x + b·y (out may alias x or y). */
  axpby(out: TTensor, a: number, x: TTensor, b: number, y: TTensor): void;
  /** x = x · s, in place. */
  scale(x: TTensor, s: number): void;
  /** out[0] (+=) Σ x²: for the global gradient norm. out: float [1]. */
  sumSquares(out: TTensor, x: TTensor): void;

  // ---- embedding ----
  /** out[T, D] = table[ids[t], :];  ids: i32 [T]. */
  embeddingForward(out: TTensor, table: TTensor, ids: TTensor): void;
  /** dTable[V, D] (+=) Σ_t onehot(ids[t]) ⊗ dOut[t]. */
  embeddingBackward(dTable: TTensor, dOut: TTensor, ids: TTensor): void;

  // ---- linear: y[T, N] = x[T, Kin] · w[N, Kin]ᵀ ----
  // `exact` (the router): compute in the tensors' own precision; otherwise CUDA computes in bf16 from a bf16
  // copy of the fp32 master weight (refreshed after each adamw on it) with fp32 accumulation.
  linearForward(out: TTensor, x: TTensor, w: TTensor, exact?: boolean): void;
  /** dx[T, Kin] = dOut · w (accumulate: dx += dOut · w). */
  linearBackwardInput(dx: TTensor, dOut: TTensor, w: TTensor, accumulate: boolean, exact?: boolean): void;
  /** dw[N, Kin] (+=) dOutᵀ · x. */
  linearBackwardWeight(dw: TTensor, dOut: TTensor, x: TTensor, exact?: boolean): void;

  // ---- RMSNorm: out = w ⊙ x · rstd, rstd = 1/sqrt(mean(x²) + eps), over the last dim C ----
  /** out[R, C]; rstd: float [R] saved for the backward. out may alias x only when the backward does not need x. */
  rmsNormForward(out: TTensor, rstd: TTensor, x: TTensor, w: TTensor, eps: number): void;
  /** dx[R, C] (= or += with accumulate), dw[C] (+=). */
  rmsNormBackward(dx: TTensor, dw: TTensor, dOut: TTensor, x: TTensor, w: TTensor, rstd: TTensor, accumulate: boolean): void;

  // ---- activations ----
  /** out = silu(x). out may alias x only when the backward does not need x. */
  siluForward(out: TTensor, x: TTensor): void;
  /** dx = dOut · silu'(x). dx may alias dOut. */
  siluBackward(dx: TTensor, dOut: TTensor, x: TTensor): void;
  /** out = sigmoid(gate) ⊙ x. */
  sigmoidMulForward(out: TTensor, gate: TTensor, x: TTensor): void;
  /** dGate = dOut ⊙ x ⊙ σ'(gate), dx = dOut ⊙ σ(gate). */
  sigmoidMulBackward(dGate: TTensor, dx: TTensor, dOut: TTensor, gate: TTensor, x: TTensor): void;

  // ---- partial NeoX RoPE (MODEL.md §9) on x[T, nHeads, Dh], in place ----
  /** inverse = true rotates by −angle: the backward of the forward rotation (rotations are orthogonal). */
  rope(x: TTensor, positions: TTensor, rotaryDim: number, theta: number, inverse: boolean): void;

  // ---- lightning attention (MODEL.md §8.4–8.6), per document from a zero state ----
  /**
   * out[T, H·Dh] from qkv[T, H·3·Dh] (per head q | k | v, after SiLU): S_t = e^(−s_h)·S_(t−1) + k_tᵀv_t,
   * o_t = q_t·S_t. slopes: float [H]. blockSize: the block length of the chunked algorithm.
   */
  lightningForward(out: TTensor, qkv: TTensor, slopes: TTensor, docs: Docs, blockSize: number): void;
  /**
   * dQkv[T, H·3·Dh] (overwritten) from dOut[T, H·Dh]: chunked, with the reverse state recursion
   * dS_t = e^(−s)·dS_(t+1) + q_tᵀ·dO_t in fp32 (or f64); states are recomputed, not saved.
   */
  lightningBackward(dQkv: TTensor, dOut: TTensor, qkv: TTensor, slopes: TTensor, docs: Docs, blockSize: number): void;

  // ---- causal softmax GQA attention within each document ----
  /**
   * out[T, H, Dh] = softmax(q·kᵀ·scale, causal in the document) · v, query head h reading kv head ⌊h/(H/Hkv)⌋.
   * q[T, H, Dh], k/v[T, Hkv, Dh]; lse: float [T, H], the log-sum-exp of each row's scaled scores (saved).
   */
  attentionForward(out: TTensor, lse: TTensor, q: TTensor, k: TTensor, v: TTensor, docs: Docs, scale: number): void;
  /** dq[T, H, Dh], dk/dv[T, Hkv, Dh] (overwritten), flash-style: probabilities recomputed from lse. */
  attentionBackward(dq: TTensor, dk: TTensor, dv: TTensor, dOut: TTensor, q: TTensor, k: TTensor, v: TTensor, out: TTensor, lse: TTensor, docs: Docs, scale: number): void;

  // ---- mixture of experts (MODEL.md §10) ----
  /**
   * probs[T, E] = softmax(logits[T, E]); indices: i32 [T, K] the top-K (descending, ties to the lower id);
   * weights[T, K] = probs of the picks renormalised over the K.
   */
  moeRouteForward(indices: TTensor, weights: TTensor, probs: TTensor, logits: TTensor): void;
  /**
   * dLogits[T, E] (overwritten) from dWeights[T, K] through the renormalisation and the softmax (the top-K choice
   * is piecewise constant), plus the auxiliary losses' gradients:
   *  - load balancing (Switch / Mixtral): auxCoef · E · Σ_e f_e · P_e, f_e = (picks of e) / (T·K),
   *    P_e = mean_t probs[t, e]; f is treated as a constant;
   *  - router z-loss: zCoef · mean_t (logsumexp(logits[t]))².
   * losses: float [2] (+=) [aux loss, z-loss] as defined above (coefficients applied), for logging.
   */
  moeRouteBackward(dLogits: TTensor, losses: TTensor, dWeights: TTensor, logits: TTensor, probs: TTensor, indices: TTensor, weights: TTensor, auxCoef: number, zCoef: number): void;
  /**
   * out[T, D] = Σ_k weights[t,k] · FFN_e(x[t]), e = indices[t,k], FFN_e(x) = (silu(x·w1ᵀ) ⊙ x·w3ᵀ)·w2ᵀ;
   * w13: [E, 2I, D] (rows 0..I−1 = w1, I..2I−1 = w3), w2: [E, D, I]. Fills `saved`.
   */
  moeExpertsForward(out: TTensor, saved: MoeSaved, x: TTensor, indices: TTensor, weights: TTensor, w13: TTensor, w2: TTensor): void;
  /**
   * dx[T, D] (overwritten), dW13 / dW2 (+=), dWeights[T, K] (overwritten: dWeights[t,k] = ⟨dOut[t], y_s⟩).
   */
  moeExpertsBackward(dx: TTensor, dW13: TTensor, dW2: TTensor, dWeights: TTensor, dOut: TTensor, saved: MoeSaved, x: TTensor, indices: TTensor, weights: TTensor, w13: TTensor, w2: TTensor): void;

  // ---- loss ----
  /**
   * Cross-entropy of logits[T, V] against targets: i32 [T] (−1 = no target at this position). Writes
   * losses[T] (0 where no target) and dLogits[T, V] = (softmax − onehot) · gradScale (0 rows where no target).
   * dLogits may alias logits.
   */
  crossEntropy(losses: TTensor, dLogits: TTensor, logits: TTensor, targets: TTensor, gradScale: number): void;

  // ---- optimiser ----
  /**
   * One AdamW step on param[P] with grad[P] (decoupled decay, bias-corrected moments m, v updated in place):
   * m = β1·m + (1−β1)·g·gradScale; v = β2·v + (1−β2)·(g·gradScale)²; p −= lr·(m̂ / (sqrt(v̂) + eps) + wd·p),
   * with m̂ = m/(1−β1^step), v̂ = v/(1−β2^step). gradScale applies clipping and accumulation averaging.
   */
  adamw(param: TTensor, grad: TTensor, m: TTensor, v: TTensor, o: AdamWStep): void;
}

export interface AdamWStep {
  readonly lr: number;
  readonly beta1: number;
  readonly beta2: number;
  readonly eps: number;
  readonly weightDecay: number;
  /** 1-based step number (bias correction). */
  readonly step: number;
  readonly gradScale: number;
}

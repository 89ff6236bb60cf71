/**
 * An independent float64 reference of the MiniMax-01 forward pass, written from spec/MODEL.md only (§2 config
 * resolution, §5–§11 math, §12 weight names) and deliberately plain: no blocks, no caches, no bf16 emulation.
 * Lightning attention runs by the recurrence of §8.4; softmax attention is the textbook causal form with partial
 * NeoX RoPE (§9); the MoE is a dense loop over the selected experts (§10). Used by test/model/random-shapes.test.ts
 * to check the engine on checkpoints whose shapes are not in the fixtures.
 *
 * Weights are a Map from ORIGINAL tensor names (§12.1) to Float64Array holding exactly the values the checkpoint
 * stores (decode bf16/f16 before passing them in). Linear weights are [out, in]; y = x · Wᵀ.
 */

export type RefLayerKind = 'lightning' | 'softmax';

/** The resolved configuration (MODEL.md §2), independent of the engine's own config parser. */
export interface RefConfig {
  readonly vocabSize: number;
  readonly hiddenSize: number;
  readonly numLayers: number;
  readonly numHeads: number;
  readonly numKvHeads: number;
  readonly headDim: number;
  readonly rotaryDim: number;
  readonly ropeTheta: number;
  readonly intermediateSize: number;
  readonly numExperts: number;
  readonly topK: number;
  readonly rmsNormEps: number;
  readonly layerTypes: readonly RefLayerKind[];
  readonly linearAlpha: number;
  readonly linearBeta: number;
  readonly fullAlpha: number;
  readonly fullBeta: number;
  readonly mlpAlpha: number;
  readonly mlpBeta: number;
  readonly tieWordEmbeddings: boolean;
}

/** Lightning output-norm eps, a module constant (§2 rule 7). */
const LIGHTNING_NORM_EPS = 1e-6;

function need(raw: Record<string, any>, ...keys: string[]): any {
  for (const k of keys) if (raw[k] !== undefined && raw[k] !== null) return raw[k];
  throw new Error(`reference64: config has none of ${keys.join(', ')}`);
}

/** MODEL.md §2 resolution rules, applied to a raw config.json object of either layout. */
export function resolveRefConfig(raw: Record<string, any>): RefConfig {
  const numLayers: number = need(raw, 'num_hidden_layers');
  const hiddenSize: number = need(raw, 'hidden_size');
  const numHeads: number = need(raw, 'num_attention_heads');
  const native = raw.layer_types !== undefined;
  // rule 1: layer types
  const layerTypes: RefLayerKind[] = native
    ? (raw.layer_types as string[]).map((t) => {
        if (t === 'linear_attention') return 'lightning';
        if (t === 'full_attention') return 'softmax';
        throw new Error(`reference64: unknown layer type ${t}`);
      })
    : (raw.attn_type_list as number[]).map((t) => (t === 0 ? 'lightning' : t === 1 ? 'softmax' : (() => { throw new Error(`bad attn type ${t}`); })()));
  if (layerTypes.length !== numLayers) throw new Error('reference64: layer type list length ≠ num_hidden_layers');
  // rule 2: head_dim
  const headDim: number = raw.head_dim ?? hiddenSize / numHeads;
  // rule 3: rotary dims
  const rp = (raw.rope_parameters ?? {}) as Record<string, any>;
  let rotaryDim: number;
  if (raw.rotary_dim !== undefined && raw.rotary_dim !== null) rotaryDim = raw.rotary_dim;
  else if (raw.partial_rotary_factor !== undefined && raw.partial_rotary_factor !== null) rotaryDim = Math.round(raw.partial_rotary_factor * headDim);
  else if (rp.partial_rotary_factor !== undefined && rp.partial_rotary_factor !== null) rotaryDim = Math.round(rp.partial_rotary_factor * headDim);
  else rotaryDim = headDim;
  if (rotaryDim % 2 !== 0 || rotaryDim <= 0 || rotaryDim > headDim) throw new Error(`reference64: bad rotary dim ${rotaryDim}`);
  // rule 4: θ
  const ropeTheta: number = raw.rope_theta ?? need(rp, 'rope_theta');
  // rule 5: α/β of the layout in use
  const ab = native
    ? {
        linearAlpha: need(raw, 'linear_attn_alpha_factor'), linearBeta: need(raw, 'linear_attn_beta_factor'),
        fullAlpha: need(raw, 'full_attn_alpha_factor'), fullBeta: need(raw, 'full_attn_beta_factor'),
        mlpAlpha: need(raw, 'mlp_alpha_factor'), mlpBeta: need(raw, 'mlp_beta_factor'),
      }
    : {
        linearAlpha: need(raw, 'layernorm_linear_attention_alpha'), linearBeta: need(raw, 'layernorm_linear_attention_beta'),
        fullAlpha: need(raw, 'layernorm_full_attention_alpha'), fullBeta: need(raw, 'layernorm_full_attention_beta'),
        mlpAlpha: need(raw, 'layernorm_mlp_alpha'), mlpBeta: need(raw, 'layernorm_mlp_beta'),
      };
  if (raw.postnorm === false) throw new Error('reference64: postnorm = false is not modelled');
  return {
    vocabSize: need(raw, 'vocab_size'),
    hiddenSize,
    numLayers,
    numHeads,
    numKvHeads: raw.num_key_value_heads ?? numHeads,
    headDim,
    rotaryDim,
    ropeTheta,
    intermediateSize: need(raw, 'intermediate_size'),
    numExperts: need(raw, 'num_local_experts', 'num_experts'),
    topK: need(raw, 'num_experts_per_tok'),
    rmsNormEps: raw.rms_norm_eps ?? 1e-5,
    layerTypes,
    ...ab,
    tieWordEmbeddings: raw.tie_word_embeddings === true,
  };
}

// ---------------------------------------------------------------------------------------------------------------
// Slopes (§8.3)
// ---------------------------------------------------------------------------------------------------------------

/** ALiBi base slopes for a power-of-two n: start · ratio^h with start = ratio = 2^(−2^(−(log2 n − 3))). */
function basePow2(n: number): number[] {
  const start = Math.pow(2, -Math.pow(2, -(Math.log2(n) - 3)));
  return Array.from({ length: n }, (_, h) => start * Math.pow(start, h));
}

/** ALiBi base slopes for any H (the interleave rule for non-powers of two). */
export function alibiBase(n: number): number[] {
  if (Number.isInteger(Math.log2(n))) return basePow2(n);
  const c = Math.pow(2, Math.floor(Math.log2(n)));
  const extra = alibiBase(2 * c).filter((_, i) => i % 2 === 0).slice(0, n - c);
  return [...basePow2(c), ...extra];
}

/** s[h] for global layer l of L: fp32(fp32(base_h) · fp32(1 − l/(L−1) + 1e-5)); factor 1 + 1e-5 when L = 1. */
export function refSlopes(numHeads: number, layer: number, numLayers: number): number[] {
  const factor = numLayers === 1 ? 1 + 1e-5 : 1 - layer / (numLayers - 1) + 1e-5;
  return alibiBase(numHeads).map((b) => Math.fround(Math.fround(b) * Math.fround(factor)));
}

// ---------------------------------------------------------------------------------------------------------------
// Small dense helpers
// ---------------------------------------------------------------------------------------------------------------

/** y[T, out] = x[T, in] · W[out, in]ᵀ. */
function linear(x: Float64Array, T: number, inDim: number, w: Float64Array, outDim: number): Float64Array {
  if (w.length !== outDim * inDim) throw new Error(`reference64: weight has ${w.length} values, expected ${outDim}×${inDim}`);
  const y = new Float64Array(T * outDim);
  for (let t = 0; t < T; t++) {
    for (let o = 0; o < outDim; o++) {
      let acc = 0;
      for (let i = 0; i < inDim; i++) acc += x[t * inDim + i] * w[o * inDim + i];
      y[t * outDim + o] = acc;
    }
  }
  return y;
}

/** Row-wise RMSNorm: w ⊙ x / sqrt(mean(x²) + eps). */
function rmsNorm(x: Float64Array, T: number, dim: number, w: Float64Array, eps: number): Float64Array {
  const y = new Float64Array(T * dim);
  for (let t = 0; t < T; t++) {
    let ss = 0;
    for (let i = 0; i < dim; i++) ss += x[t * dim + i] ** 2;
    const r = 1 / Math.sqrt(ss / dim + eps);
    for (let i = 0; i < dim; i++) y[t * dim + i] = w[i] * x[t * dim + i] * r;
  }
  return y;
}

const silu = (z: number): number => z / (1 + Math.exp(-z));
const sigmoid = (z: number): number => 1 / (1 + Math.exp(-z));

// ---------------------------------------------------------------------------------------------------------------
// Blocks
// ---------------------------------------------------------------------------------------------------------------

/** §8: lightning attention by the recurrence. Returns the branch output [T, D] and the final state [H, d, d]. */
function lightning(c: RefConfig, W: (n: string) => Float64Array, p: string, layer: number, h1: Float64Array, T: number): { out: Float64Array; state: Float64Array } {
  const D = c.hiddenSize, H = c.numHeads, d = c.headDim, HD = H * d;
  const qkv = linear(h1, T, D, W(`${p}.self_attn.qkv_proj.weight`), 3 * HD);
  for (let i = 0; i < qkv.length; i++) qkv[i] = silu(qkv[i]);
  const slopes = refSlopes(H, layer, c.numLayers);
  const o = new Float64Array(T * HD);
  const state = new Float64Array(H * d * d);
  for (let h = 0; h < H; h++) {
    const decay = Math.exp(-slopes[h]);
    const S = state.subarray(h * d * d, (h + 1) * d * d); // [k_dim, v_dim]
    for (let t = 0; t < T; t++) {
      const base = t * 3 * HD + h * 3 * d; // interleaved per head: q | k | v
      for (let a = 0; a < d; a++) {
        const k = qkv[base + d + a];
        for (let b = 0; b < d; b++) S[a * d + b] = decay * S[a * d + b] + k * qkv[base + 2 * d + b];
      }
      for (let b = 0; b < d; b++) {
        let acc = 0;
        for (let a = 0; a < d; a++) acc += qkv[base + a] * S[a * d + b];
        o[t * HD + h * d + b] = acc;
      }
    }
  }
  const normed = rmsNorm(o, T, HD, W(`${p}.self_attn.norm.weight`), LIGHTNING_NORM_EPS);
  const gate = linear(h1, T, D, W(`${p}.self_attn.output_gate.weight`), HD);
  for (let i = 0; i < normed.length; i++) normed[i] *= sigmoid(gate[i]);
  return { out: linear(normed, T, HD, W(`${p}.self_attn.out_proj.weight`), D), state };
}

/** Partial NeoX RoPE on the first r dims of each head vector, in place. */
function rope(x: Float64Array, T: number, heads: number, d: number, r: number, theta: number): void {
  const half = r / 2;
  for (let t = 0; t < T; t++) {
    for (let h = 0; h < heads; h++) {
      const off = (t * heads + h) * d;
      for (let i = 0; i < half; i++) {
        const ang = t * Math.pow(theta, (-2 * i) / r);
        const cs = Math.cos(ang), sn = Math.sin(ang);
        const a = x[off + i], b = x[off + i + half];
        x[off + i] = a * cs - b * sn;
        x[off + i + half] = b * cs + a * sn;
      }
    }
  }
}

/**
 * §9: causal softmax GQA attention with partial RoPE; positions are 0..T−1. Outputs rows `from`..T−1 only (keys and
 * values still cover every position): the last layer of a `lastOnly` pass needs one query, which keeps a 64K-token
 * reference linear in T.
 */
function softmaxAttn(c: RefConfig, W: (n: string) => Float64Array, p: string, h1: Float64Array, T: number, from = 0): Float64Array {
  const D = c.hiddenSize, H = c.numHeads, KV = c.numKvHeads, d = c.headDim;
  const q = new Float64Array(T * H * d);
  q.set(linear(h1.subarray(from * D), T - from, D, W(`${p}.self_attn.q_proj.weight`), H * d), from * H * d);
  const k = linear(h1, T, D, W(`${p}.self_attn.k_proj.weight`), KV * d);
  const v = linear(h1, T, D, W(`${p}.self_attn.v_proj.weight`), KV * d);
  rope(q, T, H, d, c.rotaryDim, c.ropeTheta);
  rope(k, T, KV, d, c.rotaryDim, c.ropeTheta);
  const group = H / KV;
  const scale = 1 / Math.sqrt(d);
  const o = new Float64Array(T * H * d);
  const scores = new Float64Array(T);
  for (let h = 0; h < H; h++) {
    const g = Math.floor(h / group);
    for (let t = from; t < T; t++) {
      let max = -Infinity;
      for (let j = 0; j <= t; j++) {
        let acc = 0;
        for (let e = 0; e < d; e++) acc += q[(t * H + h) * d + e] * k[(j * KV + g) * d + e];
        scores[j] = acc * scale;
        if (scores[j] > max) max = scores[j];
      }
      let sum = 0;
      for (let j = 0; j <= t; j++) sum += (scores[j] = Math.exp(scores[j] - max));
      for (let j = 0; j <= t; j++) {
        const w = scores[j] / sum;
        for (let e = 0; e < d; e++) o[(t * H + h) * d + e] += w * v[(j * KV + g) * d + e];
      }
    }
  }
  return linear(o.subarray(from * H * d), T - from, H * d, W(`${p}.self_attn.o_proj.weight`), D);
}

/** §10: softmax over all experts, top-k (ties to the lower id), renormalise, SwiGLU experts, weighted sum. */
function moe(c: RefConfig, W: (n: string) => Float64Array, p: string, h2: Float64Array, T: number, stats: RefStats): Float64Array {
  const D = c.hiddenSize, E = c.numExperts, I = c.intermediateSize, K = c.topK;
  const logits = linear(h2, T, D, W(`${p}.block_sparse_moe.gate.weight`), E);
  const y = new Float64Array(T * D);
  for (let t = 0; t < T; t++) {
    const row = Array.from(logits.subarray(t * E, (t + 1) * E));
    const max = Math.max(...row);
    const ex = row.map((z) => Math.exp(z - max));
    const sum = ex.reduce((a, b) => a + b, 0);
    const prob = ex.map((z) => z / sum);
    const order = prob.map((_, e) => e).sort((a, b) => prob[b] - prob[a] || a - b);
    const chosen = order.slice(0, K);
    if (K < E) stats.minRouterGap = Math.min(stats.minRouterGap, row[order[K - 1]] - row[order[K]]);
    const wsum = chosen.reduce((a, e) => a + prob[e], 0);
    const x = h2.subarray(t * D, (t + 1) * D);
    for (const e of chosen) {
      const w = prob[e] / wsum;
      const g = linear(x, 1, D, W(`${p}.block_sparse_moe.experts.${e}.w1.weight`), I);
      const u = linear(x, 1, D, W(`${p}.block_sparse_moe.experts.${e}.w3.weight`), I);
      for (let i = 0; i < I; i++) g[i] = silu(g[i]) * u[i];
      const down = linear(g, 1, I, W(`${p}.block_sparse_moe.experts.${e}.w2.weight`), D);
      for (let i = 0; i < D; i++) y[t * D + i] += w * down[i];
    }
  }
  return y;
}

// ---------------------------------------------------------------------------------------------------------------
// Model
// ---------------------------------------------------------------------------------------------------------------

/** Diagnostics of a reference run. */
export interface RefStats {
  /** The smallest router-logit gap between the k-th and (k+1)-th expert over all tokens and layers (∞ if k = E). */
  minRouterGap: number;
}

export interface RefResult {
  /** Logits at every position (or only the last when `lastOnly`). */
  readonly logits: Float64Array[];
  /** The lightning state [H, d, d] after the last token, per lightning layer index. */
  readonly states: Map<number, Float64Array>;
  readonly stats: RefStats;
}

/** The full forward pass over `ids` from an empty cache (positions 0..T−1). */
export function referenceForward(c: RefConfig, weights: ReadonlyMap<string, Float64Array>, ids: readonly number[], options: { lastOnly?: boolean } = {}): RefResult {
  const W = (name: string): Float64Array => {
    const w = weights.get(name);
    if (!w) throw new Error(`reference64: missing weight ${name}`);
    return w;
  };
  const D = c.hiddenSize, T = ids.length, V = c.vocabSize;
  const stats: RefStats = { minRouterGap: Infinity };
  const states = new Map<number, Float64Array>();
  const embed = W('model.embed_tokens.weight');
  let x = new Float64Array(T * D);
  ids.forEach((id, t) => {
    if (!(Number.isInteger(id) && id >= 0 && id < V)) throw new Error(`reference64: token id ${id} out of range`);
    x.set(embed.subarray(id * D, (id + 1) * D), t * D);
  });
  // Rows [from, T) of the stream are live. With lastOnly, a final softmax layer needs only the last row after its
  // attention (a lightning layer's recurrence still runs over every row).
  let from = 0;
  for (let l = 0; l < c.numLayers; l++) {
    const p = `model.layers.${l}`;
    const kind = c.layerTypes[l];
    const h1 = rmsNorm(x, T, D, W(`${p}.input_layernorm.weight`), c.rmsNormEps);
    let a: Float64Array;
    if (kind === 'lightning') {
      const r = lightning(c, W, p, l, h1, T);
      a = r.out;
      states.set(l, r.state);
    } else {
      const last = options.lastOnly && l === c.numLayers - 1;
      from = last ? T - 1 : 0;
      a = softmaxAttn(c, W, p, h1, T, from);
    }
    const rows = T - from;
    const [alpha, beta] = kind === 'lightning' ? [c.linearAlpha, c.linearBeta] : [c.fullAlpha, c.fullBeta];
    const x1 = new Float64Array(rows * D);
    for (let i = 0; i < x1.length; i++) x1[i] = h1[from * D + i] * alpha + a[i] * beta;
    const h2 = rmsNorm(x1, rows, D, W(`${p}.post_attention_layernorm.weight`), c.rmsNormEps);
    const m = moe(c, W, p, h2, rows, stats);
    x = new Float64Array(rows * D);
    for (let i = 0; i < x.length; i++) x[i] = h2[i] * c.mlpAlpha + m[i] * c.mlpBeta;
  }
  const live = x.length / D; // T, or 1 after a lastOnly final softmax layer
  const first = options.lastOnly ? live - 1 : 0;
  const h = rmsNorm(x.subarray(first * D), live - first, D, W('model.norm.weight'), c.rmsNormEps);
  const head = c.tieWordEmbeddings || !weights.has('lm_head.weight') ? embed : W('lm_head.weight');
  const all = linear(h, live - first, D, head, V);
  const logits = Array.from({ length: live - first }, (_, i) => all.slice(i * V, (i + 1) * V));
  return { logits, states, stats };
}

/** Logits at every position of `ids` (float64). */
export function referenceLogits(c: RefConfig, weights: ReadonlyMap<string, Float64Array>, ids: readonly number[]): Float64Array[] {
  return referenceForward(c, weights, ids).logits;
}

/** One greedy step's outcome. */
export interface GreedyStep {
  readonly id: number;
  /** top-1 minus top-2 logit. */
  readonly gap: number;
}

/** Greedy continuation of `prompt` for `n` tokens, recomputing the whole sequence each step (argmax ties → lower id). */
export function referenceGreedy(c: RefConfig, weights: ReadonlyMap<string, Float64Array>, prompt: readonly number[], n: number): GreedyStep[] {
  const seq = [...prompt];
  const steps: GreedyStep[] = [];
  for (let i = 0; i < n; i++) {
    const row = referenceForward(c, weights, seq, { lastOnly: true }).logits[0];
    let best = 0;
    for (let v = 1; v < row.length; v++) if (row[v] > row[best]) best = v;
    let second = -Infinity;
    for (let v = 0; v < row.length; v++) if (v !== best && row[v] > second) second = row[v];
    steps.push({ id: best, gap: row[best] - second });
    seq.push(best);
  }
  return steps;
}

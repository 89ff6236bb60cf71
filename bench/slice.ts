/**
 * The benchmark "slice" model: MiniMax-Text-01's real layer dimensions (hidden 6144, 64 × 128 heads, 8 kv heads,
 * 32 experts × 9216, vocab 200064) with 8 layers (7 lightning + 1 softmax), random bf16 weights generated on the
 * GPU (fp32 routers), and the bytes one decode step must read.
 */
import { parseModelConfig, type ModelConfig } from '../src/config/config.js';
import type { CudaBackend } from '../src/backend/cuda/cuda-backend.js';
import type { Tensor } from '../src/backend/backend.js';
import type { LayerWeights, ModelWeights } from '../src/model/weights.js';
import { lightningSlopes } from '../src/model/slopes.js';

export function sliceConfig(overrides: Record<string, unknown> = {}): ModelConfig {
  const L = 8;
  return parseModelConfig({
    model_type: 'minimax_text_01',
    architectures: ['MiniMaxText01ForCausalLM'],
    vocab_size: 200064,
    hidden_size: 6144,
    num_hidden_layers: L,
    num_attention_heads: 64,
    num_key_value_heads: 8,
    head_dim: 128,
    rotary_dim: 64,
    rope_theta: 10_000_000,
    intermediate_size: 9216,
    num_local_experts: 32,
    num_experts_per_tok: 2,
    rms_norm_eps: 1e-5,
    attn_type_list: [0, 0, 0, 0, 0, 0, 0, 1],
    postnorm: true,
    layernorm_linear_attention_alpha: (2 * L) ** 0.25,
    layernorm_linear_attention_beta: 1,
    layernorm_full_attention_alpha: (2 * L) ** 0.25,
    layernorm_full_attention_beta: 1,
    layernorm_mlp_alpha: (2 * L) ** 0.25,
    layernorm_mlp_beta: 1,
    hidden_act: 'silu',
    max_position_embeddings: 10_240_000,
    ...overrides,
  });
}

/** Random weights on the GPU: projections ~ N(0, 1/fan_in), norms ~ 1 ± 0.05, embedding ~ N(0, 1). */
export function randomWeights(b: CudaBackend, c: ModelConfig, seed = 1): ModelWeights {
  const D = c.hiddenSize, Hd = c.numHeads * c.headDim, KVd = c.numKvHeads * c.headDim, I = c.intermediateSize, E = c.numExperts;
  let s = seed;
  const w = (shape: number[], fanIn: number, dtype: 'bf16' | 'f32' = 'bf16'): Tensor => {
    const t = b.alloc(shape, dtype);
    b.fillRandom(t, s++, 1 / Math.sqrt(fanIn));
    return t;
  };
  const norm = (n: number): Tensor => {
    const t = b.alloc([n], 'bf16');
    b.fillRandom(t, s++, 0.05, 1);
    return t;
  };
  const layers: LayerWeights[] = c.layerTypes.map((kind, l) => ({
    inputNorm: norm(D),
    postNorm: norm(D),
    attn:
      kind === 'lightning'
        ? { kind, qkv: w([3 * Hd, D], D), gate: w([Hd, D], D), norm: norm(Hd), out: w([D, Hd], Hd), slopes: b.upload([c.numHeads], 'f32', lightningSlopes(c.numHeads, l, c.numLayers)) }
        : { kind, q: w([Hd, D], D), k: w([KVd, D], D), v: w([KVd, D], D), o: w([D, Hd], Hd) },
    router: w([E, D], D, 'f32'),
    w13: w([E, 2 * I, D], D),
    w2: w([E, D, I], I),
  }));
  const embed = b.alloc([c.vocabSize, D], 'bf16');
  b.fillRandom(embed, s++, 1);
  return { embed, finalNorm: norm(D), lmHead: w([c.vocabSize, D], D), layers };
}

/**
 * Bytes one batch-1 decode step reads (or writes) at context length `ctx`: every dense weight (attention, norms,
 * fp32 routers, lm_head), the K routed experts of each layer, the fp32 lightning state read and written, the KV
 * cache read, and the embedding row.
 */
export function decodeBytesPerToken(c: ModelConfig, ctx: number): number {
  const D = c.hiddenSize, Hd = c.numHeads * c.headDim, KVd = c.numKvHeads * c.headDim, I = c.intermediateSize;
  let bytes = 0;
  for (const kind of c.layerTypes) {
    bytes += kind === 'lightning' ? (5 * D * Hd + Hd) * 2 : (2 * D * Hd + 2 * D * KVd) * 2;
    bytes += 2 * D * 2; // norms
    bytes += c.numExperts * D * 4; // router (fp32)
    bytes += c.numExpertsPerTok * 3 * D * I * 2; // routed experts
    if (kind === 'lightning') bytes += 2 * c.numHeads * c.headDim * c.headDim * 4; // state read + write
    else bytes += ctx * 2 * KVd * 2; // KV read
  }
  return bytes + D * 2 + c.vocabSize * D * 2 + D * 2; // final norm, lm_head, embedding row
}

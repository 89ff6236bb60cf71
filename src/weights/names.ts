/**
 * Checkpoint tensor names → the engine's weight slots (MODEL.md §12).
 *
 * Both MoE layouts are accepted per layer, independently of the config layout (the `-hf` repos keep the original
 * tensor names; transformers v5 `save_pretrained` writes packed ones):
 *  - original: `block_sparse_moe.gate.weight`, `block_sparse_moe.experts.{e}.w1|w3|w2.weight`
 *  - packed:   `mlp.gate.weight`, `mlp.experts.gate_up_proj` [E, 2I, D], `mlp.experts.down_proj` [E, D, I]
 * Experts always land in the packed slots `w13` [E, 2I, D] (w1_e rows then w3_e rows) and `w2` [E, D, I], the
 * layout grouped GEMMs want. Every expected tensor must be present with the expected shape and a float dtype;
 * anything else is an error that names the tensors, except the derived buffers listed in IGNORED.
 */

import type { ModelConfig } from '../config/config.js';
import { WeightsError } from '../util/errors.js';
import type { StDType } from './safetensors.js';

/** One tensor of the checkpoint that fills (part of) a slot, starting `offset` elements into it. */
export interface WeightSource {
  readonly tensor: string;
  readonly offset: number;
  readonly shape: readonly number[];
}

export interface WeightSlot {
  /** Slot key: `embed`, `finalNorm`, `lmHead`, or `layers.{l}.{inputNorm|postNorm|qkv|gate|norm|out|q|k|v|o|router|w13|w2}`. */
  readonly key: string;
  readonly shape: readonly number[];
  /** Routers are kept in fp32 on every backend (MODEL.md §4). */
  readonly keepFp32: boolean;
  readonly sources: readonly WeightSource[];
}

export interface TensorDescription {
  readonly dtype: StDType;
  readonly shape: readonly number[];
}

const FLOAT_DTYPES: readonly StDType[] = ['F32', 'BF16', 'F16', 'F64'];

/**
 * Derived buffers some writers save (transformers v5 persistent buffers, old RoPE caches): recomputed by the
 * engine, so their stored values are ignored.
 */
const IGNORED = /^model\.layers\.\d+\.self_attn\.(slope_rate|query_decay|key_decay|diagonal_decay|rotary_emb\.inv_freq)$/;

/** Works out which checkpoint tensors fill which slots, validating names, shapes and dtypes against the config. */
export function planWeights(config: ModelConfig, tensors: ReadonlyMap<string, TensorDescription>, file = 'checkpoint'): WeightSlot[] {
  const D = config.hiddenSize, V = config.vocabSize, E = config.numExperts, I = config.intermediateSize;
  const Hd = config.numHeads * config.headDim, KVd = config.numKvHeads * config.headDim;
  const slots: WeightSlot[] = [];
  const used = new Set<string>();
  const missing: string[] = [];
  const one = (key: string, tensor: string, shape: number[], keepFp32 = false): void => {
    slots.push({ key, shape, keepFp32, sources: [{ tensor, offset: 0, shape }] });
  };

  one('embed', 'model.embed_tokens.weight', [V, D]);
  one('finalNorm', 'model.norm.weight', [D]);
  if (!config.tieWordEmbeddings) one('lmHead', 'lm_head.weight', [V, D]);

  for (let l = 0; l < config.numLayers; l++) {
    const p = `model.layers.${l}.`;
    one(`layers.${l}.inputNorm`, p + 'input_layernorm.weight', [D]);
    one(`layers.${l}.postNorm`, p + 'post_attention_layernorm.weight', [D]);
    if (config.layerTypes[l] === 'lightning') {
      one(`layers.${l}.qkv`, p + 'self_attn.qkv_proj.weight', [3 * Hd, D]);
      one(`layers.${l}.gate`, p + 'self_attn.output_gate.weight', [Hd, D]);
      one(`layers.${l}.norm`, p + 'self_attn.norm.weight', [Hd]);
      one(`layers.${l}.out`, p + 'self_attn.out_proj.weight', [D, Hd]);
    } else {
      one(`layers.${l}.q`, p + 'self_attn.q_proj.weight', [Hd, D]);
      one(`layers.${l}.k`, p + 'self_attn.k_proj.weight', [KVd, D]);
      one(`layers.${l}.v`, p + 'self_attn.v_proj.weight', [KVd, D]);
      one(`layers.${l}.o`, p + 'self_attn.o_proj.weight', [D, Hd]);
    }
    const packed = tensors.has(p + 'mlp.experts.gate_up_proj') || tensors.has(p + 'mlp.experts.down_proj');
    const routerName = tensors.has(p + 'mlp.gate.weight') && !tensors.has(p + 'block_sparse_moe.gate.weight')
      ? p + 'mlp.gate.weight'
      : p + 'block_sparse_moe.gate.weight';
    one(`layers.${l}.router`, routerName, [E, D], true);
    if (packed) {
      one(`layers.${l}.w13`, p + 'mlp.experts.gate_up_proj', [E, 2 * I, D]);
      one(`layers.${l}.w2`, p + 'mlp.experts.down_proj', [E, D, I]);
    } else {
      const w13: WeightSource[] = [], w2: WeightSource[] = [];
      for (let e = 0; e < E; e++) {
        const x = `${p}block_sparse_moe.experts.${e}.`;
        w13.push({ tensor: x + 'w1.weight', offset: e * 2 * I * D, shape: [I, D] });
        w13.push({ tensor: x + 'w3.weight', offset: e * 2 * I * D + I * D, shape: [I, D] });
        w2.push({ tensor: x + 'w2.weight', offset: e * D * I, shape: [D, I] });
      }
      slots.push({ key: `layers.${l}.w13`, shape: [E, 2 * I, D], keepFp32: false, sources: w13 });
      slots.push({ key: `layers.${l}.w2`, shape: [E, D, I], keepFp32: false, sources: w2 });
    }
  }

  for (const slot of slots) {
    for (const src of slot.sources) {
      const t = tensors.get(src.tensor);
      if (!t) {
        missing.push(src.tensor);
        continue;
      }
      used.add(src.tensor);
      if (t.shape.length !== src.shape.length || t.shape.some((d, i) => d !== src.shape[i])) {
        throw new WeightsError(
          `${file}: tensor ${src.tensor} has shape [${t.shape.join(', ')}], expected [${src.shape.join(', ')}] from config.json`,
          { tensor: src.tensor },
        );
      }
      if (!FLOAT_DTYPES.includes(t.dtype)) {
        throw new WeightsError(`${file}: tensor ${src.tensor} has dtype ${t.dtype}, expected one of ${FLOAT_DTYPES.join(', ')}`, { tensor: src.tensor });
      }
    }
  }
  if (missing.length > 0) {
    throw new WeightsError(`${file}: ${missing.length} tensor(s) missing: ${listNames(missing)}`, { tensor: missing[0] });
  }
  // With tied embeddings the head IS the embedding (transformers ties them at load and ignores a stored copy).
  const ignoredHead = config.tieWordEmbeddings ? 'lm_head.weight' : undefined;
  const unexpected = [...tensors.keys()].filter((n) => !used.has(n) && !IGNORED.test(n) && n !== ignoredHead);
  if (unexpected.length > 0) {
    throw new WeightsError(
      `${file}: ${unexpected.length} unexpected tensor(s): ${listNames(unexpected)} (an unsupported variant, or a config.json that does not match the weights)`,
      { tensor: unexpected[0] },
    );
  }
  return slots;
}

function listNames(names: readonly string[], max = 8): string {
  const shown = names.slice(0, max).join(', ');
  return names.length > max ? `${shown}, … (${names.length - max} more)` : shown;
}

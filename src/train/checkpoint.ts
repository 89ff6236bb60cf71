/**
 * Training checkpoints, written in the original (remote-code) layout so that `lmoe generate --model DIR` loads a
 * checkpoint unchanged:
 *
 *   DIR/config.json              model_type minimax_text_01, attn_type_list, postnorm, layernorm_* factors
 *   DIR/model.safetensors        model.embed_tokens.weight, …, block_sparse_moe.experts.{e}.w1|w2|w3.weight
 *   DIR/tokenizer.json, tokenizer_config.json   copied from the run's tokenizer
 *   DIR/optimizer.safetensors    AdamW moments (resume only; fp32)
 *   DIR/trainer_state.json       step, data position, RNG seed, the run's config (resume only)
 *
 * Weights are fp32 (the master weights: resuming is exact) or bf16 (a smaller export).
 */

import fs from 'node:fs';
import path from 'node:path';
import type { ModelConfig } from '../config/config.js';
import { Checkpoint } from '../weights/checkpoint.js';
import { decodeToFloat32 } from '../util/dtype.js';
import { WRITABLE_DTYPE_BYTES, writeSafetensors, type TensorToWrite, type WritableDType } from '../weights/safetensors-writer.js';
import { WeightsError } from '../util/errors.js';
import type { ParamSpec } from './params.js';

/** The original-layout config.json of a ModelConfig (what MiniMax-Text-01's remote code reads). */
export function originalConfigJson(c: ModelConfig, torchDtype: string): Record<string, unknown> {
  return {
    architectures: ['MiniMaxText01ForCausalLM'],
    model_type: 'minimax_text_01',
    vocab_size: c.vocabSize,
    hidden_size: c.hiddenSize,
    num_hidden_layers: c.numLayers,
    num_attention_heads: c.numHeads,
    num_key_value_heads: c.numKvHeads,
    head_dim: c.headDim,
    rotary_dim: c.rotaryDim,
    rope_theta: c.ropeTheta,
    intermediate_size: c.intermediateSize,
    num_local_experts: c.numExperts,
    num_experts_per_tok: c.numExpertsPerTok,
    rms_norm_eps: c.rmsNormEps,
    attn_type_list: c.layerTypes.map((k) => (k === 'lightning' ? 0 : 1)),
    postnorm: true,
    layernorm_linear_attention_alpha: c.alpha.lightning,
    layernorm_linear_attention_beta: c.beta.lightning,
    layernorm_full_attention_alpha: c.alpha.softmax,
    layernorm_full_attention_beta: c.beta.softmax,
    layernorm_mlp_alpha: c.alpha.mlp,
    layernorm_mlp_beta: c.beta.mlp,
    hidden_act: 'silu',
    shared_intermediate_size: 0,
    tie_word_embeddings: c.tieWordEmbeddings,
    max_position_embeddings: c.maxPositionEmbeddings,
    ...(c.bosTokenId !== undefined && { bos_token_id: c.bosTokenId }),
    ...(c.eosTokenIds.length > 0 && { eos_token_id: c.eosTokenIds.length === 1 ? c.eosTokenIds[0] : [...c.eosTokenIds] }),
    router_aux_loss_coef: c.routerAuxLossCoef,
    sliding_window: null,
    torch_dtype: torchDtype,
  };
}

/** Slot key → the original layout's tensor names and how the slot's values split among them. */
function checkpointTensors(c: ModelConfig, spec: ParamSpec, values: Float64Array | Float32Array, dtype: WritableDType): TensorToWrite[] {
  const k = spec.key;
  const one = (name: string): TensorToWrite[] => [{ name, dtype, shape: spec.shape, data: values }];
  if (k === 'embed') return one('model.embed_tokens.weight');
  if (k === 'finalNorm') return one('model.norm.weight');
  if (k === 'lmHead') return one('lm_head.weight');
  const m = /^layers\.(\d+)\.(\w+)$/.exec(k);
  if (!m) throw new Error(`checkpoint: unknown parameter ${k}`);
  const p = `model.layers.${m[1]}.`;
  const names: Record<string, string> = {
    inputNorm: 'input_layernorm.weight', postNorm: 'post_attention_layernorm.weight',
    qkv: 'self_attn.qkv_proj.weight', gate: 'self_attn.output_gate.weight', norm: 'self_attn.norm.weight', out: 'self_attn.out_proj.weight',
    q: 'self_attn.q_proj.weight', k: 'self_attn.k_proj.weight', v: 'self_attn.v_proj.weight', o: 'self_attn.o_proj.weight',
    router: 'block_sparse_moe.gate.weight',
  };
  if (names[m[2]]) return one(p + names[m[2]]);
  const E = c.numExperts, I = c.intermediateSize, D = c.hiddenSize;
  const out: TensorToWrite[] = [];
  for (let e = 0; e < E; e++) {
    const x = `${p}block_sparse_moe.experts.${e}.`;
    if (m[2] === 'w13') {
      out.push({ name: x + 'w1.weight', dtype, shape: [I, D], data: values.subarray(e * 2 * I * D, e * 2 * I * D + I * D) });
      out.push({ name: x + 'w3.weight', dtype, shape: [I, D], data: values.subarray(e * 2 * I * D + I * D, (e + 1) * 2 * I * D) });
    } else {
      out.push({ name: x + 'w2.weight', dtype, shape: [D, I], data: values.subarray(e * D * I, (e + 1) * D * I) });
    }
  }
  return out;
}

export interface SaveOptions {
  readonly dtype: 'F32' | 'BF16';
  /** A directory holding tokenizer.json (and tokenizer_config.json): copied into the checkpoint. */
  readonly tokenizerDir?: string;
  /**
   * The exact optimiser state for resuming: master weights and AdamW moments in spec order, stored at the
   * backend's precision (F64 from the CPU, F32 from CUDA) so a resumed run continues exactly.
   */
  readonly optimizer?: OptimizerState;
  /** trainer_state.json contents (resume). */
  readonly state?: unknown;
  /**
   * Split the weights into shards of at most this many bytes (model-0000k-of-0000n.safetensors plus
   * model.safetensors.index.json, as large checkpoints are published); default: one model.safetensors.
   */
  readonly maxShardBytes?: number;
}

/** Writes the weights as one file or as shards with an index; returns the files written. */
function writeWeights(dir: string, tensors: readonly TensorToWrite[], maxShardBytes: number | undefined): string[] {
  for (const f of fs.readdirSync(dir)) if (/^model(-\d{5}-of-\d{5})?\.safetensors(\.index\.json)?$/.test(f)) fs.rmSync(path.join(dir, f));
  const shards: TensorToWrite[][] = [[]];
  let bytes = 0;
  for (const t of tensors) {
    const n = t.data.length * WRITABLE_DTYPE_BYTES[t.dtype];
    if (maxShardBytes !== undefined && bytes > 0 && bytes + n > maxShardBytes) {
      shards.push([]);
      bytes = 0;
    }
    shards[shards.length - 1].push(t);
    bytes += n;
  }
  if (shards.length === 1) {
    writeSafetensors(path.join(dir, 'model.safetensors'), tensors, { format: 'pt' });
    return ['model.safetensors'];
  }
  const names = shards.map((_, i) => `model-${String(i + 1).padStart(5, '0')}-of-${String(shards.length).padStart(5, '0')}.safetensors`);
  const weightMap: Record<string, string> = {};
  shards.forEach((sh, i) => {
    writeSafetensors(path.join(dir, names[i]), sh, { format: 'pt' });
    for (const t of sh) weightMap[t.name] = names[i];
  });
  const total = tensors.reduce((a, t) => a + t.data.length * WRITABLE_DTYPE_BYTES[t.dtype], 0);
  writeJson(path.join(dir, 'model.safetensors.index.json'), { metadata: { total_size: total }, weight_map: weightMap });
  return [...names, 'model.safetensors.index.json'];
}

/** Writes a checkpoint directory (created if needed; files replaced atomically one by one). */
export function saveCheckpoint(dir: string, c: ModelConfig, specs: readonly ParamSpec[], values: readonly (Float64Array | Float32Array)[], o: SaveOptions): void {
  fs.mkdirSync(dir, { recursive: true });
  const tensors = specs.flatMap((s, i) => checkpointTensors(c, s, values[i], o.dtype));
  writeWeights(dir, tensors, o.maxShardBytes);
  writeJson(path.join(dir, 'config.json'), originalConfigJson(c, o.dtype === 'BF16' ? 'bfloat16' : 'float32'));
  if (o.tokenizerDir) {
    for (const f of ['tokenizer.json', 'tokenizer_config.json']) {
      const src = path.join(o.tokenizerDir, f);
      if (fs.existsSync(src) && path.resolve(src) !== path.resolve(dir, f)) fs.copyFileSync(src, path.join(dir, f));
    }
  }
  if (o.optimizer) {
    const st = o.optimizer;
    const mv: TensorToWrite[] = [];
    specs.forEach((s, i) => {
      mv.push({ name: `p.${s.key}`, dtype: st.dtype, shape: s.shape, data: st.params[i] });
      mv.push({ name: `m.${s.key}`, dtype: st.dtype, shape: s.shape, data: st.m[i] });
      mv.push({ name: `v.${s.key}`, dtype: st.dtype, shape: s.shape, data: st.v[i] });
    });
    writeSafetensors(path.join(dir, 'optimizer.safetensors'), mv);
  }
  if (o.state !== undefined) writeJson(path.join(dir, 'trainer_state.json'), o.state);
}

function writeJson(file: string, value: unknown): void {
  fs.writeFileSync(`${file}.partial`, JSON.stringify(value, null, 2) + '\n');
  fs.renameSync(`${file}.partial`, file);
}

/** Reads a float tensor of a checkpoint as f64. */
async function readFloat(ck: Checkpoint, name: string): Promise<Float64Array> {
  const e = ck.get(name);
  const bytes = await ck.read(name);
  if (e.dtype === 'F64') return new Float64Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength));
  const f32 = new Float32Array(e.shape.reduce((a, b) => a * b, 1));
  decodeToFloat32(bytes, e.dtype, f32, 0);
  return Float64Array.from(f32);
}

export interface OptimizerState {
  readonly dtype: 'F64' | 'F32';
  readonly params: readonly Float64Array[];
  readonly m: readonly Float64Array[];
  readonly v: readonly Float64Array[];
}

/** The optimiser state of a checkpoint written with `optimizer`, in spec order. */
export async function loadOptimizerState(dir: string, specs: readonly ParamSpec[]): Promise<Omit<OptimizerState, 'dtype'>> {
  const file = path.join(dir, 'optimizer.safetensors');
  if (!fs.existsSync(file)) throw new WeightsError(`${file}: not found (a checkpoint written without optimizer state cannot be resumed)`, { file });
  const ck = await Checkpoint.openFile(file);
  try {
    const params: Float64Array[] = [], m: Float64Array[] = [], v: Float64Array[] = [];
    for (const s of specs) {
      params.push(await readFloat(ck, `p.${s.key}`));
      m.push(await readFloat(ck, `m.${s.key}`));
      v.push(await readFloat(ck, `v.${s.key}`));
    }
    return { params, m, v };
  } finally {
    await ck.close();
  }
}


/**
 * Model configuration: both config.json layouts → one typed, validated `ModelConfig` (MODEL.md §2).
 *
 * Layouts:
 *  - original (remote-code): model_type `minimax_text_01` | `MiniMaxText01` | `minimax_m1`, keys `attn_type_list`,
 *    `layernorm_{linear_attention,full_attention,mlp}_{alpha,beta}`, `rotary_dim`, `postnorm`, `rope_theta`.
 *  - transformers-native: model_type `minimax`, keys `layer_types`, `{linear_attn,full_attn,mlp}_{alpha,beta}_factor`,
 *    `rope_parameters` (v5) or `rope_theta` (v4.53), `partial_rotary_factor`, `block_size`.
 * The key set decides the layout (a config with `attn_type_list` is read with the original keys whatever its
 * model_type says); `model_type` must still be one of the known values. Raw keys appear only in this folder.
 *
 * Validation happens before anything is allocated (SERVING.md F11): integer ranges, divisibility, the resolution
 * rules of MODEL.md §2, and an explicit error for every setting this engine does not implement.
 */

import fs from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import { ConfigError } from '../util/errors.js';

export type LayerKind = 'lightning' | 'softmax';
export type ConfigLayout = 'original' | 'native';

/** The normalized model description every other module reads. Shapes use the legend D, L, H, Hkv, Dh, E, K, I, V. */
export interface ModelConfig {
  /** `model_type` as written in config.json. */
  readonly modelType: string;
  /** Which key set config.json uses. */
  readonly layout: ConfigLayout;
  readonly architectures: readonly string[];
  /** V: embedding and lm_head rows. */
  readonly vocabSize: number;
  /** D: model width. */
  readonly hiddenSize: number;
  /** L: decoder layers. */
  readonly numLayers: number;
  /** H: heads of lightning layers and query heads of softmax layers. */
  readonly numHeads: number;
  /** Hkv: key/value heads of softmax layers. */
  readonly numKvHeads: number;
  /** Dh: head dimension (H·Dh may differ from D). */
  readonly headDim: number;
  /** Rotary dims r (even, 0 < r ≤ Dh): RoPE on dims [0, r), NeoX pairing i ↔ i + r/2. */
  readonly rotaryDim: number;
  /** RoPE base θ. */
  readonly ropeTheta: number;
  /** I: per-expert FFN width. */
  readonly intermediateSize: number;
  /** E: experts per layer. */
  readonly numExperts: number;
  /** K: experts per token. */
  readonly numExpertsPerTok: number;
  /** eps of decoder-layer norms and the final norm. */
  readonly rmsNormEps: number;
  /** eps of the lightning output norm (fixed 1e-6, MODEL.md §2 rule 7). */
  readonly lightningNormEps: number;
  /** Lightning prefill block size (256). Changes rounding points only, not the math. */
  readonly blockSize: number;
  /** Kind of each layer, length L. */
  readonly layerTypes: readonly LayerKind[];
  /** Residual multipliers α (applied to the normalized residual). */
  readonly alpha: Readonly<{ lightning: number; softmax: number; mlp: number }>;
  /** Branch multipliers β. */
  readonly beta: Readonly<{ lightning: number; softmax: number; mlp: number }>;
  readonly maxPositionEmbeddings: number;
  /** lm_head shares the embedding matrix. false for every released checkpoint. */
  readonly tieWordEmbeddings: boolean;
  /** `eos_token_id` of config.json (may be a list), or [] when null/absent. */
  readonly eosTokenIds: readonly number[];
  readonly bosTokenId: number | undefined;
  /** Checkpoint dtype declared in config.json (`torch_dtype` / `dtype`), informational. */
  readonly dtype: string | undefined;
  readonly routerAuxLossCoef: number;
}

export const ORIGINAL_MODEL_TYPES = ['minimax_text_01', 'MiniMaxText01', 'minimax_m1'] as const;
export const NATIVE_MODEL_TYPES = ['minimax'] as const;
const KNOWN_MODEL_TYPES: readonly string[] = [...ORIGINAL_MODEL_TYPES, ...NATIVE_MODEL_TYPES];

// Bounds are generous (the released model is L=80, D=6144, H=64, E=32, V=200064) but keep a hostile config from
// asking for absurd allocations before any tensor is read.
const posInt = (max: number) => z.number().int().min(1).max(max);
const finite = z.number().refine(Number.isFinite, { message: 'expected a finite number' });
const positive = finite.refine((x) => x > 0, { message: 'expected a number > 0' });
const tokenIds = z.union([z.number().int().min(0), z.array(z.number().int().min(0)), z.null()]).optional();

const common = z
  .object({
    model_type: z.string(),
    architectures: z.array(z.string()).optional(),
    vocab_size: posInt(1 << 24),
    hidden_size: posInt(1 << 16),
    num_hidden_layers: posInt(1024),
    num_attention_heads: posInt(4096),
    num_key_value_heads: posInt(4096).optional(),
    head_dim: posInt(4096).nullable().optional(),
    intermediate_size: posInt(1 << 18),
    num_local_experts: posInt(4096).optional(),
    num_experts: posInt(4096).optional(),
    num_experts_per_tok: posInt(4096),
    rms_norm_eps: positive.optional(),
    hidden_act: z.string().optional(),
    max_position_embeddings: posInt(Number.MAX_SAFE_INTEGER).optional(),
    tie_word_embeddings: z.boolean().optional(),
    bos_token_id: tokenIds,
    eos_token_id: tokenIds,
    torch_dtype: z.string().nullable().optional(),
    dtype: z.string().nullable().optional(),
    sliding_window: z.number().nullable().optional(),
    shared_intermediate_size: z.number().int().min(0).optional(),
    router_aux_loss_coef: finite.optional(),
    rope_scaling: z.unknown().optional(),
    rotary_dim: posInt(4096).nullable().optional(),
    partial_rotary_factor: positive.optional(),
    rope_theta: positive.optional(),
  })
  .loose();

const originalKeys = z
  .object({
    attn_type_list: z.array(z.union([z.literal(0), z.literal(1)], { error: 'expected 0 (lightning) or 1 (softmax)' })),
    postnorm: z.boolean().optional(),
    layernorm_linear_attention_alpha: finite.optional(),
    layernorm_linear_attention_beta: finite.optional(),
    layernorm_full_attention_alpha: finite.optional(),
    layernorm_full_attention_beta: finite.optional(),
    layernorm_mlp_alpha: finite.optional(),
    layernorm_mlp_beta: finite.optional(),
  })
  .loose();

const nativeKeys = z
  .object({
    layer_types: z.array(z.enum(['linear_attention', 'full_attention'], { error: 'expected "linear_attention" or "full_attention"' })),
    block_size: posInt(1 << 16).optional(),
    linear_attn_alpha_factor: finite.optional(),
    linear_attn_beta_factor: finite.optional(),
    full_attn_alpha_factor: finite.optional(),
    full_attn_beta_factor: finite.optional(),
    mlp_alpha_factor: finite.optional(),
    mlp_beta_factor: finite.optional(),
    rope_parameters: z
      .object({
        rope_theta: positive.optional(),
        rope_type: z.string().optional(),
        partial_rotary_factor: positive.optional(),
      })
      .loose()
      .nullable()
      .optional(),
  })
  .loose();

/** Parses a raw config.json object. `file` is used in error messages. */
export function parseModelConfig(raw: unknown, file = 'config.json'): ModelConfig {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
    throw new ConfigError(`${file}: expected a JSON object, got ${raw === null ? 'null' : Array.isArray(raw) ? 'an array' : typeof raw}`, { file });
  }
  const obj = raw as Record<string, unknown>;
  if (typeof obj.model_type !== 'string') {
    throw new ConfigError(`${file}: "model_type" is missing or not a string (expected one of ${KNOWN_MODEL_TYPES.join(', ')})`, { file, field: 'model_type' });
  }
  if (!KNOWN_MODEL_TYPES.includes(obj.model_type)) {
    throw new ConfigError(`${file}: unsupported model_type "${obj.model_type}" (expected one of ${KNOWN_MODEL_TYPES.join(', ')})`, { file, field: 'model_type' });
  }
  const c = check(common, obj, file);
  let layout: ConfigLayout;
  if ('attn_type_list' in obj) layout = 'original';
  else if ('layer_types' in obj) layout = 'native';
  else {
    throw new ConfigError(`${file}: no layer list: expected "attn_type_list" (original layout) or "layer_types" (transformers layout)`, { file, field: 'attn_type_list' });
  }

  const L = c.num_hidden_layers;
  const H = c.num_attention_heads;
  const E = c.num_local_experts ?? c.num_experts;
  if (E === undefined) throw new ConfigError(`${file}: "num_local_experts" is missing`, { file, field: 'num_local_experts' });
  if (c.num_experts_per_tok > E) {
    throw new ConfigError(`${file}: num_experts_per_tok (${c.num_experts_per_tok}) exceeds num_local_experts (${E})`, { file, field: 'num_experts_per_tok' });
  }
  const Hkv = c.num_key_value_heads ?? H;
  if (H % Hkv !== 0) {
    throw new ConfigError(`${file}: num_attention_heads (${H}) must be a multiple of num_key_value_heads (${Hkv})`, { file, field: 'num_key_value_heads' });
  }
  let headDim: number;
  if (c.head_dim != null) headDim = c.head_dim;
  else if (c.hidden_size % H === 0) headDim = c.hidden_size / H;
  else throw new ConfigError(`${file}: no "head_dim" and hidden_size (${c.hidden_size}) is not a multiple of num_attention_heads (${H})`, { file, field: 'head_dim' });
  if (c.hidden_act !== undefined && c.hidden_act !== 'silu') {
    throw new ConfigError(`${file}: unsupported hidden_act "${c.hidden_act}" (MiniMax-01 uses "silu")`, { file, field: 'hidden_act' });
  }
  if ((c.shared_intermediate_size ?? 0) > 0) {
    throw new ConfigError(`${file}: shared_intermediate_size = ${c.shared_intermediate_size}: a shared expert is not supported (no released checkpoint has one)`, { file, field: 'shared_intermediate_size' });
  }
  if (c.sliding_window != null) {
    throw new ConfigError(`${file}: sliding_window = ${c.sliding_window} is not supported (MiniMax-01 uses full attention)`, { file, field: 'sliding_window' });
  }
  if (c.rope_scaling != null) {
    throw new ConfigError(`${file}: rope_scaling is not supported (only the default, unscaled RoPE is defined for MiniMax-01)`, { file, field: 'rope_scaling' });
  }

  let layerTypes: LayerKind[];
  let alpha: ModelConfig['alpha'];
  let beta: ModelConfig['beta'];
  let blockSize = 256;
  let ropeTheta = c.rope_theta;
  let partialFactor = c.partial_rotary_factor;
  if (layout === 'original') {
    const o = check(originalKeys, obj, file);
    if (o.postnorm !== true) {
      throw new ConfigError(
        `${file}: postnorm = ${o.postnorm === undefined ? 'missing (the remote-code default is false)' : 'false'}: the pre-norm residual variant is not supported (every released checkpoint sets "postnorm": true)`,
        { file, field: 'postnorm' },
      );
    }
    layerTypes = o.attn_type_list.map((t) => (t === 0 ? 'lightning' : 'softmax'));
    alpha = { lightning: o.layernorm_linear_attention_alpha ?? 1, softmax: o.layernorm_full_attention_alpha ?? 1, mlp: o.layernorm_mlp_alpha ?? 1 };
    beta = { lightning: o.layernorm_linear_attention_beta ?? 1, softmax: o.layernorm_full_attention_beta ?? 1, mlp: o.layernorm_mlp_beta ?? 1 };
  } else {
    const n = check(nativeKeys, obj, file);
    layerTypes = n.layer_types.map((t) => (t === 'linear_attention' ? 'lightning' : 'softmax'));
    alpha = { lightning: n.linear_attn_alpha_factor ?? 1, softmax: n.full_attn_alpha_factor ?? 1, mlp: n.mlp_alpha_factor ?? 1 };
    beta = { lightning: n.linear_attn_beta_factor ?? 1, softmax: n.full_attn_beta_factor ?? 1, mlp: n.mlp_beta_factor ?? 1 };
    blockSize = n.block_size ?? 256;
    const rp = n.rope_parameters;
    if (rp) {
      if (rp.rope_type !== undefined && rp.rope_type !== 'default') {
        throw new ConfigError(`${file}: rope_parameters.rope_type "${rp.rope_type}" is not supported (only "default")`, { file, field: 'rope_parameters.rope_type' });
      }
      ropeTheta ??= rp.rope_theta;
      partialFactor ??= rp.partial_rotary_factor;
    }
  }
  if (layerTypes.length !== L) {
    const key = layout === 'original' ? 'attn_type_list' : 'layer_types';
    throw new ConfigError(`${file}: ${key} has ${layerTypes.length} entries, expected num_hidden_layers = ${L}`, { file, field: key });
  }
  // Both config classes derive from Mixtral's, whose default RoPE base is 1e6; released configs always set it.
  ropeTheta ??= 1_000_000;

  // MODEL.md §2 rule 3: rotary_dim, else partial_rotary_factor · Dh, else the whole head.
  let rotaryDim: number;
  // The key the value came from, so that an error names what to fix.
  let rotarySource: string;
  if (c.rotary_dim != null) {
    rotaryDim = c.rotary_dim;
    rotarySource = 'rotary_dim';
  } else if (partialFactor !== undefined) {
    rotarySource = c.partial_rotary_factor !== undefined ? 'partial_rotary_factor' : 'rope_parameters.partial_rotary_factor';
    rotaryDim = Math.round(partialFactor * headDim);
    if (Math.abs(rotaryDim - partialFactor * headDim) > 1e-9) {
      throw new ConfigError(`${file}: ${rotarySource} ${partialFactor} × head_dim ${headDim} is not an integer`, { file, field: rotarySource });
    }
  } else {
    rotaryDim = headDim;
    rotarySource = 'head_dim';
  }
  if (rotaryDim % 2 !== 0 || rotaryDim <= 0 || rotaryDim > headDim) {
    throw new ConfigError(
      `${file}: rotary dims (from ${rotarySource}) must be even and in (0, head_dim = ${headDim}], got ${rotaryDim}`,
      { file, field: rotarySource },
    );
  }

  const ids = (v: number | number[] | null | undefined): number[] => (v == null ? [] : Array.isArray(v) ? v : [v]);
  const bos = ids(c.bos_token_id);
  return {
    modelType: c.model_type,
    layout,
    architectures: c.architectures ?? [],
    vocabSize: c.vocab_size,
    hiddenSize: c.hidden_size,
    numLayers: L,
    numHeads: H,
    numKvHeads: Hkv,
    headDim,
    rotaryDim,
    ropeTheta,
    intermediateSize: c.intermediate_size,
    numExperts: E,
    numExpertsPerTok: c.num_experts_per_tok,
    rmsNormEps: c.rms_norm_eps ?? 1e-5,
    lightningNormEps: 1e-6,
    blockSize,
    layerTypes,
    alpha,
    beta,
    maxPositionEmbeddings: c.max_position_embeddings ?? 10_240_000,
    tieWordEmbeddings: c.tie_word_embeddings ?? false,
    eosTokenIds: ids(c.eos_token_id),
    bosTokenId: bos[0],
    dtype: c.torch_dtype ?? c.dtype ?? undefined,
    routerAuxLossCoef: c.router_aux_loss_coef ?? 0.001,
  };
}

/** Reads and validates `<dir>/config.json`. */
export async function loadModelConfig(dir: string): Promise<ModelConfig> {
  const file = path.join(dir, 'config.json');
  return parseModelConfig(await readJsonFile(file, ConfigError), path.basename(file));
}

/** Reads a JSON file, turning a missing file or a syntax error into a one-line typed error naming the file. */
export async function readJsonFile(
  file: string,
  ErrorClass: new (message: string, options: { file?: string }) => Error,
  maxBytes = 64 * 1024 * 1024,
): Promise<unknown> {
  let text: string;
  try {
    const stat = await fs.stat(file);
    if (!stat.isFile()) throw new ErrorClass(`${file}: not a regular file`, { file });
    if (stat.size > maxBytes) throw new ErrorClass(`${file}: ${stat.size} bytes is larger than the ${maxBytes}-byte limit for a JSON file`, { file });
    text = await fs.readFile(file, 'utf8');
  } catch (e) {
    if (e instanceof ErrorClass) throw e;
    const code = (e as NodeJS.ErrnoException).code;
    throw new ErrorClass(code === 'ENOENT' ? `${file}: file not found` : `${file}: cannot read (${code ?? String(e)})`, { file });
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    // V8 quotes the offending source text, newlines included: flatten it so the message stays one line.
    // eslint-disable-next-line no-control-regex
    const why = (e as Error).message.replace(/[\u0000-\u001f\u007f\u2028\u2029]+/g, ' ');
    throw new ErrorClass(`${file}: invalid JSON (${why})`, { file });
  }
}

function check<T extends z.ZodType>(schema: T, obj: unknown, file: string): z.infer<T> {
  const r = schema.safeParse(obj);
  if (r.success) return r.data;
  const issue = r.error.issues[0]!;
  const field = issue.path.map(String).join('.');
  let got = issue.path.reduce<unknown>((o, k) => (o as Record<PropertyKey, unknown> | undefined)?.[k as PropertyKey], obj);
  const shown = JSON.stringify(got);
  const gotText = shown === undefined ? 'missing' : shown.length > 80 ? shown.slice(0, 77) + '...' : shown;
  throw new ConfigError(`${file}: "${field}": ${issue.message.replace(/^Invalid input: /, '')} (got ${gotText})`, { file, field });
}

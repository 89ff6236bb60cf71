/**
 * config.json → ModelConfig (MODEL.md §2, SERVING.md F11): the normalized fields of every fixture config and of
 * the three released 456B configs (layer kinds, α/β per branch, rotary dims, θ, head_dim / KV-head defaults, eos
 * ids), the resolution rules (partial_rotary_factor at top level or in rope_parameters, rotary_dim honoured in a
 * native config, block_size), one ConfigError per invalid or unsupported setting (one line, naming the field),
 * and the parameter / byte / cache-size totals of MODEL.md §13–§14 (plus tiny's count against its checkpoint).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { parseModelConfig, type ModelConfig } from '../../src/config/config.js';
import { cacheSizes, countParameters, weightBytes } from '../../src/config/size.js';
import { ConfigError } from '../../src/util/errors.js';
import { Checkpoint } from '../../src/weights/checkpoint.js';
import { FIXTURES } from '../helpers/paths.js';

type Raw = Record<string, any>;

function raw(rel: string): Raw {
  return JSON.parse(fs.readFileSync(path.join(FIXTURES, rel), 'utf8')) as Raw;
}

/** A fresh deep copy of a fixture config, with `patch` applied (undefined deletes a key). */
function variant(rel: string, patch: Raw = {}): Raw {
  const c = structuredClone(raw(rel));
  for (const [k, v] of Object.entries(patch)) {
    if (v === undefined) delete c[k];
    else c[k] = v;
  }
  return c;
}

const TINY = 'tiny/config.json';
const TINY_HF = 'tiny-hf/config.json';
const REAL = {
  text01: 'configs/minimax-text-01.config.json',
  m1: 'configs/minimax-m1.config.json',
  text01hf: 'configs/minimax-text-01-hf.config.json',
} as const;

const ALPHA_REAL = 3.5565588200778455;
const ALPHA_TINY = 1.8612097182041991; // (2·6)^(1/4)
const TINY_KINDS = ['lightning', 'lightning', 'softmax', 'lightning', 'lightning', 'softmax'];

function parse(rel: string, patch?: Raw): ModelConfig {
  return parseModelConfig(variant(rel, patch));
}

// ---------------------------------------------------------------------------------------------------------------
// Fixture configs
// ---------------------------------------------------------------------------------------------------------------

test('tiny and tiny-bf16 (original layout): normalized fields', () => {
  for (const name of ['tiny', 'tiny-bf16']) {
    const c = parse(`${name}/config.json`);
    assert.equal(c.layout, 'original', name);
    assert.equal(c.modelType, 'minimax_text_01');
    assert.deepEqual(c.architectures, ['MiniMaxText01ForCausalLM']);
    assert.equal(c.vocabSize, 1024);
    assert.equal(c.hiddenSize, 48);
    assert.equal(c.numLayers, 6);
    assert.equal(c.numHeads, 4);
    assert.equal(c.numKvHeads, 2);
    assert.equal(c.headDim, 16, 'head_dim key wins over hidden/heads = 12');
    assert.equal(c.rotaryDim, 8, 'rotary_dim');
    assert.equal(c.ropeTheta, 10000);
    assert.equal(c.intermediateSize, 32);
    assert.equal(c.numExperts, 8);
    assert.equal(c.numExpertsPerTok, 2);
    assert.equal(c.rmsNormEps, 1e-5);
    assert.equal(c.lightningNormEps, 1e-6);
    assert.equal(c.blockSize, 256, 'the original layout has no block_size key: module constant 256');
    assert.deepEqual(c.layerTypes, TINY_KINDS);
    assert.deepEqual(c.alpha, { lightning: ALPHA_TINY, softmax: ALPHA_TINY, mlp: ALPHA_TINY });
    assert.deepEqual(c.beta, { lightning: 1, softmax: 1, mlp: 1 });
    assert.equal(c.tieWordEmbeddings, false);
    assert.deepEqual(c.eosTokenIds, [3]);
    assert.equal(c.bosTokenId, 2);
    assert.equal(c.maxPositionEmbeddings, 10_240_000);
  }
  assert.equal(parse('tiny/config.json').dtype, 'float32');
  assert.equal(parse('tiny-bf16/config.json').dtype, 'bfloat16');
});

test('tiny-hf (native layout): layer_types, per-branch α/β, rope_parameters, whole-head rotary', () => {
  const c = parse(TINY_HF);
  assert.equal(c.layout, 'native');
  assert.equal(c.modelType, 'minimax');
  assert.deepEqual(c.layerTypes, TINY_KINDS);
  assert.deepEqual(c.alpha, { lightning: 1.5, softmax: 2.0, mlp: 1.3 });
  assert.deepEqual(c.beta, { lightning: 0.75, softmax: 1.25, mlp: 0.9 });
  assert.equal(c.headDim, 16);
  assert.equal(c.rotaryDim, 16, 'no rotary key anywhere ⇒ the whole head');
  assert.equal(c.ropeTheta, 10000, 'rope_parameters.rope_theta');
  assert.equal(c.blockSize, 256);
  assert.equal(c.numKvHeads, 2);
  assert.equal(c.maxPositionEmbeddings, 131072);
  assert.equal(c.dtype, 'float32', 'native "dtype" key');
  assert.deepEqual(c.eosTokenIds, [3]);
});

test('small-d128: real head geometry, θ = 1e7, layers [0,0,0,1]', () => {
  const c = parse('small-d128/config.json');
  assert.equal(c.headDim, 128);
  assert.equal(c.rotaryDim, 64);
  assert.equal(c.ropeTheta, 1e7);
  assert.equal(c.hiddenSize, 256);
  assert.deepEqual(c.layerTypes, ['lightning', 'lightning', 'lightning', 'softmax']);
  assert.equal(c.alpha.mlp, 1.681792830507429);
});

// ---------------------------------------------------------------------------------------------------------------
// Released configs
// ---------------------------------------------------------------------------------------------------------------

function checkReal(c: ModelConfig): void {
  assert.equal(c.vocabSize, 200064);
  assert.equal(c.hiddenSize, 6144);
  assert.equal(c.numLayers, 80);
  assert.equal(c.numHeads, 64);
  assert.equal(c.numKvHeads, 8);
  assert.equal(c.headDim, 128);
  assert.equal(c.rotaryDim, 64);
  assert.equal(c.ropeTheta, 10_000_000);
  assert.equal(c.intermediateSize, 9216);
  assert.equal(c.numExperts, 32);
  assert.equal(c.numExpertsPerTok, 2);
  assert.equal(c.blockSize, 256);
  assert.equal(c.layerTypes.length, 80);
  c.layerTypes.forEach((k, l) => assert.equal(k, (l + 1) % 8 === 0 ? 'softmax' : 'lightning', `layer ${l}`));
  assert.equal(c.layerTypes.filter((k) => k === 'softmax').length, 10);
  assert.deepEqual(c.alpha, { lightning: ALPHA_REAL, softmax: ALPHA_REAL, mlp: ALPHA_REAL });
  assert.deepEqual(c.beta, { lightning: 1, softmax: 1, mlp: 1 });
  assert.equal(c.tieWordEmbeddings, false);
  assert.equal(c.maxPositionEmbeddings, 10_240_000);
  assert.equal(c.dtype, 'bfloat16');
}

test('MiniMax-Text-01 and MiniMax-M1 (original layout): rotary_dim 64, rope_theta, eos null', () => {
  const t = parse(REAL.text01);
  const m = parse(REAL.m1);
  checkReal(t);
  checkReal(m);
  assert.equal(t.layout, 'original');
  assert.equal(m.layout, 'original');
  assert.equal(t.modelType, 'minimax_text_01');
  assert.equal(m.modelType, 'minimax_m1');
  assert.deepEqual(m.architectures, ['MiniMaxM1ForCausalLM']);
  assert.deepEqual(t.eosTokenIds, [], 'eos_token_id null ⇒ no ids');
  assert.equal(t.bosTokenId, undefined);
});

test('MiniMax-Text-01-hf (native layout): rotary 64 from rope_parameters.partial_rotary_factor 0.5', () => {
  const c = parse(REAL.text01hf);
  checkReal(c);
  assert.equal(c.layout, 'native');
  assert.equal(c.modelType, 'minimax');
  assert.deepEqual(c.eosTokenIds, [], 'no eos_token_id key');
});

test('the three released configs describe the same model', () => {
  const strip = (c: ModelConfig) => ({ ...c, modelType: '', layout: '', architectures: [] });
  assert.deepEqual(strip(parse(REAL.m1)), strip(parse(REAL.text01)));
  assert.deepEqual(strip(parse(REAL.text01hf)), strip(parse(REAL.text01)));
});

// ---------------------------------------------------------------------------------------------------------------
// Resolution rules and defaults
// ---------------------------------------------------------------------------------------------------------------

test('head_dim absent ⇒ hidden_size / num_attention_heads (also null)', () => {
  // tiny: 48 / 4 = 12; rotary_dim 8 still fits.
  assert.equal(parse(TINY, { head_dim: undefined }).headDim, 12);
  assert.equal(parse(TINY, { head_dim: null }).headDim, 12);
  const hf = parse(TINY_HF, { head_dim: undefined });
  assert.equal(hf.headDim, 12);
  assert.equal(hf.rotaryDim, 12, 'whole head of the derived head_dim');
  // Real: 6144 / 64 = 96 when head_dim is dropped (not the released 128: the key matters).
  assert.equal(parse(REAL.text01, { head_dim: undefined }).headDim, 96);
});

test('num_key_value_heads absent ⇒ num_attention_heads', () => {
  assert.equal(parse(TINY, { num_key_value_heads: undefined }).numKvHeads, 4);
  assert.equal(parse(TINY_HF, { num_key_value_heads: undefined }).numKvHeads, 4);
});

test('num_experts is accepted as an alias of num_local_experts', () => {
  assert.equal(parse(TINY, { num_local_experts: undefined, num_experts: 8 }).numExperts, 8);
});

test('eos_token_id: a list, a number, null or absent', () => {
  assert.deepEqual(parse(TINY, { eos_token_id: [3, 7] }).eosTokenIds, [3, 7]);
  assert.deepEqual(parse(TINY, { eos_token_id: 5 }).eosTokenIds, [5]);
  assert.deepEqual(parse(TINY, { eos_token_id: null }).eosTokenIds, []);
  assert.deepEqual(parse(TINY, { eos_token_id: undefined }).eosTokenIds, []);
  assert.equal(parse(TINY, { bos_token_id: [9, 10] }).bosTokenId, 9);
});

test('rope_theta: top level (original and v4.53 native) or rope_parameters (v5)', () => {
  assert.equal(parse(TINY, { rope_theta: 500000 }).ropeTheta, 500000);
  assert.equal(parse(TINY_HF, { rope_parameters: undefined, rope_theta: 123456 }).ropeTheta, 123456);
  assert.equal(parse(TINY_HF, { rope_parameters: { rope_theta: 7777, rope_type: 'default' } }).ropeTheta, 7777);
  assert.equal(parse(TINY_HF, { rope_parameters: { rope_theta: 7777 } }).ropeTheta, 7777, 'rope_type absent means default');
  assert.equal(parse(REAL.text01hf).ropeTheta, 1e7);
});

test('rotary dims: rotary_dim, else partial_rotary_factor (top level or rope_parameters) × head_dim, else head_dim', () => {
  // Top-level partial_rotary_factor, both layouts.
  assert.equal(parse(TINY_HF, { partial_rotary_factor: 0.5 }).rotaryDim, 8);
  assert.equal(parse(TINY, { rotary_dim: undefined, partial_rotary_factor: 0.25 }).rotaryDim, 4);
  // Inside rope_parameters.
  assert.equal(parse(TINY_HF, { rope_parameters: { rope_theta: 1e4, rope_type: 'default', partial_rotary_factor: 0.5 } }).rotaryDim, 8);
  // rotary_dim is honoured in a native config (transformers ignores it; the project does not), even over a factor.
  assert.equal(parse(TINY_HF, { rotary_dim: 8 }).rotaryDim, 8);
  assert.equal(parse(TINY_HF, { rotary_dim: 4, partial_rotary_factor: 1.0 }).rotaryDim, 4);
  // rotary_dim null counts as absent.
  assert.equal(parse(TINY, { rotary_dim: null }).rotaryDim, 16);
  // Original layout without any rotary key: whole head.
  assert.equal(parse(TINY, { rotary_dim: undefined }).rotaryDim, 16);
  // The real native config without its factor would rotate the whole head.
  assert.equal(parse(REAL.text01hf, { rope_parameters: { rope_theta: 1e7, rope_type: 'default' } }).rotaryDim, 128);
});

test('block_size: read in the native layout, 256 otherwise', () => {
  assert.equal(parse(TINY_HF, { block_size: 64 }).blockSize, 64);
  assert.equal(parse(TINY_HF, { block_size: undefined }).blockSize, 256);
  assert.equal(parse(TINY).blockSize, 256);
});

test('missing α/β keys default to 1; the layer-list key decides the layout, not model_type', () => {
  const c = parse(TINY_HF, { mlp_alpha_factor: undefined, full_attn_beta_factor: undefined });
  assert.equal(c.alpha.mlp, 1);
  assert.equal(c.beta.softmax, 1);
  assert.equal(c.alpha.lightning, 1.5);
  // model_type "minimax" with attn_type_list is read with the original keys (the -hf repos keep config keys mixed).
  const o = parse(TINY, { model_type: 'minimax' });
  assert.equal(o.layout, 'original');
  assert.equal(o.alpha.lightning, ALPHA_TINY);
  assert.equal(parse(TINY, { model_type: 'MiniMaxText01' }).modelType, 'MiniMaxText01');
});

test('harmless settings are accepted: shared_intermediate_size 0, sliding_window / rope_scaling null, hidden_act absent', () => {
  const c = parse(TINY, { shared_intermediate_size: 0, sliding_window: null, rope_scaling: null, hidden_act: undefined });
  assert.equal(c.hiddenSize, 48);
});

// ---------------------------------------------------------------------------------------------------------------
// Errors: each is a one-line ConfigError naming the field
// ---------------------------------------------------------------------------------------------------------------

/** Asserts that parsing throws a one-line ConfigError whose message contains every `needle`. */
function rejects(input: unknown, needles: readonly (string | RegExp)[], field?: string): ConfigError {
  let caught: unknown;
  try {
    parseModelConfig(input);
  } catch (e) {
    caught = e;
  }
  assert.ok(caught !== undefined, `expected a ConfigError for ${JSON.stringify(input)?.slice(0, 120)}`);
  assert.ok(caught instanceof ConfigError, `expected ConfigError, got ${String(caught)}`);
  const msg = caught.message;
  assert.equal(caught.code, 'CONFIG');
  assert.doesNotMatch(msg, /[\r\n]/, `one line: ${JSON.stringify(msg)}`);
  assert.ok(msg.length < 400, `short: ${msg}`);
  assert.ok(msg.startsWith('config.json: '), `names the file: ${msg}`);
  for (const n of needles) {
    if (typeof n === 'string') assert.ok(msg.includes(n), `message should contain ${JSON.stringify(n)}: ${msg}`);
    else assert.match(msg, n);
  }
  if (field !== undefined) assert.equal(caught.field, field, `field of: ${msg}`);
  return caught;
}

test('error: not a JSON object', () => {
  rejects([], ['expected a JSON object', 'array']);
  rejects(null, ['expected a JSON object', 'null']);
  rejects('minimax', ['expected a JSON object', 'string']);
  rejects(42, ['expected a JSON object', 'number']);
});

test('error: model_type missing or unknown lists the allowed values', () => {
  const allowed = ['minimax_text_01', 'MiniMaxText01', 'minimax_m1', 'minimax'];
  rejects(variant(TINY, { model_type: undefined }), ['model_type', ...allowed], 'model_type');
  rejects(variant(TINY, { model_type: 7 }), ['model_type', ...allowed], 'model_type');
  rejects(variant(TINY, { model_type: 'mixtral' }), ['model_type', '"mixtral"', ...allowed], 'model_type');
});

test('error: neither attn_type_list nor layer_types', () => {
  rejects(variant(TINY, { attn_type_list: undefined }), ['attn_type_list', 'layer_types']);
  rejects(variant(TINY_HF, { layer_types: undefined }), ['attn_type_list', 'layer_types']);
});

test('error: layer list length ≠ num_hidden_layers', () => {
  rejects(variant(TINY, { attn_type_list: [0, 0, 1] }), ['attn_type_list', '3 entries', 'num_hidden_layers = 6'], 'attn_type_list');
  rejects(variant(TINY, { num_hidden_layers: 7 }), ['attn_type_list', '6 entries', 'num_hidden_layers = 7'], 'attn_type_list');
  rejects(variant(TINY_HF, { layer_types: ['linear_attention'] }), ['layer_types', '1 entries', 'num_hidden_layers = 6'], 'layer_types');
});

test('error: a bad layer-kind value', () => {
  rejects(variant(TINY, { attn_type_list: [0, 0, 2, 0, 0, 1] }), ['attn_type_list.2', '(got 2)'], 'attn_type_list.2');
  rejects(variant(TINY, { attn_type_list: [0, 0, '1', 0, 0, 1] }), ['attn_type_list.2']);
  rejects(variant(TINY, { attn_type_list: 'all' }), ['attn_type_list']);
  rejects(variant(TINY_HF, { layer_types: ['linear_attention', 'linear_attention', 'sliding_attention', 'x', 'y', 'z'] }), [
    'layer_types.2',
    'sliding_attention',
  ]);
});

test('error: non-integer, negative, zero, string or huge sizes', () => {
  rejects(variant(TINY, { hidden_size: -3 }), ['"hidden_size"', '-3'], 'hidden_size');
  rejects(variant(TINY, { hidden_size: 0 }), ['"hidden_size"', '(got 0)'], 'hidden_size');
  rejects(variant(TINY, { hidden_size: '48' }), ['"hidden_size"', '"48"'], 'hidden_size');
  rejects(variant(TINY, { hidden_size: 1e12 }), ['"hidden_size"', '1000000000000'], 'hidden_size');
  rejects(variant(TINY, { hidden_size: 48.5 }), ['"hidden_size"', '48.5'], 'hidden_size');
  rejects(variant(TINY, { hidden_size: undefined }), ['"hidden_size"', 'missing'], 'hidden_size');
  rejects(variant(TINY, { num_hidden_layers: 1e9 }), ['"num_hidden_layers"'], 'num_hidden_layers');
  rejects(variant(TINY, { vocab_size: 2 ** 40 }), ['"vocab_size"'], 'vocab_size');
  rejects(variant(TINY, { num_attention_heads: -1 }), ['"num_attention_heads"'], 'num_attention_heads');
  rejects(variant(TINY, { intermediate_size: 1e12 }), ['"intermediate_size"'], 'intermediate_size');
  rejects(variant(TINY, { num_local_experts: 0 }), ['"num_local_experts"'], 'num_local_experts');
  rejects(variant(TINY, { head_dim: 3.5 }), ['"head_dim"'], 'head_dim');
  rejects(variant(TINY, { rms_norm_eps: -1 }), ['"rms_norm_eps"'], 'rms_norm_eps');
  rejects(variant(TINY, { max_position_embeddings: 2 ** 60 }), ['"max_position_embeddings"'], 'max_position_embeddings');
  rejects(variant(TINY_HF, { block_size: 0 }), ['"block_size"'], 'block_size');
  rejects(variant(TINY, { num_local_experts: undefined }), ['num_local_experts', 'missing'], 'num_local_experts');
});

test('error: no head_dim and hidden_size not a multiple of the heads', () => {
  rejects(variant(TINY, { head_dim: undefined, hidden_size: 50 }), ['head_dim', 'hidden_size (50)', 'num_attention_heads (4)'], 'head_dim');
});

test('error: num_attention_heads not a multiple of num_key_value_heads', () => {
  rejects(variant(TINY, { num_key_value_heads: 3 }), ['num_attention_heads (4)', 'num_key_value_heads (3)'], 'num_key_value_heads');
  rejects(variant(TINY, { num_key_value_heads: 8 }), ['num_key_value_heads (8)'], 'num_key_value_heads');
});

test('error: num_experts_per_tok > num_local_experts', () => {
  rejects(variant(TINY, { num_experts_per_tok: 9 }), ['num_experts_per_tok (9)', 'num_local_experts (8)'], 'num_experts_per_tok');
  rejects(variant(TINY, { num_experts_per_tok: 0 }), ['"num_experts_per_tok"'], 'num_experts_per_tok');
});

test('error: odd rotary dims, rotary > head_dim, fractional partial rotary', () => {
  rejects(variant(TINY, { rotary_dim: 7 }), ['rotary_dim', 'even', 'got 7'], 'rotary_dim');
  rejects(variant(TINY, { rotary_dim: 32 }), ['rotary_dim', 'head_dim = 16', 'got 32'], 'rotary_dim');
  rejects(variant(TINY, { rotary_dim: 0 }), ['"rotary_dim"'], 'rotary_dim');
  rejects(variant(TINY_HF, { partial_rotary_factor: 0.3 }), ['partial_rotary_factor', '0.3', 'head_dim 16'], 'partial_rotary_factor');
  rejects(variant(TINY_HF, { partial_rotary_factor: 2 }), ['partial_rotary_factor', 'got 32'], 'partial_rotary_factor');
  rejects(variant(TINY_HF, { rope_parameters: { rope_theta: 1e4, partial_rotary_factor: 0.3125 } }), [
    'rope_parameters.partial_rotary_factor',
    'got 5',
  ]);
  rejects(variant(TINY_HF, { rope_parameters: { rope_theta: 1e4, partial_rotary_factor: 0.3125 } }), ['even'], 'rope_parameters.partial_rotary_factor');
  // Whole head of an odd head_dim.
  rejects(variant(TINY_HF, { head_dim: 15 }), ['head_dim', 'got 15'], 'head_dim');
});

test('error: postnorm false, or missing in the original layout', () => {
  rejects(variant(TINY, { postnorm: false }), ['postnorm', 'false'], 'postnorm');
  rejects(variant(TINY, { postnorm: undefined }), ['postnorm', 'missing'], 'postnorm');
  rejects(variant(TINY, { postnorm: 'true' }), ['"postnorm"'], 'postnorm');
  // The native layout has no postnorm key and is always post-norm.
  assert.equal(parse(TINY_HF).layout, 'native');
});

test('error: unsupported variants (shared expert, sliding window, RoPE scaling, rope_type, activation)', () => {
  rejects(variant(TINY, { shared_intermediate_size: 64 }), ['shared_intermediate_size', '64'], 'shared_intermediate_size');
  rejects(variant(TINY, { sliding_window: 4096 }), ['sliding_window', '4096'], 'sliding_window');
  rejects(variant(TINY, { rope_scaling: { type: 'linear', factor: 2 } }), ['rope_scaling'], 'rope_scaling');
  rejects(variant(TINY_HF, { rope_parameters: { rope_theta: 1e4, rope_type: 'yarn', factor: 4 } }), ['rope_type', '"yarn"'], 'rope_parameters.rope_type');
  rejects(variant(TINY, { hidden_act: 'gelu' }), ['hidden_act', '"gelu"'], 'hidden_act');
});

test('rope_theta absent everywhere ⇒ 1e6, the config classes\' default', () => {
  assert.equal(parse(TINY, { rope_theta: undefined }).ropeTheta, 1_000_000);
  assert.equal(parse(TINY_HF, { rope_parameters: undefined }).ropeTheta, 1_000_000);
  assert.equal(parse(TINY_HF, { rope_parameters: { rope_type: 'default' } }).ropeTheta, 1_000_000);
});

test('error: a non-positive RoPE base', () => {
  rejects(variant(TINY, { rope_theta: 0 }), ['"rope_theta"'], 'rope_theta');
  rejects(variant(TINY_HF, { rope_parameters: { rope_theta: -1 } }), ['"rope_parameters.rope_theta"'], 'rope_parameters.rope_theta');
});

test('error: bad eos_token_id and a long hostile value stay one short line', () => {
  rejects(variant(TINY, { eos_token_id: 'x' }), ['eos_token_id'], 'eos_token_id');
  rejects(variant(TINY, { eos_token_id: [-1] }), ['eos_token_id']);
  const e = rejects(variant(TINY, { hidden_size: 'a\nb'.repeat(500) }), ['"hidden_size"'], 'hidden_size');
  assert.ok(e.message.length < 200, e.message);
});

test('the file name given to parseModelConfig is used in messages', () => {
  assert.throws(() => parseModelConfig([], '/models/x/config.json'), (e: unknown) => e instanceof ConfigError && e.message.startsWith('/models/x/config.json: '));
});

// ---------------------------------------------------------------------------------------------------------------
// Sizes (MODEL.md §13–§14)
// ---------------------------------------------------------------------------------------------------------------

test('released configs: 456,089,655,296 parameters, 912,210,767,872 bytes in bf16, cache sizes', () => {
  for (const rel of Object.values(REAL)) {
    const c = parse(rel);
    const p = countParameters(c);
    assert.equal(p.lightning, 17_616_650_240, rel);
    assert.equal(p.softmax, 1_132_462_080, rel);
    assert.equal(p.experts, 434_865_438_720, rel);
    assert.equal(p.routers, 15_728_640, rel);
    assert.equal(p.embeddings, 2_458_386_432, rel);
    assert.equal(p.norms, 989_184, rel);
    assert.equal(p.total, 456_089_655_296, rel);
    assert.equal(p.activePerToken, 47_174_113_280, `${rel}: active per token including the LM head`);
    assert.equal(weightBytes(c, 'bf16'), 912_210_767_872, `${rel}: the index total_size (fp32 routers)`);
    assert.equal(weightBytes(c, 'bf16'), 2 * p.total + 31_457_280);
    assert.equal(weightBytes(c, 'f32'), 4 * p.total);
    const cs = cacheSizes(c);
    assert.equal(cs.lightningStateBytesPerSeq, 293_601_280, rel);
    assert.equal(cs.kvBytesPerToken, 40_960, rel);
  }
});

test('tied embeddings count the table once', () => {
  const untied = countParameters(parse(REAL.text01));
  const tied = countParameters(parse(REAL.text01, { tie_word_embeddings: true }));
  assert.equal(untied.total - tied.total, 200064 * 6144);
});

test("tiny: countParameters equals the number of elements in the fixture's checkpoint", async () => {
  for (const name of ['tiny', 'tiny-bf16', 'tiny-hf', 'small-d128']) {
    const ckpt = await Checkpoint.open(path.join(FIXTURES, name));
    try {
      let elems = 0;
      for (const t of ckpt.tensors.values()) elems += t.shape.reduce((a, d) => a * d, 1);
      const c = parse(`${name}/config.json`);
      assert.equal(countParameters(c).total, elems, name);
      if (name === 'tiny') assert.equal(weightBytes(c, 'f32'), [...ckpt.tensors.values()].reduce((a, t) => a + t.byteLength, 0));
      if (name === 'tiny-bf16') {
        assert.equal(weightBytes(c, 'bf16'), [...ckpt.tensors.values()].reduce((a, t) => a + t.byteLength, 0), 'bf16 with fp32 routers');
      }
    } finally {
      await ckpt.close();
    }
  }
});

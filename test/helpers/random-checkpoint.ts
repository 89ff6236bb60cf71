/**
 * Random MiniMax-01 checkpoints for tests: weights drawn from a seeded generator, rounded to the storage dtype in
 * float64 (so the float64 reference sees exactly what is stored), written as safetensors with a config.json in
 * either layout. Used by test/model/random-shapes.test.ts and test/gpu/long-context.test.ts.
 */
import type { TestContext } from 'node:test';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { writeSafetensors, type WriterTensor } from './safetensors-writer.js';
import { FIXTURES } from './paths.js';
import { resolveRefConfig, type RefConfig } from './reference64.js';

// ---------------------------------------------------------------------------------------------------------------
// Deterministic random numbers
// ---------------------------------------------------------------------------------------------------------------

export class Rand {
  private s: number;
  constructor(seed: number) {
    this.s = seed >>> 0;
  }
  /** mulberry32: uniform in [0, 1). */
  next(): number {
    let t = (this.s = (this.s + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  normal(): number {
    const u = 1 - this.next(), v = this.next();
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
  }
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Storage dtypes: values are rounded here (in float64, ties to even), so the reference sees exactly what is stored
// ---------------------------------------------------------------------------------------------------------------

export type DType = 'F32' | 'BF16' | 'F16';

/** x rounded to a binary float with `mant` fraction bits and minimum normal exponent `minExp` (no overflow handling: the values are small). */
export function roundTo(x: number, mant: number, minExp: number): number {
  if (x === 0 || !Number.isFinite(x)) return x;
  let e = Math.floor(Math.log2(Math.abs(x)));
  while (Math.pow(2, e) > Math.abs(x)) e--;
  while (Math.pow(2, e + 1) <= Math.abs(x)) e++;
  const ulp = Math.pow(2, Math.max(e, minExp) - mant);
  const q = x / ulp;
  let r = Math.round(q);
  if (Math.abs(q - Math.trunc(q)) === 0.5) r = 2 * Math.round(q / 2); // ties to even
  return r * ulp;
}

export function quantize(x: number, dtype: DType): number {
  if (dtype === 'F32') return Math.fround(x);
  if (dtype === 'BF16') return roundTo(x, 7, -126);
  return roundTo(x, 10, -14);
}

/** IEEE half bits of a value that is exactly representable as a half. */
export function f16Bits(q: number): number {
  const sign = q < 0 || Object.is(q, -0) ? 0x8000 : 0;
  const a = Math.abs(q);
  if (a === 0) return sign;
  if (a > 65504) throw new Error(`f16 overflow: ${q}`);
  if (a < Math.pow(2, -14)) return sign | (a / Math.pow(2, -24)); // subnormal
  let e = Math.floor(Math.log2(a));
  while (Math.pow(2, e) > a) e--;
  while (Math.pow(2, e + 1) <= a) e++;
  const m = (a / Math.pow(2, e) - 1) * 1024;
  if (!Number.isInteger(m)) throw new Error(`not a half: ${q}`);
  return sign | ((e + 15) << 10) | m;
}

export function toWriter(dtype: DType, shape: number[], values: Float64Array): WriterTensor {
  if (dtype === 'F16') {
    const bytes = new Uint8Array(values.length * 2);
    const dv = new DataView(bytes.buffer);
    values.forEach((v, i) => dv.setUint16(i * 2, f16Bits(v), true));
    return { dtype, shape, data: bytes };
  }
  // F32 and BF16 values are already representable, so the writer's float32 / bf16 conversion is exact.
  return { dtype, shape, data: Float32Array.from(values) };
}

// ---------------------------------------------------------------------------------------------------------------
// Checkpoint generator
// ---------------------------------------------------------------------------------------------------------------

export interface CaseSpec {
  readonly name: string;
  readonly seed: number;
  /** config.json as written (either layout). */
  readonly config: Record<string, unknown>;
  readonly dtype: DType;
  /** Write the MoE in the transformers v5 packed form (`mlp.gate.weight`, `mlp.experts.gate_up_proj`, `mlp.experts.down_proj`). */
  readonly packed?: boolean;
  /** Number of safetensors shards (> 1: with model.safetensors.index.json). */
  readonly shards?: number;
  readonly promptLength: number;
  /** Where the chunked-prefill check splits the prompt (0: one chunk). */
  readonly split: number;
  /** Greedy tokens to compare (default GEN_TOKENS). */
  readonly genTokens?: number;
}

export interface Built {
  readonly dir: string;
  readonly cfg: RefConfig;
  /** Original names → the stored values. */
  readonly weights: Map<string, Float64Array>;
  readonly prompt: number[];
}

export function build(spec: CaseSpec, t: TestContext): Built {
  const cfg = resolveRefConfig(spec.config as Record<string, any>);
  const rng = new Rand(spec.seed);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `lmoe-rand-${spec.name.replace(/[^a-z0-9]+/gi, '-')}-`));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));

  const weights = new Map<string, Float64Array>();
  const dtypes = new Map<string, DType>();
  const shapes = new Map<string, number[]>();
  const add = (name: string, shape: number[], gen: () => number, dtype: DType = spec.dtype): void => {
    const n = shape.reduce((a, b) => a * b, 1);
    const v = new Float64Array(n);
    for (let i = 0; i < n; i++) v[i] = quantize(gen(), dtype);
    weights.set(name, v);
    dtypes.set(name, dtype);
    shapes.set(name, shape);
  };
  const proj = (fanIn: number) => () => rng.normal() / Math.sqrt(fanIn);
  const norm = () => 1 + 0.1 * rng.normal();

  const { hiddenSize: D, numHeads: H, numKvHeads: KV, headDim: d, intermediateSize: I, numExperts: E, vocabSize: V } = cfg;
  add('model.embed_tokens.weight', [V, D], () => rng.normal());
  for (let l = 0; l < cfg.numLayers; l++) {
    const p = `model.layers.${l}`;
    add(`${p}.input_layernorm.weight`, [D], norm);
    if (cfg.layerTypes[l] === 'lightning') {
      add(`${p}.self_attn.qkv_proj.weight`, [3 * H * d, D], proj(D));
      add(`${p}.self_attn.output_gate.weight`, [H * d, D], proj(D));
      add(`${p}.self_attn.norm.weight`, [H * d], norm);
      add(`${p}.self_attn.out_proj.weight`, [D, H * d], proj(H * d));
    } else {
      add(`${p}.self_attn.q_proj.weight`, [H * d, D], proj(D));
      add(`${p}.self_attn.k_proj.weight`, [KV * d, D], proj(D));
      add(`${p}.self_attn.v_proj.weight`, [KV * d, D], proj(D));
      add(`${p}.self_attn.o_proj.weight`, [D, H * d], proj(H * d));
    }
    add(`${p}.post_attention_layernorm.weight`, [D], norm);
    add(`${p}.block_sparse_moe.gate.weight`, [E, D], proj(D), 'F32'); // routers stay fp32, as released
    for (let e = 0; e < E; e++) {
      add(`${p}.block_sparse_moe.experts.${e}.w1.weight`, [I, D], proj(D));
      add(`${p}.block_sparse_moe.experts.${e}.w3.weight`, [I, D], proj(D));
      add(`${p}.block_sparse_moe.experts.${e}.w2.weight`, [D, I], proj(I));
    }
  }
  add('model.norm.weight', [D], norm);
  if (!cfg.tieWordEmbeddings) add('lm_head.weight', [V, D], proj(D));

  // Tensors as written: original names, or the MoE packed per layer.
  const out = new Map<string, WriterTensor>();
  for (const [name, v] of weights) {
    const m = /^(model\.layers\.\d+)\.block_sparse_moe\.(.*)$/.exec(name);
    if (spec.packed && m) {
      if (m[2] !== 'gate.weight') continue;
      const p = m[1];
      out.set(`${p}.mlp.gate.weight`, toWriter('F32', [E, D], v));
      const gateUp = new Float64Array(E * 2 * I * D);
      const down = new Float64Array(E * D * I);
      for (let e = 0; e < E; e++) {
        gateUp.set(weights.get(`${p}.block_sparse_moe.experts.${e}.w1.weight`)!, (e * 2 * I) * D);
        gateUp.set(weights.get(`${p}.block_sparse_moe.experts.${e}.w3.weight`)!, (e * 2 * I + I) * D);
        down.set(weights.get(`${p}.block_sparse_moe.experts.${e}.w2.weight`)!, e * D * I);
      }
      out.set(`${p}.mlp.experts.gate_up_proj`, toWriter(spec.dtype, [E, 2 * I, D], gateUp));
      out.set(`${p}.mlp.experts.down_proj`, toWriter(spec.dtype, [E, D, I], down));
      continue;
    }
    out.set(name, toWriter(dtypes.get(name)!, shapes.get(name)!, v));
  }

  const shards = spec.shards ?? 1;
  if (shards === 1) {
    writeSafetensors(path.join(dir, 'model.safetensors'), out);
  } else {
    const names = [...out.keys()];
    const weightMap: Record<string, string> = {};
    let total = 0;
    for (let s = 0; s < shards; s++) {
      const file = `model-${String(s + 1).padStart(5, '0')}-of-${String(shards).padStart(5, '0')}.safetensors`;
      const part = new Map<string, WriterTensor>();
      names.slice(Math.floor((s * names.length) / shards), Math.floor(((s + 1) * names.length) / shards)).forEach((n) => {
        part.set(n, out.get(n)!);
        weightMap[n] = file;
        const t = out.get(n)!;
        total += t.shape.reduce((a, b) => a * b, 1) * (t.dtype === 'F32' ? 4 : 2);
      });
      writeSafetensors(path.join(dir, file), part);
    }
    fs.writeFileSync(path.join(dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: { total_size: total }, weight_map: weightMap }, null, 2));
  }
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(spec.config, null, 2));
  if (V >= 1024) {
    for (const f of ['tokenizer.json', 'tokenizer_config.json']) fs.copyFileSync(path.join(FIXTURES, 'tiny', f), path.join(dir, f));
  }
  const prompt = Array.from({ length: spec.promptLength }, () => rng.int(V));
  return { dir, cfg, weights, prompt };
}


/**
 * The trainable parameters of a MiniMax-01 model, one tensor per checkpoint slot, with their gradients and AdamW
 * moments. Experts are packed per layer as w13 [E, 2I, D] and w2 [E, D, I] (as the inference engine keeps them);
 * the checkpoint writer splits them back into the original layout's per-expert w1 / w3 / w2.
 */

import type { ModelConfig } from '../config/config.js';
import { lightningSlopes } from '../model/slopes.js';
import type { TrainBackend, TTensor } from './backend.js';

export interface LayerParams {
  readonly inputNorm: TTensor; // [D]
  readonly postNorm: TTensor; // [D]
  readonly attn:
    | { readonly kind: 'lightning'; readonly qkv: TTensor; readonly gate: TTensor; readonly norm: TTensor; readonly out: TTensor }
    | { readonly kind: 'softmax'; readonly q: TTensor; readonly k: TTensor; readonly v: TTensor; readonly o: TTensor };
  readonly router: TTensor; // [E, D]
  readonly w13: TTensor; // [E, 2I, D]
  readonly w2: TTensor; // [E, D, I]
}

export interface ModelParams {
  readonly embed: TTensor; // [V, D]
  readonly finalNorm: TTensor; // [D]
  readonly lmHead: TTensor; // [V, D] (the embedding itself when tied)
  readonly layers: readonly LayerParams[];
}

/** One named parameter: its slot key (`embed`, `layers.3.qkv`, …), shape, and how it is initialised. */
export interface ParamSpec {
  readonly key: string;
  readonly shape: readonly number[];
  /** 'ones' for norm weights; otherwise a normal distribution with this standard deviation. */
  readonly init: 'ones' | number;
  /** Norm weights and the like: excluded from weight decay. */
  readonly noDecay: boolean;
}

/**
 * The parameter list of a config, in a fixed order (the order of the checkpoint, the optimiser state and the
 * gradient-norm sum). Linear weights start at N(0, std); the projections that write into the residual stream
 * (attention out/o, expert w2) are scaled down by DeepNet's (8L)^(−1/4), matching the α = (2L)^(1/4) residual
 * scaling that MiniMax-01's postnorm uses.
 */
export function paramSpecs(c: ModelConfig, std = 0.02): ParamSpec[] {
  const D = c.hiddenSize, V = c.vocabSize, E = c.numExperts, I = c.intermediateSize;
  const Hd = c.numHeads * c.headDim, KVd = c.numKvHeads * c.headDim;
  const outStd = std * (8 * c.numLayers) ** -0.25;
  const specs: ParamSpec[] = [];
  const add = (key: string, shape: number[], init: 'ones' | number): void => {
    specs.push({ key, shape, init, noDecay: init === 'ones' });
  };
  add('embed', [V, D], std);
  for (let l = 0; l < c.numLayers; l++) {
    const p = `layers.${l}.`;
    add(p + 'inputNorm', [D], 'ones');
    add(p + 'postNorm', [D], 'ones');
    if (c.layerTypes[l] === 'lightning') {
      add(p + 'qkv', [3 * Hd, D], std);
      add(p + 'gate', [Hd, D], std);
      add(p + 'norm', [Hd], 'ones');
      add(p + 'out', [D, Hd], outStd);
    } else {
      add(p + 'q', [Hd, D], std);
      add(p + 'k', [KVd, D], std);
      add(p + 'v', [KVd, D], std);
      add(p + 'o', [D, Hd], outStd);
    }
    add(p + 'router', [E, D], std);
    add(p + 'w13', [E, 2 * I, D], std);
    add(p + 'w2', [E, D, I], outStd);
  }
  add('finalNorm', [D], 'ones');
  if (!c.tieWordEmbeddings) add('lmHead', [V, D], std);
  return specs;
}

/** A deterministic normal generator (xorshift128+ → Box–Muller), so a seed gives the same model everywhere. */
export class NormalRng {
  private s0: bigint;
  private s1: bigint;
  private spare: number | undefined;
  constructor(seed: number) {
    // splitmix64 expands the seed into the two state words.
    let z = BigInt.asUintN(64, BigInt(seed) + 0x9e3779b97f4a7c15n);
    const next = (): bigint => {
      z = BigInt.asUintN(64, z + 0x9e3779b97f4a7c15n);
      let x = z;
      x = BigInt.asUintN(64, (x ^ (x >> 30n)) * 0xbf58476d1ce4e5b9n);
      x = BigInt.asUintN(64, (x ^ (x >> 27n)) * 0x94d049bb133111ebn);
      return x ^ (x >> 31n);
    };
    this.s0 = next();
    this.s1 = next() | 1n;
  }

  /** Uniform in (0, 1). */
  uniform(): number {
    let x = this.s0;
    const y = this.s1;
    this.s0 = y;
    x ^= BigInt.asUintN(64, x << 23n);
    this.s1 = x ^ y ^ (x >> 17n) ^ (y >> 26n);
    const r = BigInt.asUintN(64, this.s1 + y) >> 11n; // 53 bits
    return (Number(r) + 0.5) / 2 ** 53;
  }

  normal(): number {
    if (this.spare !== undefined) {
      const s = this.spare;
      this.spare = undefined;
      return s;
    }
    const u = this.uniform(), v = this.uniform();
    const r = Math.sqrt(-2 * Math.log(u));
    this.spare = r * Math.sin(2 * Math.PI * v);
    return r * Math.cos(2 * Math.PI * v);
  }
}

/** Initial values of every parameter, in spec order (float64 on the host). */
export function initialValues(specs: readonly ParamSpec[], seed: number): Float64Array[] {
  const rng = new NormalRng(seed);
  return specs.map((s) => {
    const n = s.shape.reduce((a, b) => a * b, 1);
    const a = new Float64Array(n);
    if (s.init === 'ones') a.fill(1);
    else for (let i = 0; i < n; i++) a[i] = rng.normal() * s.init;
    return a;
  });
}

/** Parameters (or gradients, or moments) on a backend: one tensor per spec, plus the model's structured view. */
export class ParamSet {
  readonly tensors: readonly TTensor[];
  readonly model: ModelParams;

  constructor(
    readonly backend: TrainBackend,
    readonly config: ModelConfig,
    readonly specs: readonly ParamSpec[],
    values?: readonly (Float64Array | Float32Array)[],
  ) {
    this.tensors = specs.map((s, i) => (values ? backend.upload(s.shape, 'float', values[i]) : backend.zeros(s.shape, 'float')));
    const byKey = new Map(specs.map((s, i) => [s.key, this.tensors[i]]));
    const get = (k: string): TTensor => byKey.get(k)!;
    this.model = {
      embed: get('embed'),
      finalNorm: get('finalNorm'),
      lmHead: config.tieWordEmbeddings ? get('embed') : get('lmHead'),
      layers: config.layerTypes.map((kind, l) => {
        const p = `layers.${l}.`;
        return {
          inputNorm: get(p + 'inputNorm'),
          postNorm: get(p + 'postNorm'),
          attn: kind === 'lightning'
            ? { kind, qkv: get(p + 'qkv'), gate: get(p + 'gate'), norm: get(p + 'norm'), out: get(p + 'out') }
            : { kind, q: get(p + 'q'), k: get(p + 'k'), v: get(p + 'v'), o: get(p + 'o') },
          router: get(p + 'router'),
          w13: get(p + 'w13'),
          w2: get(p + 'w2'),
        };
      }),
    };
  }

  zero(): void {
    for (const t of this.tensors) this.backend.fillZero(t);
  }

  /** Host copies, in spec order. */
  read(): Float64Array[] {
    return this.tensors.map((t) => this.backend.read(t));
  }

  free(): void {
    for (const t of this.tensors) this.backend.free(t);
  }
}

/** The per-layer decay rates as backend tensors (MODEL.md §8.3; not trained). */
export function slopeTensors(backend: TrainBackend, c: ModelConfig): (TTensor | undefined)[] {
  return c.layerTypes.map((kind, l) => (kind === 'lightning' ? backend.upload([c.numHeads], 'float', lightningSlopes(c.numHeads, l, c.numLayers)) : undefined));
}

/**
 * Token sampling from one row of logits: greedy (temperature 0), or temperature → top-k → top-p (nucleus) → a draw
 * from a seeded PRNG, so the same seed gives the same tokens. Runs on the host over fp32 logits.
 */

import { InvalidArgumentError } from '../util/errors.js';

export interface SamplingParams {
  /** 0 = greedy (argmax, ties to the lower id). Default 1. Range [0, 100]. */
  readonly temperature?: number;
  /** Keep the k most likely tokens; 0 disables. Default 0. */
  readonly topK?: number;
  /** Keep the smallest set of tokens whose probability reaches p; 1 disables. Range (0, 1]. Default 1. */
  readonly topP?: number;
  /** PRNG seed; the same seed (with the same inputs) gives the same output. Default: random. */
  readonly seed?: number;
}

/** xoshiro128** — small, fast, and good enough for sampling; seeded through splitmix32. */
export class Rng {
  private s0: number;
  private s1: number;
  private s2: number;
  private s3: number;

  constructor(seed: number) {
    // Low and high 32 bits seed separate halves of the state: every safe-integer seed gives its own stream
    // (splitmix32's first output is a bijection of its start value).
    const lo = seed >>> 0;
    const hi = Math.floor(seed / 2 ** 32) >>> 0;
    const splitmix = (start: number): (() => number) => {
      let x = start | 0;
      return () => {
        x = (x + 0x9e3779b9) | 0;
        let z = x;
        z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
        z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
        return (z ^ (z >>> 16)) >>> 0;
      };
    };
    const a = splitmix(lo), b = splitmix(hi ^ 0x6a09e667);
    this.s0 = a();
    this.s1 = a();
    this.s2 = b();
    this.s3 = b();
  }

  /** Uniform in [0, 1). */
  next(): number {
    const result = Math.imul(rotl(Math.imul(this.s1, 5), 7), 9) >>> 0;
    const t = this.s1 << 9;
    this.s2 ^= this.s0;
    this.s3 ^= this.s1;
    this.s1 ^= this.s2;
    this.s0 ^= this.s3;
    this.s2 ^= t;
    this.s3 = rotl(this.s3, 11);
    return result / 2 ** 32;
  }
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}

export function validateSampling(p: SamplingParams): void {
  const { temperature, topK, topP, seed } = p;
  if (temperature !== undefined && !(Number.isFinite(temperature) && temperature >= 0 && temperature <= 100)) {
    throw new InvalidArgumentError(`temperature must be a number in [0, 100], got ${temperature}`, { param: 'temperature' });
  }
  if (topK !== undefined && !(Number.isInteger(topK) && topK >= 0)) {
    throw new InvalidArgumentError(`topK must be an integer ≥ 0 (0 disables), got ${topK}`, { param: 'topK' });
  }
  if (topP !== undefined && !(Number.isFinite(topP) && topP > 0 && topP <= 1)) {
    throw new InvalidArgumentError(`topP must be in (0, 1], got ${topP}`, { param: 'topP' });
  }
  if (seed !== undefined && !Number.isSafeInteger(seed)) {
    throw new InvalidArgumentError(`seed must be an integer, got ${seed}`, { param: 'seed' });
  }
}

export function argmax(logits: Float32Array, offset = 0, n = logits.length - offset): number {
  let best = 0;
  let bestV = -Infinity;
  for (let i = 0; i < n; i++) {
    const v = logits[offset + i];
    if (v > bestV) {
      bestV = v;
      best = i;
    }
  }
  return best;
}

/** Candidates tried first for top-p sampling over a large vocabulary. */
const FAST_NUCLEUS = 512;

/** Samples one token id from logits[offset, offset + n). */
export class Sampler {
  private readonly rng: Rng;
  private readonly temperature: number;
  private readonly topK: number;
  private readonly topP: number;
  private order = new Int32Array(0);
  private probs = new Float64Array(0);

  constructor(params: SamplingParams) {
    validateSampling(params);
    this.temperature = params.temperature ?? 1;
    this.topK = params.topK ?? 0;
    this.topP = params.topP ?? 1;
    this.rng = new Rng(params.seed ?? Math.floor(Math.random() * 2 ** 32));
  }

  get greedy(): boolean {
    return this.temperature === 0 || this.topK === 1;
  }

  sample(logits: Float32Array, offset = 0, n = logits.length - offset): number {
    if (this.greedy) return argmax(logits, offset, n);
    if (this.order.length < n) {
      this.order = new Int32Array(n);
      this.probs = new Float64Array(n);
    }
    const invT = 1 / this.temperature;
    const max = logits[offset + argmax(logits, offset, n)];
    const probs = this.probs;
    if (this.topK === 0 && this.topP >= 1) {
      // Plain temperature sampling: no ordering needed.
      let sum = 0;
      for (let i = 0; i < n; i++) sum += probs[i] = Math.exp((logits[offset + i] - max) * invT);
      return this.draw(probs, null, n, sum);
    }
    if (this.topK === 0 && n > 8 * FAST_NUCLEUS) {
      // Top-p alone over a large vocabulary: the nucleus is almost always within the few hundred most likely tokens,
      // so try those (a heap, O(n log m)) before sorting the whole vocabulary.
      let total = 0;
      for (let i = 0; i < n; i++) total += Math.exp((logits[offset + i] - max) * invT);
      const order = topIndices(logits, offset, n, FAST_NUCLEUS, this.order);
      const target = this.topP * total * (1 - 1e-6);
      let cum = 0;
      for (let i = 0; i < FAST_NUCLEUS; i++) {
        cum += probs[i] = Math.exp((logits[offset + order[i]] - max) * invT);
        if (cum >= target) return this.draw(probs, order, i + 1, cum);
      }
    }
    // Candidates in descending logit order (ties to the lower id): the top k, or all tokens for top-p alone.
    const m0 = this.topK > 0 ? Math.min(this.topK, n) : n;
    const order = topIndices(logits, offset, n, m0, this.order);
    let sum = 0;
    for (let i = 0; i < m0; i++) sum += probs[i] = Math.exp((logits[offset + order[i]] - max) * invT);
    let m = m0;
    if (this.topP < 1) {
      // A relative slack of 1e-6 absorbs the f32 rounding of the logits, so that a prefix whose mass is exactly p
      // counts as reaching it whatever constant the logits are shifted by (softmax is shift-invariant).
      const target = this.topP * sum * (1 - 1e-6);
      let cum = 0;
      for (let i = 0; i < m0; i++) {
        cum += probs[i];
        if (cum >= target) {
          m = i + 1;
          break;
        }
      }
      sum = 0;
      for (let i = 0; i < m; i++) sum += probs[i];
    }
    return this.draw(probs, order, m, sum);
  }

  private draw(probs: Float64Array, order: Int32Array | null, m: number, sum: number): number {
    const u = this.rng.next() * sum;
    let acc = 0;
    for (let i = 0; i < m; i++) {
      acc += probs[i];
      if (u < acc) return order ? order[i] : i;
    }
    return order ? order[m - 1] : m - 1;
  }
}

/**
 * The indices of the m largest logits in descending order (ties to the lower id), written to out[0, m).
 * A bounded min-heap keeps this O(n log m) for small m; m = n falls back to a full sort.
 */
export function topIndices(logits: Float32Array, offset: number, n: number, m: number, out: Int32Array): Int32Array {
  const better = (a: number, b: number): boolean => {
    const va = logits[offset + a], vb = logits[offset + b];
    return va > vb || (va === vb && a < b);
  };
  if (m * 8 >= n) {
    const all = out.subarray(0, n);
    for (let i = 0; i < n; i++) all[i] = i;
    all.sort((a, b) => (better(a, b) ? -1 : better(b, a) ? 1 : 0));
    return out.subarray(0, m);
  }
  // heap[0] is the worst of the kept candidates
  const heap = out.subarray(0, m);
  let size = 0;
  const siftDown = (i: number): void => {
    for (;;) {
      const l = 2 * i + 1, r = l + 1;
      let w = i;
      if (l < size && better(heap[w], heap[l])) w = l;
      if (r < size && better(heap[w], heap[r])) w = r;
      if (w === i) return;
      [heap[i], heap[w]] = [heap[w], heap[i]];
      i = w;
    }
  };
  for (let i = 0; i < n; i++) {
    if (size < m) {
      heap[size] = i;
      let j = size++;
      while (j > 0) {
        const p = (j - 1) >> 1;
        if (!better(heap[p], heap[j])) break;
        [heap[p], heap[j]] = [heap[j], heap[p]];
        j = p;
      }
    } else if (better(i, heap[0])) {
      heap[0] = i;
      siftDown(0);
    }
  }
  heap.sort((a, b) => (better(a, b) ? -1 : better(b, a) ? 1 : 0));
  return heap;
}

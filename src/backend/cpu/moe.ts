/**
 * CPU mixture of experts (MODEL.md §10): fp32 router softmax over all experts → top-K → renormalise, then SwiGLU
 * experts over the tokens routed to each, combined with the routing weights.
 */

import { matmulNT } from './matmul.js';

/** logits [T, E] → indices/weights [T, K]. Ties go to the lower expert id. */
export function moeRoute(indices: Int32Array, weights: Float32Array, logits: Float32Array, T: number, E: number, K: number): void {
  const p = new Float64Array(E);
  for (let t = 0; t < T; t++) {
    const row = t * E;
    let max = -Infinity;
    for (let e = 0; e < E; e++) if (logits[row + e] > max) max = logits[row + e];
    let sum = 0;
    for (let e = 0; e < E; e++) {
      p[e] = Math.exp(logits[row + e] - max);
      sum += p[e];
    }
    // fp32 probabilities, as the reference's softmax output
    for (let e = 0; e < E; e++) p[e] = Math.fround(p[e] / sum);
    let total = 0;
    for (let k = 0; k < K; k++) {
      let best = -1;
      for (let e = 0; e < E; e++) {
        if (p[e] < 0) continue; // taken
        if (best < 0 || p[e] > p[best]) best = e;
      }
      indices[t * K + k] = best;
      weights[t * K + k] = p[best];
      total += p[best];
      p[best] = -1;
    }
    const denom = Math.fround(total);
    for (let k = 0; k < K; k++) weights[t * K + k] = Math.fround(weights[t * K + k] / denom);
  }
}

export interface MoeScratch {
  f32(name: string, size: number): Float32Array;
  i32(name: string, size: number): Int32Array;
  f64(name: string, size: number): Float64Array;
}

/**
 * out[t] = Σ_k w[t,k] · FFN_{idx[t,k]}(x[t]). Experts run in ascending id order over the rows routed to them, so each
 * token's contributions are summed in ascending expert order (the reference's order).
 */
export function moeExperts(
  out: Float32Array, x: Float32Array, indices: Int32Array, weights: Float32Array,
  w13: Float32Array, w2: Float32Array,
  T: number, D: number, E: number, K: number, I: number,
  scratch: MoeScratch,
): void {
  const counts = scratch.i32('moe.counts', E + 1).fill(0);
  for (let r = 0; r < T * K; r++) counts[indices[r] + 1]++;
  for (let e = 0; e < E; e++) counts[e + 1] += counts[e]; // counts[e] = first slot of expert e
  const order = scratch.i32('moe.order', T * K);
  const fill = scratch.i32('moe.fill', E).fill(0);
  for (let r = 0; r < T * K; r++) {
    const e = indices[r];
    order[counts[e] + fill[e]++] = r;
  }
  const acc = scratch.f64('moe.acc', T * D).fill(0);
  for (let e = 0; e < E; e++) {
    const n = counts[e + 1] - counts[e];
    if (n === 0) continue;
    const xe = scratch.f32('moe.x', n * D);
    for (let r = 0; r < n; r++) {
      const t = Math.floor(order[counts[e] + r] / K);
      xe.set(x.subarray(t * D, t * D + D), r * D);
    }
    const h = scratch.f32('moe.h', n * 2 * I);
    matmulNT(h, 0, xe, 0, w13, e * 2 * I * D, n, 2 * I, D);
    const act = scratch.f32('moe.act', n * I);
    for (let r = 0; r < n; r++) {
      for (let i = 0; i < I; i++) {
        const g = h[r * 2 * I + i], u = h[r * 2 * I + I + i];
        act[r * I + i] = (g / (1 + Math.exp(-g))) * u;
      }
    }
    const y = scratch.f32('moe.y', n * D);
    matmulNT(y, 0, act, 0, w2, e * D * I, n, D, I);
    for (let r = 0; r < n; r++) {
      const slot = order[counts[e] + r];
      const t = Math.floor(slot / K);
      const w = weights[slot];
      for (let d = 0; d < D; d++) acc[t * D + d] += w * y[r * D + d];
    }
  }
  for (let i = 0; i < T * D; i++) out[i] = acc[i];
}

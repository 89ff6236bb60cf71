/**
 * CPU softmax attention (MODEL.md §9): partial NeoX RoPE, KV-cache append and causal GQA attention.
 * The fp32 reference; scores, softmax and the weighted sum of values accumulate in float64.
 */

import { gemmNT, transpose } from './matmul.js';

const invFreqCache = new Map<string, Float32Array>();

/** inv_freq[i] = 1 / θ^(2i/r) computed as the reference does, in fp32 (MODEL.md §9). */
export function ropeInvFreq(rotaryDim: number, theta: number): Float32Array {
  const key = `${rotaryDim}:${theta}`;
  let inv = invFreqCache.get(key);
  if (!inv) {
    inv = new Float32Array(rotaryDim / 2);
    for (let i = 0; i < rotaryDim / 2; i++) {
      const exponent = Math.fround((2 * i) / rotaryDim);
      inv[i] = 1 / Math.fround(Math.pow(theta, exponent));
    }
    invFreqCache.set(key, inv);
  }
  return inv;
}

/**
 * x[T, nHeads, Dh] in place. Pairs (i, i + r/2) for i < r/2 rotate by angle fp32(p · inv_freq[i]):
 * x'_i = x_i·cos − x_(i+r/2)·sin,  x'_(i+r/2) = x_(i+r/2)·cos + x_i·sin.
 */
export function ropeInPlace(
  x: Float32Array, positions: Int32Array, T: number, nHeads: number, Dh: number, rotaryDim: number, theta: number,
): void {
  ropeRotate(x, positions, T, nHeads, Dh, rotaryDim, theta, Math.fround, 1);
}

/**
 * The rotation behind ropeInPlace and the float64 trainer's RoPE (src/train/cpu): cos and sin of the fp32 angle,
 * passed through `round` (fp32 for the engine, none for float64), with sin negated for sign = −1 (the inverse
 * rotation, i.e. the backward).
 */
export function ropeRotate(
  x: Float32Array | Float64Array, positions: Int32Array, T: number, nHeads: number, Dh: number, rotaryDim: number, theta: number,
  round: (v: number) => number, sign: 1 | -1,
): void {
  const half = rotaryDim / 2;
  const inv = ropeInvFreq(rotaryDim, theta);
  const cos = new Float64Array(half), sin = new Float64Array(half);
  for (let t = 0; t < T; t++) {
    const p = positions[t];
    for (let i = 0; i < half; i++) {
      const ang = Math.fround(p * inv[i]);
      cos[i] = round(Math.cos(ang));
      sin[i] = sign * round(Math.sin(ang));
    }
    for (let h = 0; h < nHeads; h++) {
      const base = (t * nHeads + h) * Dh;
      for (let i = 0; i < half; i++) {
        const a = x[base + i], b = x[base + i + half];
        x[base + i] = a * cos[i] - b * sin[i];
        x[base + i + half] = b * cos[i] + a * sin[i];
      }
    }
  }
}

export interface AttentionScratch {
  f32(name: string, size: number): Float32Array;
}

/**
 * One sequence's rows: q rows [start, start + len) at positions past..past+len−1 attend to cache rows [0, past + i].
 * q/out: [T, H, Dh]; k/v: [capacity, Hkv, Dh]. Per kv head: Vᵀ once, then for blocks of query rows of each
 * query head in the group, scores = Q·Kᵀ and O = P·V as GEMMs over strided rows; softmax in float64.
 */
export function attentionSegment(
  out: Float32Array, q: Float32Array, k: Float32Array, v: Float32Array,
  start: number, len: number, past: number,
  H: number, Hkv: number, Dh: number, scale: number,
  scratch: AttentionScratch,
): void {
  const group = H / Hkv;
  const kvStride = Hkv * Dh, qStride = H * Dh;
  const n = past + len;
  // Query rows per block: bounded so the score block stays ≤ 4M floats however long the context.
  const rowsPer = Math.max(4, Math.min(64, Math.floor((4 << 20) / n)));
  const vT = scratch.f32('attn.vT', Dh * n);
  const P = scratch.f32('attn.P', rowsPer * n);
  for (let g = 0; g < Hkv; g++) {
    transpose(v, g * Dh, kvStride, n, Dh, vT); // [Dh, n]
    for (let h = g * group; h < (g + 1) * group; h++) {
      for (let i0 = 0; i0 < len; i0 += rowsPer) {
        const rows = Math.min(rowsPer, len - i0);
        const cols = past + i0 + rows; // keys visible to the block's last row
        const qOff = (start + i0) * qStride + h * Dh;
        gemmNT(rows, cols, Dh, q, qOff, qStride, k, g * Dh, kvStride, P, 0, cols);
        for (let r = 0; r < rows; r++) {
          const visible = past + i0 + r + 1, row = r * cols;
          let max = -Infinity;
          for (let j = 0; j < visible; j++) {
            const sc = P[row + j] * scale;
            if (sc > max) max = sc;
          }
          let sum = 0;
          for (let j = 0; j < visible; j++) sum += Math.exp(P[row + j] * scale - max);
          const inv = 1 / sum;
          for (let j = 0; j < visible; j++) P[row + j] = Math.exp(P[row + j] * scale - max) * inv;
          for (let j = visible; j < cols; j++) P[row + j] = 0;
        }
        gemmNT(rows, Dh, cols, P, 0, cols, vT, 0, n, out, qOff, qStride);
      }
    }
  }
}

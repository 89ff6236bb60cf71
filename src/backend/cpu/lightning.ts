/**
 * CPU lightning attention (MODEL.md §8.4–8.6): the fp32 reference for every other lightning kernel.
 *
 * Per head with decay s, state S ∈ R^{Dh×Dh} indexed [key dim, value dim]:
 *   S_t = e^(−s)·S_(t−1) + k_tᵀ v_t,   o_t = q_t · S_t.
 * Multi-token segments use the block algorithm of §8.5 (exactly the recurrence, with every exponent a true token
 * distance, so starting from a carried-in state is chunked prefill); one-token segments use the recurrence
 * (decode). Decay constants are fp32 as in the remote code; sums accumulate in float64 and are stored as f32.
 */

import { gemmNT, transpose } from './matmul.js';

/** e^(−s·n) with the fp32 product and fp32 result of the reference (MODEL.md §8.5). */
function decay(s: number, n: number): number {
  return Math.fround(Math.exp(-Math.fround(s * n)));
}

export interface HeadLayout {
  /** Heads. */
  readonly H: number;
  /** Head dim. */
  readonly Dh: number;
}

/**
 * One token, one head, recurrence form. qkv row layout: per head q | k | v (Dh each); out row: H·Dh.
 * `S` is the head's Dh×Dh slice of the state (updated in place).
 */
export function lightningDecodeHead(
  out: Float32Array, outOff: number,
  qkv: Float32Array, qOff: number,
  S: Float32Array, sOff: number,
  s: number, Dh: number,
  acc: Float64Array,
): void {
  const kOff = qOff + Dh, vOff = qOff + 2 * Dh;
  const dec = decay(s, 1);
  acc.fill(0, 0, Dh);
  for (let a = 0; a < Dh; a++) {
    const ka = qkv[kOff + a], qa = qkv[qOff + a];
    const row = sOff + a * Dh;
    for (let b = 0; b < Dh; b++) {
      const v = Math.fround(dec * S[row + b] + ka * qkv[vOff + b]);
      S[row + b] = v;
      acc[b] += qa * v;
    }
  }
  for (let b = 0; b < Dh; b++) out[outOff + b] = acc[b];
}

/**
 * `len` tokens of one sequence, one head, block algorithm with block size B.
 * Rows are t = 0..len−1 at qkv[(start + t)·rowStride + headOff] (q, then k at +Dh, v at +2·Dh) and
 * out[(start + t)·outStride + outHeadOff]. Each block is four GEMMs over contiguous or strided rows:
 *   P = (Q·Kᵀ) ⊙ decay(i − j) (lower triangle),  O = P·V + (Q ⊙ e^(−s(i+1)))·S,  S = e^(−s·m)·S + (K ⊙ e^(−s(m−1−j)))ᵀ·V.
 */
export function lightningPrefillHead(
  out: Float32Array, outStride: number, outHeadOff: number,
  qkv: Float32Array, rowStride: number, headOff: number,
  start: number, len: number,
  S: Float32Array, sOff: number,
  s: number, Dh: number, B: number,
  scratch: LightningScratch,
): void {
  const { P, vT, kT, sT, qd, o, inter, dS, decays } = scratch;
  const DD = Dh * Dh;
  // decays[n] = e^(−s·n) for every distance a block can produce (0..B): no exp in the inner loops.
  for (let n = 0; n <= B; n++) decays[n] = decay(s, n);
  for (let b0 = 0; b0 < len; b0 += B) {
    const m = Math.min(B, len - b0);
    const q0 = (start + b0) * rowStride + headOff, k0 = q0 + Dh, v0 = q0 + 2 * Dh;
    // intra-block scores, causal with decay; entries above the diagonal must be exactly 0 for the 'lowerK' product
    gemmNT(m, m, Dh, qkv, q0, rowStride, qkv, k0, rowStride, P, 0, B, 'lowerN');
    for (let i = 0; i < m; i++) {
      const row = i * B;
      for (let j = 0; j <= i; j++) P[row + j] *= decays[i - j];
      const tileEnd = Math.min(m, (i & ~3) + 4);
      for (let j = i + 1; j < tileEnd; j++) P[row + j] = 0;
    }
    transpose(qkv, v0, rowStride, m, Dh, vT); // vT: [Dh, m]
    gemmNT(m, Dh, m, P, 0, B, vT, 0, m, o, 0, Dh, 'lowerK');
    // inter-block: (Q ⊙ e^(−s(i+1))) · S_prev, as Qd · (Sᵀ)ᵀ
    for (let i = 0; i < m; i++) {
      const qd0 = decays[i + 1], src = q0 + i * rowStride;
      for (let a = 0; a < Dh; a++) qd[i * Dh + a] = qkv[src + a] * qd0;
    }
    transpose(S, sOff, Dh, Dh, Dh, sT);
    gemmNT(m, Dh, Dh, qd, 0, Dh, sT, 0, Dh, inter, 0, Dh);
    for (let i = 0; i < m; i++) {
      const dst = (start + b0 + i) * outStride + outHeadOff;
      for (let e = 0; e < Dh; e++) out[dst + e] = o[i * Dh + e] + inter[i * Dh + e];
    }
    // state: S = e^(−s·m)·S + (K ⊙ e^(−s(m−1−j)))ᵀ V, as kT · (vT)ᵀ
    for (let j = 0; j < m; j++) {
      const kd = decays[m - 1 - j], src = k0 + j * rowStride;
      for (let a = 0; a < Dh; a++) kT[a * m + j] = qkv[src + a] * kd;
    }
    gemmNT(Dh, Dh, m, kT, 0, m, vT, 0, m, dS, 0, Dh);
    const bd = decays[m];
    for (let e = 0; e < DD; e++) S[sOff + e] = bd * S[sOff + e] + dS[e];
  }
}

export interface LightningScratch {
  /** Decode accumulator [Dh]. */
  readonly acc: Float64Array;
  readonly decays: Float64Array; // [B + 1]
  readonly P: Float32Array; // [B, B]
  readonly vT: Float32Array; // [Dh, B]
  readonly kT: Float32Array; // [Dh, B]
  readonly sT: Float32Array; // [Dh, Dh]
  readonly qd: Float32Array; // [B, Dh]
  readonly o: Float32Array; // [B, Dh]
  readonly inter: Float32Array; // [B, Dh]
  readonly dS: Float32Array; // [Dh, Dh]
}

export function lightningScratch(Dh: number, B: number): LightningScratch {
  return {
    acc: new Float64Array(Dh),
    decays: new Float64Array(B + 1),
    P: new Float32Array(B * B),
    vT: new Float32Array(Dh * B),
    kT: new Float32Array(Dh * B),
    sT: new Float32Array(Dh * Dh),
    qd: new Float32Array(B * Dh),
    o: new Float32Array(B * Dh),
    inter: new Float32Array(B * Dh),
    dS: new Float32Array(Dh * Dh),
  };
}

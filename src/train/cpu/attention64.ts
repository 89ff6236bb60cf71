/**
 * Causal softmax GQA attention within each packed document (MODEL.md §9), forward and backward in float64: the CPU
 * training reference. Query head h reads kv head ⌊h / (H/Hkv)⌋; row i of a document attends to the rows
 * [docStart, i] of the same document.
 *
 * Forward: z_ij = scale·q_i·k_j, lse_i = log Σ_j e^(z_ij), P_ij = e^(z_ij − lse_i), o_i = Σ_j P_ij v_j.
 * Backward (flash-style, P recomputed from lse): dP_ij = dO_i·v_j, D_i = dO_i·o_i (= Σ_j P_ij dP_ij),
 * dZ_ij = P_ij (dP_ij − D_i), dq_i = scale·Σ_j dZ_ij k_j, dk_j = scale·Σ_i dZ_ij q_i, dv_j = Σ_i P_ij dO_i,
 * the kv gradients summed over the query heads of the group.
 */

import { ShapeError } from '../../util/errors.js';
import { checkOffsets } from './lightning64.js';

function checkAttention(what: string, qLen: number, kLen: number, vLen: number, outLen: number, lseLen: number, H: number, Hkv: number, Dh: number): number {
  if (!(H >= 1 && Hkv >= 1 && Dh >= 1) || H % Hkv !== 0) throw new ShapeError(`${what}: H = ${H} must be a positive multiple of Hkv = ${Hkv} (Dh = ${Dh})`);
  const T = qLen / (H * Dh);
  if (!Number.isInteger(T)) throw new ShapeError(`${what}: q has ${qLen} elements, not a multiple of H·Dh = ${H * Dh}`);
  if (kLen !== T * Hkv * Dh || vLen !== T * Hkv * Dh) throw new ShapeError(`${what}: k/v have ${kLen}/${vLen} elements, expected T·Hkv·Dh = ${T * Hkv * Dh}`);
  if (outLen !== T * H * Dh) throw new ShapeError(`${what}: out has ${outLen} elements, expected T·H·Dh = ${T * H * Dh}`);
  if (lseLen !== T * H) throw new ShapeError(`${what}: lse has ${lseLen} elements, expected T·H = ${T * H}`);
  return T;
}

/** out[T, H, Dh], lse[T, H] from q[T, H, Dh], k/v[T, Hkv, Dh]; causal within each document. */
export function attentionForward64(out: Float64Array, lse: Float64Array, q: Float64Array, k: Float64Array, v: Float64Array, offsets: Int32Array, H: number, Hkv: number, Dh: number, scale: number): void {
  const T = checkAttention('attentionForward64', q.length, k.length, v.length, out.length, lse.length, H, Hkv, Dh);
  const maxLen = checkOffsets(offsets, T, 'attentionForward64');
  const group = H / Hkv;
  const z = new Float64Array(Math.max(1, maxLen));
  for (let d = 0; d + 1 < offsets.length; d++) {
    const start = offsets[d], end = offsets[d + 1];
    for (let i = start; i < end; i++) {
      for (let h = 0; h < H; h++) {
        const qi = (i * H + h) * Dh, g = Math.floor(h / group);
        let max = -Infinity;
        for (let j = start; j <= i; j++) {
          const kj = (j * Hkv + g) * Dh;
          let acc = 0;
          for (let e = 0; e < Dh; e++) acc += q[qi + e] * k[kj + e];
          const zij = scale * acc;
          z[j - start] = zij;
          if (zij > max) max = zij;
        }
        let sum = 0;
        for (let j = start; j <= i; j++) sum += Math.exp(z[j - start] - max);
        const l = max + Math.log(sum);
        lse[i * H + h] = l;
        const oi = (i * H + h) * Dh;
        out.fill(0, oi, oi + Dh);
        for (let j = start; j <= i; j++) {
          const p = Math.exp(z[j - start] - l), vj = (j * Hkv + g) * Dh;
          for (let e = 0; e < Dh; e++) out[oi + e] += p * v[vj + e];
        }
      }
    }
  }
}

/** dq[T, H, Dh], dk/dv[T, Hkv, Dh] (overwritten). */
export function attentionBackward64(dq: Float64Array, dk: Float64Array, dv: Float64Array, dOut: Float64Array, q: Float64Array, k: Float64Array, v: Float64Array, out: Float64Array, lse: Float64Array, offsets: Int32Array, H: number, Hkv: number, Dh: number, scale: number): void {
  const T = checkAttention('attentionBackward64', q.length, k.length, v.length, out.length, lse.length, H, Hkv, Dh);
  if (dq.length !== q.length || dOut.length !== out.length || dk.length !== k.length || dv.length !== v.length) {
    throw new ShapeError(`attentionBackward64: gradient sizes dq ${dq.length}, dk ${dk.length}, dv ${dv.length}, dOut ${dOut.length} do not match q ${q.length}, k ${k.length}, v ${v.length}, out ${out.length}`);
  }
  checkOffsets(offsets, T, 'attentionBackward64');
  const group = H / Hkv;
  dq.fill(0);
  dk.fill(0);
  dv.fill(0);
  for (let d = 0; d + 1 < offsets.length; d++) {
    const start = offsets[d], end = offsets[d + 1];
    for (let i = start; i < end; i++) {
      for (let h = 0; h < H; h++) {
        const qi = (i * H + h) * Dh, g = Math.floor(h / group), l = lse[i * H + h];
        let D = 0;
        for (let e = 0; e < Dh; e++) D += dOut[qi + e] * out[qi + e];
        for (let j = start; j <= i; j++) {
          const kj = (j * Hkv + g) * Dh;
          let qk = 0, dp = 0;
          for (let e = 0; e < Dh; e++) {
            qk += q[qi + e] * k[kj + e];
            dp += dOut[qi + e] * v[kj + e];
          }
          const p = Math.exp(scale * qk - l);
          const dz = scale * p * (dp - D);
          for (let e = 0; e < Dh; e++) {
            dq[qi + e] += dz * k[kj + e];
            dk[kj + e] += dz * q[qi + e];
            dv[kj + e] += p * dOut[qi + e];
          }
        }
      }
    }
  }
}

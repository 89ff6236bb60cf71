/**
 * Lightning attention (MODEL.md §8.4–8.5) forward and backward in float64 on packed documents: the CPU training
 * reference. Same block algorithm and decay conventions as src/backend/cpu/lightning.ts (every exponent a true
 * token distance), but with float64 decays e^(−s·n) and float64 sums throughout.
 *
 * Per document, per head, decay γ = e^(−s), state S ∈ R^{Dh×Dh} indexed [key dim, value dim], S_(−1) = 0:
 *   S_t = γ·S_(t−1) + k_tᵀ v_t,   o_t = q_t · S_t   ⇔   o_t = Σ_(j≤t) γ^(t−j) (q_t·k_j) v_j.
 *
 * Backward. With L a function of the outputs and dO_t = ∂L/∂o_t, let G_t = ∂L/∂S_t (the total gradient of the state
 * S_t, through o_t and through every later state). S_t feeds o_t = q_t·S_t and S_(t+1) = γ·S_t + …, so
 *   G_t = q_tᵀ dO_t + γ·G_(t+1)   (G_T = 0 past the document's end)   ⇔   G_t = Σ_(i≥t) γ^(i−t) q_iᵀ dO_i.
 * The term k_tᵀ v_t enters S_t with coefficient 1, so the gradient flowing into it is dS̃_t = G_t, and
 *   dq_t = dO_t · S_tᵀ          (∂(q_t·S_t)/∂q_t),
 *   dk_t = v_t · G_tᵀ           (dk_t[a] = Σ_c G_t[a,c] v_t[c]),
 *   dv_t = k_t · G_t            (dv_t[c] = Σ_a k_t[a] G_t[a,c]).
 * Chunked over blocks [a, a+m) (in-block rows i, j = 0..m−1):
 *   dq_i = Σ_(j≤i) γ^(i−j) (dO_i·v_j) k_j  +  γ^(i+1) dO_i·S_prevᵀ          (forward sweep, S recomputed per block)
 *   dk_j = Σ_(i≥j) γ^(i−j) (dO_i·v_j) q_i  +  γ^(m−j) v_j·G_nextᵀ           (backward sweep over blocks)
 *   dv_j = Σ_(i≥j) γ^(i−j) (q_i·k_j) dO_i  +  γ^(m−j) k_j·G_next
 *   G_prev = γ^m·G_next + Σ_i γ^i q_iᵀ dO_i
 * where S_prev is the state before the block (S_(a−1)) and G_next = G_(a+m) the gradient state after it.
 */

import { InvalidArgumentError, ShapeError } from '../../util/errors.js';

/** Checks the packed-document offsets against T rows and returns the longest document. */
export function checkOffsets(offsets: Int32Array, T: number, what: string): number {
  if (offsets.length < 1 || offsets[0] !== 0 || offsets[offsets.length - 1] !== T) {
    throw new ShapeError(`${what}: document offsets must run from 0 to T = ${T}, got [${offsets[0]} … ${offsets[offsets.length - 1]}] (${offsets.length} entries)`);
  }
  let maxLen = 0;
  for (let d = 0; d + 1 < offsets.length; d++) {
    const len = offsets[d + 1] - offsets[d];
    if (len < 0) throw new ShapeError(`${what}: document offsets decrease at ${d} (${offsets[d]} > ${offsets[d + 1]})`);
    if (len > maxLen) maxLen = len;
  }
  return maxLen;
}

function checkLightning(what: string, qkvLen: number, outLen: number, slopes: Float64Array, H: number, Dh: number, blockSize: number): number {
  if (!Number.isInteger(blockSize) || blockSize < 1) throw new InvalidArgumentError(`${what}: blockSize must be a positive integer, got ${blockSize}`, { param: 'blockSize' });
  if (!(H >= 1 && Dh >= 1)) throw new ShapeError(`${what}: H = ${H}, Dh = ${Dh}`);
  if (slopes.length !== H) throw new ShapeError(`${what}: slopes has ${slopes.length} entries, expected H = ${H}`);
  const T = qkvLen / (3 * H * Dh);
  if (!Number.isInteger(T)) throw new ShapeError(`${what}: qkv has ${qkvLen} elements, not a multiple of 3·H·Dh = ${3 * H * Dh}`);
  if (outLen !== T * H * Dh) throw new ShapeError(`${what}: out/dOut has ${outLen} elements, expected T·H·Dh = ${T * H * Dh}`);
  return T;
}

/** out[T, H·Dh] from qkv[T, H·3·Dh]; offsets: document boundaries [count + 1]. */
export function lightningForward64(out: Float64Array, qkv: Float64Array, slopes: Float64Array, offsets: Int32Array, H: number, Dh: number, blockSize: number): void {
  const T = checkLightning('lightningForward64', qkv.length, out.length, slopes, H, Dh, blockSize);
  const maxLen = checkOffsets(offsets, T, 'lightningForward64');
  const Bm = Math.max(1, Math.min(blockSize, maxLen)); // the longest block any document produces
  const R = 3 * H * Dh, O = H * Dh;
  const S = new Float64Array(Dh * Dh);
  const P = new Float64Array(Bm * Bm);
  const decays = new Float64Array(Bm + 1);
  for (let h = 0; h < H; h++) {
    const s = slopes[h];
    for (let n = 0; n <= Bm; n++) decays[n] = Math.exp(-s * n);
    for (let d = 0; d + 1 < offsets.length; d++) {
      const start = offsets[d], len = offsets[d + 1] - start;
      S.fill(0);
      for (let b0 = 0; b0 < len; b0 += blockSize) {
        const m = Math.min(blockSize, len - b0);
        const row0 = start + b0;
        // P[i, j] = γ^(i−j) (q_i·k_j), j ≤ i
        for (let i = 0; i < m; i++) {
          const qi = (row0 + i) * R + h * 3 * Dh;
          for (let j = 0; j <= i; j++) {
            const kj = (row0 + j) * R + h * 3 * Dh + Dh;
            let acc = 0;
            for (let a = 0; a < Dh; a++) acc += qkv[qi + a] * qkv[kj + a];
            P[i * Bm + j] = acc * decays[i - j];
          }
        }
        // o_i = Σ_(j≤i) P[i, j] v_j + γ^(i+1) q_i·S_prev
        for (let i = 0; i < m; i++) {
          const qi = (row0 + i) * R + h * 3 * Dh;
          const oi = (row0 + i) * O + h * Dh;
          const qd = decays[i + 1];
          for (let c = 0; c < Dh; c++) {
            let intra = 0;
            for (let j = 0; j <= i; j++) intra += P[i * Bm + j] * qkv[(row0 + j) * R + h * 3 * Dh + 2 * Dh + c];
            let inter = 0;
            for (let a = 0; a < Dh; a++) inter += qkv[qi + a] * S[a * Dh + c];
            out[oi + c] = intra + qd * inter;
          }
        }
        // S = γ^m·S + Σ_j γ^(m−1−j) k_jᵀ v_j
        const bd = decays[m];
        for (let e = 0; e < Dh * Dh; e++) S[e] *= bd;
        for (let j = 0; j < m; j++) {
          const kj = (row0 + j) * R + h * 3 * Dh + Dh, vj = kj + Dh;
          const kd = decays[m - 1 - j];
          for (let a = 0; a < Dh; a++) {
            const ka = qkv[kj + a] * kd;
            for (let c = 0; c < Dh; c++) S[a * Dh + c] += ka * qkv[vj + c];
          }
        }
      }
    }
  }
}

/** dQkv[T, H·3·Dh] (overwritten) from dOut[T, H·Dh]. */
export function lightningBackward64(dQkv: Float64Array, dOut: Float64Array, qkv: Float64Array, slopes: Float64Array, offsets: Int32Array, H: number, Dh: number, blockSize: number): void {
  const T = checkLightning('lightningBackward64', qkv.length, dOut.length, slopes, H, Dh, blockSize);
  if (dQkv.length !== qkv.length) throw new ShapeError(`lightningBackward64: dQkv has ${dQkv.length} elements, expected ${qkv.length}`);
  const maxLen = checkOffsets(offsets, T, 'lightningBackward64');
  const Bm = Math.max(1, Math.min(blockSize, maxLen));
  const R = 3 * H * Dh, O = H * Dh;
  const S = new Float64Array(Dh * Dh); // forward state, recomputed block by block
  const G = new Float64Array(Dh * Dh); // gradient state G_t = ∂L/∂S_t
  const QK = new Float64Array(Bm * Bm); // γ^(i−j) (q_i·k_j), j ≤ i
  const OV = new Float64Array(Bm * Bm); // γ^(i−j) (dO_i·v_j), j ≤ i
  const decays = new Float64Array(Bm + 1);
  dQkv.fill(0);
  for (let h = 0; h < H; h++) {
    const s = slopes[h];
    for (let n = 0; n <= Bm; n++) decays[n] = Math.exp(-s * n);
    const hq = h * 3 * Dh, hk = hq + Dh, hv = hq + 2 * Dh, ho = h * Dh;
    for (let d = 0; d + 1 < offsets.length; d++) {
      const start = offsets[d], len = offsets[d + 1] - start;
      if (len === 0) continue;

      // ---- forward sweep: dq, with the state S recomputed block by block ----
      S.fill(0);
      for (let b0 = 0; b0 < len; b0 += blockSize) {
        const m = Math.min(blockSize, len - b0);
        const row0 = start + b0;
        for (let i = 0; i < m; i++) {
          const oi = (row0 + i) * O + ho;
          for (let j = 0; j <= i; j++) {
            const vj = (row0 + j) * R + hv;
            let acc = 0;
            for (let c = 0; c < Dh; c++) acc += dOut[oi + c] * qkv[vj + c];
            OV[i * Bm + j] = acc * decays[i - j];
          }
        }
        // dq_i = Σ_(j≤i) OV[i, j] k_j + γ^(i+1) dO_i·S_prevᵀ
        for (let i = 0; i < m; i++) {
          const oi = (row0 + i) * O + ho, dqi = (row0 + i) * R + hq;
          const qd = decays[i + 1];
          for (let a = 0; a < Dh; a++) {
            let intra = 0;
            for (let j = 0; j <= i; j++) intra += OV[i * Bm + j] * qkv[(row0 + j) * R + hk + a];
            let inter = 0;
            for (let c = 0; c < Dh; c++) inter += dOut[oi + c] * S[a * Dh + c];
            dQkv[dqi + a] = intra + qd * inter;
          }
        }
        const bd = decays[m];
        for (let e = 0; e < Dh * Dh; e++) S[e] *= bd;
        for (let j = 0; j < m; j++) {
          const kj = (row0 + j) * R + hk, vj = kj + Dh;
          const kd = decays[m - 1 - j];
          for (let a = 0; a < Dh; a++) {
            const ka = qkv[kj + a] * kd;
            for (let c = 0; c < Dh; c++) S[a * Dh + c] += ka * qkv[vj + c];
          }
        }
      }

      // ---- backward sweep over the same blocks, last first: dk, dv and the gradient state G ----
      G.fill(0);
      for (let b0 = Math.floor((len - 1) / blockSize) * blockSize; b0 >= 0; b0 -= blockSize) {
        const m = Math.min(blockSize, len - b0);
        const row0 = start + b0;
        for (let i = 0; i < m; i++) {
          const qi = (row0 + i) * R + hq, oi = (row0 + i) * O + ho;
          for (let j = 0; j <= i; j++) {
            const kj = (row0 + j) * R + hk, vj = kj + Dh;
            let qk = 0, ov = 0;
            for (let a = 0; a < Dh; a++) qk += qkv[qi + a] * qkv[kj + a];
            for (let c = 0; c < Dh; c++) ov += dOut[oi + c] * qkv[vj + c];
            QK[i * Bm + j] = qk * decays[i - j];
            OV[i * Bm + j] = ov * decays[i - j];
          }
        }
        for (let j = 0; j < m; j++) {
          const kj = (row0 + j) * R + hk, vj = kj + Dh;
          const dk = (row0 + j) * R + hk, dv = dk + Dh;
          const gd = decays[m - j];
          // dk_j = Σ_(i≥j) OV[i, j] q_i + γ^(m−j) v_j·G_nextᵀ
          for (let a = 0; a < Dh; a++) {
            let intra = 0;
            for (let i = j; i < m; i++) intra += OV[i * Bm + j] * qkv[(row0 + i) * R + hq + a];
            let inter = 0;
            for (let c = 0; c < Dh; c++) inter += G[a * Dh + c] * qkv[vj + c];
            dQkv[dk + a] = intra + gd * inter;
          }
          // dv_j = Σ_(i≥j) QK[i, j] dO_i + γ^(m−j) k_j·G_next
          for (let c = 0; c < Dh; c++) {
            let intra = 0;
            for (let i = j; i < m; i++) intra += QK[i * Bm + j] * dOut[(row0 + i) * O + ho + c];
            let inter = 0;
            for (let a = 0; a < Dh; a++) inter += qkv[kj + a] * G[a * Dh + c];
            dQkv[dv + c] = intra + gd * inter;
          }
        }
        // G_prev = γ^m·G_next + Σ_i γ^i q_iᵀ dO_i
        const bd = decays[m];
        for (let e = 0; e < Dh * Dh; e++) G[e] *= bd;
        for (let i = 0; i < m; i++) {
          const qi = (row0 + i) * R + hq, oi = (row0 + i) * O + ho;
          const id = decays[i];
          for (let a = 0; a < Dh; a++) {
            const qa = qkv[qi + a] * id;
            for (let c = 0; c < Dh; c++) G[a * Dh + c] += qa * dOut[oi + c];
          }
        }
      }
    }
  }
}

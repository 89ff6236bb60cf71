/**
 * Float64 mixture of experts for training (MODEL.md §10): the router (softmax over all experts → top-K →
 * renormalise) with its backward and auxiliary losses, and the SwiGLU experts forward/backward per routed slot
 * s = t·K + k. The experts run slot by slot (no grouping by expert): the CPU backend is a reference for tiny shapes.
 */

/** probs = softmax(logits) per row; indices = top-K of probs (descending, ties to the lower id); weights renormalised. */
export function moeRouteForward64(indices: Int32Array, weights: Float64Array, probs: Float64Array, logits: Float64Array, T: number, E: number, K: number): void {
  for (let t = 0; t < T; t++) {
    const row = t * E;
    let max = -Infinity;
    for (let e = 0; e < E; e++) if (logits[row + e] > max) max = logits[row + e];
    let sum = 0;
    for (let e = 0; e < E; e++) sum += (probs[row + e] = Math.exp(logits[row + e] - max));
    for (let e = 0; e < E; e++) probs[row + e] /= sum;
    let total = 0;
    for (let k = 0; k < K; k++) {
      // Strict > keeps the first (lowest) id among equals; ids already picked are skipped.
      let best = -1;
      for (let e = 0; e < E; e++) {
        if (picked(indices, t * K, k, e)) continue;
        if (best < 0 || probs[row + e] > probs[row + best]) best = e;
      }
      indices[t * K + k] = best;
      weights[t * K + k] = probs[row + best];
      total += probs[row + best];
    }
    for (let k = 0; k < K; k++) weights[t * K + k] /= total;
  }
}

function picked(indices: Int32Array, base: number, n: number, e: number): boolean {
  for (let j = 0; j < n; j++) if (indices[base + j] === e) return true;
  return false;
}

/**
 * dLogits (overwritten) from dWeights through w_k = p_(i_k) / S (S = Σ_j p_(i_j)): dp_(i_k) = (dw_k − Σ_j dw_j·w_j) / S;
 * the load-balancing loss adds dp[t, e] = auxCoef·E·f_e / T to every expert; then the softmax backward
 * dl_e = p_e·(dp_e − Σ_e' p_e'·dp_e'). The z-loss adds zCoef·2·lse_t·p[t, e] / T straight to dLogits.
 * losses[0] += the load-balancing loss, losses[1] += the z-loss.
 */
export function moeRouteBackward64(
  dLogits: Float64Array, losses: Float64Array, dWeights: Float64Array, logits: Float64Array, probs: Float64Array,
  indices: Int32Array, weights: Float64Array, T: number, E: number, K: number, auxCoef: number, zCoef: number,
): void {
  if (T === 0) return;
  // f_e: the fraction of routed slots that picked e (a constant of the gradient); P_e: the mean probability.
  const f = new Float64Array(E), P = new Float64Array(E);
  for (let s = 0; s < T * K; s++) f[indices[s]] += 1 / (T * K);
  for (let t = 0; t < T; t++) for (let e = 0; e < E; e++) P[e] += probs[t * E + e] / T;
  let aux = 0;
  for (let e = 0; e < E; e++) aux += f[e] * P[e];
  losses[0] += auxCoef * E * aux;

  const dp = new Float64Array(E);
  let z = 0;
  for (let t = 0; t < T; t++) {
    const row = t * E;
    for (let e = 0; e < E; e++) dp[e] = (auxCoef * E * f[e]) / T;
    let S = 0, dot = 0;
    for (let k = 0; k < K; k++) {
      S += probs[row + indices[t * K + k]];
      dot += dWeights[t * K + k] * weights[t * K + k];
    }
    for (let k = 0; k < K; k++) dp[indices[t * K + k]] += (dWeights[t * K + k] - dot) / S;
    let pdp = 0;
    for (let e = 0; e < E; e++) pdp += probs[row + e] * dp[e];
    let max = -Infinity;
    for (let e = 0; e < E; e++) if (logits[row + e] > max) max = logits[row + e];
    let sum = 0;
    for (let e = 0; e < E; e++) sum += Math.exp(logits[row + e] - max);
    const lse = max + Math.log(sum);
    z += lse * lse;
    for (let e = 0; e < E; e++) dLogits[row + e] = probs[row + e] * (dp[e] - pdp) + (zCoef * 2 * lse * probs[row + e]) / T;
  }
  losses[1] += (zCoef * z) / T;
}

export interface ExpertDims {
  readonly T: number;
  readonly D: number;
  readonly E: number;
  readonly K: number;
  readonly I: number;
}

function silu(x: number): number {
  return x / (1 + Math.exp(-x));
}

/**
 * For each slot s = t·K + k with e = indices[s]: h13[s] = w13_e · x_t, y[s] = w2_e · (silu(h1) ⊙ h3),
 * out[t] = Σ_k weights[s]·y[s].
 */
export function moeExpertsForward64(
  out: Float64Array, h13: Float64Array, y: Float64Array, x: Float64Array, indices: Int32Array, weights: Float64Array,
  w13: Float64Array, w2: Float64Array, { T, D, K, I }: ExpertDims,
): void {
  out.fill(0, 0, T * D);
  const act = new Float64Array(I);
  for (let s = 0; s < T * K; s++) {
    const t = Math.floor(s / K), e = indices[s];
    const xr = t * D, hr = s * 2 * I, yr = s * D;
    for (let j = 0; j < 2 * I; j++) {
      const wr = (e * 2 * I + j) * D;
      let acc = 0;
      for (let d = 0; d < D; d++) acc += w13[wr + d] * x[xr + d];
      h13[hr + j] = acc;
    }
    for (let i = 0; i < I; i++) act[i] = silu(h13[hr + i]) * h13[hr + I + i];
    for (let d = 0; d < D; d++) {
      const wr = (e * D + d) * I;
      let acc = 0;
      for (let i = 0; i < I; i++) acc += w2[wr + i] * act[i];
      y[yr + d] = acc;
      out[xr + d] += weights[s] * acc;
    }
  }
}

/**
 * Per slot, with dy = weights[s]·dOut[t] and the activation recomputed from h13:
 * dWeights[s] = ⟨dOut[t], y[s]⟩; dW2_e += dy ⊗ act; dact = dy · w2_e; dh1 = dact ⊙ h3 ⊙ silu'(h1),
 * dh3 = dact ⊙ silu(h1); dW13_e += dh13 ⊗ x_t; dx[t] += dh13 · w13_e.
 */
export function moeExpertsBackward64(
  dx: Float64Array, dW13: Float64Array, dW2: Float64Array, dWeights: Float64Array, dOut: Float64Array,
  h13: Float64Array, y: Float64Array, x: Float64Array, indices: Int32Array, weights: Float64Array,
  w13: Float64Array, w2: Float64Array, { T, D, K, I }: ExpertDims,
): void {
  dx.fill(0, 0, T * D);
  const act = new Float64Array(I), dact = new Float64Array(I), dh = new Float64Array(2 * I);
  for (let s = 0; s < T * K; s++) {
    const t = Math.floor(s / K), e = indices[s];
    const xr = t * D, hr = s * 2 * I, yr = s * D;
    const ws = weights[s];
    let dw = 0;
    for (let d = 0; d < D; d++) dw += dOut[xr + d] * y[yr + d];
    dWeights[s] = dw;
    for (let i = 0; i < I; i++) act[i] = silu(h13[hr + i]) * h13[hr + I + i];
    dact.fill(0);
    for (let d = 0; d < D; d++) {
      const g = ws * dOut[xr + d];
      const wr = (e * D + d) * I;
      for (let i = 0; i < I; i++) {
        dW2[wr + i] += g * act[i];
        dact[i] += g * w2[wr + i];
      }
    }
    for (let i = 0; i < I; i++) {
      const g = h13[hr + i], u = h13[hr + I + i];
      const sg = 1 / (1 + Math.exp(-g));
      dh[i] = dact[i] * u * sg * (1 + g * (1 - sg));
      dh[I + i] = dact[i] * g * sg;
    }
    for (let j = 0; j < 2 * I; j++) {
      const wr = (e * 2 * I + j) * D;
      const gj = dh[j];
      for (let d = 0; d < D; d++) {
        dW13[wr + d] += gj * x[xr + d];
        dx[xr + d] += gj * w13[wr + d];
      }
    }
  }
}

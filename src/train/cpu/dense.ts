/**
 * Float64 kernels of the CPU training backend on plain arrays: linear layers, RMSNorm, activations, RoPE, embedding,
 * cross-entropy and AdamW. Shapes are checked by the caller (cpu-train-backend.ts); every loop here is the textbook
 * formula, with the innermost loop over contiguous memory.
 */

import { ropeRotate } from '../../backend/cpu/attention.js';
import type { AdamWStep } from '../backend.js';

// ---- linear: y[T, N] = x[T, Kin] · w[N, Kin]ᵀ ----

/** out = x · wᵀ: each output is a dot product of two contiguous rows. */
export function linearForward64(out: Float64Array, x: Float64Array, w: Float64Array, T: number, N: number, Kin: number): void {
  for (let t = 0; t < T; t++) {
    const xr = t * Kin;
    for (let n = 0; n < N; n++) {
      const wr = n * Kin;
      let acc = 0;
      for (let k = 0; k < Kin; k++) acc += x[xr + k] * w[wr + k];
      out[t * N + n] = acc;
    }
  }
}

/** dx (+=) dOut · w, in i-k-j order: each dOut[t, n] scales row n of w into row t of dx. */
export function linearBackwardInput64(dx: Float64Array, dOut: Float64Array, w: Float64Array, T: number, N: number, Kin: number, accumulate: boolean): void {
  if (!accumulate) dx.fill(0, 0, T * Kin);
  for (let t = 0; t < T; t++) {
    const xr = t * Kin;
    for (let n = 0; n < N; n++) {
      const g = dOut[t * N + n];
      if (g === 0) continue;
      const wr = n * Kin;
      for (let k = 0; k < Kin; k++) dx[xr + k] += g * w[wr + k];
    }
  }
}

/** dw (+=) dOutᵀ · x: each dOut[t, n] scales row t of x into row n of dw. */
export function linearBackwardWeight64(dw: Float64Array, dOut: Float64Array, x: Float64Array, T: number, N: number, Kin: number): void {
  for (let t = 0; t < T; t++) {
    const xr = t * Kin;
    for (let n = 0; n < N; n++) {
      const g = dOut[t * N + n];
      if (g === 0) continue;
      const wr = n * Kin;
      for (let k = 0; k < Kin; k++) dw[wr + k] += g * x[xr + k];
    }
  }
}

// ---- RMSNorm over the last dim C ----

export function rmsNormForward64(out: Float64Array, rstd: Float64Array, x: Float64Array, w: Float64Array, R: number, C: number, eps: number): void {
  for (let r = 0; r < R; r++) {
    const o = r * C;
    let ss = 0;
    for (let c = 0; c < C; c++) ss += x[o + c] * x[o + c];
    const s = 1 / Math.sqrt(ss / C + eps);
    rstd[r] = s;
    // out may alias x: each element is read before it is written
    for (let c = 0; c < C; c++) out[o + c] = w[c] * x[o + c] * s;
  }
}

/**
 * With x̂ = x·rstd and g = dOut ⊙ w: dx = rstd · (g − x̂ · mean(g ⊙ x̂)) (the second term is the path through rstd),
 * dw += Σ_r dOut ⊙ x̂.
 */
export function rmsNormBackward64(dx: Float64Array, dw: Float64Array, dOut: Float64Array, x: Float64Array, w: Float64Array, rstd: Float64Array, R: number, C: number, accumulate: boolean): void {
  for (let r = 0; r < R; r++) {
    const o = r * C;
    const s = rstd[r];
    let dot = 0;
    for (let c = 0; c < C; c++) dot += dOut[o + c] * w[c] * x[o + c] * s;
    const mean = dot / C;
    for (let c = 0; c < C; c++) {
      const xh = x[o + c] * s;
      const d = s * (dOut[o + c] * w[c] - xh * mean);
      dw[c] += dOut[o + c] * xh;
      dx[o + c] = accumulate ? dx[o + c] + d : d;
    }
  }
}

// ---- activations (elementwise; every element is read before its output is written, so aliasing is safe) ----

function sigmoid(x: number): number {
  return 1 / (1 + Math.exp(-x));
}

export function siluForward64(out: Float64Array, x: Float64Array, n: number): void {
  for (let i = 0; i < n; i++) out[i] = x[i] * sigmoid(x[i]);
}

/** silu'(x) = σ(x) · (1 + x · (1 − σ(x))). */
export function siluBackward64(dx: Float64Array, dOut: Float64Array, x: Float64Array, n: number): void {
  for (let i = 0; i < n; i++) {
    const s = sigmoid(x[i]);
    dx[i] = dOut[i] * s * (1 + x[i] * (1 - s));
  }
}

export function sigmoidMulForward64(out: Float64Array, gate: Float64Array, x: Float64Array, n: number): void {
  for (let i = 0; i < n; i++) out[i] = sigmoid(gate[i]) * x[i];
}

export function sigmoidMulBackward64(dGate: Float64Array, dx: Float64Array, dOut: Float64Array, gate: Float64Array, x: Float64Array, n: number): void {
  for (let i = 0; i < n; i++) {
    const s = sigmoid(gate[i]), g = dOut[i], xi = x[i];
    dGate[i] = g * xi * s * (1 - s);
    dx[i] = g * s;
  }
}

// ---- RoPE ----

/**
 * Partial NeoX RoPE on x[T, nHeads, Dh] in place (MODEL.md §9): pairs (i, i + r/2), i < r/2, rotate by
 * angle = fp32(p · inv_freq[i]) with the inference engine's fp32 inv_freq (ropeInvFreq), so a trained model sees the
 * same angles the engine uses — at long positions the fp32 angle rounding is not negligible. cos/sin are taken in
 * float64 of that angle. `inverse` uses −angle: the transpose of the forward rotation, i.e. its backward.
 */
export function rope64(x: Float64Array, positions: Int32Array, T: number, nHeads: number, Dh: number, rotaryDim: number, theta: number, inverse: boolean): void {
  ropeRotate(x, positions, T, nHeads, Dh, rotaryDim, theta, (v) => v, inverse ? -1 : 1);
}

// ---- cross-entropy ----

/**
 * Per row t with a target: loss = logsumexp(row) − row[target], dLogits = (softmax(row) − onehot) · gradScale.
 * The max is subtracted before exponentiating. dLogits may alias logits: the row is fully read (max, lse, target
 * logit) before it is written.
 */
export function crossEntropy64(losses: Float64Array, dLogits: Float64Array, logits: Float64Array, targets: Int32Array, T: number, V: number, gradScale: number): void {
  for (let t = 0; t < T; t++) {
    const o = t * V;
    const target = targets[t];
    if (target === -1) {
      losses[t] = 0;
      dLogits.fill(0, o, o + V);
      continue;
    }
    let max = -Infinity;
    for (let v = 0; v < V; v++) if (logits[o + v] > max) max = logits[o + v];
    let sum = 0;
    for (let v = 0; v < V; v++) sum += Math.exp(logits[o + v] - max);
    const lse = max + Math.log(sum);
    losses[t] = lse - logits[o + target];
    for (let v = 0; v < V; v++) dLogits[o + v] = Math.exp(logits[o + v] - lse) * gradScale;
    dLogits[o + target] -= gradScale;
  }
}

// ---- AdamW ----

/** Decoupled weight decay: the decay term uses p before this step's update, scaled by lr (not by the moments). */
export function adamw64(p: Float64Array, g: Float64Array, m: Float64Array, v: Float64Array, n: number, o: AdamWStep): void {
  const c1 = 1 - Math.pow(o.beta1, o.step), c2 = 1 - Math.pow(o.beta2, o.step);
  for (let i = 0; i < n; i++) {
    const gi = g[i] * o.gradScale;
    m[i] = o.beta1 * m[i] + (1 - o.beta1) * gi;
    v[i] = o.beta2 * v[i] + (1 - o.beta2) * gi * gi;
    const mh = m[i] / c1, vh = v[i] / c2;
    p[i] -= o.lr * (mh / (Math.sqrt(vh) + o.eps) + o.weightDecay * p[i]);
  }
}

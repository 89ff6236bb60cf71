/**
 * Float64 references for the training sequence ops, straight from the definitions (naive, per token): lightning
 * (MODEL.md §8.4) per document and head from a zero state, its gradient through the reverse state recursion, and
 * varlen causal GQA softmax attention with its gradient. Packed documents: rows [offsets[i], offsets[i + 1]).
 * Layouts as src/train/backend.ts: qkv [T, H·3·Dh] (per head q | k | v), lightning out [T, H·Dh]; q/out [T, H, Dh],
 * k/v [T, Hkv, Dh], lse [T, H].
 */

type Arr = ArrayLike<number>;

/** out[T, H·Dh]: S_t = e^(−s_h)·S_(t−1) + k_tᵀ v_t, o_t = q_t·S_t. */
export function lightningForwardRef(qkv: Arr, slopes: Arr, offsets: Arr, H: number, Dh: number): Float64Array {
  const T = offsets[offsets.length - 1];
  const out = new Float64Array(T * H * Dh);
  const S = new Float64Array(Dh * Dh);
  for (let doc = 0; doc + 1 < offsets.length; doc++) {
    for (let h = 0; h < H; h++) {
      const lam = Math.exp(-slopes[h]);
      S.fill(0);
      for (let t = offsets[doc]; t < offsets[doc + 1]; t++) {
        const q = t * 3 * H * Dh + h * 3 * Dh, k = q + Dh, v = q + 2 * Dh;
        for (let d = 0; d < Dh; d++) {
          const kd = qkv[k + d];
          for (let e = 0; e < Dh; e++) S[d * Dh + e] = lam * S[d * Dh + e] + kd * qkv[v + e];
        }
        const o = t * H * Dh + h * Dh;
        for (let d = 0; d < Dh; d++) {
          const qd = qkv[q + d];
          for (let e = 0; e < Dh; e++) out[o + e] += qd * S[d * Dh + e];
        }
      }
    }
  }
  return out;
}

/**
 * dQkv[T, H·3·Dh] from dOut[T, H·Dh]: dq_t = dO_t·S_tᵀ (forward sweep), and with G_t = λ·G_(t+1) + q_tᵀ dO_t
 * (reverse sweep) dk_t = G_t·v_tᵀ, dv_t = k_t·G_t.
 */
export function lightningBackwardRef(dOut: Arr, qkv: Arr, slopes: Arr, offsets: Arr, H: number, Dh: number): Float64Array {
  const T = offsets[offsets.length - 1];
  const dQkv = new Float64Array(T * 3 * H * Dh);
  const S = new Float64Array(Dh * Dh);
  for (let doc = 0; doc + 1 < offsets.length; doc++) {
    const a = offsets[doc], b = offsets[doc + 1];
    for (let h = 0; h < H; h++) {
      const lam = Math.exp(-slopes[h]);
      S.fill(0);
      for (let t = a; t < b; t++) {
        const q = t * 3 * H * Dh + h * 3 * Dh, k = q + Dh, v = q + 2 * Dh, o = t * H * Dh + h * Dh;
        for (let d = 0; d < Dh; d++) {
          const kd = qkv[k + d];
          let acc = 0;
          for (let e = 0; e < Dh; e++) {
            const x = lam * S[d * Dh + e] + kd * qkv[v + e];
            S[d * Dh + e] = x;
            acc += dOut[o + e] * x;
          }
          dQkv[q + d] = acc;
        }
      }
      S.fill(0); // G
      for (let t = b - 1; t >= a; t--) {
        const q = t * 3 * H * Dh + h * 3 * Dh, k = q + Dh, v = q + 2 * Dh, o = t * H * Dh + h * Dh;
        for (let d = 0; d < Dh; d++) {
          const qd = qkv[q + d];
          for (let e = 0; e < Dh; e++) S[d * Dh + e] = lam * S[d * Dh + e] + qd * dOut[o + e];
        }
        for (let d = 0; d < Dh; d++) {
          let acc = 0;
          for (let e = 0; e < Dh; e++) acc += S[d * Dh + e] * qkv[v + e];
          dQkv[k + d] = acc;
        }
        for (let d = 0; d < Dh; d++) {
          const kd = qkv[k + d];
          for (let e = 0; e < Dh; e++) dQkv[v + e] += kd * S[d * Dh + e];
        }
      }
    }
  }
  return dQkv;
}

/** Probabilities of query row i (global) of head h over keys [a, i]: p[j − a]. */
function probs(q: Arr, k: Arr, a: number, i: number, h: number, kvh: number, H: number, Hkv: number, Dh: number, scale: number, p: Float64Array): { m: number; sum: number } {
  const qo = (i * H + h) * Dh;
  let m = -Infinity;
  for (let j = a; j <= i; j++) {
    const ko = (j * Hkv + kvh) * Dh;
    let s = 0;
    for (let d = 0; d < Dh; d++) s += q[qo + d] * k[ko + d];
    s *= scale;
    p[j - a] = s;
    if (s > m) m = s;
  }
  let sum = 0;
  for (let j = a; j <= i; j++) sum += p[j - a] = Math.exp(p[j - a] - m);
  for (let j = a; j <= i; j++) p[j - a] /= sum;
  return { m, sum };
}

/** out[T, H, Dh], lse[T, H]: causal softmax attention within each document, head h reading kv head ⌊h/(H/Hkv)⌋. */
export function attentionForwardRef(q: Arr, k: Arr, v: Arr, offsets: Arr, H: number, Hkv: number, Dh: number, scale: number): { out: Float64Array; lse: Float64Array } {
  const T = offsets[offsets.length - 1];
  const out = new Float64Array(T * H * Dh), lse = new Float64Array(T * H);
  const G = H / Hkv;
  let maxLen = 0;
  for (let doc = 0; doc + 1 < offsets.length; doc++) maxLen = Math.max(maxLen, offsets[doc + 1] - offsets[doc]);
  const p = new Float64Array(maxLen);
  for (let doc = 0; doc + 1 < offsets.length; doc++) {
    const a = offsets[doc], b = offsets[doc + 1];
    for (let h = 0; h < H; h++) {
      const kvh = Math.floor(h / G);
      for (let i = a; i < b; i++) {
        const { m, sum } = probs(q, k, a, i, h, kvh, H, Hkv, Dh, scale, p);
        lse[i * H + h] = m + Math.log(sum);
        const o = (i * H + h) * Dh;
        for (let j = a; j <= i; j++) {
          const vo = (j * Hkv + kvh) * Dh, pj = p[j - a];
          for (let e = 0; e < Dh; e++) out[o + e] += pj * v[vo + e];
        }
      }
    }
  }
  return { out, lse };
}

/** dq[T, H, Dh], dk/dv[T, Hkv, Dh] of attentionForwardRef for the upstream gradient dOut[T, H, Dh]. */
export function attentionBackwardRef(dOut: Arr, q: Arr, k: Arr, v: Arr, offsets: Arr, H: number, Hkv: number, Dh: number, scale: number): { dq: Float64Array; dk: Float64Array; dv: Float64Array } {
  const T = offsets[offsets.length - 1];
  const dq = new Float64Array(T * H * Dh), dk = new Float64Array(T * Hkv * Dh), dv = new Float64Array(T * Hkv * Dh);
  const G = H / Hkv;
  let maxLen = 0;
  for (let doc = 0; doc + 1 < offsets.length; doc++) maxLen = Math.max(maxLen, offsets[doc + 1] - offsets[doc]);
  const p = new Float64Array(maxLen), dp = new Float64Array(maxLen);
  for (let doc = 0; doc + 1 < offsets.length; doc++) {
    const a = offsets[doc], b = offsets[doc + 1];
    for (let h = 0; h < H; h++) {
      const kvh = Math.floor(h / G);
      for (let i = a; i < b; i++) {
        probs(q, k, a, i, h, kvh, H, Hkv, Dh, scale, p);
        const o = (i * H + h) * Dh;
        let D = 0;
        for (let j = a; j <= i; j++) {
          const vo = (j * Hkv + kvh) * Dh;
          let s = 0;
          for (let e = 0; e < Dh; e++) s += dOut[o + e] * v[vo + e];
          dp[j - a] = s;
          D += p[j - a] * s;
        }
        for (let j = a; j <= i; j++) {
          const ko = (j * Hkv + kvh) * Dh, pj = p[j - a];
          const ds = pj * (dp[j - a] - D) * scale;
          for (let e = 0; e < Dh; e++) {
            dq[o + e] += ds * k[ko + e];
            dk[ko + e] += ds * q[o + e];
            dv[ko + e] += pj * dOut[o + e];
          }
        }
      }
    }
  }
  return { dq, dk, dv };
}

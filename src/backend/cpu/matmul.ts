/**
 * CPU GEMM: out[t, n] = Σ_k x[t, k] · w[n, k]  ("NT": both operands read along contiguous rows), with row strides
 * so that head slices of a fused projection can be used in place.
 *
 * Weights stay [out, in] as in the checkpoint. The loop is tiled 4 rows of x × 4 rows of w: sixteen independent
 * accumulators per inner step (8 loads for 16 multiply-adds) keep V8's double registers busy with no allocation.
 * Accumulation is float64 (JS numbers), rounded once to f32 on store — more accurate than an f32-accumulating GEMM.
 *
 * `tri` restricts the work for causal products over one block (row tile [t, t+4) is the tile's diagonal):
 *  - 'lowerN': only columns n < t + 4 are computed (scores Q·Kᵀ: keys after the query are masked anyway);
 *  - 'lowerK': the sum runs over k < t + 4 only (P·V with P lower-triangular, zero above the diagonal).
 * Elements outside the computed region are left untouched.
 */

export type Triangle = 'none' | 'lowerN' | 'lowerK';

export function gemmNT(
  T: number, N: number, K: number,
  x: Float32Array, xOff: number, ldx: number,
  w: Float32Array, wOff: number, ldw: number,
  out: Float32Array, oOff: number, ldo: number,
  tri: Triangle = 'none',
): void {
  let t = 0;
  for (; t < T; t += 4) {
    const rows = Math.min(4, T - t);
    const nEnd = tri === 'lowerN' ? Math.min(N, t + 4) : N;
    const kEnd = tri === 'lowerK' ? Math.min(K, t + 4) : K;
    if (rows < 4) {
      for (let r = 0; r < rows; r++) gemvRow(nEnd, kEnd, x, xOff + (t + r) * ldx, w, wOff, ldw, out, oOff + (t + r) * ldo);
      continue;
    }
    const x0 = xOff + t * ldx, x1 = x0 + ldx, x2 = x1 + ldx, x3 = x2 + ldx;
    const o0 = oOff + t * ldo, o1 = o0 + ldo, o2 = o1 + ldo, o3 = o2 + ldo;
    let n = 0;
    for (; n + 4 <= nEnd; n += 4) {
      const wa = wOff + n * ldw, wb = wa + ldw, wc = wb + ldw, wd = wc + ldw;
      let a0 = 0, a1 = 0, a2 = 0, a3 = 0, b0 = 0, b1 = 0, b2 = 0, b3 = 0;
      let c0 = 0, c1 = 0, c2 = 0, c3 = 0, d0 = 0, d1 = 0, d2 = 0, d3 = 0;
      for (let k = 0; k < kEnd; k++) {
        const p0 = x[x0 + k], p1 = x[x1 + k], p2 = x[x2 + k], p3 = x[x3 + k];
        const va = w[wa + k];
        a0 += p0 * va; a1 += p1 * va; a2 += p2 * va; a3 += p3 * va;
        const vb = w[wb + k];
        b0 += p0 * vb; b1 += p1 * vb; b2 += p2 * vb; b3 += p3 * vb;
        const vc = w[wc + k];
        c0 += p0 * vc; c1 += p1 * vc; c2 += p2 * vc; c3 += p3 * vc;
        const vd = w[wd + k];
        d0 += p0 * vd; d1 += p1 * vd; d2 += p2 * vd; d3 += p3 * vd;
      }
      out[o0 + n] = a0; out[o1 + n] = a1; out[o2 + n] = a2; out[o3 + n] = a3;
      out[o0 + n + 1] = b0; out[o1 + n + 1] = b1; out[o2 + n + 1] = b2; out[o3 + n + 1] = b3;
      out[o0 + n + 2] = c0; out[o1 + n + 2] = c1; out[o2 + n + 2] = c2; out[o3 + n + 2] = c3;
      out[o0 + n + 3] = d0; out[o1 + n + 3] = d1; out[o2 + n + 3] = d2; out[o3 + n + 3] = d3;
    }
    for (; n < nEnd; n++) {
      const wa = wOff + n * ldw;
      let a0 = 0, a1 = 0, a2 = 0, a3 = 0;
      for (let k = 0; k < kEnd; k++) {
        const va = w[wa + k];
        a0 += x[x0 + k] * va; a1 += x[x1 + k] * va; a2 += x[x2 + k] * va; a3 += x[x3 + k] * va;
      }
      out[o0 + n] = a0; out[o1 + n] = a1; out[o2 + n] = a2; out[o3 + n] = a3;
    }
  }
}

/** One row: out[n] = Σ_k x[k] · w[n, k] for n < N, four outputs at a time. */
function gemvRow(N: number, K: number, x: Float32Array, x0: number, w: Float32Array, wOff: number, ldw: number, out: Float32Array, o0: number): void {
  let n = 0;
  for (; n + 4 <= N; n += 4) {
    const wa = wOff + n * ldw, wb = wa + ldw, wc = wb + ldw, wd = wc + ldw;
    let a = 0, b = 0, c = 0, d = 0;
    for (let k = 0; k < K; k++) {
      const p = x[x0 + k];
      a += p * w[wa + k]; b += p * w[wb + k]; c += p * w[wc + k]; d += p * w[wd + k];
    }
    out[o0 + n] = a; out[o0 + n + 1] = b; out[o0 + n + 2] = c; out[o0 + n + 3] = d;
  }
  for (; n < N; n++) {
    const wa = wOff + n * ldw;
    let a = 0;
    for (let k = 0; k < K; k++) a += x[x0 + k] * w[wa + k];
    out[o0 + n] = a;
  }
}

/** Dense out[T, N] = x[T, K] · w[N, K]ᵀ with contiguous rows. */
export function matmulNT(
  out: Float32Array, outOff: number,
  x: Float32Array, xOff: number,
  w: Float32Array, wOff: number,
  T: number, N: number, K: number,
): void {
  gemmNT(T, N, K, x, xOff, K, w, wOff, K, out, outOff, N);
}

/** dst[c, r] = src[r·lds + c] for r < R, c < C (dst is C×R, contiguous). */
export function transpose(src: Float32Array, sOff: number, lds: number, R: number, C: number, dst: Float32Array): void {
  for (let r = 0; r < R; r++) {
    const s = sOff + r * lds;
    for (let c = 0; c < C; c++) dst[c * R + r] = src[s + c];
  }
}

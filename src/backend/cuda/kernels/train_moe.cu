// train_moe.cu — the MoE block for training (src/train/cuda/moe.ts), fp32 activations and gradients.
//
// Layouts: logits, probs f32 [T, E]; indices i32 [T, K], weights f32 [T, K], slot s = t·K + k. The experts path
// sorts slots by expert on the host (stable: rows of an expert in slot order), so "rows" r are slots in expert
// order: slot_of_row[r] = s, row_of_slot[s] = r. Per-slot saved tensors (h13 [T·K, 2I], y [T·K, D]) are in slot
// order; the cuBLAS GEMMs run on row-order scratch (one contiguous block of rows per expert).
//
// Routing:
//   train_moe_route_fwd    one warp per token: probs = softmax(logits) (fp32), the K largest in descending order,
//                          ties to the lower id (as moe_route_f32), weights renormalised over the K picks.
//   train_moe_route_bwd    one warp per token (8 per block): through the renormalisation
//                          (dp_{i_m} = (dW_m − Σ_k dW_k·w_k) / Σ_k p_{i_k}), the load-balancing term
//                          (dp_e += auxC · counts_e, auxC = auxCoef·E / (T·K·T)), the softmax backward
//                          (dl = p ⊙ (dp − ⟨p, dp⟩)) and the z-loss (dl += 2·zC·lse·p, zC = zCoef / T); the two
//                          loss values are reduced per block and added to losses[0..1] with one atomic each.
// Experts (FFN_e(x) = (silu(x·w1ᵀ) ⊙ x·w3ᵀ)·w2ᵀ; GEMM inputs bf16, outputs fp32):
//   train_moe_gather_bf16  xs[r] = bf16(x[slot_of_row[r] / K])
//   train_moe_swiglu_fwd   h13 rows (fp32, row order) → act[r] = bf16(silu(h1)·h3) and saved h13[slot] (fp32)
//   train_moe_combine_fwd  out[t] = Σ_k w[t,k]·ys[row_of_slot[s]], saved y[s] = ys[row_of_slot[s]]
//   train_moe_dweights     dWeights[s] = ⟨dOut[t], y[s]⟩ (one warp per slot)
//   train_moe_dy_bf16      dys[r] = bf16(w[s]·dOut[t]) (the gradient of y_s)
//   train_moe_act_bf16     act recomputed from the saved h13 (for dW2)
//   train_moe_swiglu_bwd   dact (fp32, row order) → dh13[r] = bf16(dact·h3·silu'(h1) | dact·silu(h1))
//   train_moe_combine_bwd  dx[t] = Σ_k dxs[row_of_slot[s]] (a gather-sum: deterministic, no atomics)

#include "common.cuh"


// grid ⌈T/4⌉, block 128: warp w of block b routes token t = 4b + w. E ≤ any (lanes loop over experts).
extern "C" __global__ void __launch_bounds__(128) train_moe_route_fwd(int* __restrict__ idx, float* __restrict__ w, float* __restrict__ probs,
                                                                     const float* __restrict__ logits, int T, int E, int K) {
  const int lane = threadIdx.x & 31;
  const int t = blockIdx.x * 4 + (threadIdx.x >> 5);
  if (t >= T) return;  // whole warp
  const float* row = logits + (i64)t * E;
  float* prow = probs + (i64)t * E;
  float mx = NEG_INF;
  for (int e = lane; e < E; e += 32) mx = fmaxf(mx, row[e]);
  mx = warp_max(mx);
  float sum = 0.f;
  for (int e = lane; e < E; e += 32) sum += expf(row[e] - mx);
  sum = warp_sum(sum);
  const float inv = 1.f / sum;
  for (int e = lane; e < E; e += 32) prow[e] = expf(row[e] - mx) * inv;  // each lane re-reads only its own writes below
  // The k-th pick is the best expert strictly after the (k−1)-th in the order (p descending, id ascending).
  float prevP = POS_INF;
  int prevId = -1;
  double total = 0.0;
  for (int k = 0; k < K; ++k) {
    float bp = NEG_INF;
    int bi = 0x7fffffff;
    for (int e = lane; e < E; e += 32) {
      const float p = prow[e];
      const bool after = p < prevP || (p == prevP && e > prevId);
      const bool better = p > bp || (p == bp && e < bi);
      if (after && better) {
        bp = p;
        bi = e;
      }
    }
    warp_argmax(bp, bi);
    if (bi >= E) {  // only with NaN logits: keep the index in range
      bi = 0;
      bp = 0.f;
    }
    prevP = bp;
    prevId = bi;
    total += (double)bp;
    if (lane == 0) {
      idx[(i64)t * K + k] = bi;
      w[(i64)t * K + k] = bp;
    }
  }
  if (lane == 0) {
    const float denom = (float)total;
    for (int k = 0; k < K; ++k) w[(i64)t * K + k] /= denom;  // this thread's own writes above
  }
}

// grid ≤ ⌈T/8⌉ (warps loop over tokens), block 256. counts[E]: picks per expert over all T·K slots.
extern "C" __global__ void __launch_bounds__(256) train_moe_route_bwd(float* __restrict__ dlogits, float* losses, const float* __restrict__ dW,
                                                                     const float* __restrict__ logits, const float* __restrict__ probs,
                                                                     const int* __restrict__ idx, const float* __restrict__ w,
                                                                     const int* __restrict__ counts, int T, int E, int K, float auxC, float zC) {
  __shared__ float partAux[8], partZ[8];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  float lossAux = 0.f, lossZ = 0.f;  // lane 0's running sums for this warp's tokens
  for (int t = blockIdx.x * 8 + warp; t < T; t += gridDim.x * 8) {
    const float* lrow = logits + (i64)t * E;
    const float* prow = probs + (i64)t * E;
    const int* ti = idx + (i64)t * K;
    const float* tw = w + (i64)t * K;
    const float* tdw = dW + (i64)t * K;
    // Renormalisation: S = Σ_k p_{i_k}, dot = Σ_k dW_k·w_k (every lane computes both; K is small).
    float S = 0.f, dot = 0.f;
    for (int k = 0; k < K; ++k) {
      S += prow[ti[k]];
      dot += tdw[k] * tw[k];
    }
    const float invS = 1.f / S;
    // dp_e (recomputed in the second pass rather than stored); sdot = Σ_e p_e·dp_e; aux = Σ_e auxC·counts_e·p_e.
    float sdot = 0.f, aux = 0.f, mx = NEG_INF;
    for (int e = lane; e < E; e += 32) {
      const float p = prow[e];
      const float a = auxC * (float)counts[e];
      float dp = a;
      for (int k = 0; k < K; ++k)
        if (ti[k] == e) dp += (tdw[k] - dot) * invS;
      sdot += p * dp;
      aux += a * p;
      mx = fmaxf(mx, lrow[e]);
    }
    sdot = warp_sum(sdot);
    aux = warp_sum(aux);
    mx = warp_max(mx);
    float se = 0.f;
    for (int e = lane; e < E; e += 32) se += expf(lrow[e] - mx);
    const float lse = mx + logf(warp_sum(se));
    for (int e = lane; e < E; e += 32) {
      const float p = prow[e];
      float dp = auxC * (float)counts[e];
      for (int k = 0; k < K; ++k)
        if (ti[k] == e) dp += (tdw[k] - dot) * invS;
      dlogits[(i64)t * E + e] = p * (dp - sdot) + 2.f * zC * lse * p;
    }
    lossAux += aux;
    lossZ += zC * lse * lse;
  }
  if (lane == 0) {
    partAux[warp] = lossAux;
    partZ[warp] = lossZ;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    float a = 0.f, z = 0.f;
    for (int i = 0; i < 8; ++i) {
      a += partAux[i];
      z += partZ[i];
    }
    atomicAdd(losses, a);
    atomicAdd(losses + 1, z);
  }
}

// grid rows (T·K), block 256.
extern "C" __global__ void train_moe_gather_bf16(bf16* __restrict__ xs, const float* __restrict__ x, const int* __restrict__ slot_of_row, int K, int D) {
  const float* src = x + (i64)(slot_of_row[blockIdx.x] / K) * D;
  bf16* dst = xs + (i64)blockIdx.x * D;
  for (int i = threadIdx.x; i < D; i += blockDim.x) dst[i] = f2bf(src[i]);
}

// grid rows, block 256. h13s: [rows, 2I] fp32 in row order (the GEMM output).
extern "C" __global__ void train_moe_swiglu_fwd(bf16* __restrict__ act, float* __restrict__ h13_saved, const float* __restrict__ h13s,
                                                const int* __restrict__ slot_of_row, int I) {
  const i64 r = blockIdx.x;
  const float* h = h13s + r * 2 * I;
  float* hs = h13_saved + (i64)slot_of_row[r] * 2 * I;
  for (int i = threadIdx.x; i < I; i += blockDim.x) {
    const float h1 = h[i], h3 = h[I + i];
    hs[i] = h1;
    hs[I + i] = h3;
    act[r * I + i] = f2bf(silu(h1) * h3);
  }
}

// grid T, block 256. ys: [rows, D] fp32 in row order.
extern "C" __global__ void train_moe_combine_fwd(float* __restrict__ out, float* __restrict__ y_saved, const float* __restrict__ ys,
                                                 const int* __restrict__ row_of_slot, const float* __restrict__ w, int K, int D) {
  const i64 t = blockIdx.x;
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float acc = 0.f;
    for (int k = 0; k < K; ++k) {
      const i64 s = t * K + k;
      const float v = ys[(i64)row_of_slot[s] * D + d];
      y_saved[s * D + d] = v;
      acc += w[s] * v;
    }
    out[t * D + d] = acc;
  }
}

// grid ⌈T·K/8⌉, block 256: one warp per slot.
extern "C" __global__ void __launch_bounds__(256) train_moe_dweights(float* __restrict__ dW, const float* __restrict__ dout,
                                                                    const float* __restrict__ y_saved, int TK, int K, int D) {
  const int s = blockIdx.x * 8 + (threadIdx.x >> 5), lane = threadIdx.x & 31;
  if (s >= TK) return;  // whole warp
  const float* g = dout + (i64)(s / K) * D;
  const float* y = y_saved + (i64)s * D;
  float acc = 0.f;
  for (int d = lane; d < D; d += 32) acc += g[d] * y[d];
  acc = warp_sum(acc);
  if (lane == 0) dW[s] = acc;
}

// grid rows, block 256.
extern "C" __global__ void train_moe_dy_bf16(bf16* __restrict__ dys, const float* __restrict__ dout, const float* __restrict__ w,
                                             const int* __restrict__ slot_of_row, int K, int D) {
  const int s = slot_of_row[blockIdx.x];
  const float ws = w[s];
  const float* g = dout + (i64)(s / K) * D;
  bf16* dst = dys + (i64)blockIdx.x * D;
  for (int d = threadIdx.x; d < D; d += blockDim.x) dst[d] = f2bf(ws * g[d]);
}

// grid rows, block 256.
extern "C" __global__ void train_moe_act_bf16(bf16* __restrict__ act, const float* __restrict__ h13_saved, const int* __restrict__ slot_of_row, int I) {
  const float* h = h13_saved + (i64)slot_of_row[blockIdx.x] * 2 * I;
  bf16* dst = act + (i64)blockIdx.x * I;
  for (int i = threadIdx.x; i < I; i += blockDim.x) dst[i] = f2bf(silu(h[i]) * h[I + i]);
}

// grid rows, block 256. act = silu(h1)·h3: dh1 = dact·h3·silu'(h1), dh3 = dact·silu(h1).
extern "C" __global__ void train_moe_swiglu_bwd(bf16* __restrict__ dh13, const float* __restrict__ dact, const float* __restrict__ h13_saved,
                                                const int* __restrict__ slot_of_row, int I) {
  const i64 r = blockIdx.x;
  const float* h = h13_saved + (i64)slot_of_row[r] * 2 * I;
  bf16* dst = dh13 + r * 2 * I;
  for (int i = threadIdx.x; i < I; i += blockDim.x) {
    const float h1 = h[i], h3 = h[I + i], g = dact[r * I + i];
    const float s = sigmoid(h1);
    dst[i] = f2bf(g * h3 * s * (1.f + h1 * (1.f - s)));
    dst[I + i] = f2bf(g * h1 * s);
  }
}

// grid T, block 256.
extern "C" __global__ void train_moe_combine_bwd(float* __restrict__ dx, const float* __restrict__ dxs, const int* __restrict__ row_of_slot, int K, int D) {
  const i64 t = blockIdx.x;
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float acc = 0.f;
    for (int k = 0; k < K; ++k) acc += dxs[(i64)row_of_slot[t * K + k] * D + d];
    dx[t * D + d] = acc;
  }
}

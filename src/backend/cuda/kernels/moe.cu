// moe.cu — the mixture-of-experts block of MiniMax-01 (MODEL.md §10) on the GPU, matching the CPU ops moeRoute and
// moeExperts of src/backend/cpu/moe.ts up to the bf16 rounding points of the remote code (MODEL.md §4, §10).
//
// Layouts (row-major): x, out bf16 [T, D]; router logits f32 [T, E]; indices i32 [T, K] and weights f32 [T, K], slot
// s = t·K + k; w13 bf16 [E, 2I, D] (rows 0..I−1 of expert e = w1_e (gate), rows I..2I−1 = w3_e (up)); w2 bf16
// [E, D, I]. Scratch: act bf16 [rows, I], y bf16 [rows, D], one row per slot.
//
// Routing (CpuBackend.moeRoute):
//   moe_route_f32        p = softmax(logits[t, :]) over all E experts in fp32; the K largest p in descending order,
//                        ties to the lower expert id; w_k = p_k / Σ_j p_j (fp32 divide by the fp32-rounded sum).
//                        One warp per token (block 128 = 4 tokens), any E ≤ 1024 (lanes loop over experts).
//
// Experts (CpuBackend.moeExperts), FFN_e(x) = bf16(bf16(bf16(silu(bf16(x·w1_eᵀ))) · bf16(x·w3_eᵀ)) · w2_eᵀ):
//   rounding points: each dot product (fp32 accumulation) rounds to bf16; silu (fp32) rounds; the gate·up product
//   rounds; the down projection rounds.
//   Small batch (T·K ≤ 1024 slots, decode; fixed grids, no host sync, CUDA-graph safe):
//     moe_sort_small        ONE CTA of 1024 threads. order[0..E] = exclusive offsets of the slots per expert
//                           (order[E] = T·K); order[E+1 + r] = slot ids sorted by (expert, slot) — deterministic.
//     moe_grouped_w13_bf16_ns{1,2,4,8}  grid (min(E, T·K), ⌈I/16⌉), block 256: CTA column n serves the n-th expert
//                           with slots (exits if there is none); each warp owns 2 of the tile's 16 intermediate rows i
//                           (w1_e[i] and w3_e[i]: 4 weight rows), streams them once per group of NS slots (16-byte
//                           loads when D % 8 == 0; the host picks NS ≥ T where it can, fewer registers) and writes
//                           act[s, i] = bf16(bf16(silu(bf16(x_t·w1_e[i]))) · bf16(x_t·w3_e[i])), t = s / K.
//     moe_grouped_w2_bf16_ns{1,2,4,8}   grid (min(E, T·K), ⌈D/16⌉), block 256: warp owns 2 rows d of w2_e; y[s, d] = bf16(act_s · w2_e[d]).
//   Large batch (prefill; the host reads the per-expert counts once and runs cuBLAS per expert):
//     moe_histogram         counts[idx[s]] += 1 (counts zeroed by the host).
//     moe_scatter           cursor[e] starts at the offset of expert e; r = atomicAdd(&cursor[e], 1);
//                           row_of_slot[s] = r; token_of_row[r] = s / K. (Row order inside an expert is not
//                           deterministic; every row is computed independently, so results do not depend on it.)
//     swiglu_bf16           h [rows, 2I] = bf16(x·w1ᵀ) | bf16(x·w3ᵀ); act[r, i] = bf16(bf16(silu(h[r, i])) · h[r, I + i]).
//   Both paths:
//     moe_combine_bf16      grid (T), block 256. For token t, its K slots in ascending expert id order (the
//                           reference's accumulation order): c_k = bf16(y[row_k, :] · bf16(w[t, k])),
//                           row_k = row_of_slot ? row_of_slot[t·K + k] : t·K + k (null = identity, the small path);
//                           acc = 0; acc = bf16(acc + c_k) in that order; out[t, :] = acc. K ≤ 32.

#include "common.cuh"

#define MOE_FULL 0xffffffffu
#define MOE_TILE 16   // rows of w13 (per half) / of w2 per CTA: 8 warps × 2 rows
#define MOE_MAX_K 32
#define MOE_SORT_THREADS 1024

static __device__ __forceinline__ int moe_imin(int a, int b) { return a < b ? a : b; }

// 16-byte read-only load (8 bf16). The address must be 16-byte aligned.
static __device__ __forceinline__ void moe_ld16(const bf16* p, u32 (&r)[4]) {
  asm("ld.global.nc.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "l"(p));
}

// 16-byte load through the coherent path (data written by an earlier kernel of the same stream is fine either way).
static __device__ __forceinline__ void moe_ld16c(const bf16* p, u32 (&r)[4]) {
  asm volatile("ld.global.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "l"(p));
}

static __device__ __forceinline__ void moe_st16(bf16* p, const u32 (&r)[4]) {
  asm volatile("st.global.v4.u32 [%0], {%1, %2, %3, %4};" ::"l"(p), "r"(r[0]), "r"(r[1]), "r"(r[2]), "r"(r[3]) : "memory");
}

// acc + Σ_q w[q]·v[q] over 8 packed bf16 pairs, fp32 FMAs in element order.
static __device__ __forceinline__ float moe_dot8(const u32 (&w)[4], const u32 (&v)[4], float acc) {
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    acc = fmaf(lo_bf(w[q]), lo_bf(v[q]), acc);
    acc = fmaf(hi_bf(w[q]), hi_bf(v[q]), acc);
  }
  return acc;
}

// One warp: acc[r][j] = w[r] · v[j] over L elements for r < R, j < n (n ≤ NS, warp-uniform), fp32 accumulation,
// reduced across the warp (every lane holds the sums). VEC: L % 8 == 0 and all rows 16-byte aligned.
template <int R, int NS, bool VEC>
static __device__ __forceinline__ void moe_warp_dots(float (&acc)[R][NS], const bf16* const (&w)[R], const bf16* const (&v)[NS], int n, int L,
                                                     int lane) {
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int j = 0; j < NS; ++j) acc[r][j] = 0.f;
  if (VEC) {
#pragma unroll 2
    for (int c = lane * 8; c < L; c += 32 * 8) {
      u32 wr[R][4];
#pragma unroll
      for (int r = 0; r < R; ++r) moe_ld16(w[r] + c, wr[r]);
#pragma unroll
      for (int j = 0; j < NS; ++j) {
        if (j < n) {
          u32 xv[4];
          moe_ld16(v[j] + c, xv);
#pragma unroll
          for (int r = 0; r < R; ++r) acc[r][j] = moe_dot8(wr[r], xv, acc[r][j]);
        }
      }
    }
  } else {
    for (int c = lane; c < L; c += 32) {
      float wf[R];
#pragma unroll
      for (int r = 0; r < R; ++r) wf[r] = bf2f(w[r][c]);
#pragma unroll
      for (int j = 0; j < NS; ++j) {
        if (j < n) {
          const float xf = bf2f(v[j][c]);
#pragma unroll
          for (int r = 0; r < R; ++r) acc[r][j] = fmaf(wf[r], xf, acc[r][j]);
        }
      }
    }
  }
#pragma unroll
  for (int j = 0; j < NS; ++j) {
    if (j < n) {
#pragma unroll
      for (int r = 0; r < R; ++r) acc[r][j] = warp_sum(acc[r][j]);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Routing
// ---------------------------------------------------------------------------------------------------------------

// grid ⌈T/4⌉, block 128: warp w of block b routes token t = 4b + w.
extern "C" __global__ void __launch_bounds__(128) moe_route_f32(int* __restrict__ idx, float* __restrict__ w, const float* __restrict__ logits, int T,
                                                               int E, int K) {
  const int lane = threadIdx.x & 31;
  const int t = blockIdx.x * 4 + (threadIdx.x >> 5);
  if (t >= T) return;  // whole warp
  const float* row = logits + (i64)t * E;
  float mx = NEG_INF;
  for (int e = lane; e < E; e += 32) mx = fmaxf(mx, row[e]);
  mx = warp_max(mx);
  float sum = 0.f;
  for (int e = lane; e < E; e += 32) sum += expf(row[e] - mx);
  sum = warp_sum(sum);
  // Selection without a "taken" set: the k-th pick is the best expert strictly worse than the (k−1)-th pick in the
  // total order (p descending, id ascending). p is recomputed by the same expression every time, so it is identical.
  float prevP = POS_INF;
  int prevId = -1;
  double total = 0.0;
  int* ti = idx + (i64)t * K;
  float* tw = w + (i64)t * K;
  for (int k = 0; k < K; ++k) {
    float bp = NEG_INF;
    int bi = 0x7fffffff;
    for (int e = lane; e < E; e += 32) {
      const float p = expf(row[e] - mx) / sum;
      const bool after = p < prevP || (p == prevP && e > prevId);
      const bool better = p > bp || (p == bp && e < bi);
      if (after && better) {
        bp = p;
        bi = e;
      }
    }
    warp_argmax(bp, bi);
    if (bi >= E) {  // only with NaN logits (or K > E): keep the index in range
      bi = 0;
      bp = 0.f;
    }
    prevP = bp;
    prevId = bi;
    total += (double)bp;  // exact for K ≤ 2; the CPU sums in float64 too
    if (lane == 0) {
      ti[k] = bi;
      tw[k] = bp;
    }
  }
  if (lane == 0) {
    const float denom = (float)total;
    for (int k = 0; k < K; ++k) tw[k] = tw[k] / denom;  // this thread's own writes above
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Small-batch path
// ---------------------------------------------------------------------------------------------------------------

// ONE CTA of 1024 threads, TK ≤ 1024. Bitonic sort of the keys (expert << 10 | slot): ascending expert, ascending slot
// within an expert (keys are unique, so the order is fully determined). Offsets by binary search on the sorted keys.
extern "C" __global__ void __launch_bounds__(MOE_SORT_THREADS) moe_sort_small(int* __restrict__ order, const int* __restrict__ idx, int TK, int E) {
  __shared__ u32 keys[MOE_SORT_THREADS];
  const int tid = threadIdx.x;
  u32 v = tid < TK ? (((u32)idx[tid] << 10) | (u32)tid) : 0xffffffffu;
  for (int k = 2; k <= MOE_SORT_THREADS; k <<= 1) {
    const bool up = (tid & k) == 0;
    for (int j = k >> 1; j > 0; j >>= 1) {
      u32 p;
      if (j >= 32) {
        keys[tid] = v;
        __syncthreads();
        p = keys[tid ^ j];
        __syncthreads();
      } else {
        p = __shfl_xor_sync(MOE_FULL, v, j);
      }
      const bool lower = (tid & j) == 0;
      const u32 lo = v < p ? v : p, hi = v < p ? p : v;
      v = (lower == up) ? lo : hi;
    }
  }
  keys[tid] = v;
  __syncthreads();
  if (tid < TK) order[E + 1 + tid] = (int)(v & 1023u);
  for (int e = tid; e <= E; e += MOE_SORT_THREADS) {
    // first position whose key is ≥ e << 10 (padding keys 0xffffffff sort last and are never below it)
    const u32 target = (u32)e << 10;
    int a = 0, b = TK;
    while (a < b) {
      const int m = (a + b) >> 1;
      if (keys[m] < target) a = m + 1;
      else b = m;
    }
    order[e] = a;
  }
}

template <int NS, bool VEC>
static __device__ __forceinline__ void moe_w13_tile(bf16* __restrict__ act, const bf16* __restrict__ x, const int* __restrict__ slots, int beg, int end,
                                                    const bf16* const (&w)[4], int K, int D, int I, int i0, bool two, int lane) {
  for (int g = beg; g < end; g += NS) {
    const int n = moe_imin(NS, end - g);
    int s[NS];
    const bf16* v[NS];
#pragma unroll
    for (int j = 0; j < NS; ++j) {
      s[j] = slots[g + moe_imin(j, n - 1)];
      v[j] = x + (i64)(s[j] / K) * D;
    }
    float acc[4][NS];
    moe_warp_dots<4, NS, VEC>(acc, w, v, n, D, lane);
#pragma unroll
    for (int j = 0; j < NS; ++j) {
      if (j < n && lane == j) {
        bf16* a = act + (i64)s[j] * I + i0;
        a[0] = f2bf(rbf(silu(rbf(acc[0][j]))) * rbf(acc[2][j]));
        if (two) a[1] = f2bf(rbf(silu(rbf(acc[1][j]))) * rbf(acc[3][j]));
      }
    }
  }
}

// The e-th CTA column serves the blockIdx.x-th expert that has slots (grid x = min(E, T·K)), so no CTA is launched
// for the idle experts of a decode step: at batch 1, 30 of 32 columns used to exit at once, 18k empty CTAs per layer.
static __device__ __forceinline__ int moe_active_expert(const int* __restrict__ order, int E, int n) {
  const int lane = threadIdx.x & 31;
  for (int e0 = 0; e0 < E; e0 += 32) {
    const int e = e0 + lane;
    const bool has = e < E && order[e + 1] > order[e];
    const u32 mask = __ballot_sync(MOE_FULL, has);
    const int cnt = __popc(mask);
    if (n < cnt) {
      u32 m = mask;
      for (int k = 0; k < n; ++k) m &= m - 1;  // drop the n lowest set bits
      return e0 + __ffs(m) - 1;
    }
    n -= cnt;
  }
  return -1;
}

// grid (min(E, T·K), ⌈I/16⌉), block 256; NS slots per pass (the host picks NS ≥ the likely slots per expert).
template <int NS>
static __device__ __forceinline__ void moe_grouped_w13(bf16* __restrict__ act, const bf16* __restrict__ x, const int* __restrict__ order,
                                                       const bf16* __restrict__ w13, int K, int D, int I, int E) {
  const int e = moe_active_expert(order, E, blockIdx.x);
  if (e < 0) return;
  const int beg = order[e], end = order[e + 1];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int i0 = blockIdx.y * MOE_TILE + warp * 2;
  if (i0 >= I) return;  // whole warp; no block-level synchronisation below
  const bool two = i0 + 1 < I;
  const int i1 = two ? i0 + 1 : i0;
  const bf16* we = w13 + (i64)e * 2 * I * D;
  const bf16* const w[4] = {we + (i64)i0 * D, we + (i64)i1 * D, we + (i64)(I + i0) * D, we + (i64)(I + i1) * D};
  const int* slots = order + E + 1;
  const bool vec = (D & 7) == 0 && ((((u64)x) | ((u64)w13)) & 15) == 0;
  if (vec) moe_w13_tile<NS, true>(act, x, slots, beg, end, w, K, D, I, i0, two, lane);
  else moe_w13_tile<NS, false>(act, x, slots, beg, end, w, K, D, I, i0, two, lane);
}

template <int NS, bool VEC>
static __device__ __forceinline__ void moe_w2_tile(bf16* __restrict__ y, const bf16* __restrict__ act, const int* __restrict__ slots, int beg, int end,
                                                   const bf16* const (&w)[2], int D, int I, int d0, bool two, int lane) {
  for (int g = beg; g < end; g += NS) {
    const int n = moe_imin(NS, end - g);
    int s[NS];
    const bf16* v[NS];
#pragma unroll
    for (int j = 0; j < NS; ++j) {
      s[j] = slots[g + moe_imin(j, n - 1)];
      v[j] = act + (i64)s[j] * I;
    }
    float acc[2][NS];
    moe_warp_dots<2, NS, VEC>(acc, w, v, n, I, lane);
#pragma unroll
    for (int j = 0; j < NS; ++j) {
      if (j < n && lane == j) {
        bf16* o = y + (i64)s[j] * D + d0;
        o[0] = f2bf(acc[0][j]);
        if (two) o[1] = f2bf(acc[1][j]);
      }
    }
  }
}

// grid (min(E, T·K), ⌈D/16⌉), block 256.
template <int NS>
static __device__ __forceinline__ void moe_grouped_w2(bf16* __restrict__ y, const bf16* __restrict__ act, const int* __restrict__ order,
                                                      const bf16* __restrict__ w2, int D, int I, int E) {
  const int e = moe_active_expert(order, E, blockIdx.x);
  if (e < 0) return;
  const int beg = order[e], end = order[e + 1];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int d0 = blockIdx.y * MOE_TILE + warp * 2;
  if (d0 >= D) return;
  const bool two = d0 + 1 < D;
  const int d1 = two ? d0 + 1 : d0;
  const bf16* we = w2 + (i64)e * D * I;
  const bf16* const w[2] = {we + (i64)d0 * I, we + (i64)d1 * I};
  const int* slots = order + E + 1;
  const bool vec = (I & 7) == 0 && ((((u64)act) | ((u64)w2)) & 15) == 0;
  if (vec) moe_w2_tile<NS, true>(y, act, slots, beg, end, w, D, I, d0, two, lane);
  else moe_w2_tile<NS, false>(y, act, slots, beg, end, w, D, I, d0, two, lane);
}

#define MOE_GROUPED(NS)                                                                                                                        \
  extern "C" __global__ void __launch_bounds__(256) moe_grouped_w13_bf16_ns##NS(bf16* __restrict__ act, const bf16* __restrict__ x,            \
                                                                              const int* __restrict__ order, const bf16* __restrict__ w13,     \
                                                                              int K, int D, int I, int E) {                                    \
    moe_grouped_w13<NS>(act, x, order, w13, K, D, I, E);                                                                                       \
  }                                                                                                                                            \
  extern "C" __global__ void __launch_bounds__(256) moe_grouped_w2_bf16_ns##NS(bf16* __restrict__ y, const bf16* __restrict__ act,             \
                                                                             const int* __restrict__ order, const bf16* __restrict__ w2, int D, \
                                                                             int I, int E) {                                                   \
    moe_grouped_w2<NS>(y, act, order, w2, D, I, E);                                                                                            \
  }
MOE_GROUPED(1)
MOE_GROUPED(2)
MOE_GROUPED(4)
MOE_GROUPED(8)

// ---------------------------------------------------------------------------------------------------------------
// Large-batch path
// ---------------------------------------------------------------------------------------------------------------

extern "C" __global__ void moe_histogram(int* __restrict__ counts, const int* __restrict__ idx, int TK) {
  for (int s = blockIdx.x * blockDim.x + threadIdx.x; s < TK; s += gridDim.x * blockDim.x) atomicAdd(&counts[idx[s]], 1);
}

extern "C" __global__ void moe_scatter(int* __restrict__ row_of_slot, int* __restrict__ token_of_row, int* __restrict__ cursor, const int* __restrict__ idx,
                                       int TK, int K) {
  for (int s = blockIdx.x * blockDim.x + threadIdx.x; s < TK; s += gridDim.x * blockDim.x) {
    const int r = atomicAdd(&cursor[idx[s]], 1);
    row_of_slot[s] = r;
    token_of_row[r] = s / K;
  }
}

// Eight columns per thread with 16-byte loads and stores when I % 8 == 0 and both buffers are 16-byte aligned (the
// scalar form did a 64-bit division per element and ran at under half the bandwidth); scalar otherwise.
extern "C" __global__ void swiglu_bf16(bf16* __restrict__ act, const bf16* __restrict__ h, int rows, int I) {
  const i64 stride = (i64)gridDim.x * blockDim.x;
  if ((I & 7) == 0 && ((((u64)act) | ((u64)h)) & 15) == 0) {
    const int I8 = I >> 3;
    const i64 n8 = (i64)rows * I8;
    for (i64 g = (i64)blockIdx.x * blockDim.x + threadIdx.x; g < n8; g += stride) {
      const i64 r = g / I8;
      const i64 c = (g - r * I8) * 8;
      u32 a[4], b[4], o[4];
      moe_ld16c(h + r * 2 * I + c, a);
      moe_ld16c(h + r * 2 * I + I + c, b);
#pragma unroll
      for (int q = 0; q < 4; ++q) o[q] = f2x2bf(rbf(silu(lo_bf(a[q]))) * lo_bf(b[q]), rbf(silu(hi_bf(a[q]))) * hi_bf(b[q]));
      *reinterpret_cast<uint4*>(act + r * I + c) = make_uint4(o[0], o[1], o[2], o[3]);
    }
    return;
  }
  const i64 n = (i64)rows * I;
  for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    const i64 r = i / I;
    const i64 c = i - r * I;
    const bf16* hr = h + r * 2 * I;
    act[i] = f2bf(rbf(silu(bf2f(hr[c]))) * bf2f(hr[I + c]));
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Combine
// ---------------------------------------------------------------------------------------------------------------

// Ranks token t's K slots by ascending expert id (ties — duplicate experts — by k) into rows[]/wts[] (shared);
// `round_w` casts the routing weights to bf16 as the reference does before the multiply. Call with ≥ K threads.
static __device__ __forceinline__ void moe_rank_slots(int* rows, float* wts, const int* row_of_slot, const int* idx, const float* w, int t, int K, bool round_w) {
  if ((int)threadIdx.x < K) {
    const int k = threadIdx.x;
    const int s = t * K + k;
    const int e = idx[s];
    int rank = 0;
    for (int k2 = 0; k2 < K; ++k2) {
      const int e2 = idx[t * K + k2];
      rank += (e2 < e) || (e2 == e && k2 < k);
    }
    rows[rank] = row_of_slot ? row_of_slot[s] : s;
    wts[rank] = round_w ? rbf(w[s]) : w[s];
  }
  __syncthreads();
}

// grid (T), block 256; K ≤ 32.
// Token t's 8 output columns c..c+7 (16-byte loads of y): acc[q] = Σ_j wts[j]·y[rows[j], c + q] over the ranked
// slots, in order. ROUND: the reference's bf16 accumulation (each product and each sum rounded); else fp32 FMAs.
template <bool ROUND>
static __device__ __forceinline__ void moe_combine8(float (&acc)[8], const bf16* __restrict__ y, const int* rows, const float* wts, int K, int D, int c) {
#pragma unroll
  for (int q = 0; q < 8; ++q) acc[q] = 0.f;
  for (int j = 0; j < K; ++j) {
    u32 yv[4];
    moe_ld16c(y + (i64)rows[j] * D + c, yv);
    const float wj = wts[j];
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      if (ROUND) {
        acc[2 * q] = rbf(acc[2 * q] + rbf(lo_bf(yv[q]) * wj));
        acc[2 * q + 1] = rbf(acc[2 * q + 1] + rbf(hi_bf(yv[q]) * wj));
      } else {
        acc[2 * q] = fmaf(lo_bf(yv[q]), wj, acc[2 * q]);
        acc[2 * q + 1] = fmaf(hi_bf(yv[q]), wj, acc[2 * q + 1]);
      }
    }
  }
}

extern "C" __global__ void __launch_bounds__(256) moe_combine_bf16(bf16* __restrict__ out, const bf16* __restrict__ y, const int* __restrict__ row_of_slot,
                                                                  const int* __restrict__ idx, const float* __restrict__ w, int K, int D) {
  __shared__ int rows[MOE_MAX_K];
  __shared__ float wts[MOE_MAX_K];
  const int t = blockIdx.x;
  moe_rank_slots(rows, wts, row_of_slot, idx, w, t, K, true);
  bf16* o = out + (i64)t * D;
  const bool vec = (D & 7) == 0 && ((((u64)out) | ((u64)y)) & 15) == 0;
  if (vec) {
    for (int c = threadIdx.x * 8; c < D; c += blockDim.x * 8) {
      float acc[8];
      moe_combine8<true>(acc, y, rows, wts, K, D, c);
      u32 ov[4];
#pragma unroll
      for (int q = 0; q < 4; ++q) ov[q] = f2x2bf(acc[2 * q], acc[2 * q + 1]);
      moe_st16(o + c, ov);
    }
  } else {
    for (int c = threadIdx.x; c < D; c += blockDim.x) {
      float acc = 0.f;
      for (int j = 0; j < K; ++j) acc = rbf(acc + rbf(bf2f(y[(i64)rows[j] * D + c]) * wts[j]));
      o[c] = f2bf(acc);
    }
  }
}

// moe_combine_f32: the combine for an fp32 output (the engine keeps branch outputs in fp32 before they join the fp32
// residual stream): out[t, :] = Σ_k w[t, k] · y[row_k, :] in fp32, the weights unrounded, slots added in ascending
// expert order. Same slot/row conventions as moe_combine_bf16.
extern "C" __global__ void __launch_bounds__(256) moe_combine_f32(float* __restrict__ out, const bf16* __restrict__ y, const int* __restrict__ row_of_slot,
                                                                 const int* __restrict__ idx, const float* __restrict__ w, int K, int D) {
  __shared__ int rows[MOE_MAX_K];
  __shared__ float wts[MOE_MAX_K];
  const int t = blockIdx.x;
  moe_rank_slots(rows, wts, row_of_slot, idx, w, t, K, false);
  float* o = out + (i64)t * D;
  if ((D & 7) == 0 && ((((u64)out) | ((u64)y)) & 15) == 0) {
    for (int c = threadIdx.x * 8; c < D; c += blockDim.x * 8) {
      float acc[8];
      moe_combine8<false>(acc, y, rows, wts, K, D, c);
      *reinterpret_cast<float4*>(o + c) = make_float4(acc[0], acc[1], acc[2], acc[3]);
      *reinterpret_cast<float4*>(o + c + 4) = make_float4(acc[4], acc[5], acc[6], acc[7]);
    }
    return;
  }
  for (int c = threadIdx.x; c < D; c += blockDim.x) {
    float acc = 0.f;
    for (int j = 0; j < K; ++j) acc = fmaf(bf2f(y[(i64)rows[j] * D + c]), wts[j], acc);
    o[c] = acc;
  }
}

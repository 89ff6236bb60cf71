// sampling.cu — token sampling over rows of fp32 logits, the distribution of the CPU Sampler
// (src/engine/sampling.ts): greedy, or temperature → top-k → top-p → one draw.
//
//   sample_f32(out[R], logits[R, V], V, temps[R], topK[R], topP[R], seeds[R] (u64), steps[R])
//   grid (R), block 1024: one CTA per row, no sorting, no global scratch, deterministic for a given (seed, step).
//
// Semantics (those of Sampler.sample):
//   * temperature 0 (or ≤ 0, or so small that 1/T overflows) or topK 1: argmax, ties to the lower id (NaN never wins).
//   * otherwise q_i = exp((l_i − max)·(1/T)); the candidates are ranked by (logit descending, id ascending);
//     top-k keeps the first k (0 or ≥ V = all); top-p keeps the shortest prefix of the kept ones whose mass reaches
//     p·Σ_kept q·(1 − 1e−6) (the CPU's slack); the draw picks a kept token with probability q_i / Σ_kept q.
//   * The draw: u ∈ [0, 2^64) from splitmix64(splitmix64(seed) ^ step); X = ⌊u·M / 2^64⌋ with M the kept mass;
//     the token whose interval of the prefix sums (in a fixed thread-major order) contains X.
//
// Numbers: weights are fixed-point integers w_i = ⌊q_i·2^40⌋ (u64), so every sum is exact and independent of the
// order of summation (deterministic, no float atomics). Tokens with q_i < 2^−40 (≈ 9e−13 relative to the most
// likely token) get weight 0 and are never drawn; the CPU draws them with probability < V·9e−13 ≈ 2e−7 in total.
//
// Thresholds are found by selection instead of sorting:
//   1. one pass: max (with the argmax) and the minimum finite logit;
//   2. a 256-bin histogram of s_i = (l_i − max)/T over the window [max(−28, s_min), 0] (tokens below −28 have
//      weight 0 and may be dropped) finds the bin of the threshold (counts for top-k, masses for top-p); the bin is
//      a contiguous range of logits, whose exact key range [lo, hi] one reduction pass finds;
//   3. radix selection (8 bits a pass, shared-memory histograms) over key − lo inside that range gives the exact
//      threshold key τ, the count/mass strictly above it, and the number of tokens tied at τ;
//   4. ties at τ are kept in id order (CPU: ties to the lower id): when only some of them are kept, a radix selection
//      over the ids of the tied tokens finds the largest kept id.
//   Keys: the fp32 logit mapped to an order-preserving u32 (−0 folded to +0, NaN treated as −inf).

#include "common.cuh"

#define SMP_FULL 0xffffffffu
#define SMP_WINDOW 28.0f  // e^−28 · 2^40 < 1: a token further below the max has weight 0
#define SMP_WSCALE 1099511627776.0f  // 2^40
#define SMP_NO_ID 0x7fffffff

struct SmpShared {
  u64 hist[256];  // masses (top-p)
  u32 cnt[256];   // counts
  u64 w64[32];    // per-warp partials
  u32 wa[32];
  u32 wb[32];
  float wf[32];
  int wi[32];
  // results broadcast by warp 0
  u64 fAbove;
  u64 fTarget;
  u64 total;
  int fBucket;
  u32 rA;
  u32 rB;
  float rF;
  int rI;
  int owner;
  u64 ownerBase;
};

static __device__ __forceinline__ u32 smp_key(float v) {
  const u32 u = __float_as_uint(v);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

static __device__ __forceinline__ float smp_key_float(u32 k) {
  return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

static __device__ __forceinline__ u64 smp_shfl_up64(u64 v, int d) {
  const u32 lo = __shfl_up_sync(SMP_FULL, (u32)v, d);
  const u32 hi = __shfl_up_sync(SMP_FULL, (u32)(v >> 32), d);
  return ((u64)hi << 32) | lo;
}

static __device__ __forceinline__ u64 smp_shfl64(u64 v, int src) {
  const u32 lo = __shfl_sync(SMP_FULL, (u32)v, src);
  const u32 hi = __shfl_sync(SMP_FULL, (u32)(v >> 32), src);
  return ((u64)hi << 32) | lo;
}

static __device__ __forceinline__ u64 smp_warp_incl_scan(u64 v, int lane) {
#pragma unroll
  for (int d = 1; d < 32; d <<= 1) {
    const u64 t = smp_shfl_up64(v, d);
    if (lane >= d) v += t;
  }
  return v;
}

static __device__ __forceinline__ u64 smp_mulhi(u64 a, u64 b) {
  u64 r;
  asm("mul.hi.u64 %0, %1, %2;" : "=l"(r) : "l"(a), "l"(b));
  return r;
}

static __device__ __forceinline__ u64 smp_mix(u64 z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// One row and the thresholds found so far.
struct SmpRow {
  const float* p;
  int V;
  float mx, invT;
  float sw, scale;  // histogram window [sw, 0] of s, 256 / (−sw)
  bool useK;
  u32 tauK;
  int idMaxK;
  bool useP;
  u32 tauP;
  int idMaxP;

  __device__ __forceinline__ float load(int i) const {
    float v = p[i];
    if (v != v) v = NEG_INF;  // NaN never wins
    if (v == 0.f) v = 0.f;    // −0 and +0 are the same logit
    return v;
  }
  __device__ __forceinline__ float s(float v) const { return (v - mx) * invT; }
  __device__ __forceinline__ u64 weight(float v) const { return (u64)(expf(s(v)) * SMP_WSCALE); }
  // 0 = the top bin (just below the max) … 255; 256 = outside the window. Monotone in v.
  __device__ __forceinline__ int bin(float v) const {
    const float x = s(v);
    if (!(x >= sw)) return 256;
    const int b = (int)(-x * scale);
    return b > 255 ? 255 : b;
  }
  __device__ __forceinline__ bool keptK(int i, u32 key) const { return !useK || key > tauK || (key == tauK && i <= idMaxK); }
  __device__ __forceinline__ bool keptP(int i, u32 key) const { return !useP || key > tauP || (key == tauP && i <= idMaxP); }
};

// Warp 0 finds, from bucket 255 down, the first bucket b with above + Σ_{b' ≥ b} h[b'] ≥ target (target clamped to
// (above, above + Σ h]); if frac > 0, target = ⌈frac · Σ h⌉ instead. Results in sh.fBucket, sh.fAbove (weight strictly
// above the bucket, including `above`), sh.total (Σ h), sh.fTarget. All threads call it; it ends with a barrier.
template <typename H>
static __device__ void smp_find(const H* h, u64 above, u64 target, double frac, SmpShared& sh) {
  if (threadIdx.x < 32) {
    const int lane = threadIdx.x;
    u64 v[8];
    u64 sum = 0;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      v[j] = (u64)h[255 - 8 * lane - j];
      sum += v[j];
    }
    const u64 incl = smp_warp_incl_scan(sum, lane);
    const u64 total = smp_shfl64(incl, 31);
    u64 tgt = target;
    if (frac > 0.0) tgt = above + (u64)ceil(frac * (double)total);
    if (tgt > above + total) tgt = above + total;
    if (tgt <= above && total > 0) tgt = above + 1;
    const u32 m = __ballot_sync(SMP_FULL, above + incl >= tgt);
    const int L = m ? __ffs(m) - 1 : 31;
    if (lane == L) {
      u64 acc = above + incl - sum;
      int b = 255 - 8 * L - 7;
      bool found = false;
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        if (!found) {
          if (acc + v[j] >= tgt) {
            b = 255 - 8 * L - j;
            found = true;
          } else {
            acc += v[j];
          }
        }
      }
      sh.fBucket = b;
      sh.fAbove = acc;
      sh.total = total;
      sh.fTarget = tgt;
    }
  }
  __syncthreads();
}

// Block-wide min and max of u32 values (all threads get them).
static __device__ void smp_block_minmax(u32& a, u32& b, SmpShared& sh) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const u32 a2 = __shfl_xor_sync(SMP_FULL, a, o), b2 = __shfl_xor_sync(SMP_FULL, b, o);
    a = a2 < a ? a2 : a;
    b = b2 > b ? b2 : b;
  }
  if (lane == 0) {
    sh.wa[warp] = a;
    sh.wb[warp] = b;
  }
  __syncthreads();
  if (warp == 0) {
    a = lane < nw ? sh.wa[lane] : 0xffffffffu;
    b = lane < nw ? sh.wb[lane] : 0u;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const u32 a2 = __shfl_xor_sync(SMP_FULL, a, o), b2 = __shfl_xor_sync(SMP_FULL, b, o);
      a = a2 < a ? a2 : a;
      b = b2 > b ? b2 : b;
    }
    if (lane == 0) {
      sh.rA = a;
      sh.rB = b;
    }
  }
  __syncthreads();
  a = sh.rA;
  b = sh.rB;
}

// Radix selection over the elements f accepts (f returns its key, which must lie in [lo, hi], and its weight):
// the key τ with above + W(key > τ) < target ≤ above + W(key ≥ τ), W = Σ weights (MASS) or counts, counted from the
// largest key. Returns τ, the weight above τ (including `above`) and the number of elements with key τ.
template <bool MASS, class F>
static __device__ void smp_radix_select(const F& f, int V, u32 lo, u32 hi, u64 above, u64 target, SmpShared& sh, u32& tau, u64& aboveOut, u32& ties) {
  const u32 range = hi - lo;
  const int nb = range ? 32 - __clz(range) : 0;
  const int passes = nb > 8 ? (nb + 7) / 8 : 1;
  u32 prefix = 0;
  int bucket = 0;
  for (int pass = passes - 1; pass >= 0; --pass) {
    const int shift = 8 * pass;
    for (int b = threadIdx.x; b < 256; b += blockDim.x) {
      sh.hist[b] = 0;
      sh.cnt[b] = 0;
    }
    __syncthreads();
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
      u32 key;
      u64 w;
      if (!f(i, key, w)) continue;
      const u32 d = key - lo;
      if (shift < 24 && (d >> (shift + 8)) != (prefix >> (shift + 8))) continue;
      const u32 b = (d >> shift) & 255u;
      if (MASS) atomicAdd(&sh.hist[b], (unsigned long long)w);
      if (!MASS || pass == 0) atomicAdd(&sh.cnt[b], 1u);
    }
    __syncthreads();
    if (MASS) smp_find(sh.hist, above, target, 0.0, sh);
    else smp_find(sh.cnt, above, target, 0.0, sh);
    bucket = sh.fBucket;
    above = sh.fAbove;
    prefix |= (u32)bucket << shift;
  }
  tau = lo + prefix;
  aboveOut = above;
  ties = sh.cnt[bucket];
  __syncthreads();  // sh.cnt is rewritten by the next selection
}

// top-k: every token whose key lies in [lo, hi].
struct SmpCountInRange {
  SmpRow R;
  u32 lo, hi;
  __device__ __forceinline__ bool operator()(int i, u32& key, u64& w) const {
    key = smp_key(R.load(i));
    w = 1;
    return key >= lo && key <= hi;
  }
};

// top-p: the tokens kept by top-k with key in [lo, hi] and a non-zero weight.
struct SmpMassInRange {
  SmpRow R;
  u32 lo, hi;
  __device__ __forceinline__ bool operator()(int i, u32& key, u64& w) const {
    const float v = R.load(i);
    key = smp_key(v);
    if (key < lo || key > hi || !R.keptK(i, key)) return false;
    w = R.weight(v);
    return w != 0;
  }
};

// ties: the tokens with key τ (kept by top-k if withK); key' = ~id, so the largest keys are the lowest ids.
struct SmpTieIds {
  SmpRow R;
  u32 tau;
  bool withK;
  __device__ __forceinline__ bool operator()(int i, u32& key, u64& w) const {
    const u32 k = smp_key(R.load(i));
    if (k != tau || (withK && !R.keptK(i, k))) return false;
    key = ~(u32)i;
    w = 1;
    return true;
  }
};

// The largest id among the `need` lowest ids of the tokens with key τ (kept by top-k if withK).
static __device__ int smp_tie_id(const SmpRow& R, u32 tau, bool withK, u32 need, SmpShared& sh) {
  SmpTieIds f{R, tau, withK};
  u32 t, ties;
  u64 ab;
  smp_radix_select<false>(f, R.V, ~(u32)(R.V - 1), 0xffffffffu, 0, need, sh, t, ab, ties);
  return (int)~t;
}

extern "C" __global__ void __launch_bounds__(1024, 1) sample_f32(int* __restrict__ out, const float* __restrict__ logits, int V, const float* __restrict__ temps,
                                                                 const int* __restrict__ topK, const float* __restrict__ topP, const u64* __restrict__ seeds,
                                                                 const int* __restrict__ steps) {
  __shared__ SmpShared sh;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, nw = blockDim.x >> 5, nt = blockDim.x;
  const int r = blockIdx.x;
  SmpRow R;
  R.p = logits + (i64)r * V;
  R.V = V;
  R.useK = false;
  R.tauK = 0;
  R.idMaxK = SMP_NO_ID;
  R.useP = false;
  R.tauP = 0;
  R.idMaxP = SMP_NO_ID;
  const float T = temps[r];
  const int k = topK[r];
  const float pTop = topP[r];

  // ---- pass 1: max with the lowest id, min finite
  float bv = NEG_INF, mn = POS_INF;
  int bi = SMP_NO_ID;
  for (int i = tid; i < V; i += nt) {
    const float v = R.load(i);
    if (v > bv || (v == bv && i < bi)) {
      bv = v;
      bi = i;
    }
    if (v > NEG_INF && v < POS_INF) mn = fminf(mn, v);
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float v2 = __shfl_xor_sync(SMP_FULL, bv, o);
    const int i2 = __shfl_xor_sync(SMP_FULL, bi, o);
    if (v2 > bv || (v2 == bv && i2 < bi)) {
      bv = v2;
      bi = i2;
    }
    mn = fminf(mn, __shfl_xor_sync(SMP_FULL, mn, o));
  }
  if (lane == 0) {
    sh.wf[warp] = bv;
    sh.wi[warp] = bi;
    sh.w64[warp] = (u64)__float_as_uint(mn);
  }
  __syncthreads();
  if (warp == 0) {
    bv = lane < nw ? sh.wf[lane] : NEG_INF;
    bi = lane < nw ? sh.wi[lane] : SMP_NO_ID;
    mn = lane < nw ? __uint_as_float((u32)sh.w64[lane]) : POS_INF;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const float v2 = __shfl_xor_sync(SMP_FULL, bv, o);
      const int i2 = __shfl_xor_sync(SMP_FULL, bi, o);
      if (v2 > bv || (v2 == bv && i2 < bi)) {
        bv = v2;
        bi = i2;
      }
      mn = fminf(mn, __shfl_xor_sync(SMP_FULL, mn, o));
    }
    if (lane == 0) {
      sh.rF = bv;
      sh.rI = bi == SMP_NO_ID ? 0 : bi;
      sh.fAbove = (u64)__float_as_uint(mn);
    }
  }
  __syncthreads();
  const float mx = sh.rF;
  const int amax = sh.rI;
  mn = __uint_as_float((u32)sh.fAbove);
  const float invT = 1.f / T;
  if (!(T > 0.f) || k == 1 || !(mx > NEG_INF && mx < POS_INF) || !(invT < POS_INF)) {
    if (tid == 0) out[r] = amax;
    return;  // uniform across the block
  }
  R.mx = mx;
  R.invT = invT;
  R.sw = fmaxf(-SMP_WINDOW, R.s(mn));
  R.scale = R.sw < 0.f ? 256.f / -R.sw : 0.f;

  // ---- top-k: the k-th largest logit (ties to the lower id)
  if (k > 0 && k < V) {
    for (int b = tid; b < 256; b += nt) sh.cnt[b] = 0;
    __syncthreads();
    for (int i = tid; i < V; i += nt) {
      const int b = R.bin(R.load(i));
      if (b < 256) atomicAdd(&sh.cnt[255 - b], 1u);
    }
    __syncthreads();
    smp_find(sh.cnt, 0, (u64)k, 0.0, sh);
    // ≤ k tokens inside the window: the rest have weight 0, so keeping the top k is keeping everything.
    if (sh.total > (u64)k) {
      const int b1 = 255 - sh.fBucket;
      const u64 above1 = sh.fAbove;
      u32 lo = 0xffffffffu, hi = 0;
      for (int i = tid; i < V; i += nt) {
        const float v = R.load(i);
        if (R.bin(v) == b1) {
          const u32 key = smp_key(v);
          lo = key < lo ? key : lo;
          hi = key > hi ? key : hi;
        }
      }
      smp_block_minmax(lo, hi, sh);
      SmpCountInRange f{R, lo, hi};
      u32 tau, ties;
      u64 above;
      smp_radix_select<false>(f, V, lo, hi, above1, (u64)k, sh, tau, above, ties);
      const u32 need = (u32)((u64)k - above);  // tokens tied at τ that are kept, 1 … ties
      R.useK = true;
      R.tauK = tau;
      if (need < ties) R.idMaxK = smp_tie_id(R, tau, false, need, sh);
    }
  }

  // ---- top-p: the shortest prefix (in rank order) of the kept tokens whose mass reaches p·mass·(1 − 1e−6)
  if (pTop < 1.f) {
    for (int b = tid; b < 256; b += nt) sh.hist[b] = 0;
    __syncthreads();
    for (int i = tid; i < V; i += nt) {
      const float v = R.load(i);
      if (!R.keptK(i, smp_key(v))) continue;
      const int b = R.bin(v);
      if (b == 256) continue;
      const u64 w = R.weight(v);
      if (w) atomicAdd(&sh.hist[255 - b], (unsigned long long)w);
    }
    __syncthreads();
    smp_find(sh.hist, 0, 0, (double)pTop * (1.0 - 1e-6), sh);
    const int b1 = 255 - sh.fBucket;
    const u64 above1 = sh.fAbove, target = sh.fTarget;
    u32 lo = 0xffffffffu, hi = 0;
    for (int i = tid; i < V; i += nt) {
      const float v = R.load(i);
      const u32 key = smp_key(v);
      if (R.bin(v) == b1 && R.keptK(i, key) && R.weight(v) != 0) {
        lo = key < lo ? key : lo;
        hi = key > hi ? key : hi;
      }
    }
    smp_block_minmax(lo, hi, sh);
    if (lo <= hi) {  // always, unless the row has no positive weight (not possible: the max has weight 2^40)
      SmpMassInRange f{R, lo, hi};
      u32 tau, ties;
      u64 above;
      smp_radix_select<true>(f, V, lo, hi, above1, target, sh, tau, above, ties);
      const u64 wt = R.weight(smp_key_float(tau));
      const u64 need = wt ? (target - above + wt - 1) / wt : (u64)ties;  // tied tokens kept, 1 … ties
      R.useP = true;
      R.tauP = tau;
      if (need < (u64)ties) R.idMaxP = smp_tie_id(R, tau, true, (u32)need, sh);
    }
  }

  // ---- the draw: prefix sums of the kept weights in thread-major order (thread j: tokens j, j + nt, …)
  u64 S = 0;
  for (int i = tid; i < V; i += nt) {
    const float v = R.load(i);
    const u32 key = smp_key(v);
    if (R.keptK(i, key) && R.keptP(i, key)) S += R.weight(v);
  }
  u64 incl = smp_warp_incl_scan(S, lane);
  if (lane == 31) sh.w64[warp] = incl;
  __syncthreads();
  if (warp == 0) {
    const u64 t = lane < nw ? sh.w64[lane] : 0;
    const u64 ti = smp_warp_incl_scan(t, lane);
    if (lane < nw) sh.w64[lane] = ti - t;
    if (lane == 31) sh.total = ti;
    if (lane == 0) sh.owner = -1;
  }
  __syncthreads();
  const u64 base = sh.w64[warp] + incl - S;
  const u64 M = sh.total;
  const u64 X = smp_mulhi(smp_mix(smp_mix(seeds[r]) ^ (u64)(u32)steps[r]), M);  // uniform in [0, M)
  if (S > 0 && base <= X && X < base + S) {  // exactly one thread
    sh.owner = tid;
    sh.ownerBase = base;
  }
  __syncthreads();
  if (warp == 0) {
    const int j = sh.owner;
    int result = amax;  // only if M == 0, which cannot happen (the max has weight 2^40)
    if (j >= 0) {
      u64 b = sh.ownerBase;
      const int count = (V - 1 - j) / nt + 1;  // tokens of thread j
      for (int m0 = 0; m0 < count; m0 += 32) {
        const int m = m0 + lane;
        const int i = j + m * nt;
        u64 w = 0;
        if (m < count) {
          const float v = R.load(i);
          const u32 key = smp_key(v);
          if (R.keptK(i, key) && R.keptP(i, key)) w = R.weight(v);
        }
        const u64 c = smp_warp_incl_scan(w, lane);
        const u32 hit = __ballot_sync(SMP_FULL, b + c > X);
        if (hit) {
          result = __shfl_sync(SMP_FULL, i, __ffs(hit) - 1);
          break;
        }
        b += smp_shfl64(c, 31);
      }
    }
    if (lane == 0) out[r] = result;
  }
}

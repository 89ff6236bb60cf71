// train_sequence.cu — lightning and softmax attention, forward and backward, for training (src/train/cuda/sequence.ts).
//
// fp32 everywhere (inputs, outputs, accumulation). Packed documents: offsets i32 [docs + 1], document `doc` is rows
// [offsets[doc], offsets[doc + 1]). Every kernel runs 256 threads (8 warps) and needs Dh % 4 == 0, Dh ≤ 128 (float4
// shared-memory reads; per-thread accumulators sized for Dh ≤ 128). Row · stride products are 64-bit.
//
// ---- Lightning (MODEL.md §8.4): per document and head, from a zero state, λ = e^(−s_h),
//   S_t = λ·S_(t−1) + k_tᵀ v_t,  o_t = q_t·S_t,  i.e.  o_t = Σ_(j≤t) λ^(t−j) (q_t·k_j) v_j.
// train_lightning_scan computes that map for any roles (Q, K, V) → O, walking the document forwards or backwards.
// Backward with G_t = ∂L/∂S_t (total) = q_tᵀ dO_t + λ·G_(t+1) = Σ_(i≥t) λ^(i−t) q_iᵀ dO_i (the reverse recursion):
//   dq_t = dO_t·S_tᵀ         = Σ_(j≤t) λ^(t−j) (dO_t·v_j) k_j   → scan(Q = dO, K = v,  V = k),  forwards;
//   dk_t = G_t·v_tᵀ          = Σ_(i≥t) λ^(i−t) (v_t·dO_i) q_i   → scan(Q = v,  K = dO, V = q),  backwards;
//   dv_t = k_t·G_t           = Σ_(i≥t) λ^(i−t) (k_t·q_i) dO_i   → scan(Q = k,  K = q,  V = dO), backwards.
// (The backwards scans run the forward recurrence in reversed time; their state is the reverse recursion's G_t, or
// its transpose: dk's state is Σ λ^(i−t) dO_iᵀ q_i = G_tᵀ. dq's forward state is Sᵀ, recomputed, never saved.)
//
// The scan, one CTA per (document, head, 32-wide slice of V's columns): the value columns of the state are
// independent (S[:, e] only needs v[e]), so a CTA keeps S[0:Dh, slice] (fp32, shared memory) and walks the document
// in chunks of LC = 32 rows. For a chunk of m rows starting at chunk row 0 with state S_in (after the previous
// chunk):
//   o_i  = λ^(i+1)·(q_i·S_in) + Σ_(j≤i) λ^(i−j) (q_i·k_j) v_j        (inter + intra, i < m)
//   S_out = λ^m·S_in + Σ_(j<m) λ^(m−1−j) k_jᵀ v_j
// Only powers λ^n with 0 ≤ n ≤ LC appear (table pw, expf(−s·n)); nothing divides by a decay. The chunk size is
// this kernel's own (the contract's blockSize only changes fp32 rounding in other implementations).
//
// ---- Softmax attention (MODEL.md §9, varlen causal GQA): query head h reads kv head ⌊h / (H/Hkv)⌋; query row i of
// a document sees keys j ≤ i of the same document; scores·scale; online softmax in fp32; lse = m + log(l) saved.
// Backward (flash-style): D_i = dO_i·O_i (train_attn_delta), P_ij = exp(scale·q_i·k_j − lse_i), dP_ij = dO_i·v_j,
// dS_ij = P_ij·(dP_ij − D_i); dv_j = Σ_i P_ij dO_i, dk_j = scale·Σ_i dS_ij q_i (summed over the group's query heads,
// train_attn_bwd_dkdv, one CTA per (document, 32-key tile, kv head)), dq_i = scale·Σ_j dS_ij k_j
// (train_attn_bwd_dq, one CTA per (document, 64-query tile, head)). No atomics: deterministic.
//
// Query-tile grids run tiles in reverse (blockIdx.y = 0 is the document's last tile, which has the most keys) and
// CTAs past a document's end exit at once.

#include "common.cuh"

// a·b (4 lanes of float4) + acc, in the fmaf order every kernel here uses.
static __device__ __forceinline__ float fma4(float4 a, float4 b, float acc) {
  return fmaf(a.x, b.x, fmaf(a.y, b.y, fmaf(a.z, b.z, fmaf(a.w, b.w, acc))));
}

// For this warp's 8 query rows and the lane's columns d = lane + 32c (c < 4, d < Dh):
// acc[r][c] += Σ_{j<n} W[r·ws + j] · Tm[j·ts + d]  (P·V in the forward, dS·K for dq).
static __device__ __forceinline__ void acc_rows_tile(float (&acc)[8][4], const float* W, int ws, const float* Tm, int ts, int n, int Dh, int lane) {
  for (int j = 0; j < n; ++j) {
    float t[4];
#pragma unroll
    for (int c = 0; c < 4; ++c) t[c] = lane + 32 * c < Dh ? Tm[j * ts + lane + 32 * c] : 0.f;
#pragma unroll
    for (int r = 0; r < 8; ++r) {
      const float w = W[r * ws + j];
#pragma unroll
      for (int c = 0; c < 4; ++c) acc[r][c] = fmaf(w, t[c], acc[r][c]);
    }
  }
}

// Row r of the warp (query qi = row0 + r < L) gets acc[r] · mul[r] at dst + qi·ld.
static __device__ __forceinline__ void store_rows(float* dst, i64 ld, const float (&acc)[8][4], const float (&mul)[8], int row0, int L, int Dh, int lane) {
#pragma unroll
  for (int r = 0; r < 8; ++r) {
    const int qi = row0 + r;
    if (qi < L) {
      float* orow = dst + (i64)qi * ld;
#pragma unroll
      for (int c = 0; c < 4; ++c)
        if (lane + 32 * c < Dh) orow[lane + 32 * c] = acc[r][c] * mul[r];
    }
  }
}

#define NT 256  // threads per CTA in every kernel

// ------------------------------------------------------------------------------------------------ lightning scan
#define LC 32  // chunk rows
#define LW 32  // value columns per CTA

// Shared memory (floats): S [Dh][LW], Qs [LC][Dh], Ks [LC][Dh + 4], Vs [LC][LW], P [LC][LC], pw [LC + 1].
extern "C" __global__ void __launch_bounds__(NT) train_lightning_scan(
    float* __restrict__ out, const float* __restrict__ qp, const float* __restrict__ kp, const float* __restrict__ vp,
    const float* __restrict__ slopes, const int* __restrict__ offsets, int Dh, i64 oRow, i64 oHead, i64 qRow,
    i64 qHead, i64 kRow, i64 kHead, i64 vRow, i64 vHead, int reverse) {
  const int doc = blockIdx.x, h = blockIdx.y, e0 = blockIdx.z * LW;
  const int start = offsets[doc], L = offsets[doc + 1] - start;
  if (L <= 0) return;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int KP = Dh + 4;
  extern __shared__ float4 smem4[];
  float* S = (float*)smem4;
  float* Qs = S + Dh * LW;
  float* Ks = Qs + LC * Dh;
  float* Vs = Ks + LC * KP;
  float* P = Vs + LC * LW;
  float* pw = P + LC * LC;

  const float s = slopes[h];
  for (int n = tid; n <= LC; n += NT) pw[n] = expf(-s * (float)n);
  for (int i = tid; i < Dh * LW; i += NT) S[i] = 0.f;
  const float* qb = qp + (i64)h * qHead;
  const float* kb = kp + (i64)h * kHead;
  const float* vb = vp + (i64)h * vHead;
  float* ob = out + (i64)h * oHead;
  const bool colOk = e0 + lane < Dh;

  for (int base = 0; base < L; base += LC) {
    const int m = min(LC, L - base);
    // Token row of chunk row i (i < m): forwards start + base + i, backwards start + L − 1 − (base + i).
    const i64 r0 = reverse ? (i64)(start + L - 1 - base) : (i64)(start + base);
    const i64 rstep = reverse ? -1 : 1;
    for (int idx = tid; idx < LC * Dh; idx += NT) {
      const int i = idx / Dh, d = idx - i * Dh;
      float qv = 0.f, kv = 0.f;
      if (i < m) {
        const i64 r = r0 + rstep * i;
        qv = qb[r * qRow + d];
        kv = kb[r * kRow + d];
      }
      Qs[i * Dh + d] = qv;
      Ks[i * KP + d] = kv;
    }
    for (int idx = tid; idx < LC * LW; idx += NT) {
      const int i = idx / LW, e = idx - i * LW;
      Vs[idx] = (i < m && e0 + e < Dh) ? vb[(r0 + rstep * i) * vRow + e0 + e] : 0.f;
    }
    __syncthreads();

    // Scores of this warp's rows i = 4·warp + r against key j = lane, masked and decayed.
    {
      float sc[4] = {0.f, 0.f, 0.f, 0.f};
      const float* kr = Ks + lane * KP;
      for (int d = 0; d < Dh; d += 4) {
        const float4 k4 = *(const float4*)(kr + d);
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          const float4 q4 = *(const float4*)(Qs + (warp * 4 + r) * Dh + d);
          sc[r] = fma4(q4, k4, sc[r]);
        }
      }
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const int i = warp * 4 + r;
        P[i * LC + lane] = (lane <= i && i < m) ? pw[i - lane] * sc[r] : 0.f;
      }
    }
    __syncwarp();

    // Outputs of rows i = 4·warp + r, column e0 + lane: λ^(i+1)·(q_i·S_in) + Σ_j P[i][j]·v_j.
    {
      float acc[4] = {0.f, 0.f, 0.f, 0.f};
      for (int d = 0; d < Dh; d += 4) {
        const float s0 = S[(d + 0) * LW + lane], s1 = S[(d + 1) * LW + lane];
        const float s2 = S[(d + 2) * LW + lane], s3 = S[(d + 3) * LW + lane];
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          const float4 q4 = *(const float4*)(Qs + (warp * 4 + r) * Dh + d);
          acc[r] = fmaf(q4.x, s0, fmaf(q4.y, s1, fmaf(q4.z, s2, fmaf(q4.w, s3, acc[r]))));
        }
      }
#pragma unroll
      for (int r = 0; r < 4; ++r) acc[r] *= pw[warp * 4 + r + 1];
      const int jEnd = warp * 4 + 4;  // P[i][j] = 0 for j > i
      for (int j = 0; j < jEnd; ++j) {
        const float vj = Vs[j * LW + lane];
#pragma unroll
        for (int r = 0; r < 4; ++r) acc[r] = fmaf(P[(warp * 4 + r) * LC + j], vj, acc[r]);
      }
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const int i = warp * 4 + r;
        if (i < m && colOk) ob[(r0 + rstep * i) * oRow + e0 + lane] = acc[r];
      }
    }
    __syncthreads();  // every read of S_in done

    // State update, rows d = warp + 8t, column lane: S = λ^m·S + Σ_(j<m) λ^(m−1−j) k_jᵀ v_j.
    {
      float upd[16];
#pragma unroll
      for (int t = 0; t < 16; ++t) upd[t] = 0.f;
      for (int j = 0; j < m; ++j) {
        const float vv = pw[m - 1 - j] * Vs[j * LW + lane];
        const float* kr = Ks + j * KP;
#pragma unroll
        for (int t = 0; t < 16; ++t)
          if (warp + 8 * t < Dh) upd[t] = fmaf(kr[warp + 8 * t], vv, upd[t]);
      }
      const float decay = pw[m];
#pragma unroll
      for (int t = 0; t < 16; ++t) {
        const int d = warp + 8 * t;
        if (d < Dh) S[d * LW + lane] = fmaf(decay, S[d * LW + lane], upd[t]);
      }
    }
    __syncthreads();  // S complete, Qs / Ks / Vs / P free for the next chunk
  }
}

// ------------------------------------------------------------------------------------------------ attention forward
#define AQ 64  // query rows per CTA (8 per warp)
#define AK 32  // keys per tile (one per lane)

// Shared memory (floats): Qs [AQ][Dh], Ks [AK][Dh + 4], Vs [AK][Dh], Ps [AQ][AK].
extern "C" __global__ void __launch_bounds__(NT) train_attn_fwd(float* __restrict__ out, float* __restrict__ lse,
    const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v,
    const int* __restrict__ offsets, int H, int Hkv, int Dh, float scale) {
  const int doc = blockIdx.x, h = blockIdx.z;
  const int q0 = (gridDim.y - 1 - blockIdx.y) * AQ;
  const int start = offsets[doc], L = offsets[doc + 1] - start;
  if (q0 >= L) return;
  const int kvh = h / (H / Hkv);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int KP = Dh + 4;
  extern __shared__ float4 smem4[];
  float* Qs = (float*)smem4;
  float* Ks = Qs + AQ * Dh;
  float* Vs = Ks + AK * KP;
  float* Ps = Vs + AK * Dh;
  const i64 qRow = (i64)H * Dh, kRow = (i64)Hkv * Dh;
  const float* qb = q + (i64)start * qRow + (i64)h * Dh;
  const float* kb = k + (i64)start * kRow + (i64)kvh * Dh;
  const float* vb = v + (i64)start * kRow + (i64)kvh * Dh;

  for (int idx = tid; idx < AQ * Dh; idx += NT) {
    const int i = idx / Dh, d = idx - i * Dh;
    Qs[idx] = q0 + i < L ? qb[(i64)(q0 + i) * qRow + d] : 0.f;
  }
  float m[8], l[8], acc[8][4];
#pragma unroll
  for (int r = 0; r < 8; ++r) {
    m[r] = NEG_INF;
    l[r] = 0.f;
#pragma unroll
    for (int c = 0; c < 4; ++c) acc[r][c] = 0.f;
  }
  const int qEnd = min(L, q0 + AQ);  // keys [0, qEnd) are seen by some row of the tile
  for (int k0 = 0; k0 < qEnd; k0 += AK) {
    __syncthreads();  // the previous tile's Ks / Vs / Ps reads are done (first pass: Qs is complete)
    for (int idx = tid; idx < AK * Dh; idx += NT) {
      const int j = idx / Dh, d = idx - j * Dh;
      const bool ok = k0 + j < L;
      Ks[j * KP + d] = ok ? kb[(i64)(k0 + j) * kRow + d] : 0.f;
      Vs[idx] = ok ? vb[(i64)(k0 + j) * kRow + d] : 0.f;
    }
    __syncthreads();
    float sc[8];
#pragma unroll
    for (int r = 0; r < 8; ++r) sc[r] = 0.f;
    const float* kr = Ks + lane * KP;
    for (int d = 0; d < Dh; d += 4) {
      const float4 k4 = *(const float4*)(kr + d);
#pragma unroll
      for (int r = 0; r < 8; ++r) {
        const float4 q4 = *(const float4*)(Qs + (warp * 8 + r) * Dh + d);
        sc[r] = fma4(q4, k4, sc[r]);
      }
    }
    const int kj = k0 + lane;
#pragma unroll
    for (int r = 0; r < 8; ++r) {
      const int qi = q0 + warp * 8 + r;
      const bool ok = kj <= qi && qi < L;
      const float x = ok ? sc[r] * scale : NEG_INF;
      const float mn = fmaxf(m[r], warp_max(x));
      const float mref = mn == NEG_INF ? 0.f : mn;  // a row with nothing seen yet stays (−inf, 0, 0)
      const float p = ok ? expf(x - mref) : 0.f;
      const float alpha = expf(m[r] - mref);
      l[r] = l[r] * alpha + warp_sum(p);
      m[r] = mn;
#pragma unroll
      for (int c = 0; c < 4; ++c) acc[r][c] *= alpha;
      Ps[(warp * 8 + r) * AK + lane] = p;
    }
    __syncwarp();
    acc_rows_tile(acc, Ps + warp * 8 * AK, AK, Vs, Dh, AK, Dh, lane);
  }
  float inv[8];
#pragma unroll
  for (int r = 0; r < 8; ++r) {
    const int qi = q0 + warp * 8 + r;
    inv[r] = 1.f / l[r];
    if (qi < L && lane == 0) lse[(i64)(start + qi) * H + h] = m[r] + logf(l[r]);
  }
  store_rows(out + (i64)start * qRow + (i64)h * Dh, qRow, acc, inv, q0 + warp * 8, L, Dh, lane);
}

// ------------------------------------------------------------------------------------------------ attention backward
// delta[row] = dO[row]·O[row] for rows = T·H rows of Dh; one warp per row.
extern "C" __global__ void __launch_bounds__(NT) train_attn_delta(float* __restrict__ delta,
    const float* __restrict__ dO, const float* __restrict__ O, int rows, int Dh) {
  const int row = blockIdx.x * (NT / 32) + (threadIdx.x >> 5), lane = threadIdx.x & 31;
  if (row >= rows) return;  // whole warps
  const i64 base = (i64)row * Dh;
  float acc = 0.f;
  for (int e = lane; e < Dh; e += 32) acc = fmaf(dO[base + e], O[base + e], acc);
  acc = warp_sum(acc);
  if (lane == 0) delta[row] = acc;
}

#define BK 32  // keys per dk/dv CTA (4 per warp)
#define BQ 32  // queries per tile in the dk/dv CTA (one per lane)

// Shared memory (floats): Ks [BK][Dh], Vs [BK][Dh], Qs [BQ][Dh + 4], dOs [BQ][Dh + 4], ls [BQ], ds [BQ],
// Pw [BK][BQ], Sw [BK][BQ].
extern "C" __global__ void __launch_bounds__(NT) train_attn_bwd_dkdv(float* __restrict__ dk, float* __restrict__ dv,
    const float* __restrict__ dO, const float* __restrict__ q, const float* __restrict__ k,
    const float* __restrict__ v, const float* __restrict__ lse, const float* __restrict__ delta,
    const int* __restrict__ offsets, int H, int Hkv, int Dh, float scale) {
  const int doc = blockIdx.x, k0 = blockIdx.y * BK, kvh = blockIdx.z;
  const int start = offsets[doc], L = offsets[doc + 1] - start;
  if (k0 >= L) return;
  const int G = H / Hkv;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int KP = Dh + 4;
  extern __shared__ float4 smem4[];
  float* Ks = (float*)smem4;
  float* Vs = Ks + BK * Dh;
  float* Qs = Vs + BK * Dh;
  float* dOs = Qs + BQ * KP;
  float* ls = dOs + BQ * KP;
  float* ds = ls + BQ;
  float* Pw = ds + BQ;
  float* Sw = Pw + BK * BQ;
  const i64 qRow = (i64)H * Dh, kRow = (i64)Hkv * Dh;
  const float* kb = k + (i64)start * kRow + (i64)kvh * Dh;
  const float* vb = v + (i64)start * kRow + (i64)kvh * Dh;

  for (int idx = tid; idx < BK * Dh; idx += NT) {
    const int j = idx / Dh, d = idx - j * Dh;
    const bool ok = k0 + j < L;
    Ks[idx] = ok ? kb[(i64)(k0 + j) * kRow + d] : 0.f;
    Vs[idx] = ok ? vb[(i64)(k0 + j) * kRow + d] : 0.f;
  }
  float dka[4][4], dva[4][4];
#pragma unroll
  for (int r = 0; r < 4; ++r)
#pragma unroll
    for (int c = 0; c < 4; ++c) dka[r][c] = dva[r][c] = 0.f;

  for (int g = 0; g < G; ++g) {
    const int h = kvh * G + g;
    const float* qb = q + (i64)start * qRow + (i64)h * Dh;
    const float* ob = dO + (i64)start * qRow + (i64)h * Dh;
    for (int q0 = k0; q0 < L; q0 += BQ) {  // queries before k0 see none of these keys
      __syncthreads();  // previous tile's reads done (first pass: Ks / Vs complete)
      for (int idx = tid; idx < BQ * Dh; idx += NT) {
        const int i = idx / Dh, d = idx - i * Dh;
        const bool ok = q0 + i < L;
        Qs[i * KP + d] = ok ? qb[(i64)(q0 + i) * qRow + d] : 0.f;
        dOs[i * KP + d] = ok ? ob[(i64)(q0 + i) * qRow + d] : 0.f;
      }
      if (tid < BQ) {
        const bool ok = q0 + tid < L;
        const i64 row = (i64)(start + q0 + tid) * H + h;
        ls[tid] = ok ? lse[row] : 0.f;
        ds[tid] = ok ? delta[row] : 0.f;
      }
      __syncthreads();
      float sc[4] = {0.f, 0.f, 0.f, 0.f}, dp[4] = {0.f, 0.f, 0.f, 0.f};
      const float* qr = Qs + lane * KP;
      const float* orr = dOs + lane * KP;
      for (int d = 0; d < Dh; d += 4) {
        const float4 q4 = *(const float4*)(qr + d);
        const float4 o4 = *(const float4*)(orr + d);
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          const float4 k4 = *(const float4*)(Ks + (warp * 4 + r) * Dh + d);
          const float4 v4 = *(const float4*)(Vs + (warp * 4 + r) * Dh + d);
          sc[r] = fma4(q4, k4, sc[r]);
          dp[r] = fma4(o4, v4, dp[r]);
        }
      }
      const int qi = q0 + lane;
      const float li = ls[lane], Di = ds[lane];
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const int kj = k0 + warp * 4 + r;
        const bool ok = qi < L && kj <= qi;
        const float p = ok ? expf(sc[r] * scale - li) : 0.f;
        Pw[(warp * 4 + r) * BQ + lane] = p;
        Sw[(warp * 4 + r) * BQ + lane] = p * (dp[r] - Di);
      }
      __syncwarp();
      for (int i = 0; i < BQ; ++i) {
        float ov[4], qv[4];
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          const bool in = lane + 32 * c < Dh;
          ov[c] = in ? dOs[i * KP + lane + 32 * c] : 0.f;
          qv[c] = in ? Qs[i * KP + lane + 32 * c] : 0.f;
        }
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          const float p = Pw[(warp * 4 + r) * BQ + i], sd = Sw[(warp * 4 + r) * BQ + i];
#pragma unroll
          for (int c = 0; c < 4; ++c) {
            dva[r][c] = fmaf(p, ov[c], dva[r][c]);
            dka[r][c] = fmaf(sd, qv[c], dka[r][c]);
          }
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    const int kj = k0 + warp * 4 + r;
    if (kj < L) {
      const i64 o = (i64)(start + kj) * kRow + (i64)kvh * Dh;
#pragma unroll
      for (int c = 0; c < 4; ++c)
        if (lane + 32 * c < Dh) {
          dk[o + lane + 32 * c] = dka[r][c] * scale;
          dv[o + lane + 32 * c] = dva[r][c];
        }
    }
  }
}

#define DQ_Q 64  // query rows per dq CTA (8 per warp)
#define DQ_K 32  // keys per tile (one per lane)

// Shared memory (floats): Qs [DQ_Q][Dh], dOs [DQ_Q][Dh], Ks [DQ_K][Dh + 4], Vs [DQ_K][Dh + 4], Sw [DQ_Q][DQ_K].
extern "C" __global__ void __launch_bounds__(NT) train_attn_bwd_dq(float* __restrict__ dq, const float* __restrict__ dO,
    const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v,
    const float* __restrict__ lse, const float* __restrict__ delta, const int* __restrict__ offsets, int H, int Hkv,
    int Dh, float scale) {
  const int doc = blockIdx.x, h = blockIdx.z;
  const int q0 = (gridDim.y - 1 - blockIdx.y) * DQ_Q;
  const int start = offsets[doc], L = offsets[doc + 1] - start;
  if (q0 >= L) return;
  const int kvh = h / (H / Hkv);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int KP = Dh + 4;
  extern __shared__ float4 smem4[];
  float* Qs = (float*)smem4;
  float* dOs = Qs + DQ_Q * Dh;
  float* Ks = dOs + DQ_Q * Dh;
  float* Vs = Ks + DQ_K * KP;
  float* Sw = Vs + DQ_K * KP;
  const i64 qRow = (i64)H * Dh, kRow = (i64)Hkv * Dh;
  const float* qb = q + (i64)start * qRow + (i64)h * Dh;
  const float* ob = dO + (i64)start * qRow + (i64)h * Dh;
  const float* kb = k + (i64)start * kRow + (i64)kvh * Dh;
  const float* vb = v + (i64)start * kRow + (i64)kvh * Dh;

  for (int idx = tid; idx < DQ_Q * Dh; idx += NT) {
    const int i = idx / Dh, d = idx - i * Dh;
    const bool ok = q0 + i < L;
    Qs[idx] = ok ? qb[(i64)(q0 + i) * qRow + d] : 0.f;
    dOs[idx] = ok ? ob[(i64)(q0 + i) * qRow + d] : 0.f;
  }
  float li[8], Di[8], acc[8][4];
#pragma unroll
  for (int r = 0; r < 8; ++r) {
    const int qi = q0 + warp * 8 + r;
    const i64 row = (i64)(start + qi) * H + h;
    li[r] = qi < L ? lse[row] : 0.f;
    Di[r] = qi < L ? delta[row] : 0.f;
#pragma unroll
    for (int c = 0; c < 4; ++c) acc[r][c] = 0.f;
  }
  const int qEnd = min(L, q0 + DQ_Q);
  for (int k0 = 0; k0 < qEnd; k0 += DQ_K) {
    __syncthreads();  // previous tile's reads done (first pass: Qs / dOs complete)
    for (int idx = tid; idx < DQ_K * Dh; idx += NT) {
      const int j = idx / Dh, d = idx - j * Dh;
      const bool ok = k0 + j < L;
      Ks[j * KP + d] = ok ? kb[(i64)(k0 + j) * kRow + d] : 0.f;
      Vs[j * KP + d] = ok ? vb[(i64)(k0 + j) * kRow + d] : 0.f;
    }
    __syncthreads();
    float sc[8], dp[8];
#pragma unroll
    for (int r = 0; r < 8; ++r) sc[r] = dp[r] = 0.f;
    const float* kr = Ks + lane * KP;
    const float* vr = Vs + lane * KP;
    for (int d = 0; d < Dh; d += 4) {
      const float4 k4 = *(const float4*)(kr + d);
      const float4 v4 = *(const float4*)(vr + d);
#pragma unroll
      for (int r = 0; r < 8; ++r) {
        const float4 q4 = *(const float4*)(Qs + (warp * 8 + r) * Dh + d);
        const float4 o4 = *(const float4*)(dOs + (warp * 8 + r) * Dh + d);
        sc[r] = fma4(q4, k4, sc[r]);
        dp[r] = fma4(o4, v4, dp[r]);
      }
    }
    const int kj = k0 + lane;
#pragma unroll
    for (int r = 0; r < 8; ++r) {
      const int qi = q0 + warp * 8 + r;
      const bool ok = kj <= qi && qi < L;
      const float p = ok ? expf(sc[r] * scale - li[r]) : 0.f;
      Sw[(warp * 8 + r) * DQ_K + lane] = p * (dp[r] - Di[r]);
    }
    __syncwarp();
    acc_rows_tile(acc, Sw + warp * 8 * DQ_K, DQ_K, Ks, KP, DQ_K, Dh, lane);
  }
  float mul[8];
#pragma unroll
  for (int r = 0; r < 8; ++r) mul[r] = scale;
  store_rows(dq + (i64)start * qRow + (i64)h * Dh, qRow, acc, mul, q0 + warp * 8, L, Dh, lane);
}

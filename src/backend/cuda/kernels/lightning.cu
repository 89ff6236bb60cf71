// lightning.cu — lightning (linear) attention of MiniMax-01 (MODEL.md §8), matching CpuBackend.lightningAttention
// (src/backend/cpu/lightning.ts: lightningDecodeHead / lightningPrefillHead) up to the bf16 rounding points of the
// remote code (REMOTE), which the CPU reference does not apply (it keeps fp32 throughout).
//
// Layouts (per call): qkv [T, H, 3, Dh] bf16 — row stride 3·H·Dh, head h at h·3·Dh: q | k | v (already SiLU'd).
// out [T, H·Dh] bf16 (head h at h·Dh). slopes [H] fp32. A state is fp32 [H, Dh, Dh] indexed [key dim a][value dim b]
// (o = q·S); states[] holds one device pointer per segment. Decays are fp32 expf(−(s·n)) with integer n, the fp32
// product first (what REMOTE and the CPU reference compute); expf is the accurate libdevice version (no fast math).
//
// Decode (one-token segments, §8.6), lightning_decode_bf16, grid (nseg, H), 256 threads, 7 KB static shared:
//   S = e^(−s)·S + bf16(k_a·v_b)            (outer product rounded to bf16, added in fp32)
//   o_b = bf16( Σ_a q_a · bf16(S[a][b]) )   (bf16 matmul: fp32 accumulation of bf16 products, bf16 result)
//   Memory-bound: the state is read and written once, float4 and coalesced when Dh % 4 == 0 and the state is
//   16-byte aligned (scalar otherwise). Thread (c, r) owns column group c and rows r, r+R, …; partial dot products
//   are reduced through shared memory in a fixed order (deterministic).
//
// Prefill (§8.5), three passes over blocks of ≤ B rows (block b: rows blk_start[b] .. +blk_len[b] = m, 1 ≤ m ≤ B;
// a segment's blocks are consecutive). Workspace ws fp32 [nblk][H][Dh][Dh].
//   1. lightning_block_kv_bf16*: ws[b][h] = bf16( Σ_{j<m} bf16(k_j·e^(−s(m−1−j)))ᵀ v_j )
//        (REMOTE: K ⊙ k_decay rounded to bf16, bf16 matmul with V, bf16 result.)
//   2. lightning_scan_f32, grid (nseg, H, ⌈Dh²/256⌉), 256 threads, one thread per state element:
//        S = state; per block b of the segment in order: kv = ws[b]; ws[b] = S (state ENTERING block b);
//        S = e^(−s·m_b)·S + kv. Finally state = S (fp32 throughout).
//   3. lightning_block_out_bf16*: row i (in-block index) of block b:
//        out_i = bf16( Σ_{j≤i} bf16(q_i·k_j)·e^(−s(i−j))·v_j  +  e^(−s(i+1))·Σ_a q_i[a]·S_b[a][:] )
//        (REMOTE: QKᵀ a bf16 matmul rounded to bf16; intra and inter in fp32; one bf16 rounding of the sum.)
//
// Precision choices.
//   * Inter term: REMOTE computes (Q ⊙ q_decay)·S in fp32. q is bf16 and exact, so we compute the mathematically
//     equal e^(−s(i+1)) · (Q·S) with S split as S = hi + lo, hi = bf16(S), lo = bf16(S − hi): two bf16 tensor-core
//     MMAs (Q·hi + Q·lo, fp32 accumulation) represent S to ≤ 2^−17 relative, i.e. near-fp32, then one fp32 scale
//     per row. (The generic path uses plain fp32 FMA.)
//   * Intra term, tensor-core path: P = bf16(q·k)·decay is rounded to bf16 once more to feed the P·V MMA (REMOTE
//     keeps P in fp32): an extra ~2^−9 relative error per term, averaged over the key sum. The generic path keeps P
//     in fp32.
//   * block_kv: exactly REMOTE's rounding points (bf16 K⊙kd, fp32 accumulation, bf16 result).
//
// Kernels and launch configurations (ops/lightning.ts):
//   lightning_decode_bf16                grid (nseg, H)                 256 thr  static 7 KB        any Dh ≤ 256
//   lightning_block_kv_bf16_d{64,128}    grid (nblk, H)                 256 thr  dyn 4·64·(Dh+8)·2 B tensor cores
//        8 warps as 2 (key dims) × 4 (value dims); warp tile Dh/2 × Dh/4; chunks of 64 rows double-buffered by
//        cp.async (zero-filled past m), K⊙kd rounded in place by the thread that copied it; A = (K⊙kd)ᵀ and B = V
//        both read from row-major [token][dim] tiles with ldmatrix.trans. 36 KB (64) / 68 KB (128).
//   lightning_block_kv_bf16              grid (nblk, H)                 256 thr  dyn 2·32·Dh·4 B     scalar, any Dh
//   lightning_scan_f32                   grid (nseg, H, ⌈Dh²/256⌉)      256 thr  none
//   lightning_block_out_bf16_d{64,128}   grid (nblk, H, ⌈M/128⌉)        256 thr  dyn (see OutCfg)    tensor cores
//        128 query rows per CTA, 16 per warp (Q fragments re-read from shared memory, so ≤ 128 registers and two
//        CTAs per SM: one CTA's loads overlap the other's MMAs); phase 1: S_b → hi/lo bf16 tiles in
//        shared memory, inter term; phase 2: key tiles of 64 rows (K, V double-buffered by cp.async, plus a table of
//        the 191 decays a tile pair can need), S = QKᵀ (ldmatrix K), P in registers (FA2 accumulator → A-fragment
//        reuse), O += P·V (ldmatrix.trans V); a warp skips key steps past its last row.
//        Shared: Q 128·(Dh+8)·2 + max(S hi/lo 2·Dh·(Dh+8)·2, K/V 4·64·(Dh+8)·2) + 2·192·4 B
//        = 56,832 B (Dh 64) / 105,984 B (Dh 128): two CTAs of 8 warps per SM at Dh 128.
//   lightning_block_out_bf16             grid (nblk, H, ⌈M/BM⌉)         256 thr  dyn (see below)     scalar, any Dh
//        BM = clamp(⌊2048/Dh⌋, 1, 128) query rows per CTA (passed in; each thread owns ≤ 8 (row, dim) outputs);
//        key tiles of 32 rows; shared fp32 Q[BM][Dh], K[32][Dh+1], V[32][Dh], P[BM][32].
// (M = the longest block of the launch, ≤ B; row tiles past a block's m exit at once. B itself is only part of the
// signature.) Tensor-core paths need Dh ∈ {64, 128}, qkv 16-byte aligned and out 4-byte aligned (the wrapper checks and falls
// back to the generic kernels otherwise).

#include "common.cuh"

extern __shared__ __align__(16) unsigned char lt_smem[];

struct alignas(16) F4 { float x, y, z, w; };
struct alignas(16) U4 { u32 x, y, z, w; };
struct alignas(8) U2 { u32 x, y; };

static __device__ __forceinline__ int imin(int a, int b) { return a < b ? a : b; }

// Two fp32 as one 8-byte store (x at the lower address).
static __device__ __forceinline__ u64 pack2f(float x, float y) { return (u64)__float_as_uint(x) | ((u64)__float_as_uint(y) << 32); }

// ---------------------------------------------------------------------------------------------- PTX helpers
// e^(−s·n), fp32 product then accurate expf (MODEL.md §8.5).
static __device__ __forceinline__ float decay(float s, int n) { return expf(-(s * (float)n)); }

// ============================================================================================== decode
template <int V>
struct Vec;
template <>
struct Vec<4> {
  float v[4];
  __device__ __forceinline__ void load(const float* p) {
    const F4 t = *reinterpret_cast<const F4*>(p);
    v[0] = t.x, v[1] = t.y, v[2] = t.z, v[3] = t.w;
  }
  __device__ __forceinline__ void store(float* p) const {
    F4 t;
    t.x = v[0], t.y = v[1], t.z = v[2], t.w = v[3];
    *reinterpret_cast<F4*>(p) = t;
  }
};
template <>
struct Vec<1> {
  float v[1];
  __device__ __forceinline__ void load(const float* p) { v[0] = *p; }
  __device__ __forceinline__ void store(float* p) const { *p = v[0]; }
};

// Thread (r, c), c < ncol = Dh/V, r < R = ⌊256/ncol⌋, updates S[a][cV .. cV+V) for a = r, r+R, … and leaves its
// partial dot products Σ_a q_a·bf16(S[a][·]) in part[r][·]; rows are processed 4 at a time so 4 loads are in flight.
template <int V>
static __device__ __forceinline__ void decode_update(float* S, const float* qs, const float* ks, const float* vs, float* part, float dec, int Dh) {
  const int ncol = Dh / V, R = 256 / ncol;
  const int c = threadIdx.x % ncol, r = threadIdx.x / ncol;
  if (r >= R) return;
  float vv[V], o[V];
#pragma unroll
  for (int x = 0; x < V; x++) vv[x] = vs[c * V + x], o[x] = 0.f;
  for (int a0 = r; a0 < Dh; a0 += 4 * R) {
    Vec<V> st[4];
#pragma unroll
    for (int u = 0; u < 4; u++) {
      const int a = a0 + u * R;
      if (a < Dh) st[u].load(S + (i64)a * Dh + c * V);
    }
#pragma unroll
    for (int u = 0; u < 4; u++) {
      const int a = a0 + u * R;
      if (a < Dh) {
        const float ka = ks[a], qa = qs[a];
#pragma unroll
        for (int x = 0; x < V; x++) {
          const float n = dec * st[u].v[x] + rbf(ka * vv[x]);
          st[u].v[x] = n;
          o[x] += qa * rbf(n);
        }
        st[u].store(S + (i64)a * Dh + c * V);
      }
    }
  }
#pragma unroll
  for (int x = 0; x < V; x++) part[r * Dh + c * V + x] = o[x];
}

extern "C" __global__ void __launch_bounds__(256) lightning_decode_bf16(bf16* __restrict__ out, const bf16* __restrict__ qkv, const float* __restrict__ slopes,
                                                                       const int* __restrict__ seg_start, const u64* __restrict__ states, int H, int Dh) {
  __shared__ float qs[256], ks[256], vs[256];
  __shared__ float part[1024];  // [R][Dh], R·Dh ≤ 256·V ≤ 1024
  const int sg = blockIdx.x, h = blockIdx.y;
  const i64 row = seg_start[sg];
  const bf16* src = qkv + row * 3 * H * Dh + (i64)h * 3 * Dh;
  for (int i = threadIdx.x; i < Dh; i += blockDim.x) {
    qs[i] = bf2f(src[i]);
    ks[i] = bf2f(src[Dh + i]);
    vs[i] = bf2f(src[2 * Dh + i]);
  }
  float* S = reinterpret_cast<float*>(states[sg]) + (i64)h * Dh * Dh;
  const float dec = decay(slopes[h], 1);
  __syncthreads();
  if ((Dh & 3) == 0 && (reinterpret_cast<u64>(S) & 15) == 0)
    decode_update<4>(S, qs, ks, vs, part, dec, Dh);
  else
    decode_update<1>(S, qs, ks, vs, part, dec, Dh);
  __syncthreads();
  const int ncol = (Dh & 3) == 0 && (reinterpret_cast<u64>(S) & 15) == 0 ? Dh / 4 : Dh;
  const int R = 256 / ncol;
  bf16* dst = out + row * H * Dh + (i64)h * Dh;
  for (int b = threadIdx.x; b < Dh; b += blockDim.x) {
    float sum = 0.f;
    for (int r = 0; r < R; r++) sum += part[r * Dh + b];
    dst[b] = f2bf(sum);
  }
}

// ============================================================================================== scan
extern "C" __global__ void __launch_bounds__(256) lightning_scan_f32(float* __restrict__ ws, const float* __restrict__ slopes, const int* __restrict__ seg_first_blk,
                                                                    const int* __restrict__ seg_nblk, const int* __restrict__ blk_len, const u64* __restrict__ states, int H, int Dh) {
  const int sg = blockIdx.x, h = blockIdx.y;
  const int DD = Dh * Dh;
  const int e = blockIdx.z * 256 + threadIdx.x;
  if (e >= DD) return;
  float* st = reinterpret_cast<float*>(states[sg]) + (i64)h * DD + e;
  const float s = slopes[h];
  const int first = seg_first_blk[sg], n = seg_nblk[sg];
  const i64 stride = (i64)H * DD;
  float* p = ws + ((i64)first * H + h) * DD + e;
  float S = *st;
  // SCAN_AHEAD blocks' loads in flight before the dependent chain (4 measured 2.9 TB/s on the H200: latency-bound).
  constexpr int SCAN_AHEAD = 8;
  for (int k = 0; k < n; k += SCAN_AHEAD) {
    float kv[SCAN_AHEAD];
    int m[SCAN_AHEAD];
#pragma unroll
    for (int u = 0; u < SCAN_AHEAD; u++) {
      if (k + u < n) {
        kv[u] = p[(i64)(k + u) * stride];
        m[u] = blk_len[first + k + u];
      }
    }
#pragma unroll
    for (int u = 0; u < SCAN_AHEAD; u++) {
      if (k + u < n) {
        p[(i64)(k + u) * stride] = S;
        S = decay(s, m[u]) * S + kv[u];
      }
    }
  }
  *st = S;
}

// ============================================================================================== block KV (tensor cores)
template <int D>
struct KvCfg {
  static constexpr int KC = 64;                   // rows per chunk
  static constexpr int PITCH = D + 8;             // bf16 per smem row: 16 B of padding → conflict-free ldmatrix
  static constexpr int WN = 4;                    // warps along the value dim (2 along the key dim)
  static constexpr int TM = D / 2, TN = D / WN;   // warp tile
  static constexpr int MT = TM / 16, NT = TN / 8; // m16 / n8 tiles per warp
  static constexpr int CPR = D / 8;               // 16-byte chunks per row
  static constexpr int CPT = KC * CPR / 256;      // chunks per thread per tile
  static constexpr int TILE = KC * PITCH * 2;     // bytes of one K or V tile
  static constexpr int SMEM = 4 * TILE;           // K0 V0 K1 V1
  static_assert(NT % 2 == 0 && CPT * 256 == KC * CPR, "tile shape");
};

template <int D>
static __device__ __forceinline__ void block_kv_tc(float* ws, const bf16* qkv, const float* slopes, const int* blk_start, const int* blk_len, int H) {
  using C = KvCfg<D>;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int lr = lane & 7, lq = lane >> 3, g = lane >> 2, t4 = lane & 3;
  const int b = blockIdx.x, h = blockIdx.y;
  const int m = blk_len[b];
  const float s = slopes[h];
  const i64 rs = (i64)3 * H * D;
  const bf16* kbase = qkv + (i64)blk_start[b] * rs + (i64)h * 3 * D + D;
  const bf16* vbase = kbase + D;
  const u32 sb = smem_u32(lt_smem);
  const int nch = (m + C::KC - 1) / C::KC;

  auto issue = [&](int t) {
    const int buf = t & 1;
    const u32 kd = sb + (2 * buf) * C::TILE, vd = kd + C::TILE;
#pragma unroll
    for (int r = 0; r < C::CPT; r++) {
      const int q = tid + 256 * r, row = q / C::CPR, c8 = q % C::CPR;
      const int j = t * C::KC + row;
      const bool valid = j < m;
      const i64 off = (i64)(valid ? j : 0) * rs + c8 * 8;
      const u32 so = (row * C::PITCH + c8 * 8) * 2;
      cp_async16(kd + so, kbase + off, valid);
      cp_async16(vd + so, vbase + off, valid);
    }
    cp_async_commit();
  };

  const int wm = warp / C::WN, wn = warp % C::WN;
  const int a0 = wm * C::TM, c0 = wn * C::TN;
  float acc[C::MT][C::NT][4];
#pragma unroll
  for (int i = 0; i < C::MT; i++)
#pragma unroll
    for (int j = 0; j < C::NT; j++)
#pragma unroll
      for (int x = 0; x < 4; x++) acc[i][j][x] = 0.f;

  issue(0);
  for (int t = 0; t < nch; t++) {
    const int buf = t & 1;
    if (t + 1 < nch) {
      issue(t + 1);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    // K ⊙ k_decay, rounded to bf16, in place: each thread rescales the chunks it copied itself (visible to it after
    // the wait); the barrier below publishes them.
    unsigned char* kt = lt_smem + (2 * buf) * C::TILE;
#pragma unroll
    for (int r = 0; r < C::CPT; r++) {
      const int q = tid + 256 * r, row = q / C::CPR, c8 = q % C::CPR;
      const int j = t * C::KC + row;
      if (j < m) {
        const float kd = decay(s, m - 1 - j);
        U4* p = reinterpret_cast<U4*>(kt + (row * C::PITCH + c8 * 8) * 2);
        U4 x = *p;
        x.x = f2x2bf(lo_bf(x.x) * kd, hi_bf(x.x) * kd);
        x.y = f2x2bf(lo_bf(x.y) * kd, hi_bf(x.y) * kd);
        x.z = f2x2bf(lo_bf(x.z) * kd, hi_bf(x.z) * kd);
        x.w = f2x2bf(lo_bf(x.w) * kd, hi_bf(x.w) * kd);
        *p = x;
      }
    }
    __syncthreads();
    const u32 ks = sb + (2 * buf) * C::TILE, vs = ks + C::TILE;
#pragma unroll
    for (int kk = 0; kk < C::KC / 16; kk++) {
      // A = (K⊙kd)ᵀ [key dim a][token j]: from the [token][dim] tile, transposed. Matrix q: tokens +8·(q>>1),
      // dims +8·(q&1) → a[0..3] = A[g][2t], A[g+8][2t], A[g][2t+8], A[g+8][2t+8].
      u32 af[C::MT][4];
#pragma unroll
      for (int mt = 0; mt < C::MT; mt++) {
        const int tok = kk * 16 + lr + ((lq >> 1) & 1) * 8, col = a0 + mt * 16 + (lq & 1) * 8;
        ldsm_x4_t(af[mt], ks + (tok * C::PITCH + col) * 2);
      }
      // B = V [token j][value dim c], transposed load. Matrix q: tokens +8·(q&1), dims +8·(q>>1) →
      // (b[0], b[1]) of n-tile 2np, then of n-tile 2np+1.
      u32 bfr[C::NT][2];
#pragma unroll
      for (int np = 0; np < C::NT / 2; np++) {
        u32 r4[4];
        const int tok = kk * 16 + lr + (lq & 1) * 8, col = c0 + np * 16 + (lq >> 1) * 8;
        ldsm_x4_t(r4, vs + (tok * C::PITCH + col) * 2);
        bfr[2 * np][0] = r4[0], bfr[2 * np][1] = r4[1], bfr[2 * np + 1][0] = r4[2], bfr[2 * np + 1][1] = r4[3];
      }
#pragma unroll
      for (int mt = 0; mt < C::MT; mt++)
#pragma unroll
        for (int nt = 0; nt < C::NT; nt++) mma_bf16_16816(acc[mt][nt], af[mt], bfr[nt]);
    }
    __syncthreads();  // the next iteration's copy overwrites this buffer
  }

  float* dst = ws + ((i64)b * H + h) * D * D;
#pragma unroll
  for (int mt = 0; mt < C::MT; mt++)
#pragma unroll
    for (int nt = 0; nt < C::NT; nt++) {
      const int a = a0 + mt * 16 + g, c = c0 + nt * 8 + 2 * t4;
      *reinterpret_cast<u64*>(dst + a * D + c) = pack2f(rbf(acc[mt][nt][0]), rbf(acc[mt][nt][1]));
      *reinterpret_cast<u64*>(dst + (a + 8) * D + c) = pack2f(rbf(acc[mt][nt][2]), rbf(acc[mt][nt][3]));
    }
}

extern "C" __global__ void __launch_bounds__(256) lightning_block_kv_bf16_d64(float* ws, const bf16* __restrict__ qkv, const float* __restrict__ slopes,
                                                                             const int* __restrict__ blk_start, const int* __restrict__ blk_len, int H, int Dh, int B) {
  block_kv_tc<64>(ws, qkv, slopes, blk_start, blk_len, H);
}
extern "C" __global__ void __launch_bounds__(256) lightning_block_kv_bf16_d128(float* ws, const bf16* __restrict__ qkv, const float* __restrict__ slopes,
                                                                              const int* __restrict__ blk_start, const int* __restrict__ blk_len, int H, int Dh, int B) {
  block_kv_tc<128>(ws, qkv, slopes, blk_start, blk_len, H);
}

// ============================================================================================== block KV (generic)
// Any Dh: each thread owns 8 state elements per pass (2048 per pass), the block's rows stream through shared memory
// in chunks of 32 (fp32: K⊙kd already rounded to bf16, and V).
extern "C" __global__ void __launch_bounds__(256) lightning_block_kv_bf16(float* ws, const bf16* __restrict__ qkv, const float* __restrict__ slopes,
                                                                         const int* __restrict__ blk_start, const int* __restrict__ blk_len, int H, int Dh, int B) {
  constexpr int KC = 32;
  float* Ks = reinterpret_cast<float*>(lt_smem);  // [KC][Dh]
  float* Vs = Ks + KC * Dh;                        // [KC][Dh]
  const int tid = threadIdx.x;
  const int b = blockIdx.x, h = blockIdx.y;
  const int m = blk_len[b];
  const float s = slopes[h];
  const i64 rs = (i64)3 * H * Dh;
  const bf16* kbase = qkv + (i64)blk_start[b] * rs + (i64)h * 3 * Dh + Dh;
  const bf16* vbase = kbase + Dh;
  const int DD = Dh * Dh;
  float* dst = ws + ((i64)b * H + h) * DD;
  for (int e0 = 0; e0 < DD; e0 += 2048) {
    float acc[8];
    int ea[8], ec[8];
#pragma unroll
    for (int k = 0; k < 8; k++) {
      const int e = e0 + tid + 256 * k;
      acc[k] = 0.f;
      ea[k] = e / Dh;
      ec[k] = e - ea[k] * Dh;
    }
    for (int j0 = 0; j0 < m; j0 += KC) {
      const int nj = imin(KC, m - j0);
      __syncthreads();
      for (int x = tid; x < nj * Dh; x += 256) {
        const int jj = x / Dh, a = x - jj * Dh, j = j0 + jj;
        Ks[x] = rbf(bf2f(kbase[(i64)j * rs + a]) * decay(s, m - 1 - j));
        Vs[x] = bf2f(vbase[(i64)j * rs + a]);
      }
      __syncthreads();
#pragma unroll
      for (int k = 0; k < 8; k++) {
        if (e0 + tid + 256 * k < DD) {
          float sum = acc[k];
          for (int jj = 0; jj < nj; jj++) sum += Ks[jj * Dh + ea[k]] * Vs[jj * Dh + ec[k]];
          acc[k] = sum;
        }
      }
    }
#pragma unroll
    for (int k = 0; k < 8; k++) {
      const int e = e0 + tid + 256 * k;
      if (e < DD) dst[e] = rbf(acc[k]);
    }
  }
}

// ============================================================================================== block output (tensor cores)
template <int D>
struct OutCfg {
  static constexpr int BM = 128;              // query rows per CTA (16 per warp)
  static constexpr int KT = 64;               // key rows per tile
  static constexpr int PITCH = D + 8;         // bf16 per smem row
  static constexpr int CPR = D / 8;           // 16-byte chunks per row
  static constexpr int Q_CPT = BM * CPR / 256;
  static constexpr int KV_CPT = KT * CPR / 256;
  static constexpr int Q_BYTES = BM * PITCH * 2;
  static constexpr int S_BYTES = 2 * D * PITCH * 2;   // S hi, S lo
  static constexpr int KV_TILE = KT * PITCH * 2;
  static constexpr int KV_BYTES = 4 * KV_TILE;        // K0 V0 K1 V1
  static constexpr int U_BYTES = S_BYTES > KV_BYTES ? S_BYTES : KV_BYTES;
  static constexpr int TAB = BM + KT;                 // decays for distances (r0−c0) + x − (KT−1), x < BM+KT−1
  static constexpr int SMEM = Q_BYTES + U_BYTES + 2 * TAB * 4;
  static_assert(Q_CPT * 256 == BM * CPR && KV_CPT * 256 == KT * CPR, "tile shape");
};

template <int D>
static __device__ __forceinline__ void block_out_tc(bf16* out, const bf16* qkv, const float* ws, const float* slopes, const int* blk_start, const int* blk_len, int H) {
  using C = OutCfg<D>;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int lr = lane & 7, lq = lane >> 3, g = lane >> 2, t4 = lane & 3;
  const int b = blockIdx.x, h = blockIdx.y;
  const int m = blk_len[b];
  const int r0 = blockIdx.z * C::BM;
  if (r0 >= m) return;  // whole CTA: before any barrier
  const float s = slopes[h];
  const i64 rs = (i64)3 * H * D;
  const int row0 = blk_start[b];
  const bf16* qbase = qkv + (i64)row0 * rs + (i64)h * 3 * D;
  const bf16* kbase = qbase + D;
  const bf16* vbase = qbase + 2 * D;
  const u32 sb = smem_u32(lt_smem);
  const u32 sQ = sb, sU = sb + C::Q_BYTES;
  float* tab = reinterpret_cast<float*>(lt_smem + C::Q_BYTES + C::U_BYTES);  // [2][TAB]

  // ---- phase 1: Q tile (cp.async, zero past m) and S_b split into bf16 hi/lo tiles ----
#pragma unroll
  for (int r = 0; r < C::Q_CPT; r++) {
    const int q = tid + 256 * r, row = q / C::CPR, c8 = q % C::CPR;
    const int i = r0 + row;
    const bool valid = i < m;
    cp_async16(sQ + (row * C::PITCH + c8 * 8) * 2, qbase + (i64)(valid ? i : 0) * rs + c8 * 8, valid);
  }
  cp_async_commit();
  {
    const F4* Sg = reinterpret_cast<const F4*>(ws + ((i64)b * H + h) * D * D);
    unsigned char* shi = lt_smem + C::Q_BYTES;
    unsigned char* slo = shi + D * C::PITCH * 2;
    constexpr int N4 = D * D / 4, PER = N4 / 256;  // float4s per thread (16 at D=128, 4 at D=64)
#pragma unroll 4
    for (int k = 0; k < PER; k++) {
      const int e4 = tid + 256 * k;
      const int a = e4 / (D / 4), c = (e4 % (D / 4)) * 4;
      const F4 v = Sg[e4];
      const bf16 h0 = f2bf(v.x), h1 = f2bf(v.y), h2 = f2bf(v.z), h3 = f2bf(v.w);
      U2 hi, lo;
      hi.x = (u32)h0 | ((u32)h1 << 16);
      hi.y = (u32)h2 | ((u32)h3 << 16);
      lo.x = f2x2bf(v.x - bf2f(h0), v.y - bf2f(h1));
      lo.y = f2x2bf(v.z - bf2f(h2), v.w - bf2f(h3));
      *reinterpret_cast<U2*>(shi + (a * C::PITCH + c) * 2) = hi;
      *reinterpret_cast<U2*>(slo + (a * C::PITCH + c) * 2) = lo;
    }
  }
  cp_async_wait<0>();
  __syncthreads();

  // Q fragments (A operand, rows = queries, k = dims) are re-read from shared memory per 16-dim step rather than
  // kept in registers: that keeps the kernel at ≤ 128 registers, so two CTAs share an SM and one CTA's loads overlap
  // the other's MMAs (one CTA per SM left the load phases exposed). Matrix q: rows +8·(q&1), dims +8·(q>>1).
  const u32 qrow = sQ + ((warp * 16 + lr + (lq & 1) * 8) * C::PITCH + (lq >> 1) * 8) * 2;

  float o[D / 8][4];
#pragma unroll
  for (int nt = 0; nt < D / 8; nt++)
#pragma unroll
    for (int x = 0; x < 4; x++) o[nt][x] = 0.f;

  // inter: O = Q·S_hi + Q·S_lo (B = S [a][c] row-major, transposed load: matrix q: a +8·(q&1), c +8·(q>>1)).
  {
    const u32 shi = sU, slo = sU + D * C::PITCH * 2;
#pragma unroll
    for (int ks = 0; ks < D / 16; ks++) {
      u32 qa[4];
      ldsm_x4(qa, qrow + ks * 32);
#pragma unroll
      for (int np = 0; np < D / 16; np++) {
        const int row = ks * 16 + lr + (lq & 1) * 8, col = np * 16 + (lq >> 1) * 8;
        const u32 off = (row * C::PITCH + col) * 2;
        u32 bh[4], bl[4];
        ldsm_x4_t(bh, shi + off);
        ldsm_x4_t(bl, slo + off);
        mma_bf16_16816(o[2 * np], qa, bh);
        mma_bf16_16816(o[2 * np + 1], qa, bh + 2);
        mma_bf16_16816(o[2 * np], qa, bl);
        mma_bf16_16816(o[2 * np + 1], qa, bl + 2);
      }
    }
    const int il = warp * 16 + g;  // row (relative to r0) of o[·][0..1]; o[·][2..3] is row il + 8
    const float qd0 = decay(s, r0 + il + 1), qd1 = decay(s, r0 + il + 9);
#pragma unroll
    for (int nt = 0; nt < D / 8; nt++) {
      o[nt][0] *= qd0, o[nt][1] *= qd0;
      o[nt][2] *= qd1, o[nt][3] *= qd1;
    }
  }
  __syncthreads();  // the S tiles are overwritten by K/V tiles below

  // ---- phase 2: causal intra-block term over key tiles [c0, c0 + KT) ----
  const int kend = imin(m, r0 + C::BM);
  const int ntiles = (kend + C::KT - 1) / C::KT;
  auto issue = [&](int t) {
    const int buf = t & 1, c0 = t * C::KT;
    const u32 kd = sU + (2 * buf) * C::KV_TILE, vd = kd + C::KV_TILE;
#pragma unroll
    for (int r = 0; r < C::KV_CPT; r++) {
      const int q = tid + 256 * r, row = q / C::CPR, c8 = q % C::CPR;
      const int j = c0 + row;
      const bool valid = j < m;
      const i64 off = (i64)(valid ? j : 0) * rs + c8 * 8;
      const u32 so = (row * C::PITCH + c8 * 8) * 2;
      cp_async16(kd + so, kbase + off, valid);
      cp_async16(vd + so, vbase + off, valid);
    }
    cp_async_commit();
    if (tid < C::BM + C::KT - 1) {
      const int n = (r0 - c0) + tid - (C::KT - 1);
      tab[buf * C::TAB + tid] = n >= 0 ? decay(s, n) : 0.f;
    }
  };

  const int lastRow = r0 + warp * 16 + 15;  // the warp's last row (in-block index)
  const bool warpLive = r0 + warp * 16 < m;
  issue(0);
  for (int t = 0; t < ntiles; t++) {
    const int buf = t & 1, c0 = t * C::KT;
    if (t + 1 < ntiles) {
      issue(t + 1);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    if (warpLive && c0 <= lastRow) {
      const int nk = imin(C::KT / 16, (lastRow - c0) / 16 + 1);  // 16-key steps with any unmasked key
      const u32 ks = sU + (2 * buf) * C::KV_TILE, vs = ks + C::KV_TILE;
      const float* tb = tab + buf * C::TAB;
      float sc[C::KT / 8][4];
#pragma unroll
      for (int nt = 0; nt < C::KT / 8; nt++)
#pragma unroll
        for (int x = 0; x < 4; x++) sc[nt][x] = 0.f;
      // S = Q·Kᵀ: B[k = dim][n = key] = K[key][dim], non-transposed load of the [key][dim] tile.
      // Matrix q: keys +8·(q>>1), dims +8·(q&1) → (b[0], b[1]) of key n-tile 2np, then of 2np+1.
#pragma unroll
      for (int ks16 = 0; ks16 < D / 16; ks16++) {
        u32 qa[4];
        ldsm_x4(qa, qrow + ks16 * 32);
#pragma unroll
        for (int np = 0; np < C::KT / 16; np++) {
          if (np < nk) {
            u32 kb[4];
            const int key = np * 16 + lr + (lq >> 1) * 8, col = ks16 * 16 + (lq & 1) * 8;
            ldsm_x4(kb, ks + (key * C::PITCH + col) * 2);
            mma_bf16_16816(sc[2 * np], qa, kb);
            mma_bf16_16816(sc[2 * np + 1], qa, kb + 2);
          }
        }
      }
      // P = bf16(QKᵀ) ⊙ decay(i − j) (0 above the diagonal), packed straight into A fragments (keys = k dim).
      const int il = warp * 16 + g;
      u32 pf[C::KT / 16][4];
#pragma unroll
      for (int kk = 0; kk < C::KT / 16; kk++) {
#pragma unroll
        for (int half = 0; half < 2; half++) {
          const int nt = 2 * kk + half;
          const int x = il - (nt * 8 + 2 * t4) + C::KT - 1;  // table index of (row il, key nt·8 + 2t4)
          const float p00 = rbf(sc[nt][0]) * tb[x], p01 = rbf(sc[nt][1]) * tb[x - 1];
          const float p10 = rbf(sc[nt][2]) * tb[x + 8], p11 = rbf(sc[nt][3]) * tb[x + 7];
          pf[kk][2 * half] = f2x2bf(p00, p01);
          pf[kk][2 * half + 1] = f2x2bf(p10, p11);
        }
      }
      // O += P·V: B = V [key][dim], transposed load. Matrix q: keys +8·(q&1), dims +8·(q>>1).
#pragma unroll
      for (int kk = 0; kk < C::KT / 16; kk++) {
        if (kk < nk) {
#pragma unroll
          for (int np = 0; np < D / 16; np++) {
            u32 vb[4];
            const int key = kk * 16 + lr + (lq & 1) * 8, col = np * 16 + (lq >> 1) * 8;
            ldsm_x4_t(vb, vs + (key * C::PITCH + col) * 2);
            mma_bf16_16816(o[2 * np], pf[kk], vb);
            mma_bf16_16816(o[2 * np + 1], pf[kk], vb + 2);
          }
        }
      }
    }
    __syncthreads();  // the next iteration's copy overwrites this buffer and its decay table
  }

  // ---- epilogue: rows il and il + 8 of the warp, two bf16 per u32 store ----
  const int il = warp * 16 + g;
#pragma unroll
  for (int half = 0; half < 2; half++) {
    const int i = r0 + il + 8 * half;
    if (i < m) {
      bf16* dst = out + (i64)(row0 + i) * H * D + (i64)h * D + 2 * t4;
#pragma unroll
      for (int nt = 0; nt < D / 8; nt++) *reinterpret_cast<u32*>(dst + nt * 8) = f2x2bf(o[nt][2 * half], o[nt][2 * half + 1]);
    }
  }
}

extern "C" __global__ void __launch_bounds__(256, 2) lightning_block_out_bf16_d64(bf16* __restrict__ out, const bf16* __restrict__ qkv, const float* __restrict__ ws,
                                                                                 const float* __restrict__ slopes, const int* __restrict__ blk_start,
                                                                                 const int* __restrict__ blk_len, int H, int Dh, int B) {
  block_out_tc<64>(out, qkv, ws, slopes, blk_start, blk_len, H);
}
extern "C" __global__ void __launch_bounds__(256, 2) lightning_block_out_bf16_d128(bf16* __restrict__ out, const bf16* __restrict__ qkv, const float* __restrict__ ws,
                                                                                  const float* __restrict__ slopes, const int* __restrict__ blk_start,
                                                                                  const int* __restrict__ blk_len, int H, int Dh, int B) {
  block_out_tc<128>(out, qkv, ws, slopes, blk_start, blk_len, H);
}

// ============================================================================================== block output (generic)
// Any Dh, fp32 math (P kept in fp32). BM query rows per CTA with BM·Dh ≤ 2048 and BM ≤ 128 (the wrapper picks
// BM = clamp(⌊2048/Dh⌋, 1, 128)); thread tid owns outputs e = tid + 256k, k < 8, (row e / Dh, dim e % Dh).
// Shared (fp32): Q[BM][Dh], K[32][Dh+1], V[32][Dh], P[BM][32].
extern "C" __global__ void __launch_bounds__(256) lightning_block_out_bf16(bf16* __restrict__ out, const bf16* __restrict__ qkv, const float* __restrict__ ws,
                                                                          const float* __restrict__ slopes, const int* __restrict__ blk_start,
                                                                          const int* __restrict__ blk_len, int H, int Dh, int B, int BM) {
  constexpr int KT = 32;
  const int tid = threadIdx.x;
  const int b = blockIdx.x, h = blockIdx.y;
  const int m = blk_len[b];
  const int r0 = blockIdx.z * BM;
  if (r0 >= m) return;
  const int rows = imin(BM, m - r0);
  const float s = slopes[h];
  const i64 rs = (i64)3 * H * Dh;
  const int row0 = blk_start[b];
  const bf16* qbase = qkv + (i64)row0 * rs + (i64)h * 3 * Dh;
  const bf16* kbase = qbase + Dh;
  const bf16* vbase = qbase + 2 * Dh;
  float* Qs = reinterpret_cast<float*>(lt_smem);  // [BM][Dh]
  float* Ks = Qs + BM * Dh;                        // [KT][Dh+1]
  float* Vs = Ks + KT * (Dh + 1);                  // [KT][Dh]
  float* Ps = Vs + KT * Dh;                        // [BM][KT]

  for (int x = tid; x < BM * Dh; x += 256) {
    const int i = x / Dh, a = x - i * Dh;
    Qs[x] = i < rows ? bf2f(qbase[(i64)(r0 + i) * rs + a]) : 0.f;
  }
  __syncthreads();

  float acc[8];
  int ei[8], ec[8];
  const float* Sg = ws + ((i64)b * H + h) * Dh * Dh;
#pragma unroll
  for (int k = 0; k < 8; k++) {
    const int e = tid + 256 * k;
    ei[k] = e / Dh;
    ec[k] = e - ei[k] * Dh;
    acc[k] = 0.f;
    if (e < BM * Dh && ei[k] < rows) {
      float sum = 0.f;
      for (int a = 0; a < Dh; a++) sum += Qs[ei[k] * Dh + a] * Sg[(i64)a * Dh + ec[k]];
      acc[k] = sum * decay(s, r0 + ei[k] + 1);
    }
  }

  const int kend = r0 + rows;  // keys 0 .. kend−1
  for (int c0 = 0; c0 < kend; c0 += KT) {
    const int nj = imin(KT, kend - c0);
    __syncthreads();
    for (int x = tid; x < nj * Dh; x += 256) {
      const int jj = x / Dh, a = x - jj * Dh;
      const i64 off = (i64)(c0 + jj) * rs + a;
      Ks[jj * (Dh + 1) + a] = bf2f(kbase[off]);
      Vs[jj * Dh + a] = bf2f(vbase[off]);
    }
    __syncthreads();
    for (int p = tid; p < BM * KT; p += 256) {
      const int i = p / KT, jj = p - i * KT;
      const int ia = r0 + i, j = c0 + jj;
      float v = 0.f;
      if (jj < nj && i < rows && j <= ia) {
        float dot = 0.f;
        for (int a = 0; a < Dh; a++) dot += Qs[i * Dh + a] * Ks[jj * (Dh + 1) + a];
        v = rbf(dot) * decay(s, ia - j);
      }
      Ps[p] = v;
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < 8; k++) {
      if (tid + 256 * k < BM * Dh && ei[k] < rows) {
        float sum = acc[k];
        for (int jj = 0; jj < nj; jj++) sum += Ps[ei[k] * KT + jj] * Vs[jj * Dh + ec[k]];
        acc[k] = sum;
      }
    }
  }
#pragma unroll
  for (int k = 0; k < 8; k++) {
    if (tid + 256 * k < BM * Dh && ei[k] < rows) out[(i64)(row0 + r0 + ei[k]) * H * Dh + (i64)h * Dh + ec[k]] = f2bf(acc[k]);
  }
}

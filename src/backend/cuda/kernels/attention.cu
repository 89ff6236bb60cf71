// attention.cu — causal softmax GQA attention over per-sequence paged KV caches (MODEL.md §9), bf16 in and out.
//
// Matches CpuBackend.attention (src/backend/cpu/attention.ts, attentionSegment): for segment s, query row i of the
// segment (q/out row seg_start[s] + i, position seg_past[s] + i) and query head h,
//   out[row, h, :] = Σ_{j ≤ past + i} softmax_j(scale · q[row, h, :] · K[j, g, :]) · V[j, g, :],   g = h / (H / Hkv)
// where K[j] / V[j] is cache row j of the segment (see the paging below). Keys in the cache are post-RoPE (RoPE runs
// before these kernels); scale = 1/√Dh is passed by the host.
//
// Layouts (all row-major, element offsets computed in 64 bits):
//   q, out         bf16 [T, H, Dh]               row stride H·Dh; segment s owns rows [seg_start[s], + seg_len[s])
//   k_cache[s]     bf16 [blocks · 64, Hkv, Dh]   the layer's key pool, shared by every sequence (a device pointer
//                                                per segment in a u64 table; the same pool in practice)
//   v_cache[s]     same, the value pool
//   block_table[s] i32 [≥ ⌈(past + len) / 64⌉]  the segment's blocks in order (a device pointer per segment in a
//                                                u64 table). Cache row r is pool row bt[r >> 6] · 64 + (r & 63)
//                                                (KV_BLOCK = backend.ts KV_BLOCK_SIZE); element (r, g, d) is at
//                                                ((i64)poolRow · Hkv + g) · Dh + d. Only rows [0, past + len) are
//                                                mapped: no kernel looks up a row at or past its causal / valid
//                                                limit (such rows are zero-filled in shared memory, never read).
//   part_o         f32  [nseg][H][splits][Dh]    decode partial outputs, unnormalised (relative to the split's max)
//   part_ml        f32  [nseg][H][splits][2]     decode partial (max m, sum l); an empty split has m = −inf, l = 0
//                                                and leaves its part_o unwritten (the reduce skips it)
// A block is as long as a 64-row key tile, and every tile / stage / 32-key batch below starts at a multiple of its
// length, so each lies in one block: the kernels look the block up once per tile (one table load, by every thread,
// right where the tile's copies are issued), then read 64 contiguous pool rows.
// Scores inside the kernels are kept in the base-2 domain: x = q·k · scale · log2(e), p = 2^(x − m); part_ml's m is
// in that domain too (the reduce kernel uses exp2 on it). Mathematically identical to exp(q·k·scale − max).
//
// On Hopper (sm_90a) the Dh 128 prefill runs kernels/attention_sm90.cu instead (wgmma, same function and arguments);
// attention_prefill_bf16_d128 below stays the fallback (LMOE_ATTN_SM90=0, other architectures).
//
// Kernels (all 128 threads = 4 warps; the host wrapper is src/backend/cuda/ops/attention.ts):
//   attention_prefill_bf16_d64 / _d128      flash-attention 2 with tensor cores (mma.sync m16n8k16, bf16 → fp32).
//       grid (⌈maxLen/64⌉, H, nseg): a CTA per (64-row query tile, query head, segment); blockIdx.x is reversed so
//       the tiles with the most keys start first. Each warp owns 16 query rows. Key tiles of 64 rows (tile kt = cache
//       rows [64·kt, 64·kt + 64) = pool block bt[kt]) loop from 0 to the tile's causal limit (past + last row),
//       double-buffered with cp.async (16-byte, zero-filling rows past the limit); only tiles that cross the diagonal
//       are masked. S = Q·Kᵀ (Q fragments kept in registers), online softmax in fp32 (running max and sum per row),
//       P rounded to bf16 for P·V (as flash-attention does),
//       O accumulated in fp32, normalised by the fp32 sum, rounded to bf16 and written with 16-byte stores.
//       Dynamic shared memory: Q 64×(Dh+8) + 2 stages × (K + V) 64×(Dh+8), bf16 (rows padded by 16 bytes so the
//       ldmatrix reads are conflict-free) = 5·64·(Dh+8)·2 B: 87,040 B for Dh = 128, 46,080 B for Dh = 64.
//   attention_decode_partial_bf16_d64 / _d128   split-K flash-decoding with tensor cores, one query per segment.
//       grid (nseg, Hkv, splits): the CTA handles every query head of kv head g (G = H/Hkv ≤ 16 heads form the 16
//       rows of the MMA A operand; rows ≥ G are zero), so each key and value is read once for the whole group.
//       Keys [split·chunk, min(n, (split+1)·chunk)), n = past + 1, chunk = max(⌈n / splits⌉, 256) rounded up to a
//       multiple of 64 (so splits · chunk ≥ n still, and every split starts on a block; short contexts use fewer,
//       fuller splits; the grid is the same whatever n is), stream through shared memory in stages of 64 rows = one
//       block (16 per warp), 3 stages deep with cp.async (16-byte, coalesced). Each warp runs its own online
//       softmax over its 16-key slices; the 4 warps merge in shared memory at the end and write
//       (m, l, o) per query head. Dynamic shared memory: Q 16×(Dh+8) + 3 stages × (K + V) 64×(Dh+8), bf16:
//       108,800 B for Dh = 128 (two CTAs per SM), 57,600 B for Dh = 64. The merge reuses the stage buffers.
//   attention_decode_reduce_bf16            grid (nseg, H): log-sum-exp combine of the splits, o = Σ 2^(m_i − M) o_i /
//       Σ 2^(m_i − M) l_i, rounded to bf16 into out row seg_start[s].
//   attention_prefill_bf16_generic / attention_decode_partial_bf16_generic   any Dh ≤ 256 (and any G in decode):
//       scalar fp32, one warp per (query row, head); lanes take one key each for the scores (32-key batches, one
//       block lookup per batch), then the 32 lanes take Dh/32 output dims each for P·V (P kept in fp32). Static
//       shared memory 4 KB (the scaled q rows).
//       grid (⌈maxLen/4⌉, H, nseg) for prefill; (nseg, Hkv, splits) for decode (each warp takes heads r ≡ warp
//       mod 4 of the group, so K/V are read once per head there: this path is for odd head sizes, not speed).
//
// Precision: bf16 inputs, fp32 products and accumulation everywhere, fp32 softmax statistics; the tensor-core paths
// round the probabilities to bf16 before P·V (relative error ~2⁻⁹ per weight, unbiased), outputs are rounded to bf16
// once. ‖gpu − ref‖/‖ref‖ measured on an H200 against fp64 / the fp32 CPU op: 0.8–2.6e-3 (the output rounding
// dominates). Paged, on an H200 (shuffled blocks; the contiguous-cache kernels before paging in parentheses):
// prefill Dh 128, H 64 / Hkv 8, 4K / 16K tokens: 243 / 274 TFLOP/s (248 / 280; causal FLOPs); decode, 16 sequences of
// 32K tokens, H 64 / Hkv 8: 3.72 TB/s of cache read (3.75; H200 copy rate ~4.3); one 1M-token sequence with a single
// kv head (32 CTAs): 479 µs (477). Block order (shuffled or in order) made no difference.
//
// The number of splits is chosen on the host from the batch and kv heads only (ops/attention.ts decodeSplits): decode launch shapes never depend
// on context length, so decode steps can be captured in CUDA graphs; every pointer (pools, block tables) reaches the
// kernels through the per-step metadata tables, so a replay follows block tables that moved or grew.

#include "common.cuh"

#define ATT_LOG2E 1.4426950408889634f
// Decode splits cover at least this many keys, so short contexts use fewer (fuller) splits; the grid stays fixed.
#define ATT_DECODE_MIN_CHUNK 256
// Rows per KV cache block (src/backend/backend.ts KV_BLOCK_SIZE; the host checks they agree). Equal to the 64-row
// key tiles and decode stages below.
#define KV_BLOCK 64
#define KV_BLOCK_SHIFT 6
static_assert(ATT_DECODE_MIN_CHUNK % KV_BLOCK == 0, "decode splits must start on a block");

// Entry i of a block table, as a read-only global load (the table's address comes out of a u64 table, so a plain
// dereference compiles to a generic LD). Measured on an H200 (prefill Dh 128, 4K–16K tokens): generic LD right before
// the tile's copies −12 % against the contiguous-cache kernels; ld.global.nc issued a tile ahead (kept in a register
// across the stage barrier and the MMAs) −6 to −9 %; ld.global.nc right before the tile's copies, as here, −2.5 %.
static __device__ __forceinline__ int bt_load(const int* bt, int i) {
  int v;
  asm volatile("ld.global.nc.b32 %0, [%1];\n" : "=r"(v) : "l"(bt + i));
  return v;
}

// Keys per decode split: max(⌈n / splits⌉, ATT_DECODE_MIN_CHUNK) rounded up to whole blocks. splits · chunk ≥ n.
static __device__ __forceinline__ int decode_chunk(int n, int splits) {
  const int c = max((n + splits - 1) / splits, ATT_DECODE_MIN_CHUNK);
  return (c + KV_BLOCK - 1) & ~(KV_BLOCK - 1);
}

struct __align__(16) U4 {
  u32 x, y, z, w;
};

// ---------------------------------------------------------------------------------------------- PTX helpers

// Two fp32 → packed bf16x2 (round to nearest even); `lo` lands in the low half (the lower column / k index).
static __device__ __forceinline__ u32 pack_bf16x2(float lo, float hi) {
  u32 r;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
}

// Copies rows [row0, row0 + ROWS) × D columns of a strided bf16 matrix into shared memory (row stride D + 8), 16 B
// per cp.async, consecutive threads on consecutive chunks of a row (coalesced). Rows ≥ rowLimit are zero-filled.
// `dst` is a shared-memory byte address; `base` points at column 0 of row 0; `ld` is the row stride in elements.
// 128 threads.
template <int D, int ROWS>
static __device__ __forceinline__ void load_rows(u32 dst, const bf16* base, i64 ld, int row0, int rowLimit, int tid) {
  constexpr int CPR = D / 8, LD = D + 8;
  static_assert((ROWS * CPR) % 128 == 0, "tile must split evenly over 128 threads");
#pragma unroll
  for (int it = 0; it < ROWS * CPR / 128; it++) {
    const int c = tid + it * 128;
    const int r = c / CPR, col = (c % CPR) * 8;
    const int row = row0 + r;
    const bool ok = row < rowLimit;
    const bf16* src = ok ? base + (i64)row * ld + col : base;
    cp_async16(dst + (u32)(r * LD + col) * 2u, src, ok);
  }
}

// ---------------------------------------------------------------------------------------------- prefill, tensor cores

template <int D>
static __device__ __forceinline__ void prefill_tc(bf16* __restrict__ out, const bf16* __restrict__ q, const int* __restrict__ seg_start,
                                                  const int* __restrict__ seg_len, const int* __restrict__ seg_past,
                                                  const u64* __restrict__ k_cache, const u64* __restrict__ v_cache,
                                                  const u64* __restrict__ block_table, int H, int Hkv, float scale) {
  constexpr int BM = 64, BN = 64, LD = D + 8, CPR = D / 8;
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* Qs = (bf16*)smem;  // [BM][LD], then K [2][BN][LD], then V [2][BN][LD]
  constexpr u32 KV_BUF = BN * LD * 2;  // bytes of one K (or V) buffer
  const u32 sQ = smem_u32(smem), sK = sQ + BM * LD * 2, sV = sK + 2 * KV_BUF;

  const int s = blockIdx.z, h = blockIdx.y;
  const int len = seg_len[s];
  const int i0 = (gridDim.x - 1 - blockIdx.x) * BM;  // longest-running tiles first
  if (i0 >= len) return;                              // uniform over the block
  const int start = seg_start[s], past = seg_past[s];
  const int g = h / (H / Hkv);
  const int iEnd = min(len, i0 + BM);
  const int kvLimit = past + iEnd;  // keys [0, kvLimit) are visible to some row of this tile
  const int nkt = (kvLimit + BN - 1) / BN;
  const i64 ldq = (i64)H * D, ldkv = (i64)Hkv * D;
  const i64 ldblk = ldkv * KV_BLOCK;  // elements per pool block
  // Pool row 0 of kv head g; key tile kt (cache rows [kt·BN, kt·BN + BN)) is pool block bt[kt], BN = KV_BLOCK.
  const bf16* kpool = (const bf16*)k_cache[s] + (i64)g * D;
  const bf16* vpool = (const bf16*)v_cache[s] + (i64)g * D;
  const int* bt = (const int*)block_table[s];  // tiles kt < nkt hold rows < kvLimit ≤ past + len: mapped
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;

  // Group 0: the Q tile (rows past the segment zero-filled). Group 1: key/value tile 0.
  load_rows<D, BM>(sQ, q + ((i64)start + i0) * ldq + (i64)h * D, ldq, 0, iEnd - i0, tid);
  cp_async_commit();
  {
    const i64 b = (i64)bt_load(bt, 0) * ldblk;
    load_rows<D, BN>(sK, kpool + b, ldkv, 0, kvLimit, tid);
    load_rows<D, BN>(sV, vpool + b, ldkv, 0, kvLimit, tid);
  }
  cp_async_commit();
  // the block of the next tile to load, fetched a tile ahead
  cp_async_wait<1>();
  __syncthreads();

  // Q fragments of this warp's 16 rows (A operand, k = head dims), kept in registers for the whole loop.
  u32 qf[D / 16][4];
#pragma unroll
  for (int kd = 0; kd < D / 16; kd++) ldsm_x4(qf[kd], sQ + (u32)((warp * 16 + (lane & 15)) * LD + kd * 16 + (lane >> 4) * 8) * 2u);

  // Per-lane ldmatrix byte offsets inside a K / V buffer (see the matrix order at the loads below).
  const u32 kOff = (u32)(((lane & 7) + ((lane >> 4) << 3)) * LD + ((lane >> 3) & 1) * 8) * 2u;
  const u32 vOff = (u32)(((lane & 7) + ((lane >> 3) & 1) * 8) * LD + (lane >> 4) * 8) * 2u;

  float o[D / 8][4];
#pragma unroll
  for (int nb = 0; nb < D / 8; nb++) o[nb][0] = o[nb][1] = o[nb][2] = o[nb][3] = 0.f;
  float m[2] = {NEG_INF, NEG_INF}, l[2] = {0.f, 0.f};
  const float sl2 = scale * ATT_LOG2E;
  const int warpPos = past + i0 + warp * 16;  // position of the warp's first row
  const int pos0 = warpPos + (lane >> 2);     // position of this thread's row g (row g + 8 is pos0 + 8)

  for (int kt = 0; kt < nkt; kt++) {
    const int buf = kt & 1;
    if (kt + 1 < nkt) {
      const i64 b = (i64)bt_load(bt, kt + 1) * ldblk;
      load_rows<D, BN>(sK + (buf ^ 1) * KV_BUF, kpool + b, ldkv, 0, kvLimit - (kt + 1) * BN, tid);
      load_rows<D, BN>(sV + (buf ^ 1) * KV_BUF, vpool + b, ldkv, 0, kvLimit - (kt + 1) * BN, tid);

    }
    cp_async_commit();  // possibly empty: keeps the group count uniform
    cp_async_wait<1>(); // tile kt has landed (for this thread) ...
    __syncthreads();    // ... and for every thread
    const u32 Kb = sK + buf * KV_BUF + kOff;
    const u32 Vb = sV + buf * KV_BUF + vOff;

    // S = Q·Kᵀ: 16 rows × 64 keys per warp, 8 n-blocks of 8 keys.
    float sc[BN / 8][4];
#pragma unroll
    for (int j = 0; j < BN / 8; j++) sc[j][0] = sc[j][1] = sc[j][2] = sc[j][3] = 0.f;
#pragma unroll
    for (int kd = 0; kd < D / 16; kd++) {
#pragma unroll
      for (int nb2 = 0; nb2 < BN / 16; nb2++) {
        // matrices: (keys +0..7, dims +0..7), (keys +0..7, dims +8..15), (keys +8..15, dims +0..7), (keys +8..15, dims +8..15)
        u32 b[4];
        ldsm_x4(b, Kb + (u32)(nb2 * 16 * LD + kd * 16) * 2u);
        mma_bf16_16816(sc[2 * nb2], qf[kd], b);
        mma_bf16_16816(sc[2 * nb2 + 1], qf[kd], b + 2);
      }
    }

    // Scale into the base-2 domain; mask keys after each row's position (only tiles crossing the diagonal).
    const int key0 = kt * BN;
    const bool needMask = key0 + BN - 1 > warpPos;
#pragma unroll
    for (int j = 0; j < BN / 8; j++) {
#pragma unroll
      for (int e = 0; e < 4; e++) {
        float v = sc[j][e] * sl2;
        if (needMask) {
          const int key = key0 + j * 8 + 2 * (lane & 3) + (e & 1);
          if (key > pos0 + 8 * (e >> 1)) v = NEG_INF;
        }
        sc[j][e] = v;
      }
    }

    // Online softmax per row (r = 0: row g, r = 1: row g + 8); the 4 lanes of a quad share a row.
#pragma unroll
    for (int r = 0; r < 2; r++) {
      float mx = m[r];
#pragma unroll
      for (int j = 0; j < BN / 8; j++) mx = fmaxf(mx, fmaxf(sc[j][2 * r], sc[j][2 * r + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float mu = mx == NEG_INF ? 0.f : mx;  // a fully masked row so far: keep p = 0, no NaN
      const float alpha = exp2f(m[r] - mu);
      m[r] = mx;
      float rs = 0.f;
#pragma unroll
      for (int j = 0; j < BN / 8; j++) {
        const float p0 = exp2f(sc[j][2 * r] - mu), p1 = exp2f(sc[j][2 * r + 1] - mu);
        sc[j][2 * r] = p0;
        sc[j][2 * r + 1] = p1;
        rs += p0 + p1;
      }
      l[r] = l[r] * alpha + rs;  // this thread's columns only; the quad sums at the end
#pragma unroll
      for (int nb = 0; nb < D / 8; nb++) {
        o[nb][2 * r] *= alpha;
        o[nb][2 * r + 1] *= alpha;
      }
    }

    // O += P·V: P (bf16) from the S accumulators as A fragments, V via ldmatrix.trans as B (k = keys, n = dims).
#pragma unroll
    for (int kk = 0; kk < BN / 16; kk++) {
      u32 a[4];
      a[0] = pack_bf16x2(sc[2 * kk][0], sc[2 * kk][1]);
      a[1] = pack_bf16x2(sc[2 * kk][2], sc[2 * kk][3]);
      a[2] = pack_bf16x2(sc[2 * kk + 1][0], sc[2 * kk + 1][1]);
      a[3] = pack_bf16x2(sc[2 * kk + 1][2], sc[2 * kk + 1][3]);
#pragma unroll
      for (int nd2 = 0; nd2 < D / 16; nd2++) {
        // matrices: (keys +0..7, dims +0..7), (keys +8..15, dims +0..7), (keys +0..7, dims +8..15), (keys +8..15, dims +8..15)
        u32 b[4];
        ldsm_x4_t(b, Vb + (u32)(kk * 16 * LD + nd2 * 16) * 2u);
        mma_bf16_16816(o[2 * nd2], a, b);
        mma_bf16_16816(o[2 * nd2 + 1], a, b + 2);
      }
    }
    __syncthreads();  // every warp is done with buffer `buf` before it is refilled
  }
  cp_async_wait<0>();

  // Normalise, stage the warp's 16 rows as bf16 in its own rows of Qs (read only by this warp), store 16 B a lane.
  float inv[2];
#pragma unroll
  for (int r = 0; r < 2; r++) {
    float sum = l[r];
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    inv[r] = sum > 0.f ? 1.f / sum : 0.f;
  }
  bf16* Os = Qs + warp * 16 * LD;
#pragma unroll
  for (int nb = 0; nb < D / 8; nb++) {
    const int col = nb * 8 + 2 * (lane & 3);
    *(u32*)(Os + (lane >> 2) * LD + col) = pack_bf16x2(o[nb][0] * inv[0], o[nb][1] * inv[0]);
    *(u32*)(Os + ((lane >> 2) + 8) * LD + col) = pack_bf16x2(o[nb][2] * inv[1], o[nb][3] * inv[1]);
  }
  __syncwarp();
  bf16* obase = out + (i64)start * ldq + (i64)h * D;
#pragma unroll
  for (int it = 0; it < 16 * CPR / 32; it++) {
    const int c = lane + it * 32;
    const int r = c / CPR, col = (c % CPR) * 8;
    const int i = i0 + warp * 16 + r;
    if (i < len) *(U4*)(obase + (i64)i * ldq + col) = *(const U4*)(Os + r * LD + col);
  }
}

extern "C" __global__ void __launch_bounds__(128) attention_prefill_bf16_d128(bf16* out, const bf16* q, const int* seg_start, const int* seg_len,
                                                                             const int* seg_past, const u64* k_cache, const u64* v_cache,
                                                                             const u64* block_table, int H, int Hkv, int Dh, float scale) {
  prefill_tc<128>(out, q, seg_start, seg_len, seg_past, k_cache, v_cache, block_table, H, Hkv, scale);
}

extern "C" __global__ void __launch_bounds__(128) attention_prefill_bf16_d64(bf16* out, const bf16* q, const int* seg_start, const int* seg_len,
                                                                            const int* seg_past, const u64* k_cache, const u64* v_cache,
                                                                            const u64* block_table, int H, int Hkv, int Dh, float scale) {
  prefill_tc<64>(out, q, seg_start, seg_len, seg_past, k_cache, v_cache, block_table, H, Hkv, scale);
}

// ---------------------------------------------------------------------------------------------- decode, tensor cores

template <int D>
static __device__ __forceinline__ void decode_tc(float* __restrict__ part_o, float* __restrict__ part_ml, const bf16* __restrict__ q,
                                                 const int* __restrict__ seg_start, const int* __restrict__ seg_past,
                                                 const u64* __restrict__ k_cache, const u64* __restrict__ v_cache,
                                                 const u64* __restrict__ block_table, int H, int Hkv, float scale, int splits) {
  constexpr int LD = D + 8, KW = 16, BK = 4 * KW, NST = 3;
  extern __shared__ __align__(16) unsigned char smem[];
  // Q [16][LD], then K [NST][BK][LD], then V [NST][BK][LD] (bf16)
  constexpr u32 KV_BUF = BK * LD * 2;  // bytes of one K (or V) stage
  const u32 sQ = smem_u32(smem), sK = sQ + 16 * LD * 2, sV = sK + NST * KV_BUF;

  const int s = blockIdx.x, g = blockIdx.y, split = blockIdx.z;
  const int G = H / Hkv;  // ≤ 16 (host-checked)
  const int n = seg_past[s] + 1;
  const int chunk = decode_chunk(n, splits);  // a multiple of BK = KV_BLOCK: stage t is one block
  const int k0 = split * chunk;
  const int k1 = min(n, k0 + chunk);
  const i64 pbase = ((i64)s * H + (i64)g * G) * splits + split;  // (segment, head g·G + r, split) = pbase + r·splits
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;

  if (k0 >= k1) {  // empty split: m = −inf, l = 0 (its part_o is neither written nor read)
    for (int r = tid; r < G; r += 128) {
      part_ml[(pbase + (i64)r * splits) * 2] = NEG_INF;
      part_ml[(pbase + (i64)r * splits) * 2 + 1] = 0.f;
    }
    return;
  }

  const i64 ldkv = (i64)Hkv * D;
  const i64 ldblk = ldkv * KV_BLOCK;  // elements per pool block
  // Pool row 0 of kv head g; stage t (cache rows [k0 + t·BK, + BK)) is pool block bt[t], BK = KV_BLOCK.
  const bf16* kpool = (const bf16*)k_cache[s] + (i64)g * D;
  const bf16* vpool = (const bf16*)v_cache[s] + (i64)g * D;
  const int* bt = (const int*)block_table[s] + (k0 >> KV_BLOCK_SHIFT);  // stages t < nst hold rows < k1 ≤ n: mapped
  const int nst = (k1 - k0 + BK - 1) / BK;

  // Group 0: the G query rows of this kv head (contiguous heads g·G .. g·G + G − 1), rows ≥ G zero-filled.
  load_rows<D, 16>(sQ, q + ((i64)seg_start[s] * H + (i64)g * G) * D, D, 0, G, tid);
  cp_async_commit();
  // Groups 1, 2: stages 0 and 1.
#pragma unroll
  for (int t = 0; t < 2; t++) {
    if (t < nst) {
      const i64 b = (i64)bt_load(bt, t) * ldblk;
      load_rows<D, BK>(sK + t * KV_BUF, kpool + b, ldkv, 0, k1 - k0 - t * BK, tid);
      load_rows<D, BK>(sV + t * KV_BUF, vpool + b, ldkv, 0, k1 - k0 - t * BK, tid);
    }
    cp_async_commit();
  }
  // the block of the next stage to load, fetched a stage ahead
  cp_async_wait<2>();
  __syncthreads();

  u32 qf[D / 16][4];
#pragma unroll
  for (int kd = 0; kd < D / 16; kd++) ldsm_x4(qf[kd], sQ + (u32)((lane & 15) * LD + kd * 16 + (lane >> 4) * 8) * 2u);

  // Per-lane ldmatrix byte offsets of this warp's 16 keys inside a K / V stage.
  const u32 kOff = (u32)((warp * KW + (lane & 7) + ((lane >> 4) << 3)) * LD + ((lane >> 3) & 1) * 8) * 2u;
  const u32 vOff = (u32)((warp * KW + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + (lane >> 4) * 8) * 2u;

  float o[D / 8][4];
#pragma unroll
  for (int nb = 0; nb < D / 8; nb++) o[nb][0] = o[nb][1] = o[nb][2] = o[nb][3] = 0.f;
  float m[2] = {NEG_INF, NEG_INF}, l[2] = {0.f, 0.f};
  const float sl2 = scale * ATT_LOG2E;

  for (int t = 0; t < nst; t++) {
    if (t + 2 < nst) {
      const int nbuf = (t + 2) % NST;
      const i64 b = (i64)bt_load(bt, t + 2) * ldblk;
      load_rows<D, BK>(sK + nbuf * KV_BUF, kpool + b, ldkv, 0, k1 - k0 - (t + 2) * BK, tid);
      load_rows<D, BK>(sV + nbuf * KV_BUF, vpool + b, ldkv, 0, k1 - k0 - (t + 2) * BK, tid);
  // lands while stages t .. t + 2 are consumed
    }
    cp_async_commit();
    cp_async_wait<2>();  // stage t has landed
    __syncthreads();
    const int buf = t % NST;
    const u32 Kb = sK + buf * KV_BUF + kOff;  // this warp's 16 keys
    const u32 Vb = sV + buf * KV_BUF + vOff;

    float sc[2][4];
#pragma unroll
    for (int j = 0; j < 2; j++) sc[j][0] = sc[j][1] = sc[j][2] = sc[j][3] = 0.f;
#pragma unroll
    for (int kd = 0; kd < D / 16; kd++) {
      u32 b[4];
      ldsm_x4(b, Kb + kd * 32u);  // (keys +0..7, dims +0..7), (+0..7, +8..15), (+8..15, +0..7), (+8..15, +8..15)
      mma_bf16_16816(sc[0], qf[kd], b);
      mma_bf16_16816(sc[1], qf[kd], b + 2);
    }

    const int key0 = k0 + t * BK + warp * KW;
    const bool needMask = key0 + KW > k1;
#pragma unroll
    for (int j = 0; j < 2; j++) {
#pragma unroll
      for (int e = 0; e < 4; e++) {
        float v = sc[j][e] * sl2;
        if (needMask && key0 + j * 8 + 2 * (lane & 3) + (e & 1) >= k1) v = NEG_INF;
        sc[j][e] = v;
      }
    }

#pragma unroll
    for (int r = 0; r < 2; r++) {
      float mx = fmaxf(m[r], fmaxf(fmaxf(sc[0][2 * r], sc[0][2 * r + 1]), fmaxf(sc[1][2 * r], sc[1][2 * r + 1])));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float mu = mx == NEG_INF ? 0.f : mx;  // a warp whose slices so far are all past k1
      const float alpha = exp2f(m[r] - mu);
      m[r] = mx;
      float rs = 0.f;
#pragma unroll
      for (int j = 0; j < 2; j++) {
        const float p0 = exp2f(sc[j][2 * r] - mu), p1 = exp2f(sc[j][2 * r + 1] - mu);
        sc[j][2 * r] = p0;
        sc[j][2 * r + 1] = p1;
        rs += p0 + p1;
      }
      l[r] = l[r] * alpha + rs;
#pragma unroll
      for (int nb = 0; nb < D / 8; nb++) {
        o[nb][2 * r] *= alpha;
        o[nb][2 * r + 1] *= alpha;
      }
    }

    u32 a[4];
    a[0] = pack_bf16x2(sc[0][0], sc[0][1]);
    a[1] = pack_bf16x2(sc[0][2], sc[0][3]);
    a[2] = pack_bf16x2(sc[1][0], sc[1][1]);
    a[3] = pack_bf16x2(sc[1][2], sc[1][3]);
#pragma unroll
    for (int nd2 = 0; nd2 < D / 16; nd2++) {
      u32 b[4];
      ldsm_x4_t(b, Vb + nd2 * 32u);  // (keys +0..7, dims +0..7), (+8..15, +0..7), (+0..7, +8..15), (+8..15, +8..15)
      mma_bf16_16816(o[2 * nd2], a, b);
      mma_bf16_16816(o[2 * nd2 + 1], a, b + 2);
    }
    __syncthreads();  // buffer `buf` is refilled two iterations later
  }
  cp_async_wait<0>();

  // Merge the 4 warps' states. Stage buffers are free (the loop ended with a barrier): Om [4][16][D+8] f32, Ml [4][16][2].
#pragma unroll
  for (int r = 0; r < 2; r++) {
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
  }
  float* Om = (float*)(smem + 16 * LD * 2);
  float* Ml = Om + 4 * 16 * LD;
  const int row = warp * 16 + (lane >> 2);
#pragma unroll
  for (int nb = 0; nb < D / 8; nb++) {
    const int col = nb * 8 + 2 * (lane & 3);
    Om[row * LD + col] = o[nb][0];
    Om[row * LD + col + 1] = o[nb][1];
    Om[(row + 8) * LD + col] = o[nb][2];
    Om[(row + 8) * LD + col + 1] = o[nb][3];
  }
  if ((lane & 3) == 0) {
    Ml[row * 2] = m[0];
    Ml[row * 2 + 1] = l[0];
    Ml[(row + 8) * 2] = m[1];
    Ml[(row + 8) * 2 + 1] = l[1];
  }
  __syncthreads();
  for (int idx = tid; idx < G * D; idx += 128) {
    const int r = idx / D, d = idx % D;
    float M = NEG_INF;
#pragma unroll
    for (int w = 0; w < 4; w++) M = fmaxf(M, Ml[(w * 16 + r) * 2]);
    const float Mu = M == NEG_INF ? 0.f : M;
    float acc = 0.f, L = 0.f;
#pragma unroll
    for (int w = 0; w < 4; w++) {
      const float wt = exp2f(Ml[(w * 16 + r) * 2] - Mu);
      acc += wt * Om[(w * 16 + r) * LD + d];
      L += wt * Ml[(w * 16 + r) * 2 + 1];
    }
    const i64 p = pbase + (i64)r * splits;
    part_o[p * D + d] = acc;
    if (d == 0) {
      part_ml[p * 2] = M;
      part_ml[p * 2 + 1] = L;
    }
  }
}

extern "C" __global__ void __launch_bounds__(128) attention_decode_partial_bf16_d128(float* part_o, float* part_ml, const bf16* q, const int* seg_start,
                                                                                    const int* seg_past, const u64* k_cache, const u64* v_cache,
                                                                                    const u64* block_table, int H, int Hkv, int Dh, float scale, int splits) {
  decode_tc<128>(part_o, part_ml, q, seg_start, seg_past, k_cache, v_cache, block_table, H, Hkv, scale, splits);
}

extern "C" __global__ void __launch_bounds__(128) attention_decode_partial_bf16_d64(float* part_o, float* part_ml, const bf16* q, const int* seg_start,
                                                                                   const int* seg_past, const u64* k_cache, const u64* v_cache,
                                                                                   const u64* block_table, int H, int Hkv, int Dh, float scale, int splits) {
  decode_tc<64>(part_o, part_ml, q, seg_start, seg_past, k_cache, v_cache, block_table, H, Hkv, scale, splits);
}

// ---------------------------------------------------------------------------------------------- decode reduce

// grid (nseg, H), any block size: out[seg_start[s], h, :] = Σ_i 2^(m_i − M) o_i / Σ_i 2^(m_i − M) l_i over the
// non-empty splits (m_i > −inf).
extern "C" __global__ void attention_decode_reduce_bf16(bf16* __restrict__ out, const float* __restrict__ part_o, const float* __restrict__ part_ml,
                                                        const int* __restrict__ seg_start, int H, int Dh, int splits) {
  const int s = blockIdx.x, h = blockIdx.y;
  const i64 base = ((i64)s * H + h) * splits;
  const float* ml = part_ml + base * 2;
  float M = NEG_INF;
  for (int i = 0; i < splits; i++) M = fmaxf(M, ml[2 * i]);
  const float Mu = M == NEG_INF ? 0.f : M;
  float L = 0.f;
  for (int i = 0; i < splits; i++) L += exp2f(ml[2 * i] - Mu) * ml[2 * i + 1];
  const float inv = L > 0.f ? 1.f / L : 0.f;
  bf16* orow = out + ((i64)seg_start[s] * H + h) * Dh;
  const float* po = part_o + base * Dh;
  for (int d = threadIdx.x; d < Dh; d += blockDim.x) {
    float acc = 0.f;
    for (int i = 0; i < splits; i++) {
      if (ml[2 * i] == NEG_INF) continue;  // empty split (uniform over the block): its part_o was not written
      acc += exp2f(ml[2 * i] - Mu) * po[(i64)i * Dh + d];
    }
    orow[d] = f2bf(acc * inv);
  }
}

// ---------------------------------------------------------------------------------------------- generic (any Dh ≤ 256)

// One warp attends one query (qs: Dh floats in shared memory, pre-scaled by scale·log2 e) to cache rows [k0, k1) of
// one kv head (kb/vb: pool row 0 of that head, row stride ld; bt: the segment's block table). k0 must be a multiple
// of 32, so each 32-key batch lies in one block (one table lookup per batch, only for batches that start below k1).
// Returns the base-2 running max m, the sum l (same on all lanes) and the unnormalised output o[c] for dims
// lane + 32c. An empty range gives m = −inf, l = 0, o = 0.
static __device__ __forceinline__ void warp_attend(const float* qs, const bf16* __restrict__ kb, const bf16* __restrict__ vb,
                                                   const int* __restrict__ bt, i64 ld, int k0, int k1, int Dh, float& m, float& l,
                                                   float (&o)[8]) {
  const int lane = threadIdx.x & 31;
  m = NEG_INF;
  l = 0.f;
#pragma unroll
  for (int c = 0; c < 8; c++) o[c] = 0.f;
  for (int base = k0; base < k1; base += 32) {
    const i64 prow = (i64)bt_load(bt, base >> KV_BLOCK_SHIFT) * KV_BLOCK + (base & (KV_BLOCK - 1));  // pool row of key `base`
    const bf16* kbat = kb + prow * ld;
    const bf16* vbat = vb + prow * ld;
    const int j = base + lane;
    float sc = NEG_INF;
    if (j < k1) {
      const bf16* kr = kbat + (i64)lane * ld;
      float acc = 0.f;
      for (int d = 0; d < Dh; d++) acc += qs[d] * bf2f(kr[d]);
      sc = acc;
    }
    const float mx = fmaxf(m, warp_max(sc));  // finite: key `base` is valid
    const float alpha = exp2f(m - mx);
    const float p = j < k1 ? exp2f(sc - mx) : 0.f;
    l = l * alpha + warp_sum(p);
#pragma unroll
    for (int c = 0; c < 8; c++) o[c] *= alpha;
    m = mx;
    const int cnt = min(32, k1 - base);
    for (int jj = 0; jj < cnt; jj++) {
      const float pj = __shfl_sync(0xffffffffu, p, jj);
      const bf16* vr = vbat + (i64)jj * ld;
#pragma unroll
      for (int c = 0; c < 8; c++) {
        const int d = lane + 32 * c;
        if (d < Dh) o[c] += pj * bf2f(vr[d]);
      }
    }
  }
}

// grid (⌈maxLen/4⌉, H, nseg), block 128: warp w handles query row blockIdx.x·4 + w of segment blockIdx.z, head blockIdx.y.
extern "C" __global__ void __launch_bounds__(128) attention_prefill_bf16_generic(bf16* __restrict__ out, const bf16* __restrict__ q,
                                                                                const int* __restrict__ seg_start, const int* __restrict__ seg_len,
                                                                                const int* __restrict__ seg_past, const u64* __restrict__ k_cache,
                                                                                const u64* __restrict__ v_cache, const u64* __restrict__ block_table,
                                                                                int H, int Hkv, int Dh, float scale) {
  __shared__ float qsh[4][256];
  const int s = blockIdx.z, h = blockIdx.y, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int i = blockIdx.x * 4 + warp;
  if (i >= seg_len[s]) return;  // no block-wide barriers below
  const int g = h / (H / Hkv);
  const i64 row = (i64)seg_start[s] + i;
  const bf16* qr = q + (row * H + h) * Dh;
  const float sl2 = scale * ATT_LOG2E;
  for (int d = lane; d < Dh; d += 32) qsh[warp][d] = bf2f(qr[d]) * sl2;
  __syncwarp();
  float m, l, o[8];
  warp_attend(qsh[warp], (const bf16*)k_cache[s] + (i64)g * Dh, (const bf16*)v_cache[s] + (i64)g * Dh, (const int*)block_table[s],
              (i64)Hkv * Dh, 0, seg_past[s] + i + 1, Dh, m, l, o);
  const float inv = l > 0.f ? 1.f / l : 0.f;
  bf16* orow = out + (row * H + h) * Dh;
#pragma unroll
  for (int c = 0; c < 8; c++) {
    const int d = lane + 32 * c;
    if (d < Dh) orow[d] = f2bf(o[c] * inv);
  }
}

// grid (nseg, Hkv, splits), block 128: warp w handles the group's query heads r = w, w + 4, ... over the split's keys.
extern "C" __global__ void __launch_bounds__(128) attention_decode_partial_bf16_generic(float* __restrict__ part_o, float* __restrict__ part_ml,
                                                                                       const bf16* __restrict__ q, const int* __restrict__ seg_start,
                                                                                       const int* __restrict__ seg_past, const u64* __restrict__ k_cache,
                                                                                       const u64* __restrict__ v_cache, const u64* __restrict__ block_table,
                                                                                       int H, int Hkv, int Dh, float scale, int splits) {
  __shared__ float qsh[4][256];
  const int s = blockIdx.x, g = blockIdx.y, split = blockIdx.z, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int G = H / Hkv;
  const int n = seg_past[s] + 1;
  const int chunk = decode_chunk(n, splits);  // a multiple of 64: k0 starts a block
  const int k0 = split * chunk;
  const int k1 = min(n, k0 + chunk);
  if (k0 >= k1) {  // empty split: m = −inf, l = 0 (its part_o is neither written nor read)
    for (int r = threadIdx.x; r < G; r += blockDim.x) {
      const i64 p = ((i64)s * H + g * G + r) * splits + split;
      part_ml[p * 2] = NEG_INF;
      part_ml[p * 2 + 1] = 0.f;
    }
    return;
  }
  const float sl2 = scale * ATT_LOG2E;
  const bf16* kb = (const bf16*)k_cache[s] + (i64)g * Dh;
  const bf16* vb = (const bf16*)v_cache[s] + (i64)g * Dh;
  const int* bt = (const int*)block_table[s];
  for (int r = warp; r < G; r += 4) {
    const int h = g * G + r;
    const bf16* qr = q + ((i64)seg_start[s] * H + h) * Dh;
    for (int d = lane; d < Dh; d += 32) qsh[warp][d] = bf2f(qr[d]) * sl2;
    __syncwarp();
    float m, l, o[8];
    warp_attend(qsh[warp], kb, vb, bt, (i64)Hkv * Dh, k0, k1, Dh, m, l, o);
    const i64 p = ((i64)s * H + h) * splits + split;
#pragma unroll
    for (int c = 0; c < 8; c++) {
      const int d = lane + 32 * c;
      if (d < Dh) part_o[p * Dh + d] = o[c];
    }
    if (lane == 0) {
      part_ml[p * 2] = m;
      part_ml[p * 2 + 1] = l;
    }
    __syncwarp();  // qsh[warp] is rewritten for the next head
  }
}

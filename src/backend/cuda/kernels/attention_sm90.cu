// attention_sm90.cu — Hopper (sm_90a) causal GQA flash-attention prefill for head size 128: wgmma tensor cores,
// a producer warpgroup feeding two consumer warpgroups through shared-memory stages and mbarriers.
//
// Same function, arguments and layouts as attention_prefill_bf16_d128 in attention.cu (see that file's header: q /
// out [T, H, 128], paged K / V pools [blocks · 64, Hkv, 128] with per-segment block tables, segment start / length /
// past, causal over cache rows [0, past + i], GQA g = h / (H / Hkv), scale passed by the host, scores in the base-2
// domain inside). The host wrapper (ops/attention.ts) launches it on sm_90a for Dh = 128; attention.cu's mma.sync
// kernel stays the fallback (other architectures, Dh 64, or LMOE_ATTN_SM90=0).
//
// CTA = 3 warpgroups (384 threads), one (128-row query tile, query head, segment) per CTA, grid (⌈maxLen/128⌉, H,
// nseg) with blockIdx.x reversed so the tiles with the most keys start first.
//   warpgroup 0, producer (setmaxnreg 40): copies key / value tiles of 128 cache rows (two 64-row pool blocks, one
//       block-table lookup each) into a 3-stage ring with 16-byte cp.async, zero-filling rows at or past the CTA's
//       causal limit (past + last row) and never looking up a block past it. Each thread waits for its own copies,
//       fences them to the async proxy (the tensor cores read shared memory through it) and arrives on the stage's
//       "K full" / "V full" mbarrier (128 arrivals); it refills a stage once both consumers arrived on its "empty"
//       mbarrier (one arrival per consumer warp, 8).
//   warpgroups 1, 2, consumers (setmaxnreg 232): 64 query rows each (rows 0–63 / 64–127 of the tile). Each loads
//       its Q rows itself (cp.async, fence, named barrier) and, in the default kernel, keeps them in registers as
//       wgmma A fragments (ldmatrix from the swizzled tile). Per key tile: S = Q·Kᵀ as 8 wgmma m64n128k16 (A = Q from
//       registers, or from shared memory in _serial; B = K from shared memory, K-major), causal mask (only tiles that
//       cross the warpgroup's diagonal: the loop is split so the others carry no mask code), online softmax in fp32
//       registers (running max / sum per row, exp2 of scores prescaled by scale·log2 e), P rounded to bf16 in
//       registers and O += P·V as 8 wgmma m64n128k16 with A = P from registers and B = V from shared memory
//       (MN-major: the transpose flag). The two consumers run unsynchronised, so one's softmax overlaps the other's
//       products; each releases a stage (one arrival per warp) once its P·V is done.
//       The epilogue normalises O by the row sums, rounds to bf16, stages the rows in the warpgroup's own Q rows of
//       shared memory and writes them with 16-byte stores (rows past the segment are not written).
//   Variants kept for measurement (ops/attention.ts PrefillKernel, LMOE_ATTN_SM90=<suffix>): _serial (Q read from
//   shared memory by every S product), _smx (the default plus softmax turns between the consumers on named barriers
//   3 / 4), _ov (FlashAttention-3's intra-warpgroup overlap: S of tile j and P·V of tile j − 1 issued together, the
//   softmax of tile j while P·V runs, P in two alternating register sets) and _pp (_ov plus ping-pong turns between
//   the consumers on named barriers 3 / 4). On an H200 (N = 16K, H 64 / Hkv 8, causal FLOPs; bench/NOTES.md):
//   default 475–485 TFLOP/s, _smx 487–489, _serial 459–485, _ov 371–423, _pp 397–443; attention.cu's mma.sync kernel
//   259–264. Status: correct (test/gpu/attention.test.ts forces every variant, model tests pass, racecheck clean);
//   below the ≥ 550 goal (cuDNN: 584). Next steps in bench/NOTES.md.
//
// Shared memory (dynamic, base rounded up to 1024 B for the 128-byte swizzle): Q 128 × 128 bf16 (32 KB), then 3
// stages of K (32 KB) and 3 of V (32 KB): 229,376 B + 1,024 alignment slack; 9 mbarriers in static shared memory.
// Every tile is stored as two 64-column halves ([half][row][64] bf16, 128 B rows) with the 128-byte swizzle (16-byte
// chunk c of row r at chunk c ^ (r & 7)), the layout the wgmma descriptors below describe:
//   K-major (Q, K): start = half base + row0 · 128 + (k % 64) · 2, SBO = 1024 (8-row groups), LBO unused;
//   MN-major (V, transposed B): start = tile + key0 · 128, LBO = 128 · 128 (next 64 dims), SBO = 1024 (8 keys).
//
// Precision as attention.cu's tensor-core path: bf16 operands, fp32 accumulation and softmax statistics, P rounded
// to bf16 before P·V, output rounded once.

#include "common.cuh"

#define ATT_LOG2E 1.4426950408889634f

namespace {

constexpr int D = 128;        // head size
constexpr int BM = 128;       // query rows per CTA (64 per consumer warpgroup)
constexpr int BN = 128;       // keys per tile (two 64-row pool blocks)
constexpr int ST = 3;         // K / V stages
constexpr int KVB = 64;       // rows per pool block (backend.ts KV_BLOCK_SIZE)
constexpr u32 HALF = 128u * 128u;            // bytes of one 64-column half of a 128-row tile
constexpr u32 TILE = 2u * HALF;              // bytes of a 128 × 128 bf16 tile
constexpr u32 OFF_K = TILE;                  // Q, then K stages, then V stages
constexpr u32 OFF_V = OFF_K + ST * TILE;

static __device__ __forceinline__ int bt_load(const int* bt, int i) {
  int v;
  asm volatile("ld.global.nc.b32 %0, [%1];\n" : "=r"(v) : "l"(bt + i));
  return v;
}

static __device__ __forceinline__ u32 pack_bf16x2(float lo, float hi) {
  u32 r;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
}

static __device__ __forceinline__ float ex2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// ---- mbarriers, fences, named barriers

static __device__ __forceinline__ void mbar_init(u32 bar, u32 count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
static __device__ __forceinline__ void mbar_arrive(u32 bar) {
  asm volatile("{\n.reg .b64 st;\nmbarrier.arrive.shared::cta.b64 st, [%0];\n}\n" ::"r"(bar) : "memory");
}
static __device__ __forceinline__ void mbar_wait(u32 bar, u32 parity) {
  asm volatile(
      "{\n.reg .pred p;\n"
      "LAB_WAIT:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n"
      "@!p bra LAB_WAIT;\n"
      "}\n" ::"r"(bar),
      "r"(parity)
      : "memory");
}
static __device__ __forceinline__ void fence_async_smem() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
static __device__ __forceinline__ void named_sync(int id, int n) { asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(n) : "memory"); }
static __device__ __forceinline__ void named_arrive(int id, int n) { asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(n) : "memory"); }

// ---- wgmma

static __device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
static __device__ __forceinline__ void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
static __device__ __forceinline__ void wg_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Ties registers to this point of the program (after a wgmma wait, before their next use).
static __device__ __forceinline__ void reg_fence(float (&d)[64]) {
#pragma unroll
  for (int i = 0; i < 64; i++) asm volatile("" : "+f"(d[i])::"memory");
}
static __device__ __forceinline__ void reg_fence(u32 (&a)[8][4]) {
#pragma unroll
  for (int i = 0; i < 8; i++)
#pragma unroll
    for (int j = 0; j < 4; j++) asm volatile("" : "+r"(a[i][j])::"memory");
}

// Shared-memory matrix descriptor, 128-byte swizzle.
static __device__ __forceinline__ u64 sdesc(u32 addr, u32 lbo, u32 sbo) {
  return (u64)((addr & 0x3FFFFu) >> 4) | ((u64)(lbo >> 4) << 16) | ((u64)(sbo >> 4) << 32) | (1ull << 62);
}

#define WG_ACC64(d) "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
#define WG_REGS64 "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63}"

// D (64 × 128 fp32) = [D +] A·B, A and B from shared memory (both K-major).
static __device__ __forceinline__ void wgmma_ss(float (&d)[64], u64 da, u64 db, int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " WG_REGS64 ", %64, %65, p, 1, 1, 0, 0;\n}\n"
      : WG_ACC64(d)
      : "l"(da), "l"(db), "r"(accumulate));
}

// D += A·B, A (64 × 16 bf16) from registers, B from shared memory, MN-major (transposed).
static __device__ __forceinline__ void wgmma_rs_t(float (&d)[64], const u32 (&a)[4], u64 db) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " WG_REGS64 ", {%64,%65,%66,%67}, %68, p, 1, 1, 1;\n}\n"
      : WG_ACC64(d)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db));
}

// D = [D +] A·B, A (64 × 16 bf16) from registers, B from shared memory, K-major.
static __device__ __forceinline__ void wgmma_rs_k(float (&d)[64], const u32 (&a)[4], u64 db, int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " WG_REGS64 ", {%64,%65,%66,%67}, %68, p, 1, 1, 0;\n}\n"
      : WG_ACC64(d)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(accumulate));
}

// ---- consumer pieces

// Issues S = Q·Kᵀ for one key tile (not committed). qBase: this warpgroup's Q rows (half 0); kBase: the K stage.
static __device__ __forceinline__ void issue_qk(float (&s)[64], u32 qBase, u32 kBase) {
#pragma unroll
  for (int kd = 0; kd < D / 16; kd++) {
    const u32 off = (u32)(kd >> 2) * HALF + (u32)(kd & 3) * 32u;
    wgmma_ss(s, sdesc(qBase + off, 16, 1024), sdesc(kBase + off, 16, 1024), kd > 0);
  }
}

// Same with this warpgroup's Q rows in registers (A fragments per 16 head dims).
static __device__ __forceinline__ void issue_qk(float (&s)[64], const u32 (&qf)[8][4], u32 kBase) {
#pragma unroll
  for (int kd = 0; kd < D / 16; kd++) wgmma_rs_k(s, qf[kd], sdesc(kBase + (u32)(kd >> 2) * HALF + (u32)(kd & 3) * 32u, 16, 1024), kd > 0);
}

// Issues O += P·V for one key tile (not committed). vBase: the V stage.
static __device__ __forceinline__ void issue_pv(float (&o)[64], const u32 (&p)[8][4], u32 vBase) {
#pragma unroll
  for (int kk = 0; kk < BN / 16; kk++) wgmma_rs_t(o, p[kk], sdesc(vBase + (u32)kk * 2048u, HALF, 1024));
}

// Causal mask (keys after the row's position → −inf) when MASK (tiles that cross the warpgroup's diagonal), then the online
// softmax update of the two rows this thread holds (A: accumulator elements 4j, 4j+1; B: 4j+2, 4j+3). s becomes P
// (fp32); alpha gets the factors O must be rescaled by; m (raw-score max) and l (this thread's partial sums) update.
template <bool MASK>
static __device__ __forceinline__ void softmax_tile(float (&s)[64], float (&m)[2], float (&l)[2], float (&alpha)[2], int key0, int posA, int lane,
                                                    float sl2) {
  if (MASK) {
#pragma unroll
    for (int j = 0; j < BN / 8; j++) {
#pragma unroll
      for (int e = 0; e < 4; e++) {
        const int key = key0 + j * 8 + 2 * (lane & 3) + (e & 1);
        if (key > posA + 8 * (e >> 1)) s[4 * j + e] = NEG_INF;
      }
    }
  }
#pragma unroll
  for (int r = 0; r < 2; r++) {
    float mx = m[r];
#pragma unroll
    for (int j = 0; j < BN / 8; j++) mx = fmaxf(mx, fmaxf(s[4 * j + 2 * r], s[4 * j + 2 * r + 1]));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    const float mu = mx == NEG_INF ? 0.f : mx * sl2;  // a fully masked row so far: p = 0, no NaN
    alpha[r] = ex2(m[r] * sl2 - mu);                   // m = −inf (first tile): 0
    m[r] = mx;
    float rs = 0.f;
#pragma unroll
    for (int j = 0; j < BN / 8; j++) {
      const float p0 = ex2(fmaf(s[4 * j + 2 * r], sl2, -mu)), p1 = ex2(fmaf(s[4 * j + 2 * r + 1], sl2, -mu));
      s[4 * j + 2 * r] = p0;
      s[4 * j + 2 * r + 1] = p1;
      rs += p0 + p1;
    }
    l[r] = l[r] * alpha[r] + rs;
  }
}

// The same update without touching s (the S accumulators): masked scores are recomputed where needed, and P goes
// straight to bf16 A fragments in pn. For the overlapped loop, where P·V of the previous tile is still reading p:
// ptxas moved that wait above an in-place softmax (it waits before the first write of any register the in-flight
// products might touch), so here nothing written before the wait aliases s, o or p.
template <bool MASK>
static __device__ __forceinline__ void softmax_pack(const float (&s)[64], u32 (&pn)[8][4], float (&m)[2], float (&l)[2], float (&alpha)[2], int key0,
                                                    int posA, int lane, float sl2) {
  auto val = [&](int j, int e) {
    if (MASK) {
      const int key = key0 + j * 8 + 2 * (lane & 3) + (e & 1);
      if (key > posA + 8 * (e >> 1)) return NEG_INF;
    }
    return s[4 * j + e];
  };
  float mu[2];
#pragma unroll
  for (int r = 0; r < 2; r++) {
    float mx = m[r];
#pragma unroll
    for (int j = 0; j < BN / 8; j++) mx = fmaxf(mx, fmaxf(val(j, 2 * r), val(j, 2 * r + 1)));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    mu[r] = mx == NEG_INF ? 0.f : mx * sl2;
    alpha[r] = ex2(m[r] * sl2 - mu[r]);
    m[r] = mx;
  }
  float rs[2] = {0.f, 0.f};
#pragma unroll
  for (int j = 0; j < BN / 8; j++) {
    float pv[4];
#pragma unroll
    for (int e = 0; e < 4; e++) pv[e] = ex2(fmaf(val(j, e), sl2, -mu[e >> 1]));
    rs[0] += pv[0] + pv[1];
    rs[1] += pv[2] + pv[3];
    // n-block j covers keys 8j..8j+7: A fragment of 16-key step j / 2, registers 0 / 1 (j even) or 2 / 3 (j odd)
    pn[j >> 1][(j & 1) * 2] = pack_bf16x2(pv[0], pv[1]);
    pn[j >> 1][(j & 1) * 2 + 1] = pack_bf16x2(pv[2], pv[3]);
  }
#pragma unroll
  for (int r = 0; r < 2; r++) l[r] = l[r] * alpha[r] + rs[r];
}

static __device__ __forceinline__ void rescale(float (&o)[64], const float (&alpha)[2]) {
#pragma unroll
  for (int j = 0; j < D / 8; j++) {
    o[4 * j] *= alpha[0];
    o[4 * j + 1] *= alpha[0];
    o[4 * j + 2] *= alpha[1];
    o[4 * j + 3] *= alpha[1];
  }
}

// P (fp32 accumulator layout) → bf16 A fragments, one per 16-key step: the m16n8k16 A layout per warp.
static __device__ __forceinline__ void to_bf16(u32 (&p)[8][4], const float (&s)[64]) {
#pragma unroll
  for (int kk = 0; kk < BN / 16; kk++) {
    p[kk][0] = pack_bf16x2(s[8 * kk + 0], s[8 * kk + 1]);
    p[kk][1] = pack_bf16x2(s[8 * kk + 2], s[8 * kk + 3]);
    p[kk][2] = pack_bf16x2(s[8 * kk + 4], s[8 * kk + 5]);
    p[kk][3] = pack_bf16x2(s[8 * kk + 6], s[8 * kk + 7]);
  }
}

// MODE 0: serial (S, softmax, P·V per tile); 3: serial with softmax turns (named barriers 3 / 4: the consumers take
// turns for the softmax, so one's products run while the other's softmax does); 1: intra-warpgroup overlap; 2: overlap
// + ping-pong between the two consumer warpgroups (named barriers 3 / 4: a warpgroup issues its products only after
// the other one issued its own, so one warpgroup's softmax runs while the other's products keep the tensor cores busy).
template <bool B>
struct BoolC {
  static constexpr bool v = B;
};

template <int MODE, bool QREG>
static __device__ __forceinline__ void prefill_sm90(bf16* __restrict__ out, const bf16* __restrict__ q, const int* __restrict__ seg_start,
                                                    const int* __restrict__ seg_len, const int* __restrict__ seg_past,
                                                    const u64* __restrict__ k_cache, const u64* __restrict__ v_cache,
                                                    const u64* __restrict__ block_table, int H, int Hkv, float scale) {
  extern __shared__ unsigned char smem_raw[];
  __shared__ __align__(8) u64 bars[3 * ST];  // K full [ST], V full [ST], empty [ST]
  const u32 base = (smem_u32(smem_raw) + 1023u) & ~1023u;
  const u32 sQ = base, sK = base + OFF_K, sV = base + OFF_V;
  const u32 barKF = smem_u32(bars), barVF = barKF + 8 * ST, barE = barKF + 16 * ST;

  const int s = blockIdx.z, h = blockIdx.y;
  const int len = seg_len[s];
  const int i0 = (gridDim.x - 1 - blockIdx.x) * BM;  // longest-running tiles first
  if (i0 >= len) return;                              // uniform over the block
  const int start = seg_start[s], past = seg_past[s];
  const int g = h / (H / Hkv);
  const int iEnd = min(len, i0 + BM);
  const int kvLimit = past + iEnd;  // keys [0, kvLimit) are visible to some row of this tile
  const int nkt = (kvLimit + BN - 1) / BN;
  const int tid = threadIdx.x;

  if (tid == 0) {
#pragma unroll
    for (int i = 0; i < ST; i++) {
      mbar_init(barKF + 8 * i, 128);
      mbar_init(barVF + 8 * i, 128);
      mbar_init(barE + 8 * i, 8);
    }
  }
  __syncthreads();

  if (tid < 128) {
    // ------------------------------------------------------------------ producer
    asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n");
    const i64 ldkv = (i64)Hkv * D;
    const int col = tid & 15, r0 = tid >> 4;  // 16-byte chunk column, first row (rows r0 + 8i)
    const bf16* kpool = (const bf16*)k_cache[s] + (i64)g * D + (i64)r0 * ldkv + col * 8;
    const bf16* vpool = (const bf16*)v_cache[s] + (i64)g * D + (i64)r0 * ldkv + col * 8;
    const int* bt = (const int*)block_table[s];
    const int nblk = (kvLimit + KVB - 1) / KVB;  // blocks [0, nblk) are mapped
    const u32 dst0 = (u32)(col >> 3) * HALF + (u32)r0 * 128u + ((u32)((col & 7) ^ r0) << 4);

    // Two commit groups: K of tile kt, then V of tile kt, into stage kt % ST.
    auto issue = [&](int kt) {
      const int st = kt % ST;
      i64 pb[2];
      int lim[2];
#pragma unroll
      for (int b = 0; b < 2; b++) {
        const int blk = 2 * kt + b;
        const bool mapped = blk < nblk;
        pb[b] = mapped ? (i64)bt_load(bt, blk) * KVB * ldkv : 0;
        lim[b] = mapped ? kvLimit - blk * KVB : 0;  // rows r of the block with r < lim are valid
      }
#pragma unroll
      for (int kv = 0; kv < 2; kv++) {
        const bf16* pool = kv == 0 ? kpool : vpool;
        const u32 dst = (kv == 0 ? sK : sV) + (u32)st * TILE + dst0;
#pragma unroll
        for (int b = 0; b < 2; b++) {
#pragma unroll
          for (int i = 0; i < 8; i++) {
            const bool ok = r0 + 8 * i < lim[b];
            cp_async16(dst + (u32)b * 8192u + (u32)i * 1024u, ok ? pool + pb[b] + (i64)(8 * i) * ldkv : pool, ok);
          }
        }
        cp_async_commit();
      }
    };

#pragma unroll
    for (int p = 0; p < ST - 1; p++) {
      if (p < nkt) issue(p);
      else {
        cp_async_commit();
        cp_async_commit();
      }
    }
    for (int kt = 0; kt < nkt; kt++) {
      const int st = kt % ST;
      cp_async_wait<2 * (ST - 1) - 1>();  // K of tile kt has landed (this thread's copies)
      fence_async_smem();
      mbar_arrive(barKF + 8 * st);
      cp_async_wait<2 * (ST - 1) - 2>();  // V of tile kt
      fence_async_smem();
      mbar_arrive(barVF + 8 * st);
      const int nt = kt + ST - 1;  // refills the stage of tile kt − 1 once both consumers are done with it
      if (nt < nkt) {
        if (nt >= ST) mbar_wait(barE + 8 * (nt % ST), ((nt / ST) & 1) ^ 1);
        issue(nt);
      } else {
        cp_async_commit();
        cp_async_commit();
      }
    }
    cp_async_wait<0>();
  } else {
    // ------------------------------------------------------------------ consumers
    asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n");
    const int c = (tid >> 7) - 1;  // consumer 0: tile rows 0–63, 1: rows 64–127
    const int ct = tid & 127, warp = ct >> 5, lane = ct & 31;
    const i64 ldq = (i64)H * D;
    const u32 qBase = sQ + (u32)c * 8192u;  // this warpgroup's 64 rows in half 0 (half 1 is + HALF)

    {  // Q rows (rows past the segment zero-filled)
      const int col = ct & 15, r0 = ct >> 4;
      const int rows = iEnd - i0 - c * 64;
      const bf16* qb = q + ((i64)start + i0 + c * 64) * ldq + (i64)h * D + col * 8;
      const u32 dst0 = qBase + (u32)(col >> 3) * HALF + (u32)r0 * 128u + ((u32)((col & 7) ^ r0) << 4);
#pragma unroll
      for (int i = 0; i < 8; i++) {
        const bool ok = r0 + 8 * i < rows;
        cp_async16(dst0 + (u32)i * 1024u, ok ? qb + (i64)(r0 + 8 * i) * ldq : q, ok);
      }
      cp_async_commit();
      cp_async_wait<0>();
      fence_async_smem();
      named_sync(1 + c, 128);
    }

    // Q fragments in registers (QREG): A operands of S = Q·Kᵀ, read once from the swizzled tile with ldmatrix
    // (matrices: rows +0..7 / +8..15 × head dims +0..7 / +8..15 of each 16-dim step).
    u32 qf[QREG ? 8 : 1][4];
    if (QREG) {
      const int r = c * 64 + warp * 16 + (lane & 15);
#pragma unroll
      for (int kd = 0; kd < (QREG ? 8 : 0); kd++) {
        const int cc = (kd & 3) * 2 + (lane >> 4);
        ldsm_x4(qf[kd], sQ + (u32)(kd >> 2) * HALF + (u32)r * 128u + ((u32)(cc ^ (r & 7)) << 4));
      }
    }
    float sc_[64];
    auto qk = [&](u32 kBase) {
      if constexpr (QREG) issue_qk(sc_, qf, kBase);
      else issue_qk(sc_, qBase, kBase);
    };

    float o[64];
#pragma unroll
    for (int i = 0; i < 64; i++) o[i] = 0.f;
    float m[2] = {NEG_INF, NEG_INF}, l[2] = {0.f, 0.f}, alpha[2];
    const float sl2 = scale * ATT_LOG2E;
    const int wgPos = past + i0 + c * 64;                    // position of the warpgroup's first row
    const int posA = wgPos + warp * 16 + (lane >> 2);        // this thread's row A (row B = A + 8)
    const int kFull = min((wgPos + 1) / BN, nkt);           // tiles [0, kFull) are below every row's diagonal
    u32 p[8][4];

    // Ping-pong turns (MODE 2): every warpgroup has nkt + 1 issue points; warpgroup 1 hands the first turn to 0 and
    // skips its last hand-over, so both barriers end balanced.
    constexpr bool PP = MODE == 2;
    // Softmax turns (MODE 3, serial schedule): warpgroup c takes its turn on barrier 3 + c and hands the next one to
    // the other; nkt turns each, warpgroup 1 gives the first to 0 and skips its last hand-over.
    constexpr bool SMX = MODE == 3;
    if ((PP || SMX) && c == 1) named_arrive(3, 256);
    if (MODE == 1 || MODE == 2) {
      // tile 0: S, softmax, P
      mbar_wait(barKF, 0);
      if (PP) named_sync(3 + c, 256);
      wg_fence();
      qk(sK);
      wg_commit();
      if (PP) named_arrive(3 + (c ^ 1), 256);
      wg_wait<0>();
      reg_fence(sc_);
      if (kFull > 0) softmax_tile<false>(sc_, m, l, alpha, 0, posA, lane, sl2);
      else softmax_tile<true>(sc_, m, l, alpha, 0, posA, lane, sl2);
      to_bf16(p, sc_);
      // S of tile kt and P·V of tile kt − 1 in flight together; the softmax of tile kt runs while P·V does. P
      // alternates between two register sets (pin: read by P·V of tile kt − 1, pout: written by the softmax of tile
      // kt): one set rewritten in place made ptxas wait for P·V before the softmax (C7513 / a hoisted wait).
      u32 p2[8][4];
      auto step = [&](int kt, u32(&pin)[8][4], u32(&pout)[8][4]) {
        const int st = kt % ST, pst = (kt - 1) % ST;
        mbar_wait(barKF + 8 * st, (kt / ST) & 1);
        mbar_wait(barVF + 8 * pst, ((kt - 1) / ST) & 1);  // lands before K of tile kt: no wait in practice
        if (PP) named_sync(3 + c, 256);
        // O (complete up to tile kt − 2) rescaled to tile kt − 1's running max before P·V of tile kt − 1 adds to it,
        // so that nothing between the two waits below touches O.
        rescale(o, alpha);
        reg_fence(o);  // pins the rescale (and P) before the fence: registers written after it force ptxas to serialise
        reg_fence(pin);
        wg_fence();
        qk(sK + (u32)st * TILE);
        wg_commit();
        issue_pv(o, pin, sV + (u32)pst * TILE);
        wg_commit();
        if (PP) named_arrive(3 + (c ^ 1), 256);
        wg_wait<1>();  // S of tile kt
        reg_fence(sc_);
        if (kt >= kFull) softmax_pack<true>(sc_, pout, m, l, alpha, kt * BN, posA, lane, sl2);
        else softmax_pack<false>(sc_, pout, m, l, alpha, kt * BN, posA, lane, sl2);
        reg_fence(pout);
        wg_wait<0>();  // P·V of tile kt − 1
        reg_fence(o);
        reg_fence(pin);
        __syncwarp();
        if (lane == 0) mbar_arrive(barE + 8 * pst);
      };
      auto last = [&](u32(&pin)[8][4]) {
        const int lst = (nkt - 1) % ST;
        mbar_wait(barVF + 8 * lst, ((nkt - 1) / ST) & 1);
        if (PP) named_sync(3 + c, 256);
        rescale(o, alpha);
        reg_fence(o);
        reg_fence(pin);
        wg_fence();
        issue_pv(o, pin, sV + (u32)lst * TILE);
        wg_commit();
        if (PP && c == 0) named_arrive(4, 256);
      };
      for (int kt = 1;; kt += 2) {
        if (kt >= nkt) {
          last(p);
          break;
        }
        step(kt, p, p2);
        if (kt + 1 >= nkt) {
          last(p2);
          break;
        }
        step(kt + 1, p2, p);
      }
      wg_wait<0>();
      reg_fence(o);
    } else {
      auto step = [&](int kt, auto mask) {
        const int st = kt % ST;
        const u32 ph = (kt / ST) & 1;
        mbar_wait(barKF + 8 * st, ph);
        wg_fence();
        qk(sK + (u32)st * TILE);
        wg_commit();
        wg_wait<0>();
        if (SMX) {  // softmax turns (MODE 3): the two consumers never run their softmax at the same time
          named_sync(3 + c, 256);
        }
        reg_fence(sc_);
        softmax_tile<decltype(mask)::v>(sc_, m, l, alpha, kt * BN, posA, lane, sl2);
        rescale(o, alpha);
        to_bf16(p, sc_);
        reg_fence(o);
        reg_fence(p);
        if (SMX && !(c == 1 && kt == nkt - 1)) named_arrive(3 + (c ^ 1), 256);
        mbar_wait(barVF + 8 * st, ph);
        wg_fence();
        issue_pv(o, p, sV + (u32)st * TILE);
        wg_commit();
        wg_wait<0>();
        reg_fence(o);
        reg_fence(p);
        __syncwarp();
        if (lane == 0) mbar_arrive(barE + 8 * st);
      };
      int kt = 0;
      for (; kt < kFull; kt++) step(kt, BoolC<false>());
      for (; kt < nkt; kt++) step(kt, BoolC<true>());
    }

    // Epilogue: normalise, stage as bf16 in this warpgroup's Q rows (same swizzled layout), 16-byte stores.
    float inv[2];
#pragma unroll
    for (int r = 0; r < 2; r++) {
      float sum = l[r];
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      sum += __shfl_xor_sync(0xffffffffu, sum, 2);
      inv[r] = sum > 0.f ? 1.f / sum : 0.f;
    }
    named_sync(1 + c, 128);  // every warp of this warpgroup is done with Q
    {
      const int gr = lane >> 2, t = lane & 3;
      const u32 rowA = qBase + (u32)(warp * 16 + gr) * 128u + (u32)t * 4u;
#pragma unroll
      for (int j = 0; j < D / 8; j++) {
        const u32 a = rowA + (u32)(j >> 3) * HALF + ((u32)((j & 7) ^ gr) << 4);
        asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(a), "r"(pack_bf16x2(o[4 * j] * inv[0], o[4 * j + 1] * inv[0])) : "memory");
        asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(a + 1024u), "r"(pack_bf16x2(o[4 * j + 2] * inv[1], o[4 * j + 3] * inv[1])) : "memory");
      }
    }
    named_sync(1 + c, 128);
    {
      const int col = ct & 15, r0 = ct >> 4;
      const u32 src0 = qBase + (u32)(col >> 3) * HALF + (u32)r0 * 128u + ((u32)((col & 7) ^ r0) << 4);
      bf16* ob = out + ((i64)start + i0 + c * 64) * ldq + (i64)h * D + col * 8;
      const int rows = iEnd - i0 - c * 64;
#pragma unroll
      for (int i = 0; i < 8; i++) {
        const int r = r0 + 8 * i;
        u32 x, y, z, w;
        asm volatile("ld.shared.v4.b32 {%0,%1,%2,%3}, [%4];\n" : "=r"(x), "=r"(y), "=r"(z), "=r"(w) : "r"(src0 + (u32)i * 1024u) : "memory");
        if (r < rows) {
          asm volatile("st.global.v4.b32 [%0], {%1,%2,%3,%4};\n" ::"l"(ob + (i64)r * ldq), "r"(x), "r"(y), "r"(z), "r"(w) : "memory");
        }
      }
    }
  }
}

}  // namespace

#define SM90_KERNEL(NAME, MODE, QREG)                                                                                              \
  extern "C" __global__ void __launch_bounds__(384, 1)                                                                             \
      NAME(bf16* out, const bf16* q, const int* seg_start, const int* seg_len, const int* seg_past, const u64* k_cache, const u64* v_cache, \
           const u64* block_table, int H, int Hkv, int Dh, float scale) {                                                        \
    prefill_sm90<MODE, QREG>(out, q, seg_start, seg_len, seg_past, k_cache, v_cache, block_table, H, Hkv, scale);               \
  }

// The default (the fastest measured), then the variants kept for measurement (ops/attention.ts PrefillKernel).
SM90_KERNEL(attention_prefill_sm90_d128, 0, true)
SM90_KERNEL(attention_prefill_sm90_d128_serial, 0, false)
SM90_KERNEL(attention_prefill_sm90_d128_ov, 1, false)
SM90_KERNEL(attention_prefill_sm90_d128_pp, 2, false)
SM90_KERNEL(attention_prefill_sm90_d128_smx, 3, true)

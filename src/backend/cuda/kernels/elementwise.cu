// elementwise.cu — the small memory-bound ops of the MiniMax-01 forward pass, bf16 in and out, fp32 math.
//
// Each kernel matches the CPU op of the same name in src/backend/cpu (the fp32 reference) up to bf16 rounding: math
// in fp32, one rounding per stored bf16 output (never more rounding points than the remote code, MODEL.md §4),
// and the residual stream in fp32.
//   embedding_bf16/_f32 out[t, :] = table[ids[t], :]   (the residual stream is fp32: embedding_f32)
//   rms_norm_bf16       y = bf16(w · x · rsqrt(mean(x²) + eps))                (one block per row; out may alias x)
//   rms_norm_f32_bf16   fp32 stream → bf16 GEMM input;  rms_norm_f32_f32: fp32 stream → fp32 router input
//   postnorm_residual_f32/_bf16  x = rms(x)·w·α + branch·β on the fp32 stream (fp32 / bf16 branch), the norm
//                       recomputed unrounded
//   postnorm_residual_norm_f32/_bf16  the above, then rms_norm_f32_* of the new stream into a bf16 and/or fp32 output
//   residual_add_bf16   y = bf16(bf16(r · α) + bf16(b · β))                     (postnorm residual)
//   silu_bf16           x = bf16(silu(x))
//   sigmoid_mul_bf16    y = bf16(sigmoid(g) · x)                                 (lightning output gate)
//   gather_rows_bf16/_f32  out[r, :] = x[rows[r], :]
//   rope_bf16           partial NeoX RoPE on dims [0, rot), fp32 angle = pos · θ^(−2i/rot)
//   kv_append_bf16      copies new K/V rows of each segment into its paged cache at cache rows [past, past + len):
//                       cache row r is pool row bt[r >> 6] · 64 + (r & 63) (see attention.cu and KV_BLOCK_SIZE)
//   cast_bf16_f32 / cast_f32_bf16
//   fill_random_bf16 / fill_random_f32   benchmark weights (a counter-based hash, never zeros)

#include "common.cuh"

// out[r, :] = x[rows[r], :] for r = blockIdx.x: 16-byte copies when C % 8 == 0 and both buffers are 16-byte aligned
// (the MoE prefill gathers 100k+ rows), element by element otherwise. The bf16 embedding is the same gather.
static __device__ __forceinline__ void gather_row_bf16(bf16* __restrict__ out, const bf16* __restrict__ x, const int* __restrict__ rows, int C) {
  const int r = blockIdx.x;
  const bf16* src = x + (i64)rows[r] * C;
  bf16* dst = out + (i64)r * C;
  if ((C & 7) == 0 && ((((u64)out) | ((u64)x)) & 15) == 0) {
    for (int i = threadIdx.x * 8; i < C; i += blockDim.x * 8) *reinterpret_cast<uint4*>(dst + i) = *reinterpret_cast<const uint4*>(src + i);
    return;
  }
  for (int i = threadIdx.x; i < C; i += blockDim.x) dst[i] = src[i];
}

extern "C" __global__ void embedding_bf16(bf16* __restrict__ out, const bf16* __restrict__ table, const int* __restrict__ ids, int D) {
  gather_row_bf16(out, table, ids, D);
}

// The residual stream is kept in fp32 (see postnorm_residual_f32).
extern "C" __global__ void embedding_f32(float* __restrict__ out, const bf16* __restrict__ table, const int* __restrict__ ids, int D) {
  const int t = blockIdx.x;
  const bf16* src = table + (i64)ids[t] * D;
  float* dst = out + (i64)t * D;
  for (int i = threadIdx.x; i < D; i += blockDim.x) dst[i] = bf2f(src[i]);
}

static __device__ __forceinline__ float load_f(const bf16* p, i64 i) { return bf2f(p[i]); }
static __device__ __forceinline__ float load_f(const float* p, i64 i) { return p[i]; }
static __device__ __forceinline__ void store_f(bf16* p, i64 i, float v) { p[i] = f2bf(v); }
static __device__ __forceinline__ void store_f(float* p, i64 i, float v) { p[i] = v; }

// Row norms run one CTA per row. At decode that is one 6144-wide row per launch, so the cost is dependent memory
// round trips, not bytes: when the row fits in registers (≤ NORM_NV elements per thread, the common case) every
// operand — x, the branch, both weight vectors — is loaded up front in one round, and the new stream is normalised
// from registers. Element i belongs to thread i mod blockDim in both paths and partial sums run in increasing i, so
// the two paths do the same arithmetic.
#define NORM_NV 8

// 1/rms of one row in fp32 (one block per row). Callers rewrite exactly the elements each thread read, so out
// may alias x.
template <typename TIn>
static __device__ float inv_rms_row(const TIn* xr, int cols, float eps, float* scratch) {
  float ss = 0.f;
  for (int i = threadIdx.x; i < cols; i += blockDim.x) {
    const float v = load_f(xr, i);
    ss += v * v;
  }
  ss = block_sum(ss, scratch);
  return rsqrtf(ss / (float)cols + eps);
}

// The register path: v[k] holds element threadIdx.x + k·blockDim.x (0 past the row).
template <typename TIn>
static __device__ __forceinline__ void load_row_regs(float (&v)[NORM_NV], const TIn* p, int cols) {
#pragma unroll
  for (int k = 0; k < NORM_NV; k++) {
    const int i = threadIdx.x + k * blockDim.x;
    v[k] = i < cols ? load_f(p, i) : 0.f;
  }
}
static __device__ __forceinline__ float inv_rms_regs(const float (&v)[NORM_NV], int cols, float eps, float* scratch) {
  float ss = 0.f;
#pragma unroll
  for (int k = 0; k < NORM_NV; k++) ss += v[k] * v[k];  // zeros past the row add nothing
  ss = block_sum(ss, scratch);
  return rsqrtf(ss / (float)cols + eps);
}
static __device__ __forceinline__ bool row_in_regs(int cols) { return cols <= NORM_NV * (int)blockDim.x; }

// One row of y = w ⊙ x · rsqrt(mean(x²) + eps), computed in fp32 and rounded once on store: bf16 → bf16 (the
// lightning output norm: one rounding where the reference rounds twice, bf16(w · bf16(x · r)), closer to the exact
// computation at no cost); fp32 residual stream → the bf16 input of the next GEMMs, or → fp32 (the router's input).
template <typename TIn, typename TOut>
static __device__ void rms_norm_row(TOut* out, const TIn* x, const bf16* w, int cols, float eps) {
  __shared__ float scratch[32];
  const i64 row = blockIdx.x;
  const TIn* xr = x + row * cols;
  if (row_in_regs(cols)) {
    float xv[NORM_NV], wv[NORM_NV];
    load_row_regs(xv, xr, cols);
    load_row_regs(wv, w, cols);
    const float r = inv_rms_regs(xv, cols, eps, scratch);
#pragma unroll
    for (int k = 0; k < NORM_NV; k++) {
      const int i = threadIdx.x + k * blockDim.x;
      if (i < cols) store_f(out, row * cols + i, wv[k] * (xv[k] * r));
    }
    return;
  }
  const float r = inv_rms_row(xr, cols, eps, scratch);
  for (int i = threadIdx.x; i < cols; i += blockDim.x) store_f(out, row * cols + i, bf2f(w[i]) * (load_f(xr, i) * r));
}
extern "C" __global__ void rms_norm_bf16(bf16* out, const bf16* x, const bf16* __restrict__ w, int cols, float eps) { rms_norm_row(out, x, w, cols, eps); }
extern "C" __global__ void rms_norm_f32_bf16(bf16* out, const float* x, const bf16* __restrict__ w, int cols, float eps) { rms_norm_row(out, x, w, cols, eps); }
extern "C" __global__ void rms_norm_f32_f32(float* out, const float* x, const bf16* __restrict__ w, int cols, float eps) { rms_norm_row(out, x, w, cols, eps); }

// The postnorm residual of MODEL.md §7 on the fp32 stream: out = (w ⊙ x · rsqrt(mean(x²) + eps)) · α + branch · β,
// with the normalised x recomputed in fp32 rather than read back rounded, so rounding does not accumulate across
// layers. out may alias x. The branch is fp32 (the model's branch outputs) or bf16.
// With wn (postnorm_residual_norm_*), the new stream is then normalised with wn into hb (bf16) and/or hf (fp32),
// either may be null: what rms_norm_f32_* would compute from it, in the same launch (decode is launch-bound).
template <typename TB>
static __device__ void postnorm_residual(float* out, const float* x, const bf16* w, const TB* branch, int cols, float eps, float alpha, float beta,
                                         const bf16* wn, float epsn, bf16* hb, float* hf) {
  __shared__ float scratch[32];
  const i64 row = blockIdx.x;
  const float* xr = x + row * cols;
  float* orow = out + row * cols;
  if (row_in_regs(cols)) {
    float xv[NORM_NV], bv[NORM_NV], wv[NORM_NV], nv[NORM_NV];
    load_row_regs(xv, xr, cols);
    load_row_regs(bv, branch + row * cols, cols);
    load_row_regs(wv, w, cols);
    if (wn) load_row_regs(nv, wn, cols);
    const float r = inv_rms_regs(xv, cols, eps, scratch);
#pragma unroll
    for (int k = 0; k < NORM_NV; k++) {
      const int i = threadIdx.x + k * blockDim.x;
      xv[k] = i < cols ? wv[k] * (xv[k] * r) * alpha + bv[k] * beta : 0.f;
      if (i < cols) orow[i] = xv[k];
    }
    if (!wn) return;
    const float r2 = inv_rms_regs(xv, cols, epsn, scratch);
#pragma unroll
    for (int k = 0; k < NORM_NV; k++) {
      const int i = threadIdx.x + k * blockDim.x;
      if (i < cols) {
        const float v = nv[k] * (xv[k] * r2);
        if (hb) hb[row * cols + i] = f2bf(v);
        if (hf) hf[row * cols + i] = v;
      }
    }
    return;
  }
  const float r = inv_rms_row(xr, cols, eps, scratch);
  for (int i = threadIdx.x; i < cols; i += blockDim.x) orow[i] = bf2f(w[i]) * (xr[i] * r) * alpha + load_f(branch, row * cols + i) * beta;
  if (!wn) return;
  const float r2 = inv_rms_row(orow, cols, epsn, scratch);  // each thread re-reads only what it wrote
  for (int i = threadIdx.x; i < cols; i += blockDim.x) {
    const float v = bf2f(wn[i]) * (orow[i] * r2);
    if (hb) hb[row * cols + i] = f2bf(v);
    if (hf) hf[row * cols + i] = v;
  }
}
extern "C" __global__ void postnorm_residual_f32(float* out, const float* x, const bf16* __restrict__ w, const float* __restrict__ branch,
                                                 int cols, float eps, float alpha, float beta) {
  postnorm_residual(out, x, w, branch, cols, eps, alpha, beta, nullptr, 0.f, nullptr, nullptr);
}
extern "C" __global__ void postnorm_residual_bf16(float* out, const float* x, const bf16* __restrict__ w, const bf16* __restrict__ branch,
                                                  int cols, float eps, float alpha, float beta) {
  postnorm_residual(out, x, w, branch, cols, eps, alpha, beta, nullptr, 0.f, nullptr, nullptr);
}
extern "C" __global__ void postnorm_residual_norm_f32(float* out, const float* x, const bf16* __restrict__ w, const float* __restrict__ branch, int cols,
                                                      float eps, float alpha, float beta, const bf16* __restrict__ wn, float epsn, bf16* hb, float* hf) {
  postnorm_residual(out, x, w, branch, cols, eps, alpha, beta, wn, epsn, hb, hf);
}
extern "C" __global__ void postnorm_residual_norm_bf16(float* out, const float* x, const bf16* __restrict__ w, const bf16* __restrict__ branch, int cols,
                                                       float eps, float alpha, float beta, const bf16* __restrict__ wn, float epsn, bf16* hb, float* hf) {
  postnorm_residual(out, x, w, branch, cols, eps, alpha, beta, wn, epsn, hb, hf);
}

extern "C" __global__ void residual_add_bf16(bf16* out, const bf16* res, const bf16* branch, i64 n, float alpha, float beta) {
  for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
    out[i] = f2bf(rbf(bf2f(res[i]) * alpha) + rbf(bf2f(branch[i]) * beta));
  }
}

extern "C" __global__ void silu_bf16(bf16* x, i64 n) {
  for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) x[i] = f2bf(silu(bf2f(x[i])));
}

// One rounding (the reference rounds the sigmoid first, then the product).
extern "C" __global__ void sigmoid_mul_bf16(bf16* out, const bf16* gate, const bf16* x, i64 n) {
  for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
    out[i] = f2bf(sigmoid(bf2f(gate[i])) * bf2f(x[i]));
  }
}

extern "C" __global__ void gather_rows_f32(float* __restrict__ out, const float* __restrict__ x, const int* __restrict__ rows, int C) {
  const int r = blockIdx.x;
  const float* src = x + (i64)rows[r] * C;
  float* dst = out + (i64)r * C;
  for (int i = threadIdx.x; i < C; i += blockDim.x) dst[i] = src[i];
}

extern "C" __global__ void gather_rows_bf16(bf16* __restrict__ out, const bf16* __restrict__ x, const int* __restrict__ rows, int C) {
  gather_row_bf16(out, x, rows, C);
}

// One block per token; threads over (head, pair). x: [T, nh, Dh].
extern "C" __global__ void rope_bf16(bf16* x, const int* __restrict__ pos, int nh, int Dh, int rot, float theta) {
  const int t = blockIdx.x;
  const int half = rot / 2;
  const float p = (float)pos[t];
  for (int j = threadIdx.x; j < nh * half; j += blockDim.x) {
    const int h = j / half, i = j % half;
    // inv_freq and the angle in fp32, as the reference computes its cos/sin table
    const float inv = 1.f / powf(theta, (float)(2 * i) / (float)rot);
    const float ang = p * inv;
    float s, c;
    sincosf(ang, &s, &c);
    bf16* v = x + ((i64)t * nh + h) * Dh;
    const float a = bf2f(v[i]), b = bf2f(v[i + half]);
    v[i] = f2bf(a * c - b * s);
    v[i + half] = f2bf(b * c + a * s);
  }
}

// grid (maxLen, nseg): block (r, s) copies row r of segment s (if r < len) into both caches. k, v: [T, Hkv·Dh].
// grid (maxLen, nseg): block (r, s) copies row r of segment s (rowElems = Hkv·Dh elements of k and of v) to cache
// row past + r, i.e. pool row block_table[s][(past + r) >> 6] · 64 + ((past + r) & 63) of the K / V pools.
extern "C" __global__ void kv_append_bf16(const bf16* __restrict__ k, const bf16* __restrict__ v, const int* __restrict__ seg_start,
                                          const int* __restrict__ seg_len, const int* __restrict__ seg_past,
                                          const u64* __restrict__ k_cache, const u64* __restrict__ v_cache,
                                          const u64* __restrict__ block_table, int rowElems) {
  const int s = blockIdx.y, r = blockIdx.x;
  if (r >= seg_len[s]) return;
  const i64 src = (i64)(seg_start[s] + r) * rowElems;
  const int pos = seg_past[s] + r;  // < past + len: a mapped cache row
  const i64 dst = ((i64)((const int*)block_table[s])[pos >> 6] * 64 + (pos & 63)) * rowElems;
  bf16* kc = (bf16*)k_cache[s];
  bf16* vc = (bf16*)v_cache[s];
  for (int i = threadIdx.x; i < rowElems; i += blockDim.x) {
    kc[dst + i] = k[src + i];
    vc[dst + i] = v[src + i];
  }
}

extern "C" __global__ void cast_bf16_f32(float* out, const bf16* in, i64 n) {
  for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) out[i] = bf2f(in[i]);
}

extern "C" __global__ void cast_f32_bf16(bf16* out, const float* in, i64 n) {
  for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) out[i] = f2bf(in[i]);
}

// Random fill for benchmarks (never time on zeros): out[i] = offset + scale · N(0, 1)-ish, from a counter-based hash
// of (seed, i), so the values do not depend on the launch configuration.
static __device__ __forceinline__ u64 splitmix64(u64 x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

static __device__ __forceinline__ float hash_normal(u64 seed, i64 i) {
  const u64 h = splitmix64(seed ^ splitmix64((u64)i));
  // Sum of four uniforms (Irwin–Hall), centred and scaled to unit variance: cheap and bounded.
  const float u0 = (float)(h & 0xffff), u1 = (float)((h >> 16) & 0xffff), u2 = (float)((h >> 32) & 0xffff), u3 = (float)(h >> 48);
  return ((u0 + u1 + u2 + u3) / 65536.f - 2.f) * 1.7320508f;
}

extern "C" __global__ void fill_random_bf16(bf16* out, i64 n, u64 seed, float scale, float offset) {
  for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) out[i] = f2bf(offset + scale * hash_normal(seed, i));
}

extern "C" __global__ void fill_random_f32(float* out, i64 n, u64 seed, float scale, float offset) {
  for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) out[i] = offset + scale * hash_normal(seed, i);
}

// common.cuh — shared by every lightning-moe kernel file.
//
// Self-contained on purpose: no CUDA headers, so NVRTC compiles the kernels without an include path. bf16 values
// are stored as `bf16` (16 raw bits); arithmetic converts to fp32, and results round back to bf16 with
// round-to-nearest-even — the rounding PyTorch applies after every bf16 op (MODEL.md §4).

#pragma once

typedef unsigned short bf16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef long long i64;

#define NEG_INF __int_as_float(0xff800000)
#define POS_INF __int_as_float(0x7f800000)

static __device__ __forceinline__ float bf2f(bf16 v) { return __uint_as_float(((u32)v) << 16); }

static __device__ __forceinline__ bf16 f2bf(float f) {
  u32 u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16)((u >> 16) | 0x40u);  // NaN stays a quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);                                          // round to nearest even
  return (bf16)(u >> 16);
}

// Round an fp32 value to bf16 precision and back (a bf16 rounding point inside fp32 math).
static __device__ __forceinline__ float rbf(float f) { return bf2f(f2bf(f)); }

// Two bf16 packed in a u32 (low half = lower address).
static __device__ __forceinline__ float lo_bf(u32 v) { return __uint_as_float(v << 16); }
static __device__ __forceinline__ float hi_bf(u32 v) { return __uint_as_float(v & 0xffff0000u); }
static __device__ __forceinline__ u32 f2x2bf(float a, float b) { return (u32)f2bf(a) | ((u32)f2bf(b) << 16); }

static __device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

static __device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Warp-wide argmax: every lane ends with the largest v and its index, ties going to the lower index (the order
// the reference's top-k and greedy sampling use).
static __device__ __forceinline__ void warp_argmax(float& v, int& i) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float v2 = __shfl_xor_sync(0xffffffffu, v, o);
    const int i2 = __shfl_xor_sync(0xffffffffu, i, o);
    if (v2 > v || (v2 == v && i2 < i)) {
      v = v2;
      i = i2;
    }
  }
}

// Block-wide sum for blockDim.x a multiple of 32 (≤ 1024); `scratch` holds 32 floats. All threads get the result.
static __device__ __forceinline__ float block_sum(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < nwarps ? scratch[lane] : 0.f;
  return warp_sum(v);
}

static __device__ __forceinline__ float block_max(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < nwarps ? scratch[lane] : NEG_INF;
  return warp_max(v);
}

static __device__ __forceinline__ float silu(float x) { return x / (1.f + expf(-x)); }
static __device__ __forceinline__ float sigmoid(float x) { return 1.f / (1.f + expf(-x)); }

// Tensor-core MMA, m16n8k16, bf16 inputs, fp32 accumulators (PTX ISA "mma.sync.aligned.m16n8k16").
// Fragment layout (g = lane >> 2, t = lane & 3):
//   a[0] = A[g][2t..2t+1]     a[1] = A[g+8][2t..2t+1]     a[2] = A[g][2t+8..2t+9]   a[3] = A[g+8][2t+8..2t+9]
//   b[0] = B[2t..2t+1][g]     b[1] = B[2t+8..2t+9][g]     (B is K×N; each register holds two consecutive k)
//   c[0..1] = C[g][2t..2t+1]  c[2..3] = C[g+8][2t..2t+1]
static __device__ __forceinline__ void mma_bf16_16816(float* c, const u32* a, const u32* b) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// ---- shared memory, async copies and ldmatrix (PTX ISA: cp.async, ldmatrix), used by the tensor-core kernels ----

// Generic → shared-window address of a __shared__ pointer.
static __device__ __forceinline__ u32 smem_u32(const void* p) {
  u32 a;
  asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
  return a;
}

// 16-byte global → shared copy; when !valid nothing is read and the 16 bytes are zero-filled (src must still be a
// valid address: callers pass the tensor base).
static __device__ __forceinline__ void cp_async16(u32 dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0) : "memory");
}
static __device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
static __device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// Four 8×8 bf16 matrices; lanes 8q..8q+7 give the row addresses of matrix q. Non-transposed: lane L receives
// M_q[L/4][2(L%4) .. 2(L%4)+1]; transposed: M_q[2(L%4)][L/4] (low half) and M_q[2(L%4)+1][L/4] (high half).
static __device__ __forceinline__ void ldsm_x4(u32* r, u32 addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}
static __device__ __forceinline__ void ldsm_x4_t(u32* r, u32 addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}

// train.cu — the dense, memory-bound ops of the training backend (src/train/cuda/cuda-train-backend.ts), fp32 in
// and out, fp32 math. Each kernel matches the float64 CPU reference op of the same name (src/train/cpu) to fp32
// rounding. Elementwise kernels are grid-stride loops with 64-bit indices (T·V, parameter counts pass 2^31).
//
//   train_axpby, train_scale                 out = a·x + b·y (out may alias x or y);  x *= s
//   train_sum_squares(_final)                out[0] += Σ x² (double partials per block, then one block adds them)
//   train_embedding_fwd / _bwd               out[t] = table[ids[t]];  dTable[ids[t]] += dOut[t] (atomicAdd)
//   train_rms_norm_fwd                       out = w ⊙ x · rstd, rstd saved; one block per row (out may alias x)
//   train_rms_norm_bwd_dx                    one block per row; dx = / += rstd·w⊙g − rstd³·x·⟨w⊙g, x⟩ / C
//   train_rms_norm_bwd_dw                    dw += Σ_rows g ⊙ x · rstd: blocks own (256 columns × a chunk of rows),
//                                            one atomicAdd per column per chunk (not one per element)
//   train_silu_fwd / _bwd, train_sigmoid_mul_fwd / _bwd
//   train_rope                               partial NeoX RoPE in place, angle = sign · pos · θ^(−2i/rot) in fp32
//                                            (as rope_bf16); sign = −1 is the inverse rotation (the backward)
//   train_cross_entropy                      one block per row: loss = lse − x[target], d = (softmax − onehot)·scale
//   train_adamw                              decoupled-decay AdamW, bias corrections from the host

#include "common.cuh"

#define GRID_STRIDE(i, n) for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (i64)gridDim.x * blockDim.x)

extern "C" __global__ void train_axpby(float* out, float a, const float* x, float b, const float* y, i64 n) {
  GRID_STRIDE(i, n) out[i] = a * x[i] + b * y[i];
}

extern "C" __global__ void train_scale(float* x, float s, i64 n) {
  GRID_STRIDE(i, n) x[i] *= s;
}

static __device__ __forceinline__ double warp_sum_d(double v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// The total of a block of 256 threads' values, valid in thread 0, added in a fixed order (deterministic).
static __device__ __forceinline__ double block256_sum_d(double v) {
  __shared__ double warps[8];
  v = warp_sum_d(v);
  if ((threadIdx.x & 31) == 0) warps[threadIdx.x >> 5] = v;
  __syncthreads();
  double s = 0.0;
  if (threadIdx.x == 0)
    for (int w = 0; w < 8; ++w) s += warps[w];
  return s;
}

// Block of 256. Partial sums in double so the gradient norm of a billion-element tensor is not limited by fp32
// accumulation: each block writes its total to part[blockIdx.x], and train_sum_squares_final (one block) adds the
// partials in a fixed order to out[0] — deterministic, unlike an atomicAdd per block.
extern "C" __global__ void __launch_bounds__(256) train_sum_squares(double* __restrict__ part, const float* __restrict__ x, i64 n) {
  double acc = 0.0;
  GRID_STRIDE(i, n) {
    const double v = (double)x[i];
    acc += v * v;
  }
  acc = block256_sum_d(acc);
  if (threadIdx.x == 0) part[blockIdx.x] = acc;
}

// One block of 256 over `blocks` partials.
extern "C" __global__ void __launch_bounds__(256) train_sum_squares_final(float* out, const double* __restrict__ part, int blocks) {
  double acc = 0.0;
  for (int i = threadIdx.x; i < blocks; i += 256) acc += part[i];
  acc = block256_sum_d(acc);
  if (threadIdx.x == 0) out[0] = (float)((double)out[0] + acc);
}

// grid T (one block per token).
extern "C" __global__ void train_embedding_fwd(float* __restrict__ out, const float* __restrict__ table, const int* __restrict__ ids, int D) {
  const float* src = table + (i64)ids[blockIdx.x] * D;
  float* dst = out + (i64)blockIdx.x * D;
  for (int i = threadIdx.x; i < D; i += blockDim.x) dst[i] = src[i];
}

// grid T; tokens with the same id add into one row, hence the atomics.
extern "C" __global__ void train_embedding_bwd(float* dtable, const float* __restrict__ dout, const int* __restrict__ ids, int D) {
  float* dst = dtable + (i64)ids[blockIdx.x] * D;
  const float* src = dout + (i64)blockIdx.x * D;
  for (int i = threadIdx.x; i < D; i += blockDim.x) atomicAdd(dst + i, src[i]);
}

// One block per row. Every thread rewrites only the elements it read, so out may alias x.
extern "C" __global__ void train_rms_norm_fwd(float* out, float* __restrict__ rstd, const float* x, const float* __restrict__ w, int C, float eps) {
  __shared__ float scratch[32];
  const i64 base = (i64)blockIdx.x * C;
  float ss = 0.f;
  for (int i = threadIdx.x; i < C; i += blockDim.x) {
    const float v = x[base + i];
    ss += v * v;
  }
  const float r = rsqrtf(block_sum(ss, scratch) / (float)C + eps);
  if (threadIdx.x == 0) rstd[blockIdx.x] = r;
  for (int i = threadIdx.x; i < C; i += blockDim.x) out[base + i] = w[i] * (x[base + i] * r);
}

// y = w·x·r, r = (Σx²/C + eps)^(−1/2), ∂r/∂x_j = −r³·x_j/C:  dx_j = r·w_j·g_j − r³·x_j·Σ_i w_i·g_i·x_i / C.
// One block per row; dx may alias dOut (each thread reads its elements before writing them).
extern "C" __global__ void train_rms_norm_bwd_dx(float* dx, const float* dout, const float* __restrict__ x, const float* __restrict__ w,
                                                 const float* __restrict__ rstd, int C, int accumulate) {
  __shared__ float scratch[32];
  const i64 base = (i64)blockIdx.x * C;
  const float r = rstd[blockIdx.x];
  float dot = 0.f;
  for (int i = threadIdx.x; i < C; i += blockDim.x) dot += w[i] * dout[base + i] * x[base + i];
  dot = block_sum(dot, scratch);
  const float c = r * r * r * dot / (float)C;
  for (int i = threadIdx.x; i < C; i += blockDim.x) {
    const float v = r * w[i] * dout[base + i] - c * x[base + i];
    dx[base + i] = accumulate ? dx[base + i] + v : v;
  }
}

// grid (⌈C/256⌉, chunks), block 256: column c, rows [y·rowsPer, min(R, (y+1)·rowsPer)). Coalesced along c.
extern "C" __global__ void __launch_bounds__(256) train_rms_norm_bwd_dw(float* dw, const float* __restrict__ dout, const float* __restrict__ x,
                                                                       const float* __restrict__ rstd, int R, int C, int rowsPer) {
  const int c = blockIdx.x * 256 + threadIdx.x;
  if (c >= C) return;
  const int r0 = blockIdx.y * rowsPer, r1 = min(R, r0 + rowsPer);
  float acc = 0.f;
  for (int r = r0; r < r1; ++r) acc += dout[(i64)r * C + c] * x[(i64)r * C + c] * rstd[r];
  if (r1 > r0) atomicAdd(dw + c, acc);
}

extern "C" __global__ void train_silu_fwd(float* out, const float* x, i64 n) {
  GRID_STRIDE(i, n) out[i] = silu(x[i]);
}

// silu'(x) = σ(x)·(1 + x·(1 − σ(x))). dx may alias dOut.
extern "C" __global__ void train_silu_bwd(float* dx, const float* dout, const float* __restrict__ x, i64 n) {
  GRID_STRIDE(i, n) {
    const float v = x[i], s = sigmoid(v);
    dx[i] = dout[i] * s * (1.f + v * (1.f - s));
  }
}

extern "C" __global__ void train_sigmoid_mul_fwd(float* out, const float* gate, const float* x, i64 n) {
  GRID_STRIDE(i, n) out[i] = sigmoid(gate[i]) * x[i];
}

// dGate = dOut·x·σ(1 − σ), dx = dOut·σ. Everything is read before either output is written (outputs may alias inputs).
extern "C" __global__ void train_sigmoid_mul_bwd(float* dgate, float* dx, const float* dout, const float* gate, const float* x, i64 n) {
  GRID_STRIDE(i, n) {
    const float g = dout[i], s = sigmoid(gate[i]), v = x[i];
    dgate[i] = g * v * s * (1.f - s);
    dx[i] = g * s;
  }
}

// One block per token; threads over (head, pair). x: [T, nh, Dh]; dim i pairs with i + rot/2 (NeoX), i < rot/2.
extern "C" __global__ void train_rope(float* x, const int* __restrict__ pos, int nh, int Dh, int rot, float theta, float sign) {
  const int t = blockIdx.x;
  const int half = rot / 2;
  const float p = (float)pos[t];
  for (int j = threadIdx.x; j < nh * half; j += blockDim.x) {
    const int h = j / half, i = j % half;
    const float inv = 1.f / powf(theta, (float)(2 * i) / (float)rot);  // as rope_bf16 (the model's fp32 table)
    float s, c;
    sincosf(p * inv, &s, &c);
    s *= sign;  // rotating by −angle: sin(−a) = −sin(a), cos unchanged
    float* v = x + ((i64)t * nh + h) * Dh;
    const float a = v[i], b = v[i + half];
    v[i] = a * c - b * s;
    v[i + half] = b * c + a * s;
  }
}

// One block per row (block a multiple of 32, ≤ 1024). dlogits may alias logits: every thread reads x[target] before
// the reductions' barriers, and the last pass rewrites only the elements the same thread reads. A target outside
// [−1, V) gives a NaN loss (visible) and a zero gradient row.
extern "C" __global__ void train_cross_entropy(float* __restrict__ losses, float* dlogits, const float* logits, const int* __restrict__ targets, int V,
                                               float gradScale) {
  __shared__ float scratch[32];
  const i64 base = (i64)blockIdx.x * V;
  const int tgt = targets[blockIdx.x];
  if (tgt < 0 || tgt >= V) {  // uniform across the block
    for (int i = threadIdx.x; i < V; i += blockDim.x) dlogits[base + i] = 0.f;
    if (threadIdx.x == 0) losses[blockIdx.x] = tgt < 0 ? 0.f : __int_as_float(0x7fc00000);
    return;
  }
  const float xt = logits[base + tgt];
  float mx = NEG_INF;
  for (int i = threadIdx.x; i < V; i += blockDim.x) mx = fmaxf(mx, logits[base + i]);
  mx = block_max(mx, scratch);
  float sum = 0.f;
  for (int i = threadIdx.x; i < V; i += blockDim.x) sum += expf(logits[base + i] - mx);
  sum = block_sum(sum, scratch);
  if (threadIdx.x == 0) losses[blockIdx.x] = mx + logf(sum) - xt;
  const float inv = 1.f / sum;
  for (int i = threadIdx.x; i < V; i += blockDim.x) {
    const float p = expf(logits[base + i] - mx) * inv;
    dlogits[base + i] = (p - (i == tgt ? 1.f : 0.f)) * gradScale;
  }
}

// bc1 = 1 − β1^step, bc2 = 1 − β2^step (computed on the host in double). The decay uses the old p (decoupled).
extern "C" __global__ void train_adamw(float* p, const float* __restrict__ g, float* m, float* v, i64 n, float lr, float b1, float b2, float eps,
                                       float wd, float bc1, float bc2, float gradScale) {
  GRID_STRIDE(i, n) {
    const float gi = g[i] * gradScale;
    const float mi = b1 * m[i] + (1.f - b1) * gi;
    const float vi = b2 * v[i] + (1.f - b2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    const float pi = p[i];
    p[i] = pi - lr * ((mi / bc1) / (sqrtf(vi / bc2) + eps) + wd * pi);
  }
}
